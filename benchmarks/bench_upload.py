"""Upload benchmark, side by side against one Azurite: vhdkit vs the Python SDK's
``upload_blob(blob_type="PageBlob", max_concurrency=N)`` vs a plain concurrent ``upload_page``
loop of 4 MiB writes; locally and through the test proxy with a 100 Mbit/s uplink cap.

    python -m benchmarks.bench_upload [--url URL] [--size-mib 1024] [--concurrency 8]
        [--part local|dense|uplink|extra ...] [--runs N] [--json FILE] [--goals FILE]
        [--workdir DIR]
    python -m benchmarks.bench_upload --merge PART.json ... [--goals FILE]

The Azurite URL defaults to $VHDKIT_AZURITE_BLOB_URL (scripts/with-azurite.sh starts one).
Azurite's in-memory store fills up (deleted blobs are only collected every 10 minutes), so
benchmarks/run_all.py runs each part against its own Azurite. Prints a markdown table with
ratios to stdout and writes the raw results as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from azure.storage.blob import BlobClient, BlobServiceClient  # noqa: E402

from benchmarks.common import GIB, Goal, ratio, save_goals  # noqa: E402
from fixtures import qemu  # noqa: E402
from fixtures.upload_disks import MIB, scattered_runs, write_runs  # noqa: E402
from vhdkit.azure_view import AzureView, fixed_footer  # noqa: E402
from vhdkit.formats import open_disk  # noqa: E402
from vhdkit.upload import UploadOptions, upload_view  # noqa: E402
from vhdkit.upload.pageblob import EMULATOR_ACCOUNT, EMULATOR_KEY, PageBlob  # noqa: E402
from vhdkit.upload.types import Target  # noqa: E402

UPLINK_BPS = 100e6
SDK_CHUNK = 4 * MIB  # upload_blob(PageBlob) sends every 4 MiB chunk that is not all zeros


PROXY = """
import sys
sys.path[:0] = sys.argv[3:]
from faultproxy import FaultProxy, Faults
proxy = FaultProxy(sys.argv[1], Faults(bandwidth_bps=float(sys.argv[2]) or None)).start()
print(proxy.url, flush=True)
sys.stdin.read()  # until the benchmark closes the pipe (or dies)
"""


@contextlib.contextmanager
def proxy_process(url: str, bps: float | None) -> Iterator[str]:
    """The test proxy (tests/faultproxy.py) in its own process and process group, as a network
    is not inside the uploading process: run in-process, its threads would compete with the
    client's for one interpreter lock. Yields the proxy's URL; stopped by its group id."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PROXY, url, str(bps or 0), str(ROOT / "tests"), str(ROOT / "src")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the proxy did not start: {line!r}")
        yield line
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def conn_str(url: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};"
            f"AccountKey={EMULATOR_KEY};BlobEndpoint={url};")


def make_fixed_vhd(path: Path, size: int, runs: list[tuple[int, int]]) -> Path:
    """A fixed VHD (data + footer) holding random data at ``runs``: the stream every method
    uploads, so that the SDK and the plain loop can read it as a plain file."""
    if not path.exists():  # built under a temporary name: an interrupted run leaves no stub
        tmp = path.with_suffix(".part")
        write_runs(tmp, size, runs)
        with open(tmp, "ab") as fh:
            fh.write(fixed_footer(size, uuid.uuid4().bytes, 0).build())
        tmp.rename(path)
    return path


def dense_runs(size: int) -> list[tuple[int, int]]:
    return [(off, 4 * MIB) for off in range(0, size, 4 * MIB)]


def run_vhdkit(url: str, container: str, path: Path, conc: int,
               gap: int | None = None) -> dict[str, Any]:
    blob = PageBlob(Target(emulator=url, container=container, blob=f"v-{uuid.uuid4().hex}"), conc)
    with open_disk(path) as disk:
        view = AzureView.of(disk)
        t = time.perf_counter()
        r = upload_view(view, blob, UploadOptions(concurrency=conc, merge_gap=gap))
        dt = time.perf_counter() - t
    blob.client.delete_blob()
    blob.close()
    return {"seconds": dt, "bytes_sent": r.bytes_sent, "writes": r.writes,
            "merge_gap": r.merge_gap, "retries": r.retries, "gap_model": r.gap_model}


def sdk_plan(path: Path) -> tuple[int, int]:
    """(bytes, writes) the SDK sends for ``path``: its non-empty 4 MiB chunks."""
    sent = writes = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(SDK_CHUNK):
            usable = len(chunk) // 8 * 8
            words = np.frombuffer(chunk, dtype=np.uint64, count=usable // 8)
            if words.any() or any(chunk[usable:]):
                sent += len(chunk)
                writes += 1
    return sent, writes


def run_sdk(url: str, container: str, path: Path, conc: int) -> dict[str, Any]:
    client = BlobClient.from_connection_string(conn_str(url), container, f"s-{uuid.uuid4().hex}")
    size = path.stat().st_size
    t = time.perf_counter()
    with open(path, "rb") as fh:
        client.upload_blob(fh, blob_type="PageBlob", length=size, max_concurrency=conc)
    dt = time.perf_counter() - t
    client.delete_blob()
    sent, writes = sdk_plan(path)
    return {"seconds": dt, "bytes_sent": sent, "writes": writes}


def run_loop(url: str, container: str, path: Path, conc: int) -> dict[str, Any]:
    client = BlobClient.from_connection_string(conn_str(url), container, f"l-{uuid.uuid4().hex}")
    size = path.stat().st_size
    t = time.perf_counter()
    client.create_page_blob(size)
    fd = os.open(path, os.O_RDONLY)

    def put(off: int) -> None:
        data = os.pread(fd, min(4 * MIB, size - off), off)
        client.upload_page(data, offset=off, length=len(data))

    with ThreadPoolExecutor(conc) as pool:
        list(pool.map(put, range(0, size, 4 * MIB)))
    dt = time.perf_counter() - t
    os.close(fd)
    client.delete_blob()
    return {"seconds": dt, "bytes_sent": size, "writes": -(-size // (4 * MIB))}


def peak_rss_cli(url: str, container: str, path: Path, conc: int) -> dict[str, Any]:
    """The CLI in a grandchild process: wall time, bytes sent and its peak RSS (the child that
    waits for it reports it, so no other process counts)."""
    name = f"rss-{uuid.uuid4().hex}"
    cli = [sys.executable, "-m", "vhdkit", "upload", str(path), "--emulator", url,
           "--container", container, "--blob", name, "-q", "--json", "--concurrency", str(conc),
           "--skip-preflight"]
    probe = ("import resource, subprocess, sys; "
             "out = subprocess.run(sys.argv[1:], check=True, capture_output=True).stdout; "
             "sys.stdout.buffer.write(out); "
             "print('\\nRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *cli], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    dt = time.perf_counter() - t
    BlobClient.from_connection_string(conn_str(url), container, name).delete_blob()
    summary, _, rss = out.rpartition("\nRSS ")
    res: dict[str, Any] = {"seconds": dt, "peak_rss_mib": round(int(rss) / 1024, 1)}
    try:
        doc = json.loads(summary)
    except ValueError:
        return res
    if isinstance(doc, dict) and "bytes_sent" in doc:
        res.update(bytes_sent=doc["bytes_sent"], writes=doc.get("writes", ""))
    return res


def qemu_then_sdk(url: str, container: str, dynamic: Path, conc: int, work: Path) -> dict[str, Any]:
    t = time.perf_counter()
    fixed = qemu.convert(dynamic, "vpc", work / "qemu-fixed.vhd", "vpc", "subformat=fixed",
                         "force_size=on")
    t_convert = time.perf_counter() - t
    r = run_sdk(url, container, fixed, conc)
    fixed.unlink()
    return {"seconds": t_convert + r["seconds"], "convert_seconds": t_convert,
            "bytes_sent": r["bytes_sent"], "writes": r["writes"]}


Row = dict[str, Any]
Key = tuple[str, str, str]  # link, input, method
PARTS = ("local", "dense", "uplink", "extra", "stability")
#: The gap-stability input: 256 MiB fixed, 10 % data in 4-64 KiB runs, 5 interleaved rounds.
STABILITY_SIZE = 256 * MIB
STABILITY_RUNS = 5
DYNAMIC = "dynamic VHD, 10 % data"
GAP0 = "vhdkit --merge-gap 0"
NO_CAP = "proxy, no cap"
UPLINK_ROUNDS = 3
STABILITY = "256 MiB 10% scattered"


class Runs:
    """Interleaved repetitions of each method on one input; medians per method."""

    def __init__(self) -> None:
        self.samples: dict[Key, list[Row]] = {}

    def rounds(self, link: str, name: str, methods: dict[str, Callable[[], Row]],
               runs: int) -> None:
        for i in range(runs):
            for method, fn in methods.items():
                print(f"  {link:6} {name:18} {method} (run {i + 1}/{runs}) ...", file=sys.stderr,
                      flush=True)
                self.samples.setdefault((link, name, method), []).append(fn())

    def median(self, key: Key) -> Row | None:
        rows = self.samples.get(key)
        if not rows:
            return None
        mid = sorted(rows, key=lambda r: float(r["seconds"]))[(len(rows) - 1) // 2]
        return {**mid, "seconds": statistics.median(float(r["seconds"]) for r in rows),
                "runs": len(rows), "link": key[0], "input": key[1], "method": key[2]}

    def all(self) -> list[Row]:
        return [r for k in self.samples if (r := self.median(k)) is not None]


def baseline_method(name: str) -> str:
    if name == "dense random":
        return "upload_page loop"
    if name == DYNAMIC:
        return "qemu-img convert + sdk"
    return "sdk"


def render(rows: list[Row], conc: int) -> str:
    by_key = {(r["link"], r["input"], r["method"]): r for r in rows}
    lines = ["| link | input | method | runs | time (s, median) | MiB sent | writes "
             "| time ÷ baseline | note |", "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        base = by_key.get((r["link"], r["input"], baseline_method(r["input"])))
        rel = (f"{ratio(r['seconds'] / base['seconds'])} {base['method']}"
               if base is not None and base is not r else "")
        note = []
        if "merge_gap" in r:
            note.append(f"final gap {r['merge_gap'] // 1024} KiB, retries {r['retries']}")
        if "convert_seconds" in r:
            note.append(f"qemu-img convert {r['convert_seconds']:.2f} s of it")
        if "peak_rss_mib" in r:
            note.append(f"peak RSS {r['peak_rss_mib']} MiB (CLI, incl. interpreter start)")
        sent = f"{r['bytes_sent'] / MIB:.1f}" if "bytes_sent" in r else ""
        lines.append(f"| {r['link']} | {r['input']} | {r['method']} | {r['runs']} "
                     f"| {r['seconds']:.2f} | {sent} | {r.get('writes', '')} | {rel} "
                     f"| {'; '.join(note)} |")
    lines.append(f"\nConcurrency {conc} for every method; uplink = the test proxy capped at "
                 f"{UPLINK_BPS / 1e6:.0f} Mbit/s; \"MiB sent\" for the SDK is its non-empty 4 MiB "
                 "chunks (it skips all-zero chunks).")
    return "\n".join(lines)


def size_label(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n / MIB:g} MiB"


def stability_goals(samples: dict[Key, list[Row]]) -> list[Goal]:
    """Every interleaved round of the stability input: vhdkit <= the SDK, and the adaptive gap
    it settled on stable within 2x across rounds."""
    ours = samples.get(("local", STABILITY, "vhdkit"))
    peer = samples.get(("local", STABILITY, "sdk"))
    if not ours or not peer:
        return []
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(ours, peer, strict=False)]
    gaps = [int(r["merge_gap"]) for r in ours]
    shown = ", ".join(ratio(x) for x in ratios)
    return [
        Goal("Performance", f"upload {size_label(STABILITY_SIZE)} fixed, 10 % in 4-64 KiB runs, "
             "local: vhdkit ÷ SDK upload_blob, every round", "≤ 1.0× every run", shown,
             max(ratios) <= 1.0),
        Goal("Performance", "adaptive merge gap chosen, round to round",
             "stable within 2×", ", ".join(f"{g // 1024} KiB" for g in gaps),
             max(gaps) <= 2 * min(gaps)),
    ]


def goals_of(rows: list[Row], size: int,
             runs_by_key: dict[Key, list[Row]] | None = None) -> list[Goal]:
    runs_by_key = runs_by_key or {}
    by_key = {(r["link"], r["input"], r["method"]): r for r in rows}
    goals: list[Goal] = []

    def rel(link: str, name: str, method: str, peer: str) -> tuple[float, str] | None:
        a, b = by_key.get((link, name, method)), by_key.get((link, name, peer))
        if a is None or b is None:
            return None
        return a["seconds"] / b["seconds"], (f"{method} {a['seconds']:.2f} s, "
                                              f"{peer} {b['seconds']:.2f} s")

    for link, name, limit in (("uplink", "10% scattered", 0.25), ("local", "10% scattered", 1.0),
                              ("local", "1% scattered", 0.2)):
        got = rel(link, name, "vhdkit", "sdk")
        if got:
            goals.append(Goal("Upload", f"{link}, {size_label(size)} {name}: "
                              "vhdkit ÷ SDK upload_blob time",
                              f"≤ {limit}×", f"{ratio(got[0])} ({got[1]})", got[0] <= limit))
        v, sdk = by_key.get((link, name, "vhdkit")), by_key.get((link, name, "sdk"))
        if v and sdk:
            goals.append(Goal("Upload", f"{link}, {size_label(size)} {name}: bytes sent, "
                              "vhdkit ÷ SDK",
                              "recorded", f"{ratio(v['bytes_sent'] / sdk['bytes_sent'])} "
                              f"({v['bytes_sent'] / MIB:.0f} vs {sdk['bytes_sent'] / MIB:.0f} MiB)",
                              None))
    up = by_key.get(("uplink", "10% scattered", "vhdkit"))
    if up and up.get("nonzero_bytes"):
        bound = up["nonzero_bytes"] * 8 / UPLINK_BPS
        goals.append(Goal("Upload", f"uplink, {size_label(size)} 10% scattered: vhdkit ÷ the "
                          "link's lower bound (non-zero bytes ÷ link rate)", "≤ 1.2×",
                          f"{ratio(up['seconds'] / bound)} ({up['seconds']:.2f} s vs "
                          f"{bound:.2f} s)", up["seconds"] / bound <= 1.2))
        for link, method, what in (
                ("uplink", GAP0, "the fixed gap 0 (exactly the non-zero sectors)"),
                (NO_CAP, "vhdkit", "the requests alone: same upload, proxy without the cap"),
                (NO_CAP, GAP0, "the requests alone, gap 0")):
            r = by_key.get((link, "10% scattered", method))
            if r:
                goals.append(Goal("Upload", f"uplink, {size_label(size)} 10% scattered: {what} "
                                  "÷ the link's lower bound", "recorded (what limits the ratio)",
                                  f"{ratio(r['seconds'] / bound)} ({r['seconds']:.2f} s)", None))
    goals.extend(stability_goals(runs_by_key))
    got = rel("local", "dense random", "upload_page loop", "vhdkit")
    if got:  # throughput ratio = loop time / vhdkit time
        goals.append(Goal("Upload", f"local, dense random {size_label(size)}: vhdkit ÷ "
                          "upload_page loop throughput", "≥ 0.9×",
                          f"{ratio(got[0])} ({got[1]})", got[0] >= 0.9))
    got = rel("local", DYNAMIC, "vhdkit", "qemu-img convert + sdk")
    if got:
        goals.append(Goal("Upload", f"{size_label(2 * size)} dynamic VHD, 10 % data: vhdkit ÷ "
                          "(qemu-img convert + SDK upload) time", "recorded (no target)",
                          f"{ratio(got[0])} ({got[1]})", None))
    big = by_key.get(("local", "16 GiB sparse", "vhdkit CLI (RSS)"))
    if big:
        goals.append(Goal("Upload", "vhdkit upload peak RSS, 16 GiB sparse input", "≤ 150 MiB",
                          f"{big['peak_rss_mib']:.0f} MiB", big["peak_rss_mib"] <= 150))
    return goals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("VHDKIT_AZURITE_BLOB_URL"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3, help="repetitions (uplink: always 1)")
    ap.add_argument("--part", action="append", choices=PARTS,
                    help="run only these parts (repeatable; default all)")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--goals", default=None, help="write the goal records as JSON here")
    ap.add_argument("--workdir", help="inputs are kept and reused here")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="run nothing: print one table from the --json files of earlier parts")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.goals)
        return
    if not args.url:
        sys.exit("no Azurite: pass --url or run under scripts/with-azurite.sh")
    parts = args.part or list(PARTS)
    size, conc, url = args.size_mib * MIB, args.concurrency, args.url
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vhdkit-bench-",
                                                 dir=os.environ.get("VHDKIT_BENCH_DIR")))
    work.mkdir(parents=True, exist_ok=True)
    print(f"inputs ({args.size_mib} MiB each) in {work}", file=sys.stderr)
    svc = BlobServiceClient.from_connection_string(conn_str(url))
    container = f"bench-{uuid.uuid4().hex[:8]}"
    svc.create_container(container)
    runs = Runs()
    try:
        if "local" in parts:
            for name, frac in (("10% scattered", 0.10), ("1% scattered", 0.01)):
                p = make_fixed_vhd(work / f"p{frac * 100:.0f}.vhd", size,
                                   scattered_runs(size, frac))
                runs.rounds("local", name, {
                    "vhdkit": partial(run_vhdkit, url, container, p, conc),
                    "sdk": partial(run_sdk, url, container, p, conc)}, args.runs)
        if "dense" in parts:
            p = make_fixed_vhd(work / "dense.vhd", size, dense_runs(size))
            runs.rounds("local", "dense random", {
                "vhdkit": lambda: run_vhdkit(url, container, p, conc),
                "upload_page loop": lambda: run_loop(url, container, p, conc),
                "sdk": lambda: run_sdk(url, container, p, conc)}, args.runs)
        if "uplink" in parts:
            uplink_runs = scattered_runs(size, 0.10)
            p = make_fixed_vhd(work / "p10.vhd", size, uplink_runs)
            with proxy_process(url, UPLINK_BPS) as link:
                # vhdkit is noisy here (the proxy, Azurite and the client share 2 cores): three
                # interleaved rounds, with the fixed gap 0 (exactly the non-zero sectors) beside.
                runs.rounds("uplink", "10% scattered", {
                    "vhdkit": lambda: run_vhdkit(link, container, p, conc),
                    GAP0: lambda: run_vhdkit(link, container, p, conc, 0)}, UPLINK_ROUNDS)
                runs.rounds("uplink", "10% scattered", {
                    "sdk": lambda: run_sdk(link, container, p, conc)}, 1)
            # What the requests cost without the link: the same uploads through the same proxy
            # with no cap. Where this alone comes near the link's lower bound, the two limits
            # add up and no merge gap brings the capped upload down to that bound.
            with proxy_process(url, None) as free:
                runs.rounds(NO_CAP, "10% scattered", {
                    "vhdkit": lambda: run_vhdkit(free, container, p, conc),
                    GAP0: lambda: run_vhdkit(free, container, p, conc, 0)}, UPLINK_ROUNDS)
            for key, rows in runs.samples.items():
                if key[0] in ("uplink", NO_CAP):
                    for row in rows:
                        row["nonzero_bytes"] = sum(n for _, n in uplink_runs)
        if "stability" in parts:
            p = make_fixed_vhd(work / "s10.vhd", STABILITY_SIZE,
                               scattered_runs(STABILITY_SIZE, 0.10, seed=11))
            runs.rounds("local", STABILITY, {
                "vhdkit": partial(run_vhdkit, url, container, p, conc),
                "sdk": partial(run_sdk, url, container, p, conc)}, STABILITY_RUNS)
        if "extra" in parts:
            dyn = dynamic_input(work, 2 * size)
            runs.rounds("local", DYNAMIC, {
                "vhdkit": lambda: run_vhdkit(url, container, dyn, conc),
                "qemu-img convert + sdk": lambda: qemu_then_sdk(url, container, dyn, conc, work),
            }, args.runs)
            big = work / "sparse16g.raw"
            if not big.exists():
                write_runs(big, 16 * 1024 * MIB, scattered_runs(16 * 1024 * MIB, 0.001, seed=5))
            runs.rounds("local", "16 GiB sparse", {
                "vhdkit CLI (RSS)": lambda: peak_rss_cli(url, container, big, conc)}, 1)
    finally:
        svc.delete_container(container)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = runs.all()
    # every round of the stability input, not only medians: its goals are per round
    rounds = {m: runs.samples.get(("local", STABILITY, m), []) for m in ("vhdkit", "sdk")}
    if args.json:
        Path(args.json).write_text(json.dumps({"concurrency": conc, "size_mib": args.size_mib,
                                               "results": rows, "stability": rounds}, indent=2))
    report(rows, conc, size, args.goals, rounds)


def report(rows: list[Row], conc: int, size: int, goals_path: str | None,
           rounds: dict[str, list[Row]] | None = None) -> None:
    print(render(rows, conc))
    by_key = {("local", STABILITY, m): r for m, r in (rounds or {}).items()}
    save_goals(goals_path, goals_of(rows, size, by_key))
    if rounds and rounds.get("vhdkit"):
        print("\nStability rounds (256 MiB, 10 % in 4-64 KiB runs), in order: " + "; ".join(
            f"vhdkit {a['seconds']:.2f} s (gap {a['merge_gap'] // 1024} KiB, model "
            f"{_model(a)}) vs SDK {b['seconds']:.2f} s"
            for a, b in zip(rounds["vhdkit"], rounds.get("sdk", []), strict=False)))
    print(f"\nInputs: {size_label(size)} fixed VHDs with random data in scattered 4–64 KiB "
          f"runs (10 % and 1 %) or dense; the dynamic VHD is {size_label(2 * size)} with ~10 % "
          "data in 64 KiB–4 MiB runs (qemu-img, 2 MiB blocks); the 16 GiB input is a sparse raw "
          "file with 0.1 % data, uploaded by the CLI in its own process.")


def merge(files: list[str], goals_path: str | None) -> None:
    """One table and one set of goals from the JSON of parts run separately."""
    docs = [json.loads(Path(f).read_text()) for f in files if Path(f).exists()]
    if not docs:
        sys.exit("no part produced results")
    rows = [r for d in docs for r in d["results"]]
    rounds: dict[str, list[Row]] = {}
    for d in docs:
        for method, rs in d.get("stability", {}).items():
            rounds.setdefault(method, []).extend(rs)
    report(rows, docs[0]["concurrency"], docs[0]["size_mib"] * MIB, goals_path, rounds)


def _model(row: Row) -> str:
    m = row.get("gap_model") or {}
    if not m.get("request_s") or not m.get("bytes_per_s"):
        return "no estimate"
    return f"{m['request_s'] * 1e3:.2f} ms/request, {m['bytes_per_s'] / MIB:.0f} MiB/s"


def dynamic_input(work: Path, size: int) -> Path:
    """A dynamic VHD (qemu-img, 2 MiB blocks) with ~10 % random data in 64 KiB-4 MiB runs."""
    dyn = work / "dyn.vhd"
    if not dyn.exists():
        raw = write_runs(work / "dyn-src.raw", size,
                         scattered_runs(size, 0.10, lo=64 * 1024, hi=4 * MIB, seed=3))
        qemu.convert(raw, "raw", work / "dyn.part", "vpc", "subformat=dynamic", "force_size=on")
        (work / "dyn.part").rename(dyn)
        raw.unlink()
    return dyn


if __name__ == "__main__":
    main()
