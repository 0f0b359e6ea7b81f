package store

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/model"
)

// SecretNameRE is what a secret's name must match: an environment variable name of at most 64 characters.
var SecretNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// SealedSecret is a secret as it is stored: sealed (internal/secrets), never its value. KeyID names the key that
// sealed it; the owner and name are bound into the seal, so a row moved to another owner or name does not open.
type SealedSecret struct {
	OwnerID    string
	Name       string
	KeyID      string
	Nonce      []byte
	Ciphertext []byte
	CreatedAt  time.Time
	UpdatedAt  time.Time
	LastUsedAt *time.Time
}

// SecretKeyCheck is a known text sealed under one key, kept so that start-up can tell a wrong key from a right one
// without opening any owner's secret.
type SecretKeyCheck struct {
	KeyID      string
	Nonce      []byte
	Ciphertext []byte
	CreatedAt  time.Time
}

// SecretStore persists sealed secrets, per owner, and the key checks.
type SecretStore interface {
	// Put inserts s or replaces the sealed value of (s.OwnerID, s.Name), keeping its CreatedAt and LastUsedAt.
	// It reports whether the secret is new. Times are set by the store when zero. Bad fields wrap
	// model.ErrInvalidInput.
	Put(ctx context.Context, s *SealedSecret) (created bool, err error)
	// Get returns the owner's secret or an error wrapping model.ErrNotFound that names it.
	Get(ctx context.Context, ownerID, name string) (*SealedSecret, error)
	// List returns the owner's secrets ordered by name.
	List(ctx context.Context, ownerID string) ([]*SealedSecret, error)
	// Delete removes the owner's secret; a missing one is an error wrapping model.ErrNotFound.
	Delete(ctx context.Context, ownerID, name string) error
	// TouchLastUsed records a use; the time only moves forward. A missing secret wraps model.ErrNotFound.
	TouchLastUsed(ctx context.Context, ownerID, name string, at time.Time) error
	// NotSealedWith returns up to limit secrets of any owner sealed under another key than keyID, ordered by owner
	// and name (rotation walks them).
	NotSealedWith(ctx context.Context, keyID string, limit int) ([]*SealedSecret, error)
	// Reseal replaces the seal of (s.OwnerID, s.Name) with s's KeyID, Nonce and Ciphertext if its stored nonce is
	// still oldNonce (nobody wrote it meanwhile); otherwise it changes nothing and returns an error wrapping
	// model.ErrConflict. UpdatedAt is left alone: the value did not change.
	Reseal(ctx context.Context, s *SealedSecret, oldNonce []byte) error
	// KeyIDs returns how many secrets each key id seals.
	KeyIDs(ctx context.Context) (map[string]int, error)
	// Checks returns the key checks, ordered by creation.
	Checks(ctx context.Context) ([]*SecretKeyCheck, error)
	// AddCheck stores c unless a check of c.KeyID exists (then it changes nothing).
	AddCheck(ctx context.Context, c *SecretKeyCheck) error
	// DeleteCheck removes the check of keyID, if any.
	DeleteCheck(ctx context.Context, keyID string) error
}

// CheckSecretName validates a secret name.
func CheckSecretName(name string) error {
	if !SecretNameRE.MatchString(name) {
		return fmt.Errorf("secret name %q must be 1-64 letters, digits or '_', not starting with a digit: %w", name, model.ErrInvalidInput)
	}
	return nil
}

// CheckSealedSecret validates what Put writes.
func CheckSealedSecret(s *SealedSecret) error {
	if err := CheckSecretName(s.Name); err != nil {
		return err
	}
	switch {
	case s.OwnerID == "" || len(s.OwnerID) > 255 || !utf8.ValidString(s.OwnerID) || strings.IndexByte(s.OwnerID, 0) >= 0:
		return fmt.Errorf("secret: owner is empty or too long: %w", model.ErrInvalidInput)
	case s.KeyID == "" || len(s.KeyID) > 64:
		return fmt.Errorf("secret: key id is empty or too long: %w", model.ErrInvalidInput)
	case len(s.Nonce) == 0 || len(s.Ciphertext) == 0:
		return fmt.Errorf("secret: not sealed: %w", model.ErrInvalidInput)
	}
	return nil
}
