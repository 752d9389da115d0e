"""Dashboards and alert rules, defined once: Grafana's provisioning files are generated from these
definitions (`cryptomon grafana generate`), and other renderers can run the same SQL."""
