"""Every command the README shows runs, in order, against generated disks and a real Azurite,
with the exit code the README promises (`# exit N`, else 0); the Python example runs too; and the
public API list in the README is exactly ``vhdkit.__all__``."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

import vhdkit
import vhdkit.cli
from armdouble import ArmDouble
from azurite_plugin import DEV_ACCOUNT, DEV_KEY
from fixtures import linux_disks, qemu, vmdk_images
from mddouble import ManagedDiskDouble, revoke_problems
from vhdkit.upload.types import CONNECT_TO_ENV

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[str, str]]:
    return FENCE.findall(README.read_text())


def commands() -> list[tuple[str, int]]:
    """(shell command, expected exit code) for every vhdkit invocation, in README order."""
    out: list[tuple[str, int]] = []
    for lang, body in blocks():
        for raw in body.splitlines():
            line = raw.strip()
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            elif lang == "yaml":
                line = re.sub(r"^(- )?(script|run):\s*", "", line)
                line = line.replace("$(Build.ArtifactStagingDirectory)", ".")
            elif lang == "azure-cli":
                m = re.search(r"\$\((vhdkit [^|)]*)", line)
                line = m.group(1).strip() if m else line
            if not line.startswith("vhdkit "):
                continue
            m = re.search(r"#\s*exit (\d)", line)
            out.append((line, int(m.group(1)) if m else 0))
    return out


@pytest.fixture(scope="module")
def md_double(azurite_url: str) -> Iterator[ManagedDiskDouble]:
    """The managed-disk example goes to an md-... host: the strict double in front of Azurite."""
    with ManagedDiskDouble(azurite_url) as double:
        yield double


@pytest.fixture(scope="module")
def arm_double(tmp_path_factory: pytest.TempPathFactory, azurite_url: str,
               md_double: ManagedDiskDouble) -> Iterator[ArmDouble]:
    """The one-command managed-disk example: Azure Resource Manager's double, whose granted SAS
    goes to the strict managed-disk double's md- host."""
    def to_md(url: str) -> str:
        parts = urlsplit(url)
        container, blob = parts.path.strip("/").split("/")[-2:]
        return md_double.sas_url(container, blob, parts.query)

    service = BlobServiceClient(azurite_url, credential={"account_name": DEV_ACCOUNT,
                                                         "account_key": DEV_KEY})
    with ArmDouble(tmp_path_factory.mktemp("arm"), service, DEV_KEY, container="readme-md",
                   sas_url=to_md) as arm:
        arm.state.polls = None  # answers at once: the SDK's default poll wait is 30 s
        yield arm


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, azurite_url: str,
            md_double: ManagedDiskDouble) -> Path:
    work = tmp_path_factory.mktemp("readme")
    for name, disk in (("generalized-gpt", "disk.vhd"), ("not-generalized", "vm.vhd")):
        raw = linux_disks.build(name, work)
        qemu.convert(raw, "raw", work / disk, "vpc")  # qemu's default: CHS-rounded, dynamic
        if disk == "disk.vhd":  # the Formats section: a VDI, and a disk that was gzipped
            qemu.convert(raw, "raw", work / "disk.vdi", "vdi")
            (work / "disk.raw.gz").write_bytes(gzip.compress(raw.read_bytes()))
        raw.unlink()
    # The OVA example: two streamOptimized disks (VMware's export layout) made by qemu-img.
    stream = qemu.convert(work / "disk.vhd", "vpc", work / "disk1.vmdk", "vmdk",
                          "subformat=streamOptimized")
    size = qemu.virtual_size(stream, "vmdk")
    vmdk_images.make_ova(work / "appliance.ova", [
        ("appliance.ovf", vmdk_images.ovf([("disk1.vmdk", size), ("disk2.vmdk", size)]).encode()),
        ("disk1.vmdk", stream), ("disk2.vmdk", stream)])
    stream.unlink()
    service = BlobServiceClient(azurite_url, credential={"account_name": DEV_ACCOUNT,
                                                         "account_key": DEV_KEY})
    # no "images" container: the README's first upload must work on a fresh Azurite by itself
    # The managed-disk example: a page blob pre-created with the exact stream size, and a SAS.
    disks = service.create_container("disks")
    with vhdkit.open_disk(work / "disk.vhd") as d:
        size = vhdkit.AzureView.of(d).stream_size
    disks.get_blob_client("mydisk").create_page_blob(size)
    sas = generate_blob_sas(DEV_ACCOUNT, "disks", "mydisk", account_key=DEV_KEY,
                            permission=BlobSasPermissions(read=True, write=True),
                            expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    os.environ["README_SAS"] = md_double.sas_url("disks", "mydisk", sas)
    os.environ["README_CONNECT_TO"] = md_double.connect_to
    return work


def test_readme_commands_run_with_the_promised_exit_codes(workdir: Path, azurite_url: str,
                                                          blob_service: BlobServiceClient,
                                                          arm_double: ArmDouble) -> None:
    cmds = commands()
    env = dict(os.environ, AZURITE=azurite_url, SAS=os.environ["README_SAS"],
               **{CONNECT_TO_ENV: os.environ["README_CONNECT_TO"]},
               **arm_double.identity_env(), VHDKIT_ARM_ENDPOINT=arm_double.endpoint,
               AZURE_SUBSCRIPTION_ID="00000000-0000-0000-0000-0000000readme",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for cmd, want in cmds:
        res = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        assert res.returncode == want, f"{cmd}\n{res.stdout}\n{res.stderr}"
        assert "Traceback" not in res.stderr
    # every subcommand of the CLI is shown in the README
    shown = {c.split()[1] for c, _ in cmds}
    assert shown >= set(vhdkit.cli.COMMANDS), set(vhdkit.cli.COMMANDS) - shown
    # the managed-disk upload really filled the pre-created disk, and Azure would accept it
    blob = blob_service.get_blob_client("disks", "mydisk")
    assert any(not r.cleared for r in blob.list_page_ranges()), "no pages on the managed disk"
    size = blob.get_blob_properties().size
    assert revoke_problems(size, blob.download_blob(offset=size - 512).readall()) == []
    # the one-command flow created, filled and closed its disk
    disk = arm_double.state.disks["mydisk2"]
    assert disk["properties"]["diskState"] == "Unattached"
    assert disk["properties"]["osType"] == "Linux"
    made = blob_service.get_blob_client("readme-md", arm_double.blob_name("mydisk2"))
    size = made.get_blob_properties().size
    assert revoke_problems(size, made.download_blob(offset=size - 512).readall()) == []


def test_readme_python_example_runs(workdir: Path, azurite_url: str,
                                    blob_service: BlobServiceClient,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = [body for lang, body in blocks() if lang == "python"]
    assert len(code) == 1
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("AZURITE", azurite_url)
    exec(compile(code[0], "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("vhd-dynamic ")
    assert out[3] == "False ['vhd.type', 'azure.size-mib']"
    # the real upload from Python landed, verified
    mode, sent, verified = out[-1].split()
    assert mode in ("new", "resumed") and int(sent) > 0 and verified == "True"
    assert blob_service.get_blob_client("images", "lib.vhd").exists()


def test_readme_lists_exactly_the_public_api() -> None:
    text = README.read_text().split("<!-- public-api -->")[1].split("<!-- /public-api -->")[0]
    assert set(re.findall(r"`(\w+)`", text)) == set(vhdkit.__all__)
    for name in vhdkit.__all__:
        obj = getattr(vhdkit, name)
        assert name == "__version__" or obj.__doc__, f"{name} has no docstring"
