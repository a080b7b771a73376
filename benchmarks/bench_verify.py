"""Upload and verify time of the 16 GiB sparse case (0.1 % data), through the CLI in its own
process, against one Azurite: a fresh upload, then a rerun that finds everything present with
and without ``--verify`` (their difference is the verify time, whatever the version reports).

    python -m benchmarks.bench_verify [--url URL] [--workdir DIR] [--runs N] [--src DIR]

``--src`` chooses the vhdkit sources the CLI runs from (default this checkout's src/), so the
same script measures an older checkout for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from fixtures.upload_disks import MIB, scattered_runs, write_runs  # noqa: E402


def cli(src: str, *args: str) -> tuple[float, dict[str, Any]]:
    cmd = [sys.executable, "-m", "vhdkit", *args, "-q", "--json", "--skip-preflight"]
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": src}).stdout
    return time.perf_counter() - t, json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("VHDKIT_AZURITE_BLOB_URL"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--src", default=str(ROOT / "src"))
    ap.add_argument("--size-mib", type=int, help="ignored: the case is fixed at 16 GiB")
    args = ap.parse_args()
    if not args.url:
        sys.exit("no Azurite: pass --url or run under scripts/with-azurite.sh")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vhdkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    big = work / "sparse16g.raw"
    if not big.exists():
        write_runs(big, 16 * 1024 * MIB, scattered_runs(16 * 1024 * MIB, 0.001, seed=5))
    from azure.storage.blob import BlobServiceClient

    from vhdkit.upload.pageblob import EMULATOR_ACCOUNT, EMULATOR_KEY

    svc = BlobServiceClient(args.url, credential={"account_name": EMULATOR_ACCOUNT,
                                                  "account_key": EMULATOR_KEY})
    container = f"verify-{uuid.uuid4().hex[:8]}"
    svc.create_container(container)
    rows: dict[str, list[float]] = {"upload": [], "rerun": [], "rerun --verify": [],
                                    "verify (reported)": []}
    try:
        for _ in range(args.runs):
            dest = ["--emulator", args.url, "--container", container,
                    "--blob", f"v-{uuid.uuid4().hex}"]
            dt, first = cli(args.src, "upload", str(big), *dest)
            rows["upload"].append(dt)
            dt, _ = cli(args.src, "upload", str(big), *dest)
            rows["rerun"].append(dt)
            dt, doc = cli(args.src, "upload", str(big), *dest, "--verify")
            rows["rerun --verify"].append(dt)
            reported = (doc.get("verified") or {}).get("seconds")
            if reported is not None:
                rows["verify (reported)"].append(float(reported))
    finally:
        svc.delete_container(container)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"16 GiB sparse raw, 0.1 % data: {first['bytes_sent'] / MIB:.1f} MiB sent in "
          f"{first['writes']} writes. CLI wall time in its own process, median of {args.runs}.\n")
    print("| run | seconds (median) | each run |\n|---|---:|---|")
    for name, xs in rows.items():
        if xs:
            each = ", ".join(f"{x:.2f}" for x in xs)
            print(f"| {name} | {med[name]:.2f} | {each} |")
    print(f"| verify (rerun --verify − rerun) | {med['rerun --verify'] - med['rerun']:.2f} | |")


if __name__ == "__main__":
    main()
