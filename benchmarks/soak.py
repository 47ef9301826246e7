"""Fault soak: the whole demo stack at a fast time scale, faults on a schedule, then every row and line
written compared with what the exporters counted. Exit code 0 only if every check holds.

    .venv/bin/python -m benchmarks.soak --duration 20m --json soak.json
    .venv/bin/python -m benchmarks.soak --duration 4m --faults kill-exporter-outputs,logs-truncate \\
        --exporter-down-for 20s

Not part of ``make test`` (it runs for the duration asked, as root for the tmpfs). What it does, how to read
its table and what each check promises: docs/soak.md. ``--help`` lists every fault and option.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks import soak_metrics as sm
from benchmarks.soak_writers import BAD_LINES, BAD_ROWS, SQL_SCHEMA, BadRowsWriter, LogWriter, SqlWriter
from fleetmon import pki
from fleetmon.config import Config, load_config
from simulator import ledger

log = logging.getLogger("soak")

# --------------------------------------------------------------------------------------- the faults
FAULTS: dict[str, str] = {
    "kill-exporter-outputs": "kill -9 the model-outputs exporter under load, keep it down for "
    "--exporter-down-for, restart it with `fleetmon stack up --only exporter-outputs`",
    "kill-exporter-platform": "the same for the platform exporter; while it is down the soak's own log file "
    "is rotated (renamed), so the restarted exporter must find it by inode and read it to its end",
    "kill-exporter-mlflow": "the same for the MLflow exporter",
    "mlflow-down": "stop the demo's MLflow server for --mlflow-down-for, then start it again",
    "prometheus-restart": "stop Prometheus and start it again (its TSDB is kept)",
    "logs-rotate": "rename the simulator's gateway.log and the soak's own log file away while they are "
    "written (like logrotate's create mode); nothing may be lost",
    "logs-truncate": "copytruncate the soak's own log file right after a burst of --truncate-burst lines: "
    "those lines may be lost (bounded), the truncation must be counted",
    "quarantine-full": "fill the tiny tmpfs (--tmpfs-size) that holds both quarantines, keep it full for "
    "--quarantine-full-for while bad rows and lines keep coming, then make room; rows must stay counted",
    "postgres-restart": "stop the PostgreSQL server of the outputs' SQL source (pg_ctl stop -m fast) for "
    "--postgres-down-for, then start it again",
    "corrupt-outputs-state": "stop the outputs exporter, overwrite its state file (state.json) with "
    "garbage, start it: it must start, and must count the corruption",
    "corrupt-logs-state": "the same for the platform exporter's log positions file",
}
# Spread so that faults of one component are not back to back.
DEFAULT_ORDER = [
    "kill-exporter-outputs",
    "logs-rotate",
    "mlflow-down",
    "kill-exporter-platform",
    "quarantine-full",
    "postgres-restart",
    "kill-exporter-mlflow",
    "logs-truncate",
    "prometheus-restart",
    "corrupt-outputs-state",
    "corrupt-logs-state",
]
# The alerts a fault should raise when it lasts longer than the alert's `for:` (prometheus/rules/alerts.yml).
EXPECTED_ALERTS = {
    "kill-exporter-outputs": {"FleetmonTargetDown"},
    "kill-exporter-platform": {"FleetmonTargetDown"},
    "kill-exporter-mlflow": {"FleetmonTargetDown"},
    "mlflow-down": {"MlflowUnreachable"},
    "postgres-restart": {"OutputsSourceUnreadable"},
}
EXPORTER_COMPONENT = {
    "outputs": "exporter-outputs",
    "platform": "exporter-platform",
    "mlflow": "exporter-mlflow",
}
MAIN_COLLECTOR = {"outputs": "outputs", "platform": "logs", "mlflow": "mlflow"}
GARBAGE = b'\x00\xff{"files": {"half a state file' + bytes(range(256)) + b"\n"


def parse_duration(s: str) -> float:
    """``20m``, ``90s``, ``1h30m``, ``300`` (seconds)."""
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise argparse.ArgumentTypeError(f"not a duration: {s!r} (e.g. 20m, 90s, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    m, s = divmod(round(x), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


@dataclass
class FaultRun:
    name: str
    planned_at: float
    injected_at: float | None = None
    restored_at: float | None = None  # when the soak undid the fault (restart, start, room made)
    recovered_at: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    alerts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # see Soak.alerts_in
    segment: dict[str, Any] = field(default_factory=dict)  # what was written and counted during it


class SoakError(Exception):
    pass


# ------------------------------------------------------------------------------------------ the soak
class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.rng = random.Random(args.seed)
        self.faults = [f for f in args.faults if f not in args.skip]
        self.runs: list[FaultRun] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.obs: dict[str, list[tuple[float, float]]] = defaultdict(list)  # direct observations
        self.starts: dict[str, list[float]] = {"outputs": [], "platform": [], "mlflow": []}
        self.events: list[tuple[float, str]] = []
        self.notes: list[str] = []
        self.soak_rotations: Counter[str] = Counter()  # app -> renames done by the soak
        self.deleted_quarantine = {"outputs": 0, "logs": 0}  # lines the soak removed to make room
        self.tmpfs_mounted = False
        self.pg: Any = None
        self.sim_paused = False
        self.writers: list[Any] = []

    # -------------------------------------------------------------------------------- helpers
    def event(self, what: str) -> None:
        t = time.time()
        self.events.append((t, what))
        log.info("%s", what)

    def wait_for(self, check: Callable[[], bool], timeout: float, every: float = 1.0) -> float | None:
        """Poll ``check`` until it holds; the time it did, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return time.time()
            except Exception as e:  # a component still down answers with errors: keep polling
                log.debug("check: %s", e)
            if time.monotonic() > deadline:
                return None
            time.sleep(every)

    def sleep_until(self, t: float) -> None:
        while (left := t - time.time()) > 0:
            time.sleep(min(left, 5.0))

    # ---------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        from tests.conftest import DEMO_STACK_TUNING, _demo_stack_config
        from tests.postgres import INSTALL_HINT, PostgresServer, find_bindir

        self.tmp = Path(tempfile.mkdtemp(prefix="fleetmon-soak-"))
        fh = logging.FileHandler(self.tmp / "soak.log")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(fh)
        self.event(f"soak directory {self.tmp}")
        self.state = self.tmp / "stack"
        self.inputs = self.tmp / "soak-input"
        # Both quarantines on one tiny tmpfs, so they run out of space.
        self.qdir = self.tmp / "quarantine"
        self.qdir.mkdir()
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.a.tmpfs_size}", "tmpfs", str(self.qdir)],
            capture_output=True,
            text=True,
        )
        if res.returncode == 0:
            self.tmpfs_mounted = True
            self.event(f"quarantine on a {self.a.tmpfs_size} tmpfs at {self.qdir}")
        else:
            self.notes.append(
                f"mount -t tmpfs refused ({res.stderr.strip() or res.returncode}): the quarantine is on the "
                "ordinary disk and quarantine-full cannot run"
            )
        # PostgreSQL for the outputs' SQL source (tests/postgres.py: as an unprivileged user).
        bindir = find_bindir()
        if bindir is None:
            raise SoakError(INSTALL_HINT)
        self.pg = PostgresServer(bindir)
        self.pg.init()
        self.pg.start()
        self.db = self.pg.create_database("soak")
        with self.pg.connect(self.db) as conn:
            conn.execute(SQL_SCHEMA)
        self.event(f"PostgreSQL {bindir} on port {self.pg.port}, database {self.db}")

        self.cfg_path = _demo_stack_config(self.tmp, DEMO_STACK_TUNING["config"])
        doc = yaml.safe_load(self.cfg_path.read_text())
        if self.a.plain:
            doc.setdefault("stack", {})["secure"] = False
        out, logs_cfg = doc["outputs"], doc["platform"]["logs"]
        out["predictions"].append(
            {"glob": str(self.inputs / "predictions" / "*.jsonl"), "format": "jsonl", "name": "soak-bad"}
        )
        out["sql"] = [
            {
                "name": "soak-pg",
                "url": self.pg.url(self.db),
                "query": "SELECT * FROM soak_predictions",
                "time_column": "made_at",
                "key_columns": ["id"],
                "overlap_seconds": 30,
                "statement_timeout_seconds": 10,
            }
        ]
        out["quarantine_dir"] = str(self.qdir / "outputs")
        logs_cfg["apps"]["soak"] = [str(self.inputs / "logs" / "*.log")]
        logs_cfg["quarantine_file"] = str(self.qdir / "logs" / "logs.jsonl")
        self.cfg_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.cfg: Config = load_config(self.cfg_path, environ={})
        st = self.cfg.stack
        # As the e2e fixture: the secure mode (TLS + basic auth) unless --plain; the demo MLflow stays http.
        scheme = "https" if st.secure else "http"
        self.prom = f"{scheme}://127.0.0.1:{st.prometheus_port}"
        self.alertmanager = f"{scheme}://127.0.0.1:{st.alertmanager_port}"
        self.webhook = f"{scheme}://127.0.0.1:{st.webhook_port}"
        self.mlflow_url = f"http://127.0.0.1:{st.mlflow_port}"
        bases = {
            "outputs": f"{scheme}://127.0.0.1:{self.cfg.outputs.listen.port}",
            "platform": f"{scheme}://127.0.0.1:{self.cfg.platform.listen.port}",
            "mlflow": f"{scheme}://127.0.0.1:{self.cfg.mlflow.listen.port}",
        }
        self.urls = {k: v + "/metrics" for k, v in bases.items()}
        self.demo_dir = Path(self.cfg.demo.output_dir)
        self.pred_source = self.cfg.outputs.predictions[0].name or ""
        self.act_source = self.cfg.outputs.actuals[0].name or ""
        self.quantities = self._quantities()

        up = self.stack("up", timeout=600)
        if up.returncode != 0:
            raise SoakError(f"`fleetmon stack up` failed:\n{up.stdout}\n{up.stderr}")
        if st.secure:
            # Every urlopen() of the soak trusts the stack's CA and sends the `fleetmon` user's credentials,
            # to the stack's servers only (as tests/conftest.py's demo_stack does).
            client = pki.client(self.state / "data")
            urllib.request.install_opener(
                client.opener(self.prom, self.alertmanager, self.webhook, *bases.values())
            )
        self.retune(reload=True)
        if self.wait_for(self.targets_up, 120) is None:
            raise SoakError(f"targets not all up within 120 s: {self.target_health()}")
        self.t0 = time.time()
        self.event("stack up, every target up")

        m = next(k for k in self.cfg.fleet.models() if k.model in self.cfg.fleet.forecast_roles)
        model = {"customer": m.customer, "building": m.building, "energy": m.energy, "model": m.model}
        self.sql = SqlWriter(self.pg, self.db, model, self.a.sql_rows, self.t0 + 400 * 86400)
        self.bad = BadRowsWriter(self.inputs / "predictions", model, self.a.bad_rows_every)
        self.logw = LogWriter(self.inputs / "logs" / "soak.log", self.a.log_rate, self.a.seed)
        self.writers = [self.sql, self.bad, self.logw]
        for w in self.writers:
            w.start()

    def _quantities(self) -> list[sm.Quantity]:
        q = sm.q
        o = self.cfg.outputs
        names = [s.name or "" for s in o.predictions] + [s.name or "" for s in o.actuals]
        names += [s.name or "" for s in o.sql]
        out = [q(f"rows:{n}", "outputs", "fleetmon_outputs_rows_read_total", source=n) for n in names]
        out += [
            # Shadow rows of challengers are accepted too, counted apart from what the model serves.
            q(
                "accepted:predictions",
                "outputs",
                "fleetmon_model_predictions_total",
                "fleetmon_model_shadow_predictions_total",
            ),
            q("accepted:actuals", "outputs", "fleetmon_building_actuals_total"),
            q("rejected:predictions", "outputs", "fleetmon_outputs_rows_rejected_total", kind="predictions"),
            q("rejected:actuals", "outputs", "fleetmon_outputs_rows_rejected_total", kind="actuals"),
            q("quarantine_write_errors", "outputs", "fleetmon_outputs_quarantine_write_errors_total"),
        ]
        out += [
            q(
                f"rejected:{r}",
                "outputs",
                "fleetmon_outputs_rows_rejected_total",
                kind="predictions",
                reason=r,
            )
            for r in BAD_ROWS
        ]
        for app in self.cfg.platform.logs.apps:
            out += [
                q(
                    f"lines:{app}",
                    "platform",
                    "fleetmon_logs_lines_total",
                    "fleetmon_logs_rejected_lines_total",
                    app=app,
                ),
                q(f"rotations:{app}", "platform", "fleetmon_logs_rotations_total", app=app),
                q(f"truncations:{app}", "platform", "fleetmon_logs_truncations_total", app=app),
                q(f"reread_bytes:{app}", "platform", "fleetmon_logs_reread_bytes_total", app=app),
                q(f"read_bytes:{app}", "platform", "fleetmon_logs_read_bytes_total", app=app),
            ]
        out += [
            q(
                f"rejected_lines:soak:{r}",
                "platform",
                "fleetmon_logs_rejected_lines_total",
                app="soak",
                reason=r,
            )
            for r in BAD_LINES
        ]
        out.append(q("quarantined_lines", "platform", "fleetmon_logs_quarantined_lines_total"))
        return out

    # ----------------------------------------------------------------------------- the stack
    def stack(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The real ``fleetmon stack`` CLI on the soak's config and state directory."""
        from tests.conftest import _run_stack

        res = _run_stack(self.cfg_path, self.state, *args, timeout=timeout)
        log.info("fleetmon stack %s: exit %d", " ".join(args), res.returncode)
        log.debug("%s%s", res.stdout, res.stderr)
        # Every CLI call renders prometheus.yml / alertmanager.yml again (untuned): tune them again.
        self.retune()
        return res

    def retune(self, reload: bool = False) -> None:
        """The test tuning of tests/conftest.py (5 s scrapes and rule evaluation, fast grouping)."""
        from tests.conftest import DEMO_STACK_TUNING, _retune

        data = self.state / "data"

        def prom(doc: dict[str, Any]) -> None:
            doc["global"].update(DEMO_STACK_TUNING["prometheus_global"])
            for sc in doc.get("scrape_configs") or []:
                sc.pop("scrape_interval", None)
                sc.pop("scrape_timeout", None)

        def am(doc: dict[str, Any]) -> None:
            doc["route"].update(DEMO_STACK_TUNING["alertmanager_route"])

        if (data / "prometheus" / "prometheus.yml").exists():
            _retune(data / "prometheus" / "prometheus.yml", prom)
        if (data / "alertmanager" / "alertmanager.yml").exists():
            _retune(data / "alertmanager" / "alertmanager.yml", am)
        if reload:
            sm.post(self.prom + "/-/reload")
            sm.post(self.alertmanager + "/-/reload")

    def pid(self, component: str) -> int | None:
        from fleetmon.stack import Paths, running_pid

        return running_pid(Paths.of(self.cfg, self.state), component)

    def target_health(self) -> dict[str, str]:
        targets = sm.get_json(self.prom, "/api/v1/targets")["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    def targets_up(self, since: float = 0.0) -> bool:
        targets = sm.get_json(self.prom, "/api/v1/targets")["data"]["activeTargets"]
        return bool(targets) and all(
            t["health"] == "up" and _rfc3339_ts(t["lastScrape"]) > since for t in targets
        )

    # ----------------------------------------------------------------------------- Prometheus
    def prom_vector(self, expr: str) -> list[tuple[dict[str, str], float]]:
        data = sm.get_json(self.prom, "/api/v1/query", query=expr)["data"]["result"]
        return [(r["metric"], float(r["value"][1])) for r in data]

    def prom_seen(self, expr: str) -> bool:
        return bool(self.prom_vector(expr))

    def prom_fresh(self, selector: str, since: float, want: float | None = 1.0) -> bool:
        """Every series of ``selector`` has a sample newer than ``since`` (equal to ``want`` unless None)."""
        vals = self.prom_vector(selector)
        stamps = self.prom_vector(f"timestamp({selector})")
        return (
            bool(vals)
            and all(want is None or v == want for _, v in vals)
            and bool(stamps)
            and all(t > since for _, t in stamps)
        )

    def exporter_recovered(self, exporter: str, since: float) -> bool:
        """Prometheus scrapes it again, every collector's poll succeeds, its main collector polled since."""
        job = sm.JOBS[exporter]
        return (
            self.prom_fresh(f'up{{job="{job}"}}', since)
            and self.prom_fresh(f'fleetmon_poll_success{{job="{job}"}}', since)
            and all(
                v > since
                for _, v in self.prom_vector(
                    f'fleetmon_poll_last_success_timestamp_seconds{{job="{job}",'
                    f'collector="{MAIN_COLLECTOR[exporter]}"}}'
                )
            )
            and bool(
                self.prom_vector(
                    f'fleetmon_poll_last_success_timestamp_seconds{{job="{job}",'
                    f'collector="{MAIN_COLLECTOR[exporter]}"}} > {since}'
                )
            )
        )

    # ---------------------------------------------------------------------------- observing
    def observe(self, exporter: str) -> sm.Scrape | None:
        """A direct scrape of the exporter; its quantities join the observations."""
        qts = [qt for qt in self.quantities if qt.exporter == exporter]
        try:
            s = sm.scrape(self.urls[exporter], qts, frozenset(EXTRA_NAMES))
        except OSError as e:
            log.warning("direct scrape of %s failed: %s", exporter, e)
            return None
        for k, v in s.values.items():
            self.obs[k].append((s.t, v))
        return s

    def last_poll(self, exporter: str) -> float:
        s = sm.scrape(self.urls[exporter], [], frozenset({"fleetmon_poll_last_success_timestamp_seconds"}))
        for _, labels, v in s.samples:
            if labels.get("collector") == MAIN_COLLECTOR[exporter]:
                return v
        return 0.0

    def wait_polls(self, exporter: str, after: float, n: int = 2, timeout: float = 120) -> float | None:
        """Wait for ``n`` polls of the exporter's main collector that ended after ``after`` (the second one
        started after it, so it read everything written before); the end time of the last."""
        seen: list[float] = []

        def check() -> bool:
            v = self.last_poll(exporter)
            if v > after and (not seen or v > seen[-1]):
                seen.append(v)
            return len(seen) >= n

        return seen[-1] if self.wait_for(check, timeout, every=0.5) is not None else None

    # ---------------------------------------------------------------------------- quiescing
    def _sim_consistent(self) -> bool:
        """No simulator write after its last ledger flush (the ledger is written after every step)."""
        led = self.demo_dir / ledger.FILE_NAME
        try:
            mark = led.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        paths = [self.demo_dir / "outputs" / "predictions", self.demo_dir / "outputs" / "actuals"]
        paths += list((self.demo_dir / "logs").glob("*/*"))
        for p in paths:
            try:
                if p.stat().st_mtime_ns > mark:
                    return False
            except FileNotFoundError:
                continue
        return True

    def pause(self) -> None:
        """Writers paused and the simulator stopped (SIGSTOP) between two steps: what was written is exactly
        what the ledger and the writers say."""
        for w in self.writers:
            w.pause()
        pid = self.pid("simulator")
        if pid is None:  # it died: nothing more is written (the end's status check reports it)
            self.notes.append(f"the simulator was not running at a checkpoint ({iso(time.time())})")
            return
        for _ in range(100):
            os.killpg(pid, signal.SIGSTOP)
            self.wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, 5, every=0.01)
            self.sim_paused = True
            if self._sim_consistent():
                return
            os.killpg(pid, signal.SIGCONT)
            self.sim_paused = False
            time.sleep(self.rng.uniform(0.05, 0.3))
        raise SoakError("could not stop the simulator between two steps")

    def resume(self) -> None:
        pid = self.pid("simulator")
        if pid is not None and self.sim_paused:
            os.killpg(pid, signal.SIGCONT)
        self.sim_paused = False
        for w in self.writers:
            w.resume()

    def written(self) -> dict[str, float]:
        led = ledger.read(self.demo_dir)
        w: dict[str, float] = {
            f"rows:{self.pred_source}": led["outputs"].get("predictions", {}).get("rows", 0),
            f"rows:{self.act_source}": led["outputs"].get("actuals", {}).get("rows", 0),
            "rows:soak-bad": self.bad.rows,
            "sql_committed": self.sql.committed,
        }
        try:
            w["rows:soak-pg"] = self.sql.table_count()
        except Exception as e:  # PostgreSQL down: the writer's own count (a lost commit answer aside)
            self.notes.append(f"count(*) failed at a checkpoint ({e}); used the writer's count")
            w["rows:soak-pg"] = self.sql.committed
        for app in self.cfg.platform.logs.apps:
            d = led["logs"].get(app, {})
            w[f"lines:{app}"] = d.get("lines", 0)
            w[f"bytes:{app}"] = d.get("bytes", 0)
            w[f"rotations:{app}"] = d.get("rotations", 0) + self.soak_rotations[app]
            w[f"truncations:{app}"] = 0
        w["lines:soak"] = self.logw.lines
        w["bytes:soak"] = self.logw.nbytes
        w["truncations:soak"] = self.logw.truncations
        w["lost_bound:soak"] = self.logw.truncated_lines
        for r in BAD_ROWS:
            w[f"rejected:{r}"] = self.bad.by_reason[r]
        for r in BAD_LINES:
            w[f"rejected_lines:soak:{r}"] = self.logw.bad[r]
        return w

    def checkpoint(self, label: str, resume: bool = True) -> dict[str, Any]:
        """Pause every writer, let the exporters read everything and Prometheus scrape them, write down what
        was written (the counted side is computed at the end from every observation up to this time)."""
        self.pause()
        try:
            t_q = time.time()
            caught: dict[str, float | None] = {}
            for exporter in ("outputs", "platform"):
                caught[exporter] = self.wait_polls(exporter, t_q)
                self.observe(exporter)
            for exporter, c in caught.items():
                if c is None:
                    continue
                job, col = sm.JOBS[exporter], MAIN_COLLECTOR[exporter]
                expr = f'fleetmon_poll_last_success_timestamp_seconds{{job="{job}",collector="{col}"}} >= {c}'
                if self.wait_for(partial(self.prom_seen, expr), 60) is None:
                    caught[exporter] = None
            cp = {"label": label, "t": time.time(), "written": self.written(), "caught_up": caught}
            self.checkpoints.append(cp)
            log.info("checkpoint %s", label)
            log.debug("checkpoint %s: written %s", label, json.dumps(cp["written"], sort_keys=True))
            return cp
        finally:
            if resume:
                self.resume()

    # -------------------------------------------------------------------------------- faults
    def run_fault(self, fr: FaultRun) -> None:
        fn = getattr(self, "fault_" + fr.name.replace("-", "_"))
        # Under load: writers have been running since the last checkpoint; a random phase against the polls.
        time.sleep(self.rng.uniform(2.0, 6.0))
        fr.injected_at = time.time()
        self.event(f"fault {fr.name}: inject")
        try:
            fn(fr)
        except Exception as e:
            fr.checks["ran"] = False
            fr.notes.append(f"the fault itself failed: {type(e).__name__}: {e}")
            log.exception("fault %s", fr.name)
        if fr.recovered_at is None:
            fr.checks.setdefault("recovered", False)
        self.event(f"fault {fr.name}: done")

    def _recover(self, fr: FaultRun, check: Callable[[], bool]) -> None:
        fr.recovered_at = self.wait_for(check, self.a.recover_timeout)
        fr.checks["recovered"] = fr.recovered_at is not None
        if fr.recovered_at is None:
            fr.notes.append(f"not recovered within {self.a.recover_timeout:.0f} s")

    def _restart_exporter(
        self, fr: FaultRun, exporter: str, down_for: float, during: Callable[[], None]
    ) -> None:
        name = EXPORTER_COMPONENT[exporter]
        during()
        self.sleep_until((fr.injected_at or time.time()) + down_for)
        self.starts[exporter].append(time.time())  # observations from here on: the next incarnation
        res = self.stack("up", "--only", name)
        fr.restored_at = time.time()
        if res.returncode != 0:
            fr.notes.append(f"`fleetmon stack up --only {name}` exited {res.returncode}")
        self._recover(fr, lambda: self.exporter_recovered(exporter, fr.restored_at or 0.0))

    def _kill(self, fr: FaultRun, exporter: str, during: Callable[[], None] = lambda: None) -> None:
        name = EXPORTER_COMPONENT[exporter]
        pid = self.pid(name)
        if pid is None:
            raise SoakError(f"{name} is not running")
        if sm.PERSISTENT[exporter]:
            self.observe(exporter)  # its last values, as close to the kill as the soak can see them
        os.killpg(pid, signal.SIGKILL)
        fr.injected_at = time.time()
        self.wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10, 0.1)
        self._restart_exporter(fr, exporter, self.a.exporter_down_for, during)

    def fault_kill_exporter_outputs(self, fr: FaultRun) -> None:
        self._kill(fr, "outputs")

    def fault_kill_exporter_platform(self, fr: FaultRun) -> None:
        def rotate_while_down() -> None:
            time.sleep(2)
            with self.logw.lock:
                dest = self.logw.rotate()
            self.soak_rotations["soak"] += 1
            fr.notes.append(f"rotated soak.log to {dest.name} while the exporter was down")

        self._kill(fr, "platform", rotate_while_down)

    def fault_kill_exporter_mlflow(self, fr: FaultRun) -> None:
        self._kill(fr, "mlflow")

    def fault_mlflow_down(self, fr: FaultRun) -> None:
        res = self.stack("down", "--only", "mlflow")
        if res.returncode != 0:
            fr.notes.append(f"`stack down --only mlflow` exited {res.returncode}")
        self.sleep_until((fr.injected_at or time.time()) + self.a.mlflow_down_for)
        res = self.stack("up", "--only", "mlflow")
        fr.restored_at = time.time()
        if res.returncode != 0:
            fr.notes.append(f"`stack up --only mlflow` exited {res.returncode}")
        self._recover(fr, lambda: self.prom_fresh("fleetmon_mlflow_up", fr.restored_at or 0.0))

    def fault_prometheus_restart(self, fr: FaultRun) -> None:
        res = self.stack("down", "--only", "prometheus")
        if res.returncode != 0:
            fr.notes.append(f"`stack down --only prometheus` exited {res.returncode}")
        res = self.stack("up", "--only", "prometheus")
        if res.returncode != 0:
            fr.notes.append(f"`stack up --only prometheus` exited {res.returncode}")
        self.retune(reload=True)
        fr.restored_at = time.time()
        self._recover(fr, lambda: self.targets_up(fr.restored_at or 0.0))

    def _platform_value(self, key: str) -> float:
        s = self.observe("platform")
        return s.values[key] if s is not None else -1.0

    def _unread(self, app: str) -> float:
        s = sm.scrape(
            self.urls["platform"], [], frozenset({"fleetmon_logs_unread_bytes", "fleetmon_logs_files"})
        )
        return sum(
            v for n, lab, v in s.samples if n == "fleetmon_logs_unread_bytes" and lab.get("app") == app
        )

    def _files(self, app: str) -> float:
        s = sm.scrape(self.urls["platform"], [], frozenset({"fleetmon_logs_files"}))
        return sum(v for _, lab, v in s.samples if lab.get("app") == app)

    def fault_logs_rotate(self, fr: FaultRun) -> None:
        before = {app: self._platform_value(f"rotations:{app}") for app in ("gateway", "soak")}
        gw = self.demo_dir / "logs" / "gateway" / "gateway.log"
        with self.logw.lock:
            self.logw.rotate()
        self.soak_rotations["soak"] += 1
        # The simulator appends to gateway.log by name once a second: a rename loses nothing.
        os.replace(gw, gw.with_name(f"gateway.log.soak-{self.soak_rotations['gateway'] + 1}"))
        self.soak_rotations["gateway"] += 1
        fr.restored_at = time.time()
        self._recover(
            fr,
            lambda: all(
                self._platform_value(f"rotations:{app}") > before[app] and self._files(app) == 1
                for app in before
            ),
        )

    def fault_logs_truncate(self, fr: FaultRun) -> None:
        before = self._platform_value("truncations:soak")
        with self.logw.lock:
            # The reader first catches up with what is there (the writer is paused), so only the burst
            # written right before the truncation can be lost.
            caught = self.wait_for(lambda: self._unread("soak") == 0, 30, every=0.5) is not None
            n_before = self.logw.in_file
            dest, in_file = self.logw.truncate(self.a.truncate_burst)
            # Not caught up: it is not known what was read, so anything in the file may be lost.
            bound = in_file - n_before if caught else in_file
            self.logw.truncated_lines += bound
        if not caught:
            fr.notes.append("the exporter had not caught up before the truncation: bound = the whole file")
        fr.notes.append(f"truncated soak.log ({in_file} lines, copy {dest.name}); lost at most {bound}")
        fr.restored_at = time.time()
        self._recover(fr, lambda: self._platform_value("truncations:soak") > before)

    def _quarantine_files(self) -> dict[str, list[Path]]:
        logs = [self.qdir / "logs" / n for n in ("logs.jsonl", "logs.jsonl.1")]
        return {
            "outputs": sorted((self.qdir / "outputs").glob("*.jsonl")),
            "logs": [p for p in logs if p.exists()],
        }

    def _quarantine_lines(self) -> dict[str, int]:
        """Complete JSON lines in the two quarantines (on the tmpfs)."""
        return {k: sum(_json_lines(p) for p in files) for k, files in self._quarantine_files().items()}

    def fault_quarantine_full(self, fr: FaultRun) -> None:
        if not self.tmpfs_mounted:
            fr.checks["ran"] = False
            fr.notes.append("no tmpfs (mount refused): not run")
            return
        errors_before = self._outputs_value("quarantine_write_errors")
        filler = self.qdir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 1024)
        except OSError:  # ENOSPC: full (it may have been full already)
            pass
        finally:
            os.close(fd)
        fr.notes.append(f"filled the tmpfs ({shutil.disk_usage(self.qdir).free} bytes left)")
        self.sleep_until((fr.injected_at or time.time()) + self.a.quarantine_full_for)
        errors_during = self._outputs_value("quarantine_write_errors") - errors_before
        fr.checks["write errors counted while full"] = errors_during > 0
        fr.notes.append(f"outputs quarantine write errors while full: {errors_during:.0f}")
        # Make room as an operator would: the old quarantine files and the filler go. Renamed first and
        # counted after a moment, so a write under way lands in a renamed file and is counted.
        moved = []
        for k, files in self._quarantine_files().items():
            for p in files:
                moved.append((k, p.rename(p.with_name(p.name + ".removed"))))
        time.sleep(1)
        for k, p in moved:
            self.deleted_quarantine[k] += _json_lines(p)
            p.unlink()
        filler.unlink()
        fr.restored_at = time.time()
        self._recover(fr, lambda: all(n > 0 for n in self._quarantine_lines().values()))

    def _outputs_value(self, key: str) -> float:
        s = self.observe("outputs")
        return s.values[key] if s is not None else 0.0

    def fault_postgres_restart(self, fr: FaultRun) -> None:
        self.pg.stop("fast")
        fr.injected_at = time.time()
        self.sleep_until(fr.injected_at + self.a.postgres_down_for)
        self.pg.start()
        fr.restored_at = time.time()
        committed = self.sql.committed
        self._recover(
            fr,
            lambda: (
                self.sql.committed > committed
                and self.prom_fresh('fleetmon_outputs_source_up{source="soak-pg"}', fr.restored_at or 0.0)
                and self.prom_fresh(
                    'fleetmon_poll_success{job="fleetmon-outputs",collector="outputs"}', fr.restored_at or 0.0
                )
            ),
        )

    def _corrupt(self, fr: FaultRun, exporter: str, path: Path) -> None:
        name = EXPORTER_COMPONENT[exporter]
        self.observe(exporter)
        res = self.stack("down", "--only", name)
        if res.returncode != 0:
            fr.notes.append(f"`stack down --only {name}` exited {res.returncode}")
        fr.notes.append(
            f"overwrote {path.name} ({path.stat().st_size if path.exists() else 0} bytes) with garbage"
        )
        path.write_bytes(GARBAGE)
        self.starts[exporter].append(time.time())
        res = self.stack("up", "--only", name)
        fr.restored_at = time.time()
        fr.checks["started"] = res.returncode == 0
        if res.returncode != 0:
            fr.notes.append(f"`stack up --only {name}` exited {res.returncode}:\n{res.stdout[-2000:]}")
            return
        self._recover(fr, lambda: self.exporter_recovered(exporter, fr.restored_at or 0.0))
        # Counting the corruption: any sample of the restarted exporter whose name or labels say so.
        s = sm.scrape(self.urls[exporter], [], frozenset())
        hits = [
            line
            for line in s.text.splitlines()
            if line and line[0] != "#" and "corrupt" in line.lower() and _value(line) > 0
        ]
        fr.checks["corruption counted"] = bool(hits)
        fr.notes.append("counted as: " + "; ".join(hits[:3]) if hits else "no metric counts the corruption")
        logf = self.state / "log" / f"{name}.log"
        said = [ln for ln in logf.read_text(errors="replace").splitlines()[-400:] if path.name in ln]
        if said:
            fr.notes.append(f"its log: {said[-1][:300]}")

    def fault_corrupt_outputs_state(self, fr: FaultRun) -> None:
        self._corrupt(fr, "outputs", Path(self.cfg.outputs.state_dir) / "state.json")

    def fault_corrupt_logs_state(self, fr: FaultRun) -> None:
        self._corrupt(fr, "platform", Path(self.cfg.platform.logs.state_file))

    # -------------------------------------------------------------------------------- alerts
    def alerts_in(self, t0: float, t1: float) -> dict[str, list[dict[str, Any]]]:
        """Alerts that started in [t0, t1] and whose firing notification reached the webhook receiver:
        alertname -> [{labels, started (seconds after t0), notified (seconds after t0)}], first of each."""
        out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for n in self.notifications:
            if n.get("status") != "firing":
                continue
            received = _rfc3339_ts(n.get("received_at", ""))
            for a in n.get("alerts", []):
                started = _rfc3339_ts(a.get("startsAt", ""))
                if a.get("status") == "firing" and t0 - 15 <= started <= t1:
                    lab = a.get("labels", {})
                    detail = ",".join(
                        f"{k}={lab[k]}" for k in ("job", "source", "app", "customer") if k in lab
                    )
                    out[lab.get("alertname", "?")].setdefault(
                        detail, {"labels": detail, "started": started - t0, "notified": received - t0}
                    )
        return {k: sorted(v.values(), key=lambda x: x["started"]) for k, v in sorted(out.items())}

    # ------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        a = self.a
        self.setup()
        time.sleep(a.warmup)
        self.checkpoint("start")
        begin = time.time()
        avail = a.duration - a.warmup - a.tail
        for i, name in enumerate(self.faults):
            fr = FaultRun(name, begin + i * avail / max(1, len(self.faults)))
            self.runs.append(fr)
            if time.time() > fr.planned_at + 5:
                fr.notes.append(
                    f"started {fmt_s(time.time() - fr.planned_at)} late (the previous fault overran)"
                )
            self.sleep_until(fr.planned_at)
            self.run_fault(fr)
            cp = self.checkpoint(f"after {name}")
            fr.segment["checkpoint"] = cp["label"]
        self.sleep_until(self.t0 + a.duration)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        # No component left down: the stack's own status, every target up, PostgreSQL running.
        status = self.stack("status", "--json")
        try:
            rows = json.loads(status.stdout)
        except ValueError:
            rows = []
        self.components = {
            r["name"]: f"{r['state']}/{r['health']}" for r in rows if r["state"] != "not available"
        }
        self.components["postgresql"] = "running/ok" if self.pg.running() else "stopped/-"
        self.components_ok = status.returncode == 0 and self.pg.running() and bool(rows)
        self.targets_at_end = self.target_health()
        # The end: writers and simulator stopped for good, everything read, counted, scraped.
        for w in self.writers:
            w.stop()
        res = self.stack("down", "--only", "simulator")
        if res.returncode != 0:
            self.notes.append(f"`stack down --only simulator` exited {res.returncode}")
        self.writers = []
        self.end_cp = self.checkpoint_end()
        self.mlflow_runs = self.compare_mlflow_runs()
        self.notifications = sm.get_json(self.webhook, "/notifications")
        return self.report()

    def checkpoint_end(self) -> dict[str, Any]:
        t_q = time.time()
        caught: dict[str, float | None] = {}
        for exporter in ("outputs", "platform"):
            caught[exporter] = self.wait_polls(exporter, t_q)
            self.observe(exporter)
        time.sleep(2 * 5 + 1)  # two Prometheus scrapes
        cp = {"label": "end", "t": time.time(), "written": self.written(), "caught_up": caught}
        self.checkpoints.append(cp)
        return cp

    def compare_mlflow_runs(self) -> dict[str, Any]:
        """Runs by status in MLflow (its REST API) against the MLflow exporter's, after two more polls."""
        self.wait_polls("mlflow", time.time())
        in_mlflow: Counter[str] = Counter()
        exps = sm.get_json(self.mlflow_url, "/api/2.0/mlflow/experiments/search", max_results="1000")
        # fleetmon's own evaluation runs are not the platform's: the exporter does not read them
        ids = [
            e["experiment_id"]
            for e in exps.get("experiments", [])
            if e.get("name") != self.cfg.evaluations.experiment
        ]
        token = None
        while ids:
            body: dict[str, Any] = {"experiment_ids": ids, "max_results": 1000}
            if token:
                body["page_token"] = token
            req = urllib.request.Request(
                self.mlflow_url + "/api/2.0/mlflow/runs/search",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                page = json.loads(r.read())
            for run in page.get("runs", []):
                in_mlflow[run["info"]["status"].lower()] += 1
            token = page.get("next_page_token")
            if not token:
                break
        s = sm.scrape(
            self.urls["mlflow"], [], frozenset({"fleetmon_mlflow_runs", "fleetmon_mlflow_unmapped_runs"})
        )
        exported: Counter[str] = Counter()
        for name, lab, v in s.samples:
            exported["unmapped" if name == "fleetmon_mlflow_unmapped_runs" else lab.get("status", "?")] += (
                int(v)
            )
        return {"mlflow": dict(in_mlflow), "exported": dict(exported)}

    # ---------------------------------------------------------------------------------- report
    def report(self) -> dict[str, Any]:
        end = time.time()
        raw = {qt.key: sm.raw_sequence(self.prom, qt, self.t0 - 120, end) for qt in self.quantities}
        by_key = {qt.key: qt for qt in self.quantities}

        def counted(key: str, upto: float, prom: bool = False) -> tuple[float, list[sm.Drop]]:
            """What the exporter counted up to ``upto``. In-memory counters (outputs): the largest value seen
            per incarnation, by the soak or by Prometheus (the soak's look right before a kill is newer than
            Prometheus' last scrape; Prometheus may scrape after the soak's last look before a clean stop).
            Persisted counters (platform): the soak's own observations, one source in time order. ``prom``:
            Prometheus' samples only, what monitoring saw."""
            qt = by_key[key]
            if prom:
                obs = raw[key]
            elif qt.persistent:
                obs = self.obs[key]
            else:
                obs = [*self.obs[key], *raw[key]]
            return sm.cumulative(obs, self.starts[qt.exporter], qt.persistent, upto)

        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool, detail: str = "") -> None:
            checks.append({"check": name, "ok": bool(ok), "detail": detail})

        end_cp = self.checkpoints[-1]
        w_end = end_cp["written"]
        # ---- rows and lines: written vs counted
        rows: list[dict[str, Any]] = []
        pairs = [(f"rows:{s}", f"predictions rows ({s})") for s in (self.pred_source, "soak-bad", "soak-pg")]
        pairs.insert(1, (f"rows:{self.act_source}", f"actuals rows ({self.act_source})"))
        pairs += [(f"lines:{app}", f"log lines {app}") for app in self.cfg.platform.logs.apps]
        pairs += [(f"rejected:{r}", f"rejected rows {r} (soak)") for r in BAD_ROWS]
        pairs += [(f"rejected_lines:soak:{r}", f"rejected lines {r} (soak)") for r in BAD_LINES]
        pairs += [("truncations:soak", "truncations counted (soak)")]
        for key, what in pairs:
            c, _ = counted(key, end_cp["t"])
            p, _ = counted(key, end_cp["t"], prom=True)
            w = float(w_end.get(key, 0))
            allowed = (
                float(w_end.get("lost_bound:soak", 0))
                if key.startswith(("lines:soak", "rejected_lines:soak"))
                else 0.0
            )
            lost, twice = max(0.0, w - c), max(0.0, c - w)
            # A persisted counter is the same counter for Prometheus: its samples must give the same sum.
            # More means Prometheus saw a decrease (a reset), which increase() and rate() count again.
            persistent = key in by_key and by_key[key].persistent
            ok = lost <= allowed and twice == 0 and (p == c or not persistent)
            note = ""
            if persistent and p != c:
                note = f"; Prometheus' samples give {p:.0f}: it saw the counter go back, so increase() is off by {p - c:+.0f}"
            elif p < c:
                note = f"; Prometheus never saw {c - p:.0f} of them (counted after its last scrape before a kill)"
            rows.append(
                {
                    "what": what,
                    "key": key,
                    "written": w,
                    "counted": c,
                    "prometheus": p,
                    "lost": lost,
                    "lost_allowed": allowed,
                    "twice": twice,
                    "ok": ok,
                    "note": note.lstrip("; "),
                }
            )
            check(
                f"{what}: written = counted",
                ok,
                f"written {w:.0f}, counted {c:.0f}"
                + (f", up to {allowed:.0f} may be lost" if allowed else "")
                + note,
            )
        # accepted + rejected = read, per kind
        o = self.cfg.outputs
        # every source of the kind: the demo's, the soak's and `fleetmon score`'s shadow predictions
        files = {"predictions": o.predictions, "actuals": o.actuals}
        for kind in ("predictions", "actuals"):
            sources = [f.name or "" for f in files[kind]] + [q.name or "" for q in o.sql if q.kind == kind]
            read = sum(counted(f"rows:{s}", end_cp["t"])[0] for s in sources)
            acc = counted(f"accepted:{kind}", end_cp["t"])[0]
            rej = counted(f"rejected:{kind}", end_cp["t"])[0]
            ok = acc + rej == read
            rows.append(
                {
                    "what": f"{kind}: accepted + rejected = read",
                    "key": f"balance:{kind}",
                    "written": read,
                    "counted": acc + rej,
                    "prometheus": None,
                    "lost": max(0.0, read - acc - rej),
                    "lost_allowed": 0.0,
                    "twice": max(0.0, acc + rej - read),
                    "ok": ok,
                }
            )
            check(f"{kind}: accepted + rejected = rows read", ok, f"{acc:.0f} + {rej:.0f} vs {read:.0f}")
        # ---- counters across restarts
        drops: list[dict[str, Any]] = []
        for qt in self.quantities:
            # each source on its own: their clocks differ by the milliseconds a scrape takes
            for src, seq in (("soak", self.obs[qt.key]), ("prometheus", raw[qt.key])):
                _, d = sm.cumulative(seq, self.starts[qt.exporter], qt.persistent)
                for x in d:
                    drops.append(
                        {
                            "key": qt.key,
                            "seen_by": src,
                            "t": x.t,
                            "before": x.before,
                            "after": x.after,
                            "during": self.fault_at(x.t),
                        }
                    )
        check(
            "counters never go back (platform: across restarts; outputs: within a run)",
            not drops,
            "; ".join(
                f"{d['key']} {d['before']:.0f}->{d['after']:.0f} ({d['seen_by']}, {d['during']})"
                for d in drops[:6]
            ),
        )
        for cp in self.checkpoints:  # for the JSON: both sides at every checkpoint
            cp["counted"] = {key: counted(key, cp["t"])[0] for key, _ in pairs}
            cp["prometheus"] = {key: counted(key, cp["t"], prom=True)[0] for key, _ in pairs}
        # ---- per fault: what was written and counted between its two checkpoints
        labels = [cp["label"] for cp in self.checkpoints]
        for fr in self.runs:
            cp1 = next((cp for cp in self.checkpoints if cp["label"] == f"after {fr.name}"), None)
            if cp1 is None:
                continue
            cp0 = self.checkpoints[labels.index(cp1["label"]) - 1]
            lost = twice = 0.0
            detail = []
            deltas: dict[str, dict[str, float]] = {}
            for key, what in pairs[: 4 + len(self.cfg.platform.logs.apps)]:
                dw = float(cp1["written"].get(key, 0)) - float(cp0["written"].get(key, 0))
                dc = counted(key, cp1["t"])[0] - counted(key, cp0["t"])[0]
                allowed = (
                    (
                        float(cp1["written"].get("lost_bound:soak", 0))
                        - float(cp0["written"].get("lost_bound:soak", 0))
                    )
                    if key == "lines:soak"
                    else 0.0
                )
                lo, tw = max(0.0, dw - dc - allowed), max(0.0, dc - dw)
                dp = counted(key, cp1["t"], prom=True)[0] - counted(key, cp0["t"], prom=True)[0]
                if by_key[key].persistent and dp > dc:  # Prometheus saw it go back: counted again there
                    tw = max(tw, dp - dw)
                lost += lo
                twice += tw
                deltas[key] = {"written": dw, "counted": dc, "prometheus": dp, "may_be_lost": allowed}
                if lo or tw:
                    detail.append(f"{what}: written {dw:.0f}, counted {dc:.0f}, Prometheus {dp:.0f}")
                elif dp < dc:
                    detail.append(f"{what}: {dc - dp:.0f} counted but never scraped by Prometheus")
                if allowed and not tw:
                    detail.append(
                        f"{what}: {max(0.0, dw - dc):.0f} lost to the truncation (at most {allowed:.0f})"
                    )
            fr.segment.update(
                lost=lost, twice=twice, detail=detail, caught_up=cp1["caught_up"], deltas=deltas
            )
            fr.checks["nothing lost"] = lost == 0
            fr.checks["nothing counted twice"] = twice == 0
            if any(v is None for v in cp1["caught_up"].values()):
                fr.checks["exporters caught up after it"] = False
            t1 = (fr.recovered_at or fr.injected_at or fr.planned_at) + self.a.alert_grace
            fr.alerts = self.alerts_in(fr.injected_at or fr.planned_at, t1)
            for k, ok in fr.checks.items():
                about = detail if k in ("nothing lost", "nothing counted twice") else fr.notes
                check(f"{fr.name}: {k}", ok, "; ".join(about))
        for f in self.a.faults:
            if f not in self.a.skip and not any(fr.name == f for fr in self.runs):
                check(f"{f}: ran", False, "not run")
        # ---- quarantine: a shortfall on disk must be visible as an error count
        disk = (
            self._quarantine_lines()
            if self.tmpfs_mounted or self.qdir.exists()
            else {"outputs": 0, "logs": 0}
        )
        q_out = disk["outputs"] + self.deleted_quarantine["outputs"]
        rejected = counted("rejected:predictions", end)[0] + counted("rejected:actuals", end)[0]
        wr_err = counted("quarantine_write_errors", end)[0]
        check(
            "outputs quarantine: every rejected row on disk, or the failure counted",
            q_out >= rejected or wr_err > 0,
            f"{q_out} quarantined rows on disk of {rejected:.0f} rejected; {wr_err:.0f} write errors counted",
        )
        q_logs = disk["logs"] + self.deleted_quarantine["logs"]
        claimed = counted("quarantined_lines", end)[0]
        plog = self.state / "log" / "exporter-platform.log"
        warned = (
            plog.read_text(errors="replace").count("cannot write quarantine file") if plog.exists() else 0
        )
        check(
            "logs quarantine: every sample counted as quarantined is on disk (no error metric exists)",
            q_logs >= claimed,
            f"{q_logs} samples on disk of {claimed:.0f} counted in fleetmon_logs_quarantined_lines_total; "
            f"the platform exporter logged {warned} 'cannot write quarantine file' warnings",
        )
        # ---- components, MLflow
        check(
            "no component left down",
            self.components_ok,
            ", ".join(f"{k} {v}" for k, v in self.components.items()),
        )
        check(
            "every Prometheus target up at the end",
            all(h == "up" for h in self.targets_at_end.values()),
            ", ".join(f"{k} {v}" for k, v in sorted(self.targets_at_end.items())),
        )
        mr = self.mlflow_runs
        mapped = {k: v for k, v in mr["exported"].items() if k != "unmapped" and v}
        check(
            "MLflow runs by status: in MLflow = exported",
            mr["mlflow"] == mapped and not mr["exported"].get("unmapped"),
            f"MLflow {mr['mlflow']}, exporter {mr['exported']}",
        )
        for n in self.notes:
            log.warning("%s", n)
        result = {
            "started": datetime.fromtimestamp(self.t0, UTC).isoformat(),
            "duration_seconds": end - self.t0,
            "directory": str(self.tmp),
            "options": {k: v for k, v in vars(self.a).items() if k != "func"},
            "tmpfs": self.tmpfs_mounted,
            "counts": rows,
            "drops": drops,
            "faults": [self._fault_json(fr) for fr in self.runs],
            "checkpoints": self.checkpoints,
            "components": self.components,
            "targets": self.targets_at_end,
            "mlflow_runs": mr,
            "quarantine": {
                "outputs_on_disk": q_out,
                "outputs_rejected": rejected,
                "outputs_write_errors": wr_err,
                "logs_on_disk": q_logs,
                "logs_counted": claimed,
            },
            "notes": self.notes,
            "checks": checks,
            "passed": all(c["ok"] for c in checks),
        }
        return result

    def fault_at(self, t: float) -> str:
        for fr in self.runs:
            t0 = fr.injected_at or fr.planned_at
            t1 = (fr.recovered_at or t0) + 30
            if t0 - 10 <= t <= t1:
                return fr.name
        return f"at {fmt_s(t - self.t0)}, no fault"

    def _fault_json(self, fr: FaultRun) -> dict[str, Any]:
        inj = fr.injected_at
        return {
            "fault": fr.name,
            "injected_at_seconds": None if inj is None else inj - self.t0,
            "restored_after_seconds": None if inj is None or fr.restored_at is None else fr.restored_at - inj,
            "recovered_after_seconds": None
            if inj is None or fr.recovered_at is None
            else fr.recovered_at - inj,
            "recovered_after_restore_seconds": None
            if fr.recovered_at is None or fr.restored_at is None
            else fr.recovered_at - fr.restored_at,
            "lost": fr.segment.get("lost"),
            "twice": fr.segment.get("twice"),
            "alerts": fr.alerts,
            "expected_alerts": sorted(EXPECTED_ALERTS.get(fr.name, set())),
            "checks": fr.checks,
            "notes": fr.notes + fr.segment.get("detail", []),
            "ok": all(fr.checks.values()),
        }

    # -------------------------------------------------------------------------------- teardown
    def teardown(self) -> None:
        for w in self.writers:
            w.stopping.set()
        if self.sim_paused:
            pid = self.pid("simulator")
            if pid is not None:
                os.killpg(pid, signal.SIGCONT)
        if hasattr(self, "cfg_path"):
            self.stack("down", timeout=180)
        if self.pg is not None:
            if self.pg.running():
                self.pg.stop("immediate")
            self.pg.remove()
        if self.tmpfs_mounted:
            subprocess.run(["umount", str(self.qdir)], capture_output=True)
        if hasattr(self, "tmp") and not self.a.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


EXTRA_NAMES = ("fleetmon_poll_last_success_timestamp_seconds",)


def _json_lines(path: Path) -> int:
    """Lines of the file that are whole JSON documents (a write cut short by a full disk is not one)."""
    n = 0
    for line in path.read_bytes().splitlines():
        try:
            json.loads(line)
            n += 1
        except ValueError:
            pass
    return n


def _value(line: str) -> float:
    try:
        return float(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0.0


def _rfc3339_ts(s: str) -> float:
    if not s:
        return 0.0
    s = re.sub(r"(\.\d{6})\d+", r"\1", s.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return 0.0


# ------------------------------------------------------------------------------------------ printing
def print_report(r: dict[str, Any], out: Any = sys.stdout) -> None:
    def p(s: str = "") -> None:
        print(s, file=out)

    o = r["options"]
    p(
        f"fleetmon soak: {fmt_s(r['duration_seconds'])}, {len(r['faults'])} faults, seed {o['seed']}; {r['directory']}"
    )
    p()
    p("Counts: ground truth (what was written) vs the exporters' own counters summed across restarts")
    p(f"  {'what':<44} {'written':>9} {'counted':>9} {'Prometheus':>10} {'lost':>6} {'twice':>6}  ok")
    for c in r["counts"]:
        lost = f"{c['lost']:.0f}" + (f"<={c['lost_allowed']:.0f}" if c["lost_allowed"] else "")
        prom = "-" if c["prometheus"] is None else f"{c['prometheus']:.0f}"
        p(
            f"  {c['what']:<44} {c['written']:>9.0f} {c['counted']:>9.0f} {prom:>10} {lost:>6} "
            f"{c['twice']:>6.0f}  {'ok' if c['ok'] else 'FAIL'}"
        )
        if c.get("note"):
            p(textwrap.indent(textwrap.fill(c["note"], 100), " " * 6))
    p()
    p("Counters across restarts (a decrease breaks rate()/increase())")
    if not r["drops"]:
        p("  no counter went back")
    for d in r["drops"][:20]:
        p(
            f"  {d['key']}: {d['before']:.0f} -> {d['after']:.0f} seen by {d['seen_by']} at "
            f"{iso(d['t'])} ({d['during']})"
        )
    p()
    p("Faults (times from injection; recovered = target up / component healthy / *_up back to 1)")
    p(
        f"  {'fault':<24} {'at':>6} {'restored':>9} {'recovered':>10} {'lost':>5} {'twice':>6}  ok    "
        "alerts (its own; others started meanwhile)"
    )
    for f in r["faults"]:
        own = [
            f"{k} {'after ' + fmt_s(f['alerts'][k][0]['notified']) if k in f['alerts'] else 'not raised'}"
            for k in f["expected_alerts"]
        ]
        others = [k for k in f["alerts"] if k not in f["expected_alerts"]]
        alerts = ", ".join(own) or "-"
        if others:
            alerts += f"; +{len(others)} other: {', '.join(others)}"
        p(
            f"  {f['fault']:<24} {fmt_s(f['injected_at_seconds']):>6} {fmt_s(f['restored_after_seconds']):>9} "
            f"{fmt_s(f['recovered_after_seconds']):>10} {_n(f['lost']):>5} {_n(f['twice']):>6}  "
            f"{'ok' if f['ok'] else 'FAIL':<5} {alerts}"
        )
        for k, ok in f["checks"].items():
            if not ok:
                p(f"  {'':<24} FAIL: {k}")
        for n in f["notes"]:
            p(textwrap.indent(textwrap.fill(n, 100), " " * 27))
    p("  (its own: the alert the fault should raise if it lasts longer than the alert's for:, and when the")
    p("  webhook receiver got it; others: alerts that started meanwhile, mostly the demo's own incidents)")
    p()
    p("At the end")
    p("  components: " + ", ".join(f"{k} {v}" for k, v in r["components"].items()))
    p("  targets: " + ", ".join(f"{k} {v}" for k, v in sorted(r["targets"].items())))
    mr = r["mlflow_runs"]
    p(f"  MLflow runs: in MLflow {mr['mlflow']}, exported {mr['exported']}")
    qd = r["quarantine"]
    p(
        f"  quarantine: outputs {qd['outputs_on_disk']} rows on disk of {qd['outputs_rejected']:.0f} rejected "
        f"({qd['outputs_write_errors']:.0f} write errors counted); logs {qd['logs_on_disk']} samples on disk of "
        f"{qd['logs_counted']:.0f} counted"
    )
    for n in r["notes"]:
        p(f"  note: {n}")
    p()
    failed = [c for c in r["checks"] if not c["ok"]]
    if not failed:
        p(f"PASS: all {len(r['checks'])} checks hold")
    else:
        p(f"FAIL: {len(failed)} of {len(r['checks'])} checks failed")
        for c in failed:
            p(f"  - {c['check']}: {c['detail']}")


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    faults = "\n".join(
        textwrap.fill(f"{name}: {text}", 100, initial_indent="  ", subsequent_indent="      ")
        for name, text in FAULTS.items()
    )
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent(
            """\
            Run the demo stack (`fleetmon stack up` on free ports under a temporary directory, the demo at
            480x, as tests/conftest.py's demo_stack) with a PostgreSQL SQL source and the soak's own writers
            (SQL rows, bad prediction rows, a busy log file with bad lines), inject faults on a schedule
            spread over --duration, then compare every prediction, actual and log line written with what the
            exporters counted (accepted + rejected), summed across restarts. Exit 0 only if every check holds.
            Needs root for the tmpfs (PostgreSQL runs as an unprivileged user). See docs/soak.md."""
        ),
        epilog="faults, in their default order:\n" + faults,
    )
    p.add_argument(
        "--duration",
        type=parse_duration,
        default=parse_duration("20m"),
        help="how long the soak runs, faults spread over it (default 20m)",
    )
    p.add_argument(
        "--json", type=Path, help="also write the result (table, checks, checkpoints) as JSON here"
    )
    p.add_argument(
        "--faults",
        type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
        default=list(DEFAULT_ORDER),
        help="comma-separated faults to inject, in this order (default: all)",
    )
    p.add_argument(
        "--skip",
        type=lambda s: [f.strip() for f in s.split(",") if f.strip()],
        default=[],
        help="comma-separated faults to leave out",
    )
    p.add_argument(
        "--exporter-down-for",
        type=parse_duration,
        default=90.0,
        help="how long a killed exporter stays down (default 90s: FleetmonTargetDown has for: 1m)",
    )
    p.add_argument("--mlflow-down-for", type=parse_duration, default=120.0, help="MLflow outage (default 2m)")
    p.add_argument(
        "--postgres-down-for", type=parse_duration, default=30.0, help="PostgreSQL outage (default 30s)"
    )
    p.add_argument(
        "--quarantine-full-for",
        type=parse_duration,
        default=60.0,
        help="how long the quarantine tmpfs stays full (default 60s)",
    )
    p.add_argument("--tmpfs-size", default="64k", help="size of the quarantine tmpfs (default 64k)")
    p.add_argument(
        "--log-rate", type=float, default=200.0, help="lines per second of the soak's own log (default 200)"
    )
    p.add_argument(
        "--truncate-burst",
        type=int,
        default=500,
        help="lines written right before the truncation, which it may take (default 500)",
    )
    p.add_argument(
        "--sql-rows", type=int, default=5, help="rows inserted into PostgreSQL per second (default 5)"
    )
    p.add_argument(
        "--bad-rows-every",
        type=parse_duration,
        default=15.0,
        help="a file of bad prediction rows every ... (default 15s)",
    )
    p.add_argument(
        "--warmup", type=parse_duration, default=45.0, help="before the first checkpoint (default 45s)"
    )
    p.add_argument(
        "--tail", type=parse_duration, default=60.0, help="after the last fault is scheduled (default 60s)"
    )
    p.add_argument(
        "--recover-timeout",
        type=parse_duration,
        default=240.0,
        help="longest wait for a fault to recover before it counts as failed (default 4m)",
    )
    p.add_argument(
        "--alert-grace",
        type=parse_duration,
        default=45.0,
        help="alerts that start this long after recovery still count for the fault (default 45s)",
    )
    p.add_argument(
        "--seed", type=int, default=1, help="seed of the soak's randomness (kill phases, log lines)"
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="the stack without TLS and basic auth (default: the secure mode, as the e2e tests)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data, config)")
    return p


def _check_plan(a: argparse.Namespace) -> None:
    unknown = [f for f in [*a.faults, *a.skip] if f not in FAULTS]
    if unknown:
        raise SystemExit(f"soak: unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    holds = {
        "kill-exporter-outputs": a.exporter_down_for,
        "kill-exporter-platform": a.exporter_down_for,
        "kill-exporter-mlflow": a.exporter_down_for,
        "mlflow-down": a.mlflow_down_for,
        "postgres-restart": a.postgres_down_for,
        "quarantine-full": a.quarantine_full_for,
    }
    faults = [f for f in a.faults if f not in a.skip]
    # each fault: its hold, ~30 s to recover, ~20 s for the checkpoint after it
    need = sum(holds.get(f, 0.0) + 50.0 for f in faults)
    avail = a.duration - a.warmup - a.tail
    if need > avail:
        raise SystemExit(
            f"soak: {len(faults)} faults need about {fmt_s(need)} but --duration leaves {fmt_s(avail)} after "
            "--warmup and --tail: give a longer --duration, fewer --faults or shorter --*-down-for"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_plan(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().handlers[0].setLevel(logging.INFO)
    log.setLevel(logging.DEBUG)  # the soak's own log file (in its directory) gets its details
    soak = Soak(args)
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        result = soak.run()
    except (SoakError, KeyboardInterrupt) as e:
        print(f"soak: stopped: {e or 'interrupted'}", file=sys.stderr)
        soak.teardown()
        return 2
    except Exception:
        log.exception("soak failed")
        soak.teardown()
        return 2
    soak.teardown()
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
