"""Application lines as servers and frameworks really write them (fixtures in tests/fixtures/logs/servers and
tests/fixtures/logs/apps, each written from its producer's documentation or source: see the README.md there):
what each counts, exactly -- requests by method, route and status, latency histogram buckets, errors by type,
training events, rejected lines -- inside the wrappers (Docker json-file, CRI) and bare."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collectors.applines import MAX_CONTEXT, LineClassifier, clf_time, record_time
from collectors.logformats import LineParser
from collectors.logs import families
from collectors.logstats import LATENCY_BUCKETS, AppStats, PartialState

FIX = Path(__file__).parent / "fixtures" / "logs"
APPS = ["gateway", "api", "model-serving", "training-processor"]
T0 = clf_time("22/Nov/2026:10:00:00 +0000")
assert T0 is not None
FORECAST = "/api/v1/buildings/{id}/forecast"
PREDICT = "/v1/models/{id}/heating/forecast:predict"


# ----------------------------------------------------------------------------------------- helpers
def lines(rel: str) -> list[str]:
    return (FIX / rel).read_text(encoding="utf-8").splitlines()


def docker(line: str, stream: str = "stdout") -> bytes:
    rec = {"log": line + "\n", "stream": stream, "time": "2026-11-22T10:00:00.123456789Z"}
    return json.dumps(rec).encode()


def cri(line: str, stream: str = "stdout") -> bytes:
    return f"2026-11-22T10:00:00.123456789Z {stream} F {line}".encode()


def bare(line: str, stream: str = "stdout") -> bytes:
    return line.encode()


WRAPPERS: dict[str, Callable[..., bytes]] = {"docker": docker, "cri": cri, "bare": bare}


def run(
    files: Iterable[tuple[str, str]], wrap: Callable[..., bytes] = docker, app: str = "api"
) -> tuple[AppStats, list[str | None]]:
    """Feed fixture files (path, stream) through the line parser as one followed file, then close it."""
    p = LineParser(APPS)
    st, ps = p.stats[app], PartialState()
    reasons = []
    for rel, stream in files:
        reasons += [p.feed(st, wrap(line, stream), ps) for line in lines(rel)]
    p.classifier.flush(st, ps)  # the file is closed: a trace still open is counted
    return st, reasons


def buckets(*values: float) -> list[int]:
    """Non-cumulative counts per LATENCY_BUCKETS bucket (the last: +Inf), as AppStats keeps them."""
    out = [0] * (len(LATENCY_BUCKETS) + 1)
    for v in values:
        out[next((i for i, b in enumerate(LATENCY_BUCKETS) if v <= b), len(LATENCY_BUCKETS))] += 1
    return out


def latency(st: AppStats) -> dict[tuple[str, str], tuple[list[int], float]]:
    return {k: (v, round(st.latency_sum[k], 6)) for k, v in st.latency.items()}


# ------------------------------------------------------------------------------------------ servers
@pytest.mark.parametrize("wrapper", ["docker", "cri", "bare"])
def test_nginx_combined(wrapper: str) -> None:
    st, reasons = run([("servers/nginx_combined.log", "stdout")], WRAPPERS[wrapper], "gateway")
    assert reasons == [None] * 8
    assert st.requests == {
        ("GET", FORECAST, "200"): 1,
        ("POST", "/api/v1/runs/{num}/metrics", "201"): 1,
        ("GET", "/health", "200"): 1,
        ("GET", "/api/v1/models/{uuid}/versions/{num}", "404"): 1,
        ("OTHER", "other", "400"): 1,  # a TLS handshake sent to the plain port: nginx logs it escaped
        ("GET", "/static/{id}", "304"): 1,
        ("GET", FORECAST, "502"): 1,
        ("OTHER", "/", "405"): 1,  # PROPFIND: methods are a fixed set
    }
    assert st.last_error == {
        ("GET", "/api/v1/models/{uuid}/versions/{num}", "404"): T0 + 3,
        ("OTHER", "other", "400"): T0 + 4,  # 11:00:04 +0100
        ("GET", FORECAST, "502"): T0 + 6,
        ("OTHER", "/", "405"): T0 + 7,
    }
    assert st.latency == {}  # combined carries no duration
    assert st.lines == {"access": 8} if wrapper == "bare" else {wrapper: 8}


@pytest.mark.parametrize("wrapper", ["docker", "bare"])
def test_nginx_with_request_time_appended(wrapper: str) -> None:
    st, reasons = run([("servers/nginx_timed.log", "stdout")], WRAPPERS[wrapper], "gateway")
    assert reasons == [None] * 8
    assert st.requests == {
        ("GET", FORECAST, "200"): 4,
        ("GET", "/health", "200"): 1,
        ("POST", "/api/v1/jobs", "202"): 2,
        ("GET", "/api/v1/buildings/{id}/anomalies", "504"): 1,
    }
    assert latency(st) == {
        ("GET", FORECAST): (buckets(0.004, 0.012, 0.251, 0.050), 0.317),
        ("GET", "/health"): (buckets(0.0), 0.0),
        ("POST", "/api/v1/jobs"): (buckets(1.0, 12.5), 13.5),
        ("GET", "/api/v1/buildings/{id}/anomalies"): (buckets(60.001), 60.001),
    }
    # bounds are inclusive (le): 0.050 is in le="0.05", 1.000 in le="1"
    assert st.latency[("GET", FORECAST)][3] == 1 and st.latency[("POST", "/api/v1/jobs")][7] == 1


@pytest.mark.parametrize("wrapper", ["docker", "bare"])
def test_nginx_escape_json(wrapper: str) -> None:
    st, reasons = run([("servers/nginx_json.log", "stdout")], WRAPPERS[wrapper], "gateway")
    assert reasons == [None] * 5
    assert st.requests == {
        ("GET", FORECAST, "200"): 1,
        ("POST", PREDICT, "200"): 1,
        ("GET", "/favicon.ico", "404"): 1,
        ("OTHER", "other", "400"): 1,
        ("GET", FORECAST, "504"): 1,
    }
    # $request_time wins over $upstream_response_time (the whole request, as the client saw it)
    assert latency(st) == {
        ("GET", FORECAST): (buckets(0.013, 60.002), 60.015),
        ("POST", PREDICT): (buckets(0.031), 0.031),
        ("GET", "/favicon.ico"): (buckets(0.0), 0.0),
        ("OTHER", "other"): (buckets(0.001), 0.001),
    }
    assert st.last_error == {
        ("GET", "/favicon.ico", "404"): T0 + 2,
        ("OTHER", "other", "400"): T0 + 3,  # 11:00:03+01:00
        ("GET", FORECAST, "504"): T0 + 4,
    }
    assert st.errors == {}
    assert st.lines == ({"json": 5} if wrapper == "bare" else {"docker": 5})


def test_nginx_json_with_other_variable_names() -> None:
    st, reasons = run([("servers/nginx_json_fields.log", "stdout")], docker, "gateway")
    assert reasons == [None] * 3
    assert st.requests == {
        ("GET", "/api/v1/customers/{id}/buildings", "200"): 2,
        ("DELETE", "/api/v1/jobs/{hash}", "503"): 1,
    }
    # several upstreams tried: their times add up ("0.010 : 0.002"); "-" (none contacted) is no duration
    assert latency(st) == {("GET", "/api/v1/customers/{id}/buildings"): (buckets(0.008, 0.012), 0.02)}
    assert st.last_error == {("DELETE", "/api/v1/jobs/{hash}", "503"): T0 + 2}


@pytest.mark.parametrize(
    ("fixture", "durations"),
    [
        ("servers/gunicorn_default.log", None),
        ("servers/gunicorn_L.log", (0.007312, 0.18322, 2.5)),  # %(L)s: decimal seconds
        ("servers/gunicorn_D.log", (0.007312, 0.18322, 2.5)),  # %(D)s: integer microseconds
    ],
)
def test_gunicorn_access_formats(fixture: str, durations: tuple[float, ...] | None) -> None:
    st, reasons = run([(fixture, "stdout")], docker, "api")
    assert set(reasons) == {None}
    expected = {
        ("GET", "/api/v1/customers/{id}/buildings", "200"): 1,
        ("GET", FORECAST, "200"): 1,  # the user agent holds gunicorn's escaped quotes: \"probe\"
        ("POST", "/api/v1/jobs", "500"): 1,
    }
    if durations is None:
        expected[("HEAD", "/health", "200")] = 1
    assert st.requests == expected
    assert st.last_error == {("POST", "/api/v1/jobs", "500"): T0 + 2}
    if durations is None:
        assert st.latency == {}
    else:
        a, b, c = durations
        assert latency(st) == {
            ("GET", "/api/v1/customers/{id}/buildings"): (buckets(a), a),
            ("GET", FORECAST): (buckets(b), b),
            ("POST", "/api/v1/jobs"): (buckets(c), c),
        }


def test_uvicorn_access_and_error_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("collectors.applines.time.time", lambda: 1_800_000_000.0)
    st, reasons = run([("servers/uvicorn.stdout.log", "stdout"), ("servers/uvicorn.stderr.log", "stderr")])
    assert set(reasons) == {None}
    assert st.requests == {
        ("GET", FORECAST, "200"): 1,
        ("POST", PREDICT, "422"): 1,
        ("GET", "/health", "200"): 2,  # an IPv6 client, and none at all (no scope["client"])
        ("POST", "/v1/models/{id}/heating/forecast:predict", "500"): 1,
    }
    # uvicorn's lines have no time of their own: an error response's time is when it was read
    assert st.last_error == {("POST", PREDICT, "422"): 1.8e9, ("POST", PREDICT, "500"): 1.8e9}
    # "ERROR: Exception in ASGI application" and its traceback: one error, typed by the exception
    assert st.errors == {"KeyError": 1}
    assert st.latency == {}


@pytest.mark.parametrize("wrapper", ["docker", "bare"])
def test_uvicorn_with_a_tty_is_coloured(wrapper: str) -> None:
    st, reasons = run([("servers/uvicorn_tty.log", "stdout")], WRAPPERS[wrapper])
    assert set(reasons) == {None}
    assert st.requests == {
        ("GET", FORECAST, "200"): 1,
        ("GET", FORECAST, "404"): 1,
        ("GET", "/static/app.js", "304"): 1,
        ("POST", PREDICT, "500"): 1,
    }
    assert st.errors == {"KeyError": 1}


def test_uvicorn_worker_logs_through_gunicorn() -> None:
    st, reasons = run(
        [
            ("servers/gunicorn_uvicorn_worker.stdout.log", "stdout"),
            ("servers/gunicorn_uvicorn_worker.stderr.log", "stderr"),
        ]
    )
    assert set(reasons) == {None}
    # gunicorn's access handler formats "%(message)s": no level prefix, no reason phrase
    assert st.requests == {("GET", FORECAST, "200"): 2, ("POST", PREDICT, "500"): 1}
    # the traceback after "[ERROR] Exception in ASGI application" types it; WORKER TIMEOUT (CRITICAL) and the
    # SIGKILL report name no exception
    assert st.errors == {"KeyError": 1, "unknown": 2}


def test_ingress_nginx_upstreaminfo() -> None:
    st, reasons = run([("servers/ingress_nginx.log", "stdout")], cri, "gateway")
    assert reasons == [None] * 5
    assert st.requests == {
        ("GET", FORECAST, "200"): 2,
        ("POST", PREDICT, "200"): 1,
        ("GET", "/wp-login.php", "404"): 1,
        ("POST", "/api/v1/jobs", "413"): 1,  # refused before any upstream: the upstream fields are "-"
    }
    # $request_time (the 2nd field after the user agent), also with two upstreams tried ("a, b")
    assert latency(st) == {
        ("GET", FORECAST): (buckets(0.012, 0.031), 0.043),
        ("POST", PREDICT): (buckets(0.024), 0.024),
        ("GET", "/wp-login.php"): (buckets(0.001), 0.001),
        ("POST", "/api/v1/jobs"): (buckets(0.0), 0.0),
    }


# --------------------------------------------------------------------------------------------- apps
PYTHON_ERRORS = {
    "KeyError": 2,  # logger.exception("lookup failed") + traceback, and an uncaught one at exit
    "api.db.DatabaseUnavailable": 1,  # "During handling of the above exception": the last one raised
    "serving.loader.ModelNotLoaded": 1,  # "The above exception was the direct cause"
    "MODEL_NOT_LOADED": 1,
    "sqlalchemy.exc.OperationalError": 1,
    "ValueError": 1,  # named in the ERROR line and its traceback: counted once
}


@pytest.mark.parametrize("wrapper", ["docker", "cri"])
def test_python_logging_with_tracebacks(wrapper: str) -> None:
    st, reasons = run([("apps/python_logging.log", "stderr")], WRAPPERS[wrapper], "training-processor")
    assert set(reasons) == {None}
    # a WARNING's traceback is no error; "INFO ... 3 ERROR responses" is an INFO line
    assert st.errors == PYTHON_ERRORS
    assert st.training == {"received": 1, "finished": 1, "failed": 1}


def test_python_logging_basic_config() -> None:
    st, reasons = run([("apps/python_basicconfig.log", "stderr")], docker, "training-processor")
    assert set(reasons) == {None}
    # "ERROR:api.Worker:..." -- the logger name is not an exception type
    assert st.errors == {"ValueError": 1, "unknown": 1, "OOM": 1}
    assert st.training == {"received": 1, "finished": 0, "failed": 1}


JSON_ERRORS = {
    "KeyError": 3,  # python-json-logger exc_info, structlog exception text, ECS error.type
    "ConnectionResetError": 1,  # python-json-logger exc_info_as_array
    "ModelNotLoaded": 1,  # structlog dict tracebacks: the first stack is the one raised
    "unknown": 2,  # zap: "error" is a message, its stacktrace a Go stack
    "java.lang.IllegalStateException": 1,  # Spring Boot ecs: log.level and error.type nested
    "java.lang.NullPointerException": 1,  # Spring Boot logstash: stack_trace
    "TypeError": 1,  # pino: numeric level 50, err.type
}


@pytest.mark.parametrize("wrapper", ["docker", "bare"])
def test_structured_json_app_lines(wrapper: str) -> None:
    st, reasons = run([("apps/json_libraries.log", "stdout")], WRAPPERS[wrapper])
    assert set(reasons) == {None}
    assert st.errors == JSON_ERRORS  # warnings, infos, pino 30/40: no errors
    assert st.training == {"received": 1, "finished": 1, "failed": 0}
    assert st.requests == {}
    if wrapper == "bare":
        assert st.lines == {"json": 18}


def test_logfmt_app_lines() -> None:
    st, reasons = run([("apps/logfmt.log", "stderr")], cri)
    assert set(reasons) == {None}
    # logrus, go-kit, slog (upper case), log15 lvl=crit, error_code; warn and info are not errors
    assert st.errors == {"unknown": 3, "serving.ModelNotLoadedError": 1, "CONFIG_INVALID": 1}
    assert st.requests == {("POST", PREDICT, "200"): 1}
    assert latency(st) == {("POST", PREDICT): (buckets(0.0127), 0.0127)}  # duration=12.7ms (Go)
    assert st.training == {"received": 1, "finished": 1, "failed": 0}


def test_spring_boot_console_and_java_stack_traces() -> None:
    st, reasons = run([("apps/spring_boot.log", "stdout")], docker)
    assert set(reasons) == {None}
    # "Application run failed" is typed by its stack trace (the exception thrown, not its cause); Tomcat's
    # line names its exception; logger names (o.s.boot.SpringApplication, c.e.energy.ForecastService) never
    assert st.errors == {
        "java.lang.IllegalStateException": 1,
        "java.lang.ArithmeticException": 1,
        "unknown": 1,
    }
    assert st.training["received"] == 1


def test_spring_boot_2_console() -> None:
    st, _ = run([("apps/spring_boot_2.log", "stdout")], cri)
    assert st.errors == {"org.springframework.beans.factory.BeanCreationException": 1}


def test_java_uncaught_exception() -> None:
    st, _ = run([("apps/java_uncaught.log", "stderr")], docker)
    assert st.errors == {"java.lang.IllegalStateException": 1}


def test_model_serving_request_logs() -> None:
    st, reasons = run([("apps/model_serving.log", "stdout")], docker, "model-serving")
    assert reasons == [None] * 6
    assert st.requests == {
        ("POST", PREDICT, "200"): 1,
        ("POST", "/v1/models/{id}/electricity/anomaly:predict", "200"): 1,
        ("GET", "/v1/models/{id}/heating/forecast", "200"): 1,
        ("POST", PREDICT, "404"): 1,
        ("POST", PREDICT, "503"): 1,
    }
    assert latency(st) == {
        ("POST", PREDICT): (buckets(0.0127, 0.0014, 30.0125), 30.0266),
        ("POST", "/v1/models/{id}/electricity/anomaly:predict"): (buckets(0.048), 0.048),
        ("GET", "/v1/models/{id}/heating/forecast"): (buckets(0.0009), 0.0009),
    }
    assert st.latency[("POST", PREDICT)][-1] == 1  # 30.0125 s: above the largest bound, +Inf only
    assert st.last_error == {("POST", PREDICT, "404"): T0 + 2.35, ("POST", PREDICT, "503"): T0 + 3}
    assert st.errors == {}  # a request line at level error is a request, not an application error


def test_json_request_field_names_and_units() -> None:
    st, reasons = run([("apps/json_requests.log", "stdout")], docker)
    assert reasons == [None] * 9
    assert st.requests == {
        ("GET", "/v1/models/{model}/versions", "200"): 1,  # a route template as the app logs it
        ("POST", "/api/v1/jobs", "202"): 1,
        ("GET", "/health", "200"): 1,
        ("GET", FORECAST, "200"): 4,  # one with a negative duration, one without: counted, not observed
        ("GET", FORECAST, "500"): 1,
    }  # a status with no method and path is no request
    assert latency(st) == {
        ("GET", "/v1/models/{model}/versions"): (buckets(0.0032), 0.0032),
        ("POST", "/api/v1/jobs"): (buckets(0.0881), 0.0881),
        ("GET", "/health"): (buckets(0.0004), 0.0004),
        ("GET", FORECAST): (buckets(0.25, 1.25, 0.0125), 1.5125),
    }
    assert st.last_error == {("GET", FORECAST, "500"): T0 + 4}


def test_plain_unwrapped_app_log() -> None:
    st, reasons = run([("apps/plain_bare.log", "stdout")], bare)
    # broken wrapper records are rejected: a CRI record with a bad tag, the tail of a JSON record cut in
    # two, lines of a pretty-printed JSON object
    assert reasons == [None] * 12 + ["unknown_format"] * 4 + [None]
    assert st.lines == {"plain": 11, "access": 2}
    assert st.errors == {"KeyError": 1, "OOM": 1}
    assert st.training["received"] == 1
    assert st.requests == {("GET", FORECAST, "200"): 1, ("GET", "/health", "200"): 1}


# ------------------------------------------------------------------------------ traces across lines
def test_settle_counts_what_may_be_complete_and_absorbs_a_late_traceback() -> None:
    c, st, ps = LineClassifier(), AppStats(), PartialState()
    c.classify(st, "2026-11-22 10:00:05,003 ERROR [api.routes] lookup failed", ps, "docker:stderr")
    assert st.errors == {}  # waits for the traceback that usually follows
    c.settle(st, ps)  # the reader is at the end of what was written
    assert st.errors == {"unknown": 1}
    for line in ("Traceback (most recent call last):", '  File "/app/x.py", line 1, in f', "KeyError: 'x'"):
        c.classify(st, line, ps, "docker:stderr")  # written across two reads: the same error
    c.settle(st, ps)
    c.settle(st, ps)
    assert st.errors == {"unknown": 1}
    assert ps.context == {}
    # a traceback cut before its exception line waits for it, across settles
    c.classify(st, "Traceback (most recent call last):", ps, "docker:stderr")
    c.settle(st, ps)
    assert st.errors == {"unknown": 1}
    c.classify(st, '  File "/app/x.py", line 1, in f', ps, "docker:stderr")
    c.classify(st, "ValueError: bad", ps, "docker:stderr")
    c.settle(st, ps)
    assert st.errors == {"unknown": 1, "ValueError": 1}
    # an ERROR line that names its type is counted at once
    c.classify(st, "2026-11-22 10:00:06,000 ERROR [api] boom: TimeoutError: read", ps, "docker:stderr")
    assert st.errors == {"unknown": 1, "ValueError": 1, "TimeoutError": 1}


def test_streams_are_kept_apart_and_errors_counted_for_their_app() -> None:
    """An Azure console export mixes apps and replicas in one file: a pending error stays with its app."""
    c, ps = LineClassifier(), PartialState()
    api, serving, file_app = AppStats(), AppStats(), AppStats()
    c.classify(api, "ERROR:    Exception in ASGI application", ps, "azure:api/api--r1-a/stderr")
    c.classify(serving, "ERROR:    Exception in ASGI application", ps, "azure:model-serving/ms--r3-b/stderr")
    c.classify(api, "Traceback (most recent call last):", ps, "azure:api/api--r1-a/stderr")
    c.classify(serving, "INFO:     Application startup complete.", ps, "azure:model-serving/ms--r3-b/stderr")
    c.classify(api, "KeyError: 'c01'", ps, "azure:api/api--r1-a/stderr")
    assert serving.errors == {"unknown": 1} and api.errors == {}
    c.settle(file_app, ps)  # the tailer passes the file's app: the pending error still goes to api
    assert api.errors == {"KeyError": 1} and file_app.errors == {}
    c.classify(serving, "ERROR:    Exception in ASGI application", ps, "azure:model-serving/ms--r3-b/stderr")
    c.flush(file_app, ps)
    assert serving.errors == {"unknown": 2} and file_app.errors == {}


def test_context_is_bounded() -> None:
    c, st, ps = LineClassifier(), AppStats(), PartialState()
    for i in range(MAX_CONTEXT + 10):
        c.classify(st, "ERROR:    Exception in ASGI application", ps, f"azure:api/r{i}/stderr")
    assert len(ps.context) == MAX_CONTEXT
    assert st.errors == {"unknown": 10}  # the oldest streams were counted when dropped
    c.flush(st, ps)
    assert st.errors == {"unknown": MAX_CONTEXT + 10}


def test_a_traceback_continues_across_a_restart() -> None:
    """The tailer persists ps.context as JSON; a new classifier picks the traceback up where it was."""
    st, ps = AppStats(), PartialState()
    first = LineClassifier()
    for line in ("2026-11-22 10:00:05,003 ERROR [api] lookup failed", "Traceback (most recent call last):"):
        first.classify(st, line, ps, "docker:stderr")
    restored = PartialState()
    restored.context = json.loads(json.dumps(ps.context))
    assert all(len(v) < 120 for v in restored.context.values())  # small
    second = LineClassifier()
    for line in (
        '  File "/app/x.py", line 1, in f',
        "KeyError: 'x'",
        "2026-11-22 10:00:06,000 INFO [api] ok",
    ):
        second.classify(st, line, restored, "docker:stderr")
    assert st.errors == {"KeyError": 1}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "2026-11-22T10:00:00.123Z ERROR 1 --- [main] o.s.b.SpringApplication : Application run failed",
            None,
        ),
        (
            "2026-11-22 10:00:00.123 ERROR 1 --- [  main] o.s.boot.SpringApplication : Application run failed",
            None,
        ),
        # a logger whose class name ends like an exception's: only the message after " : " is read
        ("2026-11-22T10:00:00.123Z ERROR 1 --- [main] c.e.energy.ForecastTimeout : upstream slow", None),
        (
            "2026-11-22T10:00:00.123Z ERROR 1 --- [nio-8080-exec-1] o.h.engine.jdbc.spi.SqlExceptionHelper   : "
            'ERROR: duplicate key value violates unique constraint "buildings_pkey"',
            None,
        ),
        ("10:00:00.123 [main] ERROR com.example.FooService - Something failed", None),
        (
            "10:00:00.123 [main] ERROR com.example.FooService - call failed: java.lang.IllegalStateException: x",
            "java.lang.IllegalStateException",
        ),
        ("ERROR:api.Worker:something odd happened", None),
        ("[2026-11-22 10:00:05 +0000] [8] [ERROR] Exception in worker process", None),
        ("2026-11-22 10:00:00,123 ERROR [api] (psycopg2.errors.UniqueViolation) dup", None),
        (
            "2026-11-22 10:00:00,123 ERROR [api] psycopg2.errors.UniqueViolation: dup",
            "psycopg2.errors.UniqueViolation",
        ),
        ("2026-11-22 10:00:00,123 FATAL [db] gave up", None),
        ("2026-11-22 10:00:00,123 INFO [api] upstream said ERROR 503", "no error"),
        ("2026-11-22 10:00:00,123 INFO [api] retrying after ERRORS_SEEN=0", "no error"),
    ],
)
def test_error_lines_logger_names_are_not_types(line: str, expected: str | None) -> None:
    c, st, ps = LineClassifier(), AppStats(), PartialState()
    c.classify(st, line, ps, "s")
    c.flush(st, ps)
    assert st.errors == ({} if expected == "no error" else {expected or "unknown": 1})


@pytest.mark.parametrize(
    ("level", "is_error"),
    [
        ("error", True),
        ("err", True),
        ("eror", True),  # log15
        ("fatal", True),
        ("critical", True),
        ("ERROR", True),
        ("Error", True),
        (50, True),  # pino / bunyan
        (60, True),
        ("warn", False),
        ("warning", False),
        ("info", False),
        ("debug", False),
        (40, False),  # pino's warn
        (True, False),
    ],
)
def test_structured_levels(level: Any, is_error: bool) -> None:
    c, st = LineClassifier(), AppStats()
    c.classify(st, json.dumps({"level": level, "msg": "x"}), PartialState(), "s")
    assert st.errors == ({"unknown": 1} if is_error else {})
    if isinstance(level, str):  # logfmt values are text: numeric levels are pino's, in JSON only
        c.classify(st, f"level={level} msg=x", PartialState(), "s")
        assert st.errors == ({"unknown": 2} if is_error else {})


@pytest.mark.parametrize(
    "line",
    [
        "",
        "{",
        "{]",
        "[1, 2]",
        "\x1b[",
        "\x1b[31m",
        '{"status": true, "method": "GET", "path": "/x"}',
        '{"status": 200, "method": 7, "path": "/x"}',
        '{"status": "2000", "method": "GET", "path": "/x"}',
        '{"status": 200, "method": "GET", "path": "/x", "duration_ms": "NaN"}',
        '{"status": 200, "method": "GET", "path": "/x", "duration": 1e999}',
        '{"status": 200, "method": "GET", "path": "/x", "duration": {"ms": 3}}',
        '{"status": 500, "method": "GET", "path": "/x", "time": "yesterday"}',
        '{"level": ["error"], "exception": [1, {"exc_type": 3}], "error": {"type": 5}}',
        '{"level": "error", "exc_info": 17, "err": ["a", "b"]}',
        "level= msg== ==",
        "Traceback (most recent call last):",
        'Exception in thread "main"',
        '10.0.0.1 - - [garbage] "GET / HTTP/1.1" 200 1 "-" "-" 0.1.2',
        '10.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-" 1 x [ a',
        "x" * 100_000 + " ERROR " + "Error" * 1000,
    ],
)
def test_bad_input_never_raises(line: str) -> None:
    c, st, ps = LineClassifier(), AppStats(), PartialState()
    c.classify(st, line, ps, "s")
    c.bare(st, line, ps)
    c.bare_json(st, line, ps)
    c.settle(st, ps)
    c.flush(st, ps)
    for counts in st.latency.values():
        assert sum(counts) >= 1
    assert all(math.isfinite(v) and v >= 0 for v in st.latency_sum.values())


def test_bare_json_that_is_no_app_line_is_rejected() -> None:
    c, st = LineClassifier(), AppStats()
    assert c.bare_json(st, '{"foo": 1, "bar": [2]}') == "invalid_record"
    assert c.bare_json(st, "[1]") == "invalid_record"
    assert c.bare_json(st, "{nope") == "invalid_json"
    assert c.bare_json(st, '{"level": "info", "msg": "ok"}') is None
    assert st.lines == {"json": 1}


def test_record_time_units() -> None:
    assert record_time("2026-11-22T10:00:00Z") == T0
    assert record_time("22/Nov/2026:11:00:00 +0100") == T0
    assert record_time(T0) == record_time(T0 * 1000) == record_time(str(T0 * 1000)) == T0
    assert record_time(T0 * 1e9) == T0
    assert record_time("soon") is None and record_time(-1) is None and record_time(True) is None


# ------------------------------------------------------------------------------ state and exposition
def _timed_stats() -> AppStats:
    st, _ = run([("servers/nginx_timed.log", "stdout")], docker, "gateway")
    return st


def test_latency_survives_the_state_file_and_old_files_still_load() -> None:
    st = _timed_stats()
    back = AppStats.from_state(json.loads(json.dumps(st.to_state())))
    assert back.latency == st.latency and back.latency_sum == st.latency_sum
    old = st.to_state()
    del old["latency"], old["latency_buckets"]  # a state file written before the histogram existed
    assert AppStats.from_state(old).latency == {}
    assert AppStats.from_state(old).requests == st.requests
    other = st.to_state()
    other["latency_buckets"] = [0.1, 1.0]  # saved with other bounds: cannot be re-bucketed, starts again
    assert AppStats.from_state(other).latency == {}


def test_snapshot_does_not_share_histogram_lists() -> None:
    st = _timed_stats()
    snap = st.copy()
    st.latency[("GET", "/health")][0] += 5
    assert snap.latency[("GET", "/health")][0] == 1


def test_histogram_exposition() -> None:
    st = _timed_stats()

    class _Coll:
        def collect(self):  # type: ignore[no-untyped-def]
            return families({"gateway": st}, {"gateway": 1}, {"gateway": 0})

    reg = CollectorRegistry()
    reg.register(_Coll())  # type: ignore[arg-type]
    labels = {"app": "gateway", "method": "GET", "route": FORECAST}
    name = "fleetmon_http_request_duration_seconds"
    assert reg.get_sample_value(f"{name}_count", labels) == 4
    assert reg.get_sample_value(f"{name}_sum", labels) == pytest.approx(0.317)
    cumulative = [
        reg.get_sample_value(f"{name}_bucket", {**labels, "le": le})
        for le in ("0.005", "0.025", "0.05", "0.5", "+Inf")
    ]
    assert cumulative == [1, 2, 3, 4, 4]
    les = {
        s.labels["le"]
        for m in reg.collect()
        if m.name == name
        for s in m.samples
        if s.name.endswith("_bucket") and s.labels["route"] == FORECAST
    }
    assert les == {
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1.0",
        "2.5",
        "5.0",
        "10.0",
        "30.0",
        "+Inf",
    }
    text = generate_latest(reg)
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
