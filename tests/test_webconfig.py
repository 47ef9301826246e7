"""``--web.config.file`` (exporter-toolkit's format): real servers, real TLS clients, certificates made here.

Both fleetmon server kinds are tested the same way: the exporter framework's WSGI server and the webhook
receiver's http.server. The CA, server and client certificates are generated per session with
``cryptography`` (EC P-256 keys: fast); bcrypt hashes use cost 4 so a check takes a millisecond.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetmon.config import load_config
from fleetmon.exporter import Exporter
from fleetmon.procs import free_port
from fleetmon.webconfig import WebConfigError, WebServing, load_web_config, parse_basic_auth
from fleetmon.webhook import Receiver

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = b"s3cret-scrape"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(4)).decode()
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "deny",
    "Content-Security-Policy": "default-src 'self'",
}


# ------------------------------------------------------------------------------------------ the PKI
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    cn: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    signer_key, issuer_name = (key, _name(cn)) if issuer is None else (issuer[0], issuer[1].subject)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
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
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        assert issuer is not None
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False
        )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, b.sign(signer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server: tuple[Path, Path]  # cert, key
    server2: tuple[Path, Path]  # another certificate for the same names (rotation)
    client: tuple[Path, Path]  # signed by the CA, SAN DNS:prometheus.fleetmon.test
    rogue_client: tuple[Path, Path]  # signed by another CA


def _write(
    d: Path, stem: str, pair: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
) -> tuple[Path, Path]:
    key, cert = pair
    (d / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d / f"{stem}.crt", d / f"{stem}.key"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _issue("fleetmon test CA", None, ca=True)
    rogue_ca = _issue("someone else's CA", None, ca=True)
    server_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    _write(d, "ca", ca)
    return Pki(
        d,
        d / "ca.crt",
        _write(d, "server", _issue("server one", ca, sans=server_names)),
        _write(d, "server2", _issue("server two", ca, sans=server_names)),
        _write(d, "client", _issue("prometheus", ca, sans=[x509.DNSName("prometheus.fleetmon.test")])),
        _write(d, "rogue", _issue("prometheus", rogue_ca, sans=[x509.DNSName("prometheus.fleetmon.test")])),
    )


def web_file(d: Path, conf: dict[str, Any], name: str = "web.yml") -> Path:
    """Write a web config atomically (a new inode, as a rotation tool does)."""
    path = d / name
    tmp = d / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump(conf))
    os.replace(tmp, path)
    return path


def tls_conf(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {"cert_file": str(pki.server[0]), "key_file": str(pki.server[1]), **extra}


# ------------------------------------------------------------------------------------- the servers
@dataclass
class Served:
    port: int
    web: WebServing | None

    def request(
        self,
        path: str = "/metrics",
        *,
        ctx: ssl.SSLContext | None = None,
        auth: tuple[bytes, bytes] | None = None,
        method: str = "GET",
        body: bytes | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn: http.client.HTTPConnection
        if ctx is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=ctx)
        headers = {}
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(auth[0] + b":" + auth[1]).decode()
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.headers, r.read()
        finally:
            conn.close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Server-side counters move in the connection's thread, just after the client saw the outcome."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def stop_server(shutdown: Callable[[], None], port: int) -> None:
    """``shutdown()`` waits for serve_forever's next poll (0.5 s); a connection wakes it at once."""
    t = threading.Thread(target=shutdown)
    t.start()
    while t.is_alive():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            pass
        t.join(0.02)


@pytest.fixture(params=["exporter", "webhook"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Path | None], Served]]:
    """Start the exporter framework's server or the webhook receiver on a free port, with a web config."""
    stops: list[Callable[[], None]] = []

    def start(path: Path | None) -> Served:
        web = WebServing(path) if path is not None else None
        if request.param == "exporter":
            httpd, thread = Exporter("test", {}).serve("127.0.0.1", 0, web)

            port = httpd.server_address[1]

            def stop() -> None:
                stop_server(httpd.shutdown, port)
                httpd.server_close()
                thread.join(5)

            stops.append(stop)
            return Served(port, web)
        r = Receiver(tmp_path / "webhook", port=0, web=web).start()
        stops.append(lambda: stop_server(r.close, r.port))
        return Served(r.port, web)

    yield start
    for stop in stops:
        stop()


def client_ctx(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A real TLS client trusting the test CA (and checking the server's name, 127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


# --------------------------------------------------------------------------------------- behaviour
def test_plain_http_without_web_config_works_as_before(serve: Callable[[Path | None], Served]) -> None:
    s = serve(None)
    status, _, body = s.request("/metrics")
    assert status == 200
    assert b"fleetmon_web_" not in body  # no web metrics without a web config
    assert s.request("/-/healthy")[0] == 200


def test_tls_with_basic_auth(serve: Callable[[Path | None], Served], pki: Pki, tmp_path: Path) -> None:
    path = web_file(
        tmp_path,
        {
            "tls_server_config": tls_conf(pki),
            "basic_auth_users": {"prometheus": HASH},
            "http_server_config": {"headers": HEADERS, "http2": True},
        },
    )
    s = serve(path)
    ctx = client_ctx(pki)

    status, headers, body = s.request("/metrics", ctx=ctx)
    assert status == 401
    assert headers["WWW-Authenticate"] == "Basic"
    unauthorized = body

    wrong = s.request("/metrics", ctx=ctx, auth=(b"prometheus", b"guess"))
    unknown = s.request("/metrics", ctx=ctx, auth=(b"nobody", PASSWORD))
    for status, headers, body in (wrong, unknown):
        assert status == 401
        assert headers["WWW-Authenticate"] == "Basic"
        assert body == unauthorized  # the same answer: users cannot be enumerated
    assert dict(wrong[1]).keys() - {"Date"} == dict(unknown[1]).keys() - {"Date"}
    assert s.request("/metrics", ctx=ctx, auth=(b"prometheus", b"x:" + PASSWORD))[0] == 401
    # every path is protected, /-/healthy too (as in exporter-toolkit)
    assert s.request("/-/healthy", ctx=ctx)[0] == 401

    status, headers, body = s.request("/metrics", ctx=ctx, auth=(b"prometheus", PASSWORD))
    assert status == 200
    for k, v in HEADERS.items():
        assert headers[k] == v
        assert unknown[1][k] == v  # on refusals too
    text = body.decode()
    assert 'fleetmon_web_unauthorized_requests_total{reason="no_credentials"} 2.0' in text
    assert 'fleetmon_web_unauthorized_requests_total{reason="bad_credentials"} 3.0' in text
    assert "fleetmon_web_config_last_reload_successful 1.0" in text

    # plain HTTP on the TLS port: a failed handshake, counted, and the server carries on
    with pytest.raises((http.client.HTTPException, OSError)):
        s.request("/metrics")
    eventually(lambda: s.web is not None and s.web.handshake_errors == 1)
    with requests.get(
        f"https://127.0.0.1:{s.port}/metrics",
        verify=str(pki.ca),
        auth=("prometheus", PASSWORD.decode()),
        timeout=5,
    ) as r:
        assert r.status_code == 200
        assert "fleetmon_web_tls_handshake_errors_total 1.0" in r.text


def test_web_metrics_pass_promtool(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(WebServing(web_file(tmp_path, {"basic_auth_users": {"prometheus": HASH}})))
    text = generate_latest(reg).decode()
    assert "fleetmon_web_tls_handshake_errors_total 0.0" in text
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_webhook_post_needs_credentials(pki: Pki, tmp_path: Path) -> None:
    path = web_file(
        tmp_path, {"tls_server_config": tls_conf(pki), "basic_auth_users": {"alertmanager": HASH}}
    )
    payload = {"version": "4", "status": "firing", "receiver": "webhook", "alerts": [{"labels": {}}]}
    r = Receiver(tmp_path / "data", port=0, web=WebServing(path)).start()
    try:
        s = Served(r.port, r.web)
        body = json.dumps(payload).encode()
        # the refused body is read and dropped, so the 401 arrives rather than a connection reset
        assert s.request("/alerts", ctx=client_ctx(pki), method="POST", body=body)[0] == 401
        assert r.store.total_stored == 0
        status, _, answer = s.request(
            "/alerts", ctx=client_ctx(pki), method="POST", body=body, auth=(b"alertmanager", PASSWORD)
        )
        assert (status, json.loads(answer)) == (200, {"status": "stored"})
        assert r.store.total_stored == 1
    finally:
        stop_server(r.close, r.port)


def test_basic_auth_without_tls(serve: Callable[[Path | None], Served], tmp_path: Path) -> None:
    s = serve(web_file(tmp_path, {"basic_auth_users": {"prometheus": HASH}}))
    assert s.web is not None and s.web.scheme == "http"
    assert s.request("/metrics")[0] == 401
    assert s.request("/metrics", auth=(b"prometheus", PASSWORD))[0] == 200


def test_mutual_tls(serve: Callable[[Path | None], Served], pki: Pki, tmp_path: Path) -> None:
    s = serve(
        web_file(
            tmp_path,
            {
                "tls_server_config": tls_conf(
                    pki,
                    client_auth_type="RequireAndVerifyClientCert",
                    client_ca_file=str(pki.ca),
                    client_allowed_sans=["prometheus.fleetmon.test"],
                )
            },
        )
    )
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        s.request("/metrics", ctx=client_ctx(pki))
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
        s.request("/metrics", ctx=client_ctx(pki, pki.rogue_client))
    eventually(lambda: s.web is not None and s.web.handshake_errors == 2)
    status, _, body = s.request("/metrics", ctx=client_ctx(pki, pki.client))
    assert status == 200
    assert b"fleetmon_web_tls_handshake_errors_total 2.0" in body
    # with requests too (the client Prometheus' http_config resembles: ca_file, cert_file, key_file)
    with requests.get(
        f"https://127.0.0.1:{s.port}/-/healthy",
        verify=str(pki.ca),
        cert=(str(pki.client[0]), str(pki.client[1])),
        timeout=5,
    ) as r:
        assert r.status_code == 200


def test_client_allowed_sans_refuses_other_names(
    serve: Callable[[Path | None], Served], pki: Pki, tmp_path: Path
) -> None:
    tls = tls_conf(
        pki,
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(pki.ca),
        client_allowed_sans=["grafana.fleetmon.test"],
    )
    s = serve(web_file(tmp_path, {"tls_server_config": tls}))
    with pytest.raises((ssl.SSLError, http.client.HTTPException, OSError)):
        s.request("/metrics", ctx=client_ctx(pki, pki.client))
    eventually(lambda: s.web is not None and s.web.handshake_errors == 1)


def _versions(ctx: ssl.SSLContext, lo: ssl.TLSVersion, hi: ssl.TLSVersion) -> ssl.SSLContext:
    with warnings.catch_warnings():  # TLSv1_1 is deprecated in Python's ssl: exactly why we test it
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = lo, hi
    return ctx


V = ssl.TLSVersion


@pytest.mark.parametrize(
    ("server", "client", "expect"),
    [
        ({}, (V.TLSv1_2, V.TLSv1_2), "TLSv1.2"),
        ({}, (V.TLSv1_3, V.TLSv1_3), "TLSv1.3"),
        ({"min_version": "TLS13"}, (V.TLSv1_2, V.TLSv1_2), "PROTOCOL_VERSION"),
        ({"max_version": "TLS12"}, (V.TLSv1_3, V.TLSv1_3), "PROTOCOL_VERSION"),
        ({}, (V.TLSv1_1, V.TLSv1_1), "PROTOCOL_VERSION"),  # TLS 1.2 is the default minimum
    ],
)
def test_tls_versions(
    serve: Callable[[Path | None], Served],
    pki: Pki,
    tmp_path: Path,
    server: dict[str, str],
    client: tuple[ssl.TLSVersion, ssl.TLSVersion],
    expect: str,
) -> None:
    s = serve(web_file(tmp_path, {"tls_server_config": tls_conf(pki, **server)}))
    ctx = _versions(client_ctx(pki), *client)
    if client[0] < V.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 speaks TLS 1.1 only at security level 0
    if expect.startswith("TLS"):
        with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                assert conn.version() == expect
    else:
        # the server's protocol_version alert: the server refused, not the client
        with pytest.raises(ssl.SSLError, match=expect):
            s.request("/metrics", ctx=ctx)
        eventually(lambda: s.web is not None and s.web.handshake_errors == 1)


def test_cipher_suites_and_curves_are_applied(
    serve: Callable[[Path | None], Served], pki: Pki, tmp_path: Path
) -> None:
    tls = tls_conf(
        pki,
        max_version="TLS12",
        cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
        curve_preferences=["CurveP384"],
    )
    s = serve(web_file(tmp_path, {"tls_server_config": tls}))
    ctx = client_ctx(pki)
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            cipher = conn.cipher()
            assert cipher is not None and cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    only_x25519 = client_ctx(pki)
    only_x25519.set_ecdh_curve("X25519")  # no curve in common with the server's P-384
    with pytest.raises(ssl.SSLError):
        s.request("/metrics", ctx=only_x25519)


def test_a_stalled_handshake_does_not_block_others(
    serve: Callable[[Path | None], Served], pki: Pki, tmp_path: Path
) -> None:
    s = serve(web_file(tmp_path, {"tls_server_config": tls_conf(pki)}))
    with socket.create_connection(("127.0.0.1", s.port), timeout=5):  # connects, never says hello
        start = time.monotonic()
        assert s.request("/-/healthy", ctx=client_ctx(pki))[0] == 200
        assert time.monotonic() - start < 2


def test_bcrypt_results_are_cached(
    serve: Callable[[Path | None], Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    s = serve(web_file(tmp_path, {"basic_auth_users": {"prometheus": HASH}}))
    good = (b"prometheus", PASSWORD)
    assert s.request(auth=good)[0] == 200
    assert len(calls) == 1
    assert s.request(auth=good)[0] == 200
    assert len(calls) == 1  # the second check is a cache hit
    assert s.request(auth=(b"prometheus", b"wrong"))[0] == 401
    assert len(calls) == 2
    # an unknown user costs one bcrypt check too, against a dummy hash of the users' cost
    assert s.request(auth=(b"ghost", PASSWORD))[0] == 401
    assert len(calls) == 3
    assert calls[-1] != HASH.encode() and calls[-1][:7] == HASH.encode()[:7]
    assert s.request(auth=(b"ghost", PASSWORD))[0] == 401
    assert len(calls) == 3
    assert s.web is not None
    assert all(PASSWORD not in k for k in s.web.cache._entries)  # keyed by an HMAC, not the password


def _peer_cert(s: Served, pki: Pki) -> bytes:
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
        with client_ctx(pki).wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            der = conn.getpeercert(binary_form=True)
            assert der is not None
            return der


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_certificates_and_users_rotate_without_restart(
    serve: Callable[[Path | None], Served], pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"

    def install(pair: tuple[Path, Path]) -> None:  # the way cert-manager or certbot swap files
        for src, dst in zip(pair, (cert, key), strict=True):
            (dst.parent / (dst.name + ".new")).write_bytes(src.read_bytes())
            os.replace(dst.parent / (dst.name + ".new"), dst)

    install(pki.server)
    conf = {"tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key"}}  # relative to the file
    s = serve(web_file(tmp_path, {**conf, "basic_auth_users": {"prometheus": HASH}}))
    assert _peer_cert(s, pki) == _der(pki.server[0])

    install(pki.server2)
    assert _peer_cert(s, pki) == _der(pki.server2[0])

    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(4)).decode()
    web_file(tmp_path, {**conf, "basic_auth_users": {"prometheus": new_hash}})
    ctx = client_ctx(pki)
    assert s.request(ctx=ctx, auth=(b"prometheus", PASSWORD))[0] == 401
    assert s.request(ctx=ctx, auth=(b"prometheus", b"rotated"))[0] == 200

    # a broken file fails closed (no handshakes) until it is fixed, and the server stays up
    web_file(tmp_path, {**conf, "basic_auth_users": {"prometheus": "plain-password"}})
    with pytest.raises((ssl.SSLError, http.client.HTTPException, OSError)):
        s.request(ctx=ctx, auth=(b"prometheus", b"rotated"))
    assert s.web is not None and s.web.reload_errors == 1
    web_file(tmp_path, {**conf, "basic_auth_users": {"prometheus": new_hash}})
    status, _, body = s.request(ctx=ctx, auth=(b"prometheus", b"rotated"))
    assert status == 200
    assert b"fleetmon_web_config_reload_errors_total 1.0" in body


def test_a_broken_reload_answers_500_without_tls(
    serve: Callable[[Path | None], Served], tmp_path: Path
) -> None:
    s = serve(web_file(tmp_path, {"basic_auth_users": {"prometheus": HASH}}))
    web_file(tmp_path, {"basic_auth_users": {"prometheus": HASH}, "unknown_key": 1})
    assert s.request(auth=(b"prometheus", PASSWORD))[0] == 500
    web_file(tmp_path, {"basic_auth_users": {"prometheus": HASH}})
    assert s.request(auth=(b"prometheus", PASSWORD))[0] == 200


# ------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("conf", "key", "message"),
    [
        ({"tls_server_config": {"cert_file": "server.crt"}}, "tls_server_config.key_file", "missing"),
        ({"tls_server_config": {"key_file": "server.key"}}, "tls_server_config.cert_file", "missing"),
        ({"tls_srever_config": {}}, "tls_srever_config", "unknown key"),
        (
            {"tls_server_config": {"cert_file": "a", "key_file": "b", "ca_file": "c"}},
            "tls_server_config.ca_file",
            "unknown key",
        ),
        (
            {"tls_server_config": {"client_auth_type": "RequireAndVerifyClientCert"}},
            "tls_server_config.cert_file",
            "missing",
        ),
        ("verify-without-ca", "tls_server_config.client_ca_file", "required with client_auth_type"),
        ("ca-without-verify", "tls_server_config.client_auth_type", "NoClientCert"),
        (
            {"tls_server_config": {"client_auth_type": "RequireAnyClientCert"}},
            "client_auth_type",
            "not supported",
        ),
        (
            {"tls_server_config": {"client_auth_type": "Always"}},
            "client_auth_type",
            "unknown client_auth_type",
        ),
        (
            {"tls_server_config": {"min_version": "TLS14"}},
            "tls_server_config.min_version",
            "unknown TLS version",
        ),
        ("min-above-max", "tls_server_config.min_version", "above max_version"),
        (
            {"tls_server_config": {"cipher_suites": ["RC4"]}},
            "tls_server_config.cipher_suites",
            "unknown cipher",
        ),
        (
            {"tls_server_config": {"curve_preferences": ["X25519", "CurveP256"]}},
            "tls_server_config.curve_preferences",
            "only one curve",
        ),
        (
            {"tls_server_config": {"cert": "-----BEGIN CERTIFICATE-----"}},
            "tls_server_config.cert",
            "cert_file",
        ),
        (
            {"tls_server_config": {"cert_file": "nope.crt", "key_file": "nope.key"}},
            "tls_server_config.cert_file",
            "cannot read",
        ),
        ("key-mismatch", "tls_server_config.cert_file", "KEY_VALUES_MISMATCH"),
        ("encrypted-key", "tls_server_config.key_file", "is encrypted"),  # refused, never a prompt
        ("bad-inline-ca", "tls_server_config.client_ca", "cannot load the client CA"),
        ({"basic_auth_users": {"prometheus": "hunter2"}}, "basic_auth_users", "not a bcrypt hash"),
        (
            {"http_server_config": {"headers": {"Server": "x"}}},
            "http_server_config.headers",
            "can not be configured",
        ),
        (
            {"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
            "http_server_config.headers",
            "expected one of",
        ),
        ({"rate_limit": {"interval": "1s", "burst": 5}}, "rate_limit", "not supported"),
        ([1, 2], "(top level)", "expected a mapping"),
    ],
)
def test_invalid_web_config_names_file_and_key(
    pki: Pki, tmp_path: Path, conf: Any, key: str, message: str
) -> None:
    server = tls_conf(pki)
    named = {
        "verify-without-ca": {"tls_server_config": {**server, "client_auth_type": "VerifyClientCertIfGiven"}},
        "ca-without-verify": {"tls_server_config": {**server, "client_ca_file": str(pki.ca)}},
        "min-above-max": {"tls_server_config": {**server, "min_version": "TLS13", "max_version": "TLS12"}},
        "key-mismatch": {
            "tls_server_config": {"cert_file": str(pki.server[0]), "key_file": str(pki.server2[1])}
        },
        "encrypted-key": {"tls_server_config": {"cert_file": str(pki.server[0]), "key_file": "locked.key"}},
        "bad-inline-ca": {
            "tls_server_config": {
                **server,
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
            }
        },
    }
    key_pem = serialization.load_pem_private_key(pki.server[1].read_bytes(), None)
    (tmp_path / "locked.key").write_bytes(
        key_pem.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    path = web_file(tmp_path, named[conf] if isinstance(conf, str) else conf)
    with pytest.raises(WebConfigError) as e:
        load_web_config(path)
    assert str(e.value).startswith(f"{path}: ")
    assert key in str(e.value)
    assert message in str(e.value)


def test_valid_files_load(pki: Pki, tmp_path: Path) -> None:
    assert load_web_config(web_file(tmp_path, {})).ssl_context is None  # an empty file: plain HTTP
    everything = {
        "tls_server_config": tls_conf(
            pki,
            client_auth_type="VerifyClientCertIfGiven",
            client_ca=pki.ca.read_text(),
            min_version="TLS12",
            max_version="TLS13",
            cipher_suites=["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"],
            prefer_server_cipher_suites=False,
            curve_preferences=["X25519"],
        ),
        "http_server_config": {"http2": False, "headers": HEADERS},
        "basic_auth_users": {"a": HASH, "b": "$2y$04$" + HASH[7:]},
    }
    loaded = load_web_config(web_file(tmp_path, everything))
    assert loaded.ssl_context is not None
    assert loaded.ssl_context.verify_mode == ssl.CERT_OPTIONAL
    assert not loaded.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_empty_sections_and_unparsable_files(tmp_path: Path) -> None:
    nulls = {"tls_server_config": None, "basic_auth_users": None, "http_server_config": {"headers": None}}
    loaded = load_web_config(web_file(tmp_path, nulls))
    assert loaded.ssl_context is None and not loaded.users and loaded.headers == []
    bad = tmp_path / "bad.yml"
    bad.write_text("tls_server_config: [unclosed\n")
    with pytest.raises(WebConfigError, match=f"^{bad}: not valid YAML"):
        load_web_config(bad)
    with pytest.raises(WebConfigError, match="cannot read web config file"):
        load_web_config(tmp_path / "missing.yml")


def test_parse_basic_auth() -> None:
    assert parse_basic_auth("Basic " + base64.b64encode(b"u:p:q").decode()) == (b"u", b"p:q")
    assert parse_basic_auth("basic " + base64.b64encode(b"u:").decode()) == (b"u", b"")
    for bad in (None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert parse_basic_auth(bad) is None


# ------------------------------------------------------------------------------------------- the CLI
def test_web_config_file_in_the_fleetmon_config_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "fleetmon.yml").write_text(
        yaml.safe_dump(
            {
                "platform": {"listen": {"port": 9703, "web_config_file": "web.yml"}},
                "stack": {"webhook_web_config_file": "/etc/fleetmon/web.yml"},
            }
        )
    )
    cfg = load_config(tmp_path / "conf" / "fleetmon.yml", environ={})
    assert cfg.platform.listen.web_config_file == (tmp_path / "conf" / "web.yml").resolve()
    assert cfg.stack.webhook_web_config_file == Path("/etc/fleetmon/web.yml")
    assert cfg.mlflow.listen.web_config_file is None


def test_flag_env_and_config_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporters.common import parse_args
    from fleetmon.webconfig import resolve

    monkeypatch.setenv("FLEETMON_WEB_CONFIG_FILE", "/env/web.yml")
    args, _ = parse_args("platform", [], [])
    assert resolve(args.web_config_file, Path("/conf/web.yml")) == Path("/env/web.yml")
    args, _ = parse_args("platform", [], ["--web.config.file=/flag/web.yml"])
    assert resolve(args.web_config_file, Path("/conf/web.yml")) == Path("/flag/web.yml")
    args, _ = parse_args("platform", [], ["--web.config.file="])  # explicitly off
    assert resolve(args.web_config_file, Path("/conf/web.yml")) is None
    monkeypatch.delenv("FLEETMON_WEB_CONFIG_FILE")
    args, _ = parse_args("platform", [], [])
    assert resolve(args.web_config_file, Path("/conf/web.yml")) == Path("/conf/web.yml")


def test_exporter_and_webhook_refuse_to_start_on_a_bad_web_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporters.platform
    import fleetmon.webhook

    monkeypatch.delenv("FLEETMON_WEB_CONFIG_FILE", raising=False)

    web = web_file(tmp_path, {"tls_server_config": {"cert_file": "server.crt"}})
    cfg = tmp_path / "fleetmon.yml"
    cfg.write_text(yaml.safe_dump({"platform": {"listen": {"port": 9703, "web_config_file": "web.yml"}}}))
    # through the fleetmon config's listen.web_config_file (the exporter never binds: it stops before)
    assert exporters.platform.main([f"--config.file={cfg}"]) == 2
    err = capsys.readouterr().err
    assert f"fleetmon: refusing to start: {web.resolve()}: tls_server_config.key_file: missing" in err
    # through the flag, for the webhook receiver
    rc = fleetmon.webhook.main(
        [f"--config.file={cfg}", f"--web.config.file={web}", f"--data-dir={tmp_path}/d"]
    )
    assert rc == 2
    assert f"{web}: tls_server_config.key_file: missing" in capsys.readouterr().err


def test_cli_serves_https_with_basic_auth(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "fleetmon.yml").write_text(yaml.safe_dump({"platform": {"listen": {"port": 9703}}}))
    web = web_file(
        tmp_path,
        {
            "tls_server_config": tls_conf(pki),
            "basic_auth_users": {"prometheus": HASH},
            "http_server_config": {"headers": HEADERS},
        },
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLEETMON_WEB_CONFIG_FILE"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetmon.cli",
            "exporter",
            "platform",
            f"--config.file={tmp_path / 'fleetmon.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={web}",
            "--no-collector.logs",
            "--no-collector.processes",
            "--no-collector.gpu",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    auth = ("prometheus", PASSWORD.decode())
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                with requests.get(url + "/-/healthy", verify=str(pki.ca), auth=auth, timeout=2) as r:
                    if r.status_code == 200:
                        break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "exporter did not answer over HTTPS"
            time.sleep(0.2)
        with requests.get(url + "/metrics", verify=str(pki.ca), timeout=5) as r:
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"] == "Basic"
        with requests.get(url + "/metrics", verify=str(pki.ca), auth=auth, timeout=5) as r:
            assert r.status_code == 200
            assert r.headers["X-Frame-Options"] == "deny"
            assert "fleetmon_host_memory_total_bytes" in r.text
            assert 'fleetmon_web_unauthorized_requests_total{reason="no_credentials"} 1.0' in r.text
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/metrics", auth=auth, timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out.decode()[-2000:]
    assert f"listening on https://127.0.0.1:{port}/metrics".encode() in out
