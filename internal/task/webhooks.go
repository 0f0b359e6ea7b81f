package task

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// WebhookPayload is the payload of a webhook:process task: the id of the recorded delivery (never the body, which
// stays in its row).
type WebhookPayload struct {
	DeliveryID string `json:"delivery_id"`
}

// WebhookOwner is the owner of webhook:process tasks: a delivery belongs to no owner until its integration has
// found the link it comes from.
const WebhookOwner = "system:webhooks"

// RecordWebhook records a verified delivery and queues its webhook:process task. A delivery already recorded under
// (d.Integration, d.DeliveryID) queues nothing and reports duplicate; d.ID is the record's id either way.
func (s *Service) RecordWebhook(ctx context.Context, d *store.WebhookDelivery) (duplicate bool, err error) {
	created, err := s.store.Webhooks().Record(ctx, d)
	if err != nil {
		return false, fmt.Errorf("record webhook delivery: %w", err)
	}
	if !created {
		return true, nil
	}
	if err := s.queueWebhook(ctx, d.ID); err != nil {
		// The record stays: the integration's redelivery would be taken for a duplicate, so mark it failed to
		// say why nothing happened.
		_ = s.store.Webhooks().Finish(context.WithoutCancel(ctx), d.ID, store.DeliveryFailed, err.Error())
		return false, err
	}
	return false, nil
}

// queueWebhook queues the webhook:process task of a recorded delivery. The task has the record's id, so that a
// delivery whose task was never queued (its gateway died between the two) is told apart by a missing task.
func (s *Service) queueWebhook(ctx context.Context, recordID string) error {
	t := &model.Task{ID: recordID, OwnerID: WebhookOwner, Type: model.TaskWebhookProcess, Priority: model.PriorityDefault}
	return s.submit(ctx, t, WebhookPayload{DeliveryID: recordID})
}

// RequeueOrphanedWebhooks queues the task of every delivery recorded more than age ago that is still waiting for
// its first attempt and has no task: its gateway stopped between recording it and queueing its task, and the
// integration's redelivery would be taken for a duplicate. Of several gateways sweeping at once, one queues each.
// It returns how many it queued.
func (s *Service) RequeueOrphanedWebhooks(ctx context.Context, age time.Duration) (int, error) {
	before := now().Add(-age)
	ds, err := s.store.Webhooks().ListReceived(ctx, before, 500)
	if err != nil {
		return 0, fmt.Errorf("list waiting webhook deliveries: %w", err)
	}
	n := 0
	for _, d := range ds {
		if _, err := s.store.Tasks().Get(ctx, d.ID); err == nil {
			continue // queued: it waits in a busy queue, or a retry is due
		} else if !errors.Is(err, model.ErrNotFound) {
			return n, fmt.Errorf("find the task of webhook delivery %s: %w", d.ID, err)
		}
		won, err := s.store.Webhooks().Touch(ctx, d.ID, before)
		if err != nil {
			return n, fmt.Errorf("claim webhook delivery %s: %w", d.ID, err)
		}
		if !won {
			continue // another gateway took it
		}
		if err := s.queueWebhook(ctx, d.ID); err != nil {
			// As when it was received: its task exists now, failed, so say on the record why nothing happened.
			_ = s.store.Webhooks().Finish(context.WithoutCancel(ctx), d.ID, store.DeliveryFailed, err.Error())
			return n, fmt.Errorf("queue webhook delivery %s: %w", d.ID, err)
		}
		s.log.Warn("queued the task of a webhook delivery whose gateway stopped before queueing it",
			"integration", d.Integration, "delivery", d.DeliveryID, "event", d.Event)
		n++
	}
	return n, nil
}

// CreateLink links an outside source to ownerID.
func (s *Service) CreateLink(ctx context.Context, ownerID string, l *store.IntegrationLink) error {
	l.OwnerID, l.ID = ownerID, ""
	l.Source, l.PRCommand = strings.TrimSpace(l.Source), strings.TrimSpace(l.PRCommand)
	switch {
	case len(l.PRCommand) > store.MaxPRCommand:
		return invalid("pr_command", "is %d bytes, at most %d", len(l.PRCommand), store.MaxPRCommand)
	case strings.ContainsRune(l.PRCommand, 0) || !utf8.ValidString(l.PRCommand):
		return invalid("pr_command", "must be text")
	case len(l.AllowedCommands) > store.MaxAllowedCommands:
		return invalid("allowed_commands", "at most %d", store.MaxAllowedCommands)
	case len(l.AllowedCommands) > 0 && !l.Commands:
		return invalid("allowed_commands", "needs commands: a link that may not run commands allows none")
	case l.PRCommand != "" && !l.Commands:
		return invalid("pr_command", "needs commands: a link that may not run commands cannot run one on pull requests")
	}
	if err := s.store.IntegrationLinks().Create(ctx, l); err != nil {
		return fmt.Errorf("link %s %s: %w", l.Integration, l.Source, err)
	}
	return nil
}

// ListLinks returns the owner's links of integration (all integrations when empty).
func (s *Service) ListLinks(ctx context.Context, ownerID, integration string) ([]*store.IntegrationLink, error) {
	return s.store.IntegrationLinks().List(ctx, ownerID, integration)
}

// DeleteLink removes one of the owner's links.
func (s *Service) DeleteLink(ctx context.Context, ownerID, id string) error {
	if err := s.store.IntegrationLinks().Delete(ctx, ownerID, id); err != nil {
		return fmt.Errorf("unlink: %w", err)
	}
	return nil
}

// FindLink returns the link of source in integration: the source's own, else for a "host/org/repo" source the
// organisation's "host/org/*". None is an error wrapping model.ErrNotFound.
func (s *Service) FindLink(ctx context.Context, integration, source string) (*store.IntegrationLink, error) {
	l, err := s.store.IntegrationLinks().Find(ctx, integration, source)
	if err == nil || !errors.Is(err, model.ErrNotFound) {
		return l, err
	}
	if i := strings.LastIndexByte(source, '/'); i > 0 && strings.Count(source, "/") >= 2 {
		return s.store.IntegrationLinks().Find(ctx, integration, source[:i]+"/*")
	}
	return nil, err
}

// AttemptWebhook returns a recorded delivery and counts an attempt to handle it.
func (s *Service) AttemptWebhook(ctx context.Context, id string) (*store.WebhookDelivery, error) {
	return s.store.Webhooks().Attempt(ctx, id)
}

// SaveWebhookProgress keeps how far handling a delivery got, for a retry to resume from.
func (s *Service) SaveWebhookProgress(ctx context.Context, id string, progress []byte) error {
	return s.store.Webhooks().SaveProgress(ctx, id, progress)
}

// FinishWebhook records how handling a delivery ended.
func (s *Service) FinishWebhook(ctx context.Context, id string, handleErr error) error {
	if handleErr == nil {
		return s.store.Webhooks().Finish(ctx, id, store.DeliveryDone, "")
	}
	return s.store.Webhooks().Finish(ctx, id, store.DeliveryFailed, handleErr.Error())
}
