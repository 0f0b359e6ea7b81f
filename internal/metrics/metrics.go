// Package metrics defines Aetherium's Prometheus metrics and serves them in the text exposition format.
//
// Each process makes one Set (server.Run does, when metrics_listen is set) with a registry of its own, never the
// client library's default one, and hands its parts to what records: HTTP to the API's middleware, Tasks to the
// queue, Worker to the worker, Network to the network wrapper of the microVM backends. Every recording method is
// safe on a nil receiver and then does nothing, so a component built without metrics (tests, metrics off) pays one
// nil check.
//
// Names follow the Prometheus conventions: the aetherium_ prefix, base units (seconds), _total on counters. No
// label ever carries a VM, owner, task or execution id: every label takes values from a set fixed by the code (task
// types, results, states, backends, route patterns, status codes) or by the operator (queue names, which include
// worker ids; integration names), so the number of series does not grow with the work done.
package metrics

import (
	"net/http"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every Aetherium metric.
const Namespace = "aetherium"

// Set is every metric of one process, on a registry of its own.
type Set struct {
	reg      *prometheus.Registry
	http     *HTTP
	tasks    *Tasks
	worker   *Worker
	network  *Network
	webhooks *Webhooks
}

// New makes a Set with the Go runtime and process collectors and aetherium_build_info{version} registered.
// The parts of a role the process does not run stay at zero (a gateway has no boot durations).
func New(version string) *Set {
	reg := prometheus.NewRegistry()
	s := &Set{
		reg:      reg,
		http:     newHTTP(reg),
		tasks:    newTasks(reg),
		worker:   newWorker(reg),
		network:  newNetwork(reg),
		webhooks: newWebhooks(reg),
	}
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if version == "" {
		version = "dev"
	}
	goVersion := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info", Help: "Always 1; the labels tell the version of this process.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": goVersion},
	})
	build.Set(1)
	reg.MustRegister(build)
	return s
}

// Registry is the Set's registry, for tests and for collectors registered by their owner. Nil on a nil Set.
func (s *Set) Registry() *prometheus.Registry {
	if s == nil {
		return nil
	}
	return s.reg
}

// Handler serves the registry in the Prometheus text format (and OpenMetrics when a scraper asks for it). A
// collector that fails is left out of that scrape and logged by the handler's ErrorLog; the rest is served.
func (s *Set) Handler(errorLog promhttp.Logger) http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		ErrorLog:          errorLog,
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
		// Scrapes are few; a slow store must not pile them up.
		MaxRequestsInFlight: 4,
	})
}

// HTTP returns the API's metrics; nil on a nil Set.
func (s *Set) HTTP() *HTTP {
	if s == nil {
		return nil
	}
	return s.http
}

// Tasks returns the queue's metrics; nil on a nil Set.
func (s *Set) Tasks() *Tasks {
	if s == nil {
		return nil
	}
	return s.tasks
}

// Worker returns the worker's metrics; nil on a nil Set.
func (s *Set) Worker() *Worker {
	if s == nil {
		return nil
	}
	return s.worker
}

// Network returns the VM network's metrics; nil on a nil Set.
func (s *Set) Network() *Network {
	if s == nil {
		return nil
	}
	return s.network
}

// Webhooks returns the metrics of outgoing webhook deliveries; nil on a nil Set.
func (s *Set) Webhooks() *Webhooks {
	if s == nil {
		return nil
	}
	return s.webhooks
}

// Buckets of the histograms, in seconds.
var (
	// httpBuckets: an API call is milliseconds; ?wait= long polls and streams last up to minutes.
	httpBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 600}
	// taskBuckets: a task runs from milliseconds (an echo) to hours (an agent's job).
	taskBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200}
	// bootBuckets: a container starts in a fraction of a second, a microVM in a few, one installing tools in minutes.
	bootBuckets = []float64{.05, .1, .25, .5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600}
	// execBuckets: an exec's round trip to the agent and back, for a command that returns at once, is milliseconds.
	execBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600}
)
