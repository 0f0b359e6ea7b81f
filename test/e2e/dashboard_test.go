package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestDashboard runs the dashboard (served by serve at /) in headless Chromium: web/test/dashboard.test.mjs signs
// in, creates a VM, types `echo hi` in its terminal and sees `hi`, runs a command and sees its output stream in,
// deletes the VM, writes screenshots of the main pages and fails on any console or page error. Chromium is
// Debian's (scripts/setup.sh installs it; CHROMIUM overrides the path), playwright-core comes from npm
// (web/test/package-lock.json). Screenshots go to AETHERIUM_DASHBOARD_SCREENSHOTS, else to a new temp dir (logged).
func TestDashboard(t *testing.T) {
	requireDocker(t)
	node, err := exec.LookPath("node")
	requireService(t, "node", err == nil, "node is not on PATH")
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	_, err = os.Stat(chromium)
	requireService(t, "Chromium", err == nil, chromium+" is missing (apt-get install chromium; scripts/setup.sh does)")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "web", "test")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json")); err != nil {
		npm, err := exec.LookPath("npm")
		requireService(t, "npm", err == nil, "npm is not on PATH and web/test/node_modules is missing")
		out, err := exec.Command(npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefix", dir).CombinedOutput()
		requireService(t, "npm registry", err == nil, "npm ci in web/test: "+string(out))
	}
	shots := os.Getenv("AETHERIUM_DASHBOARD_SCREENSHOTS")
	if shots == "" {
		if shots, err = os.MkdirTemp("", "aetherium-dashboard-"); err != nil {
			t.Fatal(err)
		}
	}

	const workerID = "e2e-dashboard"
	removeWorkerContainers(t, workerID)
	dataDir, addr := shortDir(t), freePort(t)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID, "AETHERIUM_LOG_LEVEL=info"), "serve")
	waitHTTP(t, addr, p)
	key := readLine(t, filepath.Join(dataDir, "admin-api-key"))
	waitReady(t, newClient(t, addr, key))

	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "dashboard.test.mjs"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "AETHERIUM_URL=http://"+addr, "AETHERIUM_API_KEY="+key,
		"AETHERIUM_SCREENSHOTS="+shots, "CHROMIUM="+chromium)
	began := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("dashboard.test.mjs (%s):\n%s", time.Since(began).Round(100*time.Millisecond), out)
	t.Logf("screenshots: %s", shots)
	if err != nil {
		t.Fatalf("the dashboard test failed: %v", err)
	}
}
