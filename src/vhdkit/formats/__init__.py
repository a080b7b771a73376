"""Container formats: one module per format (declarations, reader, allocation map), one detection
table (detect.py) and one opener (opener.py) that every command uses."""

from __future__ import annotations

from .base import VirtualDisk
from .opener import detect_format, open_disk
from .raw import RawDisk
from .vhd import DynamicVhdDisk, FixedVhdDisk, vhd_footer
from .vhdx import VhdxDisk

__all__ = [
    "DynamicVhdDisk",
    "FixedVhdDisk",
    "RawDisk",
    "VhdxDisk",
    "VirtualDisk",
    "detect_format",
    "open_disk",
    "vhd_footer",
]
