package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/server"
)

// addSecretAdmin mounts the server-side secret commands (rotate-key) under the client's `secret` command.
func addSecretAdmin(cmds []*cobra.Command) {
	for _, c := range cmds {
		if c.Name() == "secret" {
			c.AddCommand(rotateKeyCommand())
		}
	}
}

func rotateKeyCommand() *cobra.Command {
	var newKeyFile string
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Re-encrypt every stored secret under a new secrets key, directly in the configured store",
		Long: `Re-encrypt every stored secret under one key, reading the others with the configured keys (secrets_key or
secrets_key_file, else secrets-key in the data directory, and secrets_old_keys). It works on the database, like
apikey, not through the API.

With --new-key-file PATH, a new key is generated into PATH (mode 0600; an existing file is used as it is, so an
interrupted rotation can be run again) and everything is sealed under it; then give that key to every gateway
and worker (or move it over <data_dir>/secrets-key for serve) and restart them. Stop serve first: until it
restarts with the new key it cannot open the re-sealed secrets.

Without --new-key-file, everything is sealed under the configured secrets_key: the last step of a rotation
without downtime, once every server runs with secrets_key set to the new key and secrets_old_keys to the old
one (see docs/api.md, "Rotating the secrets key").`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			st, err := server.OpenStore(ctx, cfg, cfg.AutoMigrate)
			if err != nil {
				return err
			}
			defer st.Close()
			id, n, err := server.RotateSecrets(ctx, cfg, st, newKeyFile, log)
			if err != nil && n > 0 {
				return fmt.Errorf("rotate-key: %w (%d secrets re-encrypted before the failure; run it again)", err, n)
			}
			if err != nil {
				return fmt.Errorf("rotate-key: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "re-encrypted %d secrets; every secret is now sealed under key %s\n", n, id)
			if newKeyFile != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "next: run every gateway and worker with secrets_key_file=%s (or "+
					"%s set to its content; for serve, move it over %s/%s) and restart them\n",
					newKeyFile, config.EnvName("secrets_key"), cfg.DataDir, server.SecretsKeyFile)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&newKeyFile, "new-key-file", "", "generate the new key into this file (or use the key it holds) and seal everything under it")
	config.Flags(cmd.Flags())
	return cmd
}
