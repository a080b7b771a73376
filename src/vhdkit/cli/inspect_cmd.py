"""``vhdkit inspect``: what a disk image is, in text or JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from ..facts import inspect_path
from . import main
from ._common import disk_option, emit, fail, format_option, run


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.2f} {unit})"
    return f"{n:,} bytes"


def render(facts: dict[str, Any]) -> str:
    lines = [f"{facts['path']}",
             f"  format:        {facts['format']}"
             + (f" ({facts['subformat']})" if facts.get("subformat") else ""),
             f"  virtual size:  {_size(facts['virtual_size'])}",
             f"  file size:     {_size(facts['file_size'])}",
             f"  data:          {_size(facts['data_bytes'])} may hold data",
             f"  allocated:     {_size(facts['allocated_bytes'])} in this file"]
    for key, value in facts.get("details", {}).items():
        name = key.replace("_", " ") + ":"
        if isinstance(value, list):  # e.g. qcow2 snapshots: one line each
            lines.append(f"  {name:<14} {len(value)}")
            lines += ["    " + ", ".join(f"{k}={v}" for k, v in item.items())
                      if isinstance(item, dict) else f"    {item}" for item in value]
        elif isinstance(value, (str, int, float, bool)):  # null is left to --json
            shown = _size(value) if key.endswith(("_size", "_bytes")) and isinstance(
                value, int) else value
            lines.append(f"  {name:<14} {shown}")
    chain = facts.get("chain", [])
    if len(chain) > 1:
        lines.append("  backing chain: (child first)")
        lines += [f"    {i}. {m['path']}: {m['format']}"
                  + (f" ({m['subformat']})" if m.get("subformat") else "")
                  + f", {_size(m['virtual_size'])}" for i, m in enumerate(chain)]
    f = facts.get("footer")
    if f:
        g = f["geometry"]
        lines += [
            f"  creator:       '{f['creator_app']}' {f['creator_version']} on '{f['creator_os']}'",
            f"  geometry:      {g['cylinders']}/{g['heads']}/{g['sectors_per_track']} "
            f"(C/H/S = {g['size']:,} bytes)",
            f"  sizes:         current {f['current_size']:,}, original {f['original_size']:,}",
            f"  timestamp:     {f['timestamp']}",
            f"  unique id:     {f['unique_id']}",
        ]
    d = facts.get("dynamic")
    if d:
        lines += [
            f"  block size:    {_size(d['block_size'])}",
            f"  BAT entries:   {d['bat_entries_allocated']} allocated of {d['bat_entries_total']}"
            f" ({_size(d['allocated_bytes'])})",
        ]
        p = d.get("parent")
        if p:
            found = p["resolved_path"] or f"NOT FOUND: {p.get('error') or 'unknown'}"
            lines += [f"  parent:        {p['name']} ({p['unique_id']})",
                      f"  parent found:  {found}"]
            lines += [f"  locator:       {loc['platform']} {loc['path']}" for loc in p["locators"]]
    for a in facts.get("anomalies", []):
        lines.append(f"  {a['severity']}: {a['rule']}: {a['field']} at offset {a['offset']}: "
                     f"{a['message']}")
    return "\n".join(lines)


@main.command()
@click.argument("disk", type=click.Path(readable=False))
@click.option("--parent", type=click.Path(), help="Parent of a differencing disk.")
@format_option()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/JSON.md).")
@disk_option
def inspect(disk: str, parent: str | None, as_json: bool, member: int | None,
            fmt: str | None) -> None:
    """Show what DISK is: format, type, sizes, geometry, allocation, backing chain."""
    facts = run(lambda: inspect_path(disk, parent, member=member, format=fmt), disk)
    emit(json.dumps(facts, indent=2) if as_json else render(facts))
    missing = ((facts.get("dynamic") or {}).get("parent") or {}).get("error")
    if missing:  # the child is shown, but its chain is incomplete: exit 2 with the reason
        fail(missing)
