package store

import (
	"context"
	"time"
)

// SigningKey is a key that signs the API's JWTs (internal/auth). Private is sealed by the secrets keyring when the
// gateways have one (SealKeyID names the keyring key, Nonce its nonce), or kept as is when SealKeyID is empty.
type SigningKey struct {
	ID        string // the JWT "kid"
	Algorithm string // "EdDSA"
	Public    []byte
	Private   []byte
	SealKeyID string
	Nonce     []byte
	CreatedAt time.Time
}

// SigningKeyStore keeps the JWT signing keys, shared by every gateway.
type SigningKeyStore interface {
	// Create inserts the key; a duplicate ID returns an error wrapping model.ErrConflict.
	Create(ctx context.Context, k *SigningKey) error
	// List returns every key, newest first.
	List(ctx context.Context) ([]*SigningKey, error)
	// DeleteOlder deletes the keys created before t, but never the newest one; it returns how many.
	DeleteOlder(ctx context.Context, t time.Time) (int64, error)
}

// AuditEntry is one audited call: who made it, what it was and how it ended. Never a body or a secret.
type AuditEntry struct {
	// Seq orders the entries (assigned by Append); the list's cursor.
	Seq       int64
	At        time.Time
	KeyID     string
	OwnerID   string
	Role      string
	Method    string
	Route     string            // the route pattern, e.g. /api/v1/vms/{id}
	Params    map[string]string // the route's URL parameters, e.g. id
	Status    int
	Source    string // the source address
	RequestID string
}

// AuditFilter selects audit entries; zero fields select everything.
type AuditFilter struct {
	KeyID, OwnerID, Method string
	Status                 int
	Since, Until           time.Time // Since inclusive, Until exclusive
	// Before returns only entries with Seq < Before (the cursor of the previous page); 0: from the newest.
	Before int64
	// Limit bounds the answer (0: 100; at most 1000).
	Limit int
}

// AuditStore keeps the audit log.
type AuditStore interface {
	// Append stores the entries in one write, filling Seq.
	Append(ctx context.Context, entries []*AuditEntry) error
	// List returns the entries that match f, newest first.
	List(ctx context.Context, f AuditFilter) ([]*AuditEntry, error)
	// Prune deletes the entries older than before; it returns how many.
	Prune(ctx context.Context, before time.Time) (int64, error)
}

// AuditLimit is the limit of AuditFilter: the default for 0 and the bound for larger ones.
func AuditLimit(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > 1000:
		return 1000
	}
	return n
}
