"""The test infrastructure itself: Azurite fixtures and scripts/with-azurite.sh."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import ContainerClient

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parent.parent


def test_page_blob_write_and_read_back(container: ContainerClient) -> None:
    blob = container.get_blob_client("disk.vhd")
    blob.create_page_blob(size=4 * MiB)
    page = bytes(range(256)) * 8  # 2 KiB: four 512-byte pages
    blob.upload_page(page, offset=MiB, length=len(page))

    assert blob.download_blob(offset=MiB, length=len(page)).readall() == page
    assert blob.download_blob(offset=0, length=4096).readall() == bytes(4096)
    assert blob.get_blob_properties().size == 4 * MiB
    ranges = [(r.start, r.end) for r in blob.list_page_ranges()]
    assert ranges == [(MiB, MiB + len(page) - 1)]


def test_container_fixture_gives_an_empty_container(container: ContainerClient) -> None:
    assert container.exists()
    assert list(container.list_blobs()) == []


@pytest.mark.azurite
def test_with_azurite_passes_exit_status_and_stops_server() -> None:
    # The child checks that the exported endpoint answers, prints it, then fails with 7.
    child = (
        "import os, socket, sys, urllib.parse as u\n"
        "url = os.environ['VHDKIT_AZURITE_BLOB_URL']\n"
        "p = u.urlsplit(url)\n"
        "socket.create_connection((p.hostname, p.port), timeout=5).close()\n"
        "print(url)\n"
        "sys.exit(7)\n"
    )
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "with-azurite.sh"), sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 7, proc.stderr
    url = proc.stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/devstoreaccount1", url), proc.stdout
    port = urlsplit(url).port
    assert port is not None
    # Azurite was stopped when the script exited, although the command failed.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
