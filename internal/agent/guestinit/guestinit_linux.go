//go:build linux

package guestinit

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options configure Init. The zero value mounts everything and leaves the hostname alone.
type Options struct {
	// Hostname is set when not empty (and different from the current one).
	Hostname string
	// Root is the directory the standard paths (/proc, /sys, /dev...) are under; empty means "/". Tests use a
	// scratch directory in a private mount namespace.
	Root string
	// SkipLoopback leaves the loopback interface alone.
	SkipLoopback bool
	// Logger receives what Init does; nil discards it.
	Logger *slog.Logger
}

// mountSpec is one filesystem Init mounts when nothing is mounted at its target yet.
type mountSpec struct {
	target string // relative to Options.Root
	fstype string
	source string
	flags  uintptr
	data   string
}

// standardMounts are the filesystems a guest needs, in the order they must be mounted (/dev before /dev/pts).
// /proc is handled first and apart, because it is what tells which of the others are mounted already.
func standardMounts() []mountSpec {
	const (
		nosuid = unix.MS_NOSUID
		nodev  = unix.MS_NODEV
		noexec = unix.MS_NOEXEC
	)
	return []mountSpec{
		{target: "/sys", fstype: "sysfs", source: "sysfs", flags: nosuid | nodev | noexec},
		{target: "/dev", fstype: "devtmpfs", source: "devtmpfs", flags: nosuid, data: "mode=0755"},
		// ptmxmode=0666: the pts instance's own ptmx node must be usable by everyone, since /dev/ptmx may be a
		// symlink to it (below). gid=5 is the tty group of Debian and busybox images.
		{target: "/dev/pts", fstype: "devpts", source: "devpts", flags: nosuid | noexec, data: "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{target: "/dev/shm", fstype: "tmpfs", source: "shm", flags: nosuid | nodev, data: "mode=1777"},
		{target: "/tmp", fstype: "tmpfs", source: "tmpfs", flags: nosuid | nodev, data: "mode=1777"},
		{target: "/run", fstype: "tmpfs", source: "tmpfs", flags: nosuid | nodev, data: "mode=0755"},
	}
}

const procMount = "/proc"

// system is what Init needs from the kernel, so that its decisions can be tested without privileges.
type system interface {
	mount(source, target, fstype string, flags uintptr, data string) error
	mkdirAll(path string) error
	readFile(path string) ([]byte, error)
	lstat(path string) (fs.FileInfo, error)
	symlink(oldname, newname string) error
	hostname() (string, error)
	sethostname(name string) error
	loopbackUp() (changed bool, err error)
}

// Init prepares a guest when the agent is its PID 1: it mounts /proc, /sys, /dev (devtmpfs), /dev/pts (with
// ptmxmode=0666, and /dev/ptmx -> pts/ptmx when /dev/ptmx does not exist), /dev/shm, /tmp and /run (tmpfs), each
// only if nothing is mounted there yet; sets the hostname; and brings up the loopback interface. Running it again
// changes nothing.
//
// A failure to mount /proc ends it at once (nothing else can be checked without it); other failures are
// collected and returned together after the rest has been tried, so that one missing filesystem type does not
// leave the guest without /tmp.
func Init(opts Options) error {
	return initSystem(realSystem{}, opts)
}

func initSystem(sys system, opts Options) error {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root := opts.Root
	if root == "" {
		root = "/"
	}
	if !filepath.IsAbs(root) {
		return fmt.Errorf("guestinit: root %q is not absolute", root)
	}
	root = filepath.Clean(root)
	at := func(p string) string { return filepath.Join(root, p) }

	mounted, err := mountProc(sys, at(procMount), log)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range standardMounts() {
		target := at(m.target)
		if mounted[target] {
			log.Debug("already mounted", "target", target)
			continue
		}
		if err := sys.mkdirAll(target); err != nil {
			errs = append(errs, fmt.Errorf("guestinit: create %s: %w", target, err))
			continue
		}
		if err := sys.mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
			errs = append(errs, fmt.Errorf("guestinit: mount %s on %s: %w", m.fstype, target, err))
			continue
		}
		mounted[target] = true
		log.Info("mounted", "fstype", m.fstype, "target", target)
	}

	// Since Linux 4.7 a /dev/ptmx device node opens the pts instance mounted next to it, so an existing node is
	// fine and is never replaced (devtmpfs is one instance shared by every mount of it). Only a missing one is
	// made, as the symlink the kernel documentation recommends.
	ptmx := at("/dev/ptmx")
	if _, err := sys.lstat(ptmx); errors.Is(err, fs.ErrNotExist) {
		if err := sys.symlink("pts/ptmx", ptmx); err != nil {
			errs = append(errs, fmt.Errorf("guestinit: symlink %s: %w", ptmx, err))
		} else {
			log.Info("created /dev/ptmx symlink", "path", ptmx)
		}
	} else if err != nil {
		errs = append(errs, fmt.Errorf("guestinit: stat %s: %w", ptmx, err))
	}

	if opts.Hostname != "" {
		if err := setHostname(sys, opts.Hostname, log); err != nil {
			errs = append(errs, err)
		}
	}
	if !opts.SkipLoopback {
		changed, err := sys.loopbackUp()
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("guestinit: bring up loopback: %w", err))
		case changed:
			log.Info("loopback up")
		}
	}
	return errors.Join(errs...)
}

// mountProc mounts proc at target unless it is there already, and returns the set of mount points it lists.
func mountProc(sys system, target string, log *slog.Logger) (map[string]bool, error) {
	raw, info, err := readMountInfo(sys, target)
	if err != nil {
		// No proc there yet (or one we cannot read, which mounting over fixes as well).
		if err := sys.mkdirAll(target); err != nil {
			return nil, fmt.Errorf("guestinit: create %s: %w", target, err)
		}
		if err := sys.mount("proc", target, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return nil, fmt.Errorf("guestinit: mount proc on %s: %w", target, err)
		}
		log.Info("mounted", "fstype", "proc", "target", target)
		if raw, info, err = readMountInfo(sys, target); err != nil {
			return nil, fmt.Errorf("guestinit: read the mount table after mounting proc: %w", err)
		}
	}
	mounts, err := ParseMountInfo(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("guestinit: %s: %w", info, err)
	}
	return mountPoints(mounts), nil
}

// readMountInfo reads the calling thread's mount table from the proc at procDir. thread-self, not self: self is
// the thread group leader, whose mount namespace another thread may not share (tests unshare one thread);
// self is the fallback for kernels before 3.17.
func readMountInfo(sys system, procDir string) ([]byte, string, error) {
	var firstErr error
	for _, dir := range []string{"thread-self", "self"} {
		info := filepath.Join(procDir, dir, "mountinfo")
		raw, err := sys.readFile(info)
		if err == nil {
			return raw, info, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, "", firstErr
}

func setHostname(sys system, name string, log *slog.Logger) error {
	if len(name) > 64 || strings.ContainsAny(name, "\x00/ ") {
		return fmt.Errorf("guestinit: invalid hostname %q", name)
	}
	if cur, err := sys.hostname(); err == nil && cur == name {
		return nil
	}
	if err := sys.sethostname(name); err != nil {
		return fmt.Errorf("guestinit: set hostname %q: %w", name, err)
	}
	log.Info("hostname set", "hostname", name)
	return nil
}

// PowerOff flushes the filesystems and powers the machine off with reboot(RB_POWER_OFF). It returns only on
// failure. A VMM must be able to see the power-off: ACPI (Firecracker's and QEMU's ACPI machines) does it; a
// microvm without ACPI just halts its CPU, so use Reboot there.
func PowerOff() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("guestinit: power off: %w", err)
	}
	return nil
}

// Reboot flushes the filesystems and restarts the machine with reboot(RB_AUTOBOOT). It returns only on failure.
// This is how a guest ends a VM whose VMM exits on a reset: QEMU microvm started with -no-reboot and the kernel
// command line reboot=t (triple fault; microvm has no i8042), and Firecracker with reboot=k (its i8042 reset
// ends the VMM).
func Reboot() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("guestinit: reboot: %w", err)
	}
	return nil
}

// ShutdownFunc picks how this guest ends its VM from the kernel command line (the contents of /proc/cmdline):
// Reboot when it has reboot=t or reboot=k (the VMM exits on a reset, see Reboot), PowerOff otherwise.
func ShutdownFunc(cmdline string) func() error {
	for _, f := range strings.Fields(cmdline) {
		if f == "--" {
			break // the rest is for init, not the kernel
		}
		v, ok := strings.CutPrefix(f, "reboot=")
		if !ok {
			continue
		}
		for _, mode := range strings.Split(v, ",") {
			if mode == "t" || mode == "triple" || mode == "k" || mode == "kbd" {
				return Reboot
			}
		}
	}
	return PowerOff
}

type realSystem struct{}

func (realSystem) mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

func (realSystem) mkdirAll(path string) error             { return os.MkdirAll(path, 0o755) }
func (realSystem) readFile(path string) ([]byte, error)   { return os.ReadFile(path) }
func (realSystem) lstat(path string) (fs.FileInfo, error) { return os.Lstat(path) }
func (realSystem) symlink(oldname, newname string) error  { return os.Symlink(oldname, newname) }
func (realSystem) hostname() (string, error)              { return os.Hostname() }
func (realSystem) sethostname(name string) error          { return unix.Sethostname([]byte(name)) }
func (realSystem) loopbackUp() (bool, error)              { return loopbackUp() }

// loopbackUp sets IFF_UP on "lo" with SIOCSIFFLAGS; the kernel then gives it 127.0.0.1/8 and ::1 by itself.
func loopbackUp() (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return false, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return false, fmt.Errorf("SIOCGIFFLAGS: %w", err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return false, nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return false, fmt.Errorf("SIOCSIFFLAGS: %w", err)
	}
	return true, nil
}

// WriteResolvConf writes <root>/etc/resolv.conf naming servers (IP addresses, from the kernel command line's
// aetherium.dns=), atomically, replacing what the template had. An invalid address changes nothing.
func WriteResolvConf(root string, servers []string) error {
	var b strings.Builder
	b.WriteString("# written by aetherium-agent from aetherium.dns on the kernel command line\n")
	for _, s := range servers {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("guestinit: nameserver %q is not an IP address", s)
		}
		fmt.Fprintf(&b, "nameserver %s\n", ip)
	}
	if len(servers) == 0 {
		return errors.New("guestinit: no nameservers")
	}
	dir := filepath.Join(root, "etc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("guestinit: %w", err)
	}
	path := filepath.Join(dir, "resolv.conf")
	tmp := path + ".aetherium-tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("guestinit: write resolv.conf: %w", err)
	}
	// A template may ship resolv.conf as a symlink (to systemd-resolved's file): replace the link, not its target.
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("guestinit: write resolv.conf: %w", err)
	}
	return nil
}

// ext4IOCResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow a mounted ext4 filesystem to a block count.
const ext4IOCResizeFS = 0x40086610

// GrowRootFS grows the ext4 filesystem mounted at root to fill its block device, online. A VM's disk may be
// bigger than the template it was made from (the host grows it sparsely); this makes the room usable. It returns
// the filesystem size in bytes before and after; nothing changes when the filesystem already fills the device or
// is not ext4.
func GrowRootFS(root string) (before, after int64, err error) {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return 0, 0, fmt.Errorf("guestinit: stat %s: %w", root, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err != nil {
		return 0, 0, fmt.Errorf("guestinit: statfs %s: %w", root, err)
	}
	if fs.Type != unix.EXT4_SUPER_MAGIC {
		return 0, 0, nil
	}
	bsize := int64(fs.Bsize)
	before = int64(fs.Blocks) * bsize
	sizePath := fmt.Sprintf("/sys/dev/block/%d:%d/size", unix.Major(st.Dev), unix.Minor(st.Dev))
	data, err := os.ReadFile(sizePath)
	if err != nil {
		return before, before, fmt.Errorf("guestinit: size of the root device: %w", err)
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return before, before, fmt.Errorf("guestinit: %s: %w", sizePath, err)
	}
	blocks := uint64(sectors * 512 / bsize)
	// statfs's block count leaves out the filesystem's overhead, so compare with the device only roughly: a
	// device at most 1% larger is not worth a resize.
	if int64(blocks)*bsize <= before+before/100 {
		return before, before, nil
	}
	f, err := os.Open(root)
	if err != nil {
		return before, before, fmt.Errorf("guestinit: open %s: %w", root, err)
	}
	defer f.Close()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ext4IOCResizeFS, uintptr(unsafe.Pointer(&blocks))); errno != 0 {
		return before, before, fmt.Errorf("guestinit: grow the root filesystem to %d blocks: %w", blocks, errno)
	}
	if err := unix.Statfs(root, &fs); err == nil {
		after = int64(fs.Blocks) * bsize
	}
	return before, after, nil
}
