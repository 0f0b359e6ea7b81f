// Package api is Aetherium's REST API v1: a thin HTTP layer over the application layer (internal/task). It turns
// requests into service calls for the authenticated owner and service results into the wire types of pkg/client.
// The calls that change VMs, executions and jobs answer 202 with a persisted task; ?wait=<duration> turns them
// into a bounded synchronous call. Files, processes and shells act on the VM directly (interactive.go), through
// the worker that hosts it. Every mutating call takes an Idempotency-Key (idempotency.go) but file uploads.
// The contract is internal/api/openapi.yaml, served at /api/v1/openapi.yaml and checked against the router by tests.
package api

import (
	"log/slog"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/audit"
	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// Defaults of Config.
const (
	DefaultMaxBodyBytes = 1 << 20
	DefaultMaxWait      = 10 * time.Minute
	// DefaultStreamHeartbeat is the default of Config.StreamHeartbeat.
	DefaultStreamHeartbeat = 15 * time.Second
	// DefaultBodyTimeout is the default of Config.BodyTimeout: 1 MiB at about 35 KB/s.
	DefaultBodyTimeout = 30 * time.Second
)

// Config configures the API handler. Service and Auth are required.
type Config struct {
	Service *task.Service
	Auth    *auth.Authenticator
	Logger  *slog.Logger
	// Version is reported by GET /api/v1/health.
	Version string
	// MaxBodyBytes bounds request bodies (default 1 MiB); larger ones get 413.
	MaxBodyBytes int64
	// MaxWait bounds ?wait= (default 10 minutes). The HTTP server's WriteTimeout must exceed it.
	MaxWait time.Duration
	// StreamHeartbeat is how often an execution stream sends a comment while the command is silent, so that
	// proxies and clients do not take it for dead (default 15 s).
	StreamHeartbeat time.Duration
	// ClusterToken authenticates the gateway to the workers' internal API, to which the interactive routes (files,
	// processes, shells) are proxied. Empty: those routes answer 503.
	ClusterToken string
	// WorkerTransport carries the proxied requests to the workers (default: a transport for cluster traffic).
	WorkerTransport http.RoundTripper
	// Idempotency keeps the answers of requests sent with an Idempotency-Key (idempotency.go). Nil: such requests
	// are refused with 400, never run without the guarantee they ask for.
	Idempotency store.IdempotencyStore
	// Notifications keeps notification rules and the outbox (nil: the notification routes answer 503).
	Notifications store.NotificationStore
	// IdempotencyTTL is how long a key is kept (default IdempotencyTTL, 24 h).
	IdempotencyTTL time.Duration
	// BodyTimeout bounds the time to receive a JSON request body (default DefaultBodyTimeout). Uploads have their
	// own idle timeout instead.
	BodyTimeout time.Duration
	// Metrics records every request by route pattern, method and status (metrics.go); nil: nothing is recorded.
	Metrics *metrics.HTTP
	// Logs answers GET /logs and /vms/{id}/logs (logs.LokiQuerier); nil: only an execution's stored output is.
	Logs logs.Querier
	// Events is the owner-scoped event log of GET /api/v1/events (nil: that route answers 503); EventBus wakes its
	// streams when the log grows (nil: they only poll, every EventPoll, default 2 s).
	Events    store.EventStore
	EventBus  events.Bus
	EventPoll time.Duration
	// Integrations are the webhook receivers of POST /api/v1/webhooks/{integration} (nil: every name is 404).
	Integrations *integrations.Registry
	// RateLimits limits requests per API key and per source address (ratelimit.go); a nil Limiter: no limits.
	RateLimits RateLimits
	// Tracer makes a span of every request (tracing.go); nil: no spans. The trace context reaches the workers in
	// the payloads of the tasks a request queues.
	Tracer trace.TracerProvider
	// APIKeys serves the admin's key management (/apikeys; nil: 503).
	APIKeys store.APIKeyStore
	// Audit records every mutating call (nil: none are); AuditStore answers GET /audit (nil: 503).
	Audit      *audit.Recorder
	AuditStore store.AuditStore
	// Web serves GET and HEAD requests outside /api/ (the dashboard, internal/web); nil: they are JSON 404s like
	// any unknown path. Paths under /api/ never reach it.
	Web http.Handler
}

// server holds the handler's dependencies; its methods are the route handlers.
type server struct {
	tracer  trace.TracerProvider
	svc     *task.Service
	auth    *auth.Authenticator
	log     *slog.Logger
	version string
	maxBody int64
	maxWait time.Duration
	// heartbeat is Config.StreamHeartbeat.
	heartbeat time.Duration
	openapi   openAPIDoc
	router    *chi.Mux
	// clusterToken and proxy carry the interactive routes to the worker hosting the VM (interactive.go).
	clusterToken string
	proxy        *httputil.ReverseProxy
	// idem keeps idempotency keys; lastPurge is when expired ones were last deleted (unix nanoseconds).
	idem        store.IdempotencyStore
	idemTTL     time.Duration
	lastPurge   atomic.Int64
	bodyTimeout time.Duration
	metrics     *metrics.HTTP
	logs        logs.Querier
	// integrations receive webhooks (webhooks.go).
	integrations *integrations.Registry
	// notifications serves the notification routes (notifications.go).
	notifications store.NotificationStore
	// events, eventBus and eventPoll serve GET /events (events.go).
	events    store.EventStore
	eventBus  events.Bus
	eventPoll time.Duration
	// limits are the rate limits (ratelimit.go).
	limits RateLimits
	// apiKeys, audit and auditStore serve the admin routes and the audit log (authz.go).
	apiKeys    store.APIKeyStore
	audit      *audit.Recorder
	auditStore store.AuditStore
	// tickets are the shell tickets minted by this gateway (shellticket.go).
	tickets shellTickets
	// web answers what no route of the API does outside /api/ (the dashboard); nil: a JSON 404.
	web http.Handler
}

// New returns the http.Handler of the REST API v1, rooted at /api/v1.
func New(cfg Config) http.Handler {
	return newServer(cfg).router
}

func newServer(cfg Config) *server {
	s := &server{
		svc:     cfg.Service,
		auth:    cfg.Auth,
		log:     cfg.Logger,
		version: cfg.Version,
		maxBody: cfg.MaxBodyBytes,
		maxWait: cfg.MaxWait,

		heartbeat: cfg.StreamHeartbeat,

		clusterToken: cfg.ClusterToken,

		idem:        cfg.Idempotency,
		idemTTL:     cfg.IdempotencyTTL,
		bodyTimeout: cfg.BodyTimeout,
		metrics:     cfg.Metrics,
		logs:        cfg.Logs,

		integrations:  cfg.Integrations,
		notifications: cfg.Notifications,

		events: cfg.Events, eventBus: cfg.EventBus, eventPoll: cfg.EventPoll,
		limits: cfg.RateLimits, tracer: cfg.Tracer, web: cfg.Web,
		apiKeys: cfg.APIKeys, audit: cfg.Audit, auditStore: cfg.AuditStore,
	}
	if s.auth == nil {
		s.auth = auth.NewAuthenticator(nil)
	}
	if s.idemTTL <= 0 {
		s.idemTTL = IdempotencyTTL
	}
	if s.bodyTimeout <= 0 {
		s.bodyTimeout = DefaultBodyTimeout
	}
	s.proxy = s.newProxy(cfg.WorkerTransport)
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.version == "" {
		s.version = "dev"
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.maxWait <= 0 {
		s.maxWait = DefaultMaxWait
	}
	if s.heartbeat <= 0 {
		s.heartbeat = DefaultStreamHeartbeat
	}
	s.openapi = loadOpenAPI()
	if s.openapi.err != nil {
		// The document is embedded and checked by tests, so this only happens with a broken build; the API still
		// serves everything else and the openapi routes answer 500.
		s.log.Error("openapi document cannot be parsed", "err", s.openapi.err)
	}
	s.routes()
	return s
}

func (s *server) routes() {
	r := chi.NewRouter()
	s.router = r
	// Order matters: the request id is known to the access log, and the access log sees the 500 written by the
	// recoverer. The body limit is set per group, before any handler reads: uploads are streamed without one.
	r.Use(s.requestID)
	if s.tracer != nil {
		r.Use(s.traceRequests) // before the access log, which names the trace
	}
	r.Use(s.accessLog)
	if s.metrics != nil {
		r.Use(s.observe)
	}
	if s.audit != nil {
		r.Use(s.auditCalls) // inside the access log, whose writer tells the status (authz.go)
	}
	r.Use(s.recoverer)
	// Set before Route so the /api/v1 sub-router inherits them.
	r.NotFound(s.notFound)
	r.MethodNotAllowed(s.methodNotAllowed)

	// The public keys of the API's tokens, where JWT libraries look for them (and under /api/v1/auth/jwks.json).
	r.With(s.limitByAddr).Get("/.well-known/jwks.json", s.jwks)

	// Every authenticated route declares its scope with s.require (authz.go); TestEveryRouteHasAScope checks it.
	read, write, exec := s.require(auth.ScopeVMsRead), s.require(auth.ScopeVMsWrite), s.require(auth.ScopeExec)
	files, runs, admin := s.require(auth.ScopeFiles), s.require(auth.ScopeRuns), s.require(auth.ScopeAdmin)
	r.Route("/api/v1", func(r chi.Router) {
		// Public: probes and the contract itself.
		r.Get("/health", s.health)
		r.Get("/ready", s.ready)
		r.With(s.limitByAddr).Get("/openapi.yaml", s.openAPIYAML)
		r.With(s.limitByAddr).Get("/openapi.json", s.openAPIJSON)
		r.With(s.limitByAddr).Get("/auth/jwks.json", s.jwks)
		// Webhooks: authenticated by each integration's own signature, never an API key; the body limit is the
		// integration's (webhooks.go).
		r.With(s.limitByAddr).Post("/webhooks/{integration}", s.webhook)

		r.Group(func(r chi.Router) {
			r.Use(s.limitBody, s.authenticate, s.requireJSON, s.readBody, s.idempotent)
			r.With(read).Get("/status", s.status)
			s.adminRoutes(r)
			r.With(write).Post("/vms", s.createVM)
			r.With(read).Get("/vms", s.listVMs)
			r.With(read).Get("/vms/{id}", s.getVM)
			r.With(write).Delete("/vms/{id}", s.deleteVM)
			s.lifecycleRoutes(r.With(write))
			r.With(exec).Post("/vms/{id}/execute", s.execute)
			r.With(write).Post("/vms/{id}/tools", s.addTools)
			r.With(read).Get("/vms/{id}/executions", s.listExecutions)
			r.With(read).Get("/vms/{id}/logs", s.vmLogs)
			r.With(read).Get("/logs", s.listLogs)
			r.With(read).Get("/executions/{id}", s.getExecution)
			r.With(read).Get("/executions/{id}/stream", s.streamExecution)
			r.With(read).Get("/tasks", s.listTasks)
			r.With(read).Get("/tasks/{id}", s.getTask)
			r.With(exec).Post("/jobs", s.createJob)
			r.With(runs).Post("/runs", s.createRun)
			r.With(runs).Get("/runs", s.listRuns)
			r.With(runs).Get("/runs/{id}", s.getRun)
			r.With(runs).Get("/runs/{id}/diff", s.runDiff)
			r.With(runs).Get("/runs/{id}/stream", s.streamRun)
			r.With(runs).Post("/runs/{id}/cancel", s.cancelRun)
			r.With(runs).Get("/agents", s.listAgents)
			r.With(read).Get("/jobs", s.listJobs)
			r.With(read).Get("/jobs/{id}", s.getJob)
			r.With(read).Get("/events", s.streamEvents) // the owner's event log, as server-sent events (events.go)

			// Interactive operations, proxied to the worker hosting the VM (interactive.go).
			r.With(files).Get("/vms/{id}/fs/stat", s.statPath)
			r.With(files).Get("/vms/{id}/fs/list", s.listDir)
			r.With(files).Post("/vms/{id}/fs/mkdir", s.makeDir)
			r.With(files).Delete("/vms/{id}/fs", s.removePath)
			r.With(exec).Post("/vms/{id}/processes", s.startProcess)
			r.With(exec).Get("/vms/{id}/processes", s.listProcesses)
			r.With(exec).Get("/vms/{id}/processes/{pid}/output", s.processOutput)
			r.With(exec).Post("/vms/{id}/processes/{pid}/wait", s.waitProcess)
			r.With(exec).Post("/vms/{id}/processes/{pid}/signal", s.signalProcess)
			r.With(exec).Delete("/vms/{id}/processes/{pid}", s.removeProcess)
		})
		r.Group(func(r chi.Router) {
			// Secrets (secrets.go), links and shell tickets: no idempotent middleware, an Idempotency-Key is ignored there.
			r.Use(s.limitBody, s.authenticate, s.requireJSON, s.readBody)
			sec, integ := s.require(auth.ScopeSecrets), s.require(auth.ScopeIntegrations)
			r.With(sec).Get("/secrets", s.listSecrets)
			r.With(sec).Put("/secrets/{name}", s.putSecret)
			r.With(sec).Delete("/secrets/{name}", s.deleteSecret)
			r.With(integ).Post("/integrations/links", s.createLink)
			r.With(integ).Get("/integrations/links", s.listLinks)
			r.With(integ).Delete("/integrations/links/{id}", s.deleteLink)
			// Keys and tokens (authz.go): answers that carry a credential are never kept for an Idempotency-Key.
			r.With(admin).Post("/apikeys", s.createAPIKey)
			r.With(admin).Get("/apikeys", s.listAPIKeys)
			r.With(admin).Delete("/apikeys/{id}", s.revokeAPIKey)
			r.With(admin).Get("/audit", s.listAudit)
			r.With(s.require(noScope)).Post("/auth/token", s.issueToken)
			// A shell ticket is single-use: a replay must not hand out the same one (shellticket.go).
			r.With(exec).Post("/vms/{id}/shell/ticket", s.createShellTicket)
		})
		r.Group(func(r chi.Router) {
			r.Use(s.limitBody, s.authenticate, s.requireJSON, s.readBody, s.idempotent)
			s.notificationRoutes(r.With(s.require(auth.ScopeNotifications)))
		})
		r.Group(func(r chi.Router) {
			// MCP (mcp.go): JSON-RPC over POST, stateless; its tools come back through this router as the caller,
			// so each tool call is held to its route's scope.
			r.Use(s.limitBody, s.authenticate, s.requireJSON, s.readBody)
			r.With(read).Post("/mcp", s.mcpHandler().ServeHTTP)
		})
		r.Group(func(r chi.Router) {
			// Streams: a file's bytes of any size and type. No body limit, no JSON.
			r.Use(s.authenticate, s.refuseIdempotencyKey)
			r.With(files).Get("/vms/{id}/files", s.downloadFile)
			r.With(files).Put("/vms/{id}/files", s.uploadFile)
		})
		r.Group(func(r chi.Router) {
			// The shell's WebSocket: a key or token, or a one-time ticket for browsers (shellticket.go).
			r.Use(s.shellAuth, s.refuseIdempotencyKey)
			r.With(exec).Get("/vms/{id}/shell", s.shell)
		})
	})
}

func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	if s.web != nil && !isAPIPath(r.URL.Path) {
		s.web.ServeHTTP(w, r)
		return
	}
	markUnmatched(r)
	s.writeError(w, r, http.StatusNotFound, client.CodeNotFound, "no route for "+r.Method+" "+r.URL.Path)
}

// isAPIPath says whether the path is the API's: /api and everything under it, answered by the API alone.
func isAPIPath(p string) bool {
	return p == "/api" || strings.HasPrefix(p, "/api/")
}

// allMethods are the methods probed to build the Allow header of a 405.
var allMethods = []string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
	http.MethodOptions,
}

// methodNotAllowed answers 405 with an Allow header. chi only fills Allow in its own default handler, so the
// allowed methods are found again by matching the path against the router for each method.
func (s *server) methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	markUnmatched(r)
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	var allowed []string
	for _, m := range allMethods {
		if s.router.Match(chi.NewRouteContext(), m, path) {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
	}
	s.writeError(w, r, http.StatusMethodNotAllowed, "method_not_allowed",
		"method "+r.Method+" is not allowed on "+r.URL.Path)
}
