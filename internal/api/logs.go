package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

// maxLogContains bounds ?q=: a line filter, not a document.
const maxLogContains = 1024

// listLogs answers GET /api/v1/logs: the caller's log entries, filtered by ids (each checked to be the caller's
// first), time range and a substring. From Loki when configured; else an execution's stored output.
func (s *server) listLogs(w http.ResponseWriter, r *http.Request) {
	f, ok := s.parseLogFilter(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f.VMID, f.ExecutionID, f.RunID = q.Get("vm_id"), q.Get("execution_id"), q.Get("run_id")
	// Ownership first: an id the caller does not own is a 404, exactly as its own route answers.
	var exec *model.Execution
	if f.VMID != "" {
		if _, err := s.svc.GetVM(r.Context(), f.OwnerID, f.VMID); err != nil {
			s.writeServiceError(w, r, err)
			return
		}
	}
	if f.ExecutionID != "" {
		e, err := s.svc.GetExecution(r.Context(), f.OwnerID, f.ExecutionID)
		if err != nil {
			s.writeServiceError(w, r, err)
			return
		}
		exec = e
	}
	if f.RunID != "" {
		if _, err := s.svc.GetRun(r.Context(), f.OwnerID, f.RunID); err != nil {
			s.writeServiceError(w, r, err)
			return
		}
	}
	if s.logs != nil {
		s.answerLogs(w, r, f)
		return
	}
	if exec == nil || (f.VMID != "" && f.VMID != exec.VMID) || f.RunID != "" {
		s.writeError(w, r, http.StatusNotImplemented, client.CodeNotImplemented,
			"log queries need a Loki (server setting loki_url); without one, only ?execution_id= is answered, from the execution's stored output")
		return
	}
	s.writeJSON(w, r, http.StatusOK, client.LogList{Entries: storedOutput(exec, f), Source: "store"})
}

// vmLogs answers GET /api/v1/vms/{id}/logs: what the VM printed on its console (and its agent's log), kept in Loki
// after the VM is gone.
func (s *server) vmLogs(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	f, ok := s.parseLogFilter(w, r)
	if !ok {
		return
	}
	if _, err := s.svc.GetVM(r.Context(), f.OwnerID, id); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	if s.logs == nil {
		s.writeError(w, r, http.StatusNotImplemented, client.CodeNotImplemented,
			"VM console logs need a Loki (server setting loki_url): without one they are not kept")
		return
	}
	f.VMID, f.Kind = id, logs.KindConsole
	s.answerLogs(w, r, f)
}

func (s *server) answerLogs(w http.ResponseWriter, r *http.Request, f logs.Filter) {
	entries, err := s.logs.Query(r.Context(), f)
	if err != nil {
		s.log.WarnContext(r.Context(), "log query failed", "err", err, "request_id", requestIDFrom(r.Context()))
		var se *logs.StatusError
		msg := "the log store did not answer"
		if errors.As(err, &se) && se.Code == http.StatusBadRequest {
			msg = "the log store refused the query"
		}
		s.writeError(w, r, http.StatusBadGateway, client.CodeUnavailable, msg)
		return
	}
	out := client.LogList{Entries: make([]client.LogEntry, 0, len(entries)), Source: "loki"}
	for _, e := range entries {
		out.Entries = append(out.Entries, client.LogEntry{Time: e.Time.UTC(), Line: e.Line, Kind: e.Labels.Kind,
			Level: e.Labels.Level, Metadata: e.Metadata})
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// parseLogFilter reads since, until (RFC 3339), limit (1..MaxQueryLimit, default 100) and q; the owner is the
// caller's, always.
func (s *server) parseLogFilter(w http.ResponseWriter, r *http.Request) (logs.Filter, bool) {
	q := r.URL.Query()
	f := logs.Filter{OwnerID: ownerFrom(r.Context()), Contains: q.Get("q"), Limit: 100}
	bad := func(msg string) (logs.Filter, bool) {
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, msg)
		return f, false
	}
	for _, p := range []struct {
		name string
		t    *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if raw := q.Get(p.name); raw != "" {
			t, err := time.Parse(time.RFC3339Nano, raw)
			if err != nil {
				return bad(fmt.Sprintf("%s must be an RFC 3339 time such as 2026-01-02T15:04:05Z (got %q)", p.name, truncate(raw, 64)))
			}
			*p.t = t
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return bad("since must be before until")
	}
	if raw := q.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > logs.MaxQueryLimit {
			return bad(fmt.Sprintf("limit must be between 1 and %d (got %q)", logs.MaxQueryLimit, truncate(raw, 32)))
		}
		f.Limit = n
	}
	if len(f.Contains) > maxLogContains {
		return bad(fmt.Sprintf("q must be at most %d bytes", maxLogContains))
	}
	return f, true
}

// storedOutput turns an execution's stored stdout and stderr into entries, the ones containing f.Contains, at most
// f.Limit (the last ones). The store keeps no time per line: every line carries the execution's start time.
func storedOutput(e *model.Execution, f logs.Filter) []client.LogEntry {
	at := e.CreatedAt
	if e.StartedAt != nil {
		at = *e.StartedAt
	}
	var out []client.LogEntry
	for _, s := range []struct{ name, text string }{{"stdout", e.Stdout}, {"stderr", e.Stderr}} {
		for _, line := range strings.Split(strings.TrimSuffix(s.text, "\n"), "\n") {
			if line == "" && s.text == "" {
				continue
			}
			if f.Contains != "" && !strings.Contains(line, f.Contains) {
				continue
			}
			out = append(out, client.LogEntry{Time: at.UTC(), Line: line, Kind: logs.KindExec, Level: "info",
				Metadata: map[string]string{logs.MetaExecutionID: e.ID, logs.MetaVMID: e.VMID, logs.MetaStream: s.name}})
		}
	}
	if len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
