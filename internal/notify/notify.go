// Package notify turns events of the bus into notifications of the owners' rules, delivered at least once and in
// order per destination through an outbox in the store.
//
// The dispatcher subscribes to the topics of VM failures ("vms"), task ends ("tasks") and run ends ("runs"). For
// each event it writes one outbox row per matching rule, all in one transaction, under the idempotency key
// event + rule (an event seen by several gateways is enqueued once). The sender claims due rows (the first
// pending row of each destination, so a destination never gets a later notification before an earlier one),
// calls the integration's Notify with the key, and marks the row sent, or due again after an exponential backoff
// with jitter, or dead after MaxAttempts (or at once on a permanent error). Rows outlive the process: a restarted
// dispatcher resumes where the last one stopped, and a crashed sender's lease runs out.
package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
)

// Topics the dispatcher follows (the worker's "vms" and "jobs", the tracker's "tasks", the run service's "runs").
var Topics = []string{"vms", events.TopicTasks, "runs", "jobs"}

// Config configures a Dispatcher.
type Config struct {
	Store        store.NotificationStore
	Bus          events.Bus
	Integrations *integrations.Registry
	Logger       *slog.Logger
	// MaxAttempts before a notification is dead (default 8).
	MaxAttempts int
	// BaseBackoff is the wait after the first failure, doubling up to MaxBackoff (defaults 2 s and 10 min).
	BaseBackoff, MaxBackoff time.Duration
	// Lease is how long a claimed row is the sender's (default 2 min; a send takes at most Lease/2).
	Lease time.Duration
	// Poll is how often the sender looks for due rows (default 1 s).
	Poll time.Duration
	// Batch is how many destinations one pass sends to at once (default 16).
	Batch int
}

// Dispatcher enqueues and sends notifications.
type Dispatcher struct {
	cfg Config
	log *slog.Logger
}

// New returns a dispatcher.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Store == nil || cfg.Integrations == nil {
		return nil, errors.New("notify: a store and integrations are required")
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 2 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Minute
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 2 * time.Minute
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 16
	}
	d := &Dispatcher{cfg: cfg, log: cfg.Logger}
	if d.log == nil {
		d.log = slog.Default()
	}
	return d, nil
}

// Run follows the bus (when there is one) and sends due notifications until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if d.cfg.Bus != nil {
		for _, topic := range Topics {
			sub, err := d.cfg.Bus.Subscribe(ctx, topic)
			if err != nil {
				return fmt.Errorf("notify: subscribe %s: %w", topic, err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer sub.Close()
				for {
					select {
					case <-ctx.Done():
						return
					case e, ok := <-sub.C():
						if !ok {
							return
						}
						if _, err := d.Enqueue(ctx, e); err != nil {
							d.log.WarnContext(ctx, "could not enqueue notifications", "event", e.Type, "subject", e.Subject, "err", err)
						}
					}
				}
			}()
		}
	}
	t := time.NewTicker(d.cfg.Poll)
	defer t.Stop()
	for {
		if _, err := d.SendDue(ctx); err != nil && ctx.Err() == nil {
			d.log.WarnContext(ctx, "notification pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-t.C:
		}
	}
}

// kind maps a bus event to a notification event ("" : not one rules can choose).
func kind(e events.Event) string {
	switch e.Type {
	case "vm.failed", "task.failed", "run.finished", "job.finished":
		return e.Type
	}
	return ""
}

// Enqueue writes the outbox rows of e (one per matching rule of its owner) in one transaction.
func (d *Dispatcher) Enqueue(ctx context.Context, e events.Event) (int, error) {
	return d.enqueue(ctx, d.cfg.Store, e)
}

// WithOutbox returns bus with every publish of an event that notification rules choose also writing its outbox
// rows first, in the publisher's own process: so a notification is not lost when no gateway (whose dispatcher
// follows the bus) runs at that moment, or its subscription drops the event. The dispatcher's own enqueue of the
// same event adds nothing (the rows' idempotency keys). A failed write is logged; the bus still carries the event.
//
// reg must be the registry the gateways' dispatchers have (the same configuration): it says how many messages a
// notification takes (Discord's split), which the rows' keys count.
func WithOutbox(bus events.Bus, st store.NotificationStore, reg *integrations.Registry, log *slog.Logger) events.Bus {
	if log == nil {
		log = slog.Default()
	}
	return &outboxBus{Bus: bus, d: &Dispatcher{cfg: Config{Store: st, Integrations: reg}, log: log}}
}

type outboxBus struct {
	events.Bus
	d *Dispatcher
}

func (b *outboxBus) Publish(ctx context.Context, topic string, e events.Event) error {
	if kind(e) != "" && e.OwnerID != "" {
		ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if _, err := b.d.Enqueue(ectx, e); err != nil {
			b.d.log.WarnContext(ctx, "could not write the outbox rows of an event; the gateways' dispatchers may still",
				"event", e.Type, "subject", e.Subject, "err", err)
		}
		cancel()
	}
	return b.Bus.Publish(ctx, topic, e)
}

func (d *Dispatcher) enqueue(ctx context.Context, st store.NotificationStore, e events.Event) (int, error) {
	k := kind(e)
	if k == "" || e.OwnerID == "" {
		return 0, nil
	}
	rules, err := st.ListRules(ctx, e.OwnerID)
	if err != nil {
		return 0, err
	}
	n := render(k, e)
	var rows []*store.OutboxEntry
	for _, r := range rules {
		if !slices.Contains(r.Events, k) {
			continue
		}
		nn := n
		nn.Destination = r.Destination
		key := k + ":" + e.Subject + ":" + r.ID
		nn.IdempotencyKey = key
		// A notification of several messages is one entry per message, in order: a retry resends only the part
		// that failed (the entries of a destination are sent one at a time, in Seq order).
		parts := 1
		if in, err := d.cfg.Integrations.Get(r.Integration); err == nil {
			if p, ok := in.(integrations.Parted); ok {
				parts = max(p.Parts(nn), 1)
			}
		}
		for part := 1; part <= parts; part++ {
			np := nn
			if parts > 1 {
				np.Part, np.IdempotencyKey = part, fmt.Sprintf("%s#%d", key, part)
			}
			payload, err := json.Marshal(np)
			if err != nil {
				return 0, err
			}
			rows = append(rows, &store.OutboxEntry{Key: np.IdempotencyKey, OwnerID: e.OwnerID, RuleID: r.ID, Integration: r.Integration,
				Destination: r.Destination, Event: k, Payload: payload, CreatedAt: time.Now()})
		}
	}
	if len(rows) == 0 {
		return 0, nil
	}
	return d.cfg.Store.Enqueue(ctx, rows)
}

// render makes the notification of an event (the text of guests, such as a failure reason, is the integration's
// to escape).
func render(k string, e events.Event) integrations.Notification {
	n := integrations.Notification{Event: k, OwnerID: e.OwnerID, Time: e.Time, Fields: map[string]string{}}
	var data map[string]any
	_ = json.Unmarshal(e.Data, &data)
	switch k {
	case "vm.failed":
		n.Title = "VM " + e.Subject + " failed"
		if r, ok := data["reason"].(string); ok {
			n.Text = r
		}
	case "task.failed":
		n.Title = "Task " + e.Subject + " failed"
	case "run.finished":
		status, _ := data["status"].(string)
		n.Title = "Run " + e.Subject + " " + status
		n.Fields["status"] = status
		if msg, ok := data["error"].(string); ok && msg != "" {
			n.Text = msg
		}
	case "job.finished":
		status, _ := data["status"].(string)
		n.Title = "Job " + e.Subject + " " + status
		n.Fields["status"] = status
		if msg, ok := data["error"].(string); ok && msg != "" {
			n.Text = msg
		}
	}
	if len(n.Fields) == 0 {
		n.Fields = nil
	}
	return n
}

// SendDue claims the due notifications (one per destination) and sends them, concurrently across destinations.
// It returns how many were sent.
func (d *Dispatcher) SendDue(ctx context.Context) (int, error) {
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	// Not cancelled with ctx: a claim committed in the database whose answer a stop threw away would hold its rows
	// for a whole lease. Claimed rows are then released (sent, or failed and due again) by send.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	rows, err := d.cfg.Store.Claim(cctx, time.Now(), d.cfg.Lease, d.cfg.Batch)
	cancel()
	if err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := 0
	for _, r := range rows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d.send(ctx, r) {
				mu.Lock()
				sent++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return sent, nil
}

// stopGrace is how long a send in flight may go on once its dispatcher is stopped.
const stopGrace = 5 * time.Second

func (d *Dispatcher) send(ctx context.Context, r *store.OutboxEntry) bool {
	// A send ends well within the lease, so no other sender claims the row while it runs. A stop gives the send
	// in flight stopGrace to finish, so that what the destination took is recorded as sent: cut off, a send whose
	// message had arrived would be sent again by the next dispatcher.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.Lease/2)
	defer cancel()
	stopWatch := context.AfterFunc(ctx, func() { time.AfterFunc(stopGrace, cancel) })
	defer stopWatch()
	err := d.deliver(sctx, r)
	// The outcome is recorded even when ctx just ended (a stop mid-send): the row is not left to its lease.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer rcancel()
	if err == nil {
		if err := d.cfg.Store.MarkSent(rctx, r.Seq, time.Now()); err != nil {
			d.log.WarnContext(ctx, "could not mark a notification sent; it will be sent again", "seq", r.Seq, "err", err)
		}
		return true
	}
	attempts := r.Attempts + 1
	dead := attempts >= d.cfg.MaxAttempts || queue.IsPermanent(err)
	next := time.Now().Add(Backoff(d.cfg.BaseBackoff, d.cfg.MaxBackoff, attempts))
	if ctx.Err() != nil {
		// Stopped, not failed: due again at once for the next dispatcher, and the attempt does not count towards dead.
		dead, next = false, time.Now()
	}
	if err := d.cfg.Store.MarkFailed(rctx, r.Seq, err.Error(), next, dead); err != nil {
		d.log.WarnContext(ctx, "could not record a failed notification", "seq", r.Seq, "err", err)
	}
	lvl := slog.LevelInfo
	if dead {
		lvl = slog.LevelWarn
	}
	d.log.Log(ctx, lvl, "notification not delivered", "seq", r.Seq, "integration", r.Integration, "attempts", attempts, "dead", dead, "err", err)
	return false
}

func (d *Dispatcher) deliver(ctx context.Context, r *store.OutboxEntry) error {
	in, err := d.cfg.Integrations.Get(r.Integration)
	if err != nil {
		return queue.Permanent(fmt.Errorf("integration %q: %w", r.Integration, err))
	}
	var n integrations.Notification
	if err := json.Unmarshal(r.Payload, &n); err != nil {
		return queue.Permanent(fmt.Errorf("payload: %w", err))
	}
	n.Destination, n.IdempotencyKey = r.Destination, r.Key
	return in.Notify(ctx, n)
}

// Backoff is the wait after the attempts-th failure: base doubling per attempt up to max, with full jitter in
// its upper half (so senders that failed together do not retry together).
func Backoff(base, max time.Duration, attempts int) time.Duration {
	d := base
	for i := 1; i < attempts && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d/2 + rand.N(d/2+1)
}
