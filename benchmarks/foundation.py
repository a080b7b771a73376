"""Foundation measurements, printed as markdown: the zero scan against the Azure SDK's whole-chunk
check and a memory copy; bytes read by inspect/check for 1 GiB and 64 GiB images; extents() time
on a 64 GiB dynamic disk with 1 % allocated.

Run: .venv/bin/python -m benchmarks.foundation [--runs N] [--goals FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.common import GIB, MIB, Goal, bytes_read, median_time, ratio, save_goals
from fixtures.vhdbuild import build_dynamic, build_fixed
from vhdkit.check import check_path
from vhdkit.extents import nonzero_runs
from vhdkit.facts import inspect_path
from vhdkit.formats import open_disk

SDK_CHUNK = 4 * MIB  # the SDK's page-blob chunk (max_page_size)
SCAN_GOAL = 10e9
ISSUE = "Foundation"


def sdk_check(buf: bytes) -> list[bool]:
    """The Azure SDK's emptiness test, as PageBlobChunkUploader applies it to every chunk."""
    mv = memoryview(buf)
    return [not any(bytearray(mv[i:i + SDK_CHUNK])) for i in range(0, len(buf), SDK_CHUNK)]


def buffers(size: int) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    sparse = np.zeros(size, np.uint8)
    for r in rng.integers(0, size // 65536, size // 65536 // 10):  # ~10 % in 64 KiB runs
        sparse[r * 65536: r * 65536 + 65536] = 1
    return {
        "all zero": np.zeros(size, np.uint8).tobytes(),
        "dense random": rng.integers(0, 256, size, dtype=np.uint8).tobytes(),
        "≈10 % data, 64 KiB runs": sparse.tobytes(),
    }


def scan_section(runs: int, goals: list[Goal]) -> list[str]:
    size = 256 * MIB
    dst = memoryview(bytearray(size))  # allocated once; memoryview assignment is a memcpy
    rows = ["| buffer (256 MiB, in memory) | vhdkit `nonzero_runs` "
            "| SDK `not any(bytearray(chunk))` per 4 MiB | memory copy "
            "| vhdkit ÷ SDK speed | vhdkit ÷ copy speed |",
            "|---|---:|---:|---:|---:|---:|"]
    slowest = float("inf")
    worst_vs_copy = float("inf")
    for name, buf in buffers(size).items():
        t_scan = median_time(partial(nonzero_runs, buf), runs)
        t_sdk = median_time(partial(sdk_check, buf), max(1, runs // 2))
        t_copy = median_time(partial(dst.__setitem__, slice(None), buf), runs)
        slowest = min(slowest, size / t_scan)
        worst_vs_copy = min(worst_vs_copy, t_copy / t_scan)
        rows.append(f"| {name} | {size / t_scan / 1e9:.1f} GB/s | {size / t_sdk / 1e9:.2f} GB/s "
                    f"| {size / t_copy / 1e9:.1f} GB/s | {ratio(t_sdk / t_scan)} "
                    f"| {ratio(t_copy / t_scan)} |")
    goals.append(Goal(ISSUE, "non-zero 512-byte scan, in memory (slowest buffer shape)",
                      "≥ 10 GB/s", f"{slowest / 1e9:.1f} GB/s", slowest >= SCAN_GOAL))
    # Machines differ in memory speed: the lasting goal is a ratio to a copy of the same buffer.
    goals.append(Goal("Performance", "zero scan ÷ memory copy speed, same buffer (worst shape)",
                      "≥ 1.0×", f"{worst_vs_copy:.2f}×", worst_vs_copy >= 1.0))
    rows.append("\nThe SDK's check stops at the first non-zero byte, so it is fast on dense data; "
                "it answers one bit per 4 MiB chunk while the scan finds every non-zero sector. "
                "Memory copy: `memoryview(dst)[:] = buf` into a preallocated buffer "
                "(a memcpy; `bytearray` slice assignment is ~10× slower here, not used).")
    return rows


def sparse_dynamic(path: Path, size: int, fraction: float) -> Path:
    """A dynamic VHD (2 MiB blocks) with ``fraction`` of its blocks allocated."""
    bs = 2 * MIB
    nblocks = size // bs
    rng = np.random.default_rng(3)
    chosen = sorted(rng.choice(nblocks, max(1, int(nblocks * fraction)), replace=False).tolist())
    return build_dynamic(path, size, bs, {i: (None, b"\x01" * 512) for i in chosen})


def metadata_bytes(size: int, allocated: int) -> int:
    """BAT (sector-rounded) plus one 512-byte sector bitmap per allocated 2 MiB block."""
    bat = -(-(size // (2 * MIB)) * 4 // 512) * 512
    return bat + allocated * 512


def io_section(work: Path, runs: int, goals: list[Goal]) -> list[str]:
    rows = ["| image | inspect bytes read | check bytes read | BAT + bitmaps | "
            "extents() (fresh open) | extents found |", "|---|---:|---:|---:|---:|---:|"]
    read: dict[tuple[str, str], tuple[int, int]] = {}
    ext_64 = 0.0
    for label, size in (("1 GiB", GIB), ("64 GiB", 64 * GIB)):
        dyn = sparse_dynamic(work / f"dyn-{label}.vhd", size, 0.01)
        fixed = build_fixed(work / f"fixed-{label}.vhd", size)
        for kind, p in (("dynamic, 1 % allocated", dyn), ("fixed, sparse", fixed)):
            inspect_path(str(p))  # warm: lazy imports must not count as reads
            check_path(str(p))
            b_inspect = bytes_read(partial(inspect_path, str(p)))
            b_check = bytes_read(partial(check_path, str(p)))
            read[label, kind] = (b_inspect, b_check)

            def fresh_extents(p: Path = p) -> int:
                with open_disk(p) as disk:  # a fresh open: no cached block bitmaps
                    return len(disk.extents())

            t_ext = median_time(fresh_extents, runs)
            meta = "–"
            if kind.startswith("dynamic"):
                with open_disk(dyn) as disk:
                    alloc = disk.allocated_blocks()  # type: ignore[attr-defined]
                meta_b = metadata_bytes(size, alloc)
                meta = f"{meta_b:,}"
                goals.append(Goal(ISSUE, f"inspect/check bytes read, {label} dynamic (O(BAT))",
                                  "≤ BAT + bitmaps + 64 KiB",
                                  f"{b_inspect:,} / {b_check:,} B (BAT + bitmaps {meta_b:,})",
                                  max(b_inspect, b_check) <= meta_b + 64 * 1024))
                if label == "64 GiB":
                    ext_64 = t_ext
            rows.append(f"| {label} {kind} | {b_inspect:,} | {b_check:,} | {meta} "
                        f"| {t_ext * 1000:.1f} ms | {fresh_extents()} |")
    small, big = read["1 GiB", "fixed, sparse"], read["64 GiB", "fixed, sparse"]
    same = max(big) <= 2 * max(small)
    goals.append(Goal(ISSUE, "inspect/check bytes read, fixed VHD 1 GiB vs 64 GiB (O(1))",
                      "same order", f"{max(small):,} vs {max(big):,} B", same))
    goals.append(Goal(ISSUE, "extents(), 64 GiB dynamic with 1 % allocated",
                      "well under 1 s (< 0.1 s)",
                      f"{ext_64 * 1000:.1f} ms", ext_64 < 0.1))
    rows.append("\nBytes read: the process's `rchar` (/proc/self/io) around one warm call, so "
                "every read the command makes counts, metadata and data alike.")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--goals")
    args = ap.parse_args()
    goals: list[Goal] = []
    print(f"#### Zero scan (median of {args.runs} warm runs)\n")
    print("\n".join(scan_section(args.runs, goals)))
    print(f"\n#### Metadata reads and extents() (median of {args.runs} runs)\n")
    with tempfile.TemporaryDirectory(dir=os.environ.get("VHDKIT_BENCH_DIR")) as d:
        print("\n".join(io_section(Path(d), args.runs, goals)))
    save_goals(args.goals, goals)


if __name__ == "__main__":
    main()
