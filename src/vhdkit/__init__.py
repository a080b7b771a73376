"""vhdkit: get local disk images ready for Azure and upload them fast.

The public API (see the README's "Use it from Python"): open any disk image as a
:class:`VirtualDisk`, take its :class:`AzureView` (the exact fixed-VHD stream Azure needs), and
check, convert, pre-flight or upload it. Every error is a :class:`VhdkitError`.

Names load on first use (PEP 562): ``import vhdkit`` costs nothing until a name is touched, so the
CLI starts fast and the Azure SDK, numpy and the pre-flight readers load only where used.
Public functions never share a name with a module: ``vhdkit.convert`` is the module,
``vhdkit.convert_disk`` the function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AzureView": "azure_view",
    "round_up_mib": "azure_view",
    "check_path": "check",
    "check_view": "check",
    "ConvertResult": "convert",
    "convert_disk": "convert",
    "convert_in_place": "convert",
    "parse_size": "sizes",
    "VirtualDisk": "formats",
    "detect_format": "formats",
    "open_disk": "formats",
    "ConvertError": "errors",
    "DiskIOError": "errors",
    "FormatError": "errors",
    "ParentNotFound": "errors",
    "PreflightError": "errors",
    "UnsupportedDisk": "errors",
    "UploadError": "errors",
    "UsageError": "errors",
    "VhdkitError": "errors",
    "Extent": "extents",
    "nonzero_runs": "extents",
    "inspect_path": "facts",
    "preflight_disk": "preflight.engine",
    "preflight_path": "preflight.engine",
    "Finding": "report",
    "Report": "report",
    "render_json": "report",
    "render_junit": "junit",
    "render_text": "report",
    "Progress": "upload.uploader",
    "RetryPolicy": "upload.engine",
    "VerifyResult": "upload.verify",
    "Expect": "expectations",
    "WarningsAs": "report",
    "NetworkError": "errors",
    "AuthenticationError": "errors",
    "render_junit_error": "junit",
    "UploadOptions": "upload.uploader",
    "UploadResult": "upload.uploader",
    "upload_view": "upload.uploader",
    "Target": "upload.types",
    "PageBlob": "upload.pageblob",
}

# A literal list, so linters and type checkers see the public names (test_api checks it).
__all__ = [
    "AuthenticationError",
    "AzureView",
    "ConvertError",
    "ConvertResult",
    "DiskIOError",
    "Expect",
    "Extent",
    "Finding",
    "FormatError",
    "NetworkError",
    "PageBlob",
    "ParentNotFound",
    "PreflightError",
    "Progress",
    "Report",
    "RetryPolicy",
    "Target",
    "UnsupportedDisk",
    "UploadError",
    "UploadOptions",
    "UploadResult",
    "UsageError",
    "VerifyResult",
    "VhdkitError",
    "VirtualDisk",
    "WarningsAs",
    "__version__",
    "check_path",
    "check_view",
    "convert_disk",
    "convert_in_place",
    "detect_format",
    "inspect_path",
    "nonzero_runs",
    "open_disk",
    "parse_size",
    "preflight_disk",
    "preflight_path",
    "render_json",
    "render_junit",
    "render_junit_error",
    "render_text",
    "round_up_mib",
    "upload_view",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vhdkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .azure_view import AzureView, round_up_mib
    from .check import check_path, check_view
    from .convert import ConvertResult, convert_disk, convert_in_place
    from .errors import (
        AuthenticationError,
        ConvertError,
        DiskIOError,
        FormatError,
        NetworkError,
        ParentNotFound,
        PreflightError,
        UnsupportedDisk,
        UploadError,
        UsageError,
        VhdkitError,
    )
    from .expectations import Expect
    from .extents import Extent, nonzero_runs
    from .facts import inspect_path
    from .formats import VirtualDisk, detect_format, open_disk
    from .junit import render_junit, render_junit_error
    from .preflight.engine import preflight_disk, preflight_path
    from .report import Finding, Report, WarningsAs, render_json, render_text
    from .sizes import parse_size
    from .upload.engine import RetryPolicy
    from .upload.pageblob import PageBlob
    from .upload.types import Target
    from .upload.uploader import Progress, UploadOptions, UploadResult, upload_view
    from .upload.verify import VerifyResult
