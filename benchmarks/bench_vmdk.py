"""vhdkit convert of a streamOptimized VMDK versus qemu-img convert, side by side in one run.

Input: a 2 GiB streamOptimized VMDK (what OVA exports hold) with 25 % data in scattered 64 KiB -
4 MiB runs, half of them random bytes (incompressible: deflate stores them) and half
low-entropy bytes (compressible about 2:1, so inflate does real work). Each tool writes an Azure
fixed VHD, at equal durability:

    vhdkit convert SRC DST --quiet --force                     (fsyncs before its rename)
    qemu-img convert -f vmdk -O vpc -o subformat=fixed,force_size=on SRC DST && sync DST

Wall times are medians of N warm runs, interleaved. A last line reads the disk's extents
in-process with grains inflated serially and by a thread pool, to show what the pool buys.

    python -m benchmarks.bench_vmdk [--workdir DIR] [--runs N] [--goals FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import GIB, MIB, Goal, save_goals, timed
from vhdkit.extents import split, total
from vhdkit.formats import open_disk, vmdk_sparse

SIZE = 2 * GIB
#: workers of the pool compared with serial inflating
POOL = 2
FRACTION = 0.25


def make_input(work: Path, seed: int = 11) -> Path:
    vmdk = work / "in-stream.vmdk"
    if vmdk.exists():
        return vmdk
    raw = work / "in.raw"
    rng = random.Random(seed)
    gen = np.random.default_rng(seed)
    want, placed = int(SIZE * FRACTION), 0
    with open(raw, "w+b") as fh:
        fh.truncate(SIZE)
        fd = fh.fileno()
        while placed < want:
            length = rng.randrange(64 * 1024, 4 * MIB + 1, 64 * 1024)
            start = rng.randrange(0, (SIZE - length) // 65536) * 65536
            if os.pread(fd, 8, start) != bytes(8):
                continue
            if rng.random() < 0.5:
                data = os.urandom(length)
            else:  # 16 symbols: about 4 bits of entropy per byte
                data = (gen.integers(0, 16, length, dtype=np.uint8) + 0x41).tobytes()
            os.pwrite(fd, data, start)
            placed += length
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", str(raw), str(vmdk)], check=True)
    raw.unlink()
    return vmdk


def read_all(src: Path, workers: int) -> float:
    """Seconds to read every extent of ``src`` in 8 MiB requests (convert's chunk)."""
    saved = vmdk_sparse.POOL_WORKERS
    vmdk_sparse.POOL_WORKERS = workers
    try:
        buf = memoryview(bytearray(8 * MIB))
        with open_disk(src) as disk:
            start = time.perf_counter()
            for piece in split(disk.extents(), len(buf)):
                disk.read_into(piece.start, buf[: piece.length])
            return time.perf_counter() - start
    finally:
        vmdk_sparse.POOL_WORKERS = saved


def bench(work: Path, runs: int) -> dict[str, float | str]:
    src = make_input(work)
    out_v, out_q = work / "out-vhdkit.vhd", work / "out-qemu.vhd"
    vhdkit = [sys.executable, "-m", "vhdkit", "convert", str(src), str(out_v), "--quiet",
              "--force"]
    qemu = ["qemu-img", "convert", "-f", "vmdk", "-O", "vpc", "-o",
            "subformat=fixed,force_size=on", str(src), str(out_q)]
    qemu_sync = ["sh", "-c", " ".join(shlex.quote(a) for a in qemu)
                 + f" && sync {shlex.quote(str(out_q))}"]
    cmds = {"vhdkit": (vhdkit, out_v), "qemu": (qemu, out_q), "qemu_sync": (qemu_sync, out_q)}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    rss: dict[str, int] = dict.fromkeys(cmds, 0)
    for i in range(runs + 1):  # interleaved; the first round only warms the page cache
        for key, (cmd, out) in cmds.items():
            out.unlink(missing_ok=True)
            run = timed(cmd)
            wall, peak = run.wall, run.peak_rss
            if i:
                times[key].append(wall)
                rss[key] = max(rss[key], peak)
    same = subprocess.run(["qemu-img", "compare", "-q", "-f", "vmdk", "-F", "vpc", str(src),
                           str(out_v)], check=False).returncode == 0
    serial = statistics.median(read_all(src, 1) for _ in range(runs))
    pooled = statistics.median(read_all(src, POOL) for _ in range(runs))
    with open_disk(src) as disk:
        data = total(disk.extents())
    out_v.unlink(missing_ok=True)
    out_q.unlink(missing_ok=True)
    v, q, qs = (statistics.median(times[k]) for k in cmds)
    return {"file_mib": src.stat().st_size / MIB, "data_mib": data / MIB, "vhdkit_s": v,
            "qemu_s": q, "qemu_sync_s": qs, "ratio": v / qs, "ratio_nosync": v / q,
            "vhdkit_rss": rss["vhdkit"] / MIB, "qemu_rss": rss["qemu"] / MIB,
            "serial_s": serial, "pooled_s": pooled, "same": "yes" if same else "NO"}


def render(r: dict[str, float | str], runs: int) -> str:
    f = {k: v for k, v in r.items() if isinstance(v, float)}
    return "\n".join([
        f"#### streamOptimized VMDK to a fixed VHD (median of {runs} warm runs, interleaved)\n",
        "| input | vhdkit convert s | qemu-img convert + fsync s | ratio (goal ≤ 1.0) "
        "| qemu-img alone s | ratio vs that | vhdkit / qemu-img peak RSS MiB | same data |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        f"| 2 GiB streamOptimized, {f['data_mib']:.0f} MiB data, {f['file_mib']:.0f} MiB file "
        f"| {f['vhdkit_s']:.2f} | {f['qemu_sync_s']:.2f} | {f['ratio']:.2f}× "
        f"| {f['qemu_s']:.2f} | {f['ratio_nosync']:.2f}× "
        f"| {f['vhdkit_rss']:.0f} / {f['qemu_rss']:.0f} | {r['same']} |",
        "",
        f"Reading every extent in-process (8 MiB requests, as convert does): grains inflated "
        f"serially {f['serial_s']:.2f} s, by a thread pool of {POOL} workers "
        f"{f['pooled_s']:.2f} s (serial ÷ pool = {f['serial_s'] / f['pooled_s']:.2f}×). vhdkit "
        f"inflates on min(4, cores − 1) threads (here {vmdk_sparse.POOL_WORKERS}).",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--goals", default=None, help="write the goal records as JSON here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vhdkit-bench-vmdk-",
                                                 dir=os.environ.get("VHDKIT_BENCH_DIR")))
    work.mkdir(parents=True, exist_ok=True)
    try:
        row = bench(work, args.runs)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(render(row, args.runs))
    ratio = float(row["ratio"])
    save_goals(args.goals, [
        Goal("VMDK", "2 GiB streamOptimized VMDK: vhdkit convert ÷ (qemu-img convert + fsync)",
             "≤ 1.0×", f"{ratio:.2f}×", ratio <= 1.0),
        Goal("VMDK", "2 GiB streamOptimized VMDK: output equals the source (qemu-img "
             "compare)", "same data", str(row["same"]), row["same"] == "yes")])


if __name__ == "__main__":
    main()
