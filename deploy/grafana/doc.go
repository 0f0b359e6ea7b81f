// Package grafana holds Aetherium's Grafana dashboard (aetherium.json) and provisioning files
// (provisioning/). It has no code of its own: grafana_test.go parses the dashboard and checks every PromQL query
// against the metrics internal/metrics really registers, and every LogQL query against the labels and structured
// metadata internal/logs really sends, so the dashboard cannot drift from the code.
package grafana
