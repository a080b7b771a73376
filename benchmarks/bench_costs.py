"""Fixed costs: whole-process start-up of vhdkit commands CI runs on every artifact.

Interleaved runs, medians: `python -c pass` in the same venv (the floor any Python tool pays),
`vhdkit --version`, `vhdkit check` of a fixed VHD, and `qemu-img info` of the same file as the
peer users know. Goals are ratios to `python -c pass` (machines differ; ratios travel).

    python -m benchmarks.bench_costs [--runs N] [--workdir DIR] [--goals FILE] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import MIB, Goal, save_goals

VHDKIT = [sys.executable, "-m", "vhdkit"]


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def fixed_vhd(work: Path) -> Path:
    raw = work / "small.raw"
    with open(raw, "wb") as fh:
        fh.truncate(64 * MIB)
        fh.write(b"\x55" * 4096)
    out = work / "fixed.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
                    "subformat=fixed,force_size=on", str(raw), str(out)], check=True)
    raw.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--goals", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vhdkit-bench-costs-",
                                                 dir=os.environ.get("VHDKIT_BENCH_DIR")))
    work.mkdir(parents=True, exist_ok=True)
    try:
        vhd = fixed_vhd(work)
        # What an installed vhdkit runs: pip compiles every module to bytecode at install time.
        # A checkout run with PYTHONDONTWRITEBYTECODE (set on some CI machines) would otherwise
        # compile vhdkit's sources on every start (about 20 ms for `check`).
        import vhdkit

        subprocess.run([sys.executable, "-m", "compileall", "-q", *vhdkit.__path__], check=True,
                       env={k: v for k, v in os.environ.items()
                            if k != "PYTHONDONTWRITEBYTECODE"})
        cmds = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import click'": [sys.executable, "-c", "import click"],
            "vhdkit --version": [*VHDKIT, "--version"],
            "vhdkit check fixed.vhd": [*VHDKIT, "check", str(vhd)],
            "qemu-img info fixed.vhd": ["qemu-img", "info", str(vhd)],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for i in range(args.runs + 1):  # interleaved; the first round warms caches
            for name, cmd in cmds.items():
                t = wall(cmd)
                if i:
                    times[name].append(t)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["python -c pass"]
    print(f"#### Start-up, whole process (median of {args.runs} interleaved runs)\n")
    print("| command | median s | ÷ python -c pass |\n|---|---:|---:|")
    for name, t in med.items():
        print(f"| `{name}` | {t:.4f} | {t / base:.1f}× |")
    print("\n`python -m vhdkit` is used for vhdkit (the console script adds the same interpreter "
          "start), with its modules compiled to bytecode first as `pip install` does. The fixed "
          "VHD is 64 MiB; `check` reads its footer and the first sector.")
    ver, chk = med["vhdkit --version"] / base, med["vhdkit check fixed.vhd"] / base
    save_goals(args.goals, [
        Goal("Performance", "`vhdkit --version` whole process ÷ `python -c pass`", "≤ 6×",
             f"{ver:.1f}× ({med['vhdkit --version']:.3f} s vs {base:.3f} s)", ver <= 6),
        Goal("Performance", "`vhdkit check fixed.vhd` whole process ÷ `python -c pass`", "≤ 8×",
             f"{chk:.1f}× ({med['vhdkit check fixed.vhd']:.3f} s; qemu-img info "
             f"{med['qemu-img info fixed.vhd']:.3f} s)", chk <= 8),
    ])


if __name__ == "__main__":
    main()
