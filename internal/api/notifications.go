package api

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// The notification routes (internal/notify): an owner's rules, and the outbox with its dead letters. Destinations
// are not returned in the outbox list (a Discord webhook URL is a credential); the rules show them to their owner.

func (s *server) notificationRoutes(r chi.Router) {
	r.Get("/notifications/rules", s.listNotificationRules)
	r.Post("/notifications/rules", s.createNotificationRule)
	r.Delete("/notifications/rules/{id}", s.deleteNotificationRule)
	r.Get("/notifications", s.listNotifications)
	r.Post("/notifications/{seq}/retry", s.retryNotification)
}

func (s *server) notificationsOff(w http.ResponseWriter, r *http.Request) bool {
	if s.notifications == nil {
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable, "notifications are not configured on this gateway")
		return true
	}
	return false
}

func toRule(x *store.NotificationRule) client.NotificationRule {
	return client.NotificationRule{ID: x.ID, Events: x.Events, Integration: x.Integration, Destination: x.Destination, CreatedAt: x.CreatedAt}
}

func (s *server) createNotificationRule(w http.ResponseWriter, r *http.Request) {
	if s.notificationsOff(w, r) {
		return
	}
	var req client.CreateNotificationRuleRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	mctx, done := mutationContext(r.Context())
	defer done()
	rule := &store.NotificationRule{OwnerID: ownerFrom(r.Context()), Events: req.Events, Integration: req.Integration, Destination: req.Destination}
	if err := store.CheckNotificationRule(rule); err != nil {
		// The check's message names the field for the user.
		s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, strings.TrimSuffix(err.Error(), ": "+model.ErrInvalidInput.Error()))
		return
	}
	// An integration that can tell a destination it would never send to (Discord: anything but its webhook URLs)
	// refuses it now rather than at every send.
	if in, err := s.integrations.Get(rule.Integration); err == nil {
		if dc, ok := in.(integrations.DestinationChecker); ok {
			if err := dc.CheckDestination(rule.Destination); err != nil {
				s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, err.Error())
				return
			}
		}
	}
	if err := s.notifications.CreateRule(mctx, rule); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusCreated, toRule(rule))
}

func (s *server) listNotificationRules(w http.ResponseWriter, r *http.Request) {
	if s.notificationsOff(w, r) {
		return
	}
	list, err := s.notifications.ListRules(r.Context(), ownerFrom(r.Context()))
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.NotificationRuleList{Rules: make([]client.NotificationRule, 0, len(list))}
	for _, x := range list {
		out.Rules = append(out.Rules, toRule(x))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) deleteNotificationRule(w http.ResponseWriter, r *http.Request) {
	if s.notificationsOff(w, r) {
		return
	}
	mctx, done := mutationContext(r.Context())
	defer done()
	if err := s.notifications.DeleteRule(mctx, ownerFrom(r.Context()), chi.URLParam(r, "id")); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) listNotifications(w http.ResponseWriter, r *http.Request) {
	if s.notificationsOff(w, r) {
		return
	}
	status := r.URL.Query().Get("status")
	switch status {
	case "", store.OutboxPending, store.OutboxSent, store.OutboxDead:
	default:
		s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, "status must be pending, sent or dead")
		return
	}
	list, err := s.notifications.ListOutbox(r.Context(), ownerFrom(r.Context()), status, 500)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.NotificationList{Notifications: make([]client.Notification, 0, len(list))}
	for _, e := range list {
		out.Notifications = append(out.Notifications, client.Notification{Seq: e.Seq, RuleID: e.RuleID, Integration: e.Integration, Event: e.Event,
			Status: e.Status, Attempts: e.Attempts, NextAttemptAt: e.NextAttemptAt, LastError: e.LastError, CreatedAt: e.CreatedAt, SentAt: e.SentAt})
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// retryNotification makes a dead notification pending again: 204, or 404 when the caller has no dead one of that seq.
func (s *server) retryNotification(w http.ResponseWriter, r *http.Request) {
	if s.notificationsOff(w, r) {
		return
	}
	seq, err := strconv.ParseInt(chi.URLParam(r, "seq"), 10, 64)
	if err != nil {
		s.writeError(w, r, http.StatusNotFound, client.CodeNotFound, "no such notification")
		return
	}
	mctx, done := mutationContext(r.Context())
	defer done()
	if err := s.notifications.Retry(mctx, ownerFrom(r.Context()), seq, time.Now()); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
