"""Replay a dirty registry hive's transaction logs in memory, so libregf reads what Windows would.

A hive is dirty when its base block's two sequence numbers differ: Windows wrote the change to
``NAME.LOG1`` / ``NAME.LOG2`` first and had not finished the primary file. Two log formats exist:

- old (Windows XP .. 8, file type 1/2): a base block, then at offset 512 ``"DIRT"`` and a bitmap
  with one bit per 512-byte sector of the hive bins, then the dirty sectors in bit order from the
  next 512-byte boundary;
- new (Windows 8.1+, file type 6): a 512-byte base block, then ``"HvLE"`` log entries, each with
  its size, a sequence number, the hive bins size, and (offset, size) references to dirty pages
  stored after them. Entries are applied from the primary's secondary sequence number upwards,
  one sequence number at a time, across both logs; their Marvin32 hashes are not verified.

Nothing is written: the result is a file object over the primary with the replayed sectors laid
over it (memory in proportion to the logs, not to the hive). Every offset and size read from a
log is checked against the log and the hive bins before use; a malformed entry ends that log.
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass, field

from ..errors import PreflightError
from .fs import Filesystem
from .volumes import BinaryFile

BASE_BLOCK = 4096
SECTOR = 512
PAGE = 4096
LOG_SUFFIXES = (".LOG1", ".LOG2", ".LOG")
MAX_LOG = 256 << 20  # a transaction log larger than this is not replayed (named in the finding)
MAX_BINS = 1 << 32  # the bins size is a 32-bit field; nothing is allocated by it
OLD_TYPES = (1, 2)
NEW_TYPE = 6
ENTRY_HEADER = 40


@dataclass(frozen=True)
class BaseBlock:
    seq1: int
    seq2: int
    file_type: int
    bins_size: int
    valid: bool  # signature and checksum

    @property
    def dirty(self) -> bool:
        return self.seq1 != self.seq2


def checksum(raw: bytes) -> int:
    x = 0
    for (word,) in struct.iter_unpack("<I", raw[:508]):
        x ^= word
    return 0xFFFFFFFE if x == 0xFFFFFFFF else (x or 1)


def parse_base_block(raw: bytes) -> BaseBlock | None:
    if len(raw) < SECTOR or raw[:4] != b"regf":
        return None
    seq1, seq2 = struct.unpack_from("<II", raw, 4)
    file_type = struct.unpack_from("<I", raw, 28)[0]
    bins = struct.unpack_from("<I", raw, 40)[0]
    valid = struct.unpack_from("<I", raw, 508)[0] == checksum(raw)
    return BaseBlock(seq1, seq2, file_type, bins, valid)


def rebuilt_base_block(raw: bytes, seq: int, bins_size: int) -> bytes:
    """A clean primary base block: both sequence numbers ``seq``, the replayed bins size."""
    bb = bytearray(raw[:BASE_BLOCK].ljust(BASE_BLOCK, b"\0"))
    struct.pack_into("<II", bb, 4, seq, seq)
    struct.pack_into("<I", bb, 28, 0)
    struct.pack_into("<I", bb, 40, bins_size)
    struct.pack_into("<I", bb, 508, checksum(bytes(bb)))
    return bytes(bb)


@dataclass
class Replay:
    """What happened to one hive: ``state`` is clean, replayed, logs-missing or not-replayed."""

    state: str
    evidence: str
    applied: list[str] = field(default_factory=list)  # "SYSTEM.LOG1 #40" per entry/log used


class PatchedFile:
    """The primary hive with replayed sectors laid over it, as a read-only file object."""

    def __init__(self, base: BinaryFile, base_size: int, size: int,
                 sectors: dict[int, bytes]) -> None:
        self._base = base
        self._base_size = base_size
        self._size = size
        self._sectors = sectors
        self._keys = sorted(sectors)
        self._pos = 0

    def read(self, size: int = -1, /) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if self._pos >= end:
            return b""
        start = self._pos
        buf = bytearray(end - start)
        if start < self._base_size:
            self._base.seek(start)
            got = self._base.read(min(end, self._base_size) - start)
            buf[:len(got)] = got
        first = bisect.bisect_left(self._keys, start // SECTOR)
        for key in self._keys[first:]:
            at = key * SECTOR
            if at >= end:
                break
            data = self._sectors[key]
            lo, hi = max(at, start), min(at + len(data), end)
            buf[lo - start:hi - start] = data[lo - at:hi - at]
        self._pos = end
        return bytes(buf)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the hive")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def get_size(self) -> int:
        return self._size


@dataclass
class _Entry:
    seq: int
    bins_size: int
    pages: list[tuple[int, bytes]]  # (offset in the hive bins, data)
    where: str


def _read_all(f: BinaryFile, limit: int) -> bytes | None:
    size = f.get_size()
    if size > limit:
        return None
    f.seek(0)
    return f.read(size)


def new_format_entries(log: bytes, name: str) -> list[_Entry]:
    """The well-formed "HvLE" entries of a new-format log, up to the first malformed one."""
    out: list[_Entry] = []
    at = SECTOR
    while at + ENTRY_HEADER <= len(log) and log[at:at + 4] == b"HvLE":
        size, _flags, seq, bins, count = struct.unpack_from("<IIIII", log, at + 4)
        if size < SECTOR or size % SECTOR or at + size > len(log) or bins % PAGE \
                or bins >= MAX_BINS or ENTRY_HEADER + 8 * count > size:
            break
        refs = [struct.unpack_from("<II", log, at + ENTRY_HEADER + 8 * i) for i in range(count)]
        data_at = at + ENTRY_HEADER + 8 * count
        pages: list[tuple[int, bytes]] = []
        for off, length in refs:
            if off % SECTOR or length % SECTOR or off + length > bins \
                    or data_at + length > at + size:
                return out
            pages.append((off, log[data_at:data_at + length]))
            data_at += length
        out.append(_Entry(seq, bins, pages, f"{name} entry {seq} at offset {at}"))
        at += size
    return out


def old_format_pages(log: bytes, block: BaseBlock) -> list[tuple[int, bytes]] | None:
    """The dirty sectors of an old-format ("DIRT") log, or None when it is malformed."""
    bins = block.bins_size
    if bins % PAGE or bins >= MAX_BINS or log[SECTOR:SECTOR + 4] != b"DIRT":
        return None
    bitmap = log[SECTOR + 4:SECTOR + 4 + bins // PAGE]
    if len(bitmap) < bins // PAGE:
        return None
    at = -(-(SECTOR + 4 + len(bitmap)) // SECTOR) * SECTOR
    pages = []
    for index in range(len(bitmap) * 8):
        if bitmap[index // 8] >> (index % 8) & 1:
            if at + SECTOR > len(log):
                return None
            pages.append((index * SECTOR, log[at:at + SECTOR]))
            at += SECTOR
    return pages


def open_replayed(fs: Filesystem, path: str, name: str) -> tuple[BinaryFile | None, Replay | None]:
    """The hive at ``path`` as libregf should read it, and what was done to it.

    (None, None) when the file is absent; (the stream as it is, None) when it has no readable
    base block (libregf then names the problem). A volume that fails while the hive or its
    logs are read raises :class:`PreflightError`.
    """
    try:
        return _open_replayed(fs, path, name)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PreflightError(f"{path}: cannot read the hive or its logs: "
                             f"{' '.join(str(exc).split())[:200]}") from exc


def _open_replayed(fs: Filesystem, path: str, name: str
                   ) -> tuple[BinaryFile | None, Replay | None]:
    stream = fs.open_file(path)
    if stream is None:
        return None, None
    size = stream.get_size()
    stream.seek(0)
    raw = stream.read(min(size, BASE_BLOCK))
    primary = parse_base_block(raw)
    if primary is None or len(raw) < BASE_BLOCK:
        return stream, None
    seqs = f"sequence numbers {primary.seq1} and {primary.seq2}"
    logs: dict[str, bytes] = {}
    skipped: list[str] = []
    for suffix in LOG_SUFFIXES:
        f = fs.open_file(path + suffix)
        if f is None:
            continue
        data = _read_all(f, MAX_LOG)
        if data is None:
            skipped.append(f"{name}{suffix} is larger than {MAX_LOG >> 20} MiB")
        else:
            logs[name + suffix] = data
    sectors: dict[int, bytes] = {}
    applied: list[str] = []
    seq, bins, head = primary.seq2, primary.bins_size, raw

    # New format: entries from the primary's secondary sequence number on, across both logs.
    entries: dict[int, _Entry] = {}
    for log_name, log in logs.items():
        block = parse_base_block(log)
        if block is not None and block.valid and block.file_type == NEW_TYPE:
            for e in new_format_entries(log, log_name):
                entries.setdefault(e.seq, e)
    while seq in entries:
        e = entries[seq]
        for off, data in e.pages:
            for i in range(0, len(data), SECTOR):
                sectors[(BASE_BLOCK + off + i) // SECTOR] = data[i:i + SECTOR]
        bins = e.bins_size
        applied.append(e.where)
        seq += 1

    # Old format: only for a dirty primary, from the newest complete log.
    if primary.dirty and not applied:
        best: tuple[BaseBlock, str, bytes] | None = None
        for log_name, log in logs.items():
            block = parse_base_block(log)
            if block is None or not block.valid or block.file_type not in OLD_TYPES \
                    or block.dirty or block.seq1 < primary.seq2:
                continue
            if best is None or block.seq1 > best[0].seq1:
                best = (block, log_name, log)
        if best is not None:
            block, log_name, log = best
            pages = old_format_pages(log, block)
            if pages is None:
                skipped.append(f"{log_name}: malformed dirty vector")
            else:
                for off, data in pages:
                    sectors[(BASE_BLOCK + off) // SECTOR] = data
                seq, bins, head = block.seq1, block.bins_size, log[:SECTOR] + raw[SECTOR:]
                applied.append(f"{log_name} ({len(pages)} dirty sectors, sequence number "
                               f"{block.seq1})")

    if not applied:
        if not primary.dirty:
            return stream, Replay("clean", f"{path}: {seqs} agree")
        why = ("no transaction log beside it" if not logs and not skipped else
               "its logs hold no change for sequence number "
               f"{primary.seq2}" + (f" ({'; '.join(skipped)})" if skipped else ""))
        state = "logs-missing" if not logs and not skipped else "not-replayed"
        return stream, Replay(state, f"{path}: {seqs} differ; {why}")
    new_size = BASE_BLOCK + bins
    rebuilt = rebuilt_base_block(head, seq, bins)
    for k in range(0, BASE_BLOCK, SECTOR):
        sectors[k // SECTOR] = rebuilt[k:k + SECTOR]
    patched = PatchedFile(stream, size, new_size, sectors)
    return patched, Replay("replayed", f"{path}: {seqs}; replayed " + ", ".join(applied),
                           applied)
