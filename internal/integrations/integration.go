// Package integrations connects Aetherium to the services teams already work in (GitHub, Slack, Discord): their
// webhooks start work (commands, jobs, agent runs) and their APIs receive the results and notifications.
//
// The seam: every integration is one package implementing Integration, registered at start from configuration
// (Registry). `POST /api/v1/webhooks/{integration}` is authenticated by the integration's own signature, never by
// an API key: the API reads the raw body under the integration's size limit, calls Verify before anything is
// parsed (a bad or missing signature is 401 with nothing recorded or enqueued), then Accept, which says what the
// delivery is (its id for deduplication, and an immediate answer for pings and verification handshakes). The
// delivery is recorded under (integration, delivery id) — a redelivery answers 200 and does nothing again — and a
// webhook:process task is queued; the API answers 202 within a second. A worker then calls Handle, which does the
// work through Actions (runs, jobs, replies) and reports back through the integration's own API.
//
// Links map the outside world to owners (which GitHub installation or repository, Slack team or channel, Discord
// channel acts for which owner, and what it may do); an unlinked source is refused politely by Handle.
package integrations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
)

// ErrBadSignature is returned (wrapped) by Verify for a request whose signature is missing, malformed, stale or
// wrong: the API answers 401 and records nothing.
var ErrBadSignature = errors.New("bad webhook signature")

// ErrUnknownIntegration is returned (wrapped) by Registry.Get for a name that is not configured (404).
var ErrUnknownIntegration = errors.New("unknown integration")

// Webhook is a received request: what Verify and Accept see. Body is the raw body, exactly as received.
type Webhook struct {
	Header http.Header
	Body   []byte
	// Query is the request's URL query (Discord and Slack put nothing there; some forges do).
	Query map[string][]string
	// ReceivedAt is when the API read the request.
	ReceivedAt time.Time
}

// Acceptance is what Accept decides about a verified webhook.
type Acceptance struct {
	// DeliveryID identifies the delivery for deduplication (GitHub's X-GitHub-Delivery, Slack's event_id or
	// trigger_id, ...). Empty: the delivery is not recorded and nothing is queued (Reply is sent).
	DeliveryID string
	// Event names what the delivery is ("issue_comment", "slash_command", ...), for records and metrics.
	Event string
	// Reply, when set, is answered at once instead of the default 202 {"delivery_id": ...}: pings, URL
	// verification challenges, Slack's acknowledgement of a slash command (an ephemeral message within 3 s).
	Reply *Reply
}

// Reply is an HTTP answer an integration chooses.
type Reply struct {
	Status      int
	ContentType string
	Body        []byte
}

// Delivery is a recorded webhook, as Handle gets it.
type Delivery struct {
	ID          string // Aetherium's id of the record
	Integration string
	DeliveryID  string
	Event       string
	Header      http.Header // the headers of the request (signatures included; never logged)
	Body        []byte
	ReceivedAt  time.Time
	Attempts    int
	// Progress is what an earlier attempt of this delivery saved with Checkpoint (nil on the first): a retry
	// resumes from it instead of doing the work, and posting its reports, a second time.
	Progress []byte
	// Checkpoint saves progress (a small JSON document) for a retry to resume from; nil saves nothing.
	Checkpoint func(ctx context.Context, progress []byte) error
}

// SaveProgress saves v (marshalled to JSON) with d's Checkpoint, when it has one.
func (d *Delivery) SaveProgress(ctx context.Context, v any) error {
	if d.Checkpoint == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("delivery %s: progress: %w", d.ID, err)
	}
	return d.Checkpoint(ctx, b)
}

// Integration is one outside service.
type Integration interface {
	// Name is the integration's path segment in /api/v1/webhooks/{name}: "github", "slack", "discord".
	Name() string
	// MaxBodyBytes bounds a webhook's body (GitHub: 25 MB).
	MaxBodyBytes() int64
	// Verify checks the webhook's signature over the raw body, in constant time, before anything is parsed;
	// any failure wraps ErrBadSignature.
	Verify(ctx context.Context, w *Webhook) error
	// Accept parses a verified webhook just enough to say what it is; it must be fast (the API answers within a
	// second) and do no work. An error is a 400 (a body that is not what the service sends).
	Accept(ctx context.Context, w *Webhook) (*Acceptance, error)
	// Handle does the delivery's work, on a worker: a returned error is retried with backoff (the delivery was
	// recorded; nothing is lost), unless it wraps a permanent error (queue.Permanent).
	Handle(ctx context.Context, d *Delivery, a Actions) error
	// Notify sends a notification to a destination of this integration (a channel, a webhook URL, an issue).
	Notify(ctx context.Context, n Notification) error
	// Health reports whether the integration can reach its service (credentials valid, API answering).
	Health(ctx context.Context) error
}

// DestinationChecker is an integration that knows, from a destination alone, whether it would send to it: a
// notification rule naming one it refuses is refused when it is created (422), and Notify refuses it again.
type DestinationChecker interface {
	// CheckDestination returns an error saying what is wrong with destination (never repeating a credential in
	// it), or nil.
	CheckDestination(destination string) error
}

// Notification is an event worth telling a destination about: a run or job finished, a VM or task failed.
type Notification struct {
	Event       string            // "run.finished", "job.finished", "vm.failed", "task.failed"
	OwnerID     string            // whose it is
	Destination string            // the integration's address: a Slack channel id, a Discord webhook URL, ...
	Title       string            // one line
	Text        string            // the body (output tail, diff stat, error), plain text; the integration formats it
	URL         string            // where to see more, when there is such a place
	Fields      map[string]string // short facts (status, exit code, cost)
	Time        time.Time
	// IdempotencyKey is the same for every attempt of one notification (the outbox's key): integrations pass it
	// on where their service can deduplicate (Slack: message metadata), so a retry after a lost answer is seen
	// for what it is.
	IdempotencyKey string
	// Part, when set, is the one message (1-based, of the Parted integration's Parts) this notification sends:
	// the dispatcher enqueues each part as its own outbox entry. 0: all of it.
	Part int `json:",omitempty"`
}

// Parted is an integration whose notification may take several messages (Discord: 2,000 characters each). The
// dispatcher enqueues each part as its own outbox entry, in order, so a part that fails is retried alone and the
// parts before it are not sent again.
type Parted interface {
	// Parts is how many messages Notify sends for n (at least 1); it depends on n's content only.
	Parts(n Notification) int
}

// Actions is what Handle may do in Aetherium: start work for an owner and follow it. The worker provides it
// (over the task service), so integrations never touch the store or the queue directly.
type Actions interface {
	// Link returns the owner and permissions a source of this integration is linked to (a repository
	// "github.com/org/repo", a Slack team/channel "T123/C456", a Discord channel), or ErrNotLinked.
	Link(ctx context.Context, integration, source string) (*Link, error)
	// StartCommand runs a shell command in a fresh VM for owner (with repo checked out when repoURL is set) and
	// returns the job's id.
	StartCommand(ctx context.Context, owner string, req CommandRequest) (jobID string, err error)
	// StartRun starts an agent run for owner and returns its id.
	StartRun(ctx context.Context, owner string, req RunRequest) (runID string, err error)
	// Wait blocks until the job or run ends (or ctx does) and returns its outcome for reporting.
	Wait(ctx context.Context, owner, kind, id string) (*Outcome, error)
}

// ErrNotLinked is returned (wrapped) by Actions.Link for a source no owner has linked.
var ErrNotLinked = errors.New("source is not linked to an owner")

// Link is an owner's link of an outside source.
type Link struct {
	ID          string
	OwnerID     string
	Integration string
	Source      string // "github.com/org/repo", "github.com/org/*", "T123/C456", "discord:<channel id>"
	Commands    bool   // may run commands and jobs
	Runs        bool   // may start agent runs
	AllowBots   bool   // bots' comments trigger work too
	DraftPR     bool   // an agent run's pushed branch gets a draft pull request
	PRCommand   string // runs on every pull request opened, reopened or pushed to ("": none)
	// AllowedCommands, when set, are the only commands the source may run (AllowsCommand); empty: any.
	AllowedCommands []string
	Notify          []string // notification events sent to this source
	CreatedAt       time.Time
}

// CommandRequest is a command an integration asks for.
type CommandRequest struct {
	Command string // run by /bin/sh -c
	RepoURL string // cloned (anonymously or through the credential proxy) into the working directory first
	Ref     string
	Timeout time.Duration
}

// RunRequest is an agent run an integration asks for.
type RunRequest struct {
	RepoURL string
	Ref     string
	Prompt  string
	Branch  string // push the agent's work to this branch ("" : no push)
	DraftPR bool   // the integration will open a draft pull request from Branch (the run itself only pushes)
}

// Outcome is how a job or run ended, for the report back.
type Outcome struct {
	Status     string // completed, failed, cancelled
	ExitCode   *int
	OutputTail string // the last lines of output (commands) or the agent's answer (runs)
	DiffStat   string // "3 files changed, +10 -2"
	Branch     string // the pushed branch
	CostUSD    *float64
	Error      string
}

// Registry holds the configured integrations by name.
type Registry struct{ m map[string]Integration }

// NewRegistry returns a registry of the given integrations.
func NewRegistry(in ...Integration) *Registry {
	r := &Registry{m: map[string]Integration{}}
	for _, i := range in {
		r.m[i.Name()] = i
	}
	return r
}

// Get returns the named integration or an error wrapping ErrUnknownIntegration.
func (r *Registry) Get(name string) (Integration, error) {
	if r != nil {
		if i, ok := r.m[name]; ok {
			return i, nil
		}
	}
	return nil, ErrUnknownIntegration
}

// Names lists the configured integrations, sorted.
func (r *Registry) Names() []string {
	if r == nil {
		return nil
	}
	out := make([]string, 0, len(r.m))
	for n := range r.m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// AllowsCommand reports whether the link lets its source run cmd: commands are allowed at all, and either the link
// names no allowed commands or cmd is one of them. An allowed command ending in " *" also allows that command
// followed by plain arguments (letters, digits and ._/=:,@+- separated by spaces): the command runs with sh -c, so
// anything that could be shell syntax (;, &&, |, $, quotes, redirections...) never matches a pattern.
func (l *Link) AllowsCommand(cmd string) bool {
	if !l.Commands {
		return false
	}
	if len(l.AllowedCommands) == 0 {
		return true
	}
	cmd = strings.TrimSpace(cmd)
	for _, a := range l.AllowedCommands {
		a = strings.TrimSpace(a)
		if cmd == a {
			return true
		}
		base, ok := strings.CutSuffix(a, " *")
		if !ok {
			continue
		}
		if cmd == base {
			return true
		}
		if args, ok := strings.CutPrefix(cmd, base+" "); ok && plainArgs(args) {
			return true
		}
	}
	return false
}

// plainArgs reports whether s is only words of [A-Za-z0-9._/=:,@+-] separated by spaces.
func plainArgs(s string) bool {
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == ' ':
		case strings.ContainsRune("._/=:,@+-", r):
		default:
			return false
		}
	}
	return strings.TrimSpace(s) != ""
}

// RefuseCommand is the polite refusal of a command a link does not allow.
func (l *Link) RefuseCommand() string {
	if !l.Commands {
		return "The Aetherium link of this source does not allow commands."
	}
	return "The Aetherium link of this source allows only these commands: `" + strings.Join(l.AllowedCommands, "`, `") + "`."
}
