"""`construct` declarations of the VMDK sparse-extent structures (VMware Virtual Disk Format 5.0).
No I/O here. Little-endian throughout; sizes and offsets in the header count 512-byte sectors."""

from __future__ import annotations

import construct as cs

SECTOR = 512
SPARSE_MAGIC = b"KDMV"
#: ESX 2.x/3.x "COWD" sparse extents (vmfsSparse snapshots): refused by name
COWD_MAGIC = b"COWD"
#: gd_offset of a streamOptimized header whose grain directory is only known from the footer
GD_AT_END = 0xFFFFFFFFFFFFFFFF
#: parentCID of a disk without a parent
NO_PARENT_CID = 0xFFFFFFFF

FLAG_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_ZEROED_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17

COMPRESS_NONE = 0
COMPRESS_DEFLATE = 1

#: grain table entries with a meaning of their own
GTE_UNALLOCATED = 0
GTE_ZEROED = 1

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3
#: bytes before the compressed data of a grain with a marker: lba (u64) and size (u32)
GRAIN_MARKER_SIZE = 12

SPARSE_HEADER = cs.Struct(
    "magic" / cs.Bytes(4),
    "version" / cs.Int32ul,
    "flags" / cs.Int32ul,
    "capacity" / cs.Int64ul,
    "grain_size" / cs.Int64ul,
    "descriptor_offset" / cs.Int64ul,
    "descriptor_size" / cs.Int64ul,
    "num_gtes_per_gt" / cs.Int32ul,
    "rgd_offset" / cs.Int64ul,
    "gd_offset" / cs.Int64ul,
    "overhead" / cs.Int64ul,
    "unclean_shutdown" / cs.Int8ul,
    "single_end_line_char" / cs.Bytes(1),
    "non_end_line_char" / cs.Bytes(1),
    "double_end_line_chars" / cs.Bytes(2),
    "compress_algorithm" / cs.Int16ul,
    "pad" / cs.Bytes(433),
)
assert SPARSE_HEADER.sizeof() == SECTOR

#: byte offset of each header field, for error messages
HEADER_FIELD_OFFSETS = {
    "magic": 0, "version": 4, "flags": 8, "capacity": 12, "grain_size": 20,
    "descriptor_offset": 28, "descriptor_size": 36, "num_gtes_per_gt": 44, "rgd_offset": 48,
    "gd_offset": 56, "overhead": 64, "compress_algorithm": 77,
}

#: the head of an ESX "COWD" sparse extent (the rest of its 2 KiB header is names and geometry)
COWD_HEADER = cs.Struct(
    "magic" / cs.Bytes(4),
    "version" / cs.Int32ul,
    "flags" / cs.Int32ul,
    "capacity" / cs.Int32ul,
    "grain_size" / cs.Int32ul,
    "gd_offset" / cs.Int32ul,
    "gd_entries" / cs.Int32ul,
    "free_sector" / cs.Int32ul,
)

COWD_FIELD_OFFSETS = {"version": 4, "flags": 8, "capacity": 12, "grain_size": 16,
                      "gd_offset": 20, "gd_entries": 24}

GRAIN_MARKER = cs.Struct("lba" / cs.Int64ul, "size" / cs.Int32ul)
#: a metadata marker (size 0) of a streamOptimized extent: GT, GD, footer, end of stream
META_MARKER = cs.Struct("sectors" / cs.Int64ul, "size" / cs.Int32ul, "type" / cs.Int32ul)
#: the footer of a streamOptimized extent: footer marker, header copy, end-of-stream marker
FOOTER_TAIL = 3 * SECTOR
