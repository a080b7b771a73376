"""`vhdkit check` verdicts, exit codes, JSON and JUnit on images qemu made."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cli_helpers import vhdkit
from fixtures import qemu
from vhdkit.azure_view import fixed_footer
from vhdkit.check import RULES, check_path

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    w = tmp_path_factory.mktemp("check")
    out = {
        "fixed-chs": qemu.create(w / "fixed-chs.vhd", "vpc", "100M", "subformat=fixed"),
        "fixed-force": qemu.create(w / "fixed-force.vhd", "vpc", "100M", "subformat=fixed",
                                   "force_size=on"),
        "dynamic": qemu.create(w / "dynamic.vhd", "vpc", "100M", "force_size=on"),
        "vhdx": qemu.create(w / "disk.vhdx", "vhdx", "100M"),
        "raw": qemu.create(w / "disk.raw", "raw", "100M"),
        "small": qemu.create(w / "small.vhd", "vpc", "10M", "subformat=fixed", "force_size=on"),
    }
    return out


def ids(report_json: str) -> dict[str, dict[str, object]]:
    doc = json.loads(report_json)
    return {f["id"]: f for f in doc["findings"] if not f["passed"]}


def test_qemu_fixed_without_force_size_is_not_ready(images: dict[str, Path]) -> None:
    code, out, _ = vhdkit("check", "--json", str(images["fixed-chs"]))
    assert code == 1
    found = ids(out)
    assert set(found) == {"azure.size-mib"}
    f = found["azure.size-mib"]
    assert "104865792 is not a whole number of MiB" in str(f["message"])
    assert "force_size" in str(f["message"]) and "1004/12/17" in str(f["message"])
    assert f["fix"] == (f"vhdkit convert --in-place {images['fixed-chs']} "
                        "(rounds up to 105906176 bytes)")


def test_qemu_fixed_with_force_size_is_ready(images: dict[str, Path]) -> None:
    code, out, _ = vhdkit("check", str(images["fixed-force"]))
    assert code == 0
    assert "READY for Azure" in out and "NOT READY" not in out


@pytest.mark.parametrize("name,rule,fix_word", [
    ("dynamic", "vhd.type", "vhdkit convert"),
    ("vhdx", "format", "vhdkit convert"),
    ("raw", "format", "vhdkit convert"),
])
def test_needs_convert(images: dict[str, Path], name: str, rule: str, fix_word: str) -> None:
    code, out, _ = vhdkit("check", "--json", str(images[name]))
    assert code == 1
    found = ids(out)
    assert rule in found
    assert str(found[rule]["fix"]).startswith(f"{fix_word} {images[name]} ")
    assert str(found[rule]["fix"]).split()[3].endswith("-azure.vhd")


def test_size_outside_azure_range(images: dict[str, Path]) -> None:
    code, out, _ = vhdkit("check", "--json", str(images["small"]))
    assert code == 1
    assert "azure.size-range" in ids(out)


def test_os_disk_limit(tmp_path: Path) -> None:
    # qemu cannot make a VHD this large: a sparse file with a synthesized fixed footer.
    size = 5 * 1024**4
    big = tmp_path / "big.vhd"
    with big.open("wb") as fh:
        fh.truncate(size)
        fh.seek(size)
        fh.write(fixed_footer(size, bytes(range(16)), 0).build())
    code, out, _ = vhdkit("check", "--json", "--os-disk", str(big))
    assert code == 1
    assert "azure.os-disk-size" in ids(out)
    code, out, _ = vhdkit("check", "--json", str(big))
    assert "azure.os-disk-size" not in ids(out)


def test_junit_has_one_case_per_rule(images: dict[str, Path], tmp_path: Path) -> None:
    junit = tmp_path / "check.xml"
    code, _, _ = vhdkit("check", "--junit", str(junit), str(images["dynamic"]))
    assert code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == set(RULES)
    failed = {n for n, c in cases.items() if c.find("failure") is not None}
    assert failed == {"vhd.type"}
    assert suite.get("failures") == "1"
    assert cases["vhd.file-size"].find("skipped") is not None  # not applicable to dynamic


def test_text_output_names_fix(images: dict[str, Path]) -> None:
    code, out, _ = vhdkit("check", str(images["dynamic"]))
    assert code == 1
    assert "[error] vhd.type: dynamic VHD" in out
    assert f"fix: vhdkit convert {images['dynamic']}" in out


def test_library_report(images: dict[str, Path]) -> None:
    report = check_path(images["fixed-force"])
    assert report.ready
    assert report.facts["virtual_size"] == 100 * MIB


def test_check_with_preflight_adds_os_findings(tmp_path: Path) -> None:
    from fixtures import linux_disks

    raw = linux_disks.build("host-keys", tmp_path)
    vhd = qemu.convert(raw, "raw", tmp_path / "host-keys.vhd", "vpc", "subformat=dynamic")
    code, out, _ = vhdkit("check", "--json", "--preflight", str(vhd))
    assert code == 1
    found = ids(out)
    assert "vhd.type" in found  # the format finding
    assert "linux.deprovision.ssh-host-keys" in found  # the OS finding
    code, out, _ = vhdkit("check", "--json", str(vhd))
    assert not any(i.startswith("linux.") for i in ids(out))


def test_check_with_preflight_on_a_damaged_image_reports_instead_of_failing(
        images: dict[str, Path], tmp_path: Path) -> None:
    from fixtures import mutate

    bad = tmp_path / "bad.vhd"
    bad.write_bytes(images["dynamic"].read_bytes())
    mutate.set_header(bad, block_size=3 * MIB)
    code, out, _ = vhdkit("check", "--json", "--preflight", str(bad))
    assert code == 1
    assert {"vhd.header", "preflight.unreadable"} <= set(ids(out))
