// Package secrets keeps owners' secrets: values encrypted at rest with AES-256-GCM under a keyring (key.go,
// keyring.go), the rules of what a secret may be and who sees it (manager.go: no caller ever gets a value back but the
// worker that injects it into an execution), and the scrubbing of values out of command output and errors
// (scrub.go).
//
// A row holds the id of the key that sealed it, so keys can be rotated: the keyring opens rows of its current key
// and of the older keys it is given, and Manager.Rotate re-seals every row under the current key. The owner and name
// are the additional data of the seal, so a row copied to another owner or name does not open.
package secrets

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the size of a secrets key: AES-256.
const KeySize = 32

// Key is one AES-256 key and its id.
type Key struct {
	id  string
	raw []byte
}

// ID names the key in the rows it seals: the first 8 bytes of the SHA-256 of the key, in hex. It reveals nothing
// usable about the key, and two different keys have different ids (but for a 2^-64 accident).
func (k Key) ID() string { return k.id }

// IsZero reports whether k is no key.
func (k Key) IsZero() bool { return len(k.raw) == 0 }

// Encode returns the key as its configuration value (standard base64).
func (k Key) Encode() string { return base64.StdEncoding.EncodeToString(k.raw) }

func newKey(raw []byte) Key {
	sum := sha256.Sum256(raw)
	return Key{id: hex.EncodeToString(sum[:8]), raw: raw}
}

// GenerateKey returns a new random key.
func GenerateKey() (Key, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return Key{}, fmt.Errorf("generate secrets key: %w", err)
	}
	return newKey(raw), nil
}

// ParseKey reads a key from its configuration value: 32 bytes in base64 (standard or URL alphabet, padded or not).
// The error never quotes the value.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Key{}, errors.New("secrets key is empty")
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		raw, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(raw) != KeySize {
			return Key{}, fmt.Errorf("secrets key must be %d bytes in base64 (e.g. openssl rand -base64 32), it is %d bytes", KeySize, len(raw))
		}
		return newKey(raw), nil
	}
	return Key{}, fmt.Errorf("secrets key is not base64 (make one with openssl rand -base64 32)")
}

// ReadKeyFile reads a key file: the key in base64, surrounding white space ignored. A file that others than its
// owner may read is refused: it would share every secret with them.
func ReadKeyFile(path string) (Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Key{}, fmt.Errorf("secrets key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return Key{}, fmt.Errorf("secrets key file %s is readable by others (mode %04o); chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("secrets key file: %w", err)
	}
	k, err := ParseKey(string(b))
	if err != nil {
		return Key{}, fmt.Errorf("secrets key file %s: %w", path, err)
	}
	return k, nil
}

// WriteKeyFile writes k to a new file at path, mode 0600. An existing file is never replaced: it may be the only
// copy of the key that opens the stored secrets.
func WriteKeyFile(path string, k Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("secrets key file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("secrets key file: %w", err)
	}
	if _, err := f.WriteString(k.Encode() + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write secrets key file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write secrets key file: %w", err)
	}
	return f.Close()
}

// LoadOrCreateKeyFile reads the key file at path, or creates it with a new key when it does not exist (what serve
// does in its data directory on first start). created says which.
func LoadOrCreateKeyFile(path string) (k Key, created bool, err error) {
	k, err = ReadKeyFile(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, false, err
	}
	if k, err = GenerateKey(); err != nil {
		return Key{}, false, err
	}
	if err := WriteKeyFile(path, k); err != nil {
		if errors.Is(err, os.ErrExist) { // created by another process meanwhile
			k, err = ReadKeyFile(path)
			return k, false, err
		}
		return Key{}, false, err
	}
	return k, true, nil
}
