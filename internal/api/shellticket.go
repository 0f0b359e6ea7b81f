package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/pkg/client"
)

// ShellTicketTTL is how long a shell ticket (POST /vms/{id}/shell/ticket) can be used.
const ShellTicketTTL = 30 * time.Second

// Browsers cannot set an Authorization header on a WebSocket, so a shell is opened there with a ticket: a random
// secret, minted for an authenticated caller and one VM, accepted once by GET /vms/{id}/shell?ticket= within
// ShellTicketTTL. Tickets live in the memory of the gateway that minted them: behind several gateways, the
// ticket's request and the WebSocket must reach the same one (or the WebSocket gets 401 and the client asks again).
type shellTicket struct {
	principal auth.Principal // who minted it: the shell is opened as them, with their scopes
	vmID      string
	expires   time.Time
}

type shellTickets struct {
	mu sync.Mutex
	m  map[string]shellTicket
}

// mint returns a new ticket, and forgets expired ones (there are at most as many as were minted in a TTL).
func (t *shellTickets) mint(tk shellTicket) string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	id := base64.RawURLEncoding.EncodeToString(b[:])
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]shellTicket{}
	}
	now := time.Now()
	for k, v := range t.m {
		if now.After(v.expires) {
			delete(t.m, k)
		}
	}
	t.m[id] = tk
	return id
}

// take removes the ticket and returns it when it is still valid: a ticket is used at most once.
func (t *shellTickets) take(id string) (shellTicket, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tk, ok := t.m[id]
	delete(t.m, id)
	if !ok || time.Now().After(tk.expires) {
		return shellTicket{}, false
	}
	return tk, true
}

// ShellTicket is the answer of POST /vms/{id}/shell/ticket.
type ShellTicket struct {
	Ticket    string    `json:"ticket"`
	ExpiresAt time.Time `json:"expires_at"`
}

// createShellTicket mints a ticket for the caller's VM (404 for another owner's or a missing one).
func (s *server) createShellTicket(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	owner := ownerFrom(r.Context())
	if _, err := s.svc.GetVM(r.Context(), owner, id); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	p := principalFrom(r.Context())
	if p == nil {
		s.writeError(w, r, http.StatusUnauthorized, client.CodeUnauthorized, "authentication is required")
		return
	}
	exp := time.Now().Add(ShellTicketTTL)
	if p.ExpiresAt != nil && p.ExpiresAt.Before(exp) {
		exp = *p.ExpiresAt // a ticket outlives no credential
	}
	t := s.tickets.mint(shellTicket{principal: *p, vmID: id, expires: exp})
	w.Header().Set("Cache-Control", "no-store")
	s.writeJSON(w, r, http.StatusCreated, ShellTicket{Ticket: t, ExpiresAt: exp.UTC()})
}

// shellAuth authenticates the shell's handshake: with the Authorization header as every route, or, without one,
// with a ticket in the query, used up by this request and valid for its VM only.
func (s *server) shellAuth(next http.Handler) http.Handler {
	withKey := s.authenticate(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ticket := r.URL.Query().Get("ticket")
		if r.Header.Get("Authorization") != "" || ticket == "" {
			withKey.ServeHTTP(w, r)
			return
		}
		tk, ok := s.tickets.take(ticket)
		id, idOK := s.pathID(w, r, "vm")
		if !idOK {
			return
		}
		if !ok || !strings.EqualFold(tk.vmID, id) {
			if !s.limitAddr(w, r) {
				return
			}
			s.writeError(w, r, http.StatusUnauthorized, client.CodeUnauthorized,
				"the shell ticket is invalid, used or expired: ask for another (POST /api/v1/vms/{id}/shell/ticket)")
			return
		}
		p := tk.principal
		if ri, ok := r.Context().Value(infoKey).(*reqInfo); ok {
			ri.ownerID, ri.keyID, ri.role = p.OwnerID, p.KeyID, p.Role
		}
		if !s.limitKey(w, r, p.KeyID) {
			return
		}
		ctx := context.WithValue(r.Context(), ownerKey, p.OwnerID)
		ctx = context.WithValue(ctx, principalKey, &p)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}
