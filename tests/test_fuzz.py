"""Random and mutated footers, headers and BATs: only vhdkit's own errors come out, quickly, and
memory stays bounded (no allocation sized by an unchecked field)."""

from __future__ import annotations

import dataclasses
import os
import resource
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.vhdbuild import KIB, bits_present, build_dynamic, build_fixed, flatten
from vhdkit.errors import VhdkitError
from vhdkit.formats import open_disk
from vhdkit.formats.vhd_structs import FOOTER_SIZE, HEADER_SIZE, DynamicHeader, Footer

WORK = Path(tempfile.mkdtemp(prefix="vhdkit-fuzz-"))
DYN = build_dynamic(WORK / "base-dyn.vhd", 64 * KIB + 512, 4 * KIB,
                    {0: (None, b"\x01" * 4096), 3: (b"\xa5", b"\x02" * 4096),
                     16: (None, b"\x03" * 512)}).read_bytes()
DIFF_PARENT = build_dynamic(WORK / "parent.vhd", 64 * KIB + 512, 4 * KIB, {1: (None, b"\x09")})
DIFF = build_dynamic(WORK / "base-diff.vhd", 64 * KIB + 512, 4 * KIB, {2: (b"\x40", b"\x05")},
                     parent=DIFF_PARENT).read_bytes()
FIXED = build_fixed(WORK / "base-fixed.vhd", 32 * KIB, writes={0: b"\x07" * 512}).read_bytes()
BASES = [DYN, DIFF, FIXED]

FOOTER_FIELDS = {
    "data_offset": st.one_of(st.integers(0, 1 << 64 - 1), st.sampled_from([0, 512, 1 << 63])),
    "current_size": st.integers(0, (1 << 64) - 1),
    "disk_type": st.integers(0, (1 << 32) - 1),
    "features": st.integers(0, (1 << 32) - 1),
    "version": st.integers(0, (1 << 32) - 1),
}
HEADER_FIELDS = {
    "table_offset": st.integers(0, (1 << 64) - 1),
    "max_table_entries": st.integers(0, (1 << 32) - 1),
    "block_size": st.one_of(st.integers(0, (1 << 32) - 1),
                            st.sampled_from([1 << k for k in range(0, 32)])),
    "header_version": st.integers(0, (1 << 32) - 1),
}


def exercise(data: bytes, name: str) -> None:
    path = WORK / name
    path.write_bytes(data)
    for strict in (True, False):
        try:
            with open_disk(path, strict=strict) as disk:
                ext = disk.extents()
                disk.read_at(0, 64 * KIB)
                for e in ext[:4]:
                    disk.read_at(e.start, min(e.length, 64 * KIB))
                disk.read_at(max(0, disk.size - 4096), 8192)
        except VhdkitError:
            pass


def refresh_checksums(buf: bytearray, fix: bool) -> None:
    if not fix:
        return
    tail = len(buf) - FOOTER_SIZE
    for off in (0, tail):
        if buf[off: off + 8] == b"conectix" and off >= 0:
            f = Footer.parse(bytes(buf[off: off + FOOTER_SIZE])).with_checksum()
            buf[off: off + FOOTER_SIZE] = f.build()
    if buf[512:520] == b"cxsparse" and len(buf) >= 512 + HEADER_SIZE:
        h = DynamicHeader.parse(bytes(buf[512: 512 + HEADER_SIZE])).with_checksum()
        buf[512: 512 + HEADER_SIZE] = h.build()


byte_mutations = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                          min_size=1, max_size=8)


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2), byte_mutations, st.booleans(), st.sampled_from(["head", "tail", "any"]))
def test_mutated_bytes(which: int, muts: list[tuple[int, int]], fix: bool, where: str) -> None:
    buf = bytearray(BASES[which])
    for off, val in muts:
        if where == "head":
            off %= min(len(buf), 2048 + 512)
        elif where == "tail":
            off = len(buf) - 1 - off % FOOTER_SIZE
        else:
            off %= len(buf)
        buf[off] = val
    refresh_checksums(buf, fix)
    exercise(bytes(buf), "mut.vhd")


@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 1), st.fixed_dictionaries({}, optional=FOOTER_FIELDS),
       st.fixed_dictionaries({}, optional=HEADER_FIELDS),
       st.lists(st.tuples(st.integers(0, 20), st.integers(0, (1 << 32) - 1)), max_size=4))
def test_mutated_fields(which: int, footer: dict[str, int], header: dict[str, int],
                        bat: list[tuple[int, int]]) -> None:
    buf = bytearray(BASES[which])
    tail = len(buf) - FOOTER_SIZE
    for off in (0, tail):
        f = dataclasses.replace(Footer.parse(bytes(buf[off: off + FOOTER_SIZE])), **footer)
        buf[off: off + FOOTER_SIZE] = f.with_checksum().build()
    h = DynamicHeader.parse(bytes(buf[512: 512 + HEADER_SIZE]))
    for idx, value in bat:
        pos = h.table_offset + 4 * idx
        if pos + 4 <= tail:
            buf[pos: pos + 4] = value.to_bytes(4, "big")
    h = dataclasses.replace(h, **header).with_checksum()
    buf[512: 512 + HEADER_SIZE] = h.build()
    exercise(bytes(buf), "fields.vhd")


@settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=4096),
       st.sampled_from([b"", b"conectix", b"vhdxfile", b"cxsparse"]),
       st.sampled_from(["x.vhd", "x.img", "x.vhdx"]))
def test_random_files(blob: bytes, magic: bytes, name: str) -> None:
    data = magic + blob
    if len(data) >= FOOTER_SIZE and magic == b"conectix":
        data = data + data[:FOOTER_SIZE]  # a footer-looking tail too
    exercise(data, name)


def test_memory_stayed_bounded() -> None:
    # runs after the property tests in this module (pytest keeps file order)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"
    assert os.path.isdir(WORK)


VHDX_PATH = WORK / "mut.vhdx"
VHDX_BASE: bytes | None = None


def _vhdx_base() -> bytes:
    """The first 4 MiB of a small dynamic VHDX (headers, region table, BAT, metadata)."""
    global VHDX_BASE
    if VHDX_BASE is None:
        from fixtures import qemu

        qemu.create(VHDX_PATH, "vhdx", "64M", "block_size=1M")
        qemu.write(VHDX_PATH, "vhdx", [(0, 4096, 1), (40 * 1024 * 1024, 4096, 2)])
        with VHDX_PATH.open("rb") as fh:
            VHDX_BASE = fh.read(4 * 1024 * KIB)
    return VHDX_BASE


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from([64 * KIB, 128 * KIB, 192 * KIB, 1024 * KIB,
                                           2048 * KIB, 3072 * KIB]),
                          st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_vhdx_metadata_never_breaks_the_allocation_map(
        muts: list[tuple[int, int, int]]) -> None:
    from vhdkit.formats.vhdx_bat import vhdx_extents

    base = _vhdx_base()
    with VHDX_PATH.open("r+b") as fh:  # mutate in place, then restore the bytes
        for at, off, val in muts:
            os.pwrite(fh.fileno(), bytes([val]), at + off)
        try:
            ext = vhdx_extents(str(VHDX_PATH))
            seen = _libvhdi_data(VHDX_PATH)
        finally:
            for at, off, _ in muts:
                os.pwrite(fh.fileno(), base[at + off: at + off + 1], at + off)
    assert ext is None or all(e.length > 0 for e in ext)
    # Whatever the damage, the map never hides a sector that libvhdi (the reader convert and
    # upload use) returns as data: skipping it would silently drop that data.
    if ext is not None:
        for offset in seen:
            assert any(e.start <= offset < e.end for e in ext), (offset, ext)


#: where _vhdx_base wrote data, and a block it left empty
VHDX_PROBES = (0, 40 * 1024 * KIB, 20 * 1024 * KIB)


def _libvhdi_data(path: Path) -> list[int]:
    """The probe offsets at which libvhdi reads non-zero bytes ([] if it refuses the file)."""
    try:
        with open_disk(path, format="vhdx") as disk:
            return [o for o in VHDX_PROBES if o < disk.size and any(disk.read_at(o, 4096))]
    except VhdkitError:
        return []


# ---- issue 11: block sizes and bitmaps, table counts, parent locators ------------------------

def _reference_extents(size: int, block_size: int, layers: list[dict[int, tuple[bytes | None,
                                                                                  bytes]]],
                       ) -> list[tuple[int, int]]:
    """Present sectors of every layer, merged: what extents() must return (computed the slow,
    obvious way, sector by sector)."""
    present = bytearray(-(-size // 512))
    for blocks in layers:
        for idx, (bitmap, _) in blocks.items():
            for s, bit in enumerate(bits_present(bitmap, block_size)):
                sector = idx * block_size // 512 + s
                if bit and sector < len(present):
                    present[sector] = 1
    out: list[tuple[int, int]] = []
    for i, p in enumerate(present):
        if not p:
            continue
        start = i * 512
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], min(size, start + 512))
        else:
            out.append((start, min(size, start + 512)))
    return out


block_sizes = st.sampled_from([512, 1024, 2048, 4096, 8192, 64 * KIB])


@st.composite
def layer(draw: st.DrawFn, size: int, block_size: int) -> dict[int, tuple[bytes | None, bytes]]:
    nblocks = -(-size // block_size)
    idx = draw(st.lists(st.integers(0, nblocks - 1), unique=True, max_size=min(nblocks, 24)))
    nbytes = -(-(block_size // 512) // 8)
    out: dict[int, tuple[bytes | None, bytes]] = {}
    for i in idx:
        bitmap = draw(st.one_of(st.none(), st.binary(min_size=nbytes, max_size=nbytes)))
        out[i] = (bitmap, bytes([1 + i % 250]) * block_size)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data(), block_sizes, st.integers(1, 96), st.booleans(), st.booleans())
def test_extents_and_reads_match_the_bitmaps(data: st.DataObject, block_size: int,
                                             sectors: int, differencing: bool,
                                             shuffle: bool) -> None:
    """Vectorised extents() and many-block reads against the obvious sector-by-sector model,
    for small and large blocks, shuffled block layouts and differencing chains."""
    size = sectors * 512 * max(1, block_size // 2048)
    layers = [data.draw(layer(size, block_size))]
    if differencing:
        layers.append(data.draw(layer(size, block_size)))
    order = data.draw(st.permutations(sorted(layers[-1]))) if shuffle else None
    base = build_dynamic(WORK / "bm-base.vhd", size, block_size, layers[0])
    path = base
    if differencing:
        path = build_dynamic(WORK / "bm-child.vhd", size, block_size, layers[1], parent=base,
                             block_order=list(order) if order is not None else None)
    with open_disk(path) as disk:
        got = [(e.start, e.end) for e in disk.extents()]
        assert got == _reference_extents(size, block_size, layers)
        want = bytes(flatten(size, block_size, layers))
        assert disk.read_at(0, size) == want  # one request: the sector-map path
        step = 512 * data.draw(st.integers(1, 7))  # small requests: the per-block path
        assert b"".join(disk.read_at(o, step) for o in range(0, size, step)) == want


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.sampled_from([1 << k for k in range(9, 29)]), st.integers(0, 1 << 32 - 1)),
       st.one_of(st.integers(0, 1 << 16), st.sampled_from([0, 1, (1 << 32) - 1, 1 << 31])),
       st.integers(0, 1 << 40))
def test_block_sizes_and_table_counts(block_size: int, entries: int, size: int) -> None:
    """Any block size and BAT length with valid checksums: an error or a bounded read."""
    buf = bytearray(DYN)
    tail = len(buf) - FOOTER_SIZE
    for off in (0, tail):
        f = dataclasses.replace(Footer.parse(bytes(buf[off: off + FOOTER_SIZE])),
                                current_size=size, original_size=size)
        buf[off: off + FOOTER_SIZE] = f.with_checksum().build()
    h = DynamicHeader.parse(bytes(buf[512: 512 + HEADER_SIZE]))
    h = dataclasses.replace(h, block_size=block_size, max_table_entries=entries).with_checksum()
    buf[512: 512 + HEADER_SIZE] = h.build()
    exercise(bytes(buf), "bs.vhd")


LOCATOR_TEXTS = st.one_of(
    st.sampled_from(["/etc/passwd", "/etc/hostname", "..\\..\\..\\..\\etc\\hostname",
                     ".\\parent.vhd", "parent.vhd", "C:\\disks\\parent.vhd", "..\\parent.vhd",
                     ".\\sub\\..\\..\\parent.vhd", "\\\\server\\share\\parent.vhd", ".", "..",
                     "/", "./link.vhd", "file:///etc/passwd", "./secret.txt"]),
    st.text(max_size=80))


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from([b"W2ku", b"W2ru", b"Wi2k", b"Wi2r", b"MacX",
                                           b"Mac ", b"\x00\x00\x00\x01"]), LOCATOR_TEXTS),
                max_size=4),
       st.sampled_from(["right", "zero", "random"]), st.text(max_size=40))
def test_parent_locators_never_leave_the_directory(
        locators: list[tuple[bytes, str]], uid: str, name: str) -> None:
    """Whatever the locators and parent name say, the only parent ever opened is the real one,
    inside the child's directory; secrets outside it are never read."""
    parent_uid = {"right": None, "zero": bytes(16), "random": os.urandom(16)}[uid]
    header = {"parent_name": name.encode("utf-16-be", "replace").ljust(512, b"\0")[:512]}
    child = build_dynamic(LOC_DIR / "child.vhd", 64 * KIB, 4 * KIB,
                          {0: (b"\x40", b"\x05" * 4096)}, parent=LOC_PARENT,
                          locators=locators, parent_unique_id=parent_uid, header=header)
    try:
        with open_disk(child) as disk:
            chain = disk.chain()
            assert [os.path.realpath(d.path) for d in chain[1:]] == [str(LOC_PARENT)]
            assert uid == "right"
            assert disk.read_at(0, 4096)[512:513] == b"\x05"
    except VhdkitError as exc:
        assert "top-secret" not in str(exc)


LOC_DIR = WORK / "loc" / "child-dir"
LOC_DIR.mkdir(parents=True)
LOC_PARENT = build_dynamic(LOC_DIR / "parent.vhd", 64 * KIB, 4 * KIB, {1: (None, b"\x09")}
                           ).resolve()
(WORK / "loc" / "secret.txt").write_bytes(b"top-secret\n" * 100)
(LOC_DIR / "link.vhd").symlink_to(WORK / "loc" / "secret.txt")
(LOC_DIR / "secret.txt").symlink_to(WORK / "loc" / "secret.txt")
