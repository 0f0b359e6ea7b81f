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
	"slices"
	"sort"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"
	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/tools"
)

// layoutVersion changes whenever Build lays a template out differently, so that old inputs hashes stop matching.
// 2: /etc/hosts is written when the source has none or an empty one (Docker exports have an empty one).
const layoutVersion = 2

// LabelBuild marks the short-lived containers Build creates, so that leftovers of a killed build can be found.
// Its value is the template store's directory, which tells whose build left one behind.
const LabelBuild = "aetherium.image-build"

// guestHostname is written to /etc/hostname; the agent sets the real one from the kernel command line.
const guestHostname = "aetherium"

// guestHosts is written to /etc/hosts when the source has none: without it "localhost" does not resolve in a guest
// (no systemd, no nss-myhostname).
const guestHosts = "127.0.0.1\tlocalhost\n127.0.1.1\t" + guestHostname + "\n" +
	"::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"

// fsLabel is the ext4 volume label of every template.
const fsLabel = "aetherium-root"

// BuildOptions say what to build. Exactly one of FromDocker and FromDebian is required.
type BuildOptions struct {
	// FromDocker is a local Docker image reference (it is not pulled).
	FromDocker string
	// FromDebian is a Debian suite (e.g. "bookworm", DefaultDebianSuite) to bootstrap with debootstrap (needs root).
	FromDebian string
	// Mirror is the Debian mirror for FromDebian; default DefaultDebianMirror.
	Mirror string
	// Packages are installed on top of Debian's minbase variant and DefaultDebianPackages (FromDebian only).
	Packages []string
	// Name of the template.
	Name string
	// Version of the template; default "h" followed by 12 hex digits of the inputs hash, so that the same inputs
	// get the same version.
	Version string
	// SizeMB is the image size; default content size * 1.3 + 64 MiB.
	SizeMB int64
	// AgentBinary is the static aetherium-agent to install as /sbin/aetherium-agent. Required.
	AgentBinary string
	// Tools are installed into the template once its source is laid out ("name" or "name@version", as
	// tools.Catalog.Parse takes them), verified in a chroot and recorded in the manifest's Tools; their resolved
	// versions and checksums are inputs, so an unchanged request reuses the template and a new release under a
	// requested major builds a new one. A Debian build installs debian tools with debootstrap. Needs
	// ToolInstaller, and root.
	Tools []string
	// ToolInstaller resolves, fetches and installs Tools.
	ToolInstaller *tools.Installer
	// Rebuild builds a new version even when one was built from identical inputs. Debian moves on under the same
	// suite name, so this is how to pick up its updates; the default version then gets a time suffix.
	Rebuild bool
	// Progress, when set, receives one line per step (exporting or debootstrap's lines, making ext4, verifying).
	Progress io.Writer
}

// Builder builds templates into a Store from images of a Docker engine or from a Debian mirror.
type Builder struct {
	store *Store
	cli   dockerclient.APIClient
	log   *slog.Logger
	// debootstrap is the debootstrap program; "" means look it up. Tests point it at a missing file to prove that a
	// build did not run it.
	debootstrap string
}

// NewBuilder returns a builder for store using the engine client cli (created with API version negotiation, as
// the engine here is older than the client). cli may be nil when only Debian builds are made. A nil logger
// discards.
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

// source is where a template's files come from. Everything but filling the staging directory is shared, so that
// templates of every source are laid out, checked and published the same way.
type source interface {
	// describe is the source's part of the inputs hash: one "key value" line per input that decides its files.
	describe() string
	// label is the manifest's Source, e.g. "docker:alpine:3.20" or "debian:bookworm".
	label() string
	// preflight says, before anything is written, why a cold build cannot run here.
	preflight(ctx context.Context) error
	// fill writes the root filesystem into staging, an empty directory, and says what it wrote.
	fill(ctx context.Context, staging string, progress io.Writer) (filled, error)
}

// filled is what a source reports about the files it wrote.
type filled struct {
	SourceID string    // manifest's SourceID
	Entries  int       // files, directories, links and nodes written
	Bytes    int64     // bytes of regular file content
	Packages []Package // Debian packages installed, when the source knows them
}

// Build makes a template, or returns the existing version built from identical inputs (for Docker: the image ID;
// for Debian: suite, mirror, variant and packages; for both: the agent's bytes, the requested size and this
// package's layout). reused says which. Invalid options are refused before anything is written.
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
	if opts.SizeMB < 0 {
		return Manifest{}, false, fmt.Errorf("image build: size %d MiB is negative", opts.SizeMB)
	}
	switch {
	case opts.FromDocker != "" && opts.FromDebian != "":
		return Manifest{}, false, errors.New("image build: give exactly one source, a Docker image or a Debian suite, not both")
	case opts.FromDocker == "" && opts.FromDebian == "":
		return Manifest{}, false, errors.New("image build: no source given: name a local Docker image or a Debian suite (e.g. " + DefaultDebianSuite + ")")
	}
	toolset, err := resolveTools(ctx, opts, progress)
	if err != nil {
		return Manifest{}, false, err
	}
	var src source
	switch {
	case opts.FromDebian != "":
		dopts := opts
		dopts.Packages = append(slices.Clone(opts.Packages), debianToolPackages(toolset)...)
		if src, err = newDebianSource(dopts, b.debootstrap); err != nil {
			return Manifest{}, false, err
		}
	default:
		if opts.Mirror != "" || len(opts.Packages) != 0 {
			return Manifest{}, false, errors.New("image build: a mirror and packages apply only to Debian builds, not to Docker images")
		}
	}
	agent, err := os.ReadFile(opts.AgentBinary)
	if err != nil {
		return Manifest{}, false, fmt.Errorf("image build: read the agent binary: %w", err)
	}
	agentSum := sha256.Sum256(agent)
	if src == nil {
		if src, err = b.dockerSource(ctx, opts.FromDocker); err != nil {
			return Manifest{}, false, err
		}
	}

	h := sha256.New()
	fmt.Fprintf(h, "aetherium-template-layout %d\n%sagent %x\nsize-mb %d\nhostname %s\n",
		layoutVersion, src.describe(), agentSum, opts.SizeMB, guestHostname)
	io.WriteString(h, toolsDescribe(toolset))
	inputs := hex.EncodeToString(h.Sum(nil))
	version := opts.Version
	if version == "" {
		version = "h" + inputs[:12]
	}

	existing, err := b.store.versions(opts.Name)
	if err != nil {
		return Manifest{}, false, err
	}
	taken := false
	for _, e := range existing {
		if !opts.Rebuild && e.InputsHash == inputs && (opts.Version == "" || e.Version == opts.Version) {
			fmt.Fprintf(progress, "reusing %s: built from identical inputs\n", e.Ref())
			return e, true, nil
		}
		if e.Version == version {
			taken = true
			if opts.Version != "" || e.InputsHash != inputs {
				return Manifest{}, false, fmt.Errorf("image build: %s@%s already exists (remove it or pick another version)", opts.Name, version)
			}
		}
	}
	if taken {
		// Rebuild of identical inputs under the default version: the new one must not replace the old one, which VMs
		// may be using; the newest version is the one a plain build reuses from now on.
		version += "-" + time.Now().UTC().Format("20060102150405")
	}

	if err := src.preflight(ctx); err != nil {
		return Manifest{}, false, err
	}
	b.sweepStale(progress)
	work, err := b.store.newWork("build-")
	if err != nil {
		return Manifest{}, false, fmt.Errorf("image build: staging directory: %w", err)
	}
	defer func() {
		if rerr := work.remove(); rerr != nil {
			// A published template is fine whatever happened here, and the next build's sweep retries the removal
			// (the lock file stays); a failed build says both what failed and what it left.
			b.log.Error("image build: remove staging directory", "dir", work.dir, "err", rerr)
			if err != nil {
				err = errors.Join(err, fmt.Errorf("image build: clean up: %w", rerr))
			}
		}
	}()
	staging := filepath.Join(work.dir, "rootfs")
	out := filepath.Join(work.dir, "out")
	for _, d := range []string{staging, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return Manifest{}, false, fmt.Errorf("image build: %w", err)
		}
	}

	st, err := src.fill(ctx, staging, progress)
	if err != nil {
		return Manifest{}, false, err
	}
	var toolVersions map[string]string
	if len(toolset) > 0 {
		if toolVersions, err = installTools(ctx, opts.ToolInstaller, staging, toolset, &st, progress); err != nil {
			return Manifest{}, false, err
		}
	}
	m, err = b.finish(ctx, finishArgs{
		staging: staging, out: out, agent: agent, agentBinary: opts.AgentBinary, sizeMB: opts.SizeMB, filled: st,
		manifest: Manifest{Name: opts.Name, Version: version, Source: src.label(), InputsHash: inputs, Tools: toolVersions},
	}, progress)
	if err != nil {
		return Manifest{}, false, err
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

type finishArgs struct {
	staging, out string
	agent        []byte
	agentBinary  string
	sizeMB       int64
	filled       filled
	manifest     Manifest // name, version, source and inputs hash; the rest is filled in here
}

// finish is the tail every source shares: make the staging directory a guest (agent as init, mount points,
// hostname, hosts), make and verify the ext4 image in out and write its manifest there.
func (b *Builder) finish(ctx context.Context, a finishArgs, progress io.Writer) (Manifest, error) {
	if err := install(a.staging, a.agent); err != nil {
		return Manifest{}, err
	}
	// mkfs.ext4 -d would copy whatever is mounted below staging (a /proc left by a tool) into the template.
	if ms, err := mountsUnder(a.staging); err != nil {
		return Manifest{}, fmt.Errorf("image build: %w", err)
	} else if len(ms) > 0 {
		return Manifest{}, fmt.Errorf("image build: still mounted inside the staging directory: %s", strings.Join(ms, ", "))
	}
	sizeMB := a.sizeMB
	if sizeMB == 0 {
		content := a.filled.Bytes + int64(a.filled.Entries)*4096 + int64(len(a.agent))
		sizeMB = (content*13/10 + 64<<20 + (1 << 20) - 1) >> 20
	}
	if err := checkSpace(a.out, sizeMB<<20); err != nil {
		return Manifest{}, err
	}
	img := filepath.Join(a.out, RootfsFile)
	fmt.Fprintf(progress, "making ext4 (%d MiB)\n", sizeMB)
	if err := run(ctx, "mkfs.ext4", "-F", "-q", "-d", a.staging, "-L", fsLabel, img, fmt.Sprintf("%dM", sizeMB)); err != nil {
		return Manifest{}, fmt.Errorf("image build: make the ext4 image: %w", err)
	}
	fmt.Fprintln(progress, "verifying")
	if err := run(ctx, "e2fsck", "-fn", img); err != nil {
		return Manifest{}, fmt.Errorf("image build: verify the ext4 image: %w", err)
	}
	sum, size, err := fileSHA256(img)
	if err != nil {
		return Manifest{}, err
	}
	if err := os.Chmod(img, 0o444); err != nil {
		return Manifest{}, fmt.Errorf("image build: %w", err)
	}
	agentSum := sha256.Sum256(a.agent)
	m := a.manifest
	m.CreatedAt = time.Now().UTC()
	m.SourceID = a.filled.SourceID
	m.Size, m.SHA256, m.Files = size, sum, a.filled.Entries
	m.AgentVersion, m.AgentSHA256 = agentVersion(ctx, a.agentBinary), hex.EncodeToString(agentSum[:])
	m.Boot = DefaultBoot
	m.Packages = a.filled.Packages
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, fmt.Errorf("image build: encode manifest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(a.out, ManifestFile), append(mb, '\n'), 0o444); err != nil {
		return Manifest{}, fmt.Errorf("image build: write manifest: %w", err)
	}
	return m, nil
}

// dockerSource is a local image of the engine, pinned by its ID when the build starts.
type dockerSource struct {
	b       *Builder
	ref, id string
}

func (b *Builder) dockerSource(ctx context.Context, ref string) (*dockerSource, error) {
	if b.cli == nil {
		return nil, errors.New("image build: no Docker engine client (the builder was made without one)")
	}
	inspect, err := b.cli.ImageInspect(ctx, ref)
	if cerrdefs.IsNotFound(err) {
		return nil, fmt.Errorf("image build: Docker image %q is not present on the engine (docker pull or docker build it first): %w", ref, err)
	} else if err != nil {
		return nil, fmt.Errorf("image build: inspect Docker image %q: %w", ref, err)
	}
	return &dockerSource{b: b, ref: ref, id: inspect.ID}, nil
}

// describe is the image ID: a tag may move, the ID names the exact filesystem.
func (d *dockerSource) describe() string                { return "source-id " + d.id + "\n" }
func (d *dockerSource) label() string                   { return "docker:" + d.ref }
func (d *dockerSource) preflight(context.Context) error { return nil }

func (d *dockerSource) fill(ctx context.Context, staging string, progress io.Writer) (filled, error) {
	fmt.Fprintf(progress, "exporting %s (%s)\n", d.ref, shortID(d.id))
	st, err := d.b.export(ctx, d.id, staging, progress)
	if err != nil {
		return filled{}, err
	}
	return filled{SourceID: d.id, Entries: st.Entries, Bytes: st.Bytes}, nil
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
	// An image's own non-empty /etc/hosts is kept; Docker exports carry an empty one (the engine mounts its own
	// there at run time) and debootstrap writes none.
	if fi, err := root.Lstat("etc/hosts"); errors.Is(err, fs.ErrNotExist) || (err == nil && fi.Mode().IsRegular() && fi.Size() == 0) {
		_ = root.Remove("etc/hosts")
		if err := root.WriteFile("etc/hosts", []byte(guestHosts), 0o644); err != nil {
			return fmt.Errorf("image build: write /etc/hosts: %w", err)
		}
		if err := root.Chmod("etc/hosts", 0o644); err != nil {
			return fmt.Errorf("image build: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("image build: /etc/hosts: %w", err)
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

// workDir is a build's private directory in the store's .tmp. Its lock file (<dir>.lock, beside it) is held for
// as long as the build runs, so that a later build can tell the leftovers of a killed process (lock free) from a
// build in progress (lock held), whatever process namespace either runs in.
type workDir struct {
	dir  string
	lock *os.File
}

// newWork creates a work directory under .tmp with its lock held. The lock file exists, locked, before the
// directory does, so that a sweep never sees a directory whose owner has not locked it yet.
func (s *Store) newWork(prefix string) (*workDir, error) {
	tmp := filepath.Join(s.dir, tmpDir)
	// mountinfo names mount points by their real path: keep the real one, so that unmounting finds them.
	real, err := filepath.EvalSymlinks(tmp)
	if err != nil {
		return nil, err
	}
	for range 10 {
		f, err := os.CreateTemp(real, prefix+"*.lock")
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		// A sweep may have taken and removed the lock file between its creation and our flock: then try another.
		if !sameFile(f, f.Name()) {
			f.Close()
			continue
		}
		dir := strings.TrimSuffix(f.Name(), ".lock")
		if err := os.Mkdir(dir, 0o700); err != nil {
			_ = os.Remove(f.Name())
			f.Close()
			return nil, err
		}
		return &workDir{dir: dir, lock: f}, nil
	}
	return nil, errors.New("could not lock a work directory (something keeps removing them)")
}

// remove unmounts anything left below the work directory, removes it without following symlinks or crossing into
// other filesystems, and only then drops the lock file. When that fails the lock file stays, so that a later
// build's sweep tries again.
func (w *workDir) remove() error {
	defer w.lock.Close()
	if err := clearDir(w.dir); err != nil {
		return err
	}
	if err := os.Remove(w.lock.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", w.lock.Name(), err)
	}
	return nil
}

// clearDir unmounts everything below dir and removes it.
func clearDir(dir string) error {
	if err := unmountUnder(dir); err != nil {
		return err
	}
	if err := removeTree(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// sweepStale removes the work directories of builds whose process died (killed, or the machine lost power) and
// so could not clean up: their lock is free. Directories without a lock file are left alone.
func (b *Builder) sweepStale(progress io.Writer) {
	tmp, err := filepath.EvalSymlinks(filepath.Join(b.store.dir, tmpDir))
	if err != nil {
		return
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") || !e.Type().IsRegular() {
			continue
		}
		lockPath := filepath.Join(tmp, e.Name())
		f, err := os.OpenFile(lockPath, os.O_RDWR|unix.O_NOFOLLOW, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil || !sameFile(f, lockPath) {
			f.Close() // held: a build in progress (or just swept by someone else)
			continue
		}
		dir := strings.TrimSuffix(lockPath, ".lock")
		if err := clearDir(dir); err != nil {
			b.log.Error("image build: remove the staging directory of a killed build", "dir", dir, "err", err)
			f.Close()
			continue
		}
		_ = os.Remove(lockPath)
		f.Close()
		fmt.Fprintf(progress, "removed %s, left by a killed build\n", dir)
		b.log.Info("image build: removed the staging directory of a killed build", "dir", dir)
	}
}

// sameFile says whether the open file f is still the file at path (not removed, not replaced).
func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Lstat(path)
	return err == nil && os.SameFile(a, b)
}

// mountsUnder lists the mount points at or below dir (a real path, no symlinks) in this mount namespace, from
// /proc/self/mountinfo, deepest first.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	dir = filepath.Clean(dir)
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	// Deepest first; a point mounted twice appears twice and is unmounted twice.
	sort.SliceStable(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space, \011, \012, \134).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// unmountUnder unmounts everything at or below dir, deepest first; a busy mount is detached. debootstrap mounts
// /proc and /sys (and, in containers, a /dev of bind mounts) inside its target and unmounts them only when it
// ends normally.
func unmountUnder(dir string) error {
	for range 8 {
		ms, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(ms) == 0 {
			return nil
		}
		for _, mp := range ms {
			// NOFOLLOW: a symlink planted at a mount point's name must not redirect the unmount elsewhere.
			if err := unix.Unmount(mp, unix.UMOUNT_NOFOLLOW); err != nil {
				_ = unix.Unmount(mp, unix.UMOUNT_NOFOLLOW|unix.MNT_DETACH)
			}
		}
	}
	ms, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	if len(ms) > 0 {
		return fmt.Errorf("cannot unmount %s (busy or not permitted); unmount them by hand (umount -R) and remove %s", strings.Join(ms, ", "), dir)
	}
	return nil
}

// removeTree removes path and everything below it. Unlike os.RemoveAll it never descends into another filesystem
// or a mount point (a bind mount of the host's /dev below a chroot must not be emptied), and, like it, never
// follows symlinks: every step is relative to a directory descriptor opened with O_NOFOLLOW.
func removeTree(path string) error {
	path = filepath.Clean(path)
	parent, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(parent)
	var st unix.Statx_t
	if err := unix.Statx(parent, filepath.Base(path), unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &st); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return err
	}
	return removeAt(parent, filepath.Base(path), st.Dev_major, st.Dev_minor, path)
}

func removeAt(dirfd int, name string, major, minor uint32, shown string) error {
	var st unix.Statx_t
	if err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &st); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("%s: %w", shown, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(dirfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%s: %w", shown, err)
		}
		return nil
	}
	if st.Dev_major != major || st.Dev_minor != minor ||
		(st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && st.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0) {
		return fmt.Errorf("%s is a mount point: not removing what is mounted there", shown)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", shown, err)
	}
	d := os.NewFile(uintptr(fd), shown)
	names, err := d.Readdirnames(-1)
	if err == nil {
		for _, n := range names {
			if err = removeAt(int(d.Fd()), n, major, minor, shown+"/"+n); err != nil {
				break
			}
		}
	}
	d.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%s: %w", shown, err)
	}
	return nil
}
