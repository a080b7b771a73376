"""From a disk file to an Azure managed disk (and image or gallery version) in one call.

create (or find) -> grant write access -> upload through the SAS -> revoke, always -> report.
What to create comes from what vhdkit knows of the disk: the stream size from the Azure view,
and from pre-flight the OS type, the VM generations it boots, its architecture and whether it
was generalized. Nothing is created when the readiness gate refuses. The management SDK stays in
azure_mgmt.py; this module decides, in plain data.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .azure_view import AzureView
from .errors import UploadError, UsageError
from .report import Report

MIB = 1 << 20
GIB = 1 << 30
#: Azure's limits for a managed-disk upload: 20 MiB + footer .. 32 TiB + footer.
MIN_UPLOAD = 20 * MIB + 512
MAX_UPLOAD = 32 * 1024 * GIB + 512
#: Write access lasts long enough for the upload at a slow 10 MiB/s plus an hour, at most a day;
#: a rerun grants again and resumes, so a short grant loses nothing.
GRANT_FLOOR_S = 3600
GRANT_CAP_S = 86400
GRANT_RATE = 10 * MIB
#: Premium SSD v2 and Ultra Disks are created with 512-byte logical sectors (an uploaded VHD is
#: a 512-byte sector disk; their default is 4096).
SECTOR_512_SKUS = ("PremiumV2_LRS", "UltraSSD_LRS")
SKUS = ("Standard_LRS", "StandardSSD_LRS", "StandardSSD_ZRS", "Premium_LRS", "Premium_ZRS",
        "PremiumV2_LRS", "UltraSSD_LRS")
#: Disk states in which an upload can (re)start.
UPLOADABLE = ("ReadyToUpload", "ActiveUpload")

Auto = Literal["auto"]


class ComputeApi(Protocol):
    """What the flow needs from Azure Resource Manager (azure_mgmt.Compute)."""

    subscription: str

    def get_disk(self, rg: str, name: str) -> Any: ...
    def create_disk(self, rg: str, name: str, body: dict[str, Any]) -> Any: ...
    def grant_write(self, rg: str, name: str, seconds: int) -> str: ...
    def revoke(self, rg: str, name: str) -> None: ...
    def resource_group_location(self, rg: str) -> str: ...
    def create_image(self, rg: str, name: str, body: dict[str, Any]) -> str: ...
    def gallery_definition(self, rg: str, gallery: str, definition: str) -> dict[str, Any]: ...
    def create_gallery_version(self, rg: str, gallery: str, definition: str, version: str,
                               body: dict[str, Any]) -> str: ...


@dataclass
class ManagedDiskRequest:
    """What the user asked for (``auto`` fields are decided from pre-flight)."""

    name: str
    resource_group: str
    location: str | None = None
    sku: str = "Standard_LRS"
    zone: str | None = None
    os_type: str = "auto"  # auto | Windows | Linux | none
    hyper_v_generation: str = "auto"  # auto | V1 | V2
    architecture: str = "auto"  # auto | x64 | Arm64
    tags: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    gallery: str | None = None  # GALLERY/DEFINITION/VERSION


@dataclass
class DiskPlan:
    """What will be created, and why (evidence from pre-flight)."""

    os_type: str | None
    hyper_v_generation: str | None
    architecture: str | None
    os_state: str  # Generalized | Specialized
    why: list[str] = field(default_factory=list)


@dataclass
class ManagedUploadResult:
    disk_id: str
    disk_state: str
    created: bool
    resumed: bool
    plan: DiskPlan
    upload: Any  # UploadResult
    image_id: str | None = None
    gallery_version_id: str | None = None
    steps: list[str] = field(default_factory=list)
    next_commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": 1,  # docs/JSON.md, like every --json document
            "disk_id": self.disk_id, "disk_state": self.disk_state, "created": self.created,
            "resumed": self.resumed,
            "os_type": self.plan.os_type, "hyper_v_generation": self.plan.hyper_v_generation,
            "architecture": self.plan.architecture, "os_state": self.plan.os_state,
            "why": self.plan.why, "image_id": self.image_id,
            "gallery_version_id": self.gallery_version_id, "steps": self.steps,
            "next_commands": self.next_commands,
            "upload": self.upload.to_dict() if self.upload is not None else None,
        }


def check_request(req: ManagedDiskRequest) -> None:
    """Refuse inconsistent options before anything is read or sent."""
    if req.sku not in SKUS:
        raise UsageError(f"--sku {req.sku}: use one of {', '.join(SKUS)}")
    choices = {"os_type": ("auto", "Windows", "Linux", "none"),
               "hyper_v_generation": ("auto", "V1", "V2"),
               "architecture": ("auto", "x64", "Arm64")}
    for attr, allowed in choices.items():
        if getattr(req, attr) not in allowed:
            raise UsageError(f"--{attr.replace('_', '-')} {getattr(req, attr)}: use one of "
                             f"{', '.join(allowed)}")
    if req.gallery is not None and len(req.gallery.split("/")) != 3:
        raise UsageError("--gallery takes GALLERY/DEFINITION/VERSION")
    if (req.image or req.gallery) and req.os_type == "none":
        raise UsageError("an image needs an OS disk: --image/--gallery cannot go with "
                         "--os-type none")


def plan_disk(req: ManagedDiskRequest, preflight: Report | None, expect: str) -> DiskPlan:
    """OS type, generation and architecture: the user's choice, or what pre-flight found."""
    if preflight is None and "auto" in (req.os_type, req.hyper_v_generation):
        raise UsageError("without pre-flight (--skip-preflight) vhdkit cannot tell the OS type "
                         "and generation: give --os-type and --hyper-v-generation")
    facts = preflight.facts if preflight is not None else {}
    why: list[str] = []
    os_found = {"windows": "Windows", "linux": "Linux"}.get(str(facts.get("os", "")))
    if req.os_type == "auto":
        os_type = os_found
        why.append(f"os type {os_type or 'none (a data disk)'}: pre-flight found "
                   f"{facts.get('os', 'no OS')}")
    else:
        os_type = None if req.os_type == "none" else req.os_type
    gens, arch_found = _boot(preflight)
    if os_type is None:  # a data disk carries none of these
        return DiskPlan(None, None, None, "Specialized", why)
    if req.hyper_v_generation == "auto":
        if not gens:
            raise UsageError("pre-flight could not tell which VM generation the disk boots: "
                             "give --hyper-v-generation V1 or V2")
        # V2 when the disk boots both: Trusted Launch and current VM sizes need it.
        gen = "V2" if "V2" in gens else "V1"
        why.append(f"generation {gen}: the disk boots {', '.join(gens)}")
    else:
        gen = req.hyper_v_generation
        if gens and gen not in gens:
            raise UsageError(f"--hyper-v-generation {gen}: pre-flight found the disk boots only "
                             f"{', '.join(gens)}; a VM of generation {gen} would not start")
    if req.architecture == "auto":
        arch = str(arch_found) if arch_found else "x64"
        why.append(f"architecture {arch}: " + ("from the boot loader and kernel" if arch_found
                                               else "pre-flight found none, x64 assumed"))
    else:
        arch = req.architecture
        if arch_found and arch != arch_found:
            raise UsageError(f"--architecture {arch}: the disk's boot files are {arch_found}")
    if arch == "Arm64" and gen != "V2":
        raise UsageError("an Arm64 disk boots only on generation V2")
    state = "Specialized" if expect == "specialized" else "Generalized"
    return DiskPlan(os_type, gen, arch, state, why)


def _boot(report: Report | dict[str, object] | None) -> tuple[list[str], str | None]:
    """(generations the disk boots, architecture) as pre-flight found them."""
    boot = getattr(report, "boot", None)
    if boot is not None:
        return [str(g) for g in boot.generations], boot.architecture
    src = report if isinstance(report, dict) else getattr(report, "facts", {})
    facts = src.get("boot")  # facts as JSON carries them
    if isinstance(facts, dict):
        arch = facts.get("architecture")
        return [str(g) for g in facts.get("generations") or []], str(arch) if arch else None
    return [], None


def disk_body(req: ManagedDiskRequest, plan: DiskPlan, location: str,
              stream_size: int) -> dict[str, Any]:
    """The Disks_CreateOrUpdate body for an upload disk."""
    props: dict[str, Any] = {
        "creationData": {"createOption": "Upload", "uploadSizeBytes": stream_size},
    }
    if req.sku in SECTOR_512_SKUS:
        props["creationData"]["logicalSectorSize"] = 512
    if plan.os_type is not None:
        props["osType"] = plan.os_type
        props["hyperVGeneration"] = plan.hyper_v_generation
        props["supportedCapabilities"] = {"architecture": plan.architecture}
    body: dict[str, Any] = {"location": location, "sku": {"name": req.sku}, "properties": props}
    if req.zone:
        body["zones"] = [req.zone]
    if req.tags:
        body["tags"] = dict(req.tags)
    return body


def grant_seconds(stream_size: int) -> int:
    return int(min(GRANT_CAP_S, GRANT_FLOOR_S + stream_size // GRANT_RATE))


Uploader = Callable[[str], Any]  # SAS URL -> UploadResult


def managed_upload(view: AzureView, req: ManagedDiskRequest, api: ComputeApi,
                   upload: Uploader, *, preflight: Report | None, expect: str = "generalized",
                   on_step: Callable[[str], None] | None = None) -> ManagedUploadResult:
    """Create (or find) the disk, grant, upload through ``upload(sas_url)``, always revoke."""
    check_request(req)
    size = view.stream_size
    if not MIN_UPLOAD <= size <= MAX_UPLOAD:
        raise UploadError(f"the stream is {size} bytes; a managed-disk upload must be "
                          f"{MIN_UPLOAD} (20 MiB + 512) to {MAX_UPLOAD} (32 TiB + 512) bytes")
    plan = plan_disk(req, preflight, expect)
    steps: list[str] = []

    def step(text: str) -> None:
        steps.append(text)
        if on_step is not None:
            on_step(text)

    rg, name = req.resource_group, req.name
    existing = api.get_disk(rg, name)
    created = existing is None
    if existing is None:
        location = req.location or api.resource_group_location(rg)
        body = disk_body(req, plan, location, size)
        disk = api.create_disk(rg, name, body)
        step(f"created disk {name} in {location} ({req.sku}, {size} bytes)")
    else:
        _refuse_existing(existing, size)
        disk = existing
        step(f"found disk {name} ({existing.state}): resuming")
    sas = api.grant_write(rg, name, grant_seconds(size))
    step(f"granted write access for {grant_seconds(size)} s")
    try:
        result = upload(sas)
        step(f"uploaded {result.bytes_sent} bytes")
    finally:
        # Always: an open write grant keeps the disk unusable, after success or failure.
        api.revoke(rg, name)
        step("revoked access")
    final = api.get_disk(rg, name)
    out = ManagedUploadResult(
        disk_id=(final or disk).id, disk_state=final.state if final is not None else "unknown",
        created=created, resumed=not created, plan=plan, upload=result, steps=steps)
    if req.image:
        out.image_id = api.create_image(rg, req.image, image_body(out.disk_id, plan, disk))
        step(f"created image {req.image}")
    if req.gallery:
        gallery, definition, version = req.gallery.split("/")
        _check_definition(api.gallery_definition(rg, gallery, definition), plan)
        out.gallery_version_id = api.create_gallery_version(
            rg, gallery, definition, version, gallery_version_body(out.disk_id, disk))
        step(f"created gallery image version {req.gallery}")
    out.next_commands = next_commands(rg, name, out.disk_id, plan, req)
    return out


def _refuse_existing(disk: Any, size: int) -> None:
    if disk.managed_by:
        raise UploadError(f"disk {disk.name} is attached to {disk.managed_by}; vhdkit does not "
                          "overwrite a disk in use")
    if disk.state not in UPLOADABLE:
        raise UploadError(f"disk {disk.name} exists in state {disk.state}: only a disk created "
                          "for upload and not yet finished (ReadyToUpload, ActiveUpload) can be "
                          "written; choose another name or delete it (az disk delete)")
    if disk.upload_size is not None and disk.upload_size != size:
        raise UploadError(f"disk {disk.name} was created for {disk.upload_size} bytes but the "
                          f"stream is {size}; refusing before sending anything")


def image_body(disk_id: str, plan: DiskPlan, disk: Any) -> dict[str, Any]:
    return {
        "location": disk.location,
        "properties": {
            "hyperVGeneration": plan.hyper_v_generation,
            "storageProfile": {"osDisk": {"osType": plan.os_type, "osState": plan.os_state,
                                          "managedDisk": {"id": disk_id}}},
        },
    }


def suggest_plan(report: Report | None, expect: str) -> DiskPlan:
    """What pre-flight found, for the next-step commands (never refuses: unknowns stay None)."""
    facts = report.facts if report is not None else {}
    os_type = {"windows": "Windows", "linux": "Linux"}.get(str(facts.get("os", "")))
    gens, arch = _boot(report)
    gen = ("V2" if "V2" in gens else "V1") if gens else None
    state = "Specialized" if expect == "specialized" else "Generalized"
    return DiskPlan(os_type, gen, arch, state)


def blob_next_commands(blob_url: str, plan: DiskPlan) -> list[str]:
    """The `az` commands that make a managed disk, an image or a gallery version from an
    uploaded page blob (``blob_url`` without its SAS)."""
    q = shlex.quote
    if "://md-" in blob_url:  # a managed disk written through its SAS
        return ["az disk revoke-access --resource-group MY-RG --name MY-DISK"]
    gen = f" --hyper-v-generation {plan.hyper_v_generation}" if plan.hyper_v_generation else ""
    arch = f" --architecture {plan.architecture}" if plan.architecture else ""
    if plan.os_type is None:
        return [f"az disk create --resource-group MY-RG --name MY-DISK --source {q(blob_url)}"]
    return [
        f"az disk create --resource-group MY-RG --name MY-DISK --source {q(blob_url)} "
        f"--os-type {plan.os_type}{gen}{arch}",
        f"az image create --resource-group MY-RG --name MY-IMAGE --source {q(blob_url)} "
        f"--os-type {plan.os_type}{gen}",
        f"az sig image-version create --resource-group MY-RG --gallery-name MY-GALLERY "
        f"--gallery-image-definition MY-DEFINITION --gallery-image-version 1.0.0 "
        f"--os-vhd-uri {q(blob_url)} --os-vhd-storage-account MY-STORAGE-ACCOUNT-ID",
    ]


def gallery_version_body(disk_id: str, disk: Any) -> dict[str, Any]:
    return {"location": disk.location,
            "properties": {"storageProfile": {"osDiskImage": {"source": {"id": disk_id}}}}}


def _check_definition(definition: dict[str, Any], plan: DiskPlan) -> None:
    props = definition.get("properties", definition)
    want = {"osType": plan.os_type, "osState": plan.os_state,
            "hyperVGeneration": plan.hyper_v_generation, "architecture": plan.architecture}
    defaults = {"hyperVGeneration": "V1", "architecture": "x64"}
    for key, value in want.items():
        have = props.get(key) or defaults.get(key)
        if have is not None and value is not None and str(have).lower() != str(value).lower():
            raise UploadError(f"gallery image definition has {key} {have} but the disk is "
                              f"{value}; choose a matching definition")


def next_commands(rg: str, name: str, disk_id: str, plan: DiskPlan,
                  req: ManagedDiskRequest) -> list[str]:
    """The exact `az` commands that make a VM image from the uploaded disk."""
    q = shlex.quote
    if plan.os_type is None:
        return [f"az vm disk attach --resource-group {q(rg)} --vm-name MY-VM --name {q(name)}"]
    out = []
    if not req.image:
        out.append(f"az image create --resource-group {q(rg)} --name {q(name)}-image "
                   f"--source {q(disk_id)} --os-type {plan.os_type} "
                   f"--hyper-v-generation {plan.hyper_v_generation}")
    if not req.gallery:
        out.append(f"az sig image-definition create --resource-group {q(rg)} --gallery-name "
                   f"MY-GALLERY --gallery-image-definition {q(name)} --publisher MY-PUBLISHER "
                   f"--offer MY-OFFER --sku MY-SKU --os-type {plan.os_type} "
                   f"--os-state {plan.os_state} --hyper-v-generation {plan.hyper_v_generation} "
                   f"--architecture {plan.architecture}")
        out.append(f"az sig image-version create --resource-group {q(rg)} --gallery-name "
                   f"MY-GALLERY --gallery-image-definition {q(name)} --gallery-image-version "
                   f"1.0.0 --os-snapshot {q(disk_id)}")
    out.append(f"az vm create --resource-group {q(rg)} --name MY-VM --attach-os-disk "
               f"{q(name)} --os-type {plan.os_type}" if plan.os_state == "Specialized" else
               f"az vm create --resource-group {q(rg)} --name MY-VM --image {q(name)}-image")
    return out


__all__ = ["ManagedDiskRequest", "ManagedUploadResult", "managed_upload"]
