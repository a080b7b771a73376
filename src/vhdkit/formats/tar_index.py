"""The members of a tar archive as byte ranges of the file, read header by header.

Python's tarfile reads GNU long names and PAX headers whole, sized by the header's own field;
this reader bounds each of them, and the number of headers, so that a crafted archive cannot
make vhdkit allocate by an unchecked size. It understands ustar, GNU (long names, base-256
sizes) and PAX (``path`` and ``size`` records: disks over 8 GiB) headers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import FormatError, UnsupportedDisk

BLOCK = 512
#: headers looked at: an OVA holds an OVF, a manifest, a certificate and its disks
MAX_HEADERS = 4096
#: a GNU long name or a PAX extended header larger than this is not a file name
MAX_EXTENDED = 64 * 1024
REGULAR = (b"0", b"\0", b"7")


@dataclass(frozen=True)
class Member:
    name: str
    #: byte offset of the member's data in the archive, and its length
    offset: int
    size: int
    #: byte offset of its header (for messages)
    header: int


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _number(raw: bytes, field: str, at: int) -> int:
    """An octal field, or GNU's base-256 (first byte 0x80) for large values."""
    if raw[:1] == b"\x80":
        return int.from_bytes(raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FormatError(field, at, f"not an octal number: {bytes(text[:16])!r}") from None


def _checksum_ok(hdr: bytes, at: int) -> bool:
    want = _number(hdr[148:156], "tar header.checksum", at + 148)
    spaced = hdr[:148] + b" " * 8 + hdr[156:]
    return want in (sum(spaced), sum(b - 256 if b > 127 else b for b in spaced))


def _pax(raw: bytes, at: int) -> dict[str, str]:
    """PAX records: ``"%d %s=%s\\n" % (length, key, value)``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(raw) and raw[pos:pos + 1] != b"\0":
        space = raw.find(b" ", pos, pos + 24)
        if space < 0 or not raw[pos:space].isdigit():
            raise FormatError("tar PAX header", at, "a record without its length")
        length = int(raw[pos:space])
        record = raw[space + 1 : pos + length]
        if length <= 0 or pos + length > len(raw) or not record.endswith(b"\n") \
                or b"=" not in record:
            raise FormatError("tar PAX header", at, "a record runs past the header")
        key, value = record[:-1].split(b"=", 1)
        out[key.decode("utf-8", errors="replace")] = value.decode("utf-8", errors="replace")
        pos += length
    return out


def tar_members(fd: int, size: int, path: str) -> list[Member]:
    """The regular files of the tar archive in ``fd`` (``size`` bytes), in archive order."""
    out: list[Member] = []
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        if pos + BLOCK > size:
            break
        hdr = os.pread(fd, BLOCK, pos)
        if len(hdr) < BLOCK or hdr == bytes(BLOCK):
            break  # end of archive
        if not _checksum_ok(hdr, pos):
            raise FormatError("tar header.checksum", pos + 148,
                              f"{path}: the tar header checksum does not match")
        kind = hdr[156:157]
        length = _number(hdr[124:136], "tar header.size", pos + 124)
        if kind in REGULAR and "size" in pax:
            if not pax["size"].isdigit() or len(pax["size"]) > 20:
                raise FormatError("tar PAX header.size", pos, f"{pax['size'][:24]!r}")
            length = int(pax["size"])
        data = pos + BLOCK
        if data + length > size:
            raise FormatError("tar header.size", pos + 124,
                              f"{length} bytes from {data} run past the end of {path} "
                              f"({size} bytes)")
        if kind in (b"L", b"x"):
            if length > MAX_EXTENDED:
                raise FormatError("tar header.size", pos + 124,
                                  f"an extended header of {length} bytes (at most "
                                  f"{MAX_EXTENDED})")
            raw = os.pread(fd, length, data)
            if kind == b"L":
                long_name = _text(raw)
            else:
                pax = _pax(raw, data)
        elif kind in REGULAR:
            name = _text(hdr[0:100])
            if hdr[257:262] == b"ustar" and hdr[345:346] != b"\0":
                name = f"{_text(hdr[345:500])}/{name}"
            name = pax.get("path") or long_name or name
            out.append(Member(name, data, length, pos))
            long_name, pax = None, {}
        elif kind == b"S":
            raise UnsupportedDisk(f"{path}: member {_text(hdr[0:100])!r} is a GNU sparse tar "
                                  "member; extract the archive first (tar -xf)")
        else:  # directories, links, global PAX headers: nothing to read
            long_name, pax = (long_name, pax) if kind == b"g" else (None, {})
        pos = data + -(-length // BLOCK) * BLOCK
    return out
