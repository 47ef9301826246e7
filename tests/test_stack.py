"""`fleetmon stack`: pid files, no duplicates, stale pid files, foreign ports, config rendering, Grafana.

The runner is driven as a user drives it (the real CLI in a subprocess) on small real components
(webhook receiver, Pushgateway) on free ports, with everything under a temporary state dir.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from fleetmon.config import load_config
from fleetmon.procs import free_port_below_ephemeral, port_open, spawn, stop_group
from fleetmon.stack import (
    ALERTMANAGER_YML,
    GRAFANA_HARDENING,
    PROMETHEUS_YML,
    Paths,
    grafana_component,
    plan,
)

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, **stack: object) -> Path:
    ports = {
        "prometheus_port": free_port_below_ephemeral(),
        "alertmanager_port": free_port_below_ephemeral(),
        "pushgateway_port": free_port_below_ephemeral(),
        "mlflow_port": free_port_below_ephemeral(),
        "grafana_port": free_port_below_ephemeral(),
        "webhook_port": free_port_below_ephemeral(),
    }
    ports.update(stack)  # type: ignore[arg-type]
    cfg = tmp_path / "config" / "fleetmon.yml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "mlflow": {"listen": {"port": free_port_below_ephemeral()}},
        "outputs": {"listen": {"port": free_port_below_ephemeral()}},
        "platform": {"listen": {"port": free_port_below_ephemeral()}},
        "stack": {"state_dir": "../var/run", "log_dir": "../var/log", "data_dir": "../var/data", **ports},
    }
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def stack(cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetmon.cli", "stack", *args, "--config.file", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def pid_of(tmp_path: Path, name: str) -> int:
    return int((tmp_path / "var" / "run" / f"{name}.pid").read_text())


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def small_stack(tmp_path: Path):
    """A config on free ports; whatever the test started is stopped afterwards."""
    cfg = write_config(tmp_path)
    try:
        yield cfg
    finally:
        stack(cfg, "down")


def test_up_twice_starts_no_duplicates_and_down_frees_the_ports(tmp_path: Path, small_stack: Path) -> None:
    cfg = load_config(small_stack)
    only = ["--only", "webhook,pushgateway"]
    first = stack(small_stack, "up", *only)
    assert first.returncode == 0, first.stdout + first.stderr
    pids = {n: pid_of(tmp_path, n) for n in ("webhook", "pushgateway")}
    assert all(alive(p) for p in pids.values())
    assert port_open(cfg.stack.webhook_port) and port_open(cfg.stack.pushgateway_port)
    # Each component leads its own process group and logs to its own file.
    assert all(os.getpgid(p) == p for p in pids.values())
    assert (tmp_path / "var" / "log" / "webhook.log").exists()

    second = stack(small_stack, "up", *only)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"webhook: already running (pid {pids['webhook']})" in second.stdout
    assert {n: pid_of(tmp_path, n) for n in pids} == pids
    same_port = [
        p
        for p in psutil.process_iter(["cmdline"])
        if f"127.0.0.1:{cfg.stack.webhook_port}" in " ".join(p.info["cmdline"] or [])
    ]
    assert len(same_port) == 1

    st = stack(small_stack, "status", "--json")
    rows = {r["name"]: r for r in json.loads(st.stdout)}
    assert rows["webhook"] == {**rows["webhook"], "state": "running", "pid": pids["webhook"], "health": "ok"}
    assert rows["prometheus"]["state"] == "stopped"
    assert st.returncode == 1  # not everything runs

    down = stack(small_stack, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(alive(p) for p in pids.values())
    assert not port_open(cfg.stack.webhook_port) and not port_open(cfg.stack.pushgateway_port)
    assert list((tmp_path / "var" / "run").iterdir()) == []


def test_stale_pid_files_are_replaced_and_foreign_pids_never_signalled(
    tmp_path: Path, small_stack: Path
) -> None:
    run = tmp_path / "var" / "run"
    run.mkdir(parents=True)
    # 1. A pid file of a process that is gone (a crash): removed, the component started afresh.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "webhook.pid").write_text(f"{dead.pid}\n")
    (run / "webhook.json").write_text(json.dumps({"pid": dead.pid, "create_time": 1.0}))
    # 2. A pid file naming a live process we did not start (a recycled pid): never ours, never signalled.
    foreign = spawn(["sleep", "60"], tmp_path / "sleep.log")
    try:
        (run / "pushgateway.pid").write_text(f"{foreign.pid}\n")
        (run / "pushgateway.json").write_text(json.dumps({"pid": foreign.pid, "create_time": 1.0}))
        st = json.loads(stack(small_stack, "status", "--json").stdout)
        assert {r["name"]: r["state"] for r in st}["pushgateway"] == "stale pid file"

        res = stack(small_stack, "up", "--only", "webhook,pushgateway")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "webhook: removed a stale pid file" in res.stdout
        assert "pushgateway: removed a stale pid file" in res.stdout
        new_hook, new_pg = pid_of(tmp_path, "webhook"), pid_of(tmp_path, "pushgateway")
        assert new_pg != foreign.pid and alive(new_hook) and alive(new_pg)

        # The crash case again, for real: kill the webhook's group behind the runner's back.
        os.killpg(new_hook, signal.SIGKILL)
        for _ in range(100):
            if not alive(new_hook):
                break
            time.sleep(0.05)
        st = {r["name"]: r for r in json.loads(stack(small_stack, "status", "--json").stdout)}
        assert st["webhook"]["state"] == "stale pid file"
        res = stack(small_stack, "up", "--only", "webhook")
        assert res.returncode == 0 and "removed a stale pid file" in res.stdout
        assert pid_of(tmp_path, "webhook") != new_hook

        # A pid file overwritten to name the foreign process: `down` leaves that process alone.
        (run / "extra.pid").write_text(f"{foreign.pid}\n")
        assert stack(small_stack, "down").returncode == 0
        assert foreign.poll() is None and alive(foreign.pid)
        assert not (run / "extra.pid").exists()
    finally:
        stop_group(foreign)


def test_port_taken_by_another_process_is_refused(tmp_path: Path, small_stack: Path) -> None:
    port = load_config(small_stack).stack.webhook_port
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        res = stack(small_stack, "up", "--only", "webhook")
    assert res.returncode == 1
    assert f"port {port} is already in use by a process this stack did not start" in res.stdout
    assert not (tmp_path / "var" / "run" / "webhook.pid").exists()


def test_unknown_component_and_bad_config_are_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = stack(cfg, "up", "--only", "nope")
    assert res.returncode == 2 and "unknown component(s) nope" in res.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("stack:\n  prometheus_port: lots\n")
    res = stack(bad, "status")
    assert res.returncode == 2 and "stack.prometheus_port" in res.stderr


def test_config_files_pass_promtool_and_amtool() -> None:
    for argv in (
        ["promtool", "check", "config", str(PROMETHEUS_YML)],
        ["amtool", "check-config", str(ALERTMANAGER_YML)],
    ):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def test_default_ports_use_the_files_as_they_are(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "fleetmon.yml")
    comps = {c.name: c for c in plan(cfg, Paths.of(cfg, tmp_path))}
    assert f"--config.file={PROMETHEUS_YML}" in comps["prometheus"].argv
    assert f"--config.file={ALERTMANAGER_YML}" in comps["alertmanager"].argv
    assert comps["prometheus"].port == 9090 and comps["exporter-outputs"].port == 9702


def test_other_ports_get_a_rendered_valid_prometheus_and_alertmanager_config(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    comps = {c.name: c for c in plan(cfg, Paths.of(cfg))}
    prom_yml = Path(next(a for a in comps["prometheus"].argv if a.startswith("--config.file=")).split("=")[1])
    am_yml = Path(next(a for a in comps["alertmanager"].argv if a.startswith("--config.file=")).split("=")[1])
    assert prom_yml.parent == cfg.stack.data_dir / "prometheus"
    doc = yaml.safe_load(prom_yml.read_text())
    targets = {sc["job_name"]: sc["static_configs"][0]["targets"] for sc in doc["scrape_configs"]}
    assert targets["fleetmon-outputs"] == [f"127.0.0.1:{cfg.outputs.listen.port}"]
    assert targets["fleetmon-webhook"] == [f"127.0.0.1:{cfg.stack.webhook_port}"]
    assert targets["prometheus"] == [f"127.0.0.1:{cfg.stack.prometheus_port}"]
    assert doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        f"127.0.0.1:{cfg.stack.alertmanager_port}"
    ]
    # The rule glob still points at the repository's prometheus/rules; the limits survive.
    assert doc["rule_files"] == [str(ROOT / "prometheus" / "rules" / "*.yml")]
    src = {sc["job_name"]: sc for sc in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    for sc in doc["scrape_configs"]:
        assert {k: v for k, v in sc.items() if k != "static_configs"} == {
            k: v for k, v in src[sc["job_name"]].items() if k != "static_configs"
        }
    am = yaml.safe_load(am_yml.read_text())
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    # every receiver (per severity, team, the Watchdog) delivers to the stack's own webhook, moved port included
    assert urls and set(urls) == {
        f"http://127.0.0.1:{cfg.stack.webhook_port}/{path}" for path in ("alerts", "actions")
    }
    for argv in (["promtool", "check", "config", str(prom_yml)], ["amtool", "check-config", str(am_yml)]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


FAKE_GRAFANA = textwrap.dedent(
    """\
    #!{python}
    # A stand-in for grafana-server (Grafana cannot be installed on this machine): checks what the stack
    # hands Grafana, then answers /api/health like Grafana does.
    import os, sys, http.server
    home = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--homepath=")]
    assert home and os.path.isfile(os.path.join(home[0], "conf", "defaults.ini")), sys.argv
    prov = os.environ["GF_PATHS_PROVISIONING"]
    assert os.path.isfile(os.path.join(prov, "datasources", "fleetmon.yml")), prov
    assert os.path.isdir(os.environ["FLEETMON_DASHBOARDS_DIR"])
    assert os.environ["FLEETMON_PROMETHEUS_URL"].startswith("http://127.0.0.1:")
    with open(os.path.join(home[0], "env.json"), "w") as f:  # what it was told, for the test to check
        import json; json.dump(dict(os.environ), f)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{{"database": "ok"}}'
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(body)
    http.server.HTTPServer(
        (os.environ["GF_SERVER_HTTP_ADDR"], int(os.environ["GF_SERVER_HTTP_PORT"])), H
    ).serve_forever()
    """
)


def test_grafana_is_started_when_a_binary_is_on_path(
    tmp_path: Path, small_stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir, home = tmp_path / "bin", tmp_path / "grafana-home"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "defaults.ini").write_text("[server]\n")
    bindir.mkdir()
    exe = bindir / "grafana-server"
    exe.write_text(FAKE_GRAFANA.format(python=sys.executable))
    exe.chmod(0o755)
    # The provider's directory (git keeps no empty directories).
    (ROOT / "grafana" / "dashboards").mkdir(exist_ok=True)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "GRAFANA_HOME": str(home)}
    res = stack(small_stack, "up", "--only", "grafana", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    port = load_config(small_stack).stack.grafana_port
    assert port_open(port) and f"grafana            http://127.0.0.1:{port}" in res.stdout
    assert stack(small_stack, "down", env=env).returncode == 0
    assert not port_open(port)

    # Hardened: a generated admin password (never admin / admin) and secret key, in files only its owner
    # reads; no anonymous access unless configured; no gravatar, reporting or external snapshots.
    told = json.loads((home / "env.json").read_text())
    pw, key = Path(told["GF_SECURITY_ADMIN_PASSWORD__FILE"]), Path(told["GF_SECURITY_SECRET_KEY__FILE"])
    assert f"user admin, password in {pw}" in res.stdout
    for f in (pw, key):
        assert f.stat().st_mode & 0o777 == 0o600 and len(f.read_text()) >= 24
    assert pw.read_text() not in res.stdout and pw.read_text() != "admin"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in told and "GF_SECURITY_SECRET_KEY" not in told
    assert told["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert {k: told[k] for k in GRAFANA_HARDENING} == GRAFANA_HARDENING
    assert told["GF_SECURITY_DISABLE_GRAVATAR"] == "true" and told["GF_SNAPSHOTS_EXTERNAL_ENABLED"] == "false"
    # The same files on the next start (Grafana keeps the admin password of its first start).
    first = pw.read_text()
    assert stack(small_stack, "up", "--only", "grafana", env=env).returncode == 0
    assert stack(small_stack, "down", env=env).returncode == 0
    assert pw.read_text() == first

    # Anonymous viewers when the config asks for them (the demo config does); a password file of one's own.
    mine = tmp_path / "grafana-admin"
    mine.write_text("correct horse")
    cfg = load_config(small_stack)
    cfg.stack.grafana.anonymous_viewer = True
    cfg.stack.grafana.admin_password_file = mine
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("GRAFANA_HOME", str(home))
    comp = grafana_component(cfg, Paths.of(cfg))
    assert (
        comp.env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and comp.env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    )
    assert comp.env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == str(mine)
    # A password in the environment wins and is passed on by inheritance, never written by us.
    monkeypatch.setenv("GF_SECURITY_ADMIN_PASSWORD", "from-the-env")
    comp = grafana_component(cfg, Paths.of(cfg))
    assert "GF_SECURITY_ADMIN_PASSWORD__FILE" not in comp.env and comp.note is None


def test_without_grafana_up_says_how_to_get_it(small_stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cfg = load_config(small_stack)
    comp = grafana_component(cfg, Paths.of(cfg))
    assert comp.missing and comp.optional
    res = stack(small_stack, "up", "--only", "grafana", env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "docker compose up -d grafana" in res.stdout


def test_the_demo_never_writes_to_a_real_mlflow(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    cfg = load_config(path, environ={"MLFLOW_TRACKING_URI": "https://mlflow.example.com"})
    comps = {c.name: c for c in plan(cfg, Paths.of(cfg))}
    assert comps["simulator"].missing and "stack.demo: false" in comps["simulator"].missing
    res = stack(path, "up", "--only", "simulator", env={"MLFLOW_TRACKING_URI": "https://mlflow.example.com"})
    assert res.returncode == 1 and "would write fake runs there" in res.stdout
    assert not (tmp_path / "var" / "run" / "simulator.pid").exists()
    # A real deployment: no local MLflow, no simulator; the monitoring side is unchanged.
    cfg = load_config(path, environ={"FLEETMON__STACK__DEMO": "false"})
    names = [c.name for c in plan(cfg, Paths.of(cfg))]
    assert "mlflow" not in names and "simulator" not in names
    assert {"prometheus", "alertmanager", "webhook", "exporter-mlflow"} <= set(names)
    # The demo on the stack's own MLflow is allowed.
    cfg = load_config(path, environ={"MLFLOW_TRACKING_URI": f"http://localhost:{cfg.stack.mlflow_port}"})
    assert not next(c for c in plan(cfg, Paths.of(cfg)) if c.name == "simulator").missing
