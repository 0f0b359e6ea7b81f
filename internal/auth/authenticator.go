package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Defaults of the Authenticator.
const (
	// DefaultTouchInterval is how often the last uses of keys are written: at most one write per key per interval.
	DefaultTouchInterval = 30 * time.Second
	// DefaultKeyCacheTTL is how long a key looked up for a JWT is trusted before it is read again, so a revoked
	// key's tokens stop working within about that long.
	DefaultKeyCacheTTL = 5 * time.Second
)

// Authenticator checks bearer credentials: API keys against the store, and JWTs (jwt.go) against the signing keys
// and then their API key, which must still be valid.
type Authenticator struct {
	keys store.APIKeyStore
	log  *slog.Logger
	now  func() time.Time
	jwt  *JWT

	touchEvery time.Duration
	cacheTTL   time.Duration

	mu      sync.Mutex
	pending map[string]time.Time // key id -> last use not yet written
	cache   map[string]cachedKey // key id -> key, for JWTs
}

type cachedKey struct {
	k  *model.APIKey
	at time.Time
}

// Option configures an Authenticator.
type Option func(*Authenticator)

// WithJWT accepts the JWTs that j issues.
func WithJWT(j *JWT) Option { return func(a *Authenticator) { a.jwt = j } }

// WithLogger logs failures to record last uses.
func WithLogger(l *slog.Logger) Option { return func(a *Authenticator) { a.log = l } }

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(a *Authenticator) { a.now = now } }

// WithKeyCacheTTL sets how long a JWT's key is cached (default DefaultKeyCacheTTL; negative: not cached).
func WithKeyCacheTTL(d time.Duration) Option { return func(a *Authenticator) { a.cacheTTL = d } }

// NewAuthenticator returns an Authenticator over keys.
func NewAuthenticator(keys store.APIKeyStore, opts ...Option) *Authenticator {
	a := &Authenticator{keys: keys, log: slog.Default(), now: time.Now, touchEvery: DefaultTouchInterval,
		cacheTTL: DefaultKeyCacheTTL, pending: map[string]time.Time{}, cache: map[string]cachedKey{}}
	for _, o := range opts {
		o(a)
	}
	return a
}

// JWT returns the token issuer and verifier, or nil when JWTs are not enabled.
func (a *Authenticator) JWT() *JWT { return a.jwt }

// Authenticate returns the key record for plain, or an error wrapping ErrInvalidKey (ErrExpired past its expiry).
func (a *Authenticator) Authenticate(ctx context.Context, plain string) (*model.APIKey, error) {
	if !WellFormed(plain) {
		return nil, ErrInvalidKey
	}
	k, err := a.keys.GetByHash(ctx, HashKey(plain))
	if errors.Is(err, model.ErrNotFound) {
		return nil, ErrInvalidKey
	}
	if err != nil {
		return nil, fmt.Errorf("look up api key: %w", err)
	}
	if k.ExpiresAt != nil && !a.now().Before(*k.ExpiresAt) {
		return nil, ErrExpired
	}
	a.touch(k.ID)
	return k, nil
}

// Principal authenticates a bearer credential of either kind, told apart by shape: a JWT has three dot-separated
// parts, an API key starts with "ae_".
func (a *Authenticator) Principal(ctx context.Context, token string) (*Principal, error) {
	if LooksLikeJWT(token) {
		if a.jwt == nil {
			return nil, fmt.Errorf("%w: JWTs are not enabled", ErrInvalidKey)
		}
		c, err := a.jwt.Verify(ctx, token)
		if err != nil {
			return nil, err
		}
		k, err := a.keyByID(ctx, c.Subject)
		if err != nil {
			return nil, err
		}
		if k.RevokedAt != nil {
			return nil, ErrRevoked
		}
		if k.ExpiresAt != nil && !a.now().Before(*k.ExpiresAt) {
			return nil, ErrExpired
		}
		// The token's scopes, within what the key may do now (its role or scopes may not widen them later).
		keyScopes := EffectiveScopes(k)
		var scopes []string
		for _, s := range c.Scopes {
			for _, ks := range keyScopes {
				if s == ks {
					scopes = append(scopes, s)
				}
			}
		}
		exp := c.Expiry()
		a.touch(k.ID)
		return &Principal{KeyID: k.ID, OwnerID: k.OwnerID, Role: k.Role, Scopes: scopes, Via: ViaJWT, ExpiresAt: &exp}, nil
	}
	k, err := a.Authenticate(ctx, token)
	if err != nil {
		return nil, err
	}
	return principalOf(k), nil
}

func (a *Authenticator) keyByID(ctx context.Context, id string) (*model.APIKey, error) {
	now := a.now()
	if a.cacheTTL > 0 {
		a.mu.Lock()
		c, ok := a.cache[id]
		a.mu.Unlock()
		if ok && now.Sub(c.at) < a.cacheTTL {
			return c.k, nil
		}
	}
	k, err := a.keys.Get(ctx, id)
	if errors.Is(err, model.ErrNotFound) {
		return nil, ErrInvalidKey
	}
	if err != nil {
		return nil, fmt.Errorf("look up api key: %w", err)
	}
	if a.cacheTTL > 0 {
		a.mu.Lock()
		if len(a.cache) > 10000 {
			clear(a.cache)
		}
		a.cache[id] = cachedKey{k: k, at: now}
		a.mu.Unlock()
	}
	return k, nil
}

// Forget drops a key from the cache (after revoking it here, so this gateway refuses its tokens at once).
func (a *Authenticator) Forget(id string) {
	a.mu.Lock()
	delete(a.cache, id)
	a.mu.Unlock()
}

func (a *Authenticator) touch(id string) {
	a.mu.Lock()
	a.pending[id] = a.now().UTC()
	a.mu.Unlock()
}

// Flush writes the pending last uses, one write per key.
func (a *Authenticator) Flush(ctx context.Context) {
	a.mu.Lock()
	p := a.pending
	a.pending = map[string]time.Time{}
	a.mu.Unlock()
	for id, at := range p {
		if err := a.keys.TouchLastUsed(ctx, id, at); err != nil && !errors.Is(err, model.ErrNotFound) {
			a.log.Warn("record api key use", "key_id", id, "err", err)
		}
	}
}

// Run flushes the last uses every interval until ctx ends, and once more then (with a short grace of its own).
func (a *Authenticator) Run(ctx context.Context) {
	t := time.NewTicker(a.touchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			a.Flush(fctx)
			cancel()
			return
		case <-t.C:
			a.Flush(ctx)
		}
	}
}
