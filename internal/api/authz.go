package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// Authorization: every authenticated route declares the scope it needs where it is registered, with
// r.With(s.require(scope)); TestEveryRouteHasAScope walks the router and fails on a route without one, and checks
// that openapi.yaml says the same (x-aetherium-scope). The admin scope also needs role admin.

// noScope marks the authenticated routes that any valid credential may call (the token exchange).
const noScope = "none"

// principalFrom returns the authenticated caller (routes behind authenticate only).
func principalFrom(ctx context.Context) *auth.Principal {
	p, _ := ctx.Value(principalKey).(*auth.Principal)
	return p
}

// scopeCheck is the handler s.require wraps around a route; its type lets the router walk find the declaration.
type scopeCheck struct {
	s     *server
	scope string
	next  http.Handler
}

// require declares and enforces the scope a route needs (noScope: none beyond a valid credential).
func (s *server) require(scope string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler { return &scopeCheck{s: s, scope: scope, next: next} }
}

func (c *scopeCheck) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := principalFrom(r.Context())
	switch {
	case p == nil:
		// A route registered outside the authenticated groups: refuse rather than serve it unauthenticated.
		c.s.writeError(w, r, http.StatusUnauthorized, client.CodeUnauthorized, "authentication is required")
		return
	case c.scope == noScope:
	case c.scope == auth.ScopeAdmin && !p.IsAdmin():
		c.s.writeError(w, r, http.StatusForbidden, client.CodeForbidden, "this route needs a key with role admin")
		return
	case !p.Has(c.scope):
		c.s.writeError(w, r, http.StatusForbidden, client.CodeForbidden,
			fmt.Sprintf("this route needs scope %q, which the credential does not have", c.scope))
		return
	}
	c.next.ServeHTTP(w, r)
}

// declaredScope returns the scope a route's middlewares declare, or "" for none.
func declaredScope(mws []func(http.Handler) http.Handler) string {
	scope := ""
	for _, mw := range mws {
		if sc, ok := mw(http.NotFoundHandler()).(*scopeCheck); ok {
			scope = sc.scope
		}
	}
	return scope
}

// ---- API keys (admin)

func toAPIKey(k *model.APIKey) client.APIKey {
	return client.APIKey{ID: k.ID, Name: k.Name, Prefix: k.Prefix, OwnerID: k.OwnerID, Role: k.Role,
		Scopes: auth.EffectiveScopes(k), CreatedAt: k.CreatedAt, ExpiresAt: k.ExpiresAt, LastUsedAt: k.LastUsedAt,
		RevokedAt: k.RevokedAt}
}

func (s *server) keysOff(w http.ResponseWriter, r *http.Request) bool {
	if s.apiKeys == nil {
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable, "key management is not configured on this gateway")
		return true
	}
	return false
}

func (s *server) createAPIKey(w http.ResponseWriter, r *http.Request) {
	if s.keysOff(w, r) {
		return
	}
	var req client.CreateAPIKeyRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	invalid := func(msg string) { s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, msg) }
	req.Name = strings.TrimSpace(req.Name)
	if req.Role == "" {
		req.Role = model.RoleUser
	}
	switch {
	case req.Name == "" || len(req.Name) > 200:
		invalid("name is required, at most 200 characters")
		return
	case !auth.ValidRole(req.Role):
		invalid(fmt.Sprintf("role %q is not admin or user", req.Role))
		return
	case req.ExpiresAt != nil && !req.ExpiresAt.After(time.Now()):
		invalid("expires_at must be in the future")
		return
	case len(req.Owner) > 200 || strings.ContainsAny(req.Owner, " \t\r\n"):
		invalid("owner must be an owner id: at most 200 characters, no spaces")
		return
	}
	if err := auth.CheckScopes(req.Role, req.Scopes); err != nil {
		invalid(err.Error())
		return
	}
	var exp *time.Time
	if req.ExpiresAt != nil {
		t := req.ExpiresAt.UTC()
		exp = &t
	}
	plain, k, err := auth.NewKeyWithRole(req.Owner, req.Name, req.Role, slices.Compact(slices.Sorted(slices.Values(req.Scopes))), exp)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	mctx, done := mutationContext(r.Context())
	defer done()
	if err := s.apiKeys.Create(mctx, k); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusCreated, client.CreatedAPIKey{APIKey: toAPIKey(k), Key: plain})
}

func (s *server) listAPIKeys(w http.ResponseWriter, r *http.Request) {
	if s.keysOff(w, r) {
		return
	}
	keys, err := s.apiKeys.List(r.Context())
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.APIKeyList{APIKeys: make([]client.APIKey, 0, len(keys))}
	for _, k := range keys {
		out.APIKeys = append(out.APIKeys, toAPIKey(k))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) revokeAPIKey(w http.ResponseWriter, r *http.Request) {
	if s.keysOff(w, r) {
		return
	}
	id, ok := s.pathID(w, r, "api key")
	if !ok {
		return
	}
	mctx, done := mutationContext(r.Context())
	defer done()
	if err := s.apiKeys.Revoke(mctx, id, time.Now().UTC()); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.auth.Forget(id)
	w.WriteHeader(http.StatusNoContent)
}

// ---- tokens

func (s *server) issueToken(w http.ResponseWriter, r *http.Request) {
	j := s.auth.JWT()
	if j == nil {
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable, "tokens are not enabled on this gateway")
		return
	}
	var req client.TokenRequest
	if r.ContentLength != 0 && !s.decodeJSON(w, r, &req) {
		return
	}
	p := principalFrom(r.Context())
	if p.Via != auth.ViaAPIKey {
		s.writeError(w, r, http.StatusForbidden, client.CodeForbidden, "a token is exchanged for an API key, not for another token")
		return
	}
	maxTTL := int(j.Config().MaxTTL / time.Second)
	if req.ExpiresIn < 0 || req.ExpiresIn > maxTTL {
		s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation,
			fmt.Sprintf("expires_in must be between 1 and %d seconds (0 or absent: %d)", maxTTL, maxTTL))
		return
	}
	if err := auth.CheckScopes(model.RoleAdmin, req.Scopes); err != nil {
		s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, err.Error())
		return
	}
	var scopes []string
	if len(req.Scopes) > 0 {
		scopes = slices.Compact(slices.Sorted(slices.Values(req.Scopes)))
	}
	tok, exp, err := j.Issue(r.Context(), p, time.Duration(req.ExpiresIn)*time.Second, scopes)
	if errors.Is(err, auth.ErrScopeNotHeld) {
		s.writeError(w, r, http.StatusForbidden, client.CodeForbidden, "a token may only narrow the key's scopes: "+err.Error())
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	if scopes == nil {
		scopes = p.Scopes
	}
	s.writeJSON(w, r, http.StatusOK, client.Token{Token: tok, ExpiresAt: exp, TokenType: "Bearer", Scopes: scopes})
}

// jwks publishes the public keys that verify the API's tokens (RFC 7517).
func (s *server) jwks(w http.ResponseWriter, r *http.Request) {
	j := s.auth.JWT()
	if j == nil {
		s.writeJSON(w, r, http.StatusOK, map[string]any{"keys": []auth.JWK{}})
		return
	}
	keys, err := j.PublicKeys(r.Context())
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, map[string]any{"keys": keys})
}

// ---- audit

// auditCalls records every mutating call but webhooks (which keep their own delivery records), with its route
// pattern, URL parameters and status; never a body or a header. It sits inside the access log, whose response
// writer tells the status.
func (s *server) auditCalls(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		default:
			next.ServeHTTP(w, r)
			return
		}
		ww, ok := w.(middleware.WrapResponseWriter)
		if !ok {
			ww = middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		}
		mark := &routeMark{}
		if m, ok := r.Context().Value(routeMarkKey).(*routeMark); ok {
			mark = m
		} else {
			r = r.WithContext(context.WithValue(r.Context(), routeMarkKey, mark))
		}
		defer func() {
			rctx := chi.RouteContext(r.Context())
			if mark.unmatched || rctx == nil {
				return
			}
			route := rctx.RoutePattern()
			if route == "" || strings.HasPrefix(route, "/api/v1/webhooks/") {
				return
			}
			e := &store.AuditEntry{At: time.Now().UTC(), Method: r.Method, Route: route, Status: ww.Status(),
				Source: sourceAddr(r), RequestID: requestIDFrom(r.Context())}
			if e.Status == 0 {
				e.Status = http.StatusOK
			}
			if ri, ok := r.Context().Value(infoKey).(*reqInfo); ok {
				e.KeyID, e.OwnerID, e.Role = ri.keyID, ri.ownerID, ri.role
			}
			for i, k := range rctx.URLParams.Keys {
				if k == "*" || i >= len(rctx.URLParams.Values) {
					continue
				}
				if e.Params == nil {
					e.Params = map[string]string{}
				}
				e.Params[k] = rctx.URLParams.Values[i]
			}
			s.audit.Record(r.Context(), e)
		}()
		next.ServeHTTP(ww, r)
	})
}

func (s *server) listAudit(w http.ResponseWriter, r *http.Request) {
	if s.auditStore == nil {
		s.writeError(w, r, http.StatusServiceUnavailable, client.CodeUnavailable, "the audit log is not configured on this gateway")
		return
	}
	q := r.URL.Query()
	bad := func(msg string) { s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, msg) }
	f := store.AuditFilter{KeyID: q.Get("key_id"), OwnerID: q.Get("owner"), Method: strings.ToUpper(q.Get("method"))}
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				bad(name + " must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z")
				return
			}
			*dst = t
		}
	}
	if v := q.Get("status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 599 {
			bad("status must be an HTTP status code (100-599)")
			return
		}
		f.Status = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			bad("limit must be an integer")
			return
		}
		if n < 1 || n > 1000 {
			s.writeError(w, r, http.StatusUnprocessableEntity, client.CodeValidation, "limit must be between 1 and 1000")
			return
		}
		f.Limit = n
	}
	if v := q.Get("cursor"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			bad("cursor must be the next_cursor of a previous page")
			return
		}
		f.Before = n
	}
	entries, err := s.auditStore.List(r.Context(), f)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.AuditList{Entries: make([]client.AuditEntry, 0, len(entries))}
	for _, e := range entries {
		out.Entries = append(out.Entries, client.AuditEntry{Seq: e.Seq, At: e.At, KeyID: e.KeyID, OwnerID: e.OwnerID,
			Role: e.Role, Method: e.Method, Route: e.Route, Params: e.Params, Status: e.Status, Source: e.Source,
			RequestID: e.RequestID})
	}
	if len(entries) == store.AuditLimit(f.Limit) {
		out.NextCursor = strconv.FormatInt(entries[len(entries)-1].Seq, 10)
	}
	s.writeJSON(w, r, http.StatusOK, out)
}
