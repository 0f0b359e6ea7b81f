//go:build linux

package firecracker

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent/server"
)

// The test binary doubles as a fake firecracker: the backend runs a wrapper script that execs this binary with
// AE_FAKE_FC=1 and firecracker's own arguments, so process management (process groups, Pdeathsig, kill on delete,
// orphans) is exercised on a real process. The fake serves the API on --api-sock like Firecracker: 204 on
// success, 400 with {"fault_message": ...} on bad input, where bad input includes any request that does not
// conform to firecracker-api.yaml. Every request is appended to AE_FAKE_LOG/<id>.jsonl with the validator's
// verdict. After InstanceStart it serves the vsock uds_path with the CONNECT handshake and an in-process agent.
//
// AE_FAKE_MODE (comma-separated) changes its behaviour: noagent (the guest never answers and its console shows
// a panic), nopoweroff (the agent refuses poweroff), ignore-cad (Ctrl-Alt-Del does nothing), fault:<path> (PUT
// <path> fails with a fault message).
//
// Started by the fake jailer (jailer_test.go), it runs with AE_FAKE_CHROOTED=1 in the jail directory and
// resolves every path it is given against it, as a chrooted firecracker would: a host path that only works
// outside the jail fails here as it would there. It opens the kernel, drives and log as the real one does, so
// files the jail's uid may not open fail too.

var (
	testSpec    *apiSpec
	testSpecErr error
)

// init pins the fake jailer to the main thread: the parent-death signal the worker set belongs to it, and the
// jailer drops its uid (which clears that signal) and execs on it, as the real, single-threaded jailer does.
func init() {
	if os.Getenv("AE_FAKE_JAILER") == "1" {
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	switch {
	case os.Getenv("AE_FAKE_JAILER") == "1":
		os.Exit(fakeJailerMain(os.Args[1:]))
	case os.Getenv("AE_FAKE_FC") == "1":
		os.Exit(fakeFirecrackerMain(os.Args[1:]))
	case os.Getenv("AE_FC_TEST_WORKER") != "":
		os.Exit(testWorkerMain())
	}
	var p string
	if p, testSpecErr = findSpecPath(); testSpecErr == nil {
		testSpec, testSpecErr = loadSpec(p)
		testSpecPath = p
	}
	code := m.Run()
	if jailTestBin.path != "" {
		_ = os.RemoveAll(filepath.Dir(jailTestBin.path))
	}
	os.Exit(code)
}

var testSpecPath string

// fakeRecord is one line of a fake's request log.
type fakeRecord struct {
	Method    string          `json:"method"`
	Path      string          `json:"path"`
	Body      json.RawMessage `json:"body,omitempty"`
	Violation string          `json:"violation,omitempty"`
	Status    int             `json:"status"`
}

type fakeFC struct {
	id      string
	spec    *apiSpec
	modes   map[string]bool
	logFile *os.File
	console io.Writer

	chrooted bool // started by the jailer: paths are relative to the jail (the working directory)

	mu        sync.Mutex
	booted    bool
	paused    bool
	boot      *bootSource
	vsockPath string
	drives    map[string]string // drive id -> path as given
	// configured names the boot-specific resources set (a snapshot load is refused after any of them).
	configured []string
	dirtyPages bool // machine-config track_dirty_pages, or the load's enable_diff_snapshots
	memMiB     int  // guest memory size
	snapshots  int  // snapshots made: the memory "contents" (see snapshot/create)
	agentSrv   *server.Server
}

// path maps a path firecracker was given to where it is for this process: in a jail, relative to its root.
func (f *fakeFC) path(p string) string {
	if !f.chrooted {
		return p
	}
	return "." + filepath.Clean("/"+p)
}

// openCheck opens path as firecracker would (read-only or read-write), to fail where the jail's uid may not.
func (f *fakeFC) openCheck(p string, flag int) error {
	fh, err := os.OpenFile(f.path(p), flag, 0)
	if err != nil {
		return err
	}
	return fh.Close()
}

func fakeFirecrackerMain(args []string) int {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "", "")
	id := fs.String("id", "anonymous-instance", "")
	// What the jailer adds (src/jailer env.rs exec_command).
	fs.String("start-time-us", "", "")
	fs.String("start-time-cpu-us", "", "")
	fs.String("parent-cpu-time-us", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	spec, err := loadSpec(os.Getenv("AE_FAKE_SPEC"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker: spec:", err)
		return 1
	}
	f := &fakeFC{id: *id, spec: spec, modes: map[string]bool{}, console: os.Stdout, drives: map[string]string{},
		chrooted: os.Getenv("AE_FAKE_CHROOTED") == "1"}
	for _, m := range strings.Split(os.Getenv("AE_FAKE_MODE"), ",") {
		if m != "" {
			f.modes[m] = true
		}
	}
	if dir := os.Getenv("AE_FAKE_LOG"); dir != "" {
		if f.logFile, err = os.OpenFile(dir+"/"+*id+".jsonl", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, "fake firecracker:", err)
			return 1
		}
	}
	l, err := net.Listen("unix", f.path(*apiSock))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		return 1
	}
	fmt.Fprintf(f.console, "fake firecracker %s: API on %s\n", *id, *apiSock)
	_ = http.Serve(l, f)
	return 1
}

func (f *fakeFC) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := fakeRecord{Method: r.Method, Path: r.URL.Path}
	if json.Valid(body) {
		rec.Body = body
	}
	status, fault, after := f.handle(r.Method, r.URL.Path, body, &rec)
	rec.Status = status
	if f.logFile != nil {
		line, _ := json.Marshal(rec)
		_, _ = f.logFile.Write(append(line, '\n'))
	}
	switch {
	case status == http.StatusOK:
		w.Header().Set("Content-Type", "application/json")
		f.mu.Lock()
		state := "Not started"
		if f.booted {
			state = map[bool]string{false: "Running", true: "Paused"}[f.paused]
		}
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]string{"id": f.id, "state": state, "vmm_version": "fake", "app_name": "Firecracker"})
	case status == http.StatusNoContent:
		w.WriteHeader(status)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": fault})
	}
	if flusher, ok := w.(http.Flusher); ok {
		flusher.Flush()
	}
	if after != nil {
		go after()
	}
}

// handle answers one request: status, fault message, and something to do once the answer is sent.
func (f *fakeFC) handle(method, path string, body []byte, rec *fakeRecord) (int, string, func()) {
	if err := f.spec.validate(method, path, body); err != nil {
		rec.Violation = err.Error()
		return http.StatusBadRequest, "spec violation: " + err.Error(), nil
	}
	if method == http.MethodGet && path == "/" {
		return http.StatusOK, "", nil
	}
	if f.modes["fault:"+path] {
		return http.StatusBadRequest, "fake fault on " + path, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	preBoot := func() (int, string, func()) {
		return http.StatusBadRequest, "The requested operation is not supported after starting the microVM.", nil
	}
	switch {
	case method == http.MethodPut && path == "/logger":
		if f.booted {
			return preBoot()
		}
		var lg logger
		_ = json.Unmarshal(body, &lg)
		if err := f.openCheck(lg.LogPath, os.O_WRONLY|os.O_APPEND); err != nil {
			return http.StatusBadRequest, "Cannot open log file: " + err.Error(), nil
		}
	case method == http.MethodPut && path == "/machine-config":
		if f.booted {
			return preBoot()
		}
		var mc machineConfig
		_ = json.Unmarshal(body, &mc)
		f.dirtyPages, f.memMiB = mc.TrackDirtyPages, mc.MemSizeMib
		f.configured = append(f.configured, path)
	case method == http.MethodPut && path == "/boot-source":
		if f.booted {
			return preBoot()
		}
		var bs bootSource
		_ = json.Unmarshal(body, &bs)
		if err := f.openCheck(bs.KernelImagePath, os.O_RDONLY); err != nil {
			return http.StatusBadRequest, "Invalid kernel path: " + err.Error(), nil
		}
		f.boot = &bs
		f.configured = append(f.configured, path)
	case method == http.MethodPut && strings.HasPrefix(path, "/drives/"):
		if f.booted {
			return preBoot()
		}
		var d drive
		_ = json.Unmarshal(body, &d)
		if d.DriveID != strings.TrimPrefix(path, "/drives/") {
			return http.StatusBadRequest, "The id from the path does not match the id from the body!", nil
		}
		flag := os.O_RDWR
		if d.IsReadOnly {
			flag = os.O_RDONLY
		}
		if err := f.openCheck(d.PathOnHost, flag); err != nil {
			return http.StatusBadRequest, "Unable to open block device: " + err.Error(), nil
		}
		f.drives[d.DriveID] = d.PathOnHost
		f.configured = append(f.configured, path)
	case method == http.MethodPut && strings.HasPrefix(path, "/network-interfaces/"):
		if f.booted {
			return preBoot()
		}
		var ni networkInterface
		_ = json.Unmarshal(body, &ni)
		if ni.IfaceID != strings.TrimPrefix(path, "/network-interfaces/") {
			return http.StatusBadRequest, "The id from the path does not match the id from the body!", nil
		}
		// Firecracker opens the TAP here; the fake only checks that one is named.
		if ni.HostDevName == "" {
			return http.StatusBadRequest, "Open tap device failed", nil
		}
		f.configured = append(f.configured, path)
	case method == http.MethodPut && path == "/vsock":
		if f.booted {
			return preBoot()
		}
		var v vsockDevice
		_ = json.Unmarshal(body, &v)
		f.vsockPath = v.UDSPath
		f.configured = append(f.configured, path)
	case method == http.MethodPut && path == "/actions":
		var a instanceAction
		_ = json.Unmarshal(body, &a)
		switch a.ActionType {
		case "InstanceStart":
			if f.booted {
				return http.StatusBadRequest, "The requested operation is not supported after starting the microVM.", nil
			}
			if f.boot == nil {
				return http.StatusBadRequest, "Cannot start microvm without kernel configuration.", nil
			}
			f.booted = true
			fmt.Fprintf(f.console, "Linux version 6.1.0-fake\nCommand line: %s\n", f.boot.BootArgs)
			if f.modes["noagent"] {
				fmt.Fprintln(f.console, "Kernel panic - not syncing: VFS: Unable to mount root fs")
				return http.StatusNoContent, "", nil
			}
			if f.vsockPath != "" {
				if err := f.serveVsock(); err != nil {
					return http.StatusBadRequest, "vsock: " + err.Error(), nil
				}
			}
		case "SendCtrlAltDel":
			if !f.booted {
				return http.StatusBadRequest, "The microVM is not running.", nil
			}
			if !f.modes["ignore-cad"] {
				return http.StatusNoContent, "", func() {
					fmt.Fprintln(f.console, "reboot: Restarting system")
					os.Exit(0)
				}
			}
		}
	case method == http.MethodPatch && path == "/vm":
		if !f.booted {
			return http.StatusBadRequest, "The microVM is not running.", nil
		}
		var s vmStateBody
		_ = json.Unmarshal(body, &s)
		f.paused = s.State == "Paused"
	case method == http.MethodPut && path == "/snapshot/create":
		if !f.booted || !f.paused {
			return http.StatusBadRequest, "Cannot save microVM state: the microVM is not paused", nil
		}
		var s snapshotCreate
		_ = json.Unmarshal(body, &s)
		if s.SnapshotType == SnapshotDiff && !f.dirtyPages {
			return http.StatusBadRequest, "Diff snapshots are not allowed on uVMs with dirty page tracking disabled.", nil
		}
		state, _ := json.Marshal(map[string]any{"vsock": f.vsockPath, "boot_args": f.boot.BootArgs, "drives": f.drives,
			"mem_mib": f.memMiB})
		if err := os.WriteFile(f.path(s.SnapshotPath), state, 0o600); err != nil {
			return http.StatusBadRequest, err.Error(), nil
		}
		// Guest memory as a file of the guest's size: a Full snapshot holds every page (here: page 0 and page
		// 256 say which snapshot wrote them), a Diff only the pages dirtied since the last snapshot, holes
		// elsewhere (here: page 256), as Firecracker writes them.
		f.snapshots++
		if err := f.writeMemory(f.path(s.MemFilePath), s.SnapshotType == SnapshotDiff); err != nil {
			return http.StatusBadRequest, err.Error(), nil
		}
	case method == http.MethodPut && path == "/snapshot/load":
		// "Only accepted on a fresh Firecracker process (before configuring any resource other than the Logger
		// and Metrics)" (firecracker-api.yaml).
		if f.booted || len(f.configured) > 0 {
			return http.StatusBadRequest, "Loading a microVM snapshot not allowed after configuring boot-specific resources.", nil
		}
		var s snapshotLoad
		_ = json.Unmarshal(body, &s)
		data, err := os.ReadFile(f.path(s.SnapshotPath))
		if err != nil {
			return http.StatusBadRequest, "Cannot load snapshot: " + err.Error(), nil
		}
		if err := f.openCheck(s.MemBackend.BackendPath, os.O_RDONLY); err != nil {
			return http.StatusBadRequest, "Cannot load memory: " + err.Error(), nil
		}
		var saved struct {
			Vsock    string            `json:"vsock"`
			BootArgs string            `json:"boot_args"`
			Drives   map[string]string `json:"drives"`
			MemMiB   int               `json:"mem_mib"`
		}
		_ = json.Unmarshal(data, &saved)
		// The restored devices reopen their backing files at the paths the snapshot recorded.
		for id, p := range saved.Drives {
			if err := f.openCheck(p, os.O_RDWR); err != nil {
				return http.StatusBadRequest, fmt.Sprintf("Cannot restore drive %s: %v", id, err), nil
			}
		}
		// Firecracker loads only a complete memory file: one of the guest's size whose first page is there.
		if fi, err := os.Stat(f.path(s.MemBackend.BackendPath)); err != nil || fi.Size() != int64(saved.MemMiB)<<20 {
			return http.StatusBadRequest, "Cannot load memory: the memory file does not match the guest's size", nil
		}
		if page0, err := readPage(f.path(s.MemBackend.BackendPath), 0); err != nil || page0[0] == 0 {
			return http.StatusBadRequest, "Cannot load memory: the memory file is not complete (a diff?)", nil
		}
		f.booted, f.paused, f.vsockPath, f.drives = true, !s.ResumeVM, saved.Vsock, saved.Drives
		f.dirtyPages, f.memMiB = s.EnableDiffSnapshots, saved.MemMiB
		f.boot = &bootSource{BootArgs: saved.BootArgs}
		fmt.Fprintln(f.console, "restored from snapshot")
		if err := f.serveVsock(); err != nil {
			return http.StatusBadRequest, "vsock: " + err.Error(), nil
		}
	}
	return http.StatusNoContent, "", nil
}

// fakePage is the fake guest's page size.
const fakePage = 4096

// writeMemory writes the fake guest's memory to path: a file of its size, with "snapshot <n>" on page 256 and,
// unless it is a diff, on page 0 too.
func (f *fakeFC) writeMemory(path string, diff bool) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := fh.Truncate(int64(f.memMiB) << 20); err != nil {
		return err
	}
	page := make([]byte, fakePage)
	copy(page, fmt.Sprintf("snapshot %d", f.snapshots))
	if !diff {
		if _, err := fh.WriteAt(page, 0); err != nil {
			return err
		}
	}
	_, err = fh.WriteAt(page, 256*fakePage)
	return err
}

// readPage reads page n of a memory file.
func readPage(path string, n int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	page := make([]byte, fakePage)
	_, err = fh.ReadAt(page, n*fakePage)
	return page, err
}

// chanListener hands the connections that passed the CONNECT handshake to the agent server.
type chanListener struct {
	ch   chan net.Conn
	addr net.Addr
	once sync.Once
	done chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// serveVsock listens on uds_path like Firecracker's vsock device: "CONNECT <port>\n" to the agent's port gets
// "OK <n>\n" and the agent; any other port is closed without a word (the guest reset it).
func (f *fakeFC) serveVsock() error {
	l, err := net.Listen("unix", f.path(f.vsockPath))
	if err != nil {
		return err
	}
	cfg := server.Config{Version: "fake-guest"}
	if !f.modes["nopoweroff"] {
		cfg.PowerOff = func() error {
			fmt.Fprintln(f.console, "reboot: Power down")
			// The agent has answered; the guest powers off a moment later, and Firecracker exits.
			go func() {
				time.Sleep(20 * time.Millisecond)
				os.Exit(0)
			}()
			return nil
		}
	}
	srv := server.New(cfg)
	agentL := &chanListener{ch: make(chan net.Conn), addr: l.Addr(), done: make(chan struct{})}
	go func() { _ = srv.Serve(agentL) }()
	go func() {
		hostPort := 1 << 30
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			hostPort++
			go func(c net.Conn, n int) {
				br := bufio.NewReaderSize(c, 64)
				line, err := br.ReadString('\n')
				port, perr := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "CONNECT ")))
				if err != nil || perr != nil || !strings.HasPrefix(line, "CONNECT ") || port != DefaultAgentPort {
					_ = c.Close()
					return
				}
				if _, err := fmt.Fprintf(c, "OK %d\n", n); err != nil {
					_ = c.Close()
					return
				}
				// The host writes nothing before it has read OK, so the reader holds no extra bytes.
				agentL.ch <- c
			}(c, hostPort)
		}
	}()
	return nil
}
