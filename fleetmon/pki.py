"""The secure stack's files (``stack.secure: true``): a local CA, one server certificate, one password per
client identity and the web config every server of the stack reads.

Under ``<stack.data_dir>``::

    tls/ca.crt, tls/ca.key          the stack's own CA (key 0600); clients trust ca.crt
    tls/server.crt, tls/server.key  the certificate of every server of the stack, signed by the CA (key 0600)
    secrets/<user>.password         a random password per client identity (USERS), 0600
    secrets/web.yml                 exporter-toolkit web config: TLS 1.2+, the users' bcrypt hashes, the
                                    nosniff / deny headers. Prometheus, Alertmanager, Pushgateway, the
                                    exporters and the webhook receiver all take it as --web.config.file;
                                    its certificate paths are relative (../tls/...), so the same file works
                                    wherever tls/ and secrets/ are mounted side by side (docker-compose)

``ensure()`` creates what is missing and keeps the rest, so it runs on every ``fleetmon stack`` command:
the CA and the passwords live as long as the data dir; the server certificate is re-issued when it is
missing, expires within RENEW_BEFORE, names other hosts than wanted, or is not signed by the CA on disk (a
CA re-created because it was lost or about to expire); web.yml is rewritten when it is missing, names
other users or files, or is older than a password file (a password changed by hand). The servers re-read
their web config and certificate files when they change (exporter-toolkit and fleetmon.webconfig alike),
so a renewal needs no restart; Grafana reads its certificate at start-up.

``client()`` is how the stack's probes, tests and people talk to a secure stack: an ``ssl.SSLContext``
trusting only the stack's CA plus the ``Authorization`` header of one user.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import secrets
import socket
import ssl
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Client identities, one password each. Every server of the stack accepts all of them (one web.yml).
USERS = {
    "prometheus": "Prometheus: scrapes every target, sends alerts to Alertmanager",
    "alertmanager": "Alertmanager: delivers notifications to the webhook receiver",
    "grafana": "Grafana's datasources: queries Prometheus and Alertmanager",
    "fleetmon": "the stack's own health probes, `fleetmon push`, people and tests",
}
CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
# Backdated a little, so a client whose clock is slightly behind accepts a fresh certificate.
CLOCK_SKEW = dt.timedelta(minutes=5)
BCRYPT_COST = 10  # exporter-toolkit's recommendation; servers cache the result per password
WEB_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "deny"}
# bind addresses that are not one host: the certificate names 127.0.0.1 and localhost for them
ANY_ADDRESS = {"", "0.0.0.0", "::"}


@dataclass(frozen=True)
class StackFiles:
    """Where a stack's secure files are (under its data dir), and what ``ensure`` changed."""

    data_dir: Path
    changes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.tls_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.tls_dir / "server.key"

    @property
    def web_config(self) -> Path:
        return self.secrets_dir / "web.yml"

    def password_file(self, user: str) -> Path:
        if user not in USERS:
            raise KeyError(f"unknown stack user {user!r} (one of {', '.join(USERS)})")
        return self.secrets_dir / f"{user}.password"


def server_hosts(*bind_hosts: str) -> list[str]:
    """The names the server certificate carries: 127.0.0.1, localhost and each specific bind address."""
    out = ["127.0.0.1", "localhost"]
    for h in bind_hosts:
        if h not in ANY_ADDRESS and h not in out:
            out.append(h)
    return out


def ensure(data_dir: Path, hosts: Iterable[str], now: dt.datetime | None = None) -> StackFiles:
    """Create or renew the CA, the server certificate for ``hosts``, the passwords and web.yml."""
    now = now or dt.datetime.now(dt.UTC)
    files = StackFiles(data_dir)
    changes: list[str] = []
    for d in (files.tls_dir, files.secrets_dir):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)

    ca = _load_pair(files.ca_cert, files.ca_key)
    if ca is None or ca[0].not_valid_after_utc - now < RENEW_BEFORE:
        changes.append("created the CA" if ca is None else "re-created the CA (it expires soon)")
        ca = _new_ca(now)
        _write(files.ca_key, _key_pem(ca[1]), 0o600)
        _write(files.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM), 0o644)
    ca_cert, ca_key = ca

    wanted = _sans(hosts)
    why = _server_outdated(files, ca_cert, wanted, now)
    if why:
        changes.append(f"issued the server certificate ({why})")
        cert, key = _new_server(ca_cert, ca_key, wanted, now)
        _write(files.server_key, _key_pem(key), 0o600)
        _write(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    for user in USERS:
        if _create_secret(files.password_file(user)):
            changes.append(f"created the password of {user}")

    if not _web_config_current(files):
        _write(files.web_config, _web_config(files).encode(), 0o600)
        changes.append("wrote web.yml")
    return StackFiles(data_dir, tuple(changes))


# ----------------------------------------------------------------------------------------- clients
@dataclass(frozen=True)
class Client:
    """Talks to a secure stack: TLS verified against the stack's CA, basic auth as one user (or none)."""

    ssl_context: ssl.SSLContext
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls, ca_file: Path | None, username: str | None = None, password_file: Path | None = None
    ) -> Client:
        """Trusting ``ca_file`` (None: the system's CAs), as ``username`` with the password in its file."""
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if username is None or password_file is None:
            return cls(ctx)
        return cls(ctx, username, Path(password_file).read_text().strip())

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header's value, or None for TLS only."""
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    @property
    def headers(self) -> dict[str, str]:
        auth = self.authorization
        return {"Authorization": auth} if auth else {}

    def open(
        self, url: str | urllib.request.Request, data: bytes | None = None, timeout: float = 10.0
    ) -> HTTPResponse:
        """``urllib.request.urlopen`` with the CA and the credentials (never sent on to a redirect)."""
        req = url if isinstance(url, urllib.request.Request) else urllib.request.Request(url, data=data)
        for k, v in self.headers.items():
            if not req.has_header(k):
                req.add_unredirected_header(k, v)
        resp: HTTPResponse = urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context)
        return resp

    def opener(self, *urls: str) -> urllib.request.OpenerDirector:
        """A urllib opener that trusts the CA and sends the credentials, without waiting for a 401, to
        ``urls`` (and what lies under them: scheme, host and port must match) and to no other address.
        ``urllib.request.install_opener(...)`` makes every plain ``urlopen(url)`` use it."""
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=self.ssl_context)]
        if self.username is not None and self.password is not None:
            passwords = urllib.request.HTTPPasswordMgrWithPriorAuth()
            passwords.add_password(None, list(urls), self.username, self.password, is_authenticated=True)
            handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
        return urllib.request.build_opener(*handlers)


def client(data_dir: Path, user: str | None = "fleetmon") -> Client:
    """A client of the secure stack whose data dir is ``data_dir`` (as ``user``; None: TLS only)."""
    files = StackFiles(data_dir)
    if user is None:
        return Client.from_files(files.ca_cert)
    return Client.from_files(files.ca_cert, user, files.password_file(user))


# ------------------------------------------------------------------------------------------ files
def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically; the new file has ``mode`` from its first byte (never world-readable
    in between)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _create_secret(path: Path, nbytes: int = 24) -> bool:
    """Create ``path`` with a random password (0600) unless it exists; True if created."""
    if path.exists():
        return False
    # token_urlsafe: letters, digits, - and _ only, so the password survives every config's quoting
    # (and Grafana's $-expansion of provisioning values).
    _write(path, secrets.token_urlsafe(nbytes).encode(), 0o600)
    return True


def _web_doc(files: StackFiles, hashes: Mapping[str, str]) -> dict[str, Any]:
    rel = os.path.relpath(files.tls_dir, files.secrets_dir)
    return {
        "tls_server_config": {
            "cert_file": f"{rel}/{files.server_cert.name}",
            "key_file": f"{rel}/{files.server_key.name}",
            "min_version": "TLS12",
        },
        "http_server_config": {"headers": dict(WEB_HEADERS)},
        "basic_auth_users": dict(hashes),
    }


def _web_config(files: StackFiles) -> str:
    hashes = {
        user: bcrypt.hashpw(
            files.password_file(user).read_text().strip().encode(), bcrypt.gensalt(BCRYPT_COST)
        ).decode()
        for user in USERS
    }
    return (
        "# Written by fleetmon (fleetmon/pki.py) for every server of the secure stack: Prometheus,\n"
        "# Alertmanager, Pushgateway, the exporters and the webhook receiver (--web.config.file).\n"
        "# The users' passwords are in the *.password files beside this one. Rewritten when one changes.\n"
        + yaml.safe_dump(_web_doc(files, hashes), sort_keys=False)
    )


def _web_config_current(files: StackFiles) -> bool:
    try:
        doc = yaml.safe_load(files.web_config.read_text())
        written = files.web_config.stat().st_mtime_ns
        newest = max(files.password_file(u).stat().st_mtime_ns for u in USERS)
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(doc, dict) or written < newest:
        return False
    users = doc.get("basic_auth_users")
    if not isinstance(users, dict) or set(users) != set(USERS):
        return False
    return doc == _web_doc(files, users)


# ---------------------------------------------------------------------------------------- certificates
def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """A certificate and its key, or None when either is missing, unreadable or they do not match."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def _server_outdated(
    files: StackFiles, ca: x509.Certificate, wanted: list[x509.GeneralName], now: dt.datetime
) -> str | None:
    """Why the server certificate must be (re-)issued, or None to keep it."""
    pair = _load_pair(files.server_cert, files.server_key)
    if pair is None:
        return "none yet"
    cert = pair[0]
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "not signed by the current CA"
    if cert.not_valid_before_utc > now:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"it expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    if set(have) != set(wanted):
        return "other host names"
    return None


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleetmon"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"fleetmon stack CA ({socket.gethostname()})")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_server(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName], now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fleetmon stack"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key
