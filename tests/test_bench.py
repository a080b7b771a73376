"""``vhdkit bench`` against a real Azurite: the sweep's figures agree with each other, with the
plan and with what reached the server; blobs are cleaned up; table, JSON and PNG are produced;
bad input fails in one line. Plus the synthetic disk itself and the ``max_write`` option."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from azurite_plugin import DEV_ACCOUNT, DEV_KEY, connection_string
from cli_helpers import vhdkit
from faultproxy import FaultProxy, Faults
from vhdkit.azure_view import AzureView
from vhdkit.bench import SyntheticDisk, parse_run_lengths
from vhdkit.errors import UsageError
from vhdkit.extents import Extent, merge, nonzero_runs, total
from vhdkit.upload import (
    DEFAULT_MERGE_GAP,
    MAX_WRITE,
    FixedGap,
    Planner,
    UploadOptions,
    upload_view,
)

MIB = 1 << 20
SIZE = 64 * MIB
SHAPES = ("dense", "sparse")
CONCURRENCY = (1, 4)
WRITES = (MIB, 4 * MIB)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("vhdkit: error: "), err


def blob_names(service: BlobServiceClient, container: str) -> list[str]:
    return sorted(b.name for b in service.get_container_client(container).list_blobs())


@pytest.fixture(scope="module")
def sweep(azurite_url: str, blob_service: BlobServiceClient,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The sweep of the acceptance test, run once: into a container that does not exist yet."""
    name = f"bench-{uuid.uuid4().hex[:12]}"
    png = tmp_path_factory.mktemp("bench") / "out.png"
    code, out, err = vhdkit("bench", "--emulator", azurite_url, "--container", name,
                            "--size", "64M", "--shape", "dense", "--shape", "sparse",
                            "--fraction", "0.05", "--concurrency", "1,4", "--max-write", "1M,4M",
                            "--json", "--plot", str(png))
    try:
        yield {"code": code, "doc": json.loads(out) if code == 0 else None, "err": err,
               "png": png, "container": name, "left": blob_names(blob_service, name)}
    finally:
        blob_service.delete_container(name)


def test_sweep_runs_every_combination_and_cleans_up(sweep: dict[str, Any]) -> None:
    assert sweep["code"] == 0, sweep["err"]
    doc = sweep["doc"]
    assert {"cpu_count", "python", "platform"} <= set(doc["machine"])
    combos = [(r["shape"], r["concurrency"], r["max_write"]) for r in doc["runs"]]
    assert sorted(combos) == sorted((s, c, w) for s in SHAPES for c in CONCURRENCY for w in WRITES)
    assert sweep["left"] == []  # the container was created, and each blob deleted after its run
    for r in doc["runs"]:
        assert r["blob"].startswith(f"vhdkit-bench-{r['shape']}-c{r['concurrency']}-"
                                    f"w{r['max_write'] // MIB}M-")
        assert r["kept"] is False
    # One line per run on stderr while the sweep goes.
    assert len([x for x in sweep["err"].splitlines() if x.startswith("bench: ")]) == 8


def test_sweep_figures_are_consistent(sweep: dict[str, Any]) -> None:
    assert sweep["code"] == 0, sweep["err"]
    stream = SIZE + 512
    for r in sweep["doc"]["runs"]:
        assert r["stream_size"] == stream
        assert r["retries"] == 0
        assert r["bytes_sent"] == r["bytes_planned"], r  # no retries injected: exactly the plan
        assert r["writes"] * r["max_write"] >= r["bytes_sent"]
        assert r["effective_bytes_per_s"] == pytest.approx(stream / r["seconds"], rel=1e-3)
        assert r["raw_bytes_per_s"] == pytest.approx(r["bytes_sent"] / r["seconds"], rel=1e-3)
        assert r["writes_per_s"] == pytest.approx(r["writes"] / r["seconds"], rel=1e-2)
        assert r["cpu_seconds_per_gb"] == pytest.approx(r["cpu_seconds"] / (stream / 1e9),
                                                        rel=1e-2, abs=1e-3)
        assert r["merge_gap"] == DEFAULT_MERGE_GAP


def test_sweep_plan_matches_an_independent_dry_run(sweep: dict[str, Any]) -> None:
    assert sweep["code"] == 0, sweep["err"]
    for r in sweep["doc"]["runs"]:
        disk = SyntheticDisk(SIZE, r["shape"], 0.05, (4096, 65536), seed=0)
        view = AzureView.of(disk)
        opts = UploadOptions(merge_gap=DEFAULT_MERGE_GAP, max_write=r["max_write"], dry_run=True)
        plan = upload_view(view, None, opts)
        assert r["bytes_planned"] == plan.bytes_sent
        assert r["writes"] == plan.writes
        if r["shape"] == "dense":
            assert r["bytes_sent"] == SIZE + 512
            assert r["writes"] == -(-SIZE // r["max_write"]) + 1  # whole writes, then the footer
        else:  # at least the data and the footer, at most data plus merged gaps
            assert disk.data_bytes + 512 <= r["bytes_sent"] < SIZE // 5


def test_plot_is_a_valid_png(sweep: dict[str, Any]) -> None:
    assert sweep["code"] == 0, sweep["err"]
    png: Path = sweep["png"]
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (450, 700)
    assert pixels.std() > 0  # something was drawn


def test_table_and_keep(azurite_url: str, container: ContainerClient) -> None:
    """Text output lists every combination; with --keep the blobs stay, whole and sized."""
    code, out, err = vhdkit("bench", "--connection-string", connection_string(azurite_url),
                            "--container", container.container_name, "--size", "4M",
                            "--shape", "dense", "--shape", "sparse", "--concurrency", "1,2",
                            "--max-write", "512K,1M", "--keep", "-q")
    assert code == 0, err
    assert err == ""  # -q: no per-run lines
    assert DEV_KEY not in out
    lines = out.splitlines()
    assert lines[0].startswith("vhdkit bench -> ") and "4,194,816-byte stream" in lines[0]
    assert lines[1].split()[:3] == ["shape", "conc", "write"]
    rows = [tuple(x.split()[:3]) for x in lines[2:]]
    assert sorted(rows) == sorted((s, c, w) for s in SHAPES for c in ("1", "2")
                                  for w in ("512K", "1M"))
    widths = {len(x) for x in lines[1:]}
    assert max(widths) - min(widths) <= 2  # aligned columns
    blobs = list(container.list_blobs())
    assert len(blobs) == 8
    for b in blobs:
        assert b.size == 4 * MIB + 512 and b.blob_type == "PageBlob"
        assert b.name.startswith("vhdkit-bench-")


def test_real_disk_with_merge_gap_zero_sends_exactly_the_nonzero_sectors(
        azurite_url: str, container: ContainerClient, tmp_path: Path) -> None:
    path = tmp_path / "d.raw"
    with path.open("wb") as fh:  # 5 MiB + 4 KiB (6 MiB in the stream), three data runs
        fh.truncate(5 * MIB + 4096)
        for offset, length in ((0, 4096), (MIB + 512, 70_000), (4 * MIB, 1536)):
            fh.seek(offset)
            fh.write(b"\x5a" * length)
    code, out, err = vhdkit("bench", "--emulator", azurite_url, "--container",
                            container.container_name, "--disk", str(path), "--merge-gap", "0",
                            "--concurrency", "3", "--json", "-q")
    assert code == 0, err
    (r,) = json.loads(out)["runs"]
    assert r["shape"] == "disk" and r["stream_size"] == 6 * MIB + 512
    sectors = 4096 + 70_144 + 1536  # the middle run rounded up to whole sectors
    assert r["bytes_sent"] == r["bytes_planned"] == sectors + 512
    assert r["writes"] == 4
    assert list(container.list_blobs()) == []


def test_retries_are_counted_and_bytes_match_the_server(
        azurite_url: str, container: ContainerClient) -> None:
    with FaultProxy(azurite_url) as proxy:
        proxy.set_faults(Faults(error503=0.15, error500=0.1, seed=7))
        code, out, err = vhdkit("bench", "--emulator", proxy.url, "--container",
                                container.container_name, "--size", "8M", "--shape", "dense",
                                "--concurrency", "4", "--max-write", "256K", "--json", "-q")
        assert code == 0, err
        (r,) = json.loads(out)["runs"]
        injected = sum(proxy.counters.injected.values())
        assert injected > 0
        assert r["retries"] == injected
        # Faulted requests never reach the server: what landed is exactly what was reported.
        assert proxy.counters.put_page_bytes == r["bytes_sent"] == r["bytes_planned"]
        assert proxy.counters.put_pages == r["writes"] == 32 + 1
        assert proxy.counters.violations == []


def test_hard_failure_is_one_line_and_the_blob_is_removed(
        azurite_url: str, container: ContainerClient) -> None:
    with FaultProxy(azurite_url) as proxy:
        proxy.set_faults(Faults(error403=1.0))
        code, out, err = vhdkit("bench", "--emulator", proxy.url, "--container",
                                container.container_name, "--size", "2M", "--shape", "dense",
                                "--concurrency", "2", "-q")
    one_line_error(code, err)
    assert out == ""
    assert "bench run vhdkit-bench-dense-c2-w4M-" in err and "403" in err
    assert "rerun" not in err  # the upload's resume advice does not apply to a bench blob
    assert list(container.list_blobs()) == []


def test_container_sas(azurite_url: str, container: ContainerClient) -> None:
    perm = ContainerSasPermissions(read=True, write=True, create=True, delete=True, list=True)
    now = datetime.now(timezone.utc)
    token = generate_container_sas(DEV_ACCOUNT, container.container_name, account_key=DEV_KEY,
                                   permission=perm, expiry=now + timedelta(hours=1),
                                   start=now - timedelta(hours=1))
    sas = f"{azurite_url}/{container.container_name}?{token}"
    code, out, err = vhdkit("bench", sas, "--size", "2M", "--shape", "sparse",
                            "--concurrency", "2", "--json")
    assert code == 0, err
    sig = token.split("sig=")[1].split("&")[0]
    assert sig not in out + err
    (r,) = json.loads(out)["runs"]
    assert r["bytes_sent"] == r["bytes_planned"]
    assert "?" not in json.loads(out)["destination"]
    assert list(container.list_blobs()) == []
    # A blob (managed-disk) SAS cannot hold the bench's own blobs.
    code, out, err = vhdkit("bench", f"{azurite_url}/{container.container_name}/x.vhd?{token}",
                            "--size", "2M")
    one_line_error(code, err)
    assert "container SAS" in err and sig not in err


@pytest.mark.parametrize("args, words", [
    (["--fraction", "2"], "fraction"),
    (["--max-write", "5M"], "at most 4 MiB"),
    (["--max-write", "1000"], "multiple of 512"),
    (["--shape", "disk"], "--disk"),
    (["--shape", "wavy"], "dense, sparse or disk"),
    (["--concurrency", "0,4"], "concurrency"),
    (["--run-lengths", "64K-4K"], "run lengths"),
    (["--size", "1000"], "multiple of 512"),
])
def test_bad_input_fails_in_one_line_before_sending(
        args: list[str], words: str, azurite_url: str, blob_service: BlobServiceClient) -> None:
    name = f"bench-bad-{uuid.uuid4().hex[:8]}"
    code, out, err = vhdkit("bench", "--emulator", azurite_url, "--container", name, *args)
    one_line_error(code, err)
    assert out == ""
    assert words in err
    assert not blob_service.get_container_client(name).exists()


def test_no_destination_or_container() -> None:
    code, _, err = vhdkit("bench", "--size", "1M")
    one_line_error(code, err)
    assert "no destination" in err
    code, _, err = vhdkit("bench", "--emulator", "--size", "1M")
    one_line_error(code, err)
    assert "--container" in err


def test_plot_without_matplotlib_names_the_extra(
        azurite_url: str, blob_service: BlobServiceClient, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    name = f"bench-noplot-{uuid.uuid4().hex[:8]}"
    code, _, err = vhdkit("bench", "--emulator", azurite_url, "--container", name, "--size", "1M",
                          "--plot", str(tmp_path / "x.png"))
    one_line_error(code, err)
    assert "pip install matplotlib" in err  # vhdkit is not on PyPI: no 'vhdkit[plot]' to get
    assert not blob_service.get_container_client(name).exists()  # failed before the sweep
    assert not (tmp_path / "x.png").exists()


# -- the synthetic disk ---------------------------------------------------------------------


def _all(disk: SyntheticDisk) -> bytes:
    return disk.read_at(0, disk.size)


def test_synthetic_disk_is_deterministic_for_a_seed() -> None:
    a = SyntheticDisk(8 * MIB, "sparse", 0.2, (4096, 65536), seed=3)
    b = SyntheticDisk(8 * MIB, "sparse", 0.2, (4096, 65536), seed=3)
    c = SyntheticDisk(8 * MIB, "sparse", 0.2, (4096, 65536), seed=4)
    assert a.extents() == b.extents() and _all(a) == _all(b)
    assert a.extents() != c.extents()
    dense = SyntheticDisk(8 * MIB, "dense", seed=3)
    assert _all(dense) == _all(SyntheticDisk(8 * MIB, "dense", seed=3))
    assert _all(dense) != _all(SyntheticDisk(8 * MIB, "dense", seed=5))


@pytest.mark.parametrize("shape, fraction", [("sparse", 0.05), ("sparse", 0.5), ("dense", 1.0)])
def test_synthetic_extents_cover_exactly_the_nonzero_data(shape: str, fraction: float) -> None:
    disk = SyntheticDisk(16 * MIB, shape, fraction, (4096, 65536), seed=1)
    data = _all(disk)
    assert len(data) == disk.size
    assert nonzero_runs(data) == merge(disk.extents())
    # Reads at unaligned offsets agree with the whole.
    for offset, length in ((0, 1), (12_345, 700_001), (16 * MIB - 3, 10)):
        assert disk.read_at(offset, length) == data[offset : offset + length]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37, 0.9, 1.0])
def test_synthetic_data_fraction_is_within_one_percent(fraction: float) -> None:
    disk = SyntheticDisk(256 * MIB, "sparse", fraction, parse_run_lengths("4K-64K"), seed=2)
    assert disk.data_bytes == total(disk.extents())
    assert abs(disk.data_bytes / disk.size - fraction) <= 0.01 * fraction
    lengths = [e.length for e in disk.extents()]
    assert all(e.start % 512 == 0 and e.length % 512 == 0 for e in disk.extents())
    if fraction <= 0.1:  # sparse enough that few runs touch: lengths follow the asked range
        assert min(lengths) >= 512 and sorted(lengths)[len(lengths) // 2] <= 65536


def test_parse_run_lengths() -> None:
    assert parse_run_lengths("4K-64K") == (4096, 65536)
    assert parse_run_lengths("1M") == (MIB, MIB)
    for bad in ("64K-4K", "100-200", "x"):
        with pytest.raises(UsageError):
            parse_run_lengths(bad)


# -- the max_write option of the upload ------------------------------------------------------


def test_max_write_bounds_every_write() -> None:
    view = AzureView.of(SyntheticDisk(8 * MIB, "dense", seed=0))
    writes = list(Planner(view, FixedGap(0), max_write=512 * 1024).writes())
    assert max(len(w.data) for w in writes) == 512 * 1024
    assert all(w.offset % 512 == 0 and len(w.data) % 512 == 0 for w in writes)
    assert merge(w.extent for w in writes) == [Extent(0, view.stream_size)]
    assert b"".join(w.data for w in writes) == view.read_at(0, view.stream_size)
    assert UploadOptions().max_write == MAX_WRITE


@pytest.mark.parametrize("bad", [0, 1000, MAX_WRITE + 512])
def test_max_write_must_be_sectors_within_4mib(bad: int) -> None:
    view = AzureView.of(SyntheticDisk(MIB, "dense", seed=0))
    with pytest.raises(UsageError):
        upload_view(view, None, UploadOptions(dry_run=True, max_write=bad))
    with pytest.raises(UsageError):
        Planner(view, FixedGap(0), max_write=bad)
