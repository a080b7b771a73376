"""JUnit XML of a report, as Jenkins, GitLab, Azure Pipelines and the GitHub test reporters read
it. Its own module: only ``--junit`` needs the XML writer."""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from .report import Finding, Report, WarningsAs


def junit_classname(suite: str, subject: str) -> str:
    """``vhdkit.check.disk_vhd``: a stable suite name plus the disk's base name (no directory,
    which changes between CI runs; dots become ``_`` because viewers split class names into
    packages at dots)."""
    return f"{suite}.{os.path.basename(subject).replace('.', '_') or 'disk'}"


def _case_body(f: Finding) -> str:
    return "\n".join(x for x in (f.message, f"evidence: {f.evidence}" if f.evidence else "",
                                 f"fix: {f.fix}" if f.fix else "") if x)


def _suite(suite: str, subject: str, seconds: float, timestamp: datetime | None,
           counts: dict[str, int]) -> tuple[ET.Element, ET.Element]:
    when = (timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc)
    attrs = {k: str(v) for k, v in counts.items()}
    total = {"name": "vhdkit", "time": f"{seconds:.3f}"}
    total.update({k: attrs[k] for k in ("tests", "failures", "errors")})
    root = ET.Element("testsuites", total)
    suite_attrs = {"name": suite, **attrs, "time": f"{seconds:.3f}",
                   "timestamp": when.replace(tzinfo=None, microsecond=0).isoformat(),
                   "hostname": socket.gethostname() or "localhost"}
    ts = ET.SubElement(root, "testsuite", suite_attrs)
    props = ET.SubElement(ts, "properties")
    ET.SubElement(props, "property", name="disk", value=subject)
    return root, ts


def _xml(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def render_junit(report: Report, suite: str = "vhdkit", *, warnings: WarningsAs = "skip",
                 seconds: float = 0.0, timestamp: datetime | None = None) -> str:
    """One test case per rule, in JUnit XML as Jenkins, GitLab, Azure Pipelines and the GitHub
    test reporters read it.

    An error is a ``<failure>``; a rule that does not apply is ``<skipped>``; a warning is, by
    ``warnings``, a ``<failure>``, a ``<skipped>`` case whose message starts ``warning:`` (the
    default: every viewer lists skipped cases, none turns the run red for them, which matches
    the exit code 0 of a disk with only warnings) or a passing case with ``<system-out>``; an
    info is a passing case with ``<system-out>``.
    """
    cases: list[tuple[Finding, str]] = []
    for f in report.findings:
        if not f.applicable:
            kind = "skipped"
        elif f.passed:
            kind = "passed"
        elif f.severity == "error":
            kind = "failure"
        elif f.severity == "warning":
            kind = {"fail": "failure", "skip": "skipped", "pass": "out"}[warnings]
        else:
            kind = "out"
        cases.append((f, kind))
    counts = {"tests": len(cases), "failures": sum(k == "failure" for _, k in cases),
              "errors": 0, "skipped": sum(k == "skipped" for _, k in cases)}
    root, ts = _suite(suite, report.subject, seconds, timestamp, counts)
    classname = junit_classname(suite, report.subject)
    for f, kind in cases:
        tc = ET.SubElement(ts, "testcase", name=f.id, classname=classname, time="0")
        tag = "warning: " if f.severity == "warning" and not f.passed else ""
        if kind == "failure":
            fail = ET.SubElement(tc, "failure", message=f"{tag}{f.message}", type=f.id)
            fail.text = _case_body(f)
        elif kind == "skipped":
            ET.SubElement(tc, "skipped", message=f"{tag}{f.message}" if f.applicable
                          else "not applicable to this disk")
            if f.applicable:
                ET.SubElement(tc, "system-out").text = _case_body(f)
        elif kind == "out":
            ET.SubElement(tc, "system-out").text = f"{f.severity}: {_case_body(f)}"
    return _xml(root)


def render_junit_error(subject: str, suite: str, message: str, error_type: str, *,
                       seconds: float = 0.0, timestamp: datetime | None = None) -> str:
    """The JUnit file of a disk that could not be read at all (exit 2): one ``<error>`` case,
    so that the CI step shows why instead of "no test results"."""
    root, ts = _suite(suite, subject, seconds, timestamp,
                      {"tests": 1, "failures": 0, "errors": 1, "skipped": 0})
    tc = ET.SubElement(ts, "testcase", name="readable",
                       classname=junit_classname(suite, subject), time="0")
    err = ET.SubElement(tc, "error", message=message, type=error_type)
    err.text = message
    return _xml(root)
