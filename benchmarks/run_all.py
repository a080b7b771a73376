"""Run every benchmark part and write benchmarks/RESULTS.md (`make bench`).

Each part runs as a child process in its own process group, so a failing or hung part is
reported in RESULTS.md and the others still run. Upload parts each get a fresh Azurite from
scripts/with-azurite.sh (its in-memory store frees deleted blobs only every 10 minutes).
Work files go to a temporary directory under $VHDKIT_BENCH_DIR (default /tmp), removed at the
end.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from benchmarks.common import Goal, load_goals  # noqa: E402

ISSUES = (("Foundation", "Foundation (issue 2): zero scan, metadata reads, extents()"),
          ("Convert", "Convert (issue 3): vhdkit convert vs qemu-img convert"),
          ("Upload", "Upload (issue 4): vhdkit upload vs the Azure SDK and a plain upload_page "
                     "loop, one Azurite"),
          ("Pre-flight", "Pre-flight (issue 5): bytes read and time"),
          ("Performance", "Performance (issue 16): start-up, convert at equal durability, a "
                          "cost model that does not wobble"),
          ("Hardening", "Hardening (issue 11): tiny-block images, every command"),
          ("qcow2", "qcow2 read natively (issue 10): vhdkit vs qemu-img, one Azurite"),
          ("VMDK", "VMDK and OVA read natively (issue 10): streamOptimized convert vs qemu-img"))
PART_TIMEOUT = 15 * 60


@dataclass
class Part:
    name: str
    issue: str
    args: list[str]  # after the interpreter
    azurite: bool = False
    quick_args: list[str] = field(default_factory=list)
    show: bool = True  # its stdout goes into RESULTS.md
    goals: bool = True  # it takes --goals FILE
    # filled in by run()
    seconds: float = 0.0
    status: str = "not run"
    stdout: str = ""


def parts(work: Path) -> list[Part]:
    up = work / "upload"
    py = ["-m"]
    upload = [*py, "benchmarks.bench_upload", "--workdir", str(up)]
    return [
        Part("foundation", "Foundation", [*py, "benchmarks.foundation", "--runs", "5"],
             quick_args=["--runs", "2"]),
        Part("hot paths (pytest-benchmark)", "Foundation",
             ["-m", "pytest", "benchmarks/test_hotpaths.py", "--benchmark-only", "-q",
              "--basetemp", str(work / "pytest"),
              f"--benchmark-json={work / 'hotpaths.json'}", "--benchmark-max-time=0.5"],
             show=False, goals=False),
        Part("convert", "Convert", [*py, "benchmarks.bench_convert", "--runs", "5",
                                    "--workdir", str(work / "convert")],
             quick_args=["--runs", "1", "--only", "2G"]),
        Part("upload: local, sparse", "Upload",
             [*upload, "--part", "local", "--json", str(up / "local.json")], azurite=True,
             show=False, goals=False),
        Part("upload: local, dense", "Upload",
             [*upload, "--part", "dense", "--json", str(up / "dense.json")], azurite=True,
             show=False, goals=False),
        Part("upload: 100 Mbit/s uplink", "Upload",
             [*upload, "--part", "uplink", "--json", str(up / "uplink.json")], azurite=True,
             show=False, goals=False),
        Part("upload: dynamic VHD and peak RSS", "Upload",
             [*upload, "--part", "extra", "--json", str(up / "extra.json")], azurite=True,
             show=False, goals=False),
        Part("upload: gap stability, 5 rounds", "Upload",
             [*upload, "--part", "stability", "--json", str(up / "stability.json")],
             azurite=True, show=False, goals=False),
        Part("upload: verify time, 16 GiB sparse", "Upload",
             [*py, "benchmarks.bench_verify", "--workdir", str(up)], azurite=True,
             quick_args=["--runs", "1"], goals=False),
        Part("upload: all parts in one table", "Upload",
             [*py, "benchmarks.bench_upload", "--merge",
              *(str(up / f"{p}.json")
                for p in ("local", "dense", "uplink", "extra", "stability"))]),
        Part("start-up and convert costs", "Performance",
             [*py, "benchmarks.bench_costs", "--runs", "7", "--workdir", str(work / "costs")],
             quick_args=["--runs", "3", "--quick"]),
        Part("preflight", "Pre-flight", [*py, "benchmarks.bench_preflight", "--runs", "3",
                                         "--workdir", str(work / "preflight")],
             quick_args=["--runs", "1"]),
        Part("tiny blocks", "Hardening", [*py, "benchmarks.bench_tiny_blocks", "--workdir",
                                          str(work / "tiny")]),
        Part("qcow2", "qcow2", [*py, "benchmarks.bench_qcow2", "--runs", "5",
                                "--workdir", str(work / "qcow2")], azurite=True,
             quick_args=["--upload-runs", "1"]),
        Part("convert: streamOptimized VMDK", "VMDK",
             [*py, "benchmarks.bench_vmdk", "--runs", "5", "--workdir", str(work / "vmdk")],
             quick_args=["--runs", "1"]),
    ]


def run(part: Part, goals_file: Path, quick: bool) -> None:
    cmd = [sys.executable, *part.args, *(part.quick_args if quick else [])]
    if part.goals:
        cmd += ["--goals", str(goals_file)]
    if quick and part.azurite and "--merge" not in part.args:
        cmd += ["--size-mib", "64", "--runs", "1"]
    if part.azurite:
        cmd = ["bash", str(ROOT / "scripts" / "with-azurite.sh"), *cmd]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    print(f"\n== {part.name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    # Own session: on timeout the whole group (with-azurite.sh and its children) is stopped.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=PART_TIMEOUT)
        part.status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        stop_group(proc)
        out, _ = proc.communicate()
        part.status = f"timed out after {PART_TIMEOUT // 60} min"
    except BaseException:  # Ctrl-C reaches only us (the part has its own session): stop it too
        stop_group(proc)
        raise
    part.seconds = time.perf_counter() - t
    part.stdout = out
    print(f"== {part.name}: {part.status} in {part.seconds:.0f} s", file=sys.stderr, flush=True)


def stop_group(proc: subprocess.Popen[str]) -> None:
    """TERM first: with-azurite.sh traps it and stops its Azurite; KILL what remains."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def hotpaths_markdown(path: Path) -> str:
    if not path.exists():
        return ""
    doc = json.loads(path.read_text())
    lines = ["#### pytest-benchmark: hot paths (benchmarks/test_hotpaths.py)\n",
             "| benchmark | median | min | rounds | note |", "|---|---:|---:|---:|---|"]
    for b in doc["benchmarks"]:
        st = b["stats"]
        note = ""
        if b["name"].startswith("test_zero_scan_64mib"):
            note = f"{64 * 2**20 / st['median'] / 1e9:.1f} GB/s"
        lines.append(f"| `{b['name']}` | {fmt_s(st['median'])} | {fmt_s(st['min'])} "
                     f"| {st['rounds']} | {note} |")
    return "\n".join(lines)


def fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def sh(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unavailable"


def machine(work: Path) -> list[str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kib = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    try:
        import numpy
        np_version = numpy.__version__
    except ImportError:
        np_version = "missing"
    try:
        from importlib.metadata import version
        sdk = version("azure-storage-blob")
    except ImportError:  # PackageNotFoundError is an ImportError
        sdk = "missing"
    azurite_pkg = ROOT / "node_modules" / "azurite" / "package.json"
    azurite = json.loads(azurite_pkg.read_text())["version"] if azurite_pkg.exists() else "?"
    fs = sh(["findmnt", "-n", "-o", "FSTYPE", "--target", str(work)])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores",
        f"- RAM: {mem_kib / 2**20:.1f} GiB",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, numpy {np_version}, "
        f"azure-storage-blob {sdk}",
        f"- {sh(['qemu-img', '--version'])}",
        f"- Azurite {azurite} (blob, in-memory), Node {sh(['node', '--version'])}",
        f"- Work dir filesystem: {fs} ({work.parent})",
        f"- Load average at start: {load}",
    ]


def goal_table(goals: list[Goal]) -> list[str]:
    lines = ["| issue | measured quantity | goal | this run | met? |", "|---|---|---|---|---|"]
    for g in goals:
        met = "recorded" if g.met is None else ("**yes**" if g.met else "**NO**")
        lines.append(f"| {g.issue} | {g.name} | {g.target} | {g.measured} | {met} |")
    return lines


METHOD = """\
## Method

- Every figure comes from this one `make bench` run: each ratio is measured in the same run as
  its peer, on the same input, one after the other. Timings are medians of N warm runs (N in
  each table; the first run of each command is a warm-up so the page cache is hot for every
  tool); in the convert and upload parts the tools' runs are interleaved (A, B, A, B, …) so
  that noise on the machine falls on all of them alike.
- The machine is a shared 2-core VM: other sessions may have been running tests at the same
  time, so single figures can be noisy by tens of percent; ratios are more stable than times.
- Convert: `qemu-img convert` does not flush its output, while `vhdkit convert` fsyncs before
  its atomic rename; both ratios are shown (vs qemu-img alone and vs qemu-img followed by
  `sync FILE`). Every vhdkit CLI time includes Python's start and imports (shown once), with
  vhdkit compiled to bytecode first as `pip install` does. Every timed process starts after a
  `sync` (benchmarks/common.py `timed`), so that no run pays for the writeback of data an
  earlier run of another tool left dirty (qemu-img does not flush). The
  durable-write floor is the fastest this device makes the output's data regions durable
  (writes from memory, the fastest of: O_DIRECT by 4 threads, the page cache by 4 threads,
  the page cache in order with writeback pushed behind; then fsync; no reading): the fastest
  known way to make that output durable here, so a floor above qemu-img's best time puts
  qemu-img's unflushed time out of reach of every tool that flushes its output.
- Upload: every method uses the same concurrency against the same Azurite (127.0.0.1 only);
  the uplink figures go through the test proxy (tests/faultproxy.py, in its own process, as a
  network is not inside the uploading process) capped at 100 Mbit/s: vhdkit in three
  interleaved rounds (adaptive gap, gap 0), the SDK once (it takes minutes).
  The same vhdkit uploads through the proxy without the cap measure what the requests cost on
  this machine (proxy, Azurite and client share its 2 cores). Each upload part gets a fresh
  Azurite: its in-memory store frees deleted blobs only every 10 minutes.
- Bytes read: /proc/self/io `rchar` (every read the process makes) or a counting VirtualDisk
  wrapper, as each table says.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, one run: a smoke test")
    ap.add_argument("--only", action="append", help="run only parts whose name contains this")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = ap.parse_args()
    base = Path(os.environ.get("VHDKIT_BENCH_DIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vhdkit-bench-", dir=base))
    started = datetime.datetime.now().astimezone()
    t0 = time.perf_counter()
    try:
        header = machine(work)
        # Bytecode, as `pip install` leaves it: with PYTHONDONTWRITEBYTECODE (set on some CI
        # machines) every timed vhdkit process would compile its sources again.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "src" / "vhdkit")],
                       check=True, env={k: v for k, v in os.environ.items()
                                        if k != "PYTHONDONTWRITEBYTECODE"})
        todo = [p for p in parts(work)
                if not args.only or any(o in p.name for o in args.only)]
        (work / "upload").mkdir()
        goals: list[Goal] = []
        for i, part in enumerate(todo):
            goals_file = work / f"goals-{i}.json"
            run(part, goals_file, args.quick)
            goals += load_goals(goals_file)
        hot = hotpaths_markdown(work / "hotpaths.json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    text = render(started, total, header, todo, goals, hot, args.quick)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"\nwrote {args.out} ({total / 60:.1f} min)", file=sys.stderr)
    failed = [p.name for p in todo if p.status != "ok"]
    if failed:
        print(f"parts that failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def render(started: datetime.datetime, total: float, header: list[str], todo: list[Part],
           goals: list[Goal], hot: str, quick: bool) -> str:
    out = ["# vhdkit benchmark results", "",
           f"Generated by `make bench` (benchmarks/run_all.py) on "
           f"{started:%Y-%m-%d %H:%M %Z}; the whole run took {total / 60:.1f} min."
           + (" **Quick mode: small inputs, not the issues' sizes.**" if quick else ""), "",
           "## Machine", "", *header, "",
           "## Summary: every goal of the Foundation, Convert, Upload, Pre-flight, Performance and "
           "Hardening issues", "",
           *goal_table(goals), "", METHOD]
    for issue, title in ISSUES:
        mine = [p for p in todo if p.issue == issue]
        if not mine:
            continue
        out += [f"## {title}", ""]
        for p in mine:
            if p.status != "ok":
                out += [f"**{p.name}: {p.status}** — see the `make bench` log.", ""]
            if p.show and p.stdout.strip():
                out += [p.stdout.strip(), ""]
        if issue == "Foundation" and hot:
            out += [hot, ""]
        out += ["<sub>parts: " + "; ".join(f"{p.name} {p.status}, {p.seconds:.0f} s"
                                            for p in mine) + "</sub>", ""]
    notes = ROOT / "benchmarks" / "NOTES.md"  # hand measurements and analysis, kept as they are
    if notes.exists():
        out += ["#" + notes.read_text().rstrip()]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    main()
