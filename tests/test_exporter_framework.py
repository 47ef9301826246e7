"""The exporter framework: guarded collectors, health metrics, background polls, HTTP endpoints."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from fleetmon.exporter import Exporter


class Good:
    name = "good"

    def __init__(self) -> None:
        self.value = 0.0

    def poll(self) -> None:
        self.value += 1

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("fleetmon_test_value", "cached test value", value=self.value)


class Broken:
    name = "broken"

    def poll(self) -> None:
        raise RuntimeError("upstream down")

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("fleetmon_test_partial", "emitted before failing", value=1)
        raise RuntimeError("scrape failed")


def test_one_failing_collector_does_not_take_the_others_down() -> None:
    exp = Exporter("test", {"good": Good(), "broken": Broken()})
    assert exp.poll_once("good") is True
    assert exp.poll_once("broken") is False
    reg = exp.registry
    assert reg.get_sample_value("fleetmon_test_value") == 1.0
    # the broken collector's partial output is dropped, its failure reported
    assert reg.get_sample_value("fleetmon_test_partial") is None
    assert reg.get_sample_value("fleetmon_scrape_collector_success", {"collector": "good"}) == 1.0
    assert reg.get_sample_value("fleetmon_scrape_collector_success", {"collector": "broken"}) == 0.0
    assert reg.get_sample_value("fleetmon_poll_success", {"collector": "broken"}) == 0.0
    assert reg.get_sample_value("fleetmon_poll_success", {"collector": "good"}) == 1.0
    assert reg.get_sample_value("fleetmon_poll_last_success_timestamp_seconds", {"collector": "good"}) > 0
    assert (
        reg.get_sample_value("fleetmon_poll_last_success_timestamp_seconds", {"collector": "broken"}) is None
    )


def test_http_endpoints() -> None:
    exp = Exporter("test", {"good": Good()})
    httpd, _ = exp.serve("127.0.0.1", 0)
    try:
        base = f"http://127.0.0.1:{httpd.server_port}"

        def get(path: str) -> bytes:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.read()  # type: ignore[no-any-return]

        body = get("/metrics").decode()
        assert "fleetmon_test_value 0.0" in body
        assert 'fleetmon_scrape_collector_success{collector="good"} 1.0' in body
        assert "/metrics" in get("/").decode()
        assert get("/-/healthy") == b"OK\n"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_late_poll_still_runs() -> None:
    """A poll whose time came while the scheduler could not run (a busy machine) runs late, not never."""
    import time

    good = Good()
    exp = Exporter("test", {"good": good})
    exp.start_polling({"good": 3.0})
    try:
        deadline = time.monotonic() + 5
        while good.value < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert good.value == 1
        assert exp._scheduler is not None
        exp._scheduler.pause()  # the scheduler thread held up past the next run time (due at 3 s)
        time.sleep(4.5)
        exp._scheduler.resume()
        deadline = time.monotonic() + 1.0  # well before the run after (at 6 s)
        while good.value < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert good.value == 2, "the late run was skipped as misfired"
    finally:
        exp.stop()
