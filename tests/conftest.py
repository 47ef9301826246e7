"""Shared fixtures: real processes, started once per test session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetmon import pki
from fleetmon.config import Config, load_config
from fleetmon.procs import (
    free_port,
    free_port_below_ephemeral,
    spawn,
    start_mlflow_server,
    stop_group,
    wait_for_http,
)

# NannyML (the reference some tests compare with) sends usage events to segment.io unless told not to.
os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")

ROOT = Path(__file__).resolve().parent.parent


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark the tests on the session's `demo_stack`: `make test` runs them (`-m demo_stack`, mostly waiting
    for the demo's incidents to page and resolve) in a second pytest process beside every other test."""
    if "demo_stack" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.demo_stack)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, local artifacts) on a free port; yields its URL.

    Shared by the whole session: tests must create their own experiments / model names
    (e.g. with a unique prefix) and never assume an empty server.
    """
    port = free_port()
    proc = start_mlflow_server(port, tmp_path_factory.mktemp("mlflow"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway (Debian's ``prometheus-pushgateway``) on a free port; yields its URL."""
    if shutil.which("prometheus-pushgateway") is None:
        pytest.skip("prometheus-pushgateway not installed")
    port = free_port()
    proc = spawn(
        # Debian's build persists to /var/lib/prometheus/pushgateway.data by default: keep tests apart.
        [
            "prometheus-pushgateway",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={tmp_path / 'pushgateway.data'}",
        ],
        tmp_path / "pushgateway.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", timeout=30, proc=proc)
        yield url
    finally:
        stop_group(proc)


# ------------------------------------------------------------------------------------ demo_stack
# The whole native stack (`fleetmon stack up`) on the demo fleet, once per session, on free ports under a
# temporary directory (the approach of tests/test_stack_e2e.py, copied, not imported). Tuned for tests: the
# demo runs 4x faster than `make up` (one simulated hour = 7.5 s, the quality and drift windows scaled to
# match, so "24h" is still 24 simulated hours), its first incidents start soon and last 3 to 3.3 minutes,
# Prometheus scrapes and evaluates every 5 s and Alertmanager groups within seconds, so alerts fire, notify
# and resolve within a short test. Alert rules and `for:` durations are the shipped ones.
DEMO_STACK_TUNING: dict[str, Any] = {
    # merged into the config copy
    "config": {
        # TLS and basic auth between every component (`make up` runs the plain mode: tests/test_stack_e2e.py)
        "stack": {"secure": True},
        "demo": {
            "time_scale": 480,
            "first_incident_after_seconds": 20,
            "incident_duration_seconds": [180, 200],
        },
        "mlflow": {"poll_interval_seconds": 5},
        # the registry's versions scored and logged back often, failed loads (a seeded version whose model
        # is still being logged) tried again soon
        "scoring": {"interval_seconds": 10, "window_seconds": 1500, "retry_after_seconds": 20},
        "evaluations": {"interval_seconds": 15},
        "outputs": {
            "poll_interval_seconds": 3,
            "windows": {"24h": 180, "7d": 1260},
            "retention_seconds": 1500,
            # the estimates' accuracy checked 12 simulated hours later (the demo's latest actuals: 10 h)
            "estimation": {"settle_seconds": 90},
            "drift": {
                "interval_seconds": 10,
                "reference_window_seconds": 1260,
                "current_window_seconds": 180,
            },
        },
    },
    # rewritten into the stack's rendered prometheus.yml / alertmanager.yml, then reloaded
    "prometheus_global": {"evaluation_interval": "5s", "scrape_interval": "5s", "scrape_timeout": "4s"},
    "alertmanager_route": {"group_wait": "5s", "group_interval": "10s", "repeat_interval": "1h"},
}


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


@dataclass
class DemoStack:
    cfg: Config  # the loaded config copy (fleet, ports, paths)
    config_path: Path
    state_dir: Path  # pid files, logs and data: state_dir/run, state_dir/log, state_dir/data
    demo_dir: Path  # simulator output: outputs/, logs/, ground_truth.jsonl
    started_at: float  # unix time when `stack up` returned (all components healthy)
    prometheus_url: str
    alertmanager_url: str
    webhook_url: str
    pushgateway_url: str
    mlflow_url: str

    def ground_truth(self) -> list[dict[str, Any]]:
        path = self.demo_dir / "ground_truth.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def scheduled_ground_truth(self, timeout: float = 180) -> list[dict[str, Any]]:
        """The ground truth once the simulator's first step has scheduled incidents (the quiet-buildings
        record comes first, written at its start); fails with the simulator's log if it never does."""
        deadline = time.time() + timeout
        while True:
            gt = self.ground_truth()
            if len(gt) > 1:
                return gt
            if time.time() > deadline:
                log = self.state_dir / "log" / "simulator.log"
                tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no simulator.log)"
                raise AssertionError(
                    f"no incident scheduled {timeout:.0f} s after start; simulator.log:\n{tail}"
                )
            time.sleep(2)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query against the stack's Prometheus; the `result` list."""
        return self.query_api("/api/v1/query", query=promql)["result"]

    def query_api(self, path: str, **params: str) -> Any:
        """GET a Prometheus API path; its `data`."""
        return _get_json(self.prometheus_url, path, **params)["data"]


def _get_json(base: str, path: str, **params: str) -> Any:
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url: str) -> None:
    req = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


def _demo_stack_config(tmp: Path, tuning: dict[str, Any] | None = None) -> Path:
    """The shipped config and demo fleet copied to tmp/config, every port moved to a free one (so ../var is
    tmp/var), with ``tuning`` merged in. The ports lie below the ephemeral range: the stack binds them only
    after MLflow has started, and meanwhile the other pytest process binds ports of its own."""
    conf_dir = tmp / "config"
    conf_dir.mkdir()
    doc = yaml.safe_load((ROOT / "config" / "fleetmon.yml").read_text())
    include = doc.get("fleet", {}).get("include")
    if include:
        shutil.copy(ROOT / "config" / include, conf_dir / include)
    for section in ("mlflow", "outputs", "platform"):
        doc[section]["listen"]["port"] = free_port_below_ephemeral()
    stack = doc.setdefault("stack", {})
    for key in (
        "prometheus_port",
        "alertmanager_port",
        "pushgateway_port",
        "mlflow_port",
        "grafana_port",
        "webhook_port",
    ):
        stack[key] = free_port_below_ephemeral()
    doc["mlflow"]["tracking_uri"] = f"http://127.0.0.1:{stack['mlflow_port']}"
    # the simulator's training API, and the retraining requests the webhook receiver posts to it
    api_port = free_port_below_ephemeral()
    doc.setdefault("demo", {})["training_api_port"] = api_port
    retrain = doc.get("actions", {}).get("retrain")
    if retrain and retrain.get("url"):
        retrain["url"] = f"http://127.0.0.1:{api_port}/train"
    if tuning:
        _merge(doc, tuning)
    path = conf_dir / "fleetmon.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run_stack(cfg: Path, state: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetmon.cli",
            "stack",
            *args,
            "--config.file",
            str(cfg),
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        # Keep the developer's MLflow / fleetmon settings out of the demo stack.
        env={k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FLEETMON"))},
    )


def _retune(path: Path, edit: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    edit(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="session")
def make_stack_config() -> Callable[[Path], Path]:
    """Write the shipped config, untuned, on free ports under a directory; returns its path."""
    return _demo_stack_config


@pytest.fixture(scope="session")
def run_stack() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_stack(config_path, state_dir, "up" | "down" | "status", ...)``: the real ``fleetmon stack`` CLI."""
    return _run_stack


@pytest.fixture(scope="session")
def demo_stack() -> Iterator[DemoStack]:
    """The real stack on the demo fleet (see DEMO_STACK_TUNING); stopped at the end of the session.

    Its directory is its own (not under pytest's basetemp: pytest prunes old basetemps, and other sessions
    running at the same time would delete a live stack's files); removed at the end unless
    FLEETMON_KEEP_DEMO_STACK is set.
    """
    tmp = Path(tempfile.mkdtemp(prefix="fleetmon-demo-stack-"))
    cfg_path = _demo_stack_config(tmp, DEMO_STACK_TUNING["config"])
    cfg = load_config(cfg_path, environ={})
    state = tmp / "stack"
    st = cfg.stack
    try:
        up = _run_stack(cfg_path, state, "up")
        started_at = time.time()
        if up.returncode != 0:
            pytest.fail(f"demo_stack: `fleetmon stack up` failed:\n{up.stdout}\n{up.stderr}")
        ds = DemoStack(
            cfg=cfg,
            config_path=cfg_path,
            state_dir=state,
            demo_dir=cfg.demo.output_dir,
            started_at=started_at,
            prometheus_url=f"https://127.0.0.1:{st.prometheus_port}",
            alertmanager_url=f"https://127.0.0.1:{st.alertmanager_port}",
            webhook_url=f"https://127.0.0.1:{st.webhook_port}",
            pushgateway_url=f"https://127.0.0.1:{st.pushgateway_port}",
            mlflow_url=f"http://127.0.0.1:{st.mlflow_port}",  # the demo's MLflow stays plain, on 127.0.0.1
        )
        # Secure mode: every plain urlopen() of the tests trusts the stack's CA and sends the `fleetmon`
        # user's credentials, to the stack's four servers only; `fleetmon push` reads the same from the env.
        data = state / "data"
        client = pki.client(data)
        urllib.request.install_opener(
            client.opener(ds.prometheus_url, ds.alertmanager_url, ds.webhook_url, ds.pushgateway_url)
        )
        for var, value in (
            ("FLEETMON_PUSHGATEWAY_CA_FILE", data / "tls" / "ca.crt"),
            ("FLEETMON_PUSHGATEWAY_USERNAME", "fleetmon"),
            ("FLEETMON_PUSHGATEWAY_PASSWORD_FILE", data / "secrets" / "fleetmon.password"),
        ):
            os.environ[var] = str(value)
        # Faster rule evaluation and notification grouping: edit the stack's rendered copies (ports are
        # moved, so the stack wrote them under data/) and reload.

        def prom(doc: dict[str, Any]) -> None:
            doc["global"].update(DEMO_STACK_TUNING["prometheus_global"])
            for sc in doc.get("scrape_configs") or []:  # per-job intervals must not exceed the timeout
                sc.pop("scrape_interval", None)
                sc.pop("scrape_timeout", None)

        def am(doc: dict[str, Any]) -> None:
            doc["route"].update(DEMO_STACK_TUNING["alertmanager_route"])

        _retune(data / "prometheus" / "prometheus.yml", prom)
        _retune(data / "alertmanager" / "alertmanager.yml", am)
        _post(ds.prometheus_url + "/-/reload")
        _post(ds.alertmanager_url + "/-/reload")
        # Every scrape target up before tests start (the exporters' first polls take a few seconds).
        deadline = time.monotonic() + 90
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            targets = _get_json(ds.prometheus_url, "/api/v1/targets")["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in targets}
            if health and all(h == "up" for h in health.values()):
                break
            time.sleep(1)
        else:
            pytest.fail(f"demo_stack: targets not all up within 90 s: {health}")
        yield ds
    finally:
        started = {p.stem: int(p.read_text()) for p in (state / "run").glob("*.pid")}
        down = _run_stack(cfg_path, state, "down", timeout=120)
        left = _left_behind(tmp, started, [*_stack_ports(cfg)]) if down.returncode == 0 else []
        if down.returncode == 0 and not left and not os.environ.get("FLEETMON_KEEP_DEMO_STACK"):
            shutil.rmtree(tmp, ignore_errors=True)
    # `down` stops everything `up` started and frees every port (tests/test_stack_e2e.py tests `up`).
    assert down.returncode == 0, f"demo_stack: `fleetmon stack down` failed:\n{down.stdout}\n{down.stderr}"
    assert not left, f"demo_stack: left behind after `fleetmon stack down`: {left}"


def _stack_ports(cfg: Config) -> Iterator[int]:
    st = cfg.stack
    yield from (
        st.prometheus_port,
        st.alertmanager_port,
        st.pushgateway_port,
        st.mlflow_port,
        st.webhook_port,
    )
    yield from (cfg.mlflow.listen.port, cfg.outputs.listen.port, cfg.platform.listen.port)


def _left_behind(tmp: Path, started: dict[str, int], ports: list[int]) -> list[str]:
    """What still runs of a stack after `down`: its processes (by pid, or naming its directory), its ports."""
    import psutil

    from fleetmon.procs import port_open

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in started.values()):
        time.sleep(0.2)
    left = [f"{name} (pid {pid})" for name, pid in started.items() if alive(pid)]
    left += [
        f"pid {p.info['pid']}: {' '.join(p.info['cmdline'])[:120]}"
        for p in psutil.process_iter(["pid", "cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE and str(tmp) in " ".join(p.info["cmdline"] or [])
    ]
    return left + [f"port {port} still open" for port in ports if port_open(port)]
