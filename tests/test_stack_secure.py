"""The secure stack (`stack.secure: true`): the local CA, certificate, passwords and web config of
fleetmon.pki, the configs the stack renders with them (checked by promtool and amtool), and a real secure
mini stack through `fleetmon stack up`: every target up over https, every server refusing plain HTTP,
missing and wrong credentials and clients that do not trust the stack's CA, an alert delivered to the
webhook receiver through Alertmanager over TLS with basic auth, `fleetmon push` with and without
credentials, and `stack down` leaving nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import bcrypt
import psutil
import pytest
import yaml
from cryptography import x509

from fleetmon import pki
from fleetmon.config import load_config
from fleetmon.procs import free_port_below_ephemeral, port_open
from fleetmon.stack import GRAFANA_PROVISIONING, Paths, grafana_component, plan

ROOT = Path(__file__).resolve().parent.parent
HOSTS = pki.server_hosts("127.0.0.1")
SERVERS = ("prometheus", "alertmanager", "pushgateway", "webhook", "exporter-platform")


def write_config(tmp_path: Path, **stack: Any) -> Path:
    """A config on free ports with stack.secure on (everything else the defaults)."""
    doc = {
        "mlflow": {"listen": {"port": free_port_below_ephemeral()}},
        "outputs": {"listen": {"port": free_port_below_ephemeral()}},
        "platform": {"listen": {"port": free_port_below_ephemeral()}},
        "stack": {
            "secure": True,
            "demo": False,
            **{
                k: free_port_below_ephemeral()
                for k in (
                    "prometheus_port",
                    "alertmanager_port",
                    "pushgateway_port",
                    "mlflow_port",
                    "grafana_port",
                    "webhook_port",
                )
            },
            **stack,
        },
    }
    path = tmp_path / "config" / "fleetmon.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def flag(argv: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(f"{name}="))


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def tls_handshake(files: pki.StackFiles, server_hostname: str, cafile: Path | None) -> None:
    """A real TLS handshake: a server with the stack's certificate, a client trusting ``cafile`` (None:
    the system's CAs) that checks ``server_hostname``. Raises what the client raises."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client refused us

        t = threading.Thread(target=serve)
        t.start()
        try:
            client_ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    assert tls.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            t.join(timeout=5)


def server_cert(files: pki.StackFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(files.server_cert.read_bytes())


# --------------------------------------------------------------------------------------------- pki
def test_first_start_makes_the_files_and_later_starts_keep_them(tmp_path: Path) -> None:
    files = pki.ensure(tmp_path, HOSTS)
    assert files.changes[:2] == ("created the CA", "issued the server certificate (none yet)")
    assert files.changes[-1] == "wrote web.yml"
    secrets = [files.password_file(u) for u in pki.USERS]
    for p in (files.ca_key, files.server_key, *secrets, files.web_config):
        assert mode(p) == 0o600, p
    assert mode(files.tls_dir) == mode(files.secrets_dir) == 0o700
    passwords = {p.read_text() for p in secrets}
    assert len(passwords) == len(pki.USERS) and all(len(pw) >= 32 for pw in passwords)

    # Kept as they are on the next start: not a byte, not a timestamp changed.
    everything = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in everything}
    again = pki.ensure(tmp_path, HOSTS)
    assert again.changes == ()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in everything} == before

    # The certificate serves 127.0.0.1 and localhost to a client that trusts the stack's CA, and nobody
    # else: not another name, not a client with only the system's CAs.
    tls_handshake(files, "127.0.0.1", files.ca_cert)
    tls_handshake(files, "localhost", files.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        tls_handshake(files, "fleetmon.example.com", files.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(files, "127.0.0.1", None)

    # web.yml: TLS 1.2+ with that certificate (relative paths: it works wherever tls/ and secrets/ are
    # mounted side by side), each user's bcrypt hash of its password, the nosniff / deny headers.
    web = yaml.safe_load(files.web_config.read_text())
    assert web["tls_server_config"] == {
        "cert_file": "../tls/server.crt",
        "key_file": "../tls/server.key",
        "min_version": "TLS12",
    }
    assert web["http_server_config"]["headers"] == {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "deny",
    }
    assert set(web["basic_auth_users"]) == set(pki.USERS)
    for user, hashed in web["basic_auth_users"].items():
        assert bcrypt.checkpw(files.password_file(user).read_bytes(), hashed.encode())
        assert files.password_file(user).read_text() not in files.web_config.read_text()
    res = subprocess.run(
        ["promtool", "check", "web-config", str(files.web_config)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_what_is_due_is_renewed_and_the_rest_kept(tmp_path: Path) -> None:
    files = pki.ensure(tmp_path, HOSTS)
    ca, first = files.ca_cert.read_bytes(), server_cert(files)
    passwords = {u: files.password_file(u).read_text() for u in pki.USERS}
    web = files.web_config.read_bytes()

    # Another bind address: a certificate for it too, signed by the same CA; nothing else changes.
    hosts = pki.server_hosts("127.0.0.1", "0.0.0.0", "10.1.2.3", "fleetmon.example.com")
    assert hosts == ["127.0.0.1", "localhost", "10.1.2.3", "fleetmon.example.com"]
    changed = pki.ensure(tmp_path, hosts)
    assert changed.changes == ("issued the server certificate (other host names)",)
    cert = server_cert(files)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "fleetmon.example.com"}
    assert cert.serial_number != first.serial_number and files.ca_cert.read_bytes() == ca
    assert files.web_config.read_bytes() == web
    tls_handshake(files, "fleetmon.example.com", files.ca_cert)

    # Close to its expiry (30 days): re-issued, valid for a year from then.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=pki.SERVER_DAYS - 20)
    renewed = pki.ensure(tmp_path, hosts, now=later)
    assert len(renewed.changes) == 1 and renewed.changes[0].startswith(
        "issued the server certificate (it expires"
    )
    assert server_cert(files).not_valid_after_utc > later + dt.timedelta(days=pki.SERVER_DAYS - 1)

    # The CA lost (or about to expire): a new CA, and a certificate it signed; the passwords stay.
    files.ca_key.unlink()
    recreated = pki.ensure(tmp_path, hosts)
    assert recreated.changes == (
        "created the CA",
        "issued the server certificate (not signed by the current CA)",
    )
    assert files.ca_cert.read_bytes() != ca
    tls_handshake(files, "127.0.0.1", files.ca_cert)
    assert {u: files.password_file(u).read_text() for u in pki.USERS} == passwords
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=pki.CA_DAYS - 10)
    assert pki.ensure(tmp_path, hosts, now=soon).changes[:2] == (
        "re-created the CA (it expires soon)",
        "issued the server certificate (not signed by the current CA)",
    )
    pki.ensure(tmp_path, hosts)  # back to now

    # A password changed by hand: web.yml is re-hashed for it.
    pw = files.password_file("fleetmon")
    pw.write_text("a-new-password-of-mine")
    web_mtime = files.web_config.stat().st_mtime_ns
    os.utime(pw, ns=(web_mtime + 10**9, web_mtime + 10**9))
    assert pki.ensure(tmp_path, hosts).changes == ("wrote web.yml",)
    hashed = yaml.safe_load(files.web_config.read_text())["basic_auth_users"]["fleetmon"]
    assert bcrypt.checkpw(b"a-new-password-of-mine", hashed.encode())

    # A damaged web.yml (or one naming other users) is rewritten.
    files.web_config.write_text("basic_auth_users: {someone: x}\n")
    assert pki.ensure(tmp_path, hosts).changes == ("wrote web.yml",)
    assert set(yaml.safe_load(files.web_config.read_text())["basic_auth_users"]) == set(pki.USERS)


# ------------------------------------------------------------------------------------ rendered configs
def test_the_secure_plan_and_its_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, bind_host="0.0.0.0", demo=True), environ={})
    cfg.mlflow.tracking_uri = f"http://127.0.0.1:{cfg.stack.mlflow_port}"
    paths = Paths.of(cfg, tmp_path / "state")
    comps = {c.name: c for c in plan(cfg, paths)}
    files = pki.StackFiles(paths.data_dir)
    st = cfg.stack

    # Every server gets the one web config; probes and URLs are https with the CA and the fleetmon user.
    for name in (*SERVERS, "exporter-mlflow", "exporter-outputs"):
        c = comps[name]
        assert f"--web.config.file={files.web_config}" in c.argv, name
        assert c.health_url and c.health_url.startswith("https://127.0.0.1:"), name
        assert c.url and c.url.startswith("https://"), name
        assert c.probe is not None and c.probe.headers["Authorization"].startswith("Basic ")
    probe = comps["prometheus"].probe
    assert probe is not None and probe.authorization is not None
    user, _, password = base64.b64decode(probe.authorization.removeprefix("Basic ")).partition(b":")
    assert (user, password) == (b"fleetmon", files.password_file("fleetmon").read_bytes())
    for name in ("prometheus", "alertmanager"):
        assert flag(comps[name].argv, "--web.external-url").startswith("https://")
    assert flag(comps["prometheus"].argv, "--web.listen-address") == f"0.0.0.0:{st.prometheus_port}"
    # The demo MLflow speaks plain HTTP: in secure mode it never listens beyond this machine.
    mlflow = comps["mlflow"].argv
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1" and comps["mlflow"].probe is None
    assert not comps["simulator"].missing

    # Prometheus: every scrape job and the Alertmanagers over https, with the CA and the prometheus user.
    prom_yml = Path(flag(comps["prometheus"].argv, "--config.file"))
    assert prom_yml == paths.data_dir / "prometheus" / "prometheus.yml"
    prom = yaml.safe_load(prom_yml.read_text())
    secure = {
        "scheme": "https",
        "tls_config": {"ca_file": str(files.ca_cert)},
        "basic_auth": {"username": "prometheus", "password_file": str(files.password_file("prometheus"))},
    }
    clients = [*prom["scrape_configs"], *prom["alerting"]["alertmanagers"]]
    assert len(clients) == 8
    for sc in clients:
        assert {k: sc[k] for k in secure} == secure, sc
    assert prom["rule_files"] == [str(ROOT / "prometheus" / "rules" / "*.yml")]

    # Alertmanager: every receiver to the webhook over https, as the alertmanager user.
    am_yml = Path(flag(comps["alertmanager"].argv, "--config.file"))
    am = yaml.safe_load(am_yml.read_text())
    hooks = [w for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert hooks and {w["url"] for w in hooks} == {
        f"https://127.0.0.1:{st.webhook_port}/{path}" for path in ("alerts", "actions")
    }
    for w in hooks:
        assert w["http_config"] == {
            "tls_config": {"ca_file": str(files.ca_cert)},
            "basic_auth": {
                "username": "alertmanager",
                "password_file": str(files.password_file("alertmanager")),
            },
        }
    for argv in (
        ["promtool", "check", "config", str(prom_yml)],
        ["amtool", "check-config", str(am_yml)],
        ["promtool", "check", "web-config", str(files.web_config)],
    ):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def test_grafana_secure_and_plain_fill_every_variable_of_the_datasources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fleetmon.stack.find_grafana", lambda: None)
    cfg = load_config(write_config(tmp_path), environ={})
    paths = Paths.of(cfg, tmp_path / "state")
    comps = {c.name: c for c in plan(cfg, paths)}
    files = pki.StackFiles(paths.data_dir)
    env = comps["grafana"].env
    assert env["GF_SERVER_PROTOCOL"] == "https" and env["GF_SECURITY_COOKIE_SECURE"] == "true"
    assert (env["GF_SERVER_CERT_FILE"], env["GF_SERVER_CERT_KEY"]) == (
        str(files.server_cert),
        str(files.server_key),
    )
    assert env["FLEETMON_PROMETHEUS_URL"] == f"https://127.0.0.1:{cfg.stack.prometheus_port}"
    assert env["FLEETMON_ALERTMANAGER_URL"] == f"https://127.0.0.1:{cfg.stack.alertmanager_port}"
    assert (env["FLEETMON_DATASOURCE_BASIC_AUTH"], env["FLEETMON_DATASOURCE_USER"]) == ("true", "grafana")
    # The password and the CA by reference ($__file{}), never their contents in the environment.
    assert env["FLEETMON_DATASOURCE_PASSWORD"] == f"$__file{{{files.password_file('grafana')}}}"
    assert env["FLEETMON_DATASOURCE_CA_CERT"] == f"$__file{{{files.ca_cert}}}"
    for user in pki.USERS:
        assert not any(files.password_file(user).read_text() in v for v in env.values())
    # Grafana's probe: TLS with the CA only (its users are not the stack's).
    probe = comps["grafana"].probe
    assert probe is not None and probe.authorization is None and comps["grafana"].url.startswith("https://")  # type: ignore[union-attr]

    # The provisioning file reads only variables both modes set (an unset or empty bool breaks Grafana's
    # provisioning), and both datasources use them.
    text = (GRAFANA_PROVISIONING / "datasources" / "fleetmon.yml").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{(\w+)\}", body))
    assert {
        "FLEETMON_DATASOURCE_BASIC_AUTH",
        "FLEETMON_DATASOURCE_PASSWORD",
        "FLEETMON_DATASOURCE_CA_CERT",
    } <= used
    plain_cfg = load_config(write_config(tmp_path / "plain", secure=False), environ={})
    plain = grafana_component(plain_cfg, Paths.of(plain_cfg, tmp_path / "plain-state")).env
    assert used <= set(env) and used <= set(plain)
    assert plain["FLEETMON_DATASOURCE_BASIC_AUTH"] == "false" and plain["FLEETMON_PROMETHEUS_URL"].startswith(
        "http://"
    )
    assert "GF_SERVER_PROTOCOL" not in plain and not (tmp_path / "plain-state" / "data" / "tls").exists()
    for ds in yaml.safe_load(text)["datasources"]:
        assert ds["basicAuth"] == "${FLEETMON_DATASOURCE_BASIC_AUTH}"
        assert ds["jsonData"]["tlsAuthWithCACert"] is True
        assert ds["secureJsonData"] == {
            "basicAuthPassword": "${FLEETMON_DATASOURCE_PASSWORD}",
            "tlsCACert": "${FLEETMON_DATASOURCE_CA_CERT}",
        }


# -------------------------------------------------------------------------------------- the mini stack
def run_stack(cfg: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
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
        timeout=120,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FLEETMON"))},
    )


def status_of(client: pki.Client | None, url: str, auth: str | None = None) -> int | str:
    """The HTTP status of GET ``url`` (``client``: TLS and its credentials, or ``auth`` instead of them;
    None: plain urllib), or the name of the error when there is no HTTP answer."""
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        if client is None:
            resp = urllib.request.urlopen(req, timeout=10)
        else:
            resp = client.open(req, timeout=10)
        with resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError as e:
        return type(e.reason).__name__
    except OSError as e:
        return type(e).__name__


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.e2e
@pytest.mark.skipif(
    not all(shutil.which(b) for b in ("prometheus", "prometheus-alertmanager", "prometheus-pushgateway")),
    reason="prometheus, prometheus-alertmanager or prometheus-pushgateway not installed",
)
def test_a_secure_mini_stack_end_to_end(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path, environ={})
    st, state = cfg.stack, tmp_path / "state"
    data = state / "data"
    ports = {
        "prometheus": st.prometheus_port,
        "alertmanager": st.alertmanager_port,
        "pushgateway": st.pushgateway_port,
        "webhook": st.webhook_port,
        "exporter-platform": cfg.platform.listen.port,
    }
    started: dict[str, int] = {}
    try:
        up = run_stack(cfg_path, state, "up", "--only", ",".join(SERVERS))
        assert up.returncode == 0, up.stdout + up.stderr
        started = {p.stem: int(p.read_text()) for p in (state / "run").glob("*.pid")}
        assert set(started) == set(SERVERS)
        files = pki.StackFiles(data)
        me, prom_user = pki.client(data), pki.client(data, "prometheus")
        base = {n: f"https://127.0.0.1:{p}" for n, p in ports.items()}
        for n in SERVERS:
            assert f"{base[n]}" in up.stdout, n
        assert f"curl --cacert {files.ca_cert}" in up.stdout

        # Every server: the data with the CA and credentials; 401 without or with a wrong password or an
        # unknown user; refused over plain HTTP; refused by a client that does not trust the stack's CA.
        wrong = basic("fleetmon", "not-the-password")
        for name in SERVERS:
            url = base[name] + "/metrics"
            assert status_of(me, url) == 200, name
            assert status_of(pki.client(data, None), url) == 401, name
            assert status_of(pki.client(data, None), url, auth=wrong) == 401, name
            assert status_of(pki.client(data, None), url, auth=basic("nobody", "x")) == 401, name
            plain = status_of(None, url.replace("https://", "http://"), auth=me.authorization)
            # Go's servers answer 400 to HTTP on their TLS port, fleetmon's close the connection.
            assert plain in (400, "RemoteDisconnected", "ConnectionResetError"), (name, plain)
            untrusted = status_of(pki.Client(ssl.create_default_context(), me.username, me.password), url)
            assert untrusted == "SSLCertVerificationError", (name, untrusted)

        # The opener tests and scripts can install for plain `urlopen`: credentials to the addresses it
        # names, to no other.
        opener = me.opener(base["prometheus"], base["webhook"])
        with opener.open(base["prometheus"] + "/api/v1/status/buildinfo", timeout=10) as r:
            assert json.loads(r.read())["status"] == "success"
        with opener.open(base["webhook"] + "/notifications", timeout=10) as r:
            assert isinstance(json.loads(r.read()), list)
        with pytest.raises(urllib.error.HTTPError, match="401"):
            opener.open(base["alertmanager"] + "/metrics", timeout=10)

        # Scrape every 2 s (the shipped 10-15 s would make this test slow) and add an alert of the test's:
        # edit the rendered config and reload, as a user would, with credentials. The alert fires 10 s
        # after the reload, once Prometheus has found its Alertmanager again (an alert firing before that
        # is dropped and sent again only a minute later).
        mark = uuid.uuid4().hex
        rule_file = tmp_path / "secure-test-rules.yml"
        rule = {"alert": "SecureStackTest", "expr": "vector(1)", "for": "10s", "labels": {"test_run": mark}}
        rule_file.write_text(yaml.safe_dump({"groups": [{"name": "secure-test", "rules": [rule]}]}))
        prom_yml = data / "prometheus" / "prometheus.yml"
        doc = yaml.safe_load(prom_yml.read_text())
        doc["rule_files"].append(str(rule_file))
        doc["global"].update(scrape_interval="2s", scrape_timeout="2s", evaluation_interval="2s")
        for sc in doc["scrape_configs"]:
            sc.pop("scrape_interval", None)
            sc.pop("scrape_timeout", None)
        prom_yml.write_text(yaml.safe_dump(doc, sort_keys=False))
        me.open(base["prometheus"] + "/-/reload", data=b"").close()

        # Every target of these jobs up over https (Prometheus' API, as the prometheus user).
        jobs = {"prometheus", "alertmanager", "pushgateway", "fleetmon-webhook", "fleetmon-platform"}
        deadline, health = time.monotonic() + 40, {}
        while time.monotonic() < deadline:
            with prom_user.open(base["prometheus"] + "/api/v1/targets?state=active") as r:
                targets = json.loads(r.read())["data"]["activeTargets"]
            health = {t["labels"]["job"]: (t["health"], t["scrapeUrl"], t["lastError"]) for t in targets}
            if all(health.get(j, ("",))[0] == "up" for j in jobs):
                break
            time.sleep(1)
        for job in jobs:
            assert health[job][0] == "up", (job, health[job])
            assert health[job][1].startswith("https://127.0.0.1:"), health[job]

        # An alert through Alertmanager (TLS, basic auth) to the webhook receiver (TLS, basic auth).
        # The Watchdog route notifies a new group at once; its own `app` makes it a group of its own (the
        # group of Prometheus' Watchdog may have notified already: it waits a minute for the next).
        alert = [
            {"labels": {"alertname": "Watchdog", "severity": "info", "app": f"test-{mark}", "test_run": mark}}
        ]
        req = urllib.request.Request(
            base["alertmanager"] + "/api/v2/alerts",
            data=json.dumps(alert).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status_of(pki.client(data, None), req.full_url) == 401
        me.open(req).close()
        deadline, ours = time.monotonic() + 30, list[dict[str, Any]]()
        while time.monotonic() < deadline and not ours:
            with me.open(base["webhook"] + "/notifications?alertname=Watchdog") as r:
                notes = json.loads(r.read())
            ours = [n for n in notes for a in n["alerts"] if a["labels"].get("test_run") == mark]
            time.sleep(0.5)
        assert ours, f"the alert did not reach the webhook receiver: {notes}"
        assert ours[0]["receiver"] == "watchdog"
        assert ours[0]["externalURL"] == base["alertmanager"]

        # Prometheus' alert reached Alertmanager: Prometheus to Alertmanager over TLS with basic auth too.
        deadline, from_prometheus = time.monotonic() + 30, list[dict[str, Any]]()
        query = urllib.parse.urlencode({"filter": f'test_run="{mark}"'})
        while time.monotonic() < deadline and not from_prometheus:
            with me.open(f"{base['alertmanager']}/api/v2/alerts?{query}") as r:
                from_prometheus = [
                    a for a in json.loads(r.read()) if a["labels"]["alertname"] == "SecureStackTest"
                ]
            time.sleep(0.5)
        assert from_prometheus, "Prometheus' alert did not reach Alertmanager"
        assert from_prometheus[0]["labels"]["monitor"] == "fleetmon"  # Prometheus' external label
        assert from_prometheus[0]["generatorURL"].startswith(base["prometheus"])

        # `fleetmon push` to the secure Pushgateway: refused without credentials, accepted with them.
        push = [sys.executable, "-m", "fleetmon.cli", "push", "--job", "training", "--outcome", "success"]
        push += ["--duration", "3", "--gateway", base["pushgateway"], "--gateway.ca-file", str(files.ca_cert)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETMON")}
        res = subprocess.run(push, capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 1 and "401" in res.stderr, res.stderr
        creds = [
            "--gateway.username",
            "fleetmon",
            "--gateway.password-file",
            str(files.password_file("fleetmon")),
        ]
        res = subprocess.run(push + creds, capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 0, res.stderr
        with me.open(base["pushgateway"] + "/metrics") as r:
            assert (
                'fleetmon_batch_job_last_outcome{instance="",job="training",outcome="success"} 1'
                in r.read().decode()
            )

        status = run_stack(cfg_path, state, "status", "--json", "--only", ",".join(SERVERS))
        rows = {r["name"]: r for r in json.loads(status.stdout)}
        assert {n: (r["health"], r["url"][:8]) for n, r in rows.items()} == {
            n: ("ok", "https://") for n in SERVERS
        }
    finally:
        down = run_stack(cfg_path, state, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert list((state / "run").glob("*.pid")) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in started.values()):
        time.sleep(0.2)
    assert not [n for n, p in started.items() if alive(p)]
    assert not [n for n, p in ports.items() if port_open(p)]
    assert not [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE and str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]


def test_push_refuses_half_the_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    from fleetmon import push

    argv = [
        "--job",
        "training",
        "--outcome",
        "success",
        "--duration",
        "1",
        "--gateway",
        "https://127.0.0.1:1",
    ]
    assert push.main([*argv, "--gateway.username", "fleetmon"]) == 2
    assert "needs both a username and a password file" in capsys.readouterr().err
    assert push.main([*argv, "--gateway.ca-file", "/nonexistent/ca.crt"]) == 1
    assert "cannot use the Pushgateway's CA or password file" in capsys.readouterr().err
