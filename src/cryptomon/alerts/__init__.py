"""Alert e-mails without Grafana: the dashboards' alert rules, evaluated by the project itself."""
