"""Filesystems pre-flight names but cannot look inside, and the finding that says so.

A volume of one of these kinds is never passed over in silence: its OS (if it holds one) is not
judged, so when no OS was found elsewhere the finding is a warning, not a clean bill.
"""

from __future__ import annotations

from ..report import Finding
from .fs import Probe

# fstype -> (name people know, why vhdkit does not read it)
UNREADABLE: dict[str, tuple[str, str]] = {
    "zfs": ("ZFS", "a ZFS pool member: pools are not read"),
    "bcachefs": ("bcachefs", "bcachefs is not read"),
    "bcache": ("bcache", "a bcache cache or backing device: the filesystem is on the device "
               "bcache assembles, which is not read"),
    "apfs": ("APFS", "an Apple File System container: not read (macOS does not run on Azure)"),
    "hfsplus": ("HFS+", "Apple HFS+: not read (macOS does not run on Azure)"),
    "hfs": ("HFS", "Apple HFS: not read"),
    "refs": ("ReFS", "Windows ReFS: not read (Windows boots only from NTFS)"),
    "exfat": ("exFAT", "exFAT: not read"),
    "iso9660": ("ISO 9660", "a CD/DVD image filesystem: not read"),
    "squashfs": ("SquashFS", "a read-only compressed image: not read"),
}

CHECK_INSIDE = ("check the OS inside yourself against Azure's preparation guide (agent, Hyper-V "
                "drivers in the initramfs, console=ttyS0, deprovisioning), or run vhdkit "
                "preflight on a copy whose root is ext4, XFS or NTFS")


def pretty(fstype: str) -> str:
    return UNREADABLE.get(fstype, (fstype, ""))[0]


def unreadable_finding(label: str, probe: Probe, os_found: bool) -> Finding:
    """``fs.unsupported``: info beside an OS that was judged, a warning when none was."""
    assert probe.fstype is not None
    name, why = UNREADABLE.get(probe.fstype, (probe.fstype, f"{probe.fstype} is not read"))
    ids = ", ".join(p for p in (f"uuid {probe.uuid}" if probe.uuid else "",
                                f"label {probe.label!r}" if probe.label else "") if p)
    return Finding(
        "fs.unsupported", "info" if os_found else "warning",
        f"{name} on {label}: pre-flight cannot look inside" + (
            "" if os_found else "; an OS on it would not be judged"),
        f"{label}: {name} signature" + (f" ({ids})" if ids else "") + f"; {why}",
        "" if os_found else CHECK_INSIDE)
