package store

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/model"
)

// MaxIdempotencyKey is the longest Idempotency-Key accepted, in bytes.
const MaxIdempotencyKey = 255

// IdempotencyRecord is what the API keeps of a mutating request sent with an Idempotency-Key: who sent it, what
// it was (a fingerprint of method, path and body) and, once it has one, its answer. Keys are per owner.
type IdempotencyRecord struct {
	OwnerID     string
	Key         string
	Fingerprint string
	CreatedAt   time.Time
	ExpiresAt   time.Time
	// Done is set once an answer is stored; until then the request is in progress.
	Done   bool
	Status int
	// Header holds the answer's headers worth replaying (Content-Type, Location).
	Header map[string]string
	Body   []byte
}

// IdempotencyStore keeps IdempotencyRecords. Begin is the lock: of concurrent Begins of one (owner, key), also
// between processes sharing the database, exactly one claims it.
type IdempotencyStore interface {
	// Begin claims rec.OwnerID/rec.Key for a request: it inserts rec (in progress) and returns nil, nil when the key
	// is unused, or in use by a record that has expired (ExpiresAt <= rec.CreatedAt) or has been in progress since
	// before staleBefore (its request was lost with its process), which rec then replaces. Otherwise it changes
	// nothing and returns the existing record (in progress, or done with its answer); the caller compares
	// fingerprints. Bad fields are an error wrapping model.ErrInvalidInput.
	Begin(ctx context.Context, rec *IdempotencyRecord, staleBefore time.Time) (*IdempotencyRecord, error)
	// Complete stores the answer of a claimed key (rec's Status, Header and Body) and marks it done. Completing a
	// done record replaces its answer. A missing record is an error wrapping model.ErrNotFound.
	Complete(ctx context.Context, rec *IdempotencyRecord) error
	// Release forgets a claim that has no answer (its request failed with a 5xx, or never finished), so a retry
	// runs the request again. A done record, or none, is left alone.
	Release(ctx context.Context, ownerID, key string) error
	// Purge deletes the records that expired at or before before and returns how many.
	Purge(ctx context.Context, before time.Time) (int, error)
}

// CheckIdempotencyKey validates a key for Begin: 1 to MaxIdempotencyKey bytes of printable ASCII.
func CheckIdempotencyKey(key string) error {
	if key == "" || len(key) > MaxIdempotencyKey {
		return fmt.Errorf("idempotency key must be 1 to %d characters: %w", MaxIdempotencyKey, model.ErrInvalidInput)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return fmt.Errorf("idempotency key must be printable ASCII: %w", model.ErrInvalidInput)
		}
	}
	return nil
}

// CheckIdempotencyRecord validates what Begin inserts.
func CheckIdempotencyRecord(rec *IdempotencyRecord) error {
	if err := CheckIdempotencyKey(rec.Key); err != nil {
		return err
	}
	switch {
	case rec.OwnerID == "" || !utf8.ValidString(rec.OwnerID) || strings.IndexByte(rec.OwnerID, 0) >= 0:
		return fmt.Errorf("idempotency record: owner is empty or not text: %w", model.ErrInvalidInput)
	case rec.Fingerprint == "" || !utf8.ValidString(rec.Fingerprint) || strings.IndexByte(rec.Fingerprint, 0) >= 0:
		return fmt.Errorf("idempotency record: fingerprint is empty or not text: %w", model.ErrInvalidInput)
	case rec.CreatedAt.IsZero() || !rec.ExpiresAt.After(rec.CreatedAt):
		return fmt.Errorf("idempotency record: expiry must follow creation: %w", model.ErrInvalidInput)
	}
	return nil
}
