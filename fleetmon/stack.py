"""``fleetmon stack up|down|status|logs``: the whole monitoring stack as native background processes.

``up`` starts, in dependency order, each component in its own process group (``fleetmon.procs.spawn``)
and waits until it is healthy:

  1. ``mlflow`` (tracking server), ``alertmanager``, ``pushgateway``, ``webhook`` (notification receiver),
     ``prometheus``
  2. ``simulator`` (the demo fleet), ``exporter-mlflow``, ``exporter-outputs``, ``exporter-platform``,
     ``scoring`` (``fleetmon score``, when ``scoring.enabled``), ``evaluations`` (``fleetmon evaluations``,
     when ``evaluations.enabled``: it reads this stack's Prometheus unless the config names one),
     ``grafana`` (only when a ``grafana-server`` / ``grafana`` binary is on PATH)

Every component has a pid file ``<stack.state_dir>/<name>.pid`` (plus ``<name>.json``: pid, start time,
command line), a log ``<stack.log_dir>/<name>.log`` and its data under ``<stack.data_dir>/<name>``.
A component counts as running only if its pid is alive, leads its own process group and has the start
time recorded when we started it, so a recycled pid is never mistaken for ours and never signalled;
such a pid file is stale and is removed. ``up`` twice starts nothing twice. ``down`` stops exactly the
process groups named by the pid files and checks the ports are free.

With ``stack.demo: false`` (monitoring a real deployment) neither the local MLflow nor the simulator is
started; with the demo on, the simulator is refused when ``mlflow.tracking_uri`` is not the stack's own
MLflow, so fake runs can never be written to a real tracking server. The simulator serves its training API
on 127.0.0.1:``demo.training_api_port`` and pushes its training jobs' outcomes to this stack's Pushgateway
(``simulator_env``: over TLS as the ``fleetmon`` user in secure mode).

Ports come from the config (``stack:`` and each exporter's ``listen``). ``prometheus/prometheus.yml`` and
``alertmanager/alertmanager.yml`` are used as they are when the ports are the defaults they name;
otherwise a copy with the configured ports is written under ``<stack.data_dir>``.

``stack.secure: true`` runs the same stack with TLS and basic auth between every component: the CA,
certificate, passwords and web config of ``fleetmon.pki`` (made on first use under ``<stack.data_dir>``)
are given to every server (``--web.config.file``: Prometheus, Alertmanager, Pushgateway, the exporters, the
webhook receiver; Grafana its own https settings), the rendered configs (always rendered then) scrape and
notify over https with ``tls_config.ca_file`` and ``basic_auth.password_file``, the health probes use the
CA and the ``fleetmon`` user, and the URLs shown are https. The demo MLflow stays plain HTTP and listens
on 127.0.0.1 only. ``fleetmon stack secure-files`` writes those files, plus the Prometheus and Alertmanager
configs ``docker-compose.secure.yml`` mounts, without starting anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import yaml

from fleetmon import pki, scale
from fleetmon.config import Config, ConfigError, default_config_path, load_config
from fleetmon.procs import MLFLOW_ENV, mlflow_server_argv, port_open, spawn, stop_group, wait_for_http

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_YML = ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER_YML = ROOT / "alertmanager" / "alertmanager.yml"
GRAFANA_PROVISIONING = ROOT / "grafana" / "provisioning"
GRAFANA_DASHBOARDS = ROOT / "grafana" / "dashboards"

# The default ports written in prometheus.yml / alertmanager.yml (and docker-compose.yml).
DEFAULT_PORTS = {
    "prometheus": 9090,
    "alertmanager": 9093,
    "pushgateway": 9091,
    "fleetmon-mlflow": 9701,
    "fleetmon-outputs": 9702,
    "fleetmon-platform": 9703,
    "fleetmon-webhook": 9704,
}
# A process without a health endpoint (the simulator) must stay alive this long to count as started.
SETTLE_SECONDS = 3.0
GRAFANA_HINT = (
    "Grafana: no grafana-server or grafana binary on PATH, so it is not started (everything else runs).\n"
    "  Get it with Docker: `docker compose up -d grafana` (host network: it reads this stack's Prometheus\n"
    "  on 127.0.0.1 and the provisioning in grafana/), or install it from\n"
    "  https://grafana.com/docs/grafana/latest/setup-grafana/installation/ and run `make up` again."
)


@dataclass
class Component:
    name: str
    argv: list[str]
    tier: int
    port: int | None = None
    health_url: str | None = None
    url: str | None = None  # what to show the user
    env: dict[str, str] = field(default_factory=dict)
    # Why it cannot run here (a binary or module missing); such a component is skipped with this note.
    missing: str | None = None
    optional: bool = False
    # One more line for the user under the component's URL (where Grafana's admin password is).
    note: str | None = None
    # How the health probe talks to it in secure mode (the stack's CA, the `fleetmon` user's credentials).
    probe: pki.Client | None = None


@dataclass
class Paths:
    run_dir: Path
    log_dir: Path
    data_dir: Path

    @classmethod
    def of(cls, cfg: Config, state_dir: Path | None = None) -> Paths:
        if state_dir is not None:  # everything of the stack under one directory (tests, experiments)
            return cls(state_dir / "run", state_dir / "log", state_dir / "data")
        return cls(cfg.stack.state_dir, cfg.stack.log_dir, cfg.stack.data_dir)

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def meta_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"


# ------------------------------------------------------------------------------------------ the plan
def fleetmon_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetmon.cli", *args]


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


@dataclass(frozen=True)
class SecureRefs:
    """Where a rendered config finds the secure stack's CA and passwords, as its reader sees them: this
    machine's data dir (``of``), or the mounts of docker-compose.secure.yml (``COMPOSE_REFS``)."""

    ca_file: str
    secrets_dir: str

    @classmethod
    def of(cls, files: pki.StackFiles) -> SecureRefs:
        return cls(str(files.ca_cert), str(files.secrets_dir))

    def client_config(self, user: str) -> dict[str, Any]:
        """prometheus/common's HTTP client settings: trust the CA, authenticate as ``user``."""
        return {
            "tls_config": {"ca_file": self.ca_file},
            "basic_auth": {"username": user, "password_file": f"{self.secrets_dir}/{user}.password"},
        }


# docker-compose.secure.yml mounts <data_dir>/tls and <data_dir>/secrets here in Prometheus' and
# Alertmanager's containers.
COMPOSE_REFS = SecureRefs("/etc/fleetmon/tls/ca.crt", "/etc/fleetmon/secrets")


def _relative_to(base: str | Path, paths: list[str]) -> list[str]:
    return [g if os.path.isabs(g) else os.path.join(str(base), g) for g in paths]


def render_prometheus_config(
    cfg: Config,
    data_dir: Path,
    source: Path = PROMETHEUS_YML,
    secure: SecureRefs | None = None,
    out: Path | None = None,
    base: str | Path | None = None,
) -> Path:
    """``source`` if its targets already name the configured ports (and not ``secure``), else a copy that
    does, written to ``out`` (default ``<data_dir>/prometheus/prometheus.yml``).

    ``secure``: every scrape job and the Alertmanagers over https, trusting the stack's CA, with the
    ``prometheus`` user's password from its file. ``base``: where the copy's reader finds the rule files
    (default: beside ``source``).
    """
    ports = {
        "prometheus": cfg.stack.prometheus_port,
        "alertmanager": cfg.stack.alertmanager_port,
        "pushgateway": cfg.stack.pushgateway_port,
        "fleetmon-mlflow": cfg.mlflow.listen.port,
        "fleetmon-outputs": cfg.outputs.listen.port,
        "fleetmon-platform": cfg.platform.listen.port,
        "fleetmon-webhook": cfg.stack.webhook_port,
    }
    if ports == DEFAULT_PORTS and secure is None:
        return source
    doc = yaml.safe_load(source.read_text())
    # Relative rule globs are relative to the config file: keep them pointing at prometheus/rules.
    doc["rule_files"] = _relative_to(base or source.parent, doc.get("rule_files") or [])
    for sc in doc.get("scrape_configs") or []:
        port = ports.get(sc["job_name"])
        if port is not None:
            sc["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        if secure is not None:
            sc.update(scheme="https", **secure.client_config("prometheus"))
    for am in (doc.get("alerting") or {}).get("alertmanagers") or []:
        am["static_configs"] = [{"targets": [f"127.0.0.1:{cfg.stack.alertmanager_port}"]}]
        if secure is not None:
            am.update(scheme="https", **secure.client_config("prometheus"))
    out = out or data_dir / "prometheus" / "prometheus.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = ", TLS and basic auth to every target (stack.secure)" if secure else ""
    out.write_text(
        f"# Written by `fleetmon stack` from {source} with the ports of {cfg.source}{mode}.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    return out


def render_alertmanager_config(
    cfg: Config,
    data_dir: Path,
    source: Path = ALERTMANAGER_YML,
    secure: SecureRefs | None = None,
    out: Path | None = None,
    base: str | Path | None = None,
) -> Path:
    """``source`` unless the webhook port differs from 9704 or ``secure``: then a copy with the configured
    port (``secure``: over https, trusting the stack's CA, as the ``alertmanager`` user), written to ``out``
    (default ``<data_dir>/alertmanager/alertmanager.yml``); ``base``: where its reader finds the templates."""
    port = cfg.stack.webhook_port
    if port == DEFAULT_PORTS["fleetmon-webhook"] and secure is None:
        return source
    doc = yaml.safe_load(source.read_text())
    # Only the stack's own webhook receiver moves; any other receiver URL is left as it is.
    default = re.compile(r"^(https?)://(127\.0\.0\.1|localhost):9704(/.*)?$")
    for rcv in doc.get("receivers") or []:
        for wh in rcv.get("webhook_configs") or []:
            url = wh.get("url")
            m = default.match(url) if isinstance(url, str) else None
            if m is None:
                continue
            scheme = "https" if secure is not None else m.group(1)
            wh["url"] = f"{scheme}://{m.group(2)}:{port}{m.group(3) or ''}"
            if secure is not None:
                wh["http_config"] = secure.client_config("alertmanager")
    doc["templates"] = _relative_to(base or source.parent, doc.get("templates") or [])
    out = out or data_dir / "alertmanager" / "alertmanager.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = ", TLS and basic auth to the webhook receiver (stack.secure)" if secure else ""
    out.write_text(
        f"# Written by `fleetmon stack` from {source} with the ports of {cfg.source}{mode}.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    return out


def find_grafana() -> tuple[list[str], Path] | None:
    """(command, homepath) of a local Grafana, or None. ``grafana server`` (>= 10) or ``grafana-server``."""
    for name, sub in (("grafana", ["server"]), ("grafana-server", [])):
        exe = shutil.which(name)
        if not exe:
            continue
        real = Path(exe).resolve()
        # $GRAFANA_HOME, a release tarball (bin/ inside the home), the distribution and Homebrew layouts.
        candidates = [os.environ.get("GRAFANA_HOME", ""), str(real.parent.parent), "/usr/share/grafana"]
        candidates += ["/usr/local/share/grafana", "/opt/homebrew/share/grafana"]
        for home in candidates:
            if home and (Path(home) / "conf" / "defaults.ini").is_file():
                return [exe, *sub], Path(home)
    return None


def _demo_mlflow_mismatch(cfg: Config) -> str | None:
    """The simulator writes fake runs to ``mlflow.tracking_uri``: only ever to the stack's own MLflow."""
    u = urlsplit(cfg.mlflow.tracking_uri)
    local = {"127.0.0.1", "localhost", "::1"}
    if not cfg.stack.secure:  # the secure stack's MLflow listens on 127.0.0.1 only
        local.add(_probe_host(cfg.stack.bind_host))
    if u.hostname in local and u.port == cfg.stack.mlflow_port:
        return None
    return (
        f"mlflow.tracking_uri is {cfg.mlflow.tracking_uri}, not the stack's MLflow on port "
        f"{cfg.stack.mlflow_port}: the demo simulator would write fake runs there. To monitor a real "
        "MLflow set stack.demo: false (see docs/configuration.md)"
    )


def _module_missing(module: str) -> str | None:
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"python module {module} is not installed"


def _binary(name: str) -> tuple[str, str | None]:
    exe = shutil.which(name)
    if exe:
        return exe, None
    return name, f"{name} not found on PATH (run `make deps`, or see scripts/install-system-deps.sh)"


def secure_files(cfg: Config, data_dir: Path) -> pki.StackFiles:
    """The secure stack's CA, certificate, passwords and web config, made or renewed (``fleetmon.pki``);
    the certificate names 127.0.0.1, localhost and every specific address the stack listens on."""
    hosts = pki.server_hosts(
        cfg.stack.bind_host, cfg.mlflow.listen.host, cfg.outputs.listen.host, cfg.platform.listen.host
    )
    return pki.ensure(data_dir, hosts)


def plan(cfg: Config, paths: Paths) -> list[Component]:
    """Every component of the stack for this config, in start order."""
    st, host = cfg.stack, cfg.stack.bind_host
    probe = _probe_host(host)
    conf = str(cfg.source or default_config_path())
    data = paths.data_dir
    out: list[Component] = []
    sec = secure_files(cfg, data) if st.secure else None
    refs = SecureRefs.of(sec) if sec else None
    scheme = "https" if sec else "http"
    client = pki.client(data) if sec else None
    web = [f"--web.config.file={sec.web_config}"] if sec else []

    if st.demo:
        # The demo's backend, not on the monitoring path: plain HTTP, so in secure mode never exposed.
        mlflow_host = "127.0.0.1" if sec else host
        mprobe = _probe_host(mlflow_host)
        out.append(
            Component(
                "mlflow",
                mlflow_server_argv(mlflow_host, st.mlflow_port, data / "mlflow"),
                tier=1,
                port=st.mlflow_port,
                health_url=f"http://{mprobe}:{st.mlflow_port}/health",
                url=f"http://{mprobe}:{st.mlflow_port}",
                env=dict(MLFLOW_ENV),
            )
        )
    am_exe, am_missing = _binary("prometheus-alertmanager")
    if am_missing and shutil.which("alertmanager"):  # the upstream release's name
        am_exe, am_missing = _binary("alertmanager")
    out.append(
        Component(
            "alertmanager",
            [
                am_exe,
                f"--config.file={render_alertmanager_config(cfg, data, secure=refs)}",
                f"--storage.path={data / 'alertmanager'}",
                f"--web.listen-address={host}:{st.alertmanager_port}",
                f"--web.external-url={scheme}://{probe}:{st.alertmanager_port}",
                "--cluster.listen-address=",  # a single instance: no gossip port
                *web,
            ],
            tier=1,
            port=st.alertmanager_port,
            health_url=f"{scheme}://{probe}:{st.alertmanager_port}/-/ready",
            url=f"{scheme}://{probe}:{st.alertmanager_port}",
            missing=am_missing,
            probe=client,
        )
    )
    pg_exe, pg_missing = _binary("prometheus-pushgateway")
    if pg_missing and shutil.which("pushgateway"):
        pg_exe, pg_missing = _binary("pushgateway")
    (data / "pushgateway").mkdir(parents=True, exist_ok=True)
    out.append(
        Component(
            "pushgateway",
            [
                pg_exe,
                f"--web.listen-address={host}:{st.pushgateway_port}",
                f"--persistence.file={data / 'pushgateway' / 'metrics.store'}",
                *web,
            ],
            tier=1,
            port=st.pushgateway_port,
            health_url=f"{scheme}://{probe}:{st.pushgateway_port}/-/ready",
            url=f"{scheme}://{probe}:{st.pushgateway_port}",
            missing=pg_missing,
            probe=client,
        )
    )
    out.append(
        Component(
            "webhook",
            fleetmon_argv(
                "webhook",
                "--config.file",
                conf,
                "--web.listen-address",
                f"{host}:{st.webhook_port}",
                "--data-dir",
                str(data / "webhook"),
                *web,
            ),
            tier=1,
            port=st.webhook_port,
            health_url=f"{scheme}://{probe}:{st.webhook_port}/-/healthy",
            url=f"{scheme}://{probe}:{st.webhook_port}",
            probe=client,
        )
    )
    prom_exe, prom_missing = _binary("prometheus")
    out.append(
        Component(
            "prometheus",
            [
                prom_exe,
                f"--config.file={render_prometheus_config(cfg, data, secure=refs)}",
                f"--storage.tsdb.path={data / 'prometheus'}",
                f"--web.listen-address={host}:{st.prometheus_port}",
                f"--web.external-url={scheme}://{probe}:{st.prometheus_port}",
                "--web.enable-lifecycle",  # POST /-/reload after editing rules
                *web,
            ],
            tier=1,
            port=st.prometheus_port,
            health_url=f"{scheme}://{probe}:{st.prometheus_port}/-/ready",
            url=f"{scheme}://{probe}:{st.prometheus_port}",
            missing=prom_missing,
            probe=client,
        )
    )
    if st.demo:
        api_port = cfg.demo.training_api_port
        out.append(
            Component(
                "simulator",
                fleetmon_argv("demo", "run", "--config.file", conf),
                tier=2,
                # The training API is the demo's, plain HTTP on 127.0.0.1 (like its MLflow). No `port`:
                # a port in use only turns the API off, it must not keep the simulator from starting.
                url=f"http://127.0.0.1:{api_port}" if api_port else None,
                note="training API: POST /train (docs/formats.md)" if api_port else None,
                env=simulator_env(cfg, f"{scheme}://{probe}:{st.pushgateway_port}", sec),
                missing=_demo_mlflow_mismatch(cfg) or _module_missing("simulator.cli"),
            )
        )
    for name, listen in (
        ("mlflow", cfg.mlflow.listen),
        ("outputs", cfg.outputs.listen),
        ("platform", cfg.platform.listen),
    ):
        p = _probe_host(listen.host)
        out.append(
            Component(
                f"exporter-{name}",
                fleetmon_argv("exporter", name, "--config.file", conf, *web),
                tier=2,
                port=listen.port,
                health_url=f"{scheme}://{p}:{listen.port}/-/healthy",
                url=f"{scheme}://{p}:{listen.port}/metrics",
                missing=_module_missing(f"exporters.{name}"),
                probe=client,
            )
        )
    pushgateway = f"{scheme}://{probe}:{st.pushgateway_port}"
    if cfg.scoring.enabled:
        out.append(
            Component(
                "scoring",
                fleetmon_argv("score", "--config.file", conf),
                tier=2,
                env=push_env(pushgateway, sec),
                missing=_module_missing("fleetmon.scoring"),
            )
        )
    if cfg.evaluations.enabled:
        out.append(
            Component(
                "evaluations",
                fleetmon_argv("evaluations", "--config.file", conf),
                tier=2,
                env={
                    **push_env(pushgateway, sec),
                    **evaluations_env(cfg, f"{scheme}://{probe}:{st.prometheus_port}", sec),
                },
                missing=_module_missing("fleetmon.evaluations"),
            )
        )
    out.append(grafana_component(cfg, paths, sec))
    if st.scale.shards:
        return scale.scaled(cfg, data, conf, out, PROMETHEUS_YML)
    return out


def push_env(pushgateway: str, secure: pki.StackFiles | None) -> dict[str, str]:
    """``fleetmon push``'s settings for a job of the stack: this stack's Pushgateway, in secure mode over TLS
    as the ``fleetmon`` user (emptied in plain mode, so no stray credentials of the caller go along)."""
    return {
        "FLEETMON_PUSHGATEWAY": pushgateway,
        "FLEETMON_PUSHGATEWAY_CA_FILE": str(secure.ca_cert) if secure else "",
        "FLEETMON_PUSHGATEWAY_USERNAME": "fleetmon" if secure else "",
        "FLEETMON_PUSHGATEWAY_PASSWORD_FILE": str(secure.password_file("fleetmon")) if secure else "",
    }


def evaluations_env(cfg: Config, prometheus: str, secure: pki.StackFiles | None) -> dict[str, str]:
    """``fleetmon evaluations`` reads this stack's Prometheus (in secure mode trusting the stack's CA, as
    the ``fleetmon`` user), unless the config names a Prometheus of its own."""
    if "prometheus_url" in cfg.evaluations.model_fields_set:
        return {}
    env = {"FLEETMON__EVALUATIONS__PROMETHEUS_URL": prometheus}
    if secure:
        env["FLEETMON__EVALUATIONS__PROMETHEUS_CA_FILE"] = str(secure.ca_cert)
        env["FLEETMON__EVALUATIONS__PROMETHEUS_USERNAME"] = "fleetmon"
        env["FLEETMON__EVALUATIONS__PROMETHEUS_PASSWORD_FILE"] = str(secure.password_file("fleetmon"))
    return env


def simulator_env(cfg: Config, pushgateway: str, secure: pki.StackFiles | None) -> dict[str, str]:
    """The simulator pushes its training jobs' outcomes to this stack's Pushgateway (``demo.pushgateway_url``
    unless the config names one, or "" for none), in secure mode over TLS as the ``fleetmon`` user (the
    variables ``fleetmon.push`` reads; emptied in plain mode so no stray credentials from the caller's
    environment go along)."""
    if cfg.demo.pushgateway_url is not None:  # the config's own choice (a gateway elsewhere, or "": off)
        return {}
    env = push_env(pushgateway, secure)
    env.pop("FLEETMON_PUSHGATEWAY")
    return {"FLEETMON__DEMO__PUSHGATEWAY_URL": pushgateway, **env}


def grafana_component(cfg: Config, paths: Paths, secure: pki.StackFiles | None = None) -> Component:
    st = cfg.stack
    probe = _probe_host(st.bind_host)
    scheme = "https" if secure else "http"
    found = find_grafana()
    gdata = paths.data_dir / "grafana"
    env = {
        "GF_PATHS_DATA": str(gdata),
        "GF_PATHS_LOGS": str(paths.log_dir / "grafana"),
        "GF_PATHS_PLUGINS": str(gdata / "plugins"),
        "GF_PATHS_PROVISIONING": str(GRAFANA_PROVISIONING),
        "GF_SERVER_HTTP_ADDR": st.bind_host,
        "GF_SERVER_HTTP_PORT": str(st.grafana_port),
        **(grafana_security_env(cfg, gdata) if found else {}),
        **grafana_tls_env(secure),
        # Read by grafana/provisioning/*.yml (Grafana expands $VARS in provisioning files).
        "FLEETMON_PROMETHEUS_URL": f"{scheme}://{probe}:{st.prometheus_port}",
        "FLEETMON_ALERTMANAGER_URL": f"{scheme}://{probe}:{st.alertmanager_port}",
        "FLEETMON_DASHBOARDS_DIR": str(GRAFANA_DASHBOARDS),
    }
    pw_file = env.get("GF_SECURITY_ADMIN_PASSWORD__FILE")
    argv: list[str] = ["grafana-server"]
    if found:
        cmd, home = found
        argv = [*cmd, f"--homepath={home}"]
    return Component(
        "grafana",
        argv,
        tier=2,
        port=st.grafana_port,
        health_url=f"{scheme}://{probe}:{st.grafana_port}/api/health",
        url=f"{scheme}://{probe}:{st.grafana_port}",
        env=env,
        missing=None if found else "no grafana-server or grafana binary on PATH",
        optional=True,
        note=f"user admin, password in {pw_file}" if pw_file else None,
        # TLS only: /api/health needs no login, and Grafana's users are not the stack's.
        probe=pki.client(secure.data_dir, user=None) if secure else None,
    )


def grafana_tls_env(secure: pki.StackFiles | None) -> dict[str, str]:
    """Grafana over https (secure cookies) and its datasources' TLS and basic auth.

    grafana/provisioning/datasources/fleetmon.yml reads the FLEETMON_DATASOURCE_* variables in both modes
    (plain: no basic auth, empty values). Grafana expands ``${VAR}`` first and then ``$__file{...}`` in the
    result, so the password and the CA are read from their files and never put in the environment.
    """
    if secure is None:
        return {
            "FLEETMON_DATASOURCE_BASIC_AUTH": "false",  # a bool for Grafana: never empty
            "FLEETMON_DATASOURCE_USER": "",
            "FLEETMON_DATASOURCE_PASSWORD": "",
            "FLEETMON_DATASOURCE_CA_CERT": "",
        }
    return {
        "GF_SERVER_PROTOCOL": "https",
        "GF_SERVER_CERT_FILE": str(secure.server_cert),
        "GF_SERVER_CERT_KEY": str(secure.server_key),
        "GF_SECURITY_COOKIE_SECURE": "true",
        "FLEETMON_DATASOURCE_BASIC_AUTH": "true",
        "FLEETMON_DATASOURCE_USER": "grafana",
        "FLEETMON_DATASOURCE_PASSWORD": f"$__file{{{secure.password_file('grafana')}}}",
        "FLEETMON_DATASOURCE_CA_CERT": f"$__file{{{secure.ca_cert}}}",
    }


# What every Grafana of the stack is told, native and docker-compose alike (tests/test_compose.py compares).
GRAFANA_HARDENING = {
    "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
    "GF_AUTH_ANONYMOUS_HIDE_VERSION": "true",
    "GF_USERS_ALLOW_SIGN_UP": "false",
    "GF_SECURITY_DISABLE_GRAVATAR": "true",
    "GF_SNAPSHOTS_EXTERNAL_ENABLED": "false",
    "GF_ANALYTICS_REPORTING_ENABLED": "false",
    "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
    "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
}


def secret_file(path: Path, nbytes: int = 24) -> Path:
    """``path``, created on first use with a random token, readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(nbytes))
    return path


def grafana_security_env(cfg: Config, gdata: Path) -> dict[str, str]:
    """Grafana's admin password and secret key from files (never admin / admin), anonymous access only as
    a viewer and only when configured, no gravatar, reporting or external snapshots.

    Grafana reads ``GF_<SECTION>_<KEY>__FILE`` as "the value is in this file", so no secret is ever on a
    command line or in the environment of the process.
    """
    g = cfg.stack.grafana
    env = {**GRAFANA_HARDENING, "GF_AUTH_ANONYMOUS_ENABLED": "true" if g.anonymous_viewer else "false"}
    if "GF_SECURITY_ADMIN_PASSWORD" not in os.environ:
        pw = g.admin_password_file or secret_file(gdata / "admin-password")
        env["GF_SECURITY_ADMIN_PASSWORD__FILE"] = str(pw)
    # Encrypts the data source secrets in Grafana's database: one per installation, kept with the data.
    env["GF_SECURITY_SECRET_KEY__FILE"] = str(secret_file(gdata / "secret-key", 32))
    return env


# -------------------------------------------------------------------------------------- pid files
def _read_meta(paths: Paths, name: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(paths.meta_file(name).read_text())
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def _read_pid(paths: Paths, name: str) -> int | None:
    try:
        return int(paths.pid_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_ours(pid: int, meta: dict[str, Any] | None) -> bool:
    """Alive, the leader of its own process group, and started when we recorded (no recycled pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or os.getpgid(pid) != pid:
            return False
        if meta is None or meta.get("pid") != pid:
            return False
        return abs(proc.create_time() - float(meta.get("create_time", -1))) < 1.0
    except (psutil.Error, ProcessLookupError, PermissionError, TypeError, ValueError):
        return False


def running_pid(paths: Paths, name: str) -> int | None:
    """The pid of our running ``name``, or None (a stale pid file is left for ``clear_stale``)."""
    pid = _read_pid(paths, name)
    if pid is None:
        return None
    return pid if is_ours(pid, _read_meta(paths, name)) else None


def clear_stale(paths: Paths, name: str) -> bool:
    """Remove the pid files of ``name`` if they do not name our live process; True if removed."""
    if not paths.pid_file(name).exists() and not paths.meta_file(name).exists():
        return False
    if running_pid(paths, name) is not None:
        return False
    paths.pid_file(name).unlink(missing_ok=True)
    paths.meta_file(name).unlink(missing_ok=True)
    return True


def _write_pid(paths: Paths, comp: Component, pid: int) -> None:
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = time.time()
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "pid": pid,
        "create_time": create_time,
        "argv": comp.argv,
        "port": comp.port,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = paths.meta_file(comp.name).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(paths.meta_file(comp.name))
    paths.pid_file(comp.name).write_text(f"{pid}\n")


# -------------------------------------------------------------------------------------------- health
def _probe_args(comp: Component) -> dict[str, Any]:
    """wait_for_http's TLS context and credentials for ``comp`` (none in plain mode)."""
    if comp.probe is None:
        return {}
    return {"context": comp.probe.ssl_context, "headers": comp.probe.headers}


def healthy(comp: Component, timeout: float = 2.0) -> bool:
    if comp.health_url is None:
        return True
    try:
        wait_for_http(comp.health_url, timeout=timeout, **_probe_args(comp))
        return True
    except (TimeoutError, RuntimeError):
        return False


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return "  (no log)"
    return "\n".join("  | " + line for line in lines)


# ---------------------------------------------------------------------------------------------- up
def up(
    components: Sequence[Component], paths: Paths, timeout: float = 180.0, notes: Sequence[str] = ()
) -> int:
    """Start what is not running, tier by tier, waiting for health. Returns 0 when all required run.

    ``notes``: lines printed after the URLs (secure mode: where the CA and the passwords are)."""
    for d in (paths.run_dir, paths.log_dir, paths.data_dir):
        d.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for tier in sorted({c.tier for c in components}):
        started: dict[str, Any] = {}
        for comp in [c for c in components if c.tier == tier]:
            if clear_stale(paths, comp.name):
                print(f"{comp.name}: removed a stale pid file")
            pid = running_pid(paths, comp.name)
            if pid is not None:
                print(f"{comp.name}: already running (pid {pid})")
                continue
            if comp.missing:
                if comp.name == "grafana":
                    print(GRAFANA_HINT)
                else:
                    print(f"{comp.name}: not started: {comp.missing}")
                    if not comp.optional:
                        failed.append(comp.name)
                continue
            if comp.port is not None and port_open(comp.port, _probe_host_of(comp)):
                print(
                    f"{comp.name}: port {comp.port} is already in use by a process this stack did not "
                    "start; stop it or change the port in the config (stack: / listen:)"
                )
                failed.append(comp.name)
                continue
            proc = spawn(comp.argv, paths.log_file(comp.name), env=comp.env, cwd=ROOT)
            _write_pid(paths, comp, proc.pid)
            started[comp.name] = (proc, time.monotonic())
            print(f"{comp.name}: started (pid {proc.pid}), log {paths.log_file(comp.name)}")
        for comp in [c for c in components if c.tier == tier and c.name not in failed]:
            if comp.missing and running_pid(paths, comp.name) is None:
                continue
            proc, t0 = started.get(comp.name, (None, time.monotonic()))
            try:
                if comp.health_url is not None:
                    wait_for_http(comp.health_url, timeout=timeout, proc=proc, **_probe_args(comp))
                elif proc is not None:
                    time.sleep(max(0.0, SETTLE_SECONDS - (time.monotonic() - t0)))
                    if proc.poll() is not None:
                        raise RuntimeError(f"exited with {proc.returncode}")
            except (TimeoutError, RuntimeError) as e:
                print(f"{comp.name}: not healthy: {e}\n{_tail(paths.log_file(comp.name))}")
                failed.append(comp.name)
                if proc is not None and proc.poll() is not None:
                    clear_stale(paths, comp.name)
                continue
        if failed:
            break
    if failed:
        print(
            f"\nfleetmon stack: not healthy: {', '.join(failed)}. Logs in {paths.log_dir}; `make down` stops the rest."
        )
        return 1
    print("\nfleetmon stack is up:")
    for comp in components:
        if comp.url and running_pid(paths, comp.name) is not None:
            print(f"  {comp.name:<18} {comp.url}")
            if comp.note:
                print(f"  {'':<18} {comp.note}")
    for line in notes:
        print(f"  {line}")
    print(f"  logs in {paths.log_dir}, pid files in {paths.run_dir}; `make status`, `make down`")
    return 0


def secure_notes(cfg: Config, files: pki.StackFiles) -> list[str]:
    """How to reach a secure stack by hand: the CA, the users, a curl line."""
    probe = _probe_host(cfg.stack.bind_host)
    pw = files.password_file("fleetmon")
    lines = [
        f"TLS and basic auth (stack.secure): CA {files.ca_cert}",
        f"users {', '.join(pki.USERS)}: passwords in {files.secrets_dir}/<user>.password",
        f'curl --cacert {files.ca_cert} -u "fleetmon:$(cat {pw})" '
        f"https://{probe}:{cfg.stack.prometheus_port}/api/v1/targets",
    ]
    if cfg.stack.demo:
        lines.append("the demo MLflow is plain HTTP on 127.0.0.1 only (not on the monitoring path)")
    return lines


def _probe_host_of(comp: Component) -> str:
    m = re.match(r"https?://([^:/]+)", comp.health_url or "")
    return m.group(1) if m else "127.0.0.1"


# -------------------------------------------------------------------------------------------- down
def down(
    components: Sequence[Component], paths: Paths, port_timeout: float = 15.0, everything: bool = True
) -> int:
    """Stop the process groups named by our pid files (last tier first); check their ports are free.

    With ``everything``, pid files of components no longer in the plan (e.g. a Grafana since removed from
    PATH) are honoured too.
    """
    known = {c.name: c for c in components}
    # Stop by tier, last tier first; the groups of one tier are stopped in parallel.
    tiers: dict[int, list[str]] = {}
    for c in components:
        tiers.setdefault(-c.tier, []).append(c.name)
    if everything and paths.run_dir.is_dir():
        extra = sorted(p.stem for p in paths.run_dir.glob("*.pid") if p.stem not in known)
        tiers.setdefault(-(1 << 30), []).extend(extra)
    ports: list[tuple[str, int, str]] = []
    for _, names in sorted(tiers.items()):
        todo: dict[str, int] = {}
        for name in names:
            pid = running_pid(paths, name)
            if pid is not None:
                todo[name] = pid
            elif clear_stale(paths, name):
                print(f"{name}: not running (removed a stale pid file)")
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            list(pool.map(lambda pid: stop_group(pid, timeout=15), todo.values()))
        for name, pid in todo.items():
            paths.pid_file(name).unlink(missing_ok=True)
            paths.meta_file(name).unlink(missing_ok=True)
            print(f"{name}: stopped (pid {pid})")
            comp = known.get(name)
            if comp is not None and comp.port is not None:
                ports.append((name, comp.port, _probe_host_of(comp)))
    busy = []
    for name, port, host in ports:
        deadline = time.monotonic() + port_timeout
        while port_open(port, host) and time.monotonic() < deadline:
            time.sleep(0.2)
        if port_open(port, host):
            busy.append(f"{port} ({name})")
    if busy:
        print(f"fleetmon stack: ports still in use after stopping: {', '.join(busy)}")
        return 1
    print("fleetmon stack is down." if everything else "fleetmon stack: the selected components are down.")
    return 0


# ------------------------------------------------------------------------------------------ status
def status_rows(components: Sequence[Component], paths: Paths) -> list[dict[str, Any]]:
    rows = []
    for comp in components:
        pid = running_pid(paths, comp.name)
        if pid is not None:
            state, health = "running", ("ok" if healthy(comp) else "unhealthy")
        elif paths.pid_file(comp.name).exists():
            state, health = "stale pid file", "-"
        elif comp.missing:
            state, health = "not available", "-"
        else:
            state, health = "stopped", "-"
        rows.append(
            {
                "name": comp.name,
                "state": state,
                "pid": pid,
                "port": comp.port,
                "health": health,
                "url": comp.url,
                "note": comp.missing or "",
            }
        )
    return rows


def status(components: Sequence[Component], paths: Paths, as_json: bool = False) -> int:
    rows = status_rows(components, paths)
    if as_json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'component':<18} {'state':<15} {'pid':>7} {'port':>5}  {'health':<9} url")
        for r in rows:
            print(
                f"{r['name']:<18} {r['state']:<15} {r['pid'] or '-':>7} {r['port'] or '-':>5}  "
                f"{r['health']:<9} {r['url'] or ''}{'  (' + r['note'] + ')' if r['state'] != 'running' and r['note'] else ''}"
            )
    required = [r for r, c in zip(rows, components, strict=True) if not c.optional and not c.missing]
    ok = all(r["state"] == "running" and r["health"] == "ok" for r in required)
    return 0 if ok else 1


def logs(components: Sequence[Component], paths: Paths, lines: int) -> int:
    for comp in components:
        path = paths.log_file(comp.name)
        if path.exists():
            print(f"==> {path} <==\n{_tail(path, lines)}\n")
    return 0


# ------------------------------------------------------------------------------------ secure-files
# Data directories of the containers docker-compose.secure.yml runs as you (created here, so Docker does
# not create them owned by root).
COMPOSE_DATA_DIRS = ("prometheus", "alertmanager", "pushgateway", "grafana")


def write_secure_files(cfg: Config, paths: Paths) -> int:
    """The secure stack's files without starting anything, plus what docker-compose.secure.yml mounts:
    ``<data_dir>/compose/{prometheus,alertmanager}.yml`` with the containers' paths, and its data dirs."""
    files = secure_files(cfg, paths.data_dir)
    for change in files.changes:
        print(f"secure-files: {change}")
    out = paths.data_dir / "compose"
    prom = render_prometheus_config(
        cfg, paths.data_dir, secure=COMPOSE_REFS, out=out / "prometheus.yml", base="/etc/prometheus"
    )
    am = render_alertmanager_config(
        cfg, paths.data_dir, secure=COMPOSE_REFS, out=out / "alertmanager.yml", base="/etc/alertmanager"
    )
    for d in COMPOSE_DATA_DIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    print(f"CA {files.ca_cert}, server certificate {files.server_cert}")
    print(f"passwords of {', '.join(pki.USERS)} and web.yml in {files.secrets_dir}")
    print(f"for docker-compose.secure.yml: {prom}, {am}, data dirs under {out}")
    return 0


# --------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleetmon stack", description="the native fleetmon stack")
    p.add_argument("action", choices=["up", "down", "status", "logs", "secure-files"])
    p.add_argument("--config.file", dest="config_file", default=str(default_config_path()))
    p.add_argument(
        "--state-dir",
        type=Path,
        help="keep pid files, logs and data under DIR/run, DIR/log, DIR/data (default: the config's stack:)",
    )
    p.add_argument("--only", help="comma-separated components to act on (default: all)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each to be healthy")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("-n", "--lines", type=int, default=20, help="log lines per component (logs)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config_file)
    except ConfigError as e:
        print(f"fleetmon: refusing to start: {e}", file=sys.stderr)
        return 2
    paths = Paths.of(cfg, args.state_dir.resolve() if args.state_dir else None)
    if args.action == "secure-files":
        return write_secure_files(cfg, paths)
    components = plan(cfg, paths)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {c.name for c in components})
        if unknown:
            print(f"fleetmon stack: unknown component(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        components = [c for c in components if c.name in wanted]
    if args.action == "up":
        notes = secure_notes(cfg, pki.StackFiles(paths.data_dir)) if cfg.stack.secure else []
        return up(components, paths, args.timeout, notes)
    if args.action == "down":
        return down(components, paths, everything=not args.only)
    if args.action == "status":
        return status(components, paths, args.json)
    return logs(components, paths, args.lines)
