"""`cryptomon dashboard`: the Grafana dashboards, rendered in a browser without Grafana."""
