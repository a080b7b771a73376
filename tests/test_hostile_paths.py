"""Unlucky paths (issue 11): FIFOs and devices as inputs (case 7, 10), non-regular destinations
(case 2), reports over the input (case 3), racing converts (case 4), huge sizes (case 8), and
the temporaries of killed runs."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import vhdkit
from cli_helpers import vhdkit as cli
from fixtures.vhdbuild import KIB, MIB, build_dynamic, build_fixed
from vhdkit.convert import RACE_ENV, convert_disk
from vhdkit.errors import DiskIOError, UsageError, VhdkitError
from vhdkit.formats.base import fd_size, file_size
from vhdkit.sizes import MAX_SIZE, parse_size

SRC_DIR = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile-paths")
    base = build_dynamic(d / "base.vhd", 20 * MIB, 512 * KIB, {0: (None, b"\x11" * 4096)})
    return {
        "fixed": build_fixed(d / "fixed.vhd", 20 * MIB, writes={0: b"\xaa" * 512}),
        "fixed2": build_fixed(d / "fixed2.vhd", 20 * MIB, writes={0: b"\xbb" * 512}),
        "base": base,
        "child": build_dynamic(d / "child.vhd", 20 * MIB, 512 * KIB, {1: (None, b"\x22")},
                               parent=base),
    }


def run_proc(*args: str | Path, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """vhdkit in its own process; the timeout only turns a hang into a failure."""
    full = {**os.environ, "PYTHONPATH": SRC_DIR, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vhdkit", *map(str, args)], env=full,
                          capture_output=True, text=True, check=False, timeout=timeout)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "x.vhd"
    os.mkfifo(path)
    yield path


# ---- case 7: a FIFO never hangs a command ----------------------------------------------------

def test_fifo_input_is_refused_by_every_command(fifo: Path, disks: dict[str, Path],
                                                tmp_path: Path) -> None:
    commands = [
        ["inspect", fifo], ["check", fifo], ["preflight", fifo],
        ["convert", fifo, tmp_path / "o.vhd"], ["convert", "--in-place", fifo],
        ["upload", fifo, "--dry-run", "--skip-preflight"],
        ["inspect", disks["child"], "--parent", fifo],
        ["convert", disks["child"], tmp_path / "o.vhd", "--parent", fifo],
    ]
    # all in one process: a hang in any of them fails the test through the timeout
    script = ("import sys\nfrom click.testing import CliRunner\nfrom vhdkit.cli import main\n"
              f"for args in {[[str(a) for a in c] for c in commands]!r}:\n"
              "    r = CliRunner().invoke(main, args)\n"
              "    print(r.exit_code, repr(r.stderr.strip()))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": SRC_DIR}, check=False)
    lines = res.stdout.splitlines()
    assert len(lines) == len(commands), res.stderr
    for args, line in zip(commands, lines, strict=True):
        code, msg = line.split(" ", 1)
        assert code == "2", (args, line)
        assert "FIFO" in msg, (args, line)
    assert not (tmp_path / "o.vhd").exists()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ---- case 10: one sizing path, block devices included ----------------------------------------

def test_one_sizing_path_for_regular_files_and_block_devices(disks: dict[str, Path]) -> None:
    path = disks["fixed"]
    fd = os.open(path, os.O_RDONLY)
    try:
        want = path.stat().st_size
        assert fd_size(fd, stat.S_IFREG, str(path)) == want
        # a block device has st_size 0: its size is where a seek to the end lands
        os.lseek(fd, 0, os.SEEK_SET)
        assert fd_size(fd, stat.S_IFBLK, str(path)) == want
        for mode, word in ((stat.S_IFCHR, "character device"), (stat.S_IFIFO, "FIFO"),
                           (stat.S_IFSOCK, "socket"), (stat.S_IFDIR, "directory")):
            with pytest.raises(DiskIOError, match=word):
                fd_size(fd, mode, str(path))
    finally:
        os.close(fd)
    assert file_size(str(path)) == want


def test_character_devices_are_refused_by_every_command() -> None:
    for args in (["check", "/dev/zero"], ["inspect", "/dev/zero"], ["convert", "/dev/zero",
                 "/nonexistent-dir/o.vhd"], ["upload", "/dev/zero", "--dry-run"]):
        code, _, err = cli(*args)
        assert code == 2 and "character device, not a disk image" in err, (args, err)


# ---- case 2: never replace a non-regular destination --------------------------------------

def test_non_regular_destinations_are_never_replaced(disks: dict[str, Path],
                                                     tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.vhd"
    os.mkfifo(fifo)
    link = tmp_path / "null.vhd"
    link.symlink_to("/dev/null")
    sock_path = tmp_path / "sock.vhd"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    targets = [fifo, link, sock_path]
    if os.geteuid() == 0:  # a private clone of /dev/null (major 1, minor 3)
        dev = tmp_path / "dev-null.vhd"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets.append(dev)
    try:
        for dst in targets:
            before = os.lstat(dst)
            for extra in ([], ["--force"]):
                code, _, err = cli("convert", str(disks["fixed"]), str(dst), *extra)
                assert code == 2, (dst, extra, err)
                assert "not a regular file: vhdkit never replaces it" in err, err
            after = os.lstat(dst)
            assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
        assert not [p for p in os.listdir(tmp_path) if ".vhdkit-tmp-" in p]
    finally:
        sock.close()


# ---- case 3: reports never overwrite the disk (or its parents) -------------------------------

@pytest.mark.parametrize("command", ["check", "preflight"])
def test_report_over_the_input_or_its_parent_is_refused(command: str, disks: dict[str, Path],
                                                        tmp_path: Path) -> None:
    child = tmp_path / "child.vhd"
    base = tmp_path / "base.vhd"
    child.write_bytes(disks["child"].read_bytes())
    base.write_bytes(disks["base"].read_bytes())
    before = {p: p.read_bytes() for p in (child, base)}
    for junit in (child, base, tmp_path / "link.xml"):
        if junit.name == "link.xml":
            junit.symlink_to(base)
        code, _, err = cli(command, str(child), "--junit", str(junit))
        assert code == 2, err
        assert "would overwrite the input disk" in err, err
    assert {p: p.read_bytes() for p in (child, base)} == before


def test_bench_chart_over_the_measured_disk_is_refused(disks: dict[str, Path],
                                                        tmp_path: Path) -> None:
    disk = tmp_path / "d.vhd"
    disk.write_bytes(disks["fixed"].read_bytes())
    code, _, err = cli("bench", "--emulator", "--container", "c", "--shape", "disk", "--disk",
                       str(disk), "--plot", str(disk))
    assert code == 2 and "would overwrite the input disk" in err, err
    assert disk.read_bytes() == disks["fixed"].read_bytes()


def test_reports_are_written_atomically_over_a_regular_file(disks: dict[str, Path],
                                                            tmp_path: Path) -> None:
    report = tmp_path / "r.xml"
    report.write_text("old")
    ino = report.stat().st_ino
    code, _, err = cli("check", str(disks["fixed"]), "--junit", str(report))
    assert code in (0, 1), err
    assert report.read_text().startswith("<?xml") and report.stat().st_ino != ino
    assert sorted(os.listdir(tmp_path)) == ["r.xml"]


# ---- case 4: racing converts to one new destination -----------------------------------------

def test_racing_converts_forced_into_one_window(disks: dict[str, Path], tmp_path: Path) -> None:
    """Both processes finish their output, wait at the rename, then go together: exactly one
    creates the destination, the other exits 2 "already exists"."""
    dst = tmp_path / "o.vhd"
    hold = tmp_path / "go"
    env = {RACE_ENV: str(hold)}
    full = {**os.environ, "PYTHONPATH": SRC_DIR, **env}
    procs = [subprocess.Popen([sys.executable, "-m", "vhdkit", "convert", str(src), str(dst),
                               "-q"], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for src in (disks["fixed"], disks["fixed2"])]
    try:
        for p in procs:  # wait until both are held inside the window
            ready = Path(f"{hold}.{p.pid}.ready")
            for _ in range(6000):
                if ready.exists() or p.poll() is not None:
                    break
                threading.Event().wait(0.01)
            assert ready.exists(), p.communicate()
        assert not dst.exists()
        hold.touch()
        results = [(p.wait(timeout=60), p.communicate()[1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser == f"vhdkit: error: {dst} already exists; use --force to replace it\n"
    winner = disks["fixed"] if results[0][0] == 0 else disks["fixed2"]
    assert dst.read_bytes()[:512] == winner.read_bytes()[:512]
    assert not [p for p in os.listdir(tmp_path) if ".vhdkit-tmp-" in p]


def _convert_after(barrier: threading.Barrier, src: Path, dst: Path, outcome: list[str]) -> None:
    barrier.wait()
    try:
        convert_disk(src, dst)
        outcome.append("ok")
    except VhdkitError as exc:
        outcome.append(str(exc))


def test_racing_converts_many_times(disks: dict[str, Path], tmp_path: Path) -> None:
    for trial in range(25):
        dst = tmp_path / f"o{trial}.vhd"
        barrier = threading.Barrier(3)
        outcome: list[str] = []
        threads = [threading.Thread(target=_convert_after, args=(barrier, s, dst, outcome))
                   for s in (disks["fixed"], disks["fixed2"], disks["fixed"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcome.count("ok") == 1, outcome
        assert all(o == "ok" or o.endswith("already exists; use --force to replace it")
                   for o in outcome), outcome
    assert not [p for p in os.listdir(tmp_path) if ".vhdkit-tmp-" in p]


# ---- case 8: sizes of 2^64 bytes and more -----------------------------------------------------

def test_huge_sizes_are_one_line_errors(disks: dict[str, Path], tmp_path: Path) -> None:
    for text in ("99999999999999999999T", str(1 << 64), "9" * 5000):
        with pytest.raises(UsageError, match="too large"):
            parse_size(text)
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    for size in (2**70, 2**64, MAX_SIZE + MIB, -MIB):
        with pytest.raises(vhdkit.VhdkitError, match=r"too large|negative"):
            vhdkit.convert_disk(disks["fixed"], tmp_path / "o.vhd", size=size)
    copy = tmp_path / "f.vhd"
    copy.write_bytes(disks["fixed"].read_bytes())
    with pytest.raises(vhdkit.VhdkitError, match="too large"):
        vhdkit.convert_in_place(copy, size=2**70)
    for args in (["convert", str(disks["fixed"]), str(tmp_path / "o.vhd"), "--size",
                  "99999999999999999999T"],
                 ["convert", "--in-place", str(copy), "--size", "99999999999999999999T"],
                 ["bench", "--emulator", "--container", "c", "--size", "99999999999999999999T"]):
        code, _, err = cli(*args)
        assert code == 2 and "too large" in err and "Traceback" not in err, (args, err)
    assert sorted(os.listdir(tmp_path)) == ["f.vhd"]
    assert copy.read_bytes() == disks["fixed"].read_bytes()


def test_hostile_dynamic_size_near_two_to_the_64(tmp_path: Path) -> None:
    path = build_dynamic(tmp_path / "big.vhd", 64 * KIB, 4 * KIB, {},
                         footer={"current_size": (1 << 64) - 512})
    for args in (["convert", str(path), str(tmp_path / "o.vhd")],
                 ["upload", str(path), "--dry-run", "--skip-preflight"]):
        code, _, err = cli(*args)
        assert code == 2 and len(err.splitlines()) == 1, (args, err)


# ---- smaller ones: temporaries ------------------------------------------------------------------

def test_errors_name_the_destination_not_the_temporary(disks: dict[str, Path],
                                                       tmp_path: Path) -> None:
    # a 1 MiB file size limit: writing the 20 MiB output fails with EFBIG
    script = ("import resource, sys\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
              "from vhdkit.cli import main\nmain()\n")
    dst = tmp_path / "o.vhd"
    res = subprocess.run([sys.executable, "-c", script, "convert", str(disks["fixed"]), str(dst)],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "PYTHONPATH": SRC_DIR})
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"vhdkit: error: {dst}: File too large"), res.stderr
    assert ".vhdkit-tmp-" not in res.stderr
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed_and_reported(
        disks: dict[str, Path], tmp_path: Path) -> None:
    dead = [tmp_path / ".other.vhd.vhdkit-tmp-4194303-00000000",
            tmp_path / ".o.vhd.vhdkit-tmp-4194302-12345678"]
    live = tmp_path / f".x.vhd.vhdkit-tmp-{os.getpid()}-00000000"
    for p in (*dead, live):
        p.write_bytes(b"x")
    res = run_proc("convert", disks["fixed"], tmp_path / "o.vhd")
    assert res.returncode == 0, res.stderr
    assert "removed 2 temporary file(s) left by killed runs" in res.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "o.vhd"])


def test_stale_temporary_of_a_reused_pid_is_removed(disks: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """A killed writer's PID, given to a later process: that process started after the
    temporary was last written, so it is not the writer and the temporary goes. The running
    writer's own temporary (written after it started) stays."""
    reused = tmp_path / f".o.vhd.vhdkit-tmp-{os.getpid()}-00000001"
    reused.write_bytes(b"x")
    os.utime(reused, (1_000_000_000, 1_000_000_000))  # 2001: long before this process
    live = tmp_path / f".x.vhd.vhdkit-tmp-{os.getpid()}-00000002"
    live.write_bytes(b"x")
    res = run_proc("convert", disks["fixed"], tmp_path / "o.vhd")
    assert res.returncode == 0, res.stderr
    assert "removed 1 temporary file(s) left by killed runs" in res.stderr
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "o.vhd"])


# ---- case 9: tiny blocks cost memory in proportion to the data ------------------------------

def test_tiny_blocks_every_entry_allocated_stays_bounded(tmp_path: Path) -> None:
    """512-byte blocks, every BAT entry allocated (the issue's image, scaled down to 128 MiB):
    right answers, and traced memory far below one object per block. Speed is measured by
    benchmarks/bench_tiny_blocks.py, not here."""
    import tracemalloc

    from benchmarks.bench_tiny_blocks import build
    from vhdkit.formats import open_disk

    empty, full = tmp_path / "empty.vhd", tmp_path / "full.vhd"
    build(empty, 128 * MIB, full_bitmaps=False)  # 256 Ki entries, bitmaps all zero
    build(full, 16 * MIB, full_bitmaps=True)  # 32 Ki blocks, every sector present
    tracemalloc.start()
    try:
        with open_disk(empty) as disk:
            assert disk.extents() == []
            assert disk.read_at(0, 4 * MIB) == bytes(4 * MIB)
        with open_disk(full) as disk:
            assert [(e.start, e.length) for e in disk.extents()] == [(0, 16 * MIB)]
            data = b"".join(disk.read_at(o, 4 * MIB) for o in range(0, 16 * MIB, 4 * MIB))
            assert data[::512] == b"\x5a" * (16 * MIB // 512)
            assert data.count(0) == 16 * MIB - 16 * MIB // 512
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the 16 MiB result and a 4 MiB request's buffers are counted: the rest stays small
    assert peak < 40 * MIB, peak


def test_forced_vhdx_reader_refuses_a_vhd(disks: dict[str, Path]) -> None:
    """libvhdi opens VHDs too: ``format="vhdx"`` must still refuse one, by its signature."""
    from vhdkit.errors import FormatError
    from vhdkit.formats import open_disk

    with pytest.raises(FormatError, match="not a VHDX file"):
        open_disk(disks["fixed"], format="vhdx")


def test_alternating_bitmaps_give_few_covering_extents(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other sector present in every block: extents() stays under its cap, still covers
    every present sector, and reads are unchanged."""
    from fixtures.vhdbuild import flatten
    from vhdkit.extents import nonzero_runs, subtract
    from vhdkit.formats import open_disk, vhd_bitmaps

    blocks = {i: (b"\xaa", bytes([i + 1]) * 4096) for i in range(64)}
    path = build_dynamic(tmp_path / "alt.vhd", 64 * 4096, 4096, blocks)
    want = bytes(flatten(64 * 4096, 4096, [blocks]))
    with open_disk(path) as disk:
        assert len(disk.extents()) == 64 * 4  # exact below the cap
    monkeypatch.setattr(vhd_bitmaps, "MAX_EXTENTS", 16)
    with open_disk(path) as disk:
        ext = disk.extents()
        assert 1 <= len(ext) <= 16
        assert subtract(nonzero_runs(want), ext) == []
        assert disk.read_at(0, len(want)) == want
