package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/pkg/client"
)

// lifecycleRoutes serves pausing, resuming and keeping alive a VM (issue 15; see docs/architecture.md, "VM
// lifetimes"). Pause and resume are tasks on the VM's worker, answered like delete: 202 with the task, or with
// ?wait 200 once it has finished. A keepalive only writes the VM's row, and answers with the VM.
func (s *server) lifecycleRoutes(r chi.Router) {
	r.Post("/vms/{id}/pause", s.pauseVM)
	r.Post("/vms/{id}/resume", s.resumeVM)
	r.Post("/vms/{id}/keepalive", s.keepaliveVM)
}

func (s *server) pauseVM(w http.ResponseWriter, r *http.Request)  { s.pauseResume(w, r, true) }
func (s *server) resumeVM(w http.ResponseWriter, r *http.Request) { s.pauseResume(w, r, false) }

func (s *server) pauseResume(w http.ResponseWriter, r *http.Request, pause bool) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	wait, ok := s.parseWait(w, r)
	if !ok {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	op := s.svc.ResumeVM
	if pause {
		op = s.svc.PauseVM
	}
	t, err := op(mctx, owner, id, r.URL.Query().Get("priority"))
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeTaskAccepted(w, r, owner, t, wait)
}

func (s *server) keepaliveVM(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	var req client.KeepaliveRequest
	if r.ContentLength != 0 && !s.decodeJSON(w, r, &req) {
		return
	}
	mctx, done := mutationContext(r.Context())
	defer done()
	vm, err := s.svc.Keepalive(mctx, ownerFrom(r.Context()), id, req.Seconds)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ToVM(vm))
}
