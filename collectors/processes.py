"""Configured process groups (``platform.processes``): CPU, resident memory, threads, open fds, up, instances.

Meanings follow process-exporter (``namedprocess_namegroup_*``) and cAdvisor: a group is every process
whose name or command line matches the group's regex (the first matching group wins); values are sums over
the group's live processes. CPU seconds stay monotonic when processes exit: the CPU time of a process that
is gone is kept in the group's total (as process-exporter does), so ``rate()`` never sees a false reset.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fleetmon.config import Config, ProcessMatch
from fleetmon.exporter import register


@dataclass
class GroupSample:
    instances: int = 0
    rss: float = 0.0
    threads: int = 0
    fds: int = 0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    pids: list[int] = field(default_factory=list)


class ProcessMatcher:
    """Maps a process (name, cmdline) to a configured group name, or None."""

    def __init__(self, groups: list[ProcessMatch]) -> None:
        self.groups = [(g.name, re.compile(g.match)) for g in groups]
        self._cache: dict[tuple[int, float], str | None] = {}  # (pid, create_time) -> group

    def group_of(self, pid: int, create_time: float, name: str, cmdline: list[str] | None) -> str | None:
        key = (pid, create_time)
        if key in self._cache:
            return self._cache[key]
        cmd = " ".join(cmdline or [])
        group = next((g for g, rx in self.groups if rx.search(name) or (cmd and rx.search(cmd))), None)
        self._cache[key] = group
        return group

    def forget_except(self, alive: set[tuple[int, float]]) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k in alive}


class ProcessScanner:
    """One pass over /proc per scrape; keeps exited processes' CPU in the group totals."""

    def __init__(self, groups: list[ProcessMatch]) -> None:
        self.matcher = ProcessMatcher(groups)
        self.names = [g.name for g in groups]
        self._lock = threading.Lock()
        self._live_cpu: dict[tuple[int, float], tuple[str, float, float]] = {}  # -> (group, user, system)
        self._dead_cpu: dict[str, list[float]] = {g: [0.0, 0.0] for g in self.names}

    def scan(self) -> dict[str, GroupSample]:
        with self._lock:  # concurrent scrapes must not double-count exited processes
            out = {g: GroupSample() for g in self.names}
            seen: dict[tuple[int, float], tuple[str, float, float]] = {}
            attrs = ["name", "cmdline", "create_time", "cpu_times", "memory_info", "num_threads", "num_fds"]
            for p in psutil.process_iter(attrs, ad_value=None):
                info = p.info
                ct = info.get("create_time")
                if ct is None:
                    continue
                group = self.matcher.group_of(p.pid, ct, info.get("name") or "", info.get("cmdline"))
                if group is None:
                    continue
                s = out[group]
                s.instances += 1
                s.pids.append(p.pid)
                if info.get("memory_info") is not None:
                    s.rss += info["memory_info"].rss
                s.threads += info.get("num_threads") or 0
                s.fds += info.get("num_fds") or 0  # None for other users' processes (no permission)
                cpu = info.get("cpu_times")
                if cpu is not None:
                    seen[(p.pid, ct)] = (group, cpu.user, cpu.system)
            for key, (group, user, system) in self._live_cpu.items():
                if key not in seen:  # exited since the last scan: keep what it used
                    self._dead_cpu[group][0] += user
                    self._dead_cpu[group][1] += system
            self._live_cpu = seen
            self.matcher.forget_except(set(seen))
            for g, s in out.items():
                s.cpu_user, s.cpu_system = self._dead_cpu[g]
            for group, user, system in seen.values():
                out[group].cpu_user += user
                out[group].cpu_system += system
            return out


@register("processes", help="Configured process groups: CPU, memory, threads, open fds, up (psutil).")
class ProcessesCollector:
    """Per configured process group, read at scrape time."""

    def __init__(self, cfg: Config) -> None:
        self.scanner = ProcessScanner(cfg.platform.processes)

    def collect(self) -> Iterator[Metric]:
        if not self.scanner.names:
            return
        samples = self.scanner.scan()
        cpu = CounterMetricFamily(
            "fleetmon_process_cpu_seconds",
            "CPU seconds used by the group's processes, including exited ones, by mode.",
            labels=["group", "mode"],
        )
        rss = GaugeMetricFamily(
            "fleetmon_process_resident_memory_bytes",
            "Resident memory of the group's processes.",
            labels=["group"],
        )
        threads = GaugeMetricFamily(
            "fleetmon_process_threads", "Threads of the group's processes.", labels=["group"]
        )
        fds = GaugeMetricFamily(
            "fleetmon_process_open_fds",
            "Open file descriptors of the group's processes (readable ones).",
            labels=["group"],
        )
        up = GaugeMetricFamily(
            "fleetmon_process_up", "1 if at least one process of the group runs.", labels=["group"]
        )
        n = GaugeMetricFamily("fleetmon_process_instances", "Processes in the group.", labels=["group"])
        for g, s in samples.items():
            cpu.add_metric([g, "user"], s.cpu_user)
            cpu.add_metric([g, "system"], s.cpu_system)
            rss.add_metric([g], s.rss)
            threads.add_metric([g], s.threads)
            fds.add_metric([g], s.fds)
            up.add_metric([g], 1.0 if s.instances else 0.0)
            n.add_metric([g], s.instances)
        yield from (cpu, rss, threads, fds, up, n)
