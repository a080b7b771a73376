"""Extent algebra and the non-zero sector scan, against naive references."""

from __future__ import annotations

import itertools
import mmap
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vhdkit.extents as extents_mod
from vhdkit.extents import Extent, intersect, merge, nonzero_runs, split, subtract, total


def cover(extents: list[Extent]) -> set[int]:
    return {b for e in extents for b in range(e.start, e.end)}


ranges = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=20).map(
    lambda xs: [Extent(s, n) for s, n in xs])


@given(ranges, st.integers(0, 10))
def test_merge_covers_the_same_bytes_and_is_disjoint(xs: list[Extent], gap: int) -> None:
    m = merge(xs, gap)
    assert cover(xs) <= cover(m)
    if gap == 0:
        assert cover(m) == cover(xs)
    for a, b in itertools.pairwise(m):
        assert a.end + gap < b.start


@given(ranges, ranges)
def test_subtract(xs: list[Extent], ys: list[Extent]) -> None:
    assert cover(subtract(xs, ys)) == cover(xs) - cover(ys)


@given(ranges, st.integers(0, 300), st.integers(0, 100))
def test_intersect(xs: list[Extent], s: int, n: int) -> None:
    assert cover(intersect(merge(xs), Extent(s, n))) == cover(xs) & set(range(s, s + n))


@given(ranges, st.integers(1, 17))
def test_split(xs: list[Extent], n: int) -> None:
    parts = list(split(merge(xs), n))
    assert all(0 < p.length <= n for p in parts)
    assert cover(parts) == cover(xs)
    assert total(parts) == total(merge(xs))


def naive_runs(buf: bytes, base: int) -> list[Extent]:
    out: list[Extent] = []
    for i in range(0, len(buf), 512):
        if any(buf[i: i + 512]):
            if out and out[-1].end == base + i:
                out[-1] = Extent(out[-1].start, out[-1].length + 512)
            else:
                out.append(Extent(base + i, 512))
    return out


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 511), st.integers(1, 255)),
                max_size=12), st.integers(0, 1 << 40))
def test_nonzero_runs_matches_naive_scan(pokes: list[tuple[int, int, int]], base: int) -> None:
    buf = bytearray(64 * 512)
    for sector, byte, value in pokes:
        buf[sector * 512 + byte] = value
    base -= base % 512
    assert nonzero_runs(bytes(buf), base) == naive_runs(bytes(buf), base)


def test_nonzero_runs_edges() -> None:
    assert nonzero_runs(b"") == []
    assert nonzero_runs(bytes(4096)) == []
    full = np.full(4096, 7, dtype=np.uint8).tobytes()
    assert nonzero_runs(full, 512) == [Extent(512, 4096)]
    last_byte = bytearray(1024)
    last_byte[-1] = 1
    assert nonzero_runs(bytes(last_byte)) == [Extent(512, 512)]


def _reference_runs(buf: bytes, base: int = 0) -> list[Extent]:
    out: list[Extent] = []
    for off in range(0, len(buf), 512):
        if any(buf[off : off + 512]):
            if out and out[-1].end == base + off:
                out[-1] = Extent(out[-1].start, out[-1].length + 512)
            else:
                out.append(Extent(base + off, 512))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_nonzero_runs_matches_a_byte_by_byte_reference(seed: int) -> None:
    """Every path of the scan: zero blocks, dense sectors, sectors whose first 8 bytes are zero
    but not the rest, a last block shorter than the others, single bytes at sector edges."""
    rng = random.Random(seed)
    n = rng.choice([1, 7, 1024, 1025, 2048 + 3]) * 512
    buf = bytearray(n)
    for _ in range(rng.randrange(0, 40)):
        sector = rng.randrange(0, n // 512)
        kind = rng.randrange(4)
        at = sector * 512
        if kind == 0:
            buf[at] = 1  # first byte
        elif kind == 1:
            buf[at + 511] = 0xFF  # last byte: the first word is zero
        elif kind == 2:
            buf[at + 8 : at + 16] = b"\x01" * 8  # second word only
        else:
            length = rng.randrange(1, 64) * 512
            buf[at : at + length] = bytes(rng.randrange(1, 256) for _ in range(16)) * (
                length // 16)
            del buf[n:]
    base = rng.randrange(0, 1 << 30) // 512 * 512
    for shape in (bytes(buf), buf, memoryview(buf)):
        assert nonzero_runs(shape, base) == _reference_runs(bytes(buf), base)


# -- the two ways of the scan ---------------------------------------------------------------

def _zero_run_shapes(seed: int) -> tuple[bytearray, int]:
    """Data with zero runs of every kind the search meets: whole sectors and blocks, runs longer
    than the widest span it compares at once, and zeros that fill no aligned sector (64 to 500
    bytes: what the search finds, then rejects at the sector edge; 1000 from mid-sector)."""
    rng = random.Random(seed)
    n = rng.choice([3 * 1024 * 1024 + 7 * 512, 2 * 1024 * 1024, 64 * 512])
    buf = bytearray(rng.randbytes(n))
    pos = 0
    while pos < n:
        pos += rng.choice([1, 300, 4096, 20000, 1 << 20])
        length = rng.choice([64, 100, 500, 1000, 512, 4096, 3 * 512, 8192 + 512, 1_500_000])
        buf[pos: pos + length] = bytes(len(buf[pos: pos + length]))
        pos += length
    base = rng.choice([0, 512, 4096 * 3 + 1024, 1 << 40])
    return buf, base


@pytest.mark.parametrize("seed", range(10))
def test_both_scans_match_the_reference(seed: int) -> None:
    buf, base = _zero_run_shapes(seed)
    want = _reference_runs(bytes(buf), base)
    assert extents_mod._scan(bytes(buf), len(buf), base, 1 << 30) == want
    assert extents_mod._scan_numpy(bytes(buf), len(buf), base) == want


@pytest.mark.parametrize("seed", range(4))
def test_scan_in_place_of_each_buffer_type_and_a_prefix(seed: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extents_mod, "_fragmented", False)
    buf, base = _zero_run_shapes(seed)
    end = len(buf) // 1024 * 512  # a prefix, as the convert pipeline scans its ring buffers
    want = _reference_runs(bytes(buf[:end]), base)
    ring = mmap.mmap(-1, len(buf))
    ring[:] = bytes(buf)
    for shape in (bytes(buf), buf, ring, memoryview(buf)):
        assert nonzero_runs(shape, base, end) == want


def test_the_scan_gives_up_past_its_step_budget() -> None:
    every_other = bytes(512) + b"\x01" * 512
    buf = every_other * 200  # 200 zero runs
    assert extents_mod._scan(buf, len(buf), 0, 199) is None
    assert extents_mod._scan(buf, len(buf), 0, 200) == _reference_runs(buf, 0)


SCAN_PROBE = """
import sys
from vhdkit.extents import nonzero_runs
sector, zero = b"\\x01" * 512, bytes(512)
# 1 MiB of data with one zero run, or 1 MiB of sectors alternating with zero sectors
buf = sector * 2048 + zero * 8 if sys.argv[1] == "data" else (zero + sector) * 1024
print(len(nonzero_runs(buf, 0)), "numpy" in sys.modules)
"""


@pytest.mark.parametrize(("shape", "runs", "numpy_loaded"), [
    ("data", 1, False),  # one zero run: found by the search, numpy never imported
    ("fragmented", 1024, True),  # too many zero runs for the search: numpy scans it
])
def test_numpy_is_loaded_only_for_fragmented_data(shape: str, runs: int,
                                                  numpy_loaded: bool) -> None:
    res = subprocess.run([sys.executable, "-c", SCAN_PROBE, shape],
                         capture_output=True, text=True, check=True)
    assert res.stdout.split() == [str(runs), str(numpy_loaded)]
