"""Starting and stopping the real processes fleetmon runs (MLflow, Prometheus, ...), for the stack and tests.

Every child is started in its own session (process group) so that stopping it also stops whatever it
spawned (``mlflow server`` starts uvicorn workers); nothing broader than that group is ever signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (for tests; the stack uses fixed, documented ports)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_handed_out: set[int] = set()


def free_port_below_ephemeral(host: str = "127.0.0.1") -> int:
    """A free TCP port below the kernel's ephemeral range, for a server that starts only seconds later.

    ``free_port``'s port comes from that range, where anything else on the machine (another test process's
    ``bind(0)``, an outgoing connection) can take it before the server binds; the kernel never hands out a
    port below the range by itself. Each process starts at a point of its own (its pid) and never repeats one.
    """
    low = _ephemeral_low()
    first, span = 10000, max(low - 10000, 1000)
    start = os.getpid() * 7919 % span
    for step in range(span):
        port = first + (start + step) % span
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {first} and {first + span}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for_http(
    url: str,
    timeout: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Wait until ``url`` answers 2xx; fail early if ``proc`` exits.

    ``context`` (e.g. trusting only the secure stack's CA) and ``headers`` (its ``Authorization``) are for
    servers behind TLS and basic auth, whose health endpoints need credentials too.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        req = urllib.request.Request(url)
        for k, v in (headers or {}).items():
            req.add_unredirected_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=2, context=context) as r:
                if 200 <= r.status < 300:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s (last error: {last})")


def spawn(
    argv: Sequence[str], log_file: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running child in its own process group, stdout/stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )


def stop_group(proc: int | subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (a pid or our Popen), then SIGKILL what is left."""
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        if isinstance(proc, subprocess.Popen):
            proc.poll()  # reap our child so the group can disappear
        else:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
    else:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def mlflow_server_argv(host: str, port: int, data_dir: Path) -> list[str]:
    """``mlflow server`` with a sqlite backend and a local artifact store under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow_bin),
        "server",
        "--backend-store-uri",
        f"sqlite:///{(data_dir / 'mlflow.db').resolve()}",
        "--default-artifact-root",
        str((data_dir / "artifacts").resolve()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


# The job runner (huey consumers) is for MLflow's GenAI jobs; fleetmon needs none of it.
MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_mlflow_server(
    port: int, data_dir: Path, host: str = "127.0.0.1", timeout: float = 90.0
) -> subprocess.Popen[bytes]:
    proc = spawn(mlflow_server_argv(host, port, data_dir), data_dir / "mlflow-server.log", env=MLFLOW_ENV)
    try:
        wait_for_http(f"http://{host}:{port}/health", timeout=timeout, proc=proc)
    except Exception:
        stop_group(proc)
        raise
    return proc
