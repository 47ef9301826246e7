"""The Log Analytics source end to end: the real LogsQueryClient and azure-identity credentials over real TLS
sockets, against a local fake of Azure (tests/fakes/log_analytics.py), counted through LogsCollector and read
back from the exporter's metrics."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from collectors.logs import LogsCollector
from fleetmon.config import ConfigError, load_config
from fleetmon.exporter import Exporter
from fleetmon.procs import free_port, wait_for_http
from tests.fakes.log_analytics import TABLES, TENANT, FakeAzure, Fault, console_row, system_row

ROOT = Path(__file__).resolve().parent.parent
US = 1_000_000
ACCESS = '10.0.0.7 - - [22/Nov/2026:10:00:00 +0000] "GET /api/v1/buildings/c01-b003/forecast HTTP/1.1" {} 512 "-" "python-requests/2.32"'
FAILED = "2026-11-22 10:00:00,123 ERROR [worker] Failed to process message 17: ValueError: bad input"
PROBE = "Readiness probe failed: HTTP probe failed with statuscode: 503"
ROUTE = {"app": "gateway", "method": "GET", "route": "/api/v1/buildings/{id}/forecast"}
APPS: dict[str, Any] = {"gateway": [], "model-serving": None, "training-processor": []}  # Azure only


class Clock:
    """The source's wall clock, moved by the test (the fake decides what is ingested when)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    fake = FakeAzure(tmp_path / "azure")
    # what a Container Apps container sees, and the fake's CA for azure-core's requests transport
    monkeypatch.setenv("IDENTITY_ENDPOINT", fake.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", fake.identity_header)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_AUTHORITY_HOST",
        "MSI_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)
    yield fake
    fake.close()


def write_config(tmp_path: Path, fake: FakeAzure, destination: str = "log-analytics", **la: Any) -> Path:
    cfg = {
        "platform": {
            "logs": {
                "apps": APPS,
                "state_file": "state/logs-positions.json",
                "quarantine_file": "quarantine/logs.jsonl",
                "log_analytics": {
                    "workspace_id": TENANT,
                    "logs_destination": destination,
                    "endpoint": fake.url,
                    "query_interval_seconds": 60,
                    "overlap_seconds": 300,
                    "checkpoint_file": "state/log-analytics.json",
                    **la,
                },
            }
        }
    }
    path = tmp_path / "fleetmon.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Platform:
    """LogsCollector inside the exporter framework, as `fleetmon exporter platform` runs it."""

    def __init__(self, config: Path, clock: Clock) -> None:
        self.coll = LogsCollector(load_config(config, environ={}))
        assert self.coll.log_analytics is not None
        self.coll.log_analytics.clock = clock
        self.exp = Exporter("platform", {"logs": self.coll})

    def poll(self) -> None:
        assert self.exp.poll_once("logs")

    def value(self, name: str, **labels: str) -> float | None:
        return self.exp.scraped.get_sample_value(name, labels)

    def close(self) -> None:
        self.exp.stop()


def us(t: float) -> int:
    return int(t * US)


def t0() -> float:
    return float(int(time.time()))


@pytest.mark.parametrize(
    ("destination", "item_ids"),
    [("log-analytics", True), ("azure-monitor", True), ("azure-monitor", False)],
    ids=["log-analytics", "azure-monitor", "azure-monitor-no-item-id"],
)
def test_rows_of_both_table_flavours_are_counted_incrementally(
    tmp_path: Path, azure: FakeAzure, destination: str, item_ids: bool
) -> None:
    """Without _ItemId, rows are recognised by their content (every column, TimeGenerated included)."""
    azure.item_ids = item_ids
    console, system = TABLES[destination]
    start = t0()
    clock = Clock(start)
    azure.ingest(
        console,
        console_row(destination, "gateway", ACCESS.format(503), us(start - 100)),
        console_row(destination, "gateway", ACCESS.format(200), us(start - 90)),
        console_row(destination, "training-processor", FAILED, us(start - 80), stream="stderr"),
        console_row(destination, "training-processor", "Received message 18 for c01-b003", us(start - 70)),
    )
    azure.ingest(
        system, system_row(destination, "model-serving", "ReplicaUnhealthy", PROBE, us(start - 60), "Warning")
    )
    p = Platform(write_config(tmp_path, azure, destination), clock)
    try:
        p.poll()
        assert p.value("fleetmon_log_analytics_up") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="200") == 1
        assert p.value("fleetmon_app_errors_total", app="training-processor", error_type="ValueError") == 1
        assert p.value("fleetmon_training_events_total", app="training-processor", kind="failed") == 1
        assert p.value("fleetmon_training_events_total", app="training-processor", kind="received") == 1
        ev = {"app": "model-serving", "reason": "ReplicaUnhealthy", "event_type": "Warning"}
        assert p.value("fleetmon_platform_events_total", **ev) == 1
        assert p.value("fleetmon_logs_lines_total", app="gateway", format="azure_console") == 2
        assert p.value("fleetmon_logs_lines_total", app="model-serving", format="azure_system") == 1
        assert p.value("fleetmon_log_analytics_rows_read_total", table=console) == 4
        assert p.value("fleetmon_log_analytics_rows_read_total", table=system) == 1
        assert p.value("fleetmon_log_analytics_watermark_timestamp_seconds", table=console) == start
        assert p.value("fleetmon_log_analytics_last_success_timestamp_seconds") == start
        # the first read covers the last overlap_seconds
        assert f"TimeGenerated >= datetime({_iso(start - 300)})" in azure.queries[0]["query"]

        azure.ingest(console, console_row(destination, "gateway", ACCESS.format(503), us(start + 10)))
        clock.t = start + 30  # not due yet: no query
        n = azure.query_count()
        p.poll()
        assert azure.query_count() == n
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 1

        clock.t = start + 61
        p.poll()
        assert azure.query_count() == n + 2  # one query per table
        assert (
            f"TimeGenerated >= datetime({_iso(start - 300)})" in azure.queries[n]["query"]
        )  # watermark - overlap
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 2
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="200") == 1
        assert p.value("fleetmon_app_errors_total", app="training-processor", error_type="ValueError") == 1
        assert p.value("fleetmon_platform_events_total", **ev) == 1
        # the overlap read the four old rows again: dropped as duplicates
        assert p.value("fleetmon_log_analytics_rows_read_total", table=console) == 9
        assert p.value("fleetmon_log_analytics_duplicate_rows_total", table=console) == 4
        assert p.value("fleetmon_log_analytics_duplicate_rows_total", table=system) == 1
        assert p.value("fleetmon_log_analytics_watermark_timestamp_seconds", table=console) == start + 61
    finally:
        p.close()


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_late_rows_inside_the_overlap_are_counted_once_later_ones_never(
    tmp_path: Path, azure: FakeAzure
) -> None:
    console = "ContainerAppConsoleLogs_CL"
    start = t0()
    clock = Clock(start)
    p = Platform(write_config(tmp_path, azure), clock)
    try:
        p.poll()  # watermark: start
        # TimeGenerated 2 minutes before the watermark, queryable only now (170 s after it was generated)
        azure.ingest(
            console,
            console_row("log-analytics", "gateway", ACCESS.format(502), us(start - 120)),
            ingested=us(start + 50),
        )
        clock.t = start + 60
        p.poll()
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="502") == 1
        assert p.value("fleetmon_log_analytics_late_rows_total", table=console) == 1
        assert p.value("fleetmon_log_analytics_max_ingestion_delay_seconds", table=console) == 170
        clock.t = start + 120
        p.poll()  # read again inside the overlap: a duplicate, not a second request
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="502") == 1
        assert p.value("fleetmon_log_analytics_duplicate_rows_total", table=console) == 1
        # Later than the overlap: this read starts at start + 120 - 300; a row generated before is never
        # read (docs/formats.md: the limit is overlap_seconds; the delay gauge shows how close rows come).
        azure.ingest(
            console,
            console_row("log-analytics", "gateway", ACCESS.format(504), us(start - 200)),
            ingested=us(start + 170),
        )
        clock.t = start + 180
        p.poll()
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="504") is None
        assert p.value("fleetmon_log_analytics_late_rows_total", table=console) == 1
    finally:
        p.close()


def test_a_window_larger_than_one_query_is_paged(tmp_path: Path, azure: FakeAzure) -> None:
    console = "ContainerAppConsoleLogs_CL"
    start = t0()
    rows = [
        console_row("log-analytics", "gateway", ACCESS.format(500), us(start - 200 + i)) for i in range(8)
    ]
    # five rows at one instant (more than a page), then two more
    rows += [console_row("log-analytics", "gateway", ACCESS.format(501), us(start - 100)) for _ in range(5)]
    rows += [
        console_row("log-analytics", "gateway", ACCESS.format(501), us(start - 99 + i)) for i in range(2)
    ]
    azure.ingest(console, *rows)
    clock = Clock(start)
    p = Platform(write_config(tmp_path, azure, max_rows_per_query=3, max_queries_per_poll=3), clock)
    try:
        p.poll()  # three pages: not all of it
        first = p.value("fleetmon_http_requests_total", **ROUTE, status="500")
        assert first is not None and 0 < first < 8
        mark = p.value("fleetmon_log_analytics_watermark_timestamp_seconds", table=console)
        assert mark is not None and start - 200 < mark < start - 100  # where the next poll continues
        for i in range(1, 5):
            clock.t = start + 60 * i
            p.poll()
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="500") == 8
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="501") == 7
        assert p.value("fleetmon_log_analytics_watermark_timestamp_seconds", table=console) == start + 240
        limited = [q["query"] for q in azure.queries if q["query"].startswith(console)]
        assert all("| top 3 by TimeGenerated asc" in q or "| sort by TimeGenerated asc" in q for q in limited)
        assert any("| sort by" in q for q in limited)  # the instant that fills a page was read whole
    finally:
        p.close()


def test_restart_continues_from_the_checkpoint_without_recount_or_skip(
    tmp_path: Path, azure: FakeAzure
) -> None:
    console, system = TABLES["log-analytics"]
    start = t0()
    clock = Clock(start)
    config = write_config(tmp_path, azure)
    azure.ingest(
        console,
        *(console_row("log-analytics", "gateway", ACCESS.format(503), us(start - 50 + i)) for i in range(3)),
    )
    p = Platform(config, clock)
    p.poll()
    assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 3
    p.close()

    # restarted: the counters continue, the overlap's rows are known
    azure.ingest(console, console_row("log-analytics", "gateway", ACCESS.format(503), us(start + 20)))
    clock.t = start + 60
    p = Platform(config, clock)
    assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 3
    assert p.value("fleetmon_log_analytics_rows_read_total", table=console) == 3  # persisted
    p.poll()
    assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 4
    assert p.value("fleetmon_log_analytics_duplicate_rows_total", table=console) == 3
    p.close()

    # A crash after the checkpoint was written but before the counters were: the state file on disk is the
    # one from before the last poll. The rows of that poll are read again, not lost and not counted twice.
    state = tmp_path / "state" / "logs-positions.json"
    before = state.read_bytes()
    azure.ingest(console, console_row("log-analytics", "gateway", ACCESS.format(503), us(start + 80)))
    azure.ingest(
        system,
        system_row("log-analytics", "model-serving", "ReplicaUnhealthy", PROBE, us(start + 85), "Warning"),
    )
    clock.t = start + 120
    p = Platform(config, clock)
    p.poll()
    assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 5
    state.write_bytes(before)  # ... and the process died: no clean shutdown
    p = Platform(config, clock)
    assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 4
    clock.t = start + 180
    p.poll()
    assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 5
    ev = {"app": "model-serving", "reason": "ReplicaUnhealthy", "event_type": "Warning"}
    assert p.value("fleetmon_platform_events_total", **ev) == 1
    p.close()


def test_a_corrupt_checkpoint_is_kept_aside_and_reading_restarts_now(
    tmp_path: Path, azure: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    console = "ContainerAppConsoleLogs_CL"
    start = t0()
    config = write_config(tmp_path, azure)
    ckpt = tmp_path / "state" / "log-analytics.json"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text('{"version": 1, "tables": [trunc')
    azure.ingest(console, console_row("log-analytics", "gateway", ACCESS.format(503), us(start - 30)))
    clock = Clock(start)
    with caplog.at_level(logging.ERROR, logger="collectors.log_analytics"):
        p = Platform(config, clock)
    try:
        assert "checkpoint" in caplog.text and "unusable" in caplog.text
        assert (tmp_path / "state" / "log-analytics.json.corrupt").exists()
        assert p.value("fleetmon_log_analytics_checkpoint_errors_total", kind="corrupt") == 1
        clock.t = start + 5
        p.poll()  # what may have been counted before is not read again
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") is None
        assert p.value("fleetmon_log_analytics_up") == 1
        azure.ingest(console, console_row("log-analytics", "gateway", ACCESS.format(503), us(start + 30)))
        clock.t = start + 70
        p.poll()
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 1
        assert json.loads(ckpt.read_text())["version"] == 1  # a good checkpoint again
    finally:
        p.close()


def test_throttling_honours_retry_after(tmp_path: Path, azure: FakeAzure) -> None:
    start = t0()
    clock = Clock(start)
    azure.ingest(
        "ContainerAppConsoleLogs_CL",
        console_row("log-analytics", "gateway", ACCESS.format(503), us(start - 10)),
    )
    azure.fail_next(
        Fault(
            429,
            {"Retry-After": "150"},
            {"error": {"code": "ThrottledError", "message": "Too many requests. Retry after 150 seconds."}},
        )
    )
    p = Platform(write_config(tmp_path, azure), clock)
    try:
        p.poll()
        assert p.value("fleetmon_log_analytics_up") == 0
        assert p.value("fleetmon_log_analytics_throttled_responses_total") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") is None
        n = azure.query_count()
        clock.t = start + 61  # the query interval has passed, Retry-After has not
        p.poll()
        assert azure.query_count() == n
        clock.t = start + 151
        p.poll()
        assert azure.query_count() > n
        assert p.value("fleetmon_log_analytics_up") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 1
        assert p.value("fleetmon_log_analytics_throttled_responses_total") == 1
    finally:
        p.close()


def test_a_partial_result_is_counted_and_the_rest_read(tmp_path: Path, azure: FakeAzure) -> None:
    console = "ContainerAppConsoleLogs_CL"
    start = t0()
    azure.ingest(
        console,
        *(console_row("log-analytics", "gateway", ACCESS.format(500), us(start - 60 + i)) for i in range(6)),
    )
    azure.fail_next(Fault(partial_rows=2))
    p = Platform(write_config(tmp_path, azure), Clock(start))
    try:
        p.poll()
        assert p.value("fleetmon_log_analytics_partial_results_total", table=console) == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="500") == 6
        assert p.value("fleetmon_log_analytics_duplicate_rows_total", table=console) == 2
        assert p.value("fleetmon_log_analytics_up") == 1
    finally:
        p.close()


def test_server_errors_and_timeouts_set_up_to_0_then_it_recovers(
    tmp_path: Path, azure: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    start = t0()
    clock = Clock(start)
    azure.ingest(
        "ContainerAppConsoleLogs_CL",
        console_row("log-analytics", "gateway", ACCESS.format(503), us(start - 10)),
    )
    unavailable = Fault(503, {}, {"error": {"code": "ServiceUnavailableError", "message": "try later"}})
    azure.fail_next(unavailable, unavailable)
    p = Platform(write_config(tmp_path, azure, timeout_seconds=1), clock)
    try:
        with caplog.at_level(logging.INFO, logger="collectors.log_analytics"):
            p.poll()
            assert p.value("fleetmon_log_analytics_up") == 0
            assert p.value("fleetmon_log_analytics_query_errors_total", reason="server_error") == 1
            clock.t = start + 60
            p.poll()
            assert p.value("fleetmon_log_analytics_query_errors_total", reason="server_error") == 2
            clock.t = start + 100  # the second failure doubled the wait: not yet
            n = azure.query_count()
            p.poll()
            assert azure.query_count() == n
            clock.t = start + 180
            p.poll()
        assert p.value("fleetmon_log_analytics_up") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 1
        ours = [r for r in caplog.records if r.name == "collectors.log_analytics"]
        failures = [r for r in ours if r.levelno == logging.ERROR]
        assert len(failures) == 1 and "server_error" in failures[0].getMessage()  # once per cause
        assert any("answers again" in r.getMessage() for r in ours)

        azure.fail_next(Fault(delay=4))  # slower than timeout_seconds
        clock.t = start + 240
        p.poll()
        assert p.value("fleetmon_log_analytics_up") == 0
        assert p.value("fleetmon_log_analytics_query_errors_total", reason="timeout") == 1
        azure.ingest(
            "ContainerAppConsoleLogs_CL",
            console_row("log-analytics", "gateway", ACCESS.format(503), us(start + 250)),
        )
        clock.t = start + 300
        p.poll()
        assert p.value("fleetmon_log_analytics_up") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 2
    finally:
        p.close()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Fault(403, {}, {"error": {"code": "InsufficientAccessError", "message": "no access"}}), "forbidden"),
        (Fault(500, {}, {"error": {"code": "InternalServerError", "message": "boom"}}), "server_error"),
        (
            Fault(404, {}, {"error": {"code": "WorkspaceNotFoundError", "message": "no such workspace"}}),
            "not_found",
        ),
    ],
)
def test_failures_are_counted_by_reason(tmp_path: Path, azure: FakeAzure, fault: Fault, reason: str) -> None:
    azure.fail_next(fault)
    p = Platform(write_config(tmp_path, azure), Clock(t0()))
    try:
        p.poll()  # never raises: the poll of the file tailer goes on
        assert p.value("fleetmon_log_analytics_up") == 0
        assert p.value("fleetmon_log_analytics_query_errors_total", reason=reason) == 1
        assert p.value("fleetmon_scrape_collector_success", collector="logs") == 1
        assert p.value("fleetmon_poll_success", collector="logs") == 1
    finally:
        p.close()


def test_a_table_missing_from_the_workspace_is_named(
    tmp_path: Path, azure: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    p = Platform(write_config(tmp_path, azure, system_table="ContainerAppSystemLogz_CL"), Clock(t0()))
    try:
        with caplog.at_level(logging.ERROR, logger="collectors.log_analytics"):
            p.poll()
        assert p.value("fleetmon_log_analytics_query_errors_total", reason="table_not_found") == 1
        assert "table_not_found" in caplog.text
    finally:
        p.close()


def test_unknown_apps_and_malformed_rows_are_counted_and_quarantined(
    tmp_path: Path, azure: FakeAzure
) -> None:
    console, system = TABLES["log-analytics"]
    start = t0()
    azure.ingest(
        console,
        console_row("log-analytics", "billing", ACCESS.format(500), us(start - 30)),  # not a configured app
        console_row("log-analytics", "gateway", None, us(start - 20)),  # Log_s null: not a usable record
        console_row("log-analytics", "gateway", ACCESS.format(200), us(start - 10)),
        # a Container Apps job's row: its name is in the job column
        console_row("log-analytics", "training-processor", "Received message 7", us(start - 5), job=True),
    )
    azure.ingest(
        system, system_row("log-analytics", "billing", "ReplicaUnhealthy", PROBE, us(start - 15), "Warning")
    )
    p = Platform(write_config(tmp_path, azure), Clock(start))
    try:
        p.poll()
        assert p.value("fleetmon_log_analytics_rows_rejected_total", table=console, reason="unknown_app") == 1
        assert p.value("fleetmon_log_analytics_rows_rejected_total", table=system, reason="unknown_app") == 1
        assert (
            p.value("fleetmon_log_analytics_rows_rejected_total", table=console, reason="invalid_record") == 1
        )
        # a configured app's bad row also counts where its file lines would
        assert p.value("fleetmon_logs_rejected_lines_total", app="gateway", reason="invalid_record") == 1
        assert p.value("fleetmon_logs_quarantined_lines_total", app="gateway", reason="invalid_record") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="200") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="500") is None
        assert p.value("fleetmon_training_events_total", app="training-processor", kind="received") == 1
        assert (
            p.value(
                "fleetmon_platform_events_total",
                app="model-serving",
                reason="ReplicaUnhealthy",
                event_type="Warning",
            )
            is None
        )
        quarantined = [
            json.loads(line) for line in (tmp_path / "quarantine" / "logs.jsonl").read_text().splitlines()
        ]
        by_reason = {(q["reason"], q["file"]) for q in quarantined}
        assert ("unknown_app", f"log-analytics:{console}") in by_reason
        assert ("unknown_app", f"log-analytics:{system}") in by_reason
        assert ("invalid_record", f"log-analytics:{console}") in by_reason
        sample = next(q for q in quarantined if q["reason"] == "invalid_record")
        record = json.loads(sample["line"])  # the row as a record: every column, times in ISO 8601
        assert record["ContainerAppName_s"] == "gateway" and record["Log_s"] is None
        assert record["TimeGenerated"] == _iso(start - 20)
        assert "fleetmon_ingestion_time" not in record
    finally:
        p.close()


def test_credentials_never_appear_in_logs_metrics_or_files(
    tmp_path: Path, azure: FakeAzure, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = t0()
    azure.ingest(
        "ContainerAppConsoleLogs_CL",
        console_row("log-analytics", "gateway", ACCESS.format(503), us(start - 10)),
    )
    caplog.set_level(logging.DEBUG)  # everything: azure-core's HTTP logging, MSAL, fleetmon
    config = write_config(tmp_path, azure)
    p = Platform(config, Clock(start))
    try:
        p.poll()
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 1
        exposition = p.exp.exposition().decode()
    finally:
        p.close()
    # a refused identity header: the failure is logged, the header is not
    monkeypatch.setenv("IDENTITY_HEADER", "wrong-" + azure.identity_header)
    p = Platform(config, Clock(start + 60))
    try:
        p.poll()
        assert p.value("fleetmon_log_analytics_query_errors_total", reason="auth") == 1
        exposition += p.exp.exposition().decode()
    finally:
        p.close()
    assert "query failed (auth" in caplog.text
    assert azure.tokens, "tokens were issued"
    secrets = [azure.identity_header, *azure.tokens]
    files = "".join(
        f.read_text(errors="replace")
        for f in tmp_path.rglob("*")
        if f.is_file() and f.suffix != ".pem" and f.name != "server.key"
    )
    for s in secrets:
        assert s not in caplog.text
        assert s not in exposition
        assert s not in files


def test_a_service_principal_from_the_environment(
    tmp_path: Path, azure: FakeAzure, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    start = t0()
    azure.ingest(
        "ContainerAppConsoleLogs", console_row("azure-monitor", "gateway", ACCESS.format(503), us(start - 10))
    )
    monkeypatch.delenv("IDENTITY_ENDPOINT")
    monkeypatch.delenv("IDENTITY_HEADER")
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    monkeypatch.setenv("AZURE_CLIENT_ID", azure.client_id)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", azure.client_secret)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", f"https://{azure.authority}")
    caplog.set_level(logging.DEBUG)
    config = write_config(
        tmp_path, azure, "azure-monitor", credential="environment", disable_instance_discovery=True
    )
    p = Platform(config, Clock(start))
    try:
        p.poll()
        assert p.value("fleetmon_log_analytics_up") == 1
        assert p.value("fleetmon_http_requests_total", **ROUTE, status="503") == 1
        assert azure.token_requests == ["client_credentials"]
    finally:
        p.close()
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-" + azure.client_secret)
    p = Platform(config, Clock(start + 60))
    try:
        p.poll()
        assert p.value("fleetmon_log_analytics_up") == 0
        assert p.value("fleetmon_log_analytics_query_errors_total", reason="auth") == 1
    finally:
        p.close()
    assert azure.client_secret not in caplog.text
    assert all(t not in caplog.text for t in azure.tokens)


def test_the_platform_exporter_process_reads_the_workspace(tmp_path: Path, azure: FakeAzure) -> None:
    """`fleetmon exporter platform` as deployed in a Container App: managed identity, no log files."""
    now = time.time()
    azure.ingest(
        "ContainerAppConsoleLogs_CL",
        console_row("log-analytics", "gateway", ACCESS.format(503), us(now - 30)),
    )
    azure.ingest(
        "ContainerAppSystemLogs_CL",
        system_row("log-analytics", "model-serving", "ReplicaUnhealthy", PROBE, us(now - 20), "Warning"),
    )
    config = write_config(tmp_path, azure)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FLEETMON__", "AZURE_"))},
        "IDENTITY_ENDPOINT": azure.identity_endpoint,
        "IDENTITY_HEADER": azure.identity_header,
        "REQUESTS_CA_BUNDLE": str(azure.ca),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporters.platform",
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--no-collector.gpu",
            "--no-collector.host",
            "--no-collector.processes",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/-/healthy", timeout=30, proc=proc)  # type: ignore[arg-type]
        text = ""
        for _ in range(100):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            if "fleetmon_log_analytics_up 1.0" in text and "fleetmon_platform_events_total{" in text:
                break
            time.sleep(0.2)
        assert (
            'fleetmon_http_requests_total{app="gateway",method="GET",route="/api/v1/buildings/{id}/forecast",status="503"} 1.0'
            in text
        )
        assert (
            'fleetmon_platform_events_total{app="model-serving",event_type="Warning",reason="ReplicaUnhealthy"} 1.0'
            in text
        )
        assert "fleetmon_log_analytics_up 1.0" in text
        assert azure.identity_header not in text
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run(
                [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
            )
            assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert azure.identity_header.encode() not in out
    assert not any(t.encode() in out for t in azure.tokens)


@pytest.mark.parametrize(
    ("la", "expected"),
    [
        ({"workspace_id": "my-workspace"}, r"log_analytics\.workspace_id: String should match pattern"),
        (
            {"workspace_id": TENANT, "endpoint": "http://api.loganalytics.io"},
            r"log_analytics\.endpoint: .*https://",
        ),
        ({"workspace_id": TENANT, "console_table": "T | take 1"}, r"log_analytics\.console_table"),
        ({"workspace_id": TENANT, "logs_destination": "storage"}, r"log_analytics\.logs_destination"),
        ({"workspace_id": TENANT, "credential": "password"}, r"log_analytics\.credential"),
    ],
)
def test_bad_settings_are_refused_at_start(tmp_path: Path, la: dict[str, Any], expected: str) -> None:
    path = tmp_path / "fleetmon.yml"
    path.write_text(yaml.safe_dump({"platform": {"logs": {"apps": {"gateway": None}, "log_analytics": la}}}))
    with pytest.raises(ConfigError, match=expected):
        load_config(path, environ={})


def test_settings_from_the_environment_and_an_app_without_files(tmp_path: Path) -> None:
    path = tmp_path / "fleetmon.yml"
    path.write_text(yaml.safe_dump({"platform": {"logs": {"apps": {"model-serving": None}}}}))
    cfg = load_config(path, environ={"FLEETMON__PLATFORM__LOGS__LOG_ANALYTICS__WORKSPACE_ID": TENANT})
    la = cfg.platform.logs.log_analytics
    assert la.workspace_id == TENANT
    assert la.tables() == {"console": "ContainerAppConsoleLogs_CL", "system": "ContainerAppSystemLogs_CL"}
    assert la.checkpoint_file == (tmp_path / "var" / "state" / "log-analytics.json").resolve()
    assert cfg.platform.logs.apps == {"model-serving": []}
    assert LogsCollector(cfg).log_analytics is not None
    off = load_config(path, environ={})
    assert LogsCollector(off).log_analytics is None  # no workspace id: not read
