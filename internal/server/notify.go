package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/discord"
	"github.com/aetherium/aetherium/internal/integrations/slack"
	"github.com/aetherium/aetherium/internal/notify"
	"github.com/aetherium/aetherium/internal/store"
)

// chatIntegrations builds the Slack and Discord integrations the configuration enables: Slack with a signing
// secret (HTTP webhooks) or an app token (Socket Mode; startSlackSocket), Discord always (its webhook
// notifications need no credential; its interactions need the public key).
func chatIntegrations(cfg config.Config, log *slog.Logger) ([]integrations.Integration, error) {
	var out []integrations.Integration
	if cfg.SlackSigningSecret != "" || cfg.SlackAppToken != "" {
		s, err := slack.New(slack.Config{SigningSecret: cfg.SlackSigningSecret, BotToken: cfg.SlackBotToken,
			AppToken: cfg.SlackAppToken, APIURL: cfg.SlackAPIURL, Logger: log.With("integration", "slack")})
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	d, err := discord.New(discord.Config{PublicKey: cfg.DiscordPublicKey, Logger: log.With("integration", "discord")})
	if err != nil {
		return nil, err
	}
	return append(out, d), nil
}

// startNotifications runs the notification dispatcher of a gateway until ctx ends.
func startNotifications(ctx context.Context, cfg config.Config, st store.Store, bus events.Bus, log *slog.Logger) error {
	ins, err := chatIntegrations(cfg, log)
	if err != nil {
		return fmt.Errorf("integrations: %w", err)
	}
	d, err := notify.New(notify.Config{Store: st.Notifications(), Bus: bus, Integrations: integrations.NewRegistry(ins...), Logger: log.With("component", "notify")})
	if err != nil {
		return err
	}
	go func() {
		if err := d.Run(ctx); err != nil {
			log.Error("notifications stopped", "err", err)
		}
	}()
	return nil
}
