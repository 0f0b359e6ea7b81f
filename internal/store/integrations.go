package store

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store/internal/textcheck"
)

// Webhook delivery statuses.
const (
	DeliveryReceived   = "received"   // recorded, its webhook:process task queued
	DeliveryProcessing = "processing" // a worker is handling it (Attempts counts the tries)
	DeliveryDone       = "done"
	DeliveryFailed     = "failed" // handled for the last time with an error (Error)
)

// WebhookDelivery is a received, verified webhook as recorded: the raw body and headers, so a worker can handle
// it later exactly as it came.
type WebhookDelivery struct {
	ID          string
	Integration string
	DeliveryID  string // the integration's own id (X-GitHub-Delivery); unique per integration
	Event       string
	Header      http.Header
	Body        []byte
	Status      string
	Attempts    int
	Error       string
	ReceivedAt  time.Time
	UpdatedAt   time.Time
	// Progress is what the integration saved while handling the delivery (SaveProgress), a JSON document that a
	// retry resumes from; nil before the first save.
	Progress []byte
}

// WebhookStore records webhook deliveries.
type WebhookStore interface {
	// Record inserts d (ID, Status received and UpdatedAt filled) and reports true; a delivery already recorded
	// under (d.Integration, d.DeliveryID) is left alone, d's ID is set to its id, and Record reports false. Also
	// between processes sharing the database exactly one of concurrent Records of one delivery reports true.
	Record(ctx context.Context, d *WebhookDelivery) (bool, error)
	// Get returns the delivery or an error wrapping model.ErrNotFound.
	Get(ctx context.Context, id string) (*WebhookDelivery, error)
	// Attempt marks the delivery processing and counts one more attempt; it returns the delivery as updated.
	Attempt(ctx context.Context, id string) (*WebhookDelivery, error)
	// Finish sets the delivery's final status (DeliveryDone or DeliveryFailed) and error text.
	Finish(ctx context.Context, id, status, errText string) error
	// SaveProgress replaces the delivery's progress document (valid JSON, at most MaxWebhookProgress bytes).
	SaveProgress(ctx context.Context, id string, progress []byte) error
	// ListReceived returns up to limit deliveries still DeliveryReceived (never attempted) whose last update is
	// before before, oldest first: those whose webhook:process task may never have been queued.
	ListReceived(ctx context.Context, before time.Time, limit int) ([]*WebhookDelivery, error)
	// Touch sets the delivery's updated_at to now if it is still DeliveryReceived and was last updated before
	// before, and reports whether it did: of several processes touching one delivery, one wins.
	Touch(ctx context.Context, id string, before time.Time) (bool, error)
}

// MaxWebhookProgress bounds a delivery's progress document: ids and a little state, never output.
const MaxWebhookProgress = 16 << 10

// CheckWebhookProgress refuses a progress document that is not a JSON value or is too large.
func CheckWebhookProgress(progress []byte) error {
	if len(progress) > MaxWebhookProgress {
		return fmt.Errorf("%w: webhook delivery progress: %d bytes, at most %d", model.ErrInvalidInput, len(progress), MaxWebhookProgress)
	}
	if !json.Valid(progress) {
		return fmt.Errorf("%w: webhook delivery progress is not JSON", model.ErrInvalidInput)
	}
	return nil
}

// IntegrationLink is an owner's link of an outside source: which GitHub repository or Slack channel acts for which
// owner, and what it may do.
type IntegrationLink struct {
	ID          string
	OwnerID     string
	Integration string
	Source      string // "github.com/org/repo", "github.com/org/*", "T123/C456"
	Commands    bool
	Runs        bool
	AllowBots   bool
	DraftPR     bool // open a draft pull request for an agent run's pushed branch
	// PRCommand runs (sh -c, in a fresh VM with the pull request's head checked out) on every pull request
	// opened, reopened or pushed to, reported as a check run; empty: none.
	PRCommand string
	// AllowedCommands, when set, are the only commands the source may run (integrations.Link.AllowsCommand).
	AllowedCommands []string
	Notify          []string
	CreatedAt       time.Time
}

// IntegrationLinkStore persists links. A source is linked to at most one owner per integration.
type IntegrationLinkStore interface {
	// Create inserts l (ID and CreatedAt filled when empty); a source already linked is an error wrapping
	// model.ErrConflict.
	Create(ctx context.Context, l *IntegrationLink) error
	// Find returns the link of exactly that source or an error wrapping model.ErrNotFound.
	Find(ctx context.Context, integration, source string) (*IntegrationLink, error)
	// List returns the owner's links (all owners' when ownerID is empty) of integration (all when empty), newest
	// first.
	List(ctx context.Context, ownerID, integration string) ([]*IntegrationLink, error)
	// Delete removes the owner's link; another owner's link or none is an error wrapping model.ErrNotFound.
	Delete(ctx context.Context, ownerID, id string) error
}

// MaxPRCommand bounds a link's pull request command (and each of its allowed commands); MaxAllowedCommands bounds
// how many commands a link may allow.
const (
	MaxPRCommand       = 4096
	MaxAllowedCommands = 100
)

// CheckWebhookDelivery validates what Record inserts.
func CheckWebhookDelivery(d *WebhookDelivery) error {
	switch {
	case !textcheck.Ident(d.Integration, 64):
		return fmt.Errorf("webhook delivery: integration must be 1 to 64 characters of text: %w", model.ErrInvalidInput)
	case !textcheck.Ident(d.DeliveryID, 255):
		return fmt.Errorf("webhook delivery: delivery id must be 1 to 255 characters of text: %w", model.ErrInvalidInput)
	case !textcheck.Text(d.Event):
		return fmt.Errorf("webhook delivery: event is not text: %w", model.ErrInvalidInput)
	case d.ReceivedAt.IsZero():
		return fmt.Errorf("webhook delivery: received_at is required: %w", model.ErrInvalidInput)
	}
	return nil
}

// CheckIntegrationLink validates what Create inserts.
func CheckIntegrationLink(l *IntegrationLink) error {
	switch {
	case !textcheck.Ident(l.OwnerID, 255):
		return fmt.Errorf("integration link: owner is empty or not text: %w", model.ErrInvalidInput)
	case !textcheck.Ident(l.Integration, 64):
		return fmt.Errorf("integration link: integration must be 1 to 64 characters of text: %w", model.ErrInvalidInput)
	case !textcheck.Ident(l.Source, 512):
		return fmt.Errorf("integration link: source must be 1 to 512 characters of text: %w", model.ErrInvalidInput)
	}
	if len(l.AllowedCommands) > MaxAllowedCommands {
		return fmt.Errorf("integration link: at most %d allowed commands: %w", MaxAllowedCommands, model.ErrInvalidInput)
	}
	for _, c := range l.AllowedCommands {
		if !textcheck.Ident(c, MaxPRCommand) {
			return fmt.Errorf("integration link: an allowed command must be 1 to %d bytes of text: %w", MaxPRCommand, model.ErrInvalidInput)
		}
	}
	if !textcheck.Text(l.PRCommand) || len(l.PRCommand) > MaxPRCommand {
		return fmt.Errorf("integration link: pr_command must be at most %d bytes of text: %w", MaxPRCommand, model.ErrInvalidInput)
	}
	for _, n := range l.Notify {
		if !textcheck.Ident(n, 64) {
			return fmt.Errorf("integration link: notify event %q is not 1 to 64 characters of text: %w", n, model.ErrInvalidInput)
		}
	}
	return nil
}
