package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/gitrepo"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/task"
)

// Agent runs (run:agent). A run is prepared (its VM created or found, a guest user made, the repository cloned at
// its ref), then its agent is started, once: from the moment the run is marked running, a redelivery of its task
// fails it as interrupted instead of starting a second agent. The agent's output is its transcript, stored event
// by event; afterwards the worker commits and pushes when asked, records the diff, the commits and the diff stat,
// and deletes the VM it made unless keep_vm.
//
// Credentials: the agent reaches its model and the repository through the worker's credential proxy with a
// token of its VM (credproxy), never with the owner's keys. The agent's token may fetch the repository but not
// push: the push happens after the agent and every process of the run are gone, with a token of its own.

// Where runs work in the guest.
const (
	runHome       = "/home/agent"
	runWorkspaces = runHome + "/runs"
	runEnvID      = "AETHERIUM_RUN_ID" // set for every process of a run, so its leftovers can be found and killed
)

// Bounds of what a run keeps.
const (
	maxRunDiffBytes   = 8 << 20   // the stored patch
	maxRunEventBytes  = 256 << 10 // one transcript event; longer ones are cut (with a marker)
	maxRunLineBytes   = 8 << 20   // one line of agent output before it is cut
	maxRunEvents      = 50_000    // per run; later events are counted, not stored
	stderrTailBytes   = 8 << 10
	runCancelPoll     = time.Second
	runEventFlushTime = 200 * time.Millisecond
	runPrepTimeout    = 10 * time.Minute // clone and setup
	runStepTimeout    = 5 * time.Minute  // each step after the agent
)

// errRunCancelled ends a run's steps when it is cancelled.
var errRunCancelled = errors.New("cancelled")

func (w *Worker) agentCatalog() *agents.Catalog {
	if w.cfg.Agents != nil {
		return w.cfg.Agents
	}
	return agents.Default()
}

func (w *Worker) handleRun(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	var p task.RunPayload
	if err := decode(t, &p); err != nil {
		return nil, err
	}
	run, err := w.cfg.Store.Runs().Get(ctx, p.RunID)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	result := func(r *model.Run) (json.RawMessage, error) {
		return encode(task.RunResult{RunID: r.ID, Status: r.Status})
	}
	switch {
	case run.Status.Done():
		// Ended without this worker: cancelled before it started (its VM was never made), or failed as lost by
		// a gateway while this worker was away. What the run made goes either way.
		w.cleanupRunVM(ctx, run)
		return result(run)
	case run.Status == model.RunRunning:
		r := w.finishRun(ctx, run, model.RunFailed, "interrupted: the worker stopped while the agent was running; a started agent is never started again", nil)
		w.cleanupRunVM(ctx, r)
		return result(r)
	}
	// Every attempt runs where the run's VM is.
	if host, err := w.runHost(ctx, run); err != nil {
		return nil, err
	} else if host != "" {
		w.log.Info("run's vm is on another worker; rerouting the run there", "run_id", run.ID, "vm_id", run.VMID, "to", host)
		return nil, queue.Reroute(host)
	}
	r, err := w.runAgent(ctx, t, run)
	if err != nil && !queue.IsPermanent(err) && !lastAttempt(t) && !errors.Is(err, errRunCancelled) {
		w.log.Warn("run preparation failed; it is retried", "run_id", run.ID, "err", err)
		return nil, err // still preparing: the next attempt starts the preparation again
	}
	if err != nil {
		status, reason := model.RunFailed, err.Error()
		if errors.Is(err, errRunCancelled) {
			status, reason = model.RunCancelled, "cancelled before the agent started"
		}
		r = w.finishRun(ctx, run, status, reason, nil)
		w.cleanupRunVM(ctx, r)
	}
	return result(r)
}

// runHost returns the worker the run must run on when it is not this one: the one hosting its VM.
func (w *Worker) runHost(ctx context.Context, run *model.Run) (string, error) {
	vm, err := w.cfg.Store.VMs().Get(ctx, run.VMID)
	if errors.Is(err, model.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	switch vm.Status {
	case model.VMPending, model.VMCreating, model.VMDeleted:
		return "", nil
	}
	if vm.WorkerID == "" || vm.WorkerID == w.cfg.ID {
		return "", nil
	}
	return vm.WorkerID, nil
}

// runAgent prepares the run's VM and repository and runs its agent. It returns the finished run, or an error for
// a failure before the agent started (retried unless permanent).
func (w *Worker) runAgent(ctx context.Context, t *model.Task, run *model.Run) (*model.Run, error) {
	log := w.log.With("run_id", run.ID, "vm_id", run.VMID)
	ag, err := w.agentCatalog().Get(run.Spec.Agent)
	if err != nil {
		return nil, queue.Permanent(fmt.Errorf("this worker's agent catalog: %w", err))
	}
	if (len(ag.Proxy) > 0 || run.Spec.GitProxy) && w.cfg.ProxyEnv == nil {
		return nil, queue.Permanent(errNoProxy)
	}
	run, err = w.cfg.Store.Runs().Update(ctx, run.ID, func(r *model.Run) error {
		if r.Status.Done() || r.Status == model.RunRunning {
			return queue.Permanent(fmt.Errorf("run %s is already %s", r.ID, r.Status))
		}
		if r.CancelRequested {
			return errRunCancelled
		}
		r.Status, r.WorkerID = model.RunPreparing, w.cfg.ID
		if r.StartedAt == nil {
			r.StartedAt = utcNow()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The environment: the run's own, its secrets, the worker's guest settings. The scrubber knows every secret
	// of the owner, so none of them is stored or streamed from the agent's output.
	env, scrub, reason, err := w.resolveSecrets(ctx, &model.Execution{OwnerID: run.OwnerID, Env: run.Spec.Env, SecretEnv: run.Spec.SecretEnv})
	if err != nil {
		return nil, err
	}
	if reason != "" {
		return nil, queue.Permanent(errors.New(reason))
	}
	tr := w.newTranscript(ctx, run, scrub)
	defer tr.close() // before any end event: finishRun appends it after the transcript's last

	// The VM: made for the run, or the one it was given.
	if run.Spec.VMSpec != nil {
		tr.status("preparing", "creating vm "+run.VMID)
		tl := &toolLog{w: w, vmID: run.VMID}
		vm, err := w.createVM(ctx, run.VMID, lastAttempt(t), tl)
		if err != nil {
			return nil, err
		}
		if vm.Status != model.VMRunning {
			return nil, queue.Permanent(fmt.Errorf("vm %s is %s", vm.ID, vm.Status))
		}
		w.pinTask(ctx, t.ID) // the VM lives here now, and so do the run's retries
	}
	vm, err := w.cfg.Store.VMs().Get(ctx, run.VMID)
	if err != nil {
		return nil, err
	}
	if vm.Status != model.VMRunning || vm.WorkerID != w.cfg.ID {
		return nil, queue.Permanent(fmt.Errorf("vm %s is %s", vm.ID, vm.Status))
	}
	defer w.activity.Begin(vm.ID)() // a VM running an agent is never idle

	repo, err := gitrepo.Parse(run.Spec.Repo.URL)
	if err != nil {
		return nil, queue.Permanent(err)
	}
	rg := &runGuest{w: w, vm: vm, run: run, repo: repo, user: ag.User, scrub: scrub,
		workspace: runWorkspaces + "/" + run.ID + "/" + repo.Name()}
	if rg.user == "" {
		rg.user = "root"
	}
	fetchEnv, err := rg.proxyEnv(ctx, false)
	if err != nil {
		return nil, queue.Permanent(err)
	}

	// Preparation: the guest user and the clone. A failure here is the repository's or the guest's, not the
	// infrastructure's: it is reported, not retried (the VM itself was made above, with retries).
	pctx, cancelPrep := context.WithTimeoutCause(ctx, runPrepTimeout, errors.New("preparation timed out"))
	defer cancelPrep()
	pctx, cancelClone := context.WithCancelCause(pctx)
	stopPrepWatch := w.watchRunCancel(pctx, run, func() { cancelClone(errRunCancelled) })
	tr.status("preparing", "cloning "+run.Spec.Repo.URL+refSuffix(run.Spec.Repo.Ref))
	base, err := rg.prepare(pctx, fetchEnv)
	stopPrepWatch()
	if err != nil {
		switch {
		case errors.Is(context.Cause(pctx), errRunCancelled):
			return nil, errRunCancelled
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		return nil, queue.Permanent(err)
	}

	// The agent starts now, once.
	run, err = w.cfg.Store.Runs().Update(ctx, run.ID, func(r *model.Run) error {
		if r.CancelRequested {
			return errRunCancelled
		}
		if r.Status != model.RunPreparing {
			return queue.Permanent(fmt.Errorf("run %s is %s", r.ID, r.Status))
		}
		r.Status = model.RunRunning
		// Never started again: its credential-like env values are needed no more.
		r.Spec.Env = secrets.MaskEnv(r.Spec.Env)
		return nil
	})
	if err != nil {
		return nil, err
	}
	tr.setRun(run)
	tr.status("running", "agent "+ag.Name+" started")
	log.Info("agent started", "agent", ag.Name, "base_commit", base)

	agentEnv := maps.Clone(env)
	if agentEnv == nil {
		agentEnv = map[string]string{}
	}
	maps.Copy(agentEnv, ag.Env)
	maps.Copy(agentEnv, fetchEnv) // the proxy's settings win over anything of the run
	agentEnv[runEnvID] = run.ID
	agentEnv["HOME"] = runHome
	agentEnv = w.guestExecEnv(vm, agentEnv)
	req := agent.ExecRequest{
		Argv: ag.Argv(agents.Invocation{Prompt: run.Spec.Prompt, Model: run.Spec.Model, MaxTurns: run.Spec.MaxTurns}),
		Env:  agentEnv, WorkingDir: rg.workspace, User: rg.user,
		Timeout: time.Duration(run.Spec.TimeoutSeconds) * time.Second, ID: "run-" + run.ID,
	}
	actx, cancelAgent := context.WithCancelCause(ctx)
	defer cancelAgent(nil)
	stopWatch := w.watchRunCancel(actx, run, func() { cancelAgent(errRunCancelled) })
	out := newAgentOutput(tr, ag.Output)
	res, execErr := w.cfg.Backend.ExecuteStream(actx, vm.ID, req, out.stdout(), out.stderr())
	stopWatch()
	out.finish()
	cancelled := errors.Is(context.Cause(actx), errRunCancelled)

	// Whatever happened, nothing of the run may go on running in the guest.
	sctx, cancelSteps := context.WithTimeout(context.WithoutCancel(ctx), 3*runStepTimeout)
	defer cancelSteps()
	rg.killLeftovers(sctx)

	result := out.result()
	if res != nil {
		code := res.ExitCode
		result.ExitCode, result.TimedOut = &code, res.TimedOut
	}
	status, reason := model.RunCompleted, ""
	switch {
	case cancelled:
		status, reason = model.RunCancelled, "cancelled while the agent was running"
	case ctx.Err() != nil:
		status, reason = model.RunFailed, "interrupted: the worker stopped while the agent was running; a started agent is never started again"
	case execErr != nil:
		w.Kick() // the VM may have died
		status, reason = model.RunFailed, "the agent could not run to its end: "+scrub.String(execErr.Error())
	case res.TimedOut:
		status, reason = model.RunFailed, fmt.Sprintf("the agent ran out of time (timeout_seconds %d)", run.Spec.TimeoutSeconds)
	case res.ExitCode != 0:
		status, reason = model.RunFailed, fmt.Sprintf("the agent exited with code %d", res.ExitCode)
	case result.IsError:
		status, reason = model.RunFailed, "the agent reported an error"
		if result.Subtype != "" {
			status, reason = model.RunFailed, "the agent reported an error ("+result.Subtype+")"
		}
	}
	if status == model.RunFailed && result.StderrTail != "" {
		reason += ": " + lastLine(result.StderrTail)
	}

	// Results: push (only work that completed), then what changed. A step that fails is reported in the run's
	// error, never hides the agent's result.
	// The steps after the agent need its VM: skip them when the agent's exec broke (the VM may be gone) or the
	// worker is stopping (they would hold its shutdown).
	alive := (execErr == nil || cancelled) && ctx.Err() == nil
	if alive && status == model.RunCompleted && run.Spec.Push != nil {
		tr.status("pushing", "pushing branch "+rg.pushBranch())
		if err := rg.push(sctx); err != nil {
			status, reason = model.RunFailed, "the agent finished but its branch could not be pushed: "+scrub.String(err.Error())
		} else {
			result.PushedBranch = rg.pushBranch()
			tr.status("pushing", "pushed branch "+result.PushedBranch)
		}
	}
	// A cancelled run ends now: what the agent changed is not read (it would hold the cancel for as long as git
	// takes in the guest), and its VM is kept or deleted as asked.
	if alive && !cancelled {
		if err := rg.collect(sctx, base, &result); err != nil {
			log.Warn("could not collect the run's changes", "err", err)
			if reason == "" {
				reason = "the agent finished but its changes could not be read: " + scrub.String(err.Error())
				status = model.RunFailed
			}
		}
	}
	tr.close()
	r := w.finishRun(context.WithoutCancel(ctx), run, status, reason, &result)
	w.cleanupRunVM(context.WithoutCancel(ctx), r)
	log.Info("run ended", "status", r.Status, "error", r.Error)
	return r, nil
}

func refSuffix(ref string) string {
	if ref == "" {
		return ""
	}
	return " at " + ref
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 500 {
		s = s[len(s)-500:]
	}
	return s
}

// finishRun records a run's end (status, reason, result) and appends its end event. It is kept trying through
// database blips (persist): the run has ended, and its record must not be lost.
func (w *Worker) finishRun(ctx context.Context, run *model.Run, status model.RunStatus, reason string, result *model.RunResult) *model.Run {
	r, err := persist(ctx, w.log, func(ctx context.Context) (*model.Run, error) {
		return w.cfg.Store.Runs().Update(ctx, run.ID, func(r *model.Run) error {
			if r.Status.Done() {
				return nil
			}
			r.Status, r.Error, r.CompletedAt = status, reason, utcNow()
			if result != nil {
				r.Result = result
			}
			r.Spec.Env = secrets.MaskEnv(r.Spec.Env)
			return nil
		})
	})
	if err != nil {
		w.log.Error("could not record the end of a run", "run_id", run.ID, "err", err)
		return run
	}
	end := &model.RunEvent{Type: model.RunEventEnd, Data: task.EndData(r)}
	if _, err := persist(ctx, w.log, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, task.AppendRunEvents(ctx, w.cfg.Store, w.bus(), r, end)
	}); err != nil {
		w.log.Error("could not record the end event of a run", "run_id", run.ID, "err", err)
	}
	return r
}

// cleanupRunVM deletes the VM a run made, unless it was asked to keep it; a VM the run was given is never deleted.
func (w *Worker) cleanupRunVM(ctx context.Context, r *model.Run) {
	if r.Spec.VMSpec == nil || r.Spec.KeepVM || r.VMID == "" {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	vm, err := w.cfg.Store.VMs().Get(dctx, r.VMID)
	if err != nil || vm.Status == model.VMDeleted {
		return
	}
	if vm.Status == model.VMPending && vm.WorkerID == "" {
		w.forgetRunVM(dctx, r)
		return
	}
	if err := w.deleteVM(dctx, r.VMID); err != nil {
		w.log.Error("could not delete the vm of a run", "run_id", r.ID, "vm_id", r.VMID, "err", err)
	}
}

// forgetRunVM marks the pending VM of a run that never started deleted: nothing was made for it.
func (w *Worker) forgetRunVM(ctx context.Context, r *model.Run) {
	_, err := w.cfg.Store.VMs().Update(ctx, r.VMID, func(v *model.VM) error {
		if v.Status != model.VMPending || v.WorkerID != "" {
			return errSkip
		}
		v.Status, v.StoppedAt, v.Error = model.VMDeleted, utcNow(), "its run was cancelled before it started"
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) && !errors.Is(err, model.ErrNotFound) {
		w.log.Warn("could not forget the vm of a cancelled run", "run_id", r.ID, "vm_id", r.VMID, "err", err)
	}
}

// watchRunCancel calls cancel once the run is cancelled: told on the run's topic, or seen in its row (read every
// runCancelPoll, so a lost event costs a second). The returned function stops watching.
func (w *Worker) watchRunCancel(ctx context.Context, run *model.Run, cancel func()) (stop func()) {
	wctx, stopCtx := context.WithCancel(ctx)
	var notes <-chan events.Event
	if bus := w.bus(); bus != nil {
		if sub, err := bus.Subscribe(wctx, task.RunTopic(run.ID)); err == nil {
			notes = sub.C()
			context.AfterFunc(wctx, func() { _ = sub.Close() })
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(runCancelPoll)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case ev := <-notes:
				if ev.Type != task.EventRunCancel {
					continue
				}
			case <-tick.C:
				r, err := w.cfg.Store.Runs().Get(wctx, run.ID)
				if err != nil || !r.CancelRequested {
					continue
				}
			}
			w.log.Info("run cancelled; stopping its agent", "run_id", run.ID)
			cancel()
			return
		}
	}()
	return func() { stopCtx(); <-done }
}

// runGuest does a run's work in its VM.
type runGuest struct {
	w         *Worker
	vm        *model.VM
	run       *model.Run
	repo      gitrepo.Repo
	user      string
	workspace string
	scrub     *secrets.Scrubber // the owner's secrets, resolved once for the run
}

// proxyEnv is the credential proxy's environment for the run: its model APIs always, its repository when it goes
// through the proxy; pushing only when push is set (the push step, after the agent).
func (g *runGuest) proxyEnv(ctx context.Context, push bool) (map[string]string, error) {
	if g.w.cfg.ProxyEnv == nil {
		return map[string]string{}, nil
	}
	req := ProxyRequest{RunID: g.run.ID}
	if g.run.Spec.GitProxy {
		req.GitRepos, req.GitPush, req.GitSecret = []string{g.repo.Key()}, push, g.run.Spec.GitSecret
		if push {
			req.PushRefs = []string{"refs/heads/" + g.pushBranch()} // the run's own branch, nothing else
		}
	}
	env, err := g.w.cfg.ProxyEnv(ctx, g.vm, req)
	if err != nil {
		return nil, fmt.Errorf("credential proxy settings: %w", err)
	}
	return env, nil
}

// cloneURL is where the guest fetches the repository from.
func (g *runGuest) cloneURL(env map[string]string) string {
	if g.run.Spec.GitProxy && env["AETHERIUM_GIT_PROXY"] != "" {
		return env["AETHERIUM_GIT_PROXY"] + "/" + g.repo.Host + "/" + g.repo.Path + ".git"
	}
	return g.repo.HTTPSURL()
}

func (g *runGuest) pushBranch() string {
	if g.run.Spec.Push != nil && g.run.Spec.Push.Branch != "" {
		return g.run.Spec.Push.Branch
	}
	return "aetherium/run-" + g.run.ID[:8]
}

// sh runs a shell script in the guest as user (root when ""), with env; user values travel in env, never in the
// script's text.
func (g *runGuest) sh(ctx context.Context, user, script string, env map[string]string, maxOut int) (*agent.ExecResult, error) {
	e := maps.Clone(env)
	if e == nil {
		e = map[string]string{}
	}
	if _, set := e[runEnvID]; !set {
		e[runEnvID] = g.run.ID
	}
	e["GIT_TERMINAL_PROMPT"] = "0"
	req := agent.ExecRequest{Shell: script, Env: g.w.guestExecEnv(g.vm, e), User: user, Timeout: runStepTimeout,
		MaxOutputBytes: maxOut}
	return g.w.cfg.Backend.ExecuteCommand(ctx, g.vm.ID, req)
}

// stepError describes a failed guest step with the end of what it printed.
func stepError(what string, res *agent.ExecResult) error {
	out := strings.TrimSpace(string(res.Stderr))
	if out == "" {
		out = strings.TrimSpace(string(res.Stdout))
	}
	if len(out) > 2000 {
		out = "..." + out[len(out)-2000:]
	}
	if res.TimedOut {
		return fmt.Errorf("%s timed out: %s", what, out)
	}
	return fmt.Errorf("%s failed (exit %d): %s", what, res.ExitCode, out)
}

// prepareScript makes the run's guest user (when it is not root), its workspace, and the clone at the ref, and
// prints the commit the run starts from.
const userScript = `set -e
u="$RUN_USER"
if [ "$u" != root ] && ! id -u "$u" >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then
    useradd --create-home --home-dir "$RUN_HOME" --shell /bin/sh "$u"
  else
    uid=1000; while grep -q "^[^:]*:[^:]*:$uid:" /etc/passwd; do uid=$((uid+1)); done
    echo "$u:x:$uid:$uid::$RUN_HOME:/bin/sh" >> /etc/passwd
    echo "$u:x:$uid:" >> /etc/group
  fi
fi
mkdir -p "$RUN_PARENT"
if [ "$u" != root ]; then chown "$u:" "$RUN_HOME" "$RUN_HOME/runs" "$RUN_PARENT" 2>/dev/null || chown "$u" "$RUN_HOME" "$RUN_HOME/runs" "$RUN_PARENT"; fi
rm -rf "$RUN_WORKSPACE"
`

// cloneScript clones at the ref in as few git processes as it can (each costs a second or more on an emulated
// CPU): a branch or tag is cloned directly with its identity set; a commit (or a ref the server does not
// advertise) is fetched after a plain clone.
const cloneScript = `set -e
if [ -z "$RUN_REF" ]; then
  git clone --quiet -c "user.name=$RUN_GIT_NAME" -c "user.email=$RUN_GIT_EMAIL" -- "$RUN_CLONE_URL" "$RUN_WORKSPACE"
elif ! git clone --quiet -c "user.name=$RUN_GIT_NAME" -c "user.email=$RUN_GIT_EMAIL" --branch "$RUN_REF" -- "$RUN_CLONE_URL" "$RUN_WORKSPACE" 2>/dev/null; then
  rm -rf "$RUN_WORKSPACE"
  git clone --quiet -c "user.name=$RUN_GIT_NAME" -c "user.email=$RUN_GIT_EMAIL" -- "$RUN_CLONE_URL" "$RUN_WORKSPACE"
  cd "$RUN_WORKSPACE"
  if ! git -c advice.detachedHead=false checkout --quiet "$RUN_REF" -- 2>/dev/null; then
    git fetch --quiet origin "$RUN_REF"
    git -c advice.detachedHead=false checkout --quiet FETCH_HEAD
  fi
fi
cd "$RUN_WORKSPACE"
if [ -n "$RUN_BRANCH" ]; then git checkout --quiet -b "$RUN_BRANCH"; fi
git rev-parse HEAD
`

func (g *runGuest) prepare(ctx context.Context, fetchEnv map[string]string) (base string, err error) {
	env := map[string]string{"RUN_USER": g.user, "RUN_HOME": runHome, "RUN_PARENT": runWorkspaces + "/" + g.run.ID,
		"RUN_WORKSPACE": g.workspace}
	if g.user == "root" {
		env["RUN_HOME"] = "/root"
	}
	started := time.Now()
	res, err := g.sh(ctx, "", userScript, env, 64<<10)
	if err != nil {
		return "", fmt.Errorf("prepare the guest: %w", err)
	}
	userTook := time.Since(started)
	if res.ExitCode != 0 {
		return "", stepError("preparing the guest user "+g.user, res)
	}
	cenv := maps.Clone(fetchEnv)
	maps.Copy(cenv, map[string]string{"RUN_CLONE_URL": g.cloneURL(fetchEnv), "RUN_WORKSPACE": g.workspace,
		"RUN_REF": g.run.Spec.Repo.Ref, "RUN_GIT_NAME": "Aetherium agent", "RUN_GIT_EMAIL": "agent@aetherium.invalid",
		"HOME": runHome})
	if g.run.Spec.Push != nil {
		cenv["RUN_BRANCH"] = g.pushBranch()
	}
	res, err = g.sh(ctx, g.user, cloneScript, cenv, 64<<10)
	if err != nil {
		return "", fmt.Errorf("clone: %w", err)
	}
	if res.ExitCode != 0 {
		return "", stepError("cloning "+g.run.Spec.Repo.URL+refSuffix(g.run.Spec.Repo.Ref), res)
	}
	base = strings.TrimSpace(string(res.Stdout))
	g.w.log.Info("run prepared", "run_id", g.run.ID, "vm_id", g.vm.ID, "user_ms", userTook.Milliseconds(),
		"clone_ms", (time.Since(started) - userTook).Milliseconds())
	if !isSHA(base) {
		return "", fmt.Errorf("cloning %s: git printed %q, not a commit", g.run.Spec.Repo.URL, truncate(base, 100))
	}
	return base, nil
}

func isSHA(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// killScript kills every process of the run: those whose environment names it (its agent and everything the
// agent started, even in a session of its own, as claude-code's Bash tool does), whatever their user. One grep
// reads every environment: a fork per process is slow on an emulated CPU. Processes that appear meanwhile (a
// fork of one just killed) are caught by a second pass.
const killScript = `for pass in 1 2; do
  for f in $(grep -l -z -x -F "AETHERIUM_RUN_ID=$RUN_KILL" /proc/[0-9]*/environ 2>/dev/null); do
    pid=${f#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] || kill -KILL "$pid" 2>/dev/null || true
  done
done
exit 0
`

func (g *runGuest) killLeftovers(ctx context.Context) {
	// The script itself carries the run's id under another name, so it does not kill itself.
	res, err := g.sh(ctx, "", killScript, map[string]string{"RUN_KILL": g.run.ID, runEnvID: ""}, 4<<10)
	if err != nil || res.ExitCode != 0 {
		g.w.log.Warn("could not kill what a run left running", "run_id", g.run.ID, "err", err)
	}
}

const pushScript = `set -e
cd "$RUN_WORKSPACE"
git add -A
if ! git diff --cached --quiet; then git commit --quiet --no-verify -m "$RUN_COMMIT_MESSAGE"; fi
git push --quiet --no-verify origin "HEAD:refs/heads/$RUN_BRANCH"
`

// push commits what the agent left uncommitted and pushes the run's branch, with a token that may push.
func (g *runGuest) push(ctx context.Context) error {
	if !g.run.Spec.GitProxy {
		return errors.New("the repository is not reached through the credential proxy, which pushing needs")
	}
	env, err := g.proxyEnv(ctx, true)
	if err != nil {
		return err
	}
	maps.Copy(env, map[string]string{"RUN_WORKSPACE": g.workspace, "RUN_BRANCH": g.pushBranch(), "HOME": runHome,
		"RUN_COMMIT_MESSAGE": commitMessage(g.run)})
	res, err := g.sh(ctx, g.user, pushScript, env, 64<<10)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return stepError("pushing "+g.pushBranch(), res)
	}
	return nil
}

func commitMessage(r *model.Run) string {
	first, _, _ := strings.Cut(strings.TrimSpace(r.Spec.Prompt), "\n")
	if len(first) > 72 {
		first = first[:69] + "..."
	}
	return fmt.Sprintf("%s\n\nMade by Aetherium run %s (agent %s).", first, r.ID, r.Spec.Agent)
}

// collectScript prints what the run changed against its base: HEAD, the commits, the numstat of everything (what
// the agent committed and what it left in the working tree, untracked files included).
const collectScript = `set -e
cd "$RUN_WORKSPACE"
git add -A
echo "head $(git rev-parse HEAD)"
git log --format='commit %H %s' "$RUN_BASE..HEAD" | head -n 1000
git diff --cached --numstat "$RUN_BASE" | sed 's/^/stat /'
`

const diffScript = `cd "$RUN_WORKSPACE" && git add -A && git diff --cached --binary "$RUN_BASE"`

// collect reads the run's changes into result and stores its diff. The guest's answers are parsed as untrusted.
func (g *runGuest) collect(ctx context.Context, base string, result *model.RunResult) error {
	env := map[string]string{"RUN_WORKSPACE": g.workspace, "RUN_BASE": base, "HOME": runHome}
	res, err := g.sh(ctx, g.user, collectScript, env, 1<<20)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return stepError("reading the changes", res)
	}
	result.BaseCommit = base
	stat := &model.DiffStat{}
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		kind, rest, _ := strings.Cut(line, " ")
		switch kind {
		case "head":
			if isSHA(rest) {
				result.HeadCommit = rest
			}
		case "commit":
			sha, subject, _ := strings.Cut(rest, " ")
			if isSHA(sha) {
				result.Commits = append(result.Commits, model.RunCommit{SHA: sha, Subject: truncate(g.scrub.String(subject), 500)})
			}
		case "stat":
			f := strings.SplitN(rest, "\t", 3)
			if len(f) != 3 {
				continue
			}
			stat.FilesChanged++
			if n, err := strconv.Atoi(f[0]); err == nil { // "-" for binary files
				stat.Insertions += n
			}
			if n, err := strconv.Atoi(f[1]); err == nil {
				stat.Deletions += n
			}
		}
	}
	result.DiffStat = stat
	res, err = g.sh(ctx, g.user, diffScript, env, maxRunDiffBytes)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return stepError("making the diff", res)
	}
	result.DiffTruncated = res.StdoutTruncated
	diff := g.scrub.Bytes(res.Stdout)
	_, err = persist(ctx, g.w.log, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, g.w.cfg.Store.Runs().SetDiff(ctx, g.run.ID, diff)
	})
	return err
}
