"""The host's CPU, memory, swap, disks, filesystems, network and load (psutil), with node_exporter's meanings.

Read at scrape time, like node_exporter: psutil reads ``/proc`` and is cheap. Names map one to one:
``fleetmon_host_cpu_seconds_total{cpu,mode}`` = ``node_cpu_seconds_total``, ``fleetmon_host_memory_*_bytes``
= ``node_memory_MemTotal_bytes`` / ``MemAvailable`` / ..., ``fleetmon_host_disk_*`` = ``node_disk_*``,
``fleetmon_host_network_*`` = ``node_network_*``, ``fleetmon_host_load1`` = ``node_load1``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fleetmon.config import Config
from fleetmon.exporter import register

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# node_exporter's defaults: partitions and virtual devices are left out of disk I/O ...
DISK_IGNORED = re.compile(r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$")
# ... and pseudo file systems out of the filesystem metrics.
FS_IGNORED_TYPES = re.compile(
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue"
    r"|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs|tmpfs|ramfs)$"
)
FS_IGNORED_MOUNTS = re.compile(
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/.+)($|/)"
)
SECTOR = 512


@register("host", help="Host CPU, memory, swap, disk, filesystem, network and load (node_exporter meanings).")
class HostCollector:
    """Host resources via psutil, read at scrape time."""

    def __init__(self, cfg: Config) -> None:
        self.enabled = cfg.platform.host

    def collect(self) -> Iterator[Metric]:
        if not self.enabled:
            return
        yield from self._cpu()
        yield from self._memory()
        yield from self._disks()
        yield from self._filesystems()
        yield from self._network()
        yield from self._load()

    def _cpu(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "fleetmon_host_cpu_seconds", "Seconds the CPUs spent in each mode.", labels=["cpu", "mode"]
        )
        for i, t in enumerate(psutil.cpu_times(percpu=True)):
            for mode in CPU_MODES:
                v = getattr(t, mode, None)
                if v is not None:
                    cpu.add_metric([str(i), mode], v)
        yield cpu
        yield GaugeMetricFamily("fleetmon_host_cpus", "Logical CPUs.", value=psutil.cpu_count() or 0)
        yield GaugeMetricFamily(
            "fleetmon_host_boot_time_seconds", "Unix time the host booted.", value=psutil.boot_time()
        )

    def _memory(self) -> Iterator[Metric]:
        vm = psutil.virtual_memory()
        for field, help_ in (
            ("total", "Total usable memory (MemTotal)."),
            ("available", "Memory available for new work without swapping (MemAvailable)."),
            ("free", "Unused memory (MemFree)."),
            ("buffers", "Memory in block device buffers (Buffers)."),
            ("cached", "Page cache plus reclaimable slab (Cached + SReclaimable, as free(1) shows)."),
        ):
            v = getattr(vm, field, None)
            if v is not None:
                yield GaugeMetricFamily(f"fleetmon_host_memory_{field}_bytes", help_, value=v)
        sw = psutil.swap_memory()
        yield GaugeMetricFamily("fleetmon_host_swap_total_bytes", "Total swap (SwapTotal).", value=sw.total)
        yield GaugeMetricFamily("fleetmon_host_swap_free_bytes", "Unused swap (SwapFree).", value=sw.free)
        yield CounterMetricFamily(
            "fleetmon_host_swap_in_bytes", "Bytes swapped in from disk.", value=float(sw.sin)
        )
        yield CounterMetricFamily(
            "fleetmon_host_swap_out_bytes", "Bytes swapped out to disk.", value=float(sw.sout)
        )

    def _disks(self) -> Iterator[Metric]:
        fams = {
            "read_bytes": CounterMetricFamily(
                "fleetmon_host_disk_read_bytes", "Bytes read from the device.", labels=["device"]
            ),
            "write_bytes": CounterMetricFamily(
                "fleetmon_host_disk_written_bytes", "Bytes written to the device.", labels=["device"]
            ),
            "read_count": CounterMetricFamily(
                "fleetmon_host_disk_reads_completed", "Reads completed.", labels=["device"]
            ),
            "write_count": CounterMetricFamily(
                "fleetmon_host_disk_writes_completed", "Writes completed.", labels=["device"]
            ),
            "busy_time": CounterMetricFamily(
                "fleetmon_host_disk_io_time_seconds", "Seconds the device spent doing I/O.", labels=["device"]
            ),
        }
        counters = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
        for dev, c in sorted(counters.items()):
            if DISK_IGNORED.match(dev):
                continue
            for field, fam in fams.items():
                v = getattr(c, field, None)
                if v is not None:
                    fam.add_metric([dev], v / 1000.0 if field == "busy_time" else float(v))
        yield from fams.values()

    def _filesystems(self) -> Iterator[Metric]:
        labels = ["device", "mountpoint", "fstype"]
        size = GaugeMetricFamily("fleetmon_host_filesystem_size_bytes", "Filesystem size.", labels=labels)
        avail = GaugeMetricFamily(
            "fleetmon_host_filesystem_avail_bytes", "Space available to non-root users.", labels=labels
        )
        free = GaugeMetricFamily("fleetmon_host_filesystem_free_bytes", "Free space.", labels=labels)
        seen: set[str] = set()
        for p in psutil.disk_partitions(all=False):
            if FS_IGNORED_TYPES.match(p.fstype) or FS_IGNORED_MOUNTS.match(p.mountpoint):
                continue
            if p.mountpoint in seen:
                continue
            seen.add(p.mountpoint)
            try:
                st = os.statvfs(p.mountpoint)
            except OSError:
                continue  # e.g. permission denied: node_exporter skips it too
            lv = [p.device, p.mountpoint, p.fstype]
            size.add_metric(lv, st.f_blocks * st.f_frsize)
            avail.add_metric(lv, st.f_bavail * st.f_frsize)
            free.add_metric(lv, st.f_bfree * st.f_frsize)
        yield from (size, avail, free)

    def _network(self) -> Iterator[Metric]:
        fams = {
            "bytes_recv": CounterMetricFamily(
                "fleetmon_host_network_receive_bytes", "Bytes received.", labels=["device"]
            ),
            "bytes_sent": CounterMetricFamily(
                "fleetmon_host_network_transmit_bytes", "Bytes sent.", labels=["device"]
            ),
            "packets_recv": CounterMetricFamily(
                "fleetmon_host_network_receive_packets", "Packets received.", labels=["device"]
            ),
            "packets_sent": CounterMetricFamily(
                "fleetmon_host_network_transmit_packets", "Packets sent.", labels=["device"]
            ),
            "errin": CounterMetricFamily(
                "fleetmon_host_network_receive_errs", "Receive errors.", labels=["device"]
            ),
            "errout": CounterMetricFamily(
                "fleetmon_host_network_transmit_errs", "Transmit errors.", labels=["device"]
            ),
            "dropin": CounterMetricFamily(
                "fleetmon_host_network_receive_drop", "Received packets dropped.", labels=["device"]
            ),
            "dropout": CounterMetricFamily(
                "fleetmon_host_network_transmit_drop", "Outgoing packets dropped.", labels=["device"]
            ),
        }
        for dev, c in sorted((psutil.net_io_counters(pernic=True, nowrap=True) or {}).items()):
            for field, fam in fams.items():
                fam.add_metric([dev], float(getattr(c, field)))
        yield from fams.values()

    def _load(self) -> Iterator[Metric]:
        l1, l5, l15 = os.getloadavg()
        yield GaugeMetricFamily("fleetmon_host_load1", "1-minute load average.", value=l1)
        yield GaugeMetricFamily("fleetmon_host_load5", "5-minute load average.", value=l5)
        yield GaugeMetricFamily("fleetmon_host_load15", "15-minute load average.", value=l15)
