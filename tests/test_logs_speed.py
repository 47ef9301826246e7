"""The parser's fast paths give what the straightforward code they replace gives, on the same inputs."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from collectors import applines
from collectors.applines import (
    DURATION_KEYS,
    EXC_WORD_RE,
    MAX_ROUTE_LEN,
    OTHER,
    LineClassifier,
    _dotted_start,
    _has_exception_suffix,
    _segment,
    _word_char,
    exception_name,
    normalize_route,
    tail_duration,
    to_seconds,
)
from collectors.logs import LogTailer
from collectors.logstats import AppStats
from fleetmon.config import LogsConfig

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# --------------------------------------------------------------------------- the straightforward versions
def slow_segment(s: str) -> str:
    """``_segment`` as it was: the hash test last, a regex for it."""
    if not s or (len(s) <= 40 and not re.search(r"\d", s)):
        return s
    if s.isdecimal():
        return "{num}"
    if len(s) == 36 and _UUID.fullmatch(s):
        return "{uuid}"
    if ("." in s or "," in s) and re.fullmatch(r"\d+(?:[.,]\d+)?", s):
        return "{num}"
    if s[0] in "vV" and re.fullmatch(r"[vV]\d+(?:\.\d+)*", s):
        return s
    if len(s) >= 7 and not s.isalpha() and re.fullmatch(r"[0-9a-f]+|[0-9A-F]+", s):
        return "{hash}"
    return "{id}"


def slow_route(path: str) -> str:
    """``normalize_route`` without caches: every segment of the path in turn."""
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return OTHER
    route = "/".join(slow_segment(s) for s in path.split("/"))
    return route if len(route) <= MAX_ROUTE_LEN else route[:MAX_ROUTE_LEN] + "..."


def slow_exception_name(text: str) -> str | None:
    """``exception_name`` with finditer, as it was."""
    start, end = -1, -1
    for m in EXC_WORD_RE.finditer(text) if _has_exception_suffix(text) else ():
        i = m.start()
        if i and _word_char(text[i - 1]):
            continue
        if i and text[i - 1] == ".":
            i = _dotted_start(text, i, False)
            if i < 0:
                continue
        start, end = i, m.end()
        break
    if "." in text:
        d = applines.DOTTED_CAP_RE.search(text)
        while d is not None and (start < 0 or d.start() < start):
            i = _dotted_start(text, d.start() + 1, True)
            if i >= 0 and (start < 0 or i < start):
                start, end = i, d.end()
                break
            d = applines.DOTTED_CAP_RE.search(text, d.end())
    return text[start:end][: applines.MAX_ERROR_TYPE_LEN] if start >= 0 else None


def slow_tail_duration(tail: str) -> float | None:
    t = tail.split()
    if len(t) == 1:
        v = t[0]
        if v.isdigit():
            return int(v) * 1e-6
        return to_seconds(v, 1.0) if "." in v else None
    if len(t) >= 3 and t[0].isdigit() and t[2][:1] == "[":
        return to_seconds(t[1], 1.0)
    return None


def same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


# ------------------------------------------------------------------------------------------------ inputs
SEGMENTS = [
    "",
    "api",
    "v1",
    "v2.1",
    "V3",
    "vx1",
    "c01-b003",
    "run-17",
    "2026-11-22",
    "42",
    "3.14",
    "1,5",
    "1.2.3",
    "deadbeef",
    "DEADBEEF",
    "deadBEEF",
    "0123abc",
    "0123ABC",
    "abc0123",
    "abc012",
    "0a1b2c3d4e5f",
    "\u0661\u0662\u0663",
    "a\u0663bcdefg",
    "f" * 40,
    "f" * 41,
    "1" * 50,
    "9b2c1f0-1111-4a5b-9c8d-0e1f2a3b4c5d",
    "d9b2c1f0-1111-4a5b-9c8d-0e1f2a3b4c5d",
    "D9B2C1F0-1111-4A5B-9C8D-0E1F2A3B4C5D",
    "x" * 70 + "1",
    "buildings",
    "forecast",
    "c01.c01-b042.heating.forecast",
    "%20",
    "a b",
    "ééé1",
]


def random_segment(rng: random.Random) -> str:
    alphabet = rng.choice(
        ("0123456789abcdef", "0123456789ABCDEF", "0123456789", "abcxyz-_.,", "vV0123.", "\u0663é-a1")
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 45)))


def paths(n: int = 3000) -> list[str]:
    rng = random.Random(5)
    out = [
        "/",
        "//",
        "/a/",
        "*",
        "",
        "a/b",
        "/x?y=1/2",
        "/x#frag/1",
        "/a/1?b#c",
        "http://h/x/1",
        "https://h",
        "/" + "/".join(["seg"] * 80),
        "/" + "/".join(["123"] * 60) + "/deadbeef00",
    ]
    for _ in range(n):
        segs = [
            rng.choice(SEGMENTS) if rng.random() < 0.6 else random_segment(rng)
            for _ in range(rng.randint(0, 6))
        ]
        out.append(
            ("/" if rng.random() < 0.95 else "") + "/".join(segs) + rng.choice(("", "", "?q=1", "#x", "/"))
        )
    return out


# ------------------------------------------------------------------------------------------------- tests
def test_segments_are_templated_as_before() -> None:
    rng = random.Random(3)
    for s in SEGMENTS + [random_segment(rng) for _ in range(5000)]:
        assert _segment(s) == slow_segment(s), s


def test_routes_with_their_caches_are_the_routes_without() -> None:
    applines._segment_cache.clear()
    applines._prefix_cache.clear()
    for _ in range(2):  # cold, then from the caches
        for p in paths():
            assert normalize_route(p) == slow_route(p), p


def test_routes_stay_right_when_the_caches_are_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    small: dict[str, str] = {}
    monkeypatch.setattr(applines, "_prefix_cache", small)
    for i, p in enumerate(paths(500)):
        if i % 7 == 0:
            small.clear()
            applines._segment_cache.clear()
        assert normalize_route(p) == slow_route(p), p


def test_exception_names_are_found_as_before() -> None:
    texts = [
        "lookup failed: KeyError: 'c01-b042'",
        "fooKeyError then ValueError",
        "x.y.ZError: no",
        "a.b.C: boom",
        "psycopg2.errors.UniqueViolation: dup",
        "com.example.FooService - started",
        "fooError barError BazError",
        "KeyErrorX KeyError",
        "Error",
        "an Error occurred",
        "java.lang.IllegalStateException",
        "...Error",
        "scoring failed",
        "o.s.b.SpringApplication : Application run failed",
        "TimeoutError.",
        ".KeyError",
        "a.KeyError b",
        "1.KeyError",
        "_x.TimeoutError: t",
        "SystemExit KeyboardInterrupt",
        "CustomFault!",
    ]
    rng = random.Random(9)
    words = ["Error", "Key", "foo", ".", " ", ":", "a.b", "Exception", "X", "_", "1", "Timeout", "Fault", "é"]
    texts += ["".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(5000)]
    for t in texts:
        assert exception_name(t) == slow_exception_name(t), t


def test_request_times_after_the_user_agent_are_read_as_before() -> None:
    tails = [
        " 0.152",
        " 0.026202",
        " 1523",
        " -",
        "",
        " 0.5s",
        " 1.5ms",
        " 0.010, 0.002",
        " 1e5",
        " 1.5e3",
        " inf",
        " nan",
        " -0.5",
        " -0.0",
        " 1_0.5",
        " .5",
        " 5.",
        " 0.1.2",
        " 812 0.004 [up] x",
        " 12 0.5s [a]",
        " 0.1 0.2",
        " \u0663.\u0665",
        " 0.1\t",
        "\u00a00.3",
    ]
    for t in tails:
        assert same_float(tail_duration(t), slow_tail_duration(t)), t


def test_a_records_duration_is_the_first_named_in_order() -> None:
    c = LineClassifier()
    for keys in (
        [],
        ["duration_ms"],
        ["latency_ms", "duration"],
        ["upstream_response_time", "request_time"],
        ["duration_ns", "duration_us", "elapsed_ms"],
        ["duration_s", "duration"],
    ):
        for empty in (None, "", "-"):
            rec: dict[str, object] = {"method": "GET", "path": "/x", "status": 200}
            for i, k in enumerate(keys):
                rec[k] = empty if i == 0 and len(keys) > 1 else 2
            st = AppStats()
            assert c._record(st, rec)
            expected = None
            for k, factor in DURATION_KEYS:
                v = rec.get(k)
                if v is not None and v != "" and v != "-":
                    expected = to_seconds(v, factor)
                    break
            total = sum(st.latency_sum.values()) if st.latency_sum else None
            assert same_float(total, expected), (keys, empty)


def test_lines_are_split_the_same_at_block_edges(tmp_path: Path) -> None:
    """Blank lines (first, last, in a row), a CRLF line and a document, read through BytesIO."""
    log = tmp_path / "app.log"
    access = '10.0.0.1 - - [22/Nov/2026:10:00:00 +0000] "GET /a/1 HTTP/1.1" 200 5 "-" "ua"'
    doc = json.dumps([{"log": access + "\n", "stream": "stdout"}], indent=1)
    log.write_bytes(f"\n{access}\n\n\n{access}\r\n{doc}\n{access}\n\n".encode())
    cfg = LogsConfig(
        apps={"gateway": [str(log)]}, state_file=tmp_path / "s.json", quarantine_file=tmp_path / "q.jsonl"
    )
    t = LogTailer(cfg)
    try:
        t.poll()
        st = t.stats["gateway"]
        assert st.lines == {"plain": 4, "access": 3, "docker": 1}
        assert sum(st.requests.values()) == 4
        assert st.bytes == log.stat().st_size
    finally:
        t.close()
