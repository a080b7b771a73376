"""``vhdkit upload --managed-disk NAME --resource-group RG``: the one-command managed-disk flow.

Options follow ``az disk create``. The command hands ``managed: ManagedCli | None`` to upload.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from ..errors import UsageError
from ..managed_upload import SKUS, ManagedDiskRequest

F = TypeVar("F", bound=Callable[..., Any])
SUBSCRIPTION_ENV = "AZURE_SUBSCRIPTION_ID"
_FIELDS = ("managed_disk", "resource_group", "subscription", "location", "sku", "zone",
           "os_type", "hyper_v_generation", "architecture", "tags", "image", "gallery",
           "arm_endpoint")


@dataclass(frozen=True)
class ManagedCli:
    request: ManagedDiskRequest
    subscription: str
    arm_endpoint: str | None


def _tags(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise UsageError(f"--tags {v!r}: use KEY=VALUE")
        out[key] = val
    return out


def managed_disk_options() -> Callable[[F], F]:
    """Add the managed-disk options; the command receives ``managed``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in _FIELDS}
            return fn(*args, managed=_build(given), **kwargs)

        params: list[Callable[[Any], Any]] = [
            click.option("--managed-disk", metavar="NAME", help="Create (or resume) the managed "
                         "disk NAME and upload to it: create, grant, upload, revoke."),
            click.option("--resource-group", "-g", metavar="RG",
                         help="Resource group of the managed disk."),
            click.option("--subscription", metavar="ID",
                         help=f"Subscription (default: ${SUBSCRIPTION_ENV})."),
            click.option("--location", "-l", help="Region (default: the resource group's)."),
            click.option("--sku", type=click.Choice(SKUS), default="Standard_LRS",
                         show_default=True, help="Disk type."),
            click.option("--zone", help="Availability zone."),
            click.option("--os-type", type=click.Choice(["auto", "Windows", "Linux", "none"]),
                         default="auto", show_default=True,
                         help="auto: from pre-flight; none: a data disk."),
            click.option("--hyper-v-generation", type=click.Choice(["auto", "V1", "V2"]),
                         default="auto", show_default=True,
                         help="auto: the generations pre-flight found the disk boots (V2 when "
                         "both)."),
            click.option("--architecture", type=click.Choice(["auto", "x64", "Arm64"]),
                         default="auto", show_default=True, help="auto: from the boot files."),
            click.option("--tags", multiple=True, metavar="KEY=VALUE", help="Disk tags."),
            click.option("--image", metavar="NAME",
                         help="Then create a managed image NAME from the disk."),
            click.option("--gallery", metavar="GALLERY/DEFINITION/VERSION",
                         help="Then create an Azure Compute Gallery image version."),
            click.option("--arm-endpoint", metavar="URL", envvar="VHDKIT_ARM_ENDPOINT",
                         show_envvar=True,
                         help="Azure Resource Manager endpoint (sovereign clouds, Azure Stack)."),
        ]
        out: Any = wrapper
        for param in reversed(params):
            out = param(out)
        return out  # type: ignore[no-any-return]

    return decorate


def _build(given: dict[str, Any]) -> ManagedCli | None:
    name = given["managed_disk"]
    if name is None:
        extra = [k for k in ("resource_group", "image", "gallery", "zone", "location")
                 if given[k] is not None] + (["tags"] if given["tags"] else [])
        if extra:
            raise click.UsageError(f"--{extra[0].replace('_', '-')} goes with --managed-disk")
        return None
    if not given["resource_group"]:
        raise click.UsageError("--managed-disk needs --resource-group")
    sub = given["subscription"] or os.environ.get(SUBSCRIPTION_ENV)
    if not sub:
        raise click.UsageError(f"--managed-disk needs --subscription or ${SUBSCRIPTION_ENV}")
    try:
        tags = _tags(given["tags"])
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    req = ManagedDiskRequest(
        name=name, resource_group=given["resource_group"], location=given["location"],
        sku=given["sku"], zone=given["zone"], os_type=given["os_type"],
        hyper_v_generation=given["hyper_v_generation"], architecture=given["architecture"],
        tags=tags, image=given["image"], gallery=given["gallery"])
    return ManagedCli(req, sub, given["arm_endpoint"])


def render_managed(doc: dict[str, Any]) -> str:
    lines = [f"managed disk {doc['disk_id']}: {doc['disk_state']}"
             + (" (created)" if doc["created"] else " (resumed)")]
    if doc["os_type"]:
        lines.append(f"  os: {doc['os_type']}, generation {doc['hyper_v_generation']}, "
                     f"{doc['architecture']}, {doc['os_state']}")
    for why in doc["why"]:
        lines.append(f"  because: {why}")
    for step in doc["steps"]:
        lines.append(f"  step: {step}")
    if doc["image_id"]:
        lines.append(f"  image: {doc['image_id']}")
    if doc["gallery_version_id"]:
        lines.append(f"  gallery image version: {doc['gallery_version_id']}")
    if doc["next_commands"]:
        lines.append("  next:")
        lines.extend(f"    {c}" for c in doc["next_commands"])
    return "\n".join(lines)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)


def run_managed(disk: str, parent: str | None, managed: ManagedCli, opts: Any, *,
                expect: str, skip_preflight: bool, quiet: bool,
                gate: Callable[[Any, bool, str], Any],
                progress: Callable[[int], Any], member: int | None = None,
                fmt: str | None = None) -> dict[str, Any]:
    """Gate, then create/grant/upload/revoke; returns the JSON document of the result.
    ``member`` picks a disk of an OVA holding several; ``fmt`` forces a reader."""
    from dataclasses import replace

    from ..azure_mgmt import Compute, default_credential
    from ..azure_view import AzureView
    from ..formats import open_disk
    from ..managed_upload import managed_upload
    from ..upload.pageblob import PageBlob
    from ..upload.types import Target
    from ..upload.uploader import upload_view

    with open_disk(disk, parent, disk=member, format=fmt) as vdisk:
        view = AzureView.of(vdisk)
        report = gate(view, skip_preflight, expect)  # exits 1 before anything is created
        api = Compute(default_credential(), managed.subscription, endpoint=managed.arm_endpoint)

        def upload(sas: str) -> Any:
            # resolve(): the test-only loopback override for an md- host (tests/mddouble.py)
            target = Target(sas_url=sas).resolve(required=True) or Target(sas_url=sas)
            blob = PageBlob(target, opts.concurrency, opts.retry)
            bar = progress(view.stream_size)
            try:
                # a rerun continues what is already on the disk (resume checks the source)
                return upload_view(view, blob, replace(opts, resume=True), on_progress=bar)
            finally:
                bar.close()
                blob.close()

        def step(text: str) -> None:
            if not quiet:
                click.echo(f"vhdkit: {text}", err=True)

        try:
            result = managed_upload(view, managed.request, api, upload,
                                    preflight=None if skip_preflight else report,
                                    expect=expect, on_step=step)
        finally:
            api.close()
        return result.to_dict()
