//go:build linux

package imagecmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/image"
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
	if _, _, err := run(t, dir, "", "build", "--name", "y"); err == nil || !strings.Contains(err.Error(), "give a source") {
		t.Fatalf("build without a source: %v", err)
	}
}

// TestBuildSourceFlags covers the refusals of the source flags, which come before any build starts.
func TestBuildSourceFlags(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent") // never run: every case fails before
	if err := os.WriteFile(agent, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--from-docker", "x", "--from-debian", "--name", "y"}, "exactly one source"},
		{[]string{"--from-debian=bookworm", "--from-docker", "x", "--name", "y"}, "exactly one source"},
		{[]string{"--from-debian", "trixie", "--name", "y"}, "give the suite as --from-debian=trixie"},
		{[]string{"--from-docker", "x", "--mirror", "http://deb.debian.org/debian", "--name", "y"}, "--from-debian only"},
		{[]string{"--from-docker", "x", "--packages", "git", "--name", "y"}, "--from-debian only"},
		{[]string{"--from-debian", "--packages", "git,Curl", "--name", "y"}, `invalid Debian package name "Curl"`},
		{[]string{"--from-debian", "--packages", "git", "--packages", "vim=2", "--name", "y"}, `invalid Debian package name "vim=2"`},
		{[]string{"--from-debian=../etc", "--name", "y"}, "invalid Debian suite"},
		{[]string{"--from-debian", "--mirror", "ftp://example/debian", "--name", "y"}, "scheme must be http, https or file"},
		{[]string{"--from-debian"}, `"name" not set`},
	} {
		args := append([]string{"build", "--agent", agent}, c.args...)
		_, _, err := run(t, dir, "", args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error with %q", c.args, err, c.want)
		}
	}
	out, _, err := run(t, dir, "", "list")
	if err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("refused builds left templates: %q, %v", out, err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "images", ".tmp")); len(left) != 0 {
		t.Fatalf("refused builds left staging: %v", left)
	}
	help, _, err := run(t, dir, "", "build", "--help")
	for _, flag := range []string{"--from-debian", "--mirror", "--packages", "--rebuild", image.DefaultDebianSuite} {
		if err != nil || !strings.Contains(help, flag) {
			t.Errorf("help lacks %s: %v\n%s", flag, err, help)
		}
	}
}

// TestToolFlags covers --tools refusals that come before any build, and the tools listing.
func TestToolFlags(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent") // never run: every case fails before
	if err := os.WriteFile(agent, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("tools:\n  x:\n    kind: rpm\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--from-debian", "--tools", "git,nodejs", "--name", "y"}, `unknown tool "nodejs": available tools are bun, claude-code`},
		{[]string{"--from-debian", "--tools", "node@22", "--tools", "node@24", "--name", "y"}, "conflicting tool versions"},
		{[]string{"--from-debian", "--tools", "jq@1.6", "--name", "y"}, "version cannot be chosen"},
		{[]string{"--from-debian", "--tool-catalog", bad, "--name", "y"}, "apply with --tools only"},
		{[]string{"--from-debian", "--tools", "git", "--tool-catalog", bad, "--name", "y"}, `unknown kind "rpm"`},
		{[]string{"--from-debian", "--tools", "git", "--npm-registry", "ftp://x", "--name", "y"}, "not an http(s) URL"},
	} {
		args := append([]string{"build", "--agent", agent}, c.args...)
		_, _, err := run(t, dir, "", args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error with %q", c.args, err, c.want)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "images", ".tmp")); len(left) != 0 {
		t.Fatalf("refused builds left staging: %v", left)
	}
	out, _, err := run(t, dir, "", "tools")
	if err != nil || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("tools: %q, %v", out, err)
	}
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"claude-code npm latest claude", "node npm lts (24) node", "git debian (suite's) git"} {
		if !strings.Contains(flat, want) {
			t.Errorf("tools listing lacks %q:\n%s", want, out)
		}
	}
	help, _, err := run(t, dir, "", "build", "--help")
	if err != nil || !strings.Contains(help, "--tools git,node,npm,bun,claude-code,curl --name default") {
		t.Errorf("build help lacks the default template example: %v\n%s", err, help)
	}
}
