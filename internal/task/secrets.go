package task

import (
	"context"
	"errors"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
)

// WithSecrets gives the service the owners' secrets (nil: the secret calls, and executions asking for secrets,
// answer that secrets are not configured).
func WithSecrets(m *secrets.Manager) Option { return func(s *Service) { s.secrets = m } }

// errNoSecrets is the answer when the server has no secrets key.
func errNoSecrets() error {
	return &UnavailableError{Reason: "secrets are not configured on this server (set secrets_key)",
		Detail: "secrets: no secrets key configured"}
}

// PutSecret creates or replaces the owner's secret; it reports whether it is new. The row returned describes the
// secret; its value is sealed.
func (s *Service) PutSecret(ctx context.Context, ownerID, name, value string) (*store.SealedSecret, bool, error) {
	if err := store.CheckSecretName(name); err != nil {
		return nil, false, invalid("name", "must be 1-64 letters, digits or '_', not starting with a digit (got %q)", name)
	}
	if err := secrets.CheckValue(value); err != nil {
		return nil, false, invalid("value", "%v", err)
	}
	if s.secrets == nil {
		return nil, false, errNoSecrets()
	}
	return s.secrets.Put(ctx, ownerID, name, value)
}

// ListSecrets returns the owner's secrets, by name.
func (s *Service) ListSecrets(ctx context.Context, ownerID string) ([]*store.SealedSecret, error) {
	if s.secrets == nil {
		return nil, errNoSecrets()
	}
	return s.secrets.List(ctx, ownerID)
}

// DeleteSecret deletes the owner's secret.
func (s *Service) DeleteSecret(ctx context.Context, ownerID, name string) error {
	if store.CheckSecretName(name) != nil {
		return model.NotFound("secret", name)
	}
	if s.secrets == nil {
		return errNoSecrets()
	}
	return s.secrets.Delete(ctx, ownerID, name)
}

// checkSecretEnv validates a command's secret_env (var -> secret name) and that the owner has every secret it
// names, now: a missing one is a ValidationError naming it. The worker resolves them again when the command runs.
func (s *Service) checkSecretEnv(ctx context.Context, ownerID, field string, c model.JobCommand) error {
	if len(c.SecretEnv) == 0 {
		return nil
	}
	if len(c.Env)+len(c.SecretEnv) > maxEnv {
		return invalid(field+"secret_env", "env and secret_env have more than %d variables together", maxEnv)
	}
	for v, name := range c.SecretEnv {
		if !envKeyRE.MatchString(v) {
			return invalid(field+"secret_env", "name %q is not a valid environment variable name", v)
		}
		if _, dup := c.Env[v]; dup {
			return invalid(field+"secret_env", "%s is set in both env and secret_env", v)
		}
		if store.CheckSecretName(name) != nil {
			return invalid(field+"secret_env", "%s: %q is not a secret name", v, name)
		}
	}
	if s.secrets == nil {
		return errNoSecrets()
	}
	err := s.secrets.Missing(ctx, ownerID, c.SecretEnv)
	var me *secrets.MissingError
	if errors.As(err, &me) {
		return invalid(field+"secret_env", "%s: secret %q does not exist (create it with PUT /api/v1/secrets/%s)", me.Var, me.Name, me.Name)
	}
	return err
}
