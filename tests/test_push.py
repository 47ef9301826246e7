"""The Pushgateway helper against a real prometheus-pushgateway process."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetmon import push
from fleetmon.config import ModelKey
from fleetmon.procs import free_port

KEY = ModelKey(customer="c01", building="c01-b001", energy="heating", model="forecast")
# The Pushgateway adds an empty ``instance`` label to every pushed series.
GROUP = {"job": "training", "instance": "", **KEY.labels()}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus-pushgateway") is None, reason="prometheus-pushgateway not installed"
)


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The gateway's /metrics as {(sample name, labels): value}."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset({**GROUP, **labels}.items())))


def test_cli_pushes_per_building_and_model(gateway: str) -> None:
    before = time.time()
    rc = push.main(
        ["--job", "training", "--customer", "c01", "--building", "c01-b001", "--energy", "heating",
         "--model", "forecast", "--outcome", "success", "--duration", "12.5", "--gateway", gateway]
    )  # fmt: skip
    assert rc == 0
    # another model of the same building: its own group, nothing overwritten
    rc = push.main(
        ["--job", "training", "--customer", "c01", "--building", "c01-b001", "--energy", "heating",
         "--model", "anomaly", "--outcome", "failure", "--duration", "3", "--gateway", gateway]
    )  # fmt: skip
    assert rc == 0
    s = scrape(gateway)
    assert value(s, "fleetmon_batch_job_duration_seconds") == 12.5
    assert value(s, "fleetmon_batch_job_last_outcome", outcome="success") == 1
    assert value(s, "fleetmon_batch_job_last_outcome", outcome="failure") == 0
    assert before <= value(s, "fleetmon_batch_job_last_success_timestamp_seconds") <= time.time()
    other = {**GROUP, "model": "anomaly"}
    assert s[("fleetmon_batch_job_duration_seconds", frozenset(other.items()))] == 3
    assert s[("fleetmon_batch_job_last_outcome", frozenset({**other, "outcome": "failure"}.items()))] == 1
    assert ("fleetmon_batch_job_last_success_timestamp_seconds", frozenset(other.items())) not in s


def test_context_manager_times_block_and_keeps_last_success_on_failure(gateway: str) -> None:
    with push.batch_job("training", KEY, gateway=gateway) as job:
        time.sleep(0.2)
    assert job.outcome == "success" and job.duration is not None and job.duration >= 0.2
    s = scrape(gateway)
    assert 0.2 <= value(s, "fleetmon_batch_job_duration_seconds") < 5
    first_success = value(s, "fleetmon_batch_job_last_success_timestamp_seconds")
    assert first_success is not None

    with pytest.raises(RuntimeError, match="diverged"), push.batch_job("training", KEY, gateway=gateway):
        raise RuntimeError("training diverged")
    s = scrape(gateway)
    assert value(s, "fleetmon_batch_job_last_outcome", outcome="failure") == 1
    assert value(s, "fleetmon_batch_job_last_outcome", outcome="success") == 0
    # the failure did not wipe the last success (pushadd, not push)
    assert value(s, "fleetmon_batch_job_last_success_timestamp_seconds") == first_success
    assert value(s, "fleetmon_batch_job_last_failure_timestamp_seconds") >= first_success

    with push.batch_job("training", KEY, gateway=gateway) as job:
        job.fail()
    assert value(scrape(gateway), "fleetmon_batch_job_last_outcome", outcome="failure") == 1


def test_command_line_entry_point(gateway: str) -> None:
    """`fleetmon push` as an installed command, routed by fleetmon.cli."""
    fleetmon_bin = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "fleetmon"
    out = subprocess.run(
        [str(fleetmon_bin), "push", "--job", "benchmarking", "--outcome", "success", "--duration", "1.5",
         "--gateway", gateway],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    s = scrape(gateway)
    # no fleet labels: a fleet-wide group
    assert (
        s[("fleetmon_batch_job_duration_seconds", frozenset({("job", "benchmarking"), ("instance", "")}))]
        == 1.5
    )


def test_unreachable_gateway_and_bad_input(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    args = ["--job", "training", "--outcome", "success", "--duration", "1", "--gateway", dead]
    assert push.main([*args, "--timeout", "2"]) == 1
    with pytest.raises(push.PushError, match="cannot push job 'training'"):
        push.push_job("training", KEY, outcome="success", duration=1, gateway=dead, timeout=2)
    # the context manager logs the push failure but does not fail the job that worked
    with caplog.at_level(logging.ERROR, logger="fleetmon.push"):
        with push.batch_job("training", KEY, gateway=dead, timeout=2):
            pass
    assert any("cannot push job" in r.getMessage() for r in caplog.records)
    # bad input is refused before anything is pushed
    assert push.main([*args, "--customer", "c01"]) == 2  # partial fleet key
    assert push.main([*args, "--customer", "c01 x", "--building", "b", "--energy", "e", "--model", "m"]) == 2
    with pytest.raises(ValueError, match="duration"):
        push.push_job("training", KEY, outcome="success", duration=float("nan"), gateway=dead)
    with pytest.raises(ValueError, match="outcome"):
        push.push_job("training", KEY, outcome="ok", duration=1, gateway=dead)
    with pytest.raises(ValueError, match="unknown grouping label"):
        push.grouping_key({"instance": "x"})
