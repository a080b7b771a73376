"""pytest-benchmark suite for the hot paths: zero scan, extents, metadata parsing.

Run: .venv/bin/pytest benchmarks/test_hotpaths.py --benchmark-only (part of `make bench`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks.common import GIB, MIB
from benchmarks.foundation import sparse_dynamic
from vhdkit.extents import nonzero_runs
from vhdkit.formats import open_disk
from vhdkit.formats.vhd_structs import FOOTER_SIZE, Footer


@pytest.fixture(scope="module")
def dyn64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sparse_dynamic(tmp_path_factory.mktemp("bench") / "d64.vhd", 64 * GIB, 0.01)


@pytest.mark.parametrize("shape", ["zero", "dense", "sparse"])
def test_zero_scan_64mib(benchmark: BenchmarkFixture, shape: str) -> None:
    rng = np.random.default_rng(0)
    arr = np.zeros(64 * MIB, np.uint8)
    if shape == "dense":
        arr = rng.integers(0, 256, arr.size, dtype=np.uint8)
    elif shape == "sparse":
        arr[rng.integers(0, arr.size // 512, 2000) * 512] = 1
    buf = arr.tobytes()
    benchmark(nonzero_runs, buf)


def test_extents_64gib_dynamic(benchmark: BenchmarkFixture, dyn64: Path) -> None:
    disk = open_disk(dyn64)
    result = benchmark(disk.extents)
    assert result
    disk.close()


def test_open_64gib_dynamic(benchmark: BenchmarkFixture, dyn64: Path) -> None:
    benchmark(lambda: open_disk(dyn64).close())


def test_parse_footer(benchmark: BenchmarkFixture, dyn64: Path) -> None:
    with dyn64.open("rb") as fh:
        fh.seek(-FOOTER_SIZE, 2)
        raw = fh.read()
    benchmark(Footer.parse, raw)
