"""Malformed images: one-line errors naming field and offset (exit 2), or findings from check."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_helpers import vhdkit
from fixtures import mutate, qemu
from vhdkit.errors import FormatError
from vhdkit.formats import open_disk

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("malformed-bases")
    dyn = qemu.create(work / "dyn.vhd", "vpc", "100M", "force_size=on")
    qemu.write(dyn, "vpc", [(0, 4096, 0x61), (2 * MIB + 512, 512, 0x62)])
    fixed = qemu.create(work / "fixed.vhd", "vpc", "64M", "subformat=fixed", "force_size=on")
    qemu.write(fixed, "vpc", [(0, 4096, 0x63)])
    raw = qemu.to_raw(dyn, "vpc", work / "dyn.raw")
    return {"dyn": dyn, "fixed": fixed, "dyn_raw": raw}


@pytest.fixture
def copy(bases: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        dst = tmp_path / f"{name}.vhd"
        shutil.copyfile(bases[name], dst)
        return dst
    return make


def one_line_error(args: tuple[str, ...], *needles: str) -> str:
    code, out, err = vhdkit(*args)
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vhdkit: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err
    return lines[0]


def check_fails(path: Path, rule: str) -> None:
    code, out, _ = vhdkit("check", "--json", str(path))
    assert code == 1, out
    assert f'"id": "{rule}"' in out


def size_of(p: Path) -> int:
    return p.stat().st_size


def test_bad_cookie(copy: Callable[[str], Path]) -> None:
    p = copy("fixed")
    mutate.set_footer(p, cookie=b"conectiX")
    one_line_error(("inspect", str(p)), "footer.cookie", f"offset {size_of(p) - 512}",
                   "expected b'conectix'")
    check_fails(p, "vhd.cookie")


def test_bad_footer_checksum(copy: Callable[[str], Path]) -> None:
    p = copy("fixed")
    mutate.set_footer(p, fix_checksum=False, checksum=0x12345678)
    one_line_error(("inspect", str(p)), "footer.checksum", f"offset {size_of(p) - 512 + 64}",
                   "stored 0x12345678")
    check_fails(p, "vhd.footer-checksum")


def test_bad_header_checksum(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_header(p, fix_checksum=False, checksum=1)
    one_line_error(("inspect", str(p)), "header.checksum", "offset 548", "stored 0x00000001")
    check_fails(p, "vhd.header-checksum")


@pytest.mark.parametrize("which", ["head", "tail"])
def test_damaged_footer_copy_is_reported_and_the_good_one_used(
        which: str, copy: Callable[[str], Path], bases: dict[str, Path]) -> None:
    p = copy("dyn")
    mutate.flip_byte(p, 70 if which == "head" else size_of(p) - 512 + 70)
    code, out, _ = vhdkit("inspect", str(p))
    assert code == 0
    assert "vhd.footer-copy" in out and f"{which} " in out
    with open_disk(p) as disk:
        assert disk.read_at(0, 4 * MIB) == bases["dyn_raw"].read_bytes()[: 4 * MIB]
    check_fails(p, "vhd.footer-copy")


def test_truncated_dynamic(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.truncate(p, size_of(p) - 600 * 1024)  # cuts the footer and the last block
    one_line_error(("inspect", str(p)), "bat[", "past the end of data")
    check_fails(p, "vhd.bat-range")


def test_truncated_fixed(copy: Callable[[str], Path]) -> None:
    p = copy("fixed")
    mutate.truncate(p, 32 * MIB)
    one_line_error(("inspect", str(p)), "footer.cookie", f"offset {32 * MIB - 512}")


def test_file_size_not_multiple_of_512(copy: Callable[[str], Path], tmp_path: Path) -> None:
    p = copy("fixed")
    data = p.read_bytes()
    odd = tmp_path / "odd.vhd"
    odd.write_bytes(data[:-512] + bytes(100) + data[-512:])
    one_line_error(("inspect", str(odd)), "file at offset", "not a multiple of 512")
    check_fails(odd, "vhd.file-size")


@pytest.mark.parametrize("disk_type", [0, 1, 5, 6])
def test_reserved_disk_types(disk_type: int, copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_footer(p, disk_type=disk_type)
    one_line_error(("inspect", str(p)), "footer.disk_type", f"type {disk_type} is reserved")
    check_fails(p, "vhd.type")


def test_block_size_not_power_of_two(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_header(p, block_size=3 * MIB)
    one_line_error(("inspect", str(p)), "header.block_size", "offset 544",
                   "3145728 is not a power of two")
    check_fails(p, "vhd.header")


def test_bat_entry_past_eof(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_bat(p, 1, 0x00FFFFF0)
    t = mutate.header(p).table_offset
    one_line_error(("inspect", str(p)), "bat[1]", f"offset {t + 4}", "past the end of data")
    check_fails(p, "vhd.bat-range")


def test_bat_too_small(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_header(p, max_table_entries=10)
    one_line_error(("inspect", str(p)), "header.max_table_entries", "offset 540",
                   "10 entries cannot map", "needs 50")
    check_fails(p, "vhd.bat-entries")


def test_overlapping_blocks(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_bat(p, 7, mutate.get_bat(p, 0) + 8)
    one_line_error(("inspect", str(p)), "bat[7]", "overlaps block bat[0]")
    check_fails(p, "vhd.bat-overlap")


def test_huge_bat_allocates_nothing(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_header(p, max_table_entries=0xFFFFFFFF)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as exc:
            open_disk(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB
    assert "BAT of 4294967295 entries" in str(exc.value)
    one_line_error(("inspect", str(p)), "header.table_offset", "offset 528",
                   "BAT of 4294967295 entries")
    check_fails(p, "vhd.bat-entries")


def test_dynamic_size_over_2040_gib(copy: Callable[[str], Path]) -> None:
    p = copy("dyn")
    mutate.set_footer(p, current_size=2041 * GIB, original_size=2041 * GIB)
    one_line_error(("inspect", str(p)), "footer.current_size",
                   f"offset {size_of(p) - 512 + 48}", "exceeds the VHD maximum of 2040 GiB")
    check_fails(p, "vhd.dynamic-size")


def test_empty_file(tmp_path: Path) -> None:
    for name in ("empty.vhd", "empty.img"):
        p = tmp_path / name
        p.write_bytes(b"")
        one_line_error(("inspect", str(p)), "file at offset 0: empty file")
        one_line_error(("check", str(p)), "file at offset 0: empty file")


def test_directory(tmp_path: Path) -> None:
    one_line_error(("inspect", str(tmp_path)), "is a directory")
    one_line_error(("check", str(tmp_path)), "is a directory")


def test_missing_file(tmp_path: Path) -> None:
    one_line_error(("check", str(tmp_path / "nope.vhd")), "no such file")


def test_no_permission(bases: dict[str, Path]) -> None:
    work = Path(tempfile.mkdtemp(prefix="vhdkit-perm-"))
    try:
        work.chmod(0o755)
        p = work / "locked.vhd"
        shutil.copyfile(bases["fixed"], p)
        p.chmod(0)
        # Root reads anything: a forked child drops to nobody and runs the command in-process
        # (everything is already imported, so only the locked file is touched).
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                code, out, err = vhdkit("inspect", str(p))
                os.write(w, json.dumps([code, out, err]).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as fh:
            raw = fh.read()
        os.waitpid(pid, 0)
        code, out, err = json.loads(raw)
        assert code == 2, err
        assert err.strip() == f"vhdkit: error: {p}: permission denied"
        assert out == ""
    finally:
        shutil.rmtree(work)


def test_bad_footer_version(copy: Callable[[str], Path]) -> None:
    p = copy("fixed")
    mutate.set_footer(p, version=0x00020000)
    one_line_error(("inspect", str(p)), "footer.version", f"offset {size_of(p) - 512 + 12}",
                   "found 0x00020000")
    check_fails(p, "vhd.version")


def test_extra_bat_entry_is_a_warning_and_still_reads(tmp_path: Path) -> None:
    from fixtures.vhdbuild import build_dynamic

    p = build_dynamic(tmp_path / "extra.vhd", 4 * MIB, 2 * MIB, {1: (None, b"\x42" * 512)},
                      bat_entries=3)  # qemu before 5.0 wrote one entry too many
    code, out, _ = vhdkit("inspect", str(p))
    assert code == 0 and "warning: vhd.bat-entries" in out and "before 5.0" in out
    with open_disk(p) as disk:
        assert disk.read_at(2 * MIB, 512) == b"\x42" * 512
    code, out, _ = vhdkit("check", "--json", str(p))
    assert code == 1  # dynamic: convert first; the extra entry is reported as a warning
    assert '"id": "vhd.bat-entries"' in out and '"severity": "warning"' in out
