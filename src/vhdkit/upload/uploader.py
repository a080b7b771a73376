"""One upload from start to end: decide what the destination already holds, plan, send,
then optionally set Content-MD5 and verify."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..azure_view import AzureView
from ..errors import UploadError
from ..extents import Extent
from .engine import DEFAULT_CONCURRENCY, Engine, EngineStats, RetryPolicy
from .plan import DEFAULT_MERGE_GAP, AdaptiveGap, FixedGap, GapPolicy, Planner
from .resume import from_metadata, mismatch, source_info, to_metadata
from .types import MAX_WRITE, check_max_write
from .verify import VerifyResult, verify

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
    gap_model: dict[str, float | int | None] | None = None

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


def _decide(view: AzureView, blob: PageBlob, opts: UploadOptions) -> tuple[str, list[Extent]]:
    """(mode, ranges already present); creates, clears or replaces the blob unless dry-run."""
    stream = view.stream_size
    state = blob.state()
    if blob.target.is_sas:
        if state is None:
            raise UploadError(f"{blob.name} does not exist: a SAS destination (a managed disk) "
                              f"must already exist with the stream size {stream}")
        if state.size != stream:
            raise UploadError(f"{blob.name} is {state.size} bytes but the stream is {stream} "
                              f"(virtual size {view.virtual_size} + 512-byte footer); "
                              "refusing before sending anything")
        ranges = blob.page_ranges()
        if opts.resume:
            return "resumed", ranges
        if ranges and not opts.overwrite:
            raise UploadError(f"{blob.name} already holds data; use --resume to continue an "
                              "upload of this source or --overwrite to replace it")
        if ranges and not opts.dry_run:
            blob.clear(ranges)
        return ("overwritten" if ranges else "new"), []
    info = source_info(view)
    if state is None:
        if not opts.dry_run:
            blob.create(stream, to_metadata(info))
        return "new", []
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
        if recorded is None and not opts.dry_run:
            blob.set_metadata(to_metadata(info))
        return "resumed", blob.page_ranges()
    if not opts.overwrite:
        raise UploadError(f"{blob.name} exists and {why}; use --overwrite to replace it")
    if not opts.dry_run:
        blob.create(stream, to_metadata(info))
    return "overwritten", []


def upload_view(view: AzureView, blob: PageBlob | None, opts: UploadOptions,
           on_progress: Callable[[Progress], None] | None = None) -> UploadResult:
    """Upload ``view`` to ``blob`` (``blob`` may be None only for a dry run)."""
    if blob is None and not opts.dry_run:
        raise UploadError("no destination given")
    check_max_write(opts.max_write)  # before _decide creates or clears anything
    mode, present = ("new", []) if blob is None else _decide(view, blob, opts)
    gap: GapPolicy = (AdaptiveGap(DEFAULT_MERGE_GAP) if opts.merge_gap is None
                      else FixedGap(opts.merge_gap))
    hasher = hashlib.md5() if opts.md5 and not opts.dry_run else None
    planner = Planner(view, gap, present, hasher, max_write=opts.max_write)
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
                        on_progress=report)
        try:
            es = engine.run(planner.writes())
        except UploadError as exc:
            again = "with --resume" if blob.target.is_sas else "the same command"
            raise UploadError(f"{exc}; {engine.stats.sent} bytes were written: rerun {again} "
                              "to send the rest") from exc
        sent = es.sent
    result = UploadResult(
        destination=blob.name if blob is not None else "", mode=mode,
        stream_size=view.stream_size, virtual_size=view.virtual_size, resized=view.resized,
        bytes_sent=sent, bytes_present=pstats.present,
        bytes_skipped=view.stream_size - sent, writes=pstats.writes, merge_gap=gap.current(),
        adaptive_gap=opts.merge_gap is None, retries=es.retries, seconds=es.elapsed,
        request_seconds=es.request_s,
        gap_model=gap.model() if isinstance(gap, AdaptiveGap) else None)
    if blob is None or opts.dry_run:
        return result
    if hasher is not None:
        digest = hasher.digest()
        blob.set_content_md5(digest)
        result.md5 = digest.hex()
    if opts.verify:
        result.verified = verify(view, blob.page_ranges(), blob.read, opts.concurrency)
    return result
