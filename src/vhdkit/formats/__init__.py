"""Container formats: one module per format (declarations, reader, allocation map), one detection
table (detect.py) and one opener (opener.py) that every command uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import VirtualDisk
from .opener import detect_format, open_disk
from .raw import RawDisk
from .vhd import DynamicVhdDisk, FixedVhdDisk, vhd_footer

if TYPE_CHECKING:
    from .vdi import VdiDisk
    from .vhdx import VhdxDisk


def __getattr__(name: str) -> Any:
    # VhdxDisk pulls in libvhdi, VdiDisk numpy: only when asked for (commands on other formats
    # start faster)
    if name == "VhdxDisk":
        from .vhdx import VhdxDisk

        return VhdxDisk
    if name == "VdiDisk":
        from .vdi import VdiDisk

        return VdiDisk
    raise AttributeError(f"module 'vhdkit.formats' has no attribute {name!r}")

__all__ = [
    "DynamicVhdDisk",
    "FixedVhdDisk",
    "RawDisk",
    "VdiDisk",
    "VhdxDisk",
    "VirtualDisk",
    "detect_format",
    "open_disk",
    "vhd_footer",
]
