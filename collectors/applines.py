"""The application line inside a wrapper (or a bare line) -> requests, errors and training events.

``LineParser`` (``collectors/logformats.py``) takes a physical line apart (Docker, CRI, Azure records) and
hands the application's own text to ``LineClassifier.classify``:

- an access line (combined log format, uvicorn's) -> a request, by method, route template and status;
- ``Received message`` / ``Training job finished`` / ``Failed to process`` -> a training event;
- a line whose level is ``ERROR``/``CRITICAL`` -> an error typed by ``error_code=NAME`` or the exception
  class in it.

Training events and errors are not exclusive (a failed message logged at ERROR counts as both). Routes and
error types are capped per app (the rest ``other``).
"""

from __future__ import annotations

import calendar
import re
import time

from collectors.logstats import OTHER, AppStats, PartialState, bump

TRAINING_PHRASES = (
    ("Received message", "received"),
    ("Training job finished", "finished"),
    ("Failed to process", "failed"),
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
MAX_ROUTE_LEN = 200
MAX_ERROR_TYPE_LEN = 100

# Combined / common log format. The request line may be "-" (nginx, on a bad request).
ACCESS_RE = re.compile(
    r'(\S+) \S+ \S+ \[([^\]]+)\] "(?:([A-Za-z]+) (\S+)(?: [^"]*)?|[^"]*)" (\d{3}) (?:\d+|-)'
)
# Uvicorn's access lines (``INFO:     10.0.4.7:51234 - "GET /x HTTP/1.1" 200 OK``): no timestamp of their own.
UVICORN_RE = re.compile(r'(?:INFO|WARNING|ERROR):\s+\S+:\d+ - "([A-Za-z]+) (\S+) [^"]*" (\d{3})')
LEVEL_RE = re.compile(r"\b(?:ERROR|CRITICAL)\b")
ERROR_CODE_RE = re.compile(r"\berror_code=([A-Za-z0-9_.:\-]{1,64})")
# An exception class: a (dotted) CamelCase name ending like Python's exception classes, or any dotted
# module path ending in a CamelCase name (requests.exceptions.Timeout).
EXC_RE = re.compile(
    r"(?<![\w.])((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Timeout|Failure|Fault))\b"
    r"|(?<![\w.])((?:[a-z_]\w*\.)+[A-Z]\w*)\b"
)
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HASH_RE = re.compile(r"(?=[a-f]*\d)(?=\d*[a-f])[0-9a-f]{7,}|(?=[A-F]*\d)(?=\d*[A-F])[0-9A-F]{7,}")
_NUM_RE = re.compile(r"\d+(?:[.,]\d+)?")
_VERSION_RE = re.compile(r"[vV]\d+(?:\.\d+)*")
_DIGIT_RE = re.compile(r"\d")
_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


# ------------------------------------------------------------------------------------------- helpers
def normalize_route(path: str) -> str:
    """A route template: query dropped, ids / uuids / hashes / numbers replaced (``/runs/{id}``)."""
    if "://" in path:  # absolute-form request target (proxies)
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return OTHER  # "*", garbage
    segs = path.split("/")
    for i, s in enumerate(segs):
        if not s or (not _DIGIT_RE.search(s) and len(s) <= 40):
            continue  # plain words stay
        if _UUID_RE.fullmatch(s):
            segs[i] = "{uuid}"
        elif _NUM_RE.fullmatch(s):
            segs[i] = "{num}"
        elif _VERSION_RE.fullmatch(s):
            continue  # /v1/, /v2.1/
        elif _HASH_RE.fullmatch(s):
            segs[i] = "{hash}"
        else:
            segs[i] = "{id}"  # anything else with a digit (c01-b003, run-17, 2026-11-22) or very long
    route = "/".join(segs)
    return route if len(route) <= MAX_ROUTE_LEN else route[:MAX_ROUTE_LEN] + "..."


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


def error_type(msg: str, level_end: int) -> str:
    """The error's type: ``error_code=NAME`` if present, else the exception class, else ``unknown``."""
    rest = msg[level_end:]
    m = ERROR_CODE_RE.search(rest)
    if m:
        return m.group(1)
    rest = rest.lstrip()
    if rest.startswith("["):  # skip the "[module]" of "ERROR [module] ..."
        rest = rest.partition("]")[2]
    m = EXC_RE.search(rest)
    if m:
        name = m.group(1) or m.group(2)
        return name[:MAX_ERROR_TYPE_LEN]
    return "unknown"


class LineClassifier:
    """Counts what one application line means into an app's ``AppStats``."""

    def __init__(self, max_routes: int = 100, max_error_types: int = 50) -> None:
        self.max_routes = max_routes
        self.max_error_types = max_error_types
        self._route_cache: dict[str, str] = {}
        self._clf_cache: dict[str, float | None] = {}

    def bare(self, st: AppStats, s: str, ps: PartialState | None = None) -> str | None:
        """A line with no wrapper: an access line (returns None) or a rejection reason."""
        m = ACCESS_RE.match(s)
        if m is not None:
            bump(st.lines, "access")
            self._request(st, m)
            return None
        return "unknown_format"

    def classify(self, st: AppStats, msg: str, ps: PartialState | None = None, stream: str = "") -> None:
        """One application line. ``ps.context`` keeps what spans lines of one ``stream`` of a file."""
        if '] "' in msg:
            m = ACCESS_RE.match(msg)
            if m is not None:
                self._request(st, m)
                return
        elif ' - "' in msg:
            u = UVICORN_RE.match(msg)
            if u is not None:
                self._count_request(st, u.group(1), u.group(2), u.group(3), None)
                return
        if "ERROR" in msg or "CRITICAL" in msg:
            lm = LEVEL_RE.search(msg, 0, 160)
            if lm is not None:
                self._error(st, error_type(msg, lm.end()))
        if "Received message" in msg or "Training job finished" in msg or "Failed to process" in msg:
            for phrase, kind in TRAINING_PHRASES:
                if phrase in msg:
                    st.training[kind] += 1
                    break

    def flush(self, st: AppStats, ps: PartialState) -> None:
        """The file ``ps`` belongs to is closed: count what its streams' context still holds."""
        ps.context.clear()

    def _request(self, st: AppStats, m: re.Match[str]) -> None:
        _, clf, method, path, status = m.groups()
        self._count_request(st, method, path, status, clf)

    def _count_request(
        self, st: AppStats, method: str | None, path: str | None, status: str, clf: str | None
    ) -> None:
        if method is None or path is None:
            method, route = "OTHER", OTHER
        else:
            method = method.upper()
            if method not in HTTP_METHODS:
                method = "OTHER"
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
        st.requests[key] = st.requests.get(key, 0) + 1
        if status[0] in "45":
            # the line's own time; lines without one (uvicorn) take the time they were read
            if clf is None:
                ts: float | None = time.time()
            else:
                cache = self._clf_cache  # lines close in time share their second
                if clf in cache:
                    ts = cache[clf]
                else:
                    if len(cache) >= 4096:
                        cache.clear()
                    ts = cache[clf] = clf_time(clf)
            if ts is not None and ts > st.last_error.get(key, 0.0):
                st.last_error[key] = ts

    def _error(self, st: AppStats, etype: str) -> None:
        if etype not in st.errors and len(st.errors) >= self.max_error_types:
            etype = OTHER
        bump(st.errors, etype)
