"""The outputs' SQL source against a real PostgreSQL server (tests/postgres.py) through psycopg 3.

What SQLite cannot show: concurrent transactions committing out of order around the watermark, sessions
killed mid-query, a server stopped and started again, a server-side statement timeout, password
authentication. Ground truth is always the table itself (``count(*)``): every row counted once, none twice,
no duplicate rejections. The exporter runs on the real clock (rows get their ``made_at`` from ``now()``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import random
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from collectors.outputs import OutputsCollector
from fleetmon.config import Config
from fleetmon.exporter import Exporter
from fleetmon.outputs.pipeline import OutputsPipeline, _redact, _url_secrets, safe_url
from fleetmon.procs import free_port
from tests.postgres import PostgresServer, postgres  # noqa: F401  (the session fixture)

FLEET = {"customers": [{"id": "c1", "buildings": [{"id": "b1"}]}]}
MODEL = {"customer": "c1", "building": "b1", "energy": "electricity", "model": "forecast"}
SCHEMA = """
CREATE TABLE predictions (
    id bigserial PRIMARY KEY,
    customer text NOT NULL, building text NOT NULL, energy text NOT NULL, model text NOT NULL,
    made_at timestamptz NOT NULL DEFAULT now(),   -- the transaction's start: the classic late commit
    target_time timestamptz NOT NULL,
    prediction double precision
);
CREATE INDEX ON predictions (made_at);
CREATE TABLE actuals (
    customer text, building text, energy text, target_time timestamptz, actual double precision
);
"""
# The slow query: the server sleeps 30 s unless statement_timeout_seconds cancels it first.
SLOW = "SELECT p.* FROM predictions p CROSS JOIN LATERAL (SELECT pg_sleep(30)) AS s"


class Harness:
    """The outputs collector on a pipeline with the real clock; values read from the /metrics body."""

    def __init__(self, cfg: Config) -> None:
        self.pipeline = OutputsPipeline(cfg)
        self.collector = OutputsCollector(cfg, self.pipeline)
        self.exporter = Exporter("outputs", {"outputs": self.collector})

    def poll(self) -> float:
        t0 = time.monotonic()
        assert self.exporter.poll_once("outputs"), self.exporter.poll_states["outputs"].last_error
        return time.monotonic() - t0

    def text(self) -> str:
        return self.exporter.exposition().decode()

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [
            (dict(s.labels), s.value)
            for fam in text_string_to_metric_families(self.text())
            for s in fam.samples
            if s.name == name
        ]

    def get(self, name: str, **labels: str) -> float | None:
        hits = [v for lab, v in self.samples(name) if lab == labels]
        assert len(hits) <= 1
        return hits[0] if hits else None

    def predictions(self) -> float | None:
        return self.get("fleetmon_model_predictions_total", **MODEL)

    def close(self) -> None:
        self.exporter.stop()


class Writer:
    """Inserts prediction rows with unique target times; ``made_at`` is the inserting transaction's now()."""

    _seq = itertools.count()
    _lock = threading.Lock()
    base = time.time() + 86400

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def insert(self, n: int = 1) -> None:
        for _ in range(n):
            with Writer._lock:
                k = next(Writer._seq)
            target = dt.datetime.fromtimestamp(Writer.base + 60 * k, dt.UTC)
            self.conn.execute(
                "INSERT INTO predictions (customer, building, energy, model, target_time, prediction)"
                " VALUES ('c1', 'b1', 'electricity', 'forecast', %s, %s)",
                (target, float(k)),
            )


@pytest.fixture
def db(postgres: PostgresServer) -> Iterator[str]:  # noqa: F811
    """A fresh database with the outputs tables; the server is (again) running afterwards."""
    if not postgres.running():  # a failed restart test must not take the others down
        postgres.start()
    name = postgres.create_database()
    with postgres.connect(name) as conn:
        conn.execute(SCHEMA)
    yield name
    if not postgres.running():
        postgres.start()


def make_cfg(tmp: Path, sql: list[dict[str, Any]], **outputs: Any) -> Config:
    (tmp / "pred").mkdir(exist_ok=True)
    base: dict[str, Any] = {
        "predictions": [],
        "actuals": [],
        "sql": sql,
        "quarantine_dir": str(tmp / "quarantine"),
        "state_dir": str(tmp / "state"),
    }
    base.update(outputs)
    return Config.model_validate({"fleet": FLEET, "outputs": base})


def pg_source(url: str, name: str = "pg", **kw: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "query": "SELECT * FROM predictions", "time_column": "made_at", **kw}


def table_count(server: PostgresServer, db: str, table: str = "predictions") -> int:
    with server.connect(db) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def assert_counted_once(h: Harness, source: str, rows: int) -> None:
    """Every row of the table counted, none twice (no duplicate, no rejection at all)."""
    assert h.get("fleetmon_outputs_rows_read_total", source=source) == rows
    assert h.predictions() == rows
    assert h.samples("fleetmon_outputs_rows_rejected_total") == []


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def backend_waiting_on_lock(server: PostgresServer, db: str, source: str) -> int | None:
    """The pid of the exporter's session of ``source`` while its query waits for a lock."""
    with server.connect(db) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
            (f"fleetmon-outputs {source}",),
        ).fetchone()
    return None if row is None else int(row[0])


# ------------------------------------------------------------------------------ the skipped-row race
@pytest.mark.parametrize("key_columns", [[], ["id"]], ids=["all-columns", "primary-key"])
def test_rows_committed_out_of_order_are_counted_once_across_polls_and_restarts(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
    key_columns: list[str],
) -> None:
    cfg = make_cfg(tmp_path, [pg_source(postgres.url(db), overlap_seconds=60, key_columns=key_columns)])
    with postgres.connect(db) as a, postgres.connect(db) as b:
        Writer(b).insert(3)
        h = Harness(cfg)
        h.poll()
        assert_counted_once(h, "pg", 3)
        # A's transaction takes its now() first but commits after B's row was read: B is newer than A.
        a.execute("BEGIN")
        Writer(a).insert()
        time.sleep(0.01)
        Writer(b).insert()
        h.poll()
        assert_counted_once(h, "pg", 4)
        a.execute("COMMIT")
        h.poll()  # A is older than the watermark: found by the overlap; B and the first rows are not recounted
        assert_counted_once(h, "pg", 5)
        assert h.get("fleetmon_outputs_sql_late_rows_total", source="pg") == 1
        h.poll()
        assert_counted_once(h, "pg", 5)
        h.close()

        # The same race across an exporter restart: C commits late while the exporter is down.
        h = Harness(cfg)
        h.poll()  # the whole query rebuilds the window; nothing is counted again (the counters go on)
        assert h.get("fleetmon_outputs_rows_read_total", source="pg") == 5
        assert h.get("fleetmon_outputs_rows_retained", kind="predictions") == 5
        a.execute("BEGIN")
        Writer(a).insert()
        time.sleep(0.01)
        Writer(b).insert()
        h.poll()
        assert h.get("fleetmon_outputs_rows_read_total", source="pg") == 6
        h.close()
        a.execute("COMMIT")
        h = Harness(cfg)
        h.poll()
        assert_counted_once(h, "pg", 7)  # C, and only C: D was counted before the restart
        assert h.get("fleetmon_outputs_sql_late_rows_total", source="pg") == 2
        assert h.get("fleetmon_outputs_rows_retained", kind="predictions") == 7 == table_count(postgres, db)
        h.close()
    state = json.loads((tmp_path / "state" / "state.json").read_text())["sql"]["pg"]
    assert state["type"] == "datetime" and dt.datetime.fromisoformat(
        state["since"]
    ) == dt.datetime.fromisoformat(state["watermark"]) - dt.timedelta(seconds=60)
    assert sum(state["seen"].values()) == 7  # every row is within the overlap: all remembered


def test_without_overlap_a_late_commit_is_missed(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
) -> None:
    """The race the overlap exists for: with overlap_seconds 0 the late row is never read."""
    h = Harness(make_cfg(tmp_path, [pg_source(postgres.url(db), overlap_seconds=0)]))
    with postgres.connect(db) as a, postgres.connect(db) as b:
        a.execute("BEGIN")
        Writer(a).insert()
        time.sleep(0.01)
        Writer(b).insert()
        h.poll()
        a.execute("COMMIT")
        h.poll()
        h.poll()
    assert table_count(postgres, db) == 2
    assert h.predictions() == 1
    h.close()


def test_concurrent_writers_with_late_commits_lose_nothing_and_count_nothing_twice(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
) -> None:
    """Four writers whose transactions stay open 0..60 ms after their now(), while the exporter polls."""
    h = Harness(make_cfg(tmp_path, [pg_source(postgres.url(db), overlap_seconds=30)]))
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with postgres.connect(db) as conn:
                w = Writer(conn)
                while not stop.is_set():
                    with conn.transaction():
                        w.insert(rnd.randint(1, 3))
                        time.sleep(rnd.uniform(0, 0.06))
        except BaseException as e:  # reported by the test, not lost in a thread
            errors.append(e)

    writers = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for t in writers:
        t.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            h.poll()
            time.sleep(0.01)
    finally:
        stop.set()
        for t in writers:
            t.join(10)
    assert not errors, errors
    h.poll()
    rows = table_count(postgres, db)
    assert rows > 20
    assert_counted_once(h, "pg", rows)
    late = h.get("fleetmon_outputs_sql_late_rows_total", source="pg")
    assert late is not None and late > 0, "the race did not happen: the test proved nothing"
    h.close()


def test_a_state_written_before_the_overlap_counts_nothing_twice(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
) -> None:
    """A state entry without ``since``/``seen`` (the format before the overlap): rows up to its watermark
    were counted."""
    with postgres.connect(db) as conn:
        Writer(conn).insert(2)
        row = conn.execute("SELECT max(made_at) FROM predictions").fetchone()
        assert row is not None
        (tmp_path / "state").mkdir()
        (tmp_path / "state" / "state.json").write_text(
            json.dumps({"files": {}, "sql": {"pg": {"watermark": row[0].isoformat(), "type": "datetime"}}})
        )
        time.sleep(0.01)
        Writer(conn).insert()
    h = Harness(make_cfg(tmp_path, [pg_source(postgres.url(db))]))
    h.poll()
    assert_counted_once(h, "pg", 1)
    assert h.get("fleetmon_outputs_rows_retained", kind="predictions") == 3
    h.poll()
    assert_counted_once(h, "pg", 1)
    h.close()


# -------------------------------------------------------------------------------- connections lost
def test_session_killed_mid_query_is_a_failed_read_then_recovers_without_loss(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
) -> None:
    h = Harness(make_cfg(tmp_path, [pg_source(postgres.url(db), statement_timeout_seconds=20)]))
    with postgres.connect(db) as w:
        Writer(w).insert(3)
        h.poll()
        assert h.get("fleetmon_outputs_source_up", source="pg") == 1
        Writer(w).insert(2)
    # Hold the table so that the exporter's query waits, then end its session from another connection.
    with postgres.connect(db, autocommit=False) as locker:
        locker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
        poll = threading.Thread(target=h.poll)
        poll.start()
        wait_for(lambda: backend_waiting_on_lock(postgres, db, "pg") is not None, "the query to wait")
        with postgres.connect(db) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_waiting_on_lock(postgres, db, "pg"),))
        poll.join(10)
        assert not poll.is_alive()
        locker.rollback()
    assert h.get("fleetmon_outputs_source_up", source="pg") == 0
    assert h.get("fleetmon_outputs_sql_read_errors_total", source="pg", reason="connection_lost") == 1
    assert h.get("fleetmon_outputs_source_errors_total", source="pg") == 1
    assert h.get("fleetmon_outputs_rows_read_total", source="pg") == 3  # nothing of the failed read
    with postgres.connect(db) as w:
        Writer(w).insert()
    h.poll()
    assert h.get("fleetmon_outputs_source_up", source="pg") == 1
    assert_counted_once(h, "pg", table_count(postgres, db))
    assert table_count(postgres, db) == 6
    h.close()


def test_server_stopped_mid_query_and_restarted(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
) -> None:
    h = Harness(make_cfg(tmp_path, [pg_source(postgres.url(db), statement_timeout_seconds=20)]))
    with postgres.connect(db) as w:
        Writer(w).insert(3)
    h.poll()
    up = [h.get("fleetmon_outputs_source_up", source="pg")]
    locker = postgres.connect(db, autocommit=False)
    try:
        locker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
        poll = threading.Thread(target=h.poll)
        poll.start()
        wait_for(lambda: backend_waiting_on_lock(postgres, db, "pg") is not None, "the query to wait")
        postgres.stop("fast")  # every session ends, the exporter's in the middle of its query
        poll.join(10)
        assert not poll.is_alive()
    finally:
        locker.close()
    up.append(h.get("fleetmon_outputs_source_up", source="pg"))
    assert h.get("fleetmon_outputs_sql_read_errors_total", source="pg", reason="connection_lost") == 1
    took = h.poll()  # the server is down: refused at once, not hanging the poll
    up.append(h.get("fleetmon_outputs_source_up", source="pg"))
    assert took < 5
    assert h.get("fleetmon_outputs_sql_read_errors_total", source="pg", reason="connect") == 1
    postgres.start()
    with postgres.connect(db) as w:
        Writer(w).insert(2)
    h.poll()
    up.append(h.get("fleetmon_outputs_source_up", source="pg"))
    assert up == [1, 0, 0, 1]
    assert h.get("fleetmon_outputs_source_errors_total", source="pg") == 2
    assert_counted_once(h, "pg", 5)
    assert table_count(postgres, db) == 5
    # Restarted between two polls: the pooled connection is dead, checked and replaced before the query.
    postgres.stop("fast")
    postgres.start()
    h.poll()
    assert h.get("fleetmon_outputs_source_up", source="pg") == 1
    assert h.get("fleetmon_outputs_source_errors_total", source="pg") == 2
    h.close()


def test_exporter_started_while_the_server_is_down_rebuilds_its_window_once_it_is_back(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
) -> None:
    cfg = make_cfg(tmp_path, [pg_source(postgres.url(db))])
    with postgres.connect(db) as w:
        Writer(w).insert(3)
    h = Harness(cfg)
    h.poll()
    h.close()
    postgres.stop("immediate")  # a crash: committed rows survive it (WAL), as in production
    try:
        h = Harness(cfg)  # restarted while the database is down
        h.poll()
        assert h.get("fleetmon_outputs_source_up", source="pg") == 0
        assert h.get("fleetmon_outputs_sql_read_errors_total", source="pg", reason="connect") == 1
    finally:
        postgres.start()
    with postgres.connect(db) as w:
        Writer(w).insert(2)
    h.poll()  # the first successful read is the whole query: the window is rebuilt, the new rows counted
    assert h.get("fleetmon_outputs_source_up", source="pg") == 1
    assert_counted_once(h, "pg", 5)  # 3 before the restart (kept in the state file), 2 new
    assert h.get("fleetmon_outputs_rows_retained", kind="predictions") == 5 == table_count(postgres, db)
    h.close()


# ------------------------------------------------------------------------------- statement timeout
def test_slow_query_is_cancelled_by_the_server_and_the_other_sources_are_read(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
) -> None:
    url = postgres.url(db)
    with postgres.connect(db) as conn:
        Writer(conn).insert(2)
        conn.execute("INSERT INTO actuals VALUES ('c1', 'b1', 'electricity', now() - interval '1 hour', 5.0)")
    made = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    rec = {**MODEL, "made_at": made.isoformat(), "target_time": (made + dt.timedelta(hours=3)).isoformat()}
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "p.jsonl").write_text(json.dumps({**rec, "prediction": 1.0}) + "\n")
    cfg = make_cfg(
        tmp_path,
        [
            {**pg_source(url, "slow"), "query": SLOW, "statement_timeout_seconds": 0.5},
            {
                **pg_source(url, "fast-act"),
                "query": "SELECT * FROM actuals",
                "kind": "actuals",
                "time_column": "target_time",
            },
        ],
        predictions=[{"glob": str(tmp_path / "pred" / "*.jsonl"), "name": "files"}],
    )
    h = Harness(cfg)
    took = h.poll()
    assert took < 5, f"the poll took {took:.1f} s: the slow query was not bounded"
    assert h.get("fleetmon_outputs_source_up", source="slow") == 0
    assert h.get("fleetmon_outputs_sql_read_errors_total", source="slow", reason="timeout") == 1
    assert h.get("fleetmon_outputs_source_errors_total", source="slow") == 1
    assert h.get("fleetmon_outputs_source_up", source="fast-act") == 1
    assert h.get("fleetmon_building_actuals_total", customer="c1", building="b1", energy="electricity") == 1
    assert h.get("fleetmon_outputs_source_up", source="files") == 1
    assert h.predictions() == 1  # the file's row; nothing of the slow source
    # Cancelled by the server, not abandoned by the client: no session is still sleeping.
    with postgres.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(30)%'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row == (0,)
    h.poll()
    assert h.get("fleetmon_outputs_sql_read_errors_total", source="slow", reason="timeout") == 2
    assert h.get("fleetmon_outputs_source_up", source="fast-act") == 1
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (scripts/install-system-deps.sh)"
    res = subprocess.run(
        [promtool, "check", "metrics"], input=h.text(), capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stdout + res.stderr
    h.close()


def test_sqlite_query_is_interrupted_at_the_timeout(tmp_path: Path) -> None:
    """The fallback for SQLite: a progress handler ends the query (here a CTE that never ends)."""
    sqlite3.connect(tmp_path / "o.db").close()
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x AS made_at FROM c WHERE x < 0"
    h = Harness(
        make_cfg(
            tmp_path,
            [
                {
                    "name": "lite",
                    "url": f"sqlite:///{tmp_path / 'o.db'}",
                    "query": endless,
                    "statement_timeout_seconds": 0.3,
                }
            ],
        )
    )
    took = h.poll()
    assert took < 3
    assert h.get("fleetmon_outputs_source_up", source="lite") == 0
    assert h.get("fleetmon_outputs_sql_read_errors_total", source="lite", reason="timeout") == 1
    h.close()


# -------------------------------------------------------------------------------------- secrets
def test_the_url_password_appears_in_no_metric_log_or_file(
    tmp_path: Path,
    postgres: PostgresServer,  # noqa: F811
    db: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    wrong = f"wr0ng-{uuid.uuid4().hex}"
    postgres.create_role("alice", secret, db)
    with postgres.connect(db) as conn:
        Writer(conn).insert(2)
        conn.execute("GRANT SELECT ON predictions TO alice")

    def url(password: str, driver: str = "psycopg", port: int = postgres.port) -> str:
        return f"postgresql+{driver}://alice:{password}@{postgres.host}:{port}/{db}"

    cfg = make_cfg(
        tmp_path,
        [
            pg_source(url(secret), "ok"),
            pg_source(url(wrong), "wrong-password"),
            {**pg_source(url(secret), "bad-query"), "query": "SELECT * FROM no_such_table"},
            {**pg_source(url(secret), "timeout"), "query": SLOW, "statement_timeout_seconds": 0.5},
            pg_source(url(secret, port=free_port()), "no-server"),
            pg_source(url(secret, driver="nosuchdriver"), "bad-driver"),
            pg_source(
                f"postgresql+psycopg://alice@{postgres.host}:{postgres.port}/{db}?password={secret}",
                "query-pw",
            ),
        ],
    )
    caplog.set_level(logging.DEBUG)
    h = Harness(cfg)
    h.poll()
    h.poll()
    up = {lab["source"]: v for lab, v in h.samples("fleetmon_outputs_source_up")}
    assert up == {
        "ok": 1,
        "wrong-password": 0,
        "bad-query": 0,
        "timeout": 0,
        "no-server": 0,
        "bad-driver": 0,
        "query-pw": 1,
    }
    reasons = {
        (lab["source"], lab["reason"]) for lab, v in h.samples("fleetmon_outputs_sql_read_errors_total") if v
    }
    assert reasons == {
        ("wrong-password", "connect"),
        ("bad-query", "query"),
        ("timeout", "timeout"),
        ("no-server", "connect"),
        ("bad-driver", "connect"),
    }
    assert h.get("fleetmon_outputs_rows_read_total", source="ok") == 2  # the password does work
    h.close()
    text = h.text()
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "password authentication failed" in logs and "alice:***@" in logs  # the errors are there...
    files = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]  # state, quarantine
    for where, content in [
        ("metrics", text),
        ("logs", logs),
        *((f"file {i}", c) for i, c in enumerate(files)),
    ]:
        assert secret not in content, f"the password leaked into {where}"  # ... the password is not
        assert wrong not in content, f"the wrong password leaked into {where}"


def test_error_messages_are_redacted_in_every_form_the_password_takes() -> None:
    """Defence in depth (no driver message above contains the password): as given, decoded, encoded."""
    url = "postgresql+psycopg://alice:p%40ss%2Fw0rd@db.example/outputs?password=other-s3cret"
    secrets = _url_secrets(url)
    msg = _redact("a p%40ss%2Fw0rd b p@ss/w0rd c other-s3cret d", secrets)
    assert msg == "a *** b *** c *** d"
    assert safe_url(url) == "postgresql+psycopg://alice:***@db.example/outputs?password=%2A%2A%2A"


# ------------------------------------------------------------------------------------------ config
def test_sql_source_options_are_validated() -> None:
    src = {"url": "sqlite://", "query": "SELECT 1"}
    cfg = Config.model_validate({"fleet": FLEET, "outputs": {"sql": [src]}})
    s = cfg.outputs.sql[0]
    assert (s.overlap_seconds, s.statement_timeout_seconds, s.key_columns) == (300, 30, [])
    for bad in (
        {"key_columns": ["id; DROP TABLE x"]},
        {"overlap_seconds": -1},
        {"statement_timeout_seconds": 0},
    ):
        with pytest.raises(ValidationError):
            Config.model_validate({"fleet": FLEET, "outputs": {"sql": [{**src, **bad}]}})
