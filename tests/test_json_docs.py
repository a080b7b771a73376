"""Every --json document is exactly what docs/JSON.md documents: each table becomes a JSON
Schema (types, required keys, no undocumented keys) that real documents of every command are
validated against with jsonschema, and every documented key shows up in some document."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cli_helpers import vhdkit
from fixtures import disk_formats, linux_disks, vdi_images
from fixtures.vhdbuild import KIB, MIB, build_dynamic, build_fixed
from fixtures.vmdk_images import make_ova, ovf

DOC = Path(__file__).resolve().parent.parent / "docs" / "JSON.md"
TYPES = {"int": "integer", "number": "number", "string": "string", "bool": "boolean",
         "list": "array", "object": "object"}
ROW = re.compile(r"^\| `([a-z0-9_.\[\]]+)` \| ([^|]+) \|", re.M)


def section(title: str) -> list[tuple[str, str]]:
    header = title if "`" in title else f"`{title}`"
    text = DOC.read_text().split(f"\n## {header}\n")[1].split("\n## ")[0]
    return [(key, typ.strip()) for key, typ in ROW.findall(text)]


def _type(spec: str) -> tuple[dict[str, Any], bool, bool]:
    """'string or null, optional' -> (schema, optional, open)."""
    words = [w.strip() for w in spec.split(",")]
    names = [TYPES[t.strip()] if t.strip() != "null" else "null" for t in words[0].split(" or ")]
    schema: dict[str, Any] = {"type": names[0] if len(names) == 1 else names}
    if "object" in names:
        schema.update(properties={}, required=[], additionalProperties="open" in words)
    return schema, "optional" in words, "open" in words


def schema_of(rows: list[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {"type": "object", "properties": {}, "required": [],
                            "additionalProperties": False}
    for path, spec in rows:
        node = root
        parts = path.split(".")
        for i, part in enumerate(parts):
            name, item = part.removesuffix("[]"), part.endswith("[]")
            if i == len(parts) - 1:
                schema, optional, _ = _type(spec)
                node["properties"].setdefault(name, {}).update(schema)
                if not optional:
                    node["required"].append(name)
                break
            node = node["properties"][name]  # a parent row comes before its keys
            if item:
                node = node.setdefault("items", {"type": "object", "properties": {},
                                                 "required": [], "additionalProperties": False})
    return root


def paths(doc: Any, prefix: str = "") -> set[str]:
    """Every key path in ``doc`` in the tables' notation (``a.b``, ``a[].b``)."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(prefix + k)
            out |= paths(v, prefix + k + ".")
    elif isinstance(doc, list):
        for v in doc:
            if isinstance(v, dict):
                out |= paths(v, prefix.removesuffix(".") + "[].")
    return out


class Checked:
    """Documents validated per section; at the end every documented key must have been seen."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}

    def validate(self, title: str, out: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(out)
        assert doc["schema"] == 1 and next(iter(doc)) == "schema"
        jsonschema.validate(doc, schema_of(section(title)))
        self.seen.setdefault(title, set()).update(paths(doc))
        return doc

    def all_keys_seen(self, title: str) -> None:
        rows = section(title)
        documented = {key for key, _ in rows}
        # keys inside an open object, or a list/object whose items the meaning column describes
        opaque = {key for key, spec in rows if "open" in spec or (
            spec.split(",")[0].split(" or ")[0] in ("list", "object")
            and not any(k.startswith((key + ".", key + "[].")) for k in documented))}
        seen = {p for p in self.seen[title]
                if p in documented or not p.startswith(tuple(
                    o + sep for o in opaque for sep in (".", "[]."))) }
        assert documented - seen == set(), f"{title}: documented but never produced"
        assert seen - documented == set(), f"{title}: produced but not documented"


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("json")
    base = build_dynamic(d / "base.vhd", 4 * MIB, 512 * KIB, {0: (None, b"x")})
    child = build_dynamic(d / "child.vhd", 4 * MIB, 512 * KIB, {1: (None, b"y")}, parent=base)
    raw = d / "raw.img"
    raw.write_bytes(b"\x01" * MIB + bytes(MIB))
    fixed = build_fixed(d / "fixed.vhd", 21 * MIB)
    damaged = d / "damaged.vhd"
    damaged.write_bytes(fixed.read_bytes()[:-512] + bytes(512))  # no footer
    return {"base": base, "child": child, "raw": raw, "fixed": fixed, "damaged": damaged,
            "linux": linux_disks.build("not-generalized", d), "dir": d}


def other_formats(raw: Path, d: Path) -> list[list[str]]:
    """inspect arguments for a disk of every other format vhdkit reads (each adds its
    ``details``): the registry's qemu-img images, a differencing VDI, an OVA of two disks."""
    samples = [[str(f.build(raw, d))] for f in disk_formats.included()]
    (d / "vdi").mkdir()
    snap, snap_parent, _ = vdi_images.differencing(d / "vdi")  # details.parent_uuid
    samples.append(["--parent", str(snap_parent), str(snap)])
    vmdk = next(Path(s[0]) for s in samples if s[0].endswith("streamOptimized.vmdk"))
    ova = make_ova(d / "two.ova", [("two.ovf", ovf([("a.vmdk", 2 * MIB), ("b.vmdk", 2 * MIB)])
                                    .encode()), ("a.vmdk", vmdk), ("b.vmdk", vmdk)])
    samples.append(["--disk", "2", str(ova)])
    return samples


def test_inspect_check_preflight_convert_documents(disks: dict[str, Path]) -> None:
    c = Checked()
    args = [[str(disks[name])] for name in ("child", "raw", "fixed")]
    for arg in args + other_formats(disks["raw"], disks["dir"]):
        code, out, err = vhdkit("inspect", "--json", *arg)
        assert code == 0, (arg, err)
        c.validate("vhdkit inspect --json DISK", out)
    c.all_keys_seen("vhdkit inspect --json DISK")

    for name in ("base", "damaged", "raw"):
        _, out, _ = vhdkit("check", "--json", str(disks[name]))
        c.validate("vhdkit check --json DISK", out)
    c.all_keys_seen("vhdkit check --json DISK")

    for name in ("base", "linux"):
        _, out, _ = vhdkit("preflight", "--json", str(disks[name]))
        c.validate("vhdkit preflight --json DISK", out)
    c.all_keys_seen("vhdkit preflight --json DISK")

    dst = disks["dir"] / "converted.vhd"
    code, out, err = vhdkit("convert", str(disks["base"]), str(dst), "--size", "21M",
                            "--verify", "--json")
    assert code == 0, err
    c.validate("vhdkit convert --json SRC DST", out)
    code, out, err = vhdkit("convert", "--in-place", str(dst), "--size", "22M", "--json")
    assert code == 0, err
    assert c.validate("vhdkit convert --json SRC DST", out)["in_place"] is True
    c.all_keys_seen("vhdkit convert --json SRC DST")


def test_upload_documents_including_a_refusal(disks: dict[str, Path], azurite_url: str) -> None:
    c = Checked()
    code, out, err = vhdkit("upload", str(disks["fixed"]), "--dry-run", "--json")
    assert code == 0, err
    assert c.validate("vhdkit upload --json DISK ...", out)["mode"] == "dry-run"
    code, out, err = vhdkit("upload", str(disks["fixed"]), "--emulator", azurite_url,
                            "--container", "jsondocs", "--create-container", "--md5", "--verify",
                            "--json", "-q")
    assert code == 0, err
    assert c.validate("vhdkit upload --json DISK ...", out)["verified"] is not None
    c.all_keys_seen("vhdkit upload --json DISK ...")

    # refused by pre-flight: still a JSON document on stdout, without a stream_size
    code, out, err = vhdkit("upload", str(disks["linux"]), "--dry-run", "--json")
    assert code == 1
    doc = c.validate("`vhdkit upload --json DISK ...` refused by pre-flight", out)
    assert doc["mode"] == "refused" and "stream_size" not in doc
    assert any(f["severity"] == "error" and not f["passed"] for f in doc["findings"])
    assert err.strip().splitlines()[-1].startswith("vhdkit: upload refused")
    c.all_keys_seen("`vhdkit upload --json DISK ...` refused by pre-flight")


def test_bench_document(disks: dict[str, Path], azurite_url: str) -> None:
    c = Checked()
    code, out, err = vhdkit("bench", "--emulator", azurite_url, "--container", "jsonbench",
                            "--size", "1M", "--shape", "sparse", "--concurrency", "1", "--json",
                            "-q")
    assert code == 0, err
    c.validate("vhdkit bench --json ...", out)
    code, out, err = vhdkit("bench", "--emulator", azurite_url, "--container", "jsonbench",
                            "--shape", "disk", "--disk", str(disks["raw"]), "--concurrency", "1",
                            "--json", "-q")
    assert code == 0, err
    doc = c.validate("vhdkit bench --json ...", out)
    assert doc["config"]["disk"] == str(disks["raw"])
    c.all_keys_seen("vhdkit bench --json ...")


def test_preflight_boot_facts_are_the_reports(tmp_path: Path) -> None:
    """The boot facts of a Linux OS disk are documented and are the Report's typed ``boot``."""
    from vhdkit.formats import open_disk
    from vhdkit.preflight import preflight_disk

    raw = linux_disks.build("generalized-gpt", tmp_path)
    code, out, _ = vhdkit("preflight", "--json", str(raw))
    assert code == 0
    c = Checked()
    doc = c.validate("vhdkit preflight --json DISK", out)
    assert doc["facts"]["boot"]["generations"] == ["V1", "V2"]
    with open_disk(raw) as disk:
        report = preflight_disk(disk)
    assert report.boot is not None and report.boot.to_dict() == doc["facts"]["boot"]
