"""A local fake of Azure: the Log Analytics query API and the token endpoints azure-identity talks to.

This is the one boundary the tests cannot reach (Azure), kept narrow; the client side stays real
(``azure.monitor.query.LogsQueryClient``, ``azure.identity`` credentials, azure-core's transport, TLS sockets).

- **Query API** (``POST /v1/workspaces/{workspace}/query``, as api.loganalytics.io serves it), over TLS with a
  certificate from a CA made here (azure-core refuses to send a bearer token over plain HTTP). Answers in the
  API's JSON shape, taken from the azure-monitor-query test recordings
  (sdk/monitor/azure-monitor-query/tests/recordings in Azure/azure-sdk-for-python): ``{"tables": [{"name":
  "PrimaryResult", "columns": [{"name", "type"}], "rows": [[...]]}]}``, datetimes with 7 fractional digits as
  the service writes them; a partial result is HTTP 200 with ``error.code == "PartialError"`` beside the
  tables; an unknown table is HTTP 400 ``BadArgumentError`` / ``SEM0100``. Scripted faults: HTTP 429 with
  ``Retry-After``, 5xx, partial results, slow answers.
- **Managed identity**: the endpoint Container Apps (and App Service) expose to a container through
  ``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER`` (plain HTTP on localhost, as there; api-version 2019-08-01,
  ``X-IDENTITY-HEADER``, answer ``{access_token, expires_on, resource, token_type, client_id}``).
- **Entra ID authority** for a service principal (``AZURE_AUTHORITY_HOST``): the tenant's OpenID configuration
  and the client-credentials token endpoint.

Only the KQL that fleetmon sends is understood (a table, a TimeGenerated range, the two extend columns,
``top N by TimeGenerated asc`` or ``sort by TimeGenerated asc``); anything else is HTTP 400, as the real API
answers a query it cannot parse. Rows are only visible once ``ingest``-ed, so a test decides what is late.

Column sets, from the table references (MicrosoftDocs/azure-reference-other, azure-monitor-ref/tables/includes/
containerappconsolelogs-include.md and containerappsystemlogs-include.md) and, for the ``_CL`` tables, the
Container Apps docs (articles/container-apps/log-monitoring.md) plus the standard columns of a custom-log
table (TenantId, SourceSystem, TimeGenerated, Type, _ResourceId). Hidden standard columns (``_BilledSize``,
``_IsBillable``, ``_ItemId``) are returned only when a query names them (azure-monitor
logs/log-standard-columns.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import secrets
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

US = 1_000_000
TENANT = "6b1e3a52-7c0d-4f7e-9c1e-3d2b8a9f0e11"  # also the workspace id (TenantId column)
SUBSCRIPTION = "0b8c4f1e-2d3a-4b5c-8d9e-0f1a2b3c4d5e"
ENVIRONMENT = "energyhub-prod"

# table -> [(column, type)] in the order the API returns them
SCHEMAS: dict[str, list[tuple[str, str]]] = {
    "ContainerAppConsoleLogs_CL": [
        ("TenantId", "string"),
        ("SourceSystem", "string"),
        ("TimeGenerated", "datetime"),
        ("ContainerAppName_s", "string"),
        ("ContainerGroupId_g", "guid"),
        ("ContainerGroupName_s", "string"),
        ("ContainerId_s", "string"),
        ("ContainerImage_s", "string"),
        ("ContainerJobName_s", "string"),  # Container Apps jobs (their rows leave ContainerAppName_s empty)
        ("ContainerName_s", "string"),
        ("EnvironmentName_s", "string"),
        ("Log_s", "string"),
        ("RevisionName_s", "string"),
        ("Stream_s", "string"),
        ("Type", "string"),
        ("_ResourceId", "string"),
    ],
    "ContainerAppSystemLogs_CL": [
        ("TenantId", "string"),
        ("SourceSystem", "string"),
        ("TimeGenerated", "datetime"),
        ("ContainerAppName_s", "string"),
        ("EnvironmentName_s", "string"),
        ("EventSource_s", "string"),
        ("Count_d", "real"),
        ("Log_s", "string"),
        ("Reason_s", "string"),
        ("ReplicaName_s", "string"),
        ("RevisionName_s", "string"),
        ("Type_s", "string"),
        ("Type", "string"),
        ("_ResourceId", "string"),
    ],
    "ContainerAppConsoleLogs": [
        ("TenantId", "string"),
        ("TimeGenerated", "datetime"),
        ("ContainerAppName", "string"),
        ("ContainerGroupId", "string"),
        ("ContainerGroupName", "string"),
        ("ContainerId", "string"),
        ("ContainerImage", "string"),
        ("ContainerName", "string"),
        ("EnvironmentName", "string"),
        ("JobName", "string"),
        ("Location", "string"),
        ("Log", "string"),
        ("OperationName", "string"),
        ("RevisionName", "string"),
        ("SourceSystem", "string"),
        ("Stream", "string"),
        ("Type", "string"),
        ("_ResourceId", "string"),
        ("_SubscriptionId", "string"),
    ],
    "ContainerAppSystemLogs": [
        ("TenantId", "string"),
        ("TimeGenerated", "datetime"),
        ("ComponentName", "string"),
        ("ComponentType", "string"),
        ("ContainerAppName", "string"),
        ("ContainerName", "string"),
        ("Count", "int"),
        ("EnvironmentName", "string"),
        ("EventSource", "string"),
        ("JobName", "string"),
        ("Location", "string"),
        ("Log", "string"),
        ("OperationName", "string"),
        ("Reason", "string"),
        ("ReplicaName", "string"),
        ("RevisionName", "string"),
        ("SourceSystem", "string"),
        ("Type", "string"),  # in this table: the event's severity (Normal, Warning), per its reference
        ("_ResourceId", "string"),
        ("_SubscriptionId", "string"),
    ],
}
TABLES = {
    "log-analytics": ("ContainerAppConsoleLogs_CL", "ContainerAppSystemLogs_CL"),
    "azure-monitor": ("ContainerAppConsoleLogs", "ContainerAppSystemLogs"),
}


def _resource_id(app: str) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/energyhub/providers/Microsoft.App/containerApps/{app}"
    )


def console_row(
    destination: str, app: str, log: str | None, tg: int, stream: str = "stdout", job: bool = False
) -> dict[str, Any]:
    """A console row with every column of its table; ``tg`` is TimeGenerated in epoch microseconds.

    ``job``: a row of the Container Apps job ``app`` (named in the job column, no container app name).
    """
    rev, group = f"{app}--r1", f"{app}--r1-5d9c7b6f4-x2x7q"
    if destination == "log-analytics":
        return {
            "TenantId": TENANT,
            "SourceSystem": "RestAPI",
            "TimeGenerated": tg,
            "ContainerAppName_s": "" if job else app,
            "ContainerGroupId_g": "d9b2c1f0-1111-4a5b-9c8d-0e1f2a3b4c5d",
            "ContainerGroupName_s": group,
            "ContainerId_s": "containerd://4f2c9a0b7e1d",
            "ContainerImage_s": f"energyhub.azurecr.io/{app}:1.4.2",
            "ContainerJobName_s": app if job else "",
            "ContainerName_s": app,
            "EnvironmentName_s": ENVIRONMENT,
            "Log_s": log,
            "RevisionName_s": rev,
            "Stream_s": stream,
            "Type": "ContainerAppConsoleLogs_CL",
            "_ResourceId": "",
        }
    return {
        "TenantId": TENANT,
        "TimeGenerated": tg,
        "ContainerAppName": "" if job else app,
        "ContainerGroupId": "d9b2c1f0-1111-4a5b-9c8d-0e1f2a3b4c5d",
        "ContainerGroupName": group,
        "ContainerId": "containerd://4f2c9a0b7e1d",
        "ContainerImage": f"energyhub.azurecr.io/{app}:1.4.2",
        "ContainerName": app,
        "EnvironmentName": ENVIRONMENT,
        "JobName": app if job else "",
        "Location": "West Europe",
        "Log": log,
        "OperationName": "ContainerAppConsoleLogs",
        "RevisionName": rev,
        "SourceSystem": "Azure",
        "Stream": stream,
        "Type": "ContainerAppConsoleLogs",
        "_ResourceId": _resource_id(app),
        "_SubscriptionId": SUBSCRIPTION,
    }


def system_row(
    destination: str, app: str, reason: str, log: str, tg: int, event_type: str = "Normal"
) -> dict[str, Any]:
    """A system (platform event) row with every column of its table."""
    rev, replica = f"{app}--r3", f"{app}--r3-7f9d8c6b5-abcde"
    if destination == "log-analytics":
        return {
            "TenantId": TENANT,
            "SourceSystem": "RestAPI",
            "TimeGenerated": tg,
            "ContainerAppName_s": app,
            "EnvironmentName_s": ENVIRONMENT,
            "EventSource_s": "ContainerAppController",
            "Count_d": 1.0,
            "Log_s": log,
            "Reason_s": reason,
            "ReplicaName_s": replica,
            "RevisionName_s": rev,
            "Type_s": event_type,
            "Type": "ContainerAppSystemLogs_CL",
            "_ResourceId": "",
        }
    return {
        "TenantId": TENANT,
        "TimeGenerated": tg,
        "ComponentName": "",
        "ComponentType": "",
        "ContainerAppName": app,
        "ContainerName": app,
        "Count": 1,
        "EnvironmentName": ENVIRONMENT,
        "EventSource": "ContainerAppController",
        "JobName": "",
        "Location": "West Europe",
        "Log": log,
        "OperationName": "ContainerAppSystemLogs",
        "Reason": reason,
        "ReplicaName": replica,
        "RevisionName": rev,
        "SourceSystem": "Azure",
        "Type": event_type,
        "_ResourceId": _resource_id(app),
        "_SubscriptionId": SUBSCRIPTION,
    }


# ---------------------------------------------------------------------------------------- TLS
def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetmon test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


# ---------------------------------------------------------------------------------------- the fake
_KQL = re.compile(
    r"\A(?P<table>[A-Za-z_][A-Za-z0-9_]*)\n"
    r"\| where TimeGenerated >= datetime\((?P<lo>[^)]+)\) and TimeGenerated < datetime\((?P<hi>[^)]+)\)\n"
    r"\| extend (?P<ing>[A-Za-z_]\w*) = ingestion_time\(\), (?P<item>[A-Za-z_]\w*) = "
    r'column_ifexists\("_ItemId", ""\)\n'
    r"\| (?:top (?P<n>\d+) by TimeGenerated asc|sort by TimeGenerated asc)\Z"
)


def _us(s: str) -> int:
    t = dt.datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    d = t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (d.days * 86400 + d.seconds) * US + d.microseconds


def service_time(us: int) -> str:
    """A datetime as the service writes it: 7 fractional digits and Z."""
    t = dt.datetime.fromtimestamp(us // US, dt.UTC).replace(microsecond=us % US)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


@dataclass
class Stored:
    values: dict[str, Any]
    tg: int
    ingested: int
    item_id: str


@dataclass
class Fault:
    """What the next query gets instead of (or besides) its answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    partial_rows: int | None = None  # a PartialError result keeping this many rows
    delay: float = 0.0


def _error(code: str, message: str, inner: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "code": code, "correlationId": str(uuid.uuid4())}
    if inner:
        err["innererror"] = inner
    return {"error": err}


class FakeAzure:
    """The query API and token endpoints on 127.0.0.1; ``url`` is the query endpoint (``endpoint:`` setting)."""

    def __init__(self, directory: Path, workspace_id: str = TENANT) -> None:
        self.workspace_id = workspace_id
        self.ca, cert, key = make_tls(directory)
        self.tables: dict[str, list[Stored]] = {name: [] for name in SCHEMAS}
        self.faults: deque[Fault] = deque()
        self.item_ids = True  # False: a table without _ItemId (column_ifexists answers "")
        self.queries: list[dict[str, Any]] = []  # every query request received (body + Prefer header)
        self.token_requests: list[str] = []  # "managed_identity" / "client_credentials"
        self.tokens: dict[str, str] = {}  # issued access token -> resource (audience)
        self.identity_header = secrets.token_hex(16)  # IDENTITY_HEADER: a secret too
        self.client_id = str(uuid.uuid4())
        self.client_secret = "sp-" + secrets.token_urlsafe(24)
        self.lock = threading.Lock()
        self.now: Callable[[], float] = time.time
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._tls = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._tls.daemon_threads = True
        self._tls.socket = ctx.wrap_socket(self._tls.socket, server_side=True)
        self._mi = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._mi.daemon_threads = True
        self.url = f"https://127.0.0.1:{self._tls.server_address[1]}"
        self.identity_endpoint = f"http://127.0.0.1:{self._mi.server_address[1]}/msi/token"
        self.authority = f"127.0.0.1:{self._tls.server_address[1]}"
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in (self._tls, self._mi)
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        for s in (self._tls, self._mi):
            s.shutdown()
            s.server_close()

    # ------------------------------------------------------------------------------ test controls
    def ingest(self, table: str, *rows: dict[str, Any], ingested: int | None = None) -> None:
        """Make rows queryable (TimeGenerated in µs in the row); ``ingested``: their ingestion_time()."""
        with self.lock:
            for r in rows:
                tg = int(r["TimeGenerated"])
                self.tables[table].append(
                    Stored(dict(r), tg, tg + 30 * US if ingested is None else ingested, str(uuid.uuid4()))
                )

    def fail_next(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def query_count(self) -> int:
        with self.lock:
            return len(self.queries)

    # ------------------------------------------------------------------------------ answers
    def answer_query(
        self, workspace: str, body: dict[str, Any], prefer: str
    ) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.queries.append({"workspace": workspace, "prefer": prefer, **body})
            fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status != 200:
            return fault.status, fault.headers, fault.body or _error("ServiceError", "fault injected")
        if workspace != self.workspace_id:
            return 404, {}, _error("WorkspaceNotFoundError", f"Workspace {workspace} not found")
        m = _KQL.match(str(body.get("query", "")))
        if m is None:
            return (
                400,
                {},
                _error(
                    "BadArgumentError",
                    "The request had some invalid properties",
                    {"code": "SyntaxError", "message": "A recognition error occurred in the query."},
                ),
            )
        table = m["table"]
        if table not in SCHEMAS:
            return (
                400,
                {},
                _error(
                    "BadArgumentError",
                    "The request had some invalid properties",
                    {
                        "code": "SemanticError",
                        "message": "A semantic error occurred.",
                        "innererror": {
                            "code": "SEM0100",
                            "message": f"'where' operator: Failed to resolve table or column expression named '{table}'",
                        },
                    },
                ),
            )
        lo, hi = _us(m["lo"]), _us(m["hi"])
        span = body.get("timespan")
        if span:  # the API's own TimeGenerated filter (start/end)
            a, b = (_us(x) for x in span.split("/"))
            lo, hi = max(lo, a), min(hi, b + 1)
        with self.lock:
            rows = sorted((s for s in self.tables[table] if lo <= s.tg < hi), key=lambda s: s.tg)
        if m["n"] is not None:
            rows = rows[: int(m["n"])]
        partial = fault is not None and fault.partial_rows is not None
        if partial:
            assert fault is not None and fault.partial_rows is not None
            rows = rows[: fault.partial_rows]
        schema = SCHEMAS[table]
        columns = [{"name": c, "type": t} for c, t in schema]
        columns += [{"name": m["ing"], "type": "datetime"}, {"name": m["item"], "type": "string"}]
        out = []
        for s in rows:
            vals = [service_time(s.tg) if c == "TimeGenerated" else s.values.get(c) for c, _ in schema]
            out.append([*vals, service_time(s.ingested), s.item_id if self.item_ids else ""])
        result: dict[str, Any] = {"tables": [{"name": "PrimaryResult", "columns": columns, "rows": out}]}
        if partial:
            result["error"] = {
                "code": "PartialError",
                "message": "There were some errors when processing your query.",
                "details": [
                    {
                        "code": "EngineError",
                        "message": "Something went wrong processing your query on the server.",
                        "innererror": {
                            "code": "-2133196797",
                            "message": "Query result set has exceeded the internal data size limit 67108864"
                            " (E_QUERY_RESULT_SET_TOO_LARGE; see https://aka.ms/kustoqueryfailures)",
                            "severity": 2,
                            "severityName": "Error",
                        },
                    }
                ],
            }
        return 200, {}, result

    def issue(self, resource: str, kind: str) -> str:
        token = "tok-" + secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = resource
            self.token_requests.append(kind)
        return token

    def authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        with self.lock:
            resource = self.tokens.get(header[len("Bearer ") :])
        return resource is not None and resource.rstrip("/") == self.url


def _handler(fake: FakeAzure) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client gave up (a timeout test)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/msi/token":  # Container Apps / App Service managed identity
                if self.headers.get("X-IDENTITY-HEADER") != fake.identity_header:
                    self._send(
                        401, {"statusCode": 401, "message": "Unauthorized request: bad identity header"}
                    )
                    return
                resource = q.get("resource", "")
                token = fake.issue(resource, "managed_identity")
                self._send(
                    200,
                    {
                        "access_token": token,
                        "expires_on": str(int(time.time()) + 3600),
                        "resource": resource,
                        "token_type": "Bearer",
                        "client_id": fake.client_id,
                    },
                )
                return
            m = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", url.path)
            if m:
                base = f"{fake.url}/{m[1]}"
                self._send(
                    200,
                    {
                        "token_endpoint": f"{base}/oauth2/v2.0/token",
                        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                        "issuer": f"{base}/v2.0",
                        "token_endpoint_auth_methods_supported": [
                            "client_secret_post",
                            "client_secret_basic",
                        ],
                    },
                )
                return
            self._send(404, _error("PathNotFoundError", f"The requested path does not exist: {url.path}"))

        def do_POST(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            raw = self._body()
            m = re.fullmatch(r"/v1/workspaces/([^/]+)/query", url.path)
            if m:
                if not fake.authorized(self.headers.get("Authorization")):
                    self._send(
                        401, _error("AuthorizationRequiredError", "Valid authentication was not provided")
                    )
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, _error("BadArgumentError", "The request body is not JSON"))
                    return
                status, headers, result = fake.answer_query(m[1], body, self.headers.get("Prefer", ""))
                self._send(status, result, headers)
                return
            m = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", url.path)
            if m:  # client credentials (a service principal)
                form = dict(urllib.parse.parse_qsl(raw.decode()))
                if form.get("client_id") != fake.client_id or form.get("client_secret") != fake.client_secret:
                    self._send(
                        401,
                        {
                            "error": "invalid_client",
                            "error_description": "AADSTS7000215: Invalid client secret provided.",
                            "error_codes": [7000215],
                        },
                    )
                    return
                scope = form.get("scope", "").split(" ")[0]
                token = fake.issue(scope.removesuffix("/.default"), "client_credentials")
                self._send(
                    200,
                    {
                        "token_type": "Bearer",
                        "expires_in": 3599,
                        "ext_expires_in": 3599,
                        "access_token": token,
                    },
                )
                return
            self._send(404, _error("PathNotFoundError", f"The requested path does not exist: {url.path}"))

    return Handler
