package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

const secretValue = "sk-live-0123456789abcdefSECRET"

// noValue fails t if a response body holds the secret value, or its base64.
func noValue(t *testing.T, what string, body []byte) {
	t.Helper()
	for _, v := range []string{secretValue, base64.StdEncoding.EncodeToString([]byte(secretValue))} {
		if bytes.Contains(body, []byte(v)) {
			t.Fatalf("%s: the answer holds the secret value: %s", what, body)
		}
	}
}

func (e *testEnv) secretNames(t *testing.T, key string) []string {
	t.Helper()
	r := e.call("GET", "/api/v1/secrets", key, "")
	noValue(t, "list", r.body)
	if r.status != http.StatusOK {
		t.Fatalf("list secrets: %d %s", r.status, r.body)
	}
	var names []string
	for _, s := range decodeAs[client.SecretList](t, r).Secrets {
		names = append(names, s.Name)
	}
	return names
}

func TestSecretsRoutes(t *testing.T) { onStores(t, nil, testSecretsRoutes) }

func testSecretsRoutes(t *testing.T, e *testEnv) {
	var bodies [][]byte
	call := func(method, path, key, body string) response {
		t.Helper()
		r := e.call(method, path, key, body)
		bodies = append(bodies, r.body)
		return r
	}
	put := `{"value":"` + secretValue + `"}`

	r := call("PUT", "/api/v1/secrets/GH", e.keyA, put)
	if r.status != http.StatusCreated {
		t.Fatalf("first PUT: %d %s", r.status, r.body)
	}
	first := decodeAs[client.Secret](t, r)
	if first.Name != "GH" || first.CreatedAt.IsZero() || first.LastUsedAt != nil {
		t.Fatalf("first PUT = %+v", first)
	}
	time.Sleep(2 * time.Millisecond)
	r = call("PUT", "/api/v1/secrets/GH", e.keyA, put)
	if r.status != http.StatusOK {
		t.Fatalf("second PUT: %d %s", r.status, r.body)
	}
	second := decodeAs[client.Secret](t, r)
	if !second.CreatedAt.Equal(first.CreatedAt) || !second.UpdatedAt.After(first.UpdatedAt) {
		t.Fatalf("replacement = %+v after %+v", second, first)
	}
	// An Idempotency-Key is ignored, not kept with a fingerprint of the value.
	r = e.do(req{method: "PUT", path: "/api/v1/secrets/GH", key: e.keyA, body: strings.NewReader(put),
		header: map[string]string{client.IdempotencyKeyHeader: "k-1"}})
	if r.status != http.StatusOK || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("PUT with an Idempotency-Key: %d %s", r.status, r.body)
	}
	if rec, err := e.st.Idempotency().Begin(context.Background(), &store.IdempotencyRecord{OwnerID: e.ownerA, Key: "k-1",
		Fingerprint: "x", CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}, time.Time{}); err != nil || rec != nil {
		t.Fatalf("the Idempotency-Key of a secret PUT was kept: %+v, %v", rec, err)
	}

	// Bad input: a clear 4xx, nothing changes.
	for _, c := range []struct {
		path, body string
		status     int
		field      string
	}{
		{"/api/v1/secrets/9GH", put, 422, "name"},
		{"/api/v1/secrets/GH-X", put, 422, "name"},
		{"/api/v1/secrets/" + strings.Repeat("A", 65), put, 422, "name"},
		{"/api/v1/secrets/NEW", `{"value":""}`, 422, "value"},
		{"/api/v1/secrets/NEW", `{"value":"a\u0000b"}`, 422, "value"},
		{"/api/v1/secrets/NEW", `{"value":"x","extra":1}`, 400, ""},
		{"/api/v1/secrets/NEW", `{"value":`, 400, ""},
	} {
		r := call("PUT", c.path, e.keyA, c.body)
		if r.status != c.status || (c.field != "" && !strings.HasPrefix(r.errMessage(), c.field+":")) {
			t.Errorf("PUT %s %s: %d %s; want %d about %q", c.path, c.body, r.status, r.body, c.status, c.field)
		}
	}
	r = call("PUT", "/api/v1/secrets/NEW", e.keyA, `{"value":"`+strings.Repeat("x", 64<<10+1)+`"}`)
	if r.status != 422 {
		t.Errorf("PUT of a too long value: %d %s", r.status, r.body)
	}
	if names := e.secretNames(t, e.keyA); len(names) != 1 || names[0] != "GH" {
		t.Fatalf("after bad PUTs: %v", names)
	}
	if names := e.secretNames(t, e.keyB); len(names) != 0 {
		t.Fatalf("another owner sees %v", names)
	}
	if r := call("DELETE", "/api/v1/secrets/GH", e.keyB, ""); r.status != http.StatusNotFound {
		t.Fatalf("another owner's DELETE: %d %s", r.status, r.body)
	}

	// Execute: a missing secret is a 422 naming it, at request time, and stores nothing.
	vmID := e.runningVM("box", "w-sec", "", time.Now())
	before := e.counts()
	r = call("POST", "/api/v1/vms/"+vmID+"/execute", e.keyA, `{"command":"env","secret_env":{"TOKEN":"NOPE"}}`)
	if r.status != 422 || !strings.Contains(r.errMessage(), `"NOPE"`) || !strings.HasPrefix(r.errMessage(), "secret_env:") {
		t.Fatalf("execute with a missing secret: %d %s", r.status, r.body)
	}
	// Another owner's secret is missing too.
	r = call("POST", "/api/v1/vms/"+vmID+"/execute", e.keyA, `{"command":"env","secret_env":{"TOKEN":"B_ONLY"}}`)
	if r.status != 422 {
		t.Fatalf("execute with a missing secret: %d %s", r.status, r.body)
	}
	for _, body := range []string{
		`{"command":"env","env":{"TOKEN":"x"},"secret_env":{"TOKEN":"GH"}}`,
		`{"command":"env","secret_env":{"1BAD":"GH"}}`,
		`{"command":"env","secret_env":{"TOKEN":"not-a-name"}}`,
	} {
		if r := call("POST", "/api/v1/vms/"+vmID+"/execute", e.keyA, body); r.status != 422 {
			t.Fatalf("execute %s: %d %s", body, r.status, r.body)
		}
	}
	r = call("POST", "/api/v1/jobs", e.keyA, `{"vm_id":"`+vmID+`","commands":[{"command":"true"},{"command":"env","secret_env":{"T":"NOPE"}}]}`)
	if r.status != 422 || !strings.HasPrefix(r.errMessage(), "commands[1].secret_env:") {
		t.Fatalf("job with a missing secret: %d %s", r.status, r.body)
	}
	if after := e.counts(); after != before {
		t.Fatalf("refused requests changed the store: %+v -> %+v", before, after)
	}

	// Accepted: the execution holds the mapping only; credential-like env values are masked in every answer.
	r = call("POST", "/api/v1/vms/"+vmID+"/execute", e.keyA,
		`{"command":"env","env":{"API_KEY":"plain-credential","HOME":"/home/x"},"secret_env":{"GH_TOKEN":"GH"}}`)
	if r.status != http.StatusAccepted {
		t.Fatalf("execute: %d %s", r.status, r.body)
	}
	acc := decodeAs[client.ExecuteAccepted](t, r)
	r = call("GET", "/api/v1/executions/"+acc.ExecutionID, e.keyA, "")
	ex := decodeAs[client.Execution](t, r)
	if ex.Env["API_KEY"] != "***" || ex.Env["HOME"] != "/home/x" || ex.SecretEnv["GH_TOKEN"] != "GH" || len(ex.SecretEnv) != 1 {
		t.Fatalf("execution as answered: env %v, secret_env %v", ex.Env, ex.SecretEnv)
	}
	r = call("GET", "/api/v1/vms/"+vmID+"/executions", e.keyA, "")
	if bytes.Contains(r.body, []byte("plain-credential")) {
		t.Fatalf("the list shows a credential-like env value: %s", r.body)
	}
	row, err := e.st.Executions().Get(context.Background(), acc.ExecutionID)
	if err != nil {
		t.Fatal(err)
	}
	stored, _ := json.Marshal(row)
	tk, err := e.st.Tasks().Get(context.Background(), acc.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(tk)
	noValue(t, "the stored execution", stored)
	noValue(t, "the stored task", payload)

	// Every route, with the owner's key: none answers the value.
	s := newServer(Config{})
	for _, route := range routerRoutes(t, s) {
		method, path, _ := strings.Cut(route, " ")
		if method != "GET" || strings.HasSuffix(path, "/stream") || strings.HasSuffix(path, "/shell") || path == "/api/v1/events" {
			continue // streams are checked by the worker's tests (the event log by events_test.go); nothing else is read-only
		}
		id := vmID
		if strings.HasPrefix(path, "/api/v1/executions/") {
			id = acc.ExecutionID
		} else if strings.HasPrefix(path, "/api/v1/tasks/") {
			id = acc.TaskID
		}
		path = strings.NewReplacer("{id}", id, "{name}", "GH", "{pid}", "p1").Replace(path)
		call(method, path+"?path=/", e.keyA, "")
	}
	for i, b := range bodies {
		noValue(t, "answer "+string(rune('0'+i%10)), b)
	}

	r = call("DELETE", "/api/v1/secrets/GH", e.keyA, "")
	if r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := call("DELETE", "/api/v1/secrets/GH", e.keyA, ""); r.status != http.StatusNotFound || r.errCode() != client.CodeNotFound {
		t.Fatalf("second DELETE: %d %s", r.status, r.body)
	}
	if names := e.secretNames(t, e.keyA); len(names) != 0 {
		t.Fatalf("after DELETE: %v", names)
	}
}

// TestSecretsWithoutKey: a server without a secrets key says so (503), for the secret routes and for executions
// asking for secrets, and stores nothing.
func TestSecretsWithoutKey(t *testing.T) {
	e := newEnv(t, nil)
	vmID := e.runningVM("box", "w-nokey", "", time.Now())
	svc := task.New(e.st, e.q, e.bus, task.DefaultLimits())
	srv := httptest.NewServer(New(Config{Service: svc, Auth: auth.NewAuthenticator(e.st.APIKeys())}))
	defer srv.Close()
	e.srv = srv
	before := e.counts()
	for _, c := range [][3]string{
		{"PUT", "/api/v1/secrets/GH", `{"value":"v4lue"}`},
		{"GET", "/api/v1/secrets", ""},
		{"POST", "/api/v1/vms/" + vmID + "/execute", `{"command":"env","secret_env":{"T":"GH"}}`},
	} {
		r := e.call(c[0], c[1], e.keyA, c[2])
		if r.status != http.StatusServiceUnavailable || !strings.Contains(r.errMessage(), "secrets_key") {
			t.Errorf("%s %s without a key: %d %s", c[0], c[1], r.status, r.body)
		}
	}
	if after := e.counts(); after != before {
		t.Fatalf("store changed: %+v -> %+v", before, after)
	}
}
