package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/workerapi/wire"
)

// healthcheckCommand is a container health probe that needs nothing but this binary (the images are FROM scratch:
// no curl, no shell). It asks the role's own endpoint on this host and exits 0 only on a 2xx answer.
func healthcheckCommand() *cobra.Command {
	var role, rawURL string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Probe this host's gateway (/api/v1/ready) or worker (worker API health): exit 0 when healthy",
		Long: "Probe the server role running on this host, as a container health check: a gateway (or serve) at " +
			"http://127.0.0.1:<port of listen>/api/v1/ready, a worker at http://127.0.0.1:<port of " +
			"worker_api_listen>" + wire.HealthPath + " with the cluster token. The settings are read like the " +
			"server's (AETHERIUM_* environment, AETHERIUM_CONFIG). --url probes another URL instead.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(pflag.NewFlagSet("healthcheck", pflag.ContinueOnError), os.Getenv)
			if err != nil {
				return fmt.Errorf("configuration:\n%w", err)
			}
			target, token, err := healthTarget(cfg, role, rawURL)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			status, err := probe(ctx, target, token)
			if err != nil {
				return fmt.Errorf("%s: %w", target, err)
			}
			if status < 200 || status > 299 {
				return fmt.Errorf("%s: answered %d", target, status)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s answered %d\n", target, status)
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "gateway", "role to probe: gateway, serve or worker")
	cmd.Flags().StringVar(&rawURL, "url", "", "URL to probe instead of the role's own (http or https)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for the answer")
	return cmd
}

// healthTarget gives the URL to probe for role, and the bearer token to send (the cluster token, for a worker).
func healthTarget(cfg config.Config, role, rawURL string) (string, string, error) {
	var listen, path, token string
	switch role {
	case "gateway", "serve":
		listen, path = cfg.Listen, "/api/v1/ready"
	case "worker":
		if cfg.ClusterToken == "" {
			return "", "", errors.New("the worker health check needs the cluster token (cluster_token or cluster_token_file)")
		}
		listen, path, token = cfg.WorkerAPIListen, wire.HealthPath, cfg.ClusterToken
	default:
		return "", "", fmt.Errorf("--role must be gateway, serve or worker (got %q)", role)
	}
	if rawURL != "" {
		u, err := url.Parse(rawURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", "", fmt.Errorf("--url must be an http(s) URL (got %q)", rawURL)
		}
		return rawURL, token, nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil || port == "" || port == "0" {
		return "", "", fmt.Errorf("cannot probe %q: the role must listen on a fixed port (or give --url)", listen)
	}
	// A listener on every interface (or on a name) is probed over loopback, where it answers too.
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + path, token, nil
}

func probe(ctx context.Context, target, token string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// Never through a proxy from the environment: this is a probe of this host.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}
