"""Pre-flight reads metadata only: bytes read and time of `vhdkit preflight` on mostly empty
2 GiB and 16 GiB images (Linux on LVM, raw and dynamic VHD; Windows NTFS, raw).

Two views of each image: in-process, a counting VirtualDisk wrapper reports the bytes and reads
that reach the disk; the whole CLI in a child process reports wall time and its ``rchar``
(/proc/self/io at exit: every byte it read, its own imports included; the `vhdkit --help` run
is shown beside it for that baseline).

    python -m benchmarks.bench_preflight [--runs N] [--workdir DIR] [--goals FILE]
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
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import MIB, Goal, median_time, save_goals
from fixtures import qemu
from fixtures.linux_disks import VARIANTS, CountingDisk, build_linux
from vhdkit.formats import open_disk
from vhdkit.preflight.engine import preflight_disk

READ_GOAL = 64 * MIB
TIME_GOAL = 1.0
# Runs the CLI in this interpreter and prints its rchar on the way out (atexit runs on sys.exit).
PROBE = ("import atexit, sys\n"
         "def _io():\n"
         "    with open('/proc/self/io') as fh:\n"
         "        sys.stderr.write('RCHAR ' + fh.readline().split()[1] + '\\n')\n"
         "atexit.register(_io)\n"
         "from vhdkit.cli import main\n"
         "sys.argv[0] = 'vhdkit'\n"
         "main()\n")


@dataclass
class Measured:
    image: str
    bytes_read: int
    reads: int
    lib_s: float
    cli_s: float
    cli_rchar: int
    exit_code: int
    verdict: str


def linux_images(work: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for mib in (2048, 16384):
        raw = build_linux(VARIANTS["generalized-lvm"], work, disk_mib=mib)
        out[f"Linux LVM, {mib // 1024} GiB raw"] = raw
    big = out["Linux LVM, 16 GiB raw"]
    out["Linux LVM, 16 GiB dynamic VHD"] = qemu.convert(big, "raw", work / "linux16.vhd", "vpc",
                                                        "subformat=dynamic", "force_size=on")
    return out


def windows_images(work: Path) -> dict[str, Path]:
    """The generalized Windows fixture (NTFS at 1 MiB), its disk grown to 2 and 16 GiB."""
    try:
        from fixtures.windows_disks import VARIANTS as WIN
        from fixtures.windows_disks import build_disk
        small = work / "win.raw"
        build_disk(WIN["generalized"], str(small), str(work))
    except (OSError, subprocess.CalledProcessError) as exc:  # mkntfs / libntfs-3g missing
        print(f"Windows image skipped: {exc}", file=sys.stderr)
        return {}
    out: dict[str, Path] = {}
    for gib in (2, 16):
        grown = work / f"win-{gib}g.raw"
        shutil.copyfile(small, grown)
        os.truncate(grown, gib << 30)  # unpartitioned space after the volume reads as zeros
        out[f"Windows NTFS, {gib} GiB raw"] = grown
    return out


def in_process(path: Path) -> tuple[int, int, str]:
    with open_disk(path) as base:
        disk = CountingDisk(base)
        report = preflight_disk(disk)
    return disk.bytes_read, disk.reads, "ready" if report.ready else "not ready"


def cli_run(args: list[str]) -> tuple[float, int, int]:
    """(wall seconds, rchar, exit code) of `vhdkit ARGS` in a child process."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t
    rchar = next((int(line.split()[1]) for line in proc.stderr.splitlines()
                  if line.startswith("RCHAR ")), -1)
    return wall, rchar, proc.returncode


def measure(name: str, path: Path, runs: int) -> Measured:
    n_bytes, reads, verdict = in_process(path)
    lib_s = median_time(lambda: in_process(path), runs)
    cli = [cli_run(["preflight", str(path), "--json"]) for _ in range(runs + 1)][1:]
    return Measured(name, n_bytes, reads, lib_s, statistics.median(c[0] for c in cli),
                    int(statistics.median(c[1] for c in cli)), cli[-1][2], verdict)


def render(rows: list[Measured], baseline: tuple[float, int], runs: int) -> list[str]:
    lines = [f"#### vhdkit preflight on mostly empty images (median of {runs} warm runs)\n",
             "| image | verdict (exit) | bytes read from the disk | reads | library time "
             "| CLI wall time | CLI rchar (all reads, imports too) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for m in rows:
        lines.append(f"| {m.image} | {m.verdict} ({m.exit_code}) | {m.bytes_read / MIB:.2f} MiB "
                     f"| {m.reads} | {m.lib_s * 1000:.0f} ms | {m.cli_s:.2f} s "
                     f"| {m.cli_rchar / MIB:.1f} MiB |")
    lines.append(f"| (`vhdkit --help`, for the baseline) | | | | | {baseline[0]:.2f} s "
                 f"| {baseline[1] / MIB:.1f} MiB |")
    lines.append("\nBytes read from the disk: a counting VirtualDisk wrapper around the opened "
                 "image (fixtures.linux_disks.CountingDisk), so image-format metadata reads "
                 "(VHD footer, BAT) are not in it; the CLI's rchar covers everything. The Windows "
                 "disks are the 18 MiB NTFS fixture with the disk grown (unpartitioned space).")
    return lines


def goals_of(rows: list[Measured], baseline: tuple[float, int]) -> list[Goal]:
    goals = []
    for m in rows:
        cli_extra = max(0, m.cli_rchar - baseline[1])
        worst = max(m.bytes_read, cli_extra)
        goals.append(Goal("Pre-flight", f"{m.image}: bytes read", "< 64 MiB",
                          f"{m.bytes_read / MIB:.2f} MiB via the disk; CLI {cli_extra / MIB:.1f} "
                          "MiB over `--help`", worst < READ_GOAL))
        goals.append(Goal("Pre-flight", f"{m.image}: time", "< 1 s",
                          f"CLI {m.cli_s:.2f} s (library {m.lib_s * 1000:.0f} ms)",
                          m.cli_s < TIME_GOAL))
    return goals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--goals")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vhdkit-bench-preflight-",
                                                 dir=os.environ.get("VHDKIT_BENCH_DIR")))
    work.mkdir(parents=True, exist_ok=True)
    try:
        images = {**linux_images(work), **windows_images(work)}
        rows = [measure(name, path, args.runs) for name, path in images.items()]
        help_runs = [cli_run(["--help"]) for _ in range(args.runs + 1)][1:]
        baseline = (statistics.median(h[0] for h in help_runs),
                    int(statistics.median(h[1] for h in help_runs)))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(render(rows, baseline, args.runs)))
    save_goals(args.goals, goals_of(rows, baseline))


if __name__ == "__main__":
    main()
