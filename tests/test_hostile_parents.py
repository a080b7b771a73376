"""Hostile differencing VHDs: a parent locator must never pull another file of this machine into
vhdkit's output (issue 11, case 1), and deep legitimate chains open (up to MAX_PARENT_DEPTH)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli_helpers import vhdkit
from fixtures.vhdbuild import KIB, MIB, build_dynamic
from vhdkit.errors import ParentNotFound
from vhdkit.formats import open_disk
from vhdkit.formats.opener import MAX_PARENT_DEPTH
from vhdkit.formats.vhd_structs import Footer

SIZE = 4 * MIB
BS = 512 * KIB
SECRET = b"top-secret-local-file\n" * 64


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(directory of the child, a legitimate parent outside it, a secret file outside it)."""
    child_dir = tmp_path / "in" / "child"
    child_dir.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    base = build_dynamic(outside / "base.vhd", SIZE, BS, {0: (None, b"\xb0" * BS)})
    secret = outside / "secret.txt"
    secret.write_bytes(SECRET)
    return child_dir, base, secret


def hostile(child_dir: Path, base: Path, locators: list[tuple[bytes, str]],
            uid: bytes | None, name: str = "child.vhd") -> Path:
    """A differencing disk whose header names ``base`` (by name only: not beside the child)
    but whose locators and parent unique id are chosen by the attacker."""
    return build_dynamic(child_dir / name, SIZE, BS, {1: (None, b"\xc1" * BS)}, parent=base,
                         locators=locators, parent_unique_id=uid)


def every_command_refuses(child: Path, *needles: str) -> None:
    """convert, upload --skip-preflight --dry-run, inspect: exit 2; check: not ready, and never
    ``[ok] vhd.parent``; no output file is written; each message names ``needles``."""
    out = child.with_name("out.vhd")
    for args in (["convert", str(child), str(out)],
                 ["upload", str(child), "--skip-preflight", "--dry-run"],
                 ["inspect", str(child)]):
        code, stdout, err = vhdkit(*args)
        assert code == 2, (args, stdout, err)
        assert len(err.strip().splitlines()) == 1, err
        for needle in needles:
            assert needle in err, (args, err)
        assert "top-secret" not in stdout + err
    assert not out.exists()
    code, stdout, err = vhdkit("check", "-v", str(child))
    assert code == 1, (stdout, err)
    assert "[ok] vhd.parent" not in stdout
    assert "vhd.parent" in stdout


def test_absolute_locator_outside_is_refused(place: tuple[Path, Path, Path]) -> None:
    child_dir, base, secret = place
    child = hostile(child_dir, base, [(b"W2ku", str(secret))], uid=os.urandom(16))
    every_command_refuses(child, repr(str(secret)), "--parent")
    # reported, not silently skipped: inspect of a disk whose parent is given shows the warning
    with pytest.raises(ParentNotFound, match="outside the disk's directory"):
        open_disk(child)


def test_passwd_with_zero_parent_id(place: tuple[Path, Path, Path]) -> None:
    child_dir, base, _ = place
    child = hostile(child_dir, base, [(b"W2ku", "/etc/passwd")], uid=bytes(16))
    every_command_refuses(child, "parent_unique_id", "all zeros")


def test_relative_locator_climbing_out(place: tuple[Path, Path, Path]) -> None:
    child_dir, base, _ = place
    ref = "..\\..\\..\\..\\..\\..\\..\\..\\etc\\hostname"
    child = hostile(child_dir, base, [(b"W2ru", ref)], uid=os.urandom(16))
    every_command_refuses(child, "../../../../", "--parent")


def test_symlink_locator_leaving_the_tree(place: tuple[Path, Path, Path]) -> None:
    child_dir, base, secret = place
    (child_dir / "link.vhd").symlink_to(secret)
    child = hostile(child_dir, base, [(b"W2ru", ".\\link.vhd")], uid=os.urandom(16))
    every_command_refuses(child, "'./link.vhd'", "--parent")


def test_non_vhd_parent_inside_the_tree_is_rejected(place: tuple[Path, Path, Path]) -> None:
    child_dir, base, _ = place
    (child_dir / "notes.txt").write_bytes(SECRET)
    child = hostile(child_dir, base, [(b"W2ru", ".\\notes.txt")], uid=os.urandom(16))
    every_command_refuses(child, "not a VHD")


def test_vhd_parent_with_another_id_is_rejected(place: tuple[Path, Path, Path]) -> None:
    child_dir, base, _ = place
    build_dynamic(child_dir / "other.vhd", SIZE, BS, {0: (None, b"\x0f" * 512)})
    child = hostile(child_dir, base, [(b"W2ru", ".\\other.vhd")], uid=os.urandom(16))
    every_command_refuses(child, "the child expects")


def test_vhdx_parent_is_rejected(place: tuple[Path, Path, Path]) -> None:
    from fixtures import qemu

    child_dir, base, _ = place
    qemu.create(child_dir / "p.vhdx", "vhdx", "4M")
    child = hostile(child_dir, base, [(b"W2ru", ".\\p.vhdx")], uid=os.urandom(16))
    every_command_refuses(child, "vhdx disk, not a VHD")


def test_explicit_parent_skips_containment_but_not_identity(
        place: tuple[Path, Path, Path]) -> None:
    child_dir, base, secret = place
    child = hostile(child_dir, base, [(b"W2ku", str(base))], uid=None)
    code, _, err = vhdkit("inspect", str(child))
    assert code == 2 and "--parent" in err and repr(str(base)) in err
    # named by the user: followed outside the tree
    code, out, err = vhdkit("inspect", str(child), "--parent", str(base))
    assert code == 0, err
    assert "warning: vhd.parent-locator" not in out  # --parent: the locators are not consulted
    with open_disk(child, base) as disk:
        assert disk.read_at(0, 4) == b"\xb0" * 4 and disk.read_at(BS, 4) == b"\xc1" * 4
    # ... yet a named file that is not the parent is still refused
    for wrong in (secret, "/etc/passwd"):
        code, _, err = vhdkit("convert", str(child), str(child_dir / "o.vhd"), "--parent",
                              str(wrong))
        assert code == 2 and "not a VHD" in err, err
    assert not (child_dir / "o.vhd").exists()


def test_refused_locator_is_reported_when_another_one_works(
        place: tuple[Path, Path, Path]) -> None:
    child_dir, base, _ = place
    inside = build_dynamic(child_dir / "base.vhd", SIZE, BS, {0: (None, b"\xb1" * BS)})
    uid = open_disk(inside).image.footer.unique_id  # type: ignore[attr-defined]
    child = hostile(child_dir, base, [(b"W2ku", "/etc/passwd"), (b"W2ru", ".\\base.vhd")],
                    uid=uid)
    code, out, err = vhdkit("inspect", str(child))
    assert code == 0, err
    assert "warning: vhd.parent-locator" in out and "'/etc/passwd'" in out
    code, out, _ = vhdkit("check", "-v", str(child))
    assert "vhd.parent-locator" in out and "[ok] vhd.parent " in out.replace(":", " ")
    with open_disk(child) as disk:
        assert disk.read_at(0, 1) == b"\xb1"


def chain_of(tmp_path: Path, levels: int) -> Path:
    """A legitimate chain: base plus ``levels`` differencing disks, each writing one sector."""
    disk = build_dynamic(tmp_path / "d0.vhd", 64 * KIB, 4 * KIB, {0: (None, b"\x01" * 512)})
    for i in range(1, levels + 1):
        disk = build_dynamic(tmp_path / f"d{i}.vhd", 64 * KIB, 4 * KIB,
                             {i % 16: (b"\x80", bytes([i % 256 or 1]) * 512)}, parent=disk)
    return disk


def test_deep_legitimate_chain_opens(tmp_path: Path) -> None:
    top = chain_of(tmp_path, 40)
    with open_disk(top) as disk:
        assert len(disk.chain()) == 41
        assert disk.read_at(8 * 4 * KIB, 1) == bytes([40])  # block 8 last written at level 40
        assert disk.read_at(0, 1) == bytes([32])
    code, _, err = vhdkit("convert", str(top), str(tmp_path / "flat.vhd"))
    assert code == 0, err


def test_chain_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    top = chain_of(tmp_path, MAX_PARENT_DEPTH + 1)
    code, _, err = vhdkit("inspect", str(top))
    assert code == 2 and f"limit of {MAX_PARENT_DEPTH} disks" in err and "loop" not in err


def test_loop_is_found_by_identity(tmp_path: Path) -> None:
    a = build_dynamic(tmp_path / "a.vhd", 64 * KIB, 4 * KIB, {})
    uid_a = Footer.parse(a.read_bytes()[-512:]).unique_id
    b = build_dynamic(tmp_path / "b.vhd", 64 * KIB, 4 * KIB, {}, parent=a)
    # a is rewritten, same unique id, as a child of b: b -> a -> b
    build_dynamic(a, 64 * KIB, 4 * KIB, {}, parent=b, footer={"unique_id": uid_a})
    code, _, err = vhdkit("inspect", str(b))
    assert code == 2 and "loops back" in err, err
