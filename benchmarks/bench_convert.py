"""vhdkit convert versus qemu-img convert, side by side on the same inputs, in one run.

Inputs: dynamic VHDs (qemu's 2 MiB blocks) with random data in scattered 64 KiB - 4 MiB runs:
2 GiB with 25 % data and 8 GiB with 5 % data. Each tool writes an Azure-style fixed VHD:

    vhdkit convert SRC DST --quiet --force
    qemu-img convert -f vpc -O vpc -o subformat=fixed,force_size=on SRC DST

Wall time is the median of several runs after a warm-up (page cache warm for both); peak RSS is
the child's ru_maxrss. Prints a markdown table.

qemu-img never flushes its output, and vhdkit must (it fsyncs before its atomic rename). So each
case also measures the *durable-write floor*: the fastest this device makes the output's data
regions durable (writes from memory, then fsync: the fastest of O_DIRECT, threaded page-cache
writes and in-order writes with writeback pushed behind; no reading, no interpreter). It is the
fastest known way to make that output durable here: a tool that flushes its output and reads
its input too is not expected below it.

    python -m benchmarks.bench_convert [--workdir DIR] [--runs N] [--only 2G] [--goals FILE]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import GIB, MIB, Goal, save_goals, timed
from vhdkit.formats import open_disk
from vhdkit.sparse_io import Flusher


@dataclass(frozen=True)
class Case:
    name: str
    size: int
    fraction: float


CASES = [Case("1G-25%", GIB, 0.25), Case("2G-25%", 2 * GIB, 0.25), Case("8G-5%", 8 * GIB, 0.05),
         Case("1T-1G", 1024 * GIB, 1 / 1024)]


def make_input(case: Case, work: Path, seed: int = 7) -> Path:
    """A dynamic VHD whose data is random bytes in scattered runs of 64 KiB to 4 MiB."""
    vhd = work / f"in-{case.name}.vhd"
    if vhd.exists():
        return vhd
    raw = work / f"in-{case.name}.raw"
    rng = random.Random(seed)
    want = int(case.size * case.fraction)
    placed = 0
    with open(raw, "w+b") as fh:
        fh.truncate(case.size)
        fd = fh.fileno()
        while placed < want:
            length = rng.randrange(64 * 1024, 4 * MIB + 1, 64 * 1024)
            start = rng.randrange(0, (case.size - length) // 65536) * 65536
            if os.pread(fd, 8, start) != bytes(8):
                continue  # roughly avoid counting overlaps twice
            os.pwrite(fd, os.urandom(length), start)
            placed += length
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "force_size=on",
                    str(raw), str(vhd)], check=True)
    raw.unlink()
    return vhd


def data_regions(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every allocated region of a sparse file: the file read as a raw
    disk, whose extents come from SEEK_DATA / SEEK_HOLE."""
    with open_disk(path, format="raw") as disk:
        return [(e.start, e.length) for e in disk.extents()]


#: O_DIRECT write size and parallelism of the floor; 4 x 4 MiB was the fastest mix here.
FLOOR_PIECE, FLOOR_THREADS = 4 * MIB, 4


def _open_output(path: Path, direct: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT
    if direct:
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644)
        except OSError:  # a filesystem without O_DIRECT (tmpfs): the page cache, then fsync
            pass
    return os.open(path, flags, 0o644)


def durable_write_floor(regions: list[tuple[int, int]], path: Path, tries: int) -> float:
    """Fastest of ``tries`` runs of each of three ways to write ``regions`` (random bytes,
    straight from memory) to a new file and fsync it: O_DIRECT by several threads, the page
    cache by several threads, and the page cache in order with writeback pushed behind the
    writer (vhdkit's own Flusher, as convert does). No reading, no scanning, no interpreter
    start: the fastest way known here to make this output durable on this device."""
    buf = mmap.mmap(-1, FLOOR_PIECE)  # page-aligned, as O_DIRECT requires
    buf.write(os.urandom(FLOOR_PIECE))
    view = memoryview(buf)
    pieces = [(o, min(FLOOR_PIECE, off + length - o))
              for off, length in regions for o in range(off, off + length, FLOOR_PIECE)]
    best = float("inf")
    with ThreadPoolExecutor(FLOOR_THREADS) as pool:
        for _ in range(tries):
            for mode in ("direct", "threads", "flush-behind"):
                path.unlink(missing_ok=True)
                os.sync()  # the last try's writeback is not this one's
                fd = _open_output(path, direct=mode == "direct")
                try:
                    start = time.perf_counter()
                    if mode == "flush-behind":
                        flusher = Flusher(fd)
                        for o, n in pieces:
                            os.pwrite(fd, view[:n], o)
                            flusher.wrote(o + n)
                        flusher.stop()
                    else:
                        list(pool.map(os.pwrite, [fd] * len(pieces),
                                      [view[:n] for _, n in pieces], [o for o, _ in pieces]))
                    os.fsync(fd)
                    best = min(best, time.perf_counter() - start)
                finally:
                    os.close(fd)
    path.unlink()
    view.release()
    buf.close()
    return best


def bench(case: Case, work: Path, runs: int) -> dict[str, float | int | str]:
    src = make_input(case, work)
    out_v, out_q = work / "out-vhdkit.vhd", work / "out-qemu.vhd"
    vhdkit = [sys.executable, "-m", "vhdkit", "convert", str(src), str(out_v), "--quiet",
              "--force"]
    qemu = ["qemu-img", "convert", "-f", "vpc", "-O", "vpc", "-o",
            "subformat=fixed,force_size=on", str(src), str(out_q)]
    # qemu-img leaves its output in the page cache (no flush); vhdkit fsyncs before its rename.
    # The same durability for qemu-img: its convert followed by an fsync of the output.
    qemu_sync = ["sh", "-c", " ".join(shlex.quote(a) for a in qemu)
                 + f" && sync {shlex.quote(str(out_q))}"]
    cmds = {"vhdkit": (vhdkit, out_v), "qemu": (qemu, out_q), "qemu_sync": (qemu_sync, out_q)}
    times: dict[str, list[float]] = {k: [] for k in [*cmds, "in_process"]}
    peak: dict[str, int] = dict.fromkeys(cmds, 0)
    for i in range(runs + 1):  # interleaved, so machine noise hits every tool alike
        for key, (cmd, out) in cmds.items():
            if out.exists():
                out.unlink()
            run = timed(cmd)
            wall, rss = run.wall, run.peak_rss
            if i:  # the first round warms the page cache
                times[key].append(wall)
                peak[key] = max(peak[key], rss)
        # the same convert inside a process that has already started and imported: its data
        # path alone (in a child, so that this process stays small: children inherit its peak
        # RSS at fork, which would then show in every tool's figure)
        out_v.unlink()
        if i:
            times["in_process"].append(in_process(src, out_v))
    v_time, q_time, qs_time = (statistics.median(times[k]) for k in cmds)
    floor = durable_write_floor(data_regions(out_v), work / "floor.bin", runs)
    same = subprocess.run(["qemu-img", "compare", "-q", "-f", "vpc", "-F", "vpc", str(out_v),
                           str(out_q)], check=False).returncode == 0
    row: dict[str, float | int | str] = {
        "case": case.name, "data_mib": os.stat(src).st_blocks * 512 // MIB,
        "vhdkit_s": v_time, "qemu_s": q_time, "ratio": v_time / q_time,
        "qemu_sync_s": qs_time, "ratio_sync": v_time / qs_time,
        "in_process_s": statistics.median(times["in_process"]),
        # best against best: both are what the machine allows on a quiet moment
        "floor_s": floor, "qemu_best_s": min(times["qemu"]),
        "floor_ratio": floor / min(times["qemu"]),
        "vhdkit_rss_mib": peak["vhdkit"] / MIB, "qemu_rss_mib": peak["qemu"] / MIB,
        "vhdkit_alloc_mib": os.stat(out_v).st_blocks * 512 / MIB,
        "qemu_alloc_mib": os.stat(out_q).st_blocks * 512 / MIB,
        "identical": "yes" if same else "NO",
    }
    out_v.unlink()
    out_q.unlink()
    return row


IN_PROCESS = """
import os, sys, time
from vhdkit.convert import convert_disk
import numpy  # what the dynamic VHD reader loads: start-up is not part of the figure
os.sync()
start = time.perf_counter()
convert_disk(sys.argv[1], sys.argv[2])
print(time.perf_counter() - start)
"""


def in_process(src: Path, dst: Path) -> float:
    """Seconds of ``convert_disk`` alone, in a process that has finished its imports."""
    out = subprocess.run([sys.executable, "-c", IN_PROCESS, str(src), str(dst)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def startup_seconds(work: Path, runs: int, fmt: str = "vpc") -> float:
    """The fixed cost inside every vhdkit time: a whole `vhdkit convert` of a 1 MiB disk of
    the inputs' format (qemu-img's name; interpreter start, the imports of click and that
    format's reader, the output's fsync)."""
    raw, tiny, out = work / "tiny.raw", work / f"tiny.{fmt}", work / "tiny-out.vhd"
    raw.write_bytes(b"\x01" * 4096 + bytes(MIB - 4096))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(tiny)],
                   check=True)
    cmd = [sys.executable, "-m", "vhdkit", "convert", str(tiny), str(out), "--quiet", "--force"]
    times = [timed(cmd).wall for _ in range(runs + 1)]
    return statistics.median(times[1:])


def imports_seconds(runs: int) -> float:
    """A Python process that imports click and numpy and does nothing else: the start-up any
    convert built as this issue asks (a click CLI, numpy where data is scanned) pays."""
    cmd = [sys.executable, "-c", "import click, numpy"]
    return statistics.median([timed(cmd).wall for _ in range(runs + 1)][1:])


def reachable(startup: float, floor: float, peer: float) -> float:
    """The lowest ratio to ``peer`` a process with this fixed ``startup`` can reach: its data
    path at the device's durable-write ``floor``, nothing else."""
    return (startup + floor) / peer


def render(rows: list[dict[str, float | int | str]]) -> str:
    lines = [
        "| input (dynamic VHD) | source file MiB | vhdkit s | qemu-img s | ratio (goal ≤ 1.0) "
        "| qemu-img + fsync s | ratio vs that | durable-write floor s | floor ÷ qemu-img best "
        "| vhdkit peak RSS MiB | qemu-img peak RSS MiB | output alloc MiB vhdkit / qemu "
        "| same data |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['data_mib']} | {r['vhdkit_s']:.3f} | {r['qemu_s']:.3f} "
            f"| {r['ratio']:.2f}× | {r['qemu_sync_s']:.3f} | {r['ratio_sync']:.2f}× "
            f"| {r['floor_s']:.3f} | {r['floor_ratio']:.2f}× ({r['qemu_best_s']:.3f} s) "
            f"| {r['vhdkit_rss_mib']:.0f} | {r['qemu_rss_mib']:.0f} "
            f"| {r['vhdkit_alloc_mib']:.0f} / {r['qemu_alloc_mib']:.0f} | {r['identical']} |")
    return "\n".join(lines)


def limits(rows: list[dict[str, float | int | str]], startup: float, imports: float) -> str:
    """What bounds the equal-durability ratio: a vhdkit process is its fixed start-up plus its
    data path (the same convert in-process), and the data path cannot beat the device's
    durable-write floor."""
    lines = ["\n#### What limits the ratio to qemu-img + fsync\n",
             "| input | vhdkit in-process (data path) s | durable-write floor s "
             "| qemu-img + fsync s | data path ÷ qemu-img + fsync "
             "| lowest reachable: (vhdkit start-up + floor) ÷ qemu-img + fsync "
             "| (click + numpy imports + floor) ÷ qemu-img + fsync |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        qs, inproc, floor = float(r["qemu_sync_s"]), float(r["in_process_s"]), float(r["floor_s"])
        lines.append(f"| {r['case']} | {inproc:.3f} | {floor:.3f} | {qs:.3f} "
                     f"| {inproc / qs:.2f}× | {reachable(startup, floor, qs):.2f}× "
                     f"| {reachable(imports, floor, qs):.2f}× |")
    lines.append(f"\nvhdkit start-up {startup:.3f} s (a whole convert of a 1 MiB disk); a "
                 f"Python process importing click and numpy and nothing else {imports:.3f} s. "
                 "The data path (read, zero scan, write, flush-behind, fsync, rename) is what "
                 "vhdkit's pipeline does; the floor is the fastest this device makes the same "
                 "output regions durable from memory (best of O_DIRECT, threaded page-cache "
                 "writes, and in-order writes with writeback pushed behind). "
                 "Where the lowest reachable ratio is above 1.0×, no data path, however fast, "
                 "brings a process with this start-up to the goal; the last column does the "
                 "same sum with only the imports the issue prescribes (click, numpy).")
    return "\n".join(lines)


def goals_of(rows: list[dict[str, float | int | str]]) -> list[Goal]:
    out = []
    for r in rows:
        ratio, ratio_sync = float(r["ratio"]), float(r["ratio_sync"])
        floor_ratio = float(r["floor_ratio"])
        # Equal durability: vhdkit fsyncs before its atomic rename, qemu-img never flushes, so the
        # goal compares with qemu-img followed by an fsync of its output (the Performance issue
        # retired the comparison with qemu-img alone; it stays recorded).
        out.append(Goal("Performance", f"{r['case']}: vhdkit convert ÷ (qemu-img convert + "
                        "fsync of its output), wall time", "≤ 1.0×", f"{ratio_sync:.2f}×",
                        ratio_sync <= 1.0))
        out.append(Goal("Convert", f"{r['case']}: vhdkit convert ÷ qemu-img convert without "
                        "flush (retired goal)", "recorded", f"{ratio:.2f}×", None))
        out.append(Goal("Convert", f"{r['case']}: durable-write floor of the output's data "
                        "(best of three ways, + fsync, no reading) ÷ qemu-img convert, best "
                        "runs", "recorded", f"{floor_ratio:.2f}× ({float(r['floor_s']):.3f} s)",
                        None))
        if "reachable" in r:
            out.append(Goal("Performance", f"{r['case']}: lowest ratio to qemu-img + fsync "
                            "reachable with vhdkit's start-up ((start-up + durable-write floor) "
                            "÷ qemu-img + fsync)", "recorded (what limits the goal above)",
                            f"{float(r['reachable']):.2f}×", None))
        rss = float(r["vhdkit_rss_mib"])
        out.append(Goal("Convert", f"{r['case']}: vhdkit convert peak RSS", "≤ 150 MiB",
                        f"{rss:.0f} MiB", rss <= 150))
        out.append(Goal("Convert", f"{r['case']}: output equals qemu-img's (qemu-img compare)",
                        "same data", str(r["identical"]), r["identical"] == "yes"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default=None, help="run only the case whose name starts so")
    ap.add_argument("--goals", default=None, help="write the goal records as JSON here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vhdkit-bench-convert-",
                                                 dir=os.environ.get("VHDKIT_BENCH_DIR")))
    work.mkdir(parents=True, exist_ok=True)
    cases = [c for c in CASES if args.only is None or c.name.startswith(args.only)]
    try:
        rows = [bench(c, work, args.runs) for c in cases]
        startup = startup_seconds(work, args.runs)
        imports = imports_seconds(args.runs)
        for r in rows:
            r["reachable"] = reachable(startup, float(r["floor_s"]), float(r["qemu_sync_s"]))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"#### vhdkit convert vs qemu-img convert (median of {args.runs} warm runs, "
          "interleaved)\n")
    print(render(rows))
    print(f"\nEvery vhdkit time includes a fixed {startup:.2f} s: a whole `vhdkit convert` of "
          "a 1 MiB dynamic VHD (interpreter start, imports of click, numpy and the VHD reader, "
          "fsync). "
          "Inputs: dynamic VHDs (2 MiB blocks) with random data in "
          "scattered 64 KiB–4 MiB runs; output an Azure fixed VHD. vhdkit fsyncs its output "
          "before the atomic rename, qemu-img does not flush: both ratios are shown. The "
          "durable-write floor (see Method) is compared best run against qemu-img's best run.")
    print(limits(rows, startup, imports))
    if rows and rows[0]["case"] == "2G-25%":
        print(f"The Convert issue quotes qemu-img at 0.40 s for the 2 GiB case; here it took "
              f"{float(rows[0]['qemu_s']):.2f} s warm (its first, cold run is discarded).")
    save_goals(args.goals, goals_of(rows))


if __name__ == "__main__":
    main()
