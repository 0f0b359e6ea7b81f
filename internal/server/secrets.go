package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
)

// SecretsKeyFile is the name, in the data directory, of the secrets key that serve creates on first start (mode
// 0600), as it does the admin key.
const SecretsKeyFile = "secrets-key"

// SecretsKey returns the configured secrets key and the older keys still accepted: secrets_key, else
// secrets_key_file, else <data_dir>/secrets-key (created when create is set, as serve does; otherwise a missing
// file is no key). A key that cannot be read or parsed is an error; no key at all is a zero Key.
func SecretsKey(cfg config.Config, create bool, log *slog.Logger) (secrets.Key, []secrets.Key, error) {
	var (
		key secrets.Key
		err error
	)
	switch {
	case cfg.SecretsKey != "":
		if key, err = secrets.ParseKey(cfg.SecretsKey); err != nil {
			return key, nil, fmt.Errorf("secrets_key (%s): %w", config.EnvName("secrets_key"), err)
		}
	case cfg.SecretsKeyFile != "":
		if key, err = secrets.ReadKeyFile(cfg.SecretsKeyFile); err != nil {
			return key, nil, fmt.Errorf("secrets_key_file: %w", err)
		}
	default:
		path := filepath.Join(cfg.DataDir, SecretsKeyFile)
		if create {
			var created bool
			if key, created, err = secrets.LoadOrCreateKeyFile(path); err != nil {
				return key, nil, err
			}
			if created && log != nil {
				log.Info("created the secrets key; back it up: the secrets stored under it cannot be read without it",
					"path", path, "key_id", key.ID())
			}
		} else if key, err = secrets.ReadKeyFile(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return key, nil, err
		}
	}
	var old []secrets.Key
	for i, s := range strings.Split(cfg.SecretsOldKeys, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		k, err := secrets.ParseKey(s)
		if err != nil {
			return key, nil, fmt.Errorf("secrets_old_keys, key %d: %w", i+1, err)
		}
		old = append(old, k)
	}
	return key, old, nil
}

// OpenSecrets returns the manager of owners' secrets under the configured key, after checking at start-up that the
// key fits the database (secrets.Manager.Verify): a wrong key is an error here, never a silent fallback. With no key
// configured it returns nil (the secret routes answer 503, executions with secret_env fail) unless the database
// holds secrets, which is an error too.
func OpenSecrets(ctx context.Context, cfg config.Config, st store.Store, create bool, log *slog.Logger) (*secrets.Manager, error) {
	key, old, err := SecretsKey(cfg, create, log)
	if err != nil {
		return nil, err
	}
	if key.IsZero() {
		ids, err := st.Secrets().KeyIDs(ctx)
		if err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
		checks, err := st.Secrets().Checks(ctx)
		if err != nil {
			return nil, fmt.Errorf("secrets: %w", err)
		}
		if len(ids) > 0 || len(checks) > 0 {
			var used []string
			for id := range ids {
				used = append(used, id)
			}
			for _, c := range checks {
				if !slices.Contains(used, c.KeyID) {
					used = append(used, c.KeyID)
				}
			}
			slices.Sort(used)
			return nil, fmt.Errorf("secrets: no secrets key is configured, but this database uses key %s: set "+
				"secrets_key (%s) or secrets_key_file to that key, on every gateway and worker",
				strings.Join(used, ", "), config.EnvName("secrets_key"))
		}
		if log != nil {
			log.Warn("no secrets key configured: the secret routes answer 503 and executions with secret_env fail; " +
				"set secrets_key or secrets_key_file (the same on every gateway and worker)")
		}
		return nil, nil
	}
	kr, err := secrets.NewKeyring(key, old...)
	if err != nil {
		return nil, err
	}
	m := secrets.NewManager(st.Secrets(), kr, log)
	if err := m.Verify(ctx); err != nil {
		return nil, fmt.Errorf("secrets: %w", err)
	}
	return m, nil
}

// RotateSecrets re-seals every secret of the configured store under one key, reading the others with the
// configured keys (secrets_key or its file, and secrets_old_keys): under the key in newKeyFile when it is given
// (a new key is generated into it, mode 0600, if the file does not exist; an existing one is used, so a rotation
// that stopped can be run again), else under the configured current key. It returns the id of the key everything
// is now sealed under and how many secrets it re-sealed. Servers must then run with that key: see docs/api.md.
func RotateSecrets(ctx context.Context, cfg config.Config, st store.Store, newKeyFile string, log *slog.Logger) (string, int, error) {
	cur, old, err := SecretsKey(cfg, false, log)
	if err != nil {
		return "", 0, err
	}
	if cur.IsZero() {
		return "", 0, errors.New("no secrets key is configured: set secrets_key, secrets_key_file, or run where " +
			"the data directory holds secrets-key")
	}
	target := cur
	if newKeyFile != "" {
		var created bool
		if target, created, err = secrets.LoadOrCreateKeyFile(newKeyFile); err != nil {
			return "", 0, err
		}
		if created && log != nil {
			log.Info("created the new secrets key", "path", newKeyFile, "key_id", target.ID())
		}
		if target.ID() != cur.ID() {
			old = append([]secrets.Key{cur}, old...)
		}
	}
	kr, err := secrets.NewKeyring(target, old...)
	if err != nil {
		return "", 0, err
	}
	m := secrets.NewManager(st.Secrets(), kr, log)
	if err := m.Verify(ctx); err != nil {
		return "", 0, fmt.Errorf("secrets: %w", err)
	}
	n, err := m.Rotate(ctx)
	return target.ID(), n, err
}

// checkSecretsKey is doctor's check of the secrets key: the one start-up would use, checked against the database
// without writing to it.
func checkSecretsKey(ctx context.Context, cfg config.Config, roles Roles) Check {
	const name = "secrets key"
	fix := "set secrets_key or secrets_key_file to the key this database uses, the same on every gateway and worker (docs/api.md)"
	key, old, err := SecretsKey(cfg, false, nil)
	if err != nil {
		return Check{Name: name, Status: CheckFail, Detail: err.Error(), Fix: fix}
	}
	st, err := OpenStore(ctx, cfg, false)
	if err != nil {
		return Check{Name: name, Status: CheckFail, Detail: err.Error(), Fix: fix}
	}
	defer st.Close()
	unread := func(err error) Check {
		// Most likely a database that is not migrated yet (serve and gateway migrate at start).
		return Check{Name: name, Status: CheckWarn, Detail: "could not read the secrets tables: " + err.Error(), Fix: "aetherium migrate"}
	}
	if key.IsZero() {
		ids, err := st.Secrets().KeyIDs(ctx)
		if err != nil {
			return unread(err)
		}
		if len(ids) > 0 {
			return Check{Name: name, Status: CheckFail, Detail: "no secrets key is configured, but the database holds secrets", Fix: fix}
		}
		if roles.API && roles.Worker { // serve
			return Check{Name: name, Status: CheckOK, Detail: "serve creates " + filepath.Join(cfg.DataDir, SecretsKeyFile) + " on first start"}
		}
		return Check{Name: name, Status: CheckWarn, Detail: "none configured: the secret routes answer 503 and executions with secret_env fail", Fix: fix}
	}
	kr, err := secrets.NewKeyring(key, old...)
	if err != nil {
		return Check{Name: name, Status: CheckFail, Detail: err.Error(), Fix: fix}
	}
	switch err := secrets.NewManager(st.Secrets(), kr, nil).Check(ctx); {
	case errors.Is(err, secrets.ErrWrongKey):
		return Check{Name: name, Status: CheckFail, Detail: err.Error(), Fix: fix}
	case err != nil:
		return unread(err)
	}
	return Check{Name: name, Status: CheckOK, Detail: "key " + key.ID()}
}
