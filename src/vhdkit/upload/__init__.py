"""Streaming page-blob upload of the Azure view: plan (skip zeros by a request-cost model),
engine (concurrent writers with retries), resume (source metadata and page ranges), verify.

The Azure SDK is imported only by :mod:`vhdkit.upload.pageblob`.
"""

from __future__ import annotations

from .engine import DEFAULT_CONCURRENCY, RetryPolicy
from .plan import DEFAULT_MERGE_GAP, AdaptiveGap, FixedGap, Planner
from .types import MAX_WRITE, Write
from .uploader import Progress, UploadOptions, UploadResult, upload_view

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MERGE_GAP",
    "MAX_WRITE",
    "AdaptiveGap",
    "FixedGap",
    "Planner",
    "Progress",
    "RetryPolicy",
    "UploadOptions",
    "UploadResult",
    "Write",
    "upload_view",
]
