"""Partition table declarations (MBR, EBR, GPT) as ``construct`` structs, plus builders.

Declarations only, no disk I/O: ``volumes`` reads and judges, the fixtures build with the same
structs so that parse and build are tested against each other. Sectors are 512 bytes.
"""

from __future__ import annotations

import uuid
import zlib

from construct import Array, Bytes, Const, Int8ul, Int32ul, Int64ul, Padding, Struct

SECTOR = 512

MBR_ENTRY = Struct(
    "status" / Int8ul,
    "chs_first" / Bytes(3),
    "type" / Int8ul,
    "chs_last" / Bytes(3),
    "lba_start" / Int32ul,
    "sectors" / Int32ul,
)

MBR = Struct(
    "bootstrap" / Bytes(440),
    "disk_signature" / Int32ul,
    "reserved" / Bytes(2),
    "partitions" / Array(4, MBR_ENTRY),
    "boot_signature" / Const(b"\x55\xaa"),
)

GPT_SIGNATURE = b"EFI PART"
GPT_HEADER_SIZE = 92

GPT_HEADER = Struct(
    "signature" / Const(GPT_SIGNATURE),
    "revision" / Int32ul,
    "header_size" / Int32ul,
    "header_crc32" / Int32ul,
    Padding(4),
    "current_lba" / Int64ul,
    "backup_lba" / Int64ul,
    "first_usable_lba" / Int64ul,
    "last_usable_lba" / Int64ul,
    "disk_guid" / Bytes(16),
    "entries_lba" / Int64ul,
    "num_entries" / Int32ul,
    "entry_size" / Int32ul,
    "entries_crc32" / Int32ul,
)

GPT_ENTRY = Struct(
    "type_guid" / Bytes(16),
    "unique_guid" / Bytes(16),
    "first_lba" / Int64ul,
    "last_lba" / Int64ul,
    "attributes" / Int64ul,
    "name" / Bytes(72),
)
GPT_ENTRY_SIZE = 128

MBR_EXTENDED = frozenset({0x05, 0x0F, 0x85})
MBR_TYPES: dict[int, str] = {
    0x01: "fat12", 0x04: "fat16", 0x06: "fat16", 0x07: "ntfs/exfat", 0x0B: "fat32",
    0x0C: "fat32", 0x0E: "fat16", 0x27: "windows-recovery", 0x42: "windows-ldm",
    0x82: "linux-swap", 0x83: "linux", 0x8E: "linux-lvm", 0xEE: "gpt-protective",
    0xEF: "efi-system", 0xFD: "linux-raid", 0x05: "extended", 0x0F: "extended", 0x85: "extended",
}

GPT_TYPES: dict[str, str] = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "efi-system",
    "21686148-6449-6e6f-744e-656564454649": "bios-boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "linux",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "linux-root-x86-64",
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": "linux-home",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "linux-xbootldr",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "linux-swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "linux-lvm",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "linux-raid",
    "ca7d7ccb-63ed-4c53-861c-1742536059cc": "linux-luks",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "microsoft-basic-data",
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": "microsoft-reserved",
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": "windows-recovery",
}
GPT_TYPE_BY_NAME = {v: k for k, v in GPT_TYPES.items()}


def guid_str(raw: bytes) -> str:
    """GPT GUIDs are stored mixed-endian (the first three fields little-endian)."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def guid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def header_crc(raw: bytes, header_size: int) -> int:
    """CRC32 of the first ``header_size`` bytes with the CRC field itself zeroed."""
    body = bytearray(raw[:header_size])
    body[16:20] = b"\0\0\0\0"
    return zlib.crc32(bytes(body)) & 0xFFFFFFFF


def build_mbr(entries: list[dict[str, int]], disk_signature: int = 0x5648444B) -> bytes:
    """A 512-byte MBR with up to four ``{status, type, lba_start, sectors}`` entries."""
    rows = [_mbr_row(e) for e in entries] + [_mbr_row({})] * (4 - len(entries))
    return bytes(MBR.build({
        "bootstrap": b"\0" * 440, "disk_signature": disk_signature, "reserved": b"\0\0",
        "partitions": rows, "boot_signature": b"\x55\xaa",
    }))


def _mbr_row(e: dict[str, int]) -> dict[str, object]:
    return {
        "status": e.get("status", 0), "chs_first": b"\xfe\xff\xff", "type": e.get("type", 0),
        "chs_last": b"\xfe\xff\xff", "lba_start": e.get("lba_start", 0),
        "sectors": e.get("sectors", 0),
    } if e else {"status": 0, "chs_first": b"\0" * 3, "type": 0, "chs_last": b"\0" * 3,
                 "lba_start": 0, "sectors": 0}


def build_gpt(
    disk_sectors: int,
    partitions: list[dict[str, object]],
    disk_guid: str = "5648444b-0000-4000-8000-000000000001",
    num_entries: int = 128,
) -> tuple[bytes, bytes]:
    """Primary (LBA 0..33) and backup (last 33 sectors) GPT regions for a disk.

    Each partition is ``{type: name-or-guid, first_lba, last_lba, name, guid}``.
    """
    table = bytearray(num_entries * GPT_ENTRY_SIZE)
    for i, p in enumerate(partitions):
        ptype = str(p["type"])
        type_guid = GPT_TYPE_BY_NAME.get(ptype, ptype)
        unique = str(p.get("guid", f"5648444b-0000-4000-8000-{i + 2:012x}"))
        name = str(p.get("name", "")).encode("utf-16-le")[:72].ljust(72, b"\0")
        table[i * 128:(i + 1) * 128] = GPT_ENTRY.build({
            "type_guid": guid_bytes(type_guid), "unique_guid": guid_bytes(unique),
            "first_lba": p["first_lba"], "last_lba": p["last_lba"],
            "attributes": 0, "name": name,
        })
    entries_crc = zlib.crc32(bytes(table)) & 0xFFFFFFFF
    table_sectors = len(table) // SECTOR
    last = disk_sectors - 1

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = {
            "revision": 0x00010000, "header_size": GPT_HEADER_SIZE, "header_crc32": 0,
            "current_lba": current, "backup_lba": backup,
            "first_usable_lba": 2 + table_sectors,
            "last_usable_lba": last - 1 - table_sectors,
            "disk_guid": guid_bytes(disk_guid), "entries_lba": entries_lba,
            "num_entries": num_entries, "entry_size": GPT_ENTRY_SIZE,
            "entries_crc32": entries_crc,
        }
        raw = bytes(GPT_HEADER.build(fields))
        fields["header_crc32"] = header_crc(raw, GPT_HEADER_SIZE)
        return bytes(GPT_HEADER.build(fields)).ljust(SECTOR, b"\0")

    protective = build_mbr([{
        "type": 0xEE, "lba_start": 1, "sectors": min(disk_sectors - 1, 0xFFFFFFFF),
    }])
    primary = protective + header(1, last, 2) + bytes(table)
    backup = bytes(table) + header(last, 1, last - table_sectors)
    return primary, backup
