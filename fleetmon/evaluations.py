"""``fleetmon evaluations``: how each model version did in production, logged back to the MLflow registry.

The version benchmark (``outputs.versions``, docs/metrics.md "Model versions") lives in Prometheus. Every
``interval_seconds`` this job reads it there (the same Prometheus, or central store, Grafana reads: data
still flows one way, this is one more reader) and, for every benchmarked version of a fleet model:

1. finds the fleet model's registered model (by the fleet tags, else the name pattern, as the MLflow
   exporter maps them) and the version; a version the registry does not know is counted and skipped;
2. logs the version's current figures as metrics of its *evaluation run*: one run per version in the
   experiment ``experiment`` (tag ``fleetmon.evaluation.model_version = <name>/<version>``), so the run's
   metric history is the version's benchmark history. The metrics name the data set ``fleetmon-live-actuals``
   (digest: of the evaluation time) and, for a version registered from an MLflow 3 logged model, that
   ``model_id``, so MLflow shows them on the model too;
3. sets tags on the model version (``fleetmon.production.<metric>``, ``fleetmon.production.evaluated_at``,
   ``fleetmon.production.evaluation_run_id``), so the registry page of the version says how it did.

Metrics (all from the exporter's families; absent figures are not logged): ``production_mae_kwh``,
``production_rmse_kwh``, ``production_bias_kwh``, ``production_mape``, ``production_paired_targets``;
anomaly detectors ``production_flag_rate``, ``production_labelled_targets``, ``production_precision``,
``production_recall``, ``production_f1``; a challenger against its champion ``challenger_loss_improvement``,
``challenger_pvalue`` (Diebold-Mariano or McNemar), ``challenger_outperforms`` (tag
``fleetmon.production.compared_with`` = the champion's version).

Evaluation run ids are kept in ``state_file``; a lost state file only costs a search per version. Each
cycle is pushed to the Pushgateway as the batch job ``evaluation``. A failure (Prometheus or MLflow down)
is logged and reported as a failed job; the next cycle logs the figures of then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from collectors.mlflow_client import (
    FLEET_KEYS,
    MlflowError,
    MlflowRest,
    find_registered_model,
    quote_filter,
    root_cause,
)
from fleetmon import jobs
from fleetmon.config import Config, redact_url

log = logging.getLogger("fleetmon.evaluations")

J_PER_KWH = 3.6e6
DATASET = "fleetmon-live-actuals"
RUN_TAG = "fleetmon.evaluation.model_version"
TAG_PREFIX = "fleetmon.production."
# exporter family -> (MLflow metric, scale): per version (labels: fleet, version, alias)
VERSION_FAMILIES = {
    "fleetmon_model_version_paired_targets": ("production_paired_targets", 1.0),
    "fleetmon_model_version_mae_joules": ("production_mae_kwh", 1 / J_PER_KWH),
    "fleetmon_model_version_rmse_joules": ("production_rmse_kwh", 1 / J_PER_KWH),
    "fleetmon_model_version_bias_joules": ("production_bias_kwh", 1 / J_PER_KWH),
    "fleetmon_model_version_mape_ratio": ("production_mape", 1.0),
    "fleetmon_model_version_flag_rate_ratio": ("production_flag_rate", 1.0),
    "fleetmon_model_version_labelled_targets": ("production_labelled_targets", 1.0),
    "fleetmon_model_version_precision_ratio": ("production_precision", 1.0),
    "fleetmon_model_version_recall_ratio": ("production_recall", 1.0),
    "fleetmon_model_version_f1_ratio": ("production_f1", 1.0),
}
# per challenger (labels: fleet, champion_version, challenger_version)
CHALLENGER_FAMILIES = {
    "fleetmon_model_challenger_loss_improvement_ratio": "challenger_loss_improvement",
    "fleetmon_model_challenger_dm_pvalue": "challenger_pvalue",
    "fleetmon_model_challenger_mcnemar_pvalue": "challenger_pvalue",
    "fleetmon_model_challenger_outperforms": "challenger_outperforms",
}


class PrometheusError(Exception):
    pass


@dataclass
class VersionFigures:
    labels: dict[str, str]  # the four fleet labels
    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    compared_with: str | None = None  # the champion's version, for a challenger


@dataclass
class CycleResult:
    versions: int = 0  # benchmarked versions found in Prometheus
    logged: int = 0  # versions whose figures were logged to MLflow
    unregistered: int = 0  # versions (or models) the registry does not know
    error: str | None = None
    seconds: float = 0.0


class Prometheus:
    """Instant queries against the Prometheus HTTP API (TLS and basic auth as configured)."""

    def __init__(self, cfg: Config) -> None:
        ev = cfg.evaluations
        self.url = ev.prometheus_url.rstrip("/")
        self.shown = redact_url(self.url) or "<the Prometheus URL>"
        self.timeout = ev.timeout_seconds
        self.session = requests.Session()
        # Given with every request: a session's own ``verify`` loses to REQUESTS_CA_BUNDLE in the environment.
        self.verify: str | bool = str(ev.prometheus_ca_file) if ev.prometheus_ca_file is not None else True
        if ev.prometheus_username:
            pw = ""
            if ev.prometheus_password_file is not None:
                pw = ev.prometheus_password_file.read_text(encoding="utf-8").strip()
            self.session.auth = (ev.prometheus_username, pw)

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        try:
            resp = self.session.get(
                f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout, verify=self.verify
            )
        except requests.RequestException as e:
            raise PrometheusError(f"cannot query {self.shown}: {root_cause(e)}") from None
        if resp.status_code != 200:
            raise PrometheusError(f"query {promql!r} to {self.shown}: HTTP {resp.status_code}")
        try:
            data = resp.json()["data"]["result"]
            return [(dict(r["metric"]), float(r["value"][1])) for r in data]
        except (ValueError, KeyError, TypeError, IndexError):
            raise PrometheusError(f"query {promql!r} to {self.shown}: not a vector answer") from None

    def close(self) -> None:
        self.session.close()


def read_figures(prom: Prometheus) -> list[VersionFigures]:
    """Every benchmarked version with its figures (one series per version, whatever scraped it)."""
    figures: dict[tuple[str, ...], VersionFigures] = {}

    def entry(lab: dict[str, str], version: str) -> VersionFigures:
        fleet = {k: lab.get(k, "") for k in FLEET_KEYS}
        key = (*fleet.values(), version)
        if key not in figures:
            figures[key] = VersionFigures(fleet, version)
        return figures[key]

    by_version = ", ".join([*FLEET_KEYS, "version"])
    for family, (metric, scale) in VERSION_FAMILIES.items():
        for lab, value in prom.query(f"max by ({by_version}) ({family})"):
            entry(lab, lab.get("version", "")).metrics[metric] = value * scale
    by_pair = ", ".join([*FLEET_KEYS, "champion_version", "challenger_version"])
    for family, metric in CHALLENGER_FAMILIES.items():
        for lab, value in prom.query(f"max by ({by_pair}) ({family})"):
            f = entry(lab, lab.get("challenger_version", ""))
            f.metrics[metric] = value
            f.compared_with = lab.get("champion_version")
    return [f for f in figures.values() if f.version.isdigit() and all(f.labels.values())]


class Reporter:
    def __init__(self, cfg: Config, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.ev = cfg.evaluations
        self.clock = clock
        self.prom = Prometheus(cfg)
        self.mlflow = MlflowRest.from_config(cfg.mlflow)
        self.runs: dict[str, str] = self._load_state()  # "<name>/<version>" -> evaluation run id
        self._experiment_id: str | None = None

    def close(self) -> None:
        self.prom.close()
        self.mlflow.close()

    def cycle(self) -> CycleResult:
        t0 = time.monotonic()
        res = CycleResult()
        try:
            figures = read_figures(self.prom)
            res.versions = len(figures)
            for f in figures:
                if self._log(f):
                    res.logged += 1
                else:
                    res.unregistered += 1
        except (PrometheusError, MlflowError, OSError) as e:
            res.error = str(e)
            log.warning("evaluations: %s", e)
        self._save_state()
        res.seconds = time.monotonic() - t0
        return res

    def _log(self, f: VersionFigures) -> bool:
        """Log one version's figures; False when the registry does not know the version."""
        try:
            rm = find_registered_model(self.mlflow, self.cfg.mlflow, f.labels)
        except MlflowError as e:
            if "no registered model" not in str(e):
                raise
            log.info("evaluations: %s", e)
            return False
        name = str(rm["name"])
        try:
            mv = self.mlflow.call(
                "GET",
                "model-versions/get",
                f"get version {f.version} of {name}",
                params={"name": name, "version": f.version},
            )["model_version"]
        except MlflowError as e:
            if "HTTP 404" not in str(e) and "RESOURCE_DOES_NOT_EXIST" not in str(e):
                raise
            log.info("evaluations: version %s of %s is not in the registry", f.version, name)
            return False
        now = self.clock()
        run_id = self._run(name, f.version, str(mv.get("run_id") or ""))
        ms = int(now * 1000)
        # MLflow wants a digest with a data set name: the window is the one ending now.
        digest = hashlib.sha256(f"{DATASET}@{ms}".encode()).hexdigest()[:8]
        metric_extra = {"dataset_name": DATASET, "dataset_digest": digest}
        if mv.get("model_id"):
            metric_extra["model_id"] = str(mv["model_id"])
        metrics = [
            {"key": k, "value": v, "timestamp": ms, "step": int(now), **metric_extra}
            for k, v in sorted(f.metrics.items())
        ]
        self.mlflow.call(
            "POST",
            "runs/log-batch",
            f"log the evaluation of {name} v{f.version}",
            body={"run_id": run_id, "metrics": metrics},
        )
        tags = {f"{TAG_PREFIX}{k}": f"{v:.6g}" for k, v in sorted(f.metrics.items())}
        tags[f"{TAG_PREFIX}evaluated_at"] = _rfc3339(now)
        tags[f"{TAG_PREFIX}evaluation_run_id"] = run_id
        if f.compared_with:
            tags[f"{TAG_PREFIX}compared_with"] = f.compared_with
        for k, v in tags.items():
            self.mlflow.call(
                "POST",
                "model-versions/set-tag",
                f"tag version {f.version} of {name}",
                body={"name": name, "version": f.version, "key": k, "value": v},
            )
        return True

    def _run(self, name: str, version: str, source_run: str) -> str:
        """The version's evaluation run: remembered, found by its tag, or created."""
        key = f"{name}/{version}"
        if key in self.runs:
            return self.runs[key]
        exp = self._experiment()
        found = (
            self.mlflow.call(
                "POST",
                "runs/search",
                f"search the evaluation run of {key}",
                body={
                    "experiment_ids": [exp],
                    "filter": f"tags.`{RUN_TAG}` = '{quote_filter(key)}'",
                    "max_results": 1,
                },
            ).get("runs")
            or []
        )
        if found:
            run_id = str(found[0]["info"]["run_id"])
        else:
            tags = {
                RUN_TAG: key,
                "mlflow.runName": f"{name} v{version} on live actuals",
                "fleetmon.evaluation.registered_model": name,
                "fleetmon.evaluation.version": version,
                "fleetmon.evaluation.dataset": DATASET,
                **({"fleetmon.evaluation.source_run_id": source_run} if source_run else {}),
            }
            run = self.mlflow.call(
                "POST",
                "runs/create",
                f"create the evaluation run of {key}",
                body={
                    "experiment_id": exp,
                    "start_time": int(self.clock() * 1000),
                    "run_name": tags["mlflow.runName"],
                    "tags": [{"key": k, "value": v} for k, v in tags.items()],
                },
            )
            run_id = str(run["run"]["info"]["run_id"])
        self.runs[key] = run_id
        return run_id

    def _experiment(self) -> str:
        if self._experiment_id is None:
            name = self.ev.experiment
            try:
                got = self.mlflow.call(
                    "GET",
                    "experiments/get-by-name",
                    f"get experiment {name}",
                    params={"experiment_name": name},
                )
                self._experiment_id = str(got["experiment"]["experiment_id"])
            except MlflowError as e:
                if "HTTP 404" not in str(e) and "RESOURCE_DOES_NOT_EXIST" not in str(e):
                    raise
                made = self.mlflow.call(
                    "POST", "experiments/create", f"create experiment {name}", body={"name": name}
                )
                self._experiment_id = str(made["experiment_id"])
        return self._experiment_id

    def _load_state(self) -> dict[str, str]:
        try:
            doc = json.loads(self.ev.state_file.read_text(encoding="utf-8"))
            return {str(k): str(v) for k, v in doc.get("runs", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            log.warning(
                "evaluations: ignoring unreadable %s (%s): runs are found again", self.ev.state_file, e
            )
            return {}

    def _save_state(self) -> None:
        try:
            self.ev.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.ev.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"runs": self.runs}, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.ev.state_file)
        except OSError as e:
            log.warning("evaluations: cannot save %s: %s", self.ev.state_file, e)


def push_cycle(res: CycleResult) -> None:
    """The cycle as the batch job ``evaluation`` (fleetmon.push); logged if it cannot be pushed."""
    from fleetmon import push

    try:
        push.push_job(
            "evaluation",
            None,
            outcome="failure" if res.error else "success",
            duration=res.seconds,
            gateway=push.default_gateway(),
        )
    except (push.PushError, ValueError, OSError) as e:
        log.warning("cannot push the evaluation cycle: %s", e)


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _cycles(reporter: Reporter, once: bool, stop: threading.Event, push: bool) -> Iterator[CycleResult]:
    while True:
        res = reporter.cycle()
        if push:
            push_cycle(res)
        yield res
        if once or stop.wait(reporter.ev.interval_seconds):
            return


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = jobs.start("fleetmon evaluations", __doc__.split("\n\n")[0], argv, "evaluations")
    if cfg is None:
        return 2
    reporter = Reporter(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    res = CycleResult()
    try:
        for res in _cycles(reporter, args.once, stop, not args.no_push):
            log.info(
                "evaluations: %d versions benchmarked, %d logged to MLflow, %d not in the registry (%.1fs)%s",
                res.versions,
                res.logged,
                res.unregistered,
                res.seconds,
                f"; failed: {res.error}" if res.error else "",
            )
    finally:
        reporter.close()
    return 1 if args.once and res.error else 0
