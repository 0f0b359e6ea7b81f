// Package dispatch runs recorded webhook deliveries on a worker: the webhook:process task handler loads the
// delivery, finds its integration and calls Handle with Actions over the task service (jobs, runs, links).
package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// Config configures a Dispatcher.
type Config struct {
	Service  *task.Service
	Registry *integrations.Registry
	Logger   *slog.Logger
	// PollInterval is how often Wait looks at a job or run (default 1 s).
	PollInterval time.Duration
	// Image is the VM image of commands (default: the service's default).
	Image string
}

// Dispatcher is the webhook:process handler and the Actions integrations get.
type Dispatcher struct {
	cfg Config
	log *slog.Logger
}

// New returns a Dispatcher.
func New(cfg Config) *Dispatcher {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	return &Dispatcher{cfg: cfg, log: cfg.Logger}
}

// Handle is the queue handler of model.TaskWebhookProcess.
func (d *Dispatcher) Handle(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	var p task.WebhookPayload
	if err := json.Unmarshal(t.Payload, &p); err != nil || p.DeliveryID == "" {
		return nil, queue.Permanent(fmt.Errorf("webhook:process task %s: bad payload", t.ID))
	}
	rec, err := d.cfg.Service.AttemptWebhook(ctx, p.DeliveryID)
	if errors.Is(err, model.ErrNotFound) {
		return nil, queue.Permanent(err)
	}
	if err != nil {
		return nil, err
	}
	in, err := d.cfg.Registry.Get(rec.Integration)
	if err != nil {
		err = fmt.Errorf("delivery %s: integration %q is not configured here: %w", rec.ID, rec.Integration, err)
		_ = d.cfg.Service.FinishWebhook(context.WithoutCancel(ctx), rec.ID, err)
		return nil, queue.Permanent(err)
	}
	dl := &integrations.Delivery{
		ID: rec.ID, Integration: rec.Integration, DeliveryID: rec.DeliveryID, Event: rec.Event,
		Header: http.Header(rec.Header), Body: rec.Body, ReceivedAt: rec.ReceivedAt, Attempts: rec.Attempts,
		Progress: rec.Progress,
		Checkpoint: func(ctx context.Context, progress []byte) error {
			return d.cfg.Service.SaveWebhookProgress(ctx, rec.ID, progress)
		},
	}
	herr := in.Handle(ctx, dl, d)
	var perm *queue.PermanentError
	final := herr == nil || errors.As(herr, &perm) || t.RetryCount >= t.MaxRetries
	if final {
		if err := d.cfg.Service.FinishWebhook(context.WithoutCancel(ctx), rec.ID, herr); err != nil {
			d.log.Error("record webhook delivery outcome", "delivery", rec.ID, "err", err)
		}
	}
	if herr != nil {
		d.log.Warn("webhook delivery failed", "integration", rec.Integration, "delivery", rec.DeliveryID,
			"event", rec.Event, "attempt", rec.Attempts, "err", herr)
		return nil, herr
	}
	return json.RawMessage(`{"delivery_id":"` + rec.ID + `"}`), nil
}

// Link finds the link of source (the source's own, else its organisation's "host/org/*").
func (d *Dispatcher) Link(ctx context.Context, integration, source string) (*integrations.Link, error) {
	l, err := d.cfg.Service.FindLink(ctx, integration, source)
	if errors.Is(err, model.ErrNotFound) {
		return nil, fmt.Errorf("%s %s: %w", integration, source, integrations.ErrNotLinked)
	}
	if err != nil {
		return nil, err
	}
	return &integrations.Link{ID: l.ID, OwnerID: l.OwnerID, Integration: l.Integration, Source: l.Source,
		Commands: l.Commands, Runs: l.Runs, AllowBots: l.AllowBots, DraftPR: l.DraftPR, PRCommand: l.PRCommand, AllowedCommands: l.AllowedCommands, Notify: l.Notify,
		CreatedAt: l.CreatedAt}, nil
}

// checkoutScript is the one execution of a command: it checks the repository ($1, at ref $2) out into
// /work/repo when the image has git, and then runs the command ($3) there with sh -c. The values are positional
// parameters, never spliced into the script, so nothing in them is shell syntax. An image without git (the Docker
// backend's default) runs the command in an empty /work/repo and says so on stderr.
const checkoutScript = `set -e
mkdir -p /work/repo
cd /work/repo
if [ -n "$1" ]; then
  if command -v git >/dev/null 2>&1; then
    if [ -n "$2" ]; then git clone --quiet --depth 1 --branch "$2" -- "$1" . ; else git clone --quiet --depth 1 -- "$1" . ; fi
  else
    echo "aetherium: this image has no git; $1 is not checked out" >&2
  fi
fi
exec /bin/sh -c "$3"`

// StartCommand creates a job of one execution in a fresh VM (deleted afterwards): checkoutScript with the
// repository and the command.
func (d *Dispatcher) StartCommand(ctx context.Context, owner string, req integrations.CommandRequest) (string, error) {
	cmd := client.JobCommand{Command: "/bin/sh", Args: []string{"-c", checkoutScript, "aetherium", req.RepoURL, req.Ref,
		req.Command}, TimeoutSeconds: int(req.Timeout / time.Second)}
	job, _, err := d.cfg.Service.CreateJob(ctx, owner, client.CreateJobRequest{
		VM:       &client.CreateVMRequest{Name: "webhook-" + shortID(), Image: d.cfg.Image},
		Commands: []client.JobCommand{cmd}, StopOnError: true, DeleteVMAfter: true,
	})
	if err != nil {
		return "", err
	}
	return job.ID, nil
}

// StartRun creates an agent run.
func (d *Dispatcher) StartRun(ctx context.Context, owner string, req integrations.RunRequest) (string, error) {
	cr := client.CreateRunRequest{Repo: client.RunRepo{URL: req.RepoURL, Ref: req.Ref}, Prompt: req.Prompt}
	if req.Branch != "" || req.DraftPR {
		// The run pushes the branch; the integration opens the draft pull request itself, with its own
		// credentials, once the run has pushed (a plain run has no GitHub App to open one with).
		cr.Push = &client.RunPush{Branch: req.Branch}
	}
	r, _, err := d.cfg.Service.CreateRun(ctx, owner, cr)
	if err != nil {
		return "", err
	}
	return r.ID, nil
}

// Wait polls the job or run until it ends.
func (d *Dispatcher) Wait(ctx context.Context, owner, kind, id string) (*integrations.Outcome, error) {
	tick := time.NewTicker(d.cfg.PollInterval)
	defer tick.Stop()
	for {
		var out *integrations.Outcome
		var err error
		switch kind {
		case "job":
			out, err = d.jobOutcome(ctx, owner, id)
		case "run":
			out, err = d.runOutcome(ctx, owner, id)
		default:
			return nil, fmt.Errorf("wait: unknown kind %q", kind)
		}
		if err != nil || out != nil {
			return out, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// OutputTailBytes bounds the output an Outcome carries.
const OutputTailBytes = 4096

func (d *Dispatcher) jobOutcome(ctx context.Context, owner, id string) (*integrations.Outcome, error) {
	job, execs, err := d.cfg.Service.GetJob(ctx, owner, id)
	if err != nil {
		return nil, err
	}
	if job.Status != model.JobCompleted && job.Status != model.JobFailed {
		return nil, nil
	}
	out := &integrations.Outcome{Status: string(job.Status), Error: job.Error}
	if len(execs) > 0 {
		last := execs[len(execs)-1]
		out.ExitCode = last.ExitCode
		text := last.Stdout
		if last.Stderr != "" {
			text += last.Stderr
		}
		out.OutputTail = tail(text, OutputTailBytes)
		if last.Error != "" && out.Error == "" {
			out.Error = last.Error
		}
		if out.Status == string(model.JobCompleted) && last.ExitCode != nil && *last.ExitCode != 0 {
			out.Status = string(model.JobFailed)
		}
	}
	return out, nil
}

func (d *Dispatcher) runOutcome(ctx context.Context, owner, id string) (*integrations.Outcome, error) {
	r, err := d.cfg.Service.GetRun(ctx, owner, id)
	if err != nil {
		return nil, err
	}
	switch r.Status {
	case model.RunCompleted, model.RunFailed, model.RunCancelled:
	default:
		return nil, nil
	}
	out := &integrations.Outcome{Status: string(r.Status), Error: r.Error, CostUSD: r.Usage.CostUSD}
	if res := r.Result; res != nil {
		out.ExitCode = res.ExitCode
		out.OutputTail = tail(res.Text, OutputTailBytes)
		out.Branch = res.PushedBranch
		if res.DiffStat != nil {
			out.DiffStat = fmt.Sprintf("%d files changed, +%d -%d", res.DiffStat.FilesChanged,
				res.DiffStat.Insertions, res.DiffStat.Deletions)
		}
		if r.Status != model.RunCompleted && res.StderrTail != "" {
			out.Error = strings.TrimSpace(out.Error + "\n" + tail(res.StderrTail, OutputTailBytes))
		}
	}
	return out, nil
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for len(s) > 0 && s[0]&0xC0 == 0x80 { // do not start inside a UTF-8 sequence
		s = s[1:]
	}
	return s
}

func shortID() string { return strings.ReplaceAll(time.Now().UTC().Format("150405.000000"), ".", "") }

var _ integrations.Actions = (*Dispatcher)(nil)
