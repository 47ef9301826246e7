"""A real PostgreSQL server for tests: the distribution's binaries, a throw-away cluster in a temporary directory.

Use it by importing the fixture into a test module (``from tests.postgres import postgres``); it is
session-scoped: the cluster is created once (initdb + start, ~2 s) and stopped with ``pg_ctl stop -m
immediate`` at the end of the session, whether tests passed or not; its directory is removed.

- **Binaries**: the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's ``postgresql`` package), else
  ``initdb`` on PATH. None: the tests *fail*, naming ``scripts/install-system-deps.sh``, which installs them.
- **Unprivileged**: PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
  of Debian's package, else as a system user ``fleetmon-pg`` created here (``useradd --system``), else as
  ``nobody``; otherwise as the current user. Its directory is ``/tmp/fleetmon-pg-*`` (pytest's tmp dirs are
  private to root), owned by that user.
- **Access**: TCP on 127.0.0.1 at a free port and a unix socket in the directory. The superuser
  ``fleetmon`` connects without a password (trust); roles created with ``create_role(password=...)`` must
  give their password (scram-sha-256) over TCP, for tests of secrets.
- **Fast, crash-safe, not power-safe**: ``fsync`` and ``full_page_writes`` are off; ``synchronous_commit``
  stays on, so a committed row survives ``pg_ctl stop -m immediate`` (a crash of the server) as it would in
  production.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from fleetmon.procs import free_port

SUPERUSER = "fleetmon"
SERVICE_USER = "fleetmon-pg"
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were found neither under /usr/lib/postgresql/*/bin nor on "
    "PATH. Install them with `sudo scripts/install-system-deps.sh` (Debian's postgresql package) or `make "
    "deps`; the outputs' SQL source is tested against a real server, these tests do not skip."
)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: Debian's newest version, else PATH."""

    def version(p: str) -> tuple[int, ...]:
        v = Path(p).parent.parent.name
        return tuple(int(x) for x in v.split(".") if x.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _service_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run the server as; None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVICE_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    res = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
        capture_output=True,
        text=True,
    )
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        print(f"tests/postgres.py: useradd {SERVICE_USER} failed ({res.stderr.strip()}); running as nobody")
        return pwd.getpwnam("nobody")


class PostgresServer:
    """One cluster: ``start()``, ``stop(mode)``, SQLAlchemy URLs and psycopg connections."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _service_user()
        self.base = Path(tempfile.mkdtemp(prefix="fleetmon-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sockets"
        self.log = self.base / "postgres.log"
        self.port = free_port()
        self.host = "127.0.0.1"
        self.sockets.mkdir()
        if self.user is not None:
            for p in (self.base, self.sockets):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)

    # ------------------------------------------------------------------------------ processes
    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kw: dict[str, Any] = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.base), "LC_ALL": "C"}
        return subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=self.base,
            **kw,
        )

    def _check(self, res: subprocess.CompletedProcess[str], what: str) -> None:
        if res.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}\n{tail}")

    def init(self) -> None:
        res = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        self._check(res, "initdb")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(
                f"\nlisten_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "fsync = off\nfull_page_writes = off\n"
                "shared_buffers = 16MB\nmax_connections = 40\n"
            )
        # First match wins: the superuser by trust, every other role by its password.
        (self.data / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\n"
            f"host all {SUPERUSER} {self.host}/32 trust\n"
            f"host all all {self.host}/32 scram-sha-256\n"
        )

    def start(self) -> None:
        res = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start", timeout=90
        )
        self._check(res, "pg_ctl start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are terminated (their clients see an admin shutdown); ``immediate``: no cleanup."""
        res = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=90)
        self._check(res, f"pg_ctl stop -m {mode}")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------------------ access
    def connect(self, dbname: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
        """A superuser connection (autocommit unless told otherwise)."""
        kw.setdefault("autocommit", True)
        return psycopg.connect(
            host=self.host, port=self.port, user=SUPERUSER, dbname=dbname, connect_timeout=10, **kw
        )

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def create_role(self, name: str, password: str, dbname: str) -> None:
        """A login role that must authenticate with its password, owning the public schema's tables it makes."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(name))
            )
        with self.connect(dbname) as conn:
            conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(name))
            )

    def url(self, dbname: str, user: str = SUPERUSER, password: str | None = None) -> str:
        """A SQLAlchemy URL (psycopg 3 driver) over TCP."""
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{dbname}"


def start_postgres() -> PostgresServer:
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    server = PostgresServer(bindir)
    try:
        server.init()
        server.start()
    except Exception:
        if server.data.exists() and server.running():
            server.stop("immediate")
        server.remove()
        raise
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the session (see the module docstring). Tests that stop it must start
    it again; each test should use its own database (``create_database``)."""
    t0 = time.monotonic()
    server = start_postgres()
    print(f"tests/postgres.py: PostgreSQL ({server.bindir}) up in {time.monotonic() - t0:.1f} s")
    try:
        yield server
    finally:
        if server.running():
            server.stop("immediate")
        server.remove()
