"""Shared fixtures: real processes, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetmon.procs import free_port, start_mlflow_server, stop_group

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (sqlite backend, local artifacts) on a free port; yields its URL.

    Shared by the whole session: tests must create their own experiments / model names
    (e.g. with a unique prefix) and never assume an empty server.
    """
    port = free_port()
    proc = start_mlflow_server(port, tmp_path_factory.mktemp("mlflow"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)
