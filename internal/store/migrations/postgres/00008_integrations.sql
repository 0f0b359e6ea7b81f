-- Integrations (internal/integrations): webhook deliveries as received, deduplicated by the integration's own
-- delivery id (a redelivery finds its row and does nothing again), and the links that say which outside source
-- (a GitHub repository, a Slack channel) acts for which owner. Keep in step with ../sqlite/00008_integrations.sql.

-- +goose Up
CREATE TABLE webhook_deliveries (
    id          uuid        PRIMARY KEY,
    integration text        NOT NULL CHECK (length(integration) BETWEEN 1 AND 64),
    delivery_id text        NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 255),
    event       text        NOT NULL DEFAULT '',
    header      jsonb,
    body        bytea       NOT NULL,
    status      text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    error       text        NOT NULL DEFAULT '',
    received_at timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CONSTRAINT webhook_deliveries_unique UNIQUE (integration, delivery_id),
    CONSTRAINT webhook_deliveries_status_check CHECK (status IN ('received', 'processing', 'done', 'failed'))
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at DESC);

CREATE TABLE integration_links (
    id          uuid        PRIMARY KEY,
    owner_id    text        NOT NULL,
    integration text        NOT NULL CHECK (length(integration) BETWEEN 1 AND 64),
    source      text        NOT NULL CHECK (length(source) BETWEEN 1 AND 512),
    commands    boolean     NOT NULL DEFAULT false,
    runs        boolean     NOT NULL DEFAULT false,
    allow_bots  boolean     NOT NULL DEFAULT false,
    draft_pr    boolean     NOT NULL DEFAULT false,
    notify      jsonb,
    created_at  timestamptz NOT NULL,
    CONSTRAINT integration_links_unique UNIQUE (integration, source)
);
CREATE INDEX integration_links_owner ON integration_links (owner_id, created_at DESC, id DESC);

-- +goose Down
DROP TABLE integration_links;
DROP TABLE webhook_deliveries;
