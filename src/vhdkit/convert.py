"""Write the Azure view of any disk to a fixed VHD file: streaming, sparse, atomic, verifiable.

``convert`` reads only the source's data extents in bounded chunks, writes only the non-zero
sectors into a temporary file that was first extended to its full size (so zeros stay holes),
writes the footer last, fsyncs, and moves the temporary into place: exclusively (a hard link that
fails when DST exists, so of two concurrent converts exactly one wins) or, with ``force``, by a
rename over a regular file (never over a device, FIFO or symbolic link). ``convert_in_place``
grows a fixed VHD to a whole MiB without copying, through a small journal so that a rerun
finishes an interrupted run.

Test-only hook: when the environment variable ``VHDKIT_TEST_CRASH_AT`` names a step (see
:data:`CRASH_POINTS`), the process kills itself with SIGKILL at that step. The crash-safety tests
use it to stop a real process at a precise point; nothing else should set it. Likewise
``VHDKIT_TEST_RACE_HOLD`` holds a finished output just before it is moved into place (see
:func:`_race_window`), so that the race tests can force two converts into the same window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .azure_view import AzureView, fixed_footer
from .errors import ConvertError, DiskIOError
from .extents import Extent, align_to_sectors, total
from .formats import VirtualDisk, open_disk, vhd_footer
from .formats.base import file_kind
from .formats.vhd_structs import FOOTER_SIZE, QEMU_TRUSTS_CURRENT_SIZE, DiskType, Footer
from .outputs import (
    TMP_MARK,
    clean_stale_temporaries,
    move_into_place,
    refuse_output,
    same_file,
    temp_path,
)
from .report import Report
from .sparse_io import (
    CHUNK,
    Flusher,
    SparseDigest,
    copy_nonzero,
    data_digest,
    fsync_dir,
)

CRASH_ENV = "VHDKIT_TEST_CRASH_AT"
RACE_ENV = "VHDKIT_TEST_RACE_HOLD"
CRASH_POINTS = ("after-data", "after-footer", "before-rename", "after-rename",
                "inplace-after-journal", "inplace-after-footer", "inplace-after-zero")
JOURNAL_SUFFIX = ".vhdkit-inplace"

#: progress(phase, done, total): phase is "convert" or "verify"; bytes of data extents
Progress = Callable[[str, int, int], None]


@dataclass
class ConvertResult:
    source: str
    destination: str
    input_kind: str
    source_size: int
    virtual_size: int
    file_size: int
    #: bytes of the source's data extents that were read and scanned
    data_bytes: int
    #: non-zero bytes written (the rest of the output is holes)
    bytes_written: int
    #: st_blocks * 512 of the output file
    allocated_bytes: int
    seconds: float
    in_place: bool = False
    #: a previous interrupted in-place run was completed first
    recovered: bool = False
    #: nothing to do: the disk already had the requested size and an Azure-ready footer
    unchanged: bool = False
    digest: str | None = None
    verified: bool = False
    #: hidden temporaries of killed runs (dead processes) removed from the destination's directory
    stale_temporaries_removed: list[str] = field(default_factory=list)
    report: Report | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("report")
        if self.report is not None:
            out["check"] = {"ready": self.report.ready,
                            "errors": [f.to_dict() for f in self.report.errors]}
        return out


def _race_window() -> None:
    """Test-only: hold the output just before it is moved into place, until the file named by
    VHDKIT_TEST_RACE_HOLD exists, so a test can run a second convert into that window."""
    hold = os.environ.get(RACE_ENV)
    if hold:
        with contextlib.suppress(OSError):
            os.close(os.open(f"{hold}.{os.getpid()}.ready", os.O_CREAT | os.O_WRONLY, 0o644))
        deadline = time.monotonic() + 30
        while not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)


def _crash_point(name: str) -> None:
    """Test-only: SIGKILL ourselves at ``name`` when VHDKIT_TEST_CRASH_AT asks for it."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _refuse_destination(disk: VirtualDisk, dst: str, force: bool) -> None:
    chain = disk.chain()  # parents and backing files of every format
    for i, member in enumerate(chain):
        if member.path and same_file(member.path, dst):
            if i == 0:
                raise ConvertError(f"{dst} is the source disk itself; choose another destination")
            raise ConvertError(f"{dst} is the parent disk {member.path} of {disk.path}; "
                               "writing it would destroy the source")
        # the files a descriptor names (VMDK extents) are the source's data too
        for part in getattr(member, "extent_files", ()):
            if same_file(part, dst):
                raise ConvertError(f"{dst} holds data of the source disk {member.path} (an "
                                   "extent); writing it would destroy the source")
    if os.path.lexists(dst):
        if os.path.isdir(dst):
            raise ConvertError(f"{dst} is a directory; give the path of the VHD file to write")
        refuse_output(dst, (), "destination")  # a device, FIFO or symbolic link: never replaced
        if not force:
            raise ConvertError(f"{dst} already exists; use --force to replace it")


def _check_space(directory: str, needed: int) -> None:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise ConvertError(f"not enough free space in {directory}: up to {needed} bytes of data "
                           f"to write, {free} bytes available")


def _open_source(src: VirtualDisk | str | os.PathLike[str], parent: str | os.PathLike[str] | None,
                 member: int | None = None, fmt: str | None = None,
                 ) -> tuple[VirtualDisk, bool]:
    if isinstance(src, VirtualDisk):
        return src, False
    return open_disk(src, parent, disk=member, format=fmt), True


def convert_disk(
    src: VirtualDisk | str | os.PathLike[str],
    dst: str | os.PathLike[str],
    size: int | None = None,
    *,
    force: bool = False,
    verify: bool = False,
    parent: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    chunk: int = CHUNK,
    member: int | None = None,
    format: str | None = None,
) -> ConvertResult:
    """Write ``src`` (a path or an open VirtualDisk) to ``dst`` as an Azure-ready fixed VHD.

    ``size`` (a whole number of MiB, at least the disk's size) defaults to the disk's size
    rounded up to a whole MiB. With ``verify`` the written file is re-read as a disk and its data
    digest compared with the source's before it is renamed into place, and the readiness rules
    of ``check`` are run on the result (``result.report``). ``member`` picks a disk of an OVA
    holding several (1 is the first). ``format`` forces the reader of a ``src`` path, as
    ``open_disk`` does.
    """
    started = time.monotonic()
    dst = os.fspath(dst)
    disk, owned = _open_source(src, parent, member, format)
    try:
        view = AzureView.of(disk, size)
        _refuse_destination(disk, dst, force)
        extents = align_to_sectors(view.data_extents(), view.virtual_size)
        data_bytes = total(extents)
        directory = os.path.dirname(os.path.abspath(dst))
        if not os.path.isdir(directory):
            raise DiskIOError(f"{directory}: no such directory")
        _check_space(directory, data_bytes + FOOTER_SIZE)
        stale = clean_stale_temporaries(directory)
        tmp = temp_path(dst)
        try:
            try:
                written, digest = _write_temp(view, extents, tmp, chunk, verify, progress)
            except OSError as exc:  # name the destination, not the hidden temporary
                raise DiskIOError(f"{dst}: {exc.strerror or exc} (while writing)") from None
            if verify:
                _verify_copy(tmp, view, digest, chunk, progress)
            _crash_point("before-rename")
            _race_window()
            move_into_place(tmp, dst, replace=force)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        _crash_point("after-rename")
        fsync_dir(directory)
        report = None
        if verify:
            from .check import check_path  # check imports the readers; keep convert light

            report = check_path(dst)
        return ConvertResult(
            source=disk.path, destination=dst, input_kind=disk.kind, source_size=disk.size,
            virtual_size=view.virtual_size, file_size=view.stream_size, data_bytes=data_bytes,
            bytes_written=written, allocated_bytes=os.stat(dst).st_blocks * 512,
            seconds=time.monotonic() - started, digest=digest, verified=verify, report=report,
            stale_temporaries_removed=stale)
    finally:
        if owned:
            disk.close()


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_temp(view: AzureView, extents: list[Extent], tmp: str, chunk: int, want_digest: bool,
                progress: Progress | None) -> tuple[int, str | None]:
    """Stream the view into a new file at ``tmp``; returns (bytes written, digest or None)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        # Full length first: everything not written below stays a hole and reads as zeros.
        os.ftruncate(fd, view.stream_size)
        digest = SparseDigest() if want_digest else None
        todo, done = total(extents), 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("convert", done, todo)

        flusher = Flusher(fd)

        def wrote(run: Extent, data: memoryview) -> None:
            if digest is not None:
                digest.update(run.start, data)
            flusher.wrote(run.end)

        try:
            written = copy_nonzero(view.disk, extents, fd, chunk, tick, wrote)
        finally:
            flusher.stop()
        _crash_point("after-data")
        # The footer goes last: until it is written the file is not a valid VHD.
        os.pwrite(fd, view.footer_bytes, view.virtual_size)
        _crash_point("after-footer")
        os.fsync(fd)
    finally:
        os.close(fd)
    return written, None if digest is None else digest.hexdigest(view.virtual_size)


def _verify_copy(tmp: str, view: AzureView, want: str | None, chunk: int,
                 progress: Progress | None) -> None:
    with open_disk(tmp, format="vhd") as out:
        if out.kind != "vhd-fixed" or out.size != view.virtual_size:
            raise ConvertError(f"verification failed: the output reads as a {out.kind} of "
                               f"{out.size} bytes, expected a fixed VHD of {view.virtual_size}")
        todo, done = total(out.extents()), 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("verify", done, todo)

        got = data_digest(out, chunk, tick)
    if got != want:
        raise ConvertError(f"verification failed: the output's data digest {got} differs from "
                           f"the source's {want}; nothing was written to the destination")


# ---------------------------------------------------------------------------------------------
# In-place repair of a fixed VHD.
#
# Order of operations, and what a crash at each point leaves behind:
#   0. Write the journal ``.DISK.vhdkit-inplace`` (old footer + new footer, 1024 bytes) through a
#      temporary name + rename, fsync file and directory. Killed before the rename: no journal,
#      the disk is untouched (the old valid disk); a rerun starts afresh.
#   1. Write the new footer at the new size (the file grows; the gap between the old footer and
#      the new one is a hole), fsync. Killed after it: the file ends with a valid footer for the
#      new size, i.e. it is already the new valid disk, but the old footer's bytes still sit in
#      its data area. On power loss the new tail may be torn; the journal still has it.
#   2. Zero the old footer's sector (only if it still holds the old footer), fsync.
#   3. Remove the journal, fsync the directory.
# A rerun that finds a valid journal redoes steps 1-3, each idempotent, then proceeds as normal
# (usually: nothing left to do). The journal, not a scan of the disk, says where the old footer
# was: with --size the old footer may lie anywhere below the new end.
# ---------------------------------------------------------------------------------------------

def journal_path(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{JOURNAL_SUFFIX}")


def _valid_fixed_footer(raw: bytes) -> Footer | None:
    if len(raw) != FOOTER_SIZE:
        return None
    f = Footer.parse(raw)
    if f.problems(raw, 0) or f.disk_type != DiskType.FIXED:
        return None
    return f


def _read_journal(path: str) -> tuple[bytes, bytes] | None:
    """(old footer, new footer) of an interrupted run; None if absent or incomplete."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(2 * FOOTER_SIZE + 1)
    except FileNotFoundError:
        return None
    old, new = raw[:FOOTER_SIZE], raw[FOOTER_SIZE:]
    fo, fn = _valid_fixed_footer(old), _valid_fixed_footer(new)
    if fo is None or fn is None or fn.current_size < fo.current_size:
        return None
    return old, new


def _write_journal(path: str, old: bytes, new: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, old + new)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def _finish_in_place(fd: int, disk_path: str, old_raw: bytes, new_raw: bytes,
                     journal: str) -> None:
    old, new = Footer.parse(old_raw), Footer.parse(new_raw)
    size_now = os.fstat(fd).st_size
    allowed = {old.current_size + FOOTER_SIZE, new.current_size + FOOTER_SIZE}
    if size_now not in allowed:
        raise ConvertError(f"{disk_path}: an interrupted in-place repair left {journal}, but the "
                           f"file is {size_now} bytes (expected one of {sorted(allowed)}); "
                           "restore the disk from a copy, then delete the journal")
    os.pwrite(fd, new_raw, new.current_size)
    os.fsync(fd)
    _crash_point("inplace-after-footer")
    if new.current_size > old.current_size:
        here = os.pread(fd, FOOTER_SIZE, old.current_size)
        if here == old_raw:
            os.pwrite(fd, bytes(FOOTER_SIZE), old.current_size)
            os.fsync(fd)
    _crash_point("inplace-after-zero")
    _unlink_quiet(journal)
    fsync_dir(os.path.dirname(journal))


def _footer_needs_rewrite(f: Footer) -> bool:
    """qemu would read another size than Azure from this footer (see check's geometry rule)."""
    qemu_uses_chs = f.creator_app not in QEMU_TRUSTS_CURRENT_SIZE and (
        f.cylinders, f.heads, f.sectors_per_track) != (65535, 16, 255)
    return qemu_uses_chs and f.geometry_size != f.current_size


def convert_in_place(path: str | os.PathLike[str], size: int | None = None) -> ConvertResult:
    """Grow the fixed VHD at ``path`` to a whole MiB (or ``size``) by extending the file and
    rewriting its footer; no copy. Completes an interrupted earlier run first."""
    started = time.monotonic()
    path = os.fspath(path)
    journal = journal_path(path)
    try:
        # O_NONBLOCK: a FIFO or a device must not hang the open; regular files only below.
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError as exc:
        raise DiskIOError(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise DiskIOError(f"{path}: permission denied (in-place repair writes the file)") from exc
    except IsADirectoryError as exc:
        raise DiskIOError(f"{path}: is a directory, not a disk image") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConvertError(f"{path}: is a {file_kind(mode)}; --in-place works on regular "
                               "files only")
        os.set_blocking(fd, True)
        recovered = False
        pending = _read_journal(journal)
        if pending is not None:
            _finish_in_place(fd, path, *pending, journal)
            recovered = True
        else:
            _unlink_quiet(journal)  # an incomplete journal: the disk was never touched
            _unlink_quiet(f"{journal}.tmp")
        return _grow(fd, path, journal, size, started, recovered)
    finally:
        os.close(fd)


def _grow(fd: int, path: str, journal: str, size: int | None, started: float,
          recovered: bool) -> ConvertResult:
    with open_disk(path) as disk:
        footer = vhd_footer(disk)
        if disk.kind != "vhd-fixed" or footer is None:
            raise ConvertError(f"{path}: --in-place repairs fixed VHDs only (this is a "
                               f"{disk.kind}); use: vhdkit convert SRC DST")
        file_size = os.fstat(fd).st_size
        old_size = disk.size
        if file_size != old_size + FOOTER_SIZE:
            raise ConvertError(f"{path}: file size {file_size} is not the virtual size "
                               f"{old_size} + 512; in-place repair cannot tell data from "
                               "padding: use vhdkit convert SRC DST")
        view = AzureView.of(disk, size)
        target = view.virtual_size
        if target == old_size and not _footer_needs_rewrite(footer):
            return _in_place_result(path, disk.kind, old_size, old_size, started, recovered,
                                    unchanged=True)
        old_raw = os.pread(fd, FOOTER_SIZE, old_size)
        # Keep identity and creation time so a rerun writes the very same footer.
        uid = footer.unique_id if any(footer.unique_id) else view.footer.unique_id
        new_raw = fixed_footer(target, uid, footer.timestamp).build()
        kind = disk.kind
    _write_journal(journal, old_raw, new_raw)
    _crash_point("inplace-after-journal")
    _finish_in_place(fd, path, old_raw, new_raw, journal)
    return _in_place_result(path, kind, old_size, target, started, recovered)


def _in_place_result(path: str, kind: str, old: int, new: int, started: float, recovered: bool,
                     unchanged: bool = False) -> ConvertResult:
    st = os.stat(path)
    return ConvertResult(
        source=path, destination=path, input_kind=kind, source_size=old, virtual_size=new,
        file_size=st.st_size, data_bytes=0, bytes_written=0 if unchanged else 2 * FOOTER_SIZE,
        allocated_bytes=st.st_blocks * 512, seconds=time.monotonic() - started, in_place=True,
        recovered=recovered, unchanged=unchanged)


__all__ = ["TMP_MARK", "ConvertResult", "clean_stale_temporaries", "convert_disk",
           "convert_in_place", "journal_path"]
