// Package inproc is the in-process event bus of the embedded mode: Publish hands each event to the buffered channel of
// every subscriber of its topic, and drops it for a subscriber whose buffer is full rather than wait for it.
package inproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/aetherium/aetherium/internal/events"
)

// DefaultBuffer is the number of events a subscription holds before new ones are dropped.
const DefaultBuffer = 64

// ErrClosed is returned by a closed Bus.
var ErrClosed = errors.New("event bus closed")

// Option configures a Bus.
type Option func(*Bus)

// WithBuffer sets the per-subscription buffer (values < 1 mean DefaultBuffer).
func WithBuffer(n int) Option {
	return func(b *Bus) {
		if n > 0 {
			b.buffer = n
		}
	}
}

// WithLogger sets the logger that reports dropped events.
func WithLogger(l *slog.Logger) Option {
	return func(b *Bus) {
		if l != nil {
			b.log = l
		}
	}
}

// Bus is an in-process events.Bus. It is safe for concurrent use.
type Bus struct {
	buffer int
	log    *slog.Logger

	// mu guards subs and closed. Publish holds it for reading while it sends (never blocking), and a subscription
	// closes its channel only under the write lock, so a send can never hit a closed channel.
	mu     sync.RWMutex
	subs   map[string]map[*subscription]struct{}
	closed bool
}

var _ events.Bus = (*Bus)(nil)

// New returns an open Bus.
func New(opts ...Option) *Bus {
	b := &Bus{buffer: DefaultBuffer, log: slog.Default(), subs: make(map[string]map[*subscription]struct{})}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Publish delivers e to the current subscribers of topic without blocking.
func (b *Bus) Publish(ctx context.Context, topic string, e events.Event) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publish on %q: %w", topic, err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return fmt.Errorf("publish on %q: %w", topic, ErrClosed)
	}
	for s := range b.subs[topic] {
		select {
		case s.ch <- e:
		default:
			b.log.DebugContext(ctx, "event dropped: subscriber is not keeping up", "topic", topic, "type", e.Type, "subject", e.Subject)
		}
	}
	return nil
}

// Subscribe starts delivery of topic's events; it is effective as soon as it returns.
func (b *Bus) Subscribe(ctx context.Context, topic string) (events.Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe to %q: %w", topic, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("subscribe to %q: %w", topic, ErrClosed)
	}
	s := &subscription{bus: b, topic: topic, ch: make(chan events.Event, b.buffer)}
	if b.subs[topic] == nil {
		b.subs[topic] = make(map[*subscription]struct{})
	}
	b.subs[topic][s] = struct{}{}
	return s, nil
}

// Health reports whether the bus is open.
func (b *Bus) Health(context.Context) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	return nil
}

// Close ends every subscription (their channels are closed) and refuses further use. It is idempotent.
func (b *Bus) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	for topic, set := range b.subs {
		for s := range set {
			close(s.ch)
		}
		delete(b.subs, topic)
	}
	return nil
}

type subscription struct {
	bus   *Bus
	topic string
	ch    chan events.Event
}

func (s *subscription) C() <-chan events.Event { return s.ch }

// Close stops delivery and closes the channel. It is idempotent, and a no-op after the bus closed it.
func (s *subscription) Close() error {
	b := s.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	set, ok := b.subs[s.topic]
	if !ok {
		return nil
	}
	if _, ok := set[s]; !ok {
		return nil
	}
	delete(set, s)
	if len(set) == 0 {
		delete(b.subs, s.topic)
	}
	close(s.ch)
	return nil
}
