"""The Alertmanager webhook receiver: real HTTP, a real file, a real Alertmanager sending to it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fleetmon.procs import free_port, spawn, stop_group, wait_for_http
from fleetmon.webhook import MAX_BODY_BYTES, Receiver

ROOT = Path(__file__).resolve().parent.parent


def am_payload(status: str = "firing", building: str = "c01-b003", alertname: str = "ModelDataDrift") -> dict:
    """The shape Alertmanager 0.25+ posts (webhook payload version 4)."""
    labels = {
        "alertname": alertname,
        "severity": "warning",
        "customer": "c01",
        "building": building,
        "energy": "heating",
        "model": "forecast",
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{customer="c01", building="{building}", alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "webhook",
        "groupLabels": {"customer": "c01", "building": building, "alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "Input data drift"},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {
                    "summary": "Input data drift",
                    "description": "<b>62%</b> of the columns drifted",
                    "dashboard_url": "http://127.0.0.1:3000/d/fleetmon-model?var-building=" + building,
                },
                "startsAt": "2026-11-22T10:01:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
                "fingerprint": "0123456789abcdef",
            }
        ],
    }


def post(url: str, body: bytes, ctype: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def test_notification_is_stored_served_and_kept_across_restart(tmp_path: Path) -> None:
    with Receiver(tmp_path, port=0).start() as r:
        base = f"http://127.0.0.1:{r.port}"
        assert post(base + "/alerts", json.dumps(am_payload()).encode()) == (200, {"status": "stored"})
        assert post(base + "/alerts", json.dumps(am_payload("resolved")).encode())[0] == 200
        _, text = get(base + "/notifications")
        items = json.loads(text)
        assert [i["status"] for i in items] == ["firing", "resolved"]
        assert items[0]["alerts"][0]["labels"]["building"] == "c01-b003"
        assert items[0]["received_at"].endswith("Z")
    lines = (tmp_path / "notifications.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["status"] == "resolved"

    # A new receiver on the same directory serves what the old one received, and appends to it.
    with Receiver(tmp_path, port=0).start() as r:
        base = f"http://127.0.0.1:{r.port}"
        assert len(json.loads(get(base + "/notifications")[1])) == 2
        post(base + "/alerts", json.dumps(am_payload(building="c02-b001")).encode())
        items = json.loads(get(base + "/notifications")[1])
        assert [i["alerts"][0]["labels"]["building"] for i in items] == ["c01-b003", "c01-b003", "c02-b001"]
        assert len(json.loads(get(base + "/notifications?limit=1")[1])) == 1
        assert len(json.loads(get(base + "/notifications?status=resolved")[1])) == 1
        assert len(json.loads(get(base + "/notifications?alertname=Nope")[1])) == 0
        metrics = get(base + "/metrics")[1]
        assert "fleetmon_webhook_notifications_stored 3.0" in metrics
        assert 'fleetmon_webhook_notifications_total{status="firing"} 1.0' in metrics


def test_html_page_shows_alerts_escaped(tmp_path: Path) -> None:
    with Receiver(tmp_path, port=0).start() as r:
        base = f"http://127.0.0.1:{r.port}"
        payload = am_payload()
        payload["alerts"][0]["annotations"]["summary"] = "<script>alert(1)</script>"
        payload["alerts"][0]["annotations"]["runbook_url"] = "javascript:alert(1)"
        post(base + "/alerts", json.dumps(payload).encode())
        status, page = get(base + "/")
    assert status == 200
    assert "c01 / c01-b003 / heating / forecast" in page
    assert "ModelDataDrift" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page
    assert "javascript:" not in page  # only http(s) links are rendered
    assert "href='http://127.0.0.1:3000/d/fleetmon-model?var-building=c01-b003'" in page


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"status": "firing"}', "missing_field"),
        (json.dumps({**am_payload(), "status": "weird"}).encode(), "bad_status"),
        (json.dumps({**am_payload(), "alerts": [1, 2]}).encode(), "bad_alerts"),
        (json.dumps({**am_payload(), "alerts": [{"annotations": [1]}]}).encode(), "bad_alerts"),
        (json.dumps({**am_payload(), "alerts": [{"status": 1}]}).encode(), "bad_alerts"),
        (json.dumps({**am_payload(), "alerts": [{"labels": {"a": 1}}]}).encode(), "bad_alerts"),
        (json.dumps({**am_payload(), "alerts": [{"startsAt": "yesterday"}]}).encode(), "bad_alerts"),
        (json.dumps({**am_payload(), "groupLabels": None}).encode(), "bad_field"),
        (json.dumps({**am_payload(), "receiver": ["webhook"]}).encode(), "bad_field"),
        # a lone surrogate: valid JSON, but no Unicode text (the page could not be encoded)
        (json.dumps({**am_payload(), "receiver": "\ud800"}).encode(), "invalid_json"),
        (b"x" * (MAX_BODY_BYTES + 10), "too_large"),
    ],
)
def test_bad_input_is_rejected_counted_and_quarantined(tmp_path: Path, body: bytes, reason: str) -> None:
    with Receiver(tmp_path, port=0).start() as r:
        base = f"http://127.0.0.1:{r.port}"
        code, answer = post(base + "/alerts", body)
        assert (code, answer["error"]) == (400, reason)
        assert json.loads(get(base + "/notifications")[1]) == []
        assert f'fleetmon_webhook_rejected_total{{reason="{reason}"}} 1.0' in get(base + "/metrics")[1]
        # The receiver still works after bad input.
        assert post(base + "/alerts", json.dumps(am_payload()).encode())[0] == 200
    q = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == 1 and q[0]["reason"] == reason
    assert q[0]["body_bytes"] == len(body) and len(q[0]["body"]) <= 4096


def test_damaged_stored_line_is_quarantined_on_load(tmp_path: Path) -> None:
    good = json.dumps({"received_at": "2026-11-22T10:00:00.000Z", **am_payload()})
    (tmp_path / "notifications.jsonl").write_text(
        good + "\n" + '{"received_at": "2026-11-22T1' + "\n" + good + "\n"
    )
    with Receiver(tmp_path, port=0).start() as r:
        base = f"http://127.0.0.1:{r.port}"
        assert len(json.loads(get(base + "/notifications")[1])) == 2
        assert (
            'fleetmon_webhook_rejected_total{reason="corrupt_stored_line"} 1.0' in get(base + "/metrics")[1]
        )
    assert json.loads((tmp_path / "quarantine.jsonl").read_text())["reason"] == "corrupt_stored_line"


def test_stored_line_that_post_would_refuse_is_quarantined_on_load(tmp_path: Path) -> None:
    # e.g. stored by an older, laxer receiver: the page must still render
    bad = {"received_at": "2026-11-22T10:00:00.000Z", **am_payload(), "alerts": [{"annotations": [1]}]}
    good = {"received_at": "2026-11-22T10:01:00.000Z", **am_payload()}
    (tmp_path / "notifications.jsonl").write_text(json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    with Receiver(tmp_path, port=0).start() as r:
        base = f"http://127.0.0.1:{r.port}"
        assert len(json.loads(get(base + "/notifications")[1])) == 1
        assert get(base + "/")[0] == 200
    assert json.loads((tmp_path / "quarantine.jsonl").read_text())["reason"] == "corrupt_stored_line"


def test_metrics_pass_promtool(tmp_path: Path) -> None:
    with Receiver(tmp_path, port=0).start() as r:
        base = f"http://127.0.0.1:{r.port}"
        post(base + "/alerts", json.dumps(am_payload()).encode())
        text = get(base + "/metrics")[1]
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _write_config(tmp_path: Path, port: int) -> Path:
    cfg = tmp_path / "fleetmon.yml"
    cfg.write_text(f"stack:\n  webhook_port: {port}\n  data_dir: data\n")
    return cfg


def test_real_alertmanager_delivers_to_the_cli_receiver(tmp_path: Path) -> None:
    """`fleetmon webhook` as a process, fed by a real Alertmanager; SIGTERM stops it cleanly."""
    hook_port, am_port = free_port(), free_port()
    cfg = _write_config(tmp_path, hook_port)
    hook = spawn(
        [sys.executable, "-m", "fleetmon.cli", "webhook", "--config.file", str(cfg)], tmp_path / "hook.log"
    )
    am_cfg = tmp_path / "am.yml"
    am_cfg.write_text(
        "route:\n  receiver: hook\n  group_by: [customer, building, alertname]\n"
        "  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        f"receivers:\n- name: hook\n  webhook_configs:\n  - url: http://127.0.0.1:{hook_port}/alerts\n"
    )
    am = spawn(
        [
            "prometheus-alertmanager",
            f"--config.file={am_cfg}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "am.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{hook_port}/-/healthy", timeout=30, proc=hook)
        wait_for_http(f"http://127.0.0.1:{am_port}/-/ready", timeout=30, proc=am)
        alert = [{"labels": am_payload()["alerts"][0]["labels"], "annotations": {"summary": "drift"}}]
        req = urllib.request.Request(
            f"http://127.0.0.1:{am_port}/api/v2/alerts",
            data=json.dumps(alert).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        items: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not items:
            items = json.loads(get(f"http://127.0.0.1:{hook_port}/notifications")[1])
            time.sleep(0.3)
        assert items, "Alertmanager's notification never arrived"
        n = items[0]
        assert n["status"] == "firing" and n["receiver"] == "hook"
        assert n["groupLabels"] == {"customer": "c01", "building": "c01-b003", "alertname": "ModelDataDrift"}
    finally:
        stop_group(am)
        stop_group(hook)
    assert hook.returncode == 0  # SIGTERM is a clean stop
    stored = (tmp_path / "data" / "webhook" / "notifications.jsonl").read_text().splitlines()
    assert json.loads(stored[0])["alerts"][0]["labels"]["model"] == "forecast"


def test_a_body_that_never_arrives_is_hung_up_on_and_counted(tmp_path: Path) -> None:
    """A declared Content-Length whose body never comes must not hold a server thread forever."""
    import socket

    with Receiver(tmp_path, port=0, request_timeout=0.5).start() as r:
        with socket.create_connection(("127.0.0.1", r.port), timeout=10) as s:
            s.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            s.sendall(b'Content-Length: 1000\r\n\r\n{"version"')
            start = time.monotonic()
            assert s.recv(1024) == b""  # hung up on
            assert time.monotonic() - start < 5
        base = f"http://127.0.0.1:{r.port}"
        assert post(base + "/alerts", json.dumps(am_payload()).encode()) == (200, {"status": "stored"})
        _, text = get(base + "/metrics")
        assert 'fleetmon_webhook_rejected_total{reason="timeout"} 1.0' in text
