"""qcow2 read natively: qemu-img's raw conversion and map are the oracle for bytes and
allocation; construct-made headers for what qemu-img cannot make; seeded mutation fuzzing."""

from __future__ import annotations

import os
import random
import resource
import shutil
import threading
from pathlib import Path

import pytest

from fixtures import qemu
from fixtures.qcow2_images import (
    MIB,
    Qcow2Image,
    build_all,
    create,
    data_map,
    io,
    poke,
    read_header,
    run,
    set_header,
)
from tests.cli_helpers import vhdkit
from vhdkit.check import check_path
from vhdkit.errors import FormatError, ParentNotFound, UnsupportedDisk, VhdkitError
from vhdkit.extents import Extent, nonzero_runs, subtract
from vhdkit.formats import open_disk
from vhdkit.formats.qcow2 import Qcow2Disk

NAMES = ["v2", "v3-512", "v3-4k", "v3-2m", "deflate", "deflate-v2", "zstd", "zstd-4k",
         "extl2-zstd", "extl2-backing", "zero-over-backing", "scattered", "chain-raw-base",
         "chain-3", "backing-bigger", "snapshots"]


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Qcow2Image]:
    built = build_all(tmp_path_factory.mktemp("qcow2"))
    assert sorted(built) == sorted(NAMES)
    return built


@pytest.mark.parametrize("name", NAMES)
def test_reads_the_bytes_qemu_reads(name: str, images: dict[str, Qcow2Image]) -> None:
    img = images[name]
    ref = img.reference.read_bytes()
    with open_disk(img.path) as disk:
        assert disk.kind == "qcow2"
        assert disk.size == img.size == len(ref)
        assert disk.read_at(0, disk.size) == ref
        # unaligned pieces across cluster, subcluster and table edges, and past the end
        rnd = random.Random(name)
        for _ in range(40):
            off = rnd.randrange(disk.size)
            length = rnd.choice([1, 511, 4097, 70_000, 300_000])
            buf = bytearray(b"\xee" * length)
            disk.read_into(off, memoryview(buf))
            want = ref[off: off + length]
            assert bytes(buf) == want + bytes(length - len(want))


@pytest.mark.parametrize("name", NAMES)
def test_extents_are_qemus_allocation_map(name: str, images: dict[str, Qcow2Image]) -> None:
    """Data clusters (and the backing chain's) are in; unallocated and zero clusters are out."""
    img = images[name]
    with open_disk(img.path) as disk:
        ext = disk.extents()
    assert ext == data_map(img.path)
    ref = img.reference.read_bytes()
    nonzero = nonzero_runs(ref + bytes(-len(ref) % 512), 0)
    assert subtract(nonzero, ext) == []
    if name != "backing-bigger":  # its backing file is full
        assert sum(e.length for e in ext) < img.size  # sparse: not the whole disk


@pytest.mark.parametrize("name", NAMES)
def test_convert_then_qemu_compare(name: str, images: dict[str, Qcow2Image],
                                   tmp_path: Path) -> None:
    img = images[name]
    out = tmp_path / "out.vhd"
    code, _, err = vhdkit("convert", str(img.path), str(out))
    assert code == 0, err
    code, text = qemu.compare(img.path, "qcow2", out, "vpc")
    assert code == 0, text


@pytest.mark.parametrize("name", [n for n in NAMES if n in ("v2", "v3-512", "v3-4k", "v3-2m",
                                                             "deflate-v2", "snapshots")])
def test_libqcow_reads_the_same(name: str, images: dict[str, Qcow2Image]) -> None:
    import pyqcow

    img = images[name]
    f = pyqcow.file()
    f.open(str(img.path))
    try:
        theirs = f.read_buffer_at_offset(img.size, 0)
    finally:
        f.close()
    with open_disk(img.path) as disk:
        assert disk.read_at(0, img.size) == theirs


def test_reads_from_many_threads(images: dict[str, Qcow2Image]) -> None:
    """Upload reads from several threads: no shared file position, caches under a lock."""
    img = images["zstd-4k"]
    ref = img.reference.read_bytes()
    bad: list[int] = []
    with open_disk(img.path) as disk:
        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(150):
                off = rnd.randrange(0, img.size, 512)
                n = rnd.choice([512, 4096, 65536])
                if disk.read_at(off, n) != ref[off: off + n]:
                    bad.append(off)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert bad == []


def test_facts(images: dict[str, Qcow2Image]) -> None:
    with open_disk(images["snapshots"].path) as disk:
        f = disk.facts()
    assert (f["format"], f["subformat"], f["cluster_size"]) == ("qcow2", "v3", 65536)
    assert [(s["id"], s["name"], s["disk_size"]) for s in f["snapshots"]] == [
        ("1", "first", 8 * MIB), ("2", "second", 8 * MIB)]
    assert all(s["date"].startswith("20") and s["vm_state_size"] == 0 for s in f["snapshots"])
    assert (f["dirty"], f["corrupt"], f["refcount_order"]) == (False, False, 4)
    with open_disk(images["v2"].path) as disk:
        assert disk.facts()["subformat"] == "v2"
    with open_disk(images["extl2-zstd"].path) as disk:
        f = disk.facts()
        assert (f["compression_type"], f["extended_l2"]) == ("zstd", True)
    with open_disk(images["chain-3"].path) as disk:
        f = disk.facts()
        assert (f["backing_file"], f["backing_format"]) == ("mid.qcow2", "qcow2")
        assert [d.kind for d in disk.chain()] == ["qcow2", "qcow2", "raw"]
        assert disk.chain()[2].path.endswith("lower/base.raw")


def test_extents_read_only_the_tables(tmp_path: Path) -> None:
    """A 1 TiB image with a few clusters: extents() reads the L1 and the allocated L2 tables."""
    path = create(tmp_path / "big.qcow2", "1T")
    io(path, "write -P 1 0 64k", "write -P 2 549755813888 64k", "write -P 3 1099511562240 64k")
    before = _rchar()
    with open_disk(path) as disk:
        ext = disk.extents()
    read = _rchar() - before
    assert ext == [Extent(0, 65536), Extent(1 << 39, 65536), Extent((1 << 40) - 65536, 65536)]
    # L1 = 16 KiB, three L2 tables of 64 KiB each, the header and the detection probe
    assert read < 300_000


def _rchar() -> int:
    with open("/proc/self/io") as fh:
        return int(next(x for x in fh if x.startswith("rchar:")).split()[1])


# -- backing files ------------------------------------------------------------------------


def test_parent_override_and_backing_rules(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2", 4 * MIB)
    io(base, "write -P 0x31 0 4M")
    child = create(tmp_path / "child.qcow2", 4 * MIB, backing="base.qcow2")
    io(child, "write -P 0x32 1M 64k")
    ref = qemu.to_raw(child, "qcow2", tmp_path / "ref.raw").read_bytes()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(base, moved / "renamed.qcow2")
    with pytest.raises(ParentNotFound, match=r"backing file 'base\.qcow2' not found"):
        open_disk(child)
    code, _, err = vhdkit("inspect", str(child))
    assert code == 2 and "--parent" in err
    with open_disk(child, parent=moved / "renamed.qcow2") as disk:
        assert disk.read_at(0, disk.size) == ref
    out = tmp_path / "o.vhd"
    code, _, err = vhdkit("convert", "--parent", str(moved / "renamed.qcow2"), str(child),
                          str(out))
    assert code == 0, err
    assert qemu.to_raw(out, "vpc", tmp_path / "o.raw").read_bytes()[: len(ref)] == ref
    # the header says qcow2: a raw file in its place is a mismatch
    (tmp_path / "base.qcow2").write_bytes(bytes(4 * MIB))
    with pytest.raises(ParentNotFound, match="header names its format as 'qcow2'"):
        open_disk(child)
    # a file that is not a disk at all
    (tmp_path / "base.qcow2").write_bytes(b"\x1f\x8b\x08" + bytes(1000))
    with pytest.raises(ParentNotFound, match="gzip"):
        open_disk(child)


def test_raw_backing_named_raw_but_holding_qcow2_is_refused(tmp_path: Path) -> None:
    create(tmp_path / "inner.qcow2", MIB)
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "inner.qcow2", "-F", "raw",
        str(tmp_path / "c.qcow2"), "1M", cwd=tmp_path)
    with pytest.raises(ParentNotFound, match="is a qcow2 image, but the qcow2 header names its "
                                             "format as 'raw'"):
        open_disk(tmp_path / "c.qcow2")


@pytest.mark.parametrize("name", ["../../etc/hostname", "/etc/passwd", "../outside.raw"])
def test_backing_outside_the_directory_is_refused(name: str, tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    (tmp_path / "a" / "outside.raw").write_bytes(bytes(MIB))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", name, "-F", "raw",
        str(d / "c.qcow2"), "1M", cwd=d)
    with pytest.raises(ParentNotFound, match="outside the disk's directory"):
        open_disk(d / "c.qcow2")
    code, out, err = vhdkit("inspect", str(d / "c.qcow2"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_backing_loop_is_refused(tmp_path: Path) -> None:
    b = create(tmp_path / "b.qcow2", MIB)
    a = create(tmp_path / "a.qcow2", MIB, backing="b.qcow2")
    run("qemu-img", "rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", str(b), cwd=tmp_path)
    with pytest.raises(ParentNotFound, match="loops back"):
        open_disk(a)
    # a file naming itself
    poke(b, read_header(b)["backing_file_offset"], b"b.qcow2")
    set_header(b, backing_file_size=7)
    with pytest.raises(ParentNotFound, match="loops back"):
        open_disk(b)


# -- what qemu-img cannot make: damaged tables, huge counts, refused features --------------


@pytest.fixture()
def plain(tmp_path: Path) -> Path:
    path = create(tmp_path / "p.qcow2", 4 * MIB, "cluster_size=4096")
    io(path, "write -P 0x11 0 8k", "write -P 0x12 2M 4k")
    return path


def _l1(path: Path) -> tuple[int, int]:
    """(offset of the L1 table, offset of the first L2 table)"""
    h = read_header(path)
    raw = path.read_bytes()
    first = int.from_bytes(raw[h["l1_table_offset"]: h["l1_table_offset"] + 8], "big")
    return h["l1_table_offset"], first & 0x00FF_FFFF_FFFF_FE00


def _error(path: Path) -> FormatError:
    with pytest.raises(FormatError) as info, open_disk(path) as disk:
        disk.extents()
        disk.read_at(0, disk.size)
    return info.value


def test_l1_entry_past_eof(plain: Path) -> None:
    l1, _ = _l1(plain)
    poke(plain, l1, (0x8000_0000_0000_0000 | (1 << 40)).to_bytes(8, "big"))
    err = _error(plain)
    assert (err.field, err.offset) == ("l1_table[0]", l1)
    assert "past the end of the file" in err.problem


def test_l1_entry_unaligned(plain: Path) -> None:
    l1, l2 = _l1(plain)
    poke(plain, l1, (l2 + 512).to_bytes(8, "big"))
    assert _error(plain).field == "l1_table[0]"


def test_l2_entry_past_eof_and_unaligned(plain: Path) -> None:
    _, l2 = _l1(plain)
    poke(plain, l2 + 8, (1 << 45).to_bytes(8, "big"))
    err = _error(plain)
    assert (err.field, err.offset) == ("l2_table[0][1]", l2 + 8)
    poke(plain, l2 + 8, (4096 * 3 + 512).to_bytes(8, "big"))
    assert "not aligned" in _error(plain).problem


def test_l2_run_past_eof_names_its_first_entry_past_it(plain: Path) -> None:
    """Entries that each name the next host cluster are checked at the ends of their run; the
    error still names the first entry whose cluster lies past the end of the file."""
    _, l2 = _l1(plain)
    size = plain.stat().st_size
    first = int.from_bytes(plain.read_bytes()[l2: l2 + 8], "big") & 0x00FF_FFFF_FFFF_FE00
    poke(plain, l2, b"".join(((1 << 63) | (first + k * 4096)).to_bytes(8, "big")
                             for k in range(64)))
    k = -(-(size - first) // 4096)  # the first entry whose host cluster starts past the end
    assert 0 < k < 64
    err = _error(plain)
    assert (err.field, err.offset) == (f"l2_table[0][{k}]", l2 + 8 * k)
    assert "past the end of the file" in err.problem


def test_compressed_cluster_garbage(plain: Path) -> None:
    _, l2 = _l1(plain)
    poke(plain, l2, ((1 << 62) | 4096).to_bytes(8, "big"))  # "compressed" data at the L1
    err = _error(plain)
    assert err.field == "compressed_cluster" and "decompress" in err.problem


@pytest.mark.parametrize(("fields", "field"), [
    ({"l1_size": 0xFFFF_FFFF}, "header.l1_size"),
    ({"l1_size": 1 << 22}, "header.l1_table_offset"),
    ({"l1_size": 0}, "header.l1_size"),
    ({"size": 1 << 62}, "header.l1_size"),
    ({"l1_table_offset": 1 << 50}, "header.l1_table_offset"),
    ({"l1_table_offset": 4097}, "header.l1_table_offset"),
    ({"cluster_bits": 8}, "header.cluster_bits"),
    ({"cluster_bits": 22}, "header.cluster_bits"),
    ({"cluster_bits": 0xFFFF_FFFF}, "header.cluster_bits"),
    ({"nb_snapshots": 0xFFFF_FFFF}, "header.nb_snapshots"),
    ({"nb_snapshots": 3}, "snapshot[0]"),
    ({"backing_file_offset": 1 << 40, "backing_file_size": 8}, "header.backing_file_offset"),
    ({"backing_file_offset": 200, "backing_file_size": 5000}, "header.backing_file_size"),
    ({"header_length": 1 << 30}, "header.header_length"),
    ({"refcount_order": 7}, "header.refcount_order"),
    ({"crypt_method": 9}, "header.crypt_method"),
])
def test_damaged_header_fields(plain: Path, fields: dict[str, int], field: str) -> None:
    if fields.get("nb_snapshots") == 3:
        fields = {**fields, "snapshots_offset": plain.stat().st_size - 4096}
    set_header(plain, **fields)
    err = _error(plain)
    assert err.field.startswith(field), err
    code, out, stderr = vhdkit("inspect", str(plain))
    assert code == 2 and out == "" and len(stderr.strip().splitlines()) == 1
    assert field in stderr


@pytest.mark.parametrize(("fields", "words"), [
    ({"crypt_method": 1}, "encrypted qcow2 image (AES"),
    ({"crypt_method": 2}, "encrypted qcow2 image (LUKS)"),
    ({"incompatible_features": 1 << 2}, "external data file"),
    ({"incompatible_features": (1 << 9) | (1 << 5)}, "unnamed (bit 5), unnamed (bit 9)"),
    ({"version": 1}, "qcow (version 1)"),
    ({"version": 4}, "qcow of an unknown version"),
])
def test_refused_by_name(plain: Path, fields: dict[str, int], words: str) -> None:
    set_header(plain, **fields)
    with pytest.raises(UnsupportedDisk, match=words.replace("(", r"\(").replace(")", r"\)")):
        open_disk(plain)
    code, _, err = vhdkit("inspect", str(plain))
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err


def test_unknown_feature_named_from_the_table(plain: Path) -> None:
    """qemu writes a feature name table; a future bit is refused with its name."""
    table = bytes([0, 6]) + b"shiny new thing".ljust(46, b"\0")
    poke(plain, 112, (0x6803F857).to_bytes(4, "big") + (48).to_bytes(4, "big") + table
         + bytes(8))
    set_header(plain, incompatible_features=1 << 6)
    with pytest.raises(UnsupportedDisk, match=r"shiny new thing \(bit 6\)"):
        open_disk(plain)


def test_qemu_made_refusals(tmp_path: Path) -> None:
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", "ext.qcow2",
        "1M", cwd=tmp_path)
    with pytest.raises(UnsupportedDisk, match=r"external data file \('data.raw'\)"):
        open_disk(tmp_path / "ext.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=s0,data=abc", "-o",
        "encrypt.format=aes,encrypt.key-secret=s0", "aes.qcow2", "1M", cwd=tmp_path)
    code, _, err = vhdkit("inspect", str(tmp_path / "aes.qcow2"))
    assert code == 2 and "encrypted qcow2 image" in err


def test_dirty_and_corrupt_bits(plain: Path) -> None:
    with open_disk(plain) as disk:
        assert isinstance(disk, Qcow2Disk) and not disk.dirty and not disk.corrupt
    rules = {f.id: f for f in check_path(plain).findings}
    assert rules["qcow2.dirty"].passed and rules["qcow2.corrupt"].passed
    set_header(plain, incompatible_features=3)
    with open_disk(plain) as disk:
        f = disk.facts()
        assert (f["dirty"], f["corrupt"]) == (True, True)
    rules = {f.id: f for f in check_path(plain).findings}
    assert (rules["qcow2.dirty"].passed, rules["qcow2.dirty"].severity) == (False, "warning")
    assert (rules["qcow2.corrupt"].passed, rules["qcow2.corrupt"].severity) == (False, "error")
    assert "qemu-img check -r all" in rules["qcow2.corrupt"].fix


# -- mutation fuzzing ---------------------------------------------------------------------


def _fuzz_bases(work: Path) -> list[tuple[bytes, list[int]]]:
    """Small images of every kind, with the offsets of their header, L1 and L2 tables."""
    out = []
    for name, opts, compress in (("plain", ["cluster_size=4096"], False),
                                 ("v2", ["compat=0.10", "cluster_size=4096"], False),
                                 ("zstd", ["compression_type=zstd", "cluster_size=4096"], True),
                                 ("deflate", ["cluster_size=4096"], True),
                                 ("extl2", ["extended_l2=on", "cluster_size=16384"], False)):
        path = create(work / f"{name}.qcow2", 512 * 1024, *opts)
        io(path, "write -P 0x11 0 8k", "write -P 0x12 100000 5000", "write -z 200k 8k",
           "write -P 0x13 300k 1k")
        if compress:
            packed = work / f"{name}-c.qcow2"
            run("qemu-img", "convert", "-c", "-O", "qcow2", "-o", ",".join(opts), str(path),
                str(packed))
            path = packed
        run("qemu-img", "snapshot", "-c", "s1", str(path))
        io(path, "write -P 0x14 4k 4k")
        h = read_header(path)
        raw = path.read_bytes()
        cs = 1 << h["cluster_bits"]
        l1 = h["l1_table_offset"]
        spots = list(range(0, 112)) + list(range(l1, l1 + 16))
        l2 = int.from_bytes(raw[l1: l1 + 8], "big") & 0x00FF_FFFF_FFFF_FE00
        spots += list(range(l2, l2 + min(cs, 1024)))
        spots += list(range(h["snapshots_offset"], h["snapshots_offset"] + 64))
        out.append((raw, spots))
    return out


def _exercise(path: Path) -> None:
    try:
        with open_disk(path) as disk:
            ext = disk.extents()
            disk.read_at(0, 64 * 1024)
            for e in ext[:3]:
                disk.read_at(e.start, min(e.length, 32 * 1024))
            disk.facts()
    except VhdkitError:
        pass


def test_mutation_fuzz(tmp_path: Path) -> None:
    """>= 10,000 seeded mutations of headers, L1/L2 tables and snapshot tables: only vhdkit's
    errors come out (a traceback fails the test), and no read is sized by a damaged field."""
    bases = _fuzz_bases(tmp_path)
    rnd = random.Random(20261202)
    path = tmp_path / "m.qcow2"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    examples = 0
    for i in range(10_500):
        raw, spots = bases[i % len(bases)]
        buf = bytearray(raw)
        for _ in range(rnd.choice([1, 1, 2, 3, 6])):
            at = rnd.choice(spots) if rnd.random() < 0.9 else rnd.randrange(len(buf))
            how = rnd.random()
            if how < 0.5:
                buf[at] = rnd.randrange(256)
            elif how < 0.7:
                buf[at] ^= 1 << rnd.randrange(8)
            else:  # a whole big-endian word of an extreme value
                word = rnd.choice([0, 1, 0xFF, 1 << 31, (1 << 32) - 1, 1 << 62, 1 << 63,
                                   (1 << 64) - 1, rnd.getrandbits(64)])
                at -= at % 4
                buf[at: at + 8] = word.to_bytes(8, "big")
        if rnd.random() < 0.05:
            del buf[rnd.randrange(len(buf)):]
        # rewritten in place: truncating and refilling a file per example costs more than the
        # example itself
        os.pwrite(fd, buf, 0)
        os.ftruncate(fd, len(buf))
        _exercise(path)
        examples += 1
    os.close(fd)
    assert examples >= 10_000
    # no allocation sized by a damaged field: peak memory grew by far less than one such
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert grown < 200 * MIB


def test_mutated_files_through_the_cli(tmp_path: Path) -> None:
    bases = _fuzz_bases(tmp_path)
    rnd = random.Random(7)
    seen = 0
    for i in range(400):
        raw, _ = bases[i % len(bases)]
        buf = bytearray(raw)
        l1 = int.from_bytes(buf[40:48], "big")
        field = rnd.choice([20, 36, 44, 60, 68, l1, l1 + 4])
        buf[field: field + 4] = rnd.getrandbits(32).to_bytes(4, "big")
        path = tmp_path / f"cli-{i}.qcow2"
        path.write_bytes(bytes(buf))
        try:
            with open_disk(path) as disk:
                disk.extents()
            continue
        except VhdkitError:
            pass
        code, out, err = vhdkit("inspect", str(path))
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        seen += 1
        if seen == 8:
            break
    assert seen == 8


def test_convert_refuses_to_overwrite_a_backing_file(images: dict[str, Qcow2Image]) -> None:
    top = images["chain-3"].path
    base = top.parent / "lower" / "base.raw"
    before = base.read_bytes()
    code, _, err = vhdkit("convert", "--force", str(top), str(base))
    assert code != 0 and "parent disk" in err
    assert base.read_bytes() == before


def test_backing_chain_depth_is_limited(tmp_path: Path) -> None:
    """A chain one disk longer than the limit is refused (files made by patching the backing
    name of one qemu-made child: qemu-img would take seconds for 130 images)."""
    from vhdkit.formats.opener import MAX_PARENT_DEPTH

    create(tmp_path / "d000.qcow2", MIB)
    child = create(tmp_path / "d001.qcow2", MIB, backing="d000.qcow2")
    at = read_header(child)["backing_file_offset"]
    raw = bytearray(child.read_bytes())
    for i in range(2, MAX_PARENT_DEPTH + 2):
        raw[at: at + 10] = f"d{i - 1:03}.qcow2".encode()
        (tmp_path / f"d{i:03}.qcow2").write_bytes(raw)
    with open_disk(tmp_path / f"d{MAX_PARENT_DEPTH:03}.qcow2") as disk:
        assert len(disk.chain()) == MAX_PARENT_DEPTH + 1
    with pytest.raises(ParentNotFound, match=f"limit of {MAX_PARENT_DEPTH} disks"):
        open_disk(tmp_path / f"d{MAX_PARENT_DEPTH + 1:03}.qcow2")


# -- differential fuzzing of the table decoder ---------------------------------------------

def _reference_map(path: Path) -> dict[int, tuple[str, int, int]] | None:
    """The qcow2 specification read entry by entry, as plainly as possible: cluster index ->
    (kind, host offset, subcluster bitmap) for every cluster with an L2 entry that is not
    unallocated, or None when a table entry is invalid by the rules vhdkit enforces."""
    h = read_header(path)
    raw = path.read_bytes()
    cb = h["cluster_bits"]
    cs = 1 << cb
    ext = bool(h.get("incompatible_features", 0) & (1 << 4))
    width = 16 if ext else 8
    per_table = cs // width
    clusters = -(-h["size"] // cs)
    shift = 62 - (cb - 8)
    out: dict[int, tuple[str, int, int]] = {}
    for t in range(-(-clusters // per_table)):
        at = h["l1_table_offset"] + 8 * t
        table = int.from_bytes(raw[at: at + 8], "big") & 0x00FF_FFFF_FFFF_FE00
        if table == 0:
            continue
        if table % cs or table + cs > len(raw):
            return None
        for j in range(min(per_table, clusters - t * per_table)):
            e = int.from_bytes(raw[table + width * j: table + width * j + 8], "big")
            bm = int.from_bytes(raw[table + width * j + 8: table + width * j + 16], "big")
            c = t * per_table + j
            if e & (1 << 62):
                if e & ((1 << shift) - 1) >= len(raw):
                    return None
                out[c] = ("compressed", e & ((1 << shift) - 1), 0)
                continue
            host = e & 0x00FF_FFFF_FFFF_FE00
            if ext:
                alloc, zero = bm & 0xFFFF_FFFF, bm >> 32
                if alloc & zero or (host == 0 and alloc):
                    return None
                kind = ("data" if alloc == 0xFFFF_FFFF else "zero" if zero == 0xFFFF_FFFF
                        else "mixed" if alloc | zero else None)
            elif e & 1:
                if h["version"] == 2:
                    return None
                kind = "zero"
            else:
                kind = "data" if host else None
            if kind in ("data", "mixed") and (host % cs or host >= len(raw)):
                return None
            if kind is not None:
                out[c] = (kind, host, bm)
    return out


def _reference_bytes(raw: bytes, cs: int, kind: str, host: int, bm: int) -> bytes:
    if kind == "zero":
        return bytes(cs)
    if kind == "data":
        return raw[host: host + cs].ljust(cs, b"\0")
    sub = cs // 32  # mixed: allocated subclusters from the file, the rest zeros (no backing)
    return b"".join(raw[host + k * sub: host + (k + 1) * sub].ljust(sub, b"\0")
                    if bm >> k & 1 else bytes(sub) for k in range(32))


def _run_bases(work: Path) -> list[tuple[bytes, list[int]]]:
    """Images whose L2 tables hold long runs of data clusters in host order, broken by a zero
    cluster and by clusters written out of order, with the offsets of those entries."""
    out = []
    for name, opts in (("runs", ["cluster_size=4096"]), ("runs-v2", ["compat=0.10",
                                                                     "cluster_size=4096"])):
        path = create(work / f"{name}.qcow2", 512 * 1024, *opts)
        io(path, "write -P 0x21 0 96k", "write -P 0x22 160k 40k", "write -P 0x23 120k 8k",
           "write -P 0x24 100k 4k", "write -P 0x25 300k 60k")
        if "compat=0.10" not in opts:
            io(path, "write -z 32k 4k")
        h = read_header(path)
        raw = path.read_bytes()
        l1 = h["l1_table_offset"]
        l2 = int.from_bytes(raw[l1: l1 + 8], "big") & 0x00FF_FFFF_FFFF_FE00
        out.append((raw, list(range(l2 + 8, l2 + 8 * 128))))
    return out


def test_decoder_matches_an_entry_by_entry_reading(tmp_path: Path) -> None:
    """Mutated tables (bytes, whole entries, and entries made to follow their neighbour, which
    the decoder measures in runs): vhdkit refuses exactly the images the plain entry-by-entry
    reading of the specification finds invalid, and otherwise maps and reads every cluster as
    it does (compressed clusters: mapped, their bytes checked elsewhere)."""
    bases = _fuzz_bases(tmp_path) + _run_bases(tmp_path)
    rnd = random.Random(20261203)
    path = tmp_path / "d.qcow2"
    accepted = refused = 0
    for i in range(1500):
        raw, spots = bases[i % len(bases)]
        h_raw = bytearray(raw)
        table_spots = [s for s in spots if s >= 120]
        for _ in range(rnd.choice([1, 2, 4, 8])):
            at = rnd.choice(table_spots) // 8 * 8
            how = rnd.random()
            if how < 0.4:  # an entry one cluster past the previous one: a run to measure
                prev = int.from_bytes(h_raw[at - 8: at], "big")
                step = rnd.choice([4096, 16384, 512, 0])
                h_raw[at: at + 8] = ((prev + step) % (1 << 64)).to_bytes(8, "big")
            elif how < 0.7:
                h_raw[at + rnd.randrange(8)] = rnd.randrange(256)
            else:
                h_raw[at: at + 8] = rnd.choice(
                    [0, 1, 1 << 63, (1 << 63) | 4096 * rnd.randrange(64),
                     rnd.getrandbits(64)]).to_bytes(8, "big")
        path.write_bytes(bytes(h_raw))
        try:
            disk = open_disk(path)
        except VhdkitError:
            continue  # a damaged header or L1 entry: the header tests cover these
        with disk:
            want = _reference_map(path)
            try:
                got = disk.extents()
            except FormatError:
                assert want is None, f"example {i}: vhdkit refused what the reference reads"
                refused += 1
                continue
            assert want is not None, f"example {i}: vhdkit read what the reference refuses"
            accepted += 1
            cs = disk.header.cluster_size
            mapped = {c for c, (kind, _, bm) in want.items() if kind != "zero"
                      and (kind != "mixed" or bm & 0xFFFF_FFFF)}
            covered = {off // cs for e in got for off in range(e.start, e.end, 512)}
            assert covered == mapped, f"example {i}"
            for c, (kind, host, bm) in want.items():
                if kind != "compressed":
                    assert disk.read_at(c * cs, cs) == _reference_bytes(
                        bytes(h_raw), cs, kind, host, bm), f"example {i}, cluster {c}"
    assert accepted > 300 and refused > 100, (accepted, refused)  # both sides were exercised
