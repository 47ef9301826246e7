"""Following real log files: growth, rotation, truncation, restarts, bad lines and the quarantine file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collectors.logformats import MAX_LINE
from collectors.logs import LogsCollector, LogTailer
from fleetmon.config import Config, LogsConfig, PlatformConfig

ACCESS = '10.0.0.7 - - [22/Nov/2026:10:00:{s:02d} +0000] "GET /api/v1/buildings/c01-b{b:03d}/forecast HTTP/1.1" {status} 512 "-" "python-requests/2.32"'


def docker_access(i: int, status: int = 200) -> str:
    line = ACCESS.format(s=i % 60, b=i % 7, status=status)
    return (
        json.dumps({"log": line + "\n", "stream": "stdout", "time": "2026-11-22T10:00:00.000000000Z"}) + "\n"
    )


def cfg_for(tmp: Path, apps: dict[str, list[str]] | None = None, **kw: object) -> LogsConfig:
    return LogsConfig(
        apps=apps or {"gateway": [str(tmp / "logs" / "gateway" / "*.log")]},
        state_file=tmp / "state" / "positions.json",
        quarantine_file=tmp / "quarantine" / "logs.jsonl",
        **kw,  # type: ignore[arg-type]
    )


def requests_total(t: LogTailer, app: str = "gateway") -> int:
    return sum(t.stats[app].requests.values())


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "logs" / "gateway"
    d.mkdir(parents=True)
    return d


def append(path: Path, text: str | bytes) -> None:
    with open(path, "ab") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def run(cfg: LogsConfig) -> LogTailer:
    t = LogTailer(cfg)
    t.poll()
    return t


def test_follows_growth_and_waits_for_an_unfinished_line(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, "".join(docker_access(i) for i in range(10)))
    t = run(cfg_for(tmp_path))
    try:
        assert requests_total(t) == 10
        half = docker_access(10)
        append(f, half[:20])
        t.poll()
        assert requests_total(t) == 10  # the unfinished line waits ...
        append(f, half[20:] + docker_access(11))
        t.poll()
        assert requests_total(t) == 12  # ... and is counted once complete
        assert t.stats["gateway"].rejected["partial_line"] == 0
        assert t.stats["gateway"].bytes == f.stat().st_size
    finally:
        t.close()


def test_rotation_by_rename_reads_the_rest_of_the_old_file(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, "".join(docker_access(i) for i in range(5)))
    t = run(cfg_for(tmp_path))
    try:
        # the writer still appends to the old file after the rename, then reopens
        f.rename(logdir / "app.log.1")
        append(logdir / "app.log.1", docker_access(5) + docker_access(6))
        append(f, docker_access(7))
        t.poll()
        assert requests_total(t) == 8
        assert t.stats["gateway"].rotations == 1
        t.poll()  # nothing more in the rotated file: it is closed
        assert len(t.files) == 1
        append(f, docker_access(8))
        t.poll()
        assert requests_total(t) == 9
    finally:
        t.close()


def test_rotation_then_delete_still_reads_to_the_end(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, docker_access(0))
    t = run(cfg_for(tmp_path))
    try:
        append(f, docker_access(1) + docker_access(2))
        f.unlink()  # e.g. docker's max-file removed it; we still hold it open
        t.poll()
        assert requests_total(t) == 3
    finally:
        t.close()


def test_copytruncate_restarts_at_zero_and_counters_only_go_up(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, "".join(docker_access(i) for i in range(20)))
    t = run(cfg_for(tmp_path))
    try:
        assert requests_total(t) == 20
        shutil.copy(f, logdir / "app.log.1")  # copytruncate: copy (not matched by the glob) ...
        with open(f, "r+b") as fh:
            fh.truncate(0)  # ... then truncate in place
        append(f, docker_access(0, status=500) + docker_access(1))
        t.poll()
        assert requests_total(t) == 22
        assert t.stats["gateway"].truncations == 1
        # truncated and refilled past the old position before we looked: the fingerprint notices
        with open(f, "r+b") as fh:
            fh.truncate(0)
        append(f, "".join(docker_access(i, status=201) for i in range(40)))
        t.poll()
        assert requests_total(t) == 62
        assert t.stats["gateway"].truncations == 2
    finally:
        t.close()


def test_restart_neither_recounts_nor_skips(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    g = logdir / "other.log"
    append(f, "".join(docker_access(i) for i in range(30)) + docker_access(30)[:15])
    append(g, "".join(docker_access(i, status=503) for i in range(4)))
    cfg = cfg_for(tmp_path)
    t = run(cfg)
    before = dict(t.stats["gateway"].requests)
    t.close()
    assert sum(before.values()) == 34
    # while we are down: the unfinished line completes, more lines arrive, other.log is rotated away
    append(f, docker_access(30)[15:] + docker_access(31))
    append(g, docker_access(4, status=503))
    g.rename(logdir / "other.log.1")
    t2 = run(cfg)
    try:
        assert requests_total(t2) == 37
        assert t2.stats["gateway"].last_error  # restored from the state file
        assert sum(v for (m, r, s), v in t2.stats["gateway"].requests.items() if s == "503") == 5
        t2.poll()
        assert requests_total(t2) == 37
    finally:
        t2.close()


def test_replaced_file_with_same_path_is_read_from_the_start_after_restart(
    tmp_path: Path, logdir: Path
) -> None:
    f = logdir / "app.log"
    append(f, "".join(docker_access(i) for i in range(10)))
    cfg = cfg_for(tmp_path)
    run(cfg).close()
    f.unlink()
    append(f, "".join(docker_access(i, status=404) for i in range(3)))
    t = run(cfg)
    try:
        assert requests_total(t) == 13
    finally:
        t.close()


def test_bad_lines_are_counted_and_sampled_to_quarantine_with_a_rate_limit(
    tmp_path: Path, logdir: Path
) -> None:
    f = logdir / "app.log"
    huge = b"z" * (MAX_LINE + 5000)
    append(f, docker_access(0))
    append(f, b"2026-11-22T10:00:00.123456789Z stdout X broken\n" * 300)  # a CRI record with a bad tag
    append(f, b"\x00\x01garbage\xff\n")
    append(f, b'{"log": "broken\n')
    append(f, huge + b"\n")
    append(f, docker_access(1))
    t = run(cfg_for(tmp_path))
    try:
        st = t.stats["gateway"]
        assert requests_total(t) == 2  # lines after the huge one are read
        assert st.rejected["unknown_format"] == 300
        assert st.rejected["binary"] == 1
        assert st.rejected["invalid_json"] == 1
        assert st.rejected["too_long"] == 1
        assert st.quarantined["unknown_format"] == 10  # the burst allowance, not 300
        samples = [json.loads(x) for x in (tmp_path / "quarantine" / "logs.jsonl").read_text().splitlines()]
        assert len(samples) == 13
        by_reason = {s["reason"]: s for s in samples}
        assert set(by_reason) == {"unknown_format", "binary", "invalid_json", "too_long"}
        s = by_reason["too_long"]
        assert s["app"] == "gateway" and s["file"] == str(f) and len(s["line"]) <= 1024
        with open(f, "rb") as fh:
            fh.seek(s["offset"])
            assert fh.read(10) == b"z" * 10
        with open(f, "rb") as fh:
            fh.seek(by_reason["binary"]["offset"])
            assert fh.read(3) == b"\x00\x01g"
    finally:
        t.close()


def test_huge_line_being_written_is_skipped_in_bounded_memory(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, docker_access(0) + "x" * (3 * MAX_LINE))  # no newline yet
    t = run(cfg_for(tmp_path))
    try:
        assert t.stats["gateway"].rejected["too_long"] == 1
        append(f, "x" * 1000 + "\n" + docker_access(1))
        t.poll()
        assert requests_total(t) == 2
        assert t.stats["gateway"].rejected["too_long"] == 1
        assert t.stats["gateway"].bytes == f.stat().st_size
    finally:
        t.close()


def test_unfinished_last_line_of_a_rotated_file_is_a_partial_line(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, docker_access(0) + docker_access(1)[:30])
    t = run(cfg_for(tmp_path))
    try:
        f.rename(logdir / "app.log.old")
        t.poll()
        t.poll()
        assert t.stats["gateway"].rejected["partial_line"] == 1
        assert not t.files
    finally:
        t.close()


def scrape(t: LogTailer, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample of the tailer's exposition (through LogsCollector.collect)."""
    coll = LogsCollector(Config(platform=PlatformConfig(logs=t.cfg)))
    coll.tailer.close()
    coll.tailer = t
    reg = CollectorRegistry(auto_describe=False)
    reg.register(coll)
    return reg.get_sample_value(name, labels or {})


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40] + b"\x00garbage")  # torn in the middle, as a bad disk leaves it


def test_a_corrupt_state_file_is_set_aside_counted_and_the_previous_generation_used(
    tmp_path: Path, logdir: Path
) -> None:
    f = logdir / "app.log"
    cfg = cfg_for(tmp_path)
    append(f, "".join(docker_access(i) for i in range(10)))
    t = run(cfg)
    append(f, "".join(docker_access(i) for i in range(10, 15)))
    t.poll()  # second save: the first one is kept as positions.prev.json
    t.close()
    assert cfg.state_file.with_name("positions.prev.json").exists()
    corrupt(cfg.state_file)
    append(f, "".join(docker_access(i) for i in range(15, 18)))
    t = run(cfg)
    try:
        assert requests_total(t) == 18  # every line written, each counted once
        assert t.stats["gateway"].bytes == f.stat().st_size
        assert t.state_errors == {"corrupt": 1, "unreadable": 0, "save": 0}
        assert scrape(t, "fleetmon_logs_state_errors_total", {"reason": "corrupt"}) == 1
        (aside,) = cfg.state_file.parent.glob("positions.json.corrupt-*")  # kept for an operator
        assert aside.read_bytes().endswith(b"\x00garbage")
        assert json.loads(cfg.state_file.read_text())["version"] == 1  # a good file in its place
    finally:
        t.close()


def test_with_no_usable_state_files_are_taken_up_at_their_end_not_counted_twice(
    tmp_path: Path, logdir: Path
) -> None:
    f = logdir / "app.log"
    cfg = cfg_for(tmp_path)
    append(f, "".join(docker_access(i) for i in range(10)))
    t = run(cfg)
    append(f, "".join(docker_access(i) for i in range(10, 15)))
    t.poll()
    t.close()
    corrupt(cfg.state_file)
    corrupt(cfg.state_file.with_name("positions.prev.json"))
    half = docker_access(15)
    append(f, half[:30])  # the writer is inside a line when the exporter restarts
    t = run(cfg)
    try:
        # Counters restart at 0 (a counter reset for rate()); the 15 lines before are not counted again.
        assert requests_total(t) == 0
        assert t.state_errors["corrupt"] == 1
        assert scrape(t, "fleetmon_logs_state_errors_total", {"reason": "corrupt"}) == 1
        append(f, half[30:] + docker_access(16) + docker_access(17))
        (logdir / "new.log").write_text(docker_access(18))  # a file first seen later is read from its start
        t.poll()
        assert requests_total(t) == 3  # 16, 17 and the new file's line; the rest of 15 skipped, not rejected
        assert sum(t.stats["gateway"].rejected.values()) == 0
        # total over the restart: 15 before + 3 after = 18 of the 19 lines written, none counted twice
    finally:
        t.close()
    t = run(cfg)  # the next restart continues normally
    try:
        assert requests_total(t) == 3 and t.state_errors["corrupt"] == 0
    finally:
        t.close()


def test_a_state_file_nested_too_deep_is_corrupt_not_raised(tmp_path: Path, logdir: Path) -> None:
    append(logdir / "app.log", docker_access(0))
    cfg = cfg_for(tmp_path)
    cfg.state_file.parent.mkdir(parents=True)
    cfg.state_file.write_bytes(b"[" * 100_000)  # json.loads raises RecursionError, not ValueError
    t = run(cfg)
    try:
        assert t.state_errors["corrupt"] == 1 and requests_total(t) == 0
    finally:
        t.close()


def test_an_unreadable_state_file_is_counted(tmp_path: Path, logdir: Path) -> None:
    append(logdir / "app.log", docker_access(0))
    cfg = cfg_for(tmp_path)
    cfg.state_file.mkdir(parents=True)  # reading it fails with EISDIR (as with EACCES or EIO)
    t = run(cfg)
    try:
        assert t.state_errors["unreadable"] == 1 and requests_total(t) == 0  # taken up at the end
        assert t.state_errors["save"] >= 1  # a directory cannot be replaced by the file: counted, not raised
    finally:
        t.close()


def test_a_state_save_killed_midway_leaves_the_previous_file(
    tmp_path: Path, logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = logdir / "app.log"
    cfg = cfg_for(tmp_path)
    append(f, "".join(docker_access(i) for i in range(10)))
    t = run(cfg)
    before = cfg.state_file.read_bytes()
    append(f, "".join(docker_access(i) for i in range(10, 15)))

    def fail(fd: int) -> None:  # the save dies after writing, before the rename (as kill -9 would)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fail)
    t.poll()  # does not raise: counted, and kept dirty to be saved again
    assert t.state_errors["save"] == 2  # after the pass and at the end of the poll
    assert cfg.state_file.read_bytes() == before  # the last complete file, untouched
    assert not cfg.state_file.with_name("positions.json.tmp").exists()  # no partial file left behind
    monkeypatch.undo()
    t2 = LogTailer(cfg)  # a crash now: the last complete file, 10 lines, positions after them
    t2.poll()
    try:
        assert requests_total(t2) == 15 and t2.state_errors["corrupt"] == 0
    finally:
        t2.close()
        t.close()


BAD = b"2026-11-22T10:00:00.123456789Z stdout X " + b"y" * 1000 + b"\n"  # unknown_format, a 1 KB sample


def samples_in(cfg: LogsConfig) -> int:
    q = cfg.quarantine_file
    lines = q.read_text().splitlines() if q.exists() else []
    assert all(json.loads(x)["reason"] == "unknown_format" for x in lines)  # whole samples only
    return len(lines)


def test_quarantine_samples_count_only_once_written(
    tmp_path: Path, logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = logdir / "app.log"
    cfg = cfg_for(tmp_path)
    append(f, BAD * 4)
    real_write = os.write
    calls = []

    def disk_full(fd: int, data: bytes) -> int:  # the disk fills up in the middle of the samples
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:1500]))  # a short write: one sample and a half
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    t = run(cfg)  # must not raise
    monkeypatch.undo()
    try:
        st = t.stats["gateway"]
        assert st.rejected["unknown_format"] == 4  # the lines stay counted as rejected ...
        # ... the whole sample that fit is in the file and counted, the rest are dropped, not counted
        assert st.quarantined["unknown_format"] == 1 == samples_in(cfg)
        assert t.quarantine.write_errors == 1
        assert scrape(t, "fleetmon_logs_quarantine_write_errors_total") == 1
        append(f, BAD * 3)  # space is back
        t.poll()
        assert st.quarantined["unknown_format"] == 4 == samples_in(cfg)
    finally:
        t.close()
    t = run(cfg)  # both counters survive a restart
    try:
        assert t.quarantine.write_errors == 1 and t.stats["gateway"].quarantined["unknown_format"] == 4
    finally:
        t.close()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "tmpfs"
    d.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_quarantine_on_a_full_disk_counts_what_is_in_the_file_and_recovers(
    tmp_path: Path, logdir: Path, tiny_tmpfs: Path
) -> None:
    f = logdir / "app.log"
    cfg = cfg_for(tmp_path)
    cfg.quarantine_file = tiny_tmpfs / "logs.jsonl"
    filler = tiny_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk but for about 4 KB: a few samples fit, not ten
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - 4096)
    append(f, BAD * 10)
    t = run(cfg)
    try:
        st = t.stats["gateway"]
        assert st.rejected["unknown_format"] == 10
        assert 0 < st.quarantined["unknown_format"] == samples_in(cfg) < 10  # what fit, no partial sample
        assert t.quarantine.write_errors == 1
        filler.unlink()  # space is back: the next samples are written and counted
        t.quarantine.burst = t.quarantine.rate = 1e9  # no rate limit in the way
        append(f, BAD * 10)
        t.poll()
        assert st.quarantined["unknown_format"] == samples_in(cfg) >= 10
    finally:
        t.close()


DEMO_SYSTEM = [
    {"Reason": "ReplicaCount", "Type": "Normal", "Replicas": 2},
    {
        "Reason": "ReplicaUnhealthy",
        "Type": "Warning",
        "Log": "Readiness probe failed: HTTP probe failed with statuscode: 503",
    },
    {"Reason": "BackoffLimitExceeded", "Type": "Warning", "Log": "Back-off restarting failed container"},
    {"Reason": "ReplicaCount", "Type": "Normal", "Replicas": 4},
    {"Reason": "MemoryUsage", "Type": "Normal", "WorkingSetBytes": 805306368, "LimitBytes": 1073741824},
]


def test_exposition_shows_5xx_burst_and_unhealthy_replicas_and_passes_promtool(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for d in ("gateway", "system", "training-processor"):
        (logs / d).mkdir(parents=True)
    append(logs / "gateway" / "c1.log", "".join(docker_access(i) for i in range(50)))
    append(logs / "gateway" / "c1.log", "".join(docker_access(i, status=503) for i in range(25)))
    for rec in DEMO_SYSTEM:
        base = {
            "TimeGenerated": "2026-11-22T10:05:00.000Z",
            "ContainerAppName": "model-serving",
            "RevisionName": "model-serving--r3",
            "ReplicaName": "model-serving--r3-7f9d-abcde",
            "Log": "",
            "Count": 1,
        }
        append(logs / "system" / "containerapps.jsonl", json.dumps({**base, **rec}) + "\n")
    append(
        logs / "training-processor" / "0.log",
        "2026-11-22T10:00:00.1Z stdout F 2026-11-22 10:00:00,100 INFO [p] Received message 7\n"
        "2026-11-22T10:00:01.1Z stderr F 2026-11-22 10:00:01,100 ERROR [p] Failed to process message 7: "
        "requests.exceptions.Timeout: read timed out\n",
    )
    apps = {
        "gateway": [str(logs / "gateway" / "*.log")],
        "model-serving": [str(logs / "model-serving" / "*.log")],
        "training-processor": [str(logs / "training-processor" / "*.log")],
        "system": [str(logs / "system" / "*.jsonl")],
    }
    cfg = Config(platform=PlatformConfig(logs=cfg_for(tmp_path, apps=apps)))
    coll = LogsCollector(cfg)
    try:
        coll.poll()
        reg = CollectorRegistry(auto_describe=False)
        reg.register(coll)  # type: ignore[arg-type]
        route = "/api/v1/buildings/{id}/forecast"
        lb = {"app": "gateway", "method": "GET", "route": route}
        assert reg.get_sample_value("fleetmon_http_requests_total", {**lb, "status": "503"}) == 25
        assert reg.get_sample_value("fleetmon_http_requests_total", {**lb, "status": "200"}) == 50
        assert (
            reg.get_sample_value("fleetmon_http_last_error_timestamp_seconds", {**lb, "status": "503"})
            > 1.7e9
        )
        ev = {"app": "model-serving", "event_type": "Warning"}
        assert (
            reg.get_sample_value("fleetmon_platform_events_total", {**ev, "reason": "ReplicaUnhealthy"}) == 1
        )
        assert (
            reg.get_sample_value("fleetmon_platform_events_total", {**ev, "reason": "BackoffLimitExceeded"})
            == 1
        )
        assert reg.get_sample_value("fleetmon_app_replicas", {"app": "model-serving"}) == 4
        assert reg.get_sample_value("fleetmon_app_replicas_max", {"app": "model-serving"}) == 4
        assert (
            reg.get_sample_value("fleetmon_app_memory_utilization_max_ratio", {"app": "model-serving"})
            == 0.75
        )
        tp = {"app": "training-processor"}
        assert reg.get_sample_value("fleetmon_training_events_total", {**tp, "kind": "received"}) == 1
        assert reg.get_sample_value("fleetmon_training_events_total", {**tp, "kind": "failed"}) == 1
        assert (
            reg.get_sample_value(
                "fleetmon_app_errors_total", {**tp, "error_type": "requests.exceptions.Timeout"}
            )
            == 1
        )
        assert (
            reg.get_sample_value("fleetmon_logs_lines_total", {"app": "system", "format": "azure_system"})
            == 5
        )
        assert (
            reg.get_sample_value("fleetmon_logs_rejected_lines_total", {"app": "gateway", "reason": "binary"})
            == 0
        )
        assert reg.get_sample_value("fleetmon_logs_files", {"app": "gateway"}) == 1
        assert reg.get_sample_value("fleetmon_logs_unread_bytes", {"app": "gateway"}) == 0
        text = generate_latest(reg)
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool not installed")
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    finally:
        coll.close()


def test_disabled_or_empty_logs_config_exports_nothing(tmp_path: Path) -> None:
    coll = LogsCollector(Config(platform=PlatformConfig(logs=cfg_for(tmp_path, enabled=False))))
    try:
        coll.poll()
        assert list(coll.collect()) == []
        assert not os.path.exists(tmp_path / "state")
    finally:
        coll.close()


# A start-up banner with no timestamp (Spring Boot's, say): longer than the head fingerprint, the same
# at every start, so only what follows it tells one run of the app from the next.
BANNER = "".join(
    f"  .   ____          _            __ _ _  line {i:02d} of the banner, {'=' * 20}\n" for i in range(6)
)
PLAIN = '10.0.0.7 - - [22/Nov/2026:{h:02d}:{m:02d}:{s:02d} +0000] "GET /api/v1/x HTTP/1.1" {status} 512 "-" "curl/8.5"\n'


def plain_run(hour: int, n: int, status: int) -> str:
    return BANNER + "".join(PLAIN.format(h=hour, m=i // 60, s=i % 60, status=status) for i in range(n))


def requests_by_status(t: LogTailer, status: str, app: str = "gateway") -> int:
    return sum(v for (m, r, s), v in t.stats[app].requests.items() if s == status)


def test_truncated_in_place_and_refilled_past_the_offset_with_the_same_banner(
    tmp_path: Path, logdir: Path
) -> None:
    # The app restarts with `> app.log` and writes the same banner, and more than before, before we look:
    # size and head are those of a file that only grew.
    f = logdir / "app.log"
    append(f, plain_run(10, 10, 200))
    assert len(BANNER) > 256
    t = run(cfg_for(tmp_path))
    try:
        assert requests_by_status(t, "200") == 10
        with open(f, "r+b") as fh:
            fh.truncate(0)
        append(f, plain_run(11, 25, 503))
        t.poll()
        assert requests_by_status(t, "503") == 25  # every line of the new run, none skipped
        assert requests_by_status(t, "200") == 10
        assert t.stats["gateway"].truncations == 1
        # the size did not drop: what lay before the old position is reported as read again
        assert t.stats["gateway"].reread_bytes == len(plain_run(10, 10, 200))
        t.poll()
        assert requests_total(t) == 35
    finally:
        t.close()


def test_truncated_in_place_while_the_exporter_was_down(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, plain_run(10, 10, 200))
    cfg = cfg_for(tmp_path)
    run(cfg).close()
    with open(f, "r+b") as fh:
        fh.truncate(0)
    append(f, plain_run(11, 25, 503))
    t = run(cfg)
    try:
        assert requests_by_status(t, "503") == 25
        assert requests_by_status(t, "200") == 10
        assert t.stats["gateway"].truncations == 1
    finally:
        t.close()


def test_growth_alone_is_not_taken_for_truncation(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "app.log"
    append(f, plain_run(10, 10, 200))
    cfg = cfg_for(tmp_path)
    t = run(cfg)
    try:
        for k in range(5):
            append(f, "".join(PLAIN.format(h=12, m=k, s=i, status=201) for i in range(7)))
            t.poll()
        assert t.stats["gateway"].truncations == 0
        assert requests_total(t) == 45
    finally:
        t.close()
    append(f, PLAIN.format(h=13, m=0, s=0, status=201))
    t = run(cfg)
    try:
        assert t.stats["gateway"].truncations == 0
        assert requests_total(t) == 46
    finally:
        t.close()


# ---------------------------------------------------------------------------- JSON array documents
def console_row(i: int, status: int = 200) -> dict[str, str]:
    line = ACCESS.format(s=i % 60, b=i % 7, status=status)
    return {
        "ContainerAppName": "gateway",
        "Log": line,
        "Stream": "stdout",
        "TimeGenerated": "2026-11-22T10:00:00Z",
    }


def indented(rows: list[dict[str, str]]) -> str:
    # as `az ... -o json` prints: an indented array, "[" and "]" alone on their lines
    return json.dumps(rows, indent=2, sort_keys=True) + "\n"


def test_an_indented_json_array_document_is_read_element_by_element(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "export.log"
    append(f, docker_access(0))
    doc = indented([console_row(i, 503 if i % 2 else 200) for i in range(6)])
    half = len(doc) // 2
    append(f, doc[:half])  # the writer is not done yet
    t = run(cfg_for(tmp_path))
    try:
        assert requests_total(t) == 1
        append(f, doc[half:])
        append(f, docker_access(1))
        t.poll()
        assert requests_total(t) == 8
        assert requests_by_status(t, "503") == 3
        assert t.stats["gateway"].lines.get("azure_console") == 6
        assert sum(t.stats["gateway"].rejected.values()) == 0
        t.poll()
        assert requests_total(t) == 8
    finally:
        t.close()


def test_a_document_left_incomplete_across_a_restart_is_counted_once(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "export.json"
    cfg = cfg_for(tmp_path, apps={"gateway": [str(logdir / "*.json")]})
    doc = indented([console_row(i) for i in range(4)])
    append(f, doc[:-10])
    run(cfg).close()
    append(f, doc[-10:])
    append(f, json.dumps([console_row(9)]) + "\n")  # a compact array on one line
    t = run(cfg)
    try:
        assert requests_total(t) == 5
        assert sum(t.stats["gateway"].rejected.values()) == 0
    finally:
        t.close()


def test_bad_documents_are_rejected_once_with_a_reason(tmp_path: Path, logdir: Path) -> None:
    f = logdir / "export.log"
    append(f, '[\n  {"ContainerAppName": "gateway", "Log": "x",\n]\n')  # not JSON
    append(f, indented([console_row(0)]).replace("{", '"not an object",\n  {', 1))  # a string element
    # lines that start with "[" but open no document: gunicorn's error log, a bracketed timestamp
    append(f, "[2026-11-22 10:00:00 +0000] [1] [INFO] Starting gunicorn 23.0.0\n")
    append(f, docker_access(1))
    t = run(cfg_for(tmp_path))
    try:
        st = t.stats["gateway"]
        assert st.rejected["invalid_json"] == 1
        assert st.rejected["invalid_record"] == 1
        assert requests_total(t) == 2  # the object of the second document and the last line
        samples = [json.loads(x) for x in (tmp_path / "quarantine" / "logs.jsonl").read_text().splitlines()]
        assert {s["reason"] for s in samples} >= {"invalid_json", "invalid_record"}
    finally:
        t.close()


def test_a_document_over_the_size_limit_is_rejected_once_and_skipped(
    tmp_path: Path, logdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collectors.logs as logs_mod

    monkeypatch.setattr(logs_mod, "DOC_MAX", 4096)
    monkeypatch.setattr(logs_mod, "CHUNK", 1024)  # the skip crosses several reads
    f = logdir / "export.log"
    append(f, indented([console_row(i) for i in range(100)]))
    append(f, docker_access(1))
    append(f, indented([console_row(i) for i in range(3)]))
    t = run(cfg_for(tmp_path))
    try:
        st = t.stats["gateway"]
        assert st.rejected["too_long"] == 1
        assert requests_total(t) == 4
        assert sum(st.rejected.values()) == 1
    finally:
        t.close()


def test_a_whole_az_query_file_counts_as_its_rows_one_per_line(tmp_path: Path) -> None:
    # `az monitor log-analytics query -o json > rows.json`: the fixture's rows as the CLI writes the file
    # (an indented array); the tailer must count exactly what it counts for the same rows one per line.
    fixture = Path(__file__).parent / "fixtures" / "logs" / "azure" / "loganalytics_query_strings.jsonl"
    rows = [json.loads(x) for x in fixture.read_text().splitlines() if x.strip()]
    d = tmp_path / "logs"
    d.mkdir()
    (d / "lines.jsonl").write_text(fixture.read_text())
    (d / "whole.json").write_text(json.dumps(rows, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    results = {}
    for name in ("lines.jsonl", "whole.json"):
        cfg = LogsConfig(
            apps={"gateway": [str(d / name)], "training-processor": [], "model-serving": [], "api": []},
            state_file=tmp_path / name / "state.json",
            quarantine_file=tmp_path / name / "q.jsonl",
        )
        t = run(cfg)
        try:
            results[name] = {a: s.to_state() for a, s in t.stats.items()}
        finally:
            t.close()
    lines, whole = results["lines.jsonl"], results["whole.json"]
    for app in lines:
        for key in ("requests", "errors", "training", "events", "lines", "rejected"):
            assert whole[app][key] == lines[app][key], (app, key)
    assert whole["gateway"]["requests"] and whole["gateway"]["rejected"] == lines["gateway"]["rejected"]
