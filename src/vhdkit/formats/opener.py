"""``open_disk``: detect a file's container and open it, with its chain of parents."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import FormatError, ParentNotFound, UnsupportedDisk, UsageError
from .base import VirtualDisk, open_fd
from .detect import BY_KEY, detect, forced, refusal
from .raw import RawDisk
from .vhd import open_vhd_disk

#: Longest chain of parents (or backing files) vhdkit opens. Loops are found by file identity,
#: not by this limit; it only bounds open files and recursion (documented in README).
MAX_PARENT_DEPTH = 128
#: containers that may hold several disks (``open_disk(..., disk=N)`` picks one)
HOLD_SEVERAL = ("ova",)


class ChainContext:
    """What a reader needs to open the next disk of its chain (parent, backing file, extent).

    Every reader goes through it, so the chain rules hold for every format: a reference found
    inside a disk never leaves the child's directory tree (``resolve``), a chain never visits the
    same file twice and never grows past ``MAX_PARENT_DEPTH`` (``open_parent``). A parent the
    user names explicitly (``--parent``) is handed to the reader as ``parent`` and skips
    ``resolve``; the reader still checks its identity (VHD unique id, VMDK CID, ...).
    """

    def __init__(self, strict: bool, depth: int, seen: frozenset[tuple[int, int]],
                 member: int | None = None) -> None:
        self.strict = strict
        self.depth = depth
        self.seen = seen
        #: which disk of a container holding several (an OVA), 1-based; None: the only one
        self.member = member

    def resolve(self, child: str, reference: str) -> str:
        """The path a reference stored in ``child`` names, relative to the child's directory.

        Refuses (ParentNotFound) a reference that leaves the child's directory tree, absolute or
        through ``..`` or a symbolic link: a disk received from someone else must not make vhdkit
        read other files of this machine.
        """
        here = os.path.dirname(os.path.realpath(child))
        target = os.path.realpath(os.path.join(here, reference))
        if os.path.commonpath([here, target]) != here:
            raise ParentNotFound(
                f"{child}: refers to {reference!r}, outside the disk's directory {here}; "
                "vhdkit follows references only inside it (name the file with --parent if you "
                "trust it)")
        return target

    def open_parent(self, path: str, fmt: str | None = None) -> VirtualDisk:
        """Open the next disk of the chain (depth and loops checked)."""
        return _open(path, None, fmt, self.strict, self.depth + 1, self.seen)


#: A reader: (path, fd it owns from the call on, also when it fails, file size, explicit parent,
#: chain context).
Reader = Callable[[str, int, int, "str | None", ChainContext], VirtualDisk]


def _raw(path: str, fd: int, size: int, parent: str | None, ctx: ChainContext) -> VirtualDisk:
    if size == 0:
        os.close(fd)
        raise FormatError("file", 0, "empty file (0 bytes)")
    return RawDisk(path, fd, size)


def _vhd(path: str, fd: int, size: int, parent: str | None, ctx: ChainContext) -> VirtualDisk:
    return open_vhd_disk(path, fd, size, parent=parent, strict=ctx.strict,
                         open_parent=ctx.open_parent, resolve=ctx.resolve)


def _vhdx(path: str, fd: int, size: int, parent: str | None, ctx: ChainContext) -> VirtualDisk:
    from .vhdx import VhdxDisk  # libvhdi, numpy and construct load only for a VHDX

    # libvhdi reads VHDs too: a forced --format vhdx must not accept one.
    if os.pread(fd, 8, 0) != b"vhdxfile":
        os.close(fd)
        raise FormatError("signature", 0, "not a VHDX file (no 'vhdxfile' signature)")
    return VhdxDisk(path, fd)


def _qcow2(path: str, fd: int, size: int, parent: str | None, ctx: ChainContext) -> VirtualDisk:
    from .qcow2 import open_qcow2  # zstd and ISA-L load only for a qcow2

    return open_qcow2(path, fd, size, parent, ctx)


def _vmdk(path: str, fd: int, size: int, parent: str | None, ctx: ChainContext) -> VirtualDisk:
    from .vmdk import open_vmdk  # numpy and construct load only for a VMDK

    return open_vmdk(path, fd, size, parent, ctx)


def _ova(path: str, fd: int, size: int, parent: str | None, ctx: ChainContext) -> VirtualDisk:
    from .ova import open_ova

    return open_ova(path, fd, size, parent, ctx.member)


def _vdi(path: str, fd: int, size: int, parent: str | None, ctx: ChainContext) -> VirtualDisk:
    from .vdi import open_vdi_disk  # numpy: loaded only when a VDI is read

    return open_vdi_disk(path, fd, size, parent, ctx.open_parent)


READERS: dict[str, Reader] = {"raw": _raw, "vhd": _vhd, "vhdx": _vhdx, "qcow2": _qcow2,
                              "vmdk": _vmdk, "vmdk-descriptor": _vmdk, "ova": _ova,
                              "vdi": _vdi}


def detect_format(path: str | os.PathLike[str]) -> str:
    """The reader key for a file ("raw", "vhd", ...); refuses containers vhdkit does not read."""
    p = os.fspath(path)
    fd, size = open_fd(p)
    try:
        return detect(fd, size, p)
    finally:
        os.close(fd)


def open_disk(
    path: str | os.PathLike[str],
    parent: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    strict: bool = True,
    disk: int | None = None,
) -> VirtualDisk:
    """Open any supported disk image as a :class:`VirtualDisk`.

    ``format`` forces a reader ('raw', 'vhd', 'vhdx', ...) instead of detecting it. ``parent``
    names the parent of a differencing disk explicitly; otherwise it is found through the parent
    locators, relative to the child. ``strict=False`` records recoverable defects on
    ``disk.image.anomalies`` instead of raising (used by ``check``). ``disk`` picks one disk of
    a container that holds several (an OVA), counted from 1 in the order ``inspect`` lists them.
    """
    return _open(os.fspath(path), None if parent is None else os.fspath(parent), format, strict, 0,
                 frozenset(), disk)


def _open(path: str, parent: str | None, fmt: str | None, strict: bool, depth: int,
          seen: frozenset[tuple[int, int]], member: int | None = None) -> VirtualDisk:
    if depth > MAX_PARENT_DEPTH:
        raise ParentNotFound(f"{path}: the chain of parents is longer than vhdkit's limit of "
                             f"{MAX_PARENT_DEPTH} disks")
    if fmt is not None and fmt not in READERS:
        sig = BY_KEY.get(fmt)
        if sig is not None:
            raise refusal(path, sig)
        raise UnsupportedDisk(f"unknown format {fmt!r} (known: {', '.join(sorted(READERS))})")
    fd, size = open_fd(path)
    try:
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            raise ParentNotFound(f"{path}: the chain of parents loops back to this file")
        kind = detect(fd, size, path) if fmt is None else forced(fd, size, path, fmt)
        reader = READERS[kind]
        if member is not None and kind not in HOLD_SEVERAL:
            raise UsageError(f"{path}: --disk {member} picks a disk of an OVA; this {kind} image "
                             "is one disk")
    except BaseException:
        os.close(fd)
        raise
    # The reader owns the fd from here on, also when it fails.
    disk = reader(path, fd, size, parent, ChainContext(strict, depth, seen | {ident}, member))
    if parent is not None and strict and len(disk.chain()) == 1:
        # Ignored, the user's parent would hide a mistake: the wrong child, or a child that
        # was already merged. (Lenient opening, for check, may have dropped a parent it could
        # not use, and reports that as a finding.)
        disk.close()
        raise UsageError(f"{path}: --parent names the parent of a differencing disk (or the "
                         f"backing file of a qcow2); this {kind} image reads from none, so "
                         "--parent does not apply")
    return disk
