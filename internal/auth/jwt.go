package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/store"
)

// Defaults of JWTConfig.
const (
	DefaultIssuer      = "aetherium"
	DefaultAudience    = "aetherium-api"
	MaxTokenTTL        = time.Hour
	DefaultRotateEvery = 30 * 24 * time.Hour
	DefaultLeeway      = 30 * time.Second
	// keyReload is how often the signing keys are read again from the store, so a key another gateway made (a
	// rotation) is used and accepted here too; a token with an unknown kid also reads them again (at most every
	// keyMissReload).
	keyReload     = time.Minute
	keyMissReload = 5 * time.Second
	algEdDSA      = "EdDSA"
	// sealOwner and the kid are the associated data under which the keyring seals private keys.
	sealOwner = "aetherium:jwt-signing-key"
)

// JWTConfig configures the JWTs the API issues.
type JWTConfig struct {
	Issuer   string // default DefaultIssuer
	Audience string // default DefaultAudience
	// MaxTTL bounds a token's lifetime (default and at most MaxTokenTTL).
	MaxTTL time.Duration
	// RotateEvery makes a new signing key once the current one is that old (default DefaultRotateEvery;
	// negative: only by Rotate).
	RotateEvery time.Duration
	// Leeway is the allowed clock skew for exp, nbf and iat (default DefaultLeeway).
	Leeway time.Duration
}

// Sealer encrypts the private signing keys at rest; *secrets.Keyring is one.
type Sealer interface {
	Seal(owner, name string, plaintext []byte) (keyID string, nonce, ciphertext []byte, err error)
	Open(keyID, owner, name string, nonce, ciphertext []byte) ([]byte, error)
}

// Claims are the claims of the API's JWTs.
type Claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"` // the API key's id
	Audience  audience `json:"aud"`
	ExpiresAt int64    `json:"exp"`
	NotBefore int64    `json:"nbf,omitempty"`
	IssuedAt  int64    `json:"iat"`
	ID        string   `json:"jti"`
	Owner     string   `json:"owner"`
	Role      string   `json:"role"`
	Scopes    []string `json:"scopes"`
}

// Expiry returns exp as a time.
func (c *Claims) Expiry() time.Time { return time.Unix(c.ExpiresAt, 0).UTC() }

// audience is "aud": one string on the wire, a list accepted.
type audience []string

func (a audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*a = audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*a = l
	return nil
}

type jwtHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ,omitempty"`
	Kid string `json:"kid"`
}

// JWK is a public signing key as RFC 7517 and RFC 8037 write it.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
}

type sigKey struct {
	id      string
	pub     ed25519.PublicKey
	priv    ed25519.PrivateKey // nil when this process cannot open it (no keyring, or not the keyring's key)
	created time.Time
}

// JWT issues and verifies the API's tokens: EdDSA (Ed25519) compact JWS, signed with keys kept in the store so
// every gateway signs and accepts the same ones.
type JWT struct {
	cfg    JWTConfig
	st     store.SigningKeyStore
	sealer Sealer
	now    func() time.Time

	mu       sync.Mutex
	keys     []*sigKey // newest first
	loadedAt time.Time
	missAt   time.Time
}

// NewJWT returns a JWT over the signing keys in st; sealer (nil: none) encrypts the private keys it stores.
func NewJWT(st store.SigningKeyStore, sealer Sealer, cfg JWTConfig) *JWT {
	if cfg.Issuer == "" {
		cfg.Issuer = DefaultIssuer
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.MaxTTL <= 0 || cfg.MaxTTL > MaxTokenTTL {
		cfg.MaxTTL = MaxTokenTTL
	}
	if cfg.RotateEvery == 0 {
		cfg.RotateEvery = DefaultRotateEvery
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = DefaultLeeway
	}
	return &JWT{cfg: cfg, st: st, sealer: sealer, now: time.Now}
}

// SetClock replaces time.Now (tests).
func (j *JWT) SetClock(now func() time.Time) { j.now = now }

// Config returns the configuration in force, defaults filled.
func (j *JWT) Config() JWTConfig { return j.cfg }

// LooksLikeJWT tells a JWT from an API key by shape: three base64url parts, the first a JSON object.
func LooksLikeJWT(s string) bool { return strings.Count(s, ".") == 2 && strings.HasPrefix(s, "eyJ") }

func (j *JWT) load(ctx context.Context, force bool) ([]*sigKey, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.now()
	if !force && j.keys != nil && now.Sub(j.loadedAt) < keyReload {
		return j.keys, nil
	}
	if force && now.Sub(j.missAt) < keyMissReload {
		return j.keys, nil
	}
	rows, err := j.st.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	keys := make([]*sigKey, 0, len(rows))
	for _, r := range rows {
		if r.Algorithm != algEdDSA || len(r.Public) != ed25519.PublicKeySize {
			continue
		}
		k := &sigKey{id: r.ID, pub: ed25519.PublicKey(r.Public), created: r.CreatedAt}
		priv := r.Private
		if r.SealKeyID != "" {
			priv = nil
			if j.sealer != nil {
				priv, _ = j.sealer.Open(r.SealKeyID, sealOwner, r.ID, r.Nonce, r.Private)
			}
		}
		if len(priv) == ed25519.SeedSize {
			k.priv = ed25519.NewKeyFromSeed(priv)
		}
		keys = append(keys, k)
	}
	j.keys, j.loadedAt = keys, now
	if force {
		j.missAt = now
	}
	return keys, nil
}

// Rotate makes a new signing key, current from now on, and deletes the keys whose tokens have all expired. It
// returns the new key's id.
func (j *JWT) Rotate(ctx context.Context) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate signing key: %w", err)
	}
	row := &store.SigningKey{ID: uuid.NewString(), Algorithm: algEdDSA, Public: pub, Private: priv.Seed(),
		CreatedAt: j.now().UTC()}
	if j.sealer != nil {
		kid, nonce, ct, err := j.sealer.Seal(sealOwner, row.ID, priv.Seed())
		if err != nil {
			return "", fmt.Errorf("seal signing key: %w", err)
		}
		row.SealKeyID, row.Nonce, row.Private = kid, nonce, ct
	}
	if err := j.st.Create(ctx, row); err != nil {
		return "", fmt.Errorf("store signing key: %w", err)
	}
	j.mu.Lock()
	j.keys = nil // read again, with the new one first
	j.mu.Unlock()
	if err := j.prune(ctx); err != nil {
		return row.ID, err
	}
	return row.ID, nil
}

// prune deletes the keys whose successor is older than the longest token life: no token they signed is valid.
func (j *JWT) prune(ctx context.Context) error {
	keys, err := j.load(ctx, false)
	if err != nil {
		return err
	}
	for i := 1; i < len(keys); i++ {
		if j.now().Sub(keys[i-1].created) > j.cfg.MaxTTL+j.cfg.Leeway {
			if _, err := j.st.DeleteOlder(ctx, keys[i-1].created); err != nil {
				return fmt.Errorf("delete old signing keys: %w", err)
			}
			j.mu.Lock()
			j.keys = nil
			j.mu.Unlock()
			return nil
		}
	}
	return nil
}

// current returns the signing key, making one when there is none this process can use or when it is due.
func (j *JWT) current(ctx context.Context) (*sigKey, error) {
	keys, err := j.load(ctx, false)
	if err != nil {
		return nil, err
	}
	due := len(keys) == 0 || j.cfg.RotateEvery >= 0 && j.now().Sub(keys[0].created) >= j.cfg.RotateEvery
	if !due {
		// The newest key this process can open (a gateway without the keyring cannot open sealed ones; it signs
		// with one of its own, which every gateway accepts).
		for _, k := range keys {
			if k.priv != nil && (j.cfg.RotateEvery < 0 || j.now().Sub(k.created) < j.cfg.RotateEvery) {
				return k, nil
			}
		}
	}
	if _, err := j.Rotate(ctx); err != nil {
		return nil, err
	}
	keys, err = j.load(ctx, false)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if k.priv != nil {
			return k, nil
		}
	}
	return nil, errors.New("no usable signing key")
}

// ErrScopeNotHeld is returned by Issue when a requested scope is not the caller's.
var ErrScopeNotHeld = errors.New("scope not held")

// Issue signs a token for p, valid for ttl (0 or more than MaxTTL: MaxTTL; never past p's own expiry), with the
// requested scopes (nil: all of p's; a scope p lacks is an error wrapping ErrScopeNotHeld).
func (j *JWT) Issue(ctx context.Context, p *Principal, ttl time.Duration, scopes []string) (string, time.Time, error) {
	if scopes == nil {
		scopes = slices.Clone(p.Scopes)
	}
	for _, s := range scopes {
		if !slices.Contains(p.Scopes, s) {
			return "", time.Time{}, fmt.Errorf("%w: %q", ErrScopeNotHeld, s)
		}
	}
	if ttl <= 0 || ttl > j.cfg.MaxTTL {
		ttl = j.cfg.MaxTTL
	}
	now := j.now().UTC().Truncate(time.Second)
	exp := now.Add(ttl)
	if p.ExpiresAt != nil && p.ExpiresAt.Before(exp) {
		exp = p.ExpiresAt.UTC().Truncate(time.Second)
	}
	k, err := j.current(ctx)
	if err != nil {
		return "", time.Time{}, err
	}
	c := Claims{Issuer: j.cfg.Issuer, Subject: p.KeyID, Audience: audience{j.cfg.Audience}, ExpiresAt: exp.Unix(),
		NotBefore: now.Unix(), IssuedAt: now.Unix(), ID: uuid.NewString(), Owner: p.OwnerID, Role: p.Role,
		Scopes: scopes}
	if c.Scopes == nil {
		c.Scopes = []string{}
	}
	tok, err := sign(k, c)
	return tok, exp, err
}

func sign(k *sigKey, c Claims) (string, error) {
	h, err := json.Marshal(jwtHeader{Alg: algEdDSA, Typ: "JWT", Kid: k.id})
	if err != nil {
		return "", err
	}
	p, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	input := b64(h) + "." + b64(p)
	return input + "." + b64(ed25519.Sign(k.priv, []byte(input))), nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func invalid(why string) error { return fmt.Errorf("%w: %s", ErrInvalidKey, why) }

// Verify checks a token's signature (alg EdDSA only, a known kid), issuer, audience and times, and returns its
// claims. Errors wrap ErrInvalidKey (ErrExpired for an expired token).
func (j *JWT) Verify(ctx context.Context, token string) (*Claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, invalid("not a compact JWS")
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, invalid("bad header encoding")
	}
	var h jwtHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, invalid("bad header")
	}
	if h.Alg != algEdDSA {
		return nil, invalid("alg must be EdDSA")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, invalid("bad signature encoding")
	}
	k, err := j.verifyKey(ctx, h.Kid)
	if err != nil {
		return nil, err
	}
	if !ed25519.Verify(k.pub, []byte(parts[0]+"."+parts[1]), sig) {
		return nil, invalid("bad signature")
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, invalid("bad payload encoding")
	}
	var c Claims
	if err := json.Unmarshal(pb, &c); err != nil {
		return nil, invalid("bad claims")
	}
	now := j.now()
	lw := j.cfg.Leeway
	switch {
	case c.Issuer != j.cfg.Issuer:
		return nil, invalid("wrong issuer")
	case !slices.Contains(c.Audience, j.cfg.Audience):
		return nil, invalid("wrong audience")
	case c.Subject == "":
		return nil, invalid("no subject")
	case c.ExpiresAt == 0:
		return nil, invalid("no expiry")
	case !now.Before(time.Unix(c.ExpiresAt, 0).Add(lw)):
		return nil, ErrExpired
	case c.NotBefore != 0 && now.Add(lw).Before(time.Unix(c.NotBefore, 0)):
		return nil, invalid("not valid yet")
	case c.IssuedAt != 0 && now.Add(lw).Before(time.Unix(c.IssuedAt, 0)):
		return nil, invalid("issued in the future")
	case time.Unix(c.ExpiresAt, 0).Sub(time.Unix(c.IssuedAt, 0)) > j.cfg.MaxTTL+lw:
		return nil, invalid("lifetime too long")
	}
	return &c, nil
}

func (j *JWT) verifyKey(ctx context.Context, kid string) (*sigKey, error) {
	if kid == "" {
		return nil, invalid("no kid")
	}
	for _, force := range []bool{false, true} {
		keys, err := j.load(ctx, force)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if k.id == kid {
				return k, nil
			}
		}
	}
	return nil, invalid("unknown kid")
}

// PublicKeys returns the public keys that verify tokens, newest first, as JWKs. It makes the first signing key
// when there is none yet, so the set is never empty.
func (j *JWT) PublicKeys(ctx context.Context) ([]JWK, error) {
	keys, err := j.load(ctx, false)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		if _, err := j.current(ctx); err != nil {
			return nil, err
		}
		if keys, err = j.load(ctx, false); err != nil {
			return nil, err
		}
	}
	out := make([]JWK, 0, len(keys))
	for _, k := range keys {
		out = append(out, JWK{Kty: "OKP", Crv: "Ed25519", X: b64(k.pub), Kid: k.id, Use: "sig", Alg: algEdDSA})
	}
	return out, nil
}
