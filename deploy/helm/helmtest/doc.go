// Package helmtest tests the Helm chart in deploy/helm/aetherium with a real helm v4 binary: `helm lint --strict`
// and `helm template` for the default values and every example values file, every rendered object decoded strictly
// into its Kubernetes API type, and values that break the schema refused. It has no code of its own: see
// chart_test.go. The helm binary is built by scripts/setup.sh services (AETHERIUM_TEST_HELM_BIN overrides it).
package helmtest
