//go:build linux

package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeSystem records what Init does and keeps a mount table, so that idempotence can be checked without
// privileges.
type fakeSystem struct {
	mounts   []Mount
	files    map[string]bool // lstat-able paths
	dirs     map[string]bool
	host     string
	loUp     bool
	calls    []string
	failType string // mounts of this filesystem type fail
}

func newFakeSystem() *fakeSystem {
	return &fakeSystem{files: map[string]bool{}, dirs: map[string]bool{}, host: "localhost"}
}

func (f *fakeSystem) mount(source, target, fstype string, flags uintptr, data string) error {
	f.calls = append(f.calls, "mount "+fstype+" "+target+" "+data)
	if fstype == f.failType {
		return unix.ENODEV
	}
	if !f.dirs[target] {
		return unix.ENOENT
	}
	f.mounts = append(f.mounts, Mount{ID: len(f.mounts) + 1, Root: "/", MountPoint: target, FSType: fstype, Source: source})
	return nil
}

func (f *fakeSystem) mkdirAll(path string) error {
	f.dirs[path] = true
	return nil
}

func (f *fakeSystem) readFile(path string) ([]byte, error) {
	proc := strings.TrimSuffix(path, "/thread-self/mountinfo")
	for _, m := range f.mounts {
		if m.MountPoint == proc && m.FSType == "proc" {
			var b strings.Builder
			for _, m := range f.mounts {
				fmt.Fprintf(&b, "%d 1 0:1 %s %s rw - %s %s rw\n", m.ID, m.Root, strings.ReplaceAll(m.MountPoint, " ", `\040`), m.FSType, m.Source)
			}
			return []byte(b.String()), nil
		}
	}
	return nil, fs.ErrNotExist
}

func (f *fakeSystem) lstat(path string) (fs.FileInfo, error) {
	if f.files[path] {
		return nil, nil
	}
	return nil, fs.ErrNotExist
}

func (f *fakeSystem) symlink(oldname, newname string) error {
	f.calls = append(f.calls, "symlink "+newname+" -> "+oldname)
	f.files[newname] = true
	return nil
}

func (f *fakeSystem) hostname() (string, error) { return f.host, nil }

func (f *fakeSystem) sethostname(name string) error {
	f.calls = append(f.calls, "sethostname "+name)
	f.host = name
	return nil
}

func (f *fakeSystem) loopbackUp() (bool, error) {
	if f.loUp {
		return false, nil
	}
	f.calls = append(f.calls, "lo up")
	f.loUp = true
	return true, nil
}

func TestInitFromNothingThenIdempotent(t *testing.T) {
	sys := newFakeSystem()
	if err := initSystem(sys, Options{Hostname: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mount proc /proc ",
		"mount sysfs /sys ",
		"mount devtmpfs /dev mode=0755",
		"mount devpts /dev/pts newinstance,ptmxmode=0666,mode=0620,gid=5",
		"mount tmpfs /dev/shm mode=1777",
		"mount tmpfs /tmp mode=1777",
		"mount tmpfs /run mode=0755",
		"symlink /dev/ptmx -> pts/ptmx",
		"sethostname vm-1",
		"lo up",
	}
	if !reflect.DeepEqual(sys.calls, want) {
		t.Fatalf("first Init did\n%s\nwant\n%s", strings.Join(sys.calls, "\n"), strings.Join(want, "\n"))
	}
	sys.calls = nil
	if err := initSystem(sys, Options{Hostname: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	if len(sys.calls) != 0 {
		t.Fatalf("second Init did %q; want nothing", sys.calls)
	}
}

func TestInitSkipsWhatIsMounted(t *testing.T) {
	sys := newFakeSystem()
	for _, p := range []string{"/proc", "/dev", "/tmp"} {
		sys.dirs[p] = true
	}
	sys.mounts = []Mount{
		{ID: 1, Root: "/", MountPoint: "/proc", FSType: "proc"},
		{ID: 2, Root: "/", MountPoint: "/dev", FSType: "devtmpfs"},
		{ID: 3, Root: "/", MountPoint: "/tmp", FSType: "ext4"}, // whatever is there counts as mounted
	}
	sys.files["/dev/ptmx"] = true // a device node: kept
	if err := initSystem(sys, Options{SkipLoopback: true}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mount sysfs /sys ",
		"mount devpts /dev/pts newinstance,ptmxmode=0666,mode=0620,gid=5",
		"mount tmpfs /dev/shm mode=1777",
		"mount tmpfs /run mode=0755",
	}
	if !reflect.DeepEqual(sys.calls, want) {
		t.Fatalf("Init did %q, want %q", sys.calls, want)
	}
}

func TestInitUnderRoot(t *testing.T) {
	sys := newFakeSystem()
	if err := initSystem(sys, Options{Root: "/scratch/x/", SkipLoopback: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range sys.calls {
		if strings.HasPrefix(c, "mount") && !strings.Contains(c, " /scratch/x/") {
			t.Errorf("%q is not under the root", c)
		}
	}
	if err := initSystem(sys, Options{Root: "relative"}); err == nil {
		t.Error("relative root accepted")
	}
}

func TestInitCollectsFailures(t *testing.T) {
	sys := newFakeSystem()
	sys.failType = "devpts"
	err := initSystem(sys, Options{SkipLoopback: true})
	if !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), "/dev/pts") {
		t.Fatalf("got %v; want the devpts failure", err)
	}
	// The rest was still done.
	if !slices.Contains(sys.calls, "mount tmpfs /run mode=0755") {
		t.Fatalf("later mounts skipped after a failure: %q", sys.calls)
	}

	sys = newFakeSystem()
	sys.failType = "proc"
	if err := initSystem(sys, Options{}); !errors.Is(err, unix.ENODEV) || len(sys.calls) != 1 {
		t.Fatalf("proc failure: %v after %q; want it to stop at once", err, sys.calls)
	}
	if err := initSystem(newFakeSystem(), Options{Hostname: "bad/name"}); err == nil {
		t.Fatal("bad hostname accepted")
	}
}

func TestShutdownFunc(t *testing.T) {
	same := func(a, b func() error) bool { return reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer() }
	for cmdline, want := range map[string]func() error{
		"console=ttyS0 reboot=t panic=-1": Reboot,
		"console=ttyS0 reboot=k panic=1":  Reboot,
		"reboot=w,triple":                 Reboot,
		"console=ttyS0 panic=-1":          PowerOff,
		"console=ttyS0 -- reboot=t":       PowerOff, // after "--": init's arguments
		"reboot=a,w acpi=on":              PowerOff,
	} {
		if got := ShutdownFunc(cmdline); !same(got, want) {
			t.Errorf("ShutdownFunc(%q) picked the other one", cmdline)
		}
	}
}

// TestInitForReal runs Init against a scratch root inside private mount, UTS and network namespaces, so that it
// really mounts, sets a hostname and brings up a fresh loopback interface without touching this machine's. It
// needs root; the same code runs as the real PID 1 in the QEMU guest tests.
func TestInitForReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount, unshare); covered by the QEMU guest tests")
	}
	root := t.TempDir()
	errc := make(chan error, 1)
	go func() {
		// The namespaces belong to this thread only; it is never unlocked, so it dies with the goroutine and
		// takes them along (no unmounting needed, and nothing leaks into other goroutines).
		runtime.LockOSThread()
		errc <- initInNamespaces(root)
	}()
	select {
	case err := <-errc:
		if errors.Is(err, unix.EPERM) {
			t.Skipf("no privilege for namespaces here (a container?): %v; covered by the QEMU guest tests", err)
		}
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Init in namespaces hung")
	}
}

func initInNamespaces(root string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if up, err := loopbackIsUp(); err != nil || up {
		return fmt.Errorf("fresh network namespace: loopback up %v, %v", up, err)
	}
	if err := Init(Options{Root: root, Hostname: "aetherium-guest"}); err != nil {
		return fmt.Errorf("Init: %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "proc/thread-self/mountinfo"))
	if err != nil {
		return err
	}
	mounts, err := ParseMountInfo(strings.NewReader(string(raw)))
	if err != nil {
		return err
	}
	byPoint := map[string]Mount{}
	for _, m := range mounts {
		byPoint[m.MountPoint] = m
	}
	for target, fstype := range map[string]string{"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/dev/pts": "devpts",
		"/dev/shm": "tmpfs", "/tmp": "tmpfs", "/run": "tmpfs"} {
		m, ok := byPoint[filepath.Join(root, target)]
		if !ok || m.FSType != fstype {
			return fmt.Errorf("%s: mounted %v as %q, want %s", target, ok, m.FSType, fstype)
		}
	}
	if m := byPoint[filepath.Join(root, "/dev/pts")]; !strings.Contains(m.SuperOpts, "ptmxmode=666") {
		return fmt.Errorf("devpts options %q lack ptmxmode=666", m.SuperOpts)
	}
	if fi, err := os.Stat(filepath.Join(root, "tmp")); err != nil || fi.Mode()&fs.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		return fmt.Errorf("/tmp mode %v, %v; want sticky 0777", fi.Mode(), err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	if host := unix.ByteSliceToString(uts.Nodename[:]); host != "aetherium-guest" {
		return fmt.Errorf("hostname %q", host)
	}
	if up, err := loopbackIsUp(); err != nil || !up {
		return fmt.Errorf("loopback up %v, %v after Init", up, err)
	}
	// Again: nothing new is mounted.
	if err := Init(Options{Root: root, Hostname: "aetherium-guest"}); err != nil {
		return fmt.Errorf("second Init: %w", err)
	}
	raw2, err := os.ReadFile(filepath.Join(root, "proc/thread-self/mountinfo"))
	if err != nil {
		return err
	}
	if again, _ := ParseMountInfo(strings.NewReader(string(raw2))); len(again) != len(mounts) {
		return fmt.Errorf("second Init changed the mount count from %d to %d", len(mounts), len(again))
	}
	return nil
}

func loopbackIsUp() (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return false, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return false, err
	}
	return ifr.Uint16()&unix.IFF_UP != 0, nil
}

func TestWriteResolvConf(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A template's resolv.conf may be a symlink to a file that does not exist in a VM: it is replaced, not followed.
	if err := os.Symlink("/run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc", "resolv.conf")); err != nil {
		t.Fatal(err)
	}
	if err := WriteResolvConf(root, []string{"172.16.0.1", "2001:db8::53"}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(root, "etc", "resolv.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), "nameserver 172.16.0.1\nnameserver 2001:db8::53\n") {
		t.Fatalf("resolv.conf = %q", got)
	}
	for _, bad := range [][]string{{"not-an-ip"}, {"172.16.0.1", "x; rm -rf /"}, nil} {
		if err := WriteResolvConf(root, bad); err == nil {
			t.Fatalf("WriteResolvConf(%q) succeeded", bad)
		}
	}
	if again, _ := os.ReadFile(filepath.Join(root, "etc", "resolv.conf")); string(again) != string(got) {
		t.Fatal("a rejected call changed resolv.conf")
	}
}
