package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// requireAdmin refuses credentials without role admin (and the admin scope) with 403 (authz.go).
func (s *server) requireAdmin(next http.Handler) http.Handler {
	return s.require(auth.ScopeAdmin)(next)
}

// adminRoutes are the routes of operators: workers and quotas.
func (s *server) adminRoutes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(s.requireAdmin)
		r.Get("/workers", s.listWorkers)
		r.Post("/workers/{worker}/drain", s.drainWorker(true))
		r.Post("/workers/{worker}/undrain", s.drainWorker(false))
		r.Get("/quotas/{owner}", s.getQuota)
		r.Put("/quotas/{owner}", s.putQuota)
		r.Delete("/quotas/{owner}", s.deleteQuota)
	})
}

func toWorkerInfo(v task.WorkerView) client.WorkerInfo {
	w := v.Worker
	out := client.WorkerInfo{ID: w.ID, Hostname: w.Hostname, Backend: w.Backend, State: v.State, Drained: w.Drained,
		Address: w.Metadata[task.WorkerAPIURLKey], BackendHealth: w.Metadata["backend_health"],
		Used: client.WorkerResources(v.Used), StartedAt: w.StartedAt, LastHeartbeat: w.LastHeartbeat}
	if v.HasCap {
		c := client.WorkerResources(v.Capacity)
		out.Capacity = &c
	}
	return out
}

func (s *server) listWorkers(w http.ResponseWriter, r *http.Request) {
	views, err := s.svc.ListWorkers(r.Context())
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.WorkerList{Workers: make([]client.WorkerInfo, 0, len(views))}
	for _, v := range views {
		out.Workers = append(out.Workers, toWorkerInfo(v))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) drainWorker(drained bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := chi.URLParam(r, "worker")
		mctx, done := mutationContext(r.Context())
		defer done()
		if _, err := s.svc.DrainWorker(mctx, id, drained); err != nil {
			s.writeServiceError(w, r, err)
			return
		}
		views, err := s.svc.ListWorkers(r.Context())
		if err != nil {
			s.writeServiceError(w, r, err)
			return
		}
		for _, v := range views {
			if v.Worker.ID == id {
				s.writeJSON(w, r, http.StatusOK, toWorkerInfo(v))
				return
			}
		}
		s.writeServiceError(w, r, model.ErrNotFound)
	}
}

func toQuota(q *model.Quota) client.Quota {
	return client.Quota{OwnerID: q.OwnerID, MaxVMs: q.MaxVMs, MaxVCPUs: q.MaxVCPUs, MaxMemoryMB: q.MaxMemoryMB, UpdatedAt: q.UpdatedAt}
}

func (s *server) getQuota(w http.ResponseWriter, r *http.Request) {
	q, err := s.svc.GetQuota(r.Context(), chi.URLParam(r, "owner"))
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, toQuota(q))
}

func (s *server) putQuota(w http.ResponseWriter, r *http.Request) {
	var req client.Quota
	if !s.decodeJSON(w, r, &req) {
		return
	}
	q := &model.Quota{OwnerID: chi.URLParam(r, "owner"), MaxVMs: req.MaxVMs, MaxVCPUs: req.MaxVCPUs, MaxMemoryMB: req.MaxMemoryMB}
	mctx, done := mutationContext(r.Context())
	defer done()
	if err := s.svc.SetQuota(mctx, q); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, toQuota(q))
}

func (s *server) deleteQuota(w http.ResponseWriter, r *http.Request) {
	mctx, done := mutationContext(r.Context())
	defer done()
	if err := s.svc.DeleteQuota(mctx, chi.URLParam(r, "owner")); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
