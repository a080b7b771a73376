"""One upload from start to end: check Azure's limits, decide what the destination already
holds, plan, send, then optionally set Content-MD5 and verify.

A managed disk (an ``md-...`` host) exposes only the page-write path: it is never created,
deleted, given metadata or properties (so no ``--md5``), and keeps no record of the source --
``--resume`` checks sampled sectors of the pages present instead. Any other destination is an
ordinary page blob, created when missing (also through a SAS with create permission), with the
source recorded in its metadata."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..azure_view import AzureView
from ..errors import AuthenticationError, NetworkError, UploadError
from ..extents import Extent
from .engine import BLOB_REQUEST_RATE, DEFAULT_CONCURRENCY, Engine, EngineStats, RetryPolicy
from .fingerprint import first_mismatch
from .plan import DEFAULT_MERGE_GAP, AdaptiveGap, FixedGap, GapPolicy, Planner
from .resume import fingerprint, from_metadata, mismatch, source_info, to_metadata
from .types import (
    MAX_WRITE,
    BlobExists,
    ReadForbidden,
    SourceInfo,
    WriterConflict,
    check_max_write,
    check_stream_limits,
)
from .verify import VerifyResult, verify
from .writer_lock import WriterLock

HOLD_ENV = "VHDKIT_TEST_UPLOAD_HOLD"

if TYPE_CHECKING:
    from .pageblob import PageBlob


@dataclass
class UploadOptions:
    concurrency: int = DEFAULT_CONCURRENCY
    merge_gap: int | None = None  # None: adaptive, starting at DEFAULT_MERGE_GAP
    overwrite: bool = False
    resume: bool = False
    md5: bool = False
    verify: bool = False
    dry_run: bool = False
    max_write: int = MAX_WRITE  # largest Put Page; smaller sizes are for ``vhdkit bench``
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Requests per second to one blob: None = Azure's per-blob target (500/s) for Azure hosts,
    #: no cap for a local emulator; 0 = no cap.
    request_rate: float | None = None
    #: Body bytes per second (a blob's or disk's throughput target); None: no cap (throttling
    #: answers still lower the concurrency).
    byte_rate: float | None = None


@dataclass
class Progress:
    stream_size: int
    scanned: int
    planned: int
    sent: int
    present: int
    writes: int
    retries: int
    elapsed: float


@dataclass
class UploadResult:
    destination: str
    mode: str  # new, resumed, overwritten, dry-run
    stream_size: int
    virtual_size: int
    resized: bool
    bytes_sent: int
    bytes_present: int  # already on the destination (resume), not resent
    bytes_skipped: int  # everything not sent: zeros and bytes already present
    writes: int
    merge_gap: int
    adaptive_gap: bool
    retries: int
    seconds: float
    request_seconds: float
    md5: str | None = None
    verified: VerifyResult | None = None
    #: the adaptive cost model's estimates behind ``merge_gap`` (request time, bandwidth, fits)
    gap_model: dict[str, float | int | str | None] | None = None
    blob_type: str = "PageBlob"
    managed_disk: bool = False
    throttled: int = 0  # throttling answers from the service
    lowest_concurrency: int = 0  # lowest engine concurrency after throttling
    warnings: list[str] = field(default_factory=list)  # what the CLI shows as warnings

    @property
    def skipped_pct(self) -> float:
        return 100.0 * self.bytes_skipped / self.stream_size if self.stream_size else 0.0

    @property
    def throughput(self) -> float:
        """Stream bytes handled per second (what the user waits for)."""
        return self.stream_size / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped_pct"] = round(self.skipped_pct, 2)
        d["throughput_bytes_per_s"] = round(self.throughput)
        return d


def _decide(view: AzureView, blob: PageBlob, opts: UploadOptions, warnings: list[str],
            lock: WriterLock | None = None) -> tuple[str, list[Extent], list[Extent]]:
    """(mode, ranges already present, stale ranges to overwrite with zeros); creates or replaces
    an ordinary blob unless dry-run. With ``lock`` the blob is leased first (one writer per
    blob), so the state read below cannot change under this upload."""
    if blob.target.is_managed_disk:
        return _decide_managed_disk(view, blob, opts, warnings)
    stream = view.stream_size
    if lock is not None:
        lock.acquire()
    state = blob.state()
    info = source_info(view)
    if state is None:
        if not opts.dry_run:
            _create_new(blob, stream, info, lock)
        return "new", [], []
    recorded = from_metadata(state.metadata)
    why: str | None
    if state.blob_type != "PageBlob":
        why = f"is a {state.blob_type}, not a page blob"
    elif state.size != stream:
        why = f"is {state.size} bytes, the stream is {stream}"
    elif recorded is None:
        why = None if opts.resume else "was not written by vhdkit (no source metadata)"
    else:
        why = mismatch(recorded, info)
        why = f"was written from another source: {why}" if why else None
    if why is None:
        ranges = blob.page_ranges(stream)
        if recorded is None:  # no record of the source: the pages themselves must match it
            _refuse_foreign(view, blob, ranges, warnings)
        if recorded is None and not opts.dry_run:
            blob.set_metadata(to_metadata(info))
        return "resumed", ranges, []
    if not opts.overwrite:
        raise UploadError(f"{blob.name} exists and {why}; use --overwrite to replace it")
    if not opts.dry_run:
        blob.create(stream, to_metadata(info))
        if lock is not None:
            lock.after_create()
    return "overwritten", [], []


def _create_new(blob: PageBlob, stream: int, info: SourceInfo, lock: WriterLock | None) -> None:
    """Create the blob only if no other upload did meanwhile, then lease it.

    Creating and leasing are two requests: between them another upload (with --overwrite) may
    lease the new blob and replace it. So once leased, the blob must still record this source
    and be of this size, else this upload is the loser; it must not write over another's pages.
    """
    with contextlib.suppress(BlobExists):  # checked below, under the lease
        blob.create(stream, to_metadata(info), exclusive=True)
    if lock is not None:
        lock.acquire(wait=True)
    again = blob.state()
    recorded = None if again is None else from_metadata(again.metadata)
    if (again is None or again.size != stream or recorded is None
            or mismatch(recorded, info) is not None):
        raise WriterConflict(f"{blob.name}: another upload created or replaced this blob at "
                             "the same time and is writing it")


def _refuse_foreign(view: AzureView, blob: PageBlob, ranges: list[Extent],
                    warnings: list[str]) -> None:
    """Resume only onto pages of this source (sampled sectors read back and compared)."""
    try:
        bad = first_mismatch(blob, view, ranges)
    except ReadForbidden:
        warnings.append("the SAS does not allow reading, so the pages already on the blob were "
                        "trusted without checking that they came from this source")
        return
    if bad is not None:
        raise UploadError(f"{blob.name} holds pages that did not come from this source (sector "
                          f"at {bad} differs); use --overwrite to replace them")


def _hold() -> None:
    """Test-only: once the destination is decided (and leased), wait until the file named by
    VHDKIT_TEST_UPLOAD_HOLD exists, so a test can run a second upload into that window."""
    hold = os.environ.get(HOLD_ENV)
    if hold:
        with contextlib.suppress(OSError):
            os.close(os.open(f"{hold}.{os.getpid()}.ready", os.O_CREAT | os.O_WRONLY, 0o644))
        deadline = time.monotonic() + 60
        while not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)


def _decide_managed_disk(view: AzureView, blob: PageBlob, opts: UploadOptions,
                         warnings: list[str]) -> tuple[str, list[Extent], list[Extent]]:
    """A managed disk already exists with its size; only its pages can be written."""
    stream = view.stream_size
    state = blob.state()
    if state is None:
        raise UploadError(f"{blob.name} does not exist: a managed disk is created with "
                          f"`az disk create --upload-type Upload --upload-size-bytes {stream}`")
    if state.blob_type != "PageBlob" or state.size != stream:
        raise UploadError(f"{blob.name} is a {state.blob_type} of {state.size} bytes but the "
                          f"stream is a page blob of {stream} bytes (virtual size "
                          f"{view.virtual_size} + 512-byte footer); refusing before sending "
                          "anything")
    ranges = blob.page_ranges(stream)
    if not ranges:
        return "new", [], []
    if opts.resume:
        try:
            bad = first_mismatch(blob, view, ranges)
        except ReadForbidden:
            warnings.append("the SAS does not allow reading, so the pages already on the disk "
                            "were trusted without checking that they came from this source")
            return "resumed", ranges, []
        if bad is None:
            return "resumed", ranges, []
        raise UploadError(f"{blob.name} holds pages that did not come from this source (sector "
                          f"at {bad} differs); use --overwrite to replace them")
    if not opts.overwrite:
        raise UploadError(f"{blob.name} already holds data; use --resume to continue an "
                          "upload of this source or --overwrite to replace it")
    # Old data where the new stream is zero is written over with zeros, in the same writes.
    return "overwritten", [], ranges


def _request_rate(blob: PageBlob, opts: UploadOptions) -> float | None:
    if opts.request_rate is not None:
        return opts.request_rate or None
    host = blob.target.host
    local = blob.target.emulator is not None or host in ("127.0.0.1", "localhost", "::1")
    return None if local else BLOB_REQUEST_RATE


def upload_view(view: AzureView, blob: PageBlob | None, opts: UploadOptions,
                on_progress: Callable[[Progress], None] | None = None,
                on_verify: Callable[[int, int], None] | None = None) -> UploadResult:
    """Upload ``view`` to ``blob`` (``blob`` may be None only for a dry run).
    ``on_verify(bytes_compared, bytes_to_compare)`` reports verify's progress."""
    if blob is None and not opts.dry_run:
        raise UploadError("no destination given")
    # Everything that can be refused is refused before anything is created or sent.
    check_max_write(opts.max_write)
    managed = blob is not None and blob.target.is_managed_disk
    if blob is not None:
        check_stream_limits(view.stream_size, managed)
    if managed and opts.md5:
        raise UploadError("--md5 sets a blob property, which a managed disk refuses (Azure "
                          "answers 403 after the whole upload): drop --md5 and use --verify")
    # One writer per blob (a managed disk can be neither leased nor sequenced: issue #12).
    lock = (None if blob is None or opts.dry_run or managed
            else WriterLock(blob, fingerprint(view)))
    try:
        return _upload(view, blob, opts, on_progress, on_verify, managed, lock)
    finally:
        if lock is not None:
            lock.release()


def _upload(view: AzureView, blob: PageBlob | None, opts: UploadOptions,
            on_progress: Callable[[Progress], None] | None,
            on_verify: Callable[[int, int], None] | None, managed: bool,
            lock: WriterLock | None) -> UploadResult:
    warnings: list[str] = []
    mode, present, stale = (("new", [], []) if blob is None
                            else _decide(view, blob, opts, warnings, lock))
    _hold()
    gap: GapPolicy = (AdaptiveGap(DEFAULT_MERGE_GAP) if opts.merge_gap is None
                      else FixedGap(opts.merge_gap))
    hasher = hashlib.md5() if opts.md5 and not opts.dry_run else None
    planner = Planner(view, gap, present, hasher, max_write=opts.max_write, cover=stale)
    pstats = planner.stats

    def report(es: EngineStats) -> None:
        if on_progress is not None:
            on_progress(Progress(pstats.stream_size, pstats.scanned, pstats.planned, es.sent,
                                 pstats.present, es.writes, es.retries, es.elapsed))

    if opts.dry_run or blob is None:
        es = EngineStats()
        for _ in planner.writes():
            pass
        es.finished = es.started + max(1e-9, es.elapsed)
        report(es)
        sent, mode = pstats.planned, "dry-run"
    else:
        engine = Engine(blob, concurrency=opts.concurrency, retry=opts.retry, gap=gap,
                        on_progress=report, rate=_request_rate(blob, opts),
                        byte_rate=opts.byte_rate)
        try:
            es = engine.run(planner.writes())
        except UploadError as exc:
            again = "with --resume" if managed else "the same command"
            if "--create-container" in str(exc):
                again = "with --create-container"
            if isinstance(exc, WriterConflict):
                raise UploadError(f"{exc}; this upload stopped after {engine.stats.sent} "
                                  "bytes") from exc
            # the same class, so that callers (and the CLI's exit code 3) still see a network
            # or authentication failure as one
            cls = (AuthenticationError if isinstance(exc, AuthenticationError) else
                   NetworkError if isinstance(exc, NetworkError) else UploadError)
            raise cls(f"{exc}; {engine.stats.sent} bytes were written: rerun {again} "
                      "to send the rest") from exc
        sent = es.sent
    result = UploadResult(
        destination=blob.name if blob is not None else "", mode=mode,
        stream_size=view.stream_size, virtual_size=view.virtual_size, resized=view.resized,
        bytes_sent=sent, bytes_present=pstats.present,
        bytes_skipped=view.stream_size - sent, writes=pstats.writes, merge_gap=gap.current(),
        adaptive_gap=opts.merge_gap is None, retries=es.retries, seconds=es.elapsed,
        request_seconds=es.request_s,
        gap_model=gap.model() if isinstance(gap, AdaptiveGap) else None,
        managed_disk=managed, throttled=es.throttled,
        lowest_concurrency=es.lowest_concurrency or opts.concurrency, warnings=warnings)
    if blob is None or opts.dry_run:
        return result
    if hasher is not None:
        digest = hasher.digest()
        blob.set_content_md5(digest)
        result.md5 = digest.hex()
    if opts.verify:
        try:
            result.verified = verify(view, blob.page_ranges(view.stream_size), blob.read,
                                     opts.concurrency, on_verify)
        except ReadForbidden:
            result.warnings.append(
                "verify is not permitted by this SAS (a write-only grant): the upload finished, "
                f"but its {sent:,} bytes sent were not read back and compared")
    return result
