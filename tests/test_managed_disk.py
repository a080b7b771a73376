"""The one-command managed-disk flow against an ARM double and Azurite (issue: Add-AzVhd's job).

The management SDK is used unmodified against tests/armdouble.py over HTTPS with a throwaway
certificate; the granted SAS points at a page blob in Azurite. Tests assert the request bodies,
the order (revoke always last, also after a failure) and the end state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import BlobServiceClient

from armdouble import ArmDouble
from azurite_plugin import DEV_KEY
from fixtures import linux_disks as ld
from vhdkit.azure_mgmt import Compute, ManagementError
from vhdkit.azure_view import AzureView
from vhdkit.errors import UploadError, UsageError
from vhdkit.formats import open_disk
from vhdkit.managed_upload import ManagedDiskRequest, managed_upload
from vhdkit.preflight.engine import preflight_disk
from vhdkit.upload.pageblob import PageBlob
from vhdkit.upload.types import Target
from vhdkit.upload.uploader import UploadOptions, upload_view

pytestmark = pytest.mark.azurite
SUB = "00000000-0000-0000-0000-00000000abcd"
MIB = 1 << 20


class StaticToken:
    """A credential that hands out a fixed bearer token (the double checks it is sent)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("test-token", int(time.time()) + 3600)


@pytest.fixture
def arm(tmp_path: Path, blob_service: BlobServiceClient) -> Iterator[ArmDouble]:
    with ArmDouble(tmp_path, blob_service, DEV_KEY, container=f"md-{uuid.uuid4().hex[:8]}") as d:
        yield d


@pytest.fixture
def api(arm: ArmDouble) -> Iterator[Compute]:
    c = Compute(StaticToken(), SUB, endpoint=arm.endpoint, verify=str(arm.cert),
                polling_interval=0)
    yield c
    c.close()


@pytest.fixture(scope="session")
def linux_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ld.build("generalized-gpt", tmp_path_factory.mktemp("md-linux"))


def sas_uploader(view: AzureView, fail_after: int | None = None) -> Any:
    def upload(sas: str) -> Any:
        blob = PageBlob(Target(sas_url=sas), 4)
        try:
            if fail_after is not None:
                blob.put_page = _failing(blob.put_page, fail_after)  # type: ignore[method-assign]
            return upload_view(view, blob, UploadOptions(concurrency=4, resume=True))
        finally:
            blob.close()
    return upload


def _failing(put: Any, after: int) -> Any:
    calls = {"n": 0}

    def put_page(offset: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise UploadError("the link went down (injected)")
        put(offset, data)
    return put_page


def run(path: Path, api: Compute, req: ManagedDiskRequest, fail_after: int | None = None,
        ) -> Any:
    with open_disk(path) as disk:
        view = AzureView.of(disk)
        report = preflight_disk(disk)
        return managed_upload(view, req, api, sas_uploader(view, fail_after), preflight=report)


def blob_bytes(arm: ArmDouble, name: str) -> bytes:
    return arm.blobs.get_blob_client(arm.container, arm.blob_name(name)).download_blob().readall()


def test_creates_grants_uploads_revokes_in_that_order(linux_disk: Path, arm: ArmDouble,
                                                      api: Compute) -> None:
    req = ManagedDiskRequest("osdisk", "rg1", hyper_v_generation="V2", tags={"team": "img"})
    result = run(linux_disk, api, req)
    # the SDK reads the disk back when the create operation completes (ARM's PUT pattern)
    assert arm.calls() == [("GET", "disk_get"), ("GET", "rg"), ("PUT", "disk_put"),
                           ("GET", "disk_get"), ("POST", "grant"), ("POST", "revoke"),
                           ("GET", "disk_get")]
    (body,) = arm.bodies("disk_put")
    with open_disk(linux_disk) as disk:
        stream = AzureView.of(disk).stream_size
        expected = AzureView.of(disk).read_at(0, stream)  # the fixture is ~70 MiB
    assert body == {
        "location": "westeurope", "sku": {"name": "Standard_LRS"}, "tags": {"team": "img"},
        "properties": {"creationData": {"createOption": "Upload", "uploadSizeBytes": stream},
                       "osType": "Linux", "hyperVGeneration": "V2",
                       "supportedCapabilities": {"architecture": "x64"}}}
    assert arm.bodies("grant")[0]["access"] == "Write"
    assert result.disk_state == "Unattached" and result.created
    assert blob_bytes(arm, "osdisk") == expected
    assert any("az image create" in c and "--hyper-v-generation V2" in c
               for c in result.next_commands)


def test_revokes_after_a_failure_mid_upload(linux_disk: Path, arm: ArmDouble,
                                            api: Compute) -> None:
    req = ManagedDiskRequest("broken", "rg1", hyper_v_generation="V2")
    with pytest.raises(UploadError, match="injected"):
        run(linux_disk, api, req, fail_after=2)
    assert arm.calls()[-1] == ("POST", "revoke")
    assert arm.state.disks["broken"]["properties"]["diskState"] == "Unattached"


def test_a_rerun_finds_the_disk_grants_again_and_resumes(linux_disk: Path, arm: ArmDouble,
                                                         api: Compute) -> None:
    """A disk left in ActiveUpload (the process was killed before it could revoke)."""
    req = ManagedDiskRequest("resume", "rg1", hyper_v_generation="V2")
    with open_disk(linux_disk) as disk:
        view = AzureView.of(disk)
        # the first run created the disk, got a grant and died
        stream = view.stream_size
        api.create_disk("rg1", "resume", {"location": "westeurope", "sku": {"name": "Premium_LRS"},
                                          "properties": {"creationData": {
                                              "createOption": "Upload",
                                              "uploadSizeBytes": stream}}})
        api.grant_write("rg1", "resume", 3600)
    arm.state.log.clear()
    result = run(linux_disk, api, req)
    assert arm.calls() == [("GET", "disk_get"), ("POST", "grant"), ("POST", "revoke"),
                           ("GET", "disk_get")]
    assert result.resumed and not result.created and result.disk_state == "Unattached"


def test_refuses_a_disk_of_another_size_or_attached(linux_disk: Path, arm: ArmDouble,
                                                    api: Compute) -> None:
    api.create_disk("rg1", "small", {"location": "westeurope", "properties": {"creationData": {
        "createOption": "Upload", "uploadSizeBytes": 32 * MIB + 512}}})
    with pytest.raises(UploadError, match="created for 33554944 bytes"):
        run(linux_disk, api, ManagedDiskRequest("small", "rg1", hyper_v_generation="V2"))
    arm.state.disks["small"]["managedBy"] = "/subscriptions/x/virtualMachines/vm1"
    with pytest.raises(UploadError, match="attached to"):
        run(linux_disk, api, ManagedDiskRequest("small", "rg1", hyper_v_generation="V2"))
    assert ("POST", "grant") not in arm.calls()


def test_premium_v2_gets_512_byte_sectors_and_a_data_disk_no_os_fields(
        tmp_path: Path, arm: ArmDouble, api: Compute) -> None:
    raw = tmp_path / "data.raw"
    with open(raw, "wb") as fh:
        fh.truncate(24 * MIB)
        fh.write(b"data" * 1024)
    req = ManagedDiskRequest("data1", "rg1", sku="PremiumV2_LRS", zone="2", location="northeurope")
    with open_disk(raw) as disk:
        view = AzureView.of(disk)
        managed_upload(view, req, api, sas_uploader(view), preflight=preflight_disk(disk))
    (body,) = arm.bodies("disk_put")
    assert body["zones"] == ["2"] and body["location"] == "northeurope"
    assert body["properties"] == {"creationData": {
        "createOption": "Upload", "uploadSizeBytes": view.stream_size, "logicalSectorSize": 512}}
    assert ("GET", "rg") not in arm.calls()  # location given: no resource-group lookup


def test_image_and_gallery_version_from_the_disk(linux_disk: Path, arm: ArmDouble,
                                                 api: Compute) -> None:
    arm.state.definitions["gal/def"] = {"properties": {"osType": "Linux",
                                                       "osState": "Generalized",
                                                       "hyperVGeneration": "V2",
                                                       "architecture": "x64"}}
    req = ManagedDiskRequest("img-src", "rg1", hyper_v_generation="V2", image="img1",
                             gallery="gal/def/1.0.0")
    result = run(linux_disk, api, req)
    (image,) = arm.bodies("image_put")
    assert image["properties"]["storageProfile"]["osDisk"] == {
        "osType": "Linux", "osState": "Generalized", "managedDisk": {"id": result.disk_id}}
    assert image["properties"]["hyperVGeneration"] == "V2"
    (version,) = arm.bodies("version_put")
    assert version["properties"]["storageProfile"]["osDiskImage"]["source"]["id"] == \
        result.disk_id
    assert result.image_id.endswith("/images/img1") and result.gallery_version_id
    kinds = [k for _, k in arm.calls()]
    assert kinds.index("revoke") < kinds.index("image_put") < kinds.index("version_put")


def test_gallery_definition_of_another_generation_is_refused(linux_disk: Path, arm: ArmDouble,
                                                             api: Compute) -> None:
    arm.state.definitions["gal/v1"] = {"properties": {"osType": "Linux", "osState":
                                                      "Generalized", "hyperVGeneration": "V1"}}
    req = ManagedDiskRequest("g1", "rg1", hyper_v_generation="V2", gallery="gal/v1/1.0.0")
    with pytest.raises(UploadError, match="hyperVGeneration V1"):
        run(linux_disk, api, req)
    assert not arm.bodies("version_put")


def test_missing_role_is_one_line_naming_the_permission(linux_disk: Path, arm: ArmDouble,
                                                        api: Compute) -> None:
    arm.state.forbid = {"disk_put"}
    with pytest.raises(ManagementError) as info:
        run(linux_disk, api, ManagedDiskRequest("nope", "rg1", hyper_v_generation="V2"))
    msg = str(info.value)
    assert "\n" not in msg and "HTTP 403" in msg and "Microsoft.Compute/disks/write" in msg
    assert info.value.__cause__ is None


def test_sizes_and_options_are_refused_before_anything_is_sent(
        tmp_path: Path, arm: ArmDouble, api: Compute) -> None:
    tiny = tmp_path / "tiny.raw"
    tiny.write_bytes(b"\x01" * (4 * MIB))
    with open_disk(tiny) as disk:
        view = AzureView.of(disk)
        with pytest.raises(UploadError, match="20 MiB"):
            managed_upload(view, ManagedDiskRequest("t", "rg1"), api, sas_uploader(view),
                           preflight=None)
        with pytest.raises(UsageError, match="--sku"):
            managed_upload(view, ManagedDiskRequest("t", "rg1", sku="Gold"), api,
                           sas_uploader(view), preflight=None)
    assert arm.state.log == []


def test_arm64_needs_generation_v2(linux_disk: Path, arm: ArmDouble, api: Compute) -> None:
    # Pre-flight knows the fixture's boot files are x64: asking for Arm64 is refused by that.
    req = ManagedDiskRequest("arm", "rg1", hyper_v_generation="V1", architecture="Arm64")
    with pytest.raises(UsageError, match="the disk's boot files are x64"):
        run(linux_disk, api, req)
    # Without pre-flight, the request alone is judged: Arm64 on V1 cannot start.
    req = replace(req, os_type="Linux")
    with open_disk(linux_disk) as disk, \
            pytest.raises(UsageError, match="Arm64 disk boots only on generation V2"):
        view = AzureView.of(disk)
        managed_upload(view, req, api, sas_uploader(view), preflight=None)
    assert arm.calls() == []


# -- the command ---------------------------------------------------------------------------------

def cli(args: list[str], arm: ArmDouble, monkeypatch: pytest.MonkeyPatch,
        credential: Any = None) -> Any:
    from click.testing import CliRunner

    import vhdkit.azure_mgmt
    from vhdkit.cli import main

    if credential is not None:
        monkeypatch.setattr(vhdkit.azure_mgmt, "default_credential", lambda: credential)
    for key, value in arm.identity_env().items():  # DefaultAzureCredential signs in here
        monkeypatch.setenv(key, value)
    for key in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "MSI_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUB)
    arm.state.polls = None  # synchronous answers: the SDK's default poll wait is 30 s
    return CliRunner().invoke(main, ["upload", *args, "--arm-endpoint", arm.endpoint])


def test_the_command_creates_uploads_and_prints_the_next_steps(
        linux_disk: Path, arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    res = cli([str(linux_disk), "--managed-disk", "cli1", "-g", "rg1", "--hyper-v-generation",
               "V2", "--json", "-q"], arm, monkeypatch)
    assert res.exit_code == 0, res.output
    from test_json_docs import Checked

    doc = Checked().validate("vhdkit upload --managed-disk NAME --json DISK ...", res.stdout)
    assert doc["schema"] == 1 and doc["disk_state"] == "Unattached"
    assert doc["os_type"] == "Linux" and doc["upload"]["bytes_sent"] > 0
    assert "sig=" not in res.output  # the granted SAS is a secret
    assert [k for _, k in arm.calls()][-2:] == ["revoke", "disk_get"]
    assert arm.token_resources and "management" in arm.token_resources[0]


def test_the_command_creates_nothing_when_the_gate_refuses(
        tmp_path: Path, arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    odd = tmp_path / "odd.vhd"
    odd.write_bytes(b"\x00" * 1024)  # a .vhd with no footer: check refuses it
    res = cli([str(odd), "--managed-disk", "x", "-g", "rg1", "--os-type", "none"], arm,
              monkeypatch)
    assert res.exit_code == 2 and arm.state.log == []


def test_sign_in_failure_shows_the_credentials_own_message(
        linux_disk: Path, arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    class NoLogin:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise ClientAuthenticationError("DefaultAzureCredential failed: run 'az login'")

    res = cli([str(linux_disk), "--managed-disk", "y", "-g", "rg1", "--hyper-v-generation",
               "V2", "-q"], arm, monkeypatch, credential=NoLogin())
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "vhdkit: error: cannot sign in to Azure: DefaultAzureCredential failed: run 'az login'"]


def test_managed_disk_options_conflict_with_a_destination(
        linux_disk: Path, arm: ArmDouble, monkeypatch: pytest.MonkeyPatch) -> None:
    res = cli([str(linux_disk), "https://md-x.blob.core.windows.net/c/b?sv=1&sig=abc",
               "--managed-disk", "z", "-g", "rg1"], arm, monkeypatch)
    assert res.exit_code == 2 and "creates and grants its own destination" in res.stderr
    res = cli([str(linux_disk), "--image", "img"], arm, monkeypatch)
    assert res.exit_code == 2 and "--image goes with --managed-disk" in res.stderr


def test_a_blob_upload_ends_with_the_az_commands_that_use_it(
        linux_disk: Path, azurite_url: str) -> None:
    import json

    from click.testing import CliRunner

    from vhdkit.cli import main

    blob = f"next-{uuid.uuid4().hex[:8]}.vhd"
    res = CliRunner().invoke(main, ["upload", str(linux_disk), "--emulator", azurite_url,
                                    "--container", "next-steps", "--create-container",
                                    "--blob", blob, "--json", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    url = f"{azurite_url}/next-steps/{blob}"
    assert doc["next_commands"][0].startswith(
        f"az disk create --resource-group MY-RG --name MY-DISK --source {url} --os-type Linux")
    assert any(c.startswith("az image create") and url in c for c in doc["next_commands"])
    text = CliRunner().invoke(main, ["upload", str(linux_disk), "--emulator", azurite_url,
                                     "--container", "next-steps", "--blob", blob, "--overwrite",
                                     "-q"])
    assert text.exit_code == 0 and "\n  next:\n    az disk create" in text.stdout
