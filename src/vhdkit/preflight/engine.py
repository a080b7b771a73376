"""Pre-flight orchestration: volumes -> filesystems -> which OS -> that OS's rules -> Report."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import PreflightError, UsageError
from ..expectations import EXPECTATIONS, Expect
from ..formats import VirtualDisk, open_disk
from ..report import Finding, Report
from .boot import BootVolume, judge_boot
from .fs import Filesystem, Probe, open_filesystem, probe_filesystem
from .linux import LinuxContext, linux_findings
from .mounts import FstabEntry, MountTree, matches, parse_fstab
from .unreadable import pretty, unreadable_finding
from .volumes import Volume, scan_volumes

READABLE = frozenset({"ext2", "ext3", "ext4", "xfs", "vfat", "btrfs"})
NOT_FILESYSTEMS = frozenset({"swap", "lvm2-pv"})
WINDOWS_MARKER = "/Windows/System32/config/SYSTEM"
DEVICE_SPEC = ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/")


@dataclass
class Opened:
    volume: Volume
    probe: Probe
    fs: Filesystem | None


def preflight_path(path: str | os.PathLike[str], parent: str | os.PathLike[str] | None = None,
                   expect: Expect = "generalized", *, member: int | None = None,
                   format: str | None = None) -> Report:
    """Open the image at ``path`` (any format vhdkit reads; ``member``: a disk of an OVA;
    ``format`` forces a reader) and run :func:`preflight` on it."""
    with open_disk(path, parent, disk=member, format=format) as disk:
        return preflight_disk(disk, expect)


def preflight_disk(disk: VirtualDisk, expect: Expect = "generalized") -> Report:
    """Inspect the OS inside ``disk`` offline and judge whether Azure can provision it."""
    if expect not in EXPECTATIONS:
        raise UsageError(f"--expect must be one of {', '.join(EXPECTATIONS)}, not {expect!r}")
    report = Report(subject=disk.path or "disk")
    scan = scan_volumes(disk)
    report.extend(scan.findings)
    opened = [_open(vol, report) for vol in scan.volumes]
    report.facts["expect"] = expect
    report.facts["partition_table"] = scan.scheme
    report.facts["volumes"] = [
        {**o.volume.describe(), "fstype": o.probe.fstype, "uuid": o.probe.uuid,
         "fs_label": o.probe.label} for o in opened]

    windows = [o for o in opened if o.probe.fstype == "ntfs" and o.fs is not None
               and o.fs.kind(WINDOWS_MARKER) == "file"]
    linux = [o for o in opened if o.fs is not None and o.probe.fstype != "ntfs"
             and any(o.fs.kind(p) == "file" for p in ("/etc/os-release", "/usr/lib/os-release"))]
    found = windows + linux
    if len(found) > 1:
        report.extend([Finding("os.multiple", "warning",
                               f"{len(found)} operating systems found; judging the first",
                               ", ".join(o.volume.label for o in found))])
    encrypted = [o for o in opened if o.volume.encryption]
    unreadable = [o for o in opened if o.probe.fstype and not o.volume.encryption
                  and o.probe.fstype not in READABLE | NOT_FILESYSTEMS | {"ntfs"}]
    report.extend([unreadable_finding(o.volume.label, o.probe, bool(found)) for o in unreadable])
    if found:
        _boot(disk, scan.scheme, opened, found[0], "windows" if windows else "linux", report)
    if windows:
        report.facts["os"] = "windows"
        report.extend(_windows(windows[0], expect))
    elif linux:
        report.facts["os"] = "linux"
        report.extend(_linux(linux[0], opened, expect, report))
    elif not encrypted:
        report.facts["os"] = "none"
        unread = [o.volume.label for o in opened if o.fs is None and o.probe.fstype in READABLE]
        unread += [f"{pretty(o.probe.fstype or '')} on {o.volume.label}" for o in unreadable]
        report.extend([Finding(
            "os.none", "warning" if unread else "info",
            f"no operating system found on the volumes pre-flight can read (not read: "
            f"{', '.join(unread)})" if unread else "no operating system found: a data disk",
            f"{len(opened)} volume(s): " + ", ".join(
                f"{o.volume.label} {o.probe.fstype or 'unrecognised'}" for o in opened))])
    else:
        report.facts["os"] = "unknown"
    for o in encrypted:
        # The OS is probably inside when nothing else was found; a BitLocker volume is Windows.
        severe = not found or o.volume.encryption == "bitlocker" or bool(windows)
        report.extend([Finding(
            "volume.encrypted", "error" if severe else "warning",
            f"{o.volume.encryption} encrypted volume: cannot inspect",
            f"{o.volume.label} at offset {o.volume.offset}: {_signature(o.volume)}",
            "decrypt before upload (manage-bde -off C: | cryptsetup reencrypt --decrypt), or "
            "use Azure Disk Encryption / server-side encryption instead")])
    return report


def _boot(disk: VirtualDisk, scheme: str, opened: list[Opened], os_volume: Opened,
          os_name: str, report: Report) -> None:
    """Generations, architecture and Trusted Launch readiness (preflight/boot.py)."""
    assert os_volume.fs is not None
    volumes = [BootVolume(o.volume, o.probe.fstype, o.fs) for o in opened]
    try:
        boot, findings = judge_boot(disk, scheme, volumes, os_name, os_volume.fs)
    except PreflightError as exc:
        report.extend([Finding("boot.unreadable", "warning",
                               "the boot files cannot be read", str(exc))])
        return
    report.boot = boot
    report.facts["boot"] = boot.to_dict()
    report.extend(findings)


def _signature(vol: Volume) -> str:
    return "'-FVE-FS-' boot sector" if vol.encryption == "bitlocker" else "'LUKS\\xba\\xbe' header"


def _open(vol: Volume, report: Report) -> Opened:
    assert vol.file is not None
    if vol.encryption:
        return Opened(vol, Probe(vol.encryption), None)
    try:
        probe = probe_filesystem(vol.file)
    except (OSError, RuntimeError) as exc:  # an unreadable LVM logical volume
        report.extend([Finding("fs.unreadable", "warning", f"{vol.label} cannot be read",
                               " ".join(str(exc).split())[:200])])
        return Opened(vol, Probe(None), None)
    fs: Filesystem | None = None
    kind = probe.fstype
    if kind == "ntfs":
        fs = _open_ntfs(vol, report)
    elif kind in READABLE:
        try:
            fs = open_filesystem(vol.file, probe)
        except PreflightError as exc:
            report.extend([Finding("fs.unreadable", "warning",
                                   f"{kind} filesystem on {vol.label} is damaged or unreadable",
                                   str(exc), f"fsck the filesystem ({vol.label})")])
    return Opened(vol, probe, fs)  # a kind it cannot read is named after the OS search


def _open_ntfs(vol: Volume, report: Report) -> Filesystem | None:
    try:
        from .ntfs import open_ntfs
    except ImportError:
        report.extend([Finding("windows.unavailable", "warning",
                               "windows support unavailable: NTFS volume not inspected",
                               vol.label)])
        return None
    assert vol.file is not None
    try:
        return open_ntfs(vol.file)
    except PreflightError as exc:
        report.extend([Finding("fs.unreadable", "warning",
                               f"ntfs filesystem on {vol.label} is damaged or unreadable",
                               str(exc), f"chkdsk /f on {vol.label}")])
        return None


def _windows(o: Opened, expect: str) -> list[Finding]:
    try:
        from .windows import windows_findings
    except ImportError:
        return [Finding("windows.unavailable", "warning",
                        "windows support unavailable: Windows rules not run", o.volume.label)]
    assert o.fs is not None
    try:
        return windows_findings(o.fs, expect)
    except PreflightError as exc:
        return [Finding("windows.unreadable", "error", "the Windows volume cannot be inspected",
                        str(exc))]


def _subvolume(root: Opened, e: FstabEntry) -> Filesystem | None:
    if e.fstype != "btrfs" or not matches(e.spec, root.volume, root.probe):
        return None
    from .btrfs import BtrfsFilesystem

    return root.fs.subvolume(e.options) if isinstance(root.fs, BtrfsFilesystem) else None


def _linux(root: Opened, opened: list[Opened], expect: str, report: Report) -> list[Finding]:
    assert root.fs is not None
    out: list[Finding] = []
    release = root.fs.read_text("/etc/os-release") or root.fs.read_text("/usr/lib/os-release")
    for line in (release or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            report.facts["distro"] = line.partition("=")[2].strip().strip('"')
    report.facts["root"] = f"{root.volume.label}, {root.probe.fstype}"
    try:
        fstab = parse_fstab(root.fs.read_text("/etc/fstab") or "")
    except PreflightError as exc:
        fstab = []
        out.append(Finding("linux.fstab.unreadable", "warning", "/etc/fstab cannot be read",
                           str(exc)))
    mounts: dict[str, Filesystem] = {}
    for e in fstab:
        if e.mountpoint in ("/", "none", "swap") or not e.mountpoint.startswith("/"):
            continue
        if not e.spec.startswith(DEVICE_SPEC) or e.fstype in ("swap", "tmpfs", "nfs", "cifs"):
            continue
        hit = next((o for o in opened if o is not root and matches(e.spec, o.volume, o.probe)),
                   None)
        sub = _subvolume(root, e)
        if sub is not None:  # another subvolume of the root's Btrfs (/home on Fedora)
            mounts[e.mountpoint] = sub
            continue
        if hit is None or hit.fs is None:
            sev = "error" if e.mountpoint == "/boot" else "warning"
            why = "not found on this disk" if hit is None else f"{hit.probe.fstype} not readable"
            if "nofail" in e.options or "noauto" in e.options:
                sev = "info"
            out.append(Finding("linux.fstab.device", sev,  # type: ignore[arg-type]
                               f"{e.mountpoint} is {why}", e.text,
                               "fix /etc/fstab (use UUID=, and nofail for data disks)"))
            continue
        mounts[e.mountpoint] = hit.fs
    report.facts["mounts"] = {mp: fs.fstype for mp, fs in mounts.items()}
    swaps = [f"{o.volume.label}: {o.volume.type_name} ({o.volume.type_id})"
             + (f", swap signature uuid {o.probe.uuid}" if o.probe.fstype == "swap" else "")
             for o in opened if o.volume.type_name == "linux-swap" or o.probe.fstype == "swap"]
    ctx = LinuxContext(MountTree(root.fs, mounts), expect, fstab, swaps)
    out.extend(linux_findings(ctx))
    return out
