"""Findings and their renderers (text, JSON, JUnit XML). Pure data: nothing here prints."""

from __future__ import annotations

import json
import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One judged rule.

    ``id`` is stable (used by CI and tests), ``evidence`` says what was read and where,
    ``fix`` is the exact command or action that repairs it ("" when nothing to do).
    ``passed`` findings are kept so that JUnit can list every rule as a test case.
    """

    id: str
    severity: Severity
    message: str
    evidence: str = ""
    fix: str = ""
    passed: bool = False
    #: False for a rule that does not apply to this disk (a JUnit "skipped" case)
    applicable: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class BootFacts:
    """How the OS disk boots, as pre-flight read it (the managed-disk command picks
    ``--hyper-v-generation`` and ``--architecture`` from it).

    ``trusted_launch`` is None when the disk does not boot UEFI (the question does not arise);
    it rests on the *presence* of Authenticode signatures, not on their validation.
    """

    generations: tuple[str, ...]  # ("V1",), ("V2",), ("V1", "V2") or ()
    architecture: str | None  # "x64", "Arm64", other names, or None when unknown
    trusted_launch: bool | None
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"generations": list(self.generations), "architecture": self.architecture,
                "trusted_launch": self.trusted_launch, "evidence": list(self.evidence)}


@dataclass
class Report:
    """The outcome of ``check`` or ``preflight`` on one disk."""

    subject: str
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    #: set by pre-flight when it found an OS (facts["boot"] holds the same, for JSON)
    boot: BootFacts | None = None

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.passed]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.problems if f.severity == "error"]

    @property
    def ready(self) -> bool:
        return not self.errors

    def extend(self, findings: Iterable[Finding]) -> None:
        self.findings.extend(findings)


def render_text(report: Report, verbose: bool = False) -> str:
    """Human-readable findings: problems first, with evidence and fix (all rules if verbose)."""
    lines = [f"{report.subject}: {'READY' if report.ready else 'NOT READY'} for Azure"]
    shown: Sequence[Finding] = (
        [f for f in report.findings if f.applicable] if verbose else report.problems)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    for f in sorted(shown, key=lambda x: (x.passed, order[x.severity])):
        tag = "ok" if f.passed else f.severity
        lines.append(f"  [{tag}] {f.id}: {f.message}")
        if f.evidence:
            lines.append(f"      evidence: {f.evidence}")
        if f.fix and not f.passed:
            lines.append(f"      fix: {f.fix}")
    if not report.problems:
        lines.append("  no problems found")
    return "\n".join(lines)


def render_json(report: Report) -> str:
    """The report as JSON (layout in docs/JSON.md)."""
    doc = {
        "schema": 1,
        "subject": report.subject,
        "ready": report.ready,
        "facts": report.facts,
        "findings": [f.to_dict() for f in report.findings],
    }
    return json.dumps(doc, indent=2, sort_keys=False)


#: how warnings appear in JUnit: a failed case, a skipped case, or a passing one
WarningsAs = Literal["fail", "skip", "pass"]
WarningsAs.__doc__ = "How render_junit shows warnings: failed, skipped or passing test cases."
WARNINGS_AS: tuple[WarningsAs, ...] = ("fail", "skip", "pass")


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
