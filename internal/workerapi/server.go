// Package workerapi is the worker's internal HTTP API: the interactive operations on the VMs of its host (files,
// background processes, shells), which need the VM's guest agent and therefore the worker that hosts the VM. The
// public API's gateway authenticates users, checks ownership and state, and proxies these routes here; in serve
// mode too, over loopback, so that one code path serves both topologies.
//
// Every request must carry the cluster token (Authorization: Bearer <token>), compared in constant time; anything
// else, including unknown routes, gets 401. Answers use the public API's wire types and error envelope
// (pkg/client), because the gateway passes them on as they are. Routes, under /internal/v1/vms/{id}:
//
//	GET    /files?path=               download, streamed (Content-Length, X-Aetherium-File-Mode/-Uid/-Gid)
//	PUT    /files?path=&mode=&owner=&mkdir_parents=&overwrite=   upload, streamed from the body
//	GET    /fs/stat?path=, GET /fs/list?path=, POST /fs/mkdir, DELETE /fs?path=&recursive=
//	POST   /processes, GET /processes, GET /processes/{pid}/output, POST /processes/{pid}/wait,
//	POST   /processes/{pid}/signal, DELETE /processes/{pid}
//	GET    /shell                     WebSocket: an interactive command (see shell.go)
//
// and GET /internal/v1/health (wire.HealthPath): whether the worker serves and its backend answers.
package workerapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/activity"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/workerapi/wire"
	"github.com/aetherium/aetherium/pkg/client"
)

// Defaults of Config.
const (
	DefaultMaxWait    = 10 * time.Minute
	DefaultMaxTimeout = 24 * time.Hour
	maxJSONBody       = 1 << 20
)

// MinTokenLen is the shortest cluster token accepted: shorter ones could be guessed.
const MinTokenLen = 16

// AgentSource gives the guest agent of a VM of this host; vmm.Orchestrator is one. It fails with vmm.ErrNotFound
// or vmm.ErrNotRunning (wrapped) for VMs it does not run. Callers do not close what it returns.
type AgentSource interface {
	Agent(ctx context.Context, vmID string) (*agentclient.Client, error)
}

// Config configures the handler. Agents and Token are required.
type Config struct {
	Agents AgentSource
	// Token is the cluster token the gateway sends.
	Token  string
	Logger *slog.Logger
	// MaxWait bounds POST /processes/{pid}/wait (default 10 minutes).
	MaxWait time.Duration
	// MaxTimeout bounds the timeout_seconds of a background process (default 24 h).
	MaxTimeout time.Duration
	// Activity, when set, records the activity these routes are for VMs' idle timeouts (see track); the worker
	// shares it (worker.Config.Activity).
	Activity *activity.Tracker
}

type server struct {
	agents     AgentSource
	tokenHash  [32]byte
	log        *slog.Logger
	maxWait    time.Duration
	maxTimeout time.Duration
	activity   *activity.Tracker
}

// New returns the handler of the worker API.
func New(cfg Config) (http.Handler, error) {
	if cfg.Agents == nil {
		return nil, errors.New("workerapi: an agent source is required")
	}
	if len(cfg.Token) < MinTokenLen {
		return nil, fmt.Errorf("workerapi: the cluster token must have at least %d characters", MinTokenLen)
	}
	s := &server{agents: cfg.Agents, tokenHash: sha256.Sum256([]byte(cfg.Token)), log: cfg.Logger,
		maxWait: cfg.MaxWait, maxTimeout: cfg.MaxTimeout, activity: cfg.Activity}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.maxWait <= 0 {
		s.maxWait = DefaultMaxWait
	}
	if s.maxTimeout <= 0 {
		s.maxTimeout = DefaultMaxTimeout
	}
	r := chi.NewRouter()
	// Authentication comes before routing, so that without the token not even the routes can be probed.
	r.Use(s.recoverer, s.authenticate)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, client.CodeNotFound, "no route for "+r.Method+" "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" is not allowed on "+r.URL.Path)
	})
	r.Get(wire.HealthPath, s.health)
	r.Route(wire.PathPrefix+"/{id}", func(r chi.Router) {
		// Activity (for idle timeouts): a shell session or a file transfer keeps its VM busy while it lasts, a
		// change counts when it arrives, reads (and waiting for a process) never: polling must not keep a VM alive.
		busy, touch := r.With(s.busy), r.With(s.touch)
		busy.Get("/files", s.download)
		busy.Put("/files", s.upload)
		r.Get("/fs/stat", s.stat)
		r.Get("/fs/list", s.list)
		touch.Post("/fs/mkdir", s.mkdir)
		touch.Delete("/fs", s.remove)
		touch.Post("/processes", s.startProcess)
		r.Get("/processes", s.listProcesses)
		r.Get("/processes/{pid}/output", s.processOutput)
		r.Post("/processes/{pid}/wait", s.waitProcess)
		touch.Post("/processes/{pid}/signal", s.signalProcess)
		touch.Delete("/processes/{pid}", s.removeProcess)
		busy.Get("/shell", s.shell)
	})
	return r, nil
}

// healthChecker is what an AgentSource may also be (vmm.Orchestrator is): a check that its backend answers.
type healthChecker interface {
	Health(ctx context.Context) error
}

// healthTimeout bounds the backend's check, so that a hung engine gives a 503 rather than a hung probe.
const healthTimeout = 5 * time.Second

// health answers 200 {"status":"ok"} when the backend answers (or cannot be asked), 503 with the error envelope
// when it does not. The cause is logged, not returned: it may name host paths.
func (s *server) health(w http.ResponseWriter, r *http.Request) {
	if hc, ok := s.agents.(healthChecker); ok {
		ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		if err := hc.Health(ctx); err != nil {
			s.log.Warn("worker api: health check: the VM backend does not answer", "err", err)
			w.Header().Set("Retry-After", "2")
			writeError(w, http.StatusServiceUnavailable, client.CodeUnavailable, "the worker's VM backend does not answer")
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// busy marks the request's VM busy for as long as the request lasts (shells, file transfers).
func (s *server) busy(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.activity != nil {
			defer s.activity.Begin(chi.URLParam(r, "id"))()
		}
		next.ServeHTTP(w, r)
	})
}

// touch records the request as activity of its VM when it arrives.
func (s *server) touch(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.activity != nil {
			s.activity.Touch(chi.URLParam(r, "id"))
		}
		next.ServeHTTP(w, r)
	})
}

// TokenMatches compares a presented token with the expected one's hash in constant time. Hashing first makes the
// comparison independent of the lengths too.
func (s *server) tokenMatches(tok string) bool {
	h := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(h[:], s.tokenHash[:]) == 1
}

func (s *server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || !s.tokenMatches(strings.TrimSpace(tok)) {
			s.log.Warn("worker api: request without a valid cluster token", "method", r.Method, "path", r.URL.Path,
				"remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="aetherium-worker"`)
			writeError(w, http.StatusUnauthorized, client.CodeUnauthorized, "the cluster token is missing or wrong")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// recoverer turns a panic into a logged 500, except net/http's own way of aborting a response.
func (s *server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("worker api: panic in handler", "panic", fmt.Sprint(v), "path", r.URL.Path)
			writeError(w, http.StatusInternalServerError, client.CodeInternal, "internal error")
		}()
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(client.ErrorBody{Error: client.ErrorDetail{Code: client.CodeInternal, Message: "internal error"}})
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, client.ErrorBody{Error: client.ErrorDetail{Code: code, Message: msg}})
}

// fail answers err: a request error, or what the backend or the agent said.
func (s *server) fail(w http.ResponseWriter, r *http.Request, kind string, err error) {
	if we, ok := wire.AsError(err); ok {
		writeError(w, we.Status, we.Code, we.Message)
		return
	}
	status, code, msg := classify(r.Context(), chi.URLParam(r, "id"), kind, err)
	if status >= 500 {
		s.log.Warn("worker api: request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err,
			"request_id", r.Header.Get(wire.RequestIDHeader))
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "2")
	}
	writeError(w, status, code, msg)
}

// classify maps an error of the backend or of the agent to an answer. kind ("path" or "process") says what a
// not_found of the agent is about.
func classify(ctx context.Context, vmID, kind string, err error) (int, string, string) {
	var ae *agentclient.Error
	switch {
	case errors.As(err, &ae):
		return agentStatus(kind, ae)
	case errors.Is(err, vmm.ErrNotFound):
		return http.StatusNotFound, client.CodeNotFound, "vm " + vmID + " is not on this worker"
	case errors.Is(err, vmm.ErrNotRunning):
		return http.StatusConflict, client.CodeVMNotRunning, "vm " + vmID + " is not running"
	case errors.Is(err, agentclient.ErrUnsupported):
		return http.StatusNotImplemented, client.CodeUnsupported, "the VM's agent does not support this (an older agent)"
	case errors.Is(err, agentclient.ErrUnavailable), errors.Is(err, agentclient.ErrClosed):
		return http.StatusServiceUnavailable, client.CodeUnavailable, "the VM's agent cannot be reached; retry later"
	case ctx.Err() != nil:
		return http.StatusServiceUnavailable, client.CodeUnavailable, "request canceled"
	}
	return http.StatusInternalServerError, client.CodeInternal, "internal error"
}

// agentStatus maps the agent's error codes (agent.Code*) to the API's.
func agentStatus(kind string, e *agentclient.Error) (int, string, string) {
	msg := e.Message
	switch e.Code {
	case "not_found":
		if kind == "process" {
			return http.StatusNotFound, client.CodeProcessNotFound, msg
		}
		return http.StatusNotFound, client.CodePathNotFound, msg
	case "exists":
		return http.StatusConflict, client.CodeAlreadyExists, msg
	case "not_a_directory":
		return http.StatusConflict, client.CodeNotADirectory, msg
	case "is_a_directory":
		return http.StatusConflict, client.CodeIsADirectory, msg
	case "not_a_regular_file":
		return http.StatusConflict, client.CodeNotARegularFile, msg
	case "not_empty":
		return http.StatusConflict, client.CodeDirectoryNotEmpty, msg
	case "permission_denied":
		return http.StatusForbidden, client.CodePermissionDenied, msg
	case "read_only":
		return http.StatusConflict, client.CodeReadOnly, msg
	case "invalid_path":
		return http.StatusUnprocessableEntity, client.CodeValidation, "path: " + msg
	case "unknown_user":
		return http.StatusUnprocessableEntity, client.CodeUnknownUser, msg
	case "not_running":
		return http.StatusConflict, client.CodeProcessExited, msg
	case "still_running":
		return http.StatusConflict, client.CodeProcessRunning, msg
	case "too_many_processes":
		return http.StatusTooManyRequests, client.CodeTooManyProcesses, msg
	case "io_error":
		return http.StatusInternalServerError, client.CodeGuestIOError, msg
	case "bad_request":
		return http.StatusBadRequest, client.CodeBadRequest, msg
	case "unsupported", "unknown_method":
		return http.StatusNotImplemented, client.CodeUnsupported, msg
	case "shutting_down", "too_many_streams":
		return http.StatusServiceUnavailable, client.CodeUnavailable, "the VM's agent is busy or stopping: " + msg
	}
	return http.StatusBadGateway, client.CodeInternal, "the VM's agent failed: " + msg
}

// agent returns the agent of the request's VM, or answers why there is none.
func (s *server) agent(w http.ResponseWriter, r *http.Request) (*agentclient.Client, bool) {
	id := chi.URLParam(r, "id")
	if uuid.Validate(id) != nil {
		writeError(w, http.StatusNotFound, client.CodeNotFound, "vm "+id+" is not on this worker")
		return nil, false
	}
	ag, err := s.agents.Agent(r.Context(), id)
	if err != nil {
		s.fail(w, r, "", err)
		return nil, false
	}
	return ag, true
}

// decodeJSON reads a JSON object of known fields. The gateway has checked it already; this only guards the
// worker against what does not come through the gateway.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, client.CodeInvalidJSON, "malformed JSON body: "+err.Error())
		return false
	}
	return true
}

// Listen opens the worker API's listener on addr (host:port; port 0 picks one).
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("worker api: listen on %s: %w", addr, err)
	}
	return ln, nil
}

// AdvertisedURL is the URL gateways use to reach the worker API listening on ln: configured when set, else one
// derived from the listener (its host, or this machine's host name when it listens on every interface).
func AdvertisedURL(ln net.Listener, configured string) (string, error) {
	if configured != "" {
		u, err := url.Parse(configured)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
			return "", fmt.Errorf("worker api url %q: want http://HOST:PORT", configured)
		}
		return strings.TrimRight(configured, "/"), nil
	}
	host, port, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		return "", fmt.Errorf("worker api listener address: %w", err)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if host, err = os.Hostname(); err != nil || host == "" {
			return "", errors.New("worker api: listening on every interface and the host name is unknown: set worker_api_url")
		}
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// durationMS is d in whole milliseconds.
func durationMS(d time.Duration) *int64 {
	ms := d.Milliseconds()
	return &ms
}

// itoa is for headers.
func itoa(n int) string { return strconv.Itoa(n) }

// copyBody streams src to w, aborting the response if src fails: the client must see a cut transfer, never a
// short file that looks complete.
func (s *server) copyBody(w http.ResponseWriter, r *http.Request, src io.Reader) {
	if _, err := io.Copy(w, src); err != nil {
		if r.Context().Err() == nil {
			s.log.Warn("worker api: download cut short", "path", r.URL.Path, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}
