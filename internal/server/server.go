// Package server wires Aetherium's parts into the server roles: serve (gateway and worker in one process, embedded
// defaults), gateway (REST API, enqueues only) and worker (runs tasks and owns VMs).
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/activity"
	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/api"
	"github.com/aetherium/aetherium/internal/audit"
	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/credproxy"
	"github.com/aetherium/aetherium/internal/eventlog"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/events/redisbus"
	"github.com/aetherium/aetherium/internal/integrations/dispatch"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/notify"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/asynqq"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/ratelimit"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/storeopen"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/tools"
	"github.com/aetherium/aetherium/internal/tracing"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/web"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/internal/workerapi"
)

// Roles selects what a process runs.
type Roles struct {
	API    bool
	Worker bool
	// Bootstrap creates and prints an admin API key when the store has none (serve on a fresh data directory).
	Bootstrap bool
}

// AdminKeyFile is the name, in the data directory, of the file that keeps the bootstrap admin key (mode 0600).
const AdminKeyFile = "admin-api-key"

// Run runs the roles until ctx ends, then shuts down gracefully. out receives what a person must see once (the
// bootstrap key); logs go to log.
func Run(ctx context.Context, cfg config.Config, roles Roles, version string, log *slog.Logger, out io.Writer) error {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	installationID, err := InstallationID(cfg.DataDir)
	if err != nil {
		return err
	}
	cfg.InstallationID = installationID
	// One registry for the whole process (serve: the gateway's and the worker's metrics together), handed to what
	// records; nil when metrics_listen is off, and then nothing records. Made first: the log sink reports into it.
	var ms *metrics.Set
	if cfg.MetricsListen != "" {
		ms = metrics.New(version)
	}
	// First, so that everything after logs through the sink too, and deferred first, so it flushes last.
	logSink, log, closeLogs, err := openLogs(ctx, cfg, roles, ms, log)
	if err != nil {
		return fmt.Errorf("loki_url: %w", err)
	}
	defer closeLogs()
	tp, err := openTracing(ctx, cfg, roles, version)
	if err != nil {
		return err
	}
	defer func() {
		// Deferred before the servers stop, so it runs after them: the spans of the last requests are exported.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			log.Warn("trace export at shutdown", "err", err)
		}
	}()
	st, err := OpenStore(ctx, cfg, roles.API && cfg.AutoMigrate)
	if err != nil {
		return err
	}
	defer st.Close()
	// Before anything starts: a wrong secrets key must stop the process here, with a message saying so.
	sm, err := OpenSecrets(ctx, cfg, st, roles.Bootstrap, log)
	if err != nil {
		return err
	}

	stopDebug, err := startDebug(cfg.DebugListen, log)
	if err != nil {
		return err
	}
	defer stopDebug()
	// Served from the start and stopped after everything else, so a scrape sees the shutdown too; the collectors
	// registered below are read at scrape time.
	stopMetrics, _, err := startMetrics(cfg.MetricsListen, cfg.MetricsToken, ms, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	bus, err := openBus(cfg, log)
	if err != nil {
		return err
	}
	defer bus.Close()
	registry, err := openIntegrations(cfg, log)
	if err != nil {
		return err
	}
	// Events that notification rules choose write their outbox rows where they are published (a worker's vm.failed,
	// a run's end...), so no notification depends on a gateway being up to see the event on the bus.
	bus = notify.WithOutbox(bus, st.Notifications(), registry, log)
	// Every state change appends to the event log in its own transaction; this announces the appends on the bus,
	// so that event streams (GET /api/v1/events) wake at once instead of at their next poll.
	st = eventlog.Wake(st, bus, log)

	q, err := openQueue(cfg, roles, st, bus, withTaskLogs(ms.Tasks().Observer(), logSink, cfg, roles), log)
	if err != nil {
		return err
	}
	q = ms.Tasks().WrapQueue(q)
	if err := ms.Tasks().WatchQueue(q); err != nil {
		return err
	}

	token, err := clusterToken(cfg)
	if err != nil {
		return err
	}
	// Request contexts are cancelled a little after shutdown begins, so that ?wait= long-polls answer 202 at once
	// instead of holding the shutdown for up to their 10 minutes, and shell sessions end.
	reqCtx, cancelRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRequests()

	catalog := tools.Default()
	if cfg.ToolCatalog != "" {
		if catalog, err = tools.LoadFile(cfg.ToolCatalog); err != nil {
			return fmt.Errorf("tool_catalog: %w", err)
		}
	}

	agentCatalog, err := agents.Load(cfg.AgentCatalog)
	if err != nil {
		return fmt.Errorf("agent_catalog: %w", err)
	}
	gitHosts, err := gitHostsOf(cfg)
	if err != nil {
		return err
	}

	var (
		w       *worker.Worker
		wapiSrv *http.Server
		wapiLn  net.Listener
		apiURL  string
		cp      *credProxy
		cpSrv   *http.Server
	)
	if roles.Worker {
		vmActivity := activity.New() // the worker and its API record VMs' activity in one place
		backend, err := openBackend(ctx, cfg, st, ms.Network(), log)
		if err != nil {
			return err
		}
		defer backend.Close()
		if err := ms.Worker().WatchVMs(st.VMs(), cfg.WorkerID, backend.Name()); err != nil {
			return err
		}
		// The proxy reads owners' secrets through the secrets manager; without a secrets key it answers every
		// request that needs one with a clear 502 (a nil *Manager must not become a non-nil interface).
		var secretSource credproxy.SecretSource
		if sm != nil {
			secretSource = sm
		}
		if cp, err = openCredProxy(cfg, st, backendNetwork(backend), secretSource, gitHosts, log); err != nil {
			return err
		}
		if cp != nil {
			defer cp.ln.Close()
			cpSrv = newHTTPServer(cp.proxy, log, reqCtx, ReadHeaderTimeout)
		}
		// The worker API serves the interactive operations on this host's VMs; gateways (this process's too, in
		// serve) proxy to the URL the worker advertises in its heartbeat.
		wh, err := workerapi.New(workerapi.Config{Agents: backend, Token: token, Logger: log, Activity: vmActivity})
		if err != nil {
			return err
		}
		if wapiLn, err = workerapi.Listen(cfg.WorkerAPIListen); err != nil {
			return err
		}
		defer wapiLn.Close()
		if apiURL, err = workerapi.AdvertisedURL(wapiLn, cfg.WorkerAPIURL); err != nil {
			return err
		}
		wapiSrv = newHTTPServer(wh, log, reqCtx, ReadHeaderTimeout)
		installer, err := tools.NewInstaller(tools.Config{Catalog: catalog, CacheDir: filepath.Join(cfg.DataDir, "cache", "tools"),
			NPMRegistry: cfg.NPMRegistry, DebianMirror: cfg.DebianMirror, Logger: log})
		if err != nil {
			return fmt.Errorf("tool installer: %w", err)
		}
		guest, err := worker.LoadGuestSetup(worker.GuestOptions{CAFiles: cfg.GuestCAFileList(), HTTPProxy: cfg.GuestHTTPProxy,
			HTTPSProxy: cfg.GuestHTTPSProxy, NoProxy: cfg.GuestNoProxy})
		if err != nil {
			return fmt.Errorf("guest_ca_files: %w", err)
		}
		resources, err := workerResources(cfg)
		if err != nil {
			return err
		}
		w, err = worker.New(worker.Config{
			Resources: resources,
			ID:        cfg.WorkerID, Store: st, Queue: q, Backend: backend, Logger: log,
			MaxOutputBytes: cfg.MaxOutput, Capacity: cfg.Concurrency, Events: bus, APIURL: apiURL, Tools: installer,
			Secrets:  sm,
			ProxyEnv: cp.proxyEnv(),
			Guest:    guest,
			Agents:   agentCatalog,
			Metrics:  ms.Worker(),
			Logs:     logSink,
			Activity: vmActivity,
			Tracer:   tp.TracerOrNil(),
		})
		if err != nil {
			return err
		}
	}

	var (
		httpSrv     *http.Server
		auditRec    *audit.Recorder
		authn       *auth.Authenticator
		ln          net.Listener
		svc         *task.Service
		slackSocket <-chan struct{} // closed once Socket Mode has stopped
	)
	if roles.API {
		if roles.Bootstrap {
			if err := bootstrapKey(ctx, st, cfg.DataDir, out); err != nil {
				return err
			}
		}
		svc = task.New(st, q, bus, webhookLimits(cfg), task.WithLogger(log), task.WithToolCatalog(catalog), task.WithSecrets(sm),
			task.WithAgents(agentCatalog), task.WithGitHosts(gitHostSecrets(gitHosts)))
		rl, closeLimits, err := rateLimits(cfg, log)
		if err != nil {
			return err
		}
		defer closeLimits()
		// JWT signing keys live in the store, shared by every gateway; their private halves are sealed by the
		// secrets keyring when there is one.
		var sealer auth.Sealer
		if sm != nil {
			sealer = sm.Keyring()
		}
		jwt := auth.NewJWT(st.SigningKeys(), sealer, auth.JWTConfig{Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience,
			RotateEvery: cfg.JWTRotateEvery})
		authn = auth.NewAuthenticator(st.APIKeys(), auth.WithJWT(jwt), auth.WithLogger(log))
		// Last uses of keys are written every 30 s, and once more at shutdown (below).
		go authn.Run(ctx)
		auditRec = audit.NewRecorder(st.Audit(), audit.Options{Retention: cfg.AuditRetention, Logger: log})
		handler := api.New(api.Config{Service: svc, Auth: authn, Logger: log, Version: version,
			APIKeys: st.APIKeys(), Audit: auditRec, AuditStore: st.Audit(),
			ClusterToken: token, Idempotency: st.Idempotency(), Notifications: st.Notifications(), Metrics: ms.HTTP(),
			Logs: logQuerier(cfg), Integrations: registry, Events: st.Events(), EventBus: bus, RateLimits: rl,
			Tracer: tp.TracerOrNil(), Web: web.New()})
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
		}
		httpSrv = newHTTPServer(handler, log, reqCtx, ReadHeaderTimeout)
		if err := startNotifications(ctx, cfg, st, bus, log); err != nil {
			ln.Close()
			return fmt.Errorf("notifications: %w", err)
		}
		// Slack's Socket Mode is this gateway's other door for Slack's deliveries: it stops taking them with ctx,
		// as the API does once shutting down.
		if slackSocket, err = startSlackSocket(ctx, cfg, registry, svc, log); err != nil {
			ln.Close()
			return err
		}
		// Every gateway prunes; a prune is idempotent, so several at once only repeat each other's work.
		go eventlog.Pruner{Store: st.Events(), Log: log, Retention: store.EventRetention{MaxAge: cfg.EventsRetention,
			MaxPerOwner: cfg.EventsMaxPerOwner}}.Run(ctx)
	}

	// The worker starts last, once nothing else can fail, so an early return never leaves it running.
	if w != nil {
		// Webhook deliveries are handled on workers, over a task service of their own (it only stores rows and
		// queues tasks).
		wsvc := task.New(st, q, bus, webhookLimits(cfg), task.WithLogger(log), task.WithToolCatalog(catalog),
			task.WithSecrets(sm), task.WithAgents(agentCatalog), task.WithGitHosts(gitHostSecrets(gitHosts)))
		q.RegisterHandler(model.TaskWebhookProcess, dispatch.New(dispatch.Config{Service: wsvc, Registry: registry,
			Logger: log}).Handle)
		if err := w.Start(ctx); err != nil {
			if ln != nil {
				ln.Close()
			}
			return fmt.Errorf("start worker: %w", err)
		}
	}
	httpErr := make(chan error, 3)
	if cpSrv != nil {
		cp.serve(cpSrv, httpErr)
		log.Info("credential proxy listening", "addr", cp.ln.Addr().String())
	}
	if wapiSrv != nil {
		go func() { httpErr <- fmt.Errorf("worker api: %w", wapiSrv.Serve(wapiLn)) }()
		log.Info("worker api listening", "addr", wapiLn.Addr().String(), "url", apiURL)
	}
	if httpSrv != nil {
		go func() { httpErr <- httpSrv.Serve(ln) }()
		log.Info("api listening", "addr", ln.Addr().String())
		if cfg.RedisURL != "" {
			go requeueStale(reqCtx, svc, log)
		}
		go sweep(reqCtx, svc, log)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-httpErr:
		runErr = fmt.Errorf("server: %w", err)
		log.Error("server stopped", "err", err)
	}
	log.Info("shutting down", "grace", cfg.ShutdownFor)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownFor)
	defer cancel()
	errs := []error{runErr}
	var wg sync.WaitGroup
	if w != nil {
		// The worker drains in parallel with the API, with the whole grace period of its own.
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Stop(sctx); err != nil {
				errs = append(errs, fmt.Errorf("worker drain: %w", err))
			}
			if cfg.ShutdownVMs {
				// Once drained, so that no task starts a VM meanwhile; with a grace period of its own.
				vctx, vcancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownFor)
				defer vcancel()
				if err := w.StopVMs(vctx); err != nil {
					errs = append(errs, fmt.Errorf("stop vms (shutdown_vms): %w", err))
				}
			}
		}()
	}
	stopWaits := time.AfterFunc(min(2*time.Second, cfg.ShutdownFor/2), cancelRequests)
	defer stopWaits.Stop()
	var herr, werr error
	if httpSrv != nil {
		if err := httpSrv.Shutdown(sctx); err != nil {
			herr = fmt.Errorf("api shutdown: %w", err)
		}
	}
	if auditRec != nil {
		// After the API: the calls it finished are all queued; write them before the store closes.
		actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
		auditRec.Close(actx)
		authn.Flush(actx)
		acancel()
	}
	if wapiSrv != nil {
		// After the API: a gateway in this process may still be proxying to it.
		if err := wapiSrv.Shutdown(sctx); err != nil {
			werr = fmt.Errorf("worker api shutdown: %w", err)
		}
	}
	wg.Wait()
	if slackSocket != nil {
		// Its connection closes at once with ctx; this waits for the deliveries it was recording.
		select {
		case <-slackSocket:
		case <-sctx.Done():
			log.Warn("slack socket mode still stopping at the end of the grace period")
		}
	}
	if cpSrv != nil {
		// Only once the worker has drained: the commands it lets finish may still call their models. Streams still
		// open at the end of the grace period are cut.
		if err := cpSrv.Shutdown(sctx); err != nil {
			log.Warn("credential proxy: requests still open at the end of the grace period are cut", "err", err)
			_ = cpSrv.Close()
		}
	}
	errs = append(errs, herr, werr)
	return errors.Join(errs...)
}

// ReadHeaderTimeout bounds how long a client may take to send a request's headers; IdleTimeout how long a
// keep-alive connection may wait for its next request.
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
)

// newHTTPServer is the http.Server of the API and of the worker API. It has no ReadTimeout or WriteTimeout on
// purpose: uploads, downloads, execution streams, shells and ?wait long polls outlive any fixed bound. What a slow
// client can hold is bounded elsewhere instead: the headers by readHeader (a slowloris trickling them is cut off),
// JSON bodies by the API's body deadline (api.Config.BodyTimeout), uploads by their idle timeout (no byte for
// 2 minutes), idle connections by IdleTimeout.
func newHTTPServer(h http.Handler, log *slog.Logger, base context.Context, readHeader time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeader,
		IdleTimeout:       IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return base },
	}
}

// clusterToken is the secret gateways present to workers. It is required when gateways and workers may be separate
// processes (redis_url); serve on embedded defaults has both in one process, so a random one kept in memory does.
func clusterToken(cfg config.Config) (string, error) {
	if cfg.ClusterToken != "" {
		return cfg.ClusterToken, nil
	}
	if cfg.RedisURL != "" {
		return "", fmt.Errorf("cluster_token (%s / --cluster-token) or cluster_token_file is required with redis_url: "+
			"gateways present it to workers to reach files, processes and shells of their VMs; give every gateway and "+
			"worker the same random value (e.g. openssl rand -hex 32)", config.EnvName("cluster_token"))
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate cluster token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// requeueStale periodically puts back on the queue tasks that stayed pending too long (see task.RequeueStale).
func requeueStale(ctx context.Context, svc *task.Service, log *slog.Logger) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := svc.RequeueStale(ctx, time.Minute)
			if err != nil && ctx.Err() == nil {
				log.Warn("requeue of stale tasks failed", "err", err)
			} else if n > 0 {
				log.Info("requeued stale pending tasks", "count", n)
			}
		}
	}
}

// sweepEvery is how often a gateway sweeps (sweep); orphanedWebhookAge is how long a recorded delivery may wait
// for its task before it is taken to have none.
const (
	sweepEvery         = 30 * time.Second
	orphanedWebhookAge = 2 * time.Minute
)

// sweep periodically does what no request would: it ends the runs whose worker is lost, so that their end reaches
// notifications and integrations even when nobody reads them (task.Service.ReapLostRuns), and queues the task of a
// webhook delivery whose gateway stopped between recording it and queueing its task
// (task.Service.RequeueOrphanedWebhooks). Every gateway may: both are conditional updates.
func sweep(ctx context.Context, svc *task.Service, log *slog.Logger) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := svc.ReapLostRuns(ctx); err != nil && ctx.Err() == nil {
			log.Warn("sweep of runs on lost workers failed", "err", err)
		} else if n > 0 {
			log.Info("failed runs whose worker is lost", "count", n)
		}
		if n, err := svc.RequeueOrphanedWebhooks(ctx, orphanedWebhookAge); err != nil && ctx.Err() == nil {
			log.Warn("sweep of webhook deliveries without a task failed", "err", err)
		} else if n > 0 {
			log.Info("queued webhook deliveries that had no task", "count", n)
		}
	}
}

// vmBackend is what the worker and its internal API need of a VM backend.
type vmBackend interface {
	vmm.Orchestrator
	workerapi.AgentSource
}

// OpenStore opens the configured store, migrating it first when asked.
func OpenStore(ctx context.Context, cfg config.Config, migrate bool) (store.Store, error) {
	st, err := storeopen.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if migrate {
		if err := st.Migrate(ctx); err != nil {
			st.Close()
			return nil, fmt.Errorf("migrate database: %w", err)
		}
	}
	return st, nil
}

// rateLimits builds the API's rate limits from the configuration: buckets in this process, or in Redis when
// redis_url is set so that every gateway shares them (with the process's own buckets while Redis is unreachable).
// The returned func closes what was opened.
func rateLimits(cfg config.Config, log *slog.Logger) (api.RateLimits, func(), error) {
	limits := api.RateLimits{
		Key:       ratelimit.Limit{Rate: cfg.RateLimitKeyRate, Burst: cfg.RateLimitKeyBurst},
		Expensive: ratelimit.Limit{Rate: cfg.RateLimitExpensiveRate, Burst: cfg.RateLimitExpensiveBurst},
		Addr:      ratelimit.Limit{Rate: cfg.RateLimitAddrRate, Burst: cfg.RateLimitAddrBurst},
	}
	if !cfg.RateLimit {
		log.Warn("rate limits are off (rate_limit: false)")
		return limits, func() {}, nil
	}
	local := ratelimit.NewMemory(nil)
	if cfg.RedisURL == "" {
		limits.Limiter = local
		return limits, func() {}, nil
	}
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return limits, nil, fmt.Errorf("rate limits: redis_url: %w", err)
	}
	if opt.ClientName == "" {
		opt.ClientName = "aetherium-ratelimit"
	}
	// Short timeouts: the limiter is on every request's path, and Fallback decides locally when Redis is slow.
	opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = time.Second, 250*time.Millisecond, 250*time.Millisecond
	rc := redis.NewClient(opt)
	limits.Limiter = &ratelimit.Fallback{Primary: ratelimit.NewRedis(rc, "aetherium:ratelimit:"), Local: local, Log: log}
	return limits, func() { _ = rc.Close() }, nil
}

func openBus(cfg config.Config, log *slog.Logger) (events.Bus, error) {
	if cfg.RedisURL == "" {
		return inproc.New(), nil
	}
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("event bus: redis_url: %w", err)
	}
	if opt.ClientName == "" { // named in CLIENT LIST; ?client_name= in the URL overrides it
		opt.ClientName = "aetherium-events"
	}
	return redisbus.New(redis.NewClient(opt), redisbus.WithLogger(log)), nil
}

func openQueue(cfg config.Config, roles Roles, st store.Store, bus events.Bus, obs queue.Observer, log *slog.Logger) (queue.Queue, error) {
	opts := queue.Options{WorkerID: cfg.WorkerID, Concurrency: cfg.Concurrency, Observer: obs}
	if cfg.RedisURL == "" {
		if !(roles.API && roles.Worker) {
			return nil, errors.New("redis_url is required: the in-process queue only works when gateway and worker share a process (aetherium serve)")
		}
		return embedded.New(st.Tasks(), bus, opts, log), nil
	}
	q, err := asynqq.NewFromURL(cfg.RedisURL, st.Tasks(), bus, opts, log)
	if err != nil {
		return nil, fmt.Errorf("task queue: %w", err)
	}
	return q, nil
}

// bootstrapKey creates an admin key on a store that has none, prints it once and keeps it in the data directory.
func bootstrapKey(ctx context.Context, st store.Store, dataDir string, out io.Writer) error {
	n, err := st.APIKeys().Count(ctx)
	if err != nil {
		return fmt.Errorf("count api keys: %w", err)
	}
	if n > 0 {
		return nil
	}
	plain, key, err := auth.NewKey("", "admin", true)
	if err != nil {
		return err
	}
	path := filepath.Join(dataDir, AdminKeyFile)
	if err := os.WriteFile(path, []byte(plain+"\n"), 0o600); err != nil {
		return fmt.Errorf("write admin key file: %w", err)
	}
	if err := st.APIKeys().Create(ctx, key); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("store admin key: %w", err)
	}
	fmt.Fprintf(out, "\nCreated an admin API key. It is shown once here and kept in %s (mode 0600):\n\n    %s\n\n", path, plain)
	fmt.Fprintf(out, "Try:  export AETHERIUM_API_KEY=$(cat %s)\n      aetherium vm create demo && aetherium vm exec demo -- echo hello\n\n", path)
	return nil
}

// openTracing makes the process's tracer provider: OTLP/HTTP export when otlp_endpoint is set, none otherwise.
func openTracing(ctx context.Context, cfg config.Config, roles Roles, version string) (*tracing.Provider, error) {
	headers, err := cfg.OTLPHeaderMap()
	if err != nil {
		return nil, fmt.Errorf("otlp_headers: %w", err)
	}
	role := "serve"
	switch {
	case roles.API && !roles.Worker:
		role = "gateway"
	case roles.Worker && !roles.API:
		role = "worker"
	}
	tp, err := tracing.New(ctx, tracing.Config{Endpoint: cfg.OTLPEndpoint, Headers: headers,
		SampleRatio: float64(cfg.TraceSamplePercent) / 100, Role: role, Version: version})
	if err != nil {
		return nil, fmt.Errorf("otlp_endpoint: %w", err)
	}
	return tp, nil
}
