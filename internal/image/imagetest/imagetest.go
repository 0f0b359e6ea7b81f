//go:build linux

// Package imagetest has fixtures for tests that build templates: a static agent and a tiny busybox image.
package imagetest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/docker/docker/api/types/image"
	dockerclient "github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// BuildAgent builds cmd/aetherium-agent statically into dir; AETHERIUM_AGENT_BINARY names a prebuilt one instead
// (CI may build it once for several packages).
func BuildAgent(dir string) (string, error) {
	if p := os.Getenv("AETHERIUM_AGENT_BINARY"); p != "" {
		return p, nil
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	out := filepath.Join(dir, "aetherium-agent")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/aetherium-agent")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/aetherium-agent: %w\n%s", err, msg)
	}
	return out, nil
}

// ImportBusybox imports a busybox root filesystem (Debian's static /bin/busybox) under a random tag and returns
// the reference; the caller removes it. It has a setuid file, a symlink, a hard link and a file owned by 1000:1000
// so that tests can check they survive.
func ImportBusybox(ctx context.Context, cli dockerclient.APIClient) (string, error) {
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("needs Debian's busybox-static: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	passwd := "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
	type ent struct {
		h    tar.Header
		body []byte
	}
	for _, e := range []ent{
		{h: tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755}},
		{h: tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o4755}, body: busybox},
		{h: tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}},
		// Real archivers give a hard link its target's mode; the engine applies it to the shared inode.
		{h: tar.Header{Name: "usr/bin/env", Typeflag: tar.TypeLink, Linkname: "bin/busybox", Mode: 0o4755}},
		{h: tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, body: []byte(passwd)},
		{h: tar.Header{Name: "etc/alice.conf", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000}},
	} {
		e.h.ModTime = mt
		e.h.Size = int64(len(e.body))
		if err := tw.WriteHeader(&e.h); err != nil {
			return "", err
		}
		if _, err := tw.Write(e.body); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	ref := "aetherium-imgtest:" + hex.EncodeToString(suffix[:])
	rc, err := cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, ref, image.ImportOptions{})
	if err != nil {
		return "", fmt.Errorf("import %s: %w", ref, err)
	}
	defer rc.Close()
	// The engine reports import errors in the progress stream, not the HTTP status.
	dec := json.NewDecoder(rc)
	for {
		var msg jsonmessage.JSONMessage
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", fmt.Errorf("import %s: %w", ref, err)
		}
		if msg.Error != nil {
			return "", fmt.Errorf("import %s: %w", ref, msg.Error)
		}
	}
	return ref, nil
}

// Remove removes an image imported by ImportBusybox.
func Remove(ctx context.Context, cli dockerclient.APIClient, ref string) error {
	_, err := cli.ImageRemove(ctx, ref, image.RemoveOptions{Force: true, PruneChildren: true})
	return err
}
