"""The readiness gate in front of an upload: the format rules on the Azure view, then pre-flight
of the OS inside, as one report."""

from __future__ import annotations

from .azure_view import AzureView
from .check import check_view
from .errors import VhdkitError
from .expectations import Expect
from .preflight.engine import preflight_disk
from .report import Finding, Report


def upload_gate(view: AzureView, *, expect: Expect = "generalized",
                run_preflight: bool = True) -> Report:
    """What ``vhdkit upload`` checks before it sends a byte."""
    report = check_view(view)
    if run_preflight:
        try:
            found = preflight_disk(view.disk, expect)
            report.extend(found.findings)
            report.facts.update(found.facts)  # OS, generations, architecture: for what follows
            report.boot = found.boot  # typed: generations, architecture, Trusted Launch
        except VhdkitError as exc:
            report.extend([Finding("preflight.unreadable", "error",
                                   f"cannot inspect the OS inside: {exc}",
                                   fix="fix the disk, or upload with --skip-preflight")])
    return report
