"""The native stack's scale mode (``stack.scale.shards: N``): N exporter shards and one central store.

``fleetmon stack`` builds its usual plan (``fleetmon.stack.plan``) and, in scale mode, ``scaled`` turns it
into this one (docs/scale.md has the picture and the Mimir / Thanos Receive equivalents):

- **Exporter shards.** For each shard ``i`` the three exporters run with ``--shard i/N`` on ports
  ``port_base + 10 i + 1..3``, each with its own state and quarantine paths under
  ``<data_dir>/shards/<i>/`` (given as ``FLEETMON__...`` overrides of the same config file).
- **A Prometheus agent per shard** (``--enable-feature=agent``, port ``port_base + 10 i + 9``) scrapes its
  shard with the jobs of ``prometheus/prometheus.yml`` (same job names and limits) and remote-writes to the
  central store with ``external_labels: {shard: "<i>"}``: a shard's fleet-wide series (sources, health)
  never collide with another's.
- **The stack's own Prometheus becomes an agent too** (same port) for what is not a shard's: Prometheus
  agents, Alertmanagers, Pushgateway, webhook receiver, VictoriaMetrics and vmalert themselves.
- **VictoriaMetrics** (single node, ``victoria-metrics``) is the central store: Grafana, ``fleetmon
  evaluations`` and vmalert read it through its Prometheus API.
- **vmalert** evaluates ``prometheus/rules/*.yml`` against it, writes recording rules back to it and sends
  alerts to both Alertmanagers. Debian's vmalert 1.79 predates ``keep_firing_for``, so it reads a copy of the
  rules without that field (three alerts may resolve one minute sooner than under Prometheus); nothing else
  differs, and the promtool tests run on the originals.
- **Two Alertmanagers** gossip as one cluster (``--cluster.peer``): vmalert notifies both (the HA setup), the
  cluster's notification log makes sure each notification goes out once.

Scale mode runs without TLS for now (``stack.secure`` is refused with it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from fleetmon import stack as _stack  # the plan's Component and helpers (stack imports this module too)
from fleetmon.config import Config

EXPORTERS = ("mlflow", "outputs", "platform")
SHARD_JOBS = {f"fleetmon-{name}": name for name in EXPORTERS}
# The rules' field that Debian's vmalert (1.79) does not know.
VMALERT_UNKNOWN_RULE_FIELDS = ("keep_firing_for",)


def shard_port(cfg: Config, shard: int, exporter: str) -> int:
    return cfg.stack.scale.port_base + 10 * shard + 1 + EXPORTERS.index(exporter)


def agent_port(cfg: Config, shard: int) -> int:
    return cfg.stack.scale.port_base + 10 * shard + 9


def shard_env(data: Path, shard: int) -> dict[str, str]:
    """Each shard's own state and quarantine paths, as overrides of the shared config file."""
    d = data / "shards" / str(shard)
    return {
        "FLEETMON__OUTPUTS__STATE_DIR": str(d / "state" / "outputs"),
        "FLEETMON__OUTPUTS__QUARANTINE_DIR": str(d / "quarantine" / "outputs"),
        "FLEETMON__MLFLOW__QUARANTINE_FILE": str(d / "quarantine" / "mlflow.jsonl"),
        "FLEETMON__PLATFORM__LOGS__STATE_FILE": str(d / "state" / "logs-positions.json"),
        "FLEETMON__PLATFORM__LOGS__QUARANTINE_FILE": str(d / "quarantine" / "logs.jsonl"),
        "FLEETMON__PLATFORM__LOGS__LOG_ANALYTICS__CHECKPOINT_FILE": str(d / "state" / "log-analytics.json"),
    }


def render_agent_config(cfg: Config, source: Path, out: Path, shard: int | None) -> Path:
    """A Prometheus agent's config from ``source`` (prometheus/prometheus.yml): shard ``i``'s three exporter
    jobs, or (``shard`` None) every other job, remote-writing to VictoriaMetrics."""
    st, sc = cfg.stack, cfg.stack.scale
    doc = yaml.safe_load(source.read_text())
    doc.pop("rule_files", None)  # an agent evaluates nothing: vmalert does
    doc.pop("alerting", None)
    glob = doc.setdefault("global", {})
    glob.pop("evaluation_interval", None)
    if sc.scrape_interval:  # every job at this interval, each timeout within it
        glob["scrape_interval"] = sc.scrape_interval
        for job in doc.get("scrape_configs") or []:
            job.pop("scrape_interval", None)
            job.pop("scrape_timeout", None)
        glob["scrape_timeout"] = sc.scrape_interval
    labels = dict(glob.get("external_labels") or {})
    jobs = []
    for job in doc.get("scrape_configs") or []:
        name = job["job_name"]
        if shard is not None:
            if name not in SHARD_JOBS:
                continue
            targets = [f"127.0.0.1:{shard_port(cfg, shard, SHARD_JOBS[name])}"]
        elif name in SHARD_JOBS:
            continue
        elif name == "prometheus":
            targets = [f"127.0.0.1:{st.prometheus_port}"]
            targets += [f"127.0.0.1:{agent_port(cfg, i)}" for i in range(sc.shards)]
        elif name == "alertmanager":
            targets = [f"127.0.0.1:{st.alertmanager_port}", f"127.0.0.1:{sc.alertmanager_peer_port}"]
        elif name == "pushgateway":
            targets = [f"127.0.0.1:{st.pushgateway_port}"]
        elif name == "fleetmon-webhook":
            targets = [f"127.0.0.1:{st.webhook_port}"]
        else:
            targets = [t for c in job.get("static_configs") or [] for t in c.get("targets") or []]
        job["static_configs"] = [{"targets": targets}]
        jobs.append(job)
    if shard is None:
        for name, port in (("victoria-metrics", sc.victoria_metrics_port), ("vmalert", sc.vmalert_port)):
            jobs.append(
                {
                    "job_name": name,
                    "sample_limit": 50000,
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
                }
            )
    else:
        labels["shard"] = str(shard)
    glob["external_labels"] = labels
    doc["scrape_configs"] = jobs
    doc["remote_write"] = [{"url": f"http://127.0.0.1:{sc.victoria_metrics_port}/api/v1/write"}]
    out.parent.mkdir(parents=True, exist_ok=True)
    what = f"shard {shard}'s exporters" if shard is not None else "everything that is not a shard's"
    out.write_text(
        f"# Written by `fleetmon stack` (scale mode) from {source}: a Prometheus agent scraping {what},\n"
        f"# remote-writing to VictoriaMetrics.\n" + yaml.safe_dump(doc, sort_keys=False)
    )
    return out


def render_vmalert_rules(rule_files: list[Path], out_dir: Path) -> Path:
    """Copies of the rule files without the fields Debian's vmalert does not know; returns their glob."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in rule_files:
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                for key in VMALERT_UNKNOWN_RULE_FIELDS:
                    rule.pop(key, None)
        (out_dir / path.name).write_text(
            f"# Written by `fleetmon stack` (scale mode) from {path}, without"
            f" {', '.join(VMALERT_UNKNOWN_RULE_FIELDS)} (vmalert 1.79).\n"
            + yaml.safe_dump(doc, sort_keys=False)
        )
    return out_dir / "*.yml"


def scaled(cfg: Config, data: Path, conf: str, components: list[Any], prometheus_yml: Path) -> list[Any]:
    """The stack's plan (``fleetmon.stack.plan``'s components) in scale mode."""
    Component, _binary, _probe_host = _stack.Component, _stack._binary, _stack._probe_host
    st, sc = cfg.stack, cfg.stack.scale
    host, probe = st.bind_host, _probe_host(st.bind_host)
    vm_url = f"http://{probe}:{sc.victoria_metrics_port}"
    am_urls = [f"http://{probe}:{st.alertmanager_port}", f"http://{probe}:{sc.alertmanager_peer_port}"]
    prom_exe, prom_missing = _binary("prometheus")
    out: list[Any] = []
    for comp in components:
        if comp.name.startswith("exporter-"):
            continue  # replaced by the shards' below
        if comp.name == "alertmanager":
            gossip, peer = sc.alertmanager_cluster_ports
            first = replace(comp, argv=_clustered(comp.argv, gossip, peer))
            second_argv = [
                a.replace(f":{st.alertmanager_port}", f":{sc.alertmanager_peer_port}").replace(
                    f"--storage.path={data / 'alertmanager'}", f"--storage.path={data / 'alertmanager-2'}"
                )
                for a in _clustered(comp.argv, peer, gossip)
            ]
            second = replace(
                comp,
                name="alertmanager-2",
                argv=second_argv,
                port=sc.alertmanager_peer_port,
                health_url=f"{am_urls[1]}/-/ready",
                url=am_urls[1],
            )
            out += [first, second]
            continue
        if comp.name == "prometheus":
            vm_exe, vm_missing = _binary("victoria-metrics")
            out.append(
                Component(
                    "victoria-metrics",
                    [
                        vm_exe,
                        f"-storageDataPath={data / 'victoria-metrics'}",
                        f"-httpListenAddr={host}:{sc.victoria_metrics_port}",
                        f"-retentionPeriod={sc.retention}",
                        # Instant queries see samples up to 5 s old (default 30 s): alerts as prompt as
                        # Prometheus' on the demo's short intervals.
                        "-search.latencyOffset=5s",
                    ],
                    tier=1,
                    port=sc.victoria_metrics_port,
                    health_url=f"{vm_url}/health",
                    url=vm_url,
                    missing=vm_missing,
                )
            )
            out.append(
                _agent(
                    cfg, "prometheus", st.prometheus_port, None, data, prometheus_yml, prom_exe, prom_missing
                )
            )
            rules = sorted((prometheus_yml.parent / "rules").glob("*.yml"))
            vma_exe, vma_missing = _binary("vmalert")
            out.append(
                Component(
                    "vmalert",
                    [
                        vma_exe,
                        f"-rule={render_vmalert_rules(rules, data / 'vmalert' / 'rules')}",
                        f"-datasource.url={vm_url}",
                        f"-remoteWrite.url={vm_url}",
                        f"-remoteRead.url={vm_url}",
                        *(f"-notifier.url={u}" for u in am_urls),
                        f"-httpListenAddr={host}:{sc.vmalert_port}",
                        f"-external.url={vm_url}",
                        "-external.label=monitor=fleetmon",
                        f"-evaluationInterval={sc.evaluation_interval or _evaluation_interval(prometheus_yml)}",
                    ],
                    tier=2,
                    port=sc.vmalert_port,
                    health_url=f"http://{probe}:{sc.vmalert_port}/health",
                    url=f"http://{probe}:{sc.vmalert_port}",
                    missing=vma_missing,
                )
            )
            continue
        if comp.name == "grafana":
            comp = replace(comp, env={**comp.env, "FLEETMON_PROMETHEUS_URL": vm_url})
        if comp.name == "evaluations" and "FLEETMON__EVALUATIONS__PROMETHEUS_URL" in comp.env:
            comp = replace(comp, env={**comp.env, "FLEETMON__EVALUATIONS__PROMETHEUS_URL": vm_url})
        out.append(comp)
    for i in range(sc.shards):
        for name in EXPORTERS:
            port = shard_port(cfg, i, name)
            out.append(
                Component(
                    f"exporter-{name}-{i}",
                    _stack.fleetmon_argv(
                        "exporter",
                        name,
                        "--config.file",
                        conf,
                        "--shard",
                        f"{i}/{sc.shards}",
                        "--web.listen-address",
                        f"{host}:{port}",
                    ),
                    tier=2,
                    port=port,
                    health_url=f"http://{probe}:{port}/-/healthy",
                    url=f"http://{probe}:{port}/metrics",
                    env=shard_env(data, i),
                )
            )
        out.append(
            _agent(
                cfg,
                f"prometheus-agent-{i}",
                agent_port(cfg, i),
                i,
                data,
                prometheus_yml,
                prom_exe,
                prom_missing,
            )
        )
    return out


def _agent(
    cfg: Config,
    name: str,
    port: int,
    shard: int | None,
    data: Path,
    source: Path,
    exe: str,
    missing: str | None,
) -> Any:
    host, probe = cfg.stack.bind_host, _stack._probe_host(cfg.stack.bind_host)
    config = render_agent_config(cfg, source, data / name / "prometheus.yml", shard)
    return _stack.Component(
        name,
        [
            exe,
            "--enable-feature=agent",
            f"--config.file={config}",
            f"--storage.agent.path={data / name}",
            f"--web.listen-address={host}:{port}",
        ],
        tier=1 if shard is None else 2,
        port=port,
        health_url=f"http://{probe}:{port}/-/ready",
        url=f"http://{probe}:{port}",
        missing=missing,
    )


def _clustered(argv: list[str], listen: int, peer: int) -> list[str]:
    """An Alertmanager's argv as one of two cluster peers (gossip on 127.0.0.1)."""
    out = [a for a in argv if not a.startswith("--cluster.")]
    return [*out, f"--cluster.listen-address=127.0.0.1:{listen}", f"--cluster.peer=127.0.0.1:{peer}"]


def _evaluation_interval(prometheus_yml: Path) -> str:
    doc = yaml.safe_load(prometheus_yml.read_text())
    return str((doc.get("global") or {}).get("evaluation_interval") or "15s")
