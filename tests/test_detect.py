"""Detection: every container vhdkit does not read is refused by name, by every command and by the
Python API, with the way out; raw disks (with real MBR boot code) are never refused; a forced
format must carry its own signature, and --format raw still reads anything."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_helpers import vhdkit
from fixtures import qemu, refused_samples
from vhdkit.errors import FormatError, UnsupportedDisk
from vhdkit.formats import detect_format, open_disk
from vhdkit.formats.detect import BY_KEY, identify

MIB = 1024 * 1024
#: real MBR boot code from syslinux (Debian syslinux-common), as `install-mbr`-style tools write
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return refused_samples.build_all(tmp_path_factory.mktemp("refused"))


def _identify(path: Path) -> str | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        sig = identify(fd, os.fstat(fd).st_size, str(path))
    finally:
        os.close(fd)
    return None if sig is None else sig.key


@pytest.mark.parametrize(("name", "key"), [(n, k) for n, k, _ in refused_samples.SAMPLES])
def test_each_sample_is_identified_by_its_signature(samples: dict[str, Path], name: str,
                                                   key: str) -> None:
    assert _identify(samples[name]) == key


#: samples whose format no reader on this branch reads (a reader that lands drops out here and
#: is tested by its own tests and tests/test_formats_generic.py)
REFUSED = [(n, k) for n, k, _ in refused_samples.SAMPLES if not BY_KEY[k].readable]


def _commands(path: str, tmp: Path) -> list[list[str]]:
    return [
        ["inspect", path],
        ["inspect", "--json", path],
        ["check", path],
        ["preflight", path],
        ["convert", path, str(tmp / "out.vhd")],
        ["upload", path, "--dry-run"],
        # the disk is refused before the (unreachable) destination is contacted
        ["bench", "--disk", path, "--emulator", "http://127.0.0.1:9", "--container", "c"],
    ]


@pytest.mark.parametrize(("name", "key"), REFUSED)
def test_every_command_refuses_in_one_line_with_the_way_out(samples: dict[str, Path], name: str,
                                                            key: str, tmp_path: Path) -> None:
    path = str(samples[name])
    sig = BY_KEY[key]
    way_out = sig.way_out.replace("DISK", path)
    for args in _commands(path, tmp_path):
        code, out, err = vhdkit(*args)
        assert code == 2, (args, out, err)
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1, (args, err)
        assert sig.label in lines[0] and way_out in lines[0], (args, lines[0])
    assert not (tmp_path / "out.vhd").exists()
    assert os.listdir(tmp_path) == []  # no temporary left by convert


@pytest.mark.parametrize(("name", "key"), REFUSED)
def test_the_python_api_refuses(samples: dict[str, Path], name: str, key: str) -> None:
    with pytest.raises(UnsupportedDisk, match=BY_KEY[key].label.replace("(", r"\(").replace(
            ")", r"\)")):
        open_disk(samples[name])
    with pytest.raises(UnsupportedDisk):
        detect_format(samples[name])


@pytest.mark.parametrize(("name", "key"), REFUSED)
def test_format_raw_still_reads_the_bytes(samples: dict[str, Path], name: str, key: str) -> None:
    path = samples[name]
    with open_disk(path, format="raw") as disk:
        assert disk.kind == "raw"
        assert disk.size == path.stat().st_size
        assert disk.read_at(0, 4096) == path.read_bytes()[:4096]
    code, out, err = vhdkit("inspect", "--format", "raw", str(path))
    assert code == 0, err
    assert "format:        raw" in out


def test_format_raw_on_every_command(samples: dict[str, Path], tmp_path: Path) -> None:
    path = str(samples["gzip"])
    out_vhd = tmp_path / "g.vhd"
    code, _, err = vhdkit("convert", "--format", "raw", path, str(out_vhd))
    assert code == 0, err
    assert qemu.compare(samples["gzip"], "raw", out_vhd, "vpc")[0] == 0
    code, out, _ = vhdkit("check", "--format", "raw", "--json", path)
    (finding,) = [f for f in json.loads(out)["findings"] if f["id"] == "format"]
    assert code == 1 and finding["message"].startswith("raw image (no VHD footer)")
    # the fix keeps the forced format, so that it works as printed
    assert finding["fix"].startswith(f"vhdkit convert --format raw {path} ")
    code, _, err = vhdkit(*shlex.split(finding["fix"])[1:])
    assert code == 0, err
    for args in (["preflight", "--format", "raw", path],
                 ["upload", "--format", "raw", path, "--dry-run", "--skip-preflight", "-q"]):
        code, _, err = vhdkit(*args)
        assert code in (0, 1), (args, err)


# --- raw disks are never refused ----------------------------------------------------------------

def _mbr_disk(path: Path, boot_code: bytes) -> Path:
    with path.open("wb") as fh:
        fh.truncate(32 * MIB)
        fh.write(boot_code)
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
                   input="label: dos\nstart=2048, size=20480, type=83, bootable\n"
                         "start=22528, type=82\n", text=True, check=True, capture_output=True)
    return path


@pytest.mark.parametrize("boot", ["syslinux", "none"])
def test_raw_disks_with_a_real_mbr_are_raw(tmp_path: Path, boot: str) -> None:
    code = SYSLINUX_MBR.read_bytes()[:440] if boot == "syslinux" else b""
    disk = _mbr_disk(tmp_path / "mbr.img", code)
    head = disk.read_bytes()[:512]
    assert head[510:512] == b"\x55\xaa" and head[:len(code)] == code
    assert detect_format(disk) == "raw"
    with open_disk(disk) as d:
        assert d.kind == "raw"
    rc, out, err = vhdkit("inspect", str(disk))
    assert rc == 0 and "format:        raw" in out, err


def _near_miss(path: Path, writes: dict[int, bytes], size: int = 4 * MIB) -> Path:
    """A raw disk that carries a container's magic number without the rest of its signature."""
    with path.open("wb") as fh:
        fh.truncate(size)
        fh.write(SYSLINUX_MBR.read_bytes()[:440])
        for off, data in writes.items():
            fh.seek(off if off >= 0 else size + off)
            fh.write(data)
    return path


NEAR_MISSES = {
    # a last sector that only starts with 'koly' (no version 4, no 512-byte header size)
    "koly": {-512: b"koly" + bytes(8)},
    # the VDI signature inside boot code, with no 1.x version after it
    "vdi": {0x40: b"\x7f\x10\xda\xbe\x99\x99\x99\x99"},
    # gzip's magic with reserved flag bits set
    "gzip": {0: b"\x1f\x8b\x08\xe0"},
    # zstd's magic with the reserved frame-header bit set
    "zstd": {0: b"\x28\xb5\x2f\xfd\x08"},
    # 'ustar' at 257 without a valid tar header checksum
    "tar": {257: b"ustar\x0000"},
    # a local zip header whose "version needed" is no zip version
    "zip": {0: b"PK\x03\x04\xff\xff"},
    # LUKS magic with no LUKS version
    "luks": {0: b"LUKS\xba\xbe\x00\x07"},
    # QED magic with a cluster size that is not a power of two
    "qed": {0: b"QED\x00\x01\x10\x00\x00"},
}


@pytest.mark.parametrize("name", sorted(NEAR_MISSES))
def test_a_magic_number_alone_does_not_make_a_container(tmp_path: Path, name: str) -> None:
    disk = _near_miss(tmp_path / f"{name}.img", NEAR_MISSES[name])
    assert detect_format(disk) == "raw"


# --- a forced format must match ----------------------------------------------------------------

@pytest.fixture(scope="module")
def vhd_and_vdi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("forced")
    raw = qemu.create(d / "r.raw", "raw", "4M")
    qemu.write(raw, "raw", [(0, 4096, 0x11)])
    return {"vhd": qemu.convert(raw, "raw", d / "d.vhd", "vpc"),
            "vdi": qemu.convert(raw, "raw", d / "d.vdi", "vdi"),
            "vhdx": qemu.convert(raw, "raw", d / "d.vhdx", "vhdx"),
            "raw": raw}


@pytest.mark.parametrize(("src", "forced", "found"), [
    ("vhd", "vhdx", "VHD"), ("vdi", "vhd", "VirtualBox VDI"), ("vhdx", "vdi", "VHDX"),
    ("vhdx", "vhd", "VHDX"), ("vdi", "vhdx", "VirtualBox VDI"),
])
def test_a_forced_format_that_does_not_match_is_refused(vhd_and_vdi: dict[str, Path], src: str,
                                                        forced: str, found: str) -> None:
    path = vhd_and_vdi[src]
    label = BY_KEY[forced].label
    with pytest.raises(FormatError, match=f"not a {label} file: .*forced.* this is .*{found}"):
        open_disk(path, format=forced)
    code, out, err = vhdkit("inspect", "--format", forced, str(path))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert f"format '{forced}' was forced" in err


@pytest.mark.parametrize(("forced", "field"), [("vdi", "header.signature at offset 64"),
                                                ("vhd", "footer.cookie at offset"),
                                                ("vhdx", "signature at offset 0")])
def test_a_forced_format_on_a_file_without_signature_names_the_field(
        vhd_and_vdi: dict[str, Path], forced: str, field: str) -> None:
    code, out, err = vhdkit("inspect", "--format", forced, str(vhd_and_vdi["raw"]))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert field in err


@pytest.mark.parametrize("fmt", ["vhd", "vdi", "vhdx"])
def test_a_forced_format_that_matches_reads(vhd_and_vdi: dict[str, Path], fmt: str) -> None:
    with open_disk(vhd_and_vdi[fmt], format=fmt) as disk:
        assert disk.read_at(0, 4096) == b"\x11" * 4096


def test_a_damaged_vhd_forced_as_vhd_names_the_field(tmp_path: Path,
                                                     vhd_and_vdi: dict[str, Path]) -> None:
    # no signature left at all: the VHD reader (not detection) says which field is wrong
    bad = tmp_path / "bad.vhd"
    shutil.copy(vhd_and_vdi["vhd"], bad)
    data = bytearray(bad.read_bytes())
    data[:512] = bytes(512)
    data[-512:] = bytes(512)
    bad.write_bytes(bytes(data))
    code, _, err = vhdkit("inspect", "--format", "vhd", str(bad))
    assert code == 2 and "footer" in err and "offset" in err
