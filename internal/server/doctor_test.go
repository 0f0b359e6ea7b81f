package server

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/aetherium/aetherium/internal/config"
)

func doctorConfig(t *testing.T, args ...string) config.Config {
	t.Helper()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	config.Flags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(fs, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func byName(checks []Check) map[string]Check {
	m := map[string]Check{}
	for _, c := range checks {
		m[c.Name] = c
	}
	return m
}

func TestDoctorReportsWhatFailsAndHowToFixIt(t *testing.T) {
	// Not t.TempDir(): the docker backend refuses data directories too deep for agent socket paths.
	dir, err := os.MkdirTemp("", "dr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg := doctorConfig(t,
		"--metrics-listen", taken.Addr().String(), // another process has it
		"--data-dir", filepath.Join(blocker, "data"), // a file stands where the directory should be
		"--database-url", "sqlite://"+filepath.Join(dir, "db.sqlite"),
		"--redis-url", "redis://127.0.0.1:1/0", // nothing listens on port 1
		"--cluster-token", strings.Repeat("k", 32),
		"--agent-binary", filepath.Join(dir, "no-such-agent"),
		"--listen", "127.0.0.1:0",
		"--backend", "docker",
	)
	checks := byName(Doctor(context.Background(), cfg, Roles{API: true, Worker: true}, slog.Default()))
	for name, want := range map[string]CheckStatus{
		"data directory": CheckFail, "database": CheckOK, "redis": CheckFail, "api listen address": CheckOK,
		"vm backend (docker)": CheckFail, "metrics listen address": CheckFail,
	} {
		c, ok := checks[name]
		if !ok {
			t.Fatalf("no %q check in %+v", name, checks)
		}
		if c.Status != want {
			t.Errorf("%s: %s (%s), want %s", name, c.Status, c.Detail, want)
		}
		if c.Status == CheckFail && (c.Fix == "" || c.Detail == "") {
			t.Errorf("%s failed without a detail and a fix: %+v", name, c)
		}
	}
	if d := checks["vm backend (docker)"].Detail; !strings.Contains(d, "no-such-agent") {
		t.Errorf("docker backend detail does not name the missing agent: %q", d)
	}
}

// TestDoctorAutoSaysWhyEachBackendWasPassedOver: with backend auto and nothing usable, the check names every
// backend and the reason it cannot run.
func TestDoctorAutoSaysWhyEachBackendWasPassedOver(t *testing.T) {
	dir, err := os.MkdirTemp("", "dr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := doctorConfig(t, "--data-dir", dir, "--agent-binary", filepath.Join(dir, "no-such-agent"),
		"--listen", "127.0.0.1:0", "--firecracker-bin", "", "--qemu-bin", filepath.Join(dir, "no-qemu"))
	checks := byName(Doctor(context.Background(), cfg, Roles{Worker: true}, slog.Default()))
	c, ok := checks["vm backend (auto)"]
	if !ok || c.Status != CheckFail {
		t.Fatalf("auto backend check: %+v", checks)
	}
	for _, want := range []string{"firecracker: ", "qemu: ", "no-qemu", "docker: ", "no-such-agent"} {
		if !strings.Contains(c.Detail, want) {
			t.Errorf("auto detail does not mention %q: %s", want, c.Detail)
		}
	}
	if g := checks["guest images"]; g.Status != CheckWarn || !strings.Contains(g.Fix, "image kernel build") {
		t.Errorf("guest images check: %+v", g)
	}
}
