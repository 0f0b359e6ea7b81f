package secrets

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// MaxValueBytes bounds a secret's value.
const MaxValueBytes = 64 << 10

// keyCheckText is what a key check seals; keyCheckOwner is its additional data's owner, which no API owner can be
// (owners are uuids or key prefixes, never empty).
const (
	keyCheckText  = "aetherium secrets key check v1"
	keyCheckOwner = ""
)

// ErrWrongKey is returned (wrapped) by Verify when the configured keys cannot open what the database holds.
var ErrWrongKey = errors.New("wrong secrets key")

// Manager keeps owners' secrets in a store.SecretStore, sealed under a Keyring.
type Manager struct {
	st  store.SecretStore
	kr  *Keyring
	log *slog.Logger
}

// NewManager returns a Manager. log may be nil.
func NewManager(st store.SecretStore, kr *Keyring, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.Default()
	}
	return &Manager{st: st, kr: kr, log: log}
}

// Keyring is the manager's keyring.
func (m *Manager) Keyring() *Keyring { return m.kr }

// Verify checks, at start-up, that the keyring fits the database: every sealed secret's key is configured, every
// key the database has been used with is configured (so a gateway and a worker given different keys cannot both
// run), and the key checks of the configured keys open. It records a key check of the current key, then looks
// again, so that two servers starting at once on a new database with different keys do not both pass. It never
// opens an owner's secret.
func (m *Manager) Verify(ctx context.Context) error {
	had, err := m.verify(ctx)
	if err != nil {
		return err
	}
	if had {
		return nil
	}
	if err := m.addCheck(ctx); err != nil {
		return err
	}
	if _, err := m.verify(ctx); err != nil {
		// Another server started meanwhile with another key: take back this key's check (nothing is sealed under
		// it yet), so that the database is left as it was and the right key can start.
		if derr := m.st.DeleteCheck(ctx, m.kr.CurrentID()); derr != nil {
			m.log.Warn("could not remove the key check of a refused key", "key_id", m.kr.CurrentID(), "err", derr)
		}
		return err
	}
	return nil
}

// Check is Verify without writing anything: what `aetherium doctor` runs.
func (m *Manager) Check(ctx context.Context) error {
	_, err := m.verify(ctx)
	return err
}

// verify is Verify's check; it reports whether the current key has its key check already.
func (m *Manager) verify(ctx context.Context) (haveCurrent bool, err error) {
	checks, err := m.st.Checks(ctx)
	if err != nil {
		return false, fmt.Errorf("secrets key check: %w", err)
	}
	counts, err := m.st.KeyIDs(ctx)
	if err != nil {
		return false, fmt.Errorf("secrets key check: %w", err)
	}
	cur := m.kr.CurrentID()
	var unknownChecks []string
	for _, c := range checks {
		if !m.kr.Has(c.KeyID) {
			unknownChecks = append(unknownChecks, c.KeyID)
			continue
		}
		haveCurrent = haveCurrent || c.KeyID == cur
		pt, err := m.kr.Open(c.KeyID, keyCheckOwner, "key-check:"+c.KeyID, c.Nonce, c.Ciphertext)
		if err != nil || string(pt) != keyCheckText {
			return false, fmt.Errorf("%w: the key check of key %s does not open with the configured key of that id; the "+
				"database or the key file is damaged", ErrWrongKey, c.KeyID)
		}
	}
	var unknown []string
	for id, n := range counts {
		if !m.kr.Has(id) {
			unknown = append(unknown, fmt.Sprintf("%d under key %s", n, id))
		}
	}
	slices.Sort(unknown)
	switch {
	case len(unknown) > 0:
		return false, fmt.Errorf("%w: the database holds secrets sealed under keys that are not configured (%s); the "+
			"configured key is %s. Configure the key they were sealed with (secrets_key, secrets_key_file, or "+
			"secrets-key in the data directory), adding it to secrets_old_keys during a rotation",
			ErrWrongKey, strings.Join(unknown, ", "), cur)
	case len(unknownChecks) > 0:
		return false, fmt.Errorf("%w: this database is used with secrets key %s, the configured key is %s. Every "+
			"gateway and worker needs the same secrets_key; during a rotation, list the other key in "+
			"secrets_old_keys (see `aetherium secret rotate-key`)", ErrWrongKey, strings.Join(unknownChecks, ", "), cur)
	}
	return haveCurrent, nil
}

func (m *Manager) addCheck(ctx context.Context) error {
	cur := m.kr.CurrentID()
	_, nonce, ct, err := m.kr.Seal(keyCheckOwner, "key-check:"+cur, []byte(keyCheckText))
	if err != nil {
		return err
	}
	if err := m.st.AddCheck(ctx, &store.SecretKeyCheck{KeyID: cur, Nonce: nonce, Ciphertext: ct}); err != nil {
		return fmt.Errorf("secrets key check: %w", err)
	}
	return nil
}

// CheckValue validates a secret value: 1 to MaxValueBytes bytes without NUL (values go into environments).
func CheckValue(v string) error {
	switch {
	case v == "":
		return errors.New("must not be empty")
	case len(v) > MaxValueBytes:
		return fmt.Errorf("must be at most %d bytes", MaxValueBytes)
	case strings.IndexByte(v, 0) >= 0:
		return errors.New("must not contain NUL bytes (values are put in environment variables)")
	}
	return nil
}

// Put seals value and stores it as the owner's secret name; the returned row describes it (sealed, no value).
func (m *Manager) Put(ctx context.Context, ownerID, name, value string) (*store.SealedSecret, bool, error) {
	if err := store.CheckSecretName(name); err != nil {
		return nil, false, err
	}
	if err := CheckValue(value); err != nil {
		return nil, false, fmt.Errorf("secret %q: value %v: %w", name, err, model.ErrInvalidInput)
	}
	keyID, nonce, ct, err := m.kr.Seal(ownerID, name, []byte(value))
	if err != nil {
		return nil, false, err
	}
	x := &store.SealedSecret{OwnerID: ownerID, Name: name, KeyID: keyID, Nonce: nonce, Ciphertext: ct}
	created, err := m.st.Put(ctx, x)
	if err != nil {
		return nil, false, err
	}
	return x, created, nil
}

// List returns the owner's secrets, sealed.
func (m *Manager) List(ctx context.Context, ownerID string) ([]*store.SealedSecret, error) {
	return m.st.List(ctx, ownerID)
}

// Delete deletes the owner's secret.
func (m *Manager) Delete(ctx context.Context, ownerID, name string) error {
	return m.st.Delete(ctx, ownerID, name)
}

// MissingError names a secret an execution asks for that the owner does not have.
type MissingError struct {
	Name string
	Var  string // the environment variable that asked for it
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("secret %q (for %s) does not exist", e.Name, e.Var)
}

func (e *MissingError) Unwrap() error { return model.ErrNotFound }

// Missing returns a *MissingError for the first variable of env (var -> secret name, in variable order) whose
// secret the owner does not have, or nil.
func (m *Manager) Missing(ctx context.Context, ownerID string, env map[string]string) error {
	for _, v := range sortedKeys(env) {
		if _, err := m.st.Get(ctx, ownerID, env[v]); err != nil {
			if errors.Is(err, model.ErrNotFound) {
				return &MissingError{Name: env[v], Var: v}
			}
			return err
		}
	}
	return nil
}

// Resolved is what a worker needs to run an execution with secrets: the environment to add (var -> value) and a
// scrubber of every value of the owner's it could open (the ones injected first of all).
type Resolved struct {
	Env      map[string]string
	Scrubber *Scrubber
}

// Resolve opens the secrets env names (var -> secret name) for a run, records their use, and builds a scrubber of
// all of the owner's secrets. A missing secret is a *MissingError; one that does not open is an error naming it.
// extra values (credential-like plain env values) are scrubbed too.
func (m *Manager) Resolve(ctx context.Context, ownerID string, env map[string]string, extra ...string) (*Resolved, error) {
	all, err := m.st.List(ctx, ownerID)
	if err != nil {
		return nil, fmt.Errorf("read secrets: %w", err)
	}
	byName := make(map[string]*store.SealedSecret, len(all))
	for _, x := range all {
		byName[x.Name] = x
	}
	res := &Resolved{Env: make(map[string]string, len(env))}
	values := slices.Clone(extra)
	used := map[string]bool{}
	for _, v := range sortedKeys(env) {
		name := env[v]
		x, ok := byName[name]
		if !ok {
			return nil, &MissingError{Name: name, Var: v}
		}
		pt, err := m.kr.Open(x.KeyID, x.OwnerID, x.Name, x.Nonce, x.Ciphertext)
		if err != nil {
			return nil, fmt.Errorf("for %s: %w", v, err)
		}
		res.Env[v] = string(pt)
		values = append(values, string(pt))
		used[name] = true
	}
	for _, x := range all {
		if used[x.Name] {
			continue
		}
		pt, err := m.kr.Open(x.KeyID, x.OwnerID, x.Name, x.Nonce, x.Ciphertext)
		if err != nil {
			m.log.Warn("a secret does not open; it is not scrubbed from output", "owner_id", ownerID, "secret", x.Name, "err", err)
			continue
		}
		values = append(values, string(pt))
	}
	now := time.Now()
	for name := range used {
		if err := m.st.TouchLastUsed(ctx, ownerID, name, now); err != nil && !errors.Is(err, model.ErrNotFound) {
			m.log.Warn("could not record the use of a secret", "owner_id", ownerID, "secret", name, "err", err)
		}
	}
	res.Scrubber = NewScrubber(values...)
	return res, nil
}

// Secret returns the value of the owner's secret name, recording its use: the source of internal users of
// secrets (the credential proxy). A missing secret wraps model.ErrNotFound.
func (m *Manager) Secret(ctx context.Context, ownerID, name string) (string, error) {
	x, err := m.st.Get(ctx, ownerID, name)
	if err != nil {
		return "", err
	}
	pt, err := m.kr.Open(x.KeyID, x.OwnerID, x.Name, x.Nonce, x.Ciphertext)
	if err != nil {
		return "", err
	}
	if err := m.st.TouchLastUsed(ctx, ownerID, name, time.Now()); err != nil && !errors.Is(err, model.ErrNotFound) {
		m.log.Warn("could not record the use of a secret", "owner_id", ownerID, "secret", name, "err", err)
	}
	return string(pt), nil
}

// rotateBatch is how many secrets Rotate reads at a time.
const rotateBatch = 100

// Rotate re-seals every secret that is not sealed under the current key, opening it with the keyring's other keys,
// then forgets the key checks of keys that seal nothing any more (so a server started with a retired key fails at
// start-up instead of sealing new secrets under it). It returns how many secrets it re-sealed. A secret written
// meanwhile by a server is sealed again on the next pass if it needs to be.
func (m *Manager) Rotate(ctx context.Context) (int, error) {
	if err := m.addCheck(ctx); err != nil {
		return 0, err
	}
	cur := m.kr.CurrentID()
	n := 0
	tried := map[string]bool{}
	for {
		batch, err := m.st.NotSealedWith(ctx, cur, rotateBatch)
		if err != nil {
			return n, fmt.Errorf("rotate secrets: %w", err)
		}
		if len(batch) == 0 {
			break
		}
		progress := false
		for _, x := range batch {
			id := x.OwnerID + "\x00" + x.Name + "\x00" + string(x.Nonce)
			if tried[id] {
				continue
			}
			tried[id], progress = true, true
			pt, err := m.kr.Open(x.KeyID, x.OwnerID, x.Name, x.Nonce, x.Ciphertext)
			if err != nil {
				return n, fmt.Errorf("rotate secrets: owner %s: %w (add its key to secrets_old_keys)", x.OwnerID, err)
			}
			keyID, nonce, ct, err := m.kr.Seal(x.OwnerID, x.Name, pt)
			if err != nil {
				return n, err
			}
			old := x.Nonce
			x.KeyID, x.Nonce, x.Ciphertext = keyID, nonce, ct
			switch err := m.st.Reseal(ctx, x, old); {
			case errors.Is(err, model.ErrConflict):
				// Written or deleted meanwhile; the next pass sees its new row.
			case err != nil:
				return n, fmt.Errorf("rotate secrets: %w", err)
			default:
				n++
			}
		}
		if !progress {
			return n, fmt.Errorf("rotate secrets: %d secrets keep being written under another key than %s; "+
				"restart every gateway and worker with the new key and run rotate-key again", len(batch), cur)
		}
	}
	counts, err := m.st.KeyIDs(ctx)
	if err != nil {
		return n, fmt.Errorf("rotate secrets: %w", err)
	}
	checks, err := m.st.Checks(ctx)
	if err != nil {
		return n, fmt.Errorf("rotate secrets: %w", err)
	}
	for _, c := range checks {
		if c.KeyID != cur && counts[c.KeyID] == 0 {
			if err := m.st.DeleteCheck(ctx, c.KeyID); err != nil {
				return n, fmt.Errorf("rotate secrets: %w", err)
			}
		}
	}
	return n, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
