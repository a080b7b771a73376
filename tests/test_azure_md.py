"""Uploads as Azure really answers them: every managed-disk test goes through the strict
managed-disk double (tests/mddouble.py) in front of Azurite, reached as an ``md-...`` host."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from azurite_plugin import DEV_ACCOUNT, DEV_KEY
from cli_helpers import vhdkit
from faultproxy import FaultProxy, Faults
from fixtures.upload_disks import KIB, MIB, write_runs
from mddouble import ManagedDiskDouble, revoke_problems
from vhdkit.azure_view import AzureView
from vhdkit.errors import UploadError
from vhdkit.extents import nonzero_runs
from vhdkit.formats import open_disk
from vhdkit.upload import UploadOptions, upload_view
from vhdkit.upload.engine import RetryPolicy
from vhdkit.upload.pageblob import DISK_SCOPE, PageBlob
from vhdkit.upload.types import CONNECT_TO_ENV, Target

SIZE = 40 * MIB  # whole MiB: the stream is SIZE + 512
STREAM = SIZE + 512


@pytest.fixture(scope="session")
def disk_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 MiB, fragmented: 60 runs of 8 KiB every 640 KiB, data at both ends."""
    runs = [(0, 64 * KIB)] + [(MIB + i * 640 * KIB, 8 * KIB) for i in range(60)]
    return write_runs(tmp_path_factory.mktemp("md") / "a.raw", SIZE, [*runs, (SIZE - 4096, 4096)])


@pytest.fixture(scope="session")
def disk_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 40 MiB source: fewer runs, elsewhere."""
    runs = [(0, 64 * KIB), (3 * MIB, 1 * MIB), (33 * MIB, 12 * KIB)]
    return write_runs(tmp_path_factory.mktemp("md") / "b.raw", SIZE, runs, seed=9)


@pytest.fixture
def md(azurite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedDiskDouble]:
    with ManagedDiskDouble(azurite_url) as double:
        monkeypatch.setenv(CONNECT_TO_ENV, double.connect_to)
        yield double


def stream(path: Path) -> bytes:
    with open_disk(path) as d:
        view = AzureView.of(d)
        return view.read_at(0, view.stream_size)


def new_disk(container: ContainerClient, md: ManagedDiskDouble, name: str = "disk",
             size: int = STREAM) -> str:
    """`az disk create --upload-type Upload` + `az disk grant-access`: the md-... SAS URL."""
    container.get_blob_client(name).create_page_blob(size)
    token = generate_blob_sas(DEV_ACCOUNT, container.container_name, name, account_key=DEV_KEY,
                              permission=BlobSasPermissions(read=True, write=True),
                              expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    return md.sas_url(container.container_name, name, token)


def revoke(container: ContainerClient, name: str = "disk") -> list[str]:
    blob = container.get_blob_client(name)
    size = blob.get_blob_properties().size
    return revoke_problems(size, blob.download_blob(offset=size - 512, length=512).readall())


def up(path: Path, sas: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = vhdkit("upload", str(path), sas, "-q", "--json", "--skip-preflight",
                            "--retry-wait", "0.1", *extra)
    return code, (json.loads(out) if code == 0 else {}), err


# -- point 1 and 9: the page-write path only, and a result Azure accepts -----------------------
def test_managed_disk_upload_uses_only_page_writes_and_passes_revoke(
        disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    code, doc, err = up(disk_a, sas, "--verify")
    assert code == 0, err
    assert doc["managed_disk"] is True and doc["blob_type"] == "PageBlob"
    assert doc["destination"].startswith(f"https://{md.host}/")
    assert md.md.refused == [] and md.md.hosts == {md.host}
    assert md.counters.violations == []
    assert container.get_blob_client("disk").download_blob().readall() == stream(disk_a)
    assert revoke(container) == []


def test_md5_on_a_managed_disk_is_refused_before_anything_is_sent(
        disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    code, _, err = up(disk_a, sas, "--md5")
    assert code == 2 and "--md5" in err and "managed disk" in err
    assert md.counters.requests == 0


def test_wrong_size_names_the_blob_type_and_sends_nothing(
        disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md, size=STREAM + MIB)
    code, _, err = up(disk_a, sas)
    assert code == 2 and "a PageBlob of" in err and "refusing before sending" in err
    assert md.counters.put_pages == 0 and md.md.refused == []


# -- point 2: a SAS to a blob that does not exist yet creates it --------------------------------
@pytest.mark.parametrize("form", ["blob-sas", "container-sas"])
def test_sas_to_a_missing_blob_creates_the_page_blob(
        form: str, disk_b: Path, azurite_url: str, container: ContainerClient) -> None:
    c = container.container_name
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
    if form == "blob-sas":
        token = generate_blob_sas(DEV_ACCOUNT, c, "new.vhd", account_key=DEV_KEY, expiry=expiry,
                                  permission=BlobSasPermissions(create=True, write=True,
                                                                read=True))
        args = [f"{azurite_url}/{c}/new.vhd?{token}"]
    else:
        token = generate_container_sas(DEV_ACCOUNT, c, account_key=DEV_KEY, expiry=expiry,
                                       permission=ContainerSasPermissions(
                                           create=True, write=True, read=True))
        args = [f"{azurite_url}/{c}?{token}", "--blob", "new.vhd"]
    code, doc, err = up(disk_b, *args)
    assert code == 0, err
    assert doc["mode"] == "new" and doc["managed_disk"] is False
    blob = container.get_blob_client("new.vhd")
    assert blob.download_blob().readall() == stream(disk_b)
    assert blob.get_blob_properties().metadata["vhdkit_stream_size"] == str(STREAM)


# -- point 3: overwrite and resume on a managed disk ----------------------------------------
def test_overwrite_of_a_used_disk_writes_zeros_over_old_data_without_clears(
        disk_a: Path, disk_b: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    assert up(disk_a, sas)[0] == 0
    md.reset_counters()
    code, doc, err = up(disk_b, sas)
    assert code == 2 and "--overwrite" in err
    code, doc, err = up(disk_b, sas, "--overwrite", "--verify")
    assert code == 0, err
    assert doc["mode"] == "overwritten" and md.md.clears == 0 and md.md.refused == []
    # Zeros only where the disk held data: the old ranges and the new data, merged.
    assert md.counters.put_pages == doc["writes"]
    assert doc["bytes_sent"] < 62 * 128 * KIB + 2 * MIB
    assert container.get_blob_client("disk").download_blob().readall() == stream(disk_b)
    assert revoke(container) == []


def test_resume_on_a_managed_disk_checks_the_pages_came_from_this_source(
        disk_a: Path, disk_b: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    assert up(disk_a, sas)[0] == 0
    code, _, err = up(disk_b, sas, "--resume")
    assert code == 2 and "did not come from this source" in err and "--overwrite" in err
    md.reset_counters()
    code, doc, err = up(disk_a, sas, "--resume")
    assert code == 0, err
    assert doc["mode"] == "resumed" and doc["bytes_sent"] == 0
    assert md.md.gets <= 17  # footer + 16 sampled sectors, one small Get Blob each


# -- point 4: verify with plain ranged reads; a write-only grant ------------------------------
def test_verify_reads_each_window_once_and_reports_its_time(
        disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    md.max_results = 1000  # this test counts listings: one answer page per segment
    code, doc, err = up(disk_a, sas, "--verify", "--merge-gap", "0")
    assert code == 0, err
    v = doc["verified"]
    assert v["reads"] == md.md.gets and v["reads"] >= 2
    assert v["seconds"] >= 0 and v["bytes_compared"] >= len(nonzero_runs(stream(disk_a))) * 512
    # Two listings (decide and verify), none per read window.
    assert md.md.listings <= 2 * 3 < v["reads"]


def test_write_only_grant_uploads_and_warns_that_verify_was_not_possible(
        disk_a: Path, azurite_url: str, monkeypatch: pytest.MonkeyPatch,
        container: ContainerClient) -> None:
    with ManagedDiskDouble(azurite_url, write_only=True) as md:
        monkeypatch.setenv(CONNECT_TO_ENV, md.connect_to)
        sas = new_disk(container, md)
        code, out, err = vhdkit("upload", str(disk_a), sas, "-q", "--verify", "--skip-preflight")
    assert code == 0, err
    assert "warning: verify is not permitted by this SAS" in err and "not read back" in err
    assert "verified:" not in out
    assert container.get_blob_client("disk").download_blob().readall() == stream(disk_a)


# -- point 5: page ranges in segments ---------------------------------------------------------
def test_page_ranges_are_listed_in_segments_that_shrink_after_a_timeout(
        disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    assert up(disk_a, sas, "--merge-gap", "0")[0] == 0
    md.reset_counters()
    code, doc, err = up(disk_a, sas, "--resume", "--verify")
    assert code == 0, err
    assert doc["bytes_sent"] == 0 and doc["verified"]["ranges"] >= 60
    assert md.md.timeouts >= 1  # the whole-disk listing timed out, smaller segments did not
    assert md.md.listings > 60 // md.max_results  # answer pages followed by NextMarker


# -- point 6: throttling ----------------------------------------------------------------------
def test_throttling_lowers_the_concurrency_and_the_upload_completes(
        disk_a: Path, azurite_url: str, monkeypatch: pytest.MonkeyPatch,
        container: ContainerClient) -> None:
    with ManagedDiskDouble(azurite_url, request_budget=25) as md:
        monkeypatch.setenv(CONNECT_TO_ENV, md.connect_to)
        sas = new_disk(container, md)
        code, doc, err = up(disk_a, sas, "--merge-gap", "0", "--concurrency", "8",
                            "--retry-wait", "0.3")
        assert md.md.throttled > 0
    assert code == 0, err
    assert doc["throttled"] > 0 and doc["lowest_concurrency"] < 8
    assert container.get_blob_client("disk").download_blob().readall() == stream(disk_a)


def test_the_request_rate_cap_grows_the_merge_gap(
        disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    code, doc, err = up(disk_a, sas, "--max-request-rate", "15", "--concurrency", "2")
    assert code == 0, err
    assert doc["merge_gap"] > 128 * KIB  # grown from the default
    assert doc["writes"] < 62  # 62 runs 640 KiB apart: merged instead of one write each


def test_a_bandwidth_cap_keeps_under_the_disks_throughput(
        disk_a: Path, azurite_url: str, monkeypatch: pytest.MonkeyPatch,
        container: ContainerClient) -> None:
    """A disk that throttles above 512 KiB/s: capped at 0.25 MiB/s nothing is throttled."""
    with ManagedDiskDouble(azurite_url, byte_budget=512 * KIB) as md:
        monkeypatch.setenv(CONNECT_TO_ENV, md.connect_to)
        sas = new_disk(container, md)
        code, doc, err = up(disk_a, sas, "--merge-gap", "0", "--max-bandwidth", "0.25")
        assert code == 0, err
        assert md.md.throttled == 0 and doc["throttled"] == 0
        assert doc["bytes_sent"] > 512 * KIB  # more than one second's budget: the cap paced it
    assert container.get_blob_client("disk").download_blob().readall() == stream(disk_a)


def test_retry_budget_is_configurable(disk_b: Path, azurite_url: str,
                                      container: ContainerClient) -> None:
    with FaultProxy(azurite_url, Faults(error503=1.0)) as proxy:
        code, _, err = vhdkit("upload", str(disk_b), "--emulator", proxy.url, "--container",
                              container.container_name, "--blob", "t.vhd", "-q",
                              "--skip-preflight", "--retries", "3", "--retry-wait", "0.05")
        assert code == 3 and "giving up after 3 attempts" in err  # exit 3: the network
        assert proxy.counters.injected["503"] <= 3 * 8 + 8


# -- point 7: Azure's size limits before anything is created ----------------------------------
def test_a_managed_disk_below_20_mib_is_refused_before_any_request(
        tmp_path: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    small = write_runs(tmp_path / "small.raw", 16 * MIB, [(0, 4096)])
    sas = new_disk(container, md, size=16 * MIB + 512)
    code, _, err = up(small, sas)
    assert code == 2 and "20 MiB + 512" in err
    assert md.counters.requests == 0


def test_a_page_blob_over_8_tib_is_refused_before_it_is_created(
        tmp_path: Path, azurite_url: str, container: ContainerClient) -> None:
    big = tmp_path / "big.raw"
    with open(big, "wb") as fh:
        fh.truncate(8 * 1024**4 + MIB)
    code, _, err = vhdkit("upload", str(big), "--emulator", azurite_url, "--container",
                          container.container_name, "--blob", "big.vhd", "-q",
                          "--skip-preflight")
    assert code == 2 and "8 TiB" in err
    assert not container.get_blob_client("big.vhd").exists()


# -- point 8: authentication ------------------------------------------------------------------
class FakeCredential:
    """A credential (not storage): hands out a fixed token and records the scopes asked for."""

    def __init__(self, token: str = "tok-123", fail: str | None = None) -> None:
        self.token, self.fail, self.scopes = token, fail, []  # type: list[str]

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes += scopes
        if self.fail:
            raise ClientAuthenticationError(message=self.fail)
        return AccessToken(self.token, int(datetime.now(timezone.utc).timestamp()) + 3600)


def _lib_upload(path: Path, sas: str, md: ManagedDiskDouble,
                cred: FakeCredential) -> list[tuple[int, int]]:
    """Upload with --verify through the library; returns verify's progress reports."""
    target = Target(sas_url=sas, connect_to=md.connect_to, disk_credential=cred)
    blob = PageBlob(target, 4, RetryPolicy(attempts=2, base_s=0.05, cap_s=0.1))
    reports: list[tuple[int, int]] = []
    try:
        with open_disk(path) as d:
            upload_view(AzureView.of(d), blob, UploadOptions(concurrency=4, verify=True),
                        on_verify=lambda done, todo: reports.append((done, todo)))
    finally:
        blob.close()
    return reports


def test_entra_protected_disk_gets_a_bearer_token_for_the_disk_audience(
        disk_b: Path, azurite_url: str, container: ContainerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with ManagedDiskDouble(azurite_url, bearer="tok-123") as md:
        monkeypatch.setenv(CONNECT_TO_ENV, md.connect_to)
        sas = new_disk(container, md)
        cred = FakeCredential()
        progress = _lib_upload(disk_b, sas, md, cred)
        assert progress and progress[-1][0] == progress[-1][1] > 0  # verify showed progress
        assert set(cred.scopes) == {DISK_SCOPE} == {"https://disk.azure.com//.default"}
        assert set(md.md.authorization) == {"Bearer tok-123"} and md.md.refused == []
        # Without the token the disk refuses, and the error says so in one line.
        code, _, err = vhdkit("upload", str(disk_b), sas, "-q", "--skip-preflight", "--resume")
        assert code == 3 and "401" in err  # exit 3: authentication, not the input


def test_a_credential_failure_shows_the_credentials_own_message(
        disk_b: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    sas = new_disk(container, md)
    why = "DefaultAzureCredential failed to retrieve a token: AzureCliCredential: run az login"
    with pytest.raises(UploadError) as info:
        _lib_upload(disk_b, sas, md, FakeCredential(fail=why))
    assert "run az login" in str(info.value) and "HTTP 0" not in str(info.value)
    assert "sig=" not in str(info.value)


@pytest.mark.parametrize("how", ["env", "stdin"])
def test_sas_from_an_environment_variable_or_stdin(
        how: str, disk_b: Path, md: ManagedDiskDouble, container: ContainerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sas = new_disk(container, md)
    common = ["-q", "--json", "--skip-preflight", "--api-version", "2021-08-06"]
    if how == "env":
        monkeypatch.setenv("MY_DISK_SAS", sas)
        code, out, err = vhdkit("upload", str(disk_b), "--sas-env", "MY_DISK_SAS", *common)
    else:
        code, out, err = vhdkit("upload", str(disk_b), "-", *common, stdin=sas + "\n")
    assert code == 0, err
    assert json.loads(out)["managed_disk"] is True
    assert md.md.versions == {"2021-08-06"}
    assert container.get_blob_client("disk").download_blob().readall() == stream(disk_b)


def test_an_old_api_version_lists_page_ranges_unpaginated(
        disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    """Azure Stack Hub speaks 2019-era API versions: no NextMarker, listing still complete."""
    sas = new_disk(container, md)
    assert up(disk_a, sas, "--merge-gap", "0", "--api-version", "2019-07-07")[0] == 0
    code, doc, err = up(disk_a, sas, "--resume", "--api-version", "2019-07-07")
    assert code == 0, err
    assert doc["bytes_sent"] == 0 and doc["bytes_present"] > 0
    assert md.md.versions == {"2019-07-07"}


def test_readme_managed_disk_flow_through_the_double(
        tmp_path: Path, disk_a: Path, md: ManagedDiskDouble, container: ContainerClient) -> None:
    """The README's managed-disk block, with `az` played by the test: dry run for the size,
    create, grant (the double's SAS), upload, revoke (the double's footer check)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("#### Upload to a managed disk")[1].split("By hand,")[1]
    block = section.split("```azure-cli")[1]
    lines = [ln.strip() for ln in block.split("```")[0].strip().splitlines()]
    size = 0
    for line in lines:
        if line.startswith("SIZE=$("):
            cmd = line[len("SIZE=$("):].split("|")[0].split()
            assert cmd[:3] == ["vhdkit", "upload", "disk.vhd"]
            code, out, err = vhdkit(*cmd[1:2], str(disk_a), *cmd[3:])
            assert code == 0, err
            size = json.loads(out)["stream_size"]
        elif line.startswith("az disk create"):
            assert "--upload-size-bytes \"$SIZE\"" in line
            sas = new_disk(container, md, size=size)
        elif line.startswith("vhdkit upload"):
            args = line.split()[2:]
            assert args[0] == "disk.vhd"
            args = [str(disk_a) if a == "disk.vhd" else sas if a == '"$SAS"' else a
                    for a in args]
            code, out, err = vhdkit("upload", *args, "--skip-preflight")
            assert code == 0, err
        elif line.startswith("az disk revoke-access"):
            assert revoke(container) == []
    assert size == STREAM and md.md.refused == []
    assert container.get_blob_client("disk").download_blob().readall() == stream(disk_a)


def test_connect_override_is_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECT_TO_ENV, "example.com:443")
    code, _, err = vhdkit("upload", os.devnull, "https://md-x.z1.blob.storage.azure.net/a/b?sig=x")
    assert code != 0 and CONNECT_TO_ENV in err


def test_the_double_refuses_what_azure_refuses_on_a_managed_disk(
        md: ManagedDiskDouble, container: ContainerClient) -> None:
    """The double is strict where Azurite is lenient (else the tests above prove nothing)."""
    from azure.core.exceptions import HttpResponseError

    sas = new_disk(container, md, size=24 * MIB + 512)
    blob = PageBlob(Target(sas_url=sas, connect_to=md.connect_to),
                    retry=RetryPolicy(attempts=1)).client
    calls = {
        "create": lambda: blob.create_page_blob(24 * MIB + 512),
        "metadata": lambda: blob.set_blob_metadata({"a": "b"}),
        "properties": lambda: blob.set_http_headers(),
        "delete": lambda: blob.delete_blob(),
        "conditional": lambda: blob.upload_page(b"\1" * 512, offset=0, length=512,
                                                if_match="*"),
        "over 4 MiB": lambda: blob.upload_page(b"\1" * (4 * MIB + 512), offset=0,
                                               length=4 * MIB + 512),
        "past the end": lambda: blob.upload_page(b"\1" * 1024, offset=24 * MIB, length=1024),
    }
    for name, call in calls.items():
        with pytest.raises(HttpResponseError) as info:
            call()
        assert info.value.status_code in (403, 413, 416), name
    assert len(md.md.refused) == len(calls)
    assert container.get_blob_client("disk").get_blob_properties().metadata == {}
    assert md.counters.put_pages == 0


def test_size_limits_at_their_edges() -> None:
    from vhdkit.upload.types import (
        MAX_MANAGED_DISK,
        MAX_PAGE_BLOB,
        MIN_MANAGED_DISK,
        check_stream_limits,
    )

    for size, managed in ((MIN_MANAGED_DISK, True), (MAX_MANAGED_DISK, True),
                          (MAX_PAGE_BLOB, False), (MIB + 512, False)):
        check_stream_limits(size, managed)
    for size, managed in ((MIN_MANAGED_DISK - MIB, True), (MAX_MANAGED_DISK + MIB, True),
                          (MAX_PAGE_BLOB + MIB, False)):
        with pytest.raises(UploadError):
            check_stream_limits(size, managed)


def test_aimd_cuts_once_per_round_and_recovers_one_writer_per_window() -> None:
    import threading

    from vhdkit.upload.engine import Pacer

    pacer, stop = Pacer(8), threading.Event()
    epochs = [pacer.acquire(stop) for _ in range(8)]
    for e in epochs:  # eight throttled answers from one round: one cut, not eight
        assert e is not None
        pacer.release(e, ok=False, throttled=True)
    assert pacer.current == 5 and pacer.lowest == 5 and pacer.throttles == 8
    for _ in range(5):  # a window of successes gives one writer back
        e = pacer.acquire(stop)
        assert e is not None
        pacer.release(e, ok=True)
    assert pacer.current == 6


def test_the_one_command_managed_disk_flow_passes_the_double(
        tmp_path: Path, disk_a: Path, md: ManagedDiskDouble, azurite_url: str) -> None:
    """Issue #13's create/grant/upload/revoke, its SAS rewritten to the double's md- host."""
    from azure.storage.blob import BlobServiceClient

    from armdouble import ArmDouble
    from test_managed_disk import SUB, StaticToken
    from vhdkit.azure_mgmt import Compute
    from vhdkit.managed_upload import ManagedDiskRequest, managed_upload

    def to_md(url: str) -> str:
        parts = urlsplit(url)
        container, blob = parts.path.strip("/").split("/")[-2:]
        return md.sas_url(container, blob, parts.query)

    service = BlobServiceClient(azurite_url, credential={"account_name": DEV_ACCOUNT,
                                                         "account_key": DEV_KEY})
    with ArmDouble(tmp_path, service, DEV_KEY, container="md-flow", sas_url=to_md) as arm:
        api = Compute(StaticToken(), SUB, endpoint=arm.endpoint, verify=str(arm.cert),
                      polling_interval=0)

        def upload(sas: str) -> Any:
            assert urlsplit(sas).hostname == md.host
            blob = PageBlob(Target(sas_url=sas, connect_to=md.connect_to), 4)
            try:
                with open_disk(disk_a) as d:
                    return upload_view(AzureView.of(d), blob,
                                       UploadOptions(concurrency=4, resume=True, verify=True))
            finally:
                blob.close()

        req = ManagedDiskRequest("data1", "rg1", os_type="Linux", hyper_v_generation="V2")
        with open_disk(disk_a) as d:
            result = managed_upload(AzureView.of(d), req, api, upload, preflight=None,
                                    expect="specialized")
        api.close()
        assert result.upload.managed_disk and result.upload.verified is not None
        blob = service.get_blob_client("md-flow", arm.blob_name("data1"))
        size = blob.get_blob_properties().size
        assert revoke_problems(size, blob.download_blob(offset=size - 512).readall()) == []
    assert md.md.refused == []
