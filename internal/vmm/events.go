package vmm

import "context"

// Event is a backend's notice that one of its VMs changed state on its own: its process exited, it was
// OOM-killed, its container died.
type Event struct {
	VMID   string
	State  State
	Detail string // why, when the backend knows (exit status, OOM kill)
}

// VMEvents is implemented by backends that can tell when a VM stops behind the worker's back (Docker's events,
// say). It is optional: the worker's resync loop compares the store with ListVMs every few seconds anyway, and
// treats an event only as a reason to look again at once, never as the truth.
type VMEvents interface {
	// Events delivers events until ctx ends or the source fails; the channel is then closed (the worker
	// subscribes again later). Slow readers may lose events.
	Events(ctx context.Context) <-chan Event
}
