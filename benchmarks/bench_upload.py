"""Upload benchmark, side by side against one Azurite: vhdkit vs the Python SDK's
``upload_blob(blob_type="PageBlob", max_concurrency=N)`` vs a plain concurrent ``upload_page``
loop of 4 MiB writes; locally and through the test proxy with a 100 Mbit/s uplink cap.

    python benchmarks/bench_upload.py [--url URL] [--size-mib 1024] [--concurrency 8]
        [--skip-uplink] [--json results.json] [--workdir DIR]

The Azurite URL defaults to $VHDKIT_AZURITE_BLOB_URL (``make bench`` starts one). Prints a
markdown table with ratios to stdout and writes the same results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

from azure.storage.blob import BlobClient, BlobServiceClient  # noqa: E402

from faultproxy import FaultProxy, Faults  # noqa: E402
from fixtures import qemu  # noqa: E402
from fixtures.upload_disks import MIB, scattered_runs, write_runs  # noqa: E402
from vhdkit.azure_view import AzureView, fixed_footer  # noqa: E402
from vhdkit.disk import open_disk  # noqa: E402
from vhdkit.upload import UploadOptions, upload  # noqa: E402
from vhdkit.upload.pageblob import EMULATOR_ACCOUNT, EMULATOR_KEY, PageBlob, Target  # noqa: E402

UPLINK_BPS = 100e6


def conn_str(url: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={EMULATOR_ACCOUNT};"
            f"AccountKey={EMULATOR_KEY};BlobEndpoint={url};")


def make_fixed_vhd(path: Path, size: int, runs: list[tuple[int, int]]) -> Path:
    """A fixed VHD (data + footer) holding random data at ``runs``: the stream every method
    uploads, so that the SDK and the plain loop can read it as a plain file."""
    if not path.exists():
        write_runs(path, size, runs)
        with open(path, "ab") as fh:
            fh.write(fixed_footer(size, uuid.uuid4().bytes, 0).build())
    return path


def dense_runs(size: int) -> list[tuple[int, int]]:
    return [(off, 4 * MIB) for off in range(0, size, 4 * MIB)]


def run_vhdkit(url: str, container: str, path: Path, conc: int,
               gap: int | None = None) -> dict[str, Any]:
    blob = PageBlob(Target(emulator=url, container=container, blob=f"v-{uuid.uuid4().hex}"), conc)
    with open_disk(path) as disk:
        view = AzureView.of(disk)
        t = time.perf_counter()
        r = upload(view, blob, UploadOptions(concurrency=conc, merge_gap=gap))
        dt = time.perf_counter() - t
    blob.client.delete_blob()
    blob.close()
    return {"seconds": dt, "bytes_sent": r.bytes_sent, "writes": r.writes,
            "merge_gap": r.merge_gap, "retries": r.retries}


def run_sdk(url: str, container: str, path: Path, conc: int) -> dict[str, Any]:
    client = BlobClient.from_connection_string(conn_str(url), container, f"s-{uuid.uuid4().hex}")
    size = path.stat().st_size
    t = time.perf_counter()
    with open(path, "rb") as fh:
        client.upload_blob(fh, blob_type="PageBlob", length=size, max_concurrency=conc)
    dt = time.perf_counter() - t
    client.delete_blob()
    return {"seconds": dt, "bytes_sent": size, "writes": -(-size // (4 * MIB))}


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
    """The CLI in a grandchild process: wall time and its peak RSS (the child that waits for it
    reports it, so earlier children such as qemu-img do not count)."""
    name = f"rss-{uuid.uuid4().hex}"
    cli = [sys.executable, "-m", "vhdkit", "upload", str(path), "--emulator", url,
           "--container", container, "--blob", name, "-q", "--concurrency", str(conc),
           "--skip-preflight"]
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe, *cli], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    dt = time.perf_counter() - t
    BlobClient.from_connection_string(conn_str(url), container, name).delete_blob()
    return {"seconds": dt, "peak_rss_mib": round(int(out.split()[-1]) / 1024, 1)}


def qemu_then_sdk(url: str, container: str, dynamic: Path, conc: int, work: Path) -> dict[str, Any]:
    t = time.perf_counter()
    fixed = qemu.convert(dynamic, "vpc", work / "qemu-fixed.vhd", "vpc", "subformat=fixed",
                         "force_size=on")
    r = run_sdk(url, container, fixed, conc)
    dt = time.perf_counter() - t
    fixed.unlink()
    return {"seconds": dt, "bytes_sent": r["bytes_sent"], "writes": r["writes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("VHDKIT_AZURITE_BLOB_URL"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--skip-uplink", action="store_true")
    ap.add_argument("--skip-extra", action="store_true", help="skip the dynamic-VHD and RSS runs")
    ap.add_argument("--json", default="bench_upload.json")
    ap.add_argument("--workdir")
    args = ap.parse_args()
    if not args.url:
        sys.exit("no Azurite: pass --url or run under scripts/with-azurite.sh (make bench)")
    size, conc = args.size_mib * MIB, args.concurrency
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vhdkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating inputs ({args.size_mib} MiB each) in {work}", file=sys.stderr)
    inputs = {
        "10% scattered": make_fixed_vhd(work / "p10.vhd", size, scattered_runs(size, 0.10)),
        "1% scattered": make_fixed_vhd(work / "p1.vhd", size, scattered_runs(size, 0.01)),
        "dense random": make_fixed_vhd(work / "dense.vhd", size, dense_runs(size)),
    }
    svc = BlobServiceClient.from_connection_string(conn_str(args.url))
    container = f"bench-{uuid.uuid4().hex[:8]}"
    svc.create_container(container)
    results: list[dict[str, Any]] = []

    def record(link: str, name: str, method: str, fn: Callable[[], dict[str, Any]]) -> None:
        print(f"  {link:6} {name:14} {method} ...", file=sys.stderr, flush=True)
        res = fn()
        res.update(link=link, input=name, method=method)
        results.append(res)

    try:
        for name, path in inputs.items():
            record("local", name, "vhdkit", lambda p=path: run_vhdkit(args.url, container, p, conc))
            record("local", name, "sdk", lambda p=path: run_sdk(args.url, container, p, conc))
            if name == "dense random":
                record("local", name, "upload_page loop",
                       lambda p=path: run_loop(args.url, container, p, conc))
        if not args.skip_uplink:
            with FaultProxy(args.url, Faults(bandwidth_bps=UPLINK_BPS)) as proxy:
                path = inputs["10% scattered"]
                record("uplink", "10% scattered", "vhdkit",
                       lambda: run_vhdkit(proxy.url, container, path, conc))
                record("uplink", "10% scattered", "sdk",
                       lambda: run_sdk(proxy.url, container, path, conc))
        if not args.skip_extra:
            raw = write_runs(work / "dyn-src.raw", 2 * size, scattered_runs(2 * size, 0.10, seed=3))
            dyn = qemu.convert(raw, "raw", work / "dyn.vhd", "vpc", "subformat=dynamic",
                               "force_size=on")
            raw.unlink()
            record("local", "2x dynamic 10%", "vhdkit",
                   lambda: run_vhdkit(args.url, container, dyn, conc))
            record("local", "2x dynamic 10%", "qemu-img convert + sdk",
                   lambda: qemu_then_sdk(args.url, container, dyn, conc, work))
            big = work / "sparse16g.raw"
            if not big.exists():
                write_runs(big, 16 * 1024 * MIB, scattered_runs(16 * 1024 * MIB, 0.001, seed=5))
            record("local", "16 GiB sparse", "vhdkit CLI (RSS)",
                   lambda: peak_rss_cli(args.url, container, big, conc))
    finally:
        svc.delete_container(container)

    print(render(results, conc))
    Path(args.json).write_text(json.dumps({"concurrency": conc, "size_mib": args.size_mib,
                                           "results": results}, indent=2))
    print(f"\nresults written to {args.json}", file=sys.stderr)


def render(results: list[dict[str, Any]], conc: int) -> str:
    def find(link: str, name: str, method: str) -> dict[str, Any] | None:
        return next((r for r in results if (r["link"], r["input"], r["method"]) ==
                     (link, name, method)), None)

    lines = ["| link | input | method | time (s) | MiB sent | writes | ratio | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = (find(r["link"], r["input"], "upload_page loop") if r["input"] == "dense random"
                else None) or find(r["link"], r["input"], "sdk") or \
            find(r["link"], r["input"], "qemu-img convert + sdk")
        ratio = f"{r['seconds'] / base['seconds']:.2f}x {base['method']}" if base and \
            base is not r else ""
        note = []
        if "merge_gap" in r:
            note.append(f"final gap {r['merge_gap'] // 1024} KiB, retries {r['retries']}")
        if "peak_rss_mib" in r:
            note.append(f"peak RSS {r['peak_rss_mib']} MiB")
        sent = f"{r['bytes_sent'] / MIB:.1f}" if "bytes_sent" in r else ""
        lines.append(f"| {r['link']} | {r['input']} | {r['method']} | {r['seconds']:.2f} | "
                     f"{sent} | {r.get('writes', '')} | {ratio} | {'; '.join(note)} |")
    lines.append(f"\nconcurrency {conc} for every method; uplink = test proxy capped at "
                 f"{UPLINK_BPS / 1e6:.0f} Mbit/s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
