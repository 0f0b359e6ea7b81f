//go:build linux

package imagecmd

import (
	"bytes"
	"strings"
	"testing"
)

func run(t *testing.T, dataDir, agent string, args ...string) (string, string, error) {
	t.Helper()
	cmd := NewCommand(func() (string, string, error) { return dataDir, agent, nil })
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// TestCommandsWithoutEngine covers what needs no Docker engine: the table header of an empty store, refusals.
func TestCommandsWithoutEngine(t *testing.T) {
	dir := t.TempDir()
	out, _, err := run(t, dir, "", "list")
	if err != nil || !strings.HasPrefix(out, "NAME") || strings.Count(out, "\n") != 1 {
		t.Fatalf("list on an empty store: %q, %v", out, err)
	}
	if _, _, err := run(t, dir, "", "rm", "nothing@v1"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("rm of a missing template: %v", err)
	}
	if _, _, err := run(t, dir, "", "build", "--from-docker", "x", "--name", "y"); err == nil || !strings.Contains(err.Error(), "agent") {
		t.Fatalf("build without an agent: %v", err)
	}
	if _, _, err := run(t, dir, "", "build", "--name", "y"); err == nil {
		t.Fatal("build without --from-docker succeeded")
	}
}
