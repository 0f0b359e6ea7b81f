-- Integrations (internal/integrations): webhook deliveries as received, deduplicated by the integration's own
-- delivery id (a redelivery finds its row and does nothing again), and the links that say which outside source
-- (a GitHub repository, a Slack channel) acts for which owner. Keep in step with ../postgres/00008_integrations.sql.

-- +goose Up
CREATE TABLE webhook_deliveries (
    id          TEXT    NOT NULL PRIMARY KEY,
    integration TEXT    NOT NULL CHECK (length(integration) BETWEEN 1 AND 64),
    delivery_id TEXT    NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 255),
    event       TEXT    NOT NULL DEFAULT '',
    header      TEXT CHECK (header IS NULL OR json_valid(header)),
    body        BLOB    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('received', 'processing', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT    NOT NULL DEFAULT '',
    received_at TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    UNIQUE (integration, delivery_id)
) STRICT;
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at DESC);

CREATE TABLE integration_links (
    id          TEXT    NOT NULL PRIMARY KEY,
    owner_id    TEXT    NOT NULL,
    integration TEXT    NOT NULL CHECK (length(integration) BETWEEN 1 AND 64),
    source      TEXT    NOT NULL CHECK (length(source) BETWEEN 1 AND 512),
    commands    INTEGER NOT NULL DEFAULT 0,
    runs        INTEGER NOT NULL DEFAULT 0,
    allow_bots  INTEGER NOT NULL DEFAULT 0,
    draft_pr    INTEGER NOT NULL DEFAULT 0,
    notify      TEXT CHECK (notify IS NULL OR json_valid(notify)),
    created_at  TEXT    NOT NULL,
    UNIQUE (integration, source)
) STRICT;
CREATE INDEX integration_links_owner ON integration_links (owner_id, created_at DESC, id DESC);

-- +goose Down
DROP TABLE integration_links;
DROP TABLE webhook_deliveries;
