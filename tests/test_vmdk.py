"""VMDK and OVA read natively: every subformat qemu-img makes (and the vmfs descriptors, extents at
an offset, streamOptimized footers, OVAs it cannot make) reads the same bytes as qemu-img's raw
conversion, its allocation map covers all data, and `vhdkit convert` output compares equal with
`qemu-img compare`. Damaged images, escaping extents, CID mismatches and loops are refused."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from azure.storage.blob import ContainerClient

from fixtures import qemu
from fixtures.vmdk_images import (
    MIB,
    SIZE,
    VmdkImage,
    build_all,
    descriptor,
    make_ova,
    ovf,
)
from tests.cli_helpers import vhdkit
from vhdkit.errors import FormatError, ParentNotFound, UnsupportedDisk, UsageError
from vhdkit.extents import Extent, intersect, merge, nonzero_runs, subtract
from vhdkit.formats import open_disk, vmdk_sparse
from vhdkit.formats.region import Region
from vhdkit.formats.tar_index import tar_members

NAMES = ["sparse", "flat", "stream", "2gb-sparse", "2gb-flat", "compat6", "lsilogic",
         "stream-footer", "zeroed", "chain", "vmfsSparse", "vmfs", "vmfsThin", "mixed", "ova",
         "ova-disk1", "ova-disk2"]
#: the OVA disk each image is (None: not an OVA, or one with a single disk)
MEMBER = {"ova-disk1": 1, "ova-disk2": 2}
CHUNK = 4 * MIB


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, VmdkImage]:
    return build_all(tmp_path_factory.mktemp("vmdk"))


def _holes_aware_ranges(path: Path) -> list[Extent]:
    """Where the reference raw file has data (qemu-img writes zeros as holes)."""
    with open(path, "rb") as fh:
        return Region(fh.fileno(), 0, os.fstat(fh.fileno()).st_size, str(path)).data_ranges(
            0, os.fstat(fh.fileno()).st_size)


@pytest.mark.parametrize("name", NAMES)
def test_reads_the_bytes_qemu_reads_and_extents_cover_all_data(
        images: dict[str, VmdkImage], name: str) -> None:
    img = images[name]
    with open_disk(img.path, disk=MEMBER.get(name)) as disk, open(img.reference, "rb") as ref:
        assert disk.size == img.size
        ext = disk.extents()
        assert ext == merge(ext) and all(e.end <= disk.size for e in ext)
        nonzero: list[Extent] = []
        for piece in merge([*ext, *_holes_aware_ranges(img.reference)]):
            for off in range(piece.start, piece.end, CHUNK):
                n = min(CHUNK, piece.end - off)
                want = os.pread(ref.fileno(), n, off)
                got = disk.read_at(off, n)
                assert got == want, f"{name}: bytes differ in [{off}, {off + n})"
                nonzero += nonzero_runs(want.ljust(-(-n // 512) * 512, b"\0"), off)
        assert nonzero, "the fixture holds data"
        assert subtract(nonzero, ext) == [], "data outside the allocation map"


@pytest.mark.parametrize("name", NAMES)
def test_convert_output_compares_equal_with_qemu(images: dict[str, VmdkImage], name: str,
                                                 tmp_path: Path) -> None:
    img = images[name]
    out = tmp_path / "out.vhd"
    member = MEMBER.get(name)
    code, _, err = vhdkit("convert", "-q", str(img.path), str(out),
                          *(["--disk", str(member)] if member else []))
    assert code == 0, err
    fmt = [] if img.qemu_src.startswith("json:") else ["-f", "vmdk"]
    res = subprocess.run(["qemu-img", "compare", *fmt, "-F", "vpc", img.qemu_src, str(out)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_facts_name_subformat_grains_extents_and_identity(images: dict[str, VmdkImage]) -> None:
    with open_disk(images["stream"].path) as d:
        f = d.facts()
        assert d.kind == "vmdk"
        assert (f["format"], f["subformat"], f["grain_size"], f["compressed"]) == (
            "vmdk", "streamOptimized", 65536, True)
        assert f["extents"] == [{"type": "SPARSE", "file": "stream.vmdk", "size": SIZE}]
        assert f["parent_cid"] == "ffffffff" and len(f["cid"]) == 8
    with open_disk(images["lsilogic"].path) as d:
        f = d.facts()
        assert (f["adapter_type"], f["hw_version"], f["compressed"]) == ("lsilogic", "10", False)
    with open_disk(images["compat6"].path) as d:
        assert d.facts()["hw_version"] == "6"
    with open_disk(images["2gb-flat"].path) as d:
        f = d.facts()
        assert f["subformat"] == "twoGbMaxExtentFlat" and f["grain_size"] is None
        assert [(e["type"], e["size"]) for e in f["extents"]] == [
            ("FLAT", 4194304 * 512), ("FLAT", 16384 * 512)]
    with open_disk(images["chain"].path) as d:
        f = d.facts()
        base = qemu.info(images["chain"].path.with_name("base.vmdk"), "vmdk")
        assert f["parent_hint"] == "base.vmdk"
        assert f["parent"] == str(images["chain"].path.with_name("base.vmdk"))
        assert int(f["parent_cid"], 16) == base["format-specific"]["data"]["cid"]  # type: ignore[index]
        assert [m.kind for m in d.chain()] == ["vmdk", "vmdk"]


def test_stream_footer_fixture_has_its_directory_only_in_the_footer(
        images: dict[str, VmdkImage]) -> None:
    head = images["stream-footer"].path.read_bytes()[:512]
    assert struct.unpack_from("<Q", head, 56)[0] == 0xFFFFFFFFFFFFFFFF


def test_zeroed_grains_are_zeros_not_data(images: dict[str, VmdkImage]) -> None:
    # qemu-io "write -z" over written grains of a zeroed_grain=on image leaves GTE 1
    with open_disk(images["zeroed"].path) as d:
        zeroed = Extent(MIB, 128 * 1024)
        assert subtract([zeroed], d.extents()) == [zeroed]
        assert d.read_at(zeroed.start, zeroed.length) == bytes(zeroed.length)
    # in a child, a zeroed grain hides the parent's data
    with open_disk(images["chain"].path) as d:
        hidden = Extent(SIZE // 2, 64 * 1024)
        assert subtract([hidden], d.extents()) == [hidden]
        assert d.read_at(SIZE // 2 - 4096, 4096) == b"\x33" * 4096  # the parent shows through


def test_zero_extent_reads_zeros_between_flat_extents(images: dict[str, VmdkImage],
                                                      tmp_path: Path) -> None:
    # qemu 7.2 skips ZERO extents, so the expected bytes come from the same descriptor without it
    src = images["mixed"].path
    shutil.copyfile(src.with_name("mixed-data.src.raw"), tmp_path / "mixed-data.src.raw")
    d = tmp_path / "zero.vmdk"
    d.write_text(descriptor("monolithicFlat", [
        'RW 4096 FLAT "mixed-data.src.raw" 2048', "RW 8192 ZERO",
        'RW 6144 FLAT "mixed-data.src.raw" 8192']))
    ref = images["mixed"].reference.read_bytes()
    with open_disk(d) as disk:
        assert disk.size == len(ref) + 4 * MIB
        assert disk.read_at(0, 2 * MIB) == ref[: 2 * MIB]
        assert disk.read_at(2 * MIB, 4 * MIB) == bytes(4 * MIB)
        assert disk.read_at(6 * MIB, 3 * MIB) == ref[2 * MIB:]
        assert all(not (e.start < 6 * MIB and e.end > 2 * MIB) for e in disk.extents())
        assert [e["type"] for e in disk.facts()["extents"]] == ["FLAT", "ZERO", "FLAT"]


def test_concurrent_reads_of_compressed_grains_agree(images: dict[str, VmdkImage]) -> None:
    img = images["stream-footer"]
    want = img.reference.read_bytes()
    with open_disk(img.path) as disk:
        errors: list[str] = []

        def reader(k: int) -> None:
            for off in range(k * 4096, disk.size, 5 * 64 * 1024 + 4096):
                if disk.read_at(off, 70000) != want[off: off + 70000]:
                    errors.append(f"thread {k} at {off}")

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


def test_libvmdk_reads_the_same_bytes(images: dict[str, VmdkImage]) -> None:
    import pyvmdk

    for name in ("sparse", "stream", "2gb-sparse", "flat", "vmfs"):
        img = images[name]
        f = pyvmdk.handle()
        f.open(str(img.path))
        f.open_extent_data_files()
        try:
            with open_disk(img.path) as disk:
                assert f.get_media_size() == disk.size
                for e in disk.extents()[:8]:
                    n = min(e.length, MIB)
                    assert f.read_buffer_at_offset(n, e.start) == disk.read_at(e.start, n), name
        finally:
            f.close()


# -- chains --------------------------------------------------------------------------------------

def _chain_copy(images: dict[str, VmdkImage], where: Path) -> Path:
    where.mkdir()
    for name in ("base.vmdk", "child.vmdk"):
        shutil.copyfile(images["chain"].path.with_name(name), where / name)
    return where / "child.vmdk"


def test_explicit_parent_overrides_the_hint(images: dict[str, VmdkImage], tmp_path: Path) -> None:
    child = _chain_copy(images, tmp_path / "c")
    moved = tmp_path / "elsewhere.vmdk"
    (tmp_path / "c" / "base.vmdk").rename(moved)
    with pytest.raises(ParentNotFound, match=r"base\.vmdk"):
        open_disk(child)
    with open_disk(child, parent=moved) as d:
        assert d.read_at(0, SIZE) == images["chain"].reference.read_bytes()


def test_parent_cid_mismatch_names_both(images: dict[str, VmdkImage], tmp_path: Path) -> None:
    child = _chain_copy(images, tmp_path / "c")
    qemu.write(child.with_name("base.vmdk"), "vmdk", [(0, 512, 0x77)])  # a write renews the CID
    cid = qemu.info(child.with_name("base.vmdk"), "vmdk")["format-specific"]["data"]["cid"]  # type: ignore[index]
    with pytest.raises(ParentNotFound) as exc:
        open_disk(child)
    want = open_disk(images["chain"].path).facts()["parent_cid"]
    assert want in str(exc.value) and f"{cid:08x}" in str(exc.value)
    code, _, err = vhdkit("inspect", str(child))
    assert code == 2 and len(err.strip().splitlines()) == 1 and want in err


def test_parent_loop_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.raw").write_bytes(bytes(MIB))
    ext = ['RW 2048 FLAT "data.raw" 0']
    (tmp_path / "a.vmdk").write_text(descriptor("monolithicFlat", ext, cid="aaaaaaaa",
                                                parent_cid="bbbbbbbb", hint="b.vmdk"))
    (tmp_path / "b.vmdk").write_text(descriptor("monolithicFlat", ext, cid="bbbbbbbb",
                                                parent_cid="aaaaaaaa", hint="a.vmdk"))
    with pytest.raises(ParentNotFound, match="loops"):
        open_disk(tmp_path / "a.vmdk")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/hostname"])
def test_extent_outside_the_disk_directory_is_refused(tmp_path: Path, name: str) -> None:
    d = tmp_path / "evil.vmdk"
    d.write_text(descriptor("monolithicFlat", [f'RW 1 FLAT "{name}" 0']))
    with pytest.raises(ParentNotFound, match="outside the disk's directory"):
        open_disk(d)
    code, _out, err = vhdkit("convert", str(d), str(tmp_path / "o.vhd"))
    assert code == 2 and err.count("\n") == 1 and "outside" in err
    assert not (tmp_path / "o.vhd").exists()


def test_parent_hint_outside_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.raw").write_bytes(bytes(MIB))
    d = tmp_path / "child.vmdk"
    d.write_text(descriptor("monolithicFlat", ['RW 2048 FLAT "data.raw" 0'],
                            parent_cid="12345678", hint="../../etc/base.vmdk"))
    with pytest.raises(ParentNotFound, match="outside"):
        open_disk(d)


# -- damaged sparse extents (by construct) ----------------------------------------------------

def _copy(images: dict[str, VmdkImage], name: str, tmp_path: Path) -> Path:
    dst = tmp_path / f"{name}.vmdk"
    shutil.copyfile(images[name].path, dst)
    return dst


def _put(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(fmt, *values))


def _get(path: Path, offset: int, fmt: str) -> int:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return int(struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0])


def test_damaged_primary_directory_falls_back_to_the_redundant_one(
        images: dict[str, VmdkImage], tmp_path: Path) -> None:
    p = _copy(images, "sparse", tmp_path)
    assert _get(p, 8, "<I") & 2, "qemu writes a redundant directory"
    _put(p, 56, "<Q", 1 << 40)  # gd_offset far past the end
    with open_disk(p) as d:
        assert d.read_at(0, SIZE) == images["sparse"].reference.read_bytes()
    _put(p, 48, "<Q", 1 << 40)  # and the redundant one too
    with pytest.raises(FormatError) as exc:
        open_disk(p)
    assert exc.value.field == "header.gd_offset" and exc.value.offset == 56


def test_grain_table_entry_past_the_end_of_the_file(images: dict[str, VmdkImage],
                                                     tmp_path: Path) -> None:
    p = _copy(images, "sparse", tmp_path)
    gd = _get(p, 56, "<Q") * 512
    rgd = _get(p, 48, "<Q") * 512
    for table_dir in (gd, rgd):
        gt = _get(p, table_dir, "<I") * 512
        _put(p, gt + 4 * 3, "<I", 0x7FFFFFFF)
    with pytest.raises(FormatError) as exc:
        open_disk(p)
    assert exc.value.field == "grain table entry 3"
    assert exc.value.offset == _get(p, gd, "<I") * 512 + 12
    code, _, err = vhdkit("inspect", str(p))
    assert code == 2 and "grain table entry 3" in err and "past the end" in err


def test_grain_table_past_the_end_of_the_file(images: dict[str, VmdkImage],
                                              tmp_path: Path) -> None:
    p = _copy(images, "stream", tmp_path)
    gd = _get(p, 56, "<Q") * 512
    _put(p, gd, "<I", 0xFFFFFFF0)
    _put(p, _get(p, 48, "<Q") * 512, "<I", 0xFFFFFFF0)  # the redundant copy too
    with pytest.raises(FormatError) as exc:
        open_disk(p)
    assert (exc.value.field, exc.value.offset) == ("grain directory entry 0", gd)


@pytest.mark.parametrize(("offset", "fmt", "value", "field"), [
    (12, "<Q", 1 << 54, "header.gd_offset"),           # capacity: a directory larger than the file
    (12, "<Q", 1 << 60, "header.capacity"),
    (44, "<I", 0xFFFFFFFF, "header.num_gtes_per_gt"),
    (20, "<Q", 1 << 40, "header.grain_size"),
    (20, "<Q", 96, "header.grain_size"),               # not a power of two
    (4, "<I", 9, "header.version"),
    (36, "<Q", 1 << 40, "header.descriptor_size"),
    (28, "<Q", 1 << 40, "header.descriptor_offset"),
])
def test_huge_or_wrong_header_fields(images: dict[str, VmdkImage], tmp_path: Path, offset: int,
                                     fmt: str, value: int, field: str) -> None:
    p = _copy(images, "stream", tmp_path)
    _put(p, offset, fmt, value)
    with pytest.raises(FormatError) as exc:
        open_disk(p)
    assert exc.value.field == field
    code, _, err = vhdkit("check", str(p))
    assert code in (1, 2) and "Traceback" not in err


def test_corrupt_compressed_grain(images: dict[str, VmdkImage], tmp_path: Path) -> None:
    p = _copy(images, "stream", tmp_path)
    with open_disk(p) as d:
        sparse = d.pieces[0].sparse  # type: ignore[attr-defined]
        sector = sparse._entry(0)
    _put(p, sector * 512 + 12, "<4s", b"\xde\xad\xbe\xef")
    with open_disk(p) as d, pytest.raises(FormatError, match="deflate"):
        d.read_at(0, 4096)
    _put(p, sector * 512 + 8, "<I", 1 << 30)
    with open_disk(p) as d, pytest.raises(FormatError) as exc:
        d.read_at(0, 4096)
    assert (exc.value.field, exc.value.offset) == ("grain marker.size", sector * 512 + 8)


# -- refusals by name ----------------------------------------------------------------------------

def test_vmfs_sparse_snapshot_reads_its_cowd_grains_over_the_parent(
        images: dict[str, VmdkImage]) -> None:
    ref = images["vmfsSparse"].reference.read_bytes()
    assert ref[:512] == b"\x99" * 512 and ref[7 * 512: 7 * 512 + 300] == b"\x98" * 300
    assert ref[1024:1536] == b"\x11" * 512  # the parent shows through between grains
    with open_disk(images["vmfsSparse"].path) as d:
        f = d.facts()
        assert (f["subformat"], f["grain_size"], f["allocated_bytes"]) == ("vmfsSparse", 512,
                                                                           4 * 512)
        assert [m.kind for m in d.chain()] == ["vmdk", "vmdk"]


def test_esxi_snapshot_formats_not_read_are_refused_by_name(tmp_path: Path) -> None:
    cowd = tmp_path / "snap-delta.vmdk"
    cowd.write_bytes(b"COWD" + bytes(2044))
    code, _, err = vhdkit("inspect", str(cowd))  # a COWD extent on its own: its parent is unknown
    assert code == 2 and "COWD" in err and "descriptor" in err and err.count("\n") == 1
    d = tmp_path / "snap.vmdk"
    d.write_text(descriptor("custom", ['RW 4 SESPARSE "x-sesparse.vmdk"']))
    with pytest.raises(UnsupportedDisk, match="seSparse"):
        open_disk(d)
    d.write_text(descriptor("seSparse", ['RW 4 SESPARSE "x-sesparse.vmdk"']))
    with pytest.raises(UnsupportedDisk, match="seSparse"):
        open_disk(d)
    d.write_text(descriptor("vmfsRDM", ['RW 4 VMFSRDM "x-rdm.vmdk"']))
    with pytest.raises(UnsupportedDisk, match="raw device mapping"):
        open_disk(d)


# -- OVA -------------------------------------------------------------------------------------------

def test_ova_lists_its_disks_and_needs_a_choice_when_several(images: dict[str, VmdkImage]) -> None:
    ova = images["ova-disk1"].path
    with pytest.raises(UsageError, match="several disks"):
        open_disk(ova)
    code, _, err = vhdkit("inspect", str(ova))
    assert code == 2 and "--disk N" in err and "disk2.vmdk" in err and err.count("\n") == 1
    with open_disk(ova, disk=2) as d:
        f = d.facts()
        assert d.kind == "ova" and f["format"] == "ova" and f["disk"] == 2
        assert [(x["disk"], x["file"], x["capacity"]) for x in f["disks"]] == [
            (1, "disk1.vmdk", SIZE), (2, "disk2.vmdk", 16 * MIB)]
        assert (f["subformat"], f["grain_size"], f["compressed"]) == (
            "streamOptimized", 65536, True)
    with pytest.raises(UsageError, match="--disk 3"):
        open_disk(ova, disk=3)
    code, _, err = vhdkit("inspect", str(ova), "--disk", "0")
    assert code == 2


def test_ova_disk_is_read_in_place(images: dict[str, VmdkImage], tmp_path: Path) -> None:
    before = set(os.listdir(images["ova"].path.parent))
    with open_disk(images["ova"].path) as d:
        assert d.facts()["disks"][0]["file"] == "disk1.vmdk"
        d.read_at(0, d.size)
    assert set(os.listdir(images["ova"].path.parent)) == before


def test_a_tar_that_is_not_an_ova_is_refused(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    plain = make_ova(tmp_path / "x.ova", [("readme.txt", tmp_path / "readme.txt")])
    with pytest.raises(UnsupportedDisk, match="not an OVA"):
        open_disk(plain)
    tar = plain.rename(tmp_path / "x.tar")
    code, _, err = vhdkit("inspect", str(tar))
    assert code == 2 and "tar" in err


def test_ova_member_outside_the_archive_or_entities_are_refused(
        images: dict[str, VmdkImage], tmp_path: Path) -> None:
    stream = images["stream"].path
    bad = make_ova(tmp_path / "bad.ova", [("bad.ovf", ovf([("../disk1.vmdk", SIZE)]).encode()),
                                          ("disk1.vmdk", stream)])
    with pytest.raises(FormatError, match="not a member of the archive"):
        open_disk(bad)
    bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
            b"<Envelope>&b;</Envelope>")
    ent = make_ova(tmp_path / "ent.ova", [("ent.ovf", bomb), ("disk1.vmdk", stream)])
    with pytest.raises(FormatError, match="DOCTYPE"):
        open_disk(ent)


def test_region_reads_stay_inside_the_window(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 4)
    with open(p, "rb") as fh:
        r = Region(fh.fileno(), 100, 50, "w")
        assert r.pread(40, 100) == bytes(range(140, 150))
        buf = bytearray(20)
        r.read_into(45, memoryview(buf))
        assert bytes(buf) == bytes(range(145, 150)) + bytes(15)
        with pytest.raises(FormatError):
            r.read_exact(40, 11, "field")
        assert np.array_equal(np.frombuffer(r.read_exact(0, 50, "f"), np.uint8),
                              np.arange(100, 150, dtype=np.uint8))


@pytest.mark.parametrize(("command", "ok"), [
    (["inspect"], 0), (["check"], 1), (["preflight"], 0),
    (["upload", "--dry-run", "--skip-preflight"], 0)])
def test_every_command_takes_disk_n_for_an_ova(images: dict[str, VmdkImage], command: list[str],
                                               ok: int) -> None:
    ova = str(images["ova-disk2"].path)
    code, out, err = vhdkit(*command, ova)
    assert code == 2 and "several disks" in err and err.count("\n") == 1
    code, out, err = vhdkit(*command, ova, "--disk", "2")
    assert code == ok, out + err
    if command == ["check"]:
        assert f"vhdkit convert {ova} {ova[:-4]}-azure.vhd --disk 2" in out
    if command[0] == "upload":
        assert "16,777,216" in out or "16777216" in out or "16.00 MiB" in out, out


def _rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def test_a_1_tib_disk_reads_its_tables_not_its_size(tmp_path: Path) -> None:
    raw = qemu.create(tmp_path / "big.raw", "raw", "1T")
    qemu.write(raw, "raw", [(100 << 30, MIB, 0x5A)])
    vmdk = qemu.convert(raw, "raw", tmp_path / "big.vmdk", "vmdk", "subformat=streamOptimized")
    before = _rchar()
    with open_disk(vmdk) as d:
        assert d.extents() == [Extent(100 << 30, MIB)]
        assert d.read_at(100 << 30, MIB) == b"\x5a" * MIB
    # qemu preallocates every grain table (64 MiB of them for 1 TiB): each is read once
    assert _rchar() - before < vmdk.stat().st_size


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_index_agrees_with_tarfile(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "a.tar"
    long = "d" * 120 + "/" + "n" * 130 + ".vmdk"  # a GNU long name, or a PAX path
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, size in (("x.ovf", 700), ("dir/y.vmdk", 5000), (long, 3)):
            if fmt == tarfile.USTAR_FORMAT and len(name) > 100:
                continue
            info = tarfile.TarInfo(name)
            info.size = size
            info.pax_headers = {"comment": "é" * 40} if fmt == tarfile.PAX_FORMAT else {}
            tf.addfile(info, io.BytesIO(os.urandom(size)))
    with tarfile.open(path) as tf:
        want = [(m.name, m.offset_data, m.size) for m in tf.getmembers()]
    with open(path, "rb") as fh:
        got = [(m.name, m.offset, m.size)
               for m in tar_members(fh.fileno(), path.stat().st_size, str(path))]
    assert got == want


def _tar_header(name: bytes, kind: bytes, size_field: bytes) -> bytes:
    hdr = bytearray(512)
    hdr[0:len(name)] = name
    hdr[124:136] = size_field
    hdr[156:157] = kind
    hdr[257:263] = b"ustar\0"
    hdr[148:156] = b" " * 8
    hdr[148:156] = f"{sum(hdr):06o}\0 ".encode()
    return bytes(hdr)


@pytest.mark.parametrize(("kind", "size_field", "field"), [
    (b"L", b"00000777777\0", "tar header.size"),               # a 128 KiB long name
    (b"0", b"\x80" + (1 << 40).to_bytes(11, "big"), "tar header.size"),  # base-256: 1 TiB
    (b"x", b"00000000100\0", "tar PAX header"),                 # a PAX record without length
])
def test_tar_index_bounds_every_size(tmp_path: Path, kind: bytes, size_field: bytes,
                                     field: str) -> None:
    path = tmp_path / "bad.ova"
    path.write_bytes(_tar_header(b"x.ovf", kind, size_field) + b"zz" * 64 + bytes(200 * 1024))
    with pytest.raises(FormatError) as exc:
        open_disk(path)
    assert exc.value.field == field


def test_one_sparse_file_named_by_many_extent_lines(images: dict[str, VmdkImage],
                                                    tmp_path: Path) -> None:
    shutil.copyfile(images["sparse"].path, tmp_path / "s.vmdk")
    lines = [f'RW {SIZE // 512} SPARSE "s.vmdk"'] * 1000
    d = tmp_path / "many.vmdk"
    d.write_text(descriptor("twoGbMaxExtentSparse", lines))
    ref = images["sparse"].reference.read_bytes()
    with open_disk(d) as disk:
        assert disk.size == 1000 * SIZE
        assert len({id(p.sparse) for p in disk.pieces}) == 1  # type: ignore[attr-defined]
        assert disk.read_at(0, SIZE) == ref and disk.read_at(999 * SIZE, SIZE) == ref
        ext = disk.extents()
        with open_disk(images["sparse"].path) as single:
            want = single.extents()
        assert intersect(ext, Extent(0, SIZE)) == want  # each line maps the same file
        assert intersect(ext, Extent(999 * SIZE, SIZE)) == [
            Extent(999 * SIZE + e.start, e.length) for e in want]


def test_disk_n_on_a_single_disk_image_is_refused(images: dict[str, VmdkImage]) -> None:
    with pytest.raises(UsageError, match="picks a disk of an OVA"):
        open_disk(images["stream"].path, disk=1)
    code, _, err = vhdkit("inspect", str(images["sparse"].path), "--disk", "2")
    assert code == 2 and "--disk 2" in err and err.count("\n") == 1
    with open_disk(images["ova"].path, disk=1) as d:  # an OVA of one disk takes --disk 1
        assert d.size == SIZE


def test_inspect_names_the_container(images: dict[str, VmdkImage]) -> None:
    for name, args, fmt in (("stream", [], "vmdk"), ("vmfs", [], "vmdk"),
                            ("ova-disk2", ["--disk", "2"], "ova")):
        code, out, err = vhdkit("inspect", "--json", str(images[name].path), *args)
        assert code == 0, err
        doc = json.loads(out)
        assert (doc["format"], doc["virtual_size"]) == (fmt, images[name].size)


def test_a_windows_parent_hint_finds_the_parent_beside_the_child(
        images: dict[str, VmdkImage], tmp_path: Path) -> None:
    child = _chain_copy(images, tmp_path / "c")
    data = bytearray(child.read_bytes())
    at, size = _get(child, 28, "<Q") * 512, _get(child, 36, "<Q") * 512
    text = bytes(data[at: at + size]).rstrip(b"\0")
    new = text.replace(b'parentFileNameHint="base.vmdk"',
                       b'parentFileNameHint="C:\\VMs\\old\\base.vmdk"')
    assert new != text
    data[at: at + size] = new.ljust(size, b"\0")
    child.write_bytes(bytes(data))
    with open_disk(child) as d:
        assert d.facts()["parent_hint"] == "C:\\VMs\\old\\base.vmdk"
        assert d.read_at(0, SIZE) == images["chain"].reference.read_bytes()


def test_pooled_inflating_reads_the_same_bytes(images: dict[str, VmdkImage],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmdk_sparse, "POOL_WORKERS", 3)  # the path machines with 4+ cores take
    img = images["stream-footer"]
    with open_disk(img.path) as d:
        assert d.read_at(0, d.size) == img.reference.read_bytes()


@pytest.mark.parametrize(("name", "member"), [("stream-footer", None), ("chain", None),
                                              ("ova-disk2", 2)])
def test_upload_streams_the_vmdk_as_a_fixed_vhd(images: dict[str, VmdkImage], name: str,
                                                member: int | None, azurite_url: str,
                                                container: ContainerClient) -> None:
    img = images[name]
    code, _, err = vhdkit("upload", str(img.path), "--emulator", azurite_url, "--container",
                          container.container_name, "--blob", "d.vhd", "-q", "--skip-preflight",
                          *(["--disk", str(member)] if member else []))
    assert code == 0, err
    got = container.get_blob_client("d.vhd").download_blob().readall()
    size = -(-img.size // MIB) * MIB
    assert len(got) == size + 512 and got[size: size + 8] == b"conectix"
    assert got[: img.size] == img.reference.read_bytes()
    assert not any(got[img.size: size])


def test_convert_refuses_to_write_over_an_extent_of_its_source(images: dict[str, VmdkImage],
                                                               tmp_path: Path) -> None:
    for name in ("flat", "2gb-sparse"):
        src = images[name].path
        with open_disk(src) as d:
            extent = d.extent_files[0]  # type: ignore[attr-defined]
        before = os.stat(extent).st_mtime_ns
        code, _, err = vhdkit("convert", str(src), extent, "--force")
        assert code == 2 and "holds data of the source disk" in err, err
        assert os.stat(extent).st_mtime_ns == before


def test_grain_tables_sharing_grains_are_refused(tmp_path: Path) -> None:
    # 2,048 grain tables whose even entries all point at one grain: 32 GiB of reads from 8 MiB
    p = qemu.create(tmp_path / "alt.vmdk", "vmdk", "64G")
    qemu.write(p, "vmdk", [(0, 64 * 1024, 0x5A)])
    for field in (56, 48):  # the primary directory and the redundant one
        gd = _get(p, field, "<Q") * 512
        with open(p, "r+b") as fh:
            fh.seek(gd)
            tables = np.frombuffer(fh.read(2048 * 4), dtype="<u4")
            fh.seek(int(tables[0]) * 512)
            grain = int(np.frombuffer(fh.read(4), dtype="<u4")[0])
            pattern = np.zeros(512, dtype="<u4")
            pattern[0::2] = grain
            for t in tables.tolist():
                fh.seek(t * 512)
                fh.write(pattern.tobytes())
    with pytest.raises(FormatError) as exc:
        open_disk(p)
    assert exc.value.field == "header.gd_offset" and "shared" in exc.value.problem


def test_coarsen_bounds_alternating_ranges_without_under_covering() -> None:
    starts = np.arange(0, 600_000, dtype=np.int64) * 2 * 65536
    ends = starts + 65536
    s, e = vmdk_sparse.coarsen(starts[::-1].copy(), ends[::-1].copy(), limit=1000)
    assert len(s) <= 1000 and np.all(s[1:] > e[:-1])
    covered = [Extent(a, b - a) for a, b in zip(s.tolist(), e.tolist(), strict=True)]
    want = [Extent(a, 65536) for a in starts[::997].tolist()]
    assert subtract(want, covered) == []
    s2, _ = vmdk_sparse.coarsen(starts[:5000], ends[:5000])  # under the bound: left as they are
    assert len(s2) == 5000


def test_convert_refuses_to_write_over_the_parent_of_its_source(
        images: dict[str, VmdkImage], tmp_path: Path) -> None:
    child = _chain_copy(images, tmp_path / "c")
    base = child.with_name("base.vmdk")
    before = base.read_bytes()
    code, _, err = vhdkit("convert", str(child), str(base), "--force")
    assert code == 2 and "parent disk" in err, err
    assert base.read_bytes() == before
