"""Azure readiness rules. Each rule yields one Finding (passed or not) so that JUnit can list every
rule as a test case; the fix of a failed rule is the exact vhdkit command that repairs it."""

from __future__ import annotations

import os
import shlex
from dataclasses import replace

from .azure_view import AZURE_MAX_SIZE, AZURE_MIN_SIZE, MIB, AzureView, round_up_mib
from .errors import FormatError, ParentNotFound
from .formats import DynamicVhdDisk, VirtualDisk, detect_format, open_disk
from .formats.base import file_size
from .formats.detect import BY_KEY
from .formats.vhd_alone import open_child_alone
from .formats.vhd_image import VhdImage
from .formats.vhd_structs import QEMU_TRUSTS_CURRENT_SIZE, DiskType, chs_geometry
from .report import Finding, Report, Severity

GIB = 1024**3
#: Azure's limit for an OS disk (Generation 1 VMs can use at most 2 TiB of it: MBR).
OS_DISK_MAX = 4095 * GIB

#: FormatError field prefixes -> the rule that reports them.
FIELD_RULES: list[tuple[str, str]] = [
    ("footer.cookie", "vhd.cookie"),
    ("footer.checksum", "vhd.footer-checksum"),
    ("footer.version", "vhd.version"),
    ("footer.disk_type", "vhd.type"),
    ("footer.current_size", "vhd.file-size"),
    ("footer.data_offset", "vhd.header"),
    ("header.checksum", "vhd.header-checksum"),
    ("header.max_table_entries", "vhd.bat-entries"),
    ("header.table_offset", "vhd.bat-entries"),
    ("header", "vhd.header"),
    ("bat", "vhd.bat-range"),
    ("file", "vhd.file-size"),
]

#: Every rule check() judges, in report order, with the message shown when it passes.
RULES: dict[str, str] = {
    "format": "the image is a VHD",
    "vhd.cookie": "footer cookie is 'conectix'",
    "vhd.footer-checksum": "footer checksum is valid",
    "vhd.version": "footer format version is 1.0",
    "vhd.type": "the VHD is fixed",
    "vhd.footer-copy": "footer copies agree",
    "vhd.header": "dynamic header is readable",
    "vhd.header-checksum": "dynamic header checksum is valid",
    "vhd.bat-entries": "BAT entry count matches the size",
    "vhd.bat-range": "every BAT block lies inside the file",
    "vhd.bat-overlap": "no BAT blocks overlap",
    "vhd.parent": "the parent disk is found and matches",
    "vhd.dynamic-size": "dynamic size is within 2040 GiB",
    "vhd.file-size": "file size is virtual size + 512",
    "vhd.geometry-size": "every reader sees the same virtual size",
    "qcow2.dirty": "the qcow2 image was closed cleanly (dirty bit clear)",
    "qcow2.corrupt": "the qcow2 image is not marked corrupt",
    "azure.size-mib": "virtual size is a whole number of MiB",
    "azure.size-range": "size is within Azure's 20 MiB .. 32 TiB",
}


DAMAGED = "the image is damaged: export it again from its source"


def rule_for(err: FormatError) -> str:
    return next((rule for prefix, rule in FIELD_RULES if err.field.startswith(prefix)),
                "vhd.header")


def _q(path: str) -> str:
    return shlex.quote(path)


def converted_name(path: str) -> str:
    stem, _ = os.path.splitext(path)
    return f"{stem}-azure.vhd"


class _Judge:
    """Collects findings; rules not reported as failed are recorded as passed at the end."""

    def __init__(self, path: str, member: int | None = None, options: str = "") -> None:
        self.path = path
        self.member = member
        #: what the source needed to be opened (--parent, --format), repeated in every fix
        self.options = options
        self.report = Report(subject=path)
        self.failed: set[str] = set()
        self.skipped: set[str] = set()

    def fail(self, rule: str, severity: Severity, message: str, evidence: str = "",
             fix: str = "") -> None:
        self.failed.add(rule)
        self.report.findings.append(Finding(rule, severity, message, evidence, fix))

    def skip(self, *rules: str) -> None:
        self.skipped.update(rules)

    def not_evaluated(self, why: str, *rules: str) -> None:
        """Rules that could not be judged: listed as such, never as passed."""
        for rule in rules:
            if rule not in self.failed:
                self.failed.add(rule)
                self.report.findings.append(Finding(rule, "info", f"not evaluated: {why}",
                                                    applicable=False))

    def finish(self, rules: list[str]) -> Report:
        self._no_convert_past_damage()
        for rule in rules:
            if rule in self.failed or rule not in RULES:
                continue
            if rule in self.skipped:
                self.report.findings.append(Finding(rule, "info", "not applicable to this disk",
                                                    passed=True, applicable=False))
            else:
                self.report.findings.append(Finding(rule, "info", RULES[rule], passed=True))
        return self.report

    def _no_convert_past_damage(self) -> None:
        """Convert reads every block: on a damaged disk (a block past the end, a bad table) it
        fails, so a finding must not suggest it; the damage is what to fix first."""
        damaged = [f for f in self.report.findings
                   if f.severity == "error" and f.fix.startswith(DAMAGED)]
        if not damaged:
            return
        first = f"{DAMAGED} (vhdkit convert cannot read it: {damaged[0].id})"
        self.report.findings = [
            replace(f, fix=first) if f.fix.startswith("vhdkit convert") else f
            for f in self.report.findings]

    @property
    def convert_fix(self) -> str:
        pick = f" --disk {self.member}" if self.member is not None else ""
        return (f"vhdkit convert {self.options}{_q(self.path)} "
                f"{_q(converted_name(self.path))}{pick}")


def check_path(path: str | os.PathLike[str], *, os_disk: bool = False,
               parent: str | os.PathLike[str] | None = None, member: int | None = None,
               format: str | None = None) -> Report:
    """Judge a disk image file for Azure. Raises only when the file cannot be read at all (or
    is a container vhdkit refuses). ``format`` forces a reader, as ``open_disk`` does."""
    path = os.fspath(path)
    fmt = detect_format_lenient(path) if format is None else format
    size = file_size(path)  # the sizing of every command: block devices too
    if size < 512:
        # Too small to hold any disk: unreadable (exit 2), not a list of findings.
        problem = "empty file (0 bytes)" if size == 0 else f"truncated: only {size} bytes"
        raise FormatError("file", 0, problem)
    options = "".join(f"{flag} {_q(os.fspath(value))} " for flag, value in
                      (("--parent", parent), ("--format", format)) if value is not None)
    j = _Judge(path, member, options)
    rules = list(RULES)
    if os_disk:
        rules.append("azure.os-disk-size")
    disk: VirtualDisk | None = None
    try:
        disk = open_disk(path, parent, strict=False, disk=member, format=format)
    except ParentNotFound as exc:
        j.fail("vhd.parent", "error", str(exc), fix="give the parent with --parent PATH")
        disk = _child_alone(j, path) if fmt == "vhd" else None
        if disk is None and fmt != "vhd":  # a differencing VDI, VMDK, qcow2: not a VHD either
            sig = BY_KEY.get(fmt)
            j.fail("format", "error", f"not a VHD: a differencing {sig.label if sig else fmt} "
                   "image; Azure accepts only the VHD format",
                   fix=j.convert_fix + " --parent PATH")
        elif disk is None:  # only a differencing VHD has a parent; nothing else can be judged
            j.fail("vhd.type", "error", "differencing VHD: Azure accepts only fixed VHDs",
                   fix=j.convert_fix + " --parent PATH")
    except FormatError as exc:
        # the VHD rules name VHD structures; any other container's damage is a format finding
        rule = rule_for(exc) if fmt == "vhd" else "format"
        j.fail(rule, "error", f"{exc.field} at offset {exc.offset}: {exc.problem}",
               evidence=f"{exc.field} @ {exc.offset}",
               fix=DAMAGED)
        j.not_evaluated(f"the image cannot be read past {exc.field}",
                        *(r for r in rules if r != rule and r != "format"))
    if disk is None:
        if fmt != "vhd":
            j.skip("vhd.cookie")
        if "vhd.parent" in j.failed:  # nothing of the disk could be read
            j.not_evaluated("the disk could not be opened without its parent",
                            *(r for r in rules if r not in j.skipped))
        return j.finish(rules)
    with disk:
        j.report.facts.update({"format": fmt, "kind": disk.kind, "virtual_size": disk.size,
                               "file_size": file_size(path),
                               "azure_size": round_up_mib(disk.size)})
        found = getattr(disk, "image", None)  # other readers may name an attribute "image" too
        image = found if isinstance(found, VhdImage) else None
        _format_rule(j, disk, image)
        _qcow2_rules(j, disk)
        if image is not None:
            _vhd_rules(j, disk, image)
        else:
            j.skip(*(r for r in RULES if r.startswith("vhd.")))
        _size_rules(j, disk.size, image, os_disk)
    return j.finish(rules)


def _child_alone(j: _Judge, path: str) -> VirtualDisk | None:
    """A differencing VHD whose parent is missing is judged on its own metadata (footer, header,
    BAT, size); nothing here reads its data, which would come partly from the parent."""
    try:
        return open_child_alone(path, strict=False)
    except FormatError:
        return None


def detect_format_lenient(path: str) -> str:
    """The container format; a VHD with a damaged footer is reported by the rules, not raised."""
    try:
        return detect_format(path)
    except FormatError:
        return "vhd"


def _format_rule(j: _Judge, disk: VirtualDisk, image: VhdImage | None) -> None:
    if disk.kind == "vhdx":
        j.fail("format", "error", "VHDX image: Azure accepts only the VHD format",
               evidence="signature 'vhdxfile' at offset 0", fix=j.convert_fix)
    elif image is None and disk.kind == "raw":
        j.fail("format", "error", "raw image (no VHD footer): Azure needs a fixed VHD",
               evidence="no 'conectix' footer in the last 512 bytes", fix=j.convert_fix)
    elif image is None:
        facts = disk.facts()
        name = str(facts.get("format", disk.kind))
        sig = BY_KEY.get(name)
        label = sig.label if sig is not None else name
        sub = f" ({facts['subformat']})" if facts.get("subformat") else ""
        j.fail("format", "error", f"not a VHD: a {label}{sub} image; Azure accepts only the VHD "
               "format (vhdkit convert writes it as a fixed VHD)",
               evidence=f"read as {name}{sub} by vhdkit's {name} reader", fix=j.convert_fix)


def _qcow2_rules(j: _Judge, disk: VirtualDisk) -> None:
    if disk.kind != "qcow2":
        j.skip("qcow2.dirty", "qcow2.corrupt")
        return
    from .formats.qcow2 import Qcow2Disk  # loaded only for a qcow2 (zstd, ISA-L)

    assert isinstance(disk, Qcow2Disk)
    if disk.dirty:
        j.fail("qcow2.dirty", "warning", "the qcow2 image is marked dirty: it was not closed "
               "cleanly (lazy refcounts); its data is readable, its refcounts need a repair",
               evidence="incompatible feature bit 0 (dirty) at offset 72",
               fix=f"qemu-img check -r all {_q(j.path)}")
    if disk.corrupt:
        j.fail("qcow2.corrupt", "error", "the qcow2 image is marked corrupt: QEMU found its "
               "metadata inconsistent", evidence="incompatible feature bit 1 (corrupt) at "
                                                 "offset 72",
               fix=f"qemu-img check -r all {_q(j.path)}, then compare its data before use")


def _vhd_rules(j: _Judge, disk: VirtualDisk, image: VhdImage) -> None:
    f = image.footer
    if image.disk_type != DiskType.FIXED:
        name = "dynamic" if image.disk_type == DiskType.DYNAMIC else "differencing"
        extra = " (flattened through its parent chain)" if name == "differencing" else ""
        j.fail("vhd.type", "error", f"{name} VHD: Azure accepts only fixed VHDs",
               evidence=f"footer.disk_type = {int(image.disk_type)} at offset "
                        f"{image.footer_offset + 60}",
               fix=j.convert_fix + extra)
    for a in image.anomalies:
        sev: Severity = "warning" if a.severity == "warning" else "error"
        fix = DAMAGED
        if a.rule == "vhd.footer-copy":
            fix = j.convert_fix + " (writes a fresh footer)"
        j.fail(a.rule, sev, a.error.problem, evidence=f"{a.error.field} @ {a.error.offset}",
               fix=fix)
    if image.disk_type == DiskType.FIXED:
        j.skip("vhd.footer-copy", "vhd.header", "vhd.header-checksum", "vhd.bat-entries",
               "vhd.bat-range", "vhd.bat-overlap", "vhd.dynamic-size", "vhd.parent")
        want = f.current_size + 512
        if image.file_size != want and "vhd.file-size" not in j.failed:
            grow = image.file_size < want
            j.fail("vhd.file-size", "error",
                   f"file size {image.file_size} is not the virtual size {f.current_size} + 512",
                   evidence=f"file size {image.file_size}, footer.current_size {f.current_size}",
                   fix=j.convert_fix if grow else
                   f"{j.convert_fix} (the file holds {image.file_size - want} extra bytes)")
    else:
        j.skip("vhd.file-size")
        if not isinstance(disk, DynamicVhdDisk) or disk.parent is None:
            j.skip("vhd.parent")
    qemu_uses_chs = f.creator_app not in QEMU_TRUSTS_CURRENT_SIZE and (
        f.cylinders, f.heads, f.sectors_per_track) != (65535, 16, 255)
    if qemu_uses_chs and f.geometry_size != f.current_size:
        j.fail("vhd.geometry-size", "warning",
               f"qemu reads {f.geometry_size} bytes from the CHS geometry, Azure and Hyper-V "
               f"read current_size {f.current_size}",
               evidence=f"creator '{f.creator_app.decode('latin-1')}', geometry "
                        f"{f.cylinders}/{f.heads}/{f.sectors_per_track}",
               fix=j.convert_fix)


def _size_rules(j: _Judge, size: int, image: VhdImage | None, os_disk: bool) -> None:
    rounded = round_up_mib(size)
    if size % MIB:
        evidence = f"virtual size {size} bytes = {size / MIB:.4f} MiB"
        why = ""
        if image is not None:
            f = image.footer
            chs = chs_geometry(size)
            if f.creator_app == b"qemu" and f.geometry_size == size:
                why = (" (qemu-img rounded the size to CHS geometry "
                       f"{f.cylinders}/{f.heads}/{f.sectors_per_track}: it was created without "
                       "-o force_size=on)")
                evidence += f", creator 'qemu', geometry {'/'.join(map(str, chs))}"
        fix = (f"vhdkit convert --in-place {_q(j.path)}"
               if image is not None and image.disk_type == DiskType.FIXED else j.convert_fix)
        j.fail("azure.size-mib", "error",
               f"virtual size {size} is not a whole number of MiB{why}; Azure needs "
               f"{rounded} ({rounded // MIB} MiB)", evidence=evidence,
               fix=f"{fix} (rounds up to {rounded} bytes)")
    if not AZURE_MIN_SIZE <= rounded <= AZURE_MAX_SIZE:
        j.fail("azure.size-range", "error",
               f"size {rounded} is outside Azure's range {AZURE_MIN_SIZE} (20 MiB) .. "
               f"{AZURE_MAX_SIZE} (32 TiB)", evidence=f"virtual size {size}",
               fix=(f"{j.convert_fix} --size 20M" if rounded < AZURE_MIN_SIZE
                    else "split the data across several disks"))
    if os_disk and rounded > OS_DISK_MAX:
        j.fail("azure.os-disk-size", "error",
               f"size {rounded} exceeds Azure's OS disk limit of {OS_DISK_MAX} (4095 GiB)",
               evidence=f"virtual size {size}",
               fix="shrink the OS partition and the disk with your partitioning tools first")
    elif os_disk:
        j.report.findings.append(Finding("azure.os-disk-size", "info",
                                         "size is within Azure's OS disk limit", passed=True))
        j.skip("azure.os-disk-size")


def check_view(view: AzureView, *, os_disk: bool = False) -> Report:
    """The rules that apply to the stream vhdkit would send or write for ``view``."""
    j = _Judge(view.disk.path)
    if view.virtual_size % MIB:
        j.fail("azure.size-mib", "error", f"stream size {view.virtual_size} is not whole MiB")
    _size_rules(j, view.virtual_size, None, os_disk)
    return j.finish(["azure.size-mib", "azure.size-range"])
