"""Container log records as the platforms really write them: Docker json-file, containerd CRI and every Azure
Container Apps shape (Azure Monitor and Log Analytics tables, diagnostic settings archives, the az CLI).

The fixtures under tests/fixtures/logs/{azure,docker,cri} are written from the vendors' documentation (each
directory's README names the source); the counts asserted here are what those records must produce.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collectors.logformats import EVENT_REASONS, MAX_LINE, LineParser, PartialState
from collectors.logstats import AppStats

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
APPS = ["gateway", "api", "training-processor", "model-serving", "system"]
FORECAST = "/api/v1/buildings/{id}/forecast"


def run(name: str, file_app: str = "system") -> tuple[LineParser, list[str | None], PartialState]:
    """Every line of one fixture fed to a fresh parser as lines of one file of ``file_app``."""
    p = LineParser(APPS)
    ps = PartialState()
    st = p.stats[file_app]
    results = [p.feed(st, line, ps) for line in (FIXTURES / name).read_bytes().split(b"\n")[:-1]]
    p.classifier.flush(st, ps)  # the file is done: what spans lines is counted
    return p, results, ps


def rejected(results: list[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        if r is not None:
            out[r] = out.get(r, 0) + 1
    return out


def nonzero_training(st: AppStats) -> dict[str, int]:
    return {k: v for k, v in st.training.items() if v}


# ------------------------------------------------------------------------------------ Azure Monitor tables
def test_azure_monitor_console_rows_are_console_records_not_system_events() -> None:
    # Real rows carry every column, Type (the table's name) among them: they must not be taken for events.
    p, results, _ = run("azure/azuremonitor_console.jsonl")
    assert results == [None] * 7
    gw, api, tp = p.stats["gateway"], p.stats["api"], p.stats["training-processor"]
    assert gw.requests == {("GET", FORECAST, "200"): 2, ("GET", FORECAST, "503"): 1}
    assert api.errors == {"KeyError": 1}
    assert nonzero_training(tp) == {"received": 1, "finished": 1}
    assert all(not s.events for s in p.stats.values())
    # lines count for the file's app, also the row of an app that is not configured
    assert p.stats["system"].lines == {"azure_console": 7}


def test_azure_monitor_system_rows_count_events_by_reason_and_type() -> None:
    p, results, _ = run("azure/azuremonitor_system.jsonl")
    assert rejected(results) == {"unknown_app": 1}  # the row of an app that is not configured
    assert p.stats["model-serving"].events == {
        ("AssigningReplica", "Normal"): 1,
        ("PullingImage", "Normal"): 1,
        ("ImagePulled", "Normal"): 1,
        ("ContainerCreated", "Normal"): 1,
        ("ProbeFailed", "Warning"): 1,  # Count 3 is the platform's aggregation: one record, one event
        ("StoppingContainer", "Normal"): 1,
        ("KEDAScalersStopped", "Normal"): 1,
        ("ScaledObjectDeleted", "Normal"): 1,
        ("KEDAScaleTargetDeactivated", "Normal"): 1,
        ("other", "Warning"): 1,  # a reason fleetmon does not know stays bounded
        ("ContainerTerminated", "other"): 1,  # Type holding the table's name: the event type is unknown
    }
    assert p.stats["system"].lines == {"azure_system": 11}


# ------------------------------------------------------------------------------------ Log Analytics (_CL)
def test_log_analytics_console_rows_with_type_suffixed_columns() -> None:
    p, results, _ = run("azure/loganalytics_console_CL.jsonl")
    assert results == [None] * 5
    assert p.stats["gateway"].requests == {("GET", FORECAST, "200"): 2, ("GET", FORECAST, "404"): 1}
    assert p.stats["api"].errors == {"DB_UNAVAILABLE": 1}
    assert p.stats["training-processor"].errors == {"ValueError": 1}
    assert nonzero_training(p.stats["training-processor"]) == {"failed": 1}
    assert all(not s.events for s in p.stats.values())
    assert p.stats["system"].lines == {"azure_console": 5}


def test_log_analytics_system_rows_read_the_event_type_from_type_s() -> None:
    p, results, _ = run("azure/loganalytics_system_CL.jsonl")
    assert results == [None] * 5
    assert p.stats["model-serving"].events == {
        ("ReplicaUnhealthy", "Warning"): 2,
        ("ContainerStarted", "Normal"): 1,
    }
    assert p.stats["training-processor"].events == {("BackoffLimitExceeded", "Warning"): 1}
    assert p.stats["gateway"].events == {("KEDAScaleTargetActivated", "Normal"): 1}
    assert p.stats["system"].lines == {"azure_system": 5}


def test_az_log_analytics_query_rows_where_every_value_is_a_string() -> None:
    p, results, _ = run("azure/loganalytics_query_strings.jsonl")
    assert results == [None] * 6
    assert p.stats["gateway"].requests == {("GET", FORECAST, "500"): 1, ("GET", FORECAST, "200"): 1}
    assert p.stats["model-serving"].events == {
        ("ReplicaUnhealthy", "Warning"): 1,
        ("ImagePulled", "Normal"): 1,
        ("ContainerCreated", "Normal"): 1,
    }
    assert p.stats["system"].lines == {"azure_console": 3, "azure_system": 3}


# ------------------------------------------------------------------------------- diagnostic settings, az CLI
def test_diagnostic_settings_archive_pt1h_records() -> None:
    p, results, _ = run("azure/diagnostics_PT1H.json")
    assert results == [None] * 4
    assert p.stats["gateway"].requests == {("GET", FORECAST, "200"): 1}
    assert p.stats["api"].errors == {"requests.exceptions.Timeout": 1}
    assert p.stats["model-serving"].events == {
        ("ReplicaUnhealthy", "Warning"): 1,
        ("KEDAScalersStarted", "Normal"): 1,
    }
    assert p.stats["system"].lines == {"azure_console": 2, "azure_system": 2}


def test_az_containerapp_logs_show_console_also_its_unescaped_quotes_and_colours() -> None:
    # The records name no app: they count for the file's app. Three of them are not JSON as printed.
    p, results, _ = run("azure/az_logs_show_console.jsonl", file_app="gateway")
    assert results == [None] * 8
    gw = p.stats["gateway"]
    assert gw.requests == {
        ("GET", FORECAST, "200"): 1,
        ("POST", "/api/v1/runs/{num}/metrics", "503"): 1,
        ("GET", "/health", "200"): 1,
    }
    assert gw.errors == {"KeyError": 1}
    assert gw.lines == {"azure_console": 8}


def test_az_containerapp_logs_show_system() -> None:
    p, results, _ = run("azure/az_logs_show_system.jsonl")
    assert results == [None] * 9  # its two connection notices name no app: lines, not events, not rejected
    assert p.stats["model-serving"].events == {
        ("StoppingContainer", "Normal"): 1,
        ("PullingImage", "Normal"): 1,  # its Msg has bare quotes
        ("ImagePulled", "Normal"): 1,
        ("ContainerCreated", "Normal"): 1,
        ("Completed", "Warning"): 1,
        ("KEDAScaleTargetDeactivated", "Normal"): 1,
    }
    assert p.stats["gateway"].events == {("AssigningReplica", "Normal"): 1}
    assert p.stats["system"].lines == {"azure_system": 9}


def test_fleetmon_extension_records_replicas_and_memory() -> None:
    p, results, _ = run("azure/fleetmon_extension.jsonl")
    assert rejected(results) == {"invalid_record": 2}  # Replicas "many"; MemoryUsage without ReplicaName
    ms = p.stats["model-serving"]
    assert (ms.replicas, ms.replicas_max) == (2.0, 3.0)
    assert sorted((ws, lim) for _, ws, lim in ms.fresh_memory()) == [
        (314572800, 1 << 30),
        (943718400, 1 << 30),
    ]
    assert ms.events == {
        ("ReplicaCount", "Normal"): 2,
        ("MemoryUsage", "Normal"): 2,
        ("ReplicaUnhealthy", "Warning"): 1,
    }


def test_extension_numbers_as_strings_from_the_az_cli() -> None:
    p = LineParser(APPS)
    st, ps = p.stats["system"], PartialState()
    rec = {
        "TableName": "PrimaryResult",
        "TimeGenerated": "2026-11-22T10:00:00Z",
        "ContainerAppName": "api",
        "ReplicaName": "api--r1-1",
        "Type": "Normal",
        "Reason": "MemoryUsage",
        "WorkingSetBytes": "1000.0",
        "LimitBytes": "None",
    }
    assert p.feed(st, json.dumps(rec).encode(), ps) is None
    assert p.stats["api"].fresh_memory() == [(1795341600.0, 1000.0, 0.0)]
    count = {**rec, "Reason": "ReplicaCount", "Replicas": "4"}
    assert p.feed(st, json.dumps(count).encode(), ps) is None
    assert p.stats["api"].replicas == 4.0


# ------------------------------------------------------------------------------------ Docker and CRI files
def test_docker_json_file_records() -> None:
    p, results, ps = run("docker/json-file.log", file_app="api")
    assert results == [None] * 8
    api = p.stats["api"]
    assert api.requests == {("GET", FORECAST, "200"): 1, ("GET", FORECAST, "502"): 1}
    assert api.errors == {"KeyError": 1, "DB_UNAVAILABLE": 1}  # the CRLF line too
    assert nonzero_training(api) == {"received": 1}  # the 16 KiB line joined from its two records
    assert api.lines == {"docker": 8}
    assert ps.pending == {}


def test_containerd_cri_records() -> None:
    p, results, ps = run("cri/containerd.log", file_app="training-processor")
    assert results == [None] * 9
    tp = p.stats["training-processor"]
    assert tp.requests == {("GET", FORECAST, "200"): 1, ("GET", FORECAST, "404"): 1}
    assert tp.errors == {"ValueError": 1}
    assert nonzero_training(tp) == {"finished": 1, "failed": 1}
    assert tp.lines == {"cri": 9}
    assert ps.pending == {}


# ------------------------------------------------------------------------------ console or system: the rules
def row(**kw: object) -> bytes:
    return json.dumps(kw).encode()


ACCESS = '10.0.0.7 - - [22/Nov/2026:10:00:00 +0000] "GET /health HTTP/1.1" 200 2 "-" "kube-probe/1.29"'


@pytest.mark.parametrize(
    ("record", "kind", "app"),
    [
        (row(Type="ContainerAppConsoleLogs", ContainerAppName="api", Log=ACCESS), "console", "api"),
        (row(Type="ContainerAppConsoleLogs_CL", ContainerAppName_s="api", Log_s=ACCESS), "console", "api"),
        (row(ContainerAppName="api", Log=ACCESS), "console", "api"),  # no table name, no system column
        (row(TimeStamp="2023-10-06T21:41:30.1194", Log=ACCESS), "console", "system"),  # az CLI: no app
        (
            row(category="ContainerAppConsoleLogs", properties={"ContainerAppName": "api", "Log": ACCESS}),
            "console",
            "api",
        ),
        (
            row(Type="ContainerAppSystemLogs", ContainerAppName="api", Reason="ProbeFailed", Log="x"),
            "system",
            "api",
        ),
        (row(Type="Warning", ContainerAppName="api", Reason="ProbeFailed", Log="x"), "system", "api"),
        (
            row(
                Type="ContainerAppSystemLogs_CL", ContainerAppName_s="api", Reason_s="ProbeFailed", Log_s="x"
            ),
            "system",
            "api",
        ),
        # a projected _CL row (no Type): its Type_s and Reason_s say system
        (row(ContainerAppName_s="api", Type_s="Warning", Reason_s="ProbeFailed", Log_s="x"), "system", "api"),
        (row(ContainerAppName="api", Type="Normal", Log="x"), "system", "api"),  # an event type, no Reason
        (
            row(
                category="ContainerAppSystemLogs",
                properties={"ContainerAppName": "api", "Reason": "ProbeFailed"},
            ),
            "system",
            "api",
        ),
    ],
)
def test_console_and_system_records_are_told_apart(record: bytes, kind: str, app: str) -> None:
    p = LineParser(APPS)
    assert p.feed(p.stats["system"], record, PartialState()) is None
    target = p.stats[app]
    if kind == "console":
        assert target.requests == {("GET", "/health", "200"): 1}
        assert all(not s.events for s in p.stats.values())
        assert p.stats["system"].lines == {"azure_console": 1}
    else:
        assert sum(target.events.values()) == 1
        assert all(not s.requests for s in p.stats.values())
        assert p.stats["system"].lines == {"azure_system": 1}


def test_console_app_rule_and_system_app_rule() -> None:
    p = LineParser(APPS)
    st, ps = p.stats["gateway"], PartialState()
    # console: ContainerAppName (any flavour's column) if configured, else the file's app
    assert (
        p.feed(st, row(ContainerAppName_s="api", Log_s=ACCESS, Type="ContainerAppConsoleLogs_CL"), ps) is None
    )
    assert p.feed(st, row(ContainerAppName="nope", Log=ACCESS), ps) is None
    assert sum(p.stats["api"].requests.values()) == 1
    assert sum(st.requests.values()) == 1
    # system: ContainerAppName only, else unknown_app (never the file's app)
    assert (
        p.feed(st, row(ContainerAppName_s="nope", Reason_s="ProbeFailed", Type_s="Warning"), ps)
        == "unknown_app"
    )
    assert p.feed(st, row(Reason="ProbeFailed", Type="Warning", Log="x"), ps) == "unknown_app"
    assert not st.events


def test_broken_azure_records_are_rejected_with_a_reason() -> None:
    p = LineParser(APPS)
    st, ps = p.stats["api"], PartialState()
    assert (
        p.feed(st, row(Type="ContainerAppConsoleLogs", ContainerAppName="api"), ps) == "invalid_record"
    )  # no Log
    assert p.feed(st, row(ContainerAppName="api", Log=17), ps) == "invalid_record"  # Log of another type
    # an az CLI line that is broken beyond its unescaped quotes stays invalid JSON
    assert p.feed(st, b'{"TimeStamp":"2023-10-06T21:41:30Z","Log":"cut "here', ps) == "invalid_json"
    assert p.feed(st, b'{"TimeStamp":"2023-10-06T21:41:30Z","Msg":"x "y"","Reason":', ps) == "invalid_json"
    assert st.lines == {}


def test_known_reasons_keep_those_the_dashboards_and_rules_use() -> None:
    used = {"ReplicaUnhealthy", "BackoffLimitExceeded", "ReplicaCount", "MemoryUsage", "ContainerCrashing"}
    new = {
        "ImagePulled",
        "StoppingContainer",
        "KEDAScalersStopped",
        "ScaledObjectDeleted",
        "AssigningReplica",
    }
    assert used | new <= EVENT_REASONS


# ------------------------------------------------------------------- bug: an over-long split line (parser)
def docker_rec(text: str, stream: str = "stdout") -> bytes:
    return json.dumps({"log": text, "stream": stream, "time": "2026-11-22T10:00:00.000000000Z"}).encode()


def cri_rec(text: str, tag: str, stream: str = "stdout") -> bytes:
    return f"2026-11-22T10:00:00.000000000Z {stream} {tag} {text}".encode()


def text(n: int) -> str:
    # words, so that a piece glued in front of the next line spoils it (it no longer starts like a log line)
    return ("x " * (n // 2 + 1))[:n]


def split_docker(total: int, piece: int = 16 * 1024) -> list[bytes]:
    """A line of ``total`` characters as Docker writes it: 16 KiB records, only the last ending in "\\n"."""
    n = -(-total // piece)
    return [docker_rec(text(piece)) for _ in range(n - 1)] + [
        docker_rec(text(total - piece * (n - 1)) + "\n")
    ]


def split_cri(total: int, piece: int = 16 * 1024) -> list[bytes]:
    """The same line as containerd writes it: P records, then F (max_container_log_line_size 16 KiB)."""
    n = -(-total // piece)
    return [cri_rec(text(piece), "P") for _ in range(n - 1)] + [cri_rec(text(total - piece * (n - 1)), "F")]


NEXT = '10.0.0.9 - - [22/Nov/2026:10:00:01 +0000] "GET /api/v1/buildings/c01-b001/forecast HTTP/1.1" 200 9 "-" "-"'


@pytest.mark.parametrize("size", [MAX_LINE + MAX_LINE // 2, 2 * MAX_LINE + MAX_LINE // 2])
@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_an_over_long_split_line_costs_one_too_long_and_leaves_the_next_line_alone(
    fmt: str, size: int
) -> None:
    p = LineParser(APPS)
    st, ps = p.stats["api"], PartialState()
    chain = split_docker(size) if fmt == "docker" else split_cri(size)
    nxt = docker_rec(NEXT + "\n") if fmt == "docker" else cri_rec(NEXT, "F")
    results = [p.feed(st, r, ps) for r in [*chain, nxt, nxt]]
    assert rejected(results) == {"too_long": 1}
    assert st.requests == {("GET", FORECAST, "200"): 2}  # both next lines, neither glued to the long one
    assert ps.pending == {}
    assert st.lines == {fmt: len(chain) + 2}


def test_an_over_long_chain_across_a_restart_still_costs_one_too_long() -> None:
    # The tailer persists ps.pending as-is (JSON) and restores it into a new parser after a restart.
    chain = split_cri(2 * MAX_LINE + 1000)
    for cut in (10, 70, len(chain) - 1):  # before, just after and long after the limit is crossed
        p = LineParser(APPS)
        ps = PartialState()
        first = [p.feed(p.stats["api"], r, ps) for r in chain[:cut]]
        saved = json.loads(json.dumps(ps.pending))
        p2 = LineParser(APPS)
        ps2 = PartialState()
        ps2.pending = saved
        rest = [p2.feed(p2.stats["api"], r, ps2) for r in [*chain[cut:], cri_rec(NEXT, "F")]]
        assert rejected(first + rest) == {"too_long": 1}, cut
        assert p2.stats["api"].requests == {("GET", FORECAST, "200"): 1}
        assert ps2.pending == {}


def test_streams_of_one_file_join_separately() -> None:
    p = LineParser(APPS)
    st, ps = p.stats["api"], PartialState()
    res = [
        p.feed(st, cri_rec(text(16384), "P", "stderr"), ps),
        p.feed(st, cri_rec(NEXT[:30], "P"), ps),
        p.feed(st, cri_rec(NEXT[30:], "F"), ps),  # completes stdout; stderr's chain stays open
    ]
    assert res == [None, None, None]
    assert st.requests == {("GET", FORECAST, "200"): 1}
    assert list(ps.pending) == ["cri:stderr"]


def test_a_container_apps_jobs_records_count_for_the_job() -> None:
    # A job's rows leave ContainerAppName empty and name the job (Azure Monitor JobName, Log Analytics
    # ContainerJobName_s, archived records ContainerJobName).
    p = LineParser([*APPS, "nightly-retrain"])
    st, ps = p.stats["system"], PartialState()
    lines = [
        row(
            Type="ContainerAppSystemLogs", ContainerAppName="", JobName="nightly-retrain", Reason="JobFailed"
        ),
        row(
            Type="ContainerAppSystemLogs_CL",
            ContainerJobName_s="nightly-retrain",
            Reason_s="BackoffLimitExceeded",
        ),
        row(
            category="ContainerAppConsoleLogs",
            properties={"ContainerJobName": "nightly-retrain", "ContainerName": "retrain", "Log": ACCESS},
        ),
    ]
    # a row that begins with TimeGenerated, like fleetmon's exports, but names a job
    lines.append(
        row(TimeGenerated="2026-11-22T10:00:00Z", ContainerAppName="", JobName="nightly-retrain", Log=ACCESS)
    )
    assert [p.feed(st, x, ps) for x in lines] == [None, None, None, None]
    job = p.stats["nightly-retrain"]
    assert job.events == {("JobFailed", "other"): 1, ("BackoffLimitExceeded", "other"): 1}
    assert job.requests == {("GET", "/health", "200"): 2}


def test_rows_that_begin_like_fleetmons_exports_but_are_other_shapes() -> None:
    p = LineParser(APPS)
    st, ps = p.stats["system"], PartialState()
    t = "2026-11-22T10:00:00Z"
    assert (
        p.feed(st, row(TimeGenerated=t, ContainerAppName_s="api", Log_s=ACCESS), ps) is None
    )  # projected _CL
    assert (
        p.feed(
            st, row(TimeGenerated=t, ContainerAppName_s="api", Reason_s="ProbeFailed", Type_s="Warning"), ps
        )
        is None
    )
    assert p.feed(st, row(TimeGenerated=t, ContainerAppName="api", Log=17), ps) == "invalid_record"
    assert p.feed(st, b'{"TimeGenerated": "2026-11-22T10:00:00Z", "Log": "cut', ps) == "invalid_json"
    assert p.stats["api"].requests == {("GET", "/health", "200"): 1}
    assert p.stats["api"].events == {("ProbeFailed", "Warning"): 1}
