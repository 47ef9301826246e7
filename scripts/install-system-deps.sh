#!/usr/bin/env bash
# Install Prometheus, Alertmanager and Pushgateway, VictoriaMetrics (the scale mode: docs/scale.md), and
# PostgreSQL's server binaries (the tests of the outputs' SQL source run a throw-away server:
# tests/postgres.py), from the distribution when they are missing.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
# The scale mode's central store and rule evaluator (stack.scale, docs/scale.md).
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
command -v vmalert >/dev/null || need+=(victoria-metrics)
# Debian keeps initdb/pg_ctl in /usr/lib/postgresql/<version>/bin, not on PATH.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && ! command -v initdb >/dev/null; then
  need+=(postgresql)
fi
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" != 0 ]; then
  echo "fleetmon: missing ${need[*]}." >&2
  echo "  Install them as root:  sudo apt-get install -y ${need[*]}" >&2
  echo "  (or put the official release binaries on PATH)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "fleetmon: missing ${need[*]} and no apt-get here; install them from prometheus.io / postgresql.org and put them on PATH" >&2
  exit 1
fi
# Debian's postgresql package creates a "main" cluster and starts it as a service; fleetmon needs only the
# binaries, so ask postgresql-common (its createcluster.conf reads createcluster.d) not to create one, for
# this install only.
no_cluster=/etc/postgresql-common/createcluster.d/fleetmon-no-main-cluster.conf
if [[ " ${need[*]} " == *" postgresql "* ]] && [ ! -e "$no_cluster" ]; then
  mkdir -p "$(dirname "$no_cluster")"
  echo "create_main_cluster = false" >"$no_cluster"
  trap 'rm -f "$no_cluster"' EXIT
fi
echo "fleetmon: installing ${need[*]} from the distribution packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's packages try to start services; we run our own processes, so stop any that started.
for svc in prometheus prometheus-alertmanager prometheus-pushgateway prometheus-node-exporter postgresql victoria-metrics; do
  if command -v service >/dev/null; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
