//go:build linux

package vmproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"unicode"

	"github.com/aetherium/aetherium/internal/vmm"
)

// eventBuffer is how many events a subscriber that does not read may fall behind before it loses some (the
// worker's resync loop reads each at once; losing one only delays a pass to its period).
const eventBuffer = 64

// ExitWatcher watches the VMM processes of a backend and tells its subscribers (the backend's vmm.VMEvents) when
// one exits on its own: crashed, was OOM-killed, was killed behind the worker's back, or its guest powered off.
// A child of this process is watched through its own Wait (Process.Done), which has the exit status; any other
// process (one adopted after a worker restart) through a pidfd, which needs Linux 5.3: without it adopted VMMs are
// not watched (the worker's periodic resync still finds their end), which is logged once. A deliberate stop or
// delete calls Forget first, so that it produces no event.
type ExitWatcher struct {
	backend string
	log     *slog.Logger
	detail  func(id string) string

	mu      sync.Mutex
	watches map[string]*exitWatch
	exited  map[string]exitRecord // the last exit each VM's watch saw
	subs    map[chan vmm.Event]struct{}
	closed  bool
	warned  bool // pidfds unavailable: said once
}

type exitWatch struct {
	pid    int
	start  uint64
	cancel context.CancelFunc
}

type exitRecord struct {
	pid    int
	start  uint64
	detail string
}

// NewExitWatcher returns a watcher for the processes of the named backend ("qemu"). detail, when not nil, adds
// to an exit's description (the last line of the VM's console, say); it is called without locks held.
func NewExitWatcher(backend string, log *slog.Logger, detail func(id string) string) *ExitWatcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &ExitWatcher{
		backend: backend, log: log, detail: detail,
		watches: make(map[string]*exitWatch), exited: make(map[string]exitRecord),
		subs: make(map[chan vmm.Event]struct{}),
	}
}

// Watch watches VM id's process, pid with start time start (StartTime); child is the Process when this process
// started it (nil for an adopted one). Watching a process already watched does nothing; a new process of the VM
// replaces the old one's watch. A process already gone is reported at once.
func (w *ExitWatcher) Watch(id string, pid int, start uint64, child *Process) {
	if pid <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if cur := w.watches[id]; cur != nil {
		if cur.pid == pid && cur.start == start {
			return
		}
		cur.cancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	wt := &exitWatch{pid: pid, start: start, cancel: cancel}
	w.watches[id] = wt
	go w.run(ctx, id, wt, child)
}

// Forget stops watching VM id: what a deliberate stop or delete calls before it ends the process, so that the end
// is not reported as the VM's own.
func (w *ExitWatcher) Forget(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if wt := w.watches[id]; wt != nil {
		wt.cancel()
		delete(w.watches, id)
	}
	delete(w.exited, id)
}

// Detail returns how VM id's process pid/start ended, as its watch saw it, if it did.
func (w *ExitWatcher) Detail(id string, pid int, start uint64) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.exited[id]
	if !ok || r.pid != pid || r.start != start {
		return "", false
	}
	return r.detail, true
}

// Events implements vmm.VMEvents: a vmm.StateStopped event for each watched process that exits on its own, until
// ctx ends or the watcher is closed, when the channel is closed. A subscriber that falls behind loses events.
func (w *ExitWatcher) Events(ctx context.Context) <-chan vmm.Event {
	c := make(chan vmm.Event, eventBuffer)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		close(c)
		return c
	}
	w.subs[c] = struct{}{}
	context.AfterFunc(ctx, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if _, ok := w.subs[c]; ok {
			delete(w.subs, c)
			close(c)
		}
	})
	return c
}

// Close stops every watch and closes the subscribers' channels. The processes are left alone.
func (w *ExitWatcher) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for id, wt := range w.watches {
		wt.cancel()
		delete(w.watches, id)
	}
	for c := range w.subs {
		delete(w.subs, c)
		close(c)
	}
}

func (w *ExitWatcher) run(ctx context.Context, id string, wt *exitWatch, child *Process) {
	what := fmt.Sprintf("%s process %d", w.backend, wt.pid)
	detail := what + " exited"
	if child != nil && child.PID == wt.pid {
		select {
		case <-child.Done():
		case <-ctx.Done():
			return
		}
		if child.state != nil {
			detail += " (" + child.state.String() + ")"
		} else if child.err != nil {
			detail += " (" + child.err.Error() + ")"
		}
	} else {
		pfd, err := OpenPidfd(wt.pid, wt.start)
		switch {
		case errors.Is(err, ErrGone):
			// It ended before the watch began.
		case errors.Is(err, ErrPidfdUnsupported):
			w.unsupported(err)
			w.drop(id, wt)
			return
		case err != nil:
			w.log.Warn("cannot watch vm process; the periodic resync will notice its end", "vm_id", id,
				"pid", wt.pid, "err", err)
			w.drop(id, wt)
			return
		default:
			err = pfd.Wait(ctx)
			_ = pfd.Close()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				w.log.Warn("watching vm process failed; the periodic resync will notice its end", "vm_id", id,
					"pid", wt.pid, "err", err)
				w.drop(id, wt)
				return
			}
		}
	}
	if w.detail != nil {
		if d := w.detail(id); d != "" {
			detail += "; " + d
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.watches[id] != wt {
		return // forgotten meanwhile: a deliberate stop or delete ended it
	}
	delete(w.watches, id)
	w.exited[id] = exitRecord{pid: wt.pid, start: wt.start, detail: detail}
	w.log.Debug("vm process exited", "vm_id", id, "detail", detail)
	ev := vmm.Event{VMID: id, State: vmm.StateStopped, Detail: detail}
	for c := range w.subs {
		select {
		case c <- ev:
		default:
		}
	}
}

func (w *ExitWatcher) drop(id string, wt *exitWatch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.watches[id] == wt {
		delete(w.watches, id)
	}
}

func (w *ExitWatcher) unsupported(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.warned {
		w.warned = true
		w.log.Warn("cannot watch adopted vm processes for their exit; the periodic resync notices it instead",
			"backend", w.backend, "err", err)
	}
}

// maxConsoleLine bounds the console line LastConsoleLine returns.
const maxConsoleLine = 200

// kernelPanic is how a Linux guest's panic message begins; the lines after it (a stack dump, "Kernel Offset")
// say less about why.
const kernelPanic = "Kernel panic - not syncing"

// LastConsoleLine sums up how a guest's console ended since the last start marker (markerPrefix, the line the
// backend writes before each start): its kernel's panic message as `guest kernel panic: "..."` when it panicked,
// else its last line as `last console line: "..."`; "" when it wrote nothing. The console is the guest's, so the
// line is cut short and quoted: it may hold anything.
func LastConsoleLine(path, markerPrefix string) string {
	tail, err := consoleTail(path, 16<<10)
	if err != nil {
		return ""
	}
	lines := strings.Split(tail, "\n")
	var last string
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(strings.TrimRight(lines[i], "\r"))
		if strings.HasPrefix(l, markerPrefix) {
			break
		}
		if j := strings.Index(l, kernelPanic); j >= 0 {
			return fmt.Sprintf("guest kernel panic: %q", clip(l[j:]))
		}
		if last == "" && strings.IndexFunc(l, func(r rune) bool { return !unicode.IsSpace(r) && unicode.IsPrint(r) }) >= 0 {
			last = l
		}
	}
	if last == "" {
		return ""
	}
	return fmt.Sprintf("last console line: %q", clip(last))
}

func clip(l string) string {
	if r := []rune(l); len(r) > maxConsoleLine {
		return string(r[:maxConsoleLine]) + "…"
	}
	return l
}
