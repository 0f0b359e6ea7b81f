//go:build linux

package transport

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSysfs lays out /sys/class/virtio-ports as the kernel does: vportNpM/{name,dev}.
func fakeSysfs(t *testing.T, ports map[string]string) (sysDir, devDir string) {
	t.Helper()
	root := tempDir(t)
	sysDir, devDir = filepath.Join(root, "sys"), filepath.Join(root, "dev")
	for _, d := range []string{sysDir, devDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for port, name := range ports {
		dir := filepath.Join(sysDir, port)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if name != "" { // a console port has an empty name file; none at all is also seen
			if err := os.WriteFile(filepath.Join(dir, "name"), []byte(name+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// The device number of a virtio-serial port: major of virtio-ports (dynamic), minor per port.
		if err := os.WriteFile(filepath.Join(dir, "dev"), []byte("1:3\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sysDir, devDir
}

func TestFindVirtioPort(t *testing.T) {
	sysDir, devDir := fakeSysfs(t, map[string]string{"vport0p0": "", "vport0p1": "agent", "vport0p2": "org.qemu.guest_agent.0"})
	if err := os.WriteFile(filepath.Join(devDir, "vport0p1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := FindVirtioPort(sysDir, devDir, "agent")
	if err != nil || dev != filepath.Join(devDir, "vport0p1") {
		t.Fatalf("FindVirtioPort: %q, %v", dev, err)
	}
	_, err = FindVirtioPort(sysDir, devDir, "other")
	if err == nil || !strings.Contains(err.Error(), "org.qemu.guest_agent.0") || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("missing port: %v; want an error naming it and listing the ports", err)
	}
	for _, bad := range []string{"", "../x", "a\nb"} {
		if _, err := FindVirtioPort(sysDir, devDir, bad); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
}

// TestFindVirtioPortMknod: without devtmpfs, the node is made from sysfs's major:minor.
func TestFindVirtioPortMknod(t *testing.T) {
	sysDir, devDir := fakeSysfs(t, map[string]string{"vport1p1": "agent"})
	dev, err := FindVirtioPort(sysDir, devDir, "agent")
	if err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("SKIPPED: making a device node needs root: %v", err)
		}
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Fatalf("made %s with mode %o rdev %d:%d; want a character device 1:3", dev, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
}
