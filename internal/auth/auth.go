// Package auth creates and checks API keys. A key is "ae_" + 8 characters of public prefix + "_" + 32 bytes of secret
// in base64url. Keys carry 256 bits of entropy, so a single SHA-256 is a sound hash for them (slow password hashes
// exist for low-entropy secrets); only the hash and the prefix are stored.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
)

// ErrInvalidKey is returned when a presented key or token is malformed, unknown, revoked or expired.
var ErrInvalidKey = errors.New("invalid api key")

// ErrExpired wraps ErrInvalidKey for a key or token past its expiry, so the answer can say so.
var ErrExpired = fmt.Errorf("%w: expired", ErrInvalidKey)

// ErrRevoked wraps ErrInvalidKey for a token whose key was revoked.
var ErrRevoked = fmt.Errorf("%w: revoked", ErrInvalidKey)

const keyPrefix = "ae_"

// NewKey makes a new key for owner. It returns the plaintext (shown once, never stored) and the record to store.
// An empty ownerID gives the key a new owner of its own.
func NewKey(ownerID, name string, admin bool) (string, *model.APIKey, error) {
	role := model.RoleUser
	if admin {
		role = model.RoleAdmin
	}
	return NewKeyWithRole(ownerID, name, role, nil, nil)
}

// NewKeyWithRole is NewKey with a role, scopes (nil: every scope of the role) and an expiry (nil: none).
func NewKeyWithRole(ownerID, name, role string, scopes []string, expires *time.Time) (string, *model.APIKey, error) {
	pub := make([]byte, 6)
	secret := make([]byte, 32)
	if _, err := rand.Read(pub); err != nil {
		return "", nil, fmt.Errorf("generate key: %w", err)
	}
	if _, err := rand.Read(secret); err != nil {
		return "", nil, fmt.Errorf("generate key: %w", err)
	}
	prefix := base64.RawURLEncoding.EncodeToString(pub) // 8 characters
	plain := keyPrefix + prefix + "_" + base64.RawURLEncoding.EncodeToString(secret)
	if ownerID == "" {
		ownerID = uuid.NewString()
	}
	return plain, &model.APIKey{
		ID:        uuid.NewString(),
		OwnerID:   ownerID,
		Name:      name,
		Prefix:    keyPrefix + prefix,
		Hash:      HashKey(plain),
		Role:      role,
		Scopes:    scopes,
		ExpiresAt: expires,
		CreatedAt: time.Now().UTC(),
	}, nil
}

// HashKey returns the stored form of a plaintext key.
func HashKey(plain string) string {
	sum := sha256.Sum256([]byte(plain))
	return hex.EncodeToString(sum[:])
}

// WellFormed reports whether s looks like a key, so malformed input is rejected without a database round trip.
func WellFormed(s string) bool {
	if !strings.HasPrefix(s, keyPrefix) || len(s) != len(keyPrefix)+8+1+43 {
		return false
	}
	return s[len(keyPrefix)+8] == '_'
}
