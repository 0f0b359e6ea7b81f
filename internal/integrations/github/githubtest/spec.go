package githubtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// Spec is GitHub's OpenAPI description, reduced to what Validate checks: path templates, methods and the JSON
// schemas of request bodies.
type Spec struct {
	Paths      map[string]map[string]operation `json:"paths"`
	Components struct {
		Schemas       map[string]*schema `json:"schemas"`
		RequestBodies map[string]struct {
			Content map[string]struct {
				Schema *schema `json:"schema"`
			} `json:"content"`
		} `json:"requestBodies"`
	} `json:"components"`
}

type operation struct {
	RequestBody *struct {
		Ref      string `json:"$ref"`
		Required bool   `json:"required"`
		Content  map[string]struct {
			Schema *schema `json:"schema"`
		} `json:"content"`
	} `json:"requestBody"`
}

type schema struct {
	Ref        string             `json:"$ref"`
	Type       json.RawMessage    `json:"type"`
	Required   []string           `json:"required"`
	Properties map[string]*schema `json:"properties"`
	Items      *schema            `json:"items"`
	Enum       []any              `json:"enum"`
	OneOf      []*schema          `json:"oneOf"`
	AnyOf      []*schema          `json:"anyOf"`
	AllOf      []*schema          `json:"allOf"`
	Nullable   bool               `json:"nullable"`
	// AdditionalProperties true allows fields the schema does not name.
	AdditionalProperties json.RawMessage `json:"additionalProperties"`
}

var (
	specOnce sync.Once
	spec     *Spec
	specErr  error
)

// LoadSpec reads api.github.com.json of @octokit/openapi (once per test binary).
func LoadSpec(t testing.TB) *Spec {
	t.Helper()
	dir := Dir(t)
	specOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join(dir, "node_modules", "@octokit", "openapi", "generated", "api.github.com.json"))
		if err != nil {
			specErr = err
			return
		}
		var s Spec
		specErr = json.Unmarshal(b, &s)
		spec = &s
	})
	if specErr != nil {
		t.Fatalf("@octokit/openapi: %v", specErr)
	}
	return spec
}

// match finds the path template of path ("/repos/{owner}/{repo}/issues/comments/{comment_id}"); a template with
// more literal segments wins over one with fewer.
func (s *Spec) match(path string) (string, bool) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	best, bestLit := "", -1
	for tmpl := range s.Paths {
		ts := strings.Split(strings.Trim(tmpl, "/"), "/")
		if len(ts) != len(segs) {
			continue
		}
		lit := 0
		ok := true
		for i, t := range ts {
			if strings.HasPrefix(t, "{") && strings.HasSuffix(t, "}") {
				if segs[i] == "" {
					ok = false
					break
				}
				continue
			}
			if t != segs[i] {
				ok = false
				break
			}
			lit++
		}
		if ok && lit > bestLit {
			best, bestLit = tmpl, lit
		}
	}
	return best, bestLit >= 0
}

func (s *Spec) resolve(sc *schema) *schema {
	for sc != nil && sc.Ref != "" {
		name := strings.TrimPrefix(sc.Ref, "#/components/schemas/")
		sc = s.Components.Schemas[name]
	}
	return sc
}

// Validate checks a request: its path matches a template, the template has the method, and the body has the
// required fields of the operation's JSON schema, with the declared types (nested objects and arrays included).
func (s *Spec) Validate(method, path string, body map[string]any) error {
	tmpl, ok := s.match(path)
	if !ok {
		return fmt.Errorf("%s %s: no such path in GitHub's API", method, path)
	}
	op, ok := s.Paths[tmpl][strings.ToLower(method)]
	if !ok {
		return fmt.Errorf("%s %s: %s has no %s operation", method, path, tmpl, method)
	}
	rb := op.RequestBody
	if rb == nil {
		if len(body) > 0 {
			return fmt.Errorf("%s %s (%s): takes no body", method, path, tmpl)
		}
		return nil
	}
	content := rb.Content
	if rb.Ref != "" {
		content = s.Components.RequestBodies[strings.TrimPrefix(rb.Ref, "#/components/requestBodies/")].Content
	}
	js, ok := content["application/json"]
	if !ok {
		return fmt.Errorf("%s %s (%s): no JSON body in the description", method, path, tmpl)
	}
	if body == nil {
		if rb.Required {
			return fmt.Errorf("%s %s (%s): the body is required", method, path, tmpl)
		}
		return nil
	}
	if err := s.check(js.Schema, body, "body", true); err != nil {
		return fmt.Errorf("%s %s (%s): %w", method, path, tmpl, err)
	}
	return nil
}

func types(sc *schema) []string {
	var one string
	if json.Unmarshal(sc.Type, &one) == nil && one != "" {
		return []string{one}
	}
	var many []string
	_ = json.Unmarshal(sc.Type, &many)
	return many
}

// check validates v against sc. strict refuses fields sc does not name: on for the schema of a body and its
// properties, off for the alternatives of anyOf/oneOf/allOf, which GitHub uses to add conditions to a schema
// whose properties are named above them.
func (s *Spec) check(sc *schema, v any, at string, strict bool) error {
	sc = s.resolve(sc)
	if sc == nil {
		return nil
	}
	for _, sub := range sc.AllOf {
		if err := s.check(sub, v, at, false); err != nil {
			return err
		}
	}
	if alts := append(append([]*schema{}, sc.OneOf...), sc.AnyOf...); len(alts) > 0 {
		var errs []string
		for _, sub := range alts {
			err := s.check(sub, v, at, false)
			if err == nil {
				errs = nil
				break
			}
			errs = append(errs, err.Error())
		}
		if errs != nil {
			return fmt.Errorf("%s matches none of its alternatives: %s", at, strings.Join(errs, "; "))
		}
	}
	if v == nil {
		return nil // null: GitHub's description marks nullability inconsistently; presence is what is checked
	}
	if ts := types(sc); len(ts) > 0 {
		got := jsonType(v)
		ok := false
		for _, t := range ts {
			if t == got || (t == "number" && got == "integer") {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("%s is %s, want %v", at, got, ts)
		}
	}
	if len(sc.Enum) > 0 {
		found := false
		for _, e := range sc.Enum {
			if fmt.Sprint(e) == fmt.Sprint(v) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%s = %v is not one of %v", at, v, sc.Enum)
		}
	}
	switch x := v.(type) {
	case map[string]any:
		for _, r := range sc.Required {
			if _, ok := x[r]; !ok {
				return fmt.Errorf("%s lacks required field %q", at, r)
			}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p, ok := sc.Properties[k]
			if !ok {
				if strict && len(sc.Properties) > 0 && string(sc.AdditionalProperties) != "true" {
					return fmt.Errorf("%s has field %q the description does not know", at, k)
				}
				continue
			}
			if err := s.check(p, x[k], at+"."+k, true); err != nil {
				return err
			}
		}
	case []any:
		for i, e := range x {
			if err := s.check(sc.Items, e, fmt.Sprintf("%s[%d]", at, i), true); err != nil {
				return err
			}
		}
	}
	return nil
}

func jsonType(v any) string {
	switch x := v.(type) {
	case string:
		return "string"
	case bool:
		return "boolean"
	case float64:
		if x == float64(int64(x)) {
			return "integer"
		}
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "null"
}
