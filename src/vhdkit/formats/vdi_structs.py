"""VirtualBox VDI declarations: the pre-header, the version 1.1 header and the block map.

Layout (all little-endian): 64 bytes of text, the signature at 0x40, then the header whose
``header_size`` counts from 0x48. The block map is one u32 per virtual block: the index of the
block in the data area, or one of two markers for blocks that hold no data.
"""

from __future__ import annotations

import construct as cs

SIGNATURE = 0xBEDA107F
SIGNATURE_OFFSET = 0x40
#: The 1.1 header: what VirtualBox (and qemu-img) have written since VirtualBox 1.x.
VERSION_1_1 = 0x00010001
#: ``header_size`` counts from here; the 1.1 fields vhdkit reads end at HEADER_FIELDS_END.
HEADER_SIZE_BASE = 0x48
HEADER_FIELDS_END = 0x1C8
SECTOR = 512

TYPE_NORMAL = 1  # dynamic: blocks allocated on first write
TYPE_FIXED = 2
TYPE_UNDO = 3
TYPE_DIFF = 4  # a snapshot: reads through to its parent (uuid_link)
TYPE_NAMES = {TYPE_NORMAL: "dynamic", TYPE_FIXED: "fixed", TYPE_UNDO: "undo",
              TYPE_DIFF: "differencing"}

#: block map markers: never written (reads as zeros, or as the parent's data in a snapshot),
#: and explicitly zeroed (reads as zeros)
BLOCK_FREE = 0xFFFFFFFF
BLOCK_ZERO = 0xFFFFFFFE
#: VirtualBox creates 1 MiB blocks; accept any power of two in a sane range
MIN_BLOCK_SIZE = SECTOR
MAX_BLOCK_SIZE = 256 * 1024 * 1024

HEADER = cs.Struct(
    "text" / cs.Bytes(0x40),
    "signature" / cs.Int32ul,
    "version" / cs.Int32ul,
    "header_size" / cs.Int32ul,
    "image_type" / cs.Int32ul,
    "image_flags" / cs.Int32ul,
    "description" / cs.Bytes(256),
    "offset_bmap" / cs.Int32ul,
    "offset_data" / cs.Int32ul,
    "cylinders" / cs.Int32ul,
    "heads" / cs.Int32ul,
    "sectors" / cs.Int32ul,
    "sector_size" / cs.Int32ul,
    "unused1" / cs.Int32ul,
    "disk_size" / cs.Int64ul,
    "block_size" / cs.Int32ul,
    "block_extra" / cs.Int32ul,
    "blocks_in_image" / cs.Int32ul,
    "blocks_allocated" / cs.Int32ul,
    "uuid_image" / cs.Bytes(16),
    "uuid_last_snap" / cs.Bytes(16),
    "uuid_link" / cs.Bytes(16),
    "uuid_parent" / cs.Bytes(16),
)
assert HEADER.sizeof() == HEADER_FIELDS_END


def _offsets(struct: cs.Struct) -> dict[str, int]:
    out: dict[str, int] = {}
    pos = 0
    for sub in struct.subcons:
        out[sub.name] = pos
        pos += sub.sizeof()
    return out


#: byte offset of every header field, for errors that name the field and where it is
OFFSETS = _offsets(HEADER)
