"""Parse and bound a qcow2 header, its extensions and its snapshot table.

Everything read from the file is checked against the file size and QEMU's own limits before it
is used; a malformed field is a FormatError naming it and its offset. What vhdkit does not read
(encryption, external data files, unknown incompatible features) is refused by name.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field

from ..errors import FormatError, UnsupportedDisk
from .qcow2_structs import (
    COMPRESSION_NAMES,
    COMPRESSION_TYPE_OFFSET,
    CRYPT_NAMES,
    EXT_BACKING_FORMAT,
    EXT_DATA_FILE,
    EXT_END,
    EXT_FEATURE_NAMES,
    EXTENSION,
    FEATURE_NAME,
    HEADER_V2,
    HEADER_V3_TAIL,
    INCOMPAT_COMPRESSION,
    INCOMPAT_CORRUPT,
    INCOMPAT_DATA_FILE,
    INCOMPAT_DIRTY,
    INCOMPAT_EXTL2,
    INCOMPAT_KNOWN,
    INCOMPAT_NAMES,
    MAGIC,
    MAX_BACKING_NAME,
    MAX_CLUSTER_BITS,
    MAX_L1_BYTES,
    MAX_REFCOUNT_ORDER,
    MAX_SNAPSHOT_EXTRA,
    MAX_SNAPSHOTS,
    MIN_CLUSTER_BITS,
    SNAPSHOT,
    SNAPSHOT_SIZE,
    V2_HEADER_SIZE,
    V3_HEADER_MIN,
)


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    vm_state_size: int
    disk_size: int
    date: str


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int
    compatible: int
    refcount_order: int
    header_length: int
    compression_type: int
    backing_file: str | None
    backing_format: str | None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible & INCOMPAT_EXTL2)

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible & INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible & INCOMPAT_CORRUPT)

    @property
    def compression(self) -> str:
        return COMPRESSION_NAMES[self.compression_type]

    @property
    def l2_entries(self) -> int:
        """Entries of one L2 table (one cluster; 16-byte entries with extended L2)."""
        return self.cluster_size // (16 if self.extended_l2 else 8)

    @property
    def l1_needed(self) -> int:
        clusters = -(-self.size // self.cluster_size)
        return -(-clusters // self.l2_entries)


def read_exact(fd: int, offset: int, length: int, file_size: int, name: str) -> bytes:
    """``length`` bytes at ``offset``, or a FormatError naming ``name`` when they are not all
    inside the file (the check comes before the read: nothing is sized by an unchecked field)."""
    if offset < 0 or length < 0 or offset + length > file_size:
        raise FormatError(name, offset, f"{length} bytes at offset {offset} lie past the end of "
                                        f"the file ({file_size} bytes)")
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise FormatError(name, offset, f"short read: {len(data)} of {length} bytes")
    return data


def parse_header(fd: int, file_size: int, path: str) -> Qcow2Header:
    raw = read_exact(fd, 0, V2_HEADER_SIZE, file_size, "header")
    h = HEADER_V2.parse(raw)
    if h.magic != MAGIC:
        raise FormatError("header.magic", 0, f"not a qcow2 header: {raw[:4]!r}")
    if h.version not in (2, 3):
        raise UnsupportedDisk(f"{path}: qcow version {h.version}; vhdkit reads qcow2 versions 2 "
                              "and 3 (convert it first: qemu-img convert -O raw DISK disk.raw)")
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise FormatError("header.cluster_bits", 20, f"{h.cluster_bits} is outside "
                                                     f"{MIN_CLUSTER_BITS}..{MAX_CLUSTER_BITS}")
    cluster = 1 << h.cluster_bits
    incompat = compat = 0
    refcount_order, header_length, compression = 4, V2_HEADER_SIZE, 0
    if h.version == 3:
        tail = HEADER_V3_TAIL.parse(read_exact(
            fd, V2_HEADER_SIZE, V3_HEADER_MIN - V2_HEADER_SIZE, file_size, "header"))
        incompat, compat = tail.incompatible_features, tail.compatible_features
        refcount_order, header_length = tail.refcount_order, tail.header_length
        top = min(cluster, file_size)
        if not V3_HEADER_MIN <= header_length <= top:
            raise FormatError("header.header_length", 100,
                              f"{header_length} is outside {V3_HEADER_MIN}..{top}")
        if header_length > COMPRESSION_TYPE_OFFSET:
            compression = read_exact(fd, COMPRESSION_TYPE_OFFSET, 1, file_size, "header")[0]
    if refcount_order > MAX_REFCOUNT_ORDER:
        raise FormatError("header.refcount_order", 96, f"{refcount_order} is greater than "
                                                       f"{MAX_REFCOUNT_ORDER}")
    if h.crypt_method:
        what = CRYPT_NAMES.get(h.crypt_method)
        if what is None:
            raise FormatError("header.crypt_method", 32, f"unknown encryption method "
                                                         f"{h.crypt_method}")
        raise UnsupportedDisk(f"{path}: an encrypted qcow2 image ({what}); vhdkit does not "
                              "decrypt disks: decrypt it first with qemu-img convert (--object "
                              "secret,... --image-opts) -O raw")
    ext_end = cluster
    if h.backing_file_offset:
        ext_end = min(ext_end, h.backing_file_offset)
    names, backing_format, data_file = _extensions(fd, file_size, header_length, ext_end)
    _refuse_features(path, incompat, names, data_file)
    if compression not in COMPRESSION_NAMES:
        raise FormatError("header.compression_type", COMPRESSION_TYPE_OFFSET,
                          f"unknown compression type {compression}")
    if compression and not incompat & INCOMPAT_COMPRESSION:
        raise FormatError("header.compression_type", COMPRESSION_TYPE_OFFSET,
                          f"compression type {compression} without the incompatible feature bit")
    if incompat & INCOMPAT_EXTL2 and h.cluster_bits < 14:
        raise FormatError("header.cluster_bits", 20, "extended L2 entries need clusters of at "
                                                     "least 16 KiB (subclusters of 512 bytes)")
    backing = _backing_name(fd, file_size, h.backing_file_offset, h.backing_file_size, cluster)
    hdr = Qcow2Header(
        version=h.version, cluster_bits=h.cluster_bits, size=h.size, l1_size=h.l1_size,
        l1_table_offset=h.l1_table_offset, nb_snapshots=h.nb_snapshots,
        snapshots_offset=h.snapshots_offset, incompatible=incompat, compatible=compat,
        refcount_order=refcount_order, header_length=header_length,
        compression_type=compression, backing_file=backing,
        backing_format=backing_format if backing is not None else None, feature_names=names)
    _check_l1(hdr, file_size)
    return hdr


def _extensions(fd: int, file_size: int, start: int, end: int
                ) -> tuple[dict[tuple[int, int], str], str | None, str | None]:
    """Header extensions between the header and ``end`` (the backing name or the first cluster's
    end): feature names, backing format, external data file name."""
    names: dict[tuple[int, int], str] = {}
    backing_format: str | None = None
    data_file: str | None = None
    limit = max(0, min(end, file_size) - start)  # at most a cluster, inside the file
    area = b""

    def have(n: int) -> None:
        """Read the area on from ``start`` in 4 KiB steps until ``n`` bytes are at hand."""
        nonlocal area
        if n > len(area):
            more = min(limit, max(n, len(area) + 4096)) - len(area)
            area += read_exact(fd, start + len(area), more, file_size, "header_extension")

    pos = 0
    while pos + 8 <= limit:
        have(pos + 8)
        ext = EXTENSION.parse(area[pos: pos + 8])
        if ext.type == EXT_END:
            break
        if ext.length > limit - pos - 8:
            raise FormatError(f"header_extension[0x{ext.type:08x}].length", start + pos + 4,
                              f"{ext.length} bytes run past the header area (ends at {end})")
        have(pos + 8 + ext.length)
        data = area[pos + 8: pos + 8 + ext.length]
        if ext.type == EXT_BACKING_FORMAT:
            backing_format = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif ext.type == EXT_DATA_FILE:
            data_file = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif ext.type == EXT_FEATURE_NAMES:
            for i in range(ext.length // 48):
                f = FEATURE_NAME.parse(data[48 * i: 48 * i + 48])
                names[(f.type, f.bit)] = f.name.split(b"\0", 1)[0].decode("utf-8", "replace")
        pos += 8 + (ext.length + 7) // 8 * 8
    return names, backing_format, data_file


def _refuse_features(path: str, incompat: int, names: dict[tuple[int, int], str],
                     data_file: str | None) -> None:
    if incompat & INCOMPAT_DATA_FILE:
        where = f" ({data_file!r})" if data_file else ""
        raise UnsupportedDisk(f"{path}: a qcow2 image whose data lives in an external data "
                              f"file{where}; vhdkit does not read external data files: "
                              f"qemu-img convert -O raw {path} disk.raw first")
    unknown = [b for b in range(64) if incompat & ~INCOMPAT_KNOWN & (1 << b)]
    if unknown:
        shown = ", ".join(f"{names.get((0, b)) or 'unnamed'} (bit {b})" for b in unknown)
        raise UnsupportedDisk(f"{path}: the qcow2 image uses incompatible features vhdkit does "
                              f"not know: {shown}; convert it with a qemu-img that knows them")


def _backing_name(fd: int, file_size: int, offset: int, size: int, cluster: int) -> str | None:
    if not offset:
        return None
    if size > MAX_BACKING_NAME:
        raise FormatError("header.backing_file_size", 16, f"{size} bytes is longer than "
                                                          f"{MAX_BACKING_NAME}")
    if offset + size > cluster:
        raise FormatError("header.backing_file_offset", 8, f"the name at {offset} ({size} bytes) "
                                                           "leaves the first cluster")
    raw = read_exact(fd, offset, size, file_size, "header.backing_file_offset")
    name = raw.decode("utf-8", "replace")
    if not name or "\0" in name:
        raise FormatError("header.backing_file_offset", offset, f"invalid backing file name "
                                                                f"{raw!r}")
    return name


def _check_l1(h: Qcow2Header, file_size: int) -> None:
    if h.l1_size * 8 > MAX_L1_BYTES:
        raise FormatError("header.l1_size", 36, f"{h.l1_size} entries is more than QEMU's limit "
                                                f"of {MAX_L1_BYTES // 8}")
    if h.l1_size < h.l1_needed:
        raise FormatError("header.l1_size", 36, f"{h.l1_size} entries cannot map a disk of "
                                                f"{h.size} bytes ({h.l1_needed} needed)")
    if h.l1_size:
        if h.l1_table_offset % h.cluster_size:
            raise FormatError("header.l1_table_offset", 40, f"{h.l1_table_offset} is not aligned "
                                                            "to the cluster size")
        if h.l1_table_offset + h.l1_size * 8 > file_size:
            raise FormatError("header.l1_table_offset", 40,
                              f"the L1 table ({h.l1_size} entries at {h.l1_table_offset}) runs "
                              f"past the end of the file ({file_size} bytes)")


def read_snapshots(fd: int, file_size: int, h: Qcow2Header) -> list[Snapshot]:
    """The snapshot table (listed by inspect; the active layer is what is read)."""
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise FormatError("header.nb_snapshots", 60, f"{h.nb_snapshots} is more than "
                                                     f"{MAX_SNAPSHOTS}")
    if h.nb_snapshots and h.snapshots_offset % h.cluster_size:
        raise FormatError("header.snapshots_offset", 64, f"{h.snapshots_offset} is not aligned "
                                                         "to the cluster size")
    out: list[Snapshot] = []
    pos = h.snapshots_offset
    for i in range(h.nb_snapshots):
        name = f"snapshot[{i}]"
        s = SNAPSHOT.parse(read_exact(fd, pos, SNAPSHOT_SIZE, file_size, name))
        if s.extra_data_size > MAX_SNAPSHOT_EXTRA:
            raise FormatError(f"{name}.extra_data_size", pos + 36,
                              f"{s.extra_data_size} is more than {MAX_SNAPSHOT_EXTRA}")
        rest_len = s.extra_data_size + s.id_str_size + s.name_size
        rest = read_exact(fd, pos + SNAPSHOT_SIZE, rest_len, file_size, name)
        extra = rest[: s.extra_data_size]
        vm_state = int.from_bytes(extra[:8], "big") if len(extra) >= 8 else s.vm_state_size
        disk_size = int.from_bytes(extra[8:16], "big") if len(extra) >= 16 else h.size
        ids = rest[s.extra_data_size: s.extra_data_size + s.id_str_size]
        label = rest[s.extra_data_size + s.id_str_size:]
        date = dt.datetime.fromtimestamp(s.date_sec, tz=dt.timezone.utc).isoformat()
        out.append(Snapshot(ids.decode("utf-8", "replace"), label.decode("utf-8", "replace"),
                            vm_state, disk_size, date))
        pos += (SNAPSHOT_SIZE + rest_len + 7) // 8 * 8
    return out


__all__ = ["INCOMPAT_NAMES", "Qcow2Header", "Snapshot", "parse_header", "read_exact",
           "read_snapshots"]
