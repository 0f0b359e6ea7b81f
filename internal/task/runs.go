package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/gitrepo"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// Agent runs (POST /api/v1/runs): the service checks the request, stores the run (and the VM it creates, pending)
// and a run:agent task, and answers 202; a worker does the rest (internal/worker/runs.go). A run's transcript is
// stored event by event (store.RunStore.AppendEvents) and announced on RunTopic, where cancels travel too.

// Bounds of a run request.
const (
	// MaxPromptBytes bounds a prompt. It is one argument of the agent's command line, and Linux bounds one
	// argument to 128 KiB (MAX_ARG_STRLEN).
	MaxPromptBytes = 100_000
	// DefaultRunTimeout is the agent's time limit when the request gives none; MaxRunTimeout the longest allowed.
	DefaultRunTimeout = 30 * time.Minute
	MaxRunTimeout     = 24 * time.Hour
	// MaxRunTurns bounds max_turns.
	MaxRunTurns = 1000
	// DefaultRunMemoryMB is the memory of a run's VM when the request gives none: coding agents and the builds
	// they start need more than a bare VM.
	DefaultRunMemoryMB = 2048
	DefaultRunVCPUs    = 2
)

// AnthropicKeySecret and OpenAIKeySecret are the owner's secrets the credential proxy calls model APIs with.
const (
	AnthropicKeySecret = "ANTHROPIC_API_KEY"
	OpenAIKeySecret    = "OPENAI_API_KEY"
)

// Run events on RunTopic.
const (
	// EventRunEvents says events were appended to the run's transcript (Data: {"seq": last seq}).
	EventRunEvents = "run.events"
	// EventRunCancel asks the worker running the run to stop it.
	EventRunCancel = "run.cancel"
	// EventRunFinished, on TopicRuns, says a run ended (Data: its end event's data, client.RunEnd).
	EventRunFinished = "run.finished"
	// TopicRuns carries the end of every run.
	TopicRuns = "runs"
)

// RunTopic is the topic of one run's transcript notifications and cancels.
func RunTopic(runID string) string { return "runs/" + runID }

// RunPayload is the payload of run:agent.
type RunPayload struct {
	RunID string `json:"run_id"`
}

// RunResult is the result of run:agent.
type RunResult struct {
	RunID  string          `json:"run_id"`
	Status model.RunStatus `json:"status"`
}

// TooLargeError is a request field over its size limit (413).
type TooLargeError struct {
	Field   string
	Message string
}

func (e *TooLargeError) Error() string { return e.Field + ": " + e.Message }
func (e *TooLargeError) Unwrap() error { return model.ErrInvalidInput }

// WithAgents sets the catalog of agents runs may start (default agents.Default()).
func WithAgents(c *agents.Catalog) Option { return func(s *Service) { s.agents = c } }

// WithGitHosts sets the git hosts of the workers' credential proxies: host name -> the owner's secret it uses by
// default (github.com -> GITHUB_TOKEN). Runs on other hosts clone anonymously.
func WithGitHosts(h map[string]string) Option { return func(s *Service) { s.gitHosts = h } }

// Agents returns the catalog.
func (s *Service) Agents() *agents.Catalog { return s.agents }

// reservedRunEnv are variables a run's env may not set: the credential proxy and the worker own them.
var reservedRunEnv = regexp.MustCompile(`^(AETHERIUM_.*|ANTHROPIC_(API_KEY|AUTH_TOKEN|BASE_URL)|OPENAI_(API_KEY|BASE_URL)|GIT_CONFIG_.*|GIT_ASKPASS|SSH_ASKPASS)$`)

var modelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]{0,127}$`)

// CreateRun checks a run request, stores the run and its task, and returns them. The run's VM is created by the
// worker that takes the task (vm given as a spec), or the run goes to the worker hosting the VM it names.
func (s *Service) CreateRun(ctx context.Context, ownerID string, req client.CreateRunRequest) (*model.Run, *model.Task, error) {
	spec, err := s.runSpec(ctx, ownerID, req)
	if err != nil {
		return nil, nil, err
	}
	prio, err := parsePriority(req.Priority, model.PriorityDefault)
	if err != nil {
		return nil, nil, err
	}
	run := &model.Run{ID: uuid.NewString(), OwnerID: ownerID, Spec: spec, Status: model.RunPending, CreatedAt: now()}
	run.UpdatedAt = run.CreatedAt
	t := &model.Task{OwnerID: ownerID, Type: model.TaskRunAgent, Priority: prio}
	createdVM, queuedVM := false, "" // queuedVM: the new VM, once its run is queued (placeNewVM)
	if req.VM != nil && req.VM.ID != "" {
		vm, err := s.GetVM(ctx, ownerID, req.VM.ID)
		if err != nil {
			return nil, nil, err
		}
		if vm.Status != model.VMRunning {
			return nil, nil, notRunning(vm.ID, vm.Status)
		}
		if err := s.checkWorker(ctx, vm.ID, vm.WorkerID); err != nil {
			return nil, nil, err
		}
		run.VMID, t.TargetWorker = vm.ID, vm.WorkerID
	} else {
		var vreq client.CreateVMRequest
		if req.VM != nil {
			vreq = req.VM.CreateVMRequest
		}
		if vreq.Name == "" {
			vreq.Name = "run-" + run.ID[:8]
		}
		if vreq.MemoryMB == 0 {
			vreq.MemoryMB = max(DefaultRunMemoryMB, s.limits.MinMemoryMB)
		}
		if vreq.VCPUs == 0 {
			vreq.VCPUs = min(DefaultRunVCPUs, s.limits.MaxVCPUs)
		}
		vreq.Tools = append(slices.Clone(vreq.Tools), spec.Tools...)
		vspec, err := s.normalizeVMSpec(vreq)
		if err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				ve.Field = "vm." + ve.Field
			}
			return nil, nil, err
		}
		worker, placed, err := s.placeNewVM(ctx, ownerID, vspec)
		if err != nil {
			return nil, nil, err
		}
		defer func() { placed(queuedVM) }()
		vm, err := s.newVM(ctx, ownerID, vspec)
		if err != nil {
			return nil, nil, err
		}
		run.VMID, run.Spec.VMSpec, createdVM, t.TargetWorker = vm.ID, &vspec, true, worker
	}
	t.VMID = run.VMID
	if err := s.store.Runs().Create(ctx, run); err != nil {
		if createdVM {
			s.failVM(ctx, run.VMID, "its run could not be stored")
		}
		return nil, nil, fmt.Errorf("store run: %w", err)
	}
	if err := s.submit(ctx, t, RunPayload{RunID: run.ID}); err != nil {
		if createdVM {
			s.failVM(ctx, run.VMID, "its run could not be queued")
		}
		_, _ = s.store.Runs().Update(context.WithoutCancel(ctx), run.ID, func(r *model.Run) error {
			r.Status, r.Error, r.CompletedAt = model.RunFailed, "could not be queued", ptr(now())
			return nil
		})
		return nil, nil, err
	}
	if createdVM {
		queuedVM = run.VMID
	}
	// The run goes ahead whatever happens next: a failure to link it to its task must not fail the request (a
	// retry would start a second agent).
	if linked, err := s.store.Runs().Update(ctx, run.ID, func(r *model.Run) error { r.TaskID = t.ID; return nil }); err != nil {
		s.log.Warn("could not link run to its task", "run_id", run.ID, "task_id", t.ID, "err", err)
		run.TaskID = t.ID
	} else {
		run = linked
	}
	return run, t, nil
}

// runSpec checks everything of a run request but its VM and returns what is stored.
func (s *Service) runSpec(ctx context.Context, ownerID string, req client.CreateRunRequest) (model.RunSpec, error) {
	var spec model.RunSpec
	if strings.TrimSpace(req.Prompt) == "" {
		return spec, invalid("prompt", "is required")
	}
	if len(req.Prompt) > MaxPromptBytes {
		return spec, &TooLargeError{Field: "prompt", Message: fmt.Sprintf("is %d bytes; at most %d are allowed", len(req.Prompt), MaxPromptBytes)}
	}
	if strings.ContainsRune(req.Prompt, 0) {
		return spec, invalid("prompt", "must not contain NUL bytes")
	}
	name := req.Agent
	if name == "" {
		name = agents.DefaultAgent
	}
	agent, err := s.agents.Get(name)
	if err != nil {
		return spec, invalid("agent", "unknown agent %q; known agents: %s", name, strings.Join(s.agents.Names(), ", "))
	}
	repo, err := gitrepo.Parse(req.Repo.URL)
	if err != nil {
		return spec, invalid("repo.url", "%v", err)
	}
	if req.Repo.Ref != "" {
		if err := gitrepo.CheckRef(req.Repo.Ref); err != nil {
			return spec, invalid("repo.ref", "%v", err)
		}
	}
	if req.Model != "" && !modelRE.MatchString(req.Model) {
		return spec, invalid("model", "%q is not a model name", req.Model)
	}
	if req.MaxTurns < 0 || req.MaxTurns > MaxRunTurns {
		return spec, invalid("max_turns", "must be between 1 and %d, or 0 for the agent's default (got %d)", MaxRunTurns, req.MaxTurns)
	}
	maxSec := int(MaxRunTimeout.Seconds())
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > maxSec {
		return spec, invalid("timeout_seconds", "must be between 1 and %d, or 0 for the default %d (got %d)",
			maxSec, int(DefaultRunTimeout.Seconds()), req.TimeoutSeconds)
	}
	timeout := req.TimeoutSeconds
	if timeout == 0 {
		timeout = int(DefaultRunTimeout.Seconds())
	}
	cmd := model.JobCommand{Command: agent.Command[0], Env: req.Env, SecretEnv: req.SecretEnv}
	if err := s.validateCommand("", cmd); err != nil {
		return spec, err
	}
	for _, vars := range []map[string]string{req.Env, req.SecretEnv} {
		for k := range vars {
			if reservedRunEnv.MatchString(k) {
				return spec, invalid("env", "%s is set by the worker (model and git credentials come from the credential proxy, never from the run's environment)", k)
			}
		}
	}
	if err := s.checkSecretEnv(ctx, ownerID, "", cmd); err != nil {
		return spec, err
	}
	var push *model.RunPush
	if req.Push != nil {
		push = &model.RunPush{Branch: req.Push.Branch, DraftPR: req.Push.DraftPR}
		if push.Branch != "" {
			if err := gitrepo.CheckRef(push.Branch); err != nil {
				return spec, invalid("push.branch", "%v", err)
			}
			if push.Branch == req.Repo.Ref {
				return spec, invalid("push.branch", "must differ from repo.ref: a run pushes a branch of its own, never the one it started from")
			}
		}
		if push.DraftPR {
			return spec, invalid("push.draft_pr", "draft pull requests need the GitHub integration, which this server does not have; push the branch and open one from it")
		}
	}
	if len(req.Tools) > maxTools {
		return spec, invalid("tools", "at most %d tools", maxTools)
	}
	tools := slices.Clone(agent.Tools)
	for _, t := range req.Tools {
		if !slices.Contains(tools, t) {
			tools = append(tools, t)
		}
	}
	spec = model.RunSpec{
		Repo:   model.RunRepo{URL: strings.TrimSpace(req.Repo.URL), Ref: req.Repo.Ref, CredentialsSecret: req.Repo.CredentialsSecret},
		Prompt: req.Prompt, Agent: name, Model: req.Model, MaxTurns: req.MaxTurns, TimeoutSeconds: timeout,
		Env: req.Env, SecretEnv: req.SecretEnv, KeepVM: req.KeepVM, Push: push, Tools: tools,
	}
	// The secrets the worker's proxy will need must exist now: a run that cannot reach its model or its repository
	// is refused rather than started.
	need := map[string]string{}
	if agent.UsesProxy(agents.ProxyAnthropic) {
		need["agent "+name+" (the credential proxy calls the Anthropic API with it)"] = AnthropicKeySecret
	}
	if agent.UsesProxy(agents.ProxyOpenAI) {
		need["agent "+name+" (the credential proxy calls the OpenAI API with it)"] = OpenAIKeySecret
	}
	if err := s.routeRepo(ctx, ownerID, repo, &spec, need); err != nil {
		return spec, err
	}
	if len(need) > 0 {
		if s.secrets == nil {
			return spec, errNoSecrets()
		}
		err := s.secrets.Missing(ctx, ownerID, need)
		var me *secrets.MissingError
		if errors.As(err, &me) {
			return spec, invalid("secrets", "secret %s does not exist; it is needed by %s (create it with `aetherium secret set %s` or PUT /api/v1/secrets/%s)",
				me.Name, me.Var, me.Name, me.Name)
		}
		if err != nil {
			return spec, err
		}
	}
	return spec, nil
}

// routeRepo decides how the run reaches its repository: through the credential proxy with the owner's token when
// the host is one of the proxy's git hosts and the token exists (or is asked for), anonymously otherwise. Pushing
// and credentials_secret need the proxy; the secrets needed are added to need.
func (s *Service) routeRepo(ctx context.Context, ownerID string, repo gitrepo.Repo, spec *model.RunSpec, need map[string]string) error {
	hostSecret, known := s.gitHosts[repo.Host]
	cred := spec.Repo.CredentialsSecret
	if cred != "" && store.CheckSecretName(cred) != nil {
		return invalid("repo.credentials_secret", "%q is not a secret name", cred)
	}
	if !known {
		if cred != "" || spec.Push != nil {
			return invalid("repo.url", "%s is not a git host of the credential proxy (known: %s; operators add more with git_hosts): "+
				"credentials_secret and push need it, since the VM never holds a git credential", repo.Host, strings.Join(s.gitHostNames(), ", "))
		}
		return nil
	}
	secret := hostSecret
	if cred != "" {
		secret = cred
	}
	explicit := cred != "" || spec.Push != nil
	if !explicit {
		// A public repository needs no token: use the host's one when the owner has it.
		if s.secrets == nil {
			return nil
		}
		var me *secrets.MissingError
		err := s.secrets.Missing(ctx, ownerID, map[string]string{"git": secret})
		if errors.As(err, &me) {
			return nil
		}
		if err != nil {
			return err
		}
	} else {
		what := "the repository's git token (repo.credentials_secret)"
		if cred == "" {
			what = "pushing to " + repo.Host + " (its git token)"
		}
		need[what] = secret
	}
	spec.GitProxy, spec.GitSecret = true, secret
	return nil
}

func (s *Service) gitHostNames() []string {
	out := make([]string, 0, len(s.gitHosts))
	for h := range s.gitHosts {
		out = append(out, h)
	}
	slices.Sort(out)
	return out
}

// GetRun returns one of the owner's runs.
func (s *Service) GetRun(ctx context.Context, ownerID, id string) (*model.Run, error) {
	if !validID(id) {
		return nil, notFound("run", id)
	}
	r, err := s.store.Runs().Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.OwnerID != ownerID {
		return nil, notFound("run", id)
	}
	return s.reapLostRun(ctx, r), nil
}

// runWorkerLostAfter is how long a run's worker may be silent before the run is taken to be lost with it. A
// worker that restarts sooner fails the run itself (its task comes back to it).
func (s *Service) runWorkerLostAfter() time.Duration { return 4 * s.limits.WorkerStaleAfter }

// reapLostRun fails a run whose worker has stopped sending heartbeats: nothing else would end it, and its readers
// would wait forever. It is checked whenever the run is read, and periodically by ReapLostRuns.
func (s *Service) reapLostRun(ctx context.Context, r *model.Run) *model.Run {
	if r.Status.Done() || r.WorkerID == "" {
		return r
	}
	w, err := s.store.Workers().Get(ctx, r.WorkerID)
	if err != nil && !errors.Is(err, model.ErrNotFound) {
		return r
	}
	var reason string
	switch {
	case errors.Is(err, model.ErrNotFound):
		reason = fmt.Sprintf("its worker %s is not registered", r.WorkerID)
	case w.Status != "active":
		reason = fmt.Sprintf("its worker %s stopped", r.WorkerID)
	case time.Since(w.LastHeartbeat) > s.runWorkerLostAfter():
		reason = fmt.Sprintf("its worker %s was lost (no heartbeat for %s)", r.WorkerID, time.Since(w.LastHeartbeat).Round(time.Second))
	default:
		return r
	}
	if w != nil && w.Status != "active" && time.Since(w.LastHeartbeat) < s.runWorkerLostAfter() {
		return r // stopped for a restart a moment ago: it takes its task back
	}
	failed, err := s.store.Runs().Update(ctx, r.ID, func(x *model.Run) error {
		if x.Status.Done() || x.WorkerID != r.WorkerID {
			return errRaced
		}
		x.Status, x.CompletedAt = model.RunFailed, ptr(now())
		x.Error = "lost: " + reason + " while the run was " + string(r.Status) + "; a started agent is never started again"
		return nil
	})
	if err != nil {
		return r
	}
	s.log.Warn("run failed: its worker is lost", "run_id", r.ID, "worker_id", r.WorkerID)
	if err := s.AppendRunEvents(ctx, failed, &model.RunEvent{Type: model.RunEventEnd, Data: EndData(failed)}); err != nil {
		s.log.Warn("could not record the end of a lost run", "run_id", r.ID, "err", err)
	}
	return failed
}

// ReapLostRuns ends every unfinished run whose worker is lost, whether anyone reads it or not: notifications and
// integrations wait for a run's end event, and a run nobody polls would otherwise never have one. It returns how
// many runs it ended.
func (s *Service) ReapLostRuns(ctx context.Context) (int, error) {
	f := store.RunFilter{Statuses: []model.RunStatus{model.RunPending, model.RunPreparing, model.RunRunning},
		Page: store.Page{Limit: 500}}
	ended := 0
	for {
		runs, err := s.store.Runs().List(ctx, f)
		if err != nil {
			return ended, fmt.Errorf("list unfinished runs: %w", err)
		}
		for _, r := range runs {
			if s.reapLostRun(ctx, r).Status.Done() {
				ended++
			}
		}
		if len(runs) < f.Page.Limit {
			return ended, nil
		}
		f.Page.After = runs[len(runs)-1].ID
	}
}

// ListRuns lists the owner's runs, newest first.
func (s *Service) ListRuns(ctx context.Context, ownerID string, f store.RunFilter) ([]*model.Run, string, error) {
	for _, st := range f.Statuses {
		if !st.Valid() {
			return nil, "", invalid("status", "unknown run status %q", st)
		}
	}
	if f.VMID != "" && !validID(f.VMID) {
		return nil, "", invalid("vm_id", "is not a vm id")
	}
	page, err := s.checkPage(f.Page)
	if err != nil {
		return nil, "", err
	}
	f.OwnerID, f.Page = ownerID, page
	runs, err := s.store.Runs().List(ctx, f)
	if err != nil {
		return nil, "", err
	}
	for i, r := range runs {
		runs[i] = s.reapLostRun(ctx, r)
	}
	next := ""
	if len(runs) == page.Limit {
		next = runs[len(runs)-1].ID
	}
	return runs, next, nil
}

// RunDiff returns the patch of one of the owner's runs.
func (s *Service) RunDiff(ctx context.Context, ownerID, id string) ([]byte, error) {
	if _, err := s.GetRun(ctx, ownerID, id); err != nil {
		return nil, err
	}
	return s.store.Runs().Diff(ctx, id)
}

// CancelRun stops a run: a run no worker has taken yet ends at once; otherwise the worker running it is told (on
// RunTopic, and through the row it re-reads every second) and kills the agent's processes. A run that has ended
// is a conflict.
func (s *Service) CancelRun(ctx context.Context, ownerID, id string) (*model.Run, error) {
	r, err := s.GetRun(ctx, ownerID, id)
	if err != nil {
		return nil, err
	}
	if r.Status.Done() {
		return nil, fmt.Errorf("run %s is already %s: %w", id, r.Status, model.ErrConflict)
	}
	ended := false
	r, err = s.store.Runs().Update(ctx, id, func(x *model.Run) error {
		if x.Status.Done() {
			return fmt.Errorf("run %s is already %s: %w", id, x.Status, model.ErrConflict)
		}
		x.CancelRequested = true
		if x.Status == model.RunPending && x.WorkerID == "" {
			x.Status, x.Error, x.CompletedAt = model.RunCancelled, "cancelled before it started", ptr(now())
			ended = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if ended {
		if err := s.AppendRunEvents(ctx, r, &model.RunEvent{Type: model.RunEventEnd, Data: EndData(r)}); err != nil {
			s.log.Warn("could not record the end of a cancelled run", "run_id", id, "err", err)
		}
		return r, nil
	}
	ev := events.Event{Type: EventRunCancel, Subject: id, OwnerID: ownerID, Time: now()}
	if err := s.bus.Publish(ctx, RunTopic(id), ev); err != nil {
		// The worker re-reads the row every second: the cancel only arrives later.
		s.log.Warn("could not announce a run's cancel", "run_id", id, "err", err)
	}
	return r, nil
}

// EndData is the data of a run's end event.
func EndData(r *model.Run) json.RawMessage {
	b, _ := json.Marshal(client.RunEnd{Status: string(r.Status), Error: r.Error})
	return b
}

// AppendRunEvents stores events of r's transcript and tells readers (RunTopic). Workers use it too.
func (s *Service) AppendRunEvents(ctx context.Context, r *model.Run, evs ...*model.RunEvent) error {
	return AppendRunEvents(ctx, s.store, s.bus, r, evs...)
}

// AppendRunEvents stores events of r's transcript and announces them on RunTopic (best effort: readers also poll).
func AppendRunEvents(ctx context.Context, st store.Store, bus events.Bus, r *model.Run, evs ...*model.RunEvent) error {
	if len(evs) == 0 {
		return nil
	}
	if err := st.Runs().AppendEvents(ctx, r.ID, evs); err != nil {
		return err
	}
	if bus == nil {
		return nil
	}
	data, _ := json.Marshal(map[string]int64{"seq": evs[len(evs)-1].Seq})
	_ = bus.Publish(ctx, RunTopic(r.ID), events.Event{Type: EventRunEvents, Subject: r.ID, OwnerID: r.OwnerID, Data: data, Time: now()})
	for _, ev := range evs {
		if ev.Type == model.RunEventEnd {
			// Every run's end on one topic, for notifications (internal/notify); Data is the end event's.
			_ = bus.Publish(ctx, TopicRuns, events.Event{Type: EventRunFinished, Subject: r.ID, OwnerID: r.OwnerID, Data: ev.Data, Time: now()})
		}
	}
	return nil
}

// RunStreamOptions tune StreamRun.
type RunStreamOptions struct {
	After     int64         // events up to this seq are skipped (Last-Event-ID)
	Heartbeat time.Duration // how often fn gets nil while nothing happens (default 15 s)
	Poll      time.Duration // how often the store is read without a notification (default 1 s)
}

// StreamRun calls fn with every event of one of the owner's runs after opts.After, in order: what is stored,
// then what comes, until the run's end event (the last one fn gets). fn(nil) is a heartbeat. Notifications on
// RunTopic only cut latency: the store is read every opts.Poll regardless, so a lost notification costs a second.
func (s *Service) StreamRun(ctx context.Context, ownerID, id string, opts RunStreamOptions, fn func(*model.RunEvent) error) error {
	r, err := s.GetRun(ctx, ownerID, id)
	if err != nil {
		return err
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 15 * time.Second
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	var notes <-chan events.Event
	if !r.Status.Done() {
		sub, err := s.bus.Subscribe(ctx, RunTopic(id))
		if err != nil {
			s.log.Warn("run stream without live notifications", "run_id", id, "err", err)
		} else {
			defer sub.Close()
			notes = sub.C()
		}
	}
	after, idle := opts.After, 0
	lastBeat := time.Now()
	for {
		evs, err := s.store.Runs().Events(ctx, id, after, 500)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if err := fn(e); err != nil {
				return err
			}
			after = e.Seq
			if e.Type == model.RunEventEnd {
				return nil
			}
		}
		if len(evs) == 500 {
			continue
		}
		if len(evs) > 0 {
			idle, lastBeat = 0, time.Now()
		} else if idle++; idle%3 == 0 {
			// Every few quiet polls, make sure the run has not ended without its end event (a run ended by a path
			// that could not write it): then say so and stop.
			if r, err = s.store.Runs().Get(ctx, id); err == nil {
				r = s.reapLostRun(ctx, r)
			}
			if err == nil && r.Status.Done() {
				if evs, err := s.store.Runs().Events(ctx, id, after, 1); err == nil && len(evs) == 0 {
					return fn(&model.RunEvent{RunID: id, Seq: after + 1, Type: model.RunEventEnd, Data: EndData(r), Time: now()})
				}
				continue
			}
		}
		if time.Since(lastBeat) >= opts.Heartbeat {
			if err := fn(nil); err != nil {
				return err
			}
			lastBeat = time.Now()
		}
		timer := time.NewTimer(opts.Poll)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-notes:
		case <-timer.C:
		}
		timer.Stop()
	}
}
