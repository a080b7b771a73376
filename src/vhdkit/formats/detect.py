"""One detection table: a file's signature names its container and the reader that opens it.

A signature of a container vhdkit does not read is refused by name with the way out; nothing
that names a container is ever read as raw. Raw is what remains when no signature matches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FormatError, UnsupportedDisk
from .vhd_image import looks_like_footer, read_tail_footer
from .vhd_structs import FOOTER_COOKIE, FOOTER_SIZE, VHDX_SIGNATURE

#: Bytes of the head read for detection: the tar header's magic is at 257, a VMDK descriptor
#: or a VDI pre-header fit well inside.
HEAD = 4096


@dataclass(frozen=True)
class Probe:
    """What detection may look at: the head of the file, its size, its name and the descriptor."""

    fd: int
    size: int
    path: str
    head: bytes

    def at(self, offset: int, length: int) -> bytes:
        if offset + length <= len(self.head):
            return self.head[offset : offset + length]
        if offset < 0 or offset >= self.size:
            return b""
        return os.pread(self.fd, length, offset)


@dataclass(frozen=True)
class Signature:
    #: the format key: a reader's name in formats/opener.py, or a refused container's name
    key: str
    #: what users call it, for messages
    label: str
    test: Callable[[Probe], bool]
    #: True when vhdkit reads this container; False refuses it with ``way_out``
    readable: bool = False
    way_out: str = ""


def _magic(offset: int, *values: bytes) -> Callable[[Probe], bool]:
    return lambda p: any(p.at(offset, len(v)) == v for v in values)


def _is_vhd(p: Probe) -> bool:
    tail = read_tail_footer(p.fd, p.size)
    if tail is not None and (tail[0][:8] == FOOTER_COOKIE or looks_like_footer(tail[0])):
        return True
    # A dynamic disk whose tail footer is gone: the head copy remains.
    return p.size >= 1024 and p.head[:8] == FOOTER_COOKIE


def _qcow_version(*versions: int) -> Callable[[Probe], bool]:
    def test(p: Probe) -> bool:
        return p.head[:4] == b"QFI\xfb" and int.from_bytes(p.head[4:8], "big") in versions
    return test


def _vmdk_descriptor(p: Probe) -> bool:
    text = p.head[:1024].lstrip().lower()
    return text.startswith(b"# disk descriptorfile") or (
        b"createtype=" in text.replace(b" ", b"") and b"ddb." in p.head.lower())


def _tar(p: Probe) -> bool:
    if p.at(257, 5) != b"ustar" or len(p.head) < 512:
        return False
    # the header checksum (octal at 148) covers the 512 bytes with the field read as spaces
    try:
        stored = int(p.head[148:156].replace(b"\0", b" ").strip() or b"x", 8)
    except ValueError:
        return False
    return stored == sum(p.head[:148]) + 8 * 32 + sum(p.head[156:512])


def _ova(p: Probe) -> bool:
    # An OVA is a tar whose first member is the OVF descriptor (DSP0243); accept the suffix too.
    name = p.head[:100].split(b"\0", 1)[0].lower()
    return _tar(p) and (name.endswith(b".ovf") or p.path.lower().endswith(".ova"))


def _koly(p: Probe) -> bool:
    # UDIF trailer: 'koly', version 4, header size 512 (a last sector that merely starts with
    # 'koly' is not enough)
    return p.size >= 512 and p.at(p.size - 512, 12) == b"koly\0\0\0\x04\0\0\x02\0"


def _gzip(p: Probe) -> bool:
    return p.head[:3] == b"\x1f\x8b\x08" and len(p.head) > 3 and p.head[3] & 0xE0 == 0


def _zstd(p: Probe) -> bool:
    # frame magic, then a frame header descriptor whose reserved bit is clear
    return p.head[:4] == b"\x28\xb5\x2f\xfd" and len(p.head) > 4 and p.head[4] & 0x08 == 0


def _zip(p: Probe) -> bool:
    if p.head[:4] == b"PK\x05\x06":  # an empty archive: only the end record
        return p.size == 22 + int.from_bytes(p.head[20:22], "little")
    return p.head[:4] == b"PK\x03\x04" and int.from_bytes(p.head[4:6], "little") <= 63


def _luks(p: Probe) -> bool:
    return p.head[:6] in (b"LUKS\xba\xbe", b"SKUL\xba\xbe") and p.head[6:8] in (b"\0\x01",
                                                                                b"\0\x02")


def _qed(p: Probe) -> bool:
    cluster = int.from_bytes(p.head[4:8], "little")
    return p.head[:4] == b"QED\0" and 4096 <= cluster <= 1 << 26 and not cluster & (cluster - 1)


def _vdi(p: Probe) -> bool:
    # the signature sits at 0x40, inside what would be MBR boot code: want the 1.x version too
    return p.at(0x40, 4) == b"\x7f\x10\xda\xbe" and p.at(0x46, 2) == b"\x01\x00"


def _bzip2(p: Probe) -> bool:
    return p.head[:3] == b"BZh" and p.head[3:4] in b"123456789" and p.head[4:10] in (
        b"1AY&SY", b"\x17rE8P\x90")


def _convert_raw(label: str) -> str:
    return f"convert it to raw first: qemu-img convert -O raw DISK disk.raw ({label})"


def _unpack(tool: str) -> str:
    return f"unpack it first ({tool}) and give vhdkit the disk inside"


#: Order matters: the most specific signature first; raw is what no entry claims.
SIGNATURES: tuple[Signature, ...] = (
    Signature("vhdx", "VHDX", _magic(0, VHDX_SIGNATURE), readable=True),
    Signature("qcow2", "qcow2", _qcow_version(2, 3), readable=True),
    Signature("qcow1", "qcow (version 1)", _qcow_version(1),
              way_out=_convert_raw("qcow version 1")),
    Signature("qcow-unknown", "qcow of an unknown version", _magic(0, b"QFI\xfb"),
              way_out=_convert_raw("qcow")),
    Signature("qed", "QED", _qed, way_out=_convert_raw("QED")),
    Signature("vmdk", "VMDK (sparse extent)", _magic(0, b"KDMV"), readable=True),
    Signature("vmdk-cowd", "VMDK (ESX COWD sparse extent)", _magic(0, b"COWD"),
              way_out="give vhdkit the descriptor (.vmdk) that names this extent: it reads "
                      "vmfsSparse snapshots through it, with their parent"),
    Signature("vmdk-descriptor", "VMDK descriptor", _vmdk_descriptor, readable=True),
    Signature("vdi", "VirtualBox VDI", _vdi, readable=True),
    Signature("parallels", "Parallels", _magic(0, b"WithoutFreeSpace", b"WithouFreSpacExt"),
              way_out=_convert_raw("Parallels")),
    Signature("luks", "LUKS-encrypted volume", _luks,
              way_out="Azure cannot boot a LUKS container: give vhdkit the decrypted disk"),
    Signature("ova", "OVA", _ova, readable=True),
    Signature("tar", "tar archive", _tar, way_out=_unpack("tar -xf")),
    Signature("gzip", "gzip-compressed file", _gzip,
              way_out=_unpack("gunzip")),
    Signature("xz", "xz-compressed file", _magic(0, b"\xfd7zXZ\x00"), way_out=_unpack("unxz")),
    Signature("zstd", "zstd-compressed file", _zstd,
              way_out=_unpack("unzstd")),
    Signature("bzip2", "bzip2-compressed file", _bzip2, way_out=_unpack("bunzip2")),
    Signature("zip", "zip archive", _zip,
              way_out=_unpack("unzip")),
    Signature("7z", "7-Zip archive", _magic(0, b"7z\xbc\xaf\x27\x1c"), way_out=_unpack("7z x")),
    Signature("vhd", "VHD", _is_vhd, readable=True),
    Signature("dmg", "Apple disk image (DMG)", _koly,
              way_out=_convert_raw("DMG; or hdiutil convert on macOS")),
)

BY_KEY = {s.key: s for s in SIGNATURES}


def identify(fd: int, size: int, path: str) -> Signature | None:
    """The first signature that claims the file, or None (raw)."""
    head = os.pread(fd, HEAD, 0) if size else b""
    probe = Probe(fd, size, path, head)
    return next((s for s in SIGNATURES if s.test(probe)), None)


def forced(fd: int, size: int, path: str, fmt: str) -> str:
    """The reader the user forced (``format=`` / ``--format``), if the file carries its signature.

    ``raw`` reads any file as it is (the way out when a raw disk happens to look like something
    else). Any other format is refused when the file carries another container's signature (a
    VHD is never parsed as a VHDX); a file with no signature at all goes to the forced reader,
    which names the damaged field.
    """
    sig = BY_KEY.get(fmt)
    if fmt == "raw" or sig is None:
        return fmt
    probe = Probe(fd, size, path, os.pread(fd, HEAD, 0) if size else b"")
    if sig.test(probe):
        return fmt
    found = next((s for s in SIGNATURES if s.test(probe)), None)
    if found is None:
        return fmt  # a damaged signature: the forced reader names the field and offset
    raise FormatError("signature", None, f"not a {sig.label} file: format {fmt!r} was forced on "
                      f"{path}, but this is a {found.label} image; drop the format to detect "
                      "it, or force 'raw' to read the file as it is")


def detect(fd: int, size: int, path: str) -> str:
    """The reader key for a file; refuses containers vhdkit does not read."""
    sig = identify(fd, size, path)
    if sig is None:
        if path.lower().endswith(".vhd"):
            if size == 0:
                raise FormatError("file", 0, "empty file (0 bytes)")
            off = max(0, size - FOOTER_SIZE)
            found = os.pread(fd, 8, off)
            raise FormatError("footer.cookie", off, f"expected b'conectix', found {found!r}")
        return "raw"
    if not sig.readable:
        raise refusal(path, sig)
    return sig.key


def refusal(path: str, sig: Signature) -> UnsupportedDisk:
    return UnsupportedDisk(f"{path}: {sig.label} (found by its signature), which vhdkit does not "
                           f"read as a disk; {sig.way_out.replace('DISK', path)}")
