// Package activity tracks what happens in a worker's VMs, for their idle timeouts (issue 15; docs/architecture.md,
// "VM lifetimes"): the last time something happened in each, and whether something is going on right now (a
// command, a shell, a file transfer, an agent run), which keeps a VM from being reaped however long it lasts.
//
// The worker's handlers and its internal API record activity here, in memory: output arrives a few bytes at a
// time, and a database write per write would cost more than the work. The worker saves the newest times to the
// store in batches (Unsaved, MarkSaved), so that a restarted worker neither reaps a VM at once nor forgets it.
// API reads never count: polling a VM must not keep it alive.
package activity

import (
	"io"
	"sync"
	"time"
)

// Tracker is the activity of one worker's VMs. Its zero value is not usable; use New. It is safe for concurrent use.
type Tracker struct {
	mu  sync.Mutex
	vms map[string]*vm
	now func() time.Time
}

type vm struct {
	last  time.Time // last activity
	saved time.Time // last activity written to the store
	busy  int       // activities in progress
}

// New returns an empty tracker.
func New() *Tracker { return &Tracker{vms: make(map[string]*vm), now: time.Now} }

func (t *Tracker) get(id string) *vm {
	v := t.vms[id]
	if v == nil {
		v = &vm{}
		t.vms[id] = v
	}
	return v
}

// Touch records activity in VM id now.
func (t *Tracker) Touch(id string) {
	n := t.now()
	t.mu.Lock()
	if v := t.get(id); n.After(v.last) {
		v.last = n
	}
	t.mu.Unlock()
}

// Begin records an activity that lasts until the returned end is called (once; more calls do nothing). While it
// lasts the VM is Busy; its start and its end count as activity.
func (t *Tracker) Begin(id string) (end func()) {
	t.Touch(id)
	t.mu.Lock()
	t.get(id).busy++
	t.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			t.mu.Lock()
			t.get(id).busy--
			t.mu.Unlock()
			t.Touch(id)
		})
	}
}

// Busy reports whether an activity of VM id is in progress.
func (t *Tracker) Busy(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := t.vms[id]
	return v != nil && v.busy > 0
}

// Last is the last activity recorded for VM id (zero: none since this tracker was made).
func (t *Tracker) Last(id string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v := t.vms[id]; v != nil {
		return v.last
	}
	return time.Time{}
}

// Seed records at as VM id's activity if it is newer than what the tracker has (a time read from the store: a
// keepalive, or what an earlier worker process saved); it counts as saved.
func (t *Tracker) Seed(id string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := t.get(id)
	if at.After(v.last) {
		v.last = at
	}
	if at.After(v.saved) {
		v.saved = at
	}
}

// Unsaved returns the VMs whose last activity is newer than what was saved for them, with that activity.
func (t *Tracker) Unsaved() map[string]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]time.Time)
	for id, v := range t.vms {
		if v.last.After(v.saved) {
			out[id] = v.last
		}
	}
	return out
}

// MarkSaved records that VM id's activity up to at is in the store.
func (t *Tracker) MarkSaved(id string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v := t.vms[id]; v != nil && at.After(v.saved) {
		v.saved = at
	}
}

// Forget drops VM id (deleted), unless an activity of it is still in progress.
func (t *Tracker) Forget(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v := t.vms[id]; v != nil && v.busy == 0 {
		delete(t.vms, id)
	}
}

// Writer returns a writer that passes everything to w (nil: discards it) and counts each write as activity of
// VM id: a command printing is a VM at work.
func (t *Tracker) Writer(id string, w io.Writer) io.Writer { return &writer{t: t, id: id, w: w} }

type writer struct {
	t  *Tracker
	id string
	w  io.Writer
}

func (w *writer) Write(p []byte) (int, error) {
	if len(p) > 0 {
		w.t.Touch(w.id)
	}
	if w.w == nil {
		return len(p), nil
	}
	return w.w.Write(p)
}
