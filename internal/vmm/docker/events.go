package docker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/aetherium/aetherium/internal/vmm"
)

// eventBuffer is how many events a subscriber that does not read may fall behind before it loses some (the
// worker's resync loop reads each at once; a lost one only delays a pass to its period).
const eventBuffer = 64

// expectedFor is how long a die after this backend's own stop or removal of a container is taken for that stop.
const expectedFor = 2 * time.Minute

// resumeWithin bounds how old a broken stream's end may be for the next subscription to replay the engine's
// events from it (the engine keeps only its last events); an older gap the worker's periodic resync has covered
// already.
const resumeWithin = time.Minute

// eventState is what Events needs across subscriptions.
type eventState struct {
	mu       sync.Mutex
	done     chan struct{}        // closed by Close
	expected map[string]time.Time // vm id -> when this backend began to stop or remove its container
	resume   time.Time            // when the last stream broke
}

// expectDie records that this backend is about to stop or remove VM id's container: the die that follows is its
// own doing, not an event.
func (b *Backend) expectDie(id string) {
	s := &b.ev
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.expected == nil {
		s.expected = make(map[string]time.Time)
	}
	for k, at := range s.expected {
		if now.Sub(at) > expectedFor {
			delete(s.expected, k)
		}
	}
	s.expected[id] = now
}

// unexpectDie forgets an expectDie: the VM's container is started again, and its next die is news.
func (b *Backend) unexpectDie(id string) {
	s := &b.ev
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.expected, id)
}

// expected reports (and forgets) whether a die of VM id was this backend's own doing.
func (b *Backend) expected(id string) bool {
	s := &b.ev
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.expected[id]
	delete(s.expected, id)
	return ok && time.Since(at) <= expectedFor
}

// Events implements vmm.VMEvents with the engine's event stream: a container of this worker and installation
// that dies on its own (its agent exited or crashed, it was OOM-killed, killed with `docker kill`) is an event,
// with its exit code and whether the kernel's OOM killer struck; a container this backend stopped or removed is
// none. The channel is closed when ctx ends, the backend is closed, or the stream breaks (the engine restarted):
// the worker subscribes again later, and that subscription replays what the engine published since the break.
func (b *Backend) Events(ctx context.Context) <-chan vmm.Event {
	out := make(chan vmm.Event, eventBuffer)
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		close(out)
		return out
	}
	f := filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("event", string(events.ActionDie)),
		filters.Arg("event", string(events.ActionOOM)),
		filters.Arg("label", LabelManaged+"=true"),
		filters.Arg("label", LabelWorkerID+"="+b.cfg.WorkerID),
	)
	if b.cfg.InstallationID != "" {
		f.Add("label", LabelInstallationID+"="+b.cfg.InstallationID)
	}
	// The stream starts now, whenever the engine gets to answer (the caller does not wait for it), or where
	// the last one broke.
	since := time.Now()
	b.ev.mu.Lock()
	if !b.ev.resume.IsZero() && time.Since(b.ev.resume) < resumeWithin {
		since = b.ev.resume
	}
	b.ev.resume = time.Time{}
	b.ev.mu.Unlock()
	opts := events.ListOptions{Filters: f, Since: fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond())}

	sctx, cancel := context.WithCancel(ctx)
	go func() {
		defer close(out)
		defer cancel()
		msgs, errs := b.cli.Events(sctx, opts)
		oom := map[string]bool{} // container ids the OOM killer struck, until their die
		for {
			select {
			case <-sctx.Done():
				return
			case <-b.ev.done:
				return
			case err := <-errs:
				if ctx.Err() == nil {
					b.ev.mu.Lock()
					b.ev.resume = time.Now()
					b.ev.mu.Unlock()
					b.log.Debug("engine event stream ended; the worker subscribes again", "err", err)
				}
				return
			case m := <-msgs:
				ev, ok := b.vmEvent(m, oom)
				if !ok {
					continue
				}
				select {
				case out <- ev:
				default: // a reader that falls behind loses events; its periodic resync catches up
				}
			}
		}
	}()
	return out
}

// vmEvent turns an engine event into a VM event: a die not of this backend's doing; an OOM kill is remembered
// for the die that follows (the kernel may also kill a process other than the agent, and the container lives
// on).
func (b *Backend) vmEvent(m events.Message, oom map[string]bool) (vmm.Event, bool) {
	attrs := m.Actor.Attributes
	id := attrs[LabelVMID]
	if id == "" || checkID(id) != nil || attrs[LabelManaged] != "true" || attrs[LabelWorkerID] != b.cfg.WorkerID ||
		attrs[LabelInstallationID] != b.cfg.InstallationID {
		return vmm.Event{}, false
	}
	switch m.Action {
	case events.ActionOOM:
		oom[m.Actor.ID] = true
		return vmm.Event{}, false
	case events.ActionDie:
	default:
		return vmm.Event{}, false
	}
	oomKilled := oom[m.Actor.ID] || attrs["oomKilled"] == "true"
	delete(oom, m.Actor.ID)
	if b.expected(id) {
		return vmm.Event{}, false
	}
	detail := "container died"
	if code, err := strconv.Atoi(attrs["exitCode"]); err == nil {
		detail = fmt.Sprintf("container died, exit code %d", code)
		if code > 128 && code < 128+65 {
			detail += fmt.Sprintf(" (signal %d)", code-128)
		}
	}
	if oomKilled {
		detail += ", OOM killed"
	}
	return vmm.Event{VMID: id, State: vmm.StateStopped, Detail: detail}, true
}
