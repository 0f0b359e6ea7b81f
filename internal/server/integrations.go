package server

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/github"
	"github.com/aetherium/aetherium/internal/task"
)

// openIntegrations builds the registry of the configured integrations: GitHub when github_webhook_secret is set,
// Slack when slack_signing_secret is, and Discord (whose interactions need discord_public_key).
func openIntegrations(cfg config.Config, log *slog.Logger) (*integrations.Registry, error) {
	var in []integrations.Integration
	if cfg.GitHubWebhookSecret != "" {
		gc := github.Config{WebhookSecret: cfg.GitHubWebhookSecret, AppID: cfg.GitHubAppID, ClientID: cfg.GitHubClientID,
			APIURL: cfg.GitHubAPIURL, Logger: log}
		if cfg.GitHubPrivateKeyFile != "" {
			pemBytes, err := os.ReadFile(cfg.GitHubPrivateKeyFile)
			if err != nil {
				return nil, fmt.Errorf("github_private_key_file: %w", err)
			}
			if gc.PrivateKey, err = github.ParsePrivateKey(pemBytes); err != nil {
				return nil, fmt.Errorf("github_private_key_file: %w", err)
			}
		}
		g, err := github.New(gc)
		if err != nil {
			return nil, err
		}
		in = append(in, g)
		log.Info("integration enabled", "integration", "github", "api_url", gc.APIURL)
	}
	chat, err := chatIntegrations(cfg, log) // Slack (with its signing secret) and Discord
	if err != nil {
		return nil, err
	}
	return integrations.NewRegistry(append(in, chat...)...), nil
}

// webhookLimits are the limits of the workers' task service (the same as the gateway's).
func webhookLimits(cfg config.Config) task.Limits {
	l := task.DefaultLimits()
	l.MaxRetries = cfg.MaxRetries
	l.MaxOutputBytes = cfg.MaxOutput
	l.DefaultVMTimeout, l.MaxVMTimeout = cfg.VMDefaultTimeout, cfg.VMMaxTimeout
	l.DefaultVMIdleTimeout, l.MaxVMIdleTimeout = cfg.VMDefaultIdleTimeout, cfg.VMMaxIdleTimeout
	return l
}
