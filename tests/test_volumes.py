"""Partition tables (MBR, extended, GPT with both headers), LVM2 and encryption detection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import linux_disks as ld
from vhdkit.errors import VhdkitError
from vhdkit.extents import Extent
from vhdkit.formats import VirtualDisk, open_disk
from vhdkit.preflight import FileView, preflight_disk, probe_filesystem, scan_volumes
from vhdkit.preflight.tables import GPT_HEADER, MBR, SECTOR, build_gpt, build_mbr

MiB = 1 << 20


class BytesDisk(VirtualDisk):
    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytes(data)
        self.path = "memory"

    @property
    def size(self) -> int:
        return len(self.data)

    def extents(self) -> list[Extent]:
        return [Extent(0, len(self.data))]

    def _read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("volumes")
    return {n: ld.build(n, out) for n in ("generalized-gpt", "generalized-mbr-extended",
                                          "generalized-lvm", "data-disk", "swap")}


def _gpt_disk(parts: list[dict[str, object]], mib: int = 8) -> bytearray:
    sectors = mib * MiB // SECTOR
    primary, backup = build_gpt(sectors, parts)
    buf = bytearray(mib * MiB)
    buf[:len(primary)] = primary
    buf[len(buf) - len(backup):] = backup
    return buf


PARTS: list[dict[str, object]] = [
    {"type": "efi-system", "first_lba": 2048, "last_lba": 4095, "name": "EFI"},
    {"type": "linux", "first_lba": 4096, "last_lba": 12287, "name": "root"},
]


def test_mbr_and_gpt_structs_round_trip() -> None:
    raw = build_mbr([{"status": 0x80, "type": 0x83, "lba_start": 2048, "sectors": 4096}])
    assert len(raw) == 512 and raw[510:] == b"\x55\xaa"
    assert MBR.build(MBR.parse(raw)) == raw
    buf = _gpt_disk(PARTS)
    hdr = GPT_HEADER.parse(bytes(buf[512:1024]))
    assert (hdr.current_lba, hdr.backup_lba, hdr.num_entries) == (1, 16383, 128)
    assert GPT_HEADER.build(hdr) == bytes(buf[512:512 + 92])


def test_gpt_partitions_with_names_and_types() -> None:
    scan = scan_volumes(BytesDisk(_gpt_disk(PARTS)))
    assert scan.scheme == "gpt" and scan.findings == []
    assert [(v.number, v.offset, v.length, v.type_name, v.name) for v in scan.volumes] == [
        (1, 2048 * 512, 2048 * 512, "efi-system", "EFI"),
        (2, 4096 * 512, 8192 * 512, "linux", "root")]


def test_gpt_primary_corrupt_uses_backup() -> None:
    buf = _gpt_disk(PARTS)
    buf[600] ^= 0xFF  # inside the primary header: CRC mismatch
    scan = scan_volumes(BytesDisk(buf))
    assert [f.id for f in scan.findings] == ["volume.gpt.primary-corrupt"]
    assert "CRC32 mismatch" in scan.findings[0].evidence
    assert [v.name for v in scan.volumes] == ["EFI", "root"]


def test_gpt_entry_array_crc_checked() -> None:
    buf = _gpt_disk(PARTS)
    buf[1024 + 56] ^= 0x01  # a name byte in the primary entry array
    scan = scan_volumes(BytesDisk(buf))
    assert [f.id for f in scan.findings] == ["volume.gpt.primary-corrupt"]
    assert "entry array CRC32" in scan.findings[0].evidence


def test_gpt_backup_missing_is_a_warning() -> None:
    buf = _gpt_disk(PARTS)
    buf[-512:] = bytes(512)
    scan = scan_volumes(BytesDisk(buf))
    assert [(f.id, f.severity) for f in scan.findings] == [("volume.gpt.backup-corrupt",
                                                            "warning")]
    assert len(scan.volumes) == 2


def test_gpt_both_headers_corrupt_is_an_error_finding() -> None:
    buf = _gpt_disk(PARTS)
    buf[520] ^= 0xFF
    buf[-500] ^= 0xFF
    scan = scan_volumes(BytesDisk(buf))
    assert [(f.id, f.severity) for f in scan.findings] == [("volume.gpt.corrupt", "error")]
    assert scan.volumes == []
    report = preflight_disk(BytesDisk(buf))
    assert not report.ready


def test_gpt_partition_past_the_end_is_reported() -> None:
    parts = [*PARTS, {"type": "linux", "first_lba": 12288, "last_lba": 99999, "name": "big"}]
    scan = scan_volumes(BytesDisk(_gpt_disk(parts)))
    assert [f.id for f in scan.findings] == ["volume.partition.out-of-range"]
    assert scan.volumes[-1].offset + scan.volumes[-1].length == 8 * MiB


def test_mbr_extended_partitions_are_numbered_from_5(images: dict[str, Path]) -> None:
    with open_disk(images["generalized-mbr-extended"]) as disk:
        scan = scan_volumes(disk)
        assert scan.scheme == "mbr" and scan.findings == []
        assert [(v.number, v.type_id) for v in scan.volumes] == [(1, "0x83"), (5, "0x83")]
        assert [probe_filesystem(v.file).label for v in scan.volumes  # type: ignore[arg-type]
                ] == ["boot", "rootfs"]


def test_ebr_loop_stops_with_a_finding() -> None:
    buf = bytearray(4 * MiB)
    buf[:512] = build_mbr([{"type": 0x05, "lba_start": 2048, "sectors": 4096}])
    # EBR whose link points back at itself.
    ebr = build_mbr([{"type": 0x83, "lba_start": 63, "sectors": 100},
                     {"type": 0x05, "lba_start": 0 + 1, "sectors": 10}], disk_signature=0)
    buf[2048 * 512:2049 * 512] = ebr
    buf[2049 * 512:2050 * 512] = build_mbr([{"type": 0x83, "lba_start": 63, "sectors": 100},
                                            {"type": 0x05, "lba_start": 1, "sectors": 10}], 0)
    scan = scan_volumes(BytesDisk(buf))
    assert "volume.ebr.invalid" in [f.id for f in scan.findings]
    assert [v.number for v in scan.volumes] == [5, 6]


def test_mbr_partition_outside_disk() -> None:
    buf = bytearray(2 * MiB)
    buf[:512] = build_mbr([{"type": 0x83, "lba_start": 99999, "sectors": 10}])
    scan = scan_volumes(BytesDisk(buf))
    assert [f.id for f in scan.findings] == ["volume.partition.out-of-range"]
    assert scan.volumes == []


def test_lvm_pv_written_by_the_fixture_is_read_by_libvslvm(images: dict[str, Path]) -> None:
    with open_disk(images["generalized-lvm"]) as disk:
        scan = scan_volumes(disk)
        assert scan.findings == []
        lvs = [v for v in scan.volumes if v.scheme == "lvm"]
        assert [(v.name, v.length) for v in lvs] == [("vg0/root", 64 * MiB)]
        probe = probe_filesystem(lvs[0].file)  # type: ignore[arg-type]
        assert (probe.fstype, probe.uuid) == ("ext4", ld.UUIDS["root"])


def test_swap_partition_and_signature(images: dict[str, Path]) -> None:
    with open_disk(images["swap"]) as disk:
        scan = scan_volumes(disk)
        swap = [v for v in scan.volumes if v.type_name == "linux-swap"]
        assert len(swap) == 1
        assert probe_filesystem(swap[0].file).uuid == ld.UUIDS["swap"]  # type: ignore[arg-type]


def test_bitlocker_and_luks_signatures() -> None:
    buf = _gpt_disk(PARTS)
    buf[2048 * 512 + 3:2048 * 512 + 11] = b"-FVE-FS-"
    buf[4096 * 512:4096 * 512 + 6] = b"LUKS\xba\xbe"
    disk = BytesDisk(buf)
    assert [v.encryption for v in scan_volumes(disk).volumes] == ["bitlocker", "luks"]
    report = preflight_disk(disk)
    enc = [f for f in report.findings if f.id == "volume.encrypted"]
    assert [f.severity for f in enc] == ["error", "error"]
    assert "-FVE-FS-" in enc[0].evidence and "LUKS" in enc[1].evidence
    assert not report.ready


def test_fileview_is_a_bounded_file_object() -> None:
    disk = BytesDisk(bytes(range(256)) * 16)
    fv = FileView(disk, 100, 50)
    assert fv.get_size() == 50 and fv.read(10) == bytes(range(100, 110))
    assert fv.tell() == 10
    fv.seek(-5, 2)
    assert fv.read() == bytes(range(145, 150)) and fv.read(3) == b""
    assert FileView(disk, 4000, 500).get_size() == 96  # clipped at the disk end
    with pytest.raises(OSError):
        fv.seek(-1)


def test_whole_disk_filesystem_without_table(images: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "t"
    ld.write(tree, "hello.txt", "hi\n")
    ld.mkfs_ext4(tree, tmp_path / "fs.img", 8, ld.UUIDS["data"])
    with open_disk(tmp_path / "fs.img") as disk:
        scan = scan_volumes(disk)
        assert scan.scheme == "none" and [v.scheme for v in scan.volumes] == ["disk"]
        report = preflight_disk(disk)
        assert report.ready and [f.id for f in report.problems] == ["os.none"]


# -- mutated partition tables: findings or vhdkit errors, never a crash --------------------

@pytest.fixture(scope="session")
def base_disk(images: dict[str, Path]) -> VirtualDisk:
    return open_disk(images["data-disk"])


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_partition_tables_never_crash(base_disk: VirtualDisk, data: st.DataObject) -> None:
    """Protective MBR, both GPT headers and entry arrays mutated: findings, never a crash."""
    size = base_disk.size
    regions = [(0, 34 * SECTOR), (size - 33 * SECTOR, 33 * SECTOR)]
    patches: dict[int, bytes] = {}
    for _ in range(data.draw(st.integers(1, 6))):
        start, length = data.draw(st.sampled_from(regions))
        at = data.draw(st.integers(start, start + length - 1))
        patches[at] = data.draw(st.binary(min_size=1, max_size=16))
    if data.draw(st.booleans()):  # also try a plain MBR over the same disk
        patches[446] = data.draw(st.binary(min_size=16, max_size=16))
    disk = ld.OverlayDisk(base_disk, patches)
    t0 = time.monotonic()
    try:
        report = preflight_disk(disk)
    except VhdkitError:
        return
    assert time.monotonic() - t0 < 10
    for f in report.findings:
        assert f.id and f.message


@settings(max_examples=80, deadline=None)
@given(entries=st.lists(st.tuples(st.sampled_from([0x00, 0x80]), st.integers(0, 255),
                                  st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                        min_size=1, max_size=4))
def test_random_mbr_tables(entries: list[tuple[int, int, int, int]]) -> None:
    buf = bytearray(MiB)
    buf[:512] = build_mbr([{"status": s, "type": t, "lba_start": lba, "sectors": n}
                           for s, t, lba, n in entries])
    report = preflight_disk(BytesDisk(buf))
    assert all(f.id for f in report.findings)


def test_libbde_confirms_bitlocker_through_the_file_view() -> None:
    from vhdkit.preflight.volumes import _libbde_signature

    buf = _gpt_disk(PARTS)
    buf[2048 * 512 + 3:2048 * 512 + 11] = b"-FVE-FS-"
    vols = scan_volumes(BytesDisk(buf)).volumes
    assert _libbde_signature(vols[0].file) is True  # libbde reads through the FileView
    assert _libbde_signature(vols[1].file) is False
