"""``vhdkit preflight``: is the OS inside the disk ready to be provisioned by Azure?"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..expectations import Expect
from ..preflight.engine import preflight_path
from ..report import WarningsAs, render_json, render_text
from . import main
from ._common import EXIT_NOT_READY, EXIT_OK, disk_option, emit, format_option
from ._junit import JunitRun, junit_options


@main.command()
@click.argument("disk", type=click.Path(dir_okay=False))
@click.option("--expect", type=click.Choice(["generalized", "specialized"]),
              default="generalized", show_default=True,
              help="generalized: an image for many VMs; specialized: one VM's own disk.")
@click.option("--parent", type=click.Path(), help="Parent of a differencing disk.")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON.")
@junit_options
@click.option("-v", "--verbose", is_flag=True, help="Also list the rules that passed.")
@disk_option
def preflight(disk: str, expect: Expect, parent: str | None, as_json: bool, junit: str | None,
              junit_warnings: WarningsAs, verbose: bool, member: int | None,
              fmt: str | None) -> None:
    """Read DISK offline and check the OS is generalized and Azure-ready.

    Exit 0 ready, 1 not ready, 2 unreadable.
    """
    out = JunitRun(junit, "vhdkit.preflight", junit_warnings, disk, parent)
    report = out.run(lambda: preflight_path(disk, parent, expect, member=member, format=fmt))
    out.write(report)
    emit(render_json(report) if as_json else f"{render_text(report, verbose=verbose)}\n"
         f"{describe_os(report.facts)}")
    sys.exit(EXIT_OK if report.ready else EXIT_NOT_READY)


def describe_os(facts: dict[str, Any]) -> str:
    """One line on what pre-flight found, so a READY verdict says what it judged."""
    vols = facts.get("volumes") or []
    fs = ", ".join(str(v.get("fstype") or "unknown") for v in vols)
    disk = f"{facts.get('partition_table') or 'no partition table'}, {len(vols)} volume(s)"
    disk += f": {fs}" if fs else ""
    what = {"linux": "Linux", "windows": "Windows", "none": "no OS (a data disk)"}.get(
        str(facts.get("os")), "OS unknown")
    if facts.get("distro"):
        what += f" ({facts['distro']})"
    if facts.get("root"):
        what += f", root on {facts['root']}"
    return f"  found: {what}; {disk}" + _describe_boot(facts.get("boot"))


def _describe_boot(boot: Any) -> str:
    """The generations, architecture and Trusted Launch line (preflight/boot.py)."""
    if not isinstance(boot, dict):
        return ""
    gens = ", ".join(boot["generations"]) or "none"
    tl = {True: "possible (signature presence, not validated)", False: "not possible",
          None: "not possible (no UEFI boot)"}[boot["trusted_launch"]]
    return (f"\n  boots: generation {gens}; architecture {boot['architecture'] or 'unknown'}; "
            f"Trusted Launch: {tl}")
