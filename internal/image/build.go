//go:build linux

package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"
	"golang.org/x/sys/unix"
)

// layoutVersion changes whenever Build lays a template out differently, so that old inputs hashes stop matching.
const layoutVersion = 1

// LabelBuild marks the short-lived containers Build creates, so that leftovers of a killed build can be found.
// Its value is the template store's directory, which tells whose build left one behind.
const LabelBuild = "aetherium.image-build"

// guestHostname is written to /etc/hostname; the agent sets the real one from the kernel command line.
const guestHostname = "aetherium"

// fsLabel is the ext4 volume label of every template.
const fsLabel = "aetherium-root"

// BuildOptions say what to build.
type BuildOptions struct {
	// FromDocker is a local Docker image reference (it is not pulled).
	FromDocker string
	// Name of the template.
	Name string
	// Version of the template; default "h" followed by 12 hex digits of the inputs hash, so that the same inputs
	// get the same version.
	Version string
	// SizeMB is the image size; default content size * 1.3 + 64 MiB.
	SizeMB int64
	// AgentBinary is the static aetherium-agent to install as /sbin/aetherium-agent. Required.
	AgentBinary string
	// Progress, when set, receives one line per step (exporting, unpacking, making ext4, verifying).
	Progress io.Writer
}

// Builder builds templates into a Store from images of a Docker engine.
type Builder struct {
	store *Store
	cli   dockerclient.APIClient
	log   *slog.Logger
}

// NewBuilder returns a builder for store using the engine client cli (created with API version negotiation, as
// the engine here is older than the client). A nil logger discards.
func NewBuilder(store *Store, cli dockerclient.APIClient, log *slog.Logger) *Builder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Builder{store: store, cli: cli, log: log}
}

// NewDockerClient connects to the engine named by the environment (DOCKER_HOST, default the local socket).
func NewDockerClient() (*dockerclient.Client, error) {
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	return cli, nil
}

// Build makes a template, or returns the existing version built from identical inputs (the Docker image ID, the
// agent's bytes, the requested size and this package's layout). reused says which.
func (b *Builder) Build(ctx context.Context, opts BuildOptions) (m Manifest, reused bool, err error) {
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	if err := validName("name", opts.Name); err != nil {
		return Manifest{}, false, err
	}
	if opts.Version != "" {
		if err := validName("version", opts.Version); err != nil {
			return Manifest{}, false, err
		}
	}
	if opts.FromDocker == "" {
		return Manifest{}, false, errors.New("image build: no source image given")
	}
	if opts.SizeMB < 0 {
		return Manifest{}, false, fmt.Errorf("image build: size %d MiB is negative", opts.SizeMB)
	}
	agent, err := os.ReadFile(opts.AgentBinary)
	if err != nil {
		return Manifest{}, false, fmt.Errorf("image build: read the agent binary: %w", err)
	}
	agentSum := sha256.Sum256(agent)

	inspect, err := b.cli.ImageInspect(ctx, opts.FromDocker)
	if cerrdefs.IsNotFound(err) {
		return Manifest{}, false, fmt.Errorf("image build: Docker image %q is not present on the engine (docker pull or docker build it first): %w", opts.FromDocker, err)
	} else if err != nil {
		return Manifest{}, false, fmt.Errorf("image build: inspect Docker image %q: %w", opts.FromDocker, err)
	}

	h := sha256.New()
	fmt.Fprintf(h, "aetherium-template-layout %d\nsource-id %s\nagent %x\nsize-mb %d\nhostname %s\n",
		layoutVersion, inspect.ID, agentSum, opts.SizeMB, guestHostname)
	inputs := hex.EncodeToString(h.Sum(nil))
	version := opts.Version
	if version == "" {
		version = "h" + inputs[:12]
	}

	existing, err := b.store.versions(opts.Name)
	if err != nil {
		return Manifest{}, false, err
	}
	for _, e := range existing {
		if e.InputsHash == inputs && (opts.Version == "" || e.Version == opts.Version) {
			fmt.Fprintf(progress, "reusing %s: built from identical inputs\n", e.Ref())
			return e, true, nil
		}
		if e.Version == version {
			return Manifest{}, false, fmt.Errorf("image build: %s@%s already exists with different inputs (remove it or pick another version)", opts.Name, version)
		}
	}

	work, err := os.MkdirTemp(filepath.Join(b.store.dir, tmpDir), "build-")
	if err != nil {
		return Manifest{}, false, fmt.Errorf("image build: staging directory: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(work); rerr != nil {
			b.log.Warn("image build: remove staging directory", "dir", work, "err", rerr)
		}
	}()
	staging := filepath.Join(work, "rootfs")
	out := filepath.Join(work, "out")
	for _, d := range []string{staging, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return Manifest{}, false, fmt.Errorf("image build: %w", err)
		}
	}

	fmt.Fprintf(progress, "exporting %s (%s)\n", opts.FromDocker, shortID(inspect.ID))
	st, err := b.export(ctx, inspect.ID, staging, progress)
	if err != nil {
		return Manifest{}, false, err
	}
	if err := install(staging, agent); err != nil {
		return Manifest{}, false, err
	}

	sizeMB := opts.SizeMB
	if sizeMB == 0 {
		content := st.Bytes + int64(st.Entries)*4096 + int64(len(agent))
		sizeMB = (content*13/10 + 64<<20 + (1 << 20) - 1) >> 20
	}
	if err := checkSpace(out, sizeMB<<20); err != nil {
		return Manifest{}, false, err
	}
	img := filepath.Join(out, RootfsFile)
	fmt.Fprintf(progress, "making ext4 (%d MiB)\n", sizeMB)
	if err := run(ctx, "mkfs.ext4", "-F", "-q", "-d", staging, "-L", fsLabel, img, fmt.Sprintf("%dM", sizeMB)); err != nil {
		return Manifest{}, false, fmt.Errorf("image build: make the ext4 image: %w", err)
	}
	fmt.Fprintln(progress, "verifying")
	if err := run(ctx, "e2fsck", "-fn", img); err != nil {
		return Manifest{}, false, fmt.Errorf("image build: verify the ext4 image: %w", err)
	}
	sum, size, err := fileSHA256(img)
	if err != nil {
		return Manifest{}, false, err
	}
	if err := os.Chmod(img, 0o444); err != nil {
		return Manifest{}, false, fmt.Errorf("image build: %w", err)
	}

	m = Manifest{
		Name: opts.Name, Version: version, CreatedAt: time.Now().UTC(),
		Source: "docker:" + opts.FromDocker, SourceID: inspect.ID,
		Size: size, SHA256: sum, Files: st.Entries,
		AgentVersion: agentVersion(ctx, opts.AgentBinary), AgentSHA256: hex.EncodeToString(agentSum[:]),
		InputsHash: inputs, Boot: DefaultBoot,
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, false, fmt.Errorf("image build: encode manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(out, ManifestFile), append(mb, '\n'), 0o444); err != nil {
		return Manifest{}, false, fmt.Errorf("image build: write manifest: %w", err)
	}

	// Publishing is one rename of a complete directory, so readers see all of a version or none of it.
	if err := os.MkdirAll(filepath.Join(b.store.dir, opts.Name), 0o755); err != nil {
		return Manifest{}, false, fmt.Errorf("image build: %w", err)
	}
	final := filepath.Join(b.store.dir, opts.Name, version)
	if err := os.Rename(out, final); err != nil {
		// A concurrent build of the same inputs got there first: use its result.
		if errors.Is(err, fs.ErrExist) || errors.Is(err, unix.ENOTEMPTY) {
			if other, gerr := b.store.read(opts.Name, version); gerr == nil && other.InputsHash == inputs {
				fmt.Fprintf(progress, "reusing %s: a concurrent build finished first\n", other.Ref())
				return other, true, nil
			}
			return Manifest{}, false, fmt.Errorf("image build: %s@%s appeared meanwhile with different inputs", opts.Name, version)
		}
		return Manifest{}, false, fmt.Errorf("image build: publish %s@%s: %w", opts.Name, version, err)
	}
	m.Path = filepath.Join(final, RootfsFile)
	fmt.Fprintln(progress, m.Path)
	b.log.Info("built template", "ref", m.Ref(), "source", m.Source, "size", m.Size, "files", m.Files)
	return m, false, nil
}

// export creates (without starting) a container of the image, streams its filesystem into staging and removes
// the container whatever happens.
func (b *Builder) export(ctx context.Context, imageID, staging string, progress io.Writer) (UnpackStats, error) {
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	created, err := b.cli.ContainerCreate(ctx, &container.Config{
		Image: imageID,
		// Never run; the engine still wants a command when the image has none.
		Cmd:    []string{"/aetherium-export-only"},
		Labels: map[string]string{LabelBuild: b.store.Dir()},
	}, nil, nil, nil, "aetherium-imgbuild-"+hex.EncodeToString(suffix[:]))
	if err != nil {
		return UnpackStats{}, fmt.Errorf("image build: create export container: %w", err)
	}
	defer func() {
		// A fresh context: the build's may be what ended it, and the container must go regardless.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := b.cli.ContainerRemove(rctx, created.ID, container.RemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			b.log.Warn("image build: remove export container", "id", created.ID, "err", err)
		}
	}()
	rc, err := b.cli.ContainerExport(ctx, created.ID)
	if err != nil {
		return UnpackStats{}, fmt.Errorf("image build: export container filesystem: %w", err)
	}
	defer rc.Close()
	st, err := Unpack(rc, staging)
	if err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return st, fmt.Errorf("image build: no space left unpacking into %s: %w", staging, err)
		}
		return st, fmt.Errorf("image build: %w", err)
	}
	fmt.Fprintf(progress, "unpacking %d files (%d MiB)\n", st.Entries, st.Bytes>>20)
	return st, nil
}

// install adds what makes the filesystem a guest: the agent as init, the mount points it uses, a hostname.
func install(staging string, agent []byte) error {
	root, err := os.OpenRoot(staging)
	if err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	defer root.Close()
	for _, d := range []struct {
		name string
		mode fs.FileMode
	}{{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"tmp", 0o777 | fs.ModeSticky}, {"run", 0o755},
		{"root", 0o700}, {"sbin", 0o755}, {"etc", 0o755}} {
		if _, err := root.Stat(d.name); errors.Is(err, fs.ErrNotExist) {
			if err := root.Mkdir(d.name, 0o755); err != nil {
				return fmt.Errorf("image build: create /%s: %w", d.name, err)
			}
			if err := root.Chmod(d.name, d.mode); err != nil {
				return fmt.Errorf("image build: chmod /%s: %w", d.name, err)
			}
		} else if err != nil {
			return fmt.Errorf("image build: /%s: %w", d.name, err)
		}
	}
	agentPath := strings.TrimPrefix(GuestInit, "/")
	_ = root.Remove(agentPath)
	if err := root.WriteFile(agentPath, agent, 0o755); err != nil {
		return fmt.Errorf("image build: install the agent at %s: %w", GuestInit, err)
	}
	if err := root.Chmod(agentPath, 0o755); err != nil {
		return fmt.Errorf("image build: %w", err)
	}
	_ = root.Remove("etc/hostname")
	if err := root.WriteFile("etc/hostname", []byte(guestHostname+"\n"), 0o644); err != nil {
		return fmt.Errorf("image build: write /etc/hostname: %w", err)
	}
	return nil
}

// checkSpace fails early, with a clear message, when the store's filesystem cannot hold the image.
func checkSpace(dir string, need int64) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return fmt.Errorf("image build: statfs %s: %w", dir, err)
	}
	if avail := int64(sfs.Bavail) * int64(sfs.Bsize); avail < need {
		return fmt.Errorf("image build: no space for a %d MiB image in %s: %d MiB available", need>>20, dir, avail>>20)
	}
	return nil
}

// run runs a tool and puts its output in the error when it fails.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("%s not found (install e2fsprogs): %w", name, err)
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func fileSHA256(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, fmt.Errorf("image build: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("image build: hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// agentVersion asks the agent; "unknown" when it cannot say (e.g. built for another architecture).
func agentVersion(ctx context.Context, bin string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "unknown"
	}
	v := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "aetherium-agent"))
	if v == "" {
		return "unknown"
	}
	return v
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
