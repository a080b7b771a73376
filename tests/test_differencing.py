"""Differencing disks and hand-built dynamic disks qemu cannot make (512 KiB blocks).

The oracle is the expected mix computed from the bitmaps (fixtures.vhdbuild.flatten), not libvhdi,
which misreads bitmap bytes with more than one bit set."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_helpers import vhdkit
from fixtures import qemu
from fixtures.vhdbuild import KIB, MIB, build_dynamic, flatten
from vhdkit.errors import ParentNotFound, UsageError
from vhdkit.extents import nonzero_runs, subtract
from vhdkit.formats import open_disk

SIZE = 8 * MIB + 3 * 512  # ends in a partial block
BS = 512 * KIB


def pattern(byte: int, n: int = BS) -> bytes:
    return bytes([byte]) * n


BASE = {0: (None, pattern(0xB0)), 3: (None, pattern(0xB3)), 16: (None, pattern(0xBF, 1536))}
# 0x40 -> only sector 1 of the first 8; 0x01 -> only sector 7; 0xC3 -> sectors 0, 1, 6, 7
MID = {0: (b"\x40\x01", pattern(0xA0)), 5: (b"\xc3", pattern(0xA5))}
TOP = {0: (b"\x01\x80" + b"\xff" * 2, pattern(0xC0)), 3: (b"\x00\x00\x10", pattern(0xC3)),
       16: (b"\x20", pattern(0xCF, 1536))}


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path, Path]:
    base = build_dynamic(tmp_path / "base.vhd", SIZE, BS, BASE)
    mid = build_dynamic(tmp_path / "mid.vhd", SIZE, BS, MID, parent=base)
    top = build_dynamic(tmp_path / "top.vhd", SIZE, BS, TOP, parent=mid)
    return base, mid, top


def test_two_level_chain_reads_the_exact_mix(chain: tuple[Path, Path, Path]) -> None:
    _, _, top = chain
    want = bytes(flatten(SIZE, BS, [BASE, MID, TOP]))
    with open_disk(top) as disk:
        assert disk.kind == "vhd-differencing"
        assert disk.size == SIZE
        got = disk.read_at(0, SIZE)
        # spot checks spelled out, so that a wrong oracle cannot hide a wrong reader
        assert got[0:512] == pattern(0xB0, 512)  # top bit 7 clear, mid 0x40 -> sector 0 clear
        assert got[512:1024] == pattern(0xA0, 512)  # mid 0x40 -> sector 1 from mid
        assert got[7 * 512: 8 * 512] == pattern(0xC0, 512)  # top 0x01 -> sector 7 from top
        assert got[8 * 512: 9 * 512] == pattern(0xC0, 512)  # top 0x80 -> sector 8 from top
        assert got[15 * 512: 16 * 512] == pattern(0xA0, 512)  # mid byte 1 = 0x01 -> sector 15
        assert got[5 * BS + 6 * 512: 5 * BS + 7 * 512] == pattern(0xA5, 512)  # mid 0xC3 bit 1
        assert got[5 * BS + 2 * 512: 5 * BS + 3 * 512] == bytes(512)  # absent everywhere
        assert got == want
        # every non-zero sector is inside extents()
        assert subtract(nonzero_runs(want), disk.extents()) == []
        # small reads across block and bitmap boundaries agree with the big one
        for off, n in [(500, 30), (BS - 7, 14), (3 * BS + 2 * 512 * 8 - 1, 1030),
                       (SIZE - 700, 700)]:
            assert disk.read_at(off, n) == want[off: off + n]


def test_inspect_shows_parent_and_locators(chain: tuple[Path, Path, Path]) -> None:
    _, mid, top = chain
    code, out, _ = vhdkit("inspect", "--json", str(top))
    assert code == 0
    import json
    doc = json.loads(out)
    parent = doc["dynamic"]["parent"]
    assert parent["name"] == "mid.vhd"
    assert parent["resolved_path"] == str(mid)
    assert [loc["platform"] for loc in parent["locators"]] == ["W2ru", "W2ku"]
    assert parent["locators"][0]["path"] == ".\\mid.vhd"
    assert doc["dynamic"]["block_size"] == BS
    assert doc["dynamic"]["bat_entries_allocated"] == 3


def test_parent_found_through_relative_locator_after_moving(
        chain: tuple[Path, Path, Path], tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    for p in chain:
        shutil.move(str(p), moved / p.name)
    want = bytes(flatten(SIZE, BS, [BASE, MID, TOP]))
    with open_disk(moved / "top.vhd") as disk:
        assert disk.read_at(0, SIZE) == want


def test_missing_parent_is_a_clear_error(chain: tuple[Path, Path, Path]) -> None:
    _, mid, top = chain
    os.remove(mid)
    with pytest.raises(ParentNotFound, match="parent disk not found"):
        open_disk(top)
    # reading data needs the parent: convert refuses with one line
    code, _, err = vhdkit("convert", str(top), str(top.parent / "out.vhd"))
    assert code == 2
    assert "parent disk not found" in err and "--parent" in err
    assert len(err.strip().splitlines()) == 1


def test_inspect_without_parent_still_shows_the_child(chain: tuple[Path, Path, Path]) -> None:
    """The footer, header and locators are the child's own: shown even when the parent is gone."""
    _, mid, top = chain
    os.remove(mid)
    code, out, err = vhdkit("inspect", "--json", str(top))
    assert code == 2  # the chain is incomplete: the reason on stderr, in one line
    assert len(err.strip().splitlines()) == 1 and "parent disk not found" in err
    doc = json.loads(out)
    assert doc["disk_type"] == "differencing" and doc["footer"]["current_size"] == SIZE
    parent = doc["dynamic"]["parent"]
    assert parent["name"] == "mid.vhd" and parent["resolved_path"] is None
    assert "parent disk not found" in parent["error"]
    assert [loc["platform"] for loc in parent["locators"]] == ["W2ru", "W2ku"]
    assert doc["dynamic"]["bat_entries_allocated"] == len(TOP)
    code, text, _ = vhdkit("inspect", str(top))
    assert code == 2 and "parent found:  NOT FOUND: " in text and "locator:       W2ru" in text


def test_check_without_parent_never_passes_what_it_did_not_judge(
        chain: tuple[Path, Path, Path]) -> None:
    """The child's own metadata is judged (a differencing 8 MiB disk fails type and size); no
    rule is reported as held unless it was evaluated."""
    _, mid, top = chain
    os.remove(mid)
    code, out, _ = vhdkit("check", "--json", str(top))
    assert code == 1
    found = {f["id"]: f for f in json.loads(out)["findings"]}
    assert not found["vhd.parent"]["passed"] and "parent disk not found" in \
        found["vhd.parent"]["message"]
    assert not found["vhd.type"]["passed"] and "differencing" in found["vhd.type"]["message"]
    assert not found["azure.size-range"]["passed"]
    assert not found["azure.size-mib"]["passed"]
    assert found["vhd.file-size"]["applicable"] is False  # a differencing disk has no such rule
    assert not found["vhd.file-size"]["passed"] or not found["vhd.file-size"]["applicable"]


def test_check_of_an_unreadable_child_marks_rules_not_evaluated(
        chain: tuple[Path, Path, Path]) -> None:
    """A header that cannot be read stops the judging: the rest is 'not evaluated', not held."""
    _, _, top = chain
    with open(top, "r+b") as f:
        f.seek(512)  # the dynamic header's cookie
        f.write(b"XXXXXXXX")
    code, out, _ = vhdkit("check", "--json", str(top))
    assert code == 1
    found = {f["id"]: f for f in json.loads(out)["findings"]}
    assert not found["vhd.header"]["passed"] and "cxsparse" in found["vhd.header"]["message"]
    for rule in ("vhd.type", "vhd.parent", "vhd.file-size", "azure.size-range"):
        assert not found[rule]["passed"], rule
        assert found[rule]["message"].startswith("not evaluated"), rule


def test_wrong_parent_id_is_a_clear_error(chain: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, mid, _ = chain
    impostor = build_dynamic(tmp_path / "impostor.vhd", SIZE, BS, BASE)
    with pytest.raises(ParentNotFound, match=r"unique id .* the child expects"):
        open_disk(mid, parent=impostor)
    code, out, _ = vhdkit("check", "--json", "--parent", str(impostor), str(mid))
    assert code == 1  # check reports it as a finding
    assert '"id": "vhd.parent"' in out and "the child expects" in out


def test_explicit_parent(chain: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, mid, _ = chain
    elsewhere = tmp_path / "elsewhere.vhd"
    shutil.move(str(base), elsewhere)
    with open_disk(mid, parent=elsewhere) as disk:
        assert disk.read_at(0, SIZE) == bytes(flatten(SIZE, BS, [BASE, MID]))


@pytest.mark.parametrize("fmt", ["raw", "vpc", "qcow2", "vdi"])
def test_parent_given_for_a_disk_without_one_is_refused(fmt: str, tmp_path: Path) -> None:
    """An ignored --parent would hide the user's mistake (the wrong child, or one already
    merged): every reader refuses it, as the OVA reader did."""
    img = qemu.create(tmp_path / f"d.{fmt}", fmt, "4M")
    other = build_dynamic(tmp_path / "other.vhd", SIZE, BS, BASE)
    with pytest.raises(UsageError, match="--parent does not apply"):
        open_disk(img, parent=other)
    code, _, err = vhdkit("inspect", "--parent", str(other), str(img))
    assert code == 2
    assert "--parent does not apply" in err and "Traceback" not in err


@pytest.mark.parametrize("block_size", [512 * KIB, 2 * MIB])
def test_dynamic_block_sizes_with_mixed_bitmaps(block_size: int, tmp_path: Path) -> None:
    size = 6 * MIB + 512
    blocks = {0: (None, pattern(0x10, block_size)), 1: (b"\x5a" * 4, pattern(0x11, block_size)),
              (size - 1) // block_size: (None, pattern(0x12, 512))}
    img = build_dynamic(tmp_path / "d.vhd", size, block_size, blocks)
    with open_disk(img) as disk:
        assert disk.read_at(0, size) == bytes(flatten(size, block_size, [blocks]))
