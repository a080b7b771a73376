"""The public API as a type checker sees it: paths are ``str | os.PathLike`` everywhere,
``expect`` is a Literal (a typo is a type error), and the types in public signatures are
exported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import vhdkit

SNIPPET = '''
from pathlib import Path
import vhdkit

p = Path("disk.vhd")
vhdkit.inspect_path(p, parent=Path("parent.vhd"))
vhdkit.preflight_path(p, Path("parent.vhd"), "specialized")
vhdkit.detect_format(p)
vhdkit.check_path(p, parent=p)
vhdkit.convert_disk(p, Path("out.vhd"), parent=p)
vhdkit.convert_in_place(p)
with vhdkit.open_disk(p) as d:
    vhdkit.preflight_disk(d, "generalized")
def on(progress: vhdkit.Progress) -> None: ...
r: vhdkit.RetryPolicy = vhdkit.RetryPolicy()
v: vhdkit.VerifyResult | None = None
with vhdkit.PageBlob(vhdkit.Target(emulator="http://127.0.0.1:1/a", container="c", blob="b")) as b:
    b.close()
vhdkit.preflight_path(p, None, "generalised")  # the one error: a typo in expect
'''


def mypy(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "use_vhdkit.py"
    src.write_text(code)
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "mypy", "--strict",
                           # the cache `make test` leaves from its mypy run: seconds, not 20
                           "--cache-dir", str(root / ".mypy_cache"),
                           "--config-file", str(root / "pyproject.toml"), str(src)],
                          capture_output=True, text=True, timeout=300, check=False,
                          cwd=root, env={"MYPYPATH": str(root / "src"), "PATH": "/usr/bin"})


def test_public_signatures_take_paths_and_literals(tmp_path: Path) -> None:
    res = mypy(SNIPPET, tmp_path)
    errors = [line for line in res.stdout.splitlines() if ": error:" in line]
    last = len(SNIPPET.strip("\n").splitlines()) + 1  # the snippet starts with a blank line
    assert len(errors) == 1 and f"use_vhdkit.py:{last}:" in errors[0], res.stdout
    assert "Literal['generalized', 'specialized']" in errors[0]


def test_types_in_public_signatures_are_exported() -> None:
    for name in ("Progress", "RetryPolicy", "VerifyResult", "Expect", "NetworkError",
                 "AuthenticationError"):
        assert name in vhdkit.__all__
        getattr(vhdkit, name)
    assert hasattr(vhdkit.PageBlob, "__enter__") and hasattr(vhdkit.PageBlob, "__exit__")
