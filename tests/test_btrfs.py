"""Btrfs read offline: every file of a mkfs.btrfs image equals its source, compressed extents
equal what ``btrfs restore`` (btrfs-progs' own reader) extracts, subvolumes are entered and
mounted, damage is a finding, and the LZO decoder meets blocks made by the real ``lzop``."""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest

from fixtures import btrfs_images as bi
from fixtures import linux_disks as ld
from vhdkit.errors import PreflightError
from vhdkit.formats import open_disk
from vhdkit.preflight import open_filesystem, preflight_disk, scan_volumes
from vhdkit.preflight.btrfs import BtrfsFilesystem, name_hash, open_btrfs
from vhdkit.preflight.lzo import lzo1x_decompress

MiB = 1 << 20


def _config_text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    words = ["".join(rng.choice("ABCDEFGHIJ_") for _ in range(rng.randint(3, 12)))
             for _ in range(300)]
    lines = (f"CONFIG_{rng.choice(words)}={rng.choice('ymn')}\n" for _ in range(size // 8))
    return "".join(lines).encode()[:size]


@pytest.fixture(scope="session")
def tree_and_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("btrfs")
    tree = base / "tree"
    ld.write(tree, "etc/small.conf", "key=value\n")  # inline
    ld.write(tree, "boot/vmlinuz", os.urandom(300_000))  # regular extent
    ld.write(tree, "usr/lib/os-release", 'PRETTY_NAME="Fedora Linux 40"\n')
    os.symlink("../usr/lib/os-release", tree / "etc/os-release")
    os.symlink("/usr/lib", tree / "lib")
    os.symlink("loop", tree / "loop")
    for i in range(400):  # a directory spread over many leaves
        ld.write(tree, f"usr/share/many/file-{i:03d}", f"{i}\n")
    for algo in bi.COMPRESSION:
        ld.write(tree, f"etc/{algo}.txt", _config_text(len(algo), 100_000))
    image = base / "fs.img"
    bi.mkfs_btrfs(tree, image, 128, ld.UNREADABLE_UUID, "fedora")
    for algo in bi.COMPRESSION:
        bi.compress_file(image, f"/etc/{algo}.txt", algo)
    return tree, image


@pytest.fixture()
def fs(tree_and_image: tuple[Path, Path]) -> BtrfsFilesystem:
    return open_btrfs(bi.RawFile(tree_and_image[1]))


def test_every_file_and_directory_equals_its_source(tree_and_image: tuple[Path, Path],
                                                    fs: BtrfsFilesystem) -> None:
    tree, _ = tree_and_image
    for dirpath, dirnames, filenames in os.walk(tree):
        rel = "/" + str(Path(dirpath).relative_to(tree)).removeprefix(".")
        listed = fs.listdir(rel)
        assert listed == sorted(dirnames + filenames), rel
        for name in filenames:
            src = Path(dirpath) / name
            if src.is_symlink():
                continue
            path = f"{rel.rstrip('/')}/{name}"
            assert fs.kind(path) == "file"
            assert fs.read_file(path, 1 << 30) == src.read_bytes(), path


def test_symlinks_are_followed_and_loops_end(fs: BtrfsFilesystem) -> None:
    assert fs.read_text("/etc/os-release") == 'PRETTY_NAME="Fedora Linux 40"\n'
    assert fs.kind("/lib") == "dir" and fs.listdir("/lib") == ["os-release"]
    assert fs.kind("/loop") is None and fs.read_file("/loop") is None
    assert fs.read_file("/etc") is None and fs.listdir("/etc/small.conf") is None


@pytest.mark.parametrize("algo", sorted(bi.COMPRESSION))
def test_compressed_extents_read_as_btrfs_restore_reads_them(
        tree_and_image: tuple[Path, Path], fs: BtrfsFilesystem, algo: str,
        tmp_path: Path) -> None:
    tree, image = tree_and_image
    want = (tree / f"etc/{algo}.txt").read_bytes()
    assert bi.restore(image, f"/etc/{algo}.txt", tmp_path) == want  # the fixture is valid
    assert fs.read_file(f"/etc/{algo}.txt", 1 << 30) == want
    f = fs.open_file(f"/etc/{algo}.txt")
    assert f is not None
    f.seek(70_000)  # reads that start and end inside an extent
    assert f.read(5000) == want[70_000:75_000]


def test_partial_reads_of_a_regular_extent(tree_and_image: tuple[Path, Path],
                                           fs: BtrfsFilesystem) -> None:
    want = (tree_and_image[0] / "boot/vmlinuz").read_bytes()
    f = fs.open_file("/boot/vmlinuz")
    assert f is not None and f.get_size() == len(want)
    for at, n in ((0, 1), (4095, 2), (123_457, 70_000), (299_990, 100)):
        f.seek(at)
        assert f.read(n) == want[at:at + n]


def test_probe_names_and_identifies_it(tree_and_image: tuple[Path, Path]) -> None:
    from vhdkit.preflight import probe_filesystem

    probe = probe_filesystem(bi.RawFile(tree_and_image[1]))
    assert (probe.fstype, probe.uuid, probe.label) == ("btrfs", ld.UNREADABLE_UUID, "fedora")


def test_name_hash_matches_the_keys_mkfs_wrote(fs: BtrfsFilesystem) -> None:
    """DIR_ITEM keys carry btrfs_name_hash(name): lookups depend on computing the same."""
    from vhdkit.preflight.btrfs import DIR_ITEM, KMAX, _dir_entries

    items = fs.items(fs.tree_of(5), (256, DIR_ITEM, 0), (256, DIR_ITEM, KMAX))
    assert len(items) == len(fs.listdir("/") or []) > 3
    for key, data in items:
        for _loc, name in _dir_entries(data):
            assert key[2] == name_hash(name), name
    assert zlib.crc32(b"etc") != name_hash(b"etc")


def test_subvolume_entered_and_mounted_by_fstab(tmp_path: Path) -> None:
    """btrfs-convert keeps the ext4 image in subvolume ext2_saved; fstab mounts it."""
    path = ld.build("btrfs-converted", tmp_path)
    with open_disk(path) as disk:
        report = preflight_disk(disk)
        vol = scan_volumes(disk).volumes[0]
        assert vol.file is not None
        fs = open_filesystem(vol.file)
        assert isinstance(fs, BtrfsFilesystem)
        assert fs.listdir("/ext2_saved") == ["image"]  # a subvolume, entered like a directory
        image = fs.open_file("/ext2_saved/image")
        assert image is not None and image.get_size() == 160 * MiB
        image.seek(1024 + 56)
        assert image.read(2) == b"\x53\xef"  # the ext4 superblock, read across subvolumes
        sub = fs.subvolume("subvol=ext2_saved,ro")
        assert sub is not None and sub.listdir("/") == ["image"]
        by_id = fs.subvolume(f"ro,subvolid={sub.root_id}")
        assert by_id is not None and by_id.listdir("/") == ["image"]
        assert fs.subvolume("subvolid=5") is not None and fs.subvolume("subvolid=4242") is None
        assert fs.subvolume("subvol=nope") is None and fs.subvolume("defaults") is None
    assert report.ready and report.facts["mounts"] == {"/srv/ext4": "btrfs"}
    assert report.facts["root"] == "gpt partition 1 (linux), btrfs"


def test_damaged_tree_block_is_a_finding(tmp_path: Path) -> None:
    path = ld.build("generalized-btrfs", tmp_path)
    with open_disk(path) as base:
        vol = scan_volumes(base).volumes[0]
        assert vol.file is not None
        fs = open_btrfs(vol.file)
        at = vol.offset + fs.physical(fs.tree_of(5), fs.nodesize)
        disk = ld.OverlayDisk(base, {at + 200: b"\xa5" * 64})
        report = preflight_disk(disk)
    assert {f.id for f in report.problems} == {"fs.unreadable", "os.none"}
    bad = next(f for f in report.problems if f.id == "fs.unreadable")
    assert bad.evidence.startswith("btrfs: tree block") and "checksum mismatch" in bad.evidence


# -- LZO ------------------------------------------------------------------------------------

_RANDOM = os.urandom(20_000)
LZO_CASES = {
    "text": _config_text(7, 4096),  # what Btrfs gives LZO: one 4 KiB page at a time
    "runs": b"a" * 3000 + b"b" * 1096,  # long matches: length extensions
    "zeros": os.urandom(1500) + b"\0" * 1000 + os.urandom(96) + b"\0" * 1500,
    "far": _RANDOM + _RANDOM,  # matches 20000 bytes behind (M4)
    "short": b"hello " * 12,
}


@pytest.mark.parametrize("name", sorted(LZO_CASES))
def test_lzo_decodes_what_lzop_encodes(name: str) -> None:
    data = LZO_CASES[name]
    try:
        block = bi.lzo1x_blocks([data])[0]
    except ValueError:
        pytest.fail("lzop stored the page uncompressed")
    assert lzo1x_decompress(block, len(data)) == data


def test_lzo_refuses_malformed_input() -> None:
    data = _config_text(3, 4096)
    block = bi.lzo1x_blocks([data])[0]
    with pytest.raises(PreflightError, match="exceeds"):
        lzo1x_decompress(block, len(data) - 1)
    with pytest.raises(PreflightError, match=r"ends early|past the end"):
        lzo1x_decompress(block[:len(block) // 2], len(data))
    with pytest.raises(PreflightError, match="before the start"):
        lzo1x_decompress(bytes([0x11, 0x04, 0x00]), 100)  # an M4 match with nothing behind it


def test_damaged_but_checksummed_metadata_never_escapes_as_a_traceback(tmp_path: Path) -> None:
    """Random bytes in tree blocks whose checksums are then made right again: every field is
    bounds-checked, so pre-flight ends with a report (findings), never another exception."""
    import struct

    from vhdkit.preflight.btrfs import crc32c

    path = ld.build("generalized-btrfs", tmp_path)
    rng = random.Random(17)
    with open_disk(path) as base:
        vol = scan_volumes(base).volumes[0]
        assert vol.file is not None
        fs = open_btrfs(vol.file)
        assert fs.read_file("/boot/grub/grub.cfg") is not None
        assert fs.listdir("/etc") and fs.read_file("/etc/waagent.conf") is not None
        blocks = sorted(fs._cache)  # every tree block those reads visited
        outcomes = set()
        for _ in range(40):
            logical = rng.choice(blocks)
            raw = bytearray(fs._node(logical).raw)
            for _ in range(rng.randint(1, 6)):
                raw[rng.randrange(32, 400)] = rng.randrange(256)
            raw[0:4] = struct.pack("<I", crc32c(bytes(raw[32:])) ^ 0xFFFFFFFF)
            at = vol.offset + fs.physical(logical, fs.nodesize)
            report = preflight_disk(ld.OverlayDisk(base, {at: bytes(raw)}))
            outcomes.add(report.facts["os"])
    assert "linux" in outcomes  # some damage is beside what the rules read
