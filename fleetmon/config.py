"""The one typed configuration file of fleetmon.

A YAML file is read, environment overrides are merged in, and the result is validated with pydantic
at start-up. A bad file is refused with a `ConfigError` that names the file, the key and what was
expected, e.g. ``config/fleetmon.yml: fleet.customers.0.buildings.2.latitude: Input should be a valid
number (got 'north')``.

Environment overrides (for secrets and URLs):
  - ``FLEETMON__<SECTION>__<KEY>=value`` sets any key (``__`` separates levels, case-insensitive),
    e.g. ``FLEETMON__MLFLOW__TRACKING_URI=http://mlflow:5000``. The value is parsed as a YAML scalar,
    except for secrets (``token``, ``password``), taken verbatim.
  - MLflow's own variables are honoured: ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_TOKEN``,
    ``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``.

Relative paths in the file are resolved against the file's directory, so a config works from any cwd.
"""

from __future__ import annotations

import os
import re
import string
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetmon.sharding import Shard

ENV_PREFIX = "FLEETMON__"
# Label values must stay bounded and safe in PromQL regexes and URLs.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names file, key and expectation."""


# ------------------------------------------------------------------------------------------- secrets
# Keys whose values are secrets: an error message or a repr() shows that they are set, never their value.
SECRET_KEYS = frozenset({"token", "password", "basic_auth_users"})
# Keys holding URLs, which may carry a password (user:password@host, ?password=): shown redacted.
URL_KEYS = frozenset({"url", "tracking_uri", "endpoint"})
# Query parameters of a URL that hold secrets.
_SECRET_PARAMS = frozenset(
    {"password", "passwd", "pwd", "token", "access_token", "secret", "client_secret", "api_key", "apikey"}
)


def redact_url(url: str) -> str | None:
    """``url`` with the password of its user info and secret query parameters (``?password=``) as ``***``.

    None when it is not ``scheme://...``: then no part of it can be shown safely.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return None
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        at = authority.rindex("@")  # the host follows the last '@' (a password may hold an unquoted '@')
    else:
        # SQLAlchemy's reading: user, then a password up to the first '@' (it may hold '/', '?', '#')
        m = re.match(r"[^:/@]*:[^@]*@", rest)
        at = m.end() - 1 if m else -1
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
    base, q, query = rest.partition("?")
    if q:
        query, hash_, fragment = query.partition("#")
        params = []
        for p in query.split("&"):
            k, eq, _ = p.partition("=")
            secret = eq and urllib.parse.unquote_plus(k).lower() in _SECRET_PARAMS
            params.append(f"{k}=***" if secret else p)
        rest = f"{base}?{'&'.join(params)}{hash_}{fragment}"
    return f"{scheme}://{rest}"


def yaml_error_text(e: yaml.YAMLError) -> str:
    """What PyYAML found and where, without the snippet of the file it quotes (that line may hold a secret)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return where + (e.problem or e.context or "syntax error")
    return type(e).__name__


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose failures to build a value are YAML errors at that value's position.

    PyYAML's constructors let builtin errors out: ValueError (``!!int x``, a date that does not exist such as
    2026-13-45, an integer of more than 4300 digits: int()'s limit), KeyError (``!!bool x``), IndexError
    (``!!int ""``), AttributeError (``!!timestamp x``); some of their messages quote the value (a secret).
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise  # already a YAML error at its own position / nesting: safe_load_yaml
        except Exception:  # any other: the value cannot be built; which builtin error is PyYAML's detail
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                problem=f"not a valid {kind} (malformed or too large)", problem_mark=node.start_mark
            ) from None


def safe_load_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that bad input always raises ``yaml.YAMLError`` (for ``yaml_error_text``).

    Besides the constructors' errors (``_Loader``), PyYAML's composer recurses once per level of nesting:
    collections nested deeper than Python's recursion limit (a 1 KB file of brackets) raise RecursionError.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except RecursionError:
        raise yaml.MarkedYAMLError(problem="collections nested too deeply") from None


class _Model(BaseModel):
    # Unknown keys are errors: a typo must not be silently ignored.
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul_in_paths(cls, v: Any) -> Any:
        # No file name holds a NUL (YAML "\0"): refused here, naming the key, rather than as ValueError
        # ("embedded null byte") from Path.resolve() or open() at start-up or later.
        if isinstance(v, Path) and "\0" in str(v):
            raise ValueError("a path cannot contain a NUL character")
        return v

    def __repr_args__(self) -> Any:
        # repr() and str() (a debugger, a log line) show that a secret is set, never its value.
        for key, value in super().__repr_args__():
            if key in SECRET_KEYS and value is not None:
                value = "***"
            elif key in URL_KEYS and isinstance(value, str):
                value = redact_url(value) or "***"
            yield key, value


# --------------------------------------------------------------------------------------------- fleet
class Building(_Model):
    id: str = Field(pattern=ID_PATTERN)
    name: str = ""
    building_type: str = Field(default="office", pattern=ID_PATTERN)
    volume_m3: float = Field(default=0.0, ge=0)
    weather_station: str = ""
    latitude: float = Field(default=0.0, ge=-90, le=90)
    longitude: float = Field(default=0.0, ge=-180, le=180)
    # Override the fleet-wide energy types / roles for this building (empty = fleet default).
    energy_types: list[str] = Field(default_factory=list)
    model_roles: list[str] = Field(default_factory=list)


class Customer(_Model):
    id: str = Field(pattern=ID_PATTERN)
    name: str = ""
    # Alert routing: which team receives this customer's pages.
    team: str = "ops"
    buildings: list[Building] = Field(default_factory=list)

    @field_validator("buildings")
    @classmethod
    def _unique_buildings(cls, v: list[Building]) -> list[Building]:
        seen: set[str] = set()
        for b in v:
            if b.id in seen:
                raise ValueError(f"duplicate building id {b.id!r}")
            seen.add(b.id)
        return v


class ModelKey(BaseModel):
    """One model of the fleet: the label set that every per-model metric carries."""

    model_config = ConfigDict(frozen=True)
    customer: str
    building: str
    energy: str
    model: str

    def labels(self) -> dict[str, str]:
        return {
            "customer": self.customer,
            "building": self.building,
            "energy": self.energy,
            "model": self.model,
        }


class FleetConfig(_Model):
    energy_types: list[str] = Field(default_factory=lambda: ["electricity", "heating"], min_length=1)
    model_roles: list[str] = Field(default_factory=lambda: ["forecast", "anomaly"], min_length=1)
    # Which roles are forecasters (quality = error metrics) and which are anomaly detectors.
    forecast_roles: list[str] = Field(default_factory=lambda: ["forecast"])
    anomaly_roles: list[str] = Field(default_factory=lambda: ["anomaly"])
    # A separate YAML file holding ``customers:`` (large fleets); merged with inline customers.
    include: Path | None = None
    customers: list[Customer] = Field(default_factory=list)

    @field_validator("energy_types", "model_roles")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        for x in v:
            if not re.match(ID_PATTERN, x):
                raise ValueError(f"{x!r} is not a valid identifier (letters, digits, _ . -)")
        return v

    @field_validator("customers")
    @classmethod
    def _unique_customers(cls, v: list[Customer]) -> list[Customer]:
        seen: set[str] = set()
        for c in v:
            if c.id in seen:
                raise ValueError(f"duplicate customer id {c.id!r}")
            seen.add(c.id)
        return v

    def buildings(self, shard: Shard | None = None) -> list[tuple[Customer, Building]]:
        """Every building of the fleet, or those ``shard`` owns, in a stable order."""
        return [
            (c, b) for c in self.customers for b in c.buildings if shard is None or shard.owns(c.id, b.id)
        ]

    def models(self, shard: Shard | None = None) -> list[ModelKey]:
        """Every model of the fleet, or those of the buildings ``shard`` owns, in a stable order."""
        out = []
        for c, b in self.buildings(shard):
            for e in b.energy_types or self.energy_types:
                for r in b.model_roles or self.model_roles:
                    out.append(ModelKey(customer=c.id, building=b.id, energy=e, model=r))
        return out

    def is_forecaster(self, role: str) -> bool:
        return role in self.forecast_roles

    def is_anomaly_detector(self, role: str) -> bool:
        return role in self.anomaly_roles


# ------------------------------------------------------------------------------------------- sources
class ListenConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    # exporter-toolkit web config (TLS, basic auth, headers; see fleetmon.webconfig); --web.config.file wins.
    web_config_file: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class MlflowConfig(_Model):
    enabled: bool = True
    tracking_uri: str = "http://127.0.0.1:5000"
    # Credentials: prefer the environment (MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD).
    token: str | None = None
    username: str | None = None
    password: str | None = None
    poll_interval_seconds: float = Field(default=30, gt=0)
    timeout_seconds: float = Field(default=10, gt=0)
    max_retries: int = Field(default=3, ge=0)
    # First retry waits this long, each further one twice as long (capped at 10 s).
    retry_backoff_seconds: float = Field(default=0.5, ge=0)
    # Incremental polls re-read runs that ended since the last poll minus this margin (client clocks that
    # stamp run end times may be skewed); re-reading a run is idempotent.
    incremental_margin_seconds: float = Field(default=300, ge=0)
    # A full re-read every so often catches what MLflow gives no change marker for (deleted runs, runs
    # imported with old timestamps, tags edited on finished runs, version tags). 0 = every poll is full.
    full_resync_seconds: float = Field(default=3600, ge=0)
    # Unmapped or malformed runs / registered models are recorded here once, with the reason.
    quarantine_file: Path = Path("var/quarantine/mlflow.jsonl")
    # Tag on a model version (or its training run) naming the model flavour (sklearn, lightgbm, ...).
    flavor_tag: str = "flavor"
    # Run tag naming the training data when the run logged no dataset inputs (lineage).
    training_data_tag: str = "training_data"
    # How runs and registered models map to the fleet: tag keys on runs / registered models ...
    tag_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "customer": "customer",
            "building": "building",
            "energy": "energy",
            "model": "model",
        }
    )
    # ... or, for registered models without tags, a name pattern.
    registered_model_pattern: str = "{customer}.{building}.{energy}.{model}"
    # When experiments hold one building's runs each, name them by this pattern (e.g. "{customer}/{building}")
    # and a shard (`shard`) does not read those of buildings other shards own; it answers for every run in
    # the ones it reads (one tagged for another shard's building is unmapped: wrong_experiment). Experiments
    # named otherwise are read by every shard, each keeping the runs its buildings' tags name. "" (default):
    # every shard reads every experiment.
    experiment_pattern: str = ""
    # Which logged run metrics are exported as model quality.
    metric_keys: list[str] = Field(default_factory=lambda: ["mae", "rmse", "mape"])
    # Logged run metrics holding durations, by kind (label ``kind``).
    duration_metric_keys: dict[str, str] = Field(
        default_factory=lambda: {
            "training": "training_duration_seconds",
            "inference": "inference_duration_seconds",
        }
    )
    aliases: list[str] = Field(default_factory=lambda: ["champion", "challenger"])
    listen: ListenConfig = Field(default_factory=lambda: ListenConfig(port=9701))

    @model_validator(mode="after")
    def _pattern_fields(self) -> MlflowConfig:
        for key in ("customer", "building", "energy", "model"):
            if key not in self.tag_keys:
                raise ValueError(f"tag_keys must name a tag for {key!r}")
            if "{" + key + "}" not in self.registered_model_pattern:
                raise ValueError(f"registered_model_pattern must contain {{{key}}}")
        if "wall" in self.duration_metric_keys:
            raise ValueError("duration_metric_keys: kind 'wall' is reserved for a run's wall time")
        if self.experiment_pattern:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.experiment_pattern) if f is not None}
            if fields != {"customer", "building"}:
                raise ValueError(
                    "experiment_pattern must use exactly {customer} and {building} (or be empty), "
                    f"not {sorted(fields)}"
                )
        return self


class FileSource(_Model):
    glob: str
    format: Literal["jsonl", "csv", "parquet"] = "jsonl"
    # The ``source`` label of this source's health metrics (default: predictions-0, actuals-1, ...).
    name: str | None = Field(default=None, pattern=ID_PATTERN)


class SqlSource(_Model):
    """Rows of a SQL query (SQLAlchemy URL), read incrementally by ``time_column``.

    The first read after a start runs ``query`` as given; later reads wrap it as
    ``SELECT * FROM (query) WHERE time_column > :since``, compared by the database in the column's own type,
    with ``since`` = the largest value read so far minus ``overlap_seconds``: a row committed after a newer
    one was read (a transaction that began earlier) is still found, and the rows of the overlap read before
    are recognised (by ``key_columns``, default all columns) and not counted again. See
    ``fleetmon.outputs.pipeline`` and docs/formats.md.
    """

    url: str
    query: str
    kind: Literal["predictions", "actuals"] = "predictions"
    time_column: str = Field(default="made_at", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    name: str | None = Field(default=None, pattern=ID_PATTERN)
    # How far behind the newest time_column value read each read starts again (in the column's units:
    # seconds for times and numbers, whole days for dates): the longest a row may take from its time_column
    # value to its commit and still be counted. 0 = only newer rows (late commits are missed).
    overlap_seconds: float = Field(default=300, ge=0)
    # Columns that identify a row (e.g. the table's primary key); empty = all columns of the row.
    key_columns: list[str] = Field(default_factory=list)
    # Longest a read may take: PostgreSQL cancels the query (SET LOCAL statement_timeout) and gives up
    # connecting after as long (libpq connect_timeout, at least 2 s); SQLite interrupts the query. Other
    # databases: set the server's own timeout.
    statement_timeout_seconds: float = Field(default=30, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # A typo is refused at start-up, naming the key; the message shows no part of the URL.
        if redact_url(v) is None:
            raise ValueError("not a SQLAlchemy URL (dialect+driver://user:password@host/database)")
        return v

    @field_validator("key_columns")
    @classmethod
    def _key_columns(cls, v: list[str]) -> list[str]:
        for c in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", c):
                raise ValueError(f"key column {c!r} is not a column name")
        if len(set(v)) != len(v):
            raise ValueError("key_columns lists a column twice")
        return v


class DriftColumnOverride(_Model):
    # Evidently stattest name (ks, chisquare, z, wasserstein, jensenshannon, psi, ...)
    stattest: str | None = None
    threshold: float | None = None


class VersionsConfig(_Model):
    """Benchmarking model versions on the same matured targets (shadow predictions with ``model_version``)."""

    enabled: bool = True
    # Matured targets of the last this many seconds are compared (every version on the same targets).
    window_seconds: float = Field(default=7 * 86400, gt=0)
    # Labels of the ``alias`` column kept as label values; rows with another alias count as shadow rows
    # of their version with alias "" (label values stay bounded).
    aliases: list[str] = Field(default_factory=lambda: ["champion", "challenger"])
    # A challenger beats the champion when its mean loss is lower by at least this share of the
    # champion's, on at least ``min_targets`` paired targets, with a Diebold-Mariano p-value below alpha.
    margin: float = Field(default=0.05, ge=0)
    min_targets: int = Field(default=24, ge=2)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    loss: Literal["squared", "absolute"] = "squared"
    # The forecasts' horizon in steps (Diebold-Mariano's h: HAC lags 0..h-1); 1 for one-step-ahead.
    horizon: int = Field(default=1, ge=1, le=168)


class MultivariateDriftConfig(_Model):
    """NannyML's data-reconstruction drift over all features together (fleetmon.drift.multivariate)."""

    enabled: bool = True
    # PCA keeps the components that explain this share of the reference's variance (NannyML's 0.65).
    explained_variance: float = Field(default=0.65, gt=0, lt=1)
    # The band: the reference chunks' mean error +- this many standard deviations (NannyML's 3).
    threshold_std: float = Field(default=3.0, ge=0)


class EstimationConfig(_Model):
    """The error of forecasts whose actuals have not arrived yet, estimated (fleetmon.outputs.estimation)."""

    enabled: bool = True
    # The loss model learns from the forecasters' matured rows with an actual of the last this many
    # seconds (default: the longest of outputs.windows), and is refitted this often.
    reference_seconds: float | None = Field(default=None, gt=0)
    refit_seconds: float = Field(default=3600, gt=0)
    # How good the estimates were is checked this long after they were made, when the late actuals of
    # their window are in (longer than the latest meter data of the fleet arrive).
    settle_seconds: float = Field(default=2 * 86400, gt=0)


class DriftConfig(_Model):
    enabled: bool = True
    # fleet: the batched engine (same numbers as Evidently, fleet-wide); evidently: Evidently per model.
    engine: Literal["fleet", "evidently"] = "fleet"
    interval_seconds: float = Field(default=300, gt=0)
    # rolling: reference = [now - reference_window - current_window, now - current_window)
    reference: Literal["rolling", "file"] = "rolling"
    reference_window_seconds: float = Field(default=7 * 86400, gt=0)
    current_window_seconds: float = Field(default=86400, gt=0)
    # For reference: file -- path or glob with a ``{customer}`` ... ``{model}`` pattern, or mlflow-artifacts:/ URI
    reference_path: str | None = None
    # Evidently's dataset-drift share (DataDriftPreset drift_share)
    drift_share: float = Field(default=0.5, gt=0, le=1)
    columns: dict[str, DriftColumnOverride] = Field(default_factory=dict)
    # Columns not tested for drift: calendar features (hour_of_day, day_of_week) differ between a short
    # current window and a long reference by construction.
    exclude: list[str] = Field(default_factory=list)
    multivariate: MultivariateDriftConfig = Field(default_factory=MultivariateDriftConfig)


class OutputsConfig(_Model):
    enabled: bool = True
    predictions: list[FileSource] = Field(default_factory=list)
    actuals: list[FileSource] = Field(default_factory=list)
    sql: list[SqlSource] = Field(default_factory=list)
    # The expected input features of every model; a missing or new column is a schema change.
    features: list[str] = Field(default_factory=list)
    poll_interval_seconds: float = Field(default=15, gt=0)
    # A poll that read nothing new recomputes quality and versions (their windows slide with time) and
    # renders again only when the last computation is this old; one with new rows always does.
    refresh_seconds: float = Field(default=60, ge=0)
    # Quality windows over matured predictions, name -> seconds (names become the ``window`` label).
    windows: dict[str, float] = Field(default_factory=lambda: {"24h": 86400.0, "7d": 7 * 86400.0})
    # How long predictions are kept in memory (must cover the longest window and drift windows).
    retention_seconds: float = Field(default=8 * 86400, gt=0)
    # Timestamps further than this in the future are rejected.
    max_future_skew_seconds: float = Field(default=300, ge=0)
    # Quantiles of the anomaly score exported per anomaly detector and window.
    score_quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.9, 0.99])
    drift: DriftConfig = Field(default_factory=DriftConfig)
    estimation: EstimationConfig = Field(default_factory=EstimationConfig)
    versions: VersionsConfig = Field(default_factory=VersionsConfig)
    quarantine_dir: Path = Path("var/quarantine/outputs")
    state_dir: Path = Path("var/state/outputs")
    listen: ListenConfig = Field(default_factory=lambda: ListenConfig(port=9702))

    @field_validator("score_quantiles")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        for q in v:
            if not 0 <= q <= 1:
                raise ValueError(f"quantile {q} is not within 0..1")
        return v

    @model_validator(mode="after")
    def _source_names(self) -> OutputsConfig:
        # Every source gets a stable name for the ``source`` label; names must be unique.
        seen: set[str] = set()
        sources: list[FileSource | SqlSource] = [*self.predictions, *self.actuals, *self.sql]
        kinds = (
            ["predictions"] * len(self.predictions)
            + ["actuals"] * len(self.actuals)
            + ["sql"] * len(self.sql)
        )
        for i, (src, kind) in enumerate(zip(sources, kinds, strict=True)):
            if src.name is None:
                src.name = f"{kind}-{i}"
            if src.name in seen:
                raise ValueError(f"duplicate source name {src.name!r}")
            seen.add(src.name)
        return self


class ProcessMatch(_Model):
    name: str = Field(pattern=ID_PATTERN)
    # regex matched against the process name or its command line
    match: str


# The Log Analytics tables Container Apps writes, by the environment's logs destination
# (`az containerapp env create --logs-destination log-analytics|azure-monitor`): classic custom-log tables with
# type-suffixed columns, or the resource-specific tables a diagnostic setting sends to the workspace.
LOG_ANALYTICS_TABLES = {
    "log-analytics": ("ContainerAppConsoleLogs_CL", "ContainerAppSystemLogs_CL"),
    "azure-monitor": ("ContainerAppConsoleLogs", "ContainerAppSystemLogs"),
}
# A KQL table name: it is pasted into the query, so nothing but a name is accepted.
_TABLE_PATTERN = r"^$|^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class LogAnalyticsConfig(_Model):
    # The workspace's id (a GUID: "Workspace ID" in the portal, `customerId` in ARM); none: not read.
    workspace_id: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )
    logs_destination: Literal["log-analytics", "azure-monitor"] = "log-analytics"
    # Table names; none: the destination's; "": that table is not read.
    console_table: str | None = Field(default=None, pattern=_TABLE_PATTERN)
    system_table: str | None = Field(default=None, pattern=_TABLE_PATTERN)
    # managed_identity (Container Apps, VMs: IDENTITY_ENDPOINT / IMDS), environment (a service principal in
    # AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH), default
    # (azure-identity's DefaultAzureCredential chain).
    credential: Literal["managed_identity", "environment", "default"] = "managed_identity"
    # A user-assigned managed identity's client id (none: the system-assigned identity).
    client_id: str | None = None
    # An authority that Entra ID's instance discovery does not know (Azure Stack, a private cloud).
    disable_instance_discovery: bool = False
    # The query API; sovereign clouds: https://api.loganalytics.azure.cn, https://api.loganalytics.us.
    endpoint: str = "https://api.loganalytics.io"
    query_interval_seconds: float = Field(default=60, gt=0)
    # Each query reads again this far behind the last one (Log Analytics ingests late); seen rows are skipped.
    overlap_seconds: float = Field(default=600, ge=0)
    max_rows_per_query: int = Field(default=10000, ge=1, le=500000)
    # Pages per table and poll: catching up after a long stop reads at most this many queries at a time.
    max_queries_per_poll: int = Field(default=10, ge=1)
    timeout_seconds: float = Field(default=60, gt=0, le=600)
    checkpoint_file: Path = Path("var/state/log-analytics.json")

    @field_validator("endpoint")
    @classmethod
    def _https(cls, v: str) -> str:
        # azure-core sends bearer tokens over TLS only; say so at start-up rather than on every query.
        if not v.startswith("https://"):
            raise ValueError("must be an https:// URL (bearer tokens are only sent over TLS)")
        return v.rstrip("/")

    def tables(self) -> dict[str, str]:
        """Kind (console, system) -> table name, for the tables that are read."""
        console, system = LOG_ANALYTICS_TABLES[self.logs_destination]
        names = {
            "console": console if self.console_table is None else self.console_table,
            "system": system if self.system_table is None else self.system_table,
        }
        return {kind: name for kind, name in names.items() if name}


class LogsConfig(_Model):
    enabled: bool = True
    # app name -> globs of log files belonging to it (none or []: no files, e.g. an app read only from Azure)
    apps: dict[str, list[str]] = Field(default_factory=dict)
    poll_interval_seconds: float = Field(default=2, gt=0)
    max_routes: int = Field(default=100, ge=1)
    state_file: Path = Path("var/state/logs-positions.json")
    quarantine_file: Path = Path("var/quarantine/logs.jsonl")
    log_analytics: LogAnalyticsConfig = Field(default_factory=LogAnalyticsConfig)

    @field_validator("apps", mode="before")
    @classmethod
    def _apps_without_files(cls, v: Any) -> Any:
        # `model-serving:` with nothing after it (YAML null) is an app without files.
        if isinstance(v, dict):
            return {k: ([] if g is None else g) for k, g in v.items()}
        return v


class PlatformConfig(_Model):
    logs: LogsConfig = Field(default_factory=LogsConfig)
    processes: list[ProcessMatch] = Field(default_factory=list)
    host: bool = True
    gpu: bool = True
    gpu_poll_interval_seconds: float = Field(default=10, gt=0)
    listen: ListenConfig = Field(default_factory=lambda: ListenConfig(port=9703))


# ------------------------------------------------------------------------------------- demo + stack
class DemoConfig(_Model):
    seed: int = 42
    customers: int = Field(default=4, ge=1)
    buildings: int = Field(default=20, ge=1)
    # One simulated hour lasts 3600 / time_scale wall seconds (60: a "day" of data every 24 minutes).
    time_scale: float = Field(default=60, gt=0)
    # Simulated history written at start-up, in simulated hours (reference windows are full at once).
    backfill_hours: int = Field(default=24 * 8, ge=0)
    # Where simulated outputs, logs and the ground truth go.
    output_dir: Path = Path("var/demo")
    # Seconds after start-up at which the first incidents begin (wall time).
    first_incident_after_seconds: float = Field(default=60, ge=0)
    # Wall seconds an incident lasts, [min, max] (default: 8 to 14 minutes at the demo's time scale).
    # Tests shorten it so alerts fire and resolve within a short run.
    incident_duration_seconds: tuple[float, float] | None = None
    # Share of the forecasters (and as much of the anomaly detectors) outside the quiet buildings that run a
    # challenger version beside the champion (shadow predictions, alias "challenger"; half of the
    # forecasters' truly better, every detector's worse). 0: none.
    challenger_share: float = Field(default=0.25, ge=0, le=1)
    # How late each building's meter data (actuals) arrive, in simulated hours: [min, max] for every
    # building (each its own, fixed by the seed), and per building id a delay of its own, as real meter
    # data is (hours for some, days for others). Until they arrive, the error is estimated
    # (outputs.estimation).
    actual_delay_hours: tuple[int, int] = (2, 4)
    actual_delay_overrides: dict[str, int] = Field(default_factory=dict)
    # The simulated training API (POST /train: retraining requests, docs/formats.md) on 127.0.0.1 while the
    # simulator runs live. 0: off.
    training_api_port: int = Field(default=9721, ge=0, le=65535)
    # Accepted retraining requests that may wait (queued or training) at once; more get 429.
    training_api_max_pending: int = Field(default=50, ge=1)
    # Push every simulated training job's outcome here (fleetmon.push; TLS and basic auth from
    # FLEETMON_PUSHGATEWAY_CA_FILE / _USERNAME / _PASSWORD_FILE). None: no pushes, but the native stack
    # sets its own Pushgateway; "": off even there.
    pushgateway_url: str | None = None

    @field_validator("incident_duration_seconds")
    @classmethod
    def _durations(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError("must be [min, max] with 0 < min <= max")
        return v

    @field_validator("actual_delay_hours")
    @classmethod
    def _delays(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError("must be [min, max] hours with 0 <= min <= max")
        return v

    @field_validator("actual_delay_overrides")
    @classmethod
    def _delay_overrides(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {b: h for b, h in v.items() if h < 0}
        if bad:
            raise ValueError(f"delays must be >= 0 hours: {bad}")
        return v

    @field_validator("pushgateway_url")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        if v and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL (or empty: no pushes)")
        return v


class GrafanaConfig(_Model):
    # A file holding the admin user's password. Unset: one is generated on first start, kept (mode 0600) in
    # <stack.data_dir>/grafana/admin-password. GF_SECURITY_ADMIN_PASSWORD in the environment wins over both.
    admin_password_file: Path | None = None
    # Anonymous visitors see the dashboards as read-only viewers. Off unless turned on (the demo config does).
    anonymous_viewer: bool = False


class ScaleConfig(_Model):
    """``stack.scale``: the native stack spread over exporter shards with one central store
    (fleetmon/scale.py, docs/scale.md)."""

    # 0: off (one set of exporters, one Prometheus). N >= 1: N shards of the three exporters, a Prometheus
    # agent per shard remote-writing to VictoriaMetrics, vmalert evaluating prometheus/rules/*.yml on it, and
    # two clustered Alertmanagers.
    shards: int = Field(default=0, ge=0, le=50)
    victoria_metrics_port: int = Field(default=8428, ge=1, le=65535)
    vmalert_port: int = Field(default=8880, ge=1, le=65535)
    # The second Alertmanager's web port, and the two peers' gossip ports.
    alertmanager_peer_port: int = Field(default=9193, ge=1, le=65535)
    alertmanager_cluster_ports: tuple[int, int] = (9094, 9194)
    # Shard i's mlflow, outputs and platform exporters listen on port_base + 10 i + 1, 2, 3, its Prometheus
    # agent on port_base + 10 i + 9.
    port_base: int = Field(default=9800, ge=1, le=65000)
    # How long VictoriaMetrics keeps samples (its -retentionPeriod: 30d, 12w, 1y, ...).
    retention: str = Field(default="30d", pattern=r"^[0-9]+[hdwy]?$")
    # Scrape and rule evaluation intervals (Prometheus durations, e.g. 15s); None: prometheus/prometheus.yml's.
    scrape_interval: str | None = Field(default=None, pattern=r"^[0-9]+(ms|s|m|h)$")
    evaluation_interval: str | None = Field(default=None, pattern=r"^[0-9]+(ms|s|m|h)$")


class StackConfig(_Model):
    # `fleetmon stack`: pid files in state_dir, logs in log_dir, each component's data under data_dir.
    state_dir: Path = Path("var/run")
    log_dir: Path = Path("var/log")
    data_dir: Path = Path("var/data")
    # Address the stack's own servers (Prometheus, Alertmanager, ...) listen on; 0.0.0.0 exposes them.
    bind_host: str = "127.0.0.1"
    # Start the demo: a local MLflow server and the simulator. false: monitor a real deployment.
    demo: bool = True
    # TLS and basic auth between every component: a local CA, certificate and passwords under
    # <data_dir>/tls and <data_dir>/secrets, made on first start (fleetmon/pki.py).
    secure: bool = False
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    pushgateway_port: int = 9091
    mlflow_port: int = 5000
    grafana_port: int = 3000
    grafana: GrafanaConfig = Field(default_factory=GrafanaConfig)
    webhook_port: int = 9704
    # The webhook receiver's web config (TLS, basic auth); `fleetmon webhook --web.config.file` wins.
    webhook_web_config_file: Path | None = None
    # Scale mode: exporter shards and a central store (0 shards: off).
    scale: ScaleConfig = Field(default_factory=ScaleConfig)

    @model_validator(mode="after")
    def _scale_plain(self) -> StackConfig:
        if self.scale.shards and self.secure:
            raise ValueError("scale.shards: the scale mode runs without TLS for now; set secure: false")
        return self


# ------------------------------------------------------------------------------------------ scoring
class ScoringConfig(_Model):
    """``fleetmon score``: registered challenger versions scored on the served rows' stored features, written
    as shadow predictions for the outputs exporter (fleetmon/scoring.py)."""

    enabled: bool = False
    interval_seconds: float = Field(default=300, gt=0)
    # Shadow prediction files go here: list this directory's *.jsonl under outputs.predictions too.
    output_dir: Path = Path("var/scoring/predictions")
    state_dir: Path = Path("var/state/scoring")
    # Versions with one of these aliases are scored, and (newer_than_champion) any version newer than the
    # champion; never the version serving the rows; the newest max_versions_per_model of each model.
    aliases: list[str] = Field(default_factory=lambda: ["challenger"])
    newer_than_champion: bool = True
    max_versions_per_model: int = Field(default=2, ge=1)
    # Served rows of the last this many seconds are scored (match outputs.versions.window_seconds).
    window_seconds: float = Field(default=7 * 86400, gt=0)
    # Worker processes that load and run the models; each under an address-space limit, each call (load and
    # predict) under a timeout; loaded models kept per worker.
    workers: int = Field(default=2, ge=1)
    timeout_seconds: float = Field(default=120, gt=0)
    memory_limit_mb: int = Field(default=2048, ge=0)
    # Loaded models kept per worker: enough for every version a worker scores makes an hourly update cheap
    # (a version always goes to the same worker); a load that runs out of memory empties the cache first.
    cache_size: int = Field(default=4096, ge=1)
    # A version that failed to load or predict is tried again after this long.
    retry_after_seconds: float = Field(default=3600, ge=0)


# ------------------------------------------------------------------------------------------ actions
class RetrainActionConfig(_Model):
    """Retraining requests posted to a training API when an alert says a model needs it."""

    enabled: bool = False
    # true: only say (log line, audit file, metric) what would be requested.
    dry_run: bool = True
    # The training API's endpoint (docs/formats.md "Training API"); required when enabled.
    url: str | None = None
    # Firing alerts (by name) that ask for a retraining of their model.
    alerts: list[str] = Field(default_factory=lambda: ["ModelDataDrift", "ModelErrorAboveBaseline"])
    # At most one request per model in this many seconds (Alertmanager repeats; both severities of an alert).
    min_interval_seconds: float = Field(default=6 * 3600, ge=0)
    # At most this many requests in any hour, fleet-wide (a fleet-wide incident must not retrain everything).
    max_per_hour: int = Field(default=20, ge=0)
    timeout_seconds: float = Field(default=10, gt=0)
    # A file holding a bearer token for the training API; a CA bundle to trust for https.
    token_file: Path | None = None
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _url(self) -> RetrainActionConfig:
        if self.enabled and not self.url:
            raise ValueError("url is required when retrain is enabled")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must be an http:// or https:// URL")
        return self


class PromoteActionConfig(_Model):
    """Moving the champion alias in MLflow to a challenger that has outperformed it long enough."""

    enabled: bool = False
    # true: only say what would be promoted.
    dry_run: bool = True
    # The firing alert that carries the verdict (labels champion_version, challenger_version).
    alert: str = "ChallengerOutperformsChampion"
    # The verdict must have held this long (seconds since the alert's startsAt) before the alias moves.
    hold_seconds: float = Field(default=3600, ge=0)
    alias: str = "champion"
    # At most one promotion per model in this many seconds, and this many in any hour fleet-wide.
    min_interval_seconds: float = Field(default=24 * 3600, ge=0)
    max_per_hour: int = Field(default=5, ge=0)


class ActionsConfig(_Model):
    """What the webhook receiver does with the alerts routed to its ``/actions`` endpoint
    (docs/alerting.md "Actions"). Off by default; each action dry-runs first."""

    retrain: RetrainActionConfig = Field(default_factory=RetrainActionConfig)
    promote: PromoteActionConfig = Field(default_factory=PromoteActionConfig)


class EvaluationsConfig(_Model):
    """``fleetmon evaluations``: each benchmarked version's figures on live actuals, read from Prometheus,
    logged back to MLflow as an evaluation of that version (fleetmon/evaluations.py)."""

    enabled: bool = False
    interval_seconds: float = Field(default=3600, gt=0)
    # Where the version benchmark is read (the Prometheus, or central store, Grafana reads).
    prometheus_url: str = "http://127.0.0.1:9090"
    prometheus_ca_file: Path | None = None
    prometheus_username: str | None = None
    prometheus_password_file: Path | None = None
    timeout_seconds: float = Field(default=30, gt=0)
    # One run per version in this experiment holds the history of its figures.
    experiment: str = "fleetmon/production-benchmarks"
    state_file: Path = Path("var/state/evaluations.json")


class Config(_Model):
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    platform: PlatformConfig = Field(default_factory=PlatformConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    actions: ActionsConfig = Field(default_factory=ActionsConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    evaluations: EvaluationsConfig = Field(default_factory=EvaluationsConfig)
    # Run the exporters as shard i of N ("i/N", or {index, count}): each exports and reads only the
    # buildings it owns (fleetmon/sharding.py); the exporters' --shard flag wins. Default 0/1: everything.
    shard: Shard = Field(default_factory=Shard)
    # The file it was read from (None when built in code).
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("shard", mode="before")
    @classmethod
    def _shard(cls, v: Any) -> Any:
        if isinstance(v, str):
            return Shard.parse(v)
        if isinstance(v, dict):
            unknown = set(v) - {"index", "count"}
            if unknown:
                raise ValueError(f"a shard has only index and count, not {sorted(unknown)}")
            if not all(isinstance(v.get(k, 0), int) and not isinstance(v.get(k), bool) for k in v):
                raise ValueError("a shard's index and count are whole numbers")
            return Shard(**v)
        return v


# --------------------------------------------------------------------------------------------- load
def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        node = raw
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        key = path[-1]
        if key in SECRET_KEYS:
            # Verbatim: as YAML, 123456 or yes would change type, '@x' fail and '#x' vanish.
            node[key] = value
            continue
        try:
            node[key] = safe_load_yaml(value) if value != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"{name}: not a valid YAML value: {yaml_error_text(e)}") from None
    # MLflow's variables go into the mlflow section only when it is a mapping: anything else (`mlflow: 5` in
    # the file, FLEETMON__MLFLOW=5) is left for validation to refuse, naming the key.
    mlflow = raw.setdefault("mlflow", {})
    if isinstance(mlflow, dict):
        for env, key in (
            ("MLFLOW_TRACKING_URI", "tracking_uri"),
            ("MLFLOW_TRACKING_TOKEN", "token"),
            ("MLFLOW_TRACKING_USERNAME", "username"),
            ("MLFLOW_TRACKING_PASSWORD", "password"),
        ):
            if environ.get(env):
                mlflow[key] = environ[env]
    return raw


def _format_error(path: Path | str, err: ValidationError, within: tuple[str, ...] = ()) -> str:
    """One line per error: ``<path>: <key>: <what is wrong>``; ``within``: the keys of the part validated."""
    lines = []
    for e in err.errors():
        loc = [*within, *(str(p) for p in e["loc"])]
        key = ".".join(loc) or "(top level)"
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if e["type"] == "extra_forbidden" or SECRET_KEYS & set(loc):
            shown = ""  # a secret's value is never shown; an unknown key may be one misspelt (tracking_token)
        elif loc and loc[-1] in URL_KEYS and isinstance(got, str):
            redacted = redact_url(got)
            shown = "" if redacted is None else f" (got {redacted!r})"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{path}: {key}: {msg}{shown}")
    return "\n".join(lines)


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Make relative paths absolute against the config file's directory."""

    def fix(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    def fix_glob(g: str) -> str:
        # URIs are not paths: s3://..., and MLflow's runs:/, models:/, mlflow-artifacts:/ (one slash)
        uri = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*:/", g) is not None
        return g if os.path.isabs(g) or uri else str(base / g)

    cfg.outputs.quarantine_dir = fix(cfg.outputs.quarantine_dir)
    cfg.outputs.state_dir = fix(cfg.outputs.state_dir)
    for src in [*cfg.outputs.predictions, *cfg.outputs.actuals]:
        src.glob = fix_glob(src.glob)
    if cfg.outputs.drift.reference_path:
        cfg.outputs.drift.reference_path = fix_glob(cfg.outputs.drift.reference_path)
    logs = cfg.platform.logs
    logs.state_file = fix(logs.state_file)
    logs.quarantine_file = fix(logs.quarantine_file)
    logs.log_analytics.checkpoint_file = fix(logs.log_analytics.checkpoint_file)
    logs.apps = {app: [fix_glob(g) for g in globs] for app, globs in logs.apps.items()}
    cfg.demo.output_dir = fix(cfg.demo.output_dir)
    cfg.stack.state_dir = fix(cfg.stack.state_dir)
    cfg.stack.data_dir = fix(cfg.stack.data_dir)
    cfg.stack.log_dir = fix(cfg.stack.log_dir)
    if cfg.stack.grafana.admin_password_file is not None:
        cfg.stack.grafana.admin_password_file = fix(cfg.stack.grafana.admin_password_file)
    for listen in (cfg.mlflow.listen, cfg.outputs.listen, cfg.platform.listen):
        if listen.web_config_file is not None:
            listen.web_config_file = fix(listen.web_config_file)
    if cfg.stack.webhook_web_config_file is not None:
        cfg.stack.webhook_web_config_file = fix(cfg.stack.webhook_web_config_file)
    cfg.scoring.output_dir = fix(cfg.scoring.output_dir)
    cfg.scoring.state_dir = fix(cfg.scoring.state_dir)
    ev = cfg.evaluations
    ev.state_file = fix(ev.state_file)
    if ev.prometheus_ca_file is not None:
        ev.prometheus_ca_file = fix(ev.prometheus_ca_file)
    if ev.prometheus_password_file is not None:
        ev.prometheus_password_file = fix(ev.prometheus_password_file)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:  # YAML is Unicode text; the exception would carry the file's bytes
        raise ConfigError(f"{path}: not UTF-8 text: invalid byte at offset {e.start}") from None
    try:
        data = safe_load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_text(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of sections, got {type(data).__name__}")
    return data


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], data: Any, path: Path, within: tuple[str, ...] = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # not chained: pydantic's own text repeats every input value, secrets included
        raise ConfigError(_format_error(path, e, within)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, validate. Raises ConfigError naming file and key."""
    path = Path(path)
    raw = _apply_env(_read_yaml(path), os.environ if environ is None else environ)
    base = path.resolve().parent
    # A fleet include file contributes customers (kept apart so large fleets stay readable).
    fleet = raw.get("fleet")
    if isinstance(fleet, dict) and fleet.get("include"):
        # This file's fleet section first: its include must be a path before it is read, and its customers
        # a list before the include's are appended.
        include = _validated(FleetConfig, fleet, path, ("fleet",)).include
        assert include is not None  # a non-empty value, validated
        inc = include if include.is_absolute() else base / include
        inc_raw = _read_yaml(inc)
        unknown = sorted(map(str, set(inc_raw) - {"customers"}))  # YAML keys may be 1, null, true
        if unknown:
            raise ConfigError(f"{inc}: {unknown[0]}: unknown key (a fleet file holds only 'customers')")
        _validated(FleetConfig, {"customers": inc_raw.get("customers") or []}, inc, ("fleet",))
        fleet["customers"] = list(fleet.get("customers") or []) + list(inc_raw.get("customers") or [])
    cfg = _validated(Config, raw, path)
    cfg.source = path.resolve()
    _resolve_paths(cfg, base)
    return cfg


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "fleetmon.yml"


def default_config_path() -> Path:
    """``$FLEETMON_CONFIG`` or the demo config shipped in the repository."""
    return Path(os.environ.get("FLEETMON_CONFIG", str(DEFAULT_CONFIG)))
