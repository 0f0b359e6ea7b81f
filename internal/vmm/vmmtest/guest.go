//go:build linux

// Package vmmtest has fixtures for tests that boot real guests: the guest kernel and a small root filesystem
// template with the agent as init.
package vmmtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"

	"github.com/aetherium/aetherium/internal/image"
	"github.com/aetherium/aetherium/internal/image/imagetest"
	"github.com/aetherium/aetherium/internal/vmm/docker"
)

// RequireServices reports whether a missing dependency must fail the tests instead of skipping them (CI sets it).
func RequireServices() bool { return os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" }

// Kernel returns the guest kernel for tests: AETHERIUM_TEST_KERNEL when set, otherwise the newest kernel in the
// build cache (AETHERIUM_CACHE_DIR, default /var/cache/aetherium), where `aetherium image kernel build` (run by
// scripts/test.sh) leaves it.
func Kernel() (string, error) {
	if p := os.Getenv("AETHERIUM_TEST_KERNEL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("AETHERIUM_TEST_KERNEL: %w", err)
		}
		return p, nil
	}
	cache := os.Getenv("AETHERIUM_CACHE_DIR")
	if cache == "" {
		cache = "/var/cache/aetherium"
	}
	matches, _ := filepath.Glob(filepath.Join(cache, "kernels", "*", "vmlinux"))
	if len(matches) == 0 {
		return "", fmt.Errorf("no guest kernel: set AETHERIUM_TEST_KERNEL or run `aetherium image kernel build` "+
			"(looked in %s/kernels)", cache)
	}
	sort.Slice(matches, func(i, j int) bool { return modTime(matches[i]) > modTime(matches[j]) })
	return matches[0], nil
}

func modTime(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.ModTime().UnixNano()
}

// QEMUMissing says why QEMU guests cannot run here ("" when they can).
func QEMUMissing() string {
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not installed (apt-get install qemu-system-x86 qemu-utils)"
		}
	}
	if _, err := Kernel(); err != nil {
		return err.Error()
	}
	return ""
}

// Template builds a small template (static busybox with every applet, and the agent as init, from the Docker
// backend's base image) into a template store under dir and returns the store and the template. It needs a Docker
// engine and e2fsprogs.
func Template(ctx context.Context, dir, name string) (*image.Store, image.Manifest, error) {
	cli, err := image.NewDockerClient()
	if err != nil {
		return nil, image.Manifest{}, err
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx); err != nil {
		return nil, image.Manifest{}, fmt.Errorf("docker engine: %w", err)
	}
	agent, err := imagetest.BuildAgent(dir)
	if err != nil {
		return nil, image.Manifest{}, err
	}
	dk, err := docker.New(ctx, docker.Config{DataDir: filepath.Join(dir, "docker"), AgentBinary: agent,
		BusyboxPath: "/bin/busybox", WorkerID: "vmmtest"})
	if err != nil {
		return nil, image.Manifest{}, err
	}
	defer dk.Close()
	ref, err := dk.BaseImage(ctx)
	if err != nil {
		return nil, image.Manifest{}, err
	}
	store, err := image.NewStore(filepath.Join(dir, "images"))
	if err != nil {
		return nil, image.Manifest{}, err
	}
	m, _, err := image.NewBuilder(store, cli, nil).Build(ctx, image.BuildOptions{
		FromDocker: ref, Name: name, AgentBinary: agent,
	})
	if err != nil {
		return nil, image.Manifest{}, errors.Join(fmt.Errorf("build template %s", name), err)
	}
	return store, m, nil
}
