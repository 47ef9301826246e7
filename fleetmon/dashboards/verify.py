"""Execute every panel query of the dashboards against a live Prometheus, as Grafana would.

Grafana cannot run everywhere fleetmon is developed, so the dashboards are proven against Prometheus
directly: each variable is resolved from its own query (chained in order: `label_values(...)` through
Prometheus' label values API, with the earlier variables substituted), then every target's expression is
interpolated the way Grafana's Prometheus datasource does it (`$__rate_interval`, `$__interval`,
`$__range`, `$var` / `${var}` / `[[var]]`, multi-value and All formats) and sent as an instant or range
query. A query passes when Prometheus answers without error and with at least one series.

    python -m fleetmon.dashboards.verify --prometheus http://127.0.0.1:9090 [--range 6h] [-v]

Every variable takes the value the dashboard opens with: All where it is saved as All (the fleet-wide
dashboards, multi-value), else its first value; when a query is empty, the other values of the dashboard's
last query variable are tried too (a forecaster-only panel is empty for an anomaly detector by design).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Grafana's variable syntaxes: $var, [[var]], [[var:fmt]], ${var}, ${var.field}, ${var:fmt}
VARIABLE_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
# The provisioned datasource's scrape interval (grafana/provisioning/datasources: jsonData.timeInterval).
SCRAPE_INTERVAL_S = 15.0
MAX_DATA_POINTS = 1000
ALL = "$__all"


def round_interval(ms: float) -> float:
    """Grafana's `rangeutil.roundInterval` (milliseconds in, milliseconds out)."""
    steps = [
        (15, 10),
        (35, 20),
        (75, 50),
        (150, 100),
        (350, 200),
        (750, 500),
        (1500, 1000),
        (3500, 2000),
        (7500, 5000),
        (12500, 10000),
        (17500, 15000),
        (25000, 20000),
        (45000, 30000),
        (90000, 60000),
        (210000, 120000),
        (450000, 300000),
        (750000, 600000),
        (1050000, 900000),
        (1500000, 1200000),
        (2700000, 1800000),
        (5400000, 3600000),
        (9000000, 7200000),
        (16200000, 10800000),
        (32400000, 21600000),
        (86400000, 43200000),
        (604800000, 86400000),
        (1814400000, 604800000),
        (3628800000, 2592000000),
    ]
    for bound, value in steps:
        if ms < bound:
            return value
    return 31536000000


def prom_duration(seconds: float) -> str:
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(seconds * 1000)}ms"


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text):
        total += float(number) * units[unit]
    if not total:
        raise ValueError(f"not a duration: {text!r}")
    return total


def regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: a value inside a `=~` matcher (PromQL string escaping)."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


@dataclass
class Variable:
    name: str
    type: str
    query: str = ""
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    current: str | list[str] = ""

    @classmethod
    def from_json(cls, v: Mapping[str, Any]) -> Variable:
        query = v.get("query", "")
        if isinstance(query, dict):
            query = query.get("query", "")
        current = (v.get("current") or {}).get("value", "")
        if v.get("type") == "textbox" and not current:
            current = v.get("query", "")
        return cls(
            name=v["name"],
            type=v.get("type", ""),
            query=str(query),
            multi=bool(v.get("multi")),
            include_all=bool(v.get("includeAll")),
            all_value=v.get("allValue"),
            current=current,
        )

    def format(self, value: str | list[str], options: Sequence[str] = ()) -> str:
        """How Grafana's Prometheus datasource writes a value into a query (interpolateQueryExpr)."""
        if value == ALL or value == [ALL]:
            if self.all_value is not None:
                return self.all_value
            value = list(options)
        if not self.multi and not self.include_all:
            return value if isinstance(value, str) else ",".join(value)
        values = [value] if isinstance(value, str) else value
        escaped = [regex_escape(x) for x in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def custom_options(query: str) -> list[tuple[str, str]]:
    """A custom variable's `text : value` list (Grafana splits on commas not escaped)."""
    out = []
    for item in re.split(r"(?<!\\),", query):
        item = item.strip().replace("\\,", ",")
        if not item:
            continue
        text, sep, value = item.partition(" : ")
        out.append((text.strip(), value.strip()) if sep else (item, item))
    return out


@dataclass
class Context:
    """The time range and variable values a dashboard is evaluated with."""

    now: float
    range_s: float
    values: dict[str, str | list[str]] = field(default_factory=dict)
    options: dict[str, list[str]] = field(default_factory=dict)
    variables: dict[str, Variable] = field(default_factory=dict)

    @property
    def interval_s(self) -> float:
        raw_ms = self.range_s * 1000 / MAX_DATA_POINTS
        return max(SCRAPE_INTERVAL_S, round_interval(raw_ms) / 1000)

    @property
    def rate_interval_s(self) -> float:
        # Grafana: max($__interval + scrape interval, 4 * scrape interval)
        return max(self.interval_s + SCRAPE_INTERVAL_S, 4 * SCRAPE_INTERVAL_S)

    def builtins(self) -> dict[str, str]:
        return {
            "__rate_interval": prom_duration(self.rate_interval_s),
            "__rate_interval_ms": str(int(self.rate_interval_s * 1000)),
            "__interval": prom_duration(self.interval_s),
            "__interval_ms": str(int(self.interval_s * 1000)),
            "__range": prom_duration(self.range_s),
            "__range_s": str(int(self.range_s)),
            "__range_ms": str(int(self.range_s * 1000)),
        }

    def interpolate(self, text: str) -> str:
        builtins = self.builtins()

        def sub(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(4)
            if name in builtins:
                return builtins[name]
            if name not in self.values:
                return match.group(0)  # Grafana leaves unknown variables as they are
            var = self.variables[name]
            return var.format(self.values[name], self.options.get(name, ()))

        return VARIABLE_RE.sub(sub, text)


class Prometheus:
    def __init__(self, url: str, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        data = urllib.parse.urlencode(list(params)).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400 / 422: Prometheus says why in the body
            with e:
                body = e.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {e.code}: {body[:200]!r}"}

    def query(self, expr: str, ctx: Context, instant: bool, stats: bool = False) -> dict[str, Any]:
        """An instant query at `ctx.now`, or a range query over the context's range and step (Grafana aligns
        the range to the step). `stats`: ask Prometheus for its query statistics (timings, samples)."""
        extra = [("stats", "all")] if stats else []
        if instant:
            return self._get("/api/v1/query", [("query", expr), ("time", f"{ctx.now:.3f}"), *extra])
        step = ctx.interval_s
        end = math.floor(ctx.now / step) * step
        start = math.floor((ctx.now - ctx.range_s) / step) * step
        return self._get(
            "/api/v1/query_range",
            [
                ("query", expr),
                ("start", f"{start:.3f}"),
                ("end", f"{end:.3f}"),
                ("step", f"{step:g}"),
                *extra,
            ],
        )

    def label_values(self, label: str, match: str | None, ctx: Context) -> list[str]:
        params = [("start", f"{ctx.now - ctx.range_s:.0f}"), ("end", f"{ctx.now:.0f}")]
        if match:
            params.append(("match[]", match))
        # POST is not accepted on the label values endpoint: use GET
        url = f"{self.url}/api/v1/label/{urllib.parse.quote(label)}/values?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=self.timeout) as r:
            doc = json.loads(r.read())
        return sorted(doc.get("data") or [])


LABEL_VALUES_RE = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.S)


def variable_options(var: Variable, prom: Prometheus, ctx: Context) -> list[str]:
    if var.type == "query":
        match = LABEL_VALUES_RE.match(var.query)
        if not match:
            raise ValueError(f"variable {var.name}: unsupported query {var.query!r}")
        selector = ctx.interpolate(match.group(1)) if match.group(1) else None
        return prom.label_values(match.group(2), selector, ctx)
    if var.type == "custom":
        return [value for _, value in custom_options(var.query)]
    if var.type in ("textbox", "constant"):
        return [str(var.current or var.query)]
    if var.type == "datasource":
        return [str(var.current)]
    raise ValueError(f"variable {var.name}: unsupported type {var.type!r}")


def resolve(
    dashboard: Mapping[str, Any], prom: Prometheus, ctx: Context, overrides: Mapping[str, str] | None = None
) -> list[str]:
    """Fill `ctx` with every variable of the dashboard, in order; returns the names of empty query variables.

    Query variables take `overrides[name]`, else All when saved as All, else their first value; the others
    keep their saved value.
    """
    empty = []
    for raw in (dashboard.get("templating") or {}).get("list") or []:
        var = Variable.from_json(raw)
        ctx.variables[var.name] = var
        options = variable_options(var, prom, ctx)
        ctx.options[var.name] = options
        if var.type == "query":
            if not options:
                empty.append(var.name)
                ctx.values[var.name] = ""
                continue
            wanted = (overrides or {}).get(var.name)
            if wanted in options:
                ctx.values[var.name] = wanted
            elif var.include_all and var.current in (ALL, [ALL]) and wanted is None:
                ctx.values[var.name] = ALL  # a fleet-wide dashboard opens on All, as saved
            else:
                ctx.values[var.name] = options[0]
        elif var.type == "custom":
            ctx.values[var.name] = var.current if var.current else options[0]
        else:
            ctx.values[var.name] = options[0]
    return empty


@dataclass
class Target:
    dashboard: str  # uid
    panel_id: int
    panel: str  # title
    ref: str
    expr: str
    instant: bool

    @property
    def key(self) -> str:
        return f"{self.dashboard}/{self.panel_id}/{self.ref}"


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def targets(dashboard: Mapping[str, Any]) -> list[Target]:
    out = []
    for panel in panels(dashboard):
        for t in panel.get("targets") or []:
            if t.get("hide"):
                continue
            out.append(
                Target(
                    dashboard=dashboard["uid"],
                    panel_id=panel["id"],
                    panel=panel.get("title", ""),
                    ref=t.get("refId", ""),
                    expr=t["expr"],
                    instant=bool(t.get("instant")) and not t.get("range"),
                )
            )
    return out


@dataclass
class Result:
    target: Target
    status: str  # "ok", "empty", "error"
    series: int = 0
    error: str = ""
    expr: str = ""  # as sent
    values: dict[str, str] = field(default_factory=dict)  # the query variables used


def last_query_variable(dashboard: Mapping[str, Any]) -> str | None:
    names = [
        v["name"] for v in (dashboard.get("templating") or {}).get("list") or [] if v.get("type") == "query"
    ]
    return names[-1] if names else None


def run_dashboard(
    dashboard: Mapping[str, Any],
    prom: Prometheus,
    now: float | None = None,
    range_s: float | None = None,
    only: set[str] | None = None,
    max_alternatives: int = 8,
) -> list[Result]:
    """Every target of the dashboard (or those whose key is in `only`), with the fallback described above."""
    now = time.time() if now is None else now
    range_s = (
        parse_duration(dashboard.get("time", {}).get("from", "now-6h").removeprefix("now-"))
        if range_s is None
        else range_s
    )
    ctx = Context(now=now, range_s=range_s)
    empty_vars = resolve(dashboard, prom, ctx)
    todo = [t for t in targets(dashboard) if only is None or t.key in only]
    results: dict[str, Result] = {}
    for t in todo:
        results[t.key] = execute(t, prom, ctx)
    last = last_query_variable(dashboard)
    if last and not empty_vars:
        for alternative in ctx.options.get(last, [])[1:max_alternatives]:
            retry = [t for t in todo if results[t.key].status == "empty"]
            if not retry:
                break
            alt = Context(now=now, range_s=range_s)
            resolve(dashboard, prom, alt, overrides={**_query_values(ctx), last: alternative})
            for t in retry:
                r = execute(t, prom, alt)
                if r.status != "empty":
                    results[t.key] = r
    if empty_vars:
        for r in results.values():
            if r.status == "ok":
                continue
            r.error = (r.error + f"; variables without values: {', '.join(empty_vars)}").lstrip("; ")
    return [results[t.key] for t in todo]


def _query_values(ctx: Context) -> dict[str, str]:
    return {n: str(v) for n, v in ctx.values.items() if ctx.variables[n].type == "query"}


def execute(t: Target, prom: Prometheus, ctx: Context) -> Result:
    expr = ctx.interpolate(t.expr)
    used = _query_values(ctx)
    leftover = [m.group(0) for m in VARIABLE_RE.finditer(expr)]
    if leftover:
        return Result(t, "error", error=f"uninterpolated {leftover}", expr=expr, values=used)
    doc = prom.query(expr, ctx, t.instant)
    if doc.get("status") != "success":
        return Result(t, "error", error=str(doc.get("error", doc)), expr=expr, values=used)
    series = len(doc["data"]["result"])
    return Result(t, "ok" if series else "empty", series=series, expr=expr, values=used)


# A link to a Grafana dashboard: /d/<uid>[/<slug>][?query]; the query may hold Grafana or Prometheus
# template text (`${__data.fields.customer}`, `{{ $labels.customer }}`).
DASHBOARD_LINK_RE = re.compile(r"/d/([A-Za-z0-9_-]+)(?:/[^?#\s\"]*)?(?:\?([^#\"]*))?")


def link_errors(url: str, variables: Mapping[str, set[str]]) -> list[str]:
    """What is wrong with a link: an unknown dashboard uid, or a `var-x` the dashboard does not have.

    `variables` maps every dashboard uid to its variable names. A link to no dashboard is not checked.
    """
    match = DASHBOARD_LINK_RE.search(url)
    if not match:
        return []
    uid = match.group(1)
    if uid not in variables:
        return [f"{url}: no dashboard with uid {uid!r}"]
    errors = []
    for part in (match.group(2) or "").split("&"):
        key = part.split("=", 1)[0].strip()
        if key.startswith("var-") and key[4:] not in variables[uid]:
            errors.append(f"{url}: dashboard {uid!r} has no variable {key[4:]!r}")
    return errors


def dashboard_links(dashboard: Mapping[str, Any]) -> list[str]:
    """Every link URL of a dashboard: its own links, panel links, data links (defaults and overrides)."""
    urls = [x.get("url", "") for x in dashboard.get("links") or [] if x.get("type") == "link"]
    for panel in panels(dashboard):
        urls += [x.get("url", "") for x in panel.get("links") or []]
        field_config = panel.get("fieldConfig") or {}
        urls += [x.get("url", "") for x in (field_config.get("defaults") or {}).get("links") or []]
        for override in field_config.get("overrides") or []:
            for prop in override.get("properties") or []:
                if prop.get("id") == "links":
                    urls += [x.get("url", "") for x in prop.get("value") or []]
    return urls


def variable_names(dashboard: Mapping[str, Any]) -> set[str]:
    return {v["name"] for v in (dashboard.get("templating") or {}).get("list") or []}


def load_dashboards(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def main(argv: Sequence[str] | None = None) -> int:
    from fleetmon.dashboards.build import OUTPUT_DIR

    p = argparse.ArgumentParser(
        prog="python -m fleetmon.dashboards.verify", description=__doc__.splitlines()[0]
    )
    p.add_argument("--prometheus", default="http://127.0.0.1:9090")
    p.add_argument("--dir", type=Path, default=OUTPUT_DIR, help="dashboard JSON directory")
    p.add_argument("--range", default=None, help="time range (default: each dashboard's own, e.g. 6h)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every empty or failing query")
    args = p.parse_args(argv)
    prom = Prometheus(args.prometheus)
    range_s = parse_duration(args.range) if args.range else None
    total = ok = errors = 0
    for uid, doc in load_dashboards(args.dir).items():
        results = run_dashboard(doc, prom, range_s=range_s)
        n_ok = sum(r.status == "ok" for r in results)
        n_err = sum(r.status == "error" for r in results)
        n_panels = sum(1 for x in panels(doc) if x.get("type") != "row")
        print(
            f"{uid:<26} panels {n_panels:>3}  queries {len(results):>3}  non-empty {n_ok:>3}  errors {n_err}"
        )
        for r in results:
            if r.status != "ok" and args.verbose:
                print(f"    {r.status:<5} {r.target.panel} [{r.target.ref}] {r.error}\n          {r.expr}")
        total += len(results)
        ok += n_ok
        errors += n_err
    share = ok / total if total else 0.0
    print(f"total queries {total}, non-empty {ok} ({share:.0%}), errors {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
