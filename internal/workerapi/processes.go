package workerapi

import (
	"encoding/base64"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/workerapi/wire"
	"github.com/aetherium/aetherium/pkg/client"
)

func (s *server) startProcess(w http.ResponseWriter, r *http.Request) {
	var req client.StartProcessRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if err := wire.NormalizeStart(&req, s.maxTimeout); err != nil {
		s.fail(w, r, "process", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	er := agent.ExecRequest{Shell: req.Shell, Env: req.Env, WorkingDir: req.WorkingDir, User: req.User,
		Timeout: time.Duration(req.TimeoutSeconds) * time.Second, ID: req.ID}
	if req.Command != "" {
		er.Argv = append([]string{req.Command}, req.Args...)
	}
	info, err := ag.StartProcess(r.Context(), er)
	if err != nil {
		s.fail(w, r, "process", err)
		return
	}
	writeJSON(w, http.StatusCreated, Process(*info))
}

func (s *server) listProcesses(w http.ResponseWriter, r *http.Request) {
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	procs, err := ag.ListProcesses(r.Context())
	if err != nil {
		s.fail(w, r, "process", err)
		return
	}
	out := client.ProcessList{Processes: make([]client.Process, len(procs))}
	for i, p := range procs {
		out.Processes[i] = Process(p)
	}
	writeJSON(w, http.StatusOK, out)
}

// processID reads {pid}; an id the agent could not have made answers 404 like a missing process.
func (s *server) processID(w http.ResponseWriter, r *http.Request) (string, bool) {
	pid := chi.URLParam(r, "pid")
	if !wire.ValidProcessID(pid) {
		writeError(w, http.StatusNotFound, client.CodeProcessNotFound, "no process "+pid)
		return "", false
	}
	return pid, true
}

func (s *server) processOutput(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	o, err := wire.ParseOutput(r.URL.Query())
	if err != nil {
		s.fail(w, r, "process", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	out, err := ag.ReadProcessOutput(r.Context(), pid, agent.OutputStream(o.Stream), o.Offset, o.MaxBytes)
	if err != nil {
		s.fail(w, r, "process", err)
		return
	}
	po := client.ProcessOutput{Stream: o.Stream, Offset: out.Offset, NextOffset: out.NextOffset, Dropped: out.Dropped,
		Total: out.Total, EOF: out.EOF}
	if utf8.Valid(out.Data) {
		po.Data = string(out.Data)
	} else {
		po.DataBase64 = base64.StdEncoding.EncodeToString(out.Data)
	}
	writeJSON(w, http.StatusOK, po)
}

func (s *server) waitProcess(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	timeout, err := wire.ParseWait(r.URL.Query(), s.maxWait)
	if err != nil {
		s.fail(w, r, "process", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	info, err := ag.WaitProcess(r.Context(), pid, timeout)
	if err != nil {
		s.fail(w, r, "process", err)
		return
	}
	writeJSON(w, http.StatusOK, Process(*info))
}

func (s *server) signalProcess(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	var req client.SignalRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if err := wire.NormalizeSignal(&req); err != nil {
		s.fail(w, r, "process", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	if err := ag.Signal(r.Context(), pid, req.Signal); err != nil {
		s.fail(w, r, "process", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) removeProcess(w http.ResponseWriter, r *http.Request) {
	pid, ok := s.processID(w, r)
	if !ok {
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	if err := ag.RemoveProcess(r.Context(), pid); err != nil {
		s.fail(w, r, "process", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Process is the API's form of an agent's process.
func Process(p agent.ProcessInfo) client.Process {
	out := client.Process{ID: p.ID, PID: p.PID, Command: p.Command, TTY: p.Pty, Attached: p.Attached,
		State: string(p.State), StartedAt: p.StartedAt.UTC(), StdoutBytes: p.StdoutBytes, StderrBytes: p.StderrBytes}
	if res := p.Result; res != nil {
		code := res.ExitCode
		out.ExitCode, out.Signal, out.TimedOut, out.DurationMS = &code, res.Signal, res.TimedOut, durationMS(res.Duration)
	}
	return out
}
