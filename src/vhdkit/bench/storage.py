"""Where ``vhdkit bench`` writes: fresh page blobs in one container, deleted after measuring.

Every SDK call goes through :class:`~vhdkit.upload.pageblob.PageBlob` (its client and its
error translation), so this module does not import the Azure SDK itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ..errors import UsageError

if TYPE_CHECKING:
    from ..upload.pageblob import PageBlob
    from ..upload.types import Target


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost"


def _blob_sas_url(container_sas: str, name: str) -> str:
    """The URL of blob ``name`` under a container SAS URL, keeping its query (the SAS)."""
    parts = urlsplit(container_sas)
    segments = [s for s in parts.path.split("/") if s]
    # Emulator-style URLs carry the account as the first path segment.
    expected = 2 if _is_ip(parts.hostname or "") else 1
    if len(segments) != expected:
        raise UsageError("bench needs a container SAS URL (.../CONTAINER?sv=...&sig=...) with "
                         "create, write and delete permissions: it writes its own blobs; "
                         "a blob or managed-disk SAS cannot hold them")
    path = "/" + "/".join([*segments, name])
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class BenchDestination:
    """Creates the container if needed, hands out fresh blobs, and removes them."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def blob(self, name: str, concurrency: int) -> PageBlob:
        from ..upload.pageblob import PageBlob

        if self.target.sas_url is not None:
            return PageBlob(replace(self.target, sas_url=_blob_sas_url(self.target.sas_url,
                                                                        name)), concurrency)
        return PageBlob(replace(self.target, blob=name), concurrency)

    def setup(self) -> str:
        """Check the destination, create the container unless it exists (a container SAS
        cannot create it), and return the container's URL without any query."""
        probe = self.blob("vhdkit-bench-probe", 1)
        try:
            if self.target.sas_url is None:
                probe.ensure_container()
            return probe.name.rsplit("/", 1)[0]
        finally:
            probe.close()

    def delete(self, blob: PageBlob) -> None:
        blob.delete()
