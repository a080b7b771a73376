"""A test double of Azure Resource Manager for managed disks, images and gallery versions.

It answers as the REST API specifications' examples do (Disks_CreateOrUpdate with Upload,
Disks_Get, Disks_GrantAccess, Disks_RevokeAccess, Images_CreateOrUpdate,
GalleryImageVersions_CreateOrUpdate, GalleryImages_Get, ResourceGroups_Get): long-running
operations answer 202 with ``Azure-AsyncOperation`` (PUT) or ``Location`` (POST) and are polled;
disk states change as Azure's do (ReadyToUpload -> ActiveUpload on a write grant -> Unattached on
revoke); a bearer token is required. The granted SAS points at a page blob in Azurite (created at
the disk's upload size), optionally through a URL rewriter (the strict managed-disk double).

Served over HTTPS on 127.0.0.1 with a throwaway self-signed certificate (bearer tokens need TLS);
the SDK trusts it through ``connection_verify=<cert file>``. Every request is recorded (method,
path, JSON body) for the tests to assert order and bodies.
"""

from __future__ import annotations

import datetime
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

SUB = r"/subscriptions/(?P<sub>[^/]+)"
RG = SUB + r"/resourcegroups/(?P<rg>[^/]+)"
COMPUTE = RG + r"/providers/microsoft\.compute"
#: App Service managed identity: DefaultAzureCredential asks IDENTITY_ENDPOINT for a token.
MSI_PATH = "/msi/token"
MSI_HEADER = "vhdkit-test-identity"
ROUTES = [
    ("GET", re.compile(RG + r"$", re.I), "rg"),
    ("PUT", re.compile(COMPUTE + r"/disks/(?P<name>[^/]+)$", re.I), "disk_put"),
    ("GET", re.compile(COMPUTE + r"/disks/(?P<name>[^/]+)$", re.I), "disk_get"),
    ("POST", re.compile(COMPUTE + r"/disks/(?P<name>[^/]+)/begingetaccess$", re.I), "grant"),
    ("POST", re.compile(COMPUTE + r"/disks/(?P<name>[^/]+)/endgetaccess$", re.I), "revoke"),
    ("PUT", re.compile(COMPUTE + r"/images/(?P<name>[^/]+)$", re.I), "image_put"),
    ("GET", re.compile(COMPUTE + r"/images/(?P<name>[^/]+)$", re.I), "image_get"),
    ("GET", re.compile(COMPUTE + r"/galleries/(?P<g>[^/]+)/images/(?P<d>[^/]+)$", re.I),
     "definition_get"),
    ("PUT", re.compile(COMPUTE + r"/galleries/(?P<g>[^/]+)/images/(?P<d>[^/]+)/versions/"
                       r"(?P<v>[^/]+)$", re.I), "version_put"),
    ("GET", re.compile(COMPUTE + r"/galleries/(?P<g>[^/]+)/images/(?P<d>[^/]+)/versions/"
                       r"(?P<v>[^/]+)$", re.I), "version_get"),
    ("GET", re.compile(SUB + r"/providers/microsoft\.compute/locations/[^/]+/operations/"
                       r"(?P<op>[^/?]+)$", re.I), "operation"),
]


@dataclass
class Recorded:
    method: str
    path: str
    body: Any


@dataclass
class ArmState:
    location: str = "westeurope"
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # images, versions
    definitions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "g/d" -> body
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[Recorded] = field(default_factory=list)
    #: operation kinds to refuse with 403 AuthorizationFailed (e.g. {"grant"})
    forbid: set[str] = field(default_factory=set)
    #: polls before a long-running operation completes; None answers 200 at once (the specs'
    #: examples allow both; the CLI then needs no polling, whose SDK default wait is 30 s)
    polls: int | None = 1


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (cert file, key file)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "arm-double.crt", directory / "arm-double.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class ArmDouble:
    """HTTPS server on 127.0.0.1; ``endpoint`` is the base URL to give the SDK."""

    def __init__(self, workdir: Path, blob_service: BlobServiceClient, account_key: str,
                 container: str = "md-disks",
                 sas_url: Callable[[str], str] | None = None) -> None:
        self.state = ArmState()
        self.cert, key = make_certificate(workdir)
        self.blobs = blob_service
        self.account_key = account_key
        self.container = container
        # the URL handed out as accessSAS: by default Azurite's own, else rewritten (md- host)
        self.sas_url = sas_url or (lambda url: url)
        if not self.blobs.get_container_client(container).exists():
            self.blobs.create_container(container)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._lock = threading.Lock()
        self.token_resources: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ArmDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def identity_env(self) -> dict[str, str]:
        """Environment for DefaultAzureCredential to sign in through this double (App Service
        managed identity), and to trust its certificate."""
        return {"IDENTITY_ENDPOINT": f"{self.endpoint}{MSI_PATH}", "IDENTITY_HEADER": MSI_HEADER,
                "REQUESTS_CA_BUNDLE": str(self.cert)}

    def calls(self) -> list[tuple[str, str]]:
        """(method, operation kind) of every request other than polls, in order."""
        out = []
        for r in self.state.log:
            kind = _route(r.method, r.path)[0]
            if kind not in ("operation", None):
                out.append((r.method, kind))
        return out

    def bodies(self, kind: str) -> list[Any]:
        return [r.body for r in self.state.log if _route(r.method, r.path)[0] == kind]

    def blob_name(self, disk: str) -> str:
        return f"{disk}-abcd"

    # --- request handling -------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _go(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path = urlsplit(self.path).path
                if path == MSI_PATH:  # the token endpoint, before any bearer check
                    return self._token()
                with double._lock:
                    double.state.log.append(Recorded(self.command, path, body))
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    return self._send(401, {"error": {"code": "AuthenticationFailed",
                                                      "message": "no bearer token"}})
                if "api-version" not in parse_qs(urlsplit(self.path).query):
                    return self._send(400, {"error": {"code": "MissingApiVersionParameter",
                                                      "message": "api-version is required"}})
                kind, m = _route(self.command, path)
                if kind is None or m is None:
                    return self._send(404, {"error": {"code": "NotFound", "message": path}})
                if kind in double.state.forbid:
                    return self._send(403, {"error": {
                        "code": "AuthorizationFailed",
                        "message": f"The client does not have authorization to perform "
                                   f"action on {path}"}})
                with double._lock:
                    status, out, headers = getattr(double, f"_{kind}")(m.groupdict(), body,
                                                                        self.headers)
                self._send(status, out, headers)

            do_GET = do_PUT = do_POST = _go

            def _token(self) -> None:
                if self.headers.get("X-IDENTITY-HEADER") != MSI_HEADER:
                    return self._send(401, {"error": "bad identity header"})
                resource = parse_qs(urlsplit(self.path).query).get("resource", [""])[0]
                double.token_resources.append(resource)
                self._send(200, {"access_token": "msi-token", "token_type": "Bearer",
                                 "expires_on": str(int(time.time()) + 3600),
                                 "resource": resource})

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None,
                      ) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-ms-request-id", str(uuid.uuid4()))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _op_url(self, sub: str, op: str, monitor: bool) -> str:
        tail = "&monitor=true" if monitor else ""
        return (f"{self.endpoint}/subscriptions/{sub}/providers/Microsoft.Compute/locations/"
                f"{self.state.location}/operations/{op}?api-version=2023-04-02{tail}")

    def _start_op(self, sub: str, result: Any, then: Callable[[], None] | None = None,
                  location: bool = False) -> str:
        op = uuid.uuid4().hex
        self.state.operations[op] = {"left": self.state.polls, "result": result, "then": then,
                                     "location": location}
        return op

    def _rg(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        return 200, {"id": f"/subscriptions/{g['sub']}/resourceGroups/{g['rg']}",
                     "name": g["rg"], "location": self.state.location,
                     "properties": {"provisioningState": "Succeeded"}}, {}

    def _disk_id(self, g: dict[str, str]) -> str:
        return (f"/subscriptions/{g['sub']}/resourceGroups/{g['rg']}/providers/"
                f"Microsoft.Compute/disks/{g['name']}")

    def _disk_put(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        props = (body or {}).get("properties", {})
        creation = props.get("creationData", {})
        size = creation.get("uploadSizeBytes")
        if creation.get("createOption") != "Upload" or not isinstance(size, int):
            return 400, {"error": {"code": "InvalidParameter",
                                   "message": "only createOption Upload is modelled"}}, {}
        if size < 20 * 1024 * 1024 + 512 or size % 512 != 512 % 512 or (size - 512) % (1 << 20):
            return 400, {"error": {"code": "InvalidParameter", "message":
                                   "uploadSizeBytes must be 20 MiB + 512 .. 32 TiB + 512 and "
                                   "a whole number of MiB plus 512"}}, {}
        if g["name"] in self.state.disks:
            return 409, {"error": {"code": "Conflict", "message": "disk exists"}}, {}
        disk = {"id": self._disk_id(g), "name": g["name"], "type": "Microsoft.Compute/disks",
                "location": body.get("location"), "sku": body.get("sku", {"name":
                                                                          "Standard_LRS"}),
                "properties": {**props, "provisioningState": "Updating",
                               "diskState": "ReadyToUpload",
                               "diskSizeGB": -(-(size - 512) // (1 << 30)),
                               "timeCreated": datetime.datetime.now(
                                   datetime.timezone.utc).isoformat()}}
        for k in ("zones", "tags"):
            if k in body:
                disk[k] = body[k]
        self.state.disks[g["name"]] = disk
        blob = self.blobs.get_blob_client(self.container, self.blob_name(g["name"]))
        blob.create_page_blob(size)

        def done() -> None:
            disk["properties"]["provisioningState"] = "Succeeded"

        if self.state.polls is None:
            done()
            return 200, disk, {}
        op = self._start_op(g["sub"], None, done)
        return 202, disk, {"Azure-AsyncOperation": self._op_url(g["sub"], op, False),
                           "Retry-After": "0"}

    def _disk_get(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        disk = self.state.disks.get(g["name"])
        if disk is None:
            return 404, {"error": {"code": "ResourceNotFound", "message":
                                   f"The Resource 'Microsoft.Compute/disks/{g['name']}' under "
                                   f"resource group '{g['rg']}' was not found."}}, {}
        return 200, disk, {}

    def _grant(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        disk = self.state.disks.get(g["name"])
        if disk is None:
            return 404, {"error": {"code": "ResourceNotFound", "message": g["name"]}}, {}
        state = disk["properties"]["diskState"]
        access = (body or {}).get("access")
        if access != "Write" or state not in ("ReadyToUpload", "ActiveUpload"):
            return 409, {"error": {"code": "OperationNotAllowed", "message":
                                   f"access {access} is not allowed in disk state {state}"}}, {}
        blob = self.blobs.get_blob_client(self.container, self.blob_name(g["name"]))
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=int(body.get("durationInSeconds", 3600)))
        sas = generate_blob_sas(blob.account_name or "", self.container, blob.blob_name,
                                account_key=self.account_key,
                                permission=BlobSasPermissions(read=True, write=True),
                                expiry=expiry)
        url = self.sas_url(f"{blob.url}?{sas}")
        disk["properties"]["diskState"] = "ActiveUpload"
        if self.state.polls is None:
            return 200, {"accessSAS": url}, {}
        op = self._start_op(g["sub"], {"accessSAS": url}, location=True)
        return 202, None, {"Location": self._op_url(g["sub"], op, True), "Retry-After": "0"}

    def _revoke(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        disk = self.state.disks.get(g["name"])
        if disk is None:
            return 404, {"error": {"code": "ResourceNotFound", "message": g["name"]}}, {}
        props = disk["properties"]

        def done() -> None:
            # Revoking ends an upload session: the disk can be attached, never written again.
            if props["diskState"] in ("ActiveUpload", "ReadyToUpload", "ActiveSAS"):
                props["diskState"] = "Unattached"

        if self.state.polls is None:
            done()
            return 200, None, {}
        op = self._start_op(g["sub"], None, done, location=True)
        return 202, None, {"Location": self._op_url(g["sub"], op, True), "Retry-After": "0"}

    def _resource_put(self, rid: str, body: Any, extra: dict[str, Any],
                      sub: str) -> tuple[int, Any, dict[str, str]]:
        res = {"id": rid, "name": rid.rsplit("/", 1)[1], "location": (body or {}).get("location"),
               "properties": {**(body or {}).get("properties", {}), **extra,
                              "provisioningState": "Creating"}}
        self.state.resources[rid.lower()] = res

        def done() -> None:
            res["properties"]["provisioningState"] = "Succeeded"

        if self.state.polls is None:
            done()
            return 200, res, {}
        op = self._start_op(sub, None, done)
        return 201, res, {"Azure-AsyncOperation": self._op_url(sub, op, False),
                          "Retry-After": "0"}

    def _source_disk(self, rid: str) -> dict[str, Any] | None:
        name = rid.rsplit("/", 1)[-1]
        disk = self.state.disks.get(name)
        return disk if disk is not None and disk["id"].lower() == rid.lower() else None

    def _image_put(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        os_disk = (body or {}).get("properties", {}).get("storageProfile", {}).get("osDisk", {})
        disk = self._source_disk(os_disk.get("managedDisk", {}).get("id", ""))
        if disk is None or disk["properties"]["diskState"] != "Unattached":
            return 400, {"error": {"code": "InvalidParameter", "message":
                                   "the source disk must exist and be Unattached"}}, {}
        rid = (f"/subscriptions/{g['sub']}/resourceGroups/{g['rg']}/providers/"
               f"Microsoft.Compute/images/{g['name']}")
        return self._resource_put(rid, body, {}, g["sub"])

    def _image_get(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        return self._get_resource(f"/subscriptions/{g['sub']}/resourceGroups/{g['rg']}/providers/"
                                  f"Microsoft.Compute/images/{g['name']}")

    def _get_resource(self, rid: str) -> tuple[int, Any, dict[str, str]]:
        res = self.state.resources.get(rid.lower())
        if res is None:
            return 404, {"error": {"code": "ResourceNotFound", "message": rid}}, {}
        return 200, res, {}

    def _definition_get(self, g: dict[str, str], body: Any,
                        h: Any) -> tuple[int, Any, dict[str, str]]:
        d = self.state.definitions.get(f"{g['g']}/{g['d']}")
        if d is None:
            return 404, {"error": {"code": "ResourceNotFound", "message": g["d"]}}, {}
        return 200, d, {}

    def _version_put(self, g: dict[str, str], body: Any,
                     h: Any) -> tuple[int, Any, dict[str, str]]:
        src = ((body or {}).get("properties", {}).get("storageProfile", {})
               .get("osDiskImage", {}).get("source", {}).get("id", ""))
        if self._source_disk(src) is None:
            return 400, {"error": {"code": "InvalidParameter", "message": "source not found"}}, {}
        rid = (f"/subscriptions/{g['sub']}/resourceGroups/{g['rg']}/providers/Microsoft.Compute/"
               f"galleries/{g['g']}/images/{g['d']}/versions/{g['v']}")
        return self._resource_put(rid, body, {}, g["sub"])

    def _version_get(self, g: dict[str, str], body: Any,
                     h: Any) -> tuple[int, Any, dict[str, str]]:
        return self._get_resource(f"/subscriptions/{g['sub']}/resourceGroups/{g['rg']}/providers/"
                                  f"Microsoft.Compute/galleries/{g['g']}/images/{g['d']}/"
                                  f"versions/{g['v']}")

    def _operation(self, g: dict[str, str], body: Any, h: Any) -> tuple[int, Any, dict[str, str]]:
        op = self.state.operations.get(g["op"])
        if op is None:
            return 404, {"error": {"code": "NotFound", "message": g["op"]}}, {}
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        if op["left"] > 0:
            op["left"] -= 1
            # Location polling: 202 while running; Azure-AsyncOperation: 200 with a status
            return (202 if op["location"] else 200), {
                "name": g["op"], "status": "InProgress", "startTime": now}, {"Retry-After": "0"}
        if op["then"] is not None:
            op["then"]()
            op["then"] = None
        if op["result"] is not None:  # a POST polled through Location: the final body
            return 200, op["result"], {}
        return 200, {"name": g["op"], "status": "Succeeded", "startTime": now,
                     "endTime": now}, {}


def _route(method: str, path: str) -> tuple[str | None, re.Match[str] | None]:
    for m, rx, kind in ROUTES:
        if m == method:
            hit = rx.match(path)
            if hit:
                return kind, hit
    return None, None
