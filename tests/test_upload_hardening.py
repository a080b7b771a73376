"""Upload races and secrets against a real Azurite (issue 11): one writer per blob (case 5),
resume never trusts pages of another source (case 6), no secret in exception chains, reprs,
log records or blob metadata (case 11), and the smaller destination messages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import BlobSasPermissions, ContainerClient, generate_blob_sas

from azurite_plugin import DEV_ACCOUNT, DEV_KEY, connection_string
from cli_helpers import vhdkit
from faultproxy import FaultProxy, Faults
from fixtures.upload_disks import MIB, scattered_runs, write_runs
from vhdkit.azure_view import AzureView
from vhdkit.errors import UploadError
from vhdkit.formats import open_disk
from vhdkit.upload import UploadOptions, upload_view
from vhdkit.upload.pageblob import PageBlob
from vhdkit.upload.types import Target
from vhdkit.upload.uploader import HOLD_ENV

REPO = Path(__file__).resolve().parent.parent
SIZE = 24 * MIB


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two raw disks of the same size with different data."""
    d = tmp_path_factory.mktemp("upload-hardening")
    a = write_runs(d / "a.raw", SIZE, scattered_runs(SIZE, 0.1, seed=1), seed=1)
    b = write_runs(d / "b.raw", SIZE, scattered_runs(SIZE, 0.1, seed=2), seed=2)
    return {"a": a, "b": b}


def stream(path: Path) -> bytes:
    with open_disk(path) as disk:
        view = AzureView.of(disk)
        return view.read_at(0, view.stream_size)


def download(container: ContainerClient, name: str) -> bytes:
    return container.get_blob_client(name).download_blob().readall()


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def emulator_args(path: Path, url: str, container: ContainerClient, blob: str) -> list[str]:
    return ["upload", str(path), "--emulator", url, "--container", container.container_name,
            "--blob", blob, "-q", "--skip-preflight"]


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """The file whose creation releases an upload held by VHDKIT_TEST_UPLOAD_HOLD."""
    yield tmp_path / "go"


def start_held(args: list[str], hold: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "vhdkit", *args],
                            env={**env(), HOLD_ENV: str(hold)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready = Path(f"{hold}.{proc.pid}.ready")
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the held upload never reached its window"
        time.sleep(0.02)
    return proc


# ---- case 5: one writer per blob ---------------------------------------------------------------

@pytest.mark.parametrize("second", [[], ["--overwrite"]])
def test_second_writer_is_refused_while_the_first_holds_the_blob(
        second: list[str], sources: dict[str, Path], azurite_url: str,
        container: ContainerClient, held: Path) -> None:
    first = start_held(emulator_args(sources["a"], azurite_url, container, "w.vhd"), held)
    try:
        code, _, err = vhdkit(*emulator_args(sources["b"], azurite_url, container, "w.vhd"),
                              *second)
        assert code == 2
        assert "another upload is writing this blob" in err, err
        assert len([line for line in err.splitlines() if "error" in line]) == 1
    finally:
        held.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert download(container, "w.vhd") == stream(sources["a"])
    props = container.get_blob_client("w.vhd").get_blob_properties()
    assert props.lease.state == "available"  # released at the end


def _upload_thread(url: str, container: str, blob: str, src: Path, barrier: threading.Barrier,
                   outcome: dict[str, str]) -> None:
    target = Target(emulator=url, container=container, blob=blob)
    with open_disk(src) as disk:
        view = AzureView.of(disk)
        pb = PageBlob(target, 4)
        try:
            barrier.wait()
            upload_view(view, pb, UploadOptions(concurrency=4, overwrite=True))
            outcome[src.name] = "ok"
        except UploadError as exc:
            outcome[src.name] = str(exc)
        finally:
            pb.close()


def test_racing_uploads_of_two_sources_many_times(sources: dict[str, Path], azurite_url: str,
                                                  container: ContainerClient) -> None:
    """Every Put Page is delayed (each upload lasts seconds), so the two uploads overlap even
    on a loaded machine: two that succeed one after the other would be no race at all."""
    want = {name: stream(sources[name]) for name in ("a", "b")}
    slow = Faults(delay=1.0, delay_s=0.15)
    for trial in range(4):
        blob = f"race{trial}.vhd"
        if trial % 2:  # half the trials race over an existing blob, half over a new name
            container.get_blob_client(blob).create_page_blob(SIZE + 512)
        barrier = threading.Barrier(2)
        outcome: dict[str, str] = {}
        with FaultProxy(azurite_url, slow) as proxy:
            threads = [threading.Thread(target=_upload_thread,
                                        args=(proxy.url, container.container_name, blob,
                                              sources[n], barrier, outcome))
                       for n in ("a", "b")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        winners = [n for n, o in outcome.items() if o == "ok"]
        assert len(winners) == 1, outcome  # never both; the loser waits out a brief lease
        for o in outcome.values():
            assert o == "ok" or "another upload" in o, outcome
        assert download(container, blob) == want[winners[0].split(".")[0]]


def test_a_blob_replaced_between_create_and_lease_is_not_written_over(
        sources: dict[str, Path], azurite_url: str, container: ContainerClient) -> None:
    """Creating a blob and leasing it are two requests. Upload A creates the new blob, but its
    lease request is held back; meanwhile upload B (--overwrite) leases and replaces the blob and
    writes it. A, leased at last, finds another source recorded and stops: it never writes its
    pages over B's."""
    blob = container.get_blob_client("between.vhd")
    outcome: dict[str, str] = {}
    with FaultProxy(azurite_url, Faults(delay_lease_s=3.0)) as proxy:
        a = threading.Thread(target=_upload_thread,
                             args=(proxy.url, container.container_name, "between.vhd",
                                   sources["a"], threading.Barrier(1), outcome))
        a.start()
        deadline = time.monotonic() + 30
        while not blob.exists():
            assert time.monotonic() < deadline, "upload A never created the blob"
            time.sleep(0.01)
        code, _, err = vhdkit(*emulator_args(sources["b"], azurite_url, container,
                                             "between.vhd"), "--overwrite")
        a.join()
    assert code == 0, err
    assert "another upload created or replaced this blob" in outcome["a.raw"], outcome
    assert download(container, "between.vhd") == stream(sources["b"])


def test_without_leases_a_sequence_number_keeps_one_writer(
        sources: dict[str, Path], azurite_url: str, container: ContainerClient,
        held: Path) -> None:
    """A SAS destination that refuses leases (the proxy answers 403 to every lease request):
    the writer that set the blob's sequence number last is the only one whose writes land."""
    with FaultProxy(azurite_url, Faults(refuse_leases=True)) as proxy:
        container.get_blob_client("nolease.vhd").create_page_blob(SIZE + 512)
        sas = _sas(container, "nolease.vhd", proxy.url)
        first = start_held(["upload", str(sources["a"]), sas, "-q", "--skip-preflight",
                            "--overwrite"], held)
        try:
            code, _, err = vhdkit("upload", str(sources["b"]), sas, "-q", "--skip-preflight",
                                  "--overwrite")
            assert code == 0, err
        finally:
            held.touch()
            _, err = first.communicate(timeout=120)
        assert proxy.counters.injected.get("403", 0) >= 2  # both were refused a lease
    assert first.returncode == 2
    assert "another upload is writing this blob" in err and "stopped after 0 bytes" in err, err
    assert download(container, "nolease.vhd") == stream(sources["b"])


# ---- case 6: resume onto another source's pages -------------------------------------------

def _sas(container: ContainerClient, blob: str, base_url: str, *, expired: bool = False) -> str:
    now = datetime.now(timezone.utc)
    token = generate_blob_sas(DEV_ACCOUNT, container.container_name, blob, account_key=DEV_KEY,
                              permission=BlobSasPermissions(read=True, write=True),
                              expiry=now + timedelta(hours=-1 if expired else 1),
                              start=now - timedelta(hours=2))
    return f"{base_url}/{container.container_name}/{blob}?{token}"


def test_resume_refuses_pages_of_another_source(sources: dict[str, Path], azurite_url: str,
                                                container: ContainerClient) -> None:
    """A blob that keeps no record of its source (written by another tool, or its metadata
    gone): --resume reads sampled sectors of the pages present back before trusting them."""
    blob = container.get_blob_client("md.vhd")
    blob.create_page_blob(SIZE + 512)
    sas = _sas(container, "md.vhd", azurite_url)
    assert vhdkit("upload", str(sources["a"]), sas, "--resume", "-q", "--skip-preflight")[0] == 0
    before = download(container, "md.vhd")
    blob.set_blob_metadata({})
    code, _, err = vhdkit("upload", str(sources["b"]), sas, "--resume", "-q", "--skip-preflight")
    assert code == 2 and "holds pages that did not come from this source (sector at" in err, err
    assert download(container, "md.vhd") == before
    # the same source resumes and sends nothing
    code, out, err = vhdkit("upload", str(sources["a"]), sas, "--resume", "--json",
                            "--skip-preflight")
    assert code == 0, err
    assert '"bytes_sent": 0' in out
    assert download(container, "md.vhd") == stream(sources["a"])


# ---- case 11: secrets -------------------------------------------------------------------------

def _chain(exc: BaseException) -> list[BaseException]:
    out, todo = [], [exc]
    while todo:
        e = todo.pop()
        if e in out:
            continue
        out.append(e)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    return out


def test_no_secret_in_exception_chains_reprs_or_logs(
        sources: dict[str, Path], azurite_url: str, container: ContainerClient,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    container.get_blob_client("s.vhd").create_page_blob(SIZE + 512)
    good = _sas(container, "s.vhd", azurite_url)
    expired = _sas(container, "s.vhd", azurite_url, expired=True)
    signatures = [good.split("sig=")[1], expired.split("sig=")[1]]
    with open_disk(sources["a"]) as disk:
        view = AzureView.of(disk)
        blob = PageBlob(Target(sas_url=good), 4)
        upload_view(view, blob, UploadOptions(concurrency=4, overwrite=True))
        blob.close()
        blob = PageBlob(Target(sas_url=expired), 4)
        with pytest.raises(UploadError) as info:
            upload_view(view, blob, UploadOptions(concurrency=4, overwrite=True))
        blob.close()
    # a key-based destination too (through the CLI)
    code, _, err = vhdkit("upload", str(sources["a"]), "--connection-string",
                          connection_string(azurite_url), "--container",
                          container.container_name, "--blob", "k.vhd", "-q", "--skip-preflight")
    assert code == 0, err
    assert any(r.name.startswith("urllib3") for r in caplog.records)  # DEBUG was really on
    texts = [r.getMessage() + repr(r.args) + (r.exc_text or "") for r in caplog.records]
    texts += [str(e) + repr(e) for e in _chain(info.value)]
    texts.append("".join(traceback.format_exception(info.value)))
    texts.append(repr(Target(sas_url=good, account_key=DEV_KEY,
                             connection_string=connection_string(azurite_url))))
    for text in texts:
        for secret in (*signatures, DEV_KEY):
            assert secret not in text, text
    assert "403" in str(info.value)


def test_blob_metadata_records_the_file_name_not_the_path(
        sources: dict[str, Path], azurite_url: str, container: ContainerClient) -> None:
    assert vhdkit(*emulator_args(sources["a"], azurite_url, container, "m.vhd"))[0] == 0
    md = container.get_blob_client("m.vhd").get_blob_properties().metadata
    assert md["vhdkit_source"] == "a.raw"
    assert str(sources["a"].parent) not in " ".join(md.values())
    assert len(md["vhdkit_fingerprint"]) == 32


# ---- smaller ones ------------------------------------------------------------------------------

def test_lost_container_says_create_container(sources: dict[str, Path], azurite_url: str,
                                              container: ContainerClient, held: Path) -> None:
    first = start_held(emulator_args(sources["a"], azurite_url, container, "lost.vhd"), held)
    container.delete_container()
    held.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 2
    assert "does not exist (rerun with --create-container to create it)" in err, err
    assert "rerun with --create-container to send the rest" in err, err
    assert "the same command" not in err
    container.create_container()  # for the fixture's cleanup


def test_account_key_that_is_not_base64(sources: dict[str, Path], azurite_url: str,
                                        container: ContainerClient) -> None:
    code, _, err = vhdkit("upload", str(sources["a"]), "--account-url", azurite_url,
                          "--account-key", "not a key!", "--container",
                          container.container_name, "--blob", "x.vhd", "-q", "--skip-preflight")
    assert code == 2
    assert "--account-key is not a storage account key" in err and "not a key!" not in err
    assert "HTTP 0" not in err


def test_invalid_destination_error_chains_no_secret() -> None:
    key = "U0VDUkVUS0VZ" * 7
    for target in (Target(connection_string=f"AccountKey={key};Bogus", container="c", blob="b"),
                   Target(sas_url=f"http://127.0.0.1:1/a/c/b?sv=1&sig={key}&se=%ZZ")):
        with pytest.raises(UploadError) as info:
            pb = PageBlob(target)
            pb.state()  # the SAS one fails only when used (nothing listens on port 1)
        for e in _chain(info.value):
            assert key not in str(e) + repr(e)
        assert key not in "".join(traceback.format_exception(info.value))
        assert key not in repr(target)


def test_lease_is_renewed_while_held_and_released_after(
        azurite_url: str, container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from vhdkit.upload import writer_lock

    monkeypatch.setattr(writer_lock, "RENEW_S", 0.1)
    client = container.get_blob_client("lease.vhd")
    client.create_page_blob(MIB)
    blob = PageBlob(Target(emulator=azurite_url, container=container.container_name,
                           blob="lease.vhd"))
    renewals: list[float] = []
    real_renew = blob.renew_lease

    def counting_renew() -> None:
        real_renew()
        renewals.append(time.monotonic())

    monkeypatch.setattr(blob, "renew_lease", counting_renew)
    lock = writer_lock.WriterLock(blob, "source-fingerprint")
    assert lock.acquire()
    time.sleep(0.6)  # a few renewals
    assert lock.lost is None and len(renewals) >= 2
    assert client.get_blob_properties().lease.state == "leased"
    lock.release()
    assert client.get_blob_properties().lease.state == "available"
    blob.close()
