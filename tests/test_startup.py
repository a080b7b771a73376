"""Start-up cost: a command imports only what it uses (issue: no fixed cost).

Timing is measured in benchmarks/bench_startup.py; here we assert the cause deterministically:
which heavy modules a command loads.
"""

from __future__ import annotations

import json
import os
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


def test_qcow2_inspect_and_convert_load_no_numpy(tmp_path: Path) -> None:
    """The qcow2 tables are decoded with struct and the data scanned without numpy: its import
    (0.06-0.1 s) was a fifth of converting a 2 GiB qcow2."""
    img = tmp_path / "d.qcow2"
    qemu.create(img, "qcow2", "8M")
    qemu.write(img, "qcow2", [(1 << 20, 3 << 20, 0x5A), (6 << 20, 64 << 10, 0)])
    assert "numpy" not in heavy(loaded_by("inspect", str(img)))
    out = tmp_path / "d.vhd"
    assert "numpy" not in heavy(loaded_by("convert", str(img), str(out), "--quiet"))
    assert qemu.compare(img, "qcow2", out, "vpc")[0] == 0


THREADS_PROBE = """
import os, sys
from vhdkit.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
import numpy
print(os.environ.get("OPENBLAS_NUM_THREADS"), len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_command_keeps_openblas_to_one_thread() -> None:
    """numpy's OpenBLAS starts a spinning thread per core at import; the command does no linear
    algebra and wants those cores for the copy. A value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    res = subprocess.run([sys.executable, "-c", THREADS_PROBE], capture_output=True, text=True,
                         check=True, env=env)
    assert res.stdout.split()[-2:] == ["1", "1"]
    res = subprocess.run([sys.executable, "-c", THREADS_PROBE], capture_output=True, text=True,
                         check=True, env={**env, "OPENBLAS_NUM_THREADS": "2"})
    assert res.stdout.split()[-1] == "2"


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
