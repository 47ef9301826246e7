"""No secret leaks: seeded secrets never appear in a /metrics exposition, a log line, a file fleetmon writes,
a webhook page, ``fleetmon check-config`` output or an error message; a URL that is shown is redacted.

Seeded: an MLflow token and basic-auth password (the environment, ``FLEETMON__`` variables and the file), a
password in the MLflow tracking URI, a PostgreSQL password (``user:password@host`` and ``?password=``, right
and wrong), a service principal's Azure credentials, and the plain password of a web config's basic-auth
user (clients send it, and wrong ones). Exercised on the failure paths above all: MLflow answering 401 and
500 or unreachable, the database refusing the password or down, Log Analytics refusing the credentials or
failing, configs that fail validation, web configs holding a plain password; in-process with caplog at
DEBUG and as real processes (stdout/stderr). Real components throughout (the session's ``mlflow server``
behind a small auth proxy written here, PostgreSQL with a password-authenticated role, the exporters, the
webhook receiver and the CLI as subprocesses); Azure is the fake of tests/fakes/log_analytics.py.

Every secret is looked for as given, percent-encoded (``quote``, ``quote_plus``) and, for basic auth, as the
base64 of ``user:password`` an Authorization header carries; every secret contains ``S3cr3t``, which is
looked for too, so a fragment of one is caught as well.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from mlflow import MlflowClient

from collectors.logs import LogsCollector
from collectors.mlflow import MlflowCollector
from collectors.outputs import DriftCollector, OutputsCollector
from fleetmon.config import ConfigError, load_config, redact_url
from fleetmon.exporter import Exporter
from fleetmon.outputs.pipeline import OutputsPipeline
from fleetmon.procs import free_port
from fleetmon.webconfig import WebConfigError, WebServing, load_web_config
from fleetmon.webhook import Receiver
from tests.fakes.log_analytics import FakeAzure, Fault, console_row
from tests.postgres import PostgresServer, postgres  # noqa: F401  (the session fixture)

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------------------ secrets
MARKER = "S3cr3t"
MLFLOW_USER = "fleetmon-bot"  # user names are not secrets (a redacted URL keeps them)
MLFLOW_TOKEN = "S3cr3t-mlflow-token-XYZ"
MLFLOW_PASSWORD = "S3cr3t-mlflow-pw-XYZ"
MLFLOW_URI_PASSWORD = "S3cr3t-mlflow-uripw-XYZ"
WRONG_MLFLOW = "S3cr3t-wrong-mlflow-XYZ"
SQL_USER = "reader"
SQL_PASSWORD = "S3cr3t-sqlpw-XYZ/@:%"  # characters a URL must percent-encode: both forms are looked for
WRONG_SQL_PASSWORD = "S3cr3t-wrong-sqlpw-XYZ"
AZURE_CLIENT_SECRET = "S3cr3t-azure-client-secret-XYZ"
# Identifiers, not secrets: azure-identity and MSAL name them in debug logs (the authority URL holds the
# tenant, MSAL's token cache event the client id), as Entra ID's own error messages do. Nowhere else.
AZURE_CLIENT_ID = "fleetmon-sp-client-id-XYZ"
AZURE_TENANT_ID = "fleetmon-sp-tenant-XYZ"
WORKSPACE = "3f1c0e2a-9b7d-4c55-8e21-6a0d4b9c7e10"  # an id, not a secret
SCRAPER = "prometheus"
SCRAPE_PASSWORD = "S3cr3t-scrape-pw-XYZ"
WRONG_SCRAPE_PASSWORD = "S3cr3t-wrong-scrape-pw-XYZ"
NUMERIC_SECRET = "98765432123"  # a password YAML would read as a number
SECRETS = [
    MLFLOW_TOKEN,
    MLFLOW_PASSWORD,
    MLFLOW_URI_PASSWORD,
    WRONG_MLFLOW,
    SQL_PASSWORD,
    WRONG_SQL_PASSWORD,
    AZURE_CLIENT_SECRET,
    SCRAPE_PASSWORD,
    WRONG_SCRAPE_PASSWORD,
    NUMERIC_SECRET,
]


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _forms(values: list[str]) -> list[str]:
    """As given, percent-encoded both ways, and inside a basic-auth header."""
    quoted = {
        f(s) for s in values for f in (str, lambda s: urllib.parse.quote(s, safe=""), urllib.parse.quote_plus)
    }
    return sorted(quoted | {_basic(u, p) for u in (MLFLOW_USER, SCRAPER) for p in values})


SECRET_FORMS = [MARKER, *_forms(SECRETS)]
ALL_FORMS = [*SECRET_FORMS, *_forms([AZURE_CLIENT_ID, AZURE_TENANT_ID])]


def assert_clean(evidence: Mapping[str, str | bytes], logs: Mapping[str, str | bytes] | None = None) -> None:
    """No form of a secret in the evidence nor in the logs, nor of an identifier outside the logs (each
    leak named in the failure with the text around it)."""
    for forms, pieces in ((ALL_FORMS, evidence), (SECRET_FORMS, logs or {})):
        for where, content in pieces.items():
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
            for form in forms:
                i = text.find(form)
                assert i < 0, f"{form!r} leaked into {where}: ...{text[max(0, i - 200) : i + 100]}..."


def files_under(root: Path) -> dict[str, str]:
    """Every file fleetmon wrote there (quarantine, state, checkpoint, notifications), by path."""
    return {f"file {p}": p.read_text(errors="replace") for p in sorted(root.rglob("*")) if p.is_file()}


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as formatted (with tracebacks) and its raw arguments."""
    return caplog.text + "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)


# -------------------------------------------------------------------------------- MLflow with auth
MLFLOW_401 = (
    b"You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/index.html"
    b"#authenticating-to-mlflow on how to authenticate."
)  # the body MLflow's basic-auth app answers (mlflow/server/auth/__init__.py, make_basic_auth_response)


class AuthMlflow:
    """The session's real MLflow server behind a check of credentials, as MLflow's auth app makes them:
    401 unless the bearer token or a basic-auth password is right; ``mode = "500"`` answers 500."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        accepted = {
            f"Bearer {MLFLOW_TOKEN}",
            f"Basic {_basic(MLFLOW_USER, MLFLOW_PASSWORD)}",
            f"Basic {_basic(MLFLOW_USER, MLFLOW_URI_PASSWORD)}",
        }
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.headers.get("Authorization") not in accepted:
                    return self._send(
                        401, MLFLOW_401, "text/plain", {"WWW-Authenticate": 'Basic realm="mlflow"'}
                    )
                if outer.mode == "500":
                    return self._send(500, b'{"error_code": "INTERNAL_ERROR", "message": "boom"}')
                r = requests.request(
                    self.command,
                    outer.upstream + self.path,
                    data=body,
                    headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                    timeout=30,
                )
                self._send(r.status_code, r.content)

            def _send(
                self,
                code: int,
                content: bytes,
                ctype: str = "application/json",
                extra: dict[str, str] | None = None,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(content)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(content)

            do_GET = _handle
            do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --------------------------------------------------------------------------------------- the world
SCHEMA = """
CREATE TABLE predictions (
    id bigserial PRIMARY KEY,
    customer text NOT NULL, building text NOT NULL, energy text NOT NULL, model text NOT NULL,
    made_at timestamptz NOT NULL DEFAULT now(),
    target_time timestamptz NOT NULL,
    prediction double precision
);
"""


@dataclass
class World:
    """What every test shares: a fleet, MLflow behind auth, a database with a password, a web config."""

    cust: str
    mlflow: AuthMlflow
    pg: PostgresServer
    db: str
    web_config: Path  # basic auth for SCRAPER with SCRAPE_PASSWORD (a bcrypt hash)

    def sql_sources(self, down_port: int) -> list[dict[str, Any]]:
        pg, db, q = self.pg, self.db, "SELECT * FROM predictions"
        quoted = urllib.parse.quote(SQL_PASSWORD, safe="")
        base = f"postgresql+psycopg://{SQL_USER}"
        return [
            {"name": "userinfo", "url": f"{base}:{quoted}@{pg.host}:{pg.port}/{db}", "query": q},
            {"name": "query-param", "url": f"{base}@{pg.host}:{pg.port}/{db}?password={quoted}", "query": q},
            {"name": "wrong", "url": f"{base}:{WRONG_SQL_PASSWORD}@{pg.host}:{pg.port}/{db}", "query": q},
            {"name": "down", "url": f"{base}:{quoted}@{pg.host}:{down_port}/{db}", "query": q},
        ]


@pytest.fixture(scope="module")
def world(
    mlflow_server: str,
    postgres: PostgresServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    cust = f"sec{uuid.uuid4().hex[:8]}"
    # MLflow: one run of the fleet, one without fleet tags (quarantined, with its source)
    c = MlflowClient(mlflow_server)
    exp = c.create_experiment(f"{cust}/secrets")
    key = {"customer": cust, "building": "b1", "energy": "electricity", "model": "forecast"}
    for tags in (key, {"note": "no fleet tags"}):
        run = c.create_run(exp, tags=tags)
        c.log_metric(run.info.run_id, "mae", 1.5)
        c.set_terminated(run.info.run_id, "FINISHED")
    # PostgreSQL: a role that must give its password; a row of the fleet and one of no fleet (quarantined)
    db = postgres.create_database("sec")
    with postgres.connect(db) as conn:
        conn.execute(SCHEMA)
        for customer in (cust, "nobody"):
            conn.execute(
                "INSERT INTO predictions (customer, building, energy, model, target_time, prediction)"
                " VALUES (%s, 'b1', 'electricity', 'forecast', now() + interval '1 hour', 12.5)",
                (customer,),
            )
    postgres.create_role(SQL_USER, SQL_PASSWORD, db)
    web = tmp_path_factory.mktemp("web") / "web.yml"
    hashed = bcrypt.hashpw(SCRAPE_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {SCRAPER: hashed}}))
    proxy = AuthMlflow(mlflow_server)
    try:
        yield World(cust, proxy, postgres, db, web)
    finally:
        proxy.close()


def config_doc(w: World, **overrides: Any) -> dict[str, Any]:
    """A config of every source, its outputs under ../var (beside the config's directory)."""
    listen = {"web_config_file": str(w.web_config)}
    doc: dict[str, Any] = {
        "fleet": {"customers": [{"id": w.cust, "buildings": [{"id": "b1"}]}]},
        "mlflow": {
            "tracking_uri": w.mlflow.url,
            "timeout_seconds": 2,
            "max_retries": 1,
            "retry_backoff_seconds": 0.01,
            "quarantine_file": "../var/quarantine/mlflow.jsonl",
            "listen": {**listen, "port": free_port()},
        },
        "outputs": {
            "sql": w.sql_sources(free_port()),
            "quarantine_dir": "../var/quarantine/outputs",
            "state_dir": "../var/state/outputs",
            "drift": {"enabled": False},
            "listen": {**listen, "port": free_port()},
        },
        "platform": {
            "logs": {
                "apps": {"gateway": []},
                "state_file": "../var/state/logs-positions.json",
                "quarantine_file": "../var/quarantine/logs.jsonl",
            },
            "host": False,
            "gpu": False,
            "listen": {**listen, "port": free_port()},
        },
        "stack": {
            "data_dir": "../var/data",
            "webhook_port": free_port(),
            "webhook_web_config_file": str(w.web_config),
        },
    }
    for section, values in overrides.items():
        doc[section] = {**doc.get(section, {}), **values}
    return doc


def write_config(d: Path, doc: dict[str, Any], text: str | None = None) -> Path:
    conf = d / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    path = conf / "fleetmon.yml"
    path.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
    return path


def log_analytics(azure: FakeAzure, **extra: Any) -> dict[str, Any]:
    return {
        "workspace_id": WORKSPACE,
        "credential": "environment",
        "endpoint": azure.url,
        "disable_instance_discovery": True,
        "checkpoint_file": "../var/state/log-analytics.json",
        **extra,
    }


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[FakeAzure]:
    fake = FakeAzure(tmp_path / "azure", workspace_id=WORKSPACE)
    fake.client_id, fake.client_secret = AZURE_CLIENT_ID, AZURE_CLIENT_SECRET
    yield fake
    fake.close()


def azure_env(fake: FakeAzure, secret: str = AZURE_CLIENT_SECRET) -> dict[str, str]:
    """A service principal in the environment, as EnvironmentCredential reads it; the fake's CA trusted."""
    return {
        "AZURE_TENANT_ID": AZURE_TENANT_ID,
        "AZURE_CLIENT_ID": AZURE_CLIENT_ID,
        "AZURE_CLIENT_SECRET": secret,
        "AZURE_AUTHORITY_HOST": f"https://{fake.authority}",
        "REQUESTS_CA_BUNDLE": str(fake.ca),
        "NO_PROXY": "127.0.0.1,localhost",
    }


def scrape(
    port: int, path: str = "/metrics", password: str = SCRAPE_PASSWORD, **kw: Any
) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", auth=(SCRAPER, password), timeout=10, **kw)


def serve_and_scrape(exp: Exporter, w: World) -> str:
    """The exporter behind the web config: a wrong password is refused, the right one gets /metrics."""
    httpd, thread = exp.serve("127.0.0.1", 0, WebServing(w.web_config))
    try:
        port = httpd.server_address[1]
        assert scrape(port, password=WRONG_SCRAPE_PASSWORD).status_code == 401
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 401
        r = scrape(port)
        assert r.status_code == 200
        return r.text + scrape(port, "/").text
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# ============================================================================== redaction helpers
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://reader:pw@db:5432/out", "postgresql+psycopg://reader:***@db:5432/out"),
        (
            "postgresql://reader@db/out?sslmode=require&password=pw",
            "postgresql://reader@db/out?sslmode=require&password=***",
        ),
        ("http://bot:p%40ss@mlflow:5000/", "http://bot:***@mlflow:5000/"),
        ("http://bot:p@ss@mlflow:5000", "http://bot:***@mlflow:5000"),  # an unquoted '@' in the password
        ("postgresql://reader:p/a?ss@db/out", "postgresql://reader:***@db/out"),  # SQLAlchemy reads it so
        ("https://api.loganalytics.io", "https://api.loganalytics.io"),
        ("sqlite:///var/outputs.db", "sqlite:///var/outputs.db"),
        ("http://mlflow:5000/?token=abc#x", "http://mlflow:5000/?token=***#x"),
        ("postgresql+psycopg//reader:pw@db/out", None),  # not scheme://: nothing can be shown
        ("reader:pw@db/out", None),
    ],
)
def test_redact_url(url: str, shown: str | None) -> None:
    assert redact_url(url) == shown


# ============================================================================== the loaded config
def test_repr_and_str_of_the_loaded_config_show_no_secret(world: World, tmp_path: Path) -> None:
    doc = config_doc(
        world, mlflow={"tracking_uri": f"http://{MLFLOW_USER}:{MLFLOW_URI_PASSWORD}@127.0.0.1:5000"}
    )
    doc["mlflow"]["token"] = MLFLOW_TOKEN
    path = write_config(tmp_path, doc)
    cfg = load_config(
        path, {"MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD}
    )
    # the values are all there, for the code that uses them ...
    assert cfg.mlflow.token == MLFLOW_TOKEN and cfg.mlflow.password == MLFLOW_PASSWORD
    assert urllib.parse.unquote(cfg.outputs.sql[0].url).count(SQL_PASSWORD) == 1
    # ... and no repr or str shows them, at any level
    shown = {
        f"{f.__name__}({name})": f(obj)
        for f in (repr, str)
        for name, obj in [
            ("cfg", cfg),
            ("mlflow", cfg.mlflow),
            ("outputs", cfg.outputs),
            *((f"sql[{i}]", s) for i, s in enumerate(cfg.outputs.sql)),
        ]
    }
    assert_clean(shown)
    assert "token='***'" in shown["repr(mlflow)"] and "password='***'" in shown["repr(mlflow)"]
    assert f"http://{MLFLOW_USER}:***@127.0.0.1:5000" in shown["repr(mlflow)"]
    assert "reader:***@" in shown["repr(sql[0])"] and "password=***" in shown["repr(sql[1])"]


def test_secrets_from_the_environment_are_taken_verbatim(world: World, tmp_path: Path) -> None:
    """As YAML, 98765432123 would be a number (refused, and shown), '@...' a YAML error quoting it."""
    path = write_config(tmp_path, config_doc(world))
    cfg = load_config(
        path, {"FLEETMON__MLFLOW__PASSWORD": NUMERIC_SECRET, "FLEETMON__MLFLOW__TOKEN": f"@{MLFLOW_TOKEN}"}
    )
    assert cfg.mlflow.password == NUMERIC_SECRET and cfg.mlflow.token == f"@{MLFLOW_TOKEN}"
    with pytest.raises(ConfigError) as e:  # other values are YAML, and a bad one is named, not quoted
        load_config(path, {"FLEETMON__MLFLOW__TIMEOUT_SECONDS": f"@{MLFLOW_TOKEN}"})
    assert "FLEETMON__MLFLOW__TIMEOUT_SECONDS: not a valid YAML value: line 1, column 1" in str(e.value)
    assert_clean({"ConfigError": str(e.value)})


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "FLEETMON", "AZURE_"))}
    return subprocess.run(
        [sys.executable, "-m", "fleetmon.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**clean, **env},
    )


def azure_env_plain() -> dict[str, str]:
    return {
        "AZURE_TENANT_ID": AZURE_TENANT_ID,
        "AZURE_CLIENT_ID": AZURE_CLIENT_ID,
        "AZURE_CLIENT_SECRET": AZURE_CLIENT_SECRET,
    }


def test_check_config_on_a_valid_config(world: World, tmp_path: Path) -> None:
    doc = config_doc(
        world, mlflow={"tracking_uri": f"http://{MLFLOW_USER}:{MLFLOW_URI_PASSWORD}@127.0.0.1:5000"}
    )
    doc["mlflow"]["token"] = MLFLOW_TOKEN
    env = {
        "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
        "FLEETMON__MLFLOW__USERNAME": MLFLOW_USER,
        **azure_env_plain(),
    }
    r = check_config(write_config(tmp_path, doc), env)
    assert r.returncode == 0, r.stderr
    assert ": ok: 1 customers, 1 buildings, 4 models" in r.stdout
    assert_clean({"stdout": r.stdout, "stderr": r.stderr})


BAD_CONFIGS: dict[str, tuple[Callable[[dict[str, Any]], str | None], dict[str, str], str]] = {
    # name: (edit the doc, returning a whole text instead when set), environment, what stderr must say
    "misspelt-secret-key": (
        lambda d: d["mlflow"].update(tracking_token=MLFLOW_TOKEN),
        {},
        "mlflow.tracking_token: unknown key\n",
    ),
    "misspelt-secret-in-env": (
        lambda d: None,
        {"FLEETMON__MLFLOW__TRACKING_PASSWORD": MLFLOW_PASSWORD},
        "mlflow.tracking_password: unknown key\n",
    ),
    "numeric-password": (
        lambda d: d["mlflow"].update(password=int(NUMERIC_SECRET)),
        {},
        "mlflow.password: Input should be a valid string\n",
    ),
    "sql-url-not-a-url": (
        lambda d: d["outputs"]["sql"][0].update(url=d["outputs"]["sql"][0]["url"].replace("://", "//")),
        {},
        "outputs.sql.0.url: Value error, not a SQLAlchemy URL",
    ),
    "sql-source-bad-beside-the-url": (
        lambda d: d["outputs"]["sql"][0].update(time_column="made at"),
        {},
        "outputs.sql.0.time_column: String should match pattern",
    ),
    "endpoint-with-a-password": (
        lambda d: d["platform"]["logs"].update(
            log_analytics={
                "workspace_id": WORKSPACE,
                "endpoint": f"http://sp:{AZURE_CLIENT_SECRET}@api.loganalytics.io",
            }
        ),
        {},
        "(got 'http://sp:***@api.loganalytics.io')",  # a URL that is shown is shown redacted
    ),
    "yaml-error-on-the-secret-line": (
        lambda d: yaml.safe_dump(d, sort_keys=False).replace(
            f"token: {MLFLOW_TOKEN}", f"token: {MLFLOW_TOKEN}: {MLFLOW_TOKEN}"
        ),
        {},
        "not valid YAML: line ",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_check_config_on_an_invalid_config(world: World, tmp_path: Path, case: str) -> None:
    edit, env, expected = BAD_CONFIGS[case]
    doc = config_doc(world)
    doc["mlflow"]["token"] = MLFLOW_TOKEN
    text = edit(doc)
    path = write_config(tmp_path, doc, text)
    r = check_config(path, env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"fleetmon: {path}: ") or r.stderr.startswith("fleetmon: FLEETMON__"), r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ConfigError) as e:  # in-process: the exception (and what it chains) is as clean
        load_config(path, env)
    assert e.value.__cause__ is None or "input_value" not in str(e.value.__cause__)
    assert_clean({"stdout": r.stdout, "stderr": r.stderr, "ConfigError": str(e.value), "repr": repr(e.value)})


PLAIN_IN_WEB_CONFIG = {
    # a plain password where a bcrypt hash belongs: as text, as a number, on a line YAML cannot parse
    "text": f"basic_auth_users:\n  {SCRAPER}: {SCRAPE_PASSWORD}\n",
    "number": f"basic_auth_users:\n  {SCRAPER}: {NUMERIC_SECRET}\n",
    "yaml-error": f"basic_auth_users:\n  {SCRAPER}: {SCRAPE_PASSWORD}: {SCRAPE_PASSWORD}\n",
}


@pytest.mark.parametrize("case", list(PLAIN_IN_WEB_CONFIG))
def test_a_plain_password_in_a_web_config_is_refused_without_showing_it(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(PLAIN_IN_WEB_CONFIG[case])
    with pytest.raises(WebConfigError) as e:
        load_web_config(path)
    assert str(e.value).startswith(f"{path}: ") and e.value.__cause__ is None
    # the same file on a reload: the server fails closed and logs why
    caplog.set_level(logging.DEBUG)
    good = bcrypt.hashpw(SCRAPE_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    path.write_text(yaml.safe_dump({"basic_auth_users": {SCRAPER: good}}))
    web = WebServing(path)
    path.write_text(PLAIN_IN_WEB_CONFIG[case] + "http_server_config: {}\n")  # another size: seen as changed
    assert web.current() is None
    assert "cannot reload" in caplog.text
    assert_clean({"WebConfigError": str(e.value)}, {"logs": log_text(caplog)})


# ============================================================================== MLflow, in-process
MLFLOW_AUTH = {
    # name: (mlflow keys in the file, environment, the right secret); {s} becomes a secret, {port} a port
    "token-env": ({}, {"MLFLOW_TRACKING_TOKEN": "{s}"}, MLFLOW_TOKEN),
    "token-file": ({"token": "{s}"}, {}, MLFLOW_TOKEN),
    "basic-env": (
        {},
        {"MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": "{s}"},
        MLFLOW_PASSWORD,
    ),
    "basic-fleetmon-env": (
        {"username": MLFLOW_USER},
        {"FLEETMON__MLFLOW__PASSWORD": "{s}"},
        MLFLOW_PASSWORD,
    ),
    "uri-userinfo": (
        {"tracking_uri": f"http://{MLFLOW_USER}:{{s}}@127.0.0.1:{{port}}"},
        {},
        MLFLOW_URI_PASSWORD,
    ),
}


def _fill(d: dict[str, str], secret: str, port: int) -> dict[str, str]:
    return {k: v.replace("{s}", secret).replace("{port}", str(port)) for k, v in d.items()}


@pytest.mark.parametrize("auth", list(MLFLOW_AUTH))
def test_mlflow_exporter_in_process_ok_401_500_and_unreachable(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, auth: str
) -> None:
    file_keys, env, secret = MLFLOW_AUTH[auth]
    caplog.set_level(logging.DEBUG)

    def collector(secret: str, port: int) -> MlflowCollector:
        doc = config_doc(world, mlflow=_fill(file_keys, secret, port))
        if "tracking_uri" not in file_keys:
            doc["mlflow"]["tracking_uri"] = f"http://127.0.0.1:{port}"
        return MlflowCollector(load_config(write_config(tmp_path, doc), _fill(env, secret, port)))

    evidence: dict[str, str | bytes] = {}
    ok = collector(secret, world.mlflow.port)
    exp = Exporter("mlflow", {"mlflow": ok})
    try:
        assert exp.poll_once("mlflow"), exp.poll_states["mlflow"].last_error
        assert exp.scraped.get_sample_value("fleetmon_mlflow_up") == 1
        world.mlflow.mode = "500"
        try:
            assert not exp.poll_once("mlflow")
        finally:
            world.mlflow.mode = "pass"
        evidence["500: poll error"] = str(exp.poll_states["mlflow"].last_error)
        assert "HTTP 500 from" in evidence["500: poll error"]
        evidence["metrics"] = serve_and_scrape(exp, world)
    finally:
        exp.stop()
    assert (tmp_path / "var" / "quarantine" / "mlflow.jsonl").exists()  # the untagged run, with its source
    for what, bad in [
        ("401", collector(WRONG_MLFLOW, world.mlflow.port)),
        ("down", collector(secret, free_port())),
    ]:
        e = Exporter("mlflow", {"mlflow": bad})
        try:
            assert not e.poll_once("mlflow")
            evidence[f"{what}: poll error"] = str(e.poll_states["mlflow"].last_error)
            evidence[f"{what}: metrics"] = e.exposition()
        finally:
            e.stop()
    assert (
        "HTTP 401 from" in evidence["401: poll error"] and "not authenticated" in evidence["401: poll error"]
    )
    assert "cannot connect to" in evidence["down: poll error"]
    logs = log_text(caplog)
    assert "poll failed" in logs
    if auth == "uri-userinfo":  # a URL that is shown is shown redacted
        assert f"http://{MLFLOW_USER}:***@127.0.0.1:" in evidence["401: poll error"]
        assert f"{MLFLOW_USER}:***@" in (tmp_path / "var" / "quarantine" / "mlflow.jsonl").read_text()
    assert_clean({**evidence, **files_under(tmp_path / "var")}, {"logs": logs})


# ============================================================================== outputs, in-process
def test_outputs_exporter_in_process_with_right_wrong_and_unreachable_databases(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = load_config(write_config(tmp_path, config_doc(world)), {})
    pipeline = OutputsPipeline(cfg)
    exp = Exporter("outputs", {"outputs": OutputsCollector(cfg, pipeline)})
    try:
        for _ in range(2):  # the second read is incremental
            assert exp.poll_once("outputs"), exp.poll_states["outputs"].last_error
        up = {
            s: exp.scraped.get_sample_value("fleetmon_outputs_source_up", {"source": s})
            for s in ("userinfo", "query-param", "wrong", "down")
        }
        assert up == {"userinfo": 1, "query-param": 1, "wrong": 0, "down": 0}  # the password does work
        text = serve_and_scrape(exp, world)
    finally:
        exp.stop()
    logs = log_text(caplog)
    # the errors and the sources are there, with the URLs redacted ...
    assert "password authentication failed" in logs and f"{SQL_USER}:***@" in logs
    assert f'location="postgresql+psycopg://{SQL_USER}:***@' in text
    assert "password=%2A%2A%2A" in text
    quarantine = "".join(files_under(tmp_path / "var" / "quarantine").values())
    assert '"nobody"' in quarantine  # the row of no fleet
    assert (tmp_path / "var" / "state" / "outputs" / "state.json").exists()
    # ... the passwords are not
    assert_clean({"metrics": text, **files_under(tmp_path / "var")}, {"logs": logs})


# ============================================================================== platform, in-process
def test_platform_exporter_in_process_with_a_service_principal(
    world: World,
    tmp_path: Path,
    azure: FakeAzure,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time()
    azure.ingest(
        "ContainerAppConsoleLogs_CL",
        console_row("log-analytics", "gateway", "GET /health 200", int((now - 30) * 1e6)),
        console_row(
            "log-analytics", "stranger", "an app not configured", int((now - 20) * 1e6)
        ),  # quarantined
    )
    for var in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    for k, v in azure_env(azure).items():
        monkeypatch.setenv(k, v)
    caplog.set_level(logging.DEBUG)  # azure-core's HTTP logging and MSAL too
    doc = config_doc(world)
    doc["platform"]["logs"]["log_analytics"] = log_analytics(azure)
    path = write_config(tmp_path, doc)
    evidence: dict[str, str | bytes] = {}

    def run(clock: float, fault: Fault | None = None) -> Exporter:
        coll = LogsCollector(load_config(path, {}))
        assert coll.log_analytics is not None
        coll.log_analytics.clock = lambda: clock
        if fault is not None:
            azure.fail_next(fault)
        exp = Exporter("platform", {"logs": coll})
        exp.poll_once("logs")
        return exp

    exp = run(now)
    try:
        assert exp.scraped.get_sample_value("fleetmon_log_analytics_up") == 1
        assert azure.token_requests == ["client_credentials"]
        evidence["metrics"] = serve_and_scrape(exp, world)
    finally:
        exp.stop()
    exp = run(now + 120, Fault(status=500))
    try:
        assert (
            exp.scraped.get_sample_value(
                "fleetmon_log_analytics_query_errors_total", {"reason": "server_error"}
            )
            == 1
        )
        evidence["500: metrics"] = exp.exposition()
    finally:
        exp.stop()
    monkeypatch.setenv("AZURE_CLIENT_SECRET", WRONG_MLFLOW)  # a wrong (and also seeded) secret
    exp = run(now + 240)
    try:
        assert (
            exp.scraped.get_sample_value("fleetmon_log_analytics_query_errors_total", {"reason": "auth"}) == 1
        )
        evidence["auth: metrics"] = exp.exposition()
    finally:
        exp.stop()
    logs = log_text(caplog)
    assert "query failed (server_error" in logs and "query failed (auth" in logs
    assert "stranger--r1" in (tmp_path / "var" / "quarantine" / "logs.jsonl").read_text()
    assert (tmp_path / "var" / "state" / "log-analytics.json").exists()
    assert (tmp_path / "var" / "state" / "logs-positions.json").exists()
    assert_clean({**evidence, **files_under(tmp_path / "var")}, {"logs": logs})


def test_a_drift_reference_from_mlflow_that_cannot_be_read_hides_the_uri_password(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's client: fail at once
    caplog.set_level(logging.DEBUG)
    uri = f"http://{MLFLOW_USER}:{MLFLOW_URI_PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
    doc = config_doc(world, mlflow={"tracking_uri": uri})
    doc["outputs"].update(
        sql=[],
        drift={
            "reference": "file",
            "reference_path": "mlflow-artifacts:/1/{customer}/{building}/{model}.parquet",
        },
    )
    cfg = load_config(write_config(tmp_path, doc), {})
    exp = Exporter("outputs", {"drift": DriftCollector(cfg)})
    try:
        assert exp.poll_once("drift"), exp.poll_states["drift"].last_error
        text = exp.exposition().decode()
    finally:
        exp.stop()
    assert 'fleetmon_drift_models_skipped{reason="reference_unavailable"} 4.0' in text
    logs = log_text(caplog)
    assert "no drift reference for" in logs
    assert_clean({"metrics": text, **files_under(tmp_path / "var")}, {"logs": logs})


# ============================================================================== webhook, in-process
def am_payload(cust: str) -> dict[str, Any]:
    labels = {"alertname": "ModelDataDrift", "severity": "warning", "customer": cust, "building": "b1"}
    return {
        "version": "4",
        "groupKey": '{}:{alertname="ModelDataDrift"}',
        "status": "firing",
        "receiver": "webhook",
        "groupLabels": {"alertname": "ModelDataDrift"},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "Input data drift"},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "Input data drift", "description": "62% of the columns drifted"},
                "startsAt": "2026-11-22T10:01:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
                "fingerprint": "0123456789abcdef",
            }
        ],
    }


def exercise_webhook(port: int, cust: str) -> dict[str, str]:
    """Posts with a wrong password and the right one; the pages and metrics with the right one."""
    url = f"http://127.0.0.1:{port}"
    body = json.dumps(am_payload(cust))
    wrong = requests.post(f"{url}/alerts", data=body, auth=(SCRAPER, WRONG_SCRAPE_PASSWORD), timeout=10)
    assert wrong.status_code == 401
    ok = requests.post(f"{url}/alerts", data=body, auth=(SCRAPER, SCRAPE_PASSWORD), timeout=10)
    assert ok.status_code == 200, ok.text
    bad = requests.post(f"{url}/alerts", data=b"{not json", auth=(SCRAPER, SCRAPE_PASSWORD), timeout=10)
    assert bad.status_code == 400  # quarantined
    pages = {p: scrape(port, p) for p in ("/", "/notifications", "/metrics", "/-/healthy")}
    assert all(r.status_code == 200 for r in pages.values())
    assert "Input data drift" in pages["/"].text and cust in pages["/notifications"].text
    assert "fleetmon_web_unauthorized_requests_total" in pages["/metrics"].text
    return {f"webhook {p}": r.text for p, r in pages.items()} | {"webhook 401": wrong.text}


def test_webhook_in_process(world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Receiver(tmp_path / "var" / "webhook", port=0, web=WebServing(world.web_config)).start() as r:
        evidence = exercise_webhook(r.port, world.cust)
    assert (tmp_path / "var" / "webhook" / "quarantine.jsonl").exists()
    assert_clean({**evidence, **files_under(tmp_path / "var")}, {"logs": log_text(caplog)})


# ============================================================================== real processes
def wait_for(
    check: Callable[[], bool], what: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        for p in procs:
            assert p.poll() is None, f"{p.args!r} exited with {p.returncode} while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_exporters_and_webhook_as_processes(world: World, tmp_path: Path, azure: FakeAzure) -> None:
    doc = config_doc(world, mlflow={"poll_interval_seconds": 1})
    doc["platform"]["logs"].update(
        poll_interval_seconds=0.5, log_analytics=log_analytics(azure, query_interval_seconds=1)
    )
    now = time.time()
    azure.ingest(
        "ContainerAppConsoleLogs_CL",
        console_row("log-analytics", "gateway", "GET /health 200", int((now - 30) * 1e6)),
        console_row("log-analytics", "stranger", "an app not configured", int((now - 20) * 1e6)),
    )
    path = write_config(tmp_path, doc)
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "FLEETMON", "AZURE_", "IDENTITY_"))
    }
    env = {
        **clean,
        **azure_env(azure),
        "MLFLOW_TRACKING_TOKEN": MLFLOW_TOKEN,
        "FLEETMON__MLFLOW__PASSWORD": MLFLOW_PASSWORD,
    }
    ports = {
        "mlflow": doc["mlflow"]["listen"]["port"],
        "outputs": doc["outputs"]["listen"]["port"],
        "platform": doc["platform"]["listen"]["port"],
        "webhook": doc["stack"]["webhook_port"],
    }
    argv = {
        name: [
            sys.executable,
            "-m",
            "fleetmon.cli",
            "exporter",
            name,
            f"--config.file={path}",
            "--log.level=debug",
        ]
        for name in ("mlflow", "outputs", "platform")
    }
    argv["platform"] += ["--no-collector.host", "--no-collector.processes", "--no-collector.gpu"]
    argv["webhook"] = [
        sys.executable,
        "-m",
        "fleetmon.cli",
        "webhook",
        f"--config.file={path}",
        "--log.level=debug",
    ]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    evidence: dict[str, str | bytes] = {}
    try:
        for name, args in argv.items():
            with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
                procs[name] = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        running = list(procs.values())

        def metrics(name: str) -> str:
            r = scrape(ports[name])
            return r.text if r.status_code == 200 else ""

        wait_for(lambda: "fleetmon_mlflow_up 1.0" in metrics("mlflow"), "MLflow read", running)
        wait_for(
            lambda: 'fleetmon_poll_success{collector="outputs"}' in metrics("outputs"),
            "outputs read",
            running,
        )
        wait_for(
            lambda: "fleetmon_log_analytics_up 1.0" in metrics("platform"), "Log Analytics read", running
        )
        wait_for(lambda: scrape(ports["webhook"], "/-/healthy").status_code == 200, "the webhook", running)
        # the failure paths of a running exporter: MLflow answers 500, Log Analytics too
        world.mlflow.mode = "500"
        azure.fail_next(Fault(status=500))
        try:
            wait_for(lambda: "fleetmon_mlflow_up 0.0" in metrics("mlflow"), "MLflow failing", running)
        finally:
            world.mlflow.mode = "pass"
        failed = 'fleetmon_log_analytics_query_errors_total{reason="server_error"} 1.0'
        wait_for(lambda: failed in metrics("platform"), "Log Analytics failing", running)
        for name in ("mlflow", "outputs", "platform"):
            assert scrape(ports[name], password=WRONG_SCRAPE_PASSWORD).status_code == 401
            evidence[f"{name} /metrics"] = metrics(name)
            evidence[f"{name} /"] = scrape(ports[name], "/").text
        assert f'location="postgresql+psycopg://{SQL_USER}:***@' in evidence["outputs /metrics"]
        evidence |= exercise_webhook(ports["webhook"], world.cust)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    output = {f.name: f.read_text(errors="replace") for f in sorted(logs.iterdir())}
    assert "password authentication failed" in output["outputs.err"]
    assert "HTTP 500 from" in output["mlflow.err"]
    assert "stranger--r1" in (tmp_path / "var" / "quarantine" / "logs.jsonl").read_text()
    assert_clean({**evidence, **files_under(tmp_path / "var")}, output)
