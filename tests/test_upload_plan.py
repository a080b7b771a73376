"""The upload planner and the cost model, on real disk files (no destination needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fixtures.upload_disks import KIB, MIB, write_runs
from vhdkit.azure_view import AzureView
from vhdkit.extents import Extent, merge, nonzero_runs, total
from vhdkit.formats import open_disk
from vhdkit.upload import MAX_WRITE, AdaptiveGap, FixedGap, Planner, RetryPolicy, Write


def plan(path: Path, gap: int, skip: list[Extent] | None = None,
         md5: bool = False) -> tuple[list[Write], bytes, Planner]:
    with open_disk(path) as disk:
        view = AzureView.of(disk)
        hasher = hashlib.md5() if md5 else None
        planner = Planner(view, FixedGap(gap), skip, hasher)
        writes = list(planner.writes())
        data = view.read_at(0, view.stream_size)
        if hasher is not None:
            assert hasher.digest() == hashlib.md5(data).digest()
        return writes, data, planner


def check_writes(writes: list[Write], data: bytes) -> None:
    for w in writes:
        assert w.offset % 512 == 0 and len(w.data) % 512 == 0
        assert 0 < len(w.data) <= MAX_WRITE
        assert w.data == data[w.offset : w.offset + len(w.data)]


@pytest.fixture
def two_runs(tmp_path: Path) -> Path:
    # runs 8 KiB apart, and a third 1 MiB further
    return write_runs(tmp_path / "d.raw", 20 * MIB, [(MIB, 4 * KIB), (MIB + 12 * KIB, 4 * KIB),
                                                     (3 * MIB, 512)])


def test_gap_zero_sends_exactly_the_nonzero_sectors(two_runs: Path) -> None:
    writes, data, planner = plan(two_runs, 0)
    check_writes(writes, data)
    assert merge(w.extent for w in writes) == nonzero_runs(data)
    assert planner.stats.planned == total(nonzero_runs(data))
    assert planner.stats.scanned == len(data)


@pytest.mark.parametrize(("gap", "expected"), [(4 * KIB, 4), (8 * KIB, 3), (2 * MIB, 2)])
def test_runs_merge_across_gaps_no_larger_than_the_merge_gap(two_runs: Path, gap: int,
                                                             expected: int) -> None:
    writes, data, _ = plan(two_runs, gap)
    check_writes(writes, data)
    assert len(writes) == expected  # the footer sector is a write of its own unless merged


def test_dense_data_is_cut_into_4mib_writes(tmp_path: Path) -> None:
    path = write_runs(tmp_path / "dense.raw", 21 * MIB, [(512, 21 * MIB - 1024)])
    writes, data, _ = plan(path, 64 * KIB, md5=True)
    check_writes(writes, data)
    assert max(len(w.data) for w in writes) == MAX_WRITE
    assert merge(w.extent for w in writes) == merge(nonzero_runs(data), 64 * KIB)


def test_ranges_already_present_are_neither_resent_nor_bridged(two_runs: Path) -> None:
    skip = [Extent(MIB + 4 * KIB, 8 * KIB), Extent(3 * MIB, 512)]  # the gap and the third run
    for md5 in (False, True):
        writes, data, planner = plan(two_runs, 2 * MIB, skip, md5=md5)
        check_writes(writes, data)
        sent = merge(w.extent for w in writes)
        assert all(not (s.start < w.end and w.start < s.end) for s in skip for w in sent)
        assert planner.stats.present == 8 * KIB + 512


def test_adaptive_gap_finds_the_break_even_of_request_and_byte_cost() -> None:
    gap = AdaptiveGap(initial=256 * KIB, every=16)
    request_s, bytes_per_s = 0.002, 100e6  # break-even: 200 KB
    for i in range(400):
        n = (i % 64 + 1) * 8 * KIB
        gap.observe(n, request_s + n / bytes_per_s)
    assert gap.fits > 0
    assert abs(gap.current() - request_s * bytes_per_s) < 8 * KIB
    slow_link = AdaptiveGap(initial=256 * KIB, every=16)  # 100 Mbit/s: bytes dominate
    for i in range(400):
        n = (i % 64 + 1) * 8 * KIB
        slow_link.observe(n, 0.002 + n / 12.5e6)
    assert slow_link.current() < 32 * KIB


def test_retry_delays_grow_and_stay_capped() -> None:
    policy = RetryPolicy(attempts=5, base_s=0.1, cap_s=1.0)
    for attempt in range(8):
        d = min(1.0, 0.1 * 2**attempt)
        assert d / 2 <= policy.delay(attempt) <= d
