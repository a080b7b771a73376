"""Azure Resource Manager at one edge: managed disks, images and gallery image versions.

The only module that imports the management SDK (azure-mgmt-compute, the ``arm`` extra). It
sends exactly the request bodies it is given and returns plain data, so the flow that decides what
to create (managed_upload.py) is testable and the bodies are asserted in tests. Errors become one
line naming what was refused and, for authorization failures, the permission that is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import UploadError, UsageError, VhdkitError
from .secrets import redact

#: The API version of Microsoft.Resources used for the resource group's location.
RESOURCES_API = "2021-04-01"

#: What a managed-disk upload needs, by operation, for the one-line authorization error.
PERMISSIONS = {
    "get": "Microsoft.Compute/disks/read",
    "create": "Microsoft.Compute/disks/write (Disk Contributor-level: e.g. Contributor or "
              "Virtual Machine Contributor on the resource group)",
    "grant": "Microsoft.Compute/disks/beginGetAccess/action",
    "revoke": "Microsoft.Compute/disks/endGetAccess/action",
    "image": "Microsoft.Compute/images/write",
    "gallery": "Microsoft.Compute/galleries/images/versions/write",
    "location": "Microsoft.Resources/subscriptions/resourceGroups/read",
}


class ManagementError(UploadError):
    """Azure Resource Manager refused or failed an operation."""


@dataclass(frozen=True)
class DiskInfo:
    """What vhdkit needs to know of an existing managed disk."""

    id: str
    name: str
    location: str
    state: str  # diskState: ReadyToUpload, ActiveUpload, Unattached, Attached, ...
    create_option: str | None
    upload_size: int | None
    managed_by: str | None
    os_type: str | None
    hyper_v_generation: str | None
    architecture: str | None
    raw: dict[str, Any]

    @classmethod
    def of(cls, body: dict[str, Any]) -> DiskInfo:
        props = body.get("properties", {})
        creation = props.get("creationData", {})
        caps = props.get("supportedCapabilities") or {}
        return cls(id=body.get("id", ""), name=body.get("name", ""),
                   location=body.get("location", ""), state=props.get("diskState", ""),
                   create_option=creation.get("createOption"),
                   upload_size=creation.get("uploadSizeBytes"),
                   managed_by=body.get("managedBy"), os_type=props.get("osType"),
                   hyper_v_generation=props.get("hyperVGeneration"),
                   architecture=caps.get("architecture"), raw=body)


def _import_sdk() -> Any:
    try:
        from azure.mgmt import compute
    except ImportError as exc:
        raise UsageError("managed disks need the Azure management SDK: install vhdkit with the "
                         "'arm' extra (pip install './vhdkit[arm]' from a clone, or "
                         "pip install azure-mgmt-compute)") from exc
    return compute


def default_credential() -> Any:
    """DefaultAzureCredential: az login, managed identity, environment variables."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class Compute:
    """Managed disks, images and gallery versions of one subscription.

    ``endpoint`` and ``verify`` exist for tests (a local double with its own TLS certificate);
    ``polling_interval`` shortens long-running-operation polling there.
    """

    def __init__(self, credential: Any, subscription: str, *, endpoint: str | None = None,
                 verify: bool | str = True, polling_interval: float | None = None) -> None:
        compute = _import_sdk()
        kwargs: dict[str, Any] = {"connection_verify": verify}
        if endpoint is not None:
            kwargs["base_url"] = endpoint
        self.subscription = subscription
        self._client = compute.ComputeManagementClient(credential, subscription, **kwargs)
        self._lro: dict[str, Any] = ({} if polling_interval is None
                                     else {"polling_interval": polling_interval})

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, name: str, fn: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

        try:
            return fn()
        except ClientAuthenticationError as exc:
            # The credential's own message says which sign-in failed and why.
            raise ManagementError(f"cannot sign in to Azure: {_first_line(exc)}") from None
        except HttpResponseError as exc:
            raise _translate(what, name, exc) from None
        except VhdkitError:
            raise
        except Exception as exc:  # transport errors: no secret in them, one line
            raise ManagementError(f"{what} {name}: {_first_line(exc)}") from None

    def get_disk(self, rg: str, name: str) -> DiskInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        def get() -> DiskInfo | None:
            try:
                return DiskInfo.of(self._client.disks.get(rg, name).as_dict())
            except ResourceNotFoundError:
                return None
        return self._call("get", name, get)  # type: ignore[no-any-return]

    def create_disk(self, rg: str, name: str, body: dict[str, Any]) -> DiskInfo:
        def create() -> DiskInfo:
            poller = self._client.disks.begin_create_or_update(rg, name, body, **self._lro)
            return DiskInfo.of(poller.result().as_dict())
        return self._call("create", name, create)  # type: ignore[no-any-return]

    def grant_write(self, rg: str, name: str, seconds: int) -> str:
        """A write SAS for the disk (a secret: never print it)."""
        def grant() -> str:
            poller = self._client.disks.begin_grant_access(
                rg, name, {"access": "Write", "durationInSeconds": seconds}, **self._lro)
            return str(poller.result().access_sas)
        return self._call("grant", name, grant)  # type: ignore[no-any-return]

    def revoke(self, rg: str, name: str) -> None:
        self._call("revoke", name,
                   lambda: self._client.disks.begin_revoke_access(rg, name, **self._lro).result())

    def resource_group_location(self, rg: str) -> str:
        from azure.core.rest import HttpRequest

        def get() -> str:
            req = HttpRequest("GET", f"/subscriptions/{self.subscription}/resourcegroups/{rg}",
                              params={"api-version": RESOURCES_API})
            resp = self._client.send_request(req)
            resp.raise_for_status()
            return str(resp.json()["location"])
        return self._call("location", rg, get)  # type: ignore[no-any-return]

    def create_image(self, rg: str, name: str, body: dict[str, Any]) -> str:
        def create() -> str:
            poller = self._client.images.begin_create_or_update(rg, name, body, **self._lro)
            return str(poller.result().id)
        return self._call("image", name, create)  # type: ignore[no-any-return]

    def gallery_definition(self, rg: str, gallery: str, definition: str) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            "gallery", f"{gallery}/{definition}",
            lambda: self._client.gallery_images.get(rg, gallery, definition).as_dict())

    def create_gallery_version(self, rg: str, gallery: str, definition: str, version: str,
                               body: dict[str, Any]) -> str:
        def create() -> str:
            poller = self._client.gallery_image_versions.begin_create_or_update(
                rg, gallery, definition, version, body, **self._lro)
            return str(poller.result().id)
        return self._call("gallery", f"{gallery}/{definition}/{version}",  # type: ignore[no-any-return]
                          create)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text)[:300]


def _translate(what: str, name: str, exc: Any) -> ManagementError:
    status = getattr(exc, "status_code", None)
    code, message = "", ""
    err = getattr(exc, "error", None)
    if err is not None:
        code, message = getattr(err, "code", "") or "", getattr(err, "message", "") or ""
    else:
        try:
            body = json.loads(exc.response.text()) if exc.response is not None else {}
            code = body.get("error", {}).get("code", "")
            message = body.get("error", {}).get("message", "")
        except Exception:
            pass
    detail = f"{code}: {message}" if code or message else _first_line(exc)
    text = f"Azure refused to {_VERBS.get(what, what)} {name} (HTTP {status}, {detail})"
    if status == 403 or code in ("AuthorizationFailed", "LinkedAuthorizationFailed"):
        text += f"; the signed-in identity needs {PERMISSIONS.get(what, 'more permissions')}"
    return ManagementError(redact(" ".join(text.split())))


_VERBS = {"get": "read disk", "create": "create disk", "grant": "grant write access to disk",
          "revoke": "revoke access to disk", "image": "create image",
          "gallery": "create gallery image version", "location": "read resource group"}
