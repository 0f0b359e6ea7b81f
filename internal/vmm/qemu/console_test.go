//go:build linux

package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConsoleLog: the tail of a VM's console log, bounded; bad ids and missing logs are errors.
func TestConsoleLog(t *testing.T) {
	b := &Backend{cfg: Config{DataDir: t.TempDir()}}
	dir := b.vmDir("vm-1")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	log := strings.Repeat("a", 100) + "tail of the console\n"
	if err := os.WriteFile(filepath.Join(dir, consoleFile), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := b.ConsoleLog("vm-1", 20)
	if err != nil || string(got) != "tail of the console\n" {
		t.Fatalf("ConsoleLog = %q, %v", got, err)
	}
	if got, err := b.ConsoleLog("vm-1", 1<<20); err != nil || string(got) != log {
		t.Fatalf("whole log = %q, %v", got, err)
	}
	if _, err := b.ConsoleLog("../etc", 10); err == nil {
		t.Fatal("a path as id was read")
	}
	if _, err := b.ConsoleLog("vm-2", 10); err == nil {
		t.Fatal("a missing log was not an error")
	}
}
