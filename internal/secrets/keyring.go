package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// ErrUnknownKey is returned (wrapped) when a row was sealed under a key the keyring does not hold.
var ErrUnknownKey = errors.New("sealed under a secrets key that is not configured")

// ErrOpen is returned (wrapped) when a sealed value does not open: wrong key, altered row, or a row moved to
// another owner or name.
var ErrOpen = errors.New("secret does not decrypt")

// Keyring seals under its current key and opens under any of its keys.
type Keyring struct {
	current string
	aeads   map[string]cipher.AEAD
}

// NewKeyring returns a keyring that seals under current and also opens what older sealed.
func NewKeyring(current Key, older ...Key) (*Keyring, error) {
	if current.IsZero() {
		return nil, errors.New("secrets keyring: no current key")
	}
	kr := &Keyring{current: current.ID(), aeads: map[string]cipher.AEAD{}}
	for _, k := range append([]Key{current}, older...) {
		if k.IsZero() {
			continue
		}
		block, err := aes.NewCipher(k.raw)
		if err != nil {
			return nil, fmt.Errorf("secrets keyring: %w", err)
		}
		aead, err := cipher.NewGCM(block) // 96-bit nonces, 128-bit tags
		if err != nil {
			return nil, fmt.Errorf("secrets keyring: %w", err)
		}
		kr.aeads[k.ID()] = aead
	}
	return kr, nil
}

// CurrentID is the id of the key new seals use.
func (kr *Keyring) CurrentID() string { return kr.current }

// Has reports whether the keyring holds the key with that id.
func (kr *Keyring) Has(id string) bool { _, ok := kr.aeads[id]; return ok }

// IDs returns the ids of the keyring's keys, the current one first.
func (kr *Keyring) IDs() []string {
	ids := []string{kr.current}
	for id := range kr.aeads {
		if id != kr.current {
			ids = append(ids, id)
		}
	}
	return ids
}

// aad binds a sealed value to its owner and name. Lengths are prefixed so that no two (owner, name) pairs give the
// same bytes.
func aad(owner, name string) []byte {
	return fmt.Appendf(nil, "aetherium-secret/v1\x00%d:%s\x00%d:%s", len(owner), owner, len(name), name)
}

// Seal encrypts plaintext for (owner, name) under the current key with a fresh random nonce.
func (kr *Keyring) Seal(owner, name string, plaintext []byte) (keyID string, nonce, ciphertext []byte, err error) {
	aead := kr.aeads[kr.current]
	nonce = make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", nil, nil, fmt.Errorf("seal secret: %w", err)
	}
	return kr.current, nonce, aead.Seal(nil, nonce, plaintext, aad(owner, name)), nil
}

// Open decrypts what Seal returned for (owner, name).
func (kr *Keyring) Open(keyID, owner, name string, nonce, ciphertext []byte) ([]byte, error) {
	aead, ok := kr.aeads[keyID]
	if !ok {
		return nil, fmt.Errorf("secret %q: key %s: %w", name, keyID, ErrUnknownKey)
	}
	if len(nonce) != aead.NonceSize() {
		return nil, fmt.Errorf("secret %q: bad nonce: %w", name, ErrOpen)
	}
	pt, err := aead.Open(nil, nonce, ciphertext, aad(owner, name))
	if err != nil {
		return nil, fmt.Errorf("secret %q under key %s: %w", name, keyID, ErrOpen)
	}
	return pt, nil
}
