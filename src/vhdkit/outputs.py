"""Files vhdkit writes (converted disks, JUnit/JSON reports, charts): never over an input disk or
one of its parents, never over a non-regular file, always complete (temporary + rename), and
without ``--force`` never over a file that appeared meanwhile (exclusive link into place).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable

from .errors import DiskIOError, UsageError, VhdkitError
from .formats.base import file_kind

TMP_MARK = ".vhdkit-tmp-"


def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (by identity, else by resolved path)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def disk_files(path: str, parent: str | None = None) -> list[str]:
    """The files of a disk's chain (the disk, its parents), for refusing them as outputs; the
    paths given when the chain cannot be opened."""
    from .formats import open_disk

    out = [path] + ([parent] if parent else [])
    try:
        with open_disk(path, parent, strict=False) as disk:
            out += [m.path for m in disk.chain() if m.path]
    except (VhdkitError, OSError):
        pass
    return list(dict.fromkeys(out))


def refuse_output(path: str, protect: Iterable[str], what: str = "output") -> None:
    """Refuse ``path`` as an output when it is one of ``protect`` (an input disk or one of its
    parents) or exists and is not a regular file (device, FIFO, directory, symbolic link)."""
    for p in protect:
        if same_file(path, p):
            raise UsageError(f"{path}: the {what} would overwrite the input disk {p}; choose "
                             "another file")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DiskIOError(f"{path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} exists and is a {file_kind(st.st_mode)}, not a regular file: "
                         f"vhdkit never replaces it; choose another {what} path")


def temp_path(dst: str) -> str:
    """A hidden temporary beside ``dst``: ``.NAME.vhdkit-tmp-PID-RANDOM``."""
    directory, name = os.path.split(os.path.abspath(dst))
    return os.path.join(directory, f".{name}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_after(pid: int, when: float) -> bool:
    """True when process ``pid`` started after ``when`` (a Unix time), so that it cannot have
    written a file last modified then: its PID was reused. False where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()  # the name may hold spaces and ')'
        with open("/proc/stat", "rb") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith(b"btime "))
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
    except (OSError, StopIteration, ValueError, IndexError):
        return False
    # boot time has whole seconds: a margin keeps a writer that started in the same second
    return boot + ticks / os.sysconf("SC_CLK_TCK") > when + 2


def clean_stale_temporaries(directory: str) -> list[str]:
    """Remove vhdkit temporaries in ``directory`` left by processes that no longer run (a
    SIGKILLed convert); returns their names. Those of live processes are left alone; a live
    process that started after the temporary was last written is not its writer (the PID was
    reused), and its temporary goes too."""
    removed = []
    for entry in os.listdir(directory or "."):
        if not entry.startswith(".") or TMP_MARK not in entry:
            continue
        pid_text = entry.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        path = os.path.join(directory, entry)
        try:
            if _pid_alive(int(pid_text)) and not _started_after(int(pid_text),
                                                                 os.lstat(path).st_mtime):
                continue
            os.unlink(path)
            removed.append(entry)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            pass
    return removed


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _renameat2_noreplace(src: str, dst: str) -> bool:
    """rename(2) that fails with EEXIST instead of replacing; False when unavailable here."""
    import ctypes  # only where hard links fail: find_library may even run ldconfig
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), dst)


def move_into_place(tmp: str, dst: str, *, replace: bool) -> None:
    """Move the finished temporary ``tmp`` to ``dst``.

    Without ``replace`` exactly one of several concurrent writers wins: ``dst`` is created by a
    hard link (or renameat2 RENAME_NOREPLACE where links are not supported), which fails when it
    exists, and the loser gets a UsageError "already exists". With ``replace`` an existing
    regular file is replaced; a non-regular one never is.
    """
    if replace:
        refuse_output(dst, ())
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise UsageError(f"{dst} already exists; use --force to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                             errno.EXDEV):
            raise
        try:
            done = _renameat2_noreplace(tmp, dst)
        except FileExistsError:
            raise UsageError(f"{dst} already exists; use --force to replace it") from None
        if not done:
            raise DiskIOError(f"{dst}: this file system supports neither hard links nor "
                              "exclusive renames; use --force to replace the file") from exc
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def write_report(path: str, data: bytes, protect: Iterable[str] = ()) -> None:
    """Write a report file (JUnit, JSON, PNG) completely or not at all, never over an input disk
    in ``protect`` nor over a non-regular file."""
    refuse_output(path, protect, "report")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        move_into_place(tmp, path, replace=True)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise DiskIOError(f"{path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
