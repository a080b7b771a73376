"""Linux pre-flight: fixture disks built without mounts, judged by the Linux rules."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from fixtures import linux_disks as ld
from fixtures import qemu
from vhdkit.cli import main
from vhdkit.errors import PreflightError, UsageError
from vhdkit.formats import open_disk
from vhdkit.preflight import open_filesystem, preflight_disk, probe_filesystem, scan_volumes
from vhdkit.preflight.initramfs import list_initramfs
from vhdkit.report import Report

MiB = 1 << 20

# variant -> (ids of failing errors, ids of failing warnings) with --expect generalized
EXPECTED: dict[str, tuple[set[str], set[str]]] = {
    "generalized-gpt": (set(), set()),
    # MBR disks boot BIOS only (GRUB in the MBR, no ESP): Generation 1 only
    "generalized-mbr": (set(), {"boot.v1-only"}),
    "generalized-mbr-extended": (set(), {"boot.v1-only"}),
    "generalized-lvm": (set(), set()),
    "generalized-xfs": (set(), set()),
    "generalized-cloud-init": (set(), set()),
    "generalized-builtin-hv": (set(), set()),
    "generalized-btrfs": (set(), set()),
    "btrfs-converted": (set(), set()),
    "not-generalized": (
        {"linux.agent.missing", "linux.hv-drivers", "linux.deprovision.cloud-init",
         "linux.deprovision.ssh-host-keys", "linux.deprovision.persistent-net"},
        {"linux.swap.fstab", "linux.swap.file", "linux.console",
         "linux.deprovision.machine-id", "linux.deprovision.shell-history"}),
    "host-keys": (
        {"linux.deprovision.agent-state", "linux.deprovision.cloud-init",
         "linux.deprovision.ssh-host-keys", "linux.deprovision.persistent-net",
         "linux.deprovision.ovf-env"},
        {"linux.deprovision.machine-id", "linux.deprovision.shell-history"}),
    "no-agent": ({"linux.agent.missing"}, set()),
    "swap": (set(), {"linux.swap.fstab", "linux.swap.partition", "linux.swap.file",
                     "boot.v1-only"}),
    "no-hv-drivers": ({"linux.hv-drivers"}, set()),
    "no-console": (set(), {"linux.console"}),
    "udf-blacklisted": ({"linux.blacklist.udf"}, set()),
    "data-disk": (set(), set()),
    **{name: (set(), {"fs.unsupported", "os.none"}) for name in ld.UNREADABLE_BUILDERS},
    "linux-and-zfs": (set(), set()),
    "luks": ({"volume.encrypted"}, set()),
    "blank": (set(), set()),
}
NON_LINUX_INFO = {"data-disk": {"os.none"}, "blank": {"os.none"},
                  **{name: set() for name in ld.UNREADABLE_BUILDERS}}


@pytest.fixture(scope="session")
def linux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("linux-disks")


_built: dict[str, Path] = {}


def image(linux_dir: Path, name: str) -> Path:
    if name not in _built:
        _built[name] = ld.build(name, linux_dir)
    return _built[name]


def run_preflight(path: Path, expect: str = "generalized") -> Report:
    with open_disk(path) as disk:
        return preflight_disk(disk, expect)


def failing(report: Report, severity: str) -> set[str]:
    return {f.id for f in report.problems if f.severity == severity}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_fixture_verdicts(linux_dir: Path, name: str) -> None:
    report = run_preflight(image(linux_dir, name))
    errors, warnings = EXPECTED[name]
    assert failing(report, "error") == errors, [str(f) for f in report.problems]
    assert failing(report, "warning") == warnings, [str(f) for f in report.problems]
    assert report.ready == (not errors)
    for f in report.problems:  # every problem shows what was read, and how to fix it
        assert f.evidence, f
        assert f.fix or f.severity == "info" or f.id.startswith("os."), f
    if name in NON_LINUX_INFO:
        assert failing(report, "info") == NON_LINUX_INFO[name]
        assert report.facts["os"] == "none"
    elif name != "luks":
        assert report.facts["os"] == "linux"
        assert report.facts["distro"] == "Debian GNU/Linux 12 (bookworm)"


def test_evidence_names_paths_and_values(linux_dir: Path) -> None:
    report = run_preflight(image(linux_dir, "not-generalized"))
    by_id = {f.id: f for f in report.findings}
    assert "/etc/ssh/ssh_host_ed25519_key" in by_id["linux.deprovision.ssh-host-keys"].evidence
    assert "/etc/machine-id = 4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99" in \
        by_id["linux.deprovision.machine-id"].evidence
    assert "/etc/fstab line 3: /swapfile none swap" in by_id["linux.swap.fstab"].evidence
    hv = by_id["linux.hv-drivers"]
    assert "missing: hv_vmbus, hv_storvsc" in hv.evidence and "hv_netvsc.ko" in hv.evidence
    assert "/boot/grub/grub.cfg" in by_id["linux.console"].evidence
    assert by_id["linux.deprovision.cloud-init"].fix == "cloud-init clean --logs --seed"


@pytest.mark.parametrize("name", ["generalized-mbr", "generalized-mbr-extended",
                                  "generalized-lvm", "generalized-xfs", "generalized-builtin-hv"])
def test_drivers_found_in_every_initramfs_format(linux_dir: Path, name: str) -> None:
    """zstd + microcode, xz, lz4 legacy, uncompressed + microcode, and built-in drivers."""
    report = run_preflight(image(linux_dir, name))
    hv = next(f for f in report.findings if f.id == "linux.hv-drivers")
    assert hv.passed
    want = "CONFIG_HYPERV_STORAGE=y" if name.endswith("builtin-hv") else "hv_storvsc.ko"
    assert want in hv.evidence


def test_separate_boot_and_lvm_root_found_through_fstab(linux_dir: Path) -> None:
    report = run_preflight(image(linux_dir, "generalized-lvm"))
    assert report.facts["root"] == "lvm partition 2 (vg0/root), ext4"
    assert report.facts["mounts"] == {"/boot": "ext4"}
    agent = next(f for f in report.findings if f.id == "linux.agent")
    assert agent.evidence == "/usr/sbin/waagent (WALinuxAgent 2.9.1.1)"


def test_expect_specialized_inverts_deprovisioning(linux_dir: Path) -> None:
    used = run_preflight(image(linux_dir, "host-keys"), "specialized")
    assert used.ready
    assert failing(used, "warning") == {"linux.deprovision.ovf-env"}
    keys = next(f for f in used.findings if f.id == "linux.deprovision.ssh-host-keys")
    assert keys.passed and "ssh_host_rsa_key" in keys.evidence
    clean = run_preflight(image(linux_dir, "generalized-gpt"), "specialized")
    assert failing(clean, "error") == {"linux.expect.specialized"}
    with pytest.raises(UsageError):
        run_preflight(image(linux_dir, "generalized-gpt"), "sealed")


def test_corrupt_root_filesystem_is_a_finding(linux_dir: Path) -> None:
    path = image(linux_dir, "generalized-gpt")
    with open_disk(path) as base:
        root = scan_volumes(base).volumes[0]
        # Keep the superblock (and its magic) but wreck group descriptors and inode tables.
        disk = ld.OverlayDisk(base, {root.offset + 2048: b"\xa5" * (4 * MiB)})
        report = preflight_disk(disk)
    assert {f.id for f in report.problems} == {"fs.unreadable", "os.none"}
    bad = next(f for f in report.problems if f.id == "fs.unreadable")
    assert bad.evidence.startswith("ext4") and "fsck" in bad.fix


def test_gpt_damaged_primary_still_judged(linux_dir: Path) -> None:
    with open_disk(image(linux_dir, "generalized-gpt")) as base:
        disk = ld.OverlayDisk(base, {512: b"EFI PARX"})
        report = preflight_disk(disk)
    assert failing(report, "warning") == {"volume.gpt.primary-corrupt"}
    assert report.ready and report.facts["os"] == "linux"


# fstype -> (the name findings use, uuid and label the probe reads from the real header)
UNREADABLE = {"apfs": ("APFS", ld.UNREADABLE_UUID, ""), "hfsplus": ("HFS+", "", ""),
              "refs": ("ReFS", "1D2C3B4A59687766", ""), "zfs": ("ZFS", "", ""),
              "bcachefs": ("bcachefs", ld.UNREADABLE_UUID, "data")}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_filesystems_it_cannot_read_are_named(linux_dir: Path, kind: str) -> None:
    """Issue 14 point 6: named in the facts, and a warning says pre-flight cannot look inside."""
    report = run_preflight(image(linux_dir, kind))
    name, uuid, label = UNREADABLE[kind]
    vol = report.facts["volumes"][0]
    assert (vol["fstype"], vol["uuid"], vol["fs_label"]) == (kind, uuid, label)
    found = {f.id: f for f in report.problems}
    unsupported = found["fs.unsupported"]
    assert unsupported.severity == "warning"
    assert unsupported.message == (f"{name} on gpt partition 1 ({vol['type']}): pre-flight "
                                   "cannot look inside; an OS on it would not be judged")
    assert unsupported.evidence.startswith(f"gpt partition 1 ({vol['type']}): {name} signature")
    assert "preparation guide" in unsupported.fix
    assert found["os.none"].message == ("no operating system found on the volumes pre-flight "
                                        f"can read (not read: {name} on gpt partition 1 "
                                        f"({vol['type']}))")


def test_unreadable_data_volume_beside_a_judged_os(linux_dir: Path) -> None:
    report = run_preflight(image(linux_dir, "linux-and-zfs"))
    assert report.facts["os"] == "linux" and report.ready
    zfs = next(f for f in report.findings if f.id == "fs.unsupported")
    assert (zfs.severity, zfs.message) == ("info",
                                           "ZFS on gpt partition 2 (linux): pre-flight cannot "
                                           "look inside")
    # root, the ZFS pool, then the BIOS boot partition and the ESP that make the disk boot
    assert [v["fstype"] for v in report.facts["volumes"]] == ["ext4", "zfs", None, "vfat"]


# -- pieces ---------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "lz4", "none"])
@pytest.mark.parametrize("microcode", [False, True])
def test_initramfs_listing(tmp_path: Path, compression: str, microcode: bool) -> None:
    blob = ld.initramfs(("hv_vmbus", "hv_storvsc"), compression, microcode)
    p = tmp_path / "initrd"
    p.write_bytes(blob)
    with open(p, "rb") as fh:
        fobj = _FileObj(fh)
        names = list_initramfs(fobj)
    assert any(n.endswith("drivers/hv/hv_vmbus.ko") for n in names)
    assert any(n.endswith("hv_storvsc.ko") for n in names)
    assert not any("hv_netvsc" in n for n in names)
    assert ("kernel/x86/microcode/GenuineIntel.bin" in names) == microcode


def test_initramfs_corrupt_is_a_preflight_error(tmp_path: Path) -> None:
    good = ld.initramfs(("hv_vmbus",), "gzip")
    bad = good[:40] + bytes(x ^ 0x5A for x in good[40:200]) + good[200:]
    p = tmp_path / "bad"
    p.write_bytes(bad)
    with open(p, "rb") as fh, pytest.raises(PreflightError):
        list_initramfs(_FileObj(fh))
    p.write_bytes(gzip.compress(b"070701" + b"Z" * 200))
    with open(p, "rb") as fh, pytest.raises(PreflightError, match="not hexadecimal"):
        list_initramfs(_FileObj(fh))


class _FileObj:
    def __init__(self, fh: object) -> None:
        self.fh = fh

    def read(self, n: int = -1) -> bytes:
        return self.fh.read(n)  # type: ignore[attr-defined, no-any-return]

    def seek(self, off: int, whence: int = 0) -> int:
        return self.fh.seek(off, whence)  # type: ignore[attr-defined, no-any-return]

    def tell(self) -> int:
        return self.fh.tell()  # type: ignore[attr-defined, no-any-return]

    def get_size(self) -> int:
        return os.fstat(self.fh.fileno()).st_size  # type: ignore[attr-defined]


def test_filesystem_reader_follows_symlinks_and_bounds_reads(linux_dir: Path) -> None:
    with open_disk(image(linux_dir, "generalized-xfs")) as disk:
        vol = scan_volumes(disk).volumes[0]
        assert vol.file is not None
        assert probe_filesystem(vol.file).fstype == "xfs"
        fs = open_filesystem(vol.file)
        assert fs is not None and fs.fstype == "xfs"
        text = fs.read_text("/etc/os-release")  # -> ../usr/lib/os-release
        assert text is not None and text.startswith("PRETTY_NAME=")
        assert fs.read_file("/lib/modules/../../../etc/fstab", max_size=8) == b"# /etc/f"
        assert fs.kind("/etc") == "dir" and fs.is_dir("/usr/lib/modules")
        assert fs.read_file("/etc") is None and fs.read_file("/nope") is None
        assert fs.listdir("/etc/fstab") is None
        assert "waagent.conf" in (fs.listdir("/etc") or [])
        assert fs.file_size("/boot/vmlinuz-" + ld.KERNEL) == 4096


def test_fat_filesystem(tmp_path: Path) -> None:
    img = tmp_path / "esp.img"
    ld._run(["mkfs.vfat", "-C", "-n", "ESP", str(img), "8192"])
    with open_disk(img) as disk:
        vol = scan_volumes(disk).volumes[0]
        assert vol.file is not None
        probe = probe_filesystem(vol.file)
        assert (probe.fstype, probe.label) == ("vfat", "ESP")
        fs = open_filesystem(vol.file, probe)
        assert fs is not None and fs.listdir("/") == [] and not fs.exists("/EFI")


# -- CLI ------------------------------------------------------------------------------------

def test_cli_exit_codes_json_and_junit(linux_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["preflight", str(image(linux_dir, "generalized-gpt"))])
    assert ok.exit_code == 0, ok.output
    assert "READY for Azure" in ok.output
    junit = tmp_path / "pf.xml"
    bad = runner.invoke(main, ["preflight", "--json", "--junit", str(junit),
                               str(image(linux_dir, "no-hv-drivers"))])
    assert bad.exit_code == 1
    doc = json.loads(bad.output)
    assert doc["ready"] is False and doc["facts"]["os"] == "linux"
    hv = next(f for f in doc["findings"] if f["id"] == "linux.hv-drivers")
    assert hv["severity"] == "error" and "update-initramfs -u" in hv["fix"]
    failures = ET.parse(junit).getroot().findall(".//failure")
    assert [f.get("type") for f in failures] == ["linux.hv-drivers"]
    spec = runner.invoke(main, ["preflight", "--expect", "specialized",
                                str(image(linux_dir, "host-keys"))])
    assert spec.exit_code == 0, spec.output


def test_cli_unreadable_disk_exits_2_without_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    for args in (["preflight", str(empty)], ["preflight", str(tmp_path / "missing.raw")]):
        res = subprocess.run([sys.executable, "-m", "vhdkit", *args], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                 sys.path)}, check=False)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("vhdkit: error:") and "Traceback" not in res.stderr


@pytest.mark.parametrize("name", sorted([*ld.VARIANTS, *ld.OTHER]))
def test_vhd_and_vhdx_wraps_give_the_same_verdict(linux_dir: Path, tmp_path: Path,
                                                  name: str) -> None:
    raw = image(linux_dir, name)
    want = run_preflight(raw)
    for fmt, opts in (("vpc", ("subformat=dynamic",)), ("vpc", ("subformat=fixed",)),
                      ("vhdx", ())):
        wrapped = qemu.convert(raw, "raw", tmp_path / f"{name}.{fmt}{len(opts)}", fmt, *opts)
        got = run_preflight(wrapped)
        assert got.ready == want.ready
        assert {f.id for f in got.problems} == {f.id for f in want.problems}


def test_metadata_only_on_a_mostly_empty_2gib_disk(linux_dir: Path) -> None:
    """Benchmark record (see benchmarks/RESULTS.md): bytes read and time for a 2 GiB image."""
    path = ld.build_linux(ld.VARIANTS["generalized-gpt"], linux_dir, disk_mib=2048)
    with open_disk(path) as base:
        disk = ld.CountingDisk(base)
        t0 = time.perf_counter()
        report = preflight_disk(disk)
        elapsed = time.perf_counter() - t0
    assert report.ready and disk.size == 2048 * MiB
    print(f"\npreflight 2 GiB: {disk.bytes_read / MiB:.2f} MiB read in {disk.reads} reads, "
          f"{elapsed * 1000:.0f} ms")
    assert disk.bytes_read < 64 * MiB


def test_cli_text_says_what_it_found(linux_dir: Path) -> None:
    res = CliRunner().invoke(main, ["preflight", str(image(linux_dir, "generalized-lvm"))])
    assert res.exit_code == 0, res.output
    assert "found: Linux (" in res.output and "root on " in res.output
    res = CliRunner().invoke(main, ["preflight", str(image(linux_dir, "data-disk"))])
    assert "found: no OS (a data disk)" in res.output
