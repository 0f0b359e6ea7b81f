package fakeapi

import (
	"net/http"
	"slices"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// AddLogs adds entries the log routes answer.
func (s *Server) AddLogs(entries ...client.LogEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs = append(s.logs, entries...)
}

// serveLogs answers GET /logs and /vms/{id}/logs like the real API with a Loki: entries of the VM (metadata vm_id)
// from since on, newest first. s.mu is held.
func (s *Server) serveLogs(w http.ResponseWriter, r *http.Request, parts []string) bool {
	if r.Method != http.MethodGet {
		return false
	}
	q := r.URL.Query()
	vmID := q.Get("vm_id")
	switch {
	case len(parts) == 1 && parts[0] == "logs":
	case len(parts) == 3 && parts[0] == "vms" && parts[2] == "logs":
		if s.findVM(w, parts[1]) == nil {
			return true
		}
		vmID = parts[1]
	default:
		return false
	}
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeErr(w, http.StatusBadRequest, client.CodeBadRequest, "since: "+err.Error())
			return true
		}
		since = t
	}
	out := client.LogList{Entries: []client.LogEntry{}, Source: "loki"}
	for _, e := range s.logs {
		if (vmID == "" || e.Metadata["vm_id"] == vmID) && !e.Time.Before(since) {
			out.Entries = append(out.Entries, e)
		}
	}
	slices.SortFunc(out.Entries, func(a, b client.LogEntry) int { return b.Time.Compare(a.Time) })
	writeJSON(w, http.StatusOK, out)
	return true
}
