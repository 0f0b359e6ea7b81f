package client

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestAuthMethods(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+strings.TrimSpace(string(b)))
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.URL.Path == "/api/v1/auth/token":
			_, _ = w.Write([]byte(`{"token":"eyJ.a.b","expires_at":"2030-01-01T00:00:00Z","token_type":"Bearer","scopes":["exec"]}`))
		case r.URL.Path == "/api/v1/audit":
			_, _ = w.Write([]byte(`{"entries":[{"seq":7,"method":"POST","route":"/api/v1/vms","status":202}],"next_cursor":"7"}`))
		case r.URL.Path == "/api/v1/apikeys" && r.Method == "POST":
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(`{"id":"k1","key":"ae_x","role":"user","scopes":["exec"]}`))
		case r.URL.Path == "/api/v1/apikeys":
			_, _ = w.Write([]byte(`{"api_keys":[{"id":"k1"}]}`))
		default:
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(ErrorBody{Error: ErrorDetail{Code: CodeForbidden, Message: "needs role admin"}})
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL, "ae_key")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, err := c.IssueToken(ctx, TokenRequest{ExpiresIn: 60, Scopes: []string{"exec"}})
	if err != nil || tok.Token != "eyJ.a.b" || tok.TokenType != "Bearer" {
		t.Fatalf("token %+v %v", tok, err)
	}
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l, err := c.ListAudit(ctx, AuditQuery{KeyID: "k", Method: "POST", Status: 202, Since: since, Limit: 5, Cursor: "9"})
	if err != nil || len(l.Entries) != 1 || l.NextCursor != "7" {
		t.Fatalf("audit %+v %v", l, err)
	}
	k, err := c.CreateAPIKey(ctx, CreateAPIKeyRequest{Name: "n", Scopes: []string{"exec"}})
	if err != nil || k.Key != "ae_x" || k.ID != "k1" {
		t.Fatalf("create %+v %v", k, err)
	}
	if ks, err := c.ListAPIKeys(ctx); err != nil || len(ks.APIKeys) != 1 {
		t.Fatalf("list %+v %v", ks, err)
	}
	err = c.RevokeAPIKey(ctx, "k1")
	if !IsCode(err, CodeForbidden) {
		t.Fatalf("revoke: %v, want forbidden", err)
	}
	want := []string{
		`POST /api/v1/auth/token {"expires_in":60,"scopes":["exec"]}`,
		"GET /api/v1/audit?cursor=9&key_id=k&limit=5&method=POST&since=2026-01-02T03%3A04%3A05Z&status=202 ",
		`POST /api/v1/apikeys {"name":"n","scopes":["exec"]}`,
		"GET /api/v1/apikeys ",
		"DELETE /api/v1/apikeys/k1 ",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
