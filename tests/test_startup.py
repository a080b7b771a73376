"""Start-up cost: a command imports only what it uses (issue: no fixed cost).

Timing is measured in benchmarks/bench_startup.py; here we assert the cause deterministically:
which heavy modules a command loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import vhdkit
import vhdkit.cli
from fixtures import qemu

HEAVY = ("numpy", "construct", "azure", "vhdkit.preflight", "vhdkit.upload", "vhdkit.bench",
         "tqdm", "pyvhdi")

PROBE = """
import json, sys
from vhdkit.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_by(*args: str) -> set[str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         check=False)
    return set(json.loads(res.stderr.strip().splitlines()[-1]))


def heavy(mods: set[str]) -> set[str]:
    return {h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in mods)}


def test_version_loads_click_only() -> None:
    assert heavy(loaded_by("--version")) == set()


def test_check_of_a_fixed_vhd_loads_no_data_or_azure_modules(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    raw.write_bytes(b"\x01" * 4096 + bytes(4 << 20))
    vhd = qemu.convert(raw, "raw", tmp_path / "d.vhd", "vpc", "subformat=fixed", "force_size=on")
    # not even construct: the footer is a struct table (importing construct cost ~10 ms)
    mods = loaded_by("check", str(vhd))
    assert heavy(mods) == set()
    # nor what only --junit (the XML writer) and a failed hard link (ctypes) need
    assert {"xml.etree.ElementTree", "socket", "ctypes"} & mods == set()


def test_qcow2_header_is_parsed_without_construct(tmp_path: Path) -> None:
    """Every command on a qcow2 parses its header: struct tables, not compiled declarations."""
    img = tmp_path / "d.qcow2"
    qemu.create(img, "qcow2", "4M")
    mods = loaded_by("inspect", str(img))
    assert "vhdkit.formats.qcow2_header" in mods
    assert "construct" not in heavy(mods)


@pytest.mark.parametrize("name", sorted(vhdkit.__all__))
def test_every_public_name_loads_lazily(name: str) -> None:
    assert getattr(vhdkit, name) is not None


def test_public_modules_import_on_their_own() -> None:
    """The modules that public functions used to shadow are modules again."""
    for mod in ("vhdkit.convert", "vhdkit.upload", "vhdkit.preflight"):
        res = subprocess.run([sys.executable, "-c", f"import {mod} as m; print(type(m).__name__)"],
                             capture_output=True, text=True, check=True)
        assert res.stdout.strip() == "module", mod


def test_lazy_command_table_matches_the_registered_commands() -> None:
    for name in vhdkit.cli.COMMANDS:
        ctx = vhdkit.cli.main.make_context("vhdkit", ["--help"], resilient_parsing=True)
        assert vhdkit.cli.main.get_command(ctx, name) is not None, name
    assert set(vhdkit.cli.main.commands) == set(vhdkit.cli.COMMANDS)
