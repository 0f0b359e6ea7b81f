//go:build linux

package firecracker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// The jailer (Firecracker's docs/jailer.md and src/jailer) canonicalizes --exec-file and --chroot-base-dir, builds
// the jail at <chroot_base>/<exec_file_name>/<id>/root, copies the binary into it, mknods /dev/kvm and
// /dev/net/tun there (failing when they exist) and, with --new-pid-ns, creates <exec_file_name>.pid with
// create_new: a jail can be used once. So every start and restore gets a fresh one (prepareJail), into which the
// kernel and the VM's disk (kept in the VM's directory, outside the jail) are hard-linked.

// Names inside the jail, as the jailed firecracker sees them (relative to its root).
const (
	jailAPISock = "/" + apiSockName
	jailVsock   = "/" + vsockName
	jailDisk    = "/" + diskName
	jailKernel  = "/" + kernelName
	jailLog     = "/" + fcLogFile
)

// resolveJail resolves the firecracker binary and the chroot base as the jailer will, so that the backend's jail
// path is the jailer's (a firecracker reached through a symlink, as a release's firecracker-vX.Y.Z-x86_64 often
// is, gets a jail named after the target).
func (b *Backend) resolveJail() error {
	exe, err := filepath.EvalSymlinks(b.cfg.FirecrackerBin)
	if err != nil {
		return fmt.Errorf("firecracker backend: resolve firecracker binary: %w", err)
	}
	// The jailer refuses an exec file whose name lacks "firecracker" (docs/jailer.md, Jailer Usage).
	if !strings.Contains(filepath.Base(exe), "firecracker") {
		return fmt.Errorf("firecracker backend: the jailer only runs a binary whose name contains \"firecracker\"; %s "+
			"resolves to %s", b.cfg.FirecrackerBin, exe)
	}
	if err := os.MkdirAll(b.cfg.JailerChrootBase, 0o711); err != nil {
		return fmt.Errorf("firecracker backend: create jail base: %w", err)
	}
	base, err := filepath.EvalSymlinks(b.cfg.JailerChrootBase)
	if err != nil {
		return fmt.Errorf("firecracker backend: resolve jail base: %w", err)
	}
	b.execFile, b.chrootBase = exe, base
	return nil
}

// jailDir is the jailer's directory of VM id (its chroot is jailDir/root).
func (b *Backend) jailDir(id string) string {
	return filepath.Join(b.chrootBase, filepath.Base(b.execFile), id)
}

// jailRoot is the root of VM st's jail, where its sockets are.
func jailRoot(st *vmState) string { return filepath.Join(st.ChrootDir, "root") }

// setJailPaths points st's sockets at the jail of the current binary and base (they change when an upgrade
// renames the binary).
func (b *Backend) setJailPaths(st *vmState) {
	st.ChrootDir = b.jailDir(st.ID)
	st.APISock = filepath.Join(jailRoot(st), apiSockName)
	st.VsockUDS = filepath.Join(jailRoot(st), vsockName)
}

// prepareJail makes a fresh jail for VM st: whatever an earlier start left (device nodes, the binary's copy,
// sockets, a pid file) is removed, then the kernel, the disk and the log file are hard-linked in and owned by the
// jail's uid. The caller has made sure no firecracker of this VM runs.
func (b *Backend) prepareJail(st *vmState) error {
	old := st.ChrootDir
	b.setJailPaths(st)
	for _, dir := range []string{old, st.ChrootDir} {
		if dir == "" || filepath.Base(dir) != st.ID {
			continue // not a jail of this VM: never removed on the word of a state file
		}
		// A state file written before disks moved out of the jail has its disk inside: keep it.
		if rel, err := filepath.Rel(dir, st.Disk); err == nil && !strings.HasPrefix(rel, "..") {
			moved := filepath.Join(b.vmDir(st.ID), diskName)
			if err := os.Rename(st.Disk, moved); err != nil {
				return fmt.Errorf("move disk out of the jail: %w", err)
			}
			st.Disk = moved
			if err := b.saveState(st); err != nil {
				return err
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove old jail: %w", err)
		}
	}
	root := jailRoot(st)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create jail: %w", err)
	}
	uid, gid := b.cfg.JailerUID, b.cfg.JailerGID
	if err := linkInto(b.cfg.KernelPath, filepath.Join(root, kernelName), uid, gid, true); err != nil {
		return fmt.Errorf("put kernel in jail: %w", err)
	}
	if err := os.Chown(st.Disk, uid, gid); err != nil {
		return fmt.Errorf("give the disk to the jail's uid: %w", err)
	}
	if err := os.Link(st.Disk, filepath.Join(root, diskName)); err != nil {
		return fmt.Errorf("hard-link the disk into the jail (the jail base %s must be on the data directory's "+
			"filesystem): %w", b.chrootBase, err)
	}
	if b.cfg.FirecrackerLogLevel != "" {
		f, err := os.OpenFile(b.fcLogPath(st), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("create firecracker log: %w", err)
		}
		_ = f.Close()
		if err := linkInto(b.fcLogPath(st), filepath.Join(root, fcLogFile), uid, gid, false); err != nil {
			return fmt.Errorf("put firecracker log in jail: %w", err)
		}
	}
	return nil
}

// linkInto hard-links src to dst. A file that must stay readable to everyone (the shared kernel) is copied instead
// when linking fails or when it is not world-readable; anything else is given to uid:gid.
func linkInto(src, dst string, uid, gid int, shared bool) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if shared && fi.Mode().Perm()&0o004 == 0 {
		return copyReadable(src, dst, uid, gid)
	}
	if err := os.Link(src, dst); err != nil {
		if !shared {
			return err
		}
		return copyReadable(src, dst, uid, gid)
	}
	if shared {
		return nil
	}
	return os.Chown(dst, uid, gid)
}

func copyReadable(src, dst string, uid, gid int) error {
	if _, err := vmproc.CloneDisk(src, dst); err != nil {
		return err
	}
	if err := os.Chown(dst, uid, gid); err != nil {
		return err
	}
	return os.Chmod(dst, 0o400)
}

// linkIntoJail makes the host file path visible in VM st's jail under its base name (hard link, else a copy),
// owned by the jail's uid, and returns the name firecracker sees.
func (b *Backend) linkIntoJail(st *vmState, path string) (string, error) {
	dst := filepath.Join(jailRoot(st), filepath.Base(path))
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if err := os.Link(path, dst); err != nil {
		if !errors.Is(err, syscall.EXDEV) {
			return "", err
		}
		if _, err := vmproc.CloneDisk(path, dst); err != nil {
			return "", err
		}
	}
	if err := os.Chown(dst, b.cfg.JailerUID, b.cfg.JailerGID); err != nil {
		return "", err
	}
	return "/" + filepath.Base(path), nil
}

// moveOut moves a file firecracker wrote in VM st's jail to dst on the host (rename, else copy and remove).
func moveOut(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	} else if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	if _, err := vmproc.CloneDisk(src, dst); err != nil {
		return err
	}
	return os.Remove(src)
}

// fcLogPath is the host path of VM st's firecracker log (in its directory, hard-linked into the jail).
func (b *Backend) fcLogPath(st *vmState) string { return filepath.Join(b.vmDir(st.ID), fcLogFile) }

// jailerArgs is the jailer's command line for VM st (docs/jailer.md, Jailer Usage). Neither --daemonize (it
// would setsid out of the process group DeleteVM kills, and send the console to /dev/null) nor --new-pid-ns (the
// jailer's pid would not be firecracker's) is used, so the pid the worker started is firecracker's after the exec.
//
// The jailer drops to --uid/--gid before it execs firecracker, and a change of credentials makes the kernel clear
// the parent-death signal: a jailed firecracker is not killed with its worker. That is the behaviour a restarted
// worker expects (it finds the VM from its state file, by pid, start time and --id, and DeleteVM kills it); when
// a host must not keep guests of a dead worker, put them in cgroups (jailer_cgroups) and kill the cgroup, or stop
// them before the worker goes.
func (b *Backend) jailerArgs(st *vmState) []string {
	args := []string{
		"--id", st.ID,
		"--exec-file", b.execFile,
		"--uid", strconv.Itoa(b.cfg.JailerUID),
		"--gid", strconv.Itoa(b.cfg.JailerGID),
		"--chroot-base-dir", b.chrootBase,
		"--cgroup-version", strconv.Itoa(b.cfg.JailerCgroupVersion),
	}
	for _, cg := range b.cfg.JailerCgroups {
		args = append(args, "--cgroup", cg)
	}
	if b.cfg.JailerNetNS != "" {
		args = append(args, "--netns", b.cfg.JailerNetNS)
	}
	return append(args, "--", "--api-sock", jailAPISock)
}
