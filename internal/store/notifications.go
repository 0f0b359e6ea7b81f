package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/model"
)

// Notification events a rule can choose.
var NotificationEvents = []string{"vm.failed", "run.finished", "job.finished", "task.failed"}

// NotificationRule sends an owner's events of some kinds to one destination of an integration.
type NotificationRule struct {
	ID          string
	OwnerID     string
	Events      []string // of NotificationEvents
	Integration string   // "slack", "discord"
	Destination string   // a Slack channel id, a Discord webhook URL
	CreatedAt   time.Time
}

// Outbox statuses.
const (
	OutboxPending = "pending" // to send (again, at NextAttemptAt)
	OutboxSent    = "sent"
	OutboxDead    = "dead" // gave up after the dispatcher's attempts; POST .../retry makes it pending again
)

// OutboxEntry is one notification to deliver to one destination. Entries of a destination are sent in Seq order,
// one at a time: a pending entry holds back the later ones of its destination.
type OutboxEntry struct {
	Seq           int64  // assigned by Enqueue, increasing
	Key           string // idempotency key (event id + rule id): enqueued once whoever enqueues it
	OwnerID       string
	RuleID        string
	Integration   string
	Destination   string
	Event         string
	Payload       []byte // the integrations.Notification as JSON
	Status        string
	Attempts      int
	NextAttemptAt time.Time
	LeaseUntil    *time.Time // a sender holds the entry until then
	LastError     string
	CreatedAt     time.Time
	SentAt        *time.Time
}

// NotificationStore keeps notification rules and the outbox.
type NotificationStore interface {
	CreateRule(ctx context.Context, r *NotificationRule) error
	// ListRules lists an owner's rules ("" : every owner's, for the dispatcher), oldest first.
	ListRules(ctx context.Context, ownerID string) ([]*NotificationRule, error)
	// DeleteRule deletes an owner's rule (model.ErrNotFound when there is none).
	DeleteRule(ctx context.Context, ownerID, id string) error
	// Enqueue inserts the entries in one transaction, skipping any whose Key is already in the outbox, and returns
	// how many it inserted. It sets Seq, Status (pending) and NextAttemptAt (CreatedAt) of the inserted ones.
	Enqueue(ctx context.Context, entries []*OutboxEntry) (int, error)
	// Claim leases, until now+lease, up to limit entries that are due: each the first pending entry of its
	// destination, due (NextAttemptAt <= now) and not leased. Concurrent claimers never get the same entry.
	Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]*OutboxEntry, error)
	// MarkSent records a delivery.
	MarkSent(ctx context.Context, seq int64, at time.Time) error
	// MarkFailed records a failed attempt: the entry is due again at next, or dead when dead is set.
	MarkFailed(ctx context.Context, seq int64, errText string, next time.Time, dead bool) error
	// ListOutbox lists an owner's entries of a status ("" : any), oldest first, at most limit.
	ListOutbox(ctx context.Context, ownerID, status string, limit int) ([]*OutboxEntry, error)
	// Retry makes an owner's dead entry pending again, due at now (model.ErrNotFound: no dead entry of that seq).
	Retry(ctx context.Context, ownerID string, seq int64, now time.Time) error
}

// CheckNotificationRule validates a rule for CreateRule.
func CheckNotificationRule(r *NotificationRule) error {
	if r.OwnerID == "" || r.Integration == "" || r.Destination == "" {
		return fmt.Errorf("notification rule needs an owner, an integration and a destination: %w", model.ErrInvalidInput)
	}
	if len(r.Events) == 0 {
		return fmt.Errorf("notification rule needs at least one event: %w", model.ErrInvalidInput)
	}
	for _, e := range r.Events {
		if !slices.Contains(NotificationEvents, e) {
			return fmt.Errorf("unknown notification event %q (one of %v): %w", e, NotificationEvents, model.ErrInvalidInput)
		}
	}
	if len(r.Destination) > 2048 {
		return fmt.Errorf("notification destination too long: %w", model.ErrInvalidInput)
	}
	return nil
}

// CleanErrorText makes an error text storable everywhere: valid UTF-8 without NUL, at most 2,000 bytes.
func CleanErrorText(s string) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) > 2000 {
		s = strings.ToValidUTF8(s[:2000], "")
	}
	return s
}
