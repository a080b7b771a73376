"""qcow2 on-disk declarations (QEMU's docs/interop/qcow2.txt): header, header extensions,
snapshot table entries, and the bit layout of L1/L2 entries. All integers are big-endian."""

from __future__ import annotations

import construct as cs

MAGIC = b"QFI\xfb"
V2_HEADER_SIZE = 72
V3_HEADER_MIN = 104
#: QEMU's limits: clusters of 512 B .. 2 MiB, an L1 table of at most 32 MiB, a backing file
#: name of at most 1023 bytes, 65,536 snapshots with at most 1 KiB of extra data each.
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_BYTES = 32 * 1024 * 1024
MAX_BACKING_NAME = 1023
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_EXTRA = 1024
MAX_REFCOUNT_ORDER = 6

HEADER_V2 = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Int32ub,
    "backing_file_offset" / cs.Int64ub,
    "backing_file_size" / cs.Int32ub,
    "cluster_bits" / cs.Int32ub,
    "size" / cs.Int64ub,
    "crypt_method" / cs.Int32ub,
    "l1_size" / cs.Int32ub,
    "l1_table_offset" / cs.Int64ub,
    "refcount_table_offset" / cs.Int64ub,
    "refcount_table_clusters" / cs.Int32ub,
    "nb_snapshots" / cs.Int32ub,
    "snapshots_offset" / cs.Int64ub,
)
#: Fields version 3 adds after the 72 bytes of version 2 (offset 72).
HEADER_V3_TAIL = cs.Struct(
    "incompatible_features" / cs.Int64ub,
    "compatible_features" / cs.Int64ub,
    "autoclear_features" / cs.Int64ub,
    "refcount_order" / cs.Int32ub,
    "header_length" / cs.Int32ub,
)
#: Byte 104 of a header at least 105 bytes long.
COMPRESSION_TYPE_OFFSET = 104

EXTENSION = cs.Struct("type" / cs.Int32ub, "length" / cs.Int32ub)
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441
#: one feature name table entry: type (0 incompatible, 1 compatible, 2 autoclear), bit, name
FEATURE_NAME = cs.Struct("type" / cs.Int8ub, "bit" / cs.Int8ub, "name" / cs.Bytes(46))

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION
                  | INCOMPAT_EXTL2)
INCOMPAT_NAMES = {0: "dirty", 1: "corrupt", 2: "external data file", 3: "compression type",
                  4: "extended L2 entries"}
COMPRESSION_NAMES = {0: "deflate", 1: "zstd"}
CRYPT_NAMES = {1: "AES-CBC (qcow2 legacy encryption)", 2: "LUKS"}

SNAPSHOT = cs.Struct(
    "l1_table_offset" / cs.Int64ub,
    "l1_size" / cs.Int32ub,
    "id_str_size" / cs.Int16ub,
    "name_size" / cs.Int16ub,
    "date_sec" / cs.Int32ub,
    "date_nsec" / cs.Int32ub,
    "vm_clock_nsec" / cs.Int64ub,
    "vm_state_size" / cs.Int32ub,
    "extra_data_size" / cs.Int32ub,
)
SNAPSHOT_SIZE = 40  # SNAPSHOT.sizeof()

#: L1 entry: bits 9..55 hold the L2 table's offset; bit 63 is "refcount is 1" (ignored).
L1_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
#: Standard L2 entry: bit 0 "reads as zeros" (v3), bits 9..55 host cluster offset,
#: bit 62 compressed, bit 63 "refcount is 1".
L2_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
L2_ZERO = 1
L2_COMPRESSED = 1 << 62
#: Extended L2: a second 64-bit word per cluster, bits 0..31 allocated subclusters,
#: bits 32..63 subclusters that read as zeros.
SUBCLUSTERS = 32

#: Compiled parsers (several times faster than interpreting the declarations; same checks).
HEADER_V2_PARSER = HEADER_V2.compile()
HEADER_V3_TAIL_PARSER = HEADER_V3_TAIL.compile()
EXTENSION_PARSER = EXTENSION.compile()
FEATURE_NAME_PARSER = FEATURE_NAME.compile()
SNAPSHOT_PARSER = SNAPSHOT.compile()
