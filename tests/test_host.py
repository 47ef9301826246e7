"""Host metrics against /proc readings, and configured process groups against real processes."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client import CollectorRegistry

from collectors.host import HostCollector
from collectors.processes import ProcessesCollector
from fleetmon.config import Config, PlatformConfig, ProcessMatch


def registry(coll: object) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(coll)  # type: ignore[arg-type]
    return reg


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def test_memory_matches_proc_meminfo() -> None:
    reg = registry(HostCollector(Config()))
    mi = meminfo()
    assert reg.get_sample_value("fleetmon_host_memory_total_bytes") == mi["MemTotal"]
    avail = reg.get_sample_value("fleetmon_host_memory_available_bytes")
    assert abs(avail - mi["MemAvailable"]) < 0.05 * mi["MemTotal"]
    assert reg.get_sample_value("fleetmon_host_swap_total_bytes") == mi["SwapTotal"]


def test_cpu_seconds_match_proc_stat() -> None:
    reg = registry(HostCollector(Config()))
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        rows = {
            p[0]: [int(x) / hz for x in p[1:]] for p in (line.split() for line in f) if p[0].startswith("cpu")
        }
    modes = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    assert reg.get_sample_value("fleetmon_host_cpus") == os.cpu_count()
    for i in range(os.cpu_count() or 1):
        for j, mode in enumerate(modes):
            ours = reg.get_sample_value("fleetmon_host_cpu_seconds_total", {"cpu": str(i), "mode": mode})
            # read moments apart: idle grows by about the elapsed wall time, the others barely move
            assert ours is not None and abs(ours - rows[f"cpu{i}"][j]) < 2.0, (i, mode)


def test_load_and_network_match_proc() -> None:
    reg = registry(HostCollector(Config()))
    with open("/proc/loadavg") as f:
        l1, l5, l15 = (float(x) for x in f.read().split()[:3])
    assert abs(reg.get_sample_value("fleetmon_host_load1") - l1) < 1.0
    assert abs(reg.get_sample_value("fleetmon_host_load5") - l5) < 0.5
    assert abs(reg.get_sample_value("fleetmon_host_load15") - l15) < 0.5
    with open("/proc/net/dev") as f:
        lo = next(line.split(":", 1)[1].split() for line in f if line.strip().startswith("lo:"))
    rx = reg.get_sample_value("fleetmon_host_network_receive_bytes_total", {"device": "lo"})
    assert rx is not None and rx >= int(lo[0])


def test_filesystem_of_root_matches_statvfs() -> None:
    reg = registry(HostCollector(Config()))
    fams = {m.name: m for m in reg.collect()}
    sizes = {s.labels["mountpoint"]: s.value for s in fams["fleetmon_host_filesystem_size_bytes"].samples}
    mp = "/" if "/" in sizes else next(iter(sizes), None)
    if mp is None:
        return  # no real filesystem visible (all overlay/tmpfs in this container)
    st = os.statvfs(mp)
    assert sizes[mp] == st.f_blocks * st.f_frsize


def test_host_collector_can_be_switched_off() -> None:
    assert list(HostCollector(Config(platform=PlatformConfig(host=False))).collect()) == []


def test_process_groups_follow_real_processes_and_cpu_stays_monotonic() -> None:
    marker = f"fleetmon-test-burner-{os.getpid()}"
    cfg = Config(
        platform=PlatformConfig(
            processes=[
                ProcessMatch(name="burner", match=marker),
                ProcessMatch(name="absent", match="^no-such-$"),
            ]
        )
    )
    coll = ProcessesCollector(cfg)
    # burn 0.3 s of CPU (not wall time: the machine is shared), say so, then idle
    code = "import time\nwhile time.process_time()<0.3: pass\nprint('ready', flush=True)\ntime.sleep(60)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        reg = registry(coll)
        g = {"group": "burner"}
        assert reg.get_sample_value("fleetmon_process_up", g) == 1
        assert reg.get_sample_value("fleetmon_process_instances", g) == 2
        assert reg.get_sample_value("fleetmon_process_threads", g) >= 2
        assert reg.get_sample_value("fleetmon_process_open_fds", g) >= 6
        assert reg.get_sample_value("fleetmon_process_resident_memory_bytes", g) > 2e6

        def cpu() -> float:
            return sum(
                reg.get_sample_value("fleetmon_process_cpu_seconds_total", {**g, "mode": m})
                for m in ("user", "system")
            )

        cpu1 = cpu()
        assert cpu1 > 0.55  # two processes that burnt 0.3 s of CPU each (process_time = user + system)
        assert reg.get_sample_value("fleetmon_process_up", {"group": "absent"}) == 0
        procs[0].kill()
        procs[0].wait()
        assert cpu() >= cpu1  # the exited process's CPU time is kept
        assert reg.get_sample_value("fleetmon_process_instances", g) == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
    assert registry(coll).get_sample_value("fleetmon_process_up", {"group": "burner"}) == 0
