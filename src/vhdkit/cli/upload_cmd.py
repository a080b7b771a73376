"""``vhdkit upload``: stream the Azure view of a disk to a page blob or managed disk."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

import click

from ..azure_view import AzureView
from ..errors import UsageError
from ..formats import open_disk
from ..managed_upload import blob_next_commands, suggest_plan
from ..report import Report, render_text
from ..upload import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MERGE_GAP,
    RetryPolicy,
    UploadOptions,
    UploadResult,
    upload_view,
)
from ..upload.types import Target, sas_blob_url
from ..upload.uploader import Progress
from . import main
from ._common import EXIT_NOT_READY, disk_option, emit, fail, format_option, json_doc, run
from ._dest import destination_options, quiet_sdk_logs
from ._managed import ManagedCli, managed_disk_options, render_managed, run_managed, to_json
from .progress import ProgressDisplay, interval_option

if TYPE_CHECKING:
    from ..expectations import Expect

_UNITS = {"": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20}


def _gap(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip().upper()
    num = text.rstrip("KMIB")
    try:
        n = int(num) * _UNITS[text[len(num):]]
    except (ValueError, KeyError):
        raise click.BadParameter(f"{value!r} is not a size (bytes, or with K/M)") from None
    if n < 0 or n % 512:
        raise click.BadParameter(f"{value!r} must be a non-negative multiple of 512 bytes")
    return n


def _human(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def render(r: UploadResult, disk: str) -> str:
    verb = "plan for" if r.mode == "dry-run" else "uploaded"
    zero = r.bytes_skipped - r.bytes_present
    gap = f"{r.merge_gap:,} bytes ({'adaptive' if r.adaptive_gap else 'fixed'})"
    lines = [
        f"{verb} {disk} -> {r.destination or '(no destination)'} [{r.mode}]",
        f"  stream:     {r.stream_size:,} bytes (virtual {_human(r.virtual_size)} + footer)"
        + (" (rounded up to a whole MiB)" if r.resized else ""),
        f"  {'to send' if r.mode == 'dry-run' else 'sent'}:"
        f"{' ' * (3 if r.mode == 'dry-run' else 7)}{r.bytes_sent:,} bytes in {r.writes:,} writes",
        f"  skipped:    {r.bytes_skipped:,} bytes ({r.skipped_pct:.1f} %): {zero:,} zero, "
        f"{r.bytes_present:,} already on the destination",
        f"  merge gap:  {gap}",
    ]
    if r.mode != "dry-run":
        lines += [f"  retries:    {r.retries}",
                  f"  time:       {r.seconds:.2f} s, {_human(r.throughput)}/s of stream, "
                  f"{_human(r.bytes_sent / r.seconds if r.seconds else 0)}/s sent"]
    if r.md5:
        lines.append(f"  md5:        {r.md5}")
    if r.throttled:
        lines.append(f"  throttled:  {r.throttled} times; concurrency lowered to "
                     f"{r.lowest_concurrency}")
    if r.verified is not None:
        v = r.verified
        lines.append(f"  verified:   {v.ranges} page ranges, {v.bytes_compared:,} bytes compared, "
                     f"{v.bytes_scanned_outside:,} bytes outside them are zero, "
                     f"in {v.seconds:.2f} s")
    return "\n".join(lines)


class _UploadProgress:
    """The upload's progress: the stream read so far, bytes sent and skipped."""

    def __init__(self, total: int, quiet: bool, interval: float, dry_run: bool) -> None:
        self.display = ProgressDisplay("plan" if dry_run else "upload", total, quiet=quiet,
                                       interval=interval)
        self.dry_run = dry_run

    def __call__(self, p: Progress) -> None:
        sent = p.planned if self.dry_run else p.sent  # a plan sends nothing: what it would
        skipped = p.scanned - p.planned  # zeros and bytes already there: done once read
        self.display.update(skipped + sent, sent=sent, skipped=skipped)

    def close(self) -> None:
        self.display.close()


@main.command("upload")
@click.argument("disk", type=click.Path(exists=True, dir_okay=False))
@click.option("--parent", type=click.Path(dir_okay=False), help="Parent of a differencing disk.")
@format_option()
@destination_options()
@click.option("--concurrency", type=click.IntRange(1, 64), default=DEFAULT_CONCURRENCY,
              show_default=True, envvar="VHDKIT_CONCURRENCY", show_envvar=True,
              help="Concurrent Put Page requests.")
@click.option("--merge-gap", callback=_gap, metavar="BYTES",
              help="Fixed zero gap merged into one write (0 = only non-zero sectors). Default: "
              f"adaptive, from {DEFAULT_MERGE_GAP // 1024} KiB, by measured request cost.")
@click.option("--dry-run", is_flag=True, help="Print the plan; send nothing.")
@click.option("--no-resize", is_flag=True, help="Refuse a size that is not a whole MiB.")
@click.option("--overwrite", is_flag=True, help="Replace a destination holding another source.")
@click.option("--create-container", is_flag=True,
              help="Create the container if it does not exist (not with a SAS URL).")
@click.option("--resume", is_flag=True, help="Trust the destination's page ranges (needed for "
              "a SAS / managed disk, which keeps no metadata).")
@click.option("--md5", is_flag=True, help="Set Content-MD5 of the whole stream at the end "
              "(not for a managed disk, which refuses blob properties).")
@click.option("--verify", is_flag=True, help="Read the destination back and compare.")
@click.option("--retries", type=click.IntRange(1, 100), default=20, show_default=True,
              help="Tries per request on timeouts and throttling.")
@click.option("--retry-wait", type=click.FloatRange(0.01, 600), default=60.0, show_default=True,
              metavar="SECONDS", help="Longest backoff between tries (from 1 s, doubling).")
@click.option("--retry-budget", type=click.FloatRange(1, 86400), default=900.0,
              show_default=True, metavar="SECONDS", help="No new try of a request after this.")
@click.option("--max-request-rate", type=click.FloatRange(0), default=None, metavar="N",
              help="Requests per second to the blob (default: Azure's 500/s per-blob target; "
              "none for a local emulator; 0: no cap). The merge gap grows to stay under it.")
@click.option("--max-bandwidth", type=click.FloatRange(0, min_open=True), default=None,
              metavar="MIB_PER_S", help="Cap the bytes sent per second, e.g. a disk's or "
              "blob's throughput target (default: none; throttling lowers the concurrency).")
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress (bar or status lines) or notices.")
@interval_option
@click.option("--skip-preflight", is_flag=True, help="Upload even if the readiness checks fail.")
@click.option("--expect", type=click.Choice(["generalized", "specialized"]),
              default="generalized", show_default=True,
              help="Pre-flight: an image for many VMs, or one VM's own (specialized) disk.")
@managed_disk_options()
@disk_option
def upload_command(disk: str, parent: str | None, fmt: str | None, dest: Target,
                   concurrency: int,
                   merge_gap: int | None, dry_run: bool, no_resize: bool, overwrite: bool,
                   create_container: bool, resume: bool, md5: bool, verify: bool,
                   retries: int, retry_wait: float, retry_budget: float,
                   max_request_rate: float | None, max_bandwidth: float | None,
                   as_json: bool, quiet: bool, progress_interval: float, skip_preflight: bool,
                   expect: Expect, managed: ManagedCli | None, member: int | None) -> None:
    """Upload DISK (any format vhdkit reads) as a fixed VHD, skipping zeros.

    The destination is a SAS_URL (a blob, a container with --blob, or a managed disk from
    `az disk grant-access`), or --account-url / --connection-string / --emulator with
    --container and --blob.
    """
    from ..upload.pageblob import PageBlob

    quiet_sdk_logs()
    retry = RetryPolicy(attempts=retries, base_s=min(1.0, retry_wait), cap_s=retry_wait,
                        budget_s=retry_budget)
    byte_rate = max_bandwidth * 1024 * 1024 if max_bandwidth else None
    if managed is not None:
        if dest.forms() or create_container or dry_run or md5:
            fail("--managed-disk creates and grants its own destination: give no SAS URL or "
                 "other destination, and no --create-container, --dry-run or --md5 (a managed "
                 "disk refuses Set Blob Properties)")
        opts = UploadOptions(concurrency=concurrency, merge_gap=merge_gap, verify=verify,
                             retry=retry, request_rate=max_request_rate, byte_rate=byte_rate)
        doc = run(lambda: run_managed(
            disk, parent, managed, opts, expect=expect, skip_preflight=skip_preflight,
            quiet=quiet, gate=lambda v, s, _e: _gate(v, s, expect, disk if as_json else None),
            progress=lambda n: _UploadProgress(n, quiet, progress_interval, False),
            member=member, fmt=fmt), disk)
        emit(to_json(doc) if as_json else render_managed(doc))
        return
    where = run(lambda: dest.resolve(required=not dry_run))
    if create_container and where is not None and where.is_sas:
        fail("--create-container needs --account-url, --connection-string or --emulator: "
             "a SAS cannot create a container")
    target = where
    default_blob = f"{os.path.splitext(os.path.basename(disk))[0]}.vhd"
    if where is not None and where.sas_url:
        target = replace(where, sas_url=run(lambda: sas_blob_url(where.sas_url or "",
                                                                  where.blob or default_blob)))
    elif where is not None and where.blob is None:
        target = replace(where, blob=default_blob)  # the blob name defaults to the disk's
    opts = UploadOptions(concurrency=concurrency, merge_gap=merge_gap, overwrite=overwrite,
                         resume=resume, md5=md5, verify=verify, dry_run=dry_run, retry=retry,
                         request_rate=max_request_rate, byte_rate=byte_rate)

    gate: list[Report] = []

    def go() -> UploadResult:
        with open_disk(disk, parent, disk=member, format=fmt) as vdisk:
            view = AzureView.of(vdisk)
            if view.resized:
                if no_resize:
                    raise UsageError(f"virtual size {vdisk.size} is not a whole number of MiB; "
                                     "--no-resize refuses to round it up to "
                                     f"{view.virtual_size} (drop --no-resize to round up)")
                if not quiet:
                    click.echo(f"vhdkit: notice: virtual size {vdisk.size} rounded up to "
                               f"{view.virtual_size} (whole MiB)", err=True)
            gate.append(_gate(view, skip_preflight, expect, disk if as_json else None))
            blob = PageBlob(target, concurrency, retry) if target is not None else None
            if blob is not None and create_container and not dry_run:
                blob.ensure_container()
            bar = _UploadProgress(view.stream_size, quiet, progress_interval, dry_run)
            vbar = _VerifyProgress(quiet or not verify, progress_interval)
            try:
                return upload_view(view, blob, opts, on_progress=bar, on_verify=vbar)
            finally:
                bar.close()
                vbar.close()
                if blob is not None:
                    blob.close()

    result = run(go, disk)
    for warning in result.warnings:  # shown even with --quiet: something was not done
        click.echo(f"vhdkit: warning: {warning}", err=True)
    doc = result.to_dict()
    if result.mode != "dry-run" and result.destination:
        plan = suggest_plan(gate[0] if gate else None, expect)
        doc["next_commands"] = blob_next_commands(result.destination, plan)
    if as_json:
        emit(json_doc(doc))
        return
    text = render(result, disk)
    if doc.get("next_commands"):
        text += "\n  next:\n" + "\n".join(f"    {c}" for c in doc["next_commands"])
    emit(text)


class _VerifyProgress:
    """Verify's progress over the bytes it compares (the display starts on the first report,
    when the total is known)."""

    def __init__(self, quiet: bool, interval: float) -> None:
        self.quiet, self.interval = quiet, interval
        self.display: ProgressDisplay | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.display is None:
            self.display = ProgressDisplay("verify", total, quiet=self.quiet,
                                           interval=self.interval)
        self.display.update(done)

    def close(self) -> None:
        if self.display is not None:
            self.display.close()


def _gate(view: AzureView, skip: bool, expect: Expect, json_subject: str | None) -> Report:
    """The rules of ``vhdkit check`` on the stream plus pre-flight of the OS inside. A refusal
    with --json still prints a JSON document (``mode: refused``) on stdout, so that a script
    reading it never mistakes the refusal for an empty plan."""
    from ..gate import upload_gate

    report = upload_gate(view, expect=expect, run_preflight=not skip)
    if skip:  # shown even with --quiet: a safety check was bypassed
        click.echo("vhdkit: warning: --skip-preflight: the OS inside was not checked"
                   + (f" and {len(report.errors)} readiness check(s) failed"
                      if report.errors else ""), err=True)
    if report.ready or skip:
        return report
    if json_subject is not None:
        emit(json_doc({"mode": "refused", "subject": json_subject, "ready": False,
                       "findings": [f.to_dict() for f in report.findings]}))
    else:
        click.echo(render_text(report), err=True)
    click.echo("vhdkit: upload refused (fix the disk, or --skip-preflight)", err=True)
    sys.exit(EXIT_NOT_READY)
