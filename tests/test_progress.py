"""Progress as CI and people see it: status lines through a pipe, a tqdm bar on a terminal
(a real pty, 80 columns) in IEC units with its text intact, nothing with --quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from vhdkit.cli import statusline

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
LINE = re.compile(r"^(convert|verify|upload|plan|bench [\w ]+): "
                  r"\d+\.\d % of [\d.]+ (B|KiB|MiB|GiB), "
                  r"(done|sent) [\d.]+ (B|KiB|MiB|GiB) \([\d.]+ MiB/s\)"
                  r"(, skipped [\d.]+ (B|KiB|MiB|GiB))?, (ETA [\d:?]+|took \d+:\d\d)$")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48 MiB raw disk with 24 MiB of data in three runs (so a plan skips zeros)."""
    path = tmp_path_factory.mktemp("progress") / "d.img"
    with open(path, "wb") as fh:
        fh.truncate(48 * MIB)
        for at in (0, 16 * MIB, 32 * MIB):
            fh.seek(at)
            fh.write(os.urandom(8 * MIB))
    return path


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    e.pop("VHDKIT_PROGRESS_INTERVAL", None)
    return e


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vhdkit", *args]


def test_pipe_gets_status_lines_with_every_figure(raw: Path, tmp_path: Path) -> None:
    res = subprocess.run(cli("convert", str(raw), str(tmp_path / "o.vhd"), "--verify",
                             "--progress-interval", "0.01"),
                         env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines, "no progress in the log"
    for line in lines:
        assert LINE.match(line), line
    for phase in ("convert", "verify"):
        last = [x for x in lines if x.startswith(f"{phase}: ")][-1]
        assert last.startswith(f"{phase}: 100.0 % of 24.00 MiB, done 24.00 MiB") and "took" in last

    res = subprocess.run(cli("upload", str(raw), "--dry-run", "--skip-preflight",
                             "--progress-interval", "0.01"),
                         env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    plan = [x for x in res.stderr.splitlines() if x.startswith("plan: ")]
    assert plan and all(LINE.match(x) for x in plan), res.stderr
    assert plan[-1].startswith("plan: 100.0 % of 48.00 MiB, sent 24.00 MiB")
    assert ", skipped 24.00 MiB, took " in plan[-1]


def test_quiet_and_env_interval(raw: Path, tmp_path: Path) -> None:
    res = subprocess.run(cli("convert", str(raw), str(tmp_path / "q.vhd"), "-q"), env=env(),
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and res.stderr == ""
    res = subprocess.run(cli("convert", str(raw), str(tmp_path / "e.vhd")),
                         env=dict(env(), VHDKIT_PROGRESS_INTERVAL="0"), capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 2 and "--progress-interval" in res.stderr, res.stderr
    assert len(res.stderr.splitlines()) == 1


def test_status_lines_come_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """The throttle on a fake clock: 35 s of updates at interval 10 give lines at 10, 20, 30
    and the final state once."""
    now = [1000.0]
    monkeypatch.setattr(statusline.time, "monotonic", lambda: now[0])

    class Out:
        text = ""

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    out = Out()
    lines = statusline.StatusLines("upload", 350 * MIB, out, 10.0)  # type: ignore[arg-type]
    for t in range(1, 36):
        now[0] = 1000.0 + t
        lines.update(t * 10 * MIB, sent=t * MIB, skipped=t * 9 * MIB)
    lines.close()
    lines.close()
    got = out.text.splitlines()
    assert len(got) == 4, got
    assert got[0] == ("upload: 28.6 % of 350.00 MiB, sent 10.00 MiB (1.0 MiB/s), "
                      "skipped 90.00 MiB, ETA 0:25")
    assert got[-1].endswith("took 0:35") and got[-1].startswith("upload: 100.0 %")


def run_in_pty(args: list[str], columns: int = 80) -> tuple[int, str]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is `columns` wide before vhdkit starts
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
            os.environ.update(env())
            os.execv(args[0], args)
        finally:
            os._exit(127)
    out = b""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode()


def test_terminal_bar_fits_80_columns_in_iec_units(raw: Path, tmp_path: Path) -> None:
    code, text = run_in_pty(cli("upload", str(raw), "--dry-run", "--skip-preflight"))
    assert code == 0, text
    frames = [f.strip("\n") for f in text.replace("\r\n", "\n").split("\r")]
    bars = [f for f in frames if re.match(r"^plan +\d+%\|", f)]
    assert bars, text
    final = [f for f in bars if f.startswith("plan 100%|")][-1]
    assert len(final) <= 80, final
    bar = final.split("|")[1]
    assert len(bar) >= 10, final  # the bar keeps a readable width
    assert re.search(r"\| 48\.00/48\.00 MiB sent 24\.00 MiB [\d.]+ MiB/s ETA 0:00$", final), final
    for f in bars:
        assert len(f) <= 80, f
        assert not re.search(r"\d(k|M|G)B\b|[kMG]B/s", f), f  # no SI units mixed in

    code, text = run_in_pty(cli("convert", str(raw), str(tmp_path / "t.vhd"), "--verify"))
    assert code == 0, text
    frames = text.replace("\r\n", "\n").split("\r")
    for phase in ("convert", "verify"):
        done = [f for f in frames if f.startswith(f"{phase} 100%|")]
        assert done, text
        assert len(done[-1]) <= 80 and "24.00/24.00 MiB" in done[-1], done[-1]


def test_upload_and_bench_status_lines_through_a_pipe(raw: Path, azurite_url: str) -> None:
    res = subprocess.run(cli("upload", str(raw), "--emulator", azurite_url, "--container",
                             "progress", "--create-container", "--skip-preflight",
                             "--concurrency", "1", "--verify", "--progress-interval", "0.01"),
                         env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("upload: ")]
    assert lines and all(LINE.match(x) for x in lines), res.stderr
    assert lines[-1].startswith("upload: 100.0 % of 48.00 MiB, sent 24.00 MiB (")
    assert ", skipped 24.00 MiB, took " in lines[-1]
    sent = [float(x.split("sent ")[1].split()[0]) for x in lines]
    assert sent == sorted(sent)  # the lines follow the upload as it goes
    verify = [x for x in res.stderr.splitlines() if x.startswith("verify: ")]
    assert verify and all(LINE.match(x) for x in verify), res.stderr  # --verify shows too
    assert verify[-1].startswith("verify: 100.0 % of ") and "took" in verify[-1]

    res = subprocess.run(cli("bench", "--emulator", azurite_url, "--container", "progress",
                             "--size", "2M", "--shape", "dense", "--concurrency", "1,2",
                             "--progress-interval", "0.01"),
                         env=env(), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    for label in ("dense c1 w4M", "dense c2 w4M"):
        done = [x for x in res.stderr.splitlines() if x.startswith(f"bench {label}: 100.0 %")]
        assert done and "sent 2.00 MiB" in done[-1], res.stderr
