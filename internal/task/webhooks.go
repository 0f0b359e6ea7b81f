package task

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	t := &model.Task{OwnerID: WebhookOwner, Type: model.TaskWebhookProcess, Priority: model.PriorityDefault}
	if err := s.submit(ctx, t, WebhookPayload{DeliveryID: d.ID}); err != nil {
		// The record stays: the integration's redelivery would be taken for a duplicate, so mark it failed to
		// say why nothing happened.
		_ = s.store.Webhooks().Finish(context.WithoutCancel(ctx), d.ID, store.DeliveryFailed, err.Error())
		return false, err
	}
	return false, nil
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
