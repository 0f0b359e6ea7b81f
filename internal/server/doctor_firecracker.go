//go:build linux

package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/config"
)

// minFirecracker is the oldest Firecracker release the backend supports (the API it drives, snapshots with
// mem_backend, the jailer's --cgroup-version).
var minFirecracker = [3]int{1, 1, 0}

// firecrackerHost is where the Firecracker checks look; tests point it at files of their own.
type firecrackerHost struct {
	mounts string // /proc/mounts
	kvm    string // /dev/kvm
	passwd string // /etc/passwd
	euid   int
}

func defaultFirecrackerHost() firecrackerHost {
	return firecrackerHost{mounts: "/proc/mounts", kvm: kvmDevice, passwd: "/etc/passwd", euid: os.Geteuid()}
}

// firecrackerChecks checks a Firecracker host: the release, the jailer, cgroup v2, /dev/kvm and the uid
// Firecracker runs as. They run for backend firecracker, and for auto when a firecracker binary is found.
func firecrackerChecks(ctx context.Context, cfg config.Config, h firecrackerHost) []Check {
	bin := cfg.FirecrackerBin
	if bin == "" {
		if cfg.Backend != "auto" && cfg.Backend != "firecracker" {
			return nil
		}
		p, err := exec.LookPath("firecracker")
		if err != nil {
			return nil // backend checks already say firecracker is missing
		}
		bin = p
	} else if cfg.Backend != "auto" && cfg.Backend != "firecracker" {
		return nil
	}
	var checks []Check
	fcVer, err := binaryVersion(ctx, bin)
	switch {
	case err != nil:
		checks = append(checks, Check{Name: "firecracker version", Status: CheckFail, Detail: err.Error(),
			Fix: "install a Firecracker release (firecracker and jailer of the same version, 1.1 or newer)"})
	case versionLess(fcVer, minFirecracker):
		checks = append(checks, Check{Name: "firecracker version", Status: CheckFail,
			Detail: fmt.Sprintf("%s is %s, older than %s", bin, fmtVersion(fcVer), fmtVersion(minFirecracker)),
			Fix:    "install Firecracker " + fmtVersion(minFirecracker) + " or newer"})
	default:
		checks = append(checks, Check{Name: "firecracker version", Status: CheckOK, Detail: bin + " " + fmtVersion(fcVer)})
	}

	jailed := cfg.JailerBin != ""
	if !jailed {
		checks = append(checks, Check{Name: "jailer", Status: CheckWarn,
			Detail: "not configured: Firecracker runs unjailed, as the worker's user",
			Fix:    "set jailer_bin to the jailer of the same release (the worker must then run as root)"})
	} else {
		checks = append(checks, jailerCheck(ctx, cfg, bin, fcVer, err == nil))
	}

	if jailed && cfg.JailerNetNS != "" {
		checks = append(checks, netnsCheck(cfg.JailerNetNS))
	}
	checks = append(checks, cgroupCheck(cfg, h, jailed))
	checks = append(checks, kvmAccessCheck(h, jailed))
	checks = append(checks, uidCheck(cfg, h, jailed))
	return checks
}

func jailerCheck(ctx context.Context, cfg config.Config, fcBin string, fcVer [3]int, fcKnown bool) Check {
	c := Check{Name: "jailer"}
	jv, err := binaryVersion(ctx, cfg.JailerBin)
	if err != nil {
		c.Status, c.Detail, c.Fix = CheckFail, err.Error(), "set jailer_bin to the jailer binary of the Firecracker release"
		return c
	}
	// docs/jailer.md: each jailer binary is meant for the Firecracker binary of the same version.
	if fcKnown && jv != fcVer {
		c.Status, c.Fix = CheckFail, "install firecracker and jailer from one release"
		c.Detail = fmt.Sprintf("jailer %s, firecracker %s: they must be of the same release", fmtVersion(jv), fmtVersion(fcVer))
		return c
	}
	// The jailer refuses an exec file whose name (after resolving symlinks) lacks "firecracker".
	if exe, err := filepath.EvalSymlinks(fcBin); err == nil && !strings.Contains(filepath.Base(exe), "firecracker") {
		c.Status, c.Fix = CheckFail, "point firecracker_bin at a file whose name contains \"firecracker\""
		c.Detail = fmt.Sprintf("%s resolves to %s: the jailer only runs a binary whose name contains \"firecracker\"", fcBin, exe)
		return c
	}
	c.Status, c.Detail = CheckOK, cfg.JailerBin+" "+fmtVersion(jv)
	return c
}

// netnsCheck checks that jailer_netns is a network namespace the jailer can join.
func netnsCheck(path string) Check {
	c := Check{Name: "jailer netns", Fix: "create it (ip netns add NAME makes /var/run/netns/NAME) or unset jailer_netns"}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		c.Status, c.Detail = CheckFail, err.Error()
		return c
	}
	if sfs.Type != unix.NSFS_MAGIC {
		c.Status, c.Detail = CheckFail, path+" is not a namespace (an nsfs file, as ip netns add makes)"
		return c
	}
	c.Status, c.Detail, c.Fix = CheckOK, path, ""
	return c
}

func cgroupCheck(cfg config.Config, h firecrackerHost, jailed bool) Check {
	c := Check{Name: "cgroup v2"}
	at, err := cgroup2Mount(h.mounts)
	switch {
	case err != nil:
		c.Status, c.Detail = CheckWarn, err.Error()
	case at != "":
		return Check{Name: c.Name, Status: CheckOK, Detail: "mounted at " + at}
	default:
		c.Status, c.Detail = CheckWarn, "no cgroup2 filesystem is mounted"
	}
	c.Fix = "mount cgroup2 (systemd does on current distributions: systemd.unified_cgroup_hierarchy=1), or set jailer_cgroup_version: 1"
	if jailed && cfg.JailerCgroupVersion == 2 && strings.TrimSpace(cfg.JailerCgroups) != "" {
		c.Status = CheckFail // the jailer would fail to place VMs in their cgroups
	}
	return c
}

// cgroup2Mount returns where a cgroup2 filesystem is mounted, from a mounts table.
func cgroup2Mount(mounts string) (string, error) {
	data, err := os.ReadFile(mounts)
	if err != nil {
		return "", fmt.Errorf("read mounts: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", nil
}

func kvmAccessCheck(h firecrackerHost, jailed bool) Check {
	c := Check{Name: "kvm access", Fix: "load kvm_intel or kvm_amd and run the worker as root (jailed) or as a user " +
		"with read/write access to /dev/kvm (group kvm)"}
	if jailed {
		// The jailer makes its own /dev/kvm in each jail (mknod 10:232, owned by the jail's uid), so the host
		// node's mode does not matter for that uid; the node must be KVM's and the jailer (the root worker)
		// must be able to open it.
		var st syscall.Stat_t
		if err := syscall.Stat(h.kvm, &st); err != nil {
			c.Status, c.Detail = CheckFail, err.Error()
			return c
		}
		if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 232 {
			c.Status, c.Detail = CheckFail, h.kvm+" is not the KVM device (character device 10:232)"
			return c
		}
	}
	f, err := os.OpenFile(h.kvm, os.O_RDWR, 0)
	if err != nil {
		c.Status, c.Detail = CheckFail, fmt.Sprintf("uid %d cannot open %s read-write: %v", h.euid, h.kvm, err)
		return c
	}
	_ = f.Close()
	c.Status, c.Detail, c.Fix = CheckOK, fmt.Sprintf("%s opens read-write for uid %d", h.kvm, h.euid), ""
	if jailed {
		c.Detail += "; each jail gets its own node for the jail's uid"
	}
	return c
}

func uidCheck(cfg config.Config, h firecrackerHost, jailed bool) Check {
	c := Check{Name: "firecracker uid"}
	if !jailed {
		if h.euid == 0 {
			c.Status, c.Detail = CheckWarn, "Firecracker runs as root, unjailed: a guest escaping it owns the host"
			c.Fix = "set jailer_bin (Firecracker then runs as jailer_uid in a chroot)"
			return c
		}
		c.Status, c.Detail = CheckOK, fmt.Sprintf("Firecracker runs as uid %d (unjailed)", h.euid)
		return c
	}
	if h.euid != 0 {
		c.Status, c.Detail = CheckFail, fmt.Sprintf("the worker runs as uid %d; the jailer needs root (mknod, chroot, setuid)", h.euid)
		c.Fix = "run the worker as root, or unset jailer_bin"
		return c
	}
	if cfg.JailerUID == 0 || cfg.JailerGID == 0 {
		c.Status, c.Detail, c.Fix = CheckFail, "the jailer would run Firecracker as root", "set jailer_uid and jailer_gid to an unused, unprivileged id"
		return c
	}
	if user := passwdUser(h.passwd, cfg.JailerUID); user != "" {
		c.Status = CheckWarn
		c.Detail = fmt.Sprintf("jailer_uid %d is the account %q: its processes could signal or trace Firecracker", cfg.JailerUID, user)
		c.Fix = "choose a uid no account uses (the default is 10000)"
		return c
	}
	c.Status, c.Detail = CheckOK, fmt.Sprintf("Firecracker runs jailed as uid %d gid %d", cfg.JailerUID, cfg.JailerGID)
	return c
}

// passwdUser returns the name of the account with uid in a passwd file, or "".
func passwdUser(passwd string, uid int) string {
	data, err := os.ReadFile(passwd)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[2] == strconv.Itoa(uid) {
			return f[0]
		}
	}
	return ""
}

var versionRE = regexp.MustCompile(`v?(\d+)\.(\d+)\.(\d+)`)

// binaryVersion runs bin --version and parses "Firecracker v1.7.0" (or "Jailer v1.7.0").
func binaryVersion(ctx context.Context, bin string) ([3]int, error) {
	var v [3]int
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return v, fmt.Errorf("%s --version: %w", bin, err)
	}
	// The first line is the release; later ones list snapshot format versions.
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	m := versionRE.FindStringSubmatch(first)
	if m == nil {
		return v, fmt.Errorf("%s --version printed no version: %q", bin, strings.TrimSpace(string(out)))
	}
	for i := range v {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v, nil
}

func versionLess(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func fmtVersion(v [3]int) string { return fmt.Sprintf("v%d.%d.%d", v[0], v[1], v[2]) }
