"""Hypothesis fuzzing of the YAML config: any file gives a ``Config`` or a ``ConfigError`` naming file and key.

Documents start as a config that touches every section (fleet with an include file, MLflow with secrets, every
kind of outputs source, logs and Log Analytics, demo, stack) and are fuzzed structurally: keys dropped,
misspelt or added, values of other types (null, bools, huge and non-finite numbers, dates, binary, lists,
mappings with non-string keys), the include file's content fuzzed the same way; then as text: YAML tags,
anchors and aliases, merge keys, several documents, tabs, a BOM, cut short; mixed with random text. The
environment overrides (``FLEETMON__...``, ``MLFLOW_TRACKING_URI``) are fuzzed too.

Properties of ``load_config``: it returns a Config or raises ConfigError, nothing else; every line of the
error names where (the file, the include file or the environment variable) and what (the key, or the YAML
position); and no error message shows a secret (token, password, a URL's password).

Bugs found in ``fleetmon/config.py`` (now fixed) keep their own tests at the end, with the smallest input.
"""

from __future__ import annotations

import copy
import string
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetmon.config import Config, ConfigError, load_config

FUZZ = settings(deadline=None, derandomize=True, max_examples=80)
SECRET = "Zq9-s3cr3t-value"  # planted in every secret; must never be shown in an error
WORKSPACE = "6b1e3a52-7c0d-4f7e-9c1e-3d2b8a9f0e11"

BASE: dict[str, Any] = {
    "fleet": {
        "energy_types": ["electricity", "heating"],
        "model_roles": ["forecast", "anomaly"],
        "forecast_roles": ["forecast"],
        "anomaly_roles": ["anomaly"],
        "include": "fleet.yml",
        "customers": [
            {
                "id": "c1",
                "name": "Customer 1",
                "team": "ops",
                "buildings": [
                    {"id": "b1", "building_type": "school", "volume_m3": 1200, "latitude": 60.17},
                    {
                        "id": "b2",
                        "longitude": 24.94,
                        "energy_types": ["heating"],
                        "model_roles": ["forecast"],
                    },
                ],
            }
        ],
    },
    "mlflow": {
        "enabled": True,
        "tracking_uri": f"http://alice:{SECRET}@mlflow:5000",
        "token": SECRET,
        "username": "alice",
        "password": SECRET,
        "poll_interval_seconds": 30,
        "max_retries": 3,
        "tag_keys": {"customer": "customer", "building": "building", "energy": "energy", "model": "model"},
        "registered_model_pattern": "{customer}.{building}.{energy}.{model}",
        "metric_keys": ["mae"],
        "duration_metric_keys": {"training": "training_duration_seconds"},
        "listen": {"host": "127.0.0.1", "port": 9701},
    },
    "outputs": {
        "predictions": [{"glob": "pred/*.jsonl", "format": "jsonl", "name": "pred"}],
        "actuals": [{"glob": "act/*.csv", "format": "csv"}],
        "sql": [
            {
                "url": f"postgresql+psycopg://bob:{SECRET}@db:5432/outputs?sslmode=require",
                "query": "SELECT * FROM predictions",
                "time_column": "made_at",
                "overlap_seconds": 300,
                "key_columns": ["id"],
            }
        ],
        "features": ["temp", "occ"],
        "windows": {"24h": 86400},
        "retention_seconds": 691200,
        "score_quantiles": [0.5, 0.99],
        "drift": {
            "engine": "fleet",
            "columns": {"temp": {"stattest": "ks", "threshold": 0.1}},
            "exclude": ["occ"],
        },
        "quarantine_dir": "var/quarantine",
        "state_dir": "var/state",
    },
    "platform": {
        "logs": {
            "apps": {"api": ["logs/api/*.log"], "model-serving": None},
            "max_routes": 100,
            "state_file": "var/logs.json",
            "log_analytics": {
                "workspace_id": WORKSPACE,
                "logs_destination": "log-analytics",
                "endpoint": "https://api.loganalytics.io",
                "max_rows_per_query": 1000,
            },
        },
        "processes": [{"name": "trainer", "match": "python .*train"}],
        "gpu": False,
    },
    "demo": {"seed": 1, "customers": 2, "incident_duration_seconds": [60, 120]},
    "stack": {
        "bind_host": "127.0.0.1",
        "secure": False,
        "grafana": {"anonymous_viewer": True},
        "webhook_port": 9704,
    },
}
INCLUDE: dict[str, Any] = {"customers": [{"id": "c2", "buildings": [{"id": "b1"}]}]}
INCLUDE_TEXT = yaml.safe_dump(INCLUDE)

# ------------------------------------------------------------------------------------------ strategies
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # NUL included: a path holding one is refused
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(
        ["", "yes", "off", "~", "1e3", "0x1F", "0o17", ".inf", "-.nan", "2026-11-22", "12:30:00"]
    ),
    st.sampled_from(
        ["http://", "https://x", "sqlite://", "postgresql+psycopg://u:p@h/d", "a\\0b", "{customer}"]
    ),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=6),
)
KEYS = st.one_of(TEXT, st.integers(-3, 3), st.none(), st.booleans())  # YAML keys need not be strings
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def fuzzed(draw: st.DrawFn, base: Any, keys: st.SearchStrategy[Any]) -> Any:
    """The document with a few edits, each at a node reached by walking down from the top: a key dropped,
    misspelt or added, a value replaced (another type, null), a list item dropped or added."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 5))):
        node = doc
        while True:  # walk down to a mapping or list, stopping now and then on the way
            choices = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not choices:
                break
            k = draw(st.sampled_from(choices))
            if not isinstance(node[k], dict | list) or draw(st.integers(0, 3)) == 0:
                break
            node = node[k]
        action = draw(st.sampled_from(["wrong", "wrong", "null", "drop", "rename", "add"]))
        if not choices or action == "add":
            if isinstance(node, dict):
                node[draw(keys)] = draw(VALUES)
            else:
                node.append(draw(VALUES))
        elif action == "drop":
            del node[k]
        elif action == "rename" and isinstance(k, str):
            new = draw(st.sampled_from([k + "s", k.upper(), k[:-1], k.replace("_", "-"), " " + k]))
            node[new] = node.pop(k)
        else:
            node[k] = None if action == "null" else draw(VALUES)
    return doc


def dump(draw: st.DrawFn, doc: Any) -> str:
    try:
        return yaml.safe_dump(
            doc,
            allow_unicode=draw(st.booleans()),
            default_flow_style=draw(st.sampled_from([False, None, True])),
        )
    except yaml.YAMLError:  # a value YAML cannot represent (never drawn, but a writer may meet one)
        return "{}"


# Text that changes what YAML reads: tags, anchors, aliases, merge keys, documents, directives, tabs, a BOM.
SNIPPETS = [
    "!!python/object:os.system x",
    "!!binary aGVsbG8=",
    "!!timestamp 2026-11-22",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!str 5",
    "!!int x",
    "!!bool x",
    "!!timestamp x",
    "&a [1, 2]",
    "*a",
    "*undefined",
    "<<: {port: 1}",
    "\n---\n",
    "\n...\n",
    "%YAML 1.1\n",
    "\t",
    "\ufeff",
    ": ",
    "- ",
    "? ",
    "'",
    '"',
    "#",
    "{",
    "[",
    "|\n  x",
    "\r\n",
    "\x85",
    "9" * 4301,  # more digits than int() converts
    "2026-13-45",  # a timestamp that does not exist
]


@st.composite
def yaml_texts(draw: st.DrawFn, base: Any, keys: st.SearchStrategy[Any] = KEYS) -> str:
    """A YAML document: the base fuzzed, dumped, now and then edited as text; or any text at all."""
    kind = draw(st.sampled_from(["structured"] * 6 + ["edited"] * 3 + ["text"]))
    if kind == "text":
        return draw(
            st.text(
                st.one_of(
                    st.characters(codec="utf-8"),
                    st.sampled_from(list(string.printable)),
                ),
                max_size=80,
            )
        )
    text = dump(draw, draw(fuzzed(base, keys)))
    if kind == "edited":
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(text)))
            if draw(st.integers(0, 4)) == 0:
                text = text[:i]  # cut short
            else:
                text = text[:i] + draw(st.sampled_from(SNIPPETS)) + text[i:]
    return text


ENV_NAMES = st.one_of(
    st.sampled_from(
        [
            "FLEETMON__MLFLOW__TRACKING_URI",
            "FLEETMON__MLFLOW__TOKEN",
            "FLEETMON__MLFLOW__PASSWORD",
            "FLEETMON__OUTPUTS__RETENTION_SECONDS",
            "FLEETMON__PLATFORM__LOGS__APPS",
            "FLEETMON__STACK__WEBHOOK_PORT",
            "FLEETMON__FLEET__CUSTOMERS",
            "FLEETMON__NOPE",
            "FLEETMON____",
            "fleetmon__demo__seed",
            "FLEETMON__MLFLOW",
            "MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_TRACKING_PASSWORD",
        ]
    ),
    st.builds(
        lambda parts: "FLEETMON__" + "__".join(parts),
        st.lists(st.sampled_from(["mlflow", "outputs", "x", "", "listen", "port"]), min_size=1, max_size=3),
    ),
)
ENV = st.dictionaries(
    ENV_NAMES,
    st.one_of(TEXT, st.sampled_from(["[", "{a: 1}", "- x", "*a", "!!binary x", "", "5", "null", SECRET])),
    max_size=3,
)


# ------------------------------------------------------------------------------------------ properties
@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def check(path: Path, environ: dict[str, str]) -> Config | ConfigError:
    """load_config's answer: a Config, or the ConfigError it raised (anything else propagates)."""
    try:
        return load_config(path, environ=environ)
    except ConfigError as e:
        return e


def assert_names_where_and_what(e: ConfigError, path: Path, environ: dict[str, str]) -> None:
    """Each line: ``<file or variable>: <key or YAML position>: <what is wrong>``; no secret shown. The file is
    the config file or the include file it names (any path: ``fleet.include`` may name any file)."""
    text = str(e)
    assert SECRET not in text, text
    for line in text.split("\n"):
        where = next((w for w in [str(path), *environ] if line.startswith(w + ": ")), None)
        if where is None and line.startswith("/"):  # the include file
            where = line.split(": ", 1)[0]
        assert where is not None, line
        _what, sep, why = line[len(where) + 2 :].partition(": ")
        # `what` may be "": a key that is the empty string (shown as nothing, see the report)
        assert sep and why.strip(), line


@FUZZ
@given(yaml_texts(BASE), yaml_texts(INCLUDE), ENV)
def test_any_yaml_gives_a_config_or_a_config_error_naming_the_key(
    workdir: Path, text: str, include: str, environ: dict[str, str]
) -> None:
    path = workdir / "fleetmon.yml"
    path.write_text(text, encoding="utf-8")
    (workdir / "fleet.yml").write_text(include, encoding="utf-8")
    got = check(path, environ)
    if isinstance(got, ConfigError):
        assert_names_where_and_what(got, path, environ)
    else:
        assert isinstance(got, Config)
        assert SECRET not in repr(got)


@settings(FUZZ, max_examples=20)
@given(st.sampled_from(sorted(BASE)), st.data())
def test_a_valid_config_with_one_bad_value_is_refused_naming_that_key(
    workdir: Path, section: str, data: st.DataObject
) -> None:
    """One value replaced by one of another type: refused (or, if still valid, accepted), and if refused the
    error names a key within the path of the value that was changed."""
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    doc["fleet"].pop("include")
    node, keys = doc, [section]
    node = doc[section]
    while isinstance(node, dict | list) and node:
        k = data.draw(
            st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))), label="key"
        )
        if not isinstance(node[k], dict | list) or data.draw(st.integers(0, 3)) == 0:
            node[k] = data.draw(VALUES, label="value")
            keys.append(str(k))
            break
        keys.append(str(k))
        node = node[k]
    path = workdir / "one.yml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    got = check(path, {})
    if isinstance(got, ConfigError):
        assert_names_where_and_what(got, path, {})
        named = [line.split(": ")[1] for line in str(got).split("\n")]
        changed = ".".join(keys)
        # the key named is the one changed, one inside it, or one holding it (a check of the whole object:
        # duplicate ids, source names, the tag keys a pattern names)
        assert any(
            k == changed or k.startswith(changed + ".") or changed.startswith(k + ".") for k in named
        ), (
            changed,
            named,
        )


# ------------------------------------------------------------------------ bugs found (fleetmon/config.py), fixed
def refused(
    workdir: Path, text: str | bytes, include: str = INCLUDE_TEXT, environ: dict[str, str] | None = None
) -> str:
    """Write the files and load them: a ConfigError that names where and what; its text."""
    path = workdir / "bug.yml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    (workdir / "fleet.yml").write_text(include, encoding="utf-8")
    got = check(path, environ or {})
    assert isinstance(got, ConfigError), got
    assert_names_where_and_what(got, path, environ or {})
    return str(got)


@settings(FUZZ, max_examples=20)
@example(b"stack:\n  bind_host: \xff\n")
@given(
    st.builds(
        lambda a, b, i: a[:i] + b + a[i:],
        st.just(b"stack:\n  bind_host: x\n"),
        st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]),
        st.integers(0, 20),
    )
)
def test_a_config_file_that_is_not_utf8_is_refused(workdir: Path, text: bytes) -> None:
    assert ": not UTF-8 text: invalid byte at offset " in refused(workdir, text)


NUL_PATHS = st.builds(
    lambda template, value: template.replace("{}", value),
    st.sampled_from(
        [
            'platform:\n  logs:\n    state_file: "{}"\n',
            'outputs:\n  quarantine_dir: "{}"\n',
            'stack:\n  data_dir: "{}"\n',
            'demo:\n  output_dir: "{}"\n',
            'fleet:\n  include: "{}"\n',
        ]
    ),
    st.sampled_from(["\\0", "a\\0b", "logs/\\0.json"]),
)


@settings(FUZZ, max_examples=20)
@example('platform:\n  logs:\n    state_file: "a\\0b"\n')
@given(NUL_PATHS)
def test_a_nul_in_a_path_is_refused_naming_the_key(workdir: Path, text: str) -> None:
    key = ".".join(line.strip().split(":")[0] for line in text.splitlines())  # e.g. platform.logs.state_file
    assert f": {key}: Value error, a path cannot contain a NUL character" in refused(workdir, text)


@settings(FUZZ, max_examples=10)
@example(5)
@given(st.one_of(st.integers(min_value=1), st.just(True), st.floats(min_value=1)))
def test_fleet_customers_that_are_no_list_with_an_include_are_refused(workdir: Path, customers: Any) -> None:
    text = refused(workdir, yaml.safe_dump({"fleet": {"include": "fleet.yml", "customers": customers}}))
    assert ": fleet.customers: " in text


@settings(FUZZ, max_examples=10)
@example("1: x\na: y\n")
@given(st.builds(lambda k: f"{k}: x\na: y\n", st.sampled_from(["1", "null", "true", "2.5"])))
def test_include_file_keys_of_mixed_types_are_refused(workdir: Path, include: str) -> None:
    assert ": unknown key (a fleet file holds only 'customers')" in refused(
        workdir, "fleet: {include: fleet.yml}\n", include
    )


@settings(FUZZ, max_examples=10)
@example([None])
@given(
    st.one_of(
        st.lists(st.none(), min_size=1), st.integers(min_value=1), st.dictionaries(TEXT, TEXT, min_size=1)
    )
)
def test_a_fleet_include_that_is_no_path_is_refused_naming_the_key(workdir: Path, include: Any) -> None:
    path = workdir / "bug.yml"
    path.write_text(yaml.safe_dump({"fleet": {"include": include}}), encoding="utf-8")
    got = check(path, {})
    assert isinstance(got, ConfigError) and str(got).startswith(f"{path}: fleet.include: "), got


def test_yaml_nested_too_deep_is_refused(workdir: Path) -> None:
    # Not a Hypothesis test: it raises the recursion limit to 2048 while a test runs, and PyYAML's scanner
    # takes time quadratic in the nesting (1000 levels: 10 s). 600 levels at the default limit: 1 s.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        text = refused(workdir, "a: " + "[" * 600 + "]" * 600 + "\n")
    finally:
        sys.setrecursionlimit(limit)
    assert text.endswith(": not valid YAML: collections nested too deeply"), text


@settings(FUZZ, max_examples=10)
@example("demo:\n  seed: " + "9" * 4301 + "\n")
@given(st.integers(4301, 6000).map(lambda n: "demo:\n  seed: " + "1" * n + "\n"))
def test_a_too_long_integer_is_refused(workdir: Path, text: str) -> None:
    assert ": not valid YAML: line 2, column 9: not a valid int (malformed or too large)" in refused(
        workdir, text
    )


@settings(FUZZ, max_examples=10)
@example({"FLEETMON__MLFLOW": "5", "MLFLOW_TRACKING_URI": "http://mlflow:5000"})
@given(
    st.fixed_dictionaries(
        {
            "FLEETMON__MLFLOW": st.sampled_from(["5", "x", "[1]", "true"]),
            "MLFLOW_TRACKING_URI": st.just("http://mlflow:5000"),
        }
    )
)
def test_a_scalar_section_from_the_environment_is_refused(workdir: Path, environ: dict[str, str]) -> None:
    assert ": mlflow: Input should be a valid dictionary" in refused(workdir, "", environ=environ)


@pytest.mark.parametrize(
    "text",
    [
        f"mlflow:\n  token: !!int {SECRET}\n",
        f"mlflow:\n  tracking_uri: !!float {SECRET}\n",
        "demo: {seed: 2026-13-45}\n",
        f"mlflow:\n  enabled: !!bool {SECRET}\n",
        f"mlflow:\n  token: !!timestamp {SECRET}\n",
        'demo: {seed: !!int ""}\n',
    ],
    ids=["int", "float", "date", "bool", "timestamp", "empty-int"],
)
def test_a_value_yaml_cannot_construct_is_refused_without_showing_it(workdir: Path, text: str) -> None:
    # PyYAML's own errors (ValueError, KeyError, AttributeError, IndexError) may quote the value: not shown
    shown = refused(workdir, text)  # no secret in it: checked by refused()
    assert ": not valid YAML: line " in shown and "not a valid " in shown, shown
