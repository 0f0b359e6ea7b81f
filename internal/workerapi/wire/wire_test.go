package wire

import (
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"/": "/", "/a/b/": "/a/b", "/a/../../b": "/b", "//x//y": "/x/y", "/a/./b": "/a/b",
	} {
		if got, err := CleanPath("path", in); err != nil || got != want {
			t.Errorf("CleanPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "a", "./a", "/a\x00b", "/" + strings.Repeat("x", MaxPathLen)} {
		if _, err := CleanPath("path", in); err == nil {
			t.Errorf("CleanPath(%q) accepted", in)
		} else if we, ok := AsError(err); !ok || we.Status != 422 || !strings.HasPrefix(we.Message, "path: ") {
			t.Errorf("CleanPath(%q): %v", in, err)
		}
	}
}

// TestQueriesRoundTrip: what the gateway forwards (Query) parses back to the same value at the worker.
func TestQueriesRoundTrip(t *testing.T) {
	u, err := ParseUpload(url.Values{"path": {"/a/../f"}, "mode": {"4755"}, "uid": {"0"}, "gid": {"5"}, "mkdir_parents": {"1"}})
	if err != nil {
		t.Fatal(err)
	}
	if u != (Upload{Path: "/f", Mode: 0o4755, Owner: "0:5", MkdirParents: true, Overwrite: true}) {
		t.Fatalf("upload %+v", u)
	}
	if back, err := ParseUpload(u.Query()); err != nil || back != u {
		t.Fatalf("upload round trip: %+v %v", back, err)
	}

	sh, err := ParseShell(url.Values{"command": {"sh", "-c", "exit 5"}, "rows": {"50"}, "cols": {"132"},
		"env": {"A=1", "B=x=y"}, "working_dir": {"/tmp/"}, "user": {"app:staff"}})
	if err != nil {
		t.Fatal(err)
	}
	want := Shell{Command: []string{"sh", "-c", "exit 5"}, TTY: true, Rows: 50, Cols: 132,
		Env: map[string]string{"A": "1", "B": "x=y"}, WorkingDir: "/tmp", User: "app:staff"}
	if !reflect.DeepEqual(sh, want) {
		t.Fatalf("shell %+v", sh)
	}
	if back, err := ParseShell(sh.Query()); err != nil || !reflect.DeepEqual(back, sh) {
		t.Fatalf("shell round trip: %+v %v", back, err)
	}

	o, err := ParseOutput(url.Values{"stream": {"stderr"}, "offset": {"7"}, "max_bytes": {"9"}})
	if err != nil {
		t.Fatal(err)
	}
	if back, err := ParseOutput(o.Query()); err != nil || back != o {
		t.Fatalf("output round trip: %+v %v", back, err)
	}
	d, err := ParseWait(url.Values{}, 10*time.Minute)
	if err != nil || d != DefaultWait {
		t.Fatalf("default wait %v %v", d, err)
	}
	if back, err := ParseWait(WaitQuery(90*time.Second), 10*time.Minute); err != nil || back != 90*time.Second {
		t.Fatalf("wait round trip: %v %v", back, err)
	}
}

func TestRefusals(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		status int
	}{
		{"mode not octal", first(ParseUpload(url.Values{"path": {"/f"}, "mode": {"8"}})), 400},
		{"mode too large", first(ParseUpload(url.Values{"path": {"/f"}, "mode": {"17777"}})), 422},
		{"gid alone", first(ParseUpload(url.Values{"path": {"/f"}, "gid": {"1"}})), 422},
		{"uid not a number", first(ParseUpload(url.Values{"path": {"/f"}, "uid": {"root"}})), 400},
		{"bad owner", first(ParseUpload(url.Values{"path": {"/f"}, "owner": {"a b"}})), 422},
		{"bad bool", first(ParseUpload(url.Values{"path": {"/f"}, "overwrite": {"maybe"}})), 400},
		{"remove root", first(ParseRemove(url.Values{"path": {"/.."}})), 422},
		{"negative offset", first(ParseOutput(url.Values{"offset": {"-1"}})), 400},
		{"huge read", first(ParseOutput(url.Values{"max_bytes": {"999999999"}})), 422},
		{"zero wait", first(ParseWait(url.Values{"timeout": {"0s"}}, time.Minute)), 400},
		{"rows zero", first(ParseShell(url.Values{"rows": {"0"}})), 422},
		{"rows over the range", first(ParseShell(url.Values{"rows": {"99999"}})), 422},
		{"cols far over the range", first(ParseShell(url.Values{"cols": {"99999999999999999999999"}})), 422},
		{"rows not a number", first(ParseShell(url.Values{"rows": {"ten"}})), 400},
		{"env without =", first(ParseShell(url.Values{"env": {"A"}})), 400},
		{"blank program", first(ParseShell(url.Values{"command": {" "}})), 422},
		{"bad term", first(ParseShell(url.Values{"term": {"x;y"}})), 422},
		{"signal injection", NormalizeSignal(&client.SignalRequest{Signal: "KILL 1"}), 422},
		{"start relative dir", NormalizeStart(&client.StartProcessRequest{Command: "x", WorkingDir: "tmp"}, time.Hour), 422},
		{"start long timeout", NormalizeStart(&client.StartProcessRequest{Command: "x", TimeoutSeconds: 7200}, time.Hour), 422},
		{"start bad id", NormalizeStart(&client.StartProcessRequest{Command: "x", ID: ".."}, time.Hour), 422},
		{"mkdir mode", NormalizeMkdir(&client.MkdirRequest{Path: "/d", Mode: "abc"}), 422},
	}
	for _, c := range cases {
		we, ok := AsError(c.err)
		if !ok || we.Status != c.status {
			t.Errorf("%s: %v, want status %d", c.name, c.err, c.status)
		}
	}
}

func first[T any](_ T, err error) error { return err }
