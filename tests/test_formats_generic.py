"""Every command on every non-VHD format vhdkit reads: inspect, check (and its fix, run as
printed), preflight, convert, upload, bench --disk and the Python API, each image made by
qemu-img from one generalized Linux disk. The formats come from fixtures/disk_formats.py; those
whose reader is not on this branch are not included here: they must be refused by name."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from cli_helpers import vhdkit
from fixtures import disk_formats, linux_disks, qemu
from fixtures.disk_formats import NonVhdFormat
from vhdkit.errors import UnsupportedDisk
from vhdkit.extents import Extent, merge, nonzero_runs, subtract, total
from vhdkit.formats import open_disk
from vhdkit.formats.detect import BY_KEY

INCLUDED = disk_formats.included()
IDS = [f.name for f in INCLUDED]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("formats")
    linux_disks.build("generalized-gpt", d).rename(d / "source.raw")
    return d


@pytest.fixture(scope="module")
def images(work: Path) -> dict[str, Path]:
    return {f.name: f.build(work / "source.raw", work) for f in INCLUDED}


@pytest.fixture(scope="module")
def oracle(work: Path, images: dict[str, Path]) -> dict[str, bytes]:
    """What qemu-img reads from each image."""
    return {f.name: qemu.to_raw(images[f.name], f.qemu_fmt, work / f"{f.name}.oracle").read_bytes()
            for f in INCLUDED}


def qemu_data(path: Path, fmt: str) -> list[Extent]:
    entries: list[dict[str, Any]] = json.loads(
        qemu.run("qemu-img", "map", "-f", fmt, "--output=json", str(path)))
    return merge(Extent(e["start"], e["length"]) for e in entries if e["data"])


def test_vdi_is_included() -> None:
    # this branch reads VDI: its entries must run here, not silently drop out
    assert {"vdi-dynamic", "vdi-static"} <= set(IDS)


def test_formats_not_read_yet_are_refused_by_name(work: Path) -> None:
    # a registry entry whose reader is not on this branch must be refused, never read as raw
    for fmt in disk_formats.NON_VHD_FORMATS:
        if fmt.included:
            continue
        path = fmt.build(work / "source.raw", work)
        with pytest.raises(UnsupportedDisk, match="which vhdkit does not read"):
            open_disk(path)
        code, out, err = vhdkit("inspect", str(path))
        assert code == 2 and out == "" and len(err.splitlines()) == 1


@pytest.mark.parametrize("fmt", INCLUDED, ids=IDS)
def test_python_api_reads_what_qemu_reads(images: dict[str, Path], oracle: dict[str, bytes],
                                          fmt: NonVhdFormat) -> None:
    expected = oracle[fmt.name]
    with open_disk(images[fmt.name]) as disk:
        assert disk.facts()["format"] == fmt.key
        assert disk.size == len(expected)
        assert disk.read_at(0, disk.size) == expected
        ext = disk.extents()
    # every non-zero sector is inside the extents, and the extents claim nothing qemu-img
    # does not map as data: what is read grows with the allocated data
    assert not subtract(nonzero_runs(expected), ext)
    assert not subtract(ext, qemu_data(images[fmt.name], fmt.qemu_fmt))


@pytest.mark.parametrize("fmt", INCLUDED, ids=IDS)
def test_inspect_shows_format_sizes_and_chain(images: dict[str, Path], oracle: dict[str, bytes],
                                              fmt: NonVhdFormat) -> None:
    path = images[fmt.name]
    code, out, err = vhdkit("inspect", "--json", str(path))
    assert code == 0, err
    doc = json.loads(out)
    with open_disk(path) as disk:
        facts, data = disk.facts(), total(disk.extents())
    assert doc["format"] == fmt.key and doc["subformat"] == facts.get("subformat")
    assert doc["virtual_size"] == len(oracle[fmt.name]) == qemu.virtual_size(path, fmt.qemu_fmt)
    assert doc["data_bytes"] == data
    # what the file stores (compressed formats may count the data they expand to)
    assert 0 < doc["allocated_bytes"] <= max(path.stat().st_size, doc["virtual_size"])
    assert doc["chain"][0]["path"] == str(path) and doc["chain"][0]["format"] == fmt.key
    assert "footer" not in doc and doc["disk_type"] is None
    code, text, _ = vhdkit("inspect", str(path))
    assert code == 0
    sub = f" ({doc['subformat']})" if doc["subformat"] else ""
    assert f"  format:        {fmt.key}{sub}\n" in text
    assert f"  virtual size:  {doc['virtual_size']:,} bytes" in text
    assert f"  allocated:     {doc['allocated_bytes']:,} bytes" in text


@pytest.mark.parametrize("fmt", INCLUDED, ids=IDS)
def test_check_says_not_a_vhd_and_its_fix_works(images: dict[str, Path], work: Path,
                                                fmt: NonVhdFormat) -> None:
    path = images[fmt.name]
    code, out, _ = vhdkit("check", "--json", str(path))
    assert code == 1
    report = json.loads(out)
    assert report["facts"]["format"] == fmt.key
    (finding,) = [f for f in report["findings"] if f["id"] == "format"]
    assert not finding["passed"] and finding["message"].startswith("not a VHD: a ")
    dst = work / f"{fmt.name}-azure.vhd"
    assert finding["fix"] == f"vhdkit convert {path} {dst}"
    # run the fix exactly as printed
    argv = shlex.split(finding["fix"])
    code, _, err = vhdkit(*argv[1:])
    assert code == 0, err
    assert qemu.compare(path, fmt.qemu_fmt, dst, "vpc") == (0, "Images are identical.")
    code, out, _ = vhdkit("check", str(dst))
    assert code == 0, out


@pytest.mark.parametrize("fmt", INCLUDED, ids=IDS)
def test_preflight_judges_the_os_inside_as_on_the_raw_disk(images: dict[str, Path], work: Path,
                                                           fmt: NonVhdFormat) -> None:
    want_code, want, _ = vhdkit("preflight", "--json", str(work / "source.raw"))
    code, out, _ = vhdkit("preflight", "--json", str(images[fmt.name]))
    a, b = json.loads(want), json.loads(out)
    assert (code, b["ready"]) == (want_code, a["ready"]) == (0, True)
    assert [f["id"] for f in b["findings"]] == [f["id"] for f in a["findings"]]
    assert b["facts"]["os"] == "linux"


@pytest.mark.parametrize("fmt", INCLUDED, ids=IDS)
def test_convert_verify(images: dict[str, Path], work: Path, fmt: NonVhdFormat) -> None:
    path = images[fmt.name]
    dst = work / f"{fmt.name}-verified.vhd"
    code, out, err = vhdkit("convert", str(path), str(dst), "--verify", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["input_kind"] == fmt.key and doc["verified"]
    assert qemu.compare(path, fmt.qemu_fmt, dst, "vpc")[0] == 0


@pytest.mark.parametrize("fmt", INCLUDED, ids=IDS)
def test_upload_streams_the_converted_bytes(images: dict[str, Path], work: Path,
                                            fmt: NonVhdFormat, azurite_url: str,
                                            container: ContainerClient) -> None:
    path = images[fmt.name]
    converted = work / f"{fmt.name}-upload-ref.vhd"
    code, _, err = vhdkit("convert", str(path), str(converted))
    assert code == 0, err
    code, out, err = vhdkit("upload", str(path), "--emulator", azurite_url, "--container",
                            container.container_name, "--blob", "d.vhd", "--json", "-q",
                            "--verify")
    assert code == 0, err
    summary = json.loads(out)
    blob = container.get_blob_client("d.vhd").download_blob().readall()
    assert blob == converted.read_bytes()
    assert summary["bytes_sent"] < len(blob) // 2  # zeros were skipped
    # no temporary file: the directory holds only what the test made
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(f".{fmt.name}")) == []


@pytest.mark.parametrize("fmt", INCLUDED, ids=IDS)
def test_bench_measures_the_disk(images: dict[str, Path], fmt: NonVhdFormat, azurite_url: str,
                                 container: ContainerClient) -> None:
    path = images[fmt.name]
    code, out, err = vhdkit("bench", "--emulator", azurite_url, "--container",
                            container.container_name, "--disk", str(path), "--concurrency", "2",
                            "--json", "-q")
    assert code == 0, err
    (run,) = json.loads(out)["runs"]
    with open_disk(path) as disk:
        assert run["stream_size"] == -(-disk.size // (1 << 20)) * (1 << 20) + 512
    assert 0 < run["bytes_sent"] == run["bytes_planned"] < run["stream_size"] // 2
    assert list(container.list_blobs()) == []


def test_the_registry_names_known_detection_keys() -> None:
    for f in disk_formats.NON_VHD_FORMATS:
        assert f.key in BY_KEY, f.key
