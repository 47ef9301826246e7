"""``--web.config.file``: TLS and basic auth for every fleetmon HTTP server, in exporter-toolkit's format.

The file is the one Prometheus, Alertmanager and Pushgateway read (prometheus/exporter-toolkit,
``docs/web-configuration.md``), with its semantics:

- ``tls_server_config``: ``cert_file`` + ``key_file`` switch TLS on; ``min_version`` defaults to TLS12,
  ``max_version`` to TLS13; ``client_auth_type`` NoClientCert (default), VerifyClientCertIfGiven or
  RequireAndVerifyClientCert, the last two with ``client_ca_file`` (or inline ``client_ca``);
  ``client_allowed_sans``, ``cipher_suites`` (Go's names), ``prefer_server_cipher_suites`` (default true),
  ``curve_preferences``. Relative paths are resolved against the web config file's directory.
- ``basic_auth_users``: user -> bcrypt hash. When set, *every* path needs credentials (``/-/healthy``
  too, as in exporter-toolkit). Results of bcrypt are cached, keyed by an HMAC of (user, hash, password)
  under a per-process random key, so no plain password is kept. An unknown user is checked against a
  dummy hash of the same cost: the same work and the same 401 (``WWW-Authenticate: Basic``) as a wrong
  password, so users cannot be enumerated.
- ``http_server_config.headers``: added to every response; only exporter-toolkit's five headers may be
  set (some only to fixed values). ``http2`` is accepted and ignored: fleetmon's servers speak HTTP/1.1.

What Python's ``ssl`` cannot do is refused with a clear error rather than served differently:
RequestClientCert / RequireAnyClientCert (Python verifies every client certificate it asks for), more than
one curve (``SSLContext.set_ecdh_curve`` takes one), inline ``cert``/``key`` (``load_cert_chain`` reads
files), encrypted keys, ``rate_limit``.

The file and the certificate files it names are stat()ed on every new connection and request and re-read
when one changed, so certificates and users rotate without a restart. A file that became invalid fails
closed (handshakes refused, requests answered 500) and is logged until it is fixed; switching TLS on or
off needs a restart. The TLS handshake runs in the per-connection thread (``finish_request``), with a
timeout, so a slow or hostile client never blocks the accept loop; a failed handshake is logged at debug
and counted in ``fleetmon_web_tls_handshake_errors_total``.

A server calls ``WebServing(path)`` at start-up (raises ``WebConfigError``, a ``ConfigError``, naming
the file and key), serves with ``WebThreadingWSGIServer`` / ``WebThreadingHTTPServer`` and sets
``server.web``, wraps its WSGI app with ``web.wsgi(app)`` or its handler with ``guard_handler()``, and
registers ``web`` (a collector) in its registry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
import ssl
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseServer
from typing import Any, TypeVar

import bcrypt
import yaml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetmon.config import ConfigError, _format_error, yaml_error_text

log = logging.getLogger(__name__)

# How long a client may take to complete the TLS handshake before its connection is dropped.
HANDSHAKE_TIMEOUT_SECONDS = 10.0
# exporter-toolkit keeps 100 results; a handful of scrapers need far fewer.
AUTH_CACHE_SIZE = 100
# A refused request's body up to this size is read and dropped before the 401, so closing the connection
# does not reset it under the client before it read the answer.
DRAIN_LIMIT_BYTES = 1 << 16
# After a refused handshake, how long to wait for the client to close before closing under it.
LINGER_SECONDS = 1.0

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit values Python's ssl cannot honour: it verifies every certificate it asks for.
UNSUPPORTED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
# Go's names (crypto/tls CipherSuites(), the list exporter-toolkit accepts) -> OpenSSL's names.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are accepted by exporter-toolkit but not configurable (neither in Go nor in OpenSSL's
# cipher list): accepted here too, without effect.
TLS13_CIPHER_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# exporter-toolkit's allow-list (web/handler.go extraHTTPHeaders): header -> allowed values (None: any).
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
# $2a$/$2b$/$2y$ (htpasswd -B writes $2y$), cost 04..31, 22 characters of salt + 31 of hash.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


class WebConfigError(ConfigError):
    """A web config file that cannot be used; the message names the file and the key."""


# ------------------------------------------------------------------------------------------- the file
class _Model(BaseModel):
    # Unknown keys are errors, as with exporter-toolkit's UnmarshalStrict.
    model_config = ConfigDict(extra="forbid")


class TLSServerConfig(_Model):
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_ca: str | None = None  # inline PEM
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: list[str] | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = Field(default_factory=list)
    # exporter-toolkit's inline certificate and key: refused below (Python's ssl loads them from files).
    cert: str | None = None
    key: str | None = None

    @field_validator("cert", "key")
    @classmethod
    def _no_inline(cls, v: str | None) -> str | None:
        if v:
            raise ValueError(
                "inline certificates and keys are not supported by fleetmon (Python's ssl loads them from "
                "files): use cert_file and key_file"
            )
        return v

    @field_validator("client_auth_type")
    @classmethod
    def _client_auth(cls, v: str) -> str:
        if v == "":
            return "NoClientCert"
        if v in UNSUPPORTED_CLIENT_AUTH_TYPES:
            raise ValueError(
                f"{v} is not supported by fleetmon: Python's ssl verifies every client certificate it asks "
                "for; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            )
        if v not in CLIENT_AUTH_TYPES:
            raise ValueError(f"unknown client_auth_type {v!r}: one of {', '.join(CLIENT_AUTH_TYPES)}")
        return v

    @field_validator("min_version", "max_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v not in TLS_VERSIONS:
            raise ValueError(f"unknown TLS version {v!r}: one of {', '.join(TLS_VERSIONS)}")
        return v

    @field_validator("cipher_suites", "curve_preferences", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return [] if v is None else v

    @field_validator("cipher_suites")
    @classmethod
    def _ciphers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in CIPHER_SUITES and name not in TLS13_CIPHER_SUITES:
                raise ValueError(
                    f"unknown cipher suite {name!r} (Go's names, e.g. {next(iter(CIPHER_SUITES))})"
                )
        return v

    @field_validator("curve_preferences")
    @classmethod
    def _curves(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in CURVES:
                raise ValueError(f"unknown curve {name!r}: one of {', '.join(CURVES)}")
        if len(v) > 1:
            raise ValueError(
                "fleetmon can apply only one curve (Python's ssl SSLContext.set_ecdh_curve): list exactly one"
            )
        return v

    @property
    def enabled(self) -> bool:
        # exporter-toolkit's TLSConfig.IsEnabled: any TLS field set switches TLS on (and then needs both files).
        return bool(
            self.cert_file
            or self.key_file
            or self.client_ca_file
            or self.client_ca
            or "client_auth_type" in self.model_fields_set
        )


class HTTPServerConfig(_Model):
    # Accepted for compatibility and ignored: fleetmon's servers speak HTTP/1.1 only.
    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, dict):
            for name, value in v.items():
                if name not in ALLOWED_HEADERS:
                    raise ValueError(
                        f"HTTP header {name!r} can not be configured (allowed: {', '.join(ALLOWED_HEADERS)})"
                    )
                allowed = ALLOWED_HEADERS[name]
                if allowed is not None and value not in allowed:
                    raise ValueError(
                        f"invalid value for {name}: expected one of {list(allowed)}, got {value!r}"
                    )
        return v


class WebConfigFile(_Model):
    tls_server_config: TLSServerConfig = Field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    rate_limit: Any = None

    @field_validator("tls_server_config", "http_server_config", "basic_auth_users", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, v: dict[str, str]) -> dict[str, str]:
        for user, hashed in v.items():
            if ":" in user:
                raise ValueError(f"user {user!r}: a basic-auth user name cannot contain ':'")
            if not BCRYPT_HASH.match(hashed):
                raise ValueError(
                    f"user {user!r}: not a bcrypt hash (expected $2y$<cost>$..., e.g. from "
                    "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`); never put a plain password here"
                )
        return v

    @field_validator("rate_limit")
    @classmethod
    def _no_rate_limit(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("rate_limit is not supported by fleetmon")
        return v


# ----------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedWebConfig:
    """A validated web config, ready to serve with."""

    path: Path
    file: WebConfigFile
    ssl_context: ssl.SSLContext | None
    users: dict[bytes, bytes]  # user name (UTF-8) -> bcrypt hash
    dummy_hash: bytes  # for unknown users: a hash of the users' highest cost
    headers: list[tuple[str, str]]
    watched: tuple[Path, ...]  # the file and the certificate files it names

    @property
    def tls(self) -> bool:
        return self.ssl_context is not None


def _err(path: Path, key: str, msg: str) -> WebConfigError:
    return WebConfigError(f"{path}: {key}: {msg}")


def load_web_config(path: str | Path) -> LoadedWebConfig:
    """Read and validate a web config file and load its certificates; raises ``WebConfigError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise WebConfigError(f"{path}: cannot read web config file: {e.strerror or e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WebConfigError(f"{path}: not valid YAML: {yaml_error_text(e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _err(path, "(top level)", f"expected a mapping, got {type(raw).__name__}")
    try:
        wc = WebConfigFile.model_validate(raw)
    except ValidationError as e:
        raise WebConfigError(_format_error(path, e)) from None  # pydantic's text repeats the inputs

    base = path.resolve().parent
    tls = wc.tls_server_config
    for key in ("cert_file", "key_file", "client_ca_file"):
        p = getattr(tls, key)
        if p is not None and not p.is_absolute():
            setattr(tls, key, base / p)
    ctx = _ssl_context(path, tls) if tls.enabled else None
    users = {u.encode(): h.encode() for u, h in wc.basic_auth_users.items()}
    cost = max((int(h[4:6]) for h in users.values()), default=10)
    watched = (path, *(p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p is not None))
    headers = list(wc.http_server_config.headers.items())
    dummy = _dummy_hash(cost) if users else b""
    return LoadedWebConfig(path, wc, ctx, users, dummy, headers, watched)


def _check_tls(path: Path, tls: TLSServerConfig) -> None:
    """Cross-field rules of exporter-toolkit's ConfigToTLSConfig, each naming its key."""
    k = "tls_server_config."
    if tls.cert_file is None:
        raise _err(path, k + "cert_file", "missing (TLS needs cert_file and key_file)")
    if tls.key_file is None:
        raise _err(path, k + "key_file", "missing (TLS needs cert_file and key_file)")
    has_ca = tls.client_ca_file is not None or bool(tls.client_ca)
    if tls.client_ca_file is not None and tls.client_ca:
        raise _err(path, k + "client_ca", "set client_ca_file or client_ca, not both")
    if has_ca and tls.client_auth_type == "NoClientCert":
        raise _err(
            path, k + "client_auth_type", "client CAs are configured but client_auth_type is NoClientCert"
        )
    if not has_ca and tls.client_auth_type != "NoClientCert":
        raise _err(path, k + "client_ca_file", f"required with client_auth_type {tls.client_auth_type}")
    if tls.client_allowed_sans is not None and tls.client_auth_type != "RequireAndVerifyClientCert":
        raise _err(path, k + "client_allowed_sans", "requires client_auth_type RequireAndVerifyClientCert")
    if TLS_VERSIONS[tls.min_version] > TLS_VERSIONS[tls.max_version]:
        raise _err(path, k + "min_version", f"{tls.min_version} is above max_version {tls.max_version}")


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # Called by load_cert_chain only for an encrypted key: never prompt on a terminal, refuse instead.
    raise _EncryptedKey


def _read_pem(path: Path, key: str, file: Path, marker: str, what: str) -> None:
    try:
        data = file.read_text(errors="replace")
    except OSError as e:
        raise _err(path, key, f"cannot read {file}: {e.strerror or e}") from e
    if marker not in data:
        raise _err(path, key, f"{file} holds no PEM {what}")


def _ssl_context(path: Path, tls: TLSServerConfig) -> ssl.SSLContext:
    _check_tls(path, tls)
    assert tls.cert_file is not None and tls.key_file is not None
    k = "tls_server_config."
    _read_pem(path, k + "cert_file", tls.cert_file, "-----BEGIN CERTIFICATE-----", "certificate")
    _read_pem(path, k + "key_file", tls.key_file, "PRIVATE KEY-----", "private key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        # TLS10/TLS11 are deprecated in Python's ssl; the file asked for them explicitly.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    if TLS_VERSIONS[tls.min_version] < ssl.TLSVersion.TLSv1_2:
        log.warning(
            "%s: min_version %s: OpenSSL 3 allows TLS below 1.2 only at security level 0, which fleetmon "
            "does not lower; such clients may still be refused",
            path,
            tls.min_version,
        )
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    except _EncryptedKey:
        raise _err(
            path, k + "key_file", f"{tls.key_file} is encrypted; an unencrypted key is needed"
        ) from None
    except (ssl.SSLError, OSError) as e:
        raise _err(
            path, k + "cert_file", f"cannot load {tls.cert_file} with key {tls.key_file}: {_ssl_reason(e)}"
        ) from e
    ctx.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    try:
        if tls.client_ca_file is not None:
            _read_pem(
                path, k + "client_ca_file", tls.client_ca_file, "-----BEGIN CERTIFICATE-----", "certificate"
            )
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        elif tls.client_ca:
            ctx.load_verify_locations(cadata=tls.client_ca)
    except (ssl.SSLError, OSError, ValueError) as e:
        key = "client_ca_file" if tls.client_ca_file is not None else "client_ca"
        raise _err(path, k + key, f"cannot load the client CA: {_ssl_reason(e)}") from e
    suites = [CIPHER_SUITES[c] for c in tls.cipher_suites if c in CIPHER_SUITES]
    if suites:
        try:
            ctx.set_ciphers(":".join(suites))
        except ssl.SSLError as e:
            raise _err(path, k + "cipher_suites", f"none usable with this OpenSSL: {_ssl_reason(e)}") from e
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve_preferences:
        ctx.set_ecdh_curve(CURVES[tls.curve_preferences[0]])
    return ctx


def _ssl_reason(e: Exception) -> str:
    return str(getattr(e, "reason", None) or getattr(e, "strerror", None) or e)


_dummy_hashes: dict[int, bytes] = {}
_dummy_lock = threading.Lock()


def _dummy_hash(cost: int) -> bytes:
    """A hash nobody knows the password of, of the given cost (exporter-toolkit uses a fixed cost-10 one)."""
    with _dummy_lock:
        if cost not in _dummy_hashes:
            _dummy_hashes[cost] = bcrypt.hashpw(secrets.token_bytes(16).hex().encode(), bcrypt.gensalt(cost))
        return _dummy_hashes[cost]


# ------------------------------------------------------------------------------------ authentication
class AuthCache:
    """bcrypt results, keyed by an HMAC of (user, hash, password): a hit costs microseconds, not bcrypt's
    tens of milliseconds, and no plain password is kept. Least recently used entries are dropped."""

    def __init__(self, size: int = AUTH_CACHE_SIZE) -> None:
        self.size = size
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, *parts: bytes) -> bytes:
        h = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in parts:  # length-prefixed: ("a:", "b") and ("a", ":b") differ
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()

    def get(self, key: bytes) -> bool | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            return None

    def set(self, key: bytes, value: bool) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


def parse_basic_auth(value: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an ``Authorization: Basic ...`` header; None when absent or malformed."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:  # e.g. a password longer than bcrypt's 72 bytes: never valid
        return False


@dataclass(frozen=True)
class Denial:
    """An answer instead of the page: 401 (credentials) or 500 (the web config is broken)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


_TEXT = (("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff"))
UNAUTHORIZED = Denial(401, "Unauthorized", (("WWW-Authenticate", "Basic"), *_TEXT), b"Unauthorized\n")
BROKEN = Denial(500, "Internal Server Error", _TEXT, b"Internal Server Error\n")


# ------------------------------------------------------------------------------------------- serving
_Signature = tuple[tuple[int, int, int, int] | None, ...]


def _signature(paths: Iterable[Path]) -> _Signature:
    out: list[tuple[int, int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class WebServing:
    """One server's web config: reloaded when changed, TLS handshakes, the auth gate, and its metrics."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        sig = _signature([self.path])
        good = load_web_config(self.path)  # start-up: raise, the caller refuses to start
        self._good = good
        # (signature of the watched files, config or None when the file is broken): swapped as one object.
        self._state: tuple[_Signature, LoadedWebConfig | None] = (
            sig + _signature(good.watched[1:]),
            good,
        )
        self.tls = good.tls
        self._reload_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()  # bcrypt is CPU-heavy: one at a time, as exporter-toolkit does
        self.cache = AuthCache()
        self._counts_lock = threading.Lock()
        self.handshake_errors = 0
        self.reload_errors = 0
        self.unauthorized = {"no_credentials": 0, "bad_credentials": 0}
        log.info(
            "web config %s: TLS %s, basic auth %s",
            self.path,
            "on" if good.tls else "off",
            f"for {len(good.users)} user(s)" if good.users else "off",
        )

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    # ------------------------------------------------------------------------------ reload
    def current(self) -> LoadedWebConfig | None:
        """The config to serve this connection or request with; None while the file is broken."""
        sig, cfg = self._state
        watched = (cfg or self._good).watched
        if _signature(watched) == sig:
            return cfg
        with self._reload_lock:
            sig, cfg = self._state
            watched = (cfg or self._good).watched
            now = _signature(watched)
            if now == sig:  # another thread reloaded meanwhile
                return cfg
            try:
                new = load_web_config(self.path)
                if new.tls != self.tls:
                    raise WebConfigError(
                        f"{self.path}: tls_server_config: switching TLS {'on' if new.tls else 'off'} "
                        "needs a restart"
                    )
            except WebConfigError as e:
                # Fail closed (as exporter-toolkit): a broken file must not leave removed users valid.
                log.error("web config %s: cannot reload, refusing connections until fixed: %s", self.path, e)
                with self._counts_lock:
                    self.reload_errors += 1
                self._state = (now, None)
                return None
            self._good = new
            # `now` was taken before reading, so a file replaced while it was read is read again next time
            # (only when the file names other certificate files are they stat()ed after reading).
            self._state = (now if new.watched == watched else _signature(new.watched), new)
            log.info("web config %s reloaded", self.path)
            return new

    # ------------------------------------------------------------------------------ TLS
    def handshake(self, sock: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        """TLS server handshake on an accepted connection (in its own thread); None when it failed."""
        cfg = self.current()
        if cfg is None or cfg.ssl_context is None:
            self._handshake_failed(client_address, "the web config is broken")
            sock.close()
            return None
        sock.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            conn = cfg.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as e:  # the client is already gone
            self._handshake_failed(client_address, str(e))
            sock.close()
            return None
        try:
            conn.do_handshake()
        except (OSError, ValueError) as e:  # ssl.SSLError, timeouts and resets are OSErrors
            self._handshake_failed(client_address, str(e))
            _close(conn, linger=True)
            return None
        allowed = cfg.file.tls_server_config.client_allowed_sans
        if allowed is not None and not _san_allowed(conn.getpeercert(), allowed):
            self._handshake_failed(client_address, f"client certificate has none of the SANs {allowed}")
            _close(conn, linger=True)
            return None
        conn.settimeout(None)
        return conn

    def _handshake_failed(self, client_address: Any, why: str) -> None:
        log.debug("TLS handshake with %s failed: %s", client_address, why)
        with self._counts_lock:
            self.handshake_errors += 1

    # ------------------------------------------------------------------------------ auth
    def gate(self, authorization: str | None) -> tuple[list[tuple[str, str]], Denial | None]:
        """Per request: the configured headers to add, and a Denial, or None to serve the request."""
        cfg = self.current()
        if cfg is None:
            return [], BROKEN
        if not cfg.users:
            return cfg.headers, None
        creds = parse_basic_auth(authorization)
        if creds is not None and self.check(cfg, *creds):
            return cfg.headers, None
        reason = "no_credentials" if creds is None else "bad_credentials"
        with self._counts_lock:
            self.unauthorized[reason] += 1
        log.debug("unauthorized request: %s", reason)
        return cfg.headers, UNAUTHORIZED

    def check(self, cfg: LoadedWebConfig, user: bytes, password: bytes) -> bool:
        hashed = cfg.users.get(user)
        known = hashed is not None
        # Unknown user: the same bcrypt work against a dummy hash, the same answer (no user enumeration).
        hashed = hashed if hashed is not None else cfg.dummy_hash
        key = self.cache.key(user, hashed, password)
        ok = self.cache.get(key)
        if ok is None:
            with self._bcrypt_lock:
                ok = _checkpw(password, hashed) and known
            self.cache.set(key, ok)
        return ok and known

    # ------------------------------------------------------------------------------ adapters
    def wsgi(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """Wrap a WSGI app: the auth gate before it, the configured headers on every answer."""

        def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if self.tls:
                environ["wsgi.url_scheme"] = "https"
            extra, denial = self.gate(environ.get("HTTP_AUTHORIZATION"))
            if denial is not None:
                length = _content_length(environ.get("CONTENT_LENGTH"))
                if 0 < length <= DRAIN_LIMIT_BYTES:
                    environ["wsgi.input"].read(length)
                start_response(f"{denial.status} {denial.reason}", [*denial.headers, *extra])
                return [denial.body]

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                have = {k.lower() for k, _ in headers}
                return start_response(
                    status, headers + [h for h in extra if h[0].lower() not in have], exc_info
                )

            return app(environ, start)

        return guarded

    # ------------------------------------------------------------------------------ metrics
    def collect(self) -> Iterator[Metric]:
        with self._counts_lock:
            handshake, reloads, unauth = self.handshake_errors, self.reload_errors, dict(self.unauthorized)
        c = CounterMetricFamily(
            "fleetmon_web_tls_handshake_errors",
            "TLS handshakes that failed (no or an untrusted client certificate, a TLS version outside "
            "min_version..max_version, plain HTTP on the TLS port, a timeout, ...).",
        )
        c.add_metric([], handshake)
        yield c
        c = CounterMetricFamily(
            "fleetmon_web_unauthorized_requests",
            "Requests answered 401 because of missing or bad basic-auth credentials.",
            labels=["reason"],
        )
        for reason, n in unauth.items():
            c.add_metric([reason], n)
        yield c
        c = CounterMetricFamily(
            "fleetmon_web_config_reload_errors", "Times a changed web config file could not be loaded."
        )
        c.add_metric([], reloads)
        yield c
        yield GaugeMetricFamily(
            "fleetmon_web_config_last_reload_successful",
            "Whether the web config file in use is valid (0: connections and requests are refused).",
            value=0.0 if self._state[1] is None else 1.0,
        )


def _content_length(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return -1


def _san_allowed(cert: dict[str, Any] | None, allowed: list[str]) -> bool:
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "IP Address":  # Python prints IPv6 in full upper case; Go compares the short form
            try:
                value = str(ipaddress.ip_address(value.strip()))
            except ValueError:
                pass
        if value in allowed:
            return True
    return False


def _close(conn: socket.socket, linger: bool = False) -> None:
    """Close after a FIN. ``linger``: first read what the client still sends (briefly), so that closing
    with unread data (a TLS 1.3 client sends its request before the server judged its certificate) does
    not reset the connection and destroy the TLS alert that tells the client why it was refused."""
    try:
        conn.shutdown(socket.SHUT_WR)
        if linger:
            conn.settimeout(LINGER_SECONDS)
            left = DRAIN_LIMIT_BYTES
            while left > 0 and (chunk := conn.recv(min(left, 16384))):
                left -= len(chunk)
    except OSError:
        pass
    conn.close()


class _WebServerMixin(BaseServer):
    """A socketserver whose connections get their TLS handshake in the connection's own thread."""

    web: WebServing | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        web = self.web
        if web is None or not web.tls:
            super().finish_request(request, client_address)
            return
        conn = web.handshake(request, client_address)
        if conn is None:
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            # shutdown_request() gets the plain socket, detached by the TLS wrap: close the TLS one here.
            _close(conn)


class WebThreadingWSGIServer(_WebServerMixin, ThreadingWSGIServer):
    """prometheus_client's ThreadingWSGIServer, with ``web`` (TLS) when set."""


class WebThreadingHTTPServer(_WebServerMixin, ThreadingHTTPServer):
    """http.server's ThreadingHTTPServer, with ``web`` (TLS) when set."""


class _GuardedHandler(BaseHTTPRequestHandler):
    """Applies ``server.web``'s auth gate to every request and adds its headers to every answer."""

    _web_headers: list[tuple[str, str]] = []  # noqa: RUF012 (replaced per request, never mutated)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        web: WebServing | None = getattr(self.server, "web", None)
        if web is None:
            return True
        self._web_headers, denial = web.gate(self.headers.get("Authorization"))
        if denial is None:
            return True
        self.close_connection = True  # a larger body is left unread
        length = _content_length(self.headers.get("Content-Length"))
        if 0 < length <= DRAIN_LIMIT_BYTES:
            self.rfile.read(length)
        self.send_response(denial.status, denial.reason)
        for k, v in denial.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(denial.body)))
        self.end_headers()
        self.wfile.write(denial.body)
        return False

    def end_headers(self) -> None:
        for k, v in self._web_headers:
            self.send_header(k, v)
        super().end_headers()


H = TypeVar("H", bound=BaseHTTPRequestHandler)


def guard_handler(handler: type[H]) -> type[H]:
    """``handler`` with the auth gate and headers of its server's ``web`` (a no-op when it has none)."""
    return type(f"Guarded{handler.__name__}", (_GuardedHandler, handler), {})


def resolve(flag: str | None, configured: Path | None) -> Path | None:
    """The web config to use: the flag (or its env default) wins, ``""`` switches it off, else the config."""
    if flag is not None:
        return Path(flag) if flag else None
    return configured
