// Package redisbus is the production event bus: events are JSON messages on Redis pub/sub channels named
// <prefix><topic>, so every gateway and worker sharing the Redis sees every event.
//
// Redis pub/sub is fire-and-forget: a subscriber that is disconnected or too slow misses events. That matches the
// events.Bus contract (the store stays the source of truth), and a subscription's channel drops events rather than
// let a slow reader hold up the connection.
package redisbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/events"
)

// DefaultPrefix is prepended to topics to form Redis channel names.
const DefaultPrefix = "aetherium:events:"

// DefaultBuffer is the number of events a subscription holds before new ones are dropped.
const DefaultBuffer = 64

// ErrClosed is returned by a closed Bus.
var ErrClosed = errors.New("event bus closed")

// Option configures a Bus.
type Option func(*Bus)

// WithPrefix sets the channel prefix, which lets several deployments (or test runs) share one Redis.
func WithPrefix(p string) Option { return func(b *Bus) { b.prefix = p } }

// WithBuffer sets the per-subscription buffer (values < 1 mean DefaultBuffer).
func WithBuffer(n int) Option {
	return func(b *Bus) {
		if n > 0 {
			b.buffer = n
		}
	}
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option {
	return func(b *Bus) {
		if l != nil {
			b.log = l
		}
	}
}

// Bus is an events.Bus on Redis pub/sub. It is safe for concurrent use.
type Bus struct {
	client redis.UniversalClient
	owned  bool // Close closes client
	prefix string
	buffer int
	log    *slog.Logger

	mu     sync.Mutex
	subs   map[*subscription]struct{}
	closed bool
}

var _ events.Bus = (*Bus)(nil)

// New returns a Bus over client. The caller keeps ownership of client: Close does not close it.
func New(client redis.UniversalClient, opts ...Option) *Bus {
	b := &Bus{
		client: client, prefix: DefaultPrefix, buffer: DefaultBuffer, log: slog.Default(),
		subs: make(map[*subscription]struct{}),
	}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Open connects to the Redis at url (redis://[user:password@]host:port/db) and returns a Bus that owns the
// connection. It does not check that Redis answers; use Health for that.
func Open(url string, opts ...Option) (*Bus, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis event bus: %w", err)
	}
	b := New(redis.NewClient(o), opts...)
	b.owned = true
	return b, nil
}

func (b *Bus) channel(topic string) string { return b.prefix + topic }

func (b *Bus) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Publish sends e as JSON on topic's channel.
func (b *Bus) Publish(ctx context.Context, topic string, e events.Event) error {
	if b.isClosed() {
		return fmt.Errorf("publish on %q: %w", topic, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publish on %q: %w", topic, err)
	}
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("publish on %q: encode event: %w", topic, err)
	}
	if err := b.client.Publish(ctx, b.channel(topic), data).Err(); err != nil {
		return fmt.Errorf("publish on %q: %w", topic, err)
	}
	return nil
}

// Subscribe subscribes to topic's channel and returns once Redis has confirmed the subscription, so that any event
// published after it returns is delivered.
func (b *Bus) Subscribe(ctx context.Context, topic string) (events.Subscription, error) {
	if b.isClosed() {
		return nil, fmt.Errorf("subscribe to %q: %w", topic, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe to %q: %w", topic, err)
	}
	ps := b.client.Subscribe(ctx, b.channel(topic))
	// The first reply on a fresh pub/sub connection is the confirmation of SUBSCRIBE (or the error that prevented it).
	reply, err := ps.Receive(ctx)
	if err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("subscribe to %q: %w", topic, err)
	}
	if _, ok := reply.(*redis.Subscription); !ok {
		_ = ps.Close()
		return nil, fmt.Errorf("subscribe to %q: unexpected reply %T", topic, reply)
	}

	s := &subscription{bus: b, topic: topic, ps: ps, out: make(chan events.Event, b.buffer), done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = ps.Close()
		return nil, fmt.Errorf("subscribe to %q: %w", topic, ErrClosed)
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()

	// go-redis's channel reconnects and resubscribes after network errors and pings an idle connection; it closes
	// when ps is closed. Its buffer is kept small: ours (out) is the one that drops.
	go s.forward(ps.Channel(redis.WithChannelSize(1)))
	return s, nil
}

// Health pings Redis.
func (b *Bus) Health(ctx context.Context) error {
	if b.isClosed() {
		return ErrClosed
	}
	if err := b.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis event bus: %w", err)
	}
	return nil
}

// Close ends every subscription and, when the Bus owns its connection, closes it. It is idempotent.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()

	var errs []error
	for _, s := range subs {
		errs = append(errs, s.Close())
	}
	if b.owned {
		errs = append(errs, b.client.Close())
	}
	return errors.Join(errs...)
}

type subscription struct {
	bus   *Bus
	topic string
	ps    *redis.PubSub
	out   chan events.Event
	done  chan struct{} // closed when forward has returned (and out is closed)
	once  sync.Once
	err   error
}

func (s *subscription) C() <-chan events.Event { return s.out }

// forward decodes messages into events and hands them on without blocking; it closes out when in closes.
func (s *subscription) forward(in <-chan *redis.Message) {
	defer close(s.done)
	defer close(s.out)
	for m := range in {
		var e events.Event
		if err := json.Unmarshal([]byte(m.Payload), &e); err != nil {
			s.bus.log.Warn("ignoring an undecodable event", "channel", m.Channel, "err", err)
			continue
		}
		select {
		case s.out <- e:
		default:
			s.bus.log.Debug("event dropped: subscriber is not keeping up", "topic", s.topic, "type", e.Type, "subject", e.Subject)
		}
	}
}

// Close unsubscribes, waits for the delivery goroutine to end and closes C. It is idempotent.
func (s *subscription) Close() error {
	s.once.Do(func() {
		s.bus.mu.Lock()
		delete(s.bus.subs, s)
		s.bus.mu.Unlock()
		if err := s.ps.Close(); err != nil {
			s.err = fmt.Errorf("unsubscribe from %q: %w", s.topic, err)
		}
		<-s.done
	})
	return s.err
}
