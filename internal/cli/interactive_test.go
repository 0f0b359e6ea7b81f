package cli_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/pkg/client"
)

func TestInteractiveUsageErrors(t *testing.T) {
	e := newEnv(t)
	delete(e.vars, cli.EnvAPIKey) // usage errors come before the missing key
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "shell"}, "want a VM"},
		{[]string{"vm", "shell", "box", "ls"}, `unexpected argument "ls": put the command after --`},
		{[]string{"vm", "shell", "--tty", "--no-tty", "box"}, "mutually exclusive"},
		{[]string{"vm", "shell", "box", "-la"}, "put the remote command after --"},
		{[]string{"vm", "cp", "a", "b"}, "one of SRC and DST must be in a VM"},
		{[]string{"vm", "cp", "box:/a", "other:/b"}, "between two VMs"},
		{[]string{"vm", "cp", "box:rel", "b"}, "must be absolute"},
		{[]string{"vm", "cp", "a"}, "want SRC and DST"},
		{[]string{"vm", "spawn", "box"}, "want a VM and a command"},
		{[]string{"vm", "logs", "box", "1", "2"}, "accepts between 1 and 2 arg(s)"}, // one: the console (logs_test.go); two: a process
	} {
		r := e.run(tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: want exit 2 and %q, got %s", tc.args, tc.want, r)
		}
	}
	if n := len(e.srv.Requests()); n != 0 {
		t.Errorf("usage errors sent %d requests", n)
	}
}

// TestVMCpBothWays checks what vm cp sends and writes; the real transfer is covered by the e2e tests.
func TestVMCpBothWays(t *testing.T) {
	e := newEnv(t)
	vm := e.srv.AddVM("box", "running")
	var (
		mu       sync.Mutex
		uploaded []byte
		upQuery  string
		upLength int64
		stored   = map[string]bool{"/srv": true} // directories of the VM
	)
	e.srv.SetBefore(func(w http.ResponseWriter, r *http.Request) bool {
		base := "/api/v1/vms/" + vm.ID
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.URL.Path == base+"/fs/stat":
			if !stored[r.URL.Query().Get("path")] {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(404)
				_ = json.NewEncoder(w).Encode(client.ErrorBody{Error: client.ErrorDetail{Code: client.CodePathNotFound, Message: "no such file"}})
				return true
			}
			_ = json.NewEncoder(w).Encode(client.FileInfo{Path: r.URL.Query().Get("path"), Type: client.FileTypeDirectory})
			return true
		case r.URL.Path == base+"/files" && r.Method == http.MethodPut:
			uploaded, _ = io.ReadAll(r.Body)
			upQuery, upLength = r.URL.RawQuery, r.ContentLength
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(client.FileInfo{Path: r.URL.Query().Get("path"), Size: int64(len(uploaded))})
			return true
		case r.URL.Path == base+"/files" && r.Method == http.MethodGet:
			if r.URL.Query().Get("path") != "/srv/app.conf" {
				w.WriteHeader(404)
				return true
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", "6")
			w.Header().Set(client.HeaderFileMode, "0640")
			_, _ = w.Write([]byte("conf=1"))
			return true
		}
		return false
	})

	dir := t.TempDir()
	src := filepath.Join(dir, "tool.sh")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(src, 0o755); err != nil {
		t.Fatal(err)
	}
	// Into a directory of the VM: the file keeps its name and its mode, and its length is announced.
	r := e.run("vm", "cp", "--parents", src, "box:/srv")
	wantCode(t, r, 0)
	mu.Lock()
	if string(uploaded) != "#!/bin/sh\necho hi\n" || upLength != int64(len(uploaded)) ||
		upQuery != "mkdir_parents=true&mode=0755&path=%2Fsrv%2Ftool.sh" {
		t.Errorf("upload: %q, length %d, query %s", uploaded, upLength, upQuery)
	}
	mu.Unlock()

	// Out of the VM into a local directory: written whole, with the VM's mode, and nothing else left.
	out := t.TempDir()
	r = e.run("vm", "cp", "box:/srv/app.conf", out+string(os.PathSeparator))
	wantCode(t, r, 0)
	got := filepath.Join(out, "app.conf")
	b, err := os.ReadFile(got)
	if err != nil || string(b) != "conf=1" {
		t.Fatalf("downloaded %q %v", b, err)
	}
	if st, _ := os.Stat(got); st.Mode().Perm() != 0o640 {
		t.Errorf("downloaded mode %v, want 0640", st.Mode().Perm())
	}
	if entries, _ := os.ReadDir(out); len(entries) != 1 {
		t.Errorf("extra files: %v", entries)
	}
	// A missing file: the API's error, exit 1, and no local file.
	r = e.run("vm", "cp", "box:/srv/missing", filepath.Join(out, "missing"))
	wantCode(t, r, 1)
	if _, err := os.Stat(filepath.Join(out, "missing")); !os.IsNotExist(err) {
		t.Errorf("a failed download left a file: %v", err)
	}
	// A local directory cannot be copied.
	r = e.run("vm", "cp", dir, "box:/srv/")
	wantCode(t, r, 1)
	if !strings.Contains(r.stderr, "is a directory") {
		t.Errorf("directory: %s", r)
	}
}
