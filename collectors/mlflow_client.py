"""A small MLflow REST client for the exporter: explicit timeouts, retries with backoff, counted requests.

Why not ``mlflow.MlflowClient``: its timeout and retry settings are process-wide environment variables
(``MLFLOW_HTTP_REQUEST_TIMEOUT`` ...), it hides how many HTTP requests it makes (the exporter counts every
attempt, per endpoint and status code) and it turns every run into entity objects, which is measurably slower
for tens of thousands of runs. The REST API is stable and documented; this module speaks the few endpoints the
exporter needs and nothing else.

Every error is raised as ``MlflowError`` with a stable message naming what was asked ("failed to search MLflow
runs: HTTP 500 from ..."), so the exporter can log a cause once instead of once per poll.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import requests

from fleetmon.config import MlflowConfig, redact_url

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"
# Server-side limits (mlflow/store/tracking/__init__.py, mlflow/store/model_registry/__init__.py).
RUNS_PAGE_SIZE = 1000  # max 50,000; 1,000 is MLflow's own default and keeps responses a few MB
EXPERIMENTS_PAGE_SIZE = 1000
REGISTERED_MODELS_PAGE_SIZE = 1000  # the server's maximum
MODEL_VERSIONS_PAGE_SIZE = 10000  # the server's default (max 200,000)
# Status codes worth retrying: the server or a proxy in front of it is overloaded or restarting.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class MlflowError(Exception):
    """MLflow could not be read (down, slow, 5xx, garbage). The message is stable for a given cause."""


class MlflowRest:
    """``requests.Session`` wrapper for the MLflow REST API, counting each HTTP attempt."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # What messages show: the URL without a password in its user info (http://user:***@host).
        self.shown_url = redact_url(self.base_url) or "<the MLflow URL>"
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif username:
            self.session.auth = (username, password or "")
        # Page sizes per endpoint (attributes so tests and benchmarks can shrink them).
        self.runs_page_size = RUNS_PAGE_SIZE
        self.model_versions_page_size = MODEL_VERSIONS_PAGE_SIZE
        self._lock = threading.Lock()
        # (endpoint, code) -> attempts since start; ``code`` is the HTTP status or "error" (no answer).
        self.requests_total: Counter[tuple[str, str]] = Counter()
        # endpoint -> seconds spent waiting for MLflow (answers and failures alike)
        self.seconds_total: dict[str, float] = {}

    @classmethod
    def from_config(cls, m: MlflowConfig) -> MlflowRest:
        """A client with the ``mlflow`` section's URL, timeout, retries and credentials (the config has
        taken MLFLOW_TRACKING_URI / _TOKEN / _USERNAME / _PASSWORD from the environment already)."""
        return cls(
            m.tracking_uri,
            timeout=m.timeout_seconds,
            max_retries=m.max_retries,
            backoff=m.retry_backoff_seconds,
            token=m.token,
            username=m.username,
            password=m.password,
        )

    def close(self) -> None:
        self.session.close()

    def request_count(self) -> int:
        with self._lock:
            return sum(self.requests_total.values())

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self.requests_total)

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return dict(self.seconds_total)

    def _count(self, endpoint: str, code: str, started: float) -> None:
        with self._lock:
            self.requests_total[(endpoint, code)] += 1
            self.seconds_total[endpoint] = (
                self.seconds_total.get(endpoint, 0.0) + time.perf_counter() - started
            )

    # ---------------------------------------------------------------------------------------- core
    def call(
        self,
        method: str,
        endpoint: str,
        what: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One API call with retries; returns the decoded JSON object or raises ``MlflowError``."""
        url = f"{self.base_url}{API}/{endpoint}"
        shown = f"{self.shown_url}{API}/{endpoint}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 10.0))
            started = time.perf_counter()
            try:
                resp = self.session.request(method, url, params=params, json=body, timeout=self.timeout)
                content = resp.content  # read the body inside the timing and the error handling
            except requests.Timeout:
                self._count(endpoint, "error", started)
                last = f"no answer from {self.shown_url} within {self.timeout:g}s"
                continue
            except requests.ConnectionError as e:
                self._count(endpoint, "error", started)
                last = f"cannot connect to {self.shown_url} ({root_cause(e)})"
                continue
            except requests.RequestException as e:
                self._count(endpoint, "error", started)
                last = f"request to {self.shown_url} failed ({type(e).__name__})"
                continue
            self._count(endpoint, str(resp.status_code), started)
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code} from {shown}"
                resp.close()
                continue
            if resp.status_code != 200:
                # 4xx: retrying will not help; the message is MLflow's own.
                raise MlflowError(
                    f"failed to {what}: HTTP {resp.status_code} from {shown}: {_mlflow_message(resp)}"
                )
            try:
                data = json.loads(content)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's limit
                last = f"malformed JSON from {shown}"
                continue
            if not isinstance(data, dict):
                last = f"malformed JSON from {shown} (not an object)"
                continue
            return data
        raise MlflowError(f"failed to {what}: {last} (after {self.max_retries + 1} attempts)")

    def _pages(
        self,
        method: str,
        endpoint: str,
        what: str,
        key: str,
        args: dict[str, Any],
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield each page's list under ``key``, following ``next_page_token``."""
        token: str | None = None
        while True:
            a = dict(args)
            if token:
                a["page_token"] = token
            if method == "GET":
                data = self.call("GET", endpoint, what, params=a)
            else:
                data = self.call("POST", endpoint, what, body=a)
            items = data.get(key, [])
            if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
                raise MlflowError(f"failed to {what}: malformed answer ({key!r} is not a list of objects)")
            yield items
            token = data.get("next_page_token") or None
            if not token:
                return

    # ---------------------------------------------------------------------------------- endpoints
    def search_experiments(self, filter_: str = "") -> list[dict[str, Any]]:
        args: dict[str, Any] = {"max_results": EXPERIMENTS_PAGE_SIZE, "view_type": "ACTIVE_ONLY"}
        if filter_:
            args["filter"] = filter_
        out: list[dict[str, Any]] = []
        for page in self._pages(
            "POST", "experiments/search", "search MLflow experiments", "experiments", args
        ):
            out.extend(page)
        return out

    def search_runs(
        self, experiment_ids: list[str], filter_: str = "", run_view_type: str = "ACTIVE_ONLY"
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of runs (info + latest metrics, params, tags) of the given experiments."""
        if not experiment_ids:
            return iter(())
        args: dict[str, Any] = {
            "experiment_ids": experiment_ids,
            "max_results": self.runs_page_size,
            "run_view_type": run_view_type,
        }
        if filter_:
            args["filter"] = filter_
        what = "search MLflow runs" + (f" ({filter_})" if filter_ else "")
        return self._pages("POST", "runs/search", what, "runs", args)

    def search_registered_models(self) -> Iterator[list[dict[str, Any]]]:
        args = {"max_results": REGISTERED_MODELS_PAGE_SIZE, "order_by": ["name ASC"]}
        return self._pages(
            "GET", "registered-models/search", "search MLflow registered models", "registered_models", args
        )

    def search_model_versions(self, filter_: str = "") -> Iterator[list[dict[str, Any]]]:
        args: dict[str, Any] = {"max_results": self.model_versions_page_size, "order_by": ["name ASC"]}
        if filter_:
            args["filter"] = filter_
        return self._pages(
            "GET", "model-versions/search", "search MLflow model versions", "model_versions", args
        )


FLEET_KEYS = ("customer", "building", "energy", "model")


def find_registered_model(rest: MlflowRest, m: MlflowConfig, labels: dict[str, str]) -> dict[str, Any]:
    """The registered model of a fleet model (``labels``: its four fleet labels): by the fleet tags
    (``mlflow.tag_keys``), else by ``mlflow.registered_model_pattern``, as the MLflow exporter maps them.
    Raises ``MlflowError`` when there is none, more than one, or MLflow cannot be read."""
    by_tags = " AND ".join(f"tags.`{m.tag_keys[k]}` = '{quote_filter(labels[k])}'" for k in FLEET_KEYS)
    name = m.registered_model_pattern.format(**{k: labels[k] for k in FLEET_KEYS})
    for flt in (by_tags, f"name = '{quote_filter(name)}'"):
        found = rest.call(
            "GET",
            "registered-models/search",
            "search MLflow registered models",
            params={"filter": flt, "max_results": 2},
        )
        rms = found.get("registered_models") or []
        if len(rms) > 1:
            raise MlflowError(f"more than one registered model matches {flt}")
        if rms:
            return dict(rms[0])
    raise MlflowError(
        "no registered model for {} (by tags or by name)".format("/".join(labels[k] for k in FLEET_KEYS))
    )


def quote_filter(s: str) -> str:
    """A value inside a single-quoted MLflow filter string."""
    return s.replace("\\", "\\\\").replace("'", "\\'")


def root_cause(e: BaseException) -> str:
    """The innermost reason (e.g. 'Connection refused'), without addresses of objects, so it is stable."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    text = str(e)
    if "Connection refused" in text or isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if "Connection reset" in text or isinstance(e, ConnectionResetError):
        return "connection reset"
    if "RemoteDisconnected" in type(e).__name__ or "closed connection" in text:
        return "connection closed by the server"
    return type(e).__name__


def _mlflow_message(resp: requests.Response) -> str:
    try:
        data = resp.json()
        return str(data.get("message", ""))[:300] if isinstance(data, dict) else ""
    except ValueError:
        return resp.text[:300]
