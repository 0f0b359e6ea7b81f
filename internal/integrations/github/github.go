// Package github is the GitHub integration: a GitHub App whose webhooks (issue and pull-request comments, check
// runs) start commands and agent runs, and whose installation tokens report back (a reaction, one tracking comment
// edited as the work progresses, a check run, a draft pull request for an agent's branch).
//
// A comment triggers work when it contains `/aetherium run <command>` (a command in a fresh VM with the repository
// checked out) or `@aetherium <prompt>` (an agent run on the repository, at the pull request's head or the default
// branch), its repository is linked to an owner (integrations.Link), and its author has write or admin permission
// on the repository (asked of the API, never taken from the payload).
package github

import (
	"context"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/queue"
)

// MaxBodyBytes is GitHub's own cap of a webhook payload.
const MaxBodyBytes = 25 << 20

// DefaultAPIURL is github.com's REST API.
const DefaultAPIURL = "https://api.github.com"

// Config configures the integration. WebhookSecret is required.
type Config struct {
	WebhookSecret string
	AppID         string
	ClientID      string // the JWT's issuer when set (GitHub's recommendation), else AppID
	PrivateKey    *rsa.PrivateKey
	APIURL        string // default DefaultAPIURL; GitHub Enterprise Server: https://HOST/api/v3
	HTTPClient    *http.Client
	Logger        *slog.Logger
	// CommandTimeout bounds a command (default 30 minutes).
	CommandTimeout time.Duration
	Now            func() time.Time
}

// GitHub is the integration.
type GitHub struct {
	secret  []byte
	appID   string
	client  string
	key     *rsa.PrivateKey
	apiURL  string
	http    *http.Client
	log     *slog.Logger
	timeout time.Duration
	now     func() time.Time
	tok     tokens
}

// New returns the integration.
func New(cfg Config) (*GitHub, error) {
	if cfg.WebhookSecret == "" {
		return nil, errors.New("github: a webhook secret is required")
	}
	g := &GitHub{secret: []byte(cfg.WebhookSecret), appID: cfg.AppID, client: cfg.ClientID, key: cfg.PrivateKey,
		apiURL: cfg.APIURL, http: cfg.HTTPClient, log: cfg.Logger, timeout: cfg.CommandTimeout, now: cfg.Now,
		tok: tokens{m: map[string]cachedToken{}}}
	if g.apiURL == "" {
		g.apiURL = DefaultAPIURL
	}
	if g.http == nil {
		g.http = &http.Client{Timeout: 30 * time.Second}
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	if g.timeout <= 0 {
		g.timeout = 30 * time.Minute
	}
	if g.now == nil {
		g.now = time.Now
	}
	if g.key != nil && g.issuer() == "" {
		return nil, errors.New("github: a private key needs github_app_id or github_client_id")
	}
	return g, nil
}

func (g *GitHub) issuer() string {
	if g.client != "" {
		return g.client
	}
	return g.appID
}

// Name is "github".
func (g *GitHub) Name() string { return "github" }

// MaxBodyBytes is 25 MB.
func (g *GitHub) MaxBodyBytes() int64 { return MaxBodyBytes }

// Verify checks X-Hub-Signature-256: "sha256=" and the hex HMAC-SHA256 of the raw body, in constant time.
func (g *GitHub) Verify(_ context.Context, w *integrations.Webhook) error {
	sig := w.Header.Get("X-Hub-Signature-256")
	hexSum, ok := strings.CutPrefix(sig, "sha256=")
	if !ok {
		return fmt.Errorf("X-Hub-Signature-256 is missing or not sha256=: %w", integrations.ErrBadSignature)
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil {
		return fmt.Errorf("X-Hub-Signature-256 is not hex: %w", integrations.ErrBadSignature)
	}
	mac := hmac.New(sha256.New, g.secret)
	mac.Write(w.Body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return fmt.Errorf("X-Hub-Signature-256 does not match: %w", integrations.ErrBadSignature)
	}
	return nil
}

// Sign returns the X-Hub-Signature-256 value of body under secret (for tests and tools that send webhooks).
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Accept reads X-GitHub-Event and X-GitHub-Delivery; a ping is answered at once and not recorded.
func (g *GitHub) Accept(_ context.Context, w *integrations.Webhook) (*integrations.Acceptance, error) {
	event := w.Header.Get("X-GitHub-Event")
	if event == "" {
		return nil, errors.New("X-GitHub-Event is missing")
	}
	if event == "ping" {
		return &integrations.Acceptance{Event: event, Reply: &integrations.Reply{Status: http.StatusOK,
			ContentType: "application/json", Body: []byte(`{"ok":true,"event":"ping"}`)}}, nil
	}
	id := w.Header.Get("X-GitHub-Delivery")
	if id == "" {
		return nil, errors.New("X-GitHub-Delivery is missing")
	}
	if !json.Valid(w.Body) {
		return nil, errors.New("the body is not JSON")
	}
	return &integrations.Acceptance{DeliveryID: id, Event: event}, nil
}

// Notify is not a GitHub destination yet: results are reported on the comment that asked for them.
func (g *GitHub) Notify(context.Context, integrations.Notification) error {
	return errors.New("github: notifications are reported on the triggering comment, not sent")
}

// Health asks for the App itself (GET /app) with its JWT.
func (g *GitHub) Health(ctx context.Context) error {
	if g.key == nil {
		return errors.New("github: no app private key is configured")
	}
	jwt, err := appJWT(g.key, g.issuer(), g.now())
	if err != nil {
		return err
	}
	return g.call(ctx, "Bearer "+jwt, http.MethodGet, "/app", nil, nil)
}

// ---- payloads (the fields used)

type user struct {
	Login string `json:"login"`
	Type  string `json:"type"`
}

type repository struct {
	Name          string `json:"name"`
	FullName      string `json:"full_name"`
	HTMLURL       string `json:"html_url"`
	CloneURL      string `json:"clone_url"`
	DefaultBranch string `json:"default_branch"`
	Owner         user   `json:"owner"`
}

type comment struct {
	ID      int64  `json:"id"`
	Body    string `json:"body"`
	User    user   `json:"user"`
	HTMLURL string `json:"html_url"`
}

type event struct {
	Action       string      `json:"action"`
	Comment      *comment    `json:"comment"`
	Repository   *repository `json:"repository"`
	Sender       user        `json:"sender"`
	Installation *struct {
		ID int64 `json:"id"`
	} `json:"installation"`
	Issue *struct {
		Number      int             `json:"number"`
		PullRequest json.RawMessage `json:"pull_request"`
	} `json:"issue"`
	PullRequest *struct {
		Number int `json:"number"`
		Head   struct {
			Ref  string      `json:"ref"`
			SHA  string      `json:"sha"`
			Repo *repository `json:"repo"` // a fork's, for a pull request from one; null when the fork is gone
		} `json:"head"`
		Base struct {
			Ref string `json:"ref"`
		} `json:"base"`
	} `json:"pull_request"`
	CheckRun *struct {
		ID         int64  `json:"id"`
		HeadSHA    string `json:"head_sha"`
		ExternalID string `json:"external_id"`
	} `json:"check_run"`
}

// trigger is what a comment asks for.
type trigger struct {
	kind string // "command" or "run"
	text string
}

// parseTrigger finds `/aetherium run <command>` (the rest of its line) or `@aetherium <prompt>` (the rest of the
// comment) in body.
func parseTrigger(body string) (trigger, bool) {
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimSpace(line)
		if cmd, ok := strings.CutPrefix(line, "/aetherium run "); ok && strings.TrimSpace(cmd) != "" {
			return trigger{kind: "command", text: strings.TrimSpace(cmd)}, true
		}
	}
	if i := strings.Index(body, "@aetherium "); i >= 0 {
		if p := strings.TrimSpace(body[i+len("@aetherium "):]); p != "" {
			return trigger{kind: "run", text: p}, true
		}
	}
	return trigger{}, false
}

// externalID is what a check run keeps of its trigger, so a re-request can run it again.
type externalID struct {
	Kind   string `json:"k"`
	Text   string `json:"t"`
	Issue  int    `json:"i,omitempty"`
	Ref    string `json:"r,omitempty"`
	Author string `json:"a,omitempty"`
}

// Handle does a delivery's work. Events and actions that trigger nothing are done at once.
func (g *GitHub) Handle(ctx context.Context, d *integrations.Delivery, a integrations.Actions) error {
	var ev event
	if err := json.Unmarshal(d.Body, &ev); err != nil {
		return queue.Permanent(fmt.Errorf("github delivery %s: %w", d.DeliveryID, err))
	}
	if ev.Repository == nil || ev.Installation == nil {
		return nil
	}
	w := &work{g: g, a: a, d: d, ev: &ev, repo: ev.Repository, inst: ev.Installation.ID}
	if len(d.Progress) > 0 {
		if err := json.Unmarshal(d.Progress, &w.prog); err != nil {
			// Resuming blind could report twice; starting over could run twice. Neither: say so.
			return queue.Permanent(fmt.Errorf("github delivery %s: saved progress: %w", d.DeliveryID, err))
		}
	}
	switch d.Event {
	case "issue_comment", "pull_request_review_comment":
		if ev.Action != "created" || ev.Comment == nil {
			return nil
		}
		t, ok := parseTrigger(ev.Comment.Body)
		if !ok {
			return nil
		}
		w.trig, w.author, w.commentID = t, ev.Comment.User, ev.Comment.ID
		if ev.Issue != nil {
			w.issue, w.isPR = ev.Issue.Number, len(ev.Issue.PullRequest) > 0 && string(ev.Issue.PullRequest) != "null"
		}
		if ev.PullRequest != nil {
			w.issue, w.isPR, w.ref, w.sha = ev.PullRequest.Number, true, ev.PullRequest.Head.Ref, ev.PullRequest.Head.SHA
			w.headRepo = ev.PullRequest.Head.Repo
		}
		w.reviewComment = d.Event == "pull_request_review_comment"
	case "pull_request":
		// The link's pull request command (e.g. the tests) on every push to a pull request, reported as a check
		// run only: a tracking comment per push would be the stream of comments nobody wants.
		if ev.PullRequest == nil || (ev.Action != "opened" && ev.Action != "reopened" && ev.Action != "synchronize") {
			return nil
		}
		w.onPR, w.trig, w.author, w.isPR = true, trigger{kind: "command"}, ev.Sender, true
		w.ref, w.sha, w.headRepo = ev.PullRequest.Head.Ref, ev.PullRequest.Head.SHA, ev.PullRequest.Head.Repo
	case "check_run":
		if ev.Action != "rerequested" || ev.CheckRun == nil {
			return nil
		}
		var x externalID
		if json.Unmarshal([]byte(ev.CheckRun.ExternalID), &x) != nil || x.Text == "" {
			return nil // not one of ours
		}
		w.trig, w.author, w.issue, w.ref, w.sha = trigger{kind: x.Kind, text: x.Text}, ev.Sender, x.Issue, x.Ref, ev.CheckRun.HeadSHA
	default:
		return nil
	}
	return w.do(ctx)
}

// work is one triggered piece of work and what reports on it.
type work struct {
	g             *GitHub
	a             integrations.Actions
	d             *integrations.Delivery
	prog          progress
	ev            *event
	repo          *repository
	inst          int64
	trig          trigger
	author        user
	commentID     int64
	reviewComment bool
	issue         int
	isPR          bool
	ref, sha      string
	token         string
	onPR          bool        // a pull_request event: the link's PRCommand is the trigger
	headRepo      *repository // the pull request's head repository (a fork's, or the repository itself)
}

// progress is how far a delivery's work got. It is saved (Delivery.SaveProgress) after every step that shows on
// GitHub or starts something, so that a retry of the delivery (its worker restarted, GitHub answered 500) resumes
// where the last attempt stopped: one reaction, one tracking comment, one check run, one job or run, one draft pull
// request, however many attempts it takes.
type progress struct {
	Refused  bool   `json:"refused,omitempty"` // the polite refusal was posted
	Reacted  bool   `json:"reacted,omitempty"`
	Ref      string `json:"ref,omitempty"`
	SHA      string `json:"sha,omitempty"`
	Tracking int64  `json:"tracking_comment,omitempty"`
	CheckRun int64  `json:"check_run,omitempty"`
	Kind     string `json:"kind,omitempty"` // "job" or "run", once started
	ID       string `json:"id,omitempty"`
	DraftPR  string `json:"draft_pr,omitempty"`  // the draft pull request's URL, once opened
	HeadRepo string `json:"head_repo,omitempty"` // the clone URL of the pull request's head, when a fork's
}

// save records the progress. After the work has started, a failure to save is logged, not returned: returning it
// would retry the delivery and, with no record of the start, start the work again.
func (w *work) save(ctx context.Context) error {
	err := w.d.SaveProgress(context.WithoutCancel(ctx), w.prog)
	if err != nil && w.prog.ID != "" {
		w.g.log.Warn("github: save the progress of a delivery", "delivery", w.d.DeliveryID, "err", err)
		return nil
	}
	return err
}

func (w *work) source() string {
	host := "github.com"
	if u, err := url.Parse(w.repo.HTMLURL); err == nil && u.Host != "" {
		host = u.Host
	}
	return host + "/" + w.repo.FullName
}

func (w *work) api(ctx context.Context, method, path string, in, out any) error {
	return w.g.call(ctx, "token "+w.token, method, path, in, out)
}

func (w *work) repoPath() string {
	return "/repos/" + url.PathEscape(w.repo.Owner.Login) + "/" + url.PathEscape(w.repo.Name)
}

func (w *work) do(ctx context.Context) error {
	link, err := w.a.Link(ctx, "github", w.source())
	if w.onPR {
		// Pull request events come for every push to every pull request: only a link with a command acts, and
		// nothing is said to anyone else.
		if errors.Is(err, integrations.ErrNotLinked) || (err == nil && (link.PRCommand == "" || !link.Commands)) {
			return nil
		}
		if err == nil {
			w.trig.text = link.PRCommand
		}
	}
	if err != nil && !errors.Is(err, integrations.ErrNotLinked) {
		return err
	}
	tok, terr := w.g.installationToken(ctx, w.inst, w.repo.Name)
	if terr != nil {
		return terr
	}
	w.token = tok
	if errors.Is(err, integrations.ErrNotLinked) {
		return w.refuse(ctx, fmt.Sprintf("This repository is not linked to an Aetherium owner, so Aetherium does nothing "+
			"here. An Aetherium user can link it with:\n\n    aetherium integration link github %s\n", w.source()))
	}
	if strings.EqualFold(w.author.Type, "Bot") && !link.AllowBots {
		return nil
	}
	if w.trig.kind == "run" && !link.Runs {
		return w.refuse(ctx, "The Aetherium link of this repository does not allow agent runs.")
	}
	// A link's own pull request command is the link owner's choice, not the commenter's.
	if w.trig.kind == "command" && (!link.Commands || (!w.onPR && !link.AllowsCommand(w.trig.text))) {
		return w.refuse(ctx, link.RefuseCommand())
	}
	var perm struct {
		Permission string `json:"permission"`
	}
	if err := w.api(ctx, http.MethodGet, w.repoPath()+"/collaborators/"+url.PathEscape(w.author.Login)+"/permission", nil, &perm); err != nil {
		return err
	}
	if perm.Permission != "admin" && perm.Permission != "write" {
		w.g.log.Info("github trigger ignored: the author may not write", "repo", w.repo.FullName, "author", w.author.Login)
		return nil
	}
	if w.commentID != 0 && !w.prog.Reacted {
		kind := "issues/comments"
		if w.reviewComment {
			kind = "pulls/comments"
		}
		if err := w.api(ctx, http.MethodPost, fmt.Sprintf("%s/%s/%d/reactions", w.repoPath(), kind, w.commentID),
			map[string]string{"content": "eyes"}, nil); err != nil {
			return err
		}
		w.prog.Reacted = true
		if err := w.save(ctx); err != nil {
			return err
		}
	}
	if err := w.resolveRef(ctx); err != nil {
		return err
	}
	if err := w.startReport(ctx); err != nil {
		return err
	}
	if w.prog.ID == "" {
		kind, id, err := w.start(ctx, link)
		if err != nil {
			return w.finish(ctx, &integrations.Outcome{Status: "failed", Error: err.Error()}, link)
		}
		w.prog.Kind, w.prog.ID = kind, id
		_ = w.save(ctx)
		w.updateTracking(ctx, fmt.Sprintf("⏳ running (%s `%s`)", kind, id), "")
	}
	kind, id := w.prog.Kind, w.prog.ID
	out, err := w.a.Wait(ctx, link.OwnerID, kind, id)
	if err != nil {
		// Retried: the retry finds the started job or run in the progress and waits for it again.
		return fmt.Errorf("wait for %s %s: %w", kind, id, err)
	}
	return w.finish(ctx, out, link)
}

// refuse posts a polite refusal once, however often the delivery is retried.
func (w *work) refuse(ctx context.Context, body string) error {
	if w.prog.Refused {
		return nil
	}
	if err := w.comment(ctx, body); err != nil {
		return err
	}
	w.prog.Refused = true
	return w.save(ctx)
}

// resolveRef finds the commit the work is for: the pull request's head, else the default branch's.
func (w *work) resolveRef(ctx context.Context) error {
	if w.prog.SHA != "" {
		w.ref, w.sha = w.prog.Ref, w.prog.SHA
		return nil
	}
	if err := w.findRef(ctx); err != nil {
		return err
	}
	w.prog.Ref, w.prog.SHA = w.ref, w.sha
	if w.headRepo != nil && w.headRepo.CloneURL != "" && w.headRepo.FullName != w.repo.FullName {
		w.prog.HeadRepo = w.headRepo.CloneURL
	}
	return w.save(ctx)
}

func (w *work) findRef(ctx context.Context) error {
	if w.sha != "" {
		return nil
	}
	if w.isPR && w.issue != 0 {
		var pr struct {
			Head struct {
				Ref  string      `json:"ref"`
				SHA  string      `json:"sha"`
				Repo *repository `json:"repo"`
			} `json:"head"`
		}
		if err := w.api(ctx, http.MethodGet, fmt.Sprintf("%s/pulls/%d", w.repoPath(), w.issue), nil, &pr); err != nil {
			return err
		}
		w.ref, w.sha, w.headRepo = pr.Head.Ref, pr.Head.SHA, pr.Head.Repo
		return nil
	}
	if w.ref == "" {
		w.ref = w.repo.DefaultBranch
	}
	var br struct {
		Commit struct {
			SHA string `json:"sha"`
		} `json:"commit"`
	}
	if err := w.api(ctx, http.MethodGet, w.repoPath()+"/branches/"+url.PathEscape(w.ref), nil, &br); err != nil {
		return err
	}
	w.sha = br.Commit.SHA
	return nil
}

func (w *work) title() string {
	if w.trig.kind == "run" {
		return "Aetherium agent run"
	}
	return "Aetherium: " + clip(w.trig.text, 80)
}

func (w *work) startReport(ctx context.Context) error {
	if w.issue != 0 && w.prog.Tracking == 0 {
		var c struct {
			ID int64 `json:"id"`
		}
		if err := w.api(ctx, http.MethodPost, fmt.Sprintf("%s/issues/%d/comments", w.repoPath(), w.issue),
			map[string]string{"body": w.trackingBody("🕐 queued", "")}, &c); err != nil {
			return err
		}
		w.prog.Tracking = c.ID
		if err := w.save(ctx); err != nil {
			return err
		}
	}
	if w.prog.CheckRun != 0 {
		return nil
	}
	ext, _ := json.Marshal(externalID{Kind: w.trig.kind, Text: clip(w.trig.text, 200), Issue: w.issue, Ref: w.ref})
	var cr struct {
		ID int64 `json:"id"`
	}
	if err := w.api(ctx, http.MethodPost, w.repoPath()+"/check-runs", map[string]any{
		"name": "aetherium", "head_sha": w.sha, "status": "in_progress", "external_id": string(ext),
		"output": map[string]string{"title": w.title(), "summary": "Queued."},
	}, &cr); err != nil {
		return err
	}
	w.prog.CheckRun = cr.ID
	return w.save(ctx)
}

func (w *work) start(ctx context.Context, link *integrations.Link) (kind, id string, err error) {
	if w.trig.kind == "command" {
		// A fork's branch is in the fork: the command checks the head out from there.
		repoURL := w.repo.CloneURL
		if w.prog.HeadRepo != "" {
			repoURL = w.prog.HeadRepo
		}
		id, err = w.a.StartCommand(ctx, link.OwnerID, integrations.CommandRequest{Command: w.trig.text,
			RepoURL: repoURL, Ref: w.ref, Timeout: w.g.timeout})
		return "job", id, err
	}
	if w.prog.HeadRepo != "" {
		return "", "", fmt.Errorf("agent runs on pull requests from forks are not supported: the agent's branch "+
			"could not be pushed to %s; comment on a branch of this repository instead", w.prog.HeadRepo)
	}
	branch := fmt.Sprintf("aetherium/%s-%d", map[bool]string{true: "pr", false: "issue"}[w.isPR], w.issue)
	if w.commentID != 0 {
		branch = fmt.Sprintf("%s-%d", branch, w.commentID)
	}
	id, err = w.a.StartRun(ctx, link.OwnerID, integrations.RunRequest{RepoURL: w.repo.CloneURL, Ref: w.ref,
		Prompt: w.trig.text, Branch: branch, DraftPR: link.DraftPR})
	return "run", id, err
}

func (w *work) trackingBody(state, detail string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "**Aetherium** — %s\n\n", state)
	if w.trig.kind == "command" {
		fmt.Fprintf(&b, "Command: `%s`\n", clip(w.trig.text, 200))
	} else {
		fmt.Fprintf(&b, "Agent run: %s\n", clip(w.trig.text, 200))
	}
	if detail != "" {
		b.WriteString("\n" + detail)
	}
	return b.String()
}

// updateTracking edits the tracking comment on the way; a failure is logged, not retried (the next edit, and the
// final one, say more).
func (w *work) updateTracking(ctx context.Context, state, detail string) {
	if err := w.editTracking(ctx, state, detail); err != nil {
		w.g.log.Warn("github: edit the tracking comment", "repo", w.repo.FullName, "err", err)
	}
}

func (w *work) editTracking(ctx context.Context, state, detail string) error {
	if w.prog.Tracking == 0 {
		return nil
	}
	return w.api(ctx, http.MethodPatch, fmt.Sprintf("%s/issues/comments/%d", w.repoPath(), w.prog.Tracking),
		map[string]string{"body": w.trackingBody(state, detail)}, nil)
}

// maxSummary is GitHub's limit of a check run's output summary.
const maxSummary = 65535

func (w *work) finish(ctx context.Context, out *integrations.Outcome, link *integrations.Link) error {
	var d strings.Builder
	if out.ExitCode != nil {
		fmt.Fprintf(&d, "Exit code: %d\n", *out.ExitCode)
	}
	if out.DiffStat != "" {
		fmt.Fprintf(&d, "Changes: %s\n", out.DiffStat)
	}
	if out.CostUSD != nil {
		fmt.Fprintf(&d, "Cost: $%.4f\n", *out.CostUSD)
	}
	if out.Branch != "" {
		fmt.Fprintf(&d, "Branch: `%s`\n", out.Branch)
		if link.DraftPR && w.trig.kind == "run" {
			if w.prog.DraftPR == "" {
				u, err := w.draftPR(ctx, out.Branch)
				var ae *APIError
				if err != nil && (!errors.As(err, &ae) || ae.Status >= 500 || ae.Status == http.StatusTooManyRequests) {
					return err // GitHub or the way to it failed: the retry opens it
				}
				if err != nil {
					fmt.Fprintf(&d, "Draft pull request: could not be opened: %v\n", err)
				} else {
					w.prog.DraftPR = u
					_ = w.save(ctx)
				}
			}
			if w.prog.DraftPR != "" {
				fmt.Fprintf(&d, "Draft pull request: %s\n", w.prog.DraftPR)
			}
		}
	}
	if out.Error != "" {
		fmt.Fprintf(&d, "\nError:\n```\n%s\n```\n", fence(clip(out.Error, 4000)))
	}
	if out.OutputTail != "" {
		fmt.Fprintf(&d, "\nOutput (tail):\n```\n%s\n```\n", fence(out.OutputTail))
	}
	state, conclusion := "✅ "+out.Status, "success"
	if out.Status != "completed" {
		state, conclusion = "❌ "+out.Status, "failure"
		if out.Status == "cancelled" {
			conclusion = "cancelled"
		}
	}
	// The final report is retried with the delivery until it is made: both edits are idempotent, and the
	// progress keeps the work from starting again.
	trackErr := w.editTracking(ctx, state, d.String())
	if w.prog.CheckRun != 0 {
		summary := d.String()
		if summary == "" {
			summary = out.Status
		}
		if len(summary) > maxSummary {
			summary = summary[len(summary)-maxSummary:]
		}
		if err := w.api(ctx, http.MethodPatch, fmt.Sprintf("%s/check-runs/%d", w.repoPath(), w.prog.CheckRun), map[string]any{
			"status": "completed", "conclusion": conclusion, "completed_at": w.g.now().UTC().Format(time.RFC3339),
			"output": map[string]string{"title": w.title(), "summary": summary},
		}, nil); err != nil {
			return err
		}
	}
	if trackErr != nil {
		return fmt.Errorf("edit the tracking comment: %w", trackErr)
	}
	return nil
}

func (w *work) draftPR(ctx context.Context, branch string) (string, error) {
	base := w.repo.DefaultBranch
	if w.isPR && w.ref != "" {
		base = w.ref
	}
	var pr struct {
		HTMLURL string `json:"html_url"`
	}
	err := w.api(ctx, http.MethodPost, w.repoPath()+"/pulls", map[string]any{
		"title": "Aetherium: " + clip(w.trig.text, 60), "head": branch, "base": base, "draft": true,
		"body": "Opened by Aetherium for: " + clip(w.trig.text, 2000),
	}, &pr)
	return pr.HTMLURL, err
}

// comment posts a new comment on the issue or pull request (the polite refusals).
func (w *work) comment(ctx context.Context, body string) error {
	if w.issue == 0 {
		return nil
	}
	return w.api(ctx, http.MethodPost, fmt.Sprintf("%s/issues/%d/comments", w.repoPath(), w.issue),
		map[string]string{"body": body}, nil)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// fence keeps guest output from closing the code block it is shown in.
func fence(s string) string { return strings.ReplaceAll(s, "```", "`\u200b``") }
