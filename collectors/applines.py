"""The application line inside a wrapper (or a bare line) -> requests, latencies, errors and training events.

``LineParser`` (``collectors/logformats.py``) takes a physical line apart (Docker, CRI, Azure records) and
hands the application's own text to ``LineClassifier.classify``. What is recognised (``docs/formats.md``,
"Container logs", is the reference; every shape has a fixture under ``tests/fixtures/logs/``):

- access lines as servers write them -> a request by method, route template and status, and its duration
  when the line carries one: the combined log format (nginx ``combined``, gunicorn's default, with
  ``$request_time`` / ``%(L)s`` / ``%(D)s`` appended, ingress-nginx's ``upstreaminfo``), uvicorn's (also
  coloured, also through gunicorn's ``UvicornWorker``), JSON objects with method, path and status (nginx
  ``escape=json``, model servers) and logfmt lines with the same fields;
- application log records -> an error when their level is an error level: text lines (Python logging,
  Spring Boot, gunicorn, uvicorn, anything with an upper-case level word), JSON and logfmt records
  (lower-case levels too), each typed by ``error_code=NAME``, an explicit type field, the exception of a
  traceback or stack trace, or an exception class in the message;
- multi-line Python tracebacks and Java stack traces -> joined with the ERROR line before them into ONE
  error, typed by the exception (Python: the last exception line; Java: the first line of the trace);
- ``Received message`` / ``Training job finished`` / ``Failed to process`` -> a training event.

An error-level line that names its type (``error_code=NAME``, an exception class) is counted at once; one
that does not (``logger.exception("lookup failed")``, Spring's ``Application run failed``) waits for the
traceback or stack trace that usually follows it, which types it. Lines of a traceback cannot be judged
alone, so the state between lines of one stream lives in ``ps.context[stream]`` (persisted by the tailer):
a short string ``<kind><counted><error type>``:

- kind ``e``: an error-level (or warning) line was seen, a traceback or stack trace may follow;
  ``t``: inside a Python traceback (after ``Traceback (most recent call last):``);
  ``x``: after a Python exception line, a chained traceback may follow;
  ``c``: after a chain message (``During handling of the above exception ...``), its traceback follows;
  ``j``: inside a Java stack trace;
- counted ``1``: the error is already counted (or is not one: a WARNING line's traceback), the state only
  absorbs the rest of its lines so they are not counted again; ``0``: it is counted when the structure
  ends, typed by its exception.

A structure ends at the first line that is not part of it (that line is then read as usual), when
``settle`` is called (the reader is at the end of what was written: ``e``, ``x`` and ``j`` states, which may
be complete, are counted; a state is forgotten at the next ``settle``), or in ``flush`` (the file is
closed). At most ``MAX_CONTEXT`` streams are kept per file. Routes and error types are capped per app
(the rest ``other``).
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
import time
import weakref
from bisect import bisect_left
from typing import Any

import msgspec

from collectors.logstats import LATENCY_BUCKETS, OTHER, AppStats, PartialState, bump

TRAINING_PHRASES = (
    ("Received message", "received"),
    ("Training job finished", "finished"),
    ("Failed to process", "failed"),
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
_METHODS = {m: m for m in HTTP_METHODS}
MAX_ROUTE_LEN = 200
MAX_ERROR_TYPE_LEN = 100
MAX_CONTEXT = 256  # streams with a traceback in progress kept per file (the oldest is counted and dropped)

# Combined / common log format (nginx ``combined``, gunicorn's default ``access_log_format``, ingress-nginx).
# The request line may be "-" (nginx, on a bad request). What follows the quoted referer and user agent
# (``$request_time``, gunicorn's ``%(L)s``/``%(D)s``, ingress-nginx's upstream fields) is read by
# ``tail_duration``, only when the line does not end with the user agent's quote (the common case costs
# nothing more than the match).
ACCESS_RE = re.compile(
    r'\S+ \S+ \S+ \[([^\]]+)\] "(?:([A-Za-z]+) (\S+)(?: [^"]*)?|[^"]*)" (\d{3}) (?:\d+|-)'
)
# Uvicorn's access lines: ``INFO:     10.0.4.7:51234 - "GET /x HTTP/1.1" 200 OK`` (its AccessFormatter), or
# without the level prefix and the reason phrase through gunicorn's UvicornWorker (``%(message)s``:
# ``10.0.4.7:51234 - "GET /x HTTP/1.1" 200``). The client may be empty (no ``scope["client"]``).
UVICORN_RE = re.compile(
    r'(?:(?:TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+)?(?:\S+:\d+ )?- "([A-Za-z]+) (\S+) HTTP/[0-9.]+" (\d{3})\b'
)
ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colours of a container with a TTY (uvicorn, Spring)
# The first level word of a text line decides its level (so "INFO ... ERROR rate" is not an error). No
# leading \b: a pattern that starts with its alternatives' first letters is searched much faster; the left
# word boundary is checked by hand (``level_word``).
LEVEL_RE = re.compile(r"(?:TRACE|DEBUG|INFO|NOTICE|WARN(?:ING)?|ERROR|CRITICAL|FATAL)\b")
ERROR_WORDS = frozenset({"ERROR", "CRITICAL", "FATAL"})
ERROR_CODE_RE = re.compile(r"error_code=([A-Za-z0-9_.:\-]{1,64})")
# An exception class (``exception_name``): a (dotted) CamelCase name ending like Python's exception classes,
# or a dotted module path ending in a CamelCase name directly followed by ":" or the end
# (``psycopg2.errors.UniqueViolation:``) -- not a logger name such as ``com.example.FooService -`` or
# ``o.s.b.SpringApplication :``. Found by the CamelCase word (a fast, prefixed search), its dotted prefix
# added afterwards.
EXC_SUFFIXES = ("Error", "Exception", "Exit", "Interrupt", "Timeout", "Failure", "Fault")
EXC_WORD_RE = re.compile(r"[A-Z]\w*(?:" + "|".join(EXC_SUFFIXES) + r")\b")
DOTTED_CAP_RE = re.compile(r"\.[A-Z]\w*+(?=:|$)")
_PREFIX_RE = re.compile(r"(?<![\w.])(?:[A-Za-z_]\w*\.)+$")
_LOWER_PREFIX_RE = re.compile(r"(?<![\w.])(?:[a-z_]\w*\.)+$")
TB_HEADER = "Traceback (most recent call last):"
TB_CHAIN = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
# The exception line that ends a Python traceback: a (dotted) name at column 0, then ": message" or nothing.
PY_EXC_RE = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::(?: |$)|$)")
# The first line of a Java stack trace: a fully qualified class name (``java.lang.IllegalStateException:``),
# or the JVM's own ``Exception in thread "main" java.lang...``.
JAVA_EXC_RE = re.compile(
    r'(?:Exception in thread "[^"]*" )?((?:[A-Za-z_$][\w$]*\.)+[A-Z][\w$]*)(?::(?: |$)|$)'
)
JAVA_CONT = ("Caused by: ", "Wrapped by: ")  # col-0 lines of a trace; frames start with a tab
LOGFMT_PAIR_RE = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|\S*)')
GO_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UPSTREAMS_RE = re.compile(r"\s*,\s*|\s+:\s+")

# Field names read from JSON / logfmt records (first present wins). Durations carry their unit in the name;
# ``upstream_response_time`` (nginx, "0.010, 0.002" for several upstreams: summed) only without the others.
METHOD_KEYS = ("method", "request_method", "http_method", "http.request.method", "verb")
PATH_KEYS = ("route", "path", "request_uri", "uri", "url", "request_path", "url.path", "target")
STATUS_KEYS = (  # each name contains "status": classify reads a logfmt line for a request only if it does
    "status",
    "status_code",
    "statusCode",
    "http_status",
    "response_status",
    "http.response.status_code",
)
DURATION_KEYS = (
    ("request_time", 1.0),
    ("duration_s", 1.0),
    ("duration_seconds", 1.0),
    ("elapsed_s", 1.0),
    ("latency_s", 1.0),
    ("duration", 1.0),
    ("duration_ms", 1e-3),
    ("latency_ms", 1e-3),
    ("elapsed_ms", 1e-3),
    ("response_time_ms", 1e-3),
    ("duration_us", 1e-6),
    ("latency_us", 1e-6),
    ("elapsed_us", 1e-6),
    ("duration_ns", 1e-9),
    ("event.duration", 1e-9),  # ECS: nanoseconds
    ("upstream_response_time", 1.0),
)
LEVEL_KEYS = ("level", "levelname", "severity", "log.level", "lvl", "loglevel", "log_level", "level_name")
ERROR_LEVELS = frozenset(  # "eror" and "crit": log15's four-letter levels
    {"error", "err", "eror", "fatal", "critical", "crit", "alert", "emerg", "emergency", "panic", "severe"}
)
# The error levels no other one contains ("err" for "error"): a text that contains none of them, in lower
# case, names no error level.
_ERROR_LEVEL_STEMS = tuple(sorted(w for w in ERROR_LEVELS if not any(o != w and o in w for o in ERROR_LEVELS)))
MESSAGE_KEYS = ("message", "msg", "event", "full_message")
TYPE_KEYS = (
    "error.type",
    "exception.type",
    "exc_type",
    "error_type",
    "exception_type",
    "exception_class",
    "error_class",
    "_error_type",
)
TRACE_KEYS = (
    "exc_info",
    "exception",
    "stack_trace",
    "stacktrace",
    "stack",
    "traceback",
    "exc_text",
    "error.stack_trace",
    "exception.stacktrace",
)
TIME_KEYS = ("time", "timestamp", "@timestamp", "ts", "time_iso8601", "time_local", "msec", "asctime")
# The same names as sets: most records have none of a group's keys, which one isdisjoint() over the record's
# keys tells faster than looking each name up in turn.
_STATUS_KEYSET = frozenset(STATUS_KEYS)
_DURATION_KEYSET = frozenset(k for k, _ in DURATION_KEYS)
_DURATION_NAMES = tuple(k for k, _ in DURATION_KEYS)
_DURATION_FACTORS = dict(DURATION_KEYS)
_ERROR_DETAIL_KEYSET = frozenset((*TYPE_KEYS, "error", "exception", "err", *TRACE_KEYS))

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX_RE = re.compile(r"[0-9a-f]+|[0-9A-F]+")  # one case only: a hash is lower- or upper-case hex
_NUM_RE = re.compile(r"\d+(?:[.,]\d+)?")
_VERSION_RE = re.compile(r"[vV]\d+(?:\.\d+)*")
_DIGIT_RE = re.compile(r"\d")
# segment -> what it becomes: most segments (api, v1, buildings, c01-b003) recur across paths that differ
# in one id, so only the new segment of a path not seen before costs a regex
_segment_cache: dict[str, str] = {}
_prefix_cache: dict[str, str] = {}  # what precedes a path's last segment -> its template
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_decode_json = msgspec.json.Decoder().decode
# isinstance() with a tuple: `int | float` in a function builds a new union object at every call
_NUMBER = (int, float)
_STR_OR_INT = (str, int)


# ------------------------------------------------------------------------------------------- helpers
def normalize_route(path: str) -> str:
    """A route template: query dropped, ids / uuids / hashes / numbers replaced (``/runs/{id}``)."""
    if "://" in path:  # absolute-form request target (proxies)
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if "?" in path or "#" in path:  # most paths have neither: no split, no new string
        path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return OTHER  # "*", garbage
    # Paths that differ only in their last segment (/jobs/<uuid>) share the template of what precedes it.
    head, _, last = path.rpartition("/")
    prefix = _prefix_cache.get(head)
    if prefix is None:
        cache = _segment_cache
        prefix = "/".join([t if (t := cache.get(s)) is not None else _new_segment(s) for s in head.split("/")])
        if len(head) <= 256:
            if len(_prefix_cache) >= 10_000:
                _prefix_cache.clear()
            _prefix_cache[head] = prefix
    t = _segment_cache.get(last)
    route = prefix + "/" + (t if t is not None else _new_segment(last))
    return route if len(route) <= MAX_ROUTE_LEN else route[:MAX_ROUTE_LEN] + "..."


def _new_segment(s: str) -> str:
    """``_segment`` of a segment not in the cache, cached if it may recur."""
    t = _segment(s)
    # hashes and uuids seldom recur (a path with one is cached whole by the classifier): kept out so they do
    # not crowd out the segments that do (api, v1, c01-b003); nor a megabyte of garbage
    if len(s) <= 64 and t != "{hash}" and t != "{uuid}":
        if len(_segment_cache) >= 10_000:
            _segment_cache.clear()
        _segment_cache[s] = t
    return t


def _segment(s: str) -> str:
    """What one path segment becomes in a route template: ``{uuid}``, ``{num}``, ``{hash}``, ``{id}`` or itself.

    The four shapes cannot overlap, so each is tested only where it can match (a regex call costs more than
    these guards): a uuid has 36 characters, a number with a separator has one, a version starts with v, a hash
    (7 or more hex digits of one case, with a digit and a letter) is hex but not all digits."""
    if len(s) >= 7 and _HEX_RE.fullmatch(s) and not s.isalpha() and not s.isdecimal():
        return "{hash}"  # tested first: new segments are mostly ids, and a hash can be nothing else below
    if not s or (len(s) <= 40 and not _DIGIT_RE.search(s)):
        return s  # plain words stay
    if s.isdecimal():  # what \d+ matches
        return "{num}"
    if len(s) == 36 and _UUID_RE.fullmatch(s):
        return "{uuid}"
    if ("." in s or "," in s) and _NUM_RE.fullmatch(s):
        return "{num}"
    if s[0] in "vV" and _VERSION_RE.fullmatch(s):
        return s  # /v1/, /v2.1/
    return "{id}"  # anything else with a digit (c01-b003, run-17, 2026-11-22) or very long


def clf_time(s: str) -> float | None:
    """``22/Nov/2026:10:00:00 +0000`` -> unix time (hand-parsed: strptime is slow and locale-bound)."""
    try:
        day, mon, year = int(s[0:2]), _MONTHS[s[3:6]], int(s[7:11])
        hh, mm, ss = int(s[12:14]), int(s[15:17]), int(s[18:20])
        ts = calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0))
        tz = s[21:26]
        if tz:
            sign = -1 if tz[0] == "-" else 1
            ts -= sign * (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60)
        return float(ts)
    except (KeyError, ValueError, IndexError):
        return None


def iso_time(s: str | None) -> float | None:
    """ISO 8601 text -> unix time (UTC when it names no zone); None if it is no such time."""
    if not s:
        return None
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def record_time(v: Any) -> float | None:
    """A record's time: epoch seconds (or ms / µs / ns, told apart by size), ISO 8601 or CLF text."""
    if isinstance(v, str):
        if v[2:3] == "/":  # nginx $time_local
            return clf_time(v)
        if ":" in v:  # ISO 8601 with a time of day: no number (and float() raising costs more than this)
            return iso_time(v)
        try:
            v = float(v)  # nginx $msec, epochs written as text
        except ValueError:
            return iso_time(v)
    if isinstance(v, bool) or not isinstance(v, _NUMBER) or not math.isfinite(v) or v <= 0:
        return None
    while v > 1e11:  # ms (pino), µs, ns since the epoch
        v /= 1000.0
    return float(v)


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _dotted_start(text: str, i: int, lower: bool) -> int:
    """Where the dotted prefix of the name at ``i`` (``text[i - 1] == "."``) starts; -1 if it is not one."""
    chunk = text[:i].rsplit(None, 1)[-1]
    m = (_LOWER_PREFIX_RE if lower else _PREFIX_RE).search(chunk)
    return -1 if m is None else i - len(chunk) + m.start()


def _has_exception_suffix(text: str) -> bool:
    for suffix in EXC_SUFFIXES:
        if suffix in text:
            return True
    return False


def exception_name(text: str) -> str | None:
    """The leftmost exception class named in ``text`` (see ``EXC_WORD_RE``), or None."""
    start, end = -1, -1
    # EXC_WORD_RE backtracks at every capitalised word: substring tests first rule most messages out
    m = EXC_WORD_RE.search(text) if _has_exception_suffix(text) else None
    while m is not None:  # (a search loop: the first match is most often the one, no finditer to set up)
        i = m.start()
        if i and _word_char(text[i - 1]):
            i = -1  # inside a word ("fooKeyError")
        elif i and text[i - 1] == ".":
            i = _dotted_start(text, i, False)
        if i >= 0:
            start, end = i, m.end()
            break
        m = EXC_WORD_RE.search(text, m.end())
    if "." in text:
        d = DOTTED_CAP_RE.search(text)
        while d is not None and (start < 0 or d.start() < start):
            i = _dotted_start(text, d.start() + 1, True)
            if i >= 0 and (start < 0 or i < start):
                start, end = i, d.end()
                break
            d = DOTTED_CAP_RE.search(text, d.end())
    return text[start:end][:MAX_ERROR_TYPE_LEN] if start >= 0 else None


def level_word(msg: str) -> re.Match[str] | None:
    """The first level word (a whole word) in the first 160 characters of a text line."""
    m = LEVEL_RE.search(msg, 0, 160)
    while m is not None and m.start() and _word_char(msg[m.start() - 1]):
        m = LEVEL_RE.search(msg, m.end(), 160)
    return m


def error_type(msg: str, level_end: int) -> str:
    """The error's type: ``error_code=NAME`` if present, else the exception class, else ``unknown``."""
    rest = msg[level_end:]
    if "error_code=" in rest:
        m = ERROR_CODE_RE.search(rest)
        if m and (m.start() == 0 or not _word_char(rest[m.start() - 1])):
            return m.group(1)
    if rest[:1] == ":" and rest[1:2] not in (" ", ""):  # "ERROR:logger.name:message" (logging.basicConfig)
        rest = rest[1:].partition(":")[2]
    rest = rest.lstrip()
    if rest.startswith("["):  # skip the "[module]" of "ERROR [module] ..."
        rest = rest.partition("]")[2]
    return exception_name(rest) or "unknown"


def trace_type(text: str) -> str | None:
    """The exception of a formatted traceback or stack trace (Python: the last one raised; Java: the first)."""
    last = None
    if TB_HEADER in text:
        in_tb = False
        for line in text.split("\n"):
            if line.startswith(TB_HEADER):
                in_tb = True
            elif in_tb and line and line[0] not in " \t":
                m = PY_EXC_RE.match(line)
                if m is not None:
                    last = m.group(1)
                in_tb = False
        if last:
            return last[:MAX_ERROR_TYPE_LEN]
    first = text.lstrip().partition("\n")[0]
    j = JAVA_EXC_RE.match(first)
    if j is not None:
        return j.group(1)[:MAX_ERROR_TYPE_LEN]
    return exception_name(first)


def to_seconds(v: Any, factor: float) -> float | None:
    """A duration in the unit ``factor`` (seconds per unit): a number, a numeric string or a Go duration."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        v = v.strip()
        if "," in v or " : " in v:  # nginx: one value per upstream tried ("0.010, 0.002", "0.010 : 0.002")
            total = 0.0
            for part in _UPSTREAMS_RE.split(v):
                d = to_seconds(part, factor)
                if d is None:
                    return None
                total += d
            return total
        try:
            x = float(v) * factor
        except ValueError:
            m = GO_DURATION_RE.fullmatch(v)  # "12.7ms", "1.5s" (Go, logfmt, GCP "latency": "0.012s")
            if m is None:
                return None
            x = float(m.group(1)) * _GO_UNITS[m.group(2)]
    elif isinstance(v, _NUMBER):
        x = v * factor
    else:
        return None
    return x if math.isfinite(x) and x >= 0 else None


def combined_duration(msg: str, end: int) -> float | None:
    """The request time in what follows the user agent of a combined line matched up to ``end``."""
    if msg[end : end + 2] != ' "':
        return None  # common log format: no referer, no user agent
    q = msg.rfind('"')  # the user agent's closing quote (nginx escapes quotes inside fields as \x22)
    if q <= end + 1:
        return None
    return tail_duration(msg[q + 1 :])


def tail_duration(tail: str) -> float | None:
    """The request time in what follows a combined line's user agent (see ``docs/formats.md``)."""
    t = tail.split()
    if len(t) == 1:  # nginx $request_time, gunicorn %(L)s: decimal seconds; gunicorn %(D)s: integer µs
        v = t[0]
        if v.isdigit():
            return int(v) * 1e-6
        if "." not in v:
            return None
        if "," not in v:  # to_seconds inlined for the common case: one decimal number
            try:
                x = float(v)
            except ValueError:
                return to_seconds(v, 1.0)  # a Go duration ("0.5s")
            return x if math.isfinite(x) and x >= 0 else None
        return to_seconds(v, 1.0)
    if len(t) >= 3 and t[0].isdigit() and t[2][:1] == "[":  # ingress-nginx: $request_length $request_time [
        return to_seconds(t[1], 1.0)
    return None


def may_name_error_level(s: str) -> bool:
    """False if no value in ``s`` can be an error level (``_is_error_level``): none of them is in it."""
    low = s.lower()  # a level value is compared in lower case; lower() maps it to the same letters here
    for stem in _ERROR_LEVEL_STEMS:
        if stem in low:
            return True
    return False


def parse_logfmt(s: str) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for k, v in LOGFMT_PAIR_RE.findall(s):
        if v[:1] == '"':
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        rec.setdefault(k, v)
    return rec


def _first(rec: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = rec.get(k)
        if v is not None and v != "":
            return v
    return None


def _status(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int) and 100 <= v <= 599:
        return str(v)
    if isinstance(v, str) and len(v) == 3 and v.isdigit() and "1" <= v[0] <= "5":
        return v
    return None


def _is_error_level(v: Any) -> bool:
    if isinstance(v, str):
        return v.lower() in ERROR_LEVELS
    if isinstance(v, _NUMBER) and not isinstance(v, bool):
        return v >= 50  # pino / bunyan: 50 error, 60 fatal (40 is their warn)
    return False


def _level(rec: dict[str, Any]) -> Any:
    lv = rec.get("level")  # the usual name (LEVEL_KEYS[0]): looked up alone first
    if lv is None or lv == "":
        lv = _first(rec, LEVEL_KEYS)
    if lv is None:
        log = rec.get("log")  # ECS nested: {"log": {"level": "ERROR", "logger": ...}} (Spring Boot ecs)
        if isinstance(log, dict):
            lv = log.get("level")
    return lv


def record_error_type(rec: dict[str, Any]) -> str:
    """The type of an error record (JSON / logfmt), rules in ``docs/formats.md``."""
    code = rec.get("error_code")
    if isinstance(code, _STR_OR_INT) and not isinstance(code, bool) and code != "":
        return str(code)[:64]
    msg = _first(rec, MESSAGE_KEYS)
    msg = msg if isinstance(msg, str) else ""
    m = ERROR_CODE_RE.search(msg) if "error_code=" in msg else None
    if m:
        return m.group(1)
    if _ERROR_DETAIL_KEYSET.isdisjoint(rec):  # the common case: only the message can tell
        return exception_name(msg) or "unknown"
    t = _first(rec, TYPE_KEYS)
    if isinstance(t, str):
        return t[:MAX_ERROR_TYPE_LEN]
    for k in ("error", "exception", "err"):  # nested ECS / OpenTelemetry objects
        v = rec.get(k)
        if isinstance(v, dict):
            t = v.get("type") or v.get("exc_type") or v.get("class")
            if isinstance(t, str) and t:
                return t[:MAX_ERROR_TYPE_LEN]
            s = v.get("stack_trace") or v.get("stacktrace")
            if isinstance(s, str):
                name = trace_type(s)
                if name:
                    return name
    for k in TRACE_KEYS:
        v = rec.get(k)
        if isinstance(v, list) and v:  # traceback.format_exception() lines, or structlog's dict tracebacks
            if isinstance(v[0], dict):  # the first stack is the exception raised
                t = v[0].get("exc_type")
                if isinstance(t, str) and t:
                    return t[:MAX_ERROR_TYPE_LEN]
                continue
            # lines (python-json-logger's exc_info_as_array, traceback.format_exception())
            v = "\n".join(x.rstrip("\n") for x in v if isinstance(x, str))
        if isinstance(v, str) and v:
            name = trace_type(v)
            if name:
                return name
    for k in ("error", "err"):  # a message ("context deadline exceeded") or a formatted traceback
        v = rec.get(k)
        if isinstance(v, str):
            name = trace_type(v)
            if name:
                return name
    return exception_name(msg) or "unknown"


def _looks_like_broken_record(s: str) -> bool:
    """A bare line that is a piece of a wrapper record: its content cannot be trusted (see docs)."""
    if len(s) > 20 and s[4] == "-" and s[10] == "T" and s.split(" ", 2)[1:2] in (["stdout"], ["stderr"]):
        return True  # a CRI record whose tag is neither F nor P (or cut after the stream)
    t = s.strip()
    if t in ("{", "}", "},", "[", "]", "],"):
        return True
    if '":' in t and (t[0] == '"' or (t.endswith(("}", "},")) and t.count("}") > t.count("{"))):
        return True  # the tail of a JSON object cut in two, or one pretty-printed over several lines
    return False


# ------------------------------------------------------------------------------------------ classifier
class LineClassifier:
    """Counts what one application line means into an app's ``AppStats``."""

    def __init__(self, max_routes: int = 100, max_error_types: int = 50) -> None:
        self.max_routes = max_routes
        self.max_error_types = max_error_types
        self._route_cache: dict[str, str] = {}
        self._clf_cache: dict[str, float | None] = {}
        # which app a stream's pending error belongs to (Azure console files mix apps); runtime only: after
        # a restart a restored state counts for the app the tailer passes to settle/flush
        self._owners: weakref.WeakKeyDictionary[PartialState, dict[str, AppStats]] = (
            weakref.WeakKeyDictionary()
        )

    # ------------------------------------------------------------------------------- entry points
    def bare(self, st: AppStats, s: str, ps: PartialState | None = None) -> str | None:
        """A text line with no wrapper: an access line, a plain application line, or a rejection reason."""
        if '] "' in s:  # the combined format, inlined as in classify
            m = ACCESS_RE.match(s)
            if m is not None:
                duration = combined_duration(s, m.end()) if s[-1] != '"' else None
                clf, method, path, status = m.groups()
                self._count_request(st, method, path, status, clf, None, duration)
                lines = st.lines
                lines["access"] = lines.get("access", 0) + 1
                return None
        if s[:1] == "\x1b":
            s = ANSI_RE.sub("", s)
        if ' - "' in s and self._access(st, s):
            bump(st.lines, "access")
            return None
        # inside a traceback a line may look like anything (a source line "    return {"a": 1}")
        state = ps.context.get("plain", "") if ps is not None else ""
        if state[:1] not in ("t", "j") and _looks_like_broken_record(s):
            return "unknown_format"
        bump(st.lines, "plain")
        self.classify(st, s, ps, "plain")
        return None

    def bare_json(self, st: AppStats, s: str, ps: PartialState | None = None) -> str | None:
        """A bare JSON object that is no wrapper record: an application's JSON line, or a rejection reason."""
        try:
            rec = _decode_json(s)
        # RecursionError: msgspec gives up at Python's recursion limit (JSON ~1000 deep, a 2 KB line)
        except (msgspec.DecodeError, RecursionError):
            return "invalid_json"
        if not isinstance(rec, dict):
            return "invalid_record"
        return self.bare_record(st, rec, s)

    def bare_record(self, st: AppStats, rec: dict[str, Any], s: str) -> str | None:
        """``bare_json`` of the line ``s`` already decoded to ``rec`` (the parser decodes it once)."""
        if not self._record(st, rec):
            if _level(rec) is None and _first(rec, MESSAGE_KEYS) is None:
                return "invalid_record"  # neither a request nor a log record: nothing to read in it
            self._training(st, s)
        bump(st.lines, "json")
        return None

    # The hot path: one flat function, cheap substring tests before any regex.
    def classify(self, st: AppStats, msg: str, ps: PartialState | None = None, stream: str = "") -> None:
        """One application line. ``ps.context`` keeps what spans lines of one ``stream`` of a file."""
        if '] "' in msg:  # the combined format first: most access lines (never coloured, never a trace)
            m = ACCESS_RE.match(msg)
            if m is not None:
                duration = combined_duration(msg, m.end()) if msg[-1] != '"' else None
                clf, method, path, status = m.groups()
                self._count_request(st, method, path, status, clf, None, duration)
                return
        c0 = msg[:1]
        if c0 == "\x1b":  # a TTY's colours (uvicorn, Spring Boot, colorlog) start the line
            msg = ANSI_RE.sub("", msg)
            c0 = msg[:1]
        if ps is not None and ps.context:
            state = ps.context.get(stream)
            if state is not None and self._continues(st, msg, ps, stream, state):
                return
        if c0 == "{":
            try:
                rec = _decode_json(msg)
            except (msgspec.DecodeError, RecursionError):  # too deep: msgspec stops at the recursion limit
                rec = None
            if isinstance(rec, dict):
                if not self._record(st, rec):
                    self._training(st, msg)
                return
        elif ' - "' in msg:
            u = UVICORN_RE.match(msg)
            if u is not None:
                self._count_request(st, u.group(1), u.group(2), u.group(3), None, None, None)
                return
        if c0.isalpha():
            if c0 in "TE" and ps is not None:
                if msg.startswith(TB_HEADER):  # an uncaught exception, printed by the interpreter
                    self._start(st, ps, stream, "t0unknown")
                    return
                if msg.startswith('Exception in thread "'):  # the JVM's uncaught exception
                    j = JAVA_EXC_RE.match(msg)
                    if j is not None:
                        self._start(st, ps, stream, "j0" + j.group(1)[:MAX_ERROR_TYPE_LEN])
                        return
            eq = msg.find("=", 1, 40)
            if eq > 0 and " " not in msg[:eq]:  # logfmt: "time=... level=error msg=..."
                # only a status (a request) or an error level makes a record count: a line that has neither
                # word in it is not parsed (its regex costs more than the rest of the line)
                if ("status" in msg or may_name_error_level(msg)) and self._record(st, parse_logfmt(msg)):
                    return
                self._training(st, msg)
                return
        if "ERROR" in msg or "CRITICAL" in msg or "FATAL" in msg or "WARN" in msg:
            lm = level_word(msg)
            if lm is not None:
                level = lm.group()
                if level in ERROR_WORDS:
                    end = lm.end()
                    if " --- [" in msg:  # Spring Boot: the type only from the message, after the logger
                        i = msg.find(" : ", end)
                        if i > 0:
                            end = i + 3
                    etype = error_type(msg, end)
                    if etype != "unknown" or ps is None:
                        self._error(st, etype)
                        if ps is not None:  # a traceback after it is the same error
                            self._start(st, ps, stream, "e1")
                    else:  # typed by the traceback / stack trace that usually follows
                        self._start(st, ps, stream, "e0unknown")
                elif level[0] == "W" and ps is not None:  # a warning's traceback is no error
                    self._start(st, ps, stream, "e1")
        if "Received message" in msg or "Training job finished" in msg or "Failed to process" in msg:
            for phrase, kind in TRAINING_PHRASES:
                if phrase in msg:
                    st.training[kind] += 1
                    break

    def settle(self, st: AppStats, ps: PartialState) -> None:
        """The reader is at the end of what was written so far: count the errors that may be complete.

        An ERROR line with no traceback after it, a traceback after its exception line, a Java stack
        trace: counted now, and their state kept until the next ``settle`` to absorb a late continuation
        (a traceback written across two reads) without counting it again. A traceback cut before its
        exception line waits for its end (or ``flush``)."""
        ctx = ps.context
        if not ctx:
            return
        owners = self._owners.get(ps) or {}
        for key, state in list(ctx.items()):
            if state[1] == "1":
                del ctx[key]
            elif state[0] in "exj":
                self._error(owners.get(key, st), state[2:])
                ctx[key] = state[0] + "1" + state[2:]

    def flush(self, st: AppStats, ps: PartialState) -> None:
        """The file ``ps`` belongs to is closed: count what its streams' context still holds."""
        owners = self._owners.pop(ps, None) or {}
        for key, state in ps.context.items():
            if state[1] == "0":
                self._error(owners.get(key, st), state[2:])
        ps.context.clear()

    # ------------------------------------------------------------------------------- access lines
    def _access(self, st: AppStats, msg: str) -> bool:
        if '] "' in msg:
            m = ACCESS_RE.match(msg)
            if m is not None:
                duration = combined_duration(msg, m.end()) if msg[-1] != '"' else None
                clf, method, path, status = m.groups()
                self._count_request(st, method, path, status, clf, None, duration)
                return True
        if ' - "' in msg:
            u = UVICORN_RE.match(msg)
            if u is not None:
                self._count_request(st, u.group(1), u.group(2), u.group(3), None, None, None)
                return True
        return False

    def _record(self, st: AppStats, rec: dict[str, Any]) -> bool:
        """A JSON or logfmt record: a request (returns True), or a log record counted if it is an error."""
        status = None if _STATUS_KEYSET.isdisjoint(rec) else _status(_first(rec, STATUS_KEYS))
        if status is not None:
            method, path = _first(rec, METHOD_KEYS), _first(rec, PATH_KEYS)
            is_request = isinstance(method, str) and isinstance(path, str)
            if not is_request:
                method = path = None
                request = rec.get("request")  # nginx $request: "GET /x HTTP/1.1"
                if isinstance(request, str):
                    is_request = True  # unreadable (a TLS handshake sent to a plain port): OTHER, other
                    parts = request.split(" ")
                    if len(parts) >= 2 and parts[0].isalpha():
                        method, path = parts[0], parts[1]
            if is_request:  # a status alone is no request
                duration = None
                present = _DURATION_KEYSET.intersection(rec)
                if present:
                    # the first of DURATION_KEYS with a value; most records have one such key: no loop
                    for key in present if len(present) == 1 else _DURATION_NAMES:
                        v = rec.get(key)
                        if v is not None and v != "" and v != "-":
                            duration = to_seconds(v, _DURATION_FACTORS[key])
                            break
                ts = record_time(_first(rec, TIME_KEYS)) if status[0] in "45" else None
                self._count_request(st, method, path, status, None, ts, duration)
                return True
        if _is_error_level(_level(rec)):
            self._error(st, record_error_type(rec))
        return False

    def _count_request(
        self,
        st: AppStats,
        method: str | None,
        path: str | None,
        status: str,
        clf: str | None,
        ts: float | None,
        duration: float | None,
    ) -> None:
        if method is None or path is None:
            method, route = "OTHER", OTHER
        else:
            known = _METHODS.get(method)  # the common case: already upper case, no new string
            if known is None:
                known = method.upper()
                if known not in HTTP_METHODS:
                    known = "OTHER"
            method = known
            cached = self._route_cache.get(path)
            if cached is None:
                cached = normalize_route(path)
                if len(self._route_cache) >= 50_000:
                    self._route_cache.clear()
                self._route_cache[path] = cached
            route = cached
            if route not in st.routes:
                if len(st.routes) >= self.max_routes:
                    route = OTHER
                else:
                    st.routes.add(route)
        key = (method, route, status)
        requests = st.requests
        requests[key] = requests.get(key, 0) + 1
        if duration is not None:
            lk = (method, route)
            buckets = st.latency.get(lk)
            if buckets is None:
                buckets = st.latency[lk] = [0] * (len(LATENCY_BUCKETS) + 1)
                st.latency_sum[lk] = 0.0
            buckets[bisect_left(LATENCY_BUCKETS, duration)] += 1  # le is inclusive: 0.005 goes in le="0.005"
            st.latency_sum[lk] += duration
        if status[0] in "45":
            # the line's own time; lines without one (uvicorn) take the time they were read
            if clf is not None:
                cache = self._clf_cache  # lines close in time share their second
                ts = cache.get(clf, -1.0)  # -1.0: not there (clf_time gives a time or None)
                if ts == -1.0:
                    if len(cache) >= 4096:
                        cache.clear()
                    ts = cache[clf] = clf_time(clf)
            elif ts is None:
                ts = time.time()
            if ts is not None and ts > st.last_error.get(key, 0.0):
                st.last_error[key] = ts

    # ------------------------------------------------------------------------------- log lines
    def _training(self, st: AppStats, msg: str) -> None:
        if "Received message" in msg or "Training job finished" in msg or "Failed to process" in msg:
            for phrase, kind in TRAINING_PHRASES:
                if phrase in msg:
                    st.training[kind] += 1
                    break

    def _start(self, st: AppStats, ps: PartialState, stream: str, state: str) -> None:
        ctx = ps.context
        if stream not in ctx and len(ctx) >= MAX_CONTEXT:  # bounded: settle the oldest stream now
            old = next(iter(ctx))
            prev = ctx.pop(old)
            if prev[1] == "0":
                self._error((self._owners.get(ps) or {}).get(old, st), prev[2:])
        ctx[stream] = state
        if state[1] == "0":  # to be counted later: remember for which app
            owners = self._owners.get(ps)
            if owners is None:
                owners = self._owners[ps] = {}
            owners[stream] = st

    def _continues(self, st: AppStats, msg: str, ps: PartialState, stream: str, state: str) -> bool:
        """Whether ``msg`` continues the traceback / stack trace of ``state``; if not, that one is counted."""
        ctx = ps.context
        kind = state[0]
        if kind == "e":
            if not msg or msg.isspace():  # Spring Boot's %wEx puts a blank line before the stack trace
                return True
            if msg.startswith(TB_HEADER):
                ctx[stream] = "t" + state[1:]
                return True
            j = JAVA_EXC_RE.match(msg) if msg[0].isalpha() else None
            if j is not None:
                ctx[stream] = "j" + state[1] + j.group(1)[:MAX_ERROR_TYPE_LEN]
                return True
        elif kind == "t":
            if not msg or msg[0] in " \t" or msg.isspace():  # frames, source lines, carets, blank lines
                return True
            x = PY_EXC_RE.match(msg)
            if x is not None:  # the exception line ends this traceback (a chained one may follow)
                ctx[stream] = "x" + state[1] + x.group(1)[:MAX_ERROR_TYPE_LEN]
                return True
            # cut short before its exception line: count what is known, read the line as usual
        elif kind == "x":
            if not msg or msg.isspace():
                return True
            if msg.startswith(TB_CHAIN):
                ctx[stream] = "c" + state[1:]
                return True
        elif kind == "c":
            if not msg or msg.isspace():
                return True
            if msg.startswith(TB_HEADER):
                ctx[stream] = "t" + state[1:]
                return True
        elif kind == "j":
            if not msg or msg.isspace():  # the blank line Spring Boot's %wEx writes after the trace ends it
                del ctx[stream]
                if state[1] == "0":
                    self._error(st, state[2:])
                return True
            if msg[0] in "\t " or msg.startswith(JAVA_CONT):  # "\tat ...", "\t... 5 more", "Caused by: ..."
                return True
        del ctx[stream]
        if state[1] == "0":
            self._error(st, state[2:])
        return False

    def _error(self, st: AppStats, etype: str) -> None:
        if etype not in st.errors and len(st.errors) >= self.max_error_types:
            etype = OTHER
        bump(st.errors, etype)
