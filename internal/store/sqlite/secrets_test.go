package sqlite_test

import (
	"bytes"
	"database/sql"
	"errors"
	"testing"

	"github.com/aetherium/aetherium/internal/secrets"
)

// TestSecretRowIsCiphertext reads the raw row: the value is not in it, only a nonce, a ciphertext and the key id;
// and a row copied to another owner does not decrypt there.
func TestSecretRowIsCiphertext(t *testing.T) {
	st, ctx := openStore(t), t.Context()
	key, err := secrets.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := secrets.NewKeyring(key)
	m := secrets.NewManager(st.Secrets(), kr, nil)
	const value = "raw-row-test-value-0123456789"
	if _, _, err := m.Put(ctx, "owner-a", "API_TOKEN", value); err != nil {
		t.Fatal(err)
	}
	// A connection of its own, as anyone reading the file would have.
	db, err := sql.Open("sqlite", st.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var keyID string
	var nonce, ct []byte
	if err := db.QueryRowContext(ctx, "SELECT key_id, nonce, ciphertext FROM secrets WHERE owner_id = 'owner-a' AND name = 'API_TOKEN'").
		Scan(&keyID, &nonce, &ct); err != nil {
		t.Fatal(err)
	}
	if keyID != key.ID() || len(nonce) != 12 || len(ct) != len(value)+16 {
		t.Fatalf("row: key %s, %d-byte nonce, %d-byte ciphertext", keyID, len(nonce), len(ct))
	}
	var dump []byte
	if err := db.QueryRowContext(ctx, "SELECT group_concat(owner_id || name || key_id || hex(nonce) || CAST(ciphertext AS TEXT) || created_at, '|') FROM secrets").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(dump, []byte(value)) || bytes.Contains(ct, []byte(value[:8])) {
		t.Fatal("the stored row holds the value")
	}
	if pt, err := kr.Open(keyID, "owner-a", "API_TOKEN", nonce, ct); err != nil || string(pt) != value {
		t.Fatalf("the row does not open: %q, %v", pt, err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO secrets SELECT 'owner-b', name, key_id, nonce, ciphertext, created_at, updated_at, last_used_at FROM secrets WHERE owner_id = 'owner-a'"); err != nil {
		t.Fatal(err)
	}
	if v, err := m.Secret(ctx, "owner-b", "API_TOKEN"); !errors.Is(err, secrets.ErrOpen) {
		t.Fatalf("a row copied to another owner opened: %q, %v", v, err)
	}
}
