"""The scale mode's plan (fleetmon/scale.py), without starting anything: which components, their configs
(valid for promtool and vmalert), the shards' flags and paths."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fleetmon.config import Config, ConfigError, load_config
from fleetmon.stack import Paths, plan


def scale_cfg(tmp: Path, shards: int = 2) -> Config:
    return Config.model_validate({"stack": {"scale": {"shards": shards}, "demo": False}})


def arg(argv: list[str], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(flag + "="))


def test_scale_plan_shards_agents_store_and_two_alertmanagers(tmp_path: Path) -> None:
    cfg = scale_cfg(tmp_path, 3)
    comps = {c.name: c for c in plan(cfg, Paths.of(cfg, tmp_path))}
    for name in ("victoria-metrics", "vmalert", "alertmanager", "alertmanager-2", "prometheus"):
        assert name in comps
    assert not {"exporter-mlflow", "exporter-outputs", "exporter-platform"} & set(comps)
    ports = set()
    for i in range(3):
        for e in ("mlflow", "outputs", "platform"):
            c = comps[f"exporter-{e}-{i}"]
            assert c.argv[c.argv.index("--shard") + 1] == f"{i}/3"
            assert c.env["FLEETMON__OUTPUTS__STATE_DIR"].endswith(f"shards/{i}/state/outputs")
            ports.add(c.port)
        agent = comps[f"prometheus-agent-{i}"]
        assert "--enable-feature=agent" in agent.argv
        doc = yaml.safe_load(Path(arg(agent.argv, "--config.file")).read_text())
        assert doc["global"]["external_labels"]["shard"] == str(i)
        jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
        assert set(jobs) == {"fleetmon-mlflow", "fleetmon-outputs", "fleetmon-platform"}
        assert jobs["fleetmon-outputs"] == [f"127.0.0.1:{comps[f'exporter-outputs-{i}'].port}"]
        assert doc["remote_write"][0]["url"].endswith(":8428/api/v1/write")
        assert "rule_files" not in doc and "alerting" not in doc
    assert len(ports) == 9  # every shard's exporters on ports of their own
    central = yaml.safe_load(Path(arg(comps["prometheus"].argv, "--config.file")).read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in central["scrape_configs"]}
    assert len(jobs["prometheus"]) == 4 and len(jobs["alertmanager"]) == 2
    assert "shard" not in central["global"]["external_labels"]
    # the two Alertmanagers gossip with each other, and vmalert notifies both
    a1, a2 = comps["alertmanager"].argv, comps["alertmanager-2"].argv
    assert arg(a1, "--cluster.peer") == arg(a2, "--cluster.listen-address")
    assert arg(a2, "--cluster.peer") == arg(a1, "--cluster.listen-address")
    assert arg(a1, "--storage.path") != arg(a2, "--storage.path")
    notifiers = [a for a in comps["vmalert"].argv if a.startswith("-notifier.url=")]
    assert len(notifiers) == 2


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_scale_configs_pass_promtool_and_vmalert(tmp_path: Path) -> None:
    cfg = scale_cfg(tmp_path)
    comps = {c.name: c for c in plan(cfg, Paths.of(cfg, tmp_path))}
    for name in ("prometheus", "prometheus-agent-0", "prometheus-agent-1"):
        path = arg(comps[name].argv, "--config.file")
        out = subprocess.run(["promtool", "check", "config", "--agent", path], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    rules = arg(comps["vmalert"].argv, "-rule")
    copies = [yaml.safe_load(p.read_text()) for p in Path(rules).parent.glob("*.yml")]
    fields = {k for doc in copies for g in doc["groups"] for r in g["rules"] for k in r}
    assert "alert" in fields and "record" in fields and "keep_firing_for" not in fields
    if shutil.which("vmalert"):
        out = subprocess.run(["vmalert", "-dryRun", f"-rule={rules}"], capture_output=True, text=True)
        assert out.returncode == 0 and "fatal" not in out.stderr, out.stderr[-2000:]


def test_scale_mode_refuses_the_secure_mode_for_now(tmp_path: Path) -> None:
    path = tmp_path / "fleetmon.yml"
    path.write_text("stack: {secure: true, scale: {shards: 2}}\n")
    with pytest.raises(ConfigError, match="scale"):
        load_config(path, environ={})
