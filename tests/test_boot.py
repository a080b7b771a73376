"""Boot generations, architecture and Trusted Launch on real boot layouts (sfdisk, mkfs.fat,
mtools; no mounts), each judged as raw, VHD and VHDX."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import boot_disks as bd
from fixtures import qemu
from fixtures.pe import arm64_image, bzimage, pe_image
from vhdkit.cli import main
from vhdkit.formats import open_disk
from vhdkit.preflight import preflight_disk, scan_volumes
from vhdkit.preflight.arch import kernel_architecture, parse_pe
from vhdkit.report import Report

NO_TL = None  # Trusted Launch does not arise: no UEFI boot path
# layout -> (generations, architecture, trusted_launch, failing errors, failing warnings)
EXPECTED: dict[str, tuple[tuple[str, ...], str, bool | None, set[str], set[str]]] = {
    "linux-gpt-esp": (("V2",), "x64", True, set(), set()),
    "linux-mbr": (("V1",), "x64", NO_TL, set(), {"boot.v1-only"}),
    "linux-hybrid": (("V1", "V2"), "x64", True, set(), set()),
    "linux-arm64": (("V2",), "Arm64", True, set(), set()),
    "windows-v2": (("V2",), "x64", True, set(), set()),
    "windows-v1": (("V1",), "x64", NO_TL, set(), {"boot.v1-only"}),
    "linux-mbr-esp": (("V1", "V2"), "x64", True, set(), set()),
    "linux-gpt-bare": ((), "x64", NO_TL, {"boot.gpt-no-esp"}, set()),
    "linux-mbr-no-code": ((), "x64", NO_TL, {"boot.none"}, set()),
    "linux-unsigned": (("V2",), "x64", False, set(), {"boot.trusted-launch"}),
    "linux-arm64-mbr": ((), "Arm64", NO_TL, {"boot.architecture"}, set()),
    "windows-v1-3tib": (("V1",), "x64", NO_TL, {"boot.v1-over-2tib"}, {"boot.v1-only"}),
}
CONTAINERS = {"raw": None, "vhd": ("vpc", "subformat=dynamic", "force_size=on"),
              "vhdx": ("vhdx",)}
CASES = [(name, c) for name in EXPECTED for c in CONTAINERS
         if not (name == "windows-v1-3tib" and c == "vhd")]  # a VHD holds at most 2040 GiB


class Disks:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.cache: dict[tuple[str, str], Path] = {}

    def get(self, name: str, container: str = "raw") -> Path:
        if (name, container) not in self.cache:
            raw = self.cache.get((name, "raw")) or bd.build(name, self.work)
            self.cache[(name, "raw")] = raw
            if container != "raw":
                fmt, *opts = CONTAINERS[container]  # type: ignore[misc]
                self.cache[(name, container)] = qemu.convert(
                    raw, "raw", self.work / f"{name}.{container}", fmt, *opts)
        return self.cache[(name, container)]


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Disks:
    return Disks(tmp_path_factory.mktemp("boot-disks"))


def judge(path: Path) -> Report:
    with open_disk(path) as disk:
        return preflight_disk(disk)


def failing(report: Report, severity: str) -> set[str]:
    return {f.id for f in report.problems if f.severity == severity and f.id.startswith("boot.")}


@pytest.mark.parametrize(("name", "container"), CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_boot_verdict(disks: Disks, name: str, container: str) -> None:
    report = judge(disks.get(name, container))
    generations, arch, trusted, errors, warnings = EXPECTED[name]
    assert report.boot is not None
    assert report.boot.generations == generations
    assert report.boot.architecture == arch
    assert report.boot.trusted_launch is trusted
    assert failing(report, "error") == errors, [str(f) for f in report.problems]
    assert failing(report, "warning") == warnings, [str(f) for f in report.problems]
    assert report.facts["boot"] == report.boot.to_dict()
    assert report.facts["os"] == name.split("-")[0]
    for f in report.findings:
        if f.id.startswith("boot.") and not f.passed and f.severity != "info":
            assert f.evidence and f.fix, f


def test_evidence_names_partitions_and_loaders(disks: Disks) -> None:
    boot = judge(disks.get("linux-hybrid")).boot
    assert boot is not None
    v1, v2, arch = boot.evidence
    assert v1 == "V1: GRUB boot.img in the protective MBR, GRUB core in BIOS boot partition 14"
    assert v2.startswith("V2: EFI System Partition gpt partition 15: ")
    assert "\\EFI\\BOOT\\BOOTX64.EFI (x64)" in v2 and "\\EFI\\debian\\shimx64.efi (x64)" in v2
    assert arch == ("architecture: /boot/vmlinuz-6.1.0-18-amd64: x86 bzImage setup header "
                    "('HdrS' at 0x202, 64-bit entry in xloadflags)")
    win = judge(disks.get("windows-v2"))
    tl = next(f for f in win.findings if f.id == "boot.trusted-launch")
    assert tl.passed and "Windows Boot Manager" in tl.message
    assert "EFI/Microsoft/Boot/bootmgfw.efi: Authenticode signature of 264 bytes" in tl.evidence
    assert "presence only, not cryptographically validated" in tl.evidence
    assert win.boot is not None and win.boot.evidence[-1] == (
        "architecture: \\Windows\\System32\\ntoskrnl.exe PE machine 0x8664 (x64)")
    v1 = judge(disks.get("windows-v1")).boot
    assert v1 is not None and v1.evidence[0] == (
        "V1: Windows boot code in the MBR, active partition 1: NTFS boot sector and \\bootmgr")


def test_arm64_evidence_from_pe_machine_and_kernel_header(disks: Disks) -> None:
    report = judge(disks.get("linux-arm64"))
    arch = next(f for f in report.findings if f.id == "boot.architecture")
    assert arch.passed and "gzip-compressed arm64 Image header" in arch.evidence
    assert "EFI loaders: Arm64" in arch.evidence
    bad = judge(disks.get("linux-arm64-mbr"))
    arch = next(f for f in bad.findings if f.id == "boot.architecture")
    assert "Arm64 boots only on Generation 2" in arch.message


@pytest.mark.parametrize("name", ["linux-hybrid", "windows-v2", "linux-mbr", "windows-v1",
                                  "linux-mbr-esp"])
def test_partition_tables_agree_with_sfdisk(disks: Disks, name: str) -> None:
    """sfdisk wrote the table; sfdisk --json reads it back independently of vhdkit."""
    path = disks.get(name)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(path)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    theirs = sorted((int(p["node"].removeprefix(str(path))), p["start"] * 512, p["size"] * 512)
                    for p in table["partitions"])
    with open_disk(path) as disk:
        ours = sorted((v.number, v.offset, v.length) for v in scan_volumes(disk).volumes)
    assert ours == theirs


def test_cli_text_and_json_report_generations(disks: Disks) -> None:
    res = CliRunner().invoke(main, ["preflight", str(disks.get("linux-hybrid", "vhdx"))])
    assert res.exit_code == 0, res.output
    assert ("boots: generation V1, V2; architecture x64; Trusted Launch: possible "
            "(signature presence, not validated)") in res.output
    res = CliRunner().invoke(main, ["preflight", "--json", str(disks.get("linux-gpt-bare"))])
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["facts"]["boot"]["generations"] == []
    assert doc["facts"]["boot"]["architecture"] == "x64"


def test_data_disks_have_no_boot_verdict(tmp_path: Path) -> None:
    from fixtures import linux_disks as ld

    report = judge(ld.build("data-disk", tmp_path))
    assert report.boot is None and "boot" not in report.facts
    assert not [f for f in report.findings if f.id.startswith("boot.")]


# -- headers: the synthetic files read back, and malformed ones refused --------------------------

@pytest.mark.parametrize(("arch", "machine"), [("x64", 0x8664), ("Arm64", 0xAA64)])
@pytest.mark.parametrize("signed", [True, False])
def test_pe_machine_and_signature(arch: str, machine: int, signed: bool) -> None:
    data = pe_image(arch, signed)
    pe = parse_pe(data[:4096], len(data), data[-264:-256] if signed else None)
    assert pe is not None and pe.machine == machine and pe.architecture == arch
    assert pe.signed is signed and pe.subsystem == 10
    if signed:  # the directory points at the WIN_CERTIFICATE at the end of the file
        off, size = pe.signature or (0, 0)
        assert off + size == len(data)
        assert struct.unpack_from("<IHH", data, off) == (size, 0x0200, 0x0002)


def test_pe_headers_are_bound_checked() -> None:
    data = bytearray(pe_image("x64", True))
    assert parse_pe(bytes(data[:0x40]), len(data)) is None  # e_lfanew points past the bytes
    bad = bytearray(data)
    struct.pack_into("<I", bad, 0x3C, 0xFFFFFFF0)
    assert parse_pe(bytes(bad), len(bad)) is None
    assert parse_pe(b"MZ" + bytes(10), 12) is None
    # a security directory that runs past the end of the file is no signature
    pe = parse_pe(bytes(data[:4096]), len(data) - 1)
    assert pe is not None and not pe.signed
    # a directory whose blob is not a WIN_CERTIFICATE is no signature either
    pe = parse_pe(bytes(data[:4096]), len(data), b"\0" * 8)
    assert pe is not None and not pe.signed


def test_kernel_headers() -> None:
    assert kernel_architecture(bzimage())[0] == "x64"  # type: ignore[index]
    assert kernel_architecture(bzimage(arch64=False))[0] == "x86"  # type: ignore[index]
    assert kernel_architecture(arm64_image(compressed=False))[0] == "Arm64"  # type: ignore[index]
    assert kernel_architecture(arm64_image()[:2048])[0] == "Arm64"  # type: ignore[index]
    assert kernel_architecture(b"\x1f\x8b" + bytes(100)) is None  # damaged gzip
    assert kernel_architecture(bytes(4096)) is None


# -- damaged boot pieces: findings, never tracebacks ------------------------------------------

def _esp_offset(path: Path) -> int:
    with open_disk(path) as disk:
        return next(v.offset for v in scan_volumes(disk).volumes if v.type_name == "efi-system")


def test_unreadable_esp_is_named_and_not_counted(disks: Disks) -> None:
    from fixtures.linux_disks import OverlayDisk

    path = disks.get("linux-gpt-esp")
    with open_disk(path) as base:
        disk = OverlayDisk(base, {_esp_offset(path): bytes(512)})  # the FAT boot sector wiped
        report = preflight_disk(disk)
    assert report.boot is not None and report.boot.generations == ()
    none = next(f for f in report.findings if f.id == "boot.none")
    assert "EFI System Partition gpt partition 1 holds no filesystem, not a readable FAT" \
        in none.evidence


def test_damaged_loader_headers_are_not_loaders(disks: Disks) -> None:
    """Every PE header on the ESP gets an e_lfanew far past the file: no loader, no V2."""
    from fixtures.linux_disks import OverlayDisk

    path = disks.get("linux-gpt-esp")
    start = _esp_offset(path)
    with open_disk(path) as base:
        esp = base.read_at(start, 8 << 20)
        patches = {start + i + 0x3C: struct.pack("<I", 0x7FFFFFF0)
                   for i in range(0, len(esp), 512) if esp[i:i + 2] == b"MZ"}
        assert len(patches) >= 2
        report = preflight_disk(OverlayDisk(base, patches))
    assert report.boot is not None and report.boot.generations == ()
    assert "holds no EFI loader" in next(f for f in report.findings if f.id == "boot.none").evidence


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=600), size=st.integers(0, 1 << 40),
       tail=st.one_of(st.none(), st.binary(max_size=8)))
def test_pe_and_kernel_headers_never_raise(data: bytes, size: int, tail: bytes | None) -> None:
    for head in (data, b"MZ" + data, pe_image()[:0x80] + data):
        pe = parse_pe(head, size, tail)
        if pe is not None and pe.signature is not None:
            off, length = pe.signature
            assert off > 0 and off + length <= size
        kernel_architecture(head)


@pytest.mark.parametrize(("make", "says"), [
    (lambda: pe_image("x64"), "PE32+ executable (EFI application) x86-64"),
    (lambda: pe_image("Arm64", False), "PE32+ executable (EFI application) Aarch64"),
    (lambda: pe_image("x64", True, 1), "PE32+ executable (native) x86-64"),
    (bzimage, "Linux kernel x86 boot executable bzImage"),
    (lambda: arm64_image(compressed=False), "Linux kernel ARM64 boot executable Image"),
])
def test_synthetic_boot_files_are_what_libmagic_says(tmp_path: Path, make: Any,
                                                     says: str) -> None:
    """file(1) is an independent reader of the fixture writer's PE and kernel headers."""
    path = tmp_path / "f"
    path.write_bytes(make())
    out = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(says), out


@pytest.mark.parametrize(("name", "os_type", "gen", "arch"), [
    ("linux-hybrid", "Linux", "V2", "x64"),  # boots both: V2 (Trusted Launch, current sizes)
    ("linux-mbr", "Linux", "V1", "x64"),
    ("linux-arm64", "Linux", "V2", "Arm64"),
    ("windows-v1", "Windows", "V1", "x64"),
    ("windows-v2", "Windows", "V2", "x64"),
])
def test_managed_disk_plan_reads_the_boot_facts(disks: Disks, name: str, os_type: str,
                                                gen: str, arch: str) -> None:
    """--hyper-v-generation auto / --architecture auto come from pre-flight's boot facts, and a
    generation the disk does not boot is refused."""
    from vhdkit.errors import UsageError
    from vhdkit.managed_upload import ManagedDiskRequest, plan_disk, suggest_plan

    report = judge(disks.get(name, "vhdx"))
    plan = plan_disk(ManagedDiskRequest("d", "rg"), report, "generalized")
    assert (plan.os_type, plan.hyper_v_generation, plan.architecture) == (os_type, gen, arch)
    assert suggest_plan(report, "generalized").hyper_v_generation == gen
    assert report.boot is not None
    if len(report.boot.generations) == 1:
        other = "V1" if gen == "V2" else "V2"
        with pytest.raises(UsageError, match=f"boots only {gen}"):
            plan_disk(ManagedDiskRequest("d", "rg", hyper_v_generation=other), report,
                      "generalized")
