package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/server"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// remoteClient returns a client of the API when the command should go through it: a server is named (--server or
// AETHERIUM_SERVER) and an API key is at hand (AETHERIUM_API_KEY or AETHERIUM_API_KEY_FILE), and --local is not
// set. Otherwise nil: the command works on the configured store directly, which is how the first key is made.
func remoteClient(cmd *cobra.Command, local bool, server string) (*client.Client, error) {
	if local {
		return nil, nil
	}
	if server == "" {
		server = os.Getenv(cli.EnvServer)
	}
	key := os.Getenv(cli.EnvAPIKey)
	if key == "" {
		if f := os.Getenv(cli.EnvAPIKeyFile); f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", cli.EnvAPIKeyFile, err)
			}
			key = strings.TrimSpace(string(b))
		}
	}
	if server == "" || key == "" {
		return nil, nil
	}
	return client.New(server, key, client.WithUserAgent("aetherium-cli/"+version))
}

func openStoreFor(cmd *cobra.Command, migrate bool) (store.Store, error) {
	cfg, _, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	return server.OpenStore(cmd.Context(), cfg, migrate && cfg.AutoMigrate)
}

func apikeyCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "apikey", Short: "Manage API keys: through the API (admin key) or directly in the configured store",
		Long: `Manage API keys. With a server (--server or AETHERIUM_SERVER) and an admin key (AETHERIUM_API_KEY or
AETHERIUM_API_KEY_FILE), the commands go through the API (POST/GET/DELETE /api/v1/apikeys). Otherwise, or with
--local, they work on the configured store directly, which works before any server runs (the first key).`}
	var name, owner, role, serverURL string
	var scopes []string
	var admin, local bool
	var expiresIn time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an API key and print it (it is shown only once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return errors.New("--name is required")
			}
			if admin {
				role = model.RoleAdmin
			}
			if role == "" {
				role = model.RoleUser
			}
			if !auth.ValidRole(role) {
				return fmt.Errorf("--role %q is not admin or user", role)
			}
			if err := auth.CheckScopes(role, scopes); err != nil {
				return fmt.Errorf("--scope: %w", err)
			}
			var exp *time.Time
			if expiresIn < 0 {
				return errors.New("--expires-in must be positive")
			}
			if expiresIn > 0 {
				t := time.Now().Add(expiresIn).UTC()
				exp = &t
			}
			c, err := remoteClient(cmd, local, serverURL)
			if err != nil {
				return err
			}
			if c != nil {
				k, err := c.CreateAPIKey(cmd.Context(), client.CreateAPIKeyRequest{Name: name, Role: role, Scopes: scopes,
					ExpiresAt: exp, Owner: owner})
				if err != nil {
					return err
				}
				printCreated(cmd, k.Prefix, k.OwnerID, k.Key)
				return nil
			}
			st, err := openStoreFor(cmd, true)
			if err != nil {
				return err
			}
			defer st.Close()
			plain, key, err := auth.NewKeyWithRole(owner, name, role, scopes, exp)
			if err != nil {
				return err
			}
			if err := st.APIKeys().Create(cmd.Context(), key); err != nil {
				return fmt.Errorf("store api key: %w", err)
			}
			printCreated(cmd, key.Prefix, key.OwnerID, plain)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "a name for the key (required)")
	create.Flags().StringVar(&owner, "owner", "", "owner id to share resources with (default: a new owner)")
	create.Flags().StringVar(&role, "role", "", "admin or user (default user)")
	create.Flags().BoolVar(&admin, "admin", false, "the same as --role admin")
	create.Flags().StringSliceVar(&scopes, "scope", nil, "a scope the key may use (repeat; default: every scope of its role): "+strings.Join(auth.AllScopes, ", "))
	create.Flags().DurationVar(&expiresIn, "expires-in", 0, "the key expires after this long (default: never)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List API keys (prefixes only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := remoteClient(cmd, local, serverURL)
			if err != nil {
				return err
			}
			var keys []client.APIKey
			if c != nil {
				l, err := c.ListAPIKeys(cmd.Context())
				if err != nil {
					return err
				}
				keys = l.APIKeys
			} else {
				st, err := openStoreFor(cmd, false)
				if err != nil {
					return err
				}
				defer st.Close()
				list, err := st.APIKeys().List(cmd.Context())
				if err != nil {
					return err
				}
				for _, k := range list {
					keys = append(keys, client.APIKey{ID: k.ID, Prefix: k.Prefix, Name: k.Name, OwnerID: k.OwnerID,
						Role: k.Role, Scopes: k.Scopes, CreatedAt: k.CreatedAt, ExpiresAt: k.ExpiresAt,
						LastUsedAt: k.LastUsedAt, RevokedAt: k.RevokedAt})
				}
			}
			return printKeys(cmd.OutOrStdout(), keys)
		},
	}

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API key (and the tokens issued for it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := remoteClient(cmd, local, serverURL)
			if err != nil {
				return err
			}
			if c != nil {
				if err := c.RevokeAPIKey(cmd.Context(), args[0]); err != nil {
					return fmt.Errorf("revoke %s: %w", args[0], err)
				}
			} else {
				st, err := openStoreFor(cmd, false)
				if err != nil {
					return err
				}
				defer st.Close()
				if err := st.APIKeys().Revoke(cmd.Context(), args[0], time.Now().UTC()); err != nil {
					return fmt.Errorf("revoke %s: %w", args[0], err)
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), "revoked", args[0])
			return nil
		},
	}
	for _, c := range []*cobra.Command{create, list, revoke} {
		c.Flags().BoolVar(&local, "local", false, "work on the configured store directly, even when a server and key are set")
		c.Flags().StringVar(&serverURL, "server", "", "the API server (default "+cli.EnvServer+"; with a key, the command goes through the API)")
		config.Flags(c.Flags())
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}

func printCreated(cmd *cobra.Command, prefix, owner, plain string) {
	fmt.Fprintln(cmd.ErrOrStderr(), "created key", prefix, "for owner", owner, "(it is not shown again):")
	fmt.Fprintln(cmd.OutOrStdout(), plain)
}

func printKeys(out io.Writer, keys []client.APIKey) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPREFIX\tNAME\tOWNER\tROLE\tSCOPES\tCREATED\tEXPIRES\tLAST USED\tREVOKED")
	when := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.Format(time.RFC3339)
	}
	for _, k := range keys {
		sc := strings.Join(k.Scopes, ",")
		if sc == "" {
			sc = "(role)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Prefix, k.Name, k.OwnerID, k.Role, sc,
			k.CreatedAt.Format(time.RFC3339), when(k.ExpiresAt), when(k.LastUsedAt), when(k.RevokedAt))
	}
	return tw.Flush()
}

// authCommand holds the token commands: token and audit go through the API, rotate-signing-key works on the store.
func authCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "auth", Short: "Tokens, the audit log and the JWT signing keys"}
	rotate := &cobra.Command{
		Use:   "rotate-signing-key",
		Short: "Make a new JWT signing key, current from now on, directly in the configured store",
		Long: `Make a new signing key for the API's JWTs (POST /api/v1/auth/token). Every gateway signs with it within a
minute; tokens signed by the older keys stay valid until they expire, and keys no token can need any more are
deleted. Its private half is sealed by the secrets keyring when one is configured. Gateways also rotate on their
own every jwt_rotate_every (default 30 days).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			st, err := server.OpenStore(ctx, cfg, cfg.AutoMigrate)
			if err != nil {
				return err
			}
			defer st.Close()
			var sealer auth.Sealer
			sm, err := server.OpenSecrets(ctx, cfg, st, false, log)
			if err != nil {
				return err
			}
			if sm != nil {
				sealer = sm.Keyring()
			}
			kid, err := auth.NewJWT(st.SigningKeys(), sealer, auth.JWTConfig{Issuer: cfg.JWTIssuer,
				Audience: cfg.JWTAudience, RotateEvery: cfg.JWTRotateEvery}).Rotate(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "new signing key", kid)
			return nil
		},
	}
	config.Flags(rotate.Flags())

	var scopes []string
	var expiresIn time.Duration
	var serverURL string
	token := &cobra.Command{
		Use:   "token",
		Short: "Exchange the API key (AETHERIUM_API_KEY) for a short-lived JWT and print it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := remoteClient(cmd, false, serverURL)
			if err != nil {
				return err
			}
			if c == nil {
				return errors.New("a server (--server or " + cli.EnvServer + ") and an API key (" + cli.EnvAPIKey + " or " + cli.EnvAPIKeyFile + ") are required")
			}
			tok, err := c.IssueToken(cmd.Context(), client.TokenRequest{ExpiresIn: int(expiresIn / time.Second), Scopes: scopes})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "token valid until", tok.ExpiresAt.Format(time.RFC3339), "with scopes", strings.Join(tok.Scopes, ","))
			fmt.Fprintln(cmd.OutOrStdout(), tok.Token)
			return nil
		},
	}
	token.Flags().StringSliceVar(&scopes, "scope", nil, "narrow the token to this scope (repeat; default: the key's)")
	token.Flags().DurationVar(&expiresIn, "expires-in", 0, "the token's lifetime (default and at most 1h)")
	token.Flags().StringVar(&serverURL, "server", "", "the API server (default "+cli.EnvServer+")")

	var q client.AuditQuery
	var since time.Duration
	auditCmd := &cobra.Command{
		Use:   "audit",
		Short: "Show the audit log, newest first (admin key; through the API)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := remoteClient(cmd, false, serverURL)
			if err != nil {
				return err
			}
			if c == nil {
				return errors.New("a server (--server or " + cli.EnvServer + ") and an admin API key are required")
			}
			if since > 0 {
				q.Since = time.Now().Add(-since)
			}
			l, err := c.ListAudit(cmd.Context(), q)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME	KEY	OWNER	ROLE	METHOD	ROUTE	PARAMS	STATUS	SOURCE	REQUEST")
			for _, e := range l.Entries {
				var ps []string
				for k, v := range e.Params {
					ps = append(ps, k+"="+v)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.At.Format(time.RFC3339), e.KeyID, e.OwnerID,
					e.Role, e.Method, e.Route, strings.Join(ps, ","), e.Status, e.Source, e.RequestID)
			}
			if l.NextCursor != "" {
				fmt.Fprintln(cmd.ErrOrStderr(), "more: --cursor", l.NextCursor)
			}
			return tw.Flush()
		},
	}
	auditCmd.Flags().StringVar(&q.KeyID, "key-id", "", "only this key's calls")
	auditCmd.Flags().StringVar(&q.Owner, "owner", "", "only this owner's calls")
	auditCmd.Flags().StringVar(&q.Method, "method", "", "only this method")
	auditCmd.Flags().IntVar(&q.Status, "status", 0, "only this status")
	auditCmd.Flags().DurationVar(&since, "since", 0, "only the calls of this last while (e.g. 24h)")
	auditCmd.Flags().IntVar(&q.Limit, "limit", 0, "at most this many (default 100)")
	auditCmd.Flags().StringVar(&q.Cursor, "cursor", "", "the next page (printed after a full page)")
	auditCmd.Flags().StringVar(&serverURL, "server", "", "the API server (default "+cli.EnvServer+")")
	cmd.AddCommand(rotate, token, auditCmd)
	return cmd
}
