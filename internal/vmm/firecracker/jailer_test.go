//go:build linux

package firecracker

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
)

// The test binary doubles as a fake jailer too (AE_FAKE_JAILER=1). It follows the jailer's documented contract
// (firecracker docs/jailer.md, "Jailer Usage" and "Jailer Operation") and its source (src/jailer/src/env.rs):
//
//   - arguments: --id (alphanumerics and hyphens, at most 64), --exec-file (canonicalized; its file name must
//     contain "firecracker"), --uid and --gid (required), --chroot-base-dir (default /srv/jailer, canonicalized,
//     must be a directory), --cgroup-version (default 1), --cgroup <file>=<value> (repeatable), --parent-cgroup
//     (default the exec file's name), --netns, --resource-limit, --daemonize, --new-pid-ns, and everything after
//     "--" forwarded to firecracker;
//   - the jail is <chroot_base>/<exec_file_name>/<id>/root, created if missing ("nothing is done if the path
//     already exists"), and exec_file is copied into it as <exec_file_name>;
//   - cgroup values are written to <cgroup_base>/<parent_cgroup>/<id>/<file> and the pid is attached;
//   - the environment is cleared;
//   - inside the jail, /, /dev, /dev/net and /run are made 0700 and given to uid:gid;
//   - /dev/net/tun (10, 200) and /dev/kvm (10, 232) are made with mknod and given to uid:gid: mknod fails when
//     they exist (env.rs mknod_and_own_dev), which is why a jail cannot be reused;
//   - --daemonize: setsid and stdio to /dev/null; --new-pid-ns: the child runs in a new pid namespace and the
//     parent writes its pid to <exec_file_name>.pid, opened with create_new (it fails when the file exists), then
//     exits;
//   - finally it drops to uid/gid and execs /<exec_file_name> --id <id> --start-time-us N --start-time-cpu-us N
//     --parent-cpu-time-us N <forwarded arguments>.
//
// Where the fake must differ: it cannot pivot_root into the jail and still exec this test binary, so it chdirs
// into the jail and sets AE_FAKE_CHROOTED=1 (the only variable left in the environment), and the fake firecracker
// resolves every path against its working directory, as a chrooted process would. Joining --netns is checked
// (the path must be a network namespace) but not done, and cgroups go to the mock hierarchy AE_FAKE_CGROUP_ROOT
// (the jailer's own tests use a mock cgroupfs the same way). The uid and gid change is real: the fake needs root,
// and the kernel really clears the parent-death signal when it happens.

var jailerIDRE = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func fakeJailerMain(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "fake jailer: "+format+"\n", a...)
		return 1
	}
	fs := flag.NewFlagSet("jailer", flag.ContinueOnError)
	id := fs.String("id", "", "")
	execFile := fs.String("exec-file", "", "")
	uidS := fs.String("uid", "", "")
	gidS := fs.String("gid", "", "")
	base := fs.String("chroot-base-dir", "/srv/jailer", "")
	cgVer := fs.String("cgroup-version", "1", "")
	parentCg := fs.String("parent-cgroup", "", "")
	netns := fs.String("netns", "", "")
	daemonize := fs.Bool("daemonize", false, "")
	newPidNS := fs.Bool("new-pid-ns", false, "")
	var cgroups, limits multiFlag
	fs.Var(&cgroups, "cgroup", "")
	fs.Var(&limits, "resource-limit", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	extra := fs.Args() // flag stops at "--" and drops it
	if !jailerIDRE.MatchString(*id) {
		return fail("invalid instance id %q", *id)
	}
	if *execFile == "" || *uidS == "" || *gidS == "" {
		return fail("--exec-file, --uid and --gid are required")
	}
	exe, err := filepath.EvalSymlinks(*execFile)
	if err != nil {
		return fail("canonicalize %s: %v", *execFile, err)
	}
	if fi, err := os.Stat(exe); err != nil || !fi.Mode().IsRegular() {
		return fail("%s is not a file", exe)
	}
	name := filepath.Base(exe)
	if !strings.Contains(name, "firecracker") {
		return fail("invalid exec file name %q: it must contain \"firecracker\"", name)
	}
	uid, err1 := strconv.ParseUint(*uidS, 10, 32)
	gid, err2 := strconv.ParseUint(*gidS, 10, 32)
	if err1 != nil || err2 != nil {
		return fail("invalid uid %q or gid %q", *uidS, *gidS)
	}
	if *cgVer != "1" && *cgVer != "2" {
		return fail("invalid cgroup version %q", *cgVer)
	}
	baseDir, err := filepath.EvalSymlinks(*base)
	if err != nil {
		return fail("canonicalize %s: %v", *base, err)
	}
	if fi, err := os.Stat(baseDir); err != nil || !fi.IsDir() {
		return fail("%s is not a directory", baseDir)
	}
	root := filepath.Join(baseDir, name, *id, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fail("create chroot dir: %v", err)
	}
	if err := copyFile(exe, filepath.Join(root, name)); err != nil {
		return fail("copy exec file: %v", err)
	}
	if *netns != "" {
		var sfs unix.Statfs_t
		if err := unix.Statfs(*netns, &sfs); err != nil {
			return fail("open netns %s: %v", *netns, err)
		}
		if sfs.Type != unix.NSFS_MAGIC {
			return fail("setns %s: not a namespace", *netns)
		}
	}
	if len(cgroups) > 0 {
		cgRoot := os.Getenv("AE_FAKE_CGROUP_ROOT")
		if cgRoot == "" {
			return fail("cgroups given, but the fake has no mock cgroup hierarchy (AE_FAKE_CGROUP_ROOT)")
		}
		parent := *parentCg
		if parent == "" {
			parent = name
		}
		dir := filepath.Join(cgRoot, "v"+*cgVer, parent, *id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fail("create cgroup: %v", err)
		}
		for _, cg := range cgroups {
			k, v, ok := strings.Cut(cg, "=")
			if !ok || v == "" || strings.Contains(v, "=") {
				return fail("invalid cgroup %q", cg)
			}
			if err := os.WriteFile(filepath.Join(dir, k), []byte(v+"\n"), 0o644); err != nil {
				return fail("write cgroup %s: %v", k, err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return fail("attach pid: %v", err)
		}
	}
	var devNull *os.File
	if *daemonize {
		if devNull, err = os.OpenFile(os.DevNull, os.O_RDWR, 0); err != nil {
			return fail("open /dev/null: %v", err)
		}
	}
	// "chroot" (see above): from here on the jail is the working directory.
	if err := os.Chdir(root); err != nil {
		return fail("chroot: %v", err)
	}
	for _, d := range []string{".", "dev", "dev/net", "run"} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fail("create %s: %v", d, err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return fail("chmod %s: %v", d, err)
		}
		if err := os.Chown(d, int(uid), int(gid)); err != nil {
			return fail("chown %s: %v", d, err)
		}
	}
	for _, dev := range []struct {
		path         string
		major, minor uint32
	}{{"dev/net/tun", 10, 200}, {"dev/kvm", 10, 232}} {
		if err := unix.Mknod(dev.path, unix.S_IFCHR|unix.S_IRUSR|unix.S_IWUSR, int(unix.Mkdev(dev.major, dev.minor))); err != nil {
			return fail("failed to create /%s via mknod inside the jail: %v", dev.path, err)
		}
		if err := os.Chown(dev.path, int(uid), int(gid)); err != nil {
			return fail("chown /%s: %v", dev.path, err)
		}
	}
	if devNull != nil {
		if _, err := unix.Setsid(); err != nil {
			return fail("setsid: %v", err)
		}
		for _, fd := range []int{0, 1, 2} {
			if err := unix.Dup2(int(devNull.Fd()), fd); err != nil {
				return fail("dup2: %v", err)
			}
		}
	}
	argv := append([]string{"/" + name, "--id", *id, "--start-time-us", "0", "--start-time-cpu-us", "0",
		"--parent-cpu-time-us", "0"}, extra...)
	env := []string{"AE_FAKE_CHROOTED=1"}
	if *newPidNS {
		// The child is init of a new pid namespace; the parent records its pid (create_new) and exits.
		attr := &syscall.ProcAttr{Dir: ".", Env: env, Files: []uintptr{0, 1, 2},
			Sys: &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID,
				Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}}
		pid, err := syscall.ForkExec("./"+name, argv, attr)
		if err != nil {
			return fail("clone into a new pid namespace: %v", err)
		}
		pf, err := os.OpenFile(name+".pid", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fail("failed to open %s.pid: %v", name, err)
		}
		_, _ = fmt.Fprintf(pf, "%d", pid)
		_ = pf.Close()
		return 0
	}
	// Drop privileges on this (the main) thread, then exec from it: the new image has its credentials, and the
	// change of credentials has cleared the parent-death signal.
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fail("setgroups: %v", e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fail("setgid: %v", e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fail("setuid: %v", e)
	}
	err = syscall.Exec("./"+name, argv, env)
	return fail("exec %s: %v", name, err)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// jailTestBin is a copy of the test binary that the jail's unprivileged uid can run (the build directory is
// root's and 0700), made once.
var jailTestBin struct {
	once sync.Once
	path string
	err  error
}

func sharedTestBinary() (string, error) {
	jailTestBin.once.Do(func() {
		self, err := os.Executable()
		if err != nil {
			jailTestBin.err = err
			return
		}
		dir, err := os.MkdirTemp("", "fcbin")
		if err != nil {
			jailTestBin.err = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			jailTestBin.err = err
			return
		}
		jailTestBin.path = filepath.Join(dir, "fc.test")
		jailTestBin.err = copyFile(self, jailTestBin.path)
	})
	return jailTestBin.path, jailTestBin.err
}

// requireRoot skips (loudly; fails under AETHERIUM_REQUIRE_SERVICES=1) where the jailer could not run.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	msg := "SKIPPING: the jailer (and its fake) needs root for mknod, chown and setuid"
	if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// jailEnv is newEnv made usable by the jail's uid (its log directory writable, the fake firecracker runnable)
// plus the fake jailer. The firecracker binary is a symlink to firecracker-v1.7.0-x86_64, as a release unpacks,
// so that the jail's name shows whether the backend resolved it as the jailer does.
func jailEnv(t *testing.T, modes string) (*testEnv, string) {
	t.Helper()
	requireRoot(t)
	e := newEnv(t, modes)
	bin, err := sharedTestBinary()
	if err != nil {
		t.Fatal(err)
	}
	top := filepath.Dir(e.dataDir)
	for _, d := range []string{top, e.logDir} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(top, "firecracker-v1.7.0-x86_64")
	script := fmt.Sprintf("#!/bin/sh\nAE_FAKE_FC=1 AE_FAKE_SPEC=%q AE_FAKE_MODE=%q AE_FAKE_LOG=%q exec %q \"$@\"\n",
		testSpecPath, modes, e.logDir, bin)
	if err := os.WriteFile(real, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(e.bin); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, e.bin); err != nil {
		t.Fatal(err)
	}
	jailer := filepath.Join(top, "jailer")
	cgRoot := filepath.Join(top, "cgroup")
	js := fmt.Sprintf("#!/bin/sh\nAE_FAKE_JAILER=1 AE_FAKE_CGROUP_ROOT=%q exec %q \"$@\"\n", cgRoot, bin)
	if err := os.WriteFile(jailer, []byte(js), 0o755); err != nil {
		t.Fatal(err)
	}
	return e, jailer
}

// procIDs reads the real uid and gid of pid.
func procIDs(t *testing.T, pid int) (uid, gid string) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "Uid:" {
			uid = f[1]
		}
		if len(f) >= 2 && f[0] == "Gid:" {
			gid = f[1]
		}
	}
	return uid, gid
}

// TestFakeJailerRefusesAReusedJail pins the fake to the behaviour the backend must live with: a second run in the
// same jail fails at mknod, as the real jailer's does.
func TestFakeJailerRefusesAReusedJail(t *testing.T) {
	e, jailer := jailEnv(t, "")
	base := filepath.Join(filepath.Dir(e.dataDir), "jb")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func() (string, error) {
		cmd := exec.Command(jailer, "--id", "vm-x", "--exec-file", e.bin, "--uid", "10000", "--gid", "10000",
			"--chroot-base-dir", base, "--", "--api-sock", "/nonexistent-dir/api.sock")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// The first run gets as far as firecracker, which fails on its API socket path: the jail was made.
	out, _ := run()
	if !strings.Contains(out, "fake firecracker") {
		t.Fatalf("first run did not reach firecracker: %s", out)
	}
	if _, err := os.Stat(filepath.Join(base, "firecracker-v1.7.0-x86_64", "vm-x", "root", "dev", "kvm")); err != nil {
		t.Fatalf("no /dev/kvm in the jail named after the resolved binary: %v", err)
	}
	out, err := run()
	if err == nil || !strings.Contains(out, "mknod") || !strings.Contains(out, "file exists") {
		t.Fatalf("second run in the same jail: %v %s; want mknod to fail with EEXIST", err, out)
	}
}

// TestJailedLifecycle: a jailed VM starts, stops and starts again (a fresh jail each time: reusing one fails at
// the jailer's mknod), restores from a snapshot, and runs as the configured unprivileged uid in a jail named
// after the resolved firecracker binary, with the cgroup values and the netns given.
func TestJailedLifecycle(t *testing.T) {
	e, jailer := jailEnv(t, "")
	cgRoot := filepath.Join(filepath.Dir(e.dataDir), "cgroup")
	b := e.backend(t, func(c *Config) {
		c.JailerBin = jailer
		c.JailerUID, c.JailerGID = 10001, 10002
		c.JailerCgroups = []string{"cpu.max=50000 100000", "memory.max=536870912"}
		c.JailerNetNS = "/proc/self/ns/net"
		c.FirecrackerLogLevel = "Info"
		c.TrackDirtyPages = true
	})
	ctx := ctxT(t, 2*time.Minute)
	const id = "vm-jail"
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id}); err != nil {
		t.Fatal(err)
	}
	wantJail := filepath.Join(e.dataDir, "jail", "firecracker-v1.7.0-x86_64", id)
	var pids []int
	for round := range 3 {
		if err := b.StartVM(ctx, id); err != nil {
			t.Fatalf("start %d: %v", round+1, err)
		}
		st, _ := b.loadState(id)
		if st.ChrootDir != wantJail {
			t.Fatalf("jail %s; want %s (the resolved binary's name)", st.ChrootDir, wantJail)
		}
		if uid, gid := procIDs(t, st.PID); uid != "10001" || gid != "10002" {
			t.Fatalf("firecracker runs as uid %s gid %s; want 10001/10002", uid, gid)
		}
		if res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"echo", "jailed"}}); err != nil || string(res.Stdout) != "jailed\n" {
			t.Fatalf("exec in jailed vm: %v %+v", err, res)
		}
		pids = append(pids, st.PID)
		if round < 2 {
			if err := b.StopVM(ctx, id); err != nil {
				t.Fatal(err)
			}
			waitGone(t, st.PID)
		}
	}
	for _, r := range e.requests(t, id) {
		if r.Status >= 300 {
			t.Errorf("%s %s answered %d", r.Method, r.Path, r.Status)
		}
		if strings.Contains(string(r.Body), e.dataDir) {
			t.Errorf("%s %s names a host path; a jailed firecracker sees only its jail: %s", r.Method, r.Path, r.Body)
		}
	}
	cg := filepath.Join(cgRoot, "v2", "firecracker-v1.7.0-x86_64", id)
	if data, err := os.ReadFile(filepath.Join(cg, "cpu.max")); err != nil || string(data) != "50000 100000\n" {
		t.Errorf("cgroup cpu.max: %q %v", data, err)
	}

	// Snapshot (the files leave the jail), stop, restore into a fresh jail.
	snap, mem := filepath.Join(b.vmDir(id), "s.state"), filepath.Join(b.vmDir(id), "s.mem")
	if err := b.CreateSnapshot(ctx, id, snap, mem, SnapshotDiff); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{snap, mem, SnapshotDisk(snap)} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("snapshot file: %v", err)
		}
	}
	if err := b.CreateSnapshot(ctx, id, snap, mem, SnapshotFull); err != nil {
		t.Fatal(err)
	}
	st, _ := b.loadState(id)
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)
	if err := b.LoadSnapshot(ctx, id, snap, mem); err != nil {
		t.Fatal(err)
	}
	if res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("exec after restore: %v", err)
	}
	// The restored guest runs on the memory file (Firecracker maps it: it must never change). A new snapshot of
	// the same names must not write into it through the jail's link.
	keep := mem + ".keep"
	if err := os.Link(mem, keep); err != nil {
		t.Fatal(err)
	}
	before, err := readPage(keep, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CreateSnapshot(ctx, id, snap, mem, SnapshotFull); err != nil {
		t.Fatal(err)
	}
	if after, err := readPage(keep, 0); err != nil || string(after) != string(before) {
		t.Fatalf("the memory file backing the restored guest was overwritten by the next snapshot (%v)", err)
	}
	e.requests(t, id)
	st, _ = b.loadState(id)
	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)
	for _, p := range []string{wantJail, b.vmDir(id)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after delete: %v", p, err)
		}
	}
}

// TestJailedOutlivesWorker: the jailer's change of uid clears the parent-death signal (a kernel rule, not the
// fake's), so a jailed firecracker survives a worker killed with SIGKILL; a new worker finds it running from its
// state file and DeleteVM kills it.
func TestJailedOutlivesWorker(t *testing.T) {
	e, jailer := jailEnv(t, "")
	cfg := e.config()
	cfg.JailerBin = jailer
	pid := startAndKillTestWorker(t, cfg)
	time.Sleep(200 * time.Millisecond) // a parent-death signal would have been delivered by now
	if pidGone(pid) {
		t.Fatal("the jailed firecracker died with its worker")
	}
	b := e.backend(t, func(c *Config) { c.JailerBin = jailer })
	ctx := ctxT(t, 30*time.Second)
	inst, err := b.GetVMStatus(ctx, "vm-restart")
	if err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("after the worker died: %v %+v", err, inst)
	}
	if err := b.DeleteVM(ctx, "vm-restart"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
}

// TestJailOldLayout: a VM created when the disk lived inside the jail keeps its disk when the fresh jail replaces
// the old one: the disk is moved out to the VM's directory first, with what the guest wrote.
func TestJailOldLayout(t *testing.T) {
	e, jailer := jailEnv(t, "")
	b := e.backend(t, func(c *Config) { c.JailerBin = jailer })
	ctx := ctxT(t, time.Minute)
	const id = "vm-old"
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id}); err != nil {
		t.Fatal(err)
	}
	st, _ := b.loadState(id)
	oldDisk := filepath.Join(jailRoot(st), diskName)
	if err := os.MkdirAll(filepath.Dir(oldDisk), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(st.Disk, oldDisk); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(oldDisk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt([]byte("guest data"), 1<<20)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	st.Disk = oldDisk
	if err := b.saveState(st); err != nil {
		t.Fatal(err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	st, _ = b.loadState(id)
	if st.Disk != filepath.Join(b.vmDir(id), diskName) {
		t.Fatalf("disk %s; want it in the vm's directory", st.Disk)
	}
	disk, err := os.Open(st.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	data := make([]byte, 10)
	if _, err := disk.ReadAt(data, 1<<20); err != nil || !bytes.Equal(data, []byte("guest data")) {
		t.Fatalf("the disk lost what the guest wrote: %q (%v)", data, err)
	}
}
