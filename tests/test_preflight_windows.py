"""Windows pre-flight: NTFS volumes built without mounts, judged by the Windows rules."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fixtures import windows_disks as wd
from fixtures.ntfs_image import make_ntfs
from vhdkit.cli import main
from vhdkit.errors import PreflightError, UsageError
from vhdkit.formats import open_disk
from vhdkit.preflight.engine import preflight_disk
from vhdkit.preflight.fileview import FileView
from vhdkit.preflight.ntfs import NtfsFilesystem, open_ntfs
from vhdkit.preflight.windows import parse_state_ini, windows_findings
from vhdkit.report import Finding

Opener = Callable[[str], NtfsFilesystem]

# variant, expect -> (ids of failing errors, ids of failing warnings)
EXPECTED: dict[tuple[str, str], tuple[set[str], set[str]]] = {
    ("generalized", "generalized"): (set(), set()),
    ("generalized", "specialized"): ({"windows.specialized"}, {"windows.setup-pending"}),
    ("specialized", "specialized"): (set(), set()),
    ("specialized", "generalized"): (
        {"windows.generalized"}, {"windows.setup-pending"}),
    ("audit", "generalized"): ({"windows.generalized"}, set()),
    ("mismatch", "generalized"): ({"windows.generalized", "windows.state-mismatch"}, set()),
    ("cdrom-disabled", "generalized"): ({"windows.cdrom-disabled"}, set()),
    ("rdp-denied", "generalized"): ({"windows.rdp-denied"}, set()),
    ("services-disabled", "generalized"): (
        {"windows.service-disabled.Dhcp"}, {"windows.service-disabled.RemoteRegistry"}),
    ("unattend", "generalized"): ({"windows.unattend"}, set()),
    ("not-recommended", "generalized"): (set(), {
        "windows.rdp-port", "windows.san-policy", "windows.realtime-utc", "windows.vm-agent",
        "windows.dhcp"}),
    ("corrupt-hive", "generalized"): ({"windows.hive.system", "windows.control-set"}, set()),
    # The primary says cdrom disabled and RDP denied; the logs (replayed) say otherwise.
    ("dirty-new-log", "generalized"): (set(), set()),
    ("dirty-old-log", "generalized"): (set(), set()),
    ("dirty-logs-missing", "generalized"): (
        {"windows.cdrom-disabled", "windows.rdp-denied"}, {"windows.hive-log.system"}),
}


@pytest.fixture(scope="session")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("windows-volumes")
    out = {}
    for name, spec in wd.VARIANTS.items():
        out[name] = work / f"{name}.ntfs"
        wd.build_volume(spec, str(out[name]))
    return out


@contextmanager
def volume_fs(path: Path) -> Iterator[NtfsFilesystem | None]:
    """A volume image read the way pre-flight reads it: a VirtualDisk seen through a FileView."""
    with open_disk(path) as disk:
        yield open_ntfs(FileView(disk))


@pytest.fixture
def open_volume(volumes: dict[str, Path]) -> Iterator[Opener]:
    with ExitStack() as stack:
        def opener(name: str) -> NtfsFilesystem:
            fs = stack.enter_context(volume_fs(volumes[name]))
            assert fs is not None
            return fs

        yield opener


def _by_id(findings: list[Finding]) -> dict[str, Finding]:
    return {f.id: f for f in findings}


def _failing(findings: list[Finding], severity: str) -> set[str]:
    return {f.id for f in findings if not f.passed and f.severity == severity}


@pytest.mark.parametrize(("variant", "expect"), list(EXPECTED), ids=lambda x: str(x))
def test_variant_verdict_and_finding_ids(open_volume: Opener, variant: str,
                                         expect: str) -> None:
    findings = windows_findings(open_volume(variant), expect)
    errors, warnings = EXPECTED[(variant, expect)]
    assert _failing(findings, "error") == errors
    assert _failing(findings, "warning") == warnings
    assert all(f.evidence for f in findings), [f.id for f in findings if not f.evidence]
    assert all(f.fix for f in findings if not f.passed and f.severity == "error")


def test_generalized_lists_every_rule_with_evidence(open_volume: Opener) -> None:
    found = _by_id(windows_findings(open_volume("generalized"), "generalized"))
    assert found["windows.generalized"].passed
    assert "SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State\\ImageState = " \
        "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE" in found["windows.generalized"].evidence
    assert "Windows/Setup/State/State.ini [State] ImageState = " \
        "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE" in found["windows.generalized"].evidence
    assert found["windows.sysprep-status"].evidence == (
        r"SYSTEM\Setup\Status\SysprepStatus\GeneralizationState = 7")
    assert found["windows.setup-pending"].evidence == (
        'SYSTEM\\Setup\\SetupType = 2, SYSTEM\\Setup\\CmdLine = "oobe\\windeploy.exe"')
    assert found["windows.sysprep-tag"].passed
    assert found["windows.os"].message == "Windows Server 2022 Datacenter (build 20348)"
    assert {f"windows.service-disabled.{s}" for s in ("BFE", "Dhcp", "TermService")} <= set(found)
    assert all(f.passed for f in found.values())


def test_specialized_image_is_not_generalized(open_volume: Opener) -> None:
    found = _by_id(windows_findings(open_volume("specialized"), "generalized"))
    f = found["windows.generalized"]
    assert f.severity == "error" and not f.passed
    assert "specialized" in f.message
    assert "IMAGE_STATE_COMPLETE" in f.evidence
    assert "sysprep.exe /generalize /oobe /shutdown" in f.fix
    assert found["windows.sysprep-tag"].evidence.endswith("Sysprep_succeeded.tag: absent")


def test_generalization_state_7_is_not_shown_as_a_generalize(open_volume: Opener) -> None:
    """A never-sysprepped machine carries GeneralizationState 7: it proves only that Sysprep may
    run; the verdict rests on ImageState and SetupType/CmdLine."""
    found = _by_id(windows_findings(open_volume("specialized"), "generalized"))
    status = found["windows.sysprep-status"]
    assert status.evidence == r"SYSTEM\Setup\Status\SysprepStatus\GeneralizationState = 7"
    assert status.severity == "info"
    assert "completed" not in status.message and "not evidence of a generalize" in status.message
    assert not found["windows.generalized"].passed
    assert not found["windows.setup-pending"].passed


def test_expect_specialized_inverts_the_rule(open_volume: Opener) -> None:
    found = _by_id(windows_findings(open_volume("generalized"), "specialized"))
    f = found["windows.specialized"]
    assert not f.passed and "generalized" in f.message
    assert "--expect generalized" in f.fix
    assert "windows.generalized" not in found
    ok = _by_id(windows_findings(open_volume("specialized"), "specialized"))
    assert ok["windows.specialized"].passed


def test_audit_mode(open_volume: Opener) -> None:
    f = _by_id(windows_findings(open_volume("audit"), "generalized"))["windows.generalized"]
    assert "audit mode" in f.message
    assert "IMAGE_STATE_GENERALIZE_RESEAL_TO_AUDIT" in f.evidence


def test_state_mismatch_names_both_sources(open_volume: Opener) -> None:
    f = _by_id(windows_findings(open_volume("mismatch"), "generalized"))["windows.state-mismatch"]
    assert f.evidence == (
        "Windows/Setup/State/State.ini [State] ImageState = IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
        "; SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State\\ImageState = "
        "IMAGE_STATE_COMPLETE")


def test_cdrom_rdp_and_services_evidence_and_fix(open_volume: Opener) -> None:
    cd = _by_id(windows_findings(open_volume("cdrom-disabled")))["windows.cdrom-disabled"]
    assert cd.evidence == r"SYSTEM\ControlSet001\Services\cdrom\Start = 4"
    assert cd.fix == (r'reg add "HKLM\SYSTEM\CurrentControlSet\Services\cdrom" /v Start '
                      "/t REG_DWORD /d 1 /f")
    rdp = _by_id(windows_findings(open_volume("rdp-denied")))["windows.rdp-denied"]
    assert rdp.evidence == (
        r"SYSTEM\ControlSet001\Control\Terminal Server\fDenyTSConnections = 1")
    assert "fDenyTSConnections /t REG_DWORD /d 0" in rdp.fix
    svc = _by_id(windows_findings(open_volume("services-disabled")))
    assert svc["windows.service-disabled.Dhcp"].evidence == (
        r"SYSTEM\ControlSet001\Services\Dhcp\Start = 4")
    assert svc["windows.service-disabled.Dhcp"].fix == (
        "Set-Service -Name Dhcp -StartupType Automatic")


def test_control_set_comes_from_select_current(open_volume: Opener) -> None:
    # ControlSet001 denies RDP and disables cdrom, but Select\Current points at ControlSet002.
    found = _by_id(windows_findings(open_volume("not-recommended")))
    assert found["windows.rdp-denied"].passed
    assert found["windows.cdrom-disabled"].evidence.startswith(r"SYSTEM\ControlSet002")
    assert found["windows.san-policy"].evidence == (
        r"SYSTEM\ControlSet002\Services\partmgr\Parameters\SanPolicy = 2")
    assert found["windows.realtime-utc"].evidence.endswith("RealTimeIsUniversal = absent")


def test_unattend_left_behind(open_volume: Opener) -> None:
    f = _by_id(windows_findings(open_volume("unattend")))["windows.unattend"]
    assert f.evidence == "Windows/Panther/unattend.xml (46 bytes)"
    assert f.fix.startswith(r"delete Windows\Panther\unattend.xml")


def test_corrupt_hive_is_a_finding_not_a_traceback(open_volume: Opener) -> None:
    found = _by_id(windows_findings(open_volume("corrupt-hive")))
    f = found["windows.hive.system"]
    assert f.severity == "error" and "SYSTEM hive cannot be read" in f.message
    assert found["windows.generalized"].passed  # SOFTWARE and State.ini are still judged


def test_missing_and_unreadable_hives(tmp_path: Path) -> None:
    image = tmp_path / "bare.ntfs"
    make_ntfs(str(image), wd.VOLUME_SIZE, {
        "Windows/System32/config/SOFTWARE": b"regf but not really" * 100,
        "Windows/Setup/State/State.ini": b"[State]\nImageState=IMAGE_STATE_UNDEPLOYABLE\n",
    })
    with volume_fs(image) as fs:
        assert fs is not None
        found = _by_id(windows_findings(fs))
    assert found["windows.hive.system"].message == "the SYSTEM hive is missing"
    assert found["windows.hive.system"].evidence == "Windows/System32/config/SYSTEM: absent"
    assert "SOFTWARE hive cannot be read" in found["windows.hive.software"].message
    assert "Sysprep did not finish" in found["windows.generalized"].message
    assert "setuperr.log" in found["windows.generalized"].fix


def test_invalid_expect_is_a_usage_error(open_volume: Opener) -> None:
    with pytest.raises(UsageError):
        windows_findings(open_volume("generalized"), "sealed")


@pytest.mark.parametrize("raw", [
    "[State]\r\nImageState=IMAGE_STATE_COMPLETE\r\n".encode("utf-16"),
    b"[State]\nImageState = IMAGE_STATE_COMPLETE\n",
    "\ufeff[Other]\nX=1\n[state]\nimagestate=IMAGE_STATE_COMPLETE".encode(),
    "[State]\r\nImageState=IMAGE_STATE_COMPLETE".encode("utf-16-le"),
])
def test_state_ini_encodings(raw: bytes) -> None:
    assert parse_state_ini(raw) == "IMAGE_STATE_COMPLETE"


def test_state_ini_without_state_section() -> None:
    assert parse_state_ini(b"[Other]\nImageState=IMAGE_STATE_COMPLETE\n") is None
    assert parse_state_ini(b"\xff\xfe\x00") is None


# -- the NTFS filesystem itself ----------------------------------------------------------------


def test_ntfs_paths_are_case_insensitive(open_volume: Opener) -> None:
    fs = open_volume("unattend")
    assert fs.fstype == "ntfs"
    assert fs.kind("/windows/PANTHER/Unattend.XML") == "file"
    assert fs.kind("Windows/Panther") == "dir"
    assert fs.kind("/Windows/nope") is None
    assert fs.is_dir("/") and not fs.is_dir("Windows/Panther/unattend.xml")
    assert fs.read_file("WINDOWS/panther/unattend.xml") == (
        b'<?xml version="1.0"?><unattend xmlns="urn:x"/>')
    assert fs.read_file("Windows/Panther/unattend.xml", 5) == b"<?xml"
    assert fs.file_size("Windows/System32/config/SYSTEM") == len(
        wd.system_hive(wd.VARIANTS["unattend"]))
    assert fs.read_file("Windows/Panther") is None
    assert fs.listdir("/Windows") == ["Panther", "Setup", "System32"]
    assert fs.listdir("/Windows/Panther/unattend.xml") is None
    assert "Windows" in (fs.listdir("/") or [])


def test_open_ntfs_on_other_content(tmp_path: Path, volumes: dict[str, Path]) -> None:
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(1 << 20))
    with volume_fs(blank) as fs:
        assert fs is None
    with volume_fs(volumes["bitlocker"]) as fs:  # "-FVE-FS-" boot sector: not readable NTFS
        assert fs is None
    damaged = tmp_path / "damaged"
    damaged.write_bytes(b"\xeb\x52\x90NTFS    " + bytes(1 << 20))
    with pytest.raises(PreflightError, match=r"^ntfs filesystem"), volume_fs(damaged):
        pass


def test_mbr_disk_layout(tmp_path: Path) -> None:
    disk = tmp_path / "win.raw"
    wd.build_disk(wd.VARIANTS["generalized"], str(disk))
    data = disk.read_bytes()
    assert len(data) == wd.VOLUME_SIZE + 2 * wd.MIB
    assert data[510:512] == b"\x55\xaa"
    assert data[446:462] == bytes.fromhex("80feffff07feffff") + (2048).to_bytes(4, "little") \
        + (wd.VOLUME_SIZE // 512).to_bytes(4, "little")
    assert data[wd.MIB + 3:wd.MIB + 11] == b"NTFS    "
    assert disk.stat().st_blocks * 512 < len(data) // 2  # kept sparse


# -- end to end: MBR disk images, every container, the engine and the CLI ----------------------

CONTAINERS = ["raw", "vhd-fixed", "vhd-dynamic", "vhdx"]
DISK_ERRORS = {v: errors for (v, e), (errors, _) in EXPECTED.items() if e == "generalized"}
DISK_ERRORS["bitlocker"] = {"volume.encrypted"}


class Disks:
    """Disk images built on first use and kept for the session."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.cache: dict[tuple[str, str], Path] = {}

    def get(self, variant: str, container: str = "raw") -> Path:
        key = (variant, container)
        if key not in self.cache:
            raw = self.work / f"{variant}.raw"
            if not raw.exists():
                wd.build_disk(wd.VARIANTS[variant], str(raw), str(self.work))
            self.cache[key] = raw if container == "raw" else Path(
                wd.wrap(str(raw), str(self.work / f"{variant}.{container}"), container))
        return self.cache[key]


@pytest.fixture(scope="session")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Disks:
    return Disks(tmp_path_factory.mktemp("windows-disks"))


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("variant", sorted(DISK_ERRORS))
def test_engine_on_every_container(disks: Disks, variant: str, container: str) -> None:
    with open_disk(disks.get(variant, container)) as disk:
        report = preflight_disk(disk)
    assert {f.id for f in report.errors} == DISK_ERRORS[variant]
    assert report.ready == (not DISK_ERRORS[variant])
    assert report.facts["os"] == ("unknown" if variant == "bitlocker" else "windows")


def test_engine_bitlocker_evidence(disks: Disks) -> None:
    with open_disk(disks.get("bitlocker")) as disk:
        (enc,) = preflight_disk(disk).errors
    assert enc.evidence == "mbr partition 1 at offset 1048576: '-FVE-FS-' boot sector"


def test_engine_expect_specialized(disks: Disks) -> None:
    with open_disk(disks.get("specialized", "vhd-dynamic")) as disk:
        assert preflight_disk(disk, "specialized").ready
    with open_disk(disks.get("generalized", "vhdx")) as disk:
        assert [f.id for f in preflight_disk(disk, "specialized").errors] == ["windows.specialized"]


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["preflight", *args])


def test_cli_exit_codes(disks: Disks, tmp_path: Path) -> None:
    ready = _cli(str(disks.get("generalized", "vhd-fixed")))
    assert ready.exit_code == 0, ready.output
    assert "READY for Azure" in ready.output and "NOT READY" not in ready.output

    bad = _cli(str(disks.get("rdp-denied", "vhdx")))
    assert bad.exit_code == 1
    assert "[error] windows.rdp-denied" in bad.output
    assert (r"evidence: SYSTEM\ControlSet001\Control\Terminal Server\fDenyTSConnections = 1"
            in bad.output)

    spec = _cli(str(disks.get("specialized")), "--expect", "specialized")
    assert spec.exit_code == 0, spec.output

    junk = tmp_path / "junk.vhd"
    junk.write_bytes(b"not a disk" * 100)
    broken = _cli(str(junk))
    assert broken.exit_code == 2
    assert "Traceback" not in broken.output


def test_cli_json_and_junit(disks: Disks, tmp_path: Path) -> None:
    junit = tmp_path / "preflight.xml"
    res = _cli(str(disks.get("mismatch")), "--json", "--junit", str(junit))
    assert res.exit_code == 1
    doc = json.loads(res.output)
    assert doc["ready"] is False
    found = {f["id"]: f for f in doc["findings"]}
    assert not found["windows.state-mismatch"]["passed"]
    assert "IMAGE_STATE_COMPLETE" in found["windows.state-mismatch"]["evidence"]
    assert found["windows.cdrom-disabled"]["passed"]
    cases = ET.parse(junit).getroot().iter("testcase")
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"windows.generalized", "windows.state-mismatch"}
