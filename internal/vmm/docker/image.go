package docker

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/pkg/jsonmessage"
)

// baseLayoutVersion changes whenever baseRootfs lays files out differently, so that a new layout gets a new tag.
const baseLayoutVersion = 1

// baseRepo is the repository of the locally built default image; the tag is a hash of its inputs.
const baseRepo = "aetherium/base"

// basePath is the PATH of the base image (and of exec'd commands that do not set their own).
const basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// baseModTime is the fixed modification time of every file in the base image, so that its tar stream depends on
// its inputs only.
var baseModTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// BaseImage returns the reference of the locally built base image (static busybox with every applet linked),
// building it on first use: a small root filesystem that templates for microVMs can be made from too.
func (b *Backend) BaseImage(ctx context.Context) (string, error) { return b.baseImage(ctx) }

// baseImage returns the reference of the base image, importing it into the engine first if no image with that
// content hash exists yet. Concurrent callers wait for one build instead of racing their own.
func (b *Backend) baseImage(ctx context.Context) (string, error) {
	select {
	case b.baseLock <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("docker backend: wait for base image build: %w", ctx.Err())
	}
	defer func() { <-b.baseLock }()
	if b.baseRef != "" {
		return b.baseRef, nil
	}

	busybox, err := os.ReadFile(b.cfg.BusyboxPath)
	if err != nil {
		return "", fmt.Errorf("docker backend: read busybox for the base image: %w (install busybox-static or set BusyboxPath)", err)
	}
	if err := checkStaticExecutable(b.cfg.BusyboxPath); err != nil {
		return "", fmt.Errorf("docker backend: busybox for the base image: %w (install Debian's busybox-static)", err)
	}
	sum := sha256.New()
	fmt.Fprintf(sum, "aetherium-base-layout-%d\n", baseLayoutVersion)
	sum.Write(busybox)
	ref := baseRepo + ":" + hex.EncodeToString(sum.Sum(nil))[:20]

	if _, err := b.cli.ImageInspect(ctx, ref); err == nil {
		b.baseRef = ref
		return ref, nil
	} else if !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("docker backend: inspect base image %s: %w", ref, err)
	}

	start := time.Now()
	applets, err := busyboxApplets(ctx, b.cfg.BusyboxPath)
	if err != nil {
		return "", err
	}
	rootfs, err := baseRootfs(busybox, applets)
	if err != nil {
		return "", fmt.Errorf("docker backend: build base root filesystem: %w", err)
	}
	if err := b.importImage(ctx, rootfs, ref); err != nil {
		return "", err
	}
	b.log.Info("built base image", "ref", ref, "applets", len(applets), "bytes", len(rootfs),
		"took", time.Since(start).Round(time.Millisecond))
	b.baseRef = ref
	return ref, nil
}

// importImage imports rootfs (a tar stream) as ref and checks the engine's progress stream for errors, which the
// engine reports there rather than in the HTTP status.
func (b *Backend) importImage(ctx context.Context, rootfs []byte, ref string) error {
	rc, err := b.cli.ImageImport(ctx, image.ImportSource{Source: bytes.NewReader(rootfs), SourceName: "-"}, ref,
		image.ImportOptions{
			Message: "aetherium base image (busybox), layout " + strconv.Itoa(baseLayoutVersion),
			Changes: []string{
				"ENV PATH=" + basePath,
				// Not LabelManaged: containers inherit image labels, and other containers made from this image
				// must not look like VMs.
				"LABEL aetherium.base-layout=" + strconv.Itoa(baseLayoutVersion),
				"WORKDIR /root",
			},
		})
	if err != nil {
		return fmt.Errorf("docker backend: import base image %s: %w", ref, err)
	}
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var msg jsonmessage.JSONMessage
		if err := dec.Decode(&msg); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("docker backend: import base image %s: read progress: %w", ref, err)
		}
		if msg.Error != nil {
			return fmt.Errorf("docker backend: import base image %s: %w", ref, msg.Error)
		}
	}
	if _, err := b.cli.ImageInspect(ctx, ref); err != nil {
		return fmt.Errorf("docker backend: base image %s missing after import: %w", ref, err)
	}
	return nil
}

// busyboxApplets asks busybox which applets it has, with their canonical paths ("usr/bin/env", "bin/sh").
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("docker backend: list busybox applets with %s --list-full: %w", busybox, err)
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		p := path.Clean(strings.TrimSpace(sc.Text()))
		if p == "." || strings.HasPrefix(p, "/") || strings.HasPrefix(p, "..") {
			continue
		}
		applets = append(applets, p)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("docker backend: %s --list-full listed no applets", busybox)
	}
	return applets, nil
}

// baseRootfs lays out a minimal root filesystem as a tar stream: busybox with a symlink per applet, the files a
// shell and most tools expect, and the mount points the backend uses.
func baseRootfs(busybox []byte, applets []string) ([]byte, error) {
	dirs := map[string]int64{
		"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "usr/local": 0o755,
		"usr/local/bin": 0o755, "etc": 0o755, "root": 0o700, "home": 0o755, "tmp": 0o1777, "var": 0o755,
		"var/tmp": 0o1777, "run": 0o755, "run/aetherium": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755,
		".aetherium": 0o755, ".aetherium/bin": 0o755,
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
		// The engine bind-mounts its own /etc/hostname over this; the file is there for images run elsewhere.
		"etc/hostname": "aetherium\n",
	}
	links := make(map[string]bool)
	for _, a := range applets {
		if a == "bin/busybox" {
			continue
		}
		links[a] = true
		for d := path.Dir(a); d != "."; d = path.Dir(d) {
			if _, ok := dirs[d]; !ok {
				dirs[d] = 0o755
			}
		}
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(name string, typ byte, mode int64) *tar.Header {
		return &tar.Header{Name: name, Typeflag: typ, Mode: mode, ModTime: baseModTime, Uname: "root", Gname: "root",
			Format: tar.FormatPAX}
	}
	for _, d := range sortedKeys(dirs) {
		if err := tw.WriteHeader(hdr(d+"/", tar.TypeDir, dirs[d])); err != nil {
			return nil, err
		}
	}
	h := hdr("bin/busybox", tar.TypeReg, 0o755)
	h.Size = int64(len(busybox))
	if err := tw.WriteHeader(h); err != nil {
		return nil, err
	}
	if _, err := tw.Write(busybox); err != nil {
		return nil, err
	}
	for _, name := range sortedKeys(files) {
		h := hdr(name, tar.TypeReg, 0o644)
		h.Size = int64(len(files[name]))
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, files[name]); err != nil {
			return nil, err
		}
	}
	for _, name := range sortedKeys(links) {
		h := hdr(name, tar.TypeSymlink, 0o777)
		h.Linkname = "/bin/busybox"
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
