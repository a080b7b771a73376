"""NTFS volumes read through libfsntfs (``pyfsntfs``), behind the :class:`Filesystem` interface.

Paths use "/" and are case-insensitive, as Windows sees them (libfsntfs compares names through
the volume's $UpCase table). libfsntfs reads lazily through the file object it is given, so only
the MFT records and data runs asked for are read: a 100 MiB SOFTWARE hive is read cell by cell.
"""

from __future__ import annotations

from typing import Any

import pyfsntfs

from ..errors import PreflightError
from .fs import Filesystem
from .volumes import BinaryFile

NTFS_OEM_ID = b"NTFS    "
_LIB_ERRORS = (OSError, ValueError, RuntimeError)


def _one_line(exc: BaseException) -> str:
    """libyal messages chain every layer's complaint; the innermost is the cause."""
    parts = [p.strip() for p in str(exc).split(". ") if p.strip()]
    return (parts[-1] if parts else type(exc).__name__)[:200]


def _ntfs_path(path: str) -> str:
    return "\\" + "\\".join(p for p in path.replace("\\", "/").split("/") if p not in ("", "."))


class NtfsFilesystem(Filesystem):
    """An open NTFS volume."""

    fstype = "ntfs"

    def __init__(self, volume: Any, keep: BinaryFile) -> None:
        self._volume = volume
        self._keep = keep  # libfsntfs reads through this object

    def _entry(self, path: str) -> Any:
        where = _ntfs_path(path)
        try:
            if where == "\\":
                return self._volume.get_root_directory()
            return self._volume.get_file_entry_by_path(where)
        except _LIB_ERRORS as exc:
            raise PreflightError(f"ntfs: cannot look up {path}: {_one_line(exc)}") from exc

    def open_file(self, path: str) -> BinaryFile | None:
        """The file's unnamed data stream as a file object (read, seek, tell, get_size)."""
        entry = self._entry(path)
        if entry is None or entry.has_directory_entries_index():
            return None
        return entry  # type: ignore[no-any-return]

    def listdir(self, path: str) -> list[str] | None:
        entry = self._entry(path)
        if entry is None or not entry.has_directory_entries_index():
            return None
        try:
            return sorted({str(sub.name) for sub in entry.sub_file_entries})
        except _LIB_ERRORS as exc:
            raise PreflightError(f"ntfs: cannot list {path}: {_one_line(exc)}") from exc

    def kind(self, path: str) -> str | None:
        entry = self._entry(path)
        if entry is None:
            return None
        return "dir" if entry.has_directory_entries_index() else "file"


def open_ntfs(f: BinaryFile) -> NtfsFilesystem | None:
    """Open ``f`` as NTFS; None when its boot sector is not NTFS's.

    A boot sector that claims NTFS but cannot be opened raises :class:`PreflightError`.
    """
    try:
        f.seek(3)
        oem = f.read(8)
        f.seek(0)
    except OSError as exc:
        raise PreflightError(f"ntfs: cannot read the boot sector: {_one_line(exc)}") from exc
    if oem != NTFS_OEM_ID:
        return None
    volume = pyfsntfs.volume()
    try:
        volume.open_file_object(f)
    except _LIB_ERRORS as exc:
        raise PreflightError(f"ntfs filesystem cannot be opened: {_one_line(exc)}") from exc
    return NtfsFilesystem(volume, f)
