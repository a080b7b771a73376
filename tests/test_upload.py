"""``vhdkit upload`` against a real Azurite, with a counting / fault-injecting proxy in between
where the bytes that reach the server matter."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import BlobSasPermissions, ContainerClient, generate_blob_sas

from azurite_plugin import DEV_ACCOUNT, DEV_KEY, connection_string
from cli_helpers import vhdkit
from faultproxy import FaultProxy, Faults
from fixtures.upload_disks import MIB, every_64k_runs, input_kinds, write_runs
from mddouble import ManagedDiskDouble
from vhdkit.azure_view import AzureView
from vhdkit.extents import Extent, merge, nonzero_runs, subtract, total
from vhdkit.formats import open_disk
from vhdkit.upload.types import CONNECT_TO_ENV

REPO = Path(__file__).resolve().parent.parent
KINDS = ["raw", "vhd-fixed", "vhd-dynamic", "vhdx"]


@pytest.fixture(scope="session")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return input_kinds(tmp_path_factory.mktemp("upload-kinds"))


@pytest.fixture(scope="session")
def sparse64k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 MiB with one non-zero sector in every 64 KiB: 512 sectors."""
    path = tmp_path_factory.mktemp("upload-64k") / "every64k.raw"
    return write_runs(path, 32 * MIB, every_64k_runs(32 * MIB))


@pytest.fixture
def proxy(azurite_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(azurite_url) as p:
        yield p


def stream(path: Path) -> bytes:
    with open_disk(path) as disk:
        view = AzureView.of(disk)
        return view.read_at(0, view.stream_size)


def page_ranges(container: ContainerClient, name: str) -> list[Extent]:
    blob = container.get_blob_client(name)
    return merge(Extent(r.start, r.end + 1 - r.start) for r in blob.list_page_ranges())


def download(container: ContainerClient, name: str) -> bytes:
    return container.get_blob_client(name).download_blob().readall()


def upload_args(path: Path, url: str, container: ContainerClient, blob: str) -> list[str]:
    return ["upload", str(path), "--emulator", url, "--container", container.container_name,
            "--blob", blob, "-q"]


def no_secrets(text: str) -> None:
    assert DEV_KEY not in text
    assert "sig=" not in text.replace("sig=REDACTED", "")


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_uploads_byte_identical(kind: str, kinds: dict[str, Path], azurite_url: str,
                                          container: ContainerClient) -> None:
    path = kinds[kind]
    code, out, err = vhdkit(*upload_args(path, azurite_url, container, "d.vhd"),
                            "--json", "--md5", "--verify")
    assert code == 0, err
    summary = json.loads(out)
    expected = stream(path)
    assert download(container, "d.vhd") == expected
    assert summary["stream_size"] == len(expected)
    assert summary["resized"] == (kind == "raw")
    assert summary["md5"] == hashlib.md5(expected).hexdigest()
    props = container.get_blob_client("d.vhd").get_blob_properties()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(expected).digest()
    assert summary["verified"]["ranges"] >= 1
    # Every non-zero sector lies in a page range; zeros were mostly not sent.
    assert not subtract(nonzero_runs(expected), page_ranges(container, "d.vhd"))
    assert summary["bytes_sent"] < len(expected) // 2


def test_merge_gap_zero_sends_exactly_the_nonzero_sectors(
        sparse64k: Path, proxy: FaultProxy, container: ContainerClient) -> None:
    code, out, err = vhdkit(*upload_args(sparse64k, proxy.url, container, "s.vhd"),
                            "--merge-gap", "0", "--json")
    assert code == 0, err
    c = proxy.counters
    assert c.violations == []
    assert c.put_page_bytes == 512 * 512 + 512  # 512 non-zero sectors + the footer sector
    assert c.put_pages == len(nonzero_runs(stream(sparse64k)))  # adjacent sectors share a write
    assert json.loads(out)["bytes_sent"] == c.put_page_bytes
    assert download(container, "s.vhd") == stream(sparse64k)


def test_dense_writes_are_at_most_4mib_and_aligned(tmp_path: Path, proxy: FaultProxy,
                                                   container: ContainerClient) -> None:
    path = write_runs(tmp_path / "dense.raw", 24 * MIB, [(512, 21 * MIB + 1024)])
    code, _, err = vhdkit(*upload_args(path, proxy.url, container, "d.vhd"))
    assert code == 0, err
    c = proxy.counters
    assert c.violations == []
    assert max(n for _, n in c.writes) == 4 * MIB
    assert all(off % 512 == 0 and n % 512 == 0 and n <= 4 * MIB for off, n in c.writes)
    assert download(container, "d.vhd") == stream(path)


def test_faults_are_retried_and_the_blob_is_identical(
        sparse64k: Path, proxy: FaultProxy, container: ContainerClient) -> None:
    proxy.set_faults(Faults(reset=0.05, error500=0.05, error503=0.05, error429=0.03,
                            delay=0.05, delay_s=0.3, scope="all"))
    code, out, err = vhdkit(*upload_args(sparse64k, proxy.url, container, "f.vhd"),
                            "--merge-gap", "4096", "--json", "--retry-wait", "0.2")
    assert code == 0, err
    injected = proxy.counters.injected
    assert {"reset", "500", "503", "429", "delay"} <= set(injected)
    assert json.loads(out)["retries"] >= injected["reset"]
    proxy.set_faults(Faults())
    assert download(container, "f.vhd") == stream(sparse64k)
    assert proxy.counters.violations == []


def test_hard_failure_stops_cleanly_and_a_rerun_resumes(
        sparse64k: Path, proxy: FaultProxy, container: ContainerClient) -> None:
    proxy.set_faults(Faults(error403=0.02, seed=5))
    code, _, err = vhdkit(*upload_args(sparse64k, proxy.url, container, "h.vhd"),
                          "--merge-gap", "0")
    assert code == 3  # an authentication failure, not unreadable input
    assert "HTTP 403" in err and "rerun the same command" in err
    assert len(err.strip().splitlines()) == 1
    sent_before = proxy.reset_counters().put_page_bytes
    assert 0 < sent_before < 512 * 512 + 512
    proxy.set_faults(Faults())
    code, out, err = vhdkit(*upload_args(sparse64k, proxy.url, container, "h.vhd"),
                            "--merge-gap", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["mode"] == "resumed"
    assert proxy.counters.put_page_bytes == 512 * 512 + 512 - sent_before
    assert download(container, "h.vhd") == stream(sparse64k)


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def test_resume_after_sigkill_sends_only_what_is_missing(
        sparse64k: Path, proxy: FaultProxy, container: ContainerClient) -> None:
    proxy.set_faults(Faults(delay=1.0, delay_s=0.03))  # every Put Page slowed down: ~4 s
    cmd = [sys.executable, "-m", "vhdkit", *upload_args(sparse64k, proxy.url, container, "r.vhd"),
           "--merge-gap", "0", "--concurrency", "4"]
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proxy.counters.put_pages < 150 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    proxy.wait_idle()
    first = proxy.reset_counters()
    assert 150 <= first.put_pages < 513

    expected = stream(sparse64k)
    nonzero = nonzero_runs(expected)
    missing = total(subtract(nonzero, page_ranges(container, "r.vhd")))
    assert missing > 0
    proxy.set_faults(Faults())
    code, out, err = vhdkit(*upload_args(sparse64k, proxy.url, container, "r.vhd"),
                            "--merge-gap", "0", "--concurrency", "4", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["mode"] == "resumed"
    rerun = proxy.counters.put_page_bytes
    assert rerun <= missing + 4 * 4 * MIB  # missing bytes plus writes that were in flight
    assert rerun == missing  # with --merge-gap 0 and a server-side count: exactly the missing
    assert first.put_page_bytes + rerun == total(nonzero)
    assert download(container, "r.vhd") == expected


def test_other_source_is_refused_unless_overwrite(
        kinds: dict[str, Path], sparse64k: Path, azurite_url: str,
        container: ContainerClient) -> None:
    assert vhdkit(*upload_args(kinds["vhd-fixed"], azurite_url, container, "o.vhd"))[0] == 0
    code, _, err = vhdkit(*upload_args(kinds["vhd-dynamic"], azurite_url, container, "o.vhd"))
    assert code == 2
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = vhdkit(*upload_args(sparse64k, azurite_url, container, "o.vhd"), "--overwrite")
    assert code == 0, err
    assert download(container, "o.vhd") == stream(sparse64k)


def _sas(container: ContainerClient, blob: str, base_url: str, *, expired: bool = False,
         write_only: bool = False) -> str:
    now = datetime.now(timezone.utc)
    perm = BlobSasPermissions(read=not write_only, write=True)
    expiry = now + timedelta(hours=-1 if expired else 1)
    token = generate_blob_sas(DEV_ACCOUNT, container.container_name, blob, account_key=DEV_KEY,
                              permission=perm, expiry=expiry, start=now - timedelta(hours=2))
    return f"{base_url}/{container.container_name}/{blob}?{token}"


def test_managed_disk_sas_upload_and_resume(
        kinds: dict[str, Path], azurite_url: str, container: ContainerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = kinds["vhd-dynamic"]
    expected = stream(path)
    container.get_blob_client("md.vhd").create_page_blob(len(expected))  # the managed disk
    proxy = ManagedDiskDouble(azurite_url).start()
    monkeypatch.setenv(CONNECT_TO_ENV, proxy.connect_to)
    token = _sas(container, "md.vhd", azurite_url).split("?", 1)[1]
    sas = proxy.sas_url(container.container_name, "md.vhd", token)
    code, out, err = vhdkit("upload", str(path), sas, "-q", "--json")
    assert code == 0, err
    no_secrets(out + err)
    assert download(container, "md.vhd") == expected
    assert container.get_blob_client("md.vhd").get_blob_properties().metadata == {}
    # A rerun without --resume refuses (the disk holds data); with --resume nothing is resent.
    code, _, err = vhdkit("upload", str(path), sas, "-q")
    assert code == 2 and "--resume" in err
    proxy.reset_counters()
    code, out, err = vhdkit("upload", str(path), sas, "-q", "--json", "--resume", "--verify")
    assert code == 0, err
    assert proxy.counters.put_page_bytes == 0
    assert json.loads(out)["mode"] == "resumed"
    assert proxy.md.refused == []
    proxy.stop()


def _bad(case: str, kinds: dict[str, Path], url: str, container: ContainerClient,
         tmp_path: Path) -> tuple[list[str], str]:
    disk = str(kinds["vhd-fixed"])
    c = container.container_name
    if case == "wrong-key":
        wrong = "A" * 86 + "=="
        return ["upload", disk, "--account-url", url, "--account-key", wrong, "--container", c,
                "--blob", "x.vhd"], wrong
    if case == "missing-container":
        return ["upload", disk, "--connection-string", connection_string(url), "--container",
                "no-such-container", "--blob", "x.vhd"], DEV_KEY
    if case == "size-mismatch":
        container.get_blob_client("small.vhd").create_page_blob(21 * MIB + 512)
        sas = _sas(container, "small.vhd", url)
        return ["upload", disk, sas], sas.split("sig=")[1]
    if case == "unaligned-no-resize":
        return ["upload", str(kinds["raw"]), "--emulator", url, "--container", c, "--blob",
                "x.vhd", "--no-resize"], DEV_KEY
    container.get_blob_client("exp.vhd").create_page_blob(41 * MIB + 512)
    sas = _sas(container, "exp.vhd", url, expired=True)
    return ["upload", disk, sas], sas.split("sig=")[1]


@pytest.mark.parametrize("case", ["wrong-key", "missing-container", "size-mismatch",
                                  "unaligned-no-resize", "expired-sas"])
def test_bad_destinations_fail_in_one_line_without_secrets(
        case: str, kinds: dict[str, Path], azurite_url: str, container: ContainerClient,
        tmp_path: Path) -> None:
    args, secret = _bad(case, kinds, azurite_url, container, tmp_path)
    code, out, err = vhdkit(*args, "-q")
    # exit 3: the service refused the credentials; exit 2: the input or the request is wrong
    assert code == (3 if case in ("wrong-key", "expired-sas") else 2), (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("vhdkit: error: ")
    assert secret not in out + err
    no_secrets(out + err)
    words = {"wrong-key": "403", "missing-container": "does not exist",
             "size-mismatch": "the stream is", "unaligned-no-resize": "--no-resize",
             "expired-sas": "403"}
    assert words[case] in err
    assert not container.get_blob_client("x.vhd").exists()


def test_dry_run_prints_the_plan_without_a_destination(sparse64k: Path) -> None:
    code, out, err = vhdkit("upload", str(sparse64k), "--dry-run", "--merge-gap", "0", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["mode"] == "dry-run"
    assert plan["bytes_sent"] == 512 * 512 + 512
    assert plan["writes"] == len(nonzero_runs(stream(sparse64k)))
    code, out, _ = vhdkit("upload", str(sparse64k), "--dry-run", "-q")
    assert code == 0 and "to send" in out and "merge gap" in out
