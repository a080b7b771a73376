"""Pre-flight: inspect the OS inside a disk image offline and judge Azure provisioning readiness.

volumes (partition tables, LVM, encryption) -> fs (libyal readers) -> engine (which OS) ->
linux / windows rules. Nothing is mounted and nothing runs as root.
"""

from __future__ import annotations

from .engine import preflight_disk
from .fileview import FileView
from .fs import Filesystem, Probe, open_filesystem, probe_filesystem
from .volumes import Volume, VolumeScan, scan_volumes

__all__ = [
    "FileView",
    "Filesystem",
    "Probe",
    "Volume",
    "VolumeScan",
    "open_filesystem",
    "preflight_disk",
    "probe_filesystem",
    "scan_volumes",
]
