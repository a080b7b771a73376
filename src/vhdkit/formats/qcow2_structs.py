"""qcow2 on-disk declarations (QEMU's docs/interop/qcow2.txt): header, header extensions,
snapshot table entries, and the bit layout of L1/L2 entries. All integers are big-endian.

The records are ``struct`` tables (:class:`Layout`): every run that opens a qcow2 parses them,
and importing ``construct`` and compiling its declarations cost more than that run's own work."""

from __future__ import annotations

from .layout import Layout

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

HEADER_V2 = Layout("HeaderV2", (
    ("magic", "4s"),
    ("version", "I"),
    ("backing_file_offset", "Q"),
    ("backing_file_size", "I"),
    ("cluster_bits", "I"),
    ("size", "Q"),
    ("crypt_method", "I"),
    ("l1_size", "I"),
    ("l1_table_offset", "Q"),
    ("refcount_table_offset", "Q"),
    ("refcount_table_clusters", "I"),
    ("nb_snapshots", "I"),
    ("snapshots_offset", "Q"),
))
assert HEADER_V2.size == V2_HEADER_SIZE
#: Fields version 3 adds after the 72 bytes of version 2 (offset 72).
HEADER_V3_TAIL = Layout("HeaderV3Tail", (
    ("incompatible_features", "Q"),
    ("compatible_features", "Q"),
    ("autoclear_features", "Q"),
    ("refcount_order", "I"),
    ("header_length", "I"),
))
assert V2_HEADER_SIZE + HEADER_V3_TAIL.size == V3_HEADER_MIN
#: Byte 104 of a header at least 105 bytes long.
COMPRESSION_TYPE_OFFSET = 104

EXTENSION = Layout("Extension", (("type", "I"), ("length", "I")))
EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_NAMES = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441
#: one feature name table entry: type (0 incompatible, 1 compatible, 2 autoclear), bit, name
FEATURE_NAME = Layout("FeatureName", (("type", "B"), ("bit", "B"), ("name", "46s")))

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

SNAPSHOT = Layout("Snapshot", (
    ("l1_table_offset", "Q"),
    ("l1_size", "I"),
    ("id_str_size", "H"),
    ("name_size", "H"),
    ("date_sec", "I"),
    ("date_nsec", "I"),
    ("vm_clock_nsec", "Q"),
    ("vm_state_size", "I"),
    ("extra_data_size", "I"),
))
SNAPSHOT_SIZE = SNAPSHOT.size  # 40

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
