"""fleetmon's Grafana dashboards as code (grafana-foundation-sdk); `fleetmon dashboards` writes the JSON."""
