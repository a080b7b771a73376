"""Filesystems read offline (libyal readers; Btrfs by ``btrfs``), behind one small interface.

``probe_filesystem`` names what a volume holds (ext4, xfs, vfat, ntfs, btrfs, swap, and kinds it
does not read: apfs, hfsplus, refs, zfs, bcachefs, ...) and its UUID and label (for /etc/fstab);
``open_filesystem`` returns a :class:`Filesystem` for the kinds vhdkit can read, or None for the
others (the caller names the type in a finding).
"""

from __future__ import annotations

import abc
import stat
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import PreflightError
from .volumes import BinaryFile

DEFAULT_MAX = 1 << 20  # config files larger than this are read truncated
MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class Probe:
    fstype: str | None  # None: nothing recognised (blank or unknown)
    uuid: str = ""
    label: str = ""


class Filesystem(abc.ABC):
    """Read-only access to files by absolute POSIX-style path ("/etc/fstab")."""

    fstype: str = ""

    @abc.abstractmethod
    def open_file(self, path: str) -> BinaryFile | None:
        """A file object for a regular file (symlinks followed), or None."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str] | None:
        """Names in a directory, or None when it is not a directory."""

    @abc.abstractmethod
    def kind(self, path: str) -> str | None:
        """'file', 'dir', 'symlink-dangling', 'other' or None when absent (symlinks followed)."""

    def exists(self, path: str) -> bool:
        return self.kind(path) is not None

    def is_dir(self, path: str) -> bool:
        return self.kind(path) == "dir"

    def file_size(self, path: str) -> int | None:
        f = self.open_file(path)
        return None if f is None else f.get_size()

    def read_file(self, path: str, max_size: int = DEFAULT_MAX) -> bytes | None:
        """The first ``max_size`` bytes of a regular file, or None when it is not one."""
        f = self.open_file(path)
        if f is None:
            return None
        try:
            f.seek(0)
            return f.read(min(f.get_size(), max_size))
        except (OSError, RuntimeError) as exc:
            raise PreflightError(f"{self.fstype}: cannot read {path}: {_one_line(exc)}") from exc

    def read_text(self, path: str, max_size: int = DEFAULT_MAX) -> str | None:
        data = self.read_file(path, max_size)
        return None if data is None else data.decode("utf-8", "replace")


class LibyalFilesystem(Filesystem):
    """ext2/3/4 (pyfsext), XFS (pyfsxfs), FAT (pyfsfat): the same file_entry API."""

    def __init__(self, volume: Any, fstype: str, keep: BinaryFile) -> None:
        self._volume = volume
        self._keep = keep  # the libyal volume reads through this object
        self.fstype = fstype
        self._fold = fstype == "vfat"  # FAT names are case-insensitive

    # -- path resolution (symlinks are resolved here: libyal does not follow them) --

    def _lookup(self, path: str) -> tuple[Any, bool]:
        """(entry or None, whether it is the root directory)."""
        try:
            return self._resolve(path)
        except (OSError, RuntimeError, ValueError) as exc:
            raise PreflightError(f"{self.fstype}: cannot look up {path}: {_one_line(exc)}") \
                from exc

    def _resolve(self, path: str) -> tuple[Any, bool]:
        # Walk component by component on real (symlink-free) paths: libyal looks paths up but
        # does not follow symlinks, and its by-name child lookup is unreliable.
        done: list[str] = []
        entry = self._volume.get_root_directory()
        todo = [c for c in path.split("/") if c not in ("", ".")]
        hops = 0
        while todo:
            comp = todo.pop(0)
            if comp == "..":
                done = done[:-1]
                entry = self._at(done)
                continue
            child = self._at([*done, comp])
            if child is None:
                return None, False
            if self._is_symlink(child):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None, False
                target = str(child.symbolic_link_target or "")
                if target.startswith("/"):
                    done = []
                todo = [c for c in target.split("/") if c not in ("", ".")] + todo
                entry = self._at(done)
                continue
            done.append(str(child.name) if self._fold else comp)
            entry = child
        return entry, not done

    def _at(self, parts: list[str]) -> Any:
        entry = self._volume.get_file_entry_by_path("/" + "/".join(parts))
        if entry is not None or not self._fold or not parts:
            return entry
        parent = self._at(parts[:-1])  # FAT: retry the last name case-insensitively
        if parent is None or not self._is_dir(parent, len(parts) == 1):
            return None
        want = parts[-1].casefold()
        return next((sub for sub in parent.sub_file_entries
                     if str(sub.name or "").casefold() == want), None)

    def _mode(self, entry: Any) -> int | None:
        return None if self._fold else int(entry.file_mode or 0)

    def _is_symlink(self, entry: Any) -> bool:
        mode = self._mode(entry)
        return mode is not None and stat.S_ISLNK(mode)

    def _is_dir(self, entry: Any, is_root: bool = False) -> bool:
        if is_root:  # FAT gives its root directory no directory attribute
            return True
        mode = self._mode(entry)
        if mode is None:
            return bool(int(entry.file_attribute_flags or 0) & 0x10)
        return stat.S_ISDIR(mode)

    def _is_file(self, entry: Any) -> bool:
        mode = self._mode(entry)
        return (not self._is_dir(entry)) if mode is None else stat.S_ISREG(mode)

    # -- the interface --

    def open_file(self, path: str) -> BinaryFile | None:
        entry, root = self._lookup(path)
        if entry is None or root or not self._is_file(entry):
            return None
        return entry  # type: ignore[no-any-return]

    def listdir(self, path: str) -> list[str] | None:
        entry, root = self._lookup(path)
        if entry is None or not self._is_dir(entry, root):
            return None
        try:
            return sorted(str(sub.name) for sub in entry.sub_file_entries
                          if sub.name not in (".", ".."))
        except (OSError, RuntimeError) as exc:
            raise PreflightError(f"{self.fstype}: cannot list {path}: {_one_line(exc)}") from exc

    def kind(self, path: str) -> str | None:
        entry, root = self._lookup(path)
        if entry is None:
            return None
        if self._is_dir(entry, root):
            return "dir"
        return "file" if self._is_file(entry) else "other"


def probe_filesystem(f: BinaryFile) -> Probe:
    """Name the filesystem (or other content) at the start of a volume by its signature."""
    head = _read(f, 0, 0x10300)  # through the Btrfs superblock's label (0x1012B..0x1022B)
    if len(head) < 512:
        return Probe(None)
    if head[3:11] == b"-FVE-FS-":
        return Probe("bitlocker")
    if head[:6] == b"LUKS\xba\xbe":
        return Probe("luks", _text(head[168:208]), _text(head[24:72]))
    if head[3:11] == b"NTFS    ":
        return Probe("ntfs", f"{struct.unpack_from('<Q', head, 72)[0]:016X}")
    if head[3:11] == b"EXFAT   ":
        return Probe("exfat")
    if head[:4] == b"XFSB":
        return Probe("xfs", str(uuid.UUID(bytes=head[32:48])), _text(head[108:120]))
    if head[1024 + 56:1024 + 58] == b"\x53\xef":
        sb = head[1024:2048]
        return Probe(_ext_kind(sb), str(uuid.UUID(bytes=sb[104:120])), _text(sb[120:136]))
    if head[0x10040:0x10048] == b"_BHRfS_M":
        return Probe("btrfs", str(uuid.UUID(bytes=head[0x10020:0x10030])),
                     _text(head[0x1012B:0x1022B]))
    named = _unreadable_kind(head)  # named so a finding can say pre-flight cannot look inside
    if named:
        return named
    for page in (4096, 8192, 16384, 65536):
        if head[page - 10:page] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return Probe("swap", str(uuid.UUID(bytes=head[1036:1052])), _text(head[1052:1068]))
    if head[0x8001:0x8006] == b"CD001":
        return Probe("iso9660")
    if head[:4] in (b"hsqs", b"sqsh"):
        return Probe("squashfs")
    if any(head[i:i + 8] == b"LABELONE" for i in range(0, 2048, 512)):
        return Probe("lvm2-pv")
    fat = _fat(head)
    if fat:
        return fat
    if _zfs_label(f):
        return Probe("zfs")
    return Probe(None)


BCACHE_MAGIC = bytes.fromhex("c68573f64e1a45ca8265f57f48ba6d81")
BCACHEFS_MAGIC = bytes.fromhex("c68573f666ce90a9d96a60cf803df7ef")
ZFS_UBERBLOCK_MAGIC = 0x00BAB10C


def _unreadable_kind(head: bytes) -> Probe | None:
    """ReFS, APFS, HFS+ and bcache(fs): kinds vhdkit names but does not read."""
    head = head.ljust(4096 + 512, b"\0")  # a tiny volume: its missing bytes match nothing
    if head[3:11] == b"ReFS\0\0\0\0" and head[16:20] == b"FSRS":
        return Probe("refs", f"{struct.unpack_from('<Q', head, 0x38)[0]:016X}")
    if head[32:36] == b"NXSB":  # the APFS container superblock (nx_superblock_t)
        return Probe("apfs", str(uuid.UUID(bytes=head[72:88])))
    sig, version = head[1024:1026], struct.unpack_from(">H", head, 1026)[0]
    if (sig, version) in ((b"H+", 4), (b"HX", 5)):
        return Probe("hfsplus")
    if sig == b"BD" and head[1024 + 0x7C:1024 + 0x7E] == b"H+":  # HFS+ in an HFS wrapper
        return Probe("hfsplus")
    sb = head[4096:4096 + 512]
    if sb[24:40] == BCACHEFS_MAGIC or (sb[24:40] == BCACHE_MAGIC
                                       and struct.unpack_from("<H", sb, 16)[0] >= 7):
        # bcachefs: u16 version >= 7 where bcache has a small u64 version
        return Probe("bcachefs", str(uuid.UUID(bytes=sb[56:72])), _text(sb[72:104]))
    if sb[24:40] == BCACHE_MAGIC:
        return Probe("bcache", str(uuid.UUID(bytes=sb[40:56])), _text(sb[72:104]))
    return None


def _zfs_label(f: BinaryFile) -> bool:
    """A ZFS vdev label: uberblocks (magic 0x00bab10c, either byte order) from 128 KiB on."""
    if f.get_size() < 256 << 10:
        return False
    ring = _read(f, 128 << 10, 128 << 10)
    for slot in range(0, len(ring) - 7, 1024):
        if ZFS_UBERBLOCK_MAGIC in struct.unpack_from("<Q", ring, slot) + \
                struct.unpack_from(">Q", ring, slot):
            return True
    return False


def _ext_kind(sb: bytes) -> str:
    compat, incompat = struct.unpack_from("<II", sb, 92)
    if incompat & 0x40 or incompat & 0x200:  # extents or flex_bg
        return "ext4"
    return "ext3" if compat & 0x4 else "ext2"  # has_journal


def _fat(head: bytes) -> Probe | None:
    if head[510:512] != b"\x55\xaa":
        return None
    if head[82:90] == b"FAT32   ":
        serial, label = struct.unpack_from("<I", head, 67)[0], head[71:82]
    elif head[54:59] == b"FAT12" or head[54:59] == b"FAT16":
        serial, label = struct.unpack_from("<I", head, 39)[0], head[43:54]
    else:
        return None
    return Probe("vfat", f"{serial >> 16:04X}-{serial & 0xFFFF:04X}", _text(label))


def open_filesystem(f: BinaryFile, probe: Probe | None = None) -> Filesystem | None:
    """A reader for ext2/3/4, XFS, FAT (and NTFS through ``ntfs``), or None when unsupported.

    Raises :class:`PreflightError` when a supported filesystem is damaged.
    """
    kind = (probe or probe_filesystem(f)).fstype
    if kind == "ntfs":
        try:
            from .ntfs import open_ntfs  # written by the Windows side
        except ImportError:
            return None
        return open_ntfs(f)
    if kind == "btrfs":
        from .btrfs import open_btrfs

        return open_btrfs(f)
    module = {"ext2": "pyfsext", "ext3": "pyfsext", "ext4": "pyfsext", "xfs": "pyfsxfs",
              "vfat": "pyfsfat"}.get(kind or "")
    if module is None or kind is None:
        return None
    lib = __import__(module)
    try:
        volume = lib.volume()
        f.seek(0)
        volume.open_file_object(f)
    except (OSError, RuntimeError, ValueError) as exc:
        raise PreflightError(f"{kind} filesystem cannot be opened: {_one_line(exc)}") from exc
    return LibyalFilesystem(volume, kind, f)


def _read(f: BinaryFile, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
