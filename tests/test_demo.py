"""`make demo` keeps working: its script runs end to end against the tests' Azurite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_script_runs_end_to_end(tmp_path: Path, azurite_url: str) -> None:
    # A copy of the scripts and fixtures, so the demo's output folder lands in tmp_path.
    for part in ("scripts", "fixtures"):
        shutil.copytree(ROOT / part, tmp_path / part)
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, VHDKIT=os.path.join(bindir, "vhdkit"), PYTHON=sys.executable,
               VHDKIT_AZURITE_BLOB_URL=azurite_url,
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(tmp_path)]))
    res = subprocess.run(["bash", "scripts/demo.sh"], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for line in ("vhdkit check: exit 1", "vhdkit preflight: exit 0", "vhdkit convert: exit 0",
                 "vhdkit check: exit 0", "vhdkit upload: exit 0"):
        assert line in out
    assert "[resumed]" in out and "sent:       0 bytes in 0 writes" in out
    assert (tmp_path / "demo-out" / "sample-azure.vhd").stat().st_size == 77 * 1024 * 1024 + 512
