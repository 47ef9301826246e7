"""Infrastructure: CPU, memory, disk, network and GPU per host, and per process group / app."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models.dashboard import VariableOption, VariableRefresh, VariableSort

from fleetmon.dashboards.common import DS, new_dashboard, q, row, stat_panel, thresholds, ts, up_links

HOST = 'instance=~"$host"'
GROUP = 'group=~"$group"'


def multi_variable(d: dashboard.Dashboard, name: str, label: str, query: str) -> dashboard.Dashboard:
    return d.with_variable(
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def build() -> dashboard.Dashboard:
    d = new_dashboard(
        "infrastructure",
        "fleetmon / Infrastructure",
        "Hosts (CPU, memory, disk, network, GPU; one platform exporter per host, `instance`) and the "
        "platform's process groups and container apps.",
    )
    d = multi_variable(d, "host", "Host", "label_values(fleetmon_host_cpus, instance)")
    d = multi_variable(d, "group", "Process group", f"label_values(fleetmon_process_up{{{HOST}}}, group)")
    d = up_links(d, [("Fleet overview", "fleet", ()), ("Platform", "platform", ())])

    d = d.with_row(row("CPU"))
    cpu = f"fleetmon_host_cpu_seconds_total{{{HOST}}}"
    d = d.with_panel(
        ts(
            "CPU utilization",
            [
                q(
                    f'1 - avg by (instance) (rate(fleetmon_host_cpu_seconds_total{{{HOST},mode="idle"}}[$__rate_interval]))',
                    "{{instance}}",
                )
            ],
            w=8,
            unit="percentunit",
            min_val=0,
            max_val=1,
        )
    )
    d = d.with_panel(
        ts(
            "CPU by mode",
            [
                q(
                    f"sum by (instance, mode) (rate({cpu}[$__rate_interval])) / on (instance) group_left "
                    f"fleetmon_host_cpus{{{HOST}}}",
                    "{{instance}} {{mode}}",
                )
            ],
            w=8,
            unit="percentunit",
            stack=True,
        )
    )
    d = d.with_panel(
        ts(
            "Load average",
            [
                q(f"fleetmon_host_load1{{{HOST}}}", "{{instance}} 1m"),
                q(f"fleetmon_host_load5{{{HOST}}}", "{{instance}} 5m"),
                q(f"fleetmon_host_cpus{{{HOST}}}", "{{instance}} CPUs"),
            ],
            w=8,
        )
    )

    d = d.with_row(row("Memory"))
    d = d.with_panel(
        ts(
            "Memory used",
            [
                q(
                    f"1 - fleetmon_host_memory_available_bytes{{{HOST}}} / fleetmon_host_memory_total_bytes{{{HOST}}}",
                    "{{instance}}",
                )
            ],
            w=8,
            unit="percentunit",
            min_val=0,
            max_val=1,
        )
    )
    d = d.with_panel(
        ts(
            "Memory",
            [
                q(
                    f"fleetmon_host_memory_total_bytes{{{HOST}}} - fleetmon_host_memory_available_bytes{{{HOST}}}",
                    "{{instance}} used",
                ),
                q(f"fleetmon_host_memory_cached_bytes{{{HOST}}}", "{{instance}} cached"),
                q(f"fleetmon_host_memory_total_bytes{{{HOST}}}", "{{instance}} total"),
            ],
            w=8,
            unit="bytes",
        )
    )
    d = d.with_panel(
        ts(
            "Swap",
            [
                q(
                    f"fleetmon_host_swap_total_bytes{{{HOST}}} - fleetmon_host_swap_free_bytes{{{HOST}}}",
                    "{{instance}} used",
                ),
                q(
                    f"rate(fleetmon_host_swap_out_bytes_total{{{HOST}}}[$__rate_interval])",
                    "{{instance}} out /s",
                ),
            ],
            w=8,
            unit="bytes",
        )
    )

    d = d.with_row(row("Disk and network"))
    d = d.with_panel(
        ts(
            "File system used",
            [
                q(
                    f"1 - fleetmon_host_filesystem_avail_bytes{{{HOST}}} / fleetmon_host_filesystem_size_bytes{{{HOST}}}",
                    "{{instance}} {{mountpoint}}",
                )
            ],
            w=8,
            unit="percentunit",
            min_val=0,
            max_val=1,
        )
    )
    d = d.with_panel(
        ts(
            "Disk I/O",
            [
                q(
                    f"rate(fleetmon_host_disk_read_bytes_total{{{HOST}}}[$__rate_interval])",
                    "{{instance}} {{device}} read",
                ),
                q(
                    f"rate(fleetmon_host_disk_written_bytes_total{{{HOST}}}[$__rate_interval])",
                    "{{instance}} {{device}} written",
                ),
            ],
            w=8,
            unit="Bps",
        )
    )
    d = d.with_panel(
        ts(
            "Disk busy",
            [
                q(
                    f"rate(fleetmon_host_disk_io_time_seconds_total{{{HOST}}}[$__rate_interval])",
                    "{{instance}} {{device}}",
                )
            ],
            w=8,
            unit="percentunit",
        )
    )
    d = d.with_panel(
        ts(
            "Network traffic",
            [
                q(
                    f"rate(fleetmon_host_network_receive_bytes_total{{{HOST}}}[$__rate_interval])",
                    "{{instance}} {{device}} in",
                ),
                q(
                    f"rate(fleetmon_host_network_transmit_bytes_total{{{HOST}}}[$__rate_interval])",
                    "{{instance}} {{device}} out",
                ),
            ],
            w=12,
            unit="Bps",
        )
    )
    d = d.with_panel(
        ts(
            "Network errors and drops",
            [
                q(
                    f"sum by (instance, device) (rate(fleetmon_host_network_receive_errs_total{{{HOST}}}[$__rate_interval])"
                    f" + rate(fleetmon_host_network_transmit_errs_total{{{HOST}}}[$__rate_interval])"
                    f" + rate(fleetmon_host_network_receive_drop_total{{{HOST}}}[$__rate_interval])"
                    f" + rate(fleetmon_host_network_transmit_drop_total{{{HOST}}}[$__rate_interval]))",
                    "{{instance}} {{device}}",
                )
            ],
            w=12,
            unit="pps",
        )
    )

    d = d.with_row(row("GPU"))
    d = d.with_panel(
        stat_panel(
            "GPU available",
            [q(f"fleetmon_gpu_available{{{HOST}}}", "{{instance}}", instant=True)],
            w=4,
            h=8,
            steps=thresholds((None, "text"), (1, "green")),
            description="1 if NVML works and a GPU is readable on the host; 0 on a host without GPU",
        )
    )
    d = d.with_panel(
        ts(
            "GPU utilization",
            [
                q(f"fleetmon_gpu_utilization_ratio{{{HOST}}}", "{{instance}} gpu{{gpu}}"),
                q(f"fleetmon_gpu_memory_utilization_ratio{{{HOST}}}", "{{instance}} gpu{{gpu}} memory copy"),
            ],
            w=10,
            unit="percentunit",
            min_val=0,
            max_val=1,
        )
    )
    d = d.with_panel(
        ts(
            "GPU memory",
            [
                q(f"fleetmon_gpu_memory_used_bytes{{{HOST}}}", "{{instance}} gpu{{gpu}} used"),
                q(f"fleetmon_gpu_memory_total_bytes{{{HOST}}}", "{{instance}} gpu{{gpu}} total"),
                q(
                    f"sum by (instance, group) (fleetmon_gpu_process_memory_used_bytes{{{HOST},{GROUP}}})",
                    "{{instance}} {{group}}",
                ),
            ],
            w=10,
            unit="bytes",
        )
    )
    d = d.with_panel(
        ts(
            "GPU temperature and power",
            [
                q(f"fleetmon_gpu_temperature_celsius{{{HOST}}}", "{{instance}} gpu{{gpu}} °C"),
                q(f"fleetmon_gpu_power_watts{{{HOST}}}", "{{instance}} gpu{{gpu}} W"),
            ],
            w=24,
            h=6,
        )
    )

    d = d.with_row(row("Process groups"))
    d = d.with_panel(
        ts(
            "CPU per process group",
            [
                q(
                    f"sum by (instance, group) (rate(fleetmon_process_cpu_seconds_total{{{HOST},{GROUP}}}[$__rate_interval]))",
                    "{{group}}",
                )
            ],
            w=8,
            unit="percentunit",
            description="CPU seconds per second (1 = one core)",
        )
    )
    d = d.with_panel(
        ts(
            "Resident memory per process group",
            [q(f"fleetmon_process_resident_memory_bytes{{{HOST},{GROUP}}}", "{{group}}")],
            w=8,
            unit="bytes",
        )
    )
    d = d.with_panel(
        stat_panel(
            "Processes",
            [q(f"fleetmon_process_instances{{{HOST},{GROUP}}}", "{{group}}", instant=True)],
            w=8,
            h=8,
            steps=thresholds((None, "red"), (1, "green")),
            description="matching processes per group (0 = the group is down)",
        )
    )
    d = d.with_panel(
        ts(
            "Threads and open files",
            [
                q(f"fleetmon_process_threads{{{HOST},{GROUP}}}", "{{group}} threads"),
                q(f"fleetmon_process_open_fds{{{HOST},{GROUP}}}", "{{group}} fds"),
            ],
            w=12,
        )
    )
    d = d.with_panel(
        ts(
            "Container apps: memory working set",
            [q("max by (app) (fleetmon_app_memory_working_set_bytes)", "{{app}}")],
            w=12,
            unit="bytes",
            description="per app, from the platform's MemoryUsage system events (see the Platform dashboard)",
        )
    )
    return d
