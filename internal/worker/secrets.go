package worker

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
)

// resolveSecrets returns the environment to run e with (its env plus the values of its secret_env) and a scrubber
// of the values the output must not show: all of the owner's secrets and e's own credential-like env values. The
// values live only in memory for the run: the execution row keeps the names. reason, when not empty, is why e
// cannot run (a secret was deleted since the request, or does not open); err is a failure worth a retry.
func (w *Worker) resolveSecrets(ctx context.Context, e *model.Execution) (env map[string]string, scrub *secrets.Scrubber, reason string, err error) {
	creds := secrets.CredentialValues(e.Env)
	if w.cfg.Secrets == nil {
		if len(e.SecretEnv) > 0 {
			return nil, nil, "not run: this worker has no secrets key (secrets_key), so it cannot inject secret_env", nil
		}
		return e.Env, secrets.NewScrubber(creds...), "", nil
	}
	res, err := w.cfg.Secrets.Resolve(ctx, e.OwnerID, e.SecretEnv, creds...)
	var missing *secrets.MissingError
	switch {
	case errors.As(err, &missing):
		return nil, nil, "not run: " + missing.Error(), nil
	case errors.Is(err, secrets.ErrOpen), errors.Is(err, secrets.ErrUnknownKey):
		return nil, nil, fmt.Sprintf("not run: %v (is this worker's secrets_key the gateway's?)", err), nil
	case err != nil:
		return nil, nil, "", fmt.Errorf("resolve secrets: %w", err)
	}
	if len(res.Env) == 0 {
		return e.Env, res.Scrubber, "", nil
	}
	env = maps.Clone(e.Env)
	if env == nil {
		env = make(map[string]string, len(res.Env))
	}
	maps.Copy(env, res.Env)
	return env, res.Scrubber, "", nil
}
