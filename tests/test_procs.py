"""The process helpers start real children and stop their whole process group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fleetmon.procs import spawn, stop_group


def test_stop_group_stops_grandchildren(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    proc = spawn([sys.executable, "-c", code], tmp_path / "child.log")
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    stop_group(proc, timeout=5)
    proc.wait(timeout=5)
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("grandchild survived stop_group")


def test_mlflow_server_fixture_answers(mlflow_server: str) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp_id = client.create_experiment("procs-smoke")
    run = client.create_run(exp_id, tags={"customer": "c1"})
    client.set_terminated(run.info.run_id, "FINISHED")
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
