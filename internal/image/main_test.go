//go:build linux

package image

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	dockerclient "github.com/docker/docker/client"

	"github.com/aetherium/aetherium/internal/image/imagetest"
)

// Package-level fixtures, set once by TestMain.
var (
	dockerSkip  string               // why engine tests skip ("" when it answers)
	engine      *dockerclient.Client // raw client for the builder and for assertions
	agentBinary string               // static aetherium-agent built for these tests
	testImage   string               // tiny busybox image imported for these tests
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "aeimg-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	dockerSkip = probeDocker()
	if dockerSkip == "" {
		if _, err := exec.LookPath("mkfs.ext4"); err != nil {
			dockerSkip = "mkfs.ext4 not installed (e2fsprogs)"
		}
	}
	if dockerSkip != "" {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			fmt.Fprintln(os.Stderr, "AETHERIUM_REQUIRE_SERVICES=1 but image builds cannot run:", dockerSkip)
			return 1
		}
		fmt.Fprintln(os.Stderr, "WARNING: image build tests will be SKIPPED:", dockerSkip)
		return m.Run()
	}
	defer engine.Close()
	if agentBinary, err = imagetest.BuildAgent(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "build the agent:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if testImage, err = imagetest.ImportBusybox(ctx, engine); err != nil {
		fmt.Fprintln(os.Stderr, "import the test image:", err)
		return 1
	}
	defer func() {
		if err := imagetest.Remove(context.Background(), engine, testImage); err != nil {
			fmt.Fprintln(os.Stderr, "remove the test image:", err)
		}
	}()
	return m.Run()
}

func probeDocker() string {
	cli, err := NewDockerClient()
	if err != nil {
		return err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		_ = cli.Close()
		return fmt.Sprintf("Docker engine at %s does not answer: %v", cli.DaemonHost(), err)
	}
	engine = cli
	return ""
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func requireDocker(t testing.TB) {
	t.Helper()
	if dockerSkip != "" {
		t.Skip("SKIPPED: needs a Docker engine and e2fsprogs: " + dockerSkip)
	}
}
