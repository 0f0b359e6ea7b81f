package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// webhookReadTimeout bounds receiving a webhook's body: the services that send them give up after 10 s (GitHub)
// or 3 s (Slack), and the API must answer within a second of having it.
const webhookReadTimeout = 10 * time.Second

// webhook is POST /api/v1/webhooks/{integration}: authenticated by the integration's own signature (never an API
// key). The raw body is read under the integration's limit (413 beyond), verified before it is parsed (401 with
// nothing recorded), accepted, recorded under its delivery id and queued (202); a redelivery answers 200
// {"duplicate": true} and queues nothing; pings and handshakes get the integration's own answer.
func (s *server) webhook(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "integration")
	in, err := s.integrations.Get(name)
	if err != nil {
		s.writeError(w, r, http.StatusNotFound, client.CodeNotFound, fmt.Sprintf("no integration %q is configured", name))
		return
	}
	limit := in.MaxBodyBytes()
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(webhookReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		s.writeError(w, r, http.StatusRequestEntityTooLarge, client.CodeTooLarge,
			fmt.Sprintf("webhook body exceeds %d bytes", limit))
		return
	case err != nil:
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, "read the webhook body: "+err.Error())
		return
	}
	_ = rc.SetReadDeadline(time.Time{})
	hook := &integrations.Webhook{Header: r.Header.Clone(), Body: body, Query: r.URL.Query(), ReceivedAt: time.Now().UTC()}
	ctx := r.Context()
	if err := in.Verify(ctx, hook); err != nil {
		if errors.Is(err, integrations.ErrBadSignature) {
			s.log.Warn("webhook signature refused", "integration", name, "request_id", requestIDFrom(ctx), "err", err)
			s.writeError(w, r, http.StatusUnauthorized, client.CodeUnauthorized, "the webhook signature is missing or wrong")
			return
		}
		s.internalError(w, r, err)
		return
	}
	acc, err := in.Accept(ctx, hook)
	if err != nil {
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, err.Error())
		return
	}
	if acc.DeliveryID == "" {
		s.writeReply(w, r, acc.Reply, http.StatusOK, map[string]any{"ok": true})
		return
	}
	// The delivery is recorded even if the sender hangs up now: it has been verified and will be retried by the
	// sender otherwise, as a duplicate of nothing.
	mctx, done := mutationContext(ctx)
	defer done()
	d := integrations.DeliveryRecord(name, hook, acc)
	dup, err := s.svc.RecordWebhook(mctx, d)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	if dup {
		s.writeJSON(w, r, http.StatusOK, map[string]any{"duplicate": true, "delivery_id": acc.DeliveryID})
		return
	}
	s.writeReply(w, r, acc.Reply, http.StatusAccepted, map[string]any{"delivery_id": acc.DeliveryID, "id": d.ID})
}

// writeReply writes the integration's own answer, or v with status.
func (s *server) writeReply(w http.ResponseWriter, r *http.Request, rep *integrations.Reply, status int, v any) {
	if rep == nil {
		s.writeJSON(w, r, status, v)
		return
	}
	ct := rep.ContentType
	if ct == "" {
		ct = "application/json"
	}
	w.Header().Set("Content-Type", ct)
	code := rep.Status
	if code == 0 {
		code = http.StatusOK
	}
	w.WriteHeader(code)
	_, _ = w.Write(rep.Body)
}

func toLink(l *store.IntegrationLink) client.IntegrationLink {
	return client.IntegrationLink{ID: l.ID, Integration: l.Integration, Source: l.Source, Commands: l.Commands,
		Runs: l.Runs, AllowBots: l.AllowBots, DraftPR: l.DraftPR, PRCommand: l.PRCommand, AllowedCommands: l.AllowedCommands,
		Notify:    l.Notify,
		CreatedAt: l.CreatedAt}
}

// createLink is POST /api/v1/integrations/links (201). The integration must be one this server knows.
func (s *server) createLink(w http.ResponseWriter, r *http.Request) {
	var req client.CreateIntegrationLinkRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	if _, err := s.integrations.Get(req.Integration); err != nil {
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest,
			fmt.Sprintf("integration %q is not configured on this server (configured: %v)", req.Integration, s.integrations.Names()))
		return
	}
	if req.Source == "" {
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, "source is required")
		return
	}
	l := &store.IntegrationLink{Integration: req.Integration, Source: req.Source, AllowBots: req.AllowBots,
		DraftPR: req.DraftPR, PRCommand: req.PRCommand, AllowedCommands: req.AllowedCommands, Notify: req.Notify,
		Commands: true, Runs: true}
	if req.Commands != nil || req.Runs != nil {
		l.Commands = req.Commands != nil && *req.Commands
		l.Runs = req.Runs != nil && *req.Runs
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	if err := s.svc.CreateLink(mctx, owner, l); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/integrations/links/"+l.ID)
	s.writeJSON(w, r, http.StatusCreated, toLink(l))
}

func (s *server) listLinks(w http.ResponseWriter, r *http.Request) {
	list, err := s.svc.ListLinks(r.Context(), ownerFrom(r.Context()), r.URL.Query().Get("integration"))
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.IntegrationLinkList{Links: make([]client.IntegrationLink, 0, len(list))}
	for _, l := range list {
		out.Links = append(out.Links, toLink(l))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// deleteLink answers 204; another owner's link is 404.
func (s *server) deleteLink(w http.ResponseWriter, r *http.Request) {
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	if err := s.svc.DeleteLink(mctx, owner, chi.URLParam(r, "id")); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
