// Package redisbus is the production event bus: events are JSON messages on Redis pub/sub channels named
// <prefix><topic>, so every gateway and worker sharing the Redis sees every event.
//
// A Bus multiplexes all its subscriptions over one pub/sub connection: a router goroutine reads it and hands each
// message to the local subscribers of its channel. A channel is subscribed in Redis when its first local subscriber
// arrives and unsubscribed when the last one leaves, so a gateway holding 500 `?wait` requests and 200 SSE streams
// holds one Redis connection for them, not 700.
//
// Redis pub/sub is fire-and-forget: events published while the connection is down are lost, and a subscriber too
// slow to keep up loses events (its buffer is bounded; the router never waits for it). That matches the events.Bus
// contract: the store stays the source of truth. When the connection breaks (a Redis restart), go-redis dials again
// and subscribes every channel again; the subscriptions stay open and keep receiving once it is back. A connection
// that goes silent (a peer gone without a reset) is noticed by pings and replaced.
package redisbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/events"
)

// DefaultPrefix is prepended to topics to form Redis channel names.
const DefaultPrefix = "aetherium:events:"

// DefaultBuffer is the number of events a subscription holds before new ones are dropped.
const DefaultBuffer = 64

// DefaultPingInterval is how long the pub/sub connection may be idle before the router pings Redis. A connection
// that answers nothing, not even pings, for three intervals is replaced by a new one.
const DefaultPingInterval = 5 * time.Second

const (
	// opTimeout bounds each command written on the pub/sub connection (SUBSCRIBE, UNSUBSCRIBE, PING).
	opTimeout = 5 * time.Second
	// confirmTimeout bounds how long Subscribe waits for Redis to confirm a subscription.
	confirmTimeout = 10 * time.Second
	// confirmPrefix starts the payload of the PING that confirms a subscription (see confirm).
	confirmPrefix = "aetherium-confirm-"
)

// ErrClosed is returned by a closed Bus.
var ErrClosed = errors.New("event bus closed")

// errConnLost tells a Subscribe waiting for its confirmation that the connection broke meanwhile: it asks again.
var errConnLost = errors.New("redis pub/sub connection lost")

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

// WithPingInterval sets the idle time after which the pub/sub connection is pinged (values <= 0 mean
// DefaultPingInterval).
func WithPingInterval(d time.Duration) Option {
	return func(b *Bus) {
		if d > 0 {
			b.pingEvery = d
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
	client    redis.UniversalClient
	owned     bool // Close closes client
	prefix    string
	buffer    int
	pingEvery time.Duration
	log       *slog.Logger
	quit      chan struct{} // closed by Close

	// opMu serialises the commands written on the pub/sub connection with the changes of topics that decide them,
	// so Redis sees SUBSCRIBE and UNSUBSCRIBE of a channel in the order the local subscriptions came and went. It
	// also guards ps and routerDone. Taken before mu, never after.
	opMu       sync.Mutex
	ps         *redis.PubSub // nil until the first Subscribe
	routerDone chan struct{} // closed when the router has returned

	mu      sync.Mutex
	topics  map[string]map[*subscription]struct{} // Redis channel -> its local subscribers
	waiters map[string]chan error                 // PING payload -> the Subscribe waiting for its answer
	seq     uint64
	closed  bool
}

var _ events.Bus = (*Bus)(nil)

// New returns a Bus over client. The caller keeps ownership of client: Close does not close it. Nothing connects
// until the first Publish or Subscribe.
func New(client redis.UniversalClient, opts ...Option) *Bus {
	b := &Bus{
		client: client, prefix: DefaultPrefix, buffer: DefaultBuffer, pingEvery: DefaultPingInterval,
		log: slog.Default(), quit: make(chan struct{}),
		topics: make(map[string]map[*subscription]struct{}), waiters: make(map[string]chan error),
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

// opContext bounds one command on the shared connection. It never derives from a caller's context: a caller that
// gives up half way through a write would break the connection of every subscriber.
func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

// Publish sends e as JSON on topic's channel (over the client's pool, not the pub/sub connection).
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

// Subscribe adds a local subscriber to topic's channel, subscribing the channel in Redis if it is the first, and
// returns once Redis has confirmed the subscription, so that any event published after it returns is delivered.
func (b *Bus) Subscribe(ctx context.Context, topic string) (events.Subscription, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe to %q: %w", topic, err)
	}
	ch := b.channel(topic)
	s := &subscription{bus: b, topic: topic, channel: ch, out: make(chan events.Event, b.buffer)}
	b.opMu.Lock()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.opMu.Unlock()
		return nil, fmt.Errorf("subscribe to %q: %w", topic, ErrClosed)
	}
	set := b.topics[ch]
	first := set == nil
	if first {
		set = make(map[*subscription]struct{})
		b.topics[ch] = set
	}
	set[s] = struct{}{}
	b.mu.Unlock()
	b.startLocked()
	var err error
	if first {
		octx, cancel := opContext()
		err = b.ps.Subscribe(octx, ch)
		cancel()
	}
	b.opMu.Unlock()
	if err == nil {
		err = b.confirm(ctx)
	}
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("subscribe to %q: %w", topic, err)
	}
	return s, nil
}

// startLocked makes the pub/sub connection and starts the router, once. opMu is held.
func (b *Bus) startLocked() {
	if b.ps != nil {
		return
	}
	b.ps = b.client.Subscribe(context.Background())
	b.routerDone = make(chan struct{})
	go b.route()
}

// confirm returns once Redis has processed everything written on the pub/sub connection before it was called.
// It sends a PING with a payload of its own after the caller's SUBSCRIBE: Redis answers commands of a connection
// in order, so the answer proves the channel subscribed. That holds across reconnections too, because go-redis
// subscribes every channel it was asked for (even when the write of that SUBSCRIBE failed) on a new connection
// before anything else is written on it. If the connection breaks before the answer, it asks again.
func (b *Bus) confirm(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return ErrClosed
		}
		b.seq++
		token := confirmPrefix + strconv.FormatUint(b.seq, 10)
		answer := make(chan error, 1)
		b.waiters[token] = answer
		b.mu.Unlock()

		b.opMu.Lock()
		octx, ocancel := opContext()
		err := b.ps.Ping(octx, token)
		ocancel()
		b.opMu.Unlock()
		if err != nil {
			b.forget(token)
			return fmt.Errorf("confirm the subscription: %w", err)
		}
		select {
		case err := <-answer:
			if err == nil {
				return nil
			}
			if !errors.Is(err, errConnLost) || attempt == 3 {
				return fmt.Errorf("confirm the subscription: %w", err)
			}
		case <-ctx.Done():
			b.forget(token)
			return fmt.Errorf("confirm the subscription: %w", ctx.Err())
		}
	}
}

func (b *Bus) forget(token string) {
	b.mu.Lock()
	delete(b.waiters, token)
	b.mu.Unlock()
}

// route reads the pub/sub connection until Close: messages go to the local subscribers of their channel, PING
// answers to the Subscribe waiting for them. It never blocks on a subscriber.
func (b *Bus) route() {
	defer close(b.routerDone)
	silent := 0               // consecutive ping intervals without anything read
	var backoff time.Duration // > 0 while the connection is failing
	for {
		b.opMu.Lock()
		ps := b.ps
		b.opMu.Unlock()
		msg, err := ps.ReceiveTimeout(context.Background(), b.pingEvery)
		if b.isClosed() {
			return
		}
		if err != nil {
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				// Nothing came for an interval. Ping; if even pings go unanswered the peer is gone without TCP
				// having noticed (no reset): replace the connection.
				if silent++; silent >= 3 {
					b.log.Warn("event bus: redis pub/sub connection silent; replacing it", "silent_for", time.Duration(silent)*b.pingEvery)
					b.replace(ps)
					silent = 0
					continue
				}
				b.opMu.Lock()
				octx, cancel := opContext()
				_ = ps.Ping(octx, "aetherium-health")
				cancel()
				b.opMu.Unlock()
				continue
			}
			// The connection broke or cannot be made. go-redis dials again (and subscribes every channel again) on
			// the next receive; meanwhile waiting Subscribes must ask again, their PING may be lost.
			b.lost(errConnLost)
			if backoff == 0 {
				b.log.Warn("event bus: redis pub/sub connection lost; reconnecting (events published meanwhile are lost)", "err", err)
			}
			backoff = min(max(2*backoff, 50*time.Millisecond), 2*time.Second)
			select {
			case <-b.quit:
				return
			case <-time.After(backoff):
			}
			continue
		}
		if backoff > 0 {
			b.log.Info("event bus: redis pub/sub connection restored")
			backoff = 0
		}
		silent = 0
		switch m := msg.(type) {
		case *redis.Message:
			b.dispatch(m)
		case *redis.Pong:
			b.answer(m.Payload)
		case *redis.Subscription:
			// Confirmations of SUBSCRIBE and UNSUBSCRIBE are not matched to callers: the PING after them is (confirm).
		}
	}
}

// replace swaps a silent pub/sub connection for a new one subscribed to every channel with local subscribers.
func (b *Bus) replace(old *redis.PubSub) {
	b.opMu.Lock()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.opMu.Unlock()
		return
	}
	chans := make([]string, 0, len(b.topics))
	for ch := range b.topics {
		chans = append(chans, ch)
	}
	b.mu.Unlock()
	ps := b.client.Subscribe(context.Background())
	if len(chans) > 0 {
		octx, cancel := opContext()
		if err := ps.Subscribe(octx, chans...); err != nil {
			// go-redis keeps the channels and subscribes them when the router's next receive connects.
			b.log.Debug("event bus: subscribe on the new connection failed; retried on connect", "err", err)
		}
		cancel()
	}
	b.ps = ps
	b.opMu.Unlock()
	_ = old.Close()
	b.lost(errConnLost)
}

// lost tells every waiting Subscribe that its PING may never be answered.
func (b *Bus) lost(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for token, w := range b.waiters {
		w <- err
		delete(b.waiters, token)
	}
}

func (b *Bus) answer(payload string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w, ok := b.waiters[payload]; ok {
		w <- nil
		delete(b.waiters, payload)
	}
}

// dispatch decodes a message once and offers it to every local subscriber of its channel without waiting: a full
// buffer loses the event (the subscriber recovers from the store), it never holds up the others.
func (b *Bus) dispatch(m *redis.Message) {
	b.mu.Lock()
	n := len(b.topics[m.Channel])
	b.mu.Unlock()
	if n == 0 {
		return // unsubscribed meanwhile
	}
	var e events.Event
	if err := json.Unmarshal([]byte(m.Payload), &e); err != nil {
		b.log.Warn("ignoring an undecodable event", "channel", m.Channel, "err", err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.topics[m.Channel] {
		select {
		case s.out <- e:
		default:
			b.log.Debug("event dropped: subscriber is not keeping up", "topic", s.topic, "type", e.Type, "subject", e.Subject)
		}
	}
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

// Close ends every subscription (their channels are closed), closes the pub/sub connection and, when the Bus owns
// its client, the client. It is idempotent.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	for ch, set := range b.topics {
		for s := range set {
			close(s.out)
		}
		delete(b.topics, ch)
	}
	for token, w := range b.waiters {
		w <- ErrClosed
		delete(b.waiters, token)
	}
	b.mu.Unlock()
	close(b.quit)

	// Taking opMu waits for a Subscribe or a replace in progress, so the connection read here is the last one.
	b.opMu.Lock()
	ps, done := b.ps, b.routerDone
	b.opMu.Unlock()
	var errs []error
	if ps != nil {
		if err := ps.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
			errs = append(errs, fmt.Errorf("redis event bus: close the pub/sub connection: %w", err))
		}
		<-done
	}
	if b.owned {
		errs = append(errs, b.client.Close())
	}
	return errors.Join(errs...)
}

type subscription struct {
	bus     *Bus
	topic   string
	channel string
	out     chan events.Event // closed, under the bus's mu, when the subscription ends
}

func (s *subscription) C() <-chan events.Event { return s.out }

// Close ends the subscription and closes C; the last subscription of a channel unsubscribes it in Redis. It is
// idempotent, and a no-op once the bus has closed.
func (s *subscription) Close() error {
	b := s.bus
	b.opMu.Lock()
	defer b.opMu.Unlock()
	b.mu.Lock()
	set := b.topics[s.channel]
	if _, ok := set[s]; !ok {
		b.mu.Unlock()
		return nil
	}
	delete(set, s)
	close(s.out)
	last := len(set) == 0
	if last {
		delete(b.topics, s.channel)
	}
	b.mu.Unlock()
	if last && b.ps != nil {
		octx, cancel := opContext()
		defer cancel()
		if err := b.ps.Unsubscribe(octx, s.channel); err != nil {
			// go-redis has forgotten the channel all the same: the next connection does not subscribe it again,
			// and until then its messages find no subscriber here and are dropped.
			b.log.Debug("event bus: unsubscribe failed; the channel is dropped on reconnect", "channel", s.channel, "err", err)
		}
	}
	return nil
}

// Prefix is the prefix of the bus's channel names.
func (b *Bus) Prefix() string { return b.prefix }
