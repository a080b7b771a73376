"""The inspect JSON is exactly what docs/JSON.md documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cli_helpers import vhdkit
from fixtures import disk_formats, vdi_images
from fixtures.vhdbuild import KIB, MIB, build_dynamic

DOC = Path(__file__).resolve().parent.parent / "docs" / "JSON.md"


def keys(doc: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= keys(v, f"{name}.")
        else:
            out.add(name)
    return out


def documented(section: str) -> set[str]:
    text = DOC.read_text().split(f"## `vhdkit {section}")[1].split("\n## ")[0]
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", text, flags=re.M))


def ova_only(section: str) -> set[str]:
    text = DOC.read_text().split(f"## `vhdkit {section}")[1].split("\n## ")[0]
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \| [^|]+ \| OVA:", text, flags=re.M))


def test_inspect_json_keys_are_documented(tmp_path: Path) -> None:
    base = build_dynamic(tmp_path / "base.vhd", 4 * MIB, 512 * KIB, {0: (None, b"x")})
    child = build_dynamic(tmp_path / "child.vhd", 4 * MIB, 512 * KIB, {1: (None, b"y")},
                          parent=base)
    (tmp_path / "vdi").mkdir()
    raw = tmp_path / "src.raw"
    raw.write_bytes(b"z" * 4096 + bytes(4 * MIB - 4096))
    # a differencing VHD shows every VHD key; each other format vhdkit reads adds its details
    samples: list[tuple[Path, Path | None]] = [(child, None), (raw, None)]
    samples += [(f.build(raw, tmp_path), None) for f in disk_formats.included()]
    snap, snap_parent, _ = vdi_images.differencing(tmp_path / "vdi")  # details.parent_uuid
    samples.append((snap, snap_parent))
    seen: set[str] = set()
    for path, parent in samples:
        extra = ["--parent", str(parent)] if parent else []
        code, out, _ = vhdkit("inspect", "--json", *extra, str(path))
        assert code == 0
        found = keys(json.loads(out))
        assert found <= documented("inspect"), (path.name, found - documented("inspect"))
        seen |= found
    # OVA-only keys come from an OVA (tests/test_vmdk*.py); every other documented key is seen
    assert seen | ova_only("inspect") == documented("inspect")


def test_check_json_keys_are_documented(tmp_path: Path) -> None:
    img = build_dynamic(tmp_path / "d.vhd", 4 * MIB, 512 * KIB, {0: (None, b"x")})
    _, out, _ = vhdkit("check", "--json", str(img))
    doc = json.loads(out)
    assert set(doc) == {k.split(".")[0] for k in documented("check")}
    assert set(doc["facts"]) == {"format", "kind", "virtual_size", "file_size", "azure_size"}
    assert set(doc["findings"][0]) == {"id", "severity", "message", "evidence", "fix", "passed",
                                       "applicable"}


def test_preflight_json_keys_are_documented(tmp_path: Path) -> None:
    """The facts of a Linux OS disk (every key appears for it) are exactly the documented ones;
    the boot facts are the Report's typed ``boot`` attribute."""
    from fixtures import linux_disks
    from vhdkit.formats import open_disk
    from vhdkit.preflight import preflight_disk

    raw = linux_disks.build("generalized-gpt", tmp_path)
    code, out, _ = vhdkit("preflight", "--json", str(raw))
    assert code == 0
    doc = json.loads(out)
    want = documented("preflight")
    volume_keys = re.search(r"`\{(number, [^}]*)\}`", DOC.read_text().split(
        "## `vhdkit preflight")[1])
    assert volume_keys is not None
    empty = {k for k, v in doc["facts"].items() if v == {}}  # mounts: {} without /boot etc.
    assert keys(doc["facts"]) | empty == want
    assert set(doc["facts"]["volumes"][0]) == set(volume_keys.group(1).split(", "))
    assert doc["facts"]["boot"]["generations"] == ["V1", "V2"]
    with open_disk(raw) as disk:
        report = preflight_disk(disk)
    assert report.boot is not None and report.boot.to_dict() == doc["facts"]["boot"]
