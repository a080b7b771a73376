"""Read-only access to Windows registry hives through libregf (``pyregf``).

Paths use backslashes and are case-insensitive, as in Windows. In a SYSTEM hive the
``CurrentControlSet`` component is resolved through ``Select\\Current`` (``ControlSet00N``), since
offline hives do not contain the link Windows creates at boot. Every libregf failure becomes a
:class:`~vhdkit.errors.FormatError` naming the hive and the key, so callers can turn it into a
finding instead of a traceback.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, Protocol

import pyregf

from ..errors import FormatError

REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_DWORD_BIG_ENDIAN = 5
REG_MULTI_SZ = 7
REG_QWORD = 11

#: Values larger than this are refused: the rules only need small settings.
MAX_VALUE_SIZE = 1 << 20

RegData = int | str | list[str] | bytes


class HiveFile(Protocol):
    """What libregf reads a hive through (a BytesIO, a libyal file entry, a file view)."""

    def read(self, size: int = ..., /) -> bytes: ...
    def seek(self, offset: int, whence: int = ..., /) -> int: ...
    def tell(self) -> int: ...


@dataclass(frozen=True)
class RegValue:
    """A decoded value: ``data`` is an int (DWORD/QWORD), str, list of str or raw bytes."""

    name: str
    type: int
    data: RegData


def _first_line(exc: BaseException) -> str:
    """libregf chains every layer's complaint ("fn: problem. fn: problem."); keep the innermost
    problem, without its function name."""
    parts = [p.strip() for p in str(exc).split(". ") if p.strip()]
    inner = [p for p in parts if not p.startswith("pyregf_")] or parts or [type(exc).__name__]
    return inner[0].split(": ", 1)[-1].rstrip(".")[:200]


def _utf16(raw: bytes) -> str:
    text = raw[: len(raw) - len(raw) % 2].decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]


def decode(value_type: int, raw: bytes) -> RegData:
    """Decode raw value bytes by type; unknown or short data stays bytes."""
    if value_type in (REG_SZ, REG_EXPAND_SZ):
        return _utf16(raw)
    if value_type == REG_MULTI_SZ:
        text = raw[: len(raw) - len(raw) % 2].decode("utf-16-le", errors="replace")
        return [s for s in text.split("\0") if s]
    if value_type == REG_DWORD and len(raw) >= 4:
        return int(struct.unpack_from("<I", raw)[0])
    if value_type == REG_DWORD_BIG_ENDIAN and len(raw) >= 4:
        return int(struct.unpack_from(">I", raw)[0])
    if value_type == REG_QWORD and len(raw) >= 8:
        return int(struct.unpack_from("<Q", raw)[0])
    return raw


class Hive:
    """One open hive. ``name`` (e.g. "SYSTEM") is used in evidence and error messages."""

    def __init__(self, fileobj: HiveFile, name: str) -> None:
        self.name = name
        self._file: Any = pyregf.file()
        try:
            self._file.open_file_object(fileobj)
        except (OSError, ValueError, TypeError) as exc:
            raise FormatError(f"registry hive {name}", None, _first_line(exc)) from exc
        self._fileobj = fileobj  # libregf reads lazily: keep the object alive
        self._control_set: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> Hive:
        return cls(io.BytesIO(data), name)

    def close(self) -> None:
        self._file.close()

    # -- paths -------------------------------------------------------------------------------

    @property
    def current_control_set(self) -> str | None:
        """``ControlSet00N`` named by ``Select\\Current``, or None when absent or not a DWORD."""
        if self._control_set is None:
            current = self.value("Select", "Current")
            if current is not None and isinstance(current.data, int) and 0 < current.data < 1000:
                self._control_set = f"ControlSet{current.data:03d}"
        return self._control_set

    def resolve(self, path: str) -> str:
        """Normalize separators and replace a leading ``CurrentControlSet``."""
        parts = [p for p in path.replace("/", "\\").split("\\") if p]
        if parts and parts[0].lower() == "currentcontrolset":
            current = self.current_control_set
            if current is None:
                raise FormatError(f"{self.name}\\Select\\Current", None,
                                  "missing or not a DWORD: cannot resolve CurrentControlSet")
            parts[0] = current
        return "\\".join(parts)

    def display(self, path: str, value: str | None = None) -> str:
        """Evidence form of a key or value: ``SYSTEM\\ControlSet001\\Services\\cdrom\\Start``."""
        try:
            shown = self.resolve(path)
        except FormatError:
            shown = path
        return "\\".join(x for x in (self.name, shown, value) if x)

    # -- keys and values ---------------------------------------------------------------------

    def _key(self, path: str) -> Any:
        resolved = self.resolve(path)
        try:
            return self._file.get_key_by_path("\\" + resolved)
        except (OSError, ValueError) as exc:
            raise FormatError(f"registry key {self.name}\\{resolved}", None,
                              _first_line(exc)) from exc

    def has_key(self, path: str) -> bool:
        return self._key(path) is not None

    def subkeys(self, path: str) -> list[str] | None:
        """Names of the subkeys of ``path``, or None when the key does not exist."""
        key = self._key(path)
        if key is None:
            return None
        try:
            return [str(sub.name) for sub in key.sub_keys]
        except (OSError, ValueError) as exc:
            raise FormatError(f"registry key {self.display(path)}", None,
                              _first_line(exc)) from exc

    def _raw_value(self, path: str, name: str) -> RegValue | None:
        key = self._file.get_key_by_path("\\" + path)
        if key is None:
            return None
        value = key.get_value_by_name(name)
        if value is None:
            return None
        size = value.get_data_size()
        if size > MAX_VALUE_SIZE:
            raise FormatError(f"registry value {self.name}\\{path}\\{name}", None,
                              f"{size} bytes of data, more than {MAX_VALUE_SIZE}")
        raw = bytes(value.data or b"") if size else b""
        kind = int(value.type)
        return RegValue(str(value.name), kind, decode(kind, raw))

    def value(self, path: str, name: str) -> RegValue | None:
        """The value ``name`` of key ``path``; None when the key or the value is absent."""
        resolved = self.resolve(path)
        try:
            return self._raw_value(resolved, name)
        except (OSError, ValueError) as exc:
            raise FormatError(f"registry value {self.name}\\{resolved}\\{name}", None,
                              _first_line(exc)) from exc

    def dword(self, path: str, name: str) -> int | None:
        """An integer value (DWORD or QWORD); None when absent or of another type."""
        found = self.value(path, name)
        return found.data if found is not None and isinstance(found.data, int) else None

    def string(self, path: str, name: str) -> str | None:
        """A REG_SZ / REG_EXPAND_SZ value; None when absent or of another type."""
        found = self.value(path, name)
        return found.data if found is not None and isinstance(found.data, str) else None
