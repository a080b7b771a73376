"""Read a VHD's footer, dynamic header, parent locators and BAT from a file.

Every offset, count and size taken from the file is checked against the file size before it is
used, so a hostile header cannot make vhdkit allocate or read gigabytes. Problems that leave the
image readable (a damaged footer copy, a BAT entry past the end, ...) are fatal in strict mode and
recorded as :class:`Anomaly` in lenient mode, which ``check`` uses to report them as findings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from .vhd_structs import (
    BAT_UNUSED,
    FOOTER_COOKIE,
    FOOTER_OFFSETS,
    FOOTER_SIZE,
    HEADER_OFFSETS,
    HEADER_SIZE,
    MAX_DYNAMIC_SIZE,
    SECTOR,
    DiskType,
    DynamicHeader,
    Footer,
    parse_bat,
)

if TYPE_CHECKING:
    import numpy as np

#: A parent locator holds a path; anything longer than this is not a path.
MAX_LOCATOR_BYTES = 64 * 1024
LOCATOR_BASE = HEADER_OFFSETS["parent_locators"]


@dataclass(frozen=True)
class Anomaly:
    """A non-fatal defect found while reading; ``rule`` is the check finding id."""

    rule: str
    error: FormatError
    severity: str = "error"


@dataclass(frozen=True)
class Locator:
    index: int
    platform_code: str
    data_offset: int
    data_length: int
    path: str


def pread_exact(fd: int, length: int, offset: int, what: str) -> bytes:
    """Read exactly ``length`` bytes or raise a FormatError naming what was being read."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise FormatError(what, offset, f"truncated: wanted {length} bytes, file has {len(data)}")
    return data


@dataclass
class VhdImage:
    """A parsed VHD file. Holds the file descriptor open for the disk readers."""

    path: str
    fd: int
    file_size: int
    footer: Footer
    #: offset of the footer in use: the tail, or 0 when the tail is damaged and the copy is used
    footer_offset: int
    #: where data may end: the tail footer's offset, or the file end when the tail has no cookie
    data_end: int
    legacy_footer: bool = False
    head_footer: Footer | None = None
    header: DynamicHeader | None = None
    header_offset: int = 0
    bat: np.ndarray[Any, np.dtype[np.uint32]] | None = None
    locators: list[Locator] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    #: bytes read while parsing metadata (for the O(1) / O(BAT) benchmark)
    metadata_bytes_read: int = 0

    @property
    def disk_type(self) -> DiskType:
        return DiskType(self.footer.disk_type)

    @property
    def size(self) -> int:
        return int(self.footer.current_size)

    @property
    def bitmap_size(self) -> int:
        assert self.header is not None
        return self.header.bitmap_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_tail_footer(fd: int, file_size: int) -> tuple[bytes, int, bool] | None:
    """The raw tail footer, its offset and whether it is a 511-byte legacy one; None if absent."""
    if file_size < FOOTER_SIZE - 1:
        return None
    if file_size >= FOOTER_SIZE:
        tail = os.pread(fd, FOOTER_SIZE, file_size - FOOTER_SIZE)
        if tail[:8] == FOOTER_COOKIE:
            return tail, file_size - FOOTER_SIZE, False
        if tail[1:9] == FOOTER_COOKIE:
            return tail[1:] + b"\x00", file_size - FOOTER_SIZE + 1, True
        return tail, file_size - FOOTER_SIZE, False
    tail = os.pread(fd, FOOTER_SIZE - 1, file_size - FOOTER_SIZE + 1)
    return tail + b"\x00", 0, True


def looks_like_footer(raw: bytes) -> bool:
    """A footer with a damaged cookie still has a sane version and disk type (or checksum)."""
    f = Footer.parse(raw)
    return f.cookie == FOOTER_COOKIE or (
        f.version == 0x00010000 and f.disk_type in (2, 3, 4) and f.features & 0x2 != 0
    )


def open_vhd(path: str, fd: int, file_size: int, strict: bool = True) -> VhdImage:
    """Parse the VHD metadata of an already opened file."""
    if file_size == 0:
        raise FormatError("file", 0, "empty file (0 bytes)")
    if file_size < FOOTER_SIZE - 1:
        raise FormatError("file", 0, f"truncated: {file_size} bytes, smaller than a VHD footer")
    anomalies: list[Anomaly] = []

    def note(rule: str, err: FormatError, severity: str = "error", fatal: bool = True) -> None:
        if strict and fatal:
            raise err
        anomalies.append(Anomaly(rule, err, severity))

    tail = read_tail_footer(fd, file_size)
    assert tail is not None
    tail_raw, tail_off, legacy = tail
    tail_footer = Footer.parse(tail_raw)
    tail_problems = tail_footer.problems(tail_raw, tail_off)
    head_raw = os.pread(fd, FOOTER_SIZE, 0) if file_size >= 2 * FOOTER_SIZE else b""
    head_footer = Footer.parse(head_raw) if head_raw[:8] == FOOTER_COOKIE else None
    head_problems = head_footer.problems(head_raw, 0) if head_footer else []
    bytes_read = FOOTER_SIZE + len(head_raw)

    head_usable = head_footer is not None and not head_problems and head_footer.disk_type in (
        DiskType.DYNAMIC, DiskType.DIFFERENCING)
    if not tail_problems:
        footer, footer_off = tail_footer, tail_off
        if tail_footer.disk_type != DiskType.FIXED and head_raw[:FOOTER_SIZE] != tail_raw:
            why = head_problems[0].problem if head_problems else "differs from the tail footer"
            if head_footer is None:
                why = "missing (no b'conectix' cookie)"
            note("vhd.footer-copy",
                 FormatError("footer copy", 0, f"head copy damaged: {why}; using the tail footer"),
                 fatal=False)
    elif head_usable:
        assert head_footer is not None
        footer, footer_off = head_footer, 0
        note("vhd.footer-copy",
             FormatError(tail_problems[0].field, tail_problems[0].offset,
                         f"tail footer damaged: {tail_problems[0].problem}; using the copy at 0"),
             fatal=False)
    else:
        raise tail_problems[0]

    if legacy:
        note("vhd.legacy-footer",
             FormatError("footer.features", tail_off + FOOTER_OFFSETS["features"],
                         "legacy 511-byte footer (features bit 0x2 clear)"),
             severity="warning", fatal=False)
    elif file_size % SECTOR:
        note("vhd.file-size",
             FormatError("file", file_size, f"size {file_size} is not a multiple of 512"))

    data_end = tail_off if tail_raw[:8] == FOOTER_COOKIE else file_size
    img = VhdImage(path=path, fd=fd, file_size=file_size, footer=footer,
                   footer_offset=footer_off, data_end=data_end, legacy_footer=legacy,
                   head_footer=head_footer, anomalies=anomalies)
    if footer.disk_type == DiskType.FIXED:
        data_len = tail_off
        if data_len < footer.current_size:
            note("vhd.file-size",
                 FormatError("footer.current_size", tail_off + FOOTER_OFFSETS["current_size"],
                             f"fixed disk of {footer.current_size} bytes but the file holds "
                             f"only {data_len} bytes before its footer (truncated)"))
        img.metadata_bytes_read = bytes_read
        return img

    _read_dynamic(img, note)
    img.metadata_bytes_read += bytes_read
    return img


def _read_dynamic(img: VhdImage, note: Any) -> None:
    footer, fd = img.footer, img.fd
    fbase = img.footer_offset
    hoff = footer.data_offset
    if hoff % SECTOR or hoff + HEADER_SIZE > img.data_end:
        raise FormatError("footer.data_offset", fbase + FOOTER_OFFSETS["data_offset"],
                          f"dynamic header at {hoff} does not fit in a file of "
                          f"{img.file_size} bytes")
    raw = pread_exact(fd, HEADER_SIZE, hoff, "header")
    img.metadata_bytes_read += HEADER_SIZE
    header = DynamicHeader.parse(raw)
    img.header, img.header_offset = header, hoff
    for err in header.problems(raw, hoff):
        if err.field in ("header.cookie", "header.block_size"):
            raise err
        rule = "vhd.header-checksum" if err.field == "header.checksum" else "vhd.header-version"
        note(rule, err)

    size, bs = footer.current_size, header.block_size
    if size > MAX_DYNAMIC_SIZE:
        note("vhd.dynamic-size",
             FormatError("footer.current_size", fbase + FOOTER_OFFSETS["current_size"],
                         f"dynamic disk of {size} bytes exceeds the VHD maximum of 2040 GiB"))
    needed = -(-size // bs)
    entries = header.max_table_entries
    entries_off = hoff + HEADER_OFFSETS["max_table_entries"]
    if entries < needed:
        note("vhd.bat-entries",
             FormatError("header.max_table_entries", entries_off,
                         f"{entries} entries cannot map {size} bytes in {bs}-byte blocks "
                         f"(needs {needed})"))
    elif entries > needed:
        note("vhd.bat-entries",
             FormatError("header.max_table_entries", entries_off,
                         f"{entries} entries for {needed} blocks (extra entries, as written by "
                         f"qemu before 5.0; Azure rejects such images)"),
             severity="warning", fatal=False)

    toff = header.table_offset
    bat_bytes = entries * 4
    if toff % SECTOR or toff + bat_bytes > img.data_end:
        raise FormatError("header.table_offset", hoff + HEADER_OFFSETS["table_offset"],
                          f"BAT of {entries} entries ({bat_bytes} bytes) at offset {toff} "
                          f"extends past the end of the file ({img.file_size} bytes)")
    # Only the entries that map the virtual size are used; the rest are checked for bounds above.
    used = min(entries, needed)
    bat = _read_bat(fd, used, toff)
    img.metadata_bytes_read += used * 4
    _check_blocks(img, bat, note)
    img.bat = bat
    if footer.disk_type == DiskType.DIFFERENCING:
        img.locators = _read_locators(img, note)


def _read_bat(fd: int, entries: int, offset: int) -> np.ndarray[Any, np.dtype[np.uint32]]:
    """The BAT read straight into its array and byte-swapped in place: one copy in memory, not
    three (it may be 128 MiB: a 16 GiB disk in 512-byte blocks)."""
    import numpy as np

    if not hasattr(os, "preadv"):  # e.g. older macOS: the parsing way
        return parse_bat(pread_exact(fd, entries * 4, offset, "BAT"))
    raw = np.empty(entries, dtype=">u4")
    view = raw.data.cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise FormatError("BAT", offset, f"truncated: wanted {entries * 4} bytes, file has "
                                             f"{done}")
        done += n
    bat: np.ndarray[Any, np.dtype[np.uint32]] = raw.byteswap(inplace=True).view(np.uint32)
    return bat


def _sorted_clash(bat: np.ndarray[Any, np.dtype[np.uint32]],
                  used: np.ndarray[Any, np.dtype[np.bool_]], span_s: int) -> bool | None:
    """For a BAT whose used entries ascend (the usual layout): whether two blocks lie closer
    than ``span_s`` sectors; None when they do not ascend. Slice by slice: no copy of the BAT."""
    import numpy as np

    prev: int | None = None
    clash = False
    step = 1 << 20
    for a in range(0, len(bat), step):
        v = bat[a: a + step][used[a: a + step]]
        if v.size == 0:
            continue
        first, last = int(v[0]), int(v[-1])
        if prev is not None:
            if first < prev:
                return None
            clash |= first - prev < span_s
        if v.size > 1:
            if bool((v[1:] < v[:-1]).any()):
                return None
            clash |= bool((np.diff(v) < span_s).any())
        prev = last
    return clash


def _check_blocks(img: VhdImage, bat: np.ndarray[Any, np.dtype[np.uint32]], note: Any) -> None:
    """Blocks must lie inside the file, after the metadata, and must not overlap."""
    import numpy as np

    assert img.header is not None
    toff = img.header.table_offset
    span = img.bitmap_size + img.header.block_size
    # In sectors and uint32 (a BAT entry's own type), so that millions of entries stay cheap;
    # indices are looked up only for the first offender of each rule.
    used = bat != BAT_UNUSED
    if not used.any():
        return
    span_s = span // SECTOR  # bitmap and block sizes are whole sectors
    last_ok = img.data_end - span  # the last byte offset a block may start at
    past = used.copy() if last_ok < 0 else used & (bat > min(last_ok // SECTOR, 0xFFFFFFFF))
    for i in np.flatnonzero(past)[:1].tolist():
        s = int(bat[i]) * SECTOR
        note("vhd.bat-range",
             FormatError(f"bat[{i}]", toff + 4 * i,
                         f"block at byte {s} ends at {s + span}, past the end of data at "
                         f"{img.data_end}"))
    bat[past] = BAT_UNUSED
    used &= ~past
    del past
    meta_end = max(img.header_offset + HEADER_SIZE, toff + img.header.max_table_entries * 4)
    # overlaps [FOOTER_SIZE, meta_end): starts before meta_end and ends after the head footer
    inside = used & (bat < min(-(-meta_end // SECTOR), 0xFFFFFFFF))
    if FOOTER_SIZE - span >= 0:
        inside &= bat > (FOOTER_SIZE - span) // SECTOR
    for i in np.flatnonzero(inside)[:1].tolist():
        note("vhd.bat-overlap",
             FormatError(f"bat[{i}]", toff + 4 * i,
                         f"block at byte {int(bat[i]) * SECTOR} overlaps the header or BAT"))
    del inside
    clash = _sorted_clash(bat, used, span_s)
    if clash is None:  # not in file order: sort a copy
        vals = np.sort(bat[used])
        clash = vals.size > 1 and bool((np.diff(vals) < span_s).any())
        del vals
    if clash:
        idx = np.flatnonzero(used)
        order = np.argsort(bat[idx], kind="stable")
        k = int(np.flatnonzero(np.diff(bat[idx][order].astype(np.int64)) < span_s)[0])
        a, b = int(idx[order[k]]), int(idx[order[k + 1]])
        note("vhd.bat-overlap",
             FormatError(f"bat[{b}]", toff + 4 * b,
                         f"block at byte {int(bat[b]) * SECTOR} overlaps block bat[{a}] at byte "
                         f"{int(bat[a]) * SECTOR}"))


_PLATFORMS = {
    b"W2ku": "utf-16-le", b"W2ru": "utf-16-le", b"Wi2k": "latin-1", b"Wi2r": "latin-1",
    b"MacX": "utf-8", b"Mac ": "utf-8",
}


def _read_locators(img: VhdImage, note: Any) -> list[Locator]:
    assert img.header is not None
    out: list[Locator] = []
    for i, loc in enumerate(img.header.parent_locators):
        if loc.platform_code == b"\x00\x00\x00\x00" or loc.data_length == 0:
            continue
        field_off = img.header_offset + LOCATOR_BASE + 24 * i
        code = loc.platform_code.decode("latin-1")
        if loc.data_length > MAX_LOCATOR_BYTES or loc.data_offset + loc.data_length > img.file_size:
            note("vhd.parent-locator",
                 FormatError(f"header.parent_locators[{i}].data_offset", field_off + 16,
                             f"locator data of {loc.data_length} bytes at {loc.data_offset} lies "
                             f"outside the file ({img.file_size} bytes)"),
                 severity="warning", fatal=False)
            continue
        raw = pread_exact(img.fd, loc.data_length, loc.data_offset, f"parent locator {i}")
        img.metadata_bytes_read += loc.data_length
        enc = _PLATFORMS.get(loc.platform_code, "latin-1")
        text = raw.decode(enc, errors="replace").split("\x00", 1)[0]
        if loc.platform_code == b"MacX" and text.startswith("file://"):
            text = text[len("file://"):]
        out.append(Locator(i, code, loc.data_offset, loc.data_length, text))
    return out
