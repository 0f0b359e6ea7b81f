package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/audit"
	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

func TestAPIKeys(t *testing.T) {
	e := newEnv(t, nil)
	admin, adminID := e.newAdminKey("root")

	// A user key may not manage keys.
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/api/v1/apikeys", ""}, {"POST", "/api/v1/apikeys", `{"name":"x"}`},
		{"DELETE", "/api/v1/apikeys/" + adminID, ""}, {"GET", "/api/v1/audit", ""},
	} {
		if r := e.call(c.method, c.path, e.keyA, c.body); r.status != http.StatusForbidden || r.errCode() != client.CodeForbidden {
			t.Errorf("%s %s with a user key: %d %s", c.method, c.path, r.status, r.body)
		}
	}

	// Bad input.
	for body, want := range map[string]int{
		`{"name":""}`:                                      422,
		`{"name":"x","role":"root"}`:                       422,
		`{"name":"x","scopes":["vms:delete"]}`:             422,
		`{"name":"x","role":"user","scopes":["admin"]}`:    422,
		`{"name":"x","expires_at":"2001-01-01T00:00:00Z"}`: 422,
		`{"name":"x","owner":"a b"}`:                       422,
		`{"name":"x","extra":1}`:                           400,
		`not json`:                                         400,
	} {
		if r := e.call("POST", "/api/v1/apikeys", admin, body); r.status != want {
			t.Errorf("create %s: %d %s, want %d", body, r.status, r.body, want)
		}
	}

	// A read-only key for alice's owner.
	r := e.call("POST", "/api/v1/apikeys", admin, `{"name":"ro","scopes":["vms:read"],"owner":"`+e.ownerA+`"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	created := decodeAs[client.CreatedAPIKey](t, r)
	if !auth.WellFormed(created.Key) || created.Role != model.RoleUser || !slices.Equal(created.Scopes, []string{"vms:read"}) ||
		created.OwnerID != e.ownerA || created.ID == "" || created.CreatedAt.IsZero() {
		t.Fatalf("created %+v", created)
	}
	alices := e.createVM(e.keyA, "a1")
	if r := e.call("GET", "/api/v1/vms/"+alices.VM.ID, created.Key, ""); r.status != http.StatusOK {
		t.Fatalf("read with the read-only key: %d %s", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/vms", created.Key, `{"name":"nope"}`); r.status != http.StatusForbidden ||
		r.errCode() != client.CodeForbidden || !strings.Contains(r.errMessage(), "vms:write") {
		t.Fatalf("write with the read-only key: %d %s", r.status, r.body)
	}
	if r := e.call("DELETE", "/api/v1/vms/"+alices.VM.ID, created.Key, ""); r.status != http.StatusForbidden {
		t.Fatalf("delete with the read-only key: %d %s", r.status, r.body)
	}
	// An admin key with the default role scopes.
	r = e.call("POST", "/api/v1/apikeys", admin, `{"name":"ops","role":"admin"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create admin: %d %s", r.status, r.body)
	}
	ops := decodeAs[client.CreatedAPIKey](t, r)
	if !slices.Contains(ops.Scopes, "admin") || ops.OwnerID == e.ownerA {
		t.Fatalf("admin key %+v", ops)
	}

	// The list: every key, no secret, last use recorded in batches.
	e.auth.Flush(context.Background())
	r = e.okCall("GET", "/api/v1/apikeys", admin, "")
	if strings.Contains(string(r.body), created.Key) || strings.Contains(string(r.body), auth.HashKey(created.Key)) ||
		strings.Contains(string(r.body), `"key"`) {
		t.Fatalf("list leaks a key: %s", r.body)
	}
	list := decodeAs[client.APIKeyList](t, r)
	var ro *client.APIKey
	for i := range list.APIKeys {
		if list.APIKeys[i].ID == created.ID {
			ro = &list.APIKeys[i]
		}
	}
	if len(list.APIKeys) < 5 || ro == nil || ro.LastUsedAt == nil || ro.Name != "ro" {
		t.Fatalf("list %+v", list)
	}

	// Revoke: 204, then the key is refused; an unknown key is 404.
	if r := e.call("DELETE", "/api/v1/apikeys/"+created.ID, admin, ""); r.status != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	if r := e.call("GET", "/api/v1/vms", created.Key, ""); r.status != http.StatusUnauthorized {
		t.Fatalf("revoked key: %d %s", r.status, r.body)
	}
	if r := e.call("DELETE", "/api/v1/apikeys/00000000-0000-4000-8000-000000000000", admin, ""); r.status != http.StatusNotFound {
		t.Fatalf("revoke unknown: %d %s", r.status, r.body)
	}

	// An expired key is refused with 401 and says so.
	past := time.Now().Add(-time.Minute)
	plain, k, _ := auth.NewKeyWithRole("", "old", model.RoleUser, nil, &past)
	if err := e.st.APIKeys().Create(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if r := e.call("GET", "/api/v1/vms", plain, ""); r.status != http.StatusUnauthorized || !strings.Contains(r.errMessage(), "expired") {
		t.Fatalf("expired key: %d %s", r.status, r.body)
	}
}

func TestTokens(t *testing.T) {
	e := newEnv(t, nil)
	admin, _ := e.newAdminKey("root")

	r := e.call("POST", "/api/v1/auth/token", e.keyA, "")
	if r.status != http.StatusOK {
		t.Fatalf("token: %d %s", r.status, r.body)
	}
	tok := decodeAs[client.Token](t, r)
	if tok.TokenType != "Bearer" || !auth.LooksLikeJWT(tok.Token) || time.Until(tok.ExpiresAt) > time.Hour+time.Second ||
		time.Until(tok.ExpiresAt) < 59*time.Minute || slices.Contains(tok.Scopes, "admin") {
		t.Fatalf("token %+v", tok)
	}
	// The header names the key; the claims say who.
	parts := strings.Split(tok.Token, ".")
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	pb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var hdr map[string]any
	var claims map[string]any
	_ = json.Unmarshal(hb, &hdr)
	_ = json.Unmarshal(pb, &claims)
	if hdr["alg"] != "EdDSA" || hdr["kid"] == "" || claims["iss"] != "aetherium" || claims["aud"] != "aetherium-api" ||
		claims["owner"] != e.ownerA || claims["role"] != "user" {
		t.Fatalf("header %v claims %v", hdr, claims)
	}
	vm := e.createVM(tok.Token, "by-token")
	if r := e.call("GET", "/api/v1/vms/"+vm.VM.ID, e.keyA, ""); r.status != http.StatusOK {
		t.Fatalf("the token's VM is not the key owner's: %d", r.status)
	}

	// Narrowed: read only, short.
	r = e.call("POST", "/api/v1/auth/token", e.keyA, `{"expires_in":60,"scopes":["vms:read"]}`)
	if r.status != http.StatusOK {
		t.Fatalf("narrow token: %d %s", r.status, r.body)
	}
	ro := decodeAs[client.Token](t, r)
	if time.Until(ro.ExpiresAt) > 61*time.Second || !slices.Equal(ro.Scopes, []string{"vms:read"}) {
		t.Fatalf("narrow token %+v", ro)
	}
	if r := e.call("GET", "/api/v1/vms", ro.Token, ""); r.status != http.StatusOK {
		t.Fatalf("read with the narrow token: %d %s", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/vms", ro.Token, `{"name":"x"}`); r.status != http.StatusForbidden || r.errCode() != client.CodeForbidden {
		t.Fatalf("write with the narrow token: %d %s", r.status, r.body)
	}
	// Bad requests.
	for body, want := range map[string]int{
		`{"scopes":["admin"]}`:      http.StatusForbidden, // a user key cannot widen
		`{"scopes":["everything"]}`: http.StatusUnprocessableEntity,
		`{"expires_in":7200}`:       http.StatusUnprocessableEntity,
		`{"expires_in":-1}`:         http.StatusUnprocessableEntity,
		`{"expires_in":"1h"}`:       http.StatusBadRequest,
	} {
		if r := e.call("POST", "/api/v1/auth/token", e.keyA, body); r.status != want {
			t.Errorf("token %s: %d %s, want %d", body, r.status, r.body, want)
		}
	}
	if r := e.call("POST", "/api/v1/auth/token", tok.Token, ""); r.status != http.StatusForbidden {
		t.Fatalf("a token for a token: %d %s", r.status, r.body)
	}
	// An admin's token may keep admin, or drop it.
	r = e.call("POST", "/api/v1/auth/token", admin, `{"scopes":["vms:read"]}`)
	adminRO := decodeAs[client.Token](t, r)
	if r := e.call("GET", "/api/v1/apikeys", adminRO.Token, ""); r.status != http.StatusForbidden {
		t.Fatalf("admin token without the admin scope on an admin route: %d %s", r.status, r.body)
	}
	adminTok := decodeAs[client.Token](t, e.call("POST", "/api/v1/auth/token", admin, ""))
	if r := e.call("GET", "/api/v1/apikeys", adminTok.Token, ""); r.status != http.StatusOK {
		t.Fatalf("admin token on an admin route: %d %s", r.status, r.body)
	}

	// Refused tokens: 401.
	reclaim := func(mut func(m map[string]any)) string {
		m := map[string]any{}
		_ = json.Unmarshal(pb, &m)
		mut(m)
		b, _ := json.Marshal(m)
		return parts[0] + "." + base64.RawURLEncoding.EncodeToString(b) + "." + parts[2]
	}
	noneHdr, _ := json.Marshal(map[string]string{"alg": "none", "kid": hdr["kid"].(string)})
	otherAud := auth.NewJWT(e.st.SigningKeys(), e.secrets.Keyring(), auth.JWTConfig{Audience: "other"})
	p, err := e.auth.Principal(context.Background(), e.keyA)
	if err != nil {
		t.Fatal(err)
	}
	wrongAud, _, err := otherAud.Issue(context.Background(), p, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]string{
		"tampered":  reclaim(func(m map[string]any) { m["owner"] = e.ownerB }),
		"none alg":  base64.RawURLEncoding.EncodeToString(noneHdr) + "." + parts[1] + ".",
		"wrong aud": wrongAud,
		"bad sig":   parts[0] + "." + parts[1] + "." + strings.Repeat("A", 86),
		"truncated": tok.Token[:len(tok.Token)-4],
	} {
		if r := e.call("GET", "/api/v1/vms", bad, ""); r.status != http.StatusUnauthorized || r.errCode() != client.CodeUnauthorized {
			t.Errorf("%s token: %d %s", name, r.status, r.body)
		}
	}
	// Expired: issued by a clock an hour behind.
	old := auth.NewJWT(e.st.SigningKeys(), e.secrets.Keyring(), auth.JWTConfig{})
	old.SetClock(func() time.Time { return time.Now().Add(-2 * time.Hour) })
	expired, _, err := old.Issue(context.Background(), p, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := e.call("GET", "/api/v1/vms", expired, ""); r.status != http.StatusUnauthorized || !strings.Contains(r.errMessage(), "expired") {
		t.Fatalf("expired token: %d %s", r.status, r.body)
	}

	// Revoking the key refuses its tokens.
	created := decodeAs[client.CreatedAPIKey](t, e.call("POST", "/api/v1/apikeys", admin, `{"name":"tmp"}`))
	tmpTok := decodeAs[client.Token](t, e.call("POST", "/api/v1/auth/token", created.Key, ""))
	if r := e.call("GET", "/api/v1/vms", tmpTok.Token, ""); r.status != http.StatusOK {
		t.Fatalf("token before revocation: %d %s", r.status, r.body)
	}
	if r := e.call("DELETE", "/api/v1/apikeys/"+created.ID, admin, ""); r.status != http.StatusNoContent {
		t.Fatalf("revoke: %d", r.status)
	}
	if r := e.call("GET", "/api/v1/vms", tmpTok.Token, ""); r.status != http.StatusUnauthorized || !strings.Contains(r.errMessage(), "revoked") {
		t.Fatalf("token of a revoked key: %d %s", r.status, r.body)
	}

	// JWKS, public, at both addresses.
	for _, path := range []string{"/.well-known/jwks.json", "/api/v1/auth/jwks.json"} {
		r := e.call("GET", path, "", "")
		var set struct{ Keys []auth.JWK }
		if err := json.Unmarshal(r.body, &set); err != nil || r.status != http.StatusOK || len(set.Keys) == 0 {
			t.Fatalf("%s: %d %s", path, r.status, r.body)
		}
		k := set.Keys[0]
		if k.Kty != "OKP" || k.Crv != "Ed25519" || k.Alg != "EdDSA" || k.Use != "sig" || k.Kid != hdr["kid"] || len(k.X) != 43 {
			t.Fatalf("%s: key %+v", path, k)
		}
	}
}

func TestAudit(t *testing.T) {
	var rec *audit.Recorder
	e := newEnv(t, func(c *Config) {
		rec = audit.NewRecorder(c.AuditStore, audit.Options{FlushEvery: time.Hour, Logger: c.Logger})
		c.Audit = rec
	})
	admin, adminID := e.newAdminKey("root")
	vm := e.createVM(e.keyA, "audited")
	e.okCall("GET", "/api/v1/vms/"+vm.VM.ID, e.keyA, "") // reads are not audited
	e.call("DELETE", "/api/v1/vms/"+vm.VM.ID, e.keyA, "")
	e.call("PUT", "/api/v1/secrets/TOKEN", e.keyA, `{"value":"sk-very-secret"}`)
	e.call("POST", "/api/v1/auth/token", e.keyA, "")
	e.call("POST", "/api/v1/vms", "not-a-key", `{"name":"x"}`) // 401, still audited
	e.call("POST", "/api/v1/webhooks/none", "", `{}`)          // webhooks keep their own records
	e.call("POST", "/api/v1/nothing-here", e.keyA, `{}`)       // no route
	rec.Close(context.Background())

	r := e.okCall("GET", "/api/v1/audit", admin, "")
	if strings.Contains(string(r.body), "sk-very-secret") || strings.Contains(e.logs.String(), "sk-very-secret") {
		t.Fatal("a secret reached the audit log")
	}
	list := decodeAs[client.AuditList](t, r)
	var routes []string
	for _, en := range list.Entries {
		routes = append(routes, en.Method+" "+en.Route)
	}
	want := []string{"POST /api/v1/vms", "POST /api/v1/auth/token", "PUT /api/v1/secrets/{name}",
		"DELETE /api/v1/vms/{id}", "POST /api/v1/vms"}
	if !slices.Equal(routes, want) {
		t.Fatalf("audited %v, want %v", routes, want)
	}
	del := list.Entries[3]
	if del.Params["id"] != vm.VM.ID || del.OwnerID != e.ownerA || del.KeyID == "" || del.Role != "user" ||
		del.RequestID == "" || del.Source == "" || del.Status == 0 {
		t.Fatalf("delete entry %+v", del)
	}
	if list.Entries[0].Status != http.StatusUnauthorized || list.Entries[0].KeyID != "" {
		t.Fatalf("unauthenticated entry %+v", list.Entries[0])
	}
	if !strings.Contains(e.logs.String(), `"msg":"audit"`) {
		t.Fatal("no audit record on the log stream")
	}
	// Filters and paging.
	byMethod := decodeAs[client.AuditList](t, e.okCall("GET", "/api/v1/audit?method=delete", admin, ""))
	if len(byMethod.Entries) != 1 || byMethod.Entries[0].Route != "/api/v1/vms/{id}" {
		t.Fatalf("by method %+v", byMethod)
	}
	byStatus := decodeAs[client.AuditList](t, e.okCall("GET", "/api/v1/audit?status=401", admin, ""))
	if len(byStatus.Entries) != 1 {
		t.Fatalf("by status %+v", byStatus)
	}
	byOwner := decodeAs[client.AuditList](t, e.okCall("GET", "/api/v1/audit?owner="+e.ownerA+"&key_id="+del.KeyID, admin, ""))
	if len(byOwner.Entries) != 4 {
		t.Fatalf("by owner %+v", byOwner)
	}
	page := decodeAs[client.AuditList](t, e.okCall("GET", "/api/v1/audit?limit=2", admin, ""))
	if len(page.Entries) != 2 || page.NextCursor == "" {
		t.Fatalf("page %+v", page)
	}
	next := decodeAs[client.AuditList](t, e.okCall("GET", "/api/v1/audit?limit=2&cursor="+page.NextCursor, admin, ""))
	if len(next.Entries) != 2 || next.Entries[0].Seq >= page.Entries[1].Seq {
		t.Fatalf("next page %+v", next)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if l := decodeAs[client.AuditList](t, e.okCall("GET", "/api/v1/audit?since="+future, admin, "")); len(l.Entries) != 0 {
		t.Fatalf("since the future: %+v", l)
	}
	for q, want := range map[string]int{"since=yesterday": 400, "status=abc": 400, "limit=0": 422, "limit=x": 400, "cursor=-3": 400} {
		if r := e.call("GET", "/api/v1/audit?"+q, admin, ""); r.status != want {
			t.Errorf("audit?%s: %d %s, want %d", q, r.status, r.body, want)
		}
	}
	_ = adminID
}
