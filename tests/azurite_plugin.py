"""Azurite blob storage for the tests.

``make test`` starts Azurite (scripts/with-azurite.sh) and exports its endpoint in
``VHDKIT_AZURITE_BLOB_URL``. When that variable is unset (plain ``pytest``), the session starts a
private in-memory Azurite from ./node_modules the same way and stops its process group at exit.
Tests that use Azurite get the ``azurite`` marker automatically, so ``-m "not azurite"`` skips them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

# Azurite's well-known development account (public, documented; not a secret).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
URL_ENV = "VHDKIT_AZURITE_BLOB_URL"

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BLOB = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
START_TIMEOUT_S = 30.0


def connection_string(url: str) -> str:
    """Connection string for the dev account at ``url`` (``.../devstoreaccount1``)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};"
        f"AccountKey={DEV_KEY};BlobEndpoint={url};"
    )


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop Azurite's whole process group (it was started as a session leader)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def _start_private(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    if not AZURITE_BLOB.exists():
        pytest.fail(
            f"{URL_ENV} is not set and {AZURITE_BLOB} does not exist: "
            "run the tests with 'make test', or run 'make setup' first",
            pytrace=False,
        )
    port = _free_port()
    # Same options as scripts/with-azurite.sh; the Python SDK needs --skipApiVersionCheck.
    cmd = [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    cmd += ["--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry"]
    cmd += ["--silent", "--loose"]
    with log_path.open("wb") as log:
        # start_new_session: Azurite (node and any children) gets its own process group.
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if _accepts("127.0.0.1", port):
            return proc, f"http://127.0.0.1:{port}/{DEV_ACCOUNT}"
        time.sleep(0.1)
    _stop(proc)
    output = log_path.read_text(errors="replace").strip()
    pytest.fail(
        f"Azurite did not start on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f}s "
        f"(exit code {proc.returncode}):\n{output}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def azurite_url() -> Iterator[str]:
    """Blob endpoint URL of a running Azurite (``http://127.0.0.1:PORT/devstoreaccount1``)."""
    url = os.environ.get(URL_ENV)
    if url:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 80
        if not _accepts(host, port):
            pytest.fail(f"{URL_ENV}={url} but nothing accepts connections there", pytrace=False)
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="vhdkit-azurite-") as tmp:
        proc, url = _start_private(Path(tmp) / "azurite.log")
        try:
            yield url
        finally:
            _stop(proc)


@pytest.fixture(scope="session")
def blob_service(azurite_url: str) -> BlobServiceClient:
    """Client for the dev account on Azurite."""
    return BlobServiceClient.from_connection_string(connection_string(azurite_url))


@pytest.fixture
def container(blob_service: BlobServiceClient) -> Iterator[ContainerClient]:
    """A fresh, empty container, deleted with its blobs after the test."""
    client = blob_service.create_container(f"test-{uuid.uuid4().hex}")
    try:
        yield client
    finally:
        with contextlib.suppress(ResourceNotFoundError):  # the test may have deleted it
            client.delete_container()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "azurite_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.azurite)
