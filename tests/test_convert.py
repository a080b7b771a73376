"""vhdkit convert: every input kind to an Azure-ready fixed VHD, judged by qemu-img and check;
refusals; crash safety of the copy and of the in-place repair; progress display."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from click.testing import CliRunner

import vhdkit
from fixtures import qemu, qemu_images, vhdbuild
from fixtures.qemu_images import Image
from vhdkit.azure_view import round_up_mib
from vhdkit.cli import main
from vhdkit.convert import CRASH_ENV, convert_disk, journal_path
from vhdkit.errors import UsageError
from vhdkit.extents import Extent
from vhdkit.formats import open_disk
from vhdkit.formats.vhd_structs import FOOTER_SIZE, Footer
from vhdkit.sizes import parse_size
from vhdkit.sparse_io import SparseDigest, data_digest, scan

MIB = 1024 * 1024
SRC_DIR = str(Path(vhdkit.__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    return qemu_images.build_all(tmp_path_factory.mktemp("convert-inputs"))


def cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def run_proc(*args: str, env: dict[str, str] | None = None, **kw: object,
             ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": SRC_DIR, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vhdkit", *map(str, args)], env=full,
                          capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


def assert_same_content(img: Image, out: Path) -> None:
    if img.qemu_fmt is not None:
        code, text = qemu.compare(img.path, img.qemu_fmt, out, "vpc")
        assert code == 0, text
    if img.reference is not None:
        code, text = qemu.compare(img.reference, "raw", out, "vpc")
        assert code == 0, text


def assert_azure_ready(out: Path, size: int) -> None:
    assert qemu.virtual_size(out, "vpc") == size
    assert out.stat().st_size == size + FOOTER_SIZE
    code, stdout, _ = cli("check", out)
    assert code == 0, stdout


# --------------------------------------------------------------------------------------------
# Every input kind


@pytest.mark.parametrize("name", list(qemu_images.BUILDERS))
def test_convert_every_kind(name: str, images: dict[str, Image], tmp_path: Path) -> None:
    img = images[name]
    out = tmp_path / "out.vhd"
    code, stdout, stderr = cli("convert", img.path, out)
    assert code == 0, stderr
    assert f"-> {out}" in stdout
    want = round_up_mib(img.size)
    assert_same_content(img, out)
    assert_azure_ready(out, want)
    # sparse: allocated blocks within 5 % + 1 MiB of the non-zero data
    allocated = out.stat().st_blocks * 512
    assert allocated <= img.nonzero * 1.05 + MIB, (allocated, img.nonzero)
    assert allocated >= img.nonzero


def test_verify_and_resize_json(images: dict[str, Image], tmp_path: Path) -> None:
    img = images["diff-chain"]
    out = tmp_path / "big.vhd"
    code, stdout, _ = cli("convert", img.path, out, "--size", "64M", "--verify", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["virtual_size"] == 64 * MIB and doc["source_size"] == img.size
    assert doc["input_kind"] == "vhd-differencing"
    assert doc["verified"] is True and doc["check"] == {"ready": True, "errors": []}
    with open_disk(img.reference) as ref:  # type: ignore[arg-type]
        assert doc["digest"] == data_digest(ref, size=64 * MIB)
    assert_same_content(img, out)
    assert_azure_ready(out, 64 * MIB)


def test_text_summary(images: dict[str, Image], tmp_path: Path) -> None:
    img = images["dyn-edges"]
    code, stdout, _ = cli("convert", img.path, tmp_path / "o.vhd", "--verify")
    assert code == 0
    assert "input:        vhd-dynamic, virtual size 104,865,792 bytes" in stdout
    assert ("output:       fixed VHD, virtual size 105,906,176 bytes (101.00 MiB) (resized)"
            in stdout)
    assert "verified:     data digest sha256" in stdout
    assert "READY for Azure" in stdout


def test_quiet_prints_nothing(images: dict[str, Image], tmp_path: Path) -> None:
    code, stdout, stderr = cli("convert", images["raw-holes"].path, tmp_path / "o.vhd", "-q")
    assert (code, stdout, stderr) == (0, "", "")


def test_explicit_parent(tmp_path: Path) -> None:
    """--parent overrides the locators: a child moved away from its parent still converts."""
    (tmp_path / "built").mkdir()
    img = qemu_images.diff_chain(tmp_path / "built")
    chain = tmp_path / "chain"
    (tmp_path / "built").rename(chain)  # absolute locators now point nowhere; relative ones work
    alone = tmp_path / "alone"
    alone.mkdir()
    top = alone / "top.vhd"
    (chain / "chain-top.vhd").rename(top)
    code, _, stderr = cli("convert", top, tmp_path / "o.vhd")
    assert code == 2 and "parent disk not found" in stderr
    code, _, stderr = cli("convert", top, tmp_path / "o.vhd", "--parent", chain / "chain-mid.vhd")
    assert code == 0, stderr
    code, text = qemu.compare(chain / "chain.ref.raw", "raw", tmp_path / "o.vhd", "vpc")
    assert code == 0, text
    assert img.size == qemu.virtual_size(chain / "chain.ref.raw", "raw")


def test_verify_detects_a_corrupted_output(images: dict[str, Image], tmp_path: Path) -> None:
    """The digest comparison is real: flip a byte between writing and verifying."""
    # the module, not the `vhdkit.convert` function the package re-exports under that name
    conv = importlib.import_module("vhdkit.convert")

    img = images["raw-holes"]
    real = conv._write_temp

    def corrupting(view, extents, tmp, *args):  # type: ignore[no-untyped-def]
        result = real(view, extents, tmp, *args)
        with open(tmp, "r+b") as fh:
            fh.seek(19 * MIB)
            fh.write(b"\x00")
        return result

    conv._write_temp = corrupting  # type: ignore[assignment]
    try:
        with pytest.raises(vhdkit.errors.ConvertError, match=r"verification failed: the output's "
                           r"data digest .* differs from the source's"):
            convert_disk(img.path, tmp_path / "o.vhd", verify=True)
    finally:
        conv._write_temp = real  # type: ignore[assignment]
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Refusals: exact message, exit code 2


def test_refuses_same_file_plain_symlink_and_hardlink(images: dict[str, Image],
                                                      tmp_path: Path) -> None:
    src = tmp_path / "src.vhd"
    shutil.copy(images["fixed-chs"].path, src)
    before = src.read_bytes()
    link = tmp_path / "link.vhd"
    link.symlink_to(src)
    hard = tmp_path / "hard.vhd"
    os.link(src, hard)
    for dst in (src, link, hard):
        code, _, stderr = cli("convert", src, dst, "--force")
        assert code == 2
        assert stderr == (f"vhdkit: error: {dst} is the source disk itself; "
                          "choose another destination\n")
    assert src.read_bytes() == before


def test_refuses_a_parent_of_the_chain(images: dict[str, Image]) -> None:
    img = images["diff-chain"]
    base = img.path.parent / "chain-base.vhd"
    before = base.stat().st_mtime_ns
    code, _, stderr = cli("convert", img.path, base, "--force")
    assert code == 2
    assert stderr == (f"vhdkit: error: {base} is the parent disk {base} of {img.path}; "
                      "writing it would destroy the source\n")
    assert base.stat().st_mtime_ns == before


def test_refuses_existing_destination(images: dict[str, Image], tmp_path: Path) -> None:
    dst = tmp_path / "o.vhd"
    dst.write_bytes(b"keep me")
    code, _, stderr = cli("convert", images["raw-holes"].path, dst)
    assert code == 2
    assert stderr == f"vhdkit: error: {dst} already exists; use --force to replace it\n"
    assert dst.read_bytes() == b"keep me"
    code, _, _ = cli("convert", images["raw-holes"].path, dst, "--force", "-q")
    assert code == 0 and qemu.virtual_size(dst, "vpc") == 31 * MIB


def test_refuses_size_smaller_than_data_and_not_whole_mib(images: dict[str, Image],
                                                          tmp_path: Path) -> None:
    src = images["dyn-edges"].path
    code, _, stderr = cli("convert", src, tmp_path / "o.vhd", "--size", "64M")
    assert code == 2
    assert stderr == ("vhdkit: error: size 67108864 is smaller than the disk's virtual size "
                      "104865792; shrinking would cut data\n")
    code, _, stderr = cli("convert", src, tmp_path / "o.vhd", "--size", "104865792")
    assert code == 2
    assert stderr == ("vhdkit: error: size 104865792 is not a whole number of MiB "
                      "(next whole MiB: 105906176)\n")
    code, _, stderr = cli("convert", src, tmp_path / "o.vhd", "--size", "12X")
    assert code == 2 and "invalid size '12X'" in stderr
    assert os.listdir(tmp_path) == []


def test_refuses_when_free_space_is_short(tmp_path: Path) -> None:
    """A sparse fixed VHDX whose BAT marks every block present: all of it counts as data."""
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    size = round_up_mib(2 * free + 1024 * MIB)
    src = qemu.create(tmp_path / "huge.vhdx", "vhdx", str(size), "subformat=fixed",
                      "block_state_zero=off")
    dst = tmp_path / "o.vhd"
    code, _, stderr = cli("convert", src, dst)
    assert code == 2
    assert stderr.startswith(f"vhdkit: error: not enough free space in {tmp_path}: up to "
                             f"{size + 512} bytes of data to write, ")
    assert stderr.endswith(" bytes available\n")
    assert sorted(os.listdir(tmp_path)) == ["huge.vhdx"]


def test_refuses_bad_argument_combinations(images: dict[str, Image], tmp_path: Path) -> None:
    src = images["fixed-chs"].path
    code, _, stderr = cli("convert", src)
    assert (code, stderr) == (2, "vhdkit: error: missing DST: vhdkit convert SRC DST "
                                 "(or --in-place DISK)\n")
    code, _, stderr = cli("convert", "--in-place", src, tmp_path / "x.vhd")
    assert (code, stderr) == (2, "vhdkit: error: --in-place takes one DISK and no DST\n")
    code, _, stderr = cli("convert", "--in-place", images["dyn-edges"].path)
    assert code == 2
    assert stderr == (f"vhdkit: error: {images['dyn-edges'].path}: --in-place repairs fixed "
                      "VHDs only (this is a vhd-dynamic); use: vhdkit convert SRC DST\n")


# --------------------------------------------------------------------------------------------
# Crash safety (a real process killed with SIGKILL at each step, then the same command again)


@pytest.mark.parametrize("point", ["after-data", "after-footer", "before-rename",
                                   "after-rename"])
def test_killed_convert_leaves_nothing_half_written(point: str, images: dict[str, Image],
                                                    tmp_path: Path) -> None:
    img = images["dyn-edges"]
    dst = tmp_path / "o.vhd"
    args = ("convert", img.path, dst, "--force", "-q")
    res = run_proc(*args, env={CRASH_ENV: point})
    assert res.returncode == -signal.SIGKILL
    if point == "after-rename":
        assert_same_content(img, dst)  # complete and valid
    else:
        assert not dst.exists()
        assert [p for p in os.listdir(tmp_path) if ".vhdkit-tmp-" in p]  # the killed temporary
    res = run_proc(*args)
    assert res.returncode == 0, res.stderr
    assert os.listdir(tmp_path) == ["o.vhd"]
    assert_same_content(img, dst)
    assert_azure_ready(dst, round_up_mib(img.size))


def test_temporaries_of_live_processes_are_kept(images: dict[str, Image],
                                                tmp_path: Path) -> None:
    live = tmp_path / f".o.vhd.vhdkit-tmp-{os.getppid()}-00000000"
    dead = tmp_path / ".o.vhd.vhdkit-tmp-4194303-00000000"
    live.write_bytes(b"x")
    dead.write_bytes(b"x")
    code, _, _ = cli("convert", images["raw-holes"].path, tmp_path / "o.vhd", "-q")
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "o.vhd"])


# --------------------------------------------------------------------------------------------
# In-place repair of a fixed VHD


def _fixed_copy(images: dict[str, Image], tmp_path: Path) -> tuple[Path, Image, bytes]:
    img = images["fixed-chs"]
    disk = tmp_path / "disk.vhd"
    shutil.copy(img.path, disk)
    return disk, img, disk.read_bytes()[-FOOTER_SIZE:]


def _assert_grown(disk: Path, img: Image, old_size: int, new_size: int) -> None:
    assert disk.stat().st_size == new_size + FOOTER_SIZE
    code, text = qemu.compare(img.path, "vpc", disk, "vpc")
    assert code == 0, text
    with open(disk, "rb") as fh:
        fh.seek(old_size)
        assert fh.read(FOOTER_SIZE) == bytes(FOOTER_SIZE)  # the old footer is gone
    assert_azure_ready(disk, new_size)
    assert not os.path.exists(journal_path(str(disk)))


def test_in_place_grows_to_whole_mib(images: dict[str, Image], tmp_path: Path) -> None:
    disk, img, old_footer = _fixed_copy(images, tmp_path)
    code, _, _ = cli("check", disk)
    assert code == 1
    code, stdout, _ = cli("convert", "--in-place", disk)
    assert code == 0
    assert "grown in place from 104,865,792 bytes (100.01 MiB) to 105,906,176 bytes" in stdout
    _assert_grown(disk, img, img.size, round_up_mib(img.size))
    new = Footer.parse(disk.read_bytes()[-FOOTER_SIZE:])
    assert new.unique_id == Footer.parse(old_footer).unique_id
    code, stdout, _ = cli("convert", "--in-place", disk, "--json")
    assert code == 0 and json.loads(stdout)["unchanged"] is True
    code, stdout, _ = cli("convert", "--in-place", disk, "--size", "1G")
    assert code == 0
    _assert_grown(disk, img, round_up_mib(img.size), 1024 * MIB)


@pytest.mark.parametrize("point", ["inplace-after-journal", "inplace-after-footer",
                                   "inplace-after-zero"])
def test_killed_in_place_is_completed_by_a_rerun(point: str, images: dict[str, Image],
                                                 tmp_path: Path) -> None:
    disk, img, _ = _fixed_copy(images, tmp_path)
    new_size = 200 * MIB
    res = run_proc("convert", "--in-place", disk, "--size", "200M", env={CRASH_ENV: point})
    assert res.returncode == -signal.SIGKILL
    # At the kill the file is the old valid disk or the new valid disk.
    with open_disk(disk) as d:
        assert d.kind == "vhd-fixed" and d.size in (img.size, new_size)
    assert os.path.exists(journal_path(str(disk)))
    res = run_proc("convert", "--in-place", disk, "--size", "200M")
    assert res.returncode == 0, res.stderr
    assert "completed an interrupted earlier in-place repair first" in res.stdout
    _assert_grown(disk, img, img.size, new_size)
    assert sorted(os.listdir(tmp_path)) == ["disk.vhd"]


def test_in_place_recovers_a_torn_tail(images: dict[str, Image], tmp_path: Path) -> None:
    """Power lost during the extend: the file is longer but its new footer never reached the
    disk. The journal still says what to write."""
    disk, img, _ = _fixed_copy(images, tmp_path)
    res = run_proc("convert", "--in-place", disk, env={CRASH_ENV: "inplace-after-journal"})
    assert res.returncode == -signal.SIGKILL
    new_size = round_up_mib(img.size)
    with open(disk, "r+b") as fh:
        fh.truncate(new_size + FOOTER_SIZE)  # extended, tail all zeros
    res = run_proc("convert", "--in-place", disk)
    assert res.returncode == 0, res.stderr
    _assert_grown(disk, img, img.size, new_size)


# --------------------------------------------------------------------------------------------
# Progress, sizes, digest


def test_progress_hidden_without_a_tty_and_shown_with_one(images: dict[str, Image],
                                                          tmp_path: Path) -> None:
    src = images["diff-chain"].path
    res = run_proc("convert", src, tmp_path / "a.vhd")
    # no terminal (a CI log): status lines, not a bar (tests/test_progress.py has the details)
    assert res.returncode == 0 and "\r" not in res.stderr
    assert res.stderr.splitlines()[-1].startswith("convert: 100.0 % of ")
    leader, follower = pty.openpty()
    # a pty starts with 0 columns, and tqdm draws nothing in a zero-width terminal
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.run([sys.executable, "-m", "vhdkit", "convert", str(src),
                               str(tmp_path / "b.vhd")], env={**os.environ,
                              "PYTHONPATH": SRC_DIR}, stdout=subprocess.DEVNULL,
                              stderr=follower, check=False)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0
    assert b"convert 100%|" in shown and b"MiB/s" in shown
    res = run_proc("convert", src, tmp_path / "c.vhd", "--quiet")
    assert (res.stdout, res.stderr) == ("", "")


@pytest.mark.parametrize(("text", "value"), [
    ("1024", 1024), ("512M", 512 * MIB), ("512MiB", 512 * MIB), ("10G", 10 << 30),
    ("10GiB", 10 << 30), ("10gb", 10 << 30), ("1T", 1 << 40), ("64k", 64 << 10)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "1.5G", "10X", "-1", "G10"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


def test_digest_does_not_depend_on_chunking(images: dict[str, Image]) -> None:
    img = images["dyn-512k"]
    with open_disk(img.path) as disk:
        digests = set()
        for chunk in (512 * 1024, 3 * 512 * 1024, 8 * MIB):
            d = SparseDigest()
            for run, data in scan(disk, [Extent(0, disk.size)], chunk):
                d.update(run.start, data)
            digests.add(d.hexdigest(disk.size))
        assert len(digests) == 1
        # and it does see one changed byte
        d = SparseDigest()
        for run, data in scan(disk, [Extent(0, disk.size)], MIB):
            d.update(run.start, bytes(data[:-1]) + b"\x7f")
        assert d.hexdigest(disk.size) not in digests


def test_hand_built_corrupt_variant_is_refused(tmp_path: Path) -> None:
    """vhdbuild's corrupt variants reach convert as one-line errors, exit 2."""
    bad = vhdbuild.build_dynamic(tmp_path / "bad.vhd", 24 * MIB, 2 * MIB,
                                 {0: (None, b"x" * 512)}, header={"cookie": b"cxsparsX"})
    code, _, stderr = cli("convert", bad, tmp_path / "o.vhd")
    assert code == 2
    assert stderr == (f"vhdkit: error: {bad}: header.cookie at offset 512: expected "
                      "b'cxsparse', found b'cxsparsX'\n")
    assert sorted(os.listdir(tmp_path)) == ["bad.vhd"]


def test_in_place_rewrites_a_footer_qemu_misreads(tmp_path: Path) -> None:
    """Whole MiB already, but creator 'vpc ' makes qemu read the CHS size: footer rewritten."""
    disk = vhdbuild.build_fixed(tmp_path / "d.vhd", 100 * MIB, writes={0: b"\x42" * 512},
                                creator_app=b"vpc ")
    assert qemu.virtual_size(disk, "vpc") != 100 * MIB
    code, stdout, _ = cli("convert", "--in-place", disk, "--json")
    assert code == 0 and json.loads(stdout)["unchanged"] is False
    assert_azure_ready(disk, 100 * MIB)
    assert Footer.parse(disk.read_bytes()[-FOOTER_SIZE:]).creator_app == b"win "
    with open_disk(disk) as d:
        assert d.read_at(0, 512) == b"\x42" * 512


def test_in_place_refuses_extra_bytes_and_ignores_a_torn_journal(tmp_path: Path) -> None:
    disk = vhdbuild.build_fixed(tmp_path / "d.vhd", 30 * MIB + 512)
    journal = Path(journal_path(str(disk)))
    journal.write_bytes(b"conectix" + bytes(100))  # a journal whose write never completed
    code, _, _ = cli("convert", "--in-place", disk)
    assert code == 0 and not journal.exists()
    assert_azure_ready(disk, 31 * MIB)
    # a footer that claims less than the file holds before it
    disk = vhdbuild.build_fixed(tmp_path / "e.vhd", 31 * MIB + 512, current_size=31 * MIB)
    code, _, stderr = cli("convert", "--in-place", disk)
    assert code == 2
    assert stderr == (f"vhdkit: error: {disk}: file size {31 * MIB + 1024} is not the virtual "
                      f"size {31 * MIB} + 512; in-place repair cannot tell data from padding: "
                      "use vhdkit convert SRC DST\n")


def test_in_place_refuses_a_journal_that_does_not_fit(images: dict[str, Image],
                                                      tmp_path: Path) -> None:
    disk, _, _ = _fixed_copy(images, tmp_path)
    res = run_proc("convert", "--in-place", disk, env={CRASH_ENV: "inplace-after-journal"})
    assert res.returncode == -signal.SIGKILL
    with open(disk, "ab") as fh:
        fh.write(bytes(4096))  # someone changed the file meanwhile
    code, _, stderr = cli("convert", "--in-place", disk)
    assert code == 2
    assert f"an interrupted in-place repair left {journal_path(str(disk))}" in stderr
    assert os.path.exists(journal_path(str(disk)))


def test_library_call_with_open_disk_and_progress(images: dict[str, Image],
                                                  tmp_path: Path) -> None:
    img = images["dyn-512k"]
    seen: list[tuple[str, int, int]] = []
    with open_disk(img.path) as disk:
        result = convert_disk(disk, tmp_path / "o.vhd", 48 * MIB, verify=True,
                         progress=lambda *a: seen.append(a))
        assert disk.read_at(0, 4)  # the caller's disk stays open
    assert result.virtual_size == 48 * MIB and result.input_kind == "vhd-dynamic"
    assert result.bytes_written == img.nonzero
    phases = {p for p, _, _ in seen}
    assert phases == {"convert", "verify"}
    last = [s for s in seen if s[0] == "convert"][-1]
    assert last[1] == last[2] == result.data_bytes
    assert_same_content(img, tmp_path / "o.vhd")


def test_reads_without_preadv(images: dict[str, Image], monkeypatch: pytest.MonkeyPatch,
                              tmp_path: Path) -> None:
    """The pread fallback (platforms without preadv) converts to the same bytes."""
    import vhdkit.formats.base

    monkeypatch.setattr(vhdkit.formats.base, "HAVE_PREADV", False)
    img = images["diff-chain"]
    convert_disk(img.path, tmp_path / "o.vhd")
    assert_same_content(img, tmp_path / "o.vhd")


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"bat_entries": 13}, "vhd.bat-entries"),  # one extra entry, as qemu < 5.0 wrote
    ({"bat_overrides": {1: 0x7FFFFFF}}, "vhd.bat-range"),  # block past the end of the file
    ({"bat_overrides": {1: 2}}, "vhd.bat-overlap"),  # block over the header / BAT
    ({"block_order": [1, 0], "bat_overrides": {0: 6}}, "vhd.bat-overlap"),  # over block 1
    ({"header": {"checksum": 1}}, "vhd.header-checksum"),
    ({"head_footer": bytes(512)}, "vhd.footer-copy"),
])
def test_vhdbuild_corrupt_variants(kwargs: dict[str, object], rule: str,
                                   tmp_path: Path) -> None:
    """The hand-built corrupt variants are what they claim (the Foundation tests rely on it)."""
    blocks: dict[int, tuple[bytes | None, bytes]] = {0: (None, b"\x01" * 512),
                                                     1: (b"\x80", b"\x02" * 512)}
    path = vhdbuild.build_dynamic(tmp_path / "c.vhd", 24 * MIB, 2 * MIB, blocks,
                                  **kwargs)  # type: ignore[arg-type]
    with open_disk(path, strict=False) as disk:
        rules = {a.rule for a in disk.image.anomalies}  # type: ignore[attr-defined]
    assert rule in rules


def test_vhdbuild_stale_footer_checksum(tmp_path: Path) -> None:
    path = vhdbuild.build_fixed(tmp_path / "f.vhd", 20 * MIB, fix_checksum=False, timestamp=5)
    with pytest.raises(vhdkit.errors.FormatError, match=r"footer\.checksum"):
        open_disk(path)
