-- Notification rules and the outbox (internal/notify). Keep in step with ../sqlite/00009_notifications.sql.
-- An outbox row is one notification for one destination; seq orders a destination's rows, key (event id + rule
-- id) makes enqueueing idempotent, lease_until is a sender's claim (a crashed sender's claim runs out).

-- +goose Up
CREATE TABLE notification_rules (
    id          uuid        PRIMARY KEY,
    owner_id    text        NOT NULL,
    events      jsonb       NOT NULL,
    integration text        NOT NULL CHECK (length(integration) BETWEEN 1 AND 64),
    destination text        NOT NULL CHECK (length(destination) BETWEEN 1 AND 2048),
    created_at  timestamptz NOT NULL
);
CREATE INDEX notification_rules_owner ON notification_rules (owner_id, created_at);

CREATE TABLE notification_outbox (
    seq             bigserial   PRIMARY KEY,
    key             text        NOT NULL UNIQUE CHECK (length(key) BETWEEN 1 AND 255),
    owner_id        text        NOT NULL,
    rule_id         text        NOT NULL,
    integration     text        NOT NULL,
    destination     text        NOT NULL,
    event           text        NOT NULL,
    payload         bytea       NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'sent', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    lease_until     timestamptz,
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    sent_at         timestamptz
);
CREATE INDEX notification_outbox_pending ON notification_outbox (integration, destination, seq) WHERE status = 'pending';
CREATE INDEX notification_outbox_owner ON notification_outbox (owner_id, status, seq);

-- +goose Down
DROP TABLE notification_outbox;
DROP TABLE notification_rules;
