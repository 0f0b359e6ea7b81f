package eventlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/store"
)

// Defaults of Follower.
const (
	DefaultPoll      = 2 * time.Second
	DefaultHeartbeat = 15 * time.Second
	// maxPage is how many events one read of the log asks for.
	maxPage = 500
)

// Sink receives what a Follower reads. An error from it ends the follow (the client went away).
type Sink interface {
	// Reset says that the events after the requested position up to horizon were pruned: the client missed some.
	// What follows are the events after horizon.
	Reset(horizon int64) error
	Event(e *store.Event) error
	// Live is called once, when what the log held at the start has been sent; latest is the last id sent (or the
	// position the follow started from).
	Live(latest int64) error
	// Heartbeat is called when nothing was sent for a while, so the connection is seen to be alive.
	Heartbeat() error
}

// Follower reads an owner's event log from a position, then follows it as it grows.
type Follower struct {
	Store store.EventStore
	// Bus carries the wake-ups of Wake; nil: the follower only polls.
	Bus events.Bus
	Log *slog.Logger
	// Poll is how often the log is read without a wake-up (default DefaultPoll); Heartbeat how often the sink is
	// told the stream is idle (default DefaultHeartbeat).
	Poll, Heartbeat time.Duration
}

// Follow sends sink the events f selects after f.After (or, with fromNow, only those appended from now on), then
// every new one as it is appended, until ctx ends (nil is returned then) or the sink or the store fails.
func (fw *Follower) Follow(ctx context.Context, f store.EventFilter, fromNow bool, sink Sink) error {
	if f.OwnerID == "" {
		return errors.New("eventlog: follow: an owner is required")
	}
	log := fw.Log
	if log == nil {
		log = slog.Default()
	}
	// Subscribed before the first read, so that no append between the read and the subscription goes unnoticed.
	var wake <-chan events.Event
	if fw.Bus != nil {
		sub, err := fw.Bus.Subscribe(ctx, Topic(f.OwnerID))
		if err != nil {
			log.WarnContext(ctx, "event log: no wake-ups from the event bus; polling only", "err", err)
		} else {
			defer sub.Close()
			wake = sub.C()
		}
	}
	if f.Limit <= 0 || f.Limit > maxPage {
		f.Limit = maxPage
	}
	horizon, latest, err := fw.Store.Bounds(ctx, f.OwnerID)
	if err != nil {
		return fmt.Errorf("eventlog: follow: %w", err)
	}
	switch {
	case fromNow:
		f.After = latest
	case f.After < horizon:
		if err := sink.Reset(horizon); err != nil {
			return err
		}
		f.After = horizon
	}
	poll := time.NewTicker(orDefault(fw.Poll, DefaultPoll))
	defer poll.Stop()
	hbEvery := orDefault(fw.Heartbeat, DefaultHeartbeat)
	hb := time.NewTimer(hbEvery)
	defer hb.Stop()
	for live := false; ; live = true {
		sent, err := fw.drain(ctx, &f, sink)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !live {
			if err := sink.Live(f.After); err != nil {
				return err
			}
		}
		if sent {
			hb.Reset(hbEvery)
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-wake:
			if !ok {
				wake = nil // the bus closed (shutdown): polling carries on until the request ends
			}
		case <-poll.C:
		case <-hb.C:
			if err := sink.Heartbeat(); err != nil {
				return err
			}
			hb.Reset(hbEvery)
		}
	}
}

// drain sends every event after f.After, advancing it, and reports whether it sent any.
func (fw *Follower) drain(ctx context.Context, f *store.EventFilter, sink Sink) (bool, error) {
	sent := false
	for {
		evs, err := fw.Store.List(ctx, *f)
		if err != nil {
			return sent, fmt.Errorf("eventlog: read the log: %w", err)
		}
		for _, e := range evs {
			if err := sink.Event(e); err != nil {
				return sent, err
			}
			f.After, sent = e.ID, true
		}
		if len(evs) < f.Limit {
			return sent, nil
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Pruner applies a retention to the log periodically.
type Pruner struct {
	Store     store.EventStore
	Retention store.EventRetention
	// Every is the time between two prunes (default 10 minutes).
	Every time.Duration
	Log   *slog.Logger
}

// Run prunes at once and then every p.Every until ctx ends.
func (p Pruner) Run(ctx context.Context) {
	log := p.Log
	if log == nil {
		log = slog.Default()
	}
	t := time.NewTicker(orDefault(p.Every, 10*time.Minute))
	defer t.Stop()
	for {
		n, err := p.Store.Prune(ctx, p.Retention)
		switch {
		case err != nil && ctx.Err() == nil:
			log.WarnContext(ctx, "event log: prune failed; retrying at the next interval", "err", err)
		case n > 0:
			log.DebugContext(ctx, "event log pruned", "events", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
