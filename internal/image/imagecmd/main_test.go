//go:build linux

package imagecmd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/image"
	"github.com/aetherium/aetherium/internal/image/imagetest"
)

var (
	dockerSkip  string
	agentBinary string
	testImage   string
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	cli, err := image.NewDockerClient()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = cli.Ping(ctx)
		cancel()
	}
	if err != nil {
		dockerSkip = err.Error()
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			fmt.Fprintln(os.Stderr, "AETHERIUM_REQUIRE_SERVICES=1 but the Docker engine is unusable:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "WARNING: image command tests with Docker will be SKIPPED:", err)
		return m.Run()
	}
	defer cli.Close()
	tmp, err := os.MkdirTemp("", "aeimgcmd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if agentBinary, err = imagetest.BuildAgent(tmp); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if testImage, err = imagetest.ImportBusybox(ctx, cli); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = imagetest.Remove(context.Background(), cli, testImage) }()
	return m.Run()
}

// TestBuildListRemove drives the three subcommands the way a user would.
func TestBuildListRemove(t *testing.T) {
	if dockerSkip != "" {
		t.Skip("SKIPPED: needs a Docker engine: " + dockerSkip)
	}
	dir := t.TempDir()
	out, progress, err := run(t, dir, agentBinary, "build", "--from-docker", testImage, "--name", "bb", "--version", "1.0")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, progress)
	}
	want := filepath.Join(dir, "images", "bb", "1.0", image.RootfsFile)
	if strings.TrimSpace(out) != want {
		t.Fatalf("build printed %q, want %q", out, want)
	}
	for _, step := range []string{"exporting", "unpacking", "making ext4", "verifying"} {
		if !strings.Contains(progress, step) {
			t.Errorf("progress lacks %q:\n%s", step, progress)
		}
	}
	if _, progress, err = run(t, dir, agentBinary, "build", "--from-docker", testImage, "--name", "bb", "--version", "1.0"); err != nil || !strings.Contains(progress, "up to date") {
		t.Fatalf("rebuild: %v\n%s", err, progress)
	}
	out, _, err = run(t, dir, "", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) != 2 || !strings.HasPrefix(lines[1], "bb ") || !strings.Contains(lines[1], "1.0") || !strings.Contains(lines[1], "docker:"+testImage) {
		t.Fatalf("list: %q, %v", out, err)
	}
	if out, _, err = run(t, dir, "", "rm", "bb@1.0"); err != nil || !strings.Contains(out, "removed bb@1.0") {
		t.Fatalf("rm: %q, %v", out, err)
	}
	if _, err := os.Stat(want); !os.IsNotExist(err) {
		t.Fatalf("template still there after rm: %v", err)
	}
}
