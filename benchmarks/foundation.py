"""Foundation measurements, printed as markdown: the zero scan against the Azure SDK's whole-chunk
check and a memory copy; bytes read by inspect/check for 1 GiB and 64 GiB images; extents() time
on a 64 GiB dynamic disk with 1 % allocated.

Run: .venv/bin/python -m benchmarks.foundation
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fixtures.vhdbuild import MIB, build_dynamic, build_fixed
from vhdkit.check import check_path
from vhdkit.disk import open_disk
from vhdkit.extents import nonzero_runs
from vhdkit.facts import inspect_path

GIB = 1024 * MIB


def rchar() -> int:
    """Bytes this process has read through read-like syscalls (/proc/self/io)."""
    with open("/proc/self/io") as fh:
        for line in fh:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def bytes_read(fn: Callable[[], object]) -> int:
    before = rchar()
    fn()
    return rchar() - before


def best_time(fn: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def scan_rows() -> list[str]:
    rng = np.random.default_rng(7)
    size = 256 * MIB
    shapes = {
        "all zero": np.zeros(size, np.uint8),
        "dense random": rng.integers(0, 256, size, dtype=np.uint8),
    }
    sparse = np.zeros(size, np.uint8)
    runs = rng.integers(0, size // (64 * 1024), 400)
    for r in runs:  # ~10 % data in 64 KiB runs
        sparse[r * 65536: r * 65536 + 65536] = 1
    shapes["10 % data, 64 KiB runs"] = sparse
    rows = ["| buffer (256 MiB) | vhdkit nonzero_runs | SDK `not any(bytearray(chunk))` "
            "| memory copy | vhdkit / SDK | vhdkit / copy |", "|---|---|---|---|---|---|"]
    for name, arr in shapes.items():
        buf = arr.tobytes()
        t_scan = best_time(lambda b=buf: nonzero_runs(b))
        chunk = buf[: 4 * MIB]  # the SDK's check is per 4 MiB chunk; time one, scale up
        t_sdk = best_time(lambda c=chunk: not any(bytearray(c)), 2) * (size / len(chunk))
        t_copy = best_time(lambda b=buf: bytearray(b))
        rows.append(f"| {name} | {size / t_scan / 1e9:.1f} GB/s | {size / t_sdk / 1e9:.2f} GB/s "
                    f"| {size / t_copy / 1e9:.1f} GB/s | {t_sdk / t_scan:.0f}x "
                    f"| {t_copy / t_scan:.1f}x |")
    return rows


def sparse_dynamic(path: Path, size: int, fraction: float) -> Path:
    bs = 2 * MIB
    nblocks = size // bs
    rng = np.random.default_rng(3)
    chosen = sorted(rng.choice(nblocks, max(1, int(nblocks * fraction)), replace=False).tolist())
    return build_dynamic(path, size, bs, {i: (None, b"\x01" * 512) for i in chosen})


def io_rows(work: Path) -> list[str]:
    rows = ["| image | inspect bytes read | check bytes read | extents() time |",
            "|---|---|---|---|"]
    for label, size in (("1 GiB", GIB), ("64 GiB", 64 * GIB)):
        dyn = sparse_dynamic(work / f"dyn-{label}.vhd", size, 0.01)
        fixed = build_fixed(work / f"fixed-{label}.vhd", size)
        for kind, p in (("dynamic, 1 % allocated", dyn), ("fixed, sparse", fixed)):
            b_inspect = bytes_read(lambda p=p: inspect_path(str(p)))
            b_check = bytes_read(lambda p=p: check_path(str(p)))
            with open_disk(p) as disk:
                t_ext = best_time(disk.extents, 3)
            rows.append(f"| {label} {kind} | {b_inspect:,} | {b_check:,} | "
                        f"{t_ext * 1000:.1f} ms |")
    return rows


def main() -> None:
    print("### Zero scan (in memory)\n")
    print("\n".join(scan_rows()))
    print("\n### Metadata reads and extents()\n")
    with tempfile.TemporaryDirectory(dir=os.environ.get("VHDKIT_BENCH_DIR")) as d:
        print("\n".join(io_rows(Path(d))))


if __name__ == "__main__":
    main()
