"""Pushgateway helper: batch jobs (training, benchmarking) too short-lived to be scraped push how they went.

Command line::

    fleetmon push --job training --customer c01 --building c01-b001 --energy heating --model forecast \\
        --outcome success --duration 12.5 [--gateway http://127.0.0.1:9091]

Python::

    from fleetmon import push
    with push.batch_job("training", key, gateway="http://127.0.0.1:9091") as job:
        train()            # an exception pushes outcome=failure and is re-raised
        if not good_enough:
            job.fail()     # or mark a failure without raising

Each push goes to the group ``job=<job>, customer, building, energy, model`` (one group per building and
model), so jobs of different models never overwrite each other. It uses ``pushadd_to_gateway`` (HTTP POST),
not ``push_to_gateway`` (PUT): POST replaces only the metrics it sends, so a failed run leaves the group's
``..._last_success_timestamp_seconds`` from the last good run in place (a PUT would wipe it and "time since
the last successful training" would vanish exactly when it matters). Prometheus must scrape the Pushgateway
with ``honor_labels: true`` so ``job`` and the fleet labels are kept.

Pushed metrics (the Pushgateway adds ``push_time_seconds`` itself):

- ``fleetmon_batch_job_duration_seconds``: duration of the last run
- ``fleetmon_batch_job_last_outcome{outcome}``: 1 for the last run's outcome (success / failure), 0 for the other
- ``fleetmon_batch_job_last_run_timestamp_seconds``: when the last run ended
- ``fleetmon_batch_job_last_success_timestamp_seconds``: when the last successful run ended (success only)
- ``fleetmon_batch_job_last_failure_timestamp_seconds``: when the last failed run ended (failure only)

A push that fails is reported (``PushError`` from ``push_job``, exit status 1 from the command); the context
manager only logs it, because monitoring trouble must not fail a training job that worked.

A Pushgateway behind TLS and basic auth (the secure stack, ``stack.secure``): give the CA to trust and a
user with a password file, as flags or in the environment, e.g. for the secure stack::

    export FLEETMON_PUSHGATEWAY=https://127.0.0.1:9091
    export FLEETMON_PUSHGATEWAY_CA_FILE=var/data/tls/ca.crt          # --gateway.ca-file
    export FLEETMON_PUSHGATEWAY_USERNAME=fleetmon                    # --gateway.username
    export FLEETMON_PUSHGATEWAY_PASSWORD_FILE=var/data/secrets/fleetmon.password   # --gateway.password-file

The password is read from its file and sent only to the gateway (never on to a redirect).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway
from prometheus_client.exposition import default_handler

from fleetmon.config import ID_PATTERN, ModelKey
from fleetmon.pki import Client

log = logging.getLogger(__name__)

DEFAULT_GATEWAY = "http://127.0.0.1:9091"
OUTCOMES = ("success", "failure")
FLEET_KEYS = ("customer", "building", "energy", "model")


class PushError(Exception):
    """The Pushgateway could not be reached or refused the push."""


def default_gateway() -> str:
    return os.environ.get("FLEETMON_PUSHGATEWAY", DEFAULT_GATEWAY)


Handler = Callable[[str, str, float | None, list[tuple[str, str]], bytes], Callable[[], None]]


def gateway_handler(
    ca_file: str | Path | None = None,
    username: str | None = None,
    password_file: str | Path | None = None,
) -> Handler:
    """prometheus_client's push handler: TLS trusting ``ca_file`` and basic auth as ``username`` with the
    password in ``password_file``; each unset one from FLEETMON_PUSHGATEWAY_CA_FILE, _USERNAME,
    _PASSWORD_FILE. Nothing set: prometheus_client's own handler. Raises ``ValueError``, ``PushError``."""
    ca_file = ca_file or os.environ.get("FLEETMON_PUSHGATEWAY_CA_FILE") or None
    username = username or os.environ.get("FLEETMON_PUSHGATEWAY_USERNAME") or None
    password_file = password_file or os.environ.get("FLEETMON_PUSHGATEWAY_PASSWORD_FILE") or None
    if ca_file is None and username is None and password_file is None:
        return default_handler
    if (username is None) != (password_file is None):
        raise ValueError("basic auth to the Pushgateway needs both a username and a password file")
    try:
        client = Client.from_files(
            Path(ca_file) if ca_file else None, username, Path(password_file) if password_file else None
        )
    except OSError as e:  # ssl.SSLError (a bad CA file) is an OSError too
        raise PushError(f"cannot use the Pushgateway's CA or password file: {e}") from e

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        def handle() -> None:
            req = Request(url, data=data, method=method)
            for k, v in headers:
                req.add_header(k, v)
            with client.open(req, timeout=10.0 if timeout is None else timeout) as resp:
                resp.read()  # 4xx and 5xx raise HTTPError (a URLError)

        return handle

    return handler


def grouping_key(key: ModelKey | Mapping[str, str] | None) -> dict[str, str]:
    """The fleet labels of ``key`` (all four, or none for a fleet-wide job), validated."""
    if key is None:
        return {}
    labels = key.labels() if isinstance(key, ModelKey) else dict(key)
    unknown = set(labels) - set(FLEET_KEYS)
    if unknown:
        raise ValueError(f"unknown grouping label(s) {sorted(unknown)}; allowed: {', '.join(FLEET_KEYS)}")
    missing = [k for k in FLEET_KEYS if not labels.get(k)]
    if missing:
        raise ValueError(f"grouping key lacks {', '.join(missing)} (give all four fleet labels or none)")
    for k in FLEET_KEYS:
        if not re.match(ID_PATTERN, labels[k]):
            raise ValueError(f"{k}={labels[k]!r} is not a valid identifier (letters, digits, _ . -)")
    return {k: labels[k] for k in FLEET_KEYS}


def push_job(
    job: str,
    key: ModelKey | Mapping[str, str] | None,
    *,
    outcome: str,
    duration: float,
    gateway: str | None = None,
    ended_at: float | None = None,
    timeout: float = 10.0,
    ca_file: str | Path | None = None,
    username: str | None = None,
    password_file: str | Path | None = None,
) -> None:
    """Push one batch job's outcome and duration. Raises ``ValueError`` on bad input, ``PushError``.

    ``ca_file``, ``username``, ``password_file``: for a gateway behind TLS and basic auth (``gateway_handler``).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if not re.match(ID_PATTERN, job):
        raise ValueError(f"job {job!r} is not a valid identifier (letters, digits, _ . -)")
    if not duration >= 0:  # also rejects NaN
        raise ValueError(f"duration must be a number >= 0, not {duration!r}")
    group = grouping_key(key)
    handler = gateway_handler(ca_file, username, password_file)
    ended = time.time() if ended_at is None else ended_at
    reg = CollectorRegistry()
    Gauge("fleetmon_batch_job_duration_seconds", "Duration of the batch job's last run.", registry=reg).set(
        duration
    )
    last = Gauge(
        "fleetmon_batch_job_last_outcome",
        "1 for the outcome of the batch job's last run, 0 for the other outcome.",
        ["outcome"],
        registry=reg,
    )
    for o in OUTCOMES:
        last.labels(o).set(1 if o == outcome else 0)
    Gauge(
        "fleetmon_batch_job_last_run_timestamp_seconds",
        "Unix time the batch job's last run ended.",
        registry=reg,
    ).set(ended)
    Gauge(
        f"fleetmon_batch_job_last_{outcome}_timestamp_seconds",
        "Unix time the batch job's last successful run ended."
        if outcome == "success"
        else "Unix time the batch job's last failed run ended.",
        registry=reg,
    ).set(ended)
    gw = gateway or default_gateway()
    try:
        pushadd_to_gateway(gw, job=job, registry=reg, grouping_key=group, timeout=timeout, handler=handler)
    except (URLError, OSError) as e:
        where = ", ".join(f"{k}={v}" for k, v in group.items()) or "fleet-wide"
        raise PushError(f"cannot push job {job!r} ({where}) to the Pushgateway at {gw}: {e}") from e


@dataclass
class BatchJob:
    """What the ``batch_job`` block sees: call ``fail()`` to push a failure without raising."""

    job: str
    outcome: str = "success"
    duration: float | None = None

    def fail(self) -> None:
        self.outcome = "failure"


@contextmanager
def batch_job(
    job: str,
    key: ModelKey | Mapping[str, str] | None = None,
    *,
    gateway: str | None = None,
    timeout: float = 10.0,
    ca_file: str | Path | None = None,
    username: str | None = None,
    password_file: str | Path | None = None,
) -> Iterator[BatchJob]:
    """Time the block and push its outcome (failure if it raised; the exception propagates unchanged)."""
    grouping_key(key)  # refuse a bad key before the work starts, not after it
    state = BatchJob(job)
    start = time.monotonic()
    try:
        yield state
    except BaseException:
        state.outcome = "failure"
        raise
    finally:
        state.duration = time.monotonic() - start
        try:
            push_job(
                job,
                key,
                outcome=state.outcome,
                duration=state.duration,
                gateway=gateway,
                timeout=timeout,
                ca_file=ca_file,
                username=username,
                password_file=password_file,
            )
        except PushError as e:
            log.error("%s", e)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fleetmon push", description="Push a batch job's duration and outcome to the Pushgateway."
    )
    p.add_argument("--job", required=True, help="job name, e.g. training or benchmarking")
    for k in FLEET_KEYS:
        p.add_argument(f"--{k}", help=f"fleet label {k} (give all four, or none for a fleet-wide job)")
    p.add_argument("--outcome", required=True, choices=OUTCOMES)
    p.add_argument("--duration", required=True, type=float, help="seconds the job ran")
    p.add_argument(
        "--gateway",
        default=default_gateway(),
        help=f"Pushgateway URL (env FLEETMON_PUSHGATEWAY, default {DEFAULT_GATEWAY})",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the Pushgateway")
    p.add_argument(
        "--gateway.ca-file",
        dest="ca_file",
        help="CA to trust for an https gateway (env FLEETMON_PUSHGATEWAY_CA_FILE; the secure stack's: "
        "<stack.data_dir>/tls/ca.crt)",
    )
    p.add_argument(
        "--gateway.username", dest="username", help="basic-auth user (env FLEETMON_PUSHGATEWAY_USERNAME)"
    )
    p.add_argument(
        "--gateway.password-file",
        dest="password_file",
        help="file holding that user's password (env FLEETMON_PUSHGATEWAY_PASSWORD_FILE)",
    )
    args = p.parse_args(argv)
    labels = {k: getattr(args, k) for k in FLEET_KEYS if getattr(args, k)}
    try:
        push_job(
            args.job,
            labels or None,
            outcome=args.outcome,
            duration=args.duration,
            gateway=args.gateway,
            timeout=args.timeout,
            ca_file=args.ca_file,
            username=args.username,
            password_file=args.password_file,
        )
    except ValueError as e:
        print(f"fleetmon push: {e}", file=sys.stderr)
        return 2
    except PushError as e:
        print(f"fleetmon push: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
