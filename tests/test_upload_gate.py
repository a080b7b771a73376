"""`vhdkit upload` runs the readiness gate first: format rules and pre-flight of the OS inside."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from cli_helpers import vhdkit
from fixtures import linux_disks


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("gate")
    return {name: linux_disks.build(name, work) for name in ("generalized-gpt", "host-keys")}


def args(path: Path, url: str, container: ContainerClient) -> list[str]:
    return ["upload", str(path), "--emulator", url, "--container", container.container_name,
            "--blob", "os.vhd", "-q"]


def blobs(container: ContainerClient) -> list[str]:
    return [b.name for b in container.list_blobs()]


def test_not_generalized_disk_is_refused_before_any_byte(
        disks: dict[str, Path], azurite_url: str, container: ContainerClient) -> None:
    code, _, err = vhdkit(*args(disks["host-keys"], azurite_url, container))
    assert code == 1
    assert "linux.deprovision.ssh-host-keys" in err and "waagent -force -deprovision" in err
    assert "upload refused" in err
    assert blobs(container) == []


def test_skip_preflight_uploads_with_a_warning(
        disks: dict[str, Path], azurite_url: str, container: ContainerClient) -> None:
    code, _, err = vhdkit(*args(disks["host-keys"], azurite_url, container), "--skip-preflight")
    assert code == 0, err
    assert "warning: --skip-preflight: the OS inside was not checked" in err
    assert blobs(container) == ["os.vhd"]


def test_specialized_disk_uploads_when_expected(
        disks: dict[str, Path], azurite_url: str, container: ContainerClient) -> None:
    code, _, err = vhdkit(*args(disks["host-keys"], azurite_url, container),
                          "--expect", "specialized")
    assert code == 0, err
    assert "warning" not in err


def test_generalized_disk_passes_the_gate(
        disks: dict[str, Path], azurite_url: str, container: ContainerClient) -> None:
    code, _, err = vhdkit(*args(disks["generalized-gpt"], azurite_url, container))
    assert code == 0, err
    assert blobs(container) == ["os.vhd"]


def test_create_container(disks: dict[str, Path], azurite_url: str,
                          blob_service: BlobServiceClient) -> None:
    name = "made-by-upload"
    base = ["upload", str(disks["generalized-gpt"]), "--emulator", azurite_url,
            "--container", name, "--blob", "os.vhd", "-q"]
    code, _, err = vhdkit(*base)
    assert code == 2 and f"container '{name}' does not exist" in err
    try:
        code, _, err = vhdkit(*base, "--create-container")
        assert code == 0, err
        assert [b.name for b in blob_service.get_container_client(name).list_blobs()] == [
            "os.vhd"]
    finally:
        blob_service.delete_container(name)
    code, _, err = vhdkit("upload", str(disks["generalized-gpt"]),
                          f"{azurite_url}/c/b.vhd?sv=x&sig=secret", "--create-container")
    assert code == 2 and "--create-container needs" in err and "secret" not in err


def test_gate_hands_over_os_generations_and_architecture(disks: dict[str, Path]) -> None:
    """What the managed-disk hand-off needs (--hyper-v-generation, --architecture) comes with
    the gate's report."""
    from vhdkit.azure_view import AzureView
    from vhdkit.formats import open_disk
    from vhdkit.gate import upload_gate

    with open_disk(disks["generalized-gpt"]) as disk:
        report = upload_gate(AzureView.of(disk))
    assert report.ready
    assert report.facts["os"] == "linux"
    assert report.boot is not None
    assert (report.boot.generations, report.boot.architecture) == (("V1", "V2"), "x64")
    assert report.facts["boot"] == report.boot.to_dict()
