"""Btrfs, read offline well enough for the Linux rules: files, directories, symlinks.

Superblock -> system chunks -> chunk tree (logical to physical addresses) -> root tree (the
subvolumes) -> each subvolume's FS tree (inodes, directory entries, file extents: inline,
regular and preallocated; zlib, lzo and zstd compressed). One device, with the profiles that
keep a whole copy in the first stripe (single, DUP, RAID1, RAID1C3/4); others are refused.

The root is the default subvolume; when it holds no OS but a subvolume named ``root`` or ``@``
does (Fedora, Ubuntu), that one is "/". Directory entries that are subvolumes are entered like
directories. Every offset, size and count read from the disk is checked before use; a tree
block's bytenr, level and crc32c checksum are verified.
"""

from __future__ import annotations

import bisect
import copy
import io
import stat
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import PreflightError
from .fs import MAX_SYMLINK_HOPS, Filesystem
from .lzo import lzo1x_decompress
from .volumes import BinaryFile

SUPER_OFFSET = 0x10000
MAGIC = b"_BHRfS_M"
HEADER = 101  # tree block header
ITEM = 25  # leaf item: key + data offset + size
KEY_PTR = 33  # internal node pointer: key + block + generation
MAX_LEVEL = 8
MAX_COMPRESSED_RAM = 128 << 10  # Btrfs compresses at most 128 KiB of file data per extent
NODE_CACHE = 512
MAX_READ = 16 << 20  # bytes one read() returns at most
MAX_VISITS = 1 << 16  # tree blocks one search may visit
INODE_ITEM, DIR_ITEM, DIR_INDEX, EXTENT_DATA, ROOT_ITEM, CHUNK_ITEM = 1, 84, 96, 108, 132, 228
FS_TREE, ROOT_TREE_DIR, FIRST_INODE = 5, 6, 256
WHOLE_COPY = 0x2 | 0x10 | 0x20 | 0x200 | 0x400  # single/DUP/RAID1/RAID1C3/RAID1C4 (+SYSTEM)
STRIPED = 0x8 | 0x40 | 0x80 | 0x100  # RAID0, RAID10, RAID5, RAID6
EXTENT_TREE_V2 = 1 << 13
ROOT_NAMES = ("root", "@")  # Fedora's and Ubuntu's root subvolumes
KMAX = (1 << 64) - 1

Key = tuple[int, int, int]


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc32c_table()


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """The raw Castagnoli register after ``data`` (no final inversion, like the kernel's)."""
    for b in data:
        crc = _CRC[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def name_hash(name: bytes) -> int:
    return crc32c(name, 0xFFFFFFFE)  # btrfs_name_hash: crc32c seeded with ~1


def _err(problem: str) -> PreflightError:
    return PreflightError(f"btrfs: {problem}")


@dataclass(frozen=True)
class _Chunk:
    logical: int
    length: int
    physical: int
    copies: tuple[int, ...]  # every copy on this device (DUP keeps two)


@dataclass(frozen=True)
class _Node:
    level: int
    keys: list[Key]
    ptrs: list[int]  # internal: child blocks; leaf: item data offsets
    sizes: list[int]  # leaf: item data sizes
    raw: bytes


class BtrfsFilesystem(Filesystem):
    fstype = "btrfs"

    def __init__(self, f: BinaryFile) -> None:
        self._f = f
        self._size = f.get_size()
        self._cache: OrderedDict[int, _Node] = OrderedDict()
        sb = self._pread(SUPER_OFFSET, 4096)
        if len(sb) < 4096 or sb[0x40:0x48] != MAGIC:
            raise _err("no superblock magic at 0x10040")
        if crc32c(sb[32:]) ^ 0xFFFFFFFF != struct.unpack_from("<I", sb, 0)[0] and \
                struct.unpack_from("<H", sb, 0xC4)[0] == 0:
            raise _err("superblock checksum mismatch at 0x10000")
        self.csum_type = struct.unpack_from("<H", sb, 0xC4)[0]
        self.fsid = sb[0x20:0x30]
        root, chunk_root = struct.unpack_from("<QQ", sb, 0x50)
        self.sectorsize, self.nodesize = struct.unpack_from("<II", sb, 0x90)
        sys_size = struct.unpack_from("<I", sb, 0xA0)[0]
        incompat = struct.unpack_from("<Q", sb, 0xBC)[0]
        self.devid = struct.unpack_from("<Q", sb, 0xC9)[0]
        if self.nodesize not in (4096, 8192, 16384, 32768, 65536) or \
                self.sectorsize not in (4096, 8192, 16384, 32768, 65536):
            raise _err(f"implausible node size {self.nodesize} / sector size {self.sectorsize}")
        if incompat & EXTENT_TREE_V2:
            raise _err("extent tree v2 (experimental) is not read")
        if sys_size > 2048:
            raise _err(f"system chunk array size {sys_size} > 2048 at 0x100a0")
        if incompat & 0x400:  # METADATA_UUID: tree blocks carry the metadata UUID
            self.fsid = sb[0x23B:0x24B]
        self._chunks: list[_Chunk] = []
        self._sys_chunks(sb[0x32B:0x32B + sys_size])
        self._load_chunk_tree(chunk_root)
        self._root_tree = root
        self._roots: dict[int, int] = {}  # subvolume id -> FS tree block
        self.root_id = self._choose_root()

    # -- addresses and tree blocks --

    def _pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self._size:
            raise _err(f"read of {length} bytes at {offset} is outside the volume "
                       f"({self._size} bytes)")
        self._f.seek(offset)
        data = self._f.read(length)
        if len(data) != length:
            raise _err(f"short read at {offset}")
        return data

    def _add_chunk(self, logical: int, item: bytes, where: str) -> None:
        if len(item) < 48:
            raise _err(f"chunk item too short at {where}")
        length, _owner, _stripe_len, ctype = struct.unpack_from("<QQQQ", item, 0)
        nstripes = struct.unpack_from("<H", item, 44)[0]
        if nstripes == 0 or len(item) < 48 + 32 * nstripes:
            raise _err(f"chunk at logical {logical}: {nstripes} stripes do not fit ({where})")
        if ctype & STRIPED:
            raise _err(f"chunk at logical {logical} is striped (type {ctype:#x}): RAID0/10/5/6 "
                       "is not read")
        copies = tuple(physical for devid, physical in (
            struct.unpack_from("<QQ", item, 48 + 32 * i) for i in range(nstripes))
            if devid == self.devid)
        if not copies:
            raise _err(f"chunk at logical {logical} has no copy on this device ({where})")
        self._chunks.append(_Chunk(logical, length, copies[0], copies))

    def _sys_chunks(self, arr: bytes) -> None:
        pos = 0
        while pos < len(arr):
            if pos + 17 + 48 > len(arr):
                raise _err(f"system chunk array entry at {pos} is truncated")
            _objectid, ktype, logical = struct.unpack_from("<QBQ", arr, pos)
            nstripes = struct.unpack_from("<H", arr, pos + 17 + 44)[0]
            size = 48 + 32 * nstripes
            if ktype != CHUNK_ITEM:
                raise _err(f"system chunk array entry at {pos} has key type {ktype}")
            self._add_chunk(logical, arr[pos + 17:pos + 17 + size], "system chunk array")
            pos += 17 + size

    def physical(self, logical: int, length: int) -> int:
        return self.copies(logical, length)[0]

    def copies(self, logical: int, length: int) -> tuple[int, ...]:
        """Where the bytes ``[logical, logical + length)`` are on this device."""
        for c in self._chunks:
            if c.logical <= logical and logical + length <= c.logical + c.length:
                return tuple(p + logical - c.logical for p in c.copies)
        raise _err(f"logical address {logical} (+{length}) is in no chunk")

    def _node(self, logical: int, level: int | None = None) -> _Node:
        hit = self._cache.get(logical)
        if hit is None:
            raw = self._pread(self.physical(logical, self.nodesize), self.nodesize)
            hit = self._parse_node(logical, raw)
            self._cache[logical] = hit
            if len(self._cache) > NODE_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(logical)
        if level is not None and hit.level != level:
            raise _err(f"tree block {logical} has level {hit.level}, expected {level}")
        return hit

    def _parse_node(self, logical: int, raw: bytes) -> _Node:
        if self.csum_type == 0 and \
                crc32c(raw[32:]) ^ 0xFFFFFFFF != struct.unpack_from("<I", raw, 0)[0]:
            raise _err(f"tree block {logical}: checksum mismatch")
        bytenr = struct.unpack_from("<Q", raw, 48)[0]
        nritems, level = struct.unpack_from("<IB", raw, 96)
        if bytenr != logical or raw[32:48] != self.fsid:
            raise _err(f"tree block {logical}: header names block {bytenr} or another fs")
        if level >= MAX_LEVEL:
            raise _err(f"tree block {logical}: level {level}")
        keys: list[Key] = []
        ptrs: list[int] = []
        sizes: list[int] = []
        width = ITEM if level == 0 else KEY_PTR
        if HEADER + nritems * width > len(raw):
            raise _err(f"tree block {logical}: {nritems} items do not fit")
        for i in range(nritems):
            at = HEADER + i * width
            keys.append(struct.unpack_from("<QBQ", raw, at))
            if level == 0:
                off, size = struct.unpack_from("<II", raw, at + 17)
                if HEADER + off + size > len(raw) or HEADER + off < HEADER + nritems * ITEM:
                    raise _err(f"tree block {logical}: item {i} data {off}+{size} out of range")
                ptrs.append(HEADER + off)
                sizes.append(size)
            else:
                ptrs.append(struct.unpack_from("<Q", raw, at + 17)[0])
        return _Node(level, keys, ptrs, sizes, raw)

    def items(self, tree: int, lo: Key, hi: Key) -> list[tuple[Key, bytes]]:
        """Every item of the tree rooted at block ``tree`` with ``lo <= key <= hi``."""
        out: list[tuple[Key, bytes]] = []
        self._walk(self._node(tree), lo, hi, out, [MAX_VISITS])
        return out

    def _walk(self, node: _Node, lo: Key, hi: Key, out: list[tuple[Key, bytes]],
              budget: list[int]) -> None:
        budget[0] -= 1
        if budget[0] < 0:  # keys that make one search visit the whole tree: not a real fs
            raise _err(f"one tree search visits more than {MAX_VISITS} blocks")
        keys = node.keys  # sorted: bisect to the first key that can matter
        if node.level == 0:
            for i in range(bisect.bisect_left(keys, lo), len(keys)):
                if keys[i] > hi:
                    break
                off = node.ptrs[i]
                out.append((keys[i], node.raw[off:off + node.sizes[i]]))
            return
        for i in range(max(0, bisect.bisect_right(keys, lo) - 1), len(keys)):
            if keys[i] > hi:  # child i holds keys from keys[i] up to keys[i + 1]
                break
            self._walk(self._node(node.ptrs[i], node.level - 1), lo, hi, out, budget)

    def _load_chunk_tree(self, chunk_root: int) -> None:
        for key, data in self.items(chunk_root, (256, CHUNK_ITEM, 0), (256, CHUNK_ITEM, KMAX)):
            if not any(c.logical == key[2] for c in self._chunks):
                self._add_chunk(key[2], data, f"chunk tree key {key}")

    # -- subvolumes --

    def tree_of(self, root_id: int) -> int:
        if root_id not in self._roots:
            found = self.items(self._root_tree, (root_id, ROOT_ITEM, 0),
                               (root_id, ROOT_ITEM, KMAX))
            if not found:
                raise _err(f"subvolume {root_id} has no root item")
            data = found[-1][1]  # the newest root item of that tree
            if len(data) < 239:
                raise _err(f"root item of subvolume {root_id} is too short")
            self._roots[root_id] = struct.unpack_from("<Q", data, 176)[0]
        return self._roots[root_id]

    def _choose_root(self) -> int:
        default = FS_TREE
        for _key, data in self.items(self._root_tree, (ROOT_TREE_DIR, DIR_ITEM, 0),
                                     (ROOT_TREE_DIR, DIR_ITEM, KMAX)):
            for loc, entry in _dir_entries(data):
                if entry == b"default" and loc[1] == ROOT_ITEM:
                    default = loc[0]
        top = (default, FIRST_INODE)
        if any(self._lookup_from(top, p) for p in ("etc/os-release", "usr/lib/os-release")):
            return default
        for candidate in ROOT_NAMES:
            sub = self._child(top, candidate.encode())
            if sub is not None and sub[1] == FIRST_INODE and sub[0] != default and any(
                    self._lookup_from(sub, p) for p in ("etc/os-release", "usr/lib/os-release")):
                return sub[0]
        return default

    # -- inodes and directories --

    def _inode(self, ref: tuple[int, int]) -> bytes | None:
        found = self.items(self.tree_of(ref[0]), (ref[1], INODE_ITEM, 0), (ref[1], INODE_ITEM, 0))
        if not found:
            return None
        if len(found[0][1]) < 160:
            raise _err(f"inode {ref[1]} of subvolume {ref[0]}: item too short")
        return found[0][1]

    def _mode(self, ref: tuple[int, int]) -> int | None:
        inode = self._inode(ref)
        return None if inode is None else struct.unpack_from("<I", inode, 52)[0]

    def _child(self, ref: tuple[int, int], name: bytes) -> tuple[int, int] | None:
        h = name_hash(name)
        for _key, data in self.items(self.tree_of(ref[0]), (ref[1], DIR_ITEM, h),
                                     (ref[1], DIR_ITEM, h)):
            for loc, entry in _dir_entries(data):
                if entry != name:
                    continue
                if loc[1] == ROOT_ITEM:  # a subvolume: enter its tree at its root directory
                    return (loc[0], FIRST_INODE)
                return (ref[0], loc[0])
        return None

    def _lookup_from(self, start: tuple[int, int], path: str) -> tuple[int, int] | None:
        """Resolve ``path`` from ``start`` (symlinks followed; absolute ones from "/")."""
        stack = [start]
        todo = [c for c in path.split("/") if c not in ("", ".")]
        hops = 0
        while todo:
            comp = todo.pop(0)
            if comp == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            child = self._child(stack[-1], comp.encode())
            if child is None:
                return None
            mode = self._mode(child)
            if mode is not None and stat.S_ISLNK(mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                target = BtrfsFile(self, child).read(4096).decode("utf-8", "replace")
                if target.startswith("/"):
                    stack = stack[:1]
                todo = [c for c in target.split("/") if c not in ("", ".")] + todo
                continue
            stack.append(child)
        return stack[-1]

    def _lookup(self, path: str) -> tuple[int, int] | None:
        return self._lookup_from((self.root_id, FIRST_INODE), path)

    def subvolume(self, options: str) -> BtrfsFilesystem | None:
        """The subvolume an fstab entry's ``subvol=``/``subvolid=`` option mounts, or None."""
        opts = dict(o.partition("=")[::2] for o in options.split(","))
        root: int | None = None
        if opts.get("subvolid", "").isdigit():
            root = int(opts["subvolid"])
        elif opts.get("subvol"):
            ref = self._lookup_from((FS_TREE, FIRST_INODE), opts["subvol"])
            root = ref[0] if ref is not None and ref[1] == FIRST_INODE else None
        if root is None:
            return None
        try:
            self.tree_of(root)
        except PreflightError:
            return None
        view = copy.copy(self)  # shares the chunk map and the node cache
        view.root_id = root
        return view

    # -- the interface --

    def open_file(self, path: str) -> BinaryFile | None:
        ref = self._lookup(path)
        if ref is None or not stat.S_ISREG(self._mode(ref) or 0):
            return None
        return BtrfsFile(self, ref)

    def listdir(self, path: str) -> list[str] | None:
        ref = self._lookup(path)
        if ref is None or not stat.S_ISDIR(self._mode(ref) or 0):
            return None
        names = set()
        for _key, data in self.items(self.tree_of(ref[0]), (ref[1], DIR_INDEX, 0),
                                     (ref[1], DIR_INDEX, KMAX)):
            for _loc, name in _dir_entries(data):
                names.add(name.decode("utf-8", "replace"))
        return sorted(names)

    def kind(self, path: str) -> str | None:
        ref = self._lookup(path)
        if ref is None:
            return None
        mode = self._mode(ref) or 0
        if stat.S_ISDIR(mode):
            return "dir"
        return "file" if stat.S_ISREG(mode) else "other"


def _dir_entries(data: bytes) -> list[tuple[Key, bytes]]:
    """(location key, name) of each btrfs_dir_item packed in an item."""
    out = []
    pos = 0
    while pos + 30 <= len(data):
        loc = struct.unpack_from("<QBQ", data, pos)
        data_len, name_len = struct.unpack_from("<HH", data, pos + 25)
        end = pos + 30 + name_len + data_len
        if end > len(data):
            raise _err("directory item runs past its item")
        out.append((loc, data[pos + 30:pos + 30 + name_len]))
        pos = end
    return out


class BtrfsFile:
    """A regular file (or a symlink's target text) as a seekable binary file."""

    def __init__(self, fs: BtrfsFilesystem, ref: tuple[int, int]) -> None:
        self._fs = fs
        self._ref = ref
        inode = fs._inode(ref)
        self._size = struct.unpack_from("<Q", inode, 16)[0] if inode else 0
        self._pos = 0
        self._extents: list[tuple[int, bytes]] | None = None
        self._last: tuple[int, bytes] | None = None  # (extent key offset, decompressed data)

    def get_size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        end = min(end, self._pos + MAX_READ)  # a short read: callers loop
        if self._pos >= end:
            return b""
        if self._extents is None:
            fs = self._fs
            self._extents = [(k[2], d) for k, d in fs.items(
                fs.tree_of(self._ref[0]), (self._ref[1], EXTENT_DATA, 0),
                (self._ref[1], EXTENT_DATA, KMAX))]
        out = bytearray(end - self._pos)  # holes (and NO_HOLES gaps) read as zeros
        for start, item in self._extents:
            if start >= end:
                break
            piece = self._extent(start, item, self._pos, end)
            if piece is None:
                continue
            at, data = piece
            lo, hi = max(at, self._pos), min(at + len(data), end)
            if lo < hi:
                out[lo - self._pos:hi - self._pos] = data[lo - at:hi - at]
        self._pos = end
        return bytes(out)

    def _extent(self, start: int, item: bytes, lo: int, hi: int) -> tuple[int, bytes] | None:
        """(file offset, bytes) an extent starting at ``start`` holds for ``[lo, hi)``;
        None for a hole or an extent outside the range."""
        if len(item) < 21:
            raise _err(f"file extent at {start} of inode {self._ref[1]}: item too short")
        ram, comp, enc, _other, etype = struct.unpack_from("<QBBHB", item, 8)
        if enc:
            raise _err(f"inode {self._ref[1]}: encrypted extent")
        if etype == 0:  # inline: the data follows the header
            data = item[21:]
            return start, (_decompress(comp, data, ram, start) if comp else data)
        if len(item) < 53:
            raise _err(f"file extent at {start} of inode {self._ref[1]}: item too short")
        bytenr, disk_bytes, offset, nbytes = struct.unpack_from("<QQQQ", item, 21)
        if start + nbytes <= lo or etype == 2 or bytenr == 0:  # outside, preallocated, a hole
            return None
        fs = self._fs
        if comp == 0:
            want_lo, want_hi = max(lo, start), min(hi, start + nbytes)
            at = bytenr + offset + (want_lo - start)
            return want_lo, fs._pread(fs.physical(at, want_hi - want_lo), want_hi - want_lo)
        if self._last is None or self._last[0] != start:
            if disk_bytes > MAX_COMPRESSED_RAM or ram > MAX_COMPRESSED_RAM:
                raise _err(f"compressed extent at {start} of inode {self._ref[1]}: "
                           f"{disk_bytes} -> {ram} bytes is over 128 KiB")
            raw = fs._pread(fs.physical(bytenr, disk_bytes), disk_bytes)
            self._last = (start, _decompress(comp, raw, ram, start))
        return start, self._last[1][offset:offset + nbytes]


def _decompress(comp: int, data: bytes, ram: int, where: int) -> bytes:
    """At most ``ram`` bytes of a zlib (1), lzo (2) or zstd (3) compressed extent."""
    if not 0 < ram <= MAX_COMPRESSED_RAM:
        raise _err(f"compressed extent at file offset {where}: {ram} bytes uncompressed")
    try:
        if comp == 1:
            return zlib.decompressobj().decompress(data, ram)
        if comp == 3:
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(ram)
        if comp == 2:
            return _btrfs_lzo(data, ram)
    except (zlib.error, ValueError) as exc:
        raise _err(f"compressed extent at file offset {where} is corrupt: {exc}") from exc
    except Exception as exc:  # zstandard.ZstdError has no public base to name here
        if isinstance(exc, PreflightError):
            raise
        raise _err(f"compressed extent at file offset {where} is corrupt: {exc}") from exc
    raise _err(f"extent at file offset {where}: unknown compression {comp}")


def _btrfs_lzo(data: bytes, ram: int) -> bytes:
    """Btrfs's lzo framing: total length, then (length, LZO1X data) segments per 4 KiB of
    output; a segment header never straddles a 4 KiB boundary of the compressed data."""
    if len(data) < 4:
        raise _err("lzo extent shorter than its header")
    total = min(struct.unpack_from("<I", data, 0)[0], len(data))
    pos, out = 4, bytearray()
    while pos < total and len(out) < ram:
        if 4096 - pos % 4096 < 4:
            pos += 4096 - pos % 4096  # padding to the next 4 KiB
            continue
        seg = struct.unpack_from("<I", data, pos)[0] if pos + 4 <= total else 0
        if seg == 0 or pos + 4 + seg > total:
            raise _err(f"lzo segment at {pos} of length {seg} runs past the extent")
        out += lzo1x_decompress(data[pos + 4:pos + 4 + seg], min(4096, ram - len(out)))
        pos += 4 + seg
    return bytes(out[:ram])


def open_btrfs(f: BinaryFile) -> BtrfsFilesystem:
    try:
        return BtrfsFilesystem(f)
    except struct.error as exc:
        raise _err(f"structure truncated: {exc}") from exc
