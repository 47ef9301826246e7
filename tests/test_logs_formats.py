"""The log line parser: each format's real shape, classification of application lines, bounded labels."""

from __future__ import annotations

import json

import pytest

from collectors.logformats import (
    MAX_LINE,
    LineParser,
    PartialState,
    clf_time,
    error_type,
    normalize_route,
)

APPS = ["gateway", "api", "training-processor", "model-serving", "system"]


def docker(line: str, stream: str = "stdout", nl: bool = True) -> bytes:
    rec = {"log": line + ("\n" if nl else ""), "stream": stream, "time": "2026-11-22T10:00:00.123456789Z"}
    return json.dumps(rec).encode()


def cri(line: str, tag: str = "F", stream: str = "stdout") -> bytes:
    return f"2026-11-22T10:00:00.123456789Z {stream} {tag} {line}".encode()


def console(app: str, line: str) -> bytes:
    return json.dumps(
        {
            "TimeGenerated": "2026-11-22T10:00:00.000Z",
            "ContainerAppName": app,
            "RevisionName": f"{app}--r1",
            "ContainerGroupName": f"{app}--r1-5d9c7",
            "ContainerName": app,
            "Stream": "stdout",
            "Log": line,
        }
    ).encode()


def system(app: str, reason: str, type_: str = "Normal", **extra: object) -> bytes:
    rec = {
        "TimeGenerated": "2026-11-22T10:00:00.000Z",
        "ContainerAppName": app,
        "RevisionName": f"{app}--r3",
        "ReplicaName": f"{app}--r3-7f9d-abcde",
        "Type": type_,
        "Reason": reason,
        "Log": "Readiness probe failed: HTTP probe failed with statuscode: 503",
        "Count": 1,
    }
    rec.update(extra)
    return json.dumps(rec).encode()


ACCESS = (
    '10.0.0.7 - - [22/Nov/2026:10:00:00 +0000] "GET /api/v1/buildings/c01-b003/forecast HTTP/1.1" '
    '{status} 512 "-" "python-requests/2.32"'
)


def feed(p: LineParser, app: str, *lines: bytes, ps: PartialState | None = None) -> list[str | None]:
    ps = ps or PartialState()
    res = [p.feed(p.stats[app], line, ps) for line in lines]
    p.classifier.flush(p.stats[app], ps)  # as when the file closes: an error waiting for a traceback counts
    return res


def test_docker_wrapped_access_lines_count_requests_by_route_template_and_last_error_time() -> None:
    p = LineParser(APPS)
    res = feed(p, "gateway", docker(ACCESS.format(status=200)), docker(ACCESS.format(status=503)))
    assert res == [None, None]
    st = p.stats["gateway"]
    route = "/api/v1/buildings/{id}/forecast"
    assert st.requests == {("GET", route, "200"): 1, ("GET", route, "503"): 1}
    assert st.last_error == {("GET", route, "503"): clf_time("22/Nov/2026:10:00:00 +0000")}
    assert st.lines == {"docker": 2}


def test_plain_combined_and_common_log_lines() -> None:
    p = LineParser(APPS)
    common = '192.168.1.20 - alice [22/Nov/2026:10:00:05 +0100] "POST /api/v1/runs/42/metrics HTTP/1.0" 201 -'
    bad_request = '10.0.0.9 - - [22/Nov/2026:10:00:06 +0000] "-" 400 0 "-" "-"'
    assert feed(p, "gateway", ACCESS.format(status=404).encode(), common.encode(), bad_request.encode()) == [
        None,
        None,
        None,
    ]
    req = p.stats["gateway"].requests
    assert req[("POST", "/api/v1/runs/{num}/metrics", "201")] == 1
    assert req[("GET", "/api/v1/buildings/{id}/forecast", "404")] == 1
    assert req[("OTHER", "other", "400")] == 1
    assert p.stats["gateway"].lines == {"access": 3}


def test_cri_full_and_partial_records_are_joined() -> None:
    p = LineParser(APPS)
    ps = PartialState()
    res = feed(
        p,
        "training-processor",
        cri("2026-11-22 10:00:00,123 INFO [processor] Received ", tag="P"),
        cri("message id=17 for c01-b003", tag="F"),
        cri("2026-11-22 10:00:09,001 INFO [processor] Training job finished run=abc"),
        cri(
            "2026-11-22 10:00:09,001 ERROR [processor] Failed to process message 18: ValueError: NaN in input"
        ),
        ps=ps,
    )
    assert res == [None] * 4
    st = p.stats["training-processor"]
    assert st.training == {"received": 1, "finished": 1, "failed": 1}
    assert st.errors == {"ValueError": 1}
    assert st.lines == {"cri": 4}
    assert ps.pending == {}


def test_docker_splits_long_lines_into_records_without_newline() -> None:
    p = LineParser(APPS)
    ps = PartialState()
    res = feed(
        p,
        "api",
        docker("2026-11-22 10:00:00,123 ERROR [api] boom " + "x" * 100, nl=False),
        docker(" requests.exceptions.Timeout: read timed out"),
        ps=ps,
    )
    assert res == [None, None]
    assert p.stats["api"].errors == {"requests.exceptions.Timeout": 1}


def test_azure_console_and_system_records() -> None:
    p = LineParser(APPS)
    res = feed(
        p,
        "system",
        console("training-processor", "2026-11-22 10:00:00,123 INFO [processor] Received message 1"),
        system("model-serving", "ReplicaUnhealthy", "Warning"),
        system("model-serving", "BackoffLimitExceeded", "Warning"),
        system("model-serving", "ReplicaCount", Replicas=3),
        system("model-serving", "ReplicaCount", Replicas=1),
        system("model-serving", "MemoryUsage", WorkingSetBytes=300e6, LimitBytes=1e9),
        system("model-serving", "MemoryUsage", WorkingSetBytes=900e6, LimitBytes=1e9, ReplicaName="r2"),
        system("model-serving", "SomethingNew", "Normal"),
        system("unknown-app", "ReplicaUnhealthy", "Warning"),
        system("model-serving", "ReplicaCount", Replicas="many"),
    )
    assert res == [None] * 8 + ["unknown_app", "invalid_record"]
    assert p.stats["training-processor"].training["received"] == 1
    ms = p.stats["model-serving"]
    assert ms.events[("ReplicaUnhealthy", "Warning")] == 1
    assert ms.events[("BackoffLimitExceeded", "Warning")] == 1
    assert ms.events[("ReplicaCount", "Normal")] == 2
    assert ms.events[("other", "Normal")] == 1
    assert (ms.replicas, ms.replicas_max) == (1.0, 3.0)
    mem = sorted(ms.fresh_memory())
    assert [(ws, lim) for _, ws, lim in mem] == [(300e6, 1e9), (900e6, 1e9)]
    # lines are counted for the file's app, events for the app named in the record
    assert p.stats["system"].lines == {"azure_console": 1, "azure_system": 7}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2026-11-22 10:00:00,123 ERROR [api] lookup failed: KeyError: 'c01-b999'", "KeyError"),
        ("2026-11-22 10:00:00,123 CRITICAL [db] gave up error_code=DB_UNAVAILABLE", "DB_UNAVAILABLE"),
        ("2026-11-22 10:00:00,123 ERROR [api.Worker] something odd happened", "unknown"),
        (
            "2026-11-22 10:00:00,123 ERROR [api] psycopg2.OperationalError: server closed",
            "psycopg2.OperationalError",
        ),
    ],
)
def test_error_types(line: str, expected: str) -> None:
    p = LineParser(APPS)
    feed(p, "api", docker(line))
    assert p.stats["api"].errors == {expected: 1}


def test_info_lines_mentioning_errors_are_not_errors() -> None:
    p = LineParser(APPS)
    feed(p, "api", docker("2026-11-22 10:00:00,123 INFO [api] retrying after ERRORS_SEEN=0"))
    assert p.stats["api"].errors == {}
    assert error_type("x ERROR y", 7) == "unknown"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"2026-11-22T10:00:00.123456789Z stdout X a CRI record with a bad tag", "unknown_format"),
        (b'{"log": "unterminated', "invalid_json"),
        (b'{"something": "else"}', "invalid_record"),
        (b'{"log": 17}', "invalid_record"),
        (b"\x00\x01\x02binary\xff", "binary"),
        (b'{"log":"\xff\xfe"}', "binary"),
        (b"caf\xe9 au lait", "binary"),
    ],
)
def test_rejections(line: bytes, reason: str) -> None:
    p = LineParser(APPS)
    assert feed(p, "api", line) == [reason]
    assert p.stats["api"].lines == {}


def test_a_blank_line_is_ordinary_output_not_bad_input() -> None:
    p = LineParser(APPS)
    assert feed(p, "api", b"", b"") == [None, None]
    assert p.stats["api"].lines == {"plain": 2}
    assert sum(p.stats["api"].rejected.values()) == 0


def test_partial_chain_over_max_line_is_too_long_and_its_tail_ignored() -> None:
    p = LineParser(APPS)
    ps = PartialState()
    chunk = "y" * (MAX_LINE // 2 + 10)
    res = feed(
        p, "api", docker(chunk, nl=False), docker(chunk, nl=False), docker("end"), docker("next"), ps=ps
    )
    assert res == [None, "too_long", None, None]
    assert ps.pending == {}


def test_routes_are_capped_per_app_and_the_rest_is_other() -> None:
    p = LineParser(APPS, max_routes=3)
    for i in range(6):
        line = f'10.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET /r{chr(97 + i)}/x HTTP/1.1" 200 1'
        feed(p, "gateway", line.encode())
        feed(p, "gateway", line.encode())
    req = p.stats["gateway"].requests
    assert len(p.stats["gateway"].routes) == 3
    assert req[("GET", "other", "200")] == 6
    assert sum(req.values()) == 12
    assert len(req) == 4


def test_error_types_are_capped() -> None:
    p = LineParser(APPS, max_error_types=2)
    for name in ("AError", "BError", "CError", "DError"):
        feed(p, "api", docker(f"2026-11-22 10:00:00,123 ERROR [api] {name}: x"))
    assert p.stats["api"].errors == {"AError": 1, "BError": 1, "other": 2}


def test_methods_are_a_fixed_set() -> None:
    p = LineParser(APPS)
    feed(p, "gateway", b'10.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "BREW /pot HTTP/1.1" 418 1')
    assert p.stats["gateway"].requests == {("OTHER", "/pot", "418"): 1}


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/v1/buildings/c01-b003/forecast?h=24", "/api/v1/buildings/{id}/forecast"),
        ("/runs/123", "/runs/{num}"),
        ("/runs/123/", "/runs/{num}/"),
        ("/models/0f8fc6b2-1111-2222-3333-444455556666/versions/7", "/models/{uuid}/versions/{num}"),
        ("/artifacts/3f2a9c7e1b0d", "/artifacts/{hash}"),
        ("/v2/health", "/v2/health"),
        ("/tokens/" + "a" * 60, "/tokens/{id}"),
        ("http://example.com/x/9", "/x/{num}"),
        ("*", "other"),
    ],
)
def test_route_templates(path: str, route: str) -> None:
    assert normalize_route(path) == route


def test_clf_time_with_offsets() -> None:
    assert clf_time("22/Nov/2026:10:00:00 +0000") == 1795341600.0
    assert clf_time("22/Nov/2026:11:00:00 +0100") == 1795341600.0
    assert clf_time("garbage") is None


def test_uvicorn_access_lines_in_azure_console_records() -> None:
    p = LineParser([*APPS, "mlflow"])
    line = 'INFO:     10.0.4.7:51234 - "POST /api/2.0/mlflow/runs/search HTTP/1.1" 503 Service Unavailable'
    assert feed(p, "mlflow", console("mlflow", line)) == [None]
    key = ("POST", "/api/{num}/mlflow/runs/search", "503")
    assert p.stats["mlflow"].requests == {key: 1}
    assert key in p.stats["mlflow"].last_error


DEEP = "[" * 5000 + "]" * 5000  # deeper than msgspec goes (Python's recursion limit): a 10 KB line


@pytest.mark.parametrize(
    "line",
    [
        b'{"log":' + DEEP.encode() + b"}",  # Docker's key, not its record: read as the app's own JSON
        b'{"msg":' + DEEP.encode() + b"}",  # an app's JSON line (decoded as a dict first)
        b'{"Log":' + DEEP.encode() + b"}",  # the union of Azure's records
        b'{"TimeGenerated":"x","Log":' + DEEP.encode() + b"}",  # fleetmon's own exports
        b'{"properties":' + DEEP.encode() + b"}",  # diagnostic settings
    ],
)
def test_json_nested_too_deep_is_invalid_json_not_a_recursion_error(line: bytes) -> None:
    p = LineParser(APPS)
    assert feed(p, "api", line) == ["invalid_json"]


@pytest.mark.parametrize("wrap", [docker, cri], ids=["docker", "cri"])
def test_a_message_of_json_nested_too_deep_is_an_ordinary_line(wrap) -> None:  # type: ignore[no-untyped-def]
    # the message of a good wrapper record is the app's output: read as text, never raising
    p = LineParser(APPS)
    assert feed(p, "api", wrap('{"a":' + DEEP + "}")) == [None]
    assert sum(p.stats["api"].lines.values()) == 1
