package logs

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"
)

func TestLogQLQuotesEveryValue(t *testing.T) {
	got, err := LogQL("", Filter{OwnerID: "o-1", VMID: `vm"} | drop`, Kind: KindExec, Contains: "err\"or\n`x`\\"})
	if err != nil {
		t.Fatal(err)
	}
	want := `{service="aetherium", kind="exec"} |= "err\"or\n` + "`x`" + `\\" | owner_id="o-1" | vm_id="vm\"} | drop"`
	if got != want {
		t.Fatalf("LogQL\n%s\nwant\n%s", got, want)
	}
	// Each quoted value reads back as the user's text: the query's structure did not change.
	if v, err := strconv.Unquote(`"vm\"} | drop"`); err != nil || v != `vm"} | drop` {
		t.Fatal(v, err)
	}
	if _, err := LogQL("", Filter{VMID: "vm-1"}); err == nil {
		t.Fatal("a query without an owner was built")
	}
}

// TestLokiQuerierQueryRange serves a recorded response of the documented query_range shape (testdata, from Loki's
// HTTP API reference) and checks the request the querier makes and the entries it decodes.
func TestLokiQuerierQueryRange(t *testing.T) {
	body, err := os.ReadFile("testdata/query_range_streams.json")
	if err != nil {
		t.Fatal(err)
	}
	var got *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Clone(context.Background())
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	q := &LokiQuerier{URL: srv.URL, Tenant: "team-a", BearerToken: "tok"}
	since, until := time.Unix(1699999000, 0), time.Unix(1700000100, 0)
	entries, err := q.Query(context.Background(), Filter{OwnerID: "o-1", VMID: "vm-1", Since: since, Until: until, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got.URL.Path != QueryRangePath || got.Header.Get("X-Scope-OrgID") != "team-a" || got.Header.Get("Authorization") != "Bearer tok" {
		t.Fatalf("request %s %v", got.URL, got.Header)
	}
	p := got.URL.Query()
	if p.Get("query") != `{service="aetherium"} | owner_id="o-1" | vm_id="vm-1"` || p.Get("start") != "1699999000000000000" ||
		p.Get("end") != "1700000100000000000" || p.Get("limit") != "10" || p.Get("direction") != "backward" {
		t.Fatalf("query parameters %v", p)
	}
	if len(entries) != 3 {
		t.Fatalf("%d entries", len(entries))
	}
	if e := entries[0]; e.Line != "second line" || e.Labels.Kind != KindExec || e.Metadata[MetaExecutionID] != "ex-1" || !e.Time.Equal(time.Unix(1700000002, 0)) {
		t.Errorf("newest entry %+v", e)
	}
	if e := entries[1]; e.Labels.Kind != KindConsole || e.Metadata["stream"] != "serial" || e.Metadata[MetaVMID] != "vm-1" {
		t.Errorf("console entry %+v (structured metadata categorized, ids folded into the stream)", e)
	}
	if e := entries[2]; e.Line != "first line" || len(e.Metadata) != 0 {
		t.Errorf("oldest entry %+v", e)
	}
}

func TestParseQueryRangeRefusesOtherShapes(t *testing.T) {
	for _, body := range []string{`{"status":"success","data":{"resultType":"matrix","result":[]}}`, `{"status":"error"}`, `not json`,
		`{"status":"success","data":{"resultType":"streams","result":[{"stream":{},"values":[["x","l"]]}]}}`} {
		if _, err := ParseQueryRange([]byte(body)); err == nil {
			t.Errorf("accepted %s", body)
		}
	}
}
