"""Records through the tailer, on real files: an over-long line split into Docker or CRI records costs one
too_long, in one poll, over several polls and across a restart, and the lines after it count normally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collectors.logformats import MAX_LINE
from collectors.logs import LogTailer
from fleetmon.config import LogsConfig

PIECE = 16 * 1024  # Docker's copier (moby daemon/logger/copier.go) and containerd's default line size
ROUTE = ("GET", "/api/v1/buildings/{id}/forecast", "200")


def access(i: int) -> str:
    return f'10.0.0.9 - - [22/Nov/2026:10:00:{i % 60:02d} +0000] "GET /api/v1/buildings/c01-b{i:03d}/forecast HTTP/1.1" 200 9 "-" "-"'


def words(n: int) -> str:
    return ("x " * (n // 2 + 1))[:n]


def docker_line(text: str, stream: str = "stdout") -> str:
    return json.dumps({"log": text, "stream": stream, "time": "2026-11-22T10:00:00.000000000Z"}) + "\n"


def cri_line(text: str, tag: str, stream: str = "stdout") -> str:
    return f"2026-11-22T10:00:00.000000000Z {stream} {tag} {text}\n"


def long_line(fmt: str, total: int) -> list[str]:
    """The physical records of one line of ``total`` characters, as Docker json-file or containerd write it."""
    n = -(-total // PIECE)
    last = total - PIECE * (n - 1)
    if fmt == "docker":
        return [docker_line(words(PIECE)) for _ in range(n - 1)] + [docker_line(words(last) + "\n")]
    return [cri_line(words(PIECE), "P") for _ in range(n - 1)] + [cri_line(words(last), "F")]


def normal(fmt: str, i: int) -> str:
    return docker_line(access(i) + "\n") if fmt == "docker" else cri_line(access(i), "F")


def cfg_for(tmp: Path) -> LogsConfig:
    return LogsConfig(
        apps={"api": [str(tmp / "logs" / "*.log")]},
        state_file=tmp / "state" / "positions.json",
        quarantine_file=tmp / "quarantine" / "logs.jsonl",
    )


def append(path: Path, records: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(records))


def quarantined_reasons(tmp: Path) -> list[str]:
    q = tmp / "quarantine" / "logs.jsonl"
    return [json.loads(x)["reason"] for x in q.read_text().splitlines()] if q.exists() else []


@pytest.fixture
def logfile(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs" / "app.log"


@pytest.mark.parametrize("total", [MAX_LINE + MAX_LINE // 2, 2 * MAX_LINE + MAX_LINE // 2])
@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_one_poll(tmp_path: Path, logfile: Path, fmt: str, total: int) -> None:
    append(logfile, [normal(fmt, 1), *long_line(fmt, total), normal(fmt, 2), normal(fmt, 3)])
    t = LogTailer(cfg_for(tmp_path))
    try:
        t.poll()
        st = t.stats["api"]
        assert st.rejected["too_long"] == 1
        assert sum(st.rejected.values()) == 1
        assert st.requests == {ROUTE: 3}
        assert quarantined_reasons(tmp_path) == ["too_long"]
    finally:
        t.close()


@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_chain_over_several_polls(tmp_path: Path, logfile: Path, fmt: str) -> None:
    chain = long_line(fmt, 2 * MAX_LINE + 5000)
    t = LogTailer(cfg_for(tmp_path))
    try:
        for start in range(0, len(chain), 40):  # the writer is slower than the reader
            append(logfile, chain[start : start + 40])
            t.poll()
        append(logfile, [normal(fmt, 1)])
        t.poll()
        st = t.stats["api"]
        assert st.rejected["too_long"] == 1
        assert st.requests == {ROUTE: 1}
        assert quarantined_reasons(tmp_path) == ["too_long"]
    finally:
        t.close()


@pytest.mark.parametrize("cut", [30, 100])  # before and after the chain crosses the limit
@pytest.mark.parametrize("fmt", ["docker", "cri"])
def test_chain_across_a_restart(tmp_path: Path, logfile: Path, fmt: str, cut: int) -> None:
    chain = long_line(fmt, 2 * MAX_LINE + 5000)
    append(logfile, chain[:cut])
    t = LogTailer(cfg_for(tmp_path))
    t.poll()  # saves positions and the pending chain
    t.close()
    append(logfile, [*chain[cut:], normal(fmt, 1), normal(fmt, 2)])
    t = LogTailer(cfg_for(tmp_path))
    try:
        t.poll()
        st = t.stats["api"]
        assert st.rejected["too_long"] == 1
        assert sum(st.rejected.values()) == 1
        assert st.requests == {ROUTE: 2}
    finally:
        t.close()
