"""vhdkit reads exactly what qemu reads, for images qemu made (the outside oracle)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import conformance, qemu
from vhdkit.extents import Extent, nonzero_runs, subtract
from vhdkit.formats import open_disk

CHUNK = 8 * 1024 * 1024


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    work = tmp_path_factory.mktemp("conformance")
    return {c.name: conformance.build(c, work) for c in conformance.CASES}


@pytest.mark.parametrize("case", conformance.CASES, ids=lambda c: c.name)
def test_bytes_and_size_match_qemu(case: conformance.Case,
                                   matrix: dict[str, tuple[Path, Path]]) -> None:
    image, raw = matrix[case.name]
    with open_disk(image) as disk, raw.open("rb") as ref:
        assert disk.size == qemu.virtual_size(image, case.fmt)
        assert disk.size == raw.stat().st_size
        expected_kind = {"vpc": "vhd-fixed" if "subformat=fixed" in case.options
                         else "vhd-dynamic", "vhdx": "vhdx"}[case.fmt]
        assert disk.kind == expected_kind
        covered = disk.extents()
        nonzero: list[Extent] = []
        for off in range(0, disk.size, CHUNK):
            want = ref.read(CHUNK)
            got = disk.read_at(off, CHUNK)
            assert got == want, f"bytes differ in [{off}, {off + CHUNK})"
            nonzero += nonzero_runs(want, off)
        # extents() may over-approximate but must cover every non-zero sector.
        assert subtract(nonzero, covered) == []
        assert nonzero, "the fixture wrote data"


def test_dynamic_extents_follow_the_bat(matrix: dict[str, tuple[Path, Path]]) -> None:
    image, _ = matrix["dyn-100M"]
    with open_disk(image) as disk:
        bs = conformance.BLOCK
        blocks = sorted({b for e in disk.extents()
                         for b in range(e.start // bs, (e.end - 1) // bs + 1)})
        # writes touched blocks 0, 1, 2, 3, 5 and the last one (index 49 of a 100 MiB disk)
        assert blocks[:5] == [0, 1, 2, 3, 5]
        assert blocks[-1] == (disk.size - 1) // bs
        assert len(blocks) == 6


def test_reads_across_unallocated_space_do_not_touch_the_file(
        matrix: dict[str, tuple[Path, Path]]) -> None:
    image, _ = matrix["dyn-100M"]
    with open_disk(image) as disk:
        disk.image.fd, real_fd = -1, disk.image.fd  # type: ignore[attr-defined]
        try:
            # block 4 is unallocated: reading it must not use the (now invalid) descriptor
            assert disk.read_at(4 * conformance.BLOCK, conformance.BLOCK) == bytes(
                conformance.BLOCK)
        finally:
            disk.image.fd = real_fd  # type: ignore[attr-defined]


def test_unaligned_reads_match(matrix: dict[str, tuple[Path, Path]]) -> None:
    image, raw = matrix["dyn-odd"]
    data = raw.read_bytes()
    with open_disk(image) as disk:
        for off, n in [(1, 1), (2 * 1024 * 1024 - 3, 7), (3 * 2 * 1024 * 1024 - 2049, 9000),
                       (disk.size - 100, 500), (disk.size, 10)]:
            assert disk.read_at(off, n) == data[off: off + n]
