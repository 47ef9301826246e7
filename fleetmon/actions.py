"""Acting on alerts: retraining requests and champion promotion (docs/alerting.md "Actions").

Alertmanager sends the alerts that call for an action to the webhook receiver's ``POST /actions`` (a route of
its own with ``continue: true``, so the teams are notified as before, grouped by every label so each alert is
its own notification, repeated every 10 minutes while it fires). The receiver checks the payload as it checks
notifications, hands each firing alert to ``Actions.submit`` and answers at once: a worker thread decides and
acts, so a slow training API or MLflow never holds Alertmanager's request.

- **retrain** (``actions.retrain``): a firing alert named in ``alerts`` (ModelDataDrift,
  ModelErrorAboveBaseline) posts a retraining request for its model to the training API (docs/formats.md
  "Training API").
- **promote** (``actions.promote``): a firing ChallengerOutperformsChampion that has held for
  ``hold_seconds`` moves the ``champion`` alias in MLflow to the challenger version, after checking that the
  champion is still the version the verdict compared against and that the challenger version exists; the
  version gets ``fleetmon.promotion.*`` tags (when, from which version, by what, the evidence) and the
  registered model a ``fleetmon.last_promotion`` tag.

Both are off by default and dry-run first (``dry_run: true`` says what would be done and does nothing).
Every decision is one JSON line in ``<data-dir>/actions.jsonl`` (the audit trail) and counted in
``fleetmon_webhook_actions_total{action, outcome}``:

- ``requested`` / ``promoted``: done; ``dry_run``: it would have been done;
- ``deduplicated``: already done (or dry-run) for this model within ``min_interval_seconds``;
- ``rate_limited``: ``max_per_hour`` reached fleet-wide;
- ``held``: (promote) the verdict has not held for ``hold_seconds`` yet;
- ``stale``: (promote) the champion is no longer the version the verdict compared with;
- ``failed``: the training API or MLflow refused or could not be reached (the line says why); the next
  repeat of the alert tries again;
- ``invalid``: the alert lacks a label the action needs;
- ``disabled`` / ``ignored``: the action is off, or no action takes that alert (counted, no audit line).

What was done for which model, and the last hour's actions, persist in ``<data-dir>/actions-state.json``:
a restart neither repeats a request nor forgets a limit.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collectors.mlflow_client import MlflowError, MlflowRest, find_registered_model
from fleetmon.config import ActionsConfig, MlflowConfig, redact_url

log = logging.getLogger(__name__)

ACTIONS = ("retrain", "promote")
OUTCOMES = (
    "requested",
    "promoted",
    "dry_run",
    "deduplicated",
    "rate_limited",
    "held",
    "stale",
    "failed",
    "invalid",
    "disabled",
    "ignored",
)
FLEET_LABELS = ("customer", "building", "energy", "model")
QUEUE_LIMIT = 1000
HOUR = 3600.0
# What the audit and state files keep of an alert (never the whole payload: it may be large).
EVIDENCE_ANNOTATIONS = ("summary", "description", "dashboard_url", "runbook_url")


@dataclass(frozen=True)
class Job:
    alert: dict[str, Any]
    received: float


class Actions:
    """Decides and acts on alerts on a worker thread; see the module docstring."""

    def __init__(
        self,
        cfg: ActionsConfig,
        mlflow: MlflowConfig,
        data_dir: Path,
        *,
        clock: Any = time.time,
    ) -> None:
        self.cfg = cfg
        self.mlflow_cfg = mlflow
        self.clock = clock
        data_dir.mkdir(parents=True, exist_ok=True)
        self.audit_path = data_dir / "actions.jsonl"
        self.state_path = data_dir / "actions-state.json"
        self._lock = threading.Lock()
        self.counts = {(a, o): 0 for a in ACTIONS for o in OUTCOMES}
        self.state_errors = 0
        # action -> model key ("c/b/e/m") -> when it was last done (or dry-run); action -> recent done times
        self.last_done: dict[str, dict[str, float]] = {a: {} for a in ACTIONS}
        self.recent: dict[str, list[float]] = {a: [] for a in ACTIONS}
        self._load_state()
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._mlflow: MlflowRest | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> Actions:
        self._thread = threading.Thread(target=self._loop, name="webhook-actions", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(timeout=timeout)
            self._thread = None
        if self._mlflow is not None:
            self._mlflow.close()

    def submit(self, alert: dict[str, Any]) -> bool:
        """Queue one alert of a validated payload; False when the queue is full (answer 503: Alertmanager
        sends it again)."""
        try:
            self.queue.put_nowait(Job(alert, self.clock()))
        except queue.Full:
            return False
        return True

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued alert is decided (tests)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            try:
                if job is None:
                    return
                self.handle(job.alert)
            except Exception:  # one bad alert must not stop the actions
                log.exception("action on an alert failed unexpectedly")
            finally:
                self.queue.task_done()

    # ------------------------------------------------------------------------------------ deciding
    def handle(self, alert: dict[str, Any]) -> str:
        """Decide on one alert and act; returns the outcome (also counted and audited)."""
        labels = alert.get("labels") or {}
        name = labels.get("alertname", "")
        if alert.get("status", "firing") != "firing":
            return self._count("retrain" if name in self.cfg.retrain.alerts else "promote", "ignored")
        if name in self.cfg.retrain.alerts:
            return self._retrain(alert)
        if name == self.cfg.promote.alert:
            return self._promote(alert)
        return self._count("retrain", "ignored")

    def _retrain(self, alert: dict[str, Any]) -> str:
        c = self.cfg.retrain
        if not c.enabled:
            return self._count("retrain", "disabled")
        labels = alert["labels"]
        missing = [k for k in FLEET_LABELS if not labels.get(k)]
        if missing:
            return self._decide("retrain", alert, "invalid", f"no {', '.join(missing)} label")
        key = "/".join(labels[k] for k in FLEET_LABELS)
        limited = self._limited("retrain", key, c.min_interval_seconds, c.max_per_hour)
        if limited:
            return self._decide("retrain", alert, *limited)
        body = {
            **{k: labels[k] for k in FLEET_LABELS},
            "reason": labels.get("alertname", ""),
            "requested_by": "fleetmon",
            "request_id": f"{alert.get('fingerprint', '')}-{alert.get('startsAt', '')}",
        }
        if c.dry_run:
            self._done("retrain", key)
            return self._decide("retrain", alert, "dry_run", f"would POST {redact_url(c.url or '')}", request=body)
        assert c.url is not None  # the config requires it when enabled
        try:
            headers = {}
            if c.token_file is not None:
                headers["Authorization"] = "Bearer " + c.token_file.read_text().strip()
            resp = requests.post(
                c.url,
                json=body,
                headers=headers,
                timeout=c.timeout_seconds,
                verify=str(c.ca_file) if c.ca_file else True,
                allow_redirects=False,  # never carry the token elsewhere
            )
        except (OSError, requests.RequestException) as e:
            return self._decide("retrain", alert, "failed", f"training API: {type(e).__name__}", request=body)
        if not 200 <= resp.status_code < 300:
            why = f"training API answered HTTP {resp.status_code}"
            if resp.headers.get("Retry-After"):
                why += f" (Retry-After {resp.headers['Retry-After'][:32]})"
            return self._decide("retrain", alert, "failed", why, request=body)
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        job_id = answer.get("job_id") if isinstance(answer, dict) else None
        self._done("retrain", key)
        return self._decide(
            "retrain",
            alert,
            "requested",
            f"training API accepted (HTTP {resp.status_code})",
            request=body,
            job_id=job_id if isinstance(job_id, str) else None,
        )

    def _promote(self, alert: dict[str, Any]) -> str:
        c = self.cfg.promote
        if not c.enabled:
            return self._count("promote", "disabled")
        labels = alert["labels"]
        missing = [k for k in (*FLEET_LABELS, "champion_version", "challenger_version") if not labels.get(k)]
        if missing:
            return self._decide("promote", alert, "invalid", f"no {', '.join(missing)} label")
        starts = _parse_time(alert.get("startsAt"))
        if starts is None:
            return self._decide("promote", alert, "invalid", "no valid startsAt")
        held_for = self.clock() - starts
        if held_for < c.hold_seconds:
            return self._decide(
                "promote",
                alert,
                "held",
                f"verdict held {held_for:.0f}s of {c.hold_seconds:.0f}s",
            )
        key = "/".join(labels[k] for k in FLEET_LABELS)
        limited = self._limited("promote", key, c.min_interval_seconds, c.max_per_hour)
        if limited:
            return self._decide("promote", alert, *limited)
        champion, challenger = labels["champion_version"], labels["challenger_version"]
        try:
            name, current = self._registered_model(labels, c.alias)
            if current != champion:
                return self._decide(
                    "promote",
                    alert,
                    "stale",
                    f"{name}: {c.alias} is version {current or '(none)'}, the verdict compared "
                    f"version {champion}",
                )
            self._client().call(
                "GET",
                "model-versions/get",
                f"get version {challenger} of {name}",
                params={"name": name, "version": challenger},
            )
            what = f"{name}: move {c.alias} from version {champion} to {challenger}"
            if c.dry_run:
                self._done("promote", key)
                return self._decide("promote", alert, "dry_run", "would " + what, registered_model=name)
            self._move_alias(name, c.alias, champion, challenger, alert)
        except MlflowError as e:
            return self._decide("promote", alert, "failed", str(e))
        self._done("promote", key)
        log.warning("promoted %s (alert %s)", what, labels.get("alertname"))
        return self._decide("promote", alert, "promoted", what, registered_model=name)

    # ------------------------------------------------------------------------------------ MLflow
    def _client(self) -> MlflowRest:
        if self._mlflow is None:
            self._mlflow = MlflowRest.from_config(self.mlflow_cfg)
        return self._mlflow

    def _registered_model(self, labels: dict[str, str], alias: str) -> tuple[str, str | None]:
        """The registered model of this fleet model and the version ``alias`` points at."""
        rm = find_registered_model(self._client(), self.mlflow_cfg, labels)
        current = next(
            (str(a.get("version")) for a in rm.get("aliases") or [] if a.get("alias") == alias), None
        )
        return str(rm["name"]), current

    def _move_alias(
        self, name: str, alias: str, champion: str, challenger: str, alert: dict[str, Any]
    ) -> None:
        c = self._client()
        now = _rfc3339(self.clock())
        evidence = json.dumps(_evidence(alert), sort_keys=True)[:4000]  # MLflow tag values: 8,000 chars max
        c.call(
            "POST",
            "registered-models/alias",
            f"set alias {alias} of {name}",
            body={"name": name, "alias": alias, "version": challenger},
        )
        tags = {
            "fleetmon.promotion.time": now,
            "fleetmon.promotion.from_version": champion,
            "fleetmon.promotion.alias": alias,
            "fleetmon.promotion.by": f"fleetmon actions, alert {alert['labels'].get('alertname', '')}",
            "fleetmon.promotion.evidence": evidence,
        }
        for k, v in tags.items():
            c.call(
                "POST",
                "model-versions/set-tag",
                f"tag version {challenger} of {name}",
                body={"name": name, "version": challenger, "key": k, "value": v},
            )
        last = json.dumps({"time": now, "alias": alias, "from": champion, "to": challenger})
        c.call(
            "POST",
            "registered-models/set-tag",
            f"tag {name}",
            body={"name": name, "key": "fleetmon.last_promotion", "value": last},
        )

    # ------------------------------------------------------------------------------------ limits
    def _limited(
        self, action: str, key: str, min_interval: float, max_per_hour: int
    ) -> tuple[str, str] | None:
        now = self.clock()
        with self._lock:
            last = self.last_done[action].get(key)
            recent = [t for t in self.recent[action] if t > now - HOUR]
            self.recent[action] = recent
        if last is not None and now - last < min_interval:
            return "deduplicated", f"done {now - last:.0f}s ago (min_interval_seconds {min_interval:g})"
        if len(recent) >= max_per_hour:
            return "rate_limited", f"{len(recent)} in the last hour (max_per_hour {max_per_hour})"
        return None

    def _done(self, action: str, key: str) -> None:
        now = self.clock()
        with self._lock:
            self.last_done[action][key] = now
            self.recent[action].append(now)
        self._save_state()

    # ------------------------------------------------------------------------------------ records
    def _count(self, action: str, outcome: str) -> str:
        with self._lock:
            self.counts[(action, outcome)] += 1
        return outcome

    def _decide(self, action: str, alert: dict[str, Any], outcome: str, detail: str, **extra: Any) -> str:
        labels = alert.get("labels") or {}
        record = {
            "time": _rfc3339(self.clock()),
            "action": action,
            "outcome": outcome,
            "dry_run": getattr(self.cfg, action).dry_run,
            **{k: labels.get(k) for k in FLEET_LABELS},
            "detail": detail,
            **{k: v for k, v in extra.items() if v is not None},
            "alert": _evidence(alert),
        }
        try:
            with open(self.audit_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as e:  # the decision stands; the log line below still tells it
            log.error("cannot write the actions audit file %s: %s", self.audit_path, e)
        where = "/".join(str(labels.get(k, "?")) for k in FLEET_LABELS)
        level = logging.WARNING if outcome in ("failed", "invalid") else logging.INFO
        log.log(level, "action %s %s: %s (%s)", action, outcome, where, detail)
        return self._count(action, outcome)

    def _load_state(self) -> None:
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
            for a in ACTIONS:
                self.last_done[a] = {str(k): float(v) for k, v in raw["last_done"][a].items()}
                self.recent[a] = [float(t) for t in raw["recent"][a]]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            # Forgetting limits is safer than refusing to start; the damaged file is kept for a look.
            self.state_errors += 1
            self.last_done = {a: {} for a in ACTIONS}
            self.recent = {a: [] for a in ACTIONS}
            aside = self.state_path.with_name(
                f"{self.state_path.name}.corrupt-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
            )
            try:
                self.state_path.replace(aside)
            except OSError:
                aside = self.state_path
            log.error(
                "actions state %s unreadable (%s): starting without it, kept as %s", self.state_path, e, aside
            )

    def _save_state(self) -> None:
        with self._lock:
            doc = {"last_done": self.last_done, "recent": self.recent}
            text = json.dumps(doc, sort_keys=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.state_path)
        except OSError as e:
            self.state_errors += 1
            log.error("cannot save the actions state %s: %s", self.state_path, e)

    def recent_decisions(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` lines of the audit trail, oldest first (unreadable lines skipped)."""
        if limit <= 0:
            return []
        try:
            with open(self.audit_path, encoding="utf-8", errors="replace") as f:
                lines = deque(f, maxlen=limit)
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    # ------------------------------------------------------------------------------------ metrics
    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "fleetmon_webhook_actions",
            'Decisions on alerts sent to /actions, by action and outcome (docs/alerting.md "Actions").',
            labels=["action", "outcome"],
        )
        with self._lock:
            counts = dict(self.counts)
        for (a, o), n in counts.items():
            total.add_metric([a, o], n)
        yield total
        yield GaugeMetricFamily(
            "fleetmon_webhook_actions_queued",
            "Alerts waiting to be decided by the actions worker.",
            value=self.queue.qsize(),
        )
        errors = CounterMetricFamily(
            "fleetmon_webhook_actions_state_errors",
            "Times the actions state file could not be read (moved aside) or saved.",
        )
        errors.add_metric([], self.state_errors)
        yield errors


def _evidence(alert: dict[str, Any]) -> dict[str, Any]:
    ann = alert.get("annotations") or {}
    return {
        "labels": alert.get("labels") or {},
        "startsAt": alert.get("startsAt"),
        "fingerprint": alert.get("fingerprint"),
        "generatorURL": alert.get("generatorURL"),
        **{k: ann[k] for k in EVIDENCE_ANNOTATIONS if k in ann},
    }


def _parse_time(s: Any) -> float | None:
    if not isinstance(s, str):
        return None
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None or t.year < 1970:  # Go's zero time 0001-01-01: not set
        return None
    return t.timestamp()


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
