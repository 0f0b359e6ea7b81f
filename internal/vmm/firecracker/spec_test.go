//go:build linux

package firecracker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// apiSpec is the subset of Firecracker's Swagger 2.0 document that request validation needs.
type apiSpec struct {
	Paths       map[string]map[string]*specOp `yaml:"paths"`
	Definitions map[string]*schema            `yaml:"definitions"`
}

type specOp struct {
	Parameters []struct {
		Name     string  `yaml:"name"`
		In       string  `yaml:"in"`
		Required bool    `yaml:"required"`
		Schema   *schema `yaml:"schema"`
	} `yaml:"parameters"`
}

// schema is the subset of JSON Schema the spec uses.
type schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*schema `yaml:"properties"`
	AdditionalProperties any                `yaml:"additionalProperties"`
	Enum                 []any              `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
	Items                *schema            `yaml:"items"`
}

func loadSpec(path string) (*apiSpec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s apiSpec
	if err := yaml.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if len(s.Paths) == 0 || len(s.Definitions) == 0 {
		return nil, fmt.Errorf("%s: no paths or definitions", path)
	}
	return &s, nil
}

// findSpecPath locates Firecracker's API spec: AETHERIUM_FIRECRACKER_SPEC, else next to the checkout at
// <module root>/../shared/reference/firecracker (the workplace's reference inputs; a user's clone has none).
func findSpecPath() (string, error) {
	if p := os.Getenv("AETHERIUM_FIRECRACKER_SPEC"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("AETHERIUM_FIRECRACKER_SPEC: %w", err)
		}
		return filepath.Abs(p)
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not in a module")
	}
	p := filepath.Join(filepath.Dir(mod), "..", "shared", "reference", "firecracker", "firecracker-api.yaml")
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return filepath.Abs(p)
}

// validate checks a request against the spec: the path (templates like /drives/{drive_id} match one segment)
// and method exist, and the body is what the operation's body parameter allows. Unknown properties are refused
// unless the schema says additionalProperties: Firecracker's API rejects unknown fields (serde's
// deny_unknown_fields), which the spec does not state.
func (s *apiSpec) validate(method, path string, body []byte) error {
	var op *specOp
	for tmpl, ops := range s.Paths {
		if matchPath(tmpl, path) {
			op = ops[strings.ToLower(method)]
			if op == nil {
				return fmt.Errorf("%s %s: method not in the spec for %s", method, path, tmpl)
			}
			break
		}
	}
	if op == nil {
		return fmt.Errorf("%s %s: path not in the spec", method, path)
	}
	for _, p := range op.Parameters {
		if p.In != "body" {
			continue
		}
		if len(bytes.TrimSpace(body)) == 0 {
			if p.Required {
				return fmt.Errorf("%s %s: body %q is required", method, path, p.Name)
			}
			return nil
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("%s %s: body is not JSON: %w", method, path, err)
		}
		if errs := s.check(p.Schema, v, "body"); len(errs) > 0 {
			return fmt.Errorf("%s %s: %s", method, path, strings.Join(errs, "; "))
		}
		return nil
	}
	if len(bytes.TrimSpace(body)) > 0 {
		return fmt.Errorf("%s %s: the spec takes no body here", method, path)
	}
	return nil
}

func matchPath(tmpl, path string) bool {
	ts, ps := strings.Split(tmpl, "/"), strings.Split(path, "/")
	if len(ts) != len(ps) {
		return false
	}
	for i := range ts {
		if strings.HasPrefix(ts[i], "{") && strings.HasSuffix(ts[i], "}") {
			if ps[i] == "" {
				return false
			}
			continue
		}
		if ts[i] != ps[i] {
			return false
		}
	}
	return true
}

func (s *apiSpec) check(sc *schema, v any, at string) []string {
	if sc == nil {
		return nil
	}
	for sc.Ref != "" {
		name, ok := strings.CutPrefix(sc.Ref, "#/definitions/")
		def := s.Definitions[name]
		if !ok || def == nil {
			return []string{fmt.Sprintf("%s: unresolvable $ref %q", at, sc.Ref)}
		}
		sc = def
	}
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, at+": "+fmt.Sprintf(format, args...)) }
	switch sc.Type {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			bad("want an object, got %T", v)
			return errs
		}
		for _, r := range sc.Required {
			if _, ok := m[r]; !ok {
				bad("required property %q missing", r)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if ps, ok := sc.Properties[k]; ok {
				errs = append(errs, s.check(ps, m[k], at+"."+k)...)
				continue
			}
			switch ap := sc.AdditionalProperties.(type) {
			case bool:
				if !ap {
					bad("unknown property %q", k)
				}
			case map[string]any:
				// A schema for the extra values: accepted without a deeper look (no request body here uses one).
			default:
				bad("unknown property %q", k)
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			bad("want an array, got %T", v)
			return errs
		}
		for i, e := range a {
			errs = append(errs, s.check(sc.Items, e, fmt.Sprintf("%s[%d]", at, i))...)
		}
	case "string":
		if _, ok := v.(string); !ok {
			bad("want a string, got %T", v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			bad("want a boolean, got %T", v)
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			bad("want a number, got %T", v)
			return errs
		}
		f, err := n.Float64()
		if err != nil {
			bad("bad number %s", n)
			return errs
		}
		if sc.Type == "integer" && f != math.Trunc(f) {
			bad("want an integer, got %s", n)
		}
		if sc.Minimum != nil && f < *sc.Minimum {
			bad("%s is below the minimum %v", n, *sc.Minimum)
		}
		if sc.Maximum != nil && f > *sc.Maximum {
			bad("%s is above the maximum %v", n, *sc.Maximum)
		}
	case "":
	default:
		bad("schema type %q not supported by this validator", sc.Type)
	}
	if len(sc.Enum) > 0 {
		got := fmt.Sprint(v)
		found := false
		for _, e := range sc.Enum {
			if fmt.Sprint(e) == got {
				found = true
			}
		}
		if !found {
			bad("%q is not one of %v", got, sc.Enum)
		}
	}
	return errs
}

// requireSpec returns the loaded spec, or skips loudly when it is absent: the spec is a reference input outside the
// repository, so a plain clone skips the Firecracker suite. Under AETHERIUM_REQUIRE_REFERENCE=1 (scripts/test.sh
// sets it in CI, which has the reference inputs) a missing spec fails instead.
func requireSpec(t testing.TB) *apiSpec {
	t.Helper()
	if testSpec == nil {
		msg := fmt.Sprintf("SKIPPING: Firecracker API spec not found (%v); the Firecracker suite needs it to validate "+
			"request bodies: set AETHERIUM_FIRECRACKER_SPEC to a copy of firecracker-api.yaml to run it", testSpecErr)
		if os.Getenv("AETHERIUM_REQUIRE_REFERENCE") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return testSpec
}

func TestSpecValidator(t *testing.T) {
	s := requireSpec(t)
	good := []struct{ method, path, body string }{
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"/k","boot_args":"console=ttyS0"}`},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/d","is_root_device":true,"is_read_only":false}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"PATCH", "/vm", `{"state":"Resumed"}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}`},
		{"GET", "/", ``},
	}
	for _, g := range good {
		if err := s.validate(g.method, g.path, []byte(g.body)); err != nil {
			t.Errorf("valid request refused: %v", err)
		}
	}
	bad := []struct{ method, path, body, want string }{
		{"PUT", "/machine-config", `{"vcpu_count":2}`, `"mem_size_mib" missing`},
		{"PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":256}`, "above the maximum"},
		{"PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`, "below the minimum"},
		{"PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":256}`, "want an integer"},
		{"PUT", "/machine-config", `{"vcpu_count":"1","mem_size_mib":256}`, "want a number"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":256,"vcpus":1}`, `unknown property "vcpus"`},
		{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, "below the minimum"},
		{"PUT", "/actions", `{"action_type":"Reboot"}`, "not one of"},
		{"PATCH", "/vm", `{"state":"Running"}`, "not one of"},
		{"PATCH", "/vm", `{}`, `"state" missing`},
		{"PUT", "/actions", ``, "required"},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Disk","backend_path":"/m"}}`, "body.mem_backend.backend_type"},
		{"POST", "/actions", `{"action_type":"InstanceStart"}`, "method not in the spec"},
		{"PUT", "/drive/rootfs", `{}`, "path not in the spec"},
		{"PUT", "/drives/", `{}`, "path not in the spec"},
	}
	for _, b := range bad {
		err := s.validate(b.method, b.path, []byte(b.body))
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s %s %s: got %v; want an error containing %q", b.method, b.path, b.body, err, b.want)
		}
	}
}
