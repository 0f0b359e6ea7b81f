package postgres_test

import (
	"bytes"
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
	var keyID string
	var nonce, ct, dump []byte
	if err := st.Pool().QueryRow(ctx, "SELECT key_id, nonce, ciphertext FROM secrets WHERE owner_id = 'owner-a' AND name = 'API_TOKEN'").
		Scan(&keyID, &nonce, &ct); err != nil {
		t.Fatal(err)
	}
	if keyID != key.ID() || len(nonce) != 12 || len(ct) != len(value)+16 {
		t.Fatalf("row: key %s, %d-byte nonce, %d-byte ciphertext", keyID, len(nonce), len(ct))
	}
	if err := st.Pool().QueryRow(ctx, "SELECT convert_to(string_agg(s::text, '|'), 'UTF8') FROM secrets s").Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(dump, []byte(value)) || bytes.Contains(ct, []byte(value[:8])) {
		t.Fatal("the stored row holds the value")
	}
	if pt, err := kr.Open(keyID, "owner-a", "API_TOKEN", nonce, ct); err != nil || string(pt) != value {
		t.Fatalf("the row does not open: %q, %v", pt, err)
	}
	if _, err := st.Pool().Exec(ctx, "INSERT INTO secrets SELECT 'owner-b', name, key_id, nonce, ciphertext, created_at, updated_at, last_used_at FROM secrets WHERE owner_id = 'owner-a'"); err != nil {
		t.Fatal(err)
	}
	if v, err := m.Secret(ctx, "owner-b", "API_TOKEN"); !errors.Is(err, secrets.ErrOpen) {
		t.Fatalf("a row copied to another owner opened: %q, %v", v, err)
	}
}
