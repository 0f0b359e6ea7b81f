package server

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestInstallationID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := InstallationID(dir)
			if err != nil {
				t.Error(err)
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || !installationIDRE.MatchString(id) {
			t.Fatalf("concurrent first starts disagree or made a bad id: %q", ids)
		}
	}
	again, err := InstallationID(dir)
	if err != nil || again != ids[0] {
		t.Fatalf("second start: %q, %v; want %q", again, err, ids[0])
	}
	other, err := InstallationID(filepath.Join(t.TempDir(), "other"))
	if err != nil || other == ids[0] {
		t.Fatalf("another data directory got %q (%v), the same as %q", other, err, ids[0])
	}
	if err := os.WriteFile(filepath.Join(dir, InstallationIDFile), []byte("../../etc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := InstallationID(dir); err == nil {
		t.Fatal("a corrupt installation id was accepted")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left in the data directory: %v", entries)
	}
}
