"""docker-compose.yml, Dockerfile and Grafana provisioning agree with the config and the native stack.

There is no Docker engine here, so the compose file is checked for structure: the services, every
mounted host path exists, the ports and Prometheus' scrape targets agree with config/fleetmon.yml, and
every fleetmon command it runs exists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from exporters.cli import EXPORTERS
from fleetmon.cli import COMMANDS
from fleetmon.config import Config, load_config
from fleetmon.stack import DEFAULT_PORTS, GRAFANA_HARDENING

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {
    "mlflow",
    "simulator",
    "scoring",
    "evaluations",
    "exporter-mlflow",
    "exporter-outputs",
    "exporter-platform",
    "webhook",
    "prometheus",
    "alertmanager",
    "pushgateway",
    "grafana",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(ROOT / "config" / "fleetmon.yml", environ={})


def flag(argv: list[str], name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in a command list."""
    for i, a in enumerate(argv):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name:
            return argv[i + 1]
    raise AssertionError(f"{name} not in {argv}")


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_services_and_host_network(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == SERVICES
    for name, svc in services.items():
        # One set of addresses (127.0.0.1:<port>) for Docker and native: every service on the host network.
        assert svc.get("network_mode") == "host", name
        assert "ports" not in svc, f"{name}: ports are ignored on the host network"
        image = svc["image"]
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        else:
            assert re.search(r":v?\d+\.\d+\.\d+$", image), f"{name}: pin the image version ({image})"
    assert services["grafana"]["image"] == "grafana/grafana:11.6.0"


def test_every_mounted_host_path_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), f"{name}: mounted host path {src} does not exist"
            else:
                assert src in named, f"{name}: volume {src} is not declared"


def test_fleetmon_services_run_real_commands_on_the_mounted_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (
        "simulator",
        "scoring",
        "evaluations",
        "exporter-mlflow",
        "exporter-outputs",
        "exporter-platform",
        "webhook",
    ):
        svc = services[name]
        cmd = svc["command"]
        assert cmd[0] in COMMANDS, f"{name}: `fleetmon {cmd[0]}` does not exist"
        assert "./config:/app/config:ro" in svc["volumes"]
        conf = flag(cmd, "--config.file")
        assert conf.startswith("/app/config/") and (ROOT / "config" / Path(conf).name).is_file()
        if cmd[0] == "exporter":
            assert cmd[1] in EXPORTERS
    assert {services[f"exporter-{n}"]["command"][1] for n in EXPORTERS} == set(EXPORTERS)
    # The simulator and the exporters share the demo outputs and logs through one volume at /app/var,
    # where the config's ../var/... paths point from /app/config.
    for name in ("simulator", "scoring", "exporter-outputs", "exporter-platform"):
        assert "fleetmon-var:/app/var" in services[name]["volumes"]


def test_ports_agree_with_the_config(compose: dict[str, Any], cfg: Config) -> None:
    s = compose["services"]
    st = cfg.stack
    assert port_of(flag(s["prometheus"]["command"], "--web.listen-address")) == st.prometheus_port
    assert port_of(flag(s["alertmanager"]["command"], "--web.listen-address")) == st.alertmanager_port
    assert port_of(flag(s["pushgateway"]["command"], "--web.listen-address")) == st.pushgateway_port
    assert int(flag(s["mlflow"]["command"], "--port")) == st.mlflow_port
    assert urlsplit(cfg.mlflow.tracking_uri).port == st.mlflow_port
    assert port_of(flag(s["webhook"]["command"], "--web.listen-address")) == st.webhook_port
    assert int(s["grafana"]["environment"]["GF_SERVER_HTTP_PORT"]) == st.grafana_port
    assert urlsplit(s["grafana"]["environment"]["FLEETMON_PROMETHEUS_URL"]).port == st.prometheus_port
    assert urlsplit(s["grafana"]["environment"]["FLEETMON_ALERTMANAGER_URL"]).port == st.alertmanager_port
    # Prometheus and Alertmanager read the repository's files, mounted whole (rules, templates).
    assert "./prometheus:/etc/prometheus:ro" in s["prometheus"]["volumes"]
    assert flag(s["prometheus"]["command"], "--config.file") == "/etc/prometheus/prometheus.yml"
    assert "./alertmanager:/etc/alertmanager:ro" in s["alertmanager"]["volumes"]
    assert flag(s["alertmanager"]["command"], "--config.file") == "/etc/alertmanager/alertmanager.yml"
    assert "--cluster.listen-address=" in s["alertmanager"]["command"]


def test_prometheus_scrapes_what_the_config_serves(cfg: Config) -> None:
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = {sc["job_name"]: sc["static_configs"][0]["targets"] for sc in prom["scrape_configs"]}
    expected = {
        "prometheus": cfg.stack.prometheus_port,
        "alertmanager": cfg.stack.alertmanager_port,
        "pushgateway": cfg.stack.pushgateway_port,
        "fleetmon-mlflow": cfg.mlflow.listen.port,
        "fleetmon-outputs": cfg.outputs.listen.port,
        "fleetmon-platform": cfg.platform.listen.port,
        "fleetmon-webhook": cfg.stack.webhook_port,
    }
    assert expected == DEFAULT_PORTS  # the shipped config keeps the documented ports
    assert targets == {job: [f"127.0.0.1:{port}"] for job, port in expected.items()}
    by_job = {sc["job_name"]: sc for sc in prom["scrape_configs"]}
    assert by_job["pushgateway"]["honor_labels"] is True
    for job in ("fleetmon-mlflow", "fleetmon-outputs", "fleetmon-platform", "fleetmon-webhook"):
        for limit in ("sample_limit", "label_limit", "label_value_length_limit"):
            assert by_job[job][limit] > 0, (job, limit)
    assert prom["rule_files"] == ["rules/*.yml"]
    am_targets = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_targets == [f"127.0.0.1:{cfg.stack.alertmanager_port}"]
    am = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    urls = [w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert f"http://127.0.0.1:{cfg.stack.webhook_port}/alerts" in urls
    assert set(am["route"]["group_by"]) >= {"customer", "building", "alertname"}


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    prov = ROOT / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "fleetmon.yml").read_text())["datasources"]
    prom = next(d for d in ds if d["type"] == "prometheus")
    assert prom["uid"] == "prometheus" and prom["isDefault"] is True
    assert prom["url"] == "${FLEETMON_PROMETHEUS_URL}"
    providers = yaml.safe_load((prov / "dashboards" / "fleetmon.yml").read_text())["providers"]
    assert [p["allowUiUpdates"] for p in providers] == [False]
    assert providers[0]["options"]["path"] == "${FLEETMON_DASHBOARDS_DIR}"
    g = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in g["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == g["environment"]["FLEETMON_DASHBOARDS_DIR"]


def test_dockerfile_installs_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install" in text and 'ENTRYPOINT ["fleetmon"]' in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"packages = \[(.*?)\]", pyproject).group(1)  # type: ignore[union-attr]
    for pkg in re.findall(r'"(\w+)"', packages):
        assert f"COPY {pkg} ./{pkg}" in text, f"the image misses package {pkg}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "var" in ignored and ".git" in ignored


def test_grafana_is_hardened_as_in_the_native_stack(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert {k: env[k] for k in GRAFANA_HARDENING} == GRAFANA_HARDENING
    # No built-in password: compose refuses to start without one (`${VAR:?message}`), and none is written here.
    for key, var in (
        ("GF_SECURITY_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD"),
        ("GF_SECURITY_SECRET_KEY", "GRAFANA_SECRET_KEY"),
    ):
        assert re.fullmatch(r"\$\{" + var + r":\?[^}]+\}", env[key]), env[key]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS_VIEWER:-false}"
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "README.md").read_text()
    assert not re.search(r"admin\s*/\s*admin", text)


# ------------------------------------------------------------------------------- docker-compose.secure.yml
SERVING = ("prometheus", "alertmanager", "pushgateway", "webhook", *(f"exporter-{n}" for n in EXPORTERS))


@pytest.fixture(scope="module")
def secure_override() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.secure.yml").read_text())


def merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of an override into a service: `environment` by key, `volumes` by container path,
    everything else (command, user, ...) replaced."""
    out = {**base, **override}
    out["environment"] = {**(base.get("environment") or {}), **(override.get("environment") or {})}
    volumes = {v.split(":")[1]: v for v in base.get("volumes", [])}
    volumes.update({v.split(":")[1]: v for v in override.get("volumes", [])})
    out["volumes"] = list(volumes.values())
    return out


def parse_env_file_vars(text: str) -> set[str]:
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"\$\{(\w+)\}", body))


def test_grafana_provisioning_variables_are_all_set(
    compose: dict[str, Any], secure_override: dict[str, Any]
) -> None:
    # An unset variable is empty for Grafana, and an empty `basicAuth` breaks its provisioning.
    used = parse_env_file_vars(
        (ROOT / "grafana" / "provisioning" / "datasources" / "fleetmon.yml").read_text()
    )
    plain = compose["services"]["grafana"]["environment"]
    assert used <= set(plain) and plain["FLEETMON_DATASOURCE_BASIC_AUTH"] == "false"
    secure = merge_service(compose["services"]["grafana"], secure_override["services"]["grafana"])[
        "environment"
    ]
    assert (
        secure["FLEETMON_DATASOURCE_BASIC_AUTH"] == "true" and secure["FLEETMON_DATASOURCE_USER"] == "grafana"
    )


def test_the_secure_override_runs_every_server_on_the_secure_files(
    compose: dict[str, Any], secure_override: dict[str, Any], tmp_path: Path
) -> None:
    from fleetmon.stack import Paths, write_secure_files

    assert set(secure_override["services"]) <= SERVICES
    services = {
        name: merge_service(compose["services"][name], svc)
        for name, svc in secure_override["services"].items()
    }
    # The files, as `fleetmon stack secure-files` writes them for a checkout at tmp_path.
    cfg = load_config(
        ROOT / "config" / "fleetmon.yml",
        environ={"FLEETMON__STACK__DATA_DIR": str(tmp_path / "var" / "data")},
    )
    assert write_secure_files(cfg, Paths.of(cfg)) == 0

    def host(svc: dict[str, Any], path: str) -> Path:
        """The file of this checkout (tmp_path for ./var) a container path of ``svc`` is mounted from."""
        best = max(
            (
                v.split(":")[:2]
                for v in svc["volumes"]
                if (path + "/").startswith(v.split(":")[1].rstrip("/") + "/")
            ),
            key=lambda m: len(m[1]),
        )
        src, target = best
        assert src.startswith("./"), f"{path} is not mounted from this checkout"
        root = tmp_path if src.startswith("./var") else ROOT
        return root / src[2:] / os.path.relpath(path, target) if path != target else root / src[2:]

    for name, svc in services.items():
        # Everything that reads the keys and passwords (0600) runs as you; what it mounts from var/ exists
        # (secure-files made it), so Docker never creates it owned by root.
        assert re.fullmatch(r"\$\{FLEETMON_UID:\?[^}]+\}:\$\{FLEETMON_GID:\?[^}]+\}", svc["user"]), name
        for v in secure_override["services"][name]["volumes"]:
            src = v.split(":")[0]
            assert src.startswith("./var"), (name, v)
            assert (tmp_path / src[2:]).exists(), (name, v)
        assert not [v for v in svc["volumes"] if not v.startswith((".", "/"))], (
            f"{name}: a volume not of yours"
        )

    for name in SERVING:
        svc = services[name]
        web = flag(svc["command"], "--web.config.file")
        assert host(svc, web) == tmp_path / "var" / "data" / "secrets" / "web.yml", name
        tls = yaml.safe_load(host(svc, web).read_text())["tls_server_config"]
        for key in ("cert_file", "key_file"):
            assert host(svc, os.path.normpath(os.path.join(os.path.dirname(web), tls[key]))).is_file(), (
                name,
                key,
            )

        # The same ports and flags as without the override (https), plus the web config; Prometheus and
        # Alertmanager run the secure configs (below).
        def same(argv: list[str], web: str = web) -> list[str]:
            return [a for a in argv if "web.config.file" not in a and a != web and "config.file=" not in a]

        base = compose["services"][name]["command"]
        assert same(svc["command"]) == [a.replace("http://", "https://") for a in same(base)], name
    assert (
        services["prometheus"]["volumes"]
        and "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    )

    # Prometheus and Alertmanager run the secure configs; every file those name is mounted.
    prom_yml = host(services["prometheus"], flag(services["prometheus"]["command"], "--config.file"))
    assert prom_yml == tmp_path / "var" / "data" / "compose" / "prometheus.yml"
    prom = yaml.safe_load(prom_yml.read_text())
    for sc in [*prom["scrape_configs"], *prom["alerting"]["alertmanagers"]]:
        assert sc["scheme"] == "https" and sc["basic_auth"]["username"] == "prometheus"
        assert host(services["prometheus"], sc["tls_config"]["ca_file"]).is_file()
        assert host(services["prometheus"], sc["basic_auth"]["password_file"]).is_file()
    for glob in prom["rule_files"]:
        assert list(host(services["prometheus"], os.path.dirname(glob)).glob(os.path.basename(glob))), glob
    am_yml = host(services["alertmanager"], flag(services["alertmanager"]["command"], "--config.file"))
    am = yaml.safe_load(am_yml.read_text())
    hooks = [w for r in am["receivers"] for w in r.get("webhook_configs", [])]
    assert {w["url"] for w in hooks} == {
        f"https://127.0.0.1:{DEFAULT_PORTS['fleetmon-webhook']}/{path}" for path in ("alerts", "actions")
    }
    for w in hooks:
        assert w["http_config"]["basic_auth"]["username"] == "alertmanager"
        assert host(services["alertmanager"], w["http_config"]["basic_auth"]["password_file"]).is_file()
        assert host(services["alertmanager"], w["http_config"]["tls_config"]["ca_file"]).is_file()
    for glob in am["templates"]:
        assert list(host(services["alertmanager"], os.path.dirname(glob)).glob(os.path.basename(glob))), glob

    # Whatever pushes to the Pushgateway (the jobs, the demo's simulated training) pushes over https as the
    # `fleetmon` user, trusting the mounted CA.
    pushers = [
        n
        for n, svc in services.items()
        if {"FLEETMON_PUSHGATEWAY", "FLEETMON__DEMO__PUSHGATEWAY_URL"} & set(svc.get("environment") or {})
    ]
    assert "simulator" in pushers and "scoring" in pushers
    for name in pushers:
        env = services[name]["environment"]
        url = env.get("FLEETMON_PUSHGATEWAY") or env["FLEETMON__DEMO__PUSHGATEWAY_URL"]
        assert urlsplit(url).scheme == "https", name
        assert env["FLEETMON_PUSHGATEWAY_USERNAME"] == "fleetmon", name
        assert host(services[name], env["FLEETMON_PUSHGATEWAY_CA_FILE"]).is_file(), name
        assert host(services[name], env["FLEETMON_PUSHGATEWAY_PASSWORD_FILE"]).is_file(), name

    # Grafana over https with secure cookies; its datasources with the CA and the grafana user's password,
    # by reference ($__file{}), from mounted files.
    g = services["grafana"]
    env = g["environment"]
    assert env["GF_SERVER_PROTOCOL"] == "https" and env["GF_SECURITY_COOKIE_SECURE"] == "true"
    assert host(g, env["GF_SERVER_CERT_FILE"]).is_file() and host(g, env["GF_SERVER_CERT_KEY"]).is_file()
    assert urlsplit(env["FLEETMON_PROMETHEUS_URL"]).scheme == "https"
    assert urlsplit(env["FLEETMON_ALERTMANAGER_URL"]).scheme == "https"
    for key, name in (
        ("FLEETMON_DATASOURCE_PASSWORD", "grafana.password"),
        ("FLEETMON_DATASOURCE_CA_CERT", "ca.crt"),
    ):
        # `$$` in the file: compose hands Grafana a literal `$__file{...}`.
        m = re.fullmatch(r"\$\$__file\{(.+)\}", env[key])
        assert m and host(g, m.group(1)).name == name and host(g, m.group(1)).is_file(), env[key]
