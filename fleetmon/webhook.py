"""``fleetmon webhook``: a small Alertmanager webhook receiver that keeps what it gets, and shows it.

Alertmanager POSTs its notifications (webhook payload version 4) to ``/alerts``. Each accepted notification
is appended, with the time it arrived, as one JSON line to ``<data-dir>/notifications.jsonl`` and kept in
memory; on start-up the file is read back, so notifications survive a restart.

- ``POST /alerts``        receive a notification (``POST /`` is accepted too)
- ``POST /actions``       alerts to act on (retraining requests, promotion: ``fleetmon.actions``); checked
                          like a notification, not stored with them, decided on a worker thread
- ``GET /actions``        the newest decisions (``?limit=N``, default 200), oldest first: the audit trail
- ``GET /notifications``  the stored notifications as a JSON array, oldest first
                          (``?limit=N`` the newest N; ``?status=firing|resolved``; ``?alertname=X``)
- ``GET /``               the same as a readable HTML page, newest first
- ``GET /metrics``        the receiver's own metrics; ``GET /-/healthy``, ``/-/ready``

``--web.config.file`` (exporter-toolkit's format, see ``fleetmon.webconfig``) serves TLS and/or basic auth;
basic auth then covers every path, ``/-/healthy`` and ``POST /alerts`` included (Alertmanager's
``webhook_configs[].http_config`` sends the credentials).

Bad input (not JSON, not an Alertmanager payload, too large) is answered 400, counted in
``fleetmon_webhook_rejected_total{reason}`` and kept, with the reason, in ``<data-dir>/quarantine.jsonl``
(a truncated copy of the body). A damaged line in the notifications file (e.g. a crash mid-write) is
counted and quarantined the same way when the file is read back, never a crash.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleetmon.actions import Actions
from fleetmon.webconfig import WebServing, WebThreadingHTTPServer, guard_handler, resolve

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # Alertmanager truncates long alert lists long before this
QUARANTINE_SAMPLE_BYTES = 4096
# Only the newest notifications are held in memory and served; the file keeps everything.
MEMORY_LIMIT = 10_000
# Bounded label values for the metrics.
STATUSES = ("firing", "resolved")
REASONS = (
    "too_large",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "bad_alerts",
    "bad_status",
    "bad_field",
    "corrupt_stored_line",
    "timeout",
)
# A client that declares a body and does not send it in this long is hung up on (reason "timeout"): a
# connection that never finishes must not hold a server thread forever.
REQUEST_TIMEOUT_SECONDS = 30.0
REQUIRED_FIELDS = ("version", "status", "receiver", "alerts")
# Webhook payload version 4 (Alertmanager's template.Data): what each field is when present. Label sets and
# annotations are objects of strings, times RFC 3339 (Go's time.Time, e.g. 2026-11-22T10:01:00.123456789Z).
STRING_FIELDS = ("version", "receiver", "groupKey", "externalURL")
STRING_MAP_FIELDS = ("groupLabels", "commonLabels", "commonAnnotations")
ALERT_STRING_FIELDS = ("generatorURL", "fingerprint")
ALERT_STRING_MAP_FIELDS = ("labels", "annotations")
ALERT_TIME_FIELDS = ("startsAt", "endsAt")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _is_string_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, str) for x in v.values())


def _has_lone_surrogate(payload: Any) -> bool:
    """Whether a string (key or value) holds a lone surrogate (JSON's "\\ud800"): text that is no Unicode."""
    stack = [payload]
    while stack:  # no recursion: the payload may be nested as deep as json.loads goes
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def validate(payload: Any) -> dict[str, Any]:
    """Check an Alertmanager webhook payload (version 4); raises ``Rejected`` naming the reason.

    Each field the format defines is checked when present, so that whatever is accepted is as Alertmanager
    sends it, and can be stored, served and rendered (GET / reads labels, annotations, statuses, text).
    """
    if not isinstance(payload, dict):
        raise Rejected("not_an_object", f"expected a JSON object, got {type(payload).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in payload]
    if missing:
        raise Rejected("missing_field", f"missing {', '.join(missing)}")
    if payload["status"] not in STATUSES:
        raise Rejected("bad_status", f"status must be firing or resolved, got {payload['status']!r}")
    alerts = payload["alerts"]
    if not isinstance(alerts, list) or not all(
        isinstance(a, dict) and isinstance(a.get("labels", {}), dict) for a in alerts
    ):
        raise Rejected("bad_alerts", "alerts must be a list of objects with a labels object")
    for i, a in enumerate(alerts):
        if "status" in a and a["status"] not in STATUSES:
            raise Rejected("bad_alerts", f"alerts[{i}].status must be firing or resolved")
        for f in ALERT_STRING_MAP_FIELDS:
            if f in a and not _is_string_map(a[f]):
                raise Rejected("bad_alerts", f"alerts[{i}].{f} must be an object of strings")
        for f in ALERT_STRING_FIELDS:
            if f in a and not isinstance(a[f], str):
                raise Rejected("bad_alerts", f"alerts[{i}].{f} must be a string")
        for f in ALERT_TIME_FIELDS:
            if f in a and not (isinstance(a[f], str) and RFC3339.fullmatch(a[f])):
                raise Rejected("bad_alerts", f"alerts[{i}].{f} must be an RFC 3339 time")
    for f in STRING_FIELDS:
        if not isinstance(payload.get(f, ""), str):
            raise Rejected("bad_field", f"{f} must be a string")
    for f in STRING_MAP_FIELDS:
        if f in payload and not _is_string_map(payload[f]):
            raise Rejected("bad_field", f"{f} must be an object of strings")
    if _has_lone_surrogate(payload):  # Go's encoder never writes one; the page could not be encoded
        raise Rejected("invalid_json", "a string holds a lone surrogate escape (not Unicode text)")
    return payload


class Store:
    """The notifications: appended to a JSON-lines file, the newest ones held in memory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / "notifications.jsonl"
        self.quarantine_path = data_dir / "quarantine.jsonl"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.items: deque[dict[str, Any]] = deque(maxlen=MEMORY_LIMIT)
        self.total_stored = 0
        # Counters of this process's life (Prometheus handles the reset at restart).
        self.received = dict.fromkeys(STATUSES, 0)
        self.alerts_received = dict.fromkeys(STATUSES, 0)
        self.rejected = dict.fromkeys(REASONS, 0)
        self.last_received_ts: float | None = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    if not isinstance(item, dict) or "received_at" not in item:
                        raise ValueError("not a stored notification")
                    # The same check as at POST (Rejected is a ValueError): a line edited by hand or stored
                    # by an older, laxer receiver must not break the page for every reader.
                    validate(item)
                except (ValueError, RecursionError) as e:
                    self.reject("corrupt_stored_line", f"{self.path}:{lineno}: {e}", line.encode())
                    continue
                self.items.append(item)
                self.total_stored += 1
        if self.items:
            self.last_received_ts = _parse_ts(self.items[-1]["received_at"])
        log.info("loaded %d stored notifications from %s", self.total_stored, self.path)

    def add(self, payload: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        item = {"received_at": _rfc3339(now), **payload}
        item["received_at"] = _rfc3339(now)  # ours, not a "received_at" of the payload (none in the format)
        line = json.dumps(item, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
            self.items.append(item)
            self.total_stored += 1
            status = payload["status"]
            self.received[status] += 1
            self.alerts_received[status] += len(payload["alerts"])
            self.last_received_ts = now
        return item

    def reject(self, reason: str, detail: str, body: bytes, size: int | None = None) -> None:
        """Count and quarantine bad input; ``size`` is the full length when only a sample was read."""
        record = {
            "time": _rfc3339(time.time()),
            "reason": reason,
            "detail": detail,
            "body": body[:QUARANTINE_SAMPLE_BYTES].decode("utf-8", errors="replace"),
            "body_bytes": len(body) if size is None else size,
        }
        with self._lock:
            self.rejected[reason] += 1
            with open(self.quarantine_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        log.warning("rejected a notification: %s: %s", reason, detail)

    def query(
        self, limit: int | None = None, status: str | None = None, alertname: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self.items)
        if status:
            items = [i for i in items if i.get("status") == status]
        if alertname:
            items = [
                i
                for i in items
                if any(a.get("labels", {}).get("alertname") == alertname for a in i.get("alerts", []))
                or i.get("groupLabels", {}).get("alertname") == alertname
            ]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items


class _MetricsCollector:
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        s = self.store
        notes = CounterMetricFamily(
            "fleetmon_webhook_notifications",
            "Alertmanager notifications received since the receiver started, by status.",
            labels=["status"],
        )
        alerts = CounterMetricFamily(
            "fleetmon_webhook_alerts",
            "Alerts carried by the notifications received since the receiver started, by status.",
            labels=["status"],
        )
        for st in STATUSES:
            notes.add_metric([st], s.received[st])
            alerts.add_metric([st], s.alerts_received[st])
        rejected = CounterMetricFamily(
            "fleetmon_webhook_rejected",
            "Requests or stored lines rejected, by reason (kept in quarantine.jsonl).",
            labels=["reason"],
        )
        for r in REASONS:
            rejected.add_metric([r], s.rejected[r])
        stored = GaugeMetricFamily(
            "fleetmon_webhook_notifications_stored",
            "Notifications kept in the notifications file (including those from before a restart).",
            value=s.total_stored,
        )
        yield notes
        yield alerts
        yield rejected
        yield stored
        if s.last_received_ts is not None:
            yield GaugeMetricFamily(
                "fleetmon_webhook_last_notification_timestamp_seconds",
                "Unix time the newest stored notification was received.",
                value=s.last_received_ts,
            )


class Receiver:
    """The HTTP server around a ``Store``; ``start()`` serves in a thread, ``close()`` stops it."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 9704,
        web: WebServing | None = None,
        actions: Actions | None = None,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.store = Store(data_dir)
        self.request_timeout = request_timeout
        self.actions = actions
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_MetricsCollector(self.store))
        if actions is not None:
            self.registry.register(actions)
        self.web = web
        self.httpd: ThreadingHTTPServer
        if web is None:
            self.httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        else:
            # TLS handshakes in the connection threads; the auth gate and headers on every request.
            self.httpd = WebThreadingHTTPServer((host, port), guard_handler(_make_handler(self)))
            self.httpd.web = web
            self.registry.register(web)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> Receiver:
        if self.actions is not None:
            self.actions.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="webhook-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
        if self.actions is not None:
            self.actions.close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    store = receiver.store

    class Handler(BaseHTTPRequestHandler):
        server_version = "fleetmon-webhook"
        timeout = receiver.request_timeout  # socket timeout of every read (StreamRequestHandler.setup)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj).encode(), "application/json")

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path not in ("/alerts", "/", "/actions"):
                self._json(404, {"error": "POST notifications to /alerts, alerts to act on to /actions"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                # Keep a sample, drain a bounded rest so the client reads our answer, then hang up.
                body = self.rfile.read(min(max(length, 0), QUARANTINE_SAMPLE_BYTES))
                left = min(max(length, 0), 16 * MAX_BODY_BYTES) - len(body)
                while left > 0 and (chunk := self.rfile.read(min(left, 65536))):
                    left -= len(chunk)
                store.reject("too_large", f"Content-Length {length} (limit {MAX_BODY_BYTES})", body, length)
                self.close_connection = True
                self._json(400, {"error": "too_large"})
                return
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                store.reject(
                    "timeout", f"Content-Length {length}, body not sent within {self.timeout:g} s", b""
                )
                self.close_connection = True
                return
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError) as e:  # nested too deep for the decoder: bad JSON too
                store.reject("invalid_json", str(e), body)
                self._json(400, {"error": "invalid_json", "detail": str(e)})
                return
            try:
                validate(payload)
            except Rejected as e:
                store.reject(e.reason, e.detail, body)
                self._json(400, {"error": e.reason, "detail": e.detail})
                return
            if path == "/actions":
                self._act(payload)
                return
            store.add(payload)
            self._json(200, {"status": "stored"})

        def _act(self, payload: dict[str, Any]) -> None:
            actions = receiver.actions
            if actions is None:
                self._json(404, {"error": "no actions configured"})
                return
            for alert in payload["alerts"]:
                if not actions.submit(alert):
                    # Alertmanager retries a 5xx; what was queued before is decided once (deduplicated).
                    self._json(503, {"error": "actions queue full"})
                    return
            self._json(200, {"status": "queued", "alerts": len(payload["alerts"])})

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path in ("/-/healthy", "/-/ready"):
                self._send(200, b"OK\n", "text/plain")
            elif url.path == "/metrics":
                self._send(200, generate_latest(receiver.registry), CONTENT_TYPE_LATEST)
            elif url.path == "/notifications":
                try:
                    limit = int(q["limit"]) if "limit" in q else None
                except ValueError:
                    self._json(400, {"error": "limit must be an integer"})
                    return
                self._json(200, store.query(limit, q.get("status"), q.get("alertname")))
            elif url.path == "/actions":
                try:
                    limit = int(q.get("limit", "200"))
                except ValueError:
                    self._json(400, {"error": "limit must be an integer"})
                    return
                recent = receiver.actions.recent_decisions(limit) if receiver.actions is not None else []
                self._json(200, recent)
            elif url.path == "/":
                items = store.query(int(q.get("limit", "200")) if q.get("limit", "").isdigit() else 200)
                self._send(200, render_html(items, store).encode(), "text/html; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain")

    return Handler


# ---------------------------------------------------------------------------------------------- HTML
def render_html(items: list[dict[str, Any]], store: Store) -> str:
    e = html.escape
    rows = []
    for n in reversed(items):  # newest first
        for a in n.get("alerts", []) or [{}]:
            labels = a.get("labels", {}) or {}
            ann = a.get("annotations", {}) or {}
            status = a.get("status", n.get("status", ""))
            where = " / ".join(
                str(labels[k]) for k in ("customer", "building", "energy", "model") if k in labels
            )
            links = []
            for key, text in (("dashboard_url", "dashboard"), ("runbook_url", "runbook")):
                url = str(ann.get(key, ""))
                if url.startswith(("http://", "https://", "/")):
                    links.append(f"<a href='{e(url, quote=True)}'>{text}</a>")
            gen = str(a.get("generatorURL", ""))
            if gen.startswith(("http://", "https://")):
                links.append(f"<a href='{e(gen, quote=True)}'>source</a>")
            rows.append(
                f"<tr class='{e(status)}'><td>{e(str(n.get('received_at', '')))}</td>"
                f"<td>{e(status)}</td><td>{e(str(labels.get('alertname', '')))}</td>"
                f"<td>{e(str(labels.get('severity', '')))}</td><td>{e(where)}</td>"
                f"<td>{e(str(ann.get('summary', '')))}<br><small>{e(str(ann.get('description', '')))}"
                f"</small></td><td>{e(str(n.get('receiver', '')))}</td><td>{' '.join(links)}</td></tr>"
            )
    rejected = sum(store.rejected.values())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fleetmon notifications</title>"
        "<meta http-equiv='refresh' content='15'><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;width:100%}"
        "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}"
        "tr.firing td:nth-child(2){color:#c4162a;font-weight:bold}tr.resolved td:nth-child(2){color:#37872d}"
        "</style></head><body><h1>fleetmon: Alertmanager notifications</h1>"
        f"<p>{store.total_stored} stored (newest {len(items)} shown, newest first); "
        f"{rejected} rejected since start. JSON: <a href='/notifications'>/notifications</a>, "
        "<a href='/metrics'>metrics</a>.</p>"
        "<table><tr><th>received</th><th>status</th><th>alert</th><th>severity</th>"
        "<th>customer / building / energy / model</th><th>summary</th><th>receiver</th><th>links</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_ts(s: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(s).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from fleetmon.config import ConfigError, default_config_path, load_config

    p = argparse.ArgumentParser(prog="fleetmon webhook", description=__doc__.split("\n\n")[0])
    p.add_argument("--config.file", dest="config_file", default=str(default_config_path()))
    p.add_argument(
        "--web.listen-address", dest="listen", help="host:port (default 127.0.0.1:stack.webhook_port)"
    )
    p.add_argument("--data-dir", help="where notifications are kept (default <stack.data_dir>/webhook)")
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=os.environ.get("FLEETMON_WEB_CONFIG_FILE"),
        help="web config file (TLS, basic auth) in exporter-toolkit's format "
        "(default stack.webhook_web_config_file)",
    )
    p.add_argument("--log.level", dest="log_level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = load_config(args.config_file)
        web_file = resolve(args.web_config_file, cfg.stack.webhook_web_config_file)
        web = WebServing(web_file) if web_file is not None else None
    except ConfigError as e:  # WebConfigError too: it names the web config file and key
        print(f"fleetmon: refusing to start: {e}", file=sys.stderr)
        return 2
    host, port = "127.0.0.1", cfg.stack.webhook_port
    if args.listen:
        h, _, prt = args.listen.rpartition(":")
        host, port = h or "0.0.0.0", int(prt)
    data_dir = Path(args.data_dir) if args.data_dir else cfg.stack.data_dir / "webhook"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    actions = Actions(cfg.actions, cfg.mlflow, data_dir)
    with Receiver(data_dir, host, port, web, actions).start() as r:
        scheme = web.scheme if web is not None else "http"
        log.info(
            "fleetmon webhook receiver on %s://%s:%d/ (POST /alerts), data in %s",
            scheme,
            host,
            r.port,
            data_dir,
        )
        stop.wait()
    return 0
