"""vhdkit: get local disk images ready for Azure and upload them fast.

The public API (see the README's "Use it from Python"): open any disk image as a
:class:`VirtualDisk`, take its :class:`AzureView` (the exact fixed-VHD stream Azure needs), and
check, convert, pre-flight or upload it. Every error is a :class:`VhdkitError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .azure_view import AzureView, round_up_mib
from .check import check_path, check_view
from .convert import ConvertResult, convert, convert_in_place, parse_size
from .disk import VirtualDisk, detect_format, open_disk
from .errors import (
    ConvertError,
    DiskIOError,
    FormatError,
    ParentNotFound,
    PreflightError,
    UnsupportedDisk,
    UploadError,
    UsageError,
    VhdkitError,
)
from .extents import Extent, nonzero_runs
from .facts import inspect_path
from .preflight.engine import preflight, preflight_path
from .report import Finding, Report, render_json, render_junit, render_text
from .upload import UploadOptions, UploadResult, upload
from .upload.types import Target

if TYPE_CHECKING:
    from .upload.pageblob import PageBlob

__version__ = "0.1.0"

__all__ = [
    "AzureView",
    "ConvertError",
    "ConvertResult",
    "DiskIOError",
    "Extent",
    "Finding",
    "FormatError",
    "PageBlob",
    "ParentNotFound",
    "PreflightError",
    "Report",
    "Target",
    "UnsupportedDisk",
    "UploadError",
    "UploadOptions",
    "UploadResult",
    "UsageError",
    "VhdkitError",
    "VirtualDisk",
    "__version__",
    "check_path",
    "check_view",
    "convert",
    "convert_in_place",
    "detect_format",
    "inspect_path",
    "nonzero_runs",
    "open_disk",
    "parse_size",
    "preflight",
    "preflight_path",
    "render_json",
    "render_junit",
    "render_text",
    "round_up_mib",
    "upload",
]


def __getattr__(name: str) -> Any:
    # The Azure SDK takes a while to import: load the destination types only when asked for.
    if name == "PageBlob":
        from .upload.pageblob import PageBlob

        return PageBlob
    raise AttributeError(f"module 'vhdkit' has no attribute {name!r}")
