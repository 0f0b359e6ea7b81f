package grafana

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
)

const dashboardFile = "aetherium.json"

// The dashboard's JSON, as far as the checks need it.
type (
	dashboard struct {
		UID           string     `json:"uid"`
		Title         string     `json:"title"`
		SchemaVersion int        `json:"schemaVersion"`
		Panels        []panel    `json:"panels"`
		Templating    templating `json:"templating"`
	}
	templating struct {
		List []variable `json:"list"`
	}
	variable struct {
		Type       string          `json:"type"`
		Name       string          `json:"name"`
		Query      json.RawMessage `json:"query"`
		Definition string          `json:"definition"`
		Datasource *datasource     `json:"datasource"`
		Options    []struct {
			Value string `json:"value"`
		} `json:"options"`
	}
	datasource struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	panel struct {
		ID         int         `json:"id"`
		Type       string      `json:"type"`
		Title      string      `json:"title"`
		Datasource *datasource `json:"datasource"`
		GridPos    *struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Targets []struct {
			RefID      string      `json:"refId"`
			Expr       string      `json:"expr"`
			Datasource *datasource `json:"datasource"`
		} `json:"targets"`
		Panels []panel `json:"panels"` // a collapsed row's
	}
)

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows (a collapsed row holds its panels).
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// Datasource references: the dashboard's own datasource variables, so that it imports and provisions anywhere.
var (
	promDS = datasource{Type: "prometheus", UID: "${DS_PROMETHEUS}"}
	lokiDS = datasource{Type: "loki", UID: "${DS_LOKI}"}
)

// series is every series name a Prometheus scraping Aetherium can see, with the labels each has.
type series map[string]map[string]bool

// targetLabels are added by Prometheus to every series it scrapes.
var targetLabels = []string{"instance", "job"}

// realSeries builds the metrics of a process the way server.Run does (metrics.New, the collectors read at scrape
// time, the log shipping collector), records one value in every labelled family so that each shows up, gathers the
// registry and lists what it exposes: a histogram or summary X as X_bucket (with le) or X (with quantile), X_sum and
// X_count.
func realSeries(t *testing.T) series {
	t.Helper()
	ms := metrics.New("test")
	q := ms.Tasks().WrapQueue(fakeQueue{})
	if err := ms.Tasks().WatchQueue(q); err != nil {
		t.Fatal(err)
	}
	if err := ms.Worker().WatchVMs(fakeVMs{}, "w1", "docker"); err != nil {
		t.Fatal(err)
	}
	if err := ms.WatchLogs(func() metrics.LogStats { return metrics.LogStats{} }); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(context.Background(), queue.Message{TaskID: "t1", Type: model.TaskVMExecute}); err != nil {
		t.Fatal(err)
	}
	ms.HTTP().Observe("/api/v1/vms", "GET", 200, time.Millisecond)
	ms.Tasks().TaskRan(&model.Task{Type: model.TaskVMExecute, CreatedAt: time.Now()}, time.Now(), time.Millisecond, queue.Completed)
	ms.Worker().ObserveBoot("docker", time.Second)
	ms.Worker().ObserveReady("docker", time.Second)
	ms.Worker().ObserveExec("docker", time.Millisecond)
	ms.Worker().TransportError("docker", metrics.OpExec)
	ms.Webhooks().Delivery("github", metrics.WebhookDelivered)
	ms.Network().Attached(nil)
	ms.Network().Detached(nil)

	fams, err := ms.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	s := series{}
	add := func(name string, labels []string) {
		if s[name] == nil {
			s[name] = map[string]bool{}
		}
		for _, l := range append(labels, targetLabels...) {
			s[name][l] = true
		}
	}
	for _, f := range fams {
		var labels []string
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName())
			}
		}
		name := f.GetName()
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			add(name+"_bucket", append(slices.Clone(labels), "le"))
			add(name+"_sum", labels)
			add(name+"_count", labels)
		case dto.MetricType_SUMMARY:
			add(name, append(slices.Clone(labels), "quantile"))
			add(name+"_sum", labels)
			add(name+"_count", labels)
		default:
			add(name, labels)
		}
	}
	return s
}

// fakeQueue answers Stats (one queue) and Enqueue, all WatchQueue and WrapQueue call.
type fakeQueue struct{ queue.Queue }

func (fakeQueue) Stats(context.Context) (queue.Stats, error) {
	return queue.Stats{Queues: []queue.QueueStats{{Name: "default", Pending: 1}}}, nil
}
func (fakeQueue) Enqueue(context.Context, queue.Message) error { return nil }

// fakeVMs answers List, all WatchVMs calls.
type fakeVMs struct{ store.VMStore }

func (fakeVMs) List(context.Context, store.VMFilter) ([]*model.VM, error) { return nil, nil }

var (
	stringLit   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	rangeSel    = regexp.MustCompile(`\[[^\]]*\]`)
	selectorRE  = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcherRE   = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*""`)
	groupingRE  = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	identRE     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	numberRE    = regexp.MustCompile(`\b[0-9]+(\.[0-9]+)?\b`)
	labelListRE = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*\s*(,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*)*)?,?\s*$`)
)

// promFunctions are the PromQL functions and aggregations a query may call; promKeywords its other words.
var (
	promFunctions = map[string]bool{"sum": true, "avg": true, "min": true, "max": true, "count": true, "rate": true,
		"irate": true, "increase": true, "delta": true, "deriv": true, "histogram_quantile": true, "topk": true,
		"bottomk": true, "quantile": true, "clamp_min": true, "clamp_max": true, "abs": true, "sort_desc": true,
		"max_over_time": true, "min_over_time": true, "avg_over_time": true, "label_values": true, "vector": true}
	promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true}
)

// promQuery is what a PromQL expression uses: selectors (metric name and the labels it matches on) and grouping
// labels.
type promQuery struct {
	selectors []promSelector
	grouping  []string
}

type promSelector struct {
	metric string
	labels []string
}

// parsePromQL reads the metric names and label names of expr. It knows the PromQL the dashboard writes (selectors,
// range selectors, by/without, functions, numbers, Grafana's $variables in strings and ranges) and fails on
// anything else, so that a query it cannot read is not passed unchecked.
func parsePromQL(expr string) (promQuery, error) {
	var q promQuery
	s := stringLit.ReplaceAllString(expr, `""`) // $variables live in strings...
	s = rangeSel.ReplaceAllString(s, " ")       // ... and in ranges ([$__rate_interval])
	if strings.Contains(s, "$") {
		return q, fmt.Errorf("a Grafana variable outside a string or a range")
	}
	var err error
	s = selectorRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := selectorRE.FindStringSubmatch(m)
		sel := promSelector{metric: sub[1]}
		rest := matcherRE.ReplaceAllStringFunc(sub[2], func(mm string) string {
			sel.labels = append(sel.labels, matcherRE.FindStringSubmatch(mm)[1])
			return ","
		})
		if strings.Trim(rest, ", ") != "" {
			err = fmt.Errorf("cannot read the matchers {%s}", sub[2])
		}
		if sel.metric == "" {
			err = fmt.Errorf("a selector without a metric name: %s", m)
		}
		q.selectors = append(q.selectors, sel)
		return " " + placeholder + " "
	})
	if err != nil {
		return q, err
	}
	s = groupingRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := groupingRE.FindStringSubmatch(m)
		if !labelListRE.MatchString(sub[2]) {
			err = fmt.Errorf("cannot read the labels of %s", m)
		}
		for _, l := range strings.Split(sub[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				q.grouping = append(q.grouping, l)
			}
		}
		return " "
	})
	if err != nil {
		return q, err
	}
	s = numberRE.ReplaceAllString(s, " ")
	s = identRE.ReplaceAllStringFunc(s, func(m string) string {
		name := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(m), "("))
		switch {
		case name == placeholder:
		case strings.HasSuffix(m, "("):
			if !promFunctions[name] {
				err = fmt.Errorf("unknown function %s", name)
			}
			return "("
		case promKeywords[name]:
		default: // a bare metric name
			q.selectors = append(q.selectors, promSelector{metric: name})
		}
		return " "
	})
	if err != nil {
		return q, err
	}
	if rest := strings.Trim(s, " ()+-*/,<>=!\"\t\n"); strings.ContainsFunc(rest, func(r rune) bool {
		return !strings.ContainsRune(" ()+-*/,<>=!\"\t\n", r)
	}) {
		return q, fmt.Errorf("cannot read %q", rest)
	}
	return q, nil
}

const placeholder = "selector_"

// checkPromQL fails t unless every metric expr uses is one the code registers, every label it matches on is one of
// that metric's, and every grouping label is one of the metrics' it uses.
func checkPromQL(t reporter, where, expr string, real series, used map[string]bool) {
	t.Helper()
	q, err := parsePromQL(expr)
	if err != nil {
		t.Errorf("%s: %v in %s", where, err, expr)
		return
	}
	if len(q.selectors) == 0 {
		t.Errorf("%s: no metric in %s", where, expr)
	}
	have := map[string]bool{}
	for _, sel := range q.selectors {
		labels, ok := real[sel.metric]
		if !ok {
			t.Errorf("%s: metric %s is not registered by internal/metrics (%s)", where, sel.metric, expr)
			continue
		}
		used[sel.metric] = true
		for l := range labels {
			have[l] = true
		}
		for _, l := range sel.labels {
			if !labels[l] {
				t.Errorf("%s: %s has no label %s (it has %v)", where, sel.metric, l, keys(labels))
			}
		}
	}
	for _, l := range q.grouping {
		if !have[l] {
			t.Errorf("%s: grouping label %s is on none of the metrics of %s", where, l, expr)
		}
	}
}

// lokiVocabulary is what the Loki client really sends: the stream labels of a fully set logs.Labels, and the
// structured metadata keys.
func lokiVocabulary() (streamLabels, metadata map[string]bool) {
	streamLabels = map[string]bool{}
	for k := range (logs.Labels{Service: "s", Role: "r", Worker: "w", Level: "l", Kind: "k"}).Map() {
		streamLabels[k] = true
	}
	metadata = map[string]bool{}
	for _, k := range []string{logs.MetaVMID, logs.MetaTaskID, logs.MetaExecutionID, logs.MetaRunID, logs.MetaOwnerID, logs.MetaStream} {
		metadata[k] = true
	}
	return streamLabels, metadata
}

var (
	lokiSelectorRE = regexp.MustCompile(`\{([^}]*)\}`)
	lokiLabelRE    = regexp.MustCompile(`\|\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=|>=|<=|>|<)`)
)

// checkLogQL fails t unless the stream selectors of expr use only the client's stream labels, and its label
// filters and groupings only those or structured metadata keys.
func checkLogQL(t reporter, where, expr string) {
	t.Helper()
	streamLabels, metadata := lokiVocabulary()
	s := stringLit.ReplaceAllString(expr, `""`)
	sels := lokiSelectorRE.FindAllStringSubmatch(s, -1)
	if len(sels) == 0 {
		t.Errorf("%s: no stream selector in %s", where, expr)
	}
	for _, sel := range sels {
		rest := matcherRE.ReplaceAllStringFunc(sel[1], func(m string) string {
			if l := matcherRE.FindStringSubmatch(m)[1]; !streamLabels[l] {
				t.Errorf("%s: stream label %s is not one the Loki client sends (%v): %s", where, l, keys(streamLabels), expr)
			}
			return ","
		})
		if strings.Trim(rest, ", ") != "" {
			t.Errorf("%s: cannot read the stream selector {%s}", where, sel[1])
		}
		if !strings.Contains(sel[1], `service=""`) {
			t.Errorf("%s: the stream selector {%s} does not pick Aetherium's service", where, sel[1])
		}
	}
	for _, m := range lokiLabelRE.FindAllStringSubmatch(s, -1) {
		if !streamLabels[m[1]] && !metadata[m[1]] {
			t.Errorf("%s: label filter on %s, which is neither a stream label nor structured metadata: %s", where, m[1], expr)
		}
	}
	for _, g := range groupingRE.FindAllStringSubmatch(s, -1) {
		for _, l := range strings.Split(g[2], ",") {
			if l = strings.TrimSpace(l); l != "" && !streamLabels[l] && !metadata[l] {
				t.Errorf("%s: grouping by %s, which the Loki client does not send: %s", where, l, expr)
			}
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestDashboardQueriesUseRealMetricsAndLabels is what keeps the dashboard true: every PromQL query names only
// metrics and labels internal/metrics registers, every LogQL query only the labels and metadata internal/logs
// sends, every Aetherium metric has a panel, and every panel reads one of the dashboard's datasource variables.
func TestDashboardQueriesUseRealMetricsAndLabels(t *testing.T) {
	d := loadDashboard(t)
	real := realSeries(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	queries := 0
	for _, p := range allPanels(d.Panels) {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("%s: id missing or not unique", where)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("%s: no gridPos", where)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || (*p.Datasource != promDS && *p.Datasource != lokiDS) {
			t.Errorf("%s: datasource %+v, want %+v or %+v", where, p.Datasource, promDS, lokiDS)
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		for _, tg := range p.Targets {
			where := where + " query " + tg.RefID
			if tg.Datasource != nil && *tg.Datasource != *p.Datasource {
				t.Errorf("%s: datasource %+v differs from the panel's", where, tg.Datasource)
			}
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: empty expression", where)
				continue
			}
			queries++
			if *p.Datasource == lokiDS {
				checkLogQL(t, where, tg.Expr)
			} else {
				checkPromQL(t, where, tg.Expr, real, used)
			}
		}
	}
	if queries < 20 {
		t.Fatalf("only %d queries found: the dashboard or its parsing is broken", queries)
	}
	// Every Aetherium metric is on the dashboard (a histogram through any of its series).
	families := map[string]bool{}
	for name := range real {
		if strings.HasPrefix(name, metrics.Namespace+"_") {
			families[family(name, real)] = families[family(name, real)] || used[name]
		}
	}
	for _, f := range keys(families) {
		if !families[f] {
			t.Errorf("metric %s is registered by internal/metrics but on no panel", f)
		}
	}
}

// family is the metric family of a series name: X for X_bucket, X_sum and X_count of a histogram X.
func family(name string, real series) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if _, hist := real[base+"_bucket"]; hist {
				return base
			}
		}
	}
	return name
}

// TestDashboardVariables: the datasource variables the panels use exist, with the right plugin; the instance
// variable reads a real metric; the log kind and level choices are the values the code sends.
func TestDashboardVariables(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Fatalf("uid %q, title %q, schemaVersion %d", d.UID, d.Title, d.SchemaVersion)
	}
	vars := map[string]variable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	for name, plugin := range map[string]string{"DS_PROMETHEUS": "prometheus", "DS_LOKI": "loki"} {
		v, ok := vars[name]
		var q string
		if ok {
			_ = json.Unmarshal(v.Query, &q)
		}
		if !ok || v.Type != "datasource" || q != plugin {
			t.Errorf("variable %s: %+v, want a datasource variable of plugin %s", name, v, plugin)
		}
	}
	real := realSeries(t)
	inst := vars["instance"]
	var q struct{ Query string }
	if err := json.Unmarshal(inst.Query, &q); err != nil || inst.Datasource == nil || *inst.Datasource != promDS {
		t.Fatalf("instance variable %+v: %v", inst, err)
	}
	for _, def := range []string{q.Query, inst.Definition} {
		m := regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*), *([a-zA-Z_]+)\)$`).FindStringSubmatch(def)
		if m == nil || !real[m[1]][m[2]] {
			t.Errorf("instance variable query %q reads no real metric and label", def)
		}
	}

	// The values the code sends: every kind constant, and the levels the slog tee gives records.
	kinds := []string{logs.KindServer, logs.KindExec, logs.KindTask, logs.KindConsole}
	sink := &memSink{}
	log := slog.New(logs.NewTeeHandler(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelDebug}), sink, logs.Labels{Service: "aetherium"}))
	log.Debug("d")
	log.Info("i")
	log.Warn("w")
	log.Error("e")
	var levels []string
	for _, e := range sink.entries {
		levels = append(levels, e.Labels.Level)
	}
	for name, want := range map[string][]string{"kind": kinds, "level": levels} {
		v, ok := vars[name]
		if !ok {
			t.Errorf("no %s variable", name)
			continue
		}
		var got []string
		for _, o := range v.Options {
			if o.Value != "$__all" {
				got = append(got, o.Value)
			}
		}
		var query string
		_ = json.Unmarshal(v.Query, &query)
		if !sameSet(got, want) || !sameSet(strings.Split(query, ","), want) {
			t.Errorf("variable %s offers %v (query %q), the code sends %v", name, got, query, want)
		}
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

type memSink struct {
	mu      sync.Mutex
	entries []logs.Entry
}

func (m *memSink) Push(_ context.Context, e ...logs.Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = append(m.entries, e...)
	return nil
}
func (m *memSink) Health(context.Context) error { return nil }
func (m *memSink) Close(context.Context) error  { return nil }

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestParsePromQLRefusesWhatItCannotRead: the checker's parser finds metrics and labels where they are and fails on
// what it does not understand, rather than passing it unchecked.
func TestParsePromQLRefusesWhatItCannotRead(t *testing.T) {
	q, err := parsePromQL(`histogram_quantile(0.95, sum by (le, route) (rate(aetherium_http_request_duration_seconds_bucket{instance=~"$instance", code!="2.."}[$__rate_interval]))) / go_goroutines`)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(q.selectors) != `[{aetherium_http_request_duration_seconds_bucket [instance code]} {go_goroutines []}]` ||
		fmt.Sprint(q.grouping) != `[le route]` {
		t.Fatalf("parsed %+v", q)
	}
	for _, bad := range []string{
		`label_replace(up, "a", "$1", "b", "(.*)")`, // a function it does not know
		`{__name__=~"aetherium_.*"}`,                // no metric name
		`rate(x[5m]) offset 5m`,                     // a modifier it does not read
		`sum(rate(x{a=~$var}[5m]))`,                 // a variable outside a string
		`x{a="1", b}`,                               // a matcher it cannot read
	} {
		if q, err := parsePromQL(bad); err == nil {
			t.Errorf("%s parsed as %+v", bad, q)
		}
	}
	real := series{"aetherium_x_total": {"route": true, "instance": true, "job": true}}
	for _, c := range []struct{ expr, why string }{
		{`rate(aetherium_y_total[5m])`, "unknown metric"},
		{`rate(aetherium_x_total{vm_id="1"}[5m])`, "unknown label"},
		{`sum by (owner) (rate(aetherium_x_total[5m]))`, "unknown grouping label"},
	} {
		if !fails(func(t reporter) { checkPromQL(t, "test", c.expr, real, map[string]bool{}) }) {
			t.Errorf("%s (%s) passed the check", c.expr, c.why)
		}
	}
	for _, c := range []string{`{service="aetherium", vm_id="1"}`, `{service="aetherium"} | pod="x"`, `{kind="exec"}`,
		`sum by (host) (count_over_time({service="aetherium"}[5m]))`} {
		if !fails(func(t reporter) { checkLogQL(t, "test", c) }) {
			t.Errorf("LogQL %s passed the check", c)
		}
	}
	if fails(func(t reporter) {
		checkLogQL(t, "test", `sum by (level) (count_over_time({service="aetherium", kind=~"$kind"} |= "$search" | vm_id="x" [$__interval]))`)
	}) {
		t.Error("a good LogQL query failed the check")
	}
}

// reporter is the part of testing.T the checks use, so that the checks themselves can be tested.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

type failRecorder struct{ failed bool }

func (*failRecorder) Helper()                 {}
func (r *failRecorder) Errorf(string, ...any) { r.failed = true }

// fails reports whether check reports an error.
func fails(check func(t reporter)) bool {
	r := &failRecorder{}
	check(r)
	return r.failed
}

// TestProvisioningFiles: the provisioning files are valid YAML, name the dashboard's directory and provide the
// datasources the dashboard's variables pick.
func TestProvisioningFiles(t *testing.T) {
	var dash struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name    string `yaml:"name"`
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, filepath.Join("provisioning", "dashboards", "aetherium.yaml"), &dash)
	if dash.APIVersion != 1 || len(dash.Providers) != 1 || dash.Providers[0].Type != "file" || dash.Providers[0].Options.Path == "" {
		t.Fatalf("dashboard provider %+v", dash)
	}
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name, Type, URL, Access string
		} `yaml:"datasources"`
	}
	readYAML(t, filepath.Join("provisioning", "datasources", "aetherium.yaml"), &ds)
	types := map[string]bool{}
	for _, d := range ds.Datasources {
		types[d.Type] = true
		if d.URL == "" {
			t.Errorf("datasource %s has no url", d.Name)
		}
	}
	if ds.APIVersion != 1 || !types["prometheus"] || !types["loki"] {
		t.Fatalf("datasources %+v, want a prometheus and a loki one", ds)
	}
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
