package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/pkg/client"
)

// TestStrictJSON sends bodies that encoding/json alone would take to routes of every kind: each must be refused
// with 400 invalid_json naming the field, and nothing created.
func TestStrictJSON(t *testing.T) {
	e := newEnv(t, nil)
	a := e.createVM(e.keyA, "base")
	before := e.counts()
	for _, c := range []struct{ method, path, body, want string }{
		{"POST", "/api/v1/vms", `{"Name":"x"}`, `unknown field "Name" (field names are case-sensitive: did you mean "name"?)`},
		{"POST", "/api/v1/vms", `{"name":"x","VCPUs":2}`, `unknown field "VCPUs"`},
		{"POST", "/api/v1/vms", `{"name":"x","name":"y"}`, `duplicate field "name"`},
		{"POST", "/api/v1/vms", `{"name":"x","metadata":{"a":"1","a":"2"}}`, `duplicate field "metadata.a"`},
		{"POST", "/api/v1/vms", `{"name":"x"} {"name":"y"}`, `unexpected data after the JSON object`},
		{"POST", "/api/v1/vms", `{"name":"x","bogus":1}`, `unknown field "bogus"`},
		{"POST", "/api/v1/vms/" + a.VM.ID + "/execute", `{"Command":"id"}`, `unknown field "Command"`},
		{"POST", "/api/v1/jobs", `{"vm_id":"` + a.VM.ID + `","commands":[{"command":"id","Env":{}}]}`,
			`unknown field "commands[0].Env"`},
		{"POST", "/api/v1/jobs", `{"vm_id":"` + a.VM.ID + `","commands":[{"command":"id","command":"rm"}]}`,
			`duplicate field "commands[0].command"`},
		{"PUT", "/api/v1/secrets/s", `{"Value":"v"}`, `unknown field "Value"`},
		{"POST", "/api/v1/runs", `{"repo":{"URL":"https://github.com/o/r"},"prompt":"x"}`, `unknown field "repo.URL"`},
		{"POST", "/api/v1/notifications/rules", `{"events":["run.finished"],"integration":"slack","destination":"C1","Destination":"C2"}`,
			`unknown field "Destination"`},
	} {
		r := e.call(c.method, c.path, e.keyA, c.body)
		if r.status != http.StatusBadRequest || r.errCode() != client.CodeInvalidJSON || !strings.Contains(r.errMessage(), c.want) {
			t.Errorf("%s %s %s: %d %s, want 400 invalid_json with %q", c.method, c.path, c.body, r.status, r.body, c.want)
		}
	}
	if after := e.counts(); after != before {
		t.Fatalf("refused bodies changed the store: %+v -> %+v", before, after)
	}
	// Exact names still work.
	if r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"ok","metadata":{"A":"1","a":"2"}}`); r.status != http.StatusAccepted {
		t.Fatalf("a valid body (map keys differing by case are distinct): %d %s", r.status, r.body)
	}
}

// requestTypes are the types decodeJSON decodes requests into, one per handler that takes a JSON body.
func requestTypes() []func() any {
	return []func() any{
		func() any { return new(client.CreateVMRequest) },
		func() any { return new(client.AddToolsRequest) },
		func() any { return new(client.ExecuteRequest) },
		func() any { return new(client.CreateJobRequest) },
		func() any { return new(client.MkdirRequest) },
		func() any { return new(client.StartProcessRequest) },
		func() any { return new(client.SignalRequest) },
		func() any { return new(client.CreateNotificationRuleRequest) },
		func() any { return new(client.CreateRunRequest) },
		func() any { return new(client.PutSecretRequest) },
		func() any { return new(client.CreateIntegrationLinkRequest) },
	}
}

// strictFuzzTarget is a type with every shape strictDecode walks: nested structs, pointers, slices, maps, raw
// values, an embedded struct and a renamed and an ignored field.
type strictFuzzTarget struct {
	strictEmbedded
	Name   string            `json:"name"`
	Count  *int              `json:"count,omitempty"`
	Tags   []string          `json:"tags"`
	Meta   map[string]string `json:"meta"`
	Nested *struct {
		Deep []struct {
			X int `json:"x"`
		} `json:"deep"`
	} `json:"nested"`
	Raw     json.RawMessage `json:"raw"`
	Any     any             `json:"any"`
	Quoted  int             `json:"quoted,string"`
	Ignored string          `json:"-"`
}

type strictEmbedded struct {
	Kind string `json:"kind"`
}

// FuzzStrictDecode checks strictDecode against encoding/json: it never panics, whatever it accepts encoding/json
// accepts too (with DisallowUnknownFields) into the same value, and what it accepts has no key twice and no key
// that differs from a field's name.
func FuzzStrictDecode(f *testing.F) {
	for _, s := range []string{`{"name":"a","count":1,"tags":["x"],"meta":{"k":"v"},"nested":{"deep":[{"x":1}]}}`,
		`{"Name":"a"}`, `{"name":"a","name":"b"}`, `{"kind":"k","raw":{"a":1,"a":2},"any":[{"b":1}]}`,
		`{"quoted":"12"}`, `{} []`, `{"nested":{"deep":[{"X":1}]}}`, `{"-":1}`, `{"Ignored":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var got strictFuzzTarget
		if err := strictDecode(body, &got); err != nil {
			return
		}
		var want strictFuzzTarget
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("strictDecode accepted %q, encoding/json refuses it: %v", body, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: strictDecode %+v, encoding/json %+v", body, got, want)
		}
		checkExactKeys(t, body)
	})
}

// checkExactKeys fails when the top-level object of body (accepted by strictDecode into strictFuzzTarget) has a
// key twice or a key that is not a field name.
func checkExactKeys(t *testing.T, body []byte) {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return // null: nothing to check
	}
	names := jsonFields(reflect.TypeFor[strictFuzzTarget]())
	for k := range top {
		if _, ok := names[k]; !ok {
			t.Fatalf("%q: accepted key %q that is no field's name", body, k)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return
	}
	seen := map[string]bool{}
	for dec.More() {
		k, _ := dec.Token()
		if seen[k.(string)] {
			t.Fatalf("%q: accepted key %q twice", body, k)
		}
		seen[k.(string)] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzRequestDecoders runs every request type of the API through strictDecode: no panic, and what is accepted
// is what encoding/json decodes from the same bytes.
func FuzzRequestDecoders(f *testing.F) {
	for _, s := range []string{`{"name":"vm","vcpus":2,"memory_mb":512,"metadata":{"a":"b"},"tools":["git"]}`,
		`{"command":"id","env":{"A":"1"},"secret_env":{"T":"t"},"timeout_seconds":5}`,
		`{"vm_id":"x","commands":[{"command":"id"}]}`, `{"path":"/tmp","parents":true}`, `{"signal":"TERM"}`,
		`{"repo":{"url":"https://github.com/o/r","ref":"main"},"prompt":"p","agent":"claude-code"}`,
		`{"value":"v"}`, `{"integration":"slack","source":"C1","runs":true}`, `{"Name":"x","name":"y"}`} {
		for i := range requestTypes() {
			f.Add(i, []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which int, body []byte) {
		types := requestTypes()
		if which < 0 {
			which = -which
		}
		mk := types[which%len(types)]
		got := mk()
		if err := strictDecode(body, got); err != nil {
			if describeStrictError(body, err) == "" {
				t.Fatalf("%q: an error with no message", body)
			}
			return
		}
		want := mk()
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(want); err != nil {
			t.Fatalf("%T: strictDecode accepted %q, encoding/json refuses it: %v", got, body, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%T %q: strictDecode %+v, encoding/json %+v", got, body, got, want)
		}
	})
}
