"""Findings and their renderers (text, JSON, JUnit XML). Pure data: nothing here prints."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
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
