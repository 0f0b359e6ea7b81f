// Package metricstest reads metrics the way Prometheus does, for tests: it scrapes a /metrics page (or renders a
// metrics.Set through its handler) and parses the text format with the Prometheus parser (expfmt), then looks up
// series by name and labels.
package metricstest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/aetherium/aetherium/internal/metrics"
)

// Scrape is one parsed metrics page, by family name.
type Scrape map[string]*dto.MetricFamily

// Parse parses a page in the Prometheus text format.
func Parse(r io.Reader) (Scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return fams, nil
}

// Get scrapes url (sending token as a bearer token when set) and parses the page; it fails t unless the answer is
// 200 in the text format.
func Get(t testing.TB, url, token string) Scrape {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %d %s", url, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape %s: content type %q, want the text format", url, ct)
	}
	s, err := Parse(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return s
}

// Render serves ms through its handler, as GET /metrics would, and parses the page.
func Render(t testing.TB, ms *metrics.Set) Scrape {
	t.Helper()
	srv := httptest.NewServer(ms.Handler(nil))
	defer srv.Close()
	return Get(t, srv.URL, "")
}

// Labels is a set of label pairs a series must have (it may have more).
type Labels map[string]string

func matches(m *dto.Metric, want Labels) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// Value is the sum of the counters or gauges of family name whose labels include want (0 when there are none).
func (s Scrape) Value(name string, want Labels) float64 {
	var v float64
	if f, ok := s[name]; ok {
		for _, m := range f.GetMetric() {
			if !matches(m, want) {
				continue
			}
			switch {
			case m.Counter != nil:
				v += m.GetCounter().GetValue()
			case m.Gauge != nil:
				v += m.GetGauge().GetValue()
			case m.Untyped != nil:
				v += m.GetUntyped().GetValue()
			}
		}
	}
	return v
}

// Count is the total observation count of the histograms of family name whose labels include want.
func (s Scrape) Count(name string, want Labels) uint64 {
	var n uint64
	if f, ok := s[name]; ok {
		for _, m := range f.GetMetric() {
			if m.Histogram != nil && matches(m, want) {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// Sum is the total of the observations of the histograms of family name whose labels include want.
func (s Scrape) Sum(name string, want Labels) float64 {
	var v float64
	if f, ok := s[name]; ok {
		for _, m := range f.GetMetric() {
			if m.Histogram != nil && matches(m, want) {
				v += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return v
}

// Series lists every series of the families whose name starts with prefix, as name{label="value",...}, sorted.
// A histogram is one series here (its buckets are fixed by the code).
func (s Scrape) Series(prefix string) []string {
	var out []string
	for name, f := range s {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			sort.Strings(ls)
			out = append(out, name+"{"+strings.Join(ls, ",")+"}")
		}
	}
	sort.Strings(out)
	return out
}

// LabelValues lists the values label takes in family name.
func (s Scrape) LabelValues(name, label string) []string {
	seen := map[string]bool{}
	if f, ok := s[name]; ok {
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					seen[lp.GetValue()] = true
				}
			}
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}
