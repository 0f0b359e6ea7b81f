package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// ToRun is the API's view of a run: the request it was given (credential-like env values masked) and its state.
func ToRun(r *model.Run) client.Run {
	out := client.Run{
		ID: r.ID, Status: string(r.Status), Prompt: r.Spec.Prompt, Agent: r.Spec.Agent, Model: r.Spec.Model,
		Repo:     client.RunRepo{URL: r.Spec.Repo.URL, Ref: r.Spec.Repo.Ref, CredentialsSecret: r.Spec.Repo.CredentialsSecret},
		MaxTurns: r.Spec.MaxTurns, TimeoutSeconds: r.Spec.TimeoutSeconds, Tools: r.Spec.Tools,
		Env: secrets.MaskEnv(r.Spec.Env), SecretEnv: r.Spec.SecretEnv, VMID: r.VMID, KeepVM: r.Spec.KeepVM,
		TaskID: r.TaskID, WorkerID: r.WorkerID, Error: r.Error, CancelRequested: r.CancelRequested,
		Usage: client.RunUsage(r.Usage), CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, StartedAt: r.StartedAt,
		CompletedAt: r.CompletedAt,
	}
	if r.Spec.Push != nil {
		out.Push = &client.RunPush{Branch: r.Spec.Push.Branch, DraftPR: r.Spec.Push.DraftPR}
	}
	if res := r.Result; res != nil {
		cr := client.RunResult{
			Text: res.Text, IsError: res.IsError, Subtype: res.Subtype, ExitCode: res.ExitCode, TimedOut: res.TimedOut,
			Turns: res.Turns, AgentCostUSD: res.AgentCostUSD, BaseCommit: res.BaseCommit, HeadCommit: res.HeadCommit,
			DiffTruncated: res.DiffTruncated, PushedBranch: res.PushedBranch, StderrTail: res.StderrTail,
		}
		if res.DiffStat != nil {
			ds := client.DiffStat(*res.DiffStat)
			cr.DiffStat = &ds
		}
		for _, c := range res.Commits {
			cr.Commits = append(cr.Commits, client.RunCommit(c))
		}
		out.Result = &cr
	}
	return out
}

func (s *server) createRun(w http.ResponseWriter, r *http.Request) {
	var req client.CreateRunRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	run, t, err := s.svc.CreateRun(mctx, owner, req)
	if err != nil {
		var tl *task.TooLargeError
		if errors.As(err, &tl) {
			s.writeError(w, r, http.StatusRequestEntityTooLarge, client.CodeTooLarge, tl.Error())
			return
		}
		s.writeServiceError(w, r, err)
		return
	}
	out := ToRun(run)
	w.Header().Set("Location", "/api/v1/runs/"+run.ID)
	s.writeJSON(w, r, http.StatusAccepted, client.RunAccepted{TaskID: t.ID, Run: &out})
}

func (s *server) getRun(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "run")
	if !ok {
		return
	}
	run, err := s.svc.GetRun(r.Context(), ownerFrom(r.Context()), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ToRun(run))
}

func (s *server) listRuns(w http.ResponseWriter, r *http.Request) {
	page, ok := s.parsePage(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f := store.RunFilter{VMID: q.Get("vm_id"), RepoURL: q.Get("repo"), Page: page}
	for _, v := range q["status"] {
		for _, st := range strings.Split(v, ",") {
			if st = strings.TrimSpace(st); st != "" {
				f.Statuses = append(f.Statuses, model.RunStatus(st))
			}
		}
	}
	runs, next, err := s.svc.ListRuns(r.Context(), ownerFrom(r.Context()), f)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.RunList{Runs: make([]client.Run, 0, len(runs)), NextCursor: next}
	for _, run := range runs {
		out.Runs = append(out.Runs, ToRun(run))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) cancelRun(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "run")
	if !ok {
		return
	}
	mctx, done := mutationContext(r.Context())
	defer done()
	run, err := s.svc.CancelRun(mctx, ownerFrom(r.Context()), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusAccepted, ToRun(run))
}

// runDiff serves the run's patch against the commit it started from, as text (git's binary patch format for
// binary files). It is empty until the agent has finished.
func (s *server) runDiff(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "run")
	if !ok {
		return
	}
	diff, err := s.svc.RunDiff(r.Context(), ownerFrom(r.Context()), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/x-diff; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(diff)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(diff)
}

// streamRun serves a run's transcript as server-sent events: one event per transcript entry, its type the
// entry's type, its id the entry's seq (so Last-Event-ID resumes), its data the client.RunEvent; the last is `end`.
func (s *server) streamRun(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "run")
	if !ok {
		return
	}
	var after int64
	for _, raw := range []string{r.Header.Get("Last-Event-ID"), r.URL.Query().Get("after")} {
		if raw == "" {
			continue
		}
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest,
				fmt.Sprintf("Last-Event-ID/after: %q is not a non-negative event number", raw))
			return
		}
		after = n
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	if _, err := s.svc.GetRun(ctx, owner, id); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: w, rc: rc}
	if err := sw.comment("run " + id); err != nil {
		return
	}
	err := s.svc.StreamRun(ctx, owner, id, task.RunStreamOptions{After: after, Heartbeat: s.heartbeat}, func(e *model.RunEvent) error {
		if e == nil {
			return sw.comment("ping")
		}
		return sw.idEvent(strconv.FormatInt(e.Seq, 10), e.Type, client.RunEvent{Seq: e.Seq, Type: e.Type, Data: e.Data, Time: e.Time})
	})
	if err != nil && ctx.Err() == nil {
		s.log.DebugContext(ctx, "run stream ended early", "run_id", id, "err", err, "request_id", requestIDFrom(ctx))
	}
}

func (s *server) listAgents(w http.ResponseWriter, r *http.Request) {
	out := struct {
		Agents []client.Agent `json:"agents"`
	}{Agents: []client.Agent{}}
	for _, a := range s.svc.Agents().All() {
		out.Agents = append(out.Agents, client.Agent{Name: a.Name, Description: a.Description, Command: a.Command,
			Tools: a.Tools, User: a.User, Output: a.Output, Proxy: a.Proxy})
	}
	s.writeJSON(w, r, http.StatusOK, out)
}
