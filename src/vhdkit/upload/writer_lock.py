"""One writer per blob: a blob lease held for the upload's lifetime, or, where leases are not
available (some SAS destinations), a sequence number every Put Page is conditioned on; where
neither is (a managed disk may refuse both), the upload runs unguarded.

The lease is finite (``LEASE_S``) and renewed by a background thread, so a killed upload frees
the blob within a minute. Its id is derived from the source's fingerprint and this host, so a
rerun of the same upload (``--resume`` after a kill) takes the lease over at once, while an
upload of another source is refused: it exits with "another upload is writing this blob".
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ..errors import UploadError
from .types import WriterConflict

if TYPE_CHECKING:
    from .pageblob import PageBlob

LEASE_S = 60
RENEW_S = 15
#: How long a writer that just created the blob waits for a lease another upload holds briefly
#: (one that saw the new blob, found another source in it and is about to give up).
SETTLE_S = 10.0
_NAMESPACE = uuid.UUID("6f1d3c1e-8a53-4d59-9a8e-2f7c1d0b5a11")


def lease_id_for(source_key: str, blob_name: str) -> str:
    """The same for reruns of one upload on one host, different for another source."""
    return str(uuid.uuid5(_NAMESPACE, f"{socket.gethostname()}\0{source_key}\0{blob_name}"))


class WriterLock:
    """Held from the decision about the destination until the upload ends."""

    def __init__(self, blob: PageBlob, source_key: str) -> None:
        self.blob = blob
        self.lease_id = lease_id_for(source_key, blob.name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: UploadError | None = None

    def acquire(self, *, wait: bool = False) -> bool:
        """Lease the blob; False when it does not exist. Raises WriterConflict when another
        upload holds it (after waiting up to SETTLE_S with ``wait``)."""
        if self._thread is not None or self.blob.sequence is not None:
            return True  # already held
        deadline = time.monotonic() + (SETTLE_S if wait else 0.0)
        while True:
            try:
                self.blob.acquire_lease(self.lease_id, LEASE_S)
                break
            except WriterConflict:
                if time.monotonic() >= deadline:
                    raise WriterConflict(
                        f"{self.blob.name}: another upload is writing this blob (it holds the "
                        f"blob's lease); wait for it to end (a killed upload frees the blob "
                        f"within {LEASE_S} s)") from None
                time.sleep(random.uniform(0.1, 0.3))
            except UploadError as exc:
                text = str(exc)
                if "BlobNotFound" in text or "HTTP 404" in text:
                    return False
                if not self.blob.target.is_sas:
                    raise
                self._guard_by_sequence()  # a SAS that may not lease: conditional writes
                return True
        self.blob.lease_id = self.lease_id
        self._thread = threading.Thread(target=self._renew, name="vhdkit-lease", daemon=True)
        self._thread.start()
        return True

    def after_create(self) -> None:
        """The blob was created anew (``--overwrite``): a lease survives that, a sequence number
        does not (a new page blob starts at 0), so the guard is set again."""
        if self.blob.sequence is not None:
            self._guard_by_sequence()

    def _guard_by_sequence(self) -> None:
        """Every Put Page from here on requires this sequence number: another writer that sets
        its own makes this one's next write fail (412) instead of mixing two sources."""
        number = random.getrandbits(62) + 1
        try:
            self.blob.set_sequence_number(number)
        except WriterConflict:
            raise
        except UploadError:
            return  # neither leases nor sequence numbers here: no guard (README, Limits)
        self.blob.sequence = number

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self.blob.renew_lease()
            except UploadError as exc:  # the next write fails on the lease and says so
                self.lost = exc
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.blob.lease_id is not None:
            with contextlib.suppress(UploadError):  # else it expires within LEASE_S
                self.blob.release_lease()
            self.blob.lease_id = None
        self.blob.sequence = None
