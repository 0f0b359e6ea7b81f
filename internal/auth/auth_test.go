package auth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newKey(t *testing.T, st store.Store, role string, scopes []string, exp *time.Time) (string, *model.APIKey) {
	t.Helper()
	plain, k, err := NewKeyWithRole("", "k", role, scopes, exp)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.APIKeys().Create(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	return plain, k
}

func TestScopes(t *testing.T) {
	if slices.Contains(RoleScopes(model.RoleUser), ScopeAdmin) || !slices.Contains(RoleScopes(model.RoleAdmin), ScopeAdmin) {
		t.Fatal("only admins hold the admin scope")
	}
	if err := CheckScopes(model.RoleUser, []string{ScopeAdmin}); err == nil {
		t.Fatal("a user key may not get the admin scope")
	}
	if err := CheckScopes(model.RoleUser, []string{"vms:delete"}); err == nil {
		t.Fatal("unknown scope accepted")
	}
	if err := CheckScopes(model.RoleAdmin, []string{ScopeAdmin, ScopeExec}); err != nil {
		t.Fatal(err)
	}
	k := &model.APIKey{Role: model.RoleUser, Scopes: []string{ScopeExec, ScopeAdmin}}
	if got := EffectiveScopes(k); !slices.Equal(got, []string{ScopeExec}) {
		t.Fatalf("effective scopes %v", got)
	}
	p := &Principal{Role: model.RoleUser, Scopes: []string{ScopeAdmin}}
	if p.Has(ScopeAdmin) {
		t.Fatal("a user principal has the admin scope")
	}
}

func TestKeyExpiryAndLastUse(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	c := &clock{t: time.Now()}
	a := NewAuthenticator(st.APIKeys(), WithClock(c.now))
	exp := c.t.Add(time.Hour)
	plain, k := newKey(t, st, model.RoleUser, nil, &exp)
	p, err := a.Principal(ctx, plain)
	if err != nil {
		t.Fatal(err)
	}
	if p.KeyID != k.ID || p.Via != ViaAPIKey || !slices.Equal(p.Scopes, RoleScopes(model.RoleUser)) {
		t.Fatalf("principal %+v", p)
	}
	got, _ := st.APIKeys().Get(ctx, k.ID)
	if got.LastUsedAt != nil {
		t.Fatal("last use written on the request path")
	}
	a.Flush(ctx)
	got, _ = st.APIKeys().Get(ctx, k.ID)
	if got.LastUsedAt == nil {
		t.Fatal("last use not written by Flush")
	}
	c.t = exp
	if _, err := a.Principal(ctx, plain); !errors.Is(err, ErrExpired) || !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("expired key: %v", err)
	}
}

func TestJWT(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	c := &clock{t: time.Now()}
	key, err := secrets.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := secrets.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	j := NewJWT(st.SigningKeys(), kr, JWTConfig{})
	j.SetClock(c.now)
	a := NewAuthenticator(st.APIKeys(), WithJWT(j), WithClock(c.now), WithKeyCacheTTL(-1))
	plain, k := newKey(t, st, model.RoleAdmin, nil, nil)
	p, err := a.Principal(ctx, plain)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := j.Issue(ctx, &Principal{KeyID: k.ID, Role: model.RoleUser, Scopes: []string{ScopeExec}}, 0,
		[]string{ScopeAdmin}); !errors.Is(err, ErrScopeNotHeld) {
		t.Fatalf("widening scopes: %v", err)
	}
	tok, exp, err := j.Issue(ctx, p, 10*time.Minute, []string{ScopeVMsRead})
	if err != nil {
		t.Fatal(err)
	}
	if d := exp.Sub(c.t); d > 10*time.Minute || d < 9*time.Minute {
		t.Fatalf("expires in %v", d)
	}
	if !LooksLikeJWT(tok) || LooksLikeJWT(plain) {
		t.Fatal("shapes not told apart")
	}
	jp, err := a.Principal(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if jp.Via != ViaJWT || jp.KeyID != k.ID || jp.OwnerID != k.OwnerID || !slices.Equal(jp.Scopes, []string{ScopeVMsRead}) {
		t.Fatalf("jwt principal %+v", jp)
	}
	// The private key is sealed in the store.
	rows, _ := st.SigningKeys().List(ctx)
	if len(rows) != 1 || rows[0].SealKeyID == "" {
		t.Fatalf("signing keys %+v", rows)
	}
	// Long-lived requests are capped at an hour.
	_, exp2, _ := j.Issue(ctx, p, 48*time.Hour, nil)
	if exp2.Sub(c.t) > time.Hour {
		t.Fatalf("ttl not capped: %v", exp2.Sub(c.t))
	}

	parts := strings.Split(tok, ".")
	hdr := func(alg string) string {
		b, _ := json.Marshal(map[string]string{"alg": alg, "kid": rows[0].ID})
		return base64.RawURLEncoding.EncodeToString(b)
	}
	claims := func(mut func(m map[string]any)) string {
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		m := map[string]any{}
		_ = json.Unmarshal(b, &m)
		mut(m)
		b, _ = json.Marshal(m)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	bad := map[string]string{
		"none alg":       hdr("none") + "." + parts[1] + ".",
		"HS256 alg":      hdr("HS256") + "." + parts[1] + "." + parts[2],
		"tampered":       parts[0] + "." + claims(func(m map[string]any) { m["role"] = "admin"; m["scopes"] = []string{"admin"} }) + "." + parts[2],
		"bad signature":  parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 64)),
		"garbage":        "eyJ.x.y",
		"two parts only": parts[0] + "." + parts[1],
	}
	for name, tk := range bad {
		if _, err := a.Principal(ctx, tk); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
	// Wrong audience and issuer: signed by another verifier's configuration over the same keys.
	other := NewJWT(st.SigningKeys(), kr, JWTConfig{Audience: "someone-else", Issuer: "elsewhere"})
	other.SetClock(c.now)
	otherTok, _, err := other.Issue(ctx, p, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Principal(ctx, otherTok); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("wrong audience accepted: %v", err)
	}

	// Rotation: a new key signs, the old one still verifies.
	c.t = c.t.Add(time.Second)
	newKid, err := j.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok2, _, err := j.Issue(ctx, p, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok2, ".")[0]); !strings.Contains(string(h), newKid) {
		t.Fatalf("new token not signed by the new key: %s", h)
	}
	if _, err := a.Principal(ctx, tok); err != nil {
		t.Fatalf("old key's token refused after rotation: %v", err)
	}
	jwks, err := j.PublicKeys(ctx)
	if err != nil || len(jwks) != 2 || jwks[0].Kid != newKid || jwks[0].Kty != "OKP" || jwks[0].Crv != "Ed25519" {
		t.Fatalf("jwks %+v %v", jwks, err)
	}

	// Expired.
	c.t = c.t.Add(11 * time.Minute)
	if _, err := a.Principal(ctx, tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired token: %v", err)
	}
	// Revoked key: its tokens go too.
	if err := st.APIKeys().Revoke(ctx, k.ID, c.t); err != nil {
		t.Fatal(err)
	}
	tok3, _, err := j.Issue(ctx, p, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Principal(ctx, tok3); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked key's token: %v", err)
	}
	// Past the longest token life after the rotation, a further rotation deletes the first key.
	c.t = c.t.Add(2 * time.Hour)
	if _, err := j.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	rows, _ = st.SigningKeys().List(ctx)
	if len(rows) != 2 {
		t.Fatalf("after pruning: %d keys, want 2", len(rows))
	}
}

// TestJWTMixedKeyrings: a gateway that cannot open the sealed signing key makes one of its own instead of failing,
// and every gateway accepts the other's tokens (the public keys are shared through the store).
func TestJWTMixedKeyrings(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	key, _ := secrets.GenerateKey()
	kr, _ := secrets.NewKeyring(key)
	sealed := NewJWT(st.SigningKeys(), kr, JWTConfig{})
	plain := NewJWT(st.SigningKeys(), nil, JWTConfig{})
	p := &Principal{KeyID: "k", OwnerID: "o", Role: model.RoleUser, Scopes: []string{ScopeExec}}
	t1, _, err := sealed.Issue(ctx, p, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	t2, _, err := plain.Issue(ctx, p, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		j   *JWT
		tok string
	}{{sealed, t2}, {plain, t1}} {
		if _, err := c.j.Verify(ctx, c.tok); err != nil {
			t.Fatalf("verify: %v", err)
		}
	}
	// Issuing again makes no further keys.
	if _, _, err := plain.Issue(ctx, p, time.Minute, nil); err != nil {
		t.Fatal(err)
	}
	if rows, _ := st.SigningKeys().List(ctx); len(rows) != 2 {
		t.Fatalf("%d signing keys, want 2", len(rows))
	}
}
