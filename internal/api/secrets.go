package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// The secret routes. No answer carries a value: a secret goes in with PUT and comes out only in the environment of
// the executions that name it in secret_env (internal/worker). They do not keep Idempotency-Key answers: PUT and
// DELETE are idempotent by themselves, and the key's fingerprint would be an unsalted hash of the value.

// toSecret describes a secret without its value.
func toSecret(x *store.SealedSecret) client.Secret {
	return client.Secret{Name: x.Name, CreatedAt: x.CreatedAt, UpdatedAt: x.UpdatedAt, LastUsedAt: x.LastUsedAt}
}

// putSecret answers 201 with a new secret, 200 with a replaced one.
func (s *server) putSecret(w http.ResponseWriter, r *http.Request) {
	var req client.PutSecretRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	x, created, err := s.svc.PutSecret(mctx, owner, chi.URLParam(r, "name"), req.Value)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	s.writeJSON(w, r, status, toSecret(x))
}

func (s *server) listSecrets(w http.ResponseWriter, r *http.Request) {
	list, err := s.svc.ListSecrets(r.Context(), ownerFrom(r.Context()))
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.SecretList{Secrets: make([]client.Secret, 0, len(list))}
	for _, x := range list {
		out.Secrets = append(out.Secrets, toSecret(x))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// deleteSecret answers 204.
func (s *server) deleteSecret(w http.ResponseWriter, r *http.Request) {
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	if err := s.svc.DeleteSecret(mctx, owner, chi.URLParam(r, "name")); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}
