package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/github"
	"github.com/aetherium/aetherium/internal/integrations/slack"
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
	chat, err := chatIntegrations(cfg, log) // Slack (with its signing secret or app token) and Discord
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

// startSlackSocket runs Slack's Socket Mode on a gateway when slack_app_token is set, recording deliveries through
// rec as the webhook route does, until ctx ends; the returned channel is closed once it has stopped (nil: not
// started). Every gateway connects: Slack gives each envelope to one of an app's connections (up to 10), and a
// redelivery landing on another gateway is deduplicated by the record.
func startSlackSocket(ctx context.Context, cfg config.Config, registry *integrations.Registry, rec integrations.Recorder,
	log *slog.Logger) (<-chan struct{}, error) {
	if cfg.SlackAppToken == "" {
		return nil, nil
	}
	in, err := registry.Get("slack")
	if err != nil {
		return nil, fmt.Errorf("slack socket mode: %w", err)
	}
	s, ok := in.(*slack.Slack)
	if !ok {
		return nil, fmt.Errorf("slack socket mode: the slack integration is a %T", in)
	}
	slackLog := log.With("integration", "slack", "component", "socket_mode")
	sc, err := s.SocketClient(slack.SocketConfig{Recorder: rec, Logger: slackLog})
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A refused token or a disabled link stops Socket Mode, not the gateway: HTTP webhooks, if configured,
		// and everything else go on, and the error says what to fix.
		if err := sc.Run(ctx); err != nil {
			slackLog.Error("slack socket mode stopped", "err", err)
		}
	}()
	slackLog.Info("slack socket mode started")
	return done, nil
}
