"""Find the volumes of a disk: MBR (with extended partitions), GPT, LVM2, encrypted volumes.

Every field read from the disk is bound-checked before it is used as an offset or a count; a
malformed table becomes a :class:`Finding`, never an exception, so that pre-flight can still say
what it could read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import construct

from ..formats import VirtualDisk
from ..report import Finding
from .fileview import FileView
from .tables import (
    GPT_ENTRY,
    GPT_HEADER,
    GPT_HEADER_SIZE,
    GPT_TYPES,
    MBR,
    MBR_EXTENDED,
    MBR_TYPES,
    SECTOR,
    guid_str,
    header_crc,
)

MAX_GPT_TABLE = 1 << 20  # bytes; the UEFI minimum is 16 KiB, real tables are 16-32 KiB
MAX_LOGICAL = 128  # EBR chain length bound (loops and absurd chains stop here)
LVM_TYPES = frozenset({"linux-lvm"})
SWAP_TYPES = frozenset({"linux-swap"})


class BinaryFile(Protocol):
    """What libyal readers need from a file object."""

    def read(self, size: int = ..., /) -> bytes: ...
    def seek(self, offset: int, whence: int = ..., /) -> int: ...
    def tell(self) -> int: ...
    def get_size(self) -> int: ...


@dataclass
class Volume:
    """A byte range of the disk (or an LVM logical volume) that may hold a filesystem."""

    number: int  # Linux-style partition number (logical MBR partitions start at 5), 0 = whole
    offset: int  # byte offset on the disk (for an LV: of its physical volume)
    length: int
    scheme: str  # "mbr", "gpt", "lvm" or "disk"
    type_id: str  # "0x83" or a GPT type GUID
    type_name: str  # "linux", "linux-swap", "efi-system", ...
    name: str = ""  # GPT partition name, or "vg/lv"
    partuuid: str = ""
    encryption: str | None = None  # "bitlocker" or "luks"
    file: BinaryFile | None = None
    _keep: list[Any] = field(default_factory=list, repr=False)  # owners of ``file`` (LVM handle)

    @property
    def label(self) -> str:
        where = f"{self.scheme} partition {self.number}" if self.number else self.scheme
        return f"{where} ({self.name})" if self.name else where

    def describe(self) -> dict[str, object]:
        return {
            "number": self.number, "scheme": self.scheme, "offset": self.offset,
            "length": self.length, "type": self.type_name, "name": self.name,
            "encryption": self.encryption,
        }


@dataclass
class VolumeScan:
    scheme: str  # "gpt", "mbr" or "none"
    volumes: list[Volume]
    findings: list[Finding]


def scan_volumes(disk: VirtualDisk) -> VolumeScan:
    """Partition tables, then LVM physical volumes, then encryption signatures."""
    findings: list[Finding] = []
    scheme, parts = _partitions(disk, findings)
    volumes: list[Volume] = []
    for vol in parts:
        vol.file = FileView(disk, vol.offset, vol.length)
        vol.encryption = detect_encryption(vol.file)
        if vol.encryption is None and (vol.type_name in LVM_TYPES or has_lvm_label(vol.file)):
            volumes.extend(_lvm_volumes(vol, findings))
            continue
        volumes.append(vol)
    return VolumeScan(scheme, volumes, findings)


# -- partition tables -------------------------------------------------------------------------

def _partitions(disk: VirtualDisk, findings: list[Finding]) -> tuple[str, list[Volume]]:
    sector0 = disk.read_at(0, SECTOR)
    whole = Volume(0, 0, disk.size, "disk", "", "whole-disk")
    if len(sector0) < SECTOR:
        return "none", [whole]
    mbr = _parse(MBR, sector0)
    gpt_sig = disk.read_at(SECTOR, 8) == b"EFI PART"
    protective = mbr is not None and any(p.type == 0xEE for p in mbr.partitions)
    if gpt_sig or protective:
        if not protective:
            findings.append(_f("volume.mbr.not-protective", "warning",
                               "GPT disk without a protective MBR entry (type 0xEE)",
                               "LBA 0: no partition of type 0xEE",
                               "sgdisk --zap-mbr is wrong here; rewrite with: sgdisk -e DISK"))
        parts = _gpt(disk, findings)
        if parts is not None:
            return "gpt", parts
        if not protective:
            return "none", [whole]
        return "gpt", []
    if mbr is None or not _mbr_plausible(mbr):
        # No table: a filesystem or LVM PV may span the whole disk (or it is blank).
        return "none", [whole]
    return "mbr", _mbr(disk, mbr, findings)


def _parse(struct: construct.Construct, raw: bytes) -> Any:
    try:
        return struct.parse(raw)
    except construct.ConstructError:
        return None


def _mbr_plausible(mbr: Any) -> bool:
    """A VBR (FAT/NTFS boot sector) also ends in 55AA; its 'entries' have junk status bytes."""
    used = [p for p in mbr.partitions if p.type != 0]
    return bool(used) and all(p.status in (0x00, 0x80) for p in used)


def _mbr(disk: VirtualDisk, mbr: Any, findings: list[Finding]) -> list[Volume]:
    out: list[Volume] = []
    for i, p in enumerate(mbr.partitions, start=1):
        if p.type == 0 or p.sectors == 0:
            continue
        if p.type in MBR_EXTENDED:
            out.extend(_ebr_chain(disk, p.lba_start, p.sectors, findings))
            continue
        vol = _mbr_volume(disk, i, p.type, p.lba_start, p.sectors, f"MBR entry {i}", findings)
        if vol:
            out.append(vol)
    return out


def _mbr_volume(
    disk: VirtualDisk, number: int, ptype: int, lba: int, sectors: int, where: str,
    findings: list[Finding],
) -> Volume | None:
    start, length = lba * SECTOR, sectors * SECTOR
    if lba == 0 or start >= disk.size:
        findings.append(_f("volume.partition.out-of-range", "warning",
                           f"partition {number} starts outside the disk; skipped",
                           f"{where}: start LBA {lba}, disk has {disk.size // SECTOR} sectors"))
        return None
    if start + length > disk.size:
        findings.append(_f("volume.partition.out-of-range", "warning",
                           f"partition {number} ends past the end of the disk; read clipped",
                           f"{where}: LBA {lba}+{sectors} > {disk.size // SECTOR} sectors"))
        length = disk.size - start
    name = MBR_TYPES.get(ptype, "unknown")
    return Volume(number, start, length, "mbr", f"0x{ptype:02x}", name)


def _ebr_chain(disk: VirtualDisk, ext_lba: int, ext_sectors: int,
               findings: list[Finding]) -> list[Volume]:
    out: list[Volume] = []
    seen: set[int] = set()
    next_rel = 0
    number = 5
    while len(out) < MAX_LOGICAL:
        ebr_lba = ext_lba + next_rel
        if ebr_lba in seen or next_rel >= ext_sectors:
            findings.append(_f("volume.ebr.invalid", "warning",
                               "extended partition chain loops or leaves the extended partition",
                               f"EBR at LBA {ebr_lba}"))
            break
        seen.add(ebr_lba)
        ebr = _parse(MBR, disk.read_at(ebr_lba * SECTOR, SECTOR))
        if ebr is None:
            findings.append(_f("volume.ebr.invalid", "warning",
                               "extended boot record has no 55AA signature; chain ends",
                               f"EBR at LBA {ebr_lba}"))
            break
        first, link = ebr.partitions[0], ebr.partitions[1]
        if first.type != 0 and first.sectors != 0:
            vol = _mbr_volume(disk, number, first.type, ebr_lba + first.lba_start,
                              first.sectors, f"EBR at LBA {ebr_lba}", findings)
            if vol:
                out.append(vol)
            number += 1
        if link.type not in MBR_EXTENDED or link.lba_start == 0:
            break
        next_rel = link.lba_start
    return out


@dataclass
class _GptHeader:
    header: Any  # the parsed GPT_HEADER container
    table: bytes


def _gpt(disk: VirtualDisk, findings: list[Finding]) -> list[Volume] | None:
    total = disk.size // SECTOR
    primary, why_p = _gpt_header(disk, 1)
    backup_lba = primary.header.backup_lba if primary is not None else total - 1
    backup, why_b = _gpt_header(disk, backup_lba)
    if backup is None and backup_lba != total - 1:
        backup, why_last = _gpt_header(disk, total - 1)
        why_b = why_b if backup is None else why_last
    if primary is None and backup is None:
        findings.append(_f("volume.gpt.corrupt", "error",
                           "both GPT headers are unreadable; partitions cannot be found",
                           f"primary: {why_p}; backup: {why_b}",
                           "restore the partition table (sgdisk/gdisk recovery) before upload"))
        return None
    if primary is None:
        findings.append(_f("volume.gpt.primary-corrupt", "warning",
                           "primary GPT header is damaged; using the backup",
                           f"LBA 1: {why_p}", "repair with: sgdisk -e DISK (or gdisk 'r','b')"))
    elif backup is None:
        findings.append(_f("volume.gpt.backup-corrupt", "warning",
                           "backup GPT header is missing or damaged (often after a resize)",
                           f"LBA {backup_lba}: {why_b}", "relocate it with: sgdisk -e DISK"))
    chosen = primary or backup
    assert chosen is not None
    return _gpt_volumes(disk, chosen.header, chosen.table, findings)


def _gpt_header(disk: VirtualDisk, lba: int) -> tuple[_GptHeader | None, str]:
    """Parse and verify the header at ``lba``: (header and table, "") or (None, why not)."""
    total = disk.size // SECTOR
    if lba <= 0 or lba >= total:
        return None, f"header LBA {lba} is outside the disk"
    raw = disk.read_at(lba * SECTOR, SECTOR)
    hdr = _parse(GPT_HEADER, raw)
    if hdr is None:
        return None, "no 'EFI PART' signature"
    if not GPT_HEADER_SIZE <= hdr.header_size <= SECTOR:
        return None, f"header size {hdr.header_size} out of range"
    if header_crc(raw, hdr.header_size) != hdr.header_crc32:
        return None, f"header CRC32 mismatch (stored 0x{hdr.header_crc32:08x})"
    if hdr.current_lba != lba:
        return None, f"header says it is at LBA {hdr.current_lba}"
    size = hdr.num_entries * hdr.entry_size
    if hdr.entry_size < 128 or hdr.entry_size % 8 or size > MAX_GPT_TABLE:
        return None, f"entry table {hdr.num_entries} x {hdr.entry_size} bytes is implausible"
    if hdr.entries_lba <= 0 or hdr.entries_lba * SECTOR + size > disk.size:
        return None, f"entry table at LBA {hdr.entries_lba} is outside the disk"
    table = disk.read_at(hdr.entries_lba * SECTOR, size)
    if zlib.crc32(table) & 0xFFFFFFFF != hdr.entries_crc32:
        return None, f"partition entry array CRC32 mismatch (stored 0x{hdr.entries_crc32:08x})"
    return _GptHeader(hdr, table), ""


def _gpt_volumes(disk: VirtualDisk, hdr: Any, table: bytes,
                 findings: list[Finding]) -> list[Volume]:
    total = disk.size // SECTOR
    out: list[Volume] = []
    for i in range(hdr.num_entries):
        raw = table[i * hdr.entry_size: i * hdr.entry_size + 128]
        if raw[:16] == b"\0" * 16:
            continue
        e = GPT_ENTRY.parse(raw)
        number = i + 1
        if e.first_lba > e.last_lba or e.first_lba == 0 or e.first_lba >= total:
            findings.append(_f("volume.partition.out-of-range", "warning",
                               f"GPT partition {number} has an impossible range; skipped",
                               f"entry {number}: LBA {e.first_lba}..{e.last_lba}, "
                               f"disk has {total} sectors"))
            continue
        last = e.last_lba
        if last >= total:
            findings.append(_f("volume.partition.out-of-range", "warning",
                               f"GPT partition {number} ends past the end of the disk",
                               f"entry {number}: last LBA {e.last_lba} >= {total}"))
            last = total - 1
        type_guid = guid_str(e.type_guid)
        name = bytes(e.name).decode("utf-16-le", "replace").split("\0", 1)[0]
        out.append(Volume(number, e.first_lba * SECTOR, (last - e.first_lba + 1) * SECTOR, "gpt",
                          type_guid, GPT_TYPES.get(type_guid, "unknown"), name,
                          guid_str(e.unique_guid)))
    return out


# -- encryption and LVM -----------------------------------------------------------------------

def detect_encryption(f: FileView) -> str | None:
    head = f.read_at(0, 16)
    if head[3:11] == b"-FVE-FS-" or _libbde_signature(f):
        return "bitlocker"
    if head[:6] == b"LUKS\xba\xbe":
        return "luks"
    return None


def _libbde_signature(f: FileView) -> bool:
    """libbde's own check, which also knows the BitLocker To Go and Vista layouts."""
    import pybde

    try:
        f.seek(0)
        return bool(pybde.check_volume_signature_file_object(f))
    except (OSError, ValueError, TypeError):  # a volume libbde cannot read is not BitLocker
        return False


def has_lvm_label(f: FileView) -> bool:
    """LVM2 writes its label in one of the first four sectors."""
    head = f.read_at(0, 4 * SECTOR)
    return any(
        head[i:i + 8] == b"LABELONE" and head[i + 24:i + 32] == b"LVM2 001"
        for i in range(0, len(head), SECTOR)
    )


def _lvm_volumes(pv: Volume, findings: list[Finding]) -> list[Volume]:
    import pyvslvm  # lazily: only LVM disks need it

    assert isinstance(pv.file, FileView)
    try:
        handle = pyvslvm.handle()
        handle.open_file_object(pv.file)
        handle.open_physical_volume_files_as_file_objects([pv.file])
        vg = handle.get_volume_group()
        vg_name = vg.name or "vg"
        out = []
        for lv in vg.logical_volumes:
            out.append(Volume(pv.number, pv.offset, lv.size, "lvm", pv.type_id, "lvm-lv",
                              f"{vg_name}/{lv.name}", file=lv, _keep=[handle, vg]))
        return out
    except (OSError, RuntimeError, ValueError) as exc:
        findings.append(_f("volume.lvm.unreadable", "warning",
                           f"LVM physical volume on {pv.label} could not be read",
                           f"libvslvm: {' '.join(str(exc).split())[:200]}"))
        pv.type_name = "linux-lvm"
        return [pv]


def _f(fid: str, severity: Any, message: str, evidence: str = "", fix: str = "") -> Finding:
    return Finding(fid, severity, message, evidence, fix)
