//go:build linux

package network

import (
	"os"
	"strings"
	"testing"
)

// A container that is not privileged has /proc/sys read-only: a value that is already right must not be written.
// kernel/osrelease stands in for such a file (mode 0444: refused to every writer, root included).
func TestSysctlSkipsAValueAlreadySet(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Skipf("SKIP: no /proc/sys here: %v", err)
	}
	cur := strings.TrimSpace(string(b))
	r := nsRunner{ns: -1}
	if err := r.sysctl("kernel/osrelease", cur, false); err != nil {
		t.Fatalf("sysctl with the value already set: %v (want no write)", err)
	}
	if err := r.sysctl("kernel/osrelease", cur+"-changed", false); err == nil {
		t.Fatal("a different value was written to a read-only sysctl: the test no longer proves the skip")
	}
}
