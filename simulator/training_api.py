"""The demo training platform's two outside interfaces: retraining requests in, job outcomes out.

**Training API** (``TrainingApi``): an HTTP server on 127.0.0.1:``demo.training_api_port`` (default 9721,
0: off) where anything (a fleetmon action, ``curl``) asks for a model to be retrained. The contract is in
docs/formats.md ("Training API"):

- ``POST /train`` with ``{"customer", "building", "energy", "model"}`` (required strings) and optional
  ``reason``, ``requested_by``, ``request_id`` strings answers ``202 {"job_id": <uuid>, "status": "accepted"}``;
  ``400`` for a body that is not such an object, ``404`` for a model not in the fleet, ``413`` for a body over
  64 KiB, ``429`` (with ``Retry-After``) while ``demo.training_api_max_pending`` accepted requests have not
  finished training yet;
- ``GET /requests``: the last 1000 accepted requests, newest last, with their ``job_id`` and ``status``
  (``accepted`` → ``training`` → ``finished`` / ``failed``); ``GET /-/healthy``: 200.

The HTTP threads only validate and enqueue (``RetrainQueue.submit``); the simulator's ``step`` takes the
queue (``take``) and turns each request into a training job with trigger ``retrain`` (logged like every other
job; a retrain that finishes registers a new ``challenger`` version in MLflow), and reports its end
(``done``). Nothing the HTTP side does touches the simulator's state directly.

**Outcome pushes** (``OutcomePusher``): with ``demo.pushgateway_url`` set, each simulated training job that
finishes or fails is pushed with ``fleetmon.push.push_job`` (job ``training``, the model's four fleet labels,
outcome, duration, end time), from a worker thread with a bounded queue: a slow or absent Pushgateway never
stalls a step. A failed push is counted (``failed``) and logged at most once a minute; never raised. TLS and
basic auth to the gateway come from ``FLEETMON_PUSHGATEWAY_CA_FILE`` / ``_USERNAME`` / ``_PASSWORD_FILE``, as
for ``fleetmon push`` (the native stack sets them in secure mode).
"""

from __future__ import annotations

import errno
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetmon import push
from fleetmon.config import ModelKey
from simulator.world import rfc3339

log = logging.getLogger("fleetmon.demo.training_api")

MAX_BODY = 64 * 1024
DISCARD_MAX = 1024 * 1024  # an oversized body up to this size is read and dropped before the 413
HISTORY = 1000
REQUIRED = ("customer", "building", "energy", "model")
OPTIONAL = ("reason", "requested_by", "request_id")
TRIGGER = "retrain"
PUSH_JOB = "training"
LANDING = (
    "fleetmon demo training API\n\n"
    'POST /train        {"customer", "building", "energy", "model", "reason", "requested_by", "request_id"}\n'
    "                   -> 202 {job_id, status}; 400 bad body, 404 unknown model, 413 too big, 429 busy\n"
    "GET  /requests     the last 1000 accepted requests (newest last) and their status\n"
    "GET  /-/healthy    200\n\n"
    "Contract: docs/formats.md, 'Training API (retraining requests)'.\n"
)


class Busy(Exception):
    """Too many accepted requests have not finished training: try again later."""


@dataclass
class RetrainRequest:
    job_id: str
    key: ModelKey
    received: float  # wall time it was accepted
    reason: str | None = None
    requested_by: str | None = None
    request_id: str | None = None
    status: str = "accepted"  # accepted -> training -> finished | failed

    def record(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "received_at": rfc3339(self.received),
            **self.key.labels(),
            "reason": self.reason,
            "requested_by": self.requested_by,
            "request_id": self.request_id,
        }


class RetrainQueue:
    """The thread-safe hand-off between the HTTP threads (``submit``) and the simulator's step (``take``,
    ``done``). At most ``max_pending`` accepted requests wait (queued or training) at once."""

    def __init__(self, models: Iterable[ModelKey], max_pending: int, history: int = HISTORY) -> None:
        self.models = {(m.customer, m.building, m.energy, m.model): m for m in models}
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._queued: list[RetrainRequest] = []
        self._open: dict[str, RetrainRequest] = {}  # accepted, not finished: job id -> request
        self._history: deque[RetrainRequest] = deque(maxlen=history)

    def model(self, customer: str, building: str, energy: str, model: str) -> ModelKey | None:
        return self.models.get((customer, building, energy, model))

    def submit(
        self,
        key: ModelKey,
        reason: str | None = None,
        requested_by: str | None = None,
        request_id: str | None = None,
    ) -> RetrainRequest:
        """Accept a request for ``key`` (a fleet model); raises ``Busy`` when ``max_pending`` are open."""
        req = RetrainRequest(str(uuid.uuid4()), key, time.time(), reason, requested_by, request_id)
        with self._lock:
            if len(self._open) >= self.max_pending:
                raise Busy(
                    f"{len(self._open)} retraining requests are waiting (demo.training_api_max_pending)"
                )
            self._open[req.job_id] = req
            self._queued.append(req)
            self._history.append(req)
        return req

    def take(self) -> list[RetrainRequest]:
        """The requests accepted since the last call, oldest first, now ``training``."""
        with self._lock:
            taken, self._queued = self._queued, []
            for r in taken:
                r.status = "training"
        return taken

    def done(self, job_id: str, ok: bool) -> None:
        """The training job of ``job_id`` ended: it no longer counts as waiting."""
        with self._lock:
            req = self._open.pop(job_id, None)
            if req is not None:
                req.status = "finished" if ok else "failed"

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._open)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.record() for r in self._history]


def parse_request(body: bytes) -> dict[str, str | None]:
    """The fields of a ``POST /train`` body; raises ``ValueError`` with what is wrong."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"the body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the body must be a JSON object, not {type(doc).__name__}")
    out: dict[str, str | None] = {}
    for k in REQUIRED:
        v = doc.get(k)
        if v is None:
            raise ValueError(f"missing field {k!r} (required: {', '.join(REQUIRED)})")
        if not isinstance(v, str) or not v:
            raise ValueError(f"field {k!r} must be a non-empty string")
        out[k] = v
    for k in OPTIONAL:
        v = doc.get(k)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"field {k!r} must be a string")
        out[k] = v
    return out  # other keys are ignored


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "fleetmon-demo-training-api"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that stalls mid-request does not hold a thread for long

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = (json.dumps(doc) + "\n").encode() if not isinstance(doc, str) else doc.encode()
        self.send_response(status)
        ctype = "text/plain; charset=utf-8" if isinstance(doc, str) else "application/json"
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, msg: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": msg}, headers)

    def _discard(self, n: int) -> None:
        try:
            while n > 0:
                chunk = self.rfile.read(min(n, 65536))
                if not chunk:
                    return
                n -= len(chunk)
        except OSError:  # the client gave up (or the socket timed out): the answer may still get through
            pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/-/healthy":
            self._send(200, "OK\n")
        elif path == "/requests":
            self._send(200, self.server.queue.records())
        elif path == "/":
            self._send(200, LANDING)
        elif path == "/train":
            self._error(405, "use POST /train", {"Allow": "POST"})
        else:
            self._error(404, f"no such endpoint {path!r} (POST /train, GET /requests, GET /-/healthy)")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/train":
            # The body is not read: do not let it be taken for the next request on this connection.
            self.close_connection = True
            if path in ("/requests", "/-/healthy", "/"):
                self._error(405, f"use GET {path}", {"Allow": "GET"})
            else:
                self._error(404, f"no such endpoint {path!r} (POST /train)")
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._error(411, "send the body with a Content-Length, not chunked")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(400, "bad Content-Length")
            return
        if length > MAX_BODY:
            self.close_connection = True
            if length <= DISCARD_MAX:
                # Read it away first: closing on unread data resets the connection, and the client might
                # never see the 413.
                self._discard(length)
            self._error(413, f"the body is {length} bytes; at most {MAX_BODY}")
            return
        body = self.rfile.read(length) if length else b""
        try:
            fields = parse_request(body)
        except ValueError as e:
            self._error(400, str(e))
            return
        q = self.server.queue
        names = [str(fields.pop(k)) for k in REQUIRED]
        key = q.model(*names)
        if key is None:
            what = " ".join(f"{k}={v}" for k, v in zip(REQUIRED, names, strict=True))
            self._error(404, f"no model {what} in the fleet")
            return
        try:
            req = q.submit(key, fields["reason"], fields["requested_by"], fields["request_id"])
        except Busy as e:
            self._error(429, f"{e}; try again later", {"Retry-After": str(self.server.retry_after)})
            return
        log.info(
            "retraining requested: job_id=%s %s/%s %s %s by %r (%r)",
            req.job_id,
            key.customer,
            key.building,
            key.energy,
            key.model,
            req.requested_by,
            req.reason,
        )
        self._send(202, {"job_id": req.job_id, "status": "accepted"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], q: RetrainQueue, retry_after: int) -> None:
        self.queue = q
        self.retry_after = retry_after
        super().__init__(addr, _Handler)


class TrainingApi:
    """The HTTP server of the training API, on a background thread."""

    def __init__(self, q: RetrainQueue, port: int, host: str = "127.0.0.1", retry_after: int = 5) -> None:
        self.queue = q
        self.host = host
        self.port = port
        self.retry_after = retry_after
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> bool:
        """Listen and serve; False (and an error logged, nothing raised) when the port cannot be had."""
        try:
            self._server = _Server((self.host, self.port), self.queue, self.retry_after)
        except OSError as e:
            why = "the port is in use by another process" if e.errno == errno.EADDRINUSE else str(e)
            log.error(
                "training API: cannot listen on %s:%d (%s); retraining requests are off, the simulator "
                "runs on (free the port or set demo.training_api_port, 0 = off)",
                self.host,
                self.port,
                why,
            )
            self._server = None
            return False
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="demo-training-api",
            daemon=True,
        )
        self._thread.start()
        log.info("training API on %s (POST /train, GET /requests)", self.url)
        return True

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None


# ------------------------------------------------------------------------------------------- pushes
PushFn = Callable[..., None]


class OutcomePusher:
    """Pushes training outcomes to the Pushgateway from its own thread (bounded queue, never raises)."""

    def __init__(
        self,
        gateway: str,
        job: str = PUSH_JOB,
        timeout: float = 5.0,
        max_queue: int = 10_000,
        log_every: float = 60.0,
        push_fn: PushFn = push.push_job,
    ) -> None:
        self.gateway = gateway
        self.job = job
        self.timeout = timeout
        self.log_every = log_every
        self.push_fn = push_fn
        self.queue: queue.Queue[tuple[ModelKey, str, float, float] | None] = queue.Queue(max_queue)
        self.pushed = 0
        self.failed = 0
        self.dropped = 0  # the queue was full (the gateway far behind)
        self._unlogged = 0  # failures since the last logged one
        self._last_log = -float("inf")
        self._log_lock = threading.Lock()
        self._idle = threading.Condition()
        self._busy = 0  # submitted and not yet handled
        self.thread = threading.Thread(target=self._loop, name="demo-pushgateway", daemon=True)

    def start(self) -> None:
        self.thread.start()
        log.info("pushing training outcomes to the Pushgateway at %s (job %s)", self.gateway, self.job)

    def submit(self, key: ModelKey, outcome: str, duration: float, ended_at: float) -> None:
        """Queue one job's outcome (success / failure); never blocks."""
        with self._idle:
            self._busy += 1
        try:
            self.queue.put_nowait((key, outcome, duration, ended_at))
        except queue.Full:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()
            self.dropped += 1
            self._failure(f"the push queue is full ({self.queue.maxsize}): dropped a training outcome")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted outcome was pushed or failed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Push what is queued (for up to ``timeout`` seconds), then stop."""
        self.wait_idle(timeout)
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass
        if self.thread.is_alive():
            self.thread.join(1.0)

    def _failure(self, msg: str) -> None:
        """Log a failure, at most once per ``log_every`` seconds (the others are counted in the next line)."""
        with self._log_lock:
            self._unlogged += 1
            now = time.monotonic()
            if now - self._last_log < self.log_every:
                return
            more = f" ({self._unlogged - 1} more since the last report)" if self._unlogged > 1 else ""
            self._last_log = now
            self._unlogged = 0
        log.error("%s%s; %d failed so far, the simulator runs on", msg, more, self.failed + self.dropped)

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            key, outcome, duration, ended_at = item
            try:
                self.push_fn(
                    self.job,
                    key,
                    outcome=outcome,
                    duration=duration,
                    gateway=self.gateway,
                    ended_at=ended_at,
                    timeout=self.timeout,
                )
                self.pushed += 1
            except Exception as e:  # PushError, a bad CA file...: counted and logged, never raised
                self.failed += 1
                self._failure(f"training outcome not pushed: {e}")
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
