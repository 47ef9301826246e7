#!/usr/bin/env bash
# Install Prometheus, Alertmanager and Pushgateway from the distribution when they are missing.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "fleetmon: missing ${need[*]}." >&2
  echo "  Install them as root:  sudo apt-get install -y ${need[*]}" >&2
  echo "  (or put the official release binaries on PATH)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "fleetmon: missing ${need[*]} and no apt-get here; install them from prometheus.io and put them on PATH" >&2
  exit 1
fi
echo "fleetmon: installing ${need[*]} from the distribution packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages try to start services; we run our own processes, so stop any that started.
for svc in prometheus prometheus-alertmanager prometheus-pushgateway prometheus-node-exporter; do
  if command -v service >/dev/null; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
