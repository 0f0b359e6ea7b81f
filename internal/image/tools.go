//go:build linux

package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/tools"
)

// toolsRecipe changes whenever installing tools into templates changes, so that old inputs hashes stop matching.
const toolsRecipe = 1

// MissingTools returns the requests this template does not satisfy (see tools.Catalog.Missing): what must be
// installed into a VM created from it.
func (m Manifest) MissingTools(c *tools.Catalog, reqs []tools.Request) []tools.Request {
	return c.Missing(m.Tools, reqs)
}

// resolveTools parses and resolves a build's tools; nil when it has none.
func resolveTools(ctx context.Context, opts BuildOptions, progress io.Writer) ([]tools.Resolved, error) {
	if len(opts.Tools) == 0 {
		return nil, nil
	}
	if opts.ToolInstaller == nil {
		return nil, errors.New("image build: tools were requested but the build has no tool installer")
	}
	reqs, err := opts.ToolInstaller.Catalog().Parse(opts.Tools, nil)
	if err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("image build: installing tools into a template needs root (it chroots into the staging directory): run it as root")
	}
	rs, err := opts.ToolInstaller.Resolve(ctx, reqs, progressFunc(progress))
	if err != nil {
		return nil, fmt.Errorf("image build: %w", err)
	}
	return rs, nil
}

// toolsDescribe is the tools' part of the inputs hash ("" without tools, so that templates without tools keep
// their hashes).
func toolsDescribe(rs []tools.Resolved) string {
	if len(rs) == 0 {
		return ""
	}
	lines := make([]string, 0, len(rs)+1)
	lines = append(lines, fmt.Sprintf("tools-recipe %d", toolsRecipe))
	for _, r := range rs {
		lines = append(lines, r.Key())
	}
	return strings.Join(lines, "\n") + "\n"
}

// debianToolPackages are the packages of a build's debian tools, which a Debian build installs with debootstrap.
func debianToolPackages(rs []tools.Resolved) []string {
	var out []string
	for _, r := range rs {
		if r.Kind == tools.KindDebian {
			out = append(out, r.Packages...)
		}
	}
	return out
}

// installTools installs the resolved tools into the filled staging directory through a chroot, verifies them and
// returns name -> exact version; st is updated to the tree's new size and packages.
func installTools(ctx context.Context, inst *tools.Installer, staging string, rs []tools.Resolved, st *filled, progress io.Writer) (map[string]string, error) {
	start := time.Now()
	ct, err := openChroot(staging)
	if err != nil {
		return nil, fmt.Errorf("image build: tools: %w", err)
	}
	done, ierr := inst.InstallResolved(ctx, ct, rs, progressFunc(progress))
	if cerr := ct.Close(); cerr != nil {
		ierr = errors.Join(ierr, fmt.Errorf("image build: tools: %w", cerr))
	}
	if ierr != nil {
		return nil, fmt.Errorf("image build: tools: %w", ierr)
	}
	versions := make(map[string]string, len(done))
	for _, d := range done {
		versions[d.Name] = d.Version
	}
	// The tree grew: measure it again for the image size, and record the packages dpkg installed.
	entries, bytes, err := measureTree(staging)
	if err != nil {
		return nil, fmt.Errorf("image build: measure the tree: %w", err)
	}
	st.Entries, st.Bytes = entries, bytes
	if root, err := os.OpenRoot(staging); err == nil {
		if _, serr := root.Stat("var/lib/dpkg/status"); serr == nil {
			if pkgs, perr := installedPackages(root); perr == nil {
				st.Packages = pkgs
			}
		}
		root.Close()
	}
	names := make([]string, 0, len(versions))
	for n, v := range versions {
		names = append(names, n+" "+v)
	}
	sort.Strings(names)
	fmt.Fprintf(progress, "tools installed and verified in %s: %s\n", time.Since(start).Round(time.Second), strings.Join(names, ", "))
	return versions, nil
}

func measureTree(dir string) (entries int, size int64, err error) {
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		entries++
		if e.Type().IsRegular() {
			fi, err := e.Info()
			if err != nil {
				return err
			}
			size += fi.Size()
		}
		return nil
	})
	return entries, size, err
}

func progressFunc(w io.Writer) func(string) {
	return func(line string) { fmt.Fprintln(w, "tools: "+line) }
}

// chrootTarget is a template's staging directory as a tools.Target: commands run chrooted into it in their own pid
// and mount namespaces (with their own /proc), with a read-only /sys, a /dev of a few devices and the host's
// resolv.conf copied in (for tools that fetch something while installing) until Close, which unmounts them and
// removes the copy, so that nothing of the host ends up in the template.
type chrootTarget struct {
	dir         string
	root        *os.Root
	addedResolv bool
}

// openChroot mounts what commands in dir need.
func openChroot(dir string) (_ *chrootTarget, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("installing tools into a template needs root (it chroots into the staging directory)")
	}
	dir, err = filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	c := &chrootTarget{dir: dir, root: root}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	// No host /proc (each command gets its own, of its own pid namespace: see Run) and no host /dev (a tmpfs with
	// the few devices package scripts use): what runs in the staging tree comes from an image or a registry, and the
	// host's process roots or disks must not be a path away.
	for _, m := range []struct {
		name, fstype, source string
		flags                uintptr
	}{
		{"proc", "", "", 0},
		{"sys", "sysfs", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RDONLY},
		{"dev", "tmpfs", "aetherium-dev", unix.MS_NOSUID | unix.MS_NOEXEC},
	} {
		// A link planted at the mount point would redirect the mount onto the host: only a real directory will do.
		fi, err := root.Lstat(m.name)
		if errors.Is(err, fs.ErrNotExist) {
			if err := root.Mkdir(m.name, 0o755); err != nil {
				return nil, fmt.Errorf("create /%s: %w", m.name, err)
			}
		} else if err != nil {
			return nil, err
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("/%s in %s is not a directory (a %s)", m.name, dir, fi.Mode().Type())
		}
		if m.fstype == "" {
			continue // only the directory: mounted per command
		}
		target := filepath.Join(dir, m.name)
		data := ""
		if m.fstype == "tmpfs" {
			data = "mode=0755"
		}
		if err := unix.Mount(m.source, target, m.fstype, m.flags, data); err != nil {
			return nil, fmt.Errorf("mount %s at %s: %w", m.fstype, target, err)
		}
	}
	if err := makeDevices(filepath.Join(dir, "dev")); err != nil {
		return nil, err
	}
	if _, err := root.Lstat("etc/resolv.conf"); errors.Is(err, fs.ErrNotExist) {
		if b, rerr := os.ReadFile("/etc/resolv.conf"); rerr == nil {
			if _, serr := root.Stat("etc"); serr == nil {
				if werr := root.WriteFile("etc/resolv.conf", b, 0o644); werr != nil {
					return nil, fmt.Errorf("copy resolv.conf: %w", werr)
				}
				c.addedResolv = true
			}
		}
	}
	return c, nil
}

// Close unmounts everything below the staging directory and removes the copied resolv.conf.
func (c *chrootTarget) Close() error {
	var errs []error
	if err := unmountUnder(c.dir); err != nil {
		errs = append(errs, err)
	}
	if c.addedResolv {
		if err := c.root.Remove("etc/resolv.conf"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove the copied resolv.conf: %w", err))
		}
		c.addedResolv = false
	}
	if err := c.root.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (c *chrootTarget) String() string { return "template staging " + c.dir }

// Run runs argv chrooted into the directory, through its /bin/sh (which looks argv[0] up in env's PATH), in a
// process group that is killed when ctx ends.
func (c *chrootTarget) Run(ctx context.Context, argv []string, env map[string]string) (tools.RunResult, error) {
	if len(argv) == 0 {
		return tools.RunResult{}, errors.New("run: no command")
	}
	// unshare (the host's util-linux) gives the command its own pid and mount namespaces with a /proc of its own
	// pid namespace, then chroots: the tree's programs see none of the host's processes, and everything dies with
	// unshare.
	chroot, err := exec.LookPath("chroot") // in the worker's PATH, not the command's
	if err != nil {
		return tools.RunResult{}, fmt.Errorf("%s: chroot (coreutils) not found: %w", c, err)
	}
	args := []string{"--pid", "--fork", "--kill-child", "--mount-proc=" + filepath.Join(c.dir, "proc"),
		chroot, c.dir, "/bin/sh", "-c", `exec "$@"`, "sh"}
	cmd := exec.CommandContext(ctx, unshareBin, append(args, argv...)...)
	cmd.Dir = "/"
	cmd.Env = make([]string, 0, len(env))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	out := &capped{max: 256 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return tools.RunResult{ExitCode: code, Output: out.buf.Bytes()}, nil
	}
	if err != nil {
		return tools.RunResult{}, fmt.Errorf("%s: run %q: %w", c, argv[0], err)
	}
	return tools.RunResult{Output: out.buf.Bytes()}, nil
}

// WriteFile writes through an os.Root, so that no link in the tree leads outside it, to a temporary name first.
func (c *chrootTarget) WriteFile(ctx context.Context, p string, r io.Reader, mode fs.FileMode) error {
	rel, err := relInRoot(p)
	if err != nil {
		return err
	}
	if err := c.root.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return fmt.Errorf("%s: create %s: %w", c, path.Dir(p), err)
	}
	tmp := path.Join(path.Dir(rel), "."+path.Base(rel)+".tmp-"+fmt.Sprint(time.Now().UnixNano()))
	f, err := c.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%s: write %s: %w", c, p, err)
	}
	_, err = io.Copy(f, &ctxReader{ctx: ctx, r: r})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = c.root.Chmod(tmp, mode)
	}
	if err == nil {
		err = c.root.Rename(tmp, rel)
	}
	if err != nil {
		_ = c.root.Remove(tmp)
		return fmt.Errorf("%s: write %s: %w", c, p, err)
	}
	return nil
}

// ReadFile reads through the os.Root.
func (c *chrootTarget) ReadFile(_ context.Context, p string, limit int64) ([]byte, error) {
	rel, err := relInRoot(p)
	if err != nil {
		return nil, err
	}
	f, err := c.root.Open(rel)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", c, p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: %s is larger than %d bytes", c, p, limit)
	}
	return b, nil
}

// Exists looks at path itself (a link counts, whatever it points to).
func (c *chrootTarget) Exists(_ context.Context, p string) (bool, error) {
	rel, err := relInRoot(p)
	if err != nil {
		return false, err
	}
	if _, err := c.root.Lstat(rel); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("%s: %w", c, err)
	}
	return true, nil
}

func relInRoot(p string) (string, error) {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return "", fmt.Errorf("chroot target: %q is not a clean absolute path", p)
	}
	return strings.TrimPrefix(p, "/"), nil
}

type capped struct {
	buf bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// unshareBin runs chroot commands in new namespaces (util-linux, in every Debian install).
const unshareBin = "/usr/bin/unshare"

// makeDevices fills a chroot's /dev tmpfs with what package scripts and tools use: the memory devices, tty, a
// devpts of its own, shm and the fd links.
func makeDevices(dev string) error {
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		if err := unix.Mknod(filepath.Join(dev, d.name), unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("make /dev/%s: %w", d.name, err)
		}
		// mknod applies the umask: make the mode what it must be.
		if err := os.Chmod(filepath.Join(dev, d.name), 0o666); err != nil {
			return err
		}
	}
	for _, dir := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, dir), 0o755); err != nil {
			return fmt.Errorf("make /dev/%s: %w", dir, err)
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC,
		"newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	for name, target := range map[string]string{"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return fmt.Errorf("make /dev/%s: %w", name, err)
		}
	}
	return nil
}
