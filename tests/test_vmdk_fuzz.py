"""Mutation fuzzing of VMDK headers, footers, descriptors, grain directories and tables, COWD
(vmfsSparse) extents and OVA archives: over 10,000 damaged images in-process, and only vhdkit's
own errors come out; memory stays bounded (no allocation sized by an unchecked field). A small
CLI sample exits 0 or 2 with one line."""

from __future__ import annotations

import atexit
import os
import random
import resource
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fixtures import qemu
from fixtures.vmdk_images import descriptor, make_cowd, make_ova, ovf, with_footer
from tests.cli_helpers import vhdkit
from vhdkit.errors import VhdkitError
from vhdkit.formats import open_disk

KIB = 1024
WORK = Path(tempfile.mkdtemp(prefix="vhdkit-vmdk-fuzz-"))
atexit.register(shutil.rmtree, WORK, True)
#: interesting values for 64-, 32- and 16-bit fields
EDGES = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x200, 0xFFFF, 1 << 31, (1 << 32) - 1,
         1 << 32, 1 << 40, 1 << 55, 1 << 63, (1 << 64) - 1]
#: (offset, struct format) of the sparse header fields
HEADER_FIELDS = [(4, "<I"), (8, "<I"), (12, "<Q"), (20, "<Q"), (28, "<Q"), (36, "<Q"), (44, "<I"),
                 (48, "<Q"), (56, "<Q"), (64, "<Q"), (77, "<H")]


def _bases() -> dict[str, tuple[Path, bytes, list[tuple[int, int]]]]:
    """name -> (the path mutated copies are written to, pristine bytes, areas to aim at)."""
    raw = qemu.create(WORK / "src.raw", "raw", str(1024 * KIB))
    qemu.write(raw, "raw", [(0, 70 * KIB, 5), (600 * KIB, 10 * KIB, 6), (1020 * KIB, 4 * KIB, 7)])
    sparse = qemu.convert(raw, "raw", WORK / "sparse.vmdk", "vmdk")
    stream = with_footer(qemu.convert(raw, "raw", WORK / "qstream.vmdk", "vmdk",
                                      "subformat=streamOptimized"), WORK / "stream.vmdk")
    split = qemu.convert(raw, "raw", WORK / "split.vmdk", "vmdk", "subformat=twoGbMaxExtentSparse")
    ova = make_ova(WORK / "one.ova", [("one.ovf", ovf([("disk1.vmdk", 1024 * KIB)]).encode()),
                                      ("disk1.vmdk", stream)])
    out: dict[str, tuple[Path, bytes, list[tuple[int, int]]]] = {}
    for name, path in (("sparse", sparse), ("stream", stream)):
        data = path.read_bytes()
        hdr = data[:512] if name == "sparse" else data[-1024:-512]
        gd = struct.unpack_from("<Q", hdr, 56)[0] * 512
        rgd = struct.unpack_from("<Q", hdr, 48)[0] * 512
        areas = [(0, 512), (512, 2048), (gd, 64), (rgd, 64), (len(data) - 1536, 1536)]
        gt = struct.unpack_from("<I", data, gd)[0] * 512
        areas += [(gt, 2048), (struct.unpack_from("<I", data, gt)[0] * 512, 64)]
        out[name] = (WORK / f"m-{name}.vmdk", data, areas)
    # the descriptor file of a split disk; its extent stays beside the mutated copy
    (WORK / "m-split-s001.vmdk").write_bytes((WORK / "split-s001.vmdk").read_bytes())
    text = split.read_bytes().replace(b"split-s001.vmdk", b"m-split-s001.vmdk")
    out["descriptor"] = (WORK / "m-split.vmdk", text, [(0, len(text))])
    # a vmfsSparse descriptor whose COWD extent is what gets mutated
    cowd = make_cowd(WORK / "m-cowd-delta.vmdk", 2048, 8,
                     {0: b"\x01" * 4096, 100: b"\x02" * 100, 255: b"\x03" * 512})
    (WORK / "m-cowd.vmdk").write_text(descriptor(
        "vmfsSparse", ['RW 2048 VMFSSPARSE "m-cowd-delta.vmdk"']))
    data = cowd.read_bytes()
    out["cowd"] = (cowd, data, [(0, 32), (2048, 64), (2560, 16384), (2560 + 16384, 1536)])
    data = ova.read_bytes()
    out["ova"] = (WORK / "m.ova", data, [(0, 512), (512, 1536), (2048, 512), (2560, 2048),
                                          (len(data) - 4096, 4096)])
    return out


BASES = _bases()
NAMES = sorted(BASES)
#: what is opened when a base's file is not itself the disk
OPENED = {"cowd": WORK / "m-cowd.vmdk"}


def exercise(path: Path) -> None:
    try:
        with open_disk(path) as disk:
            ext = disk.extents()
            disk.facts()
            disk.read_at(0, 128 * KIB)
            for e in ext[:4]:
                disk.read_at(e.start, min(e.length, 64 * KIB))
            disk.read_at(max(0, disk.size - 4096), 8192)
    except VhdkitError:
        pass


def mutate(rng: random.Random, name: str) -> bytes:
    _, data, areas = BASES[name]
    buf = bytearray(data)
    how = rng.random()
    if how < 0.3 and name != "descriptor":  # a header field of the head or the footer copy
        base = 0 if name != "stream" or rng.random() < 0.5 else len(buf) - 1024
        if name == "ova":
            base = 1536 if rng.random() < 0.5 else len(buf) - 1024 - 1024
        off, fmt = rng.choice(HEADER_FIELDS)
        bits = struct.calcsize(fmt) * 8
        value = rng.choice([*EDGES, rng.getrandbits(bits)]) & ((1 << bits) - 1)
        if base + off + bits // 8 <= len(buf):
            struct.pack_into(fmt, buf, base + off, value)
    elif how < 0.55:  # a table entry: a grain table or directory entry
        start, length = rng.choice(areas)
        pos = start + 4 * rng.randrange(max(1, length // 4))
        if pos + 4 <= len(buf):
            struct.pack_into("<I", buf, pos, rng.choice([*EDGES[:13], rng.getrandbits(32)])
                             & 0xFFFFFFFF)
    else:  # bytes in an area that matters, or anywhere
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.8:
                start, length = rng.choice(areas)
                pos = start + rng.randrange(max(1, length))
            else:
                pos = rng.randrange(len(buf))
            if pos < len(buf):
                buf[pos] = rng.choice([0, 0xFF, ord('"'), ord("\n"), ord("."), ord("/"),
                                       rng.randrange(256)])
    if rng.random() < 0.05:
        del buf[rng.randrange(len(buf)):]  # truncated
    return bytes(buf)


def run_mutated(path: Path, pristine: bytes, data: bytes, opened: Path) -> None:
    """Exercise ``data`` written over ``path`` (which holds ``pristine``) in place: only the
    changed bytes are written, then put back (rewriting whole files dominated the run time)."""
    n = min(len(pristine), len(data))
    diff = np.flatnonzero(np.frombuffer(pristine, np.uint8, n) != np.frombuffer(data, np.uint8, n))
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in diff.tolist():
            os.pwrite(fd, data[i : i + 1], i)
        if len(data) < len(pristine):
            os.ftruncate(fd, len(data))
        exercise(opened)
        for i in diff.tolist():
            os.pwrite(fd, pristine[i : i + 1], i)
        if len(data) < len(pristine):
            os.pwrite(fd, pristine[len(data) :], len(data))
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", NAMES)
def test_mutated_images_raise_only_vhdkit_errors(name: str) -> None:
    rng = random.Random(f"vmdk-{name}")
    path, pristine, _ = BASES[name]
    path.write_bytes(pristine)
    for _ in range(2100):  # x 5 bases: over 10,000 examples
        run_mutated(path, pristine, mutate(rng, name), OPENED.get(name, path))
    assert path.read_bytes() == pristine


def test_memory_stayed_bounded() -> None:
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"


def test_cli_sample_exits_2_with_one_line() -> None:
    rng = random.Random("vmdk-cli")
    failures = 0
    for i in range(40):
        name = NAMES[i % len(NAMES)]
        path = BASES[name][0]
        path.write_bytes(mutate(rng, name))
        code, _, err = vhdkit("inspect", str(OPENED.get(name, path)))
        assert code in (0, 2), err
        if code == 2:
            failures += 1
            assert err.startswith("vhdkit: error: ") and err.count("\n") == 1, err
    assert failures > 0
