-- Notification rules and the outbox (internal/notify). Keep in step with ../postgres/00009_notifications.sql.

-- +goose Up
CREATE TABLE notification_rules (
    id          TEXT PRIMARY KEY,
    owner_id    TEXT NOT NULL,
    events      TEXT NOT NULL CHECK (json_valid(events)),
    integration TEXT NOT NULL CHECK (length(integration) BETWEEN 1 AND 64),
    destination TEXT NOT NULL CHECK (length(destination) BETWEEN 1 AND 2048),
    created_at  TEXT NOT NULL
) STRICT;
CREATE INDEX notification_rules_owner ON notification_rules (owner_id, created_at);

CREATE TABLE notification_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    key             TEXT    NOT NULL UNIQUE CHECK (length(key) BETWEEN 1 AND 255),
    owner_id        TEXT    NOT NULL,
    rule_id         TEXT    NOT NULL,
    integration     TEXT    NOT NULL,
    destination     TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    lease_until     TEXT,
    last_error      TEXT    NOT NULL DEFAULT '',
    created_at      TEXT    NOT NULL,
    sent_at         TEXT
) STRICT;
CREATE INDEX notification_outbox_pending ON notification_outbox (integration, destination, seq) WHERE status = 'pending';
CREATE INDEX notification_outbox_owner ON notification_outbox (owner_id, status, seq);

-- +goose Down
DROP TABLE notification_outbox;
DROP TABLE notification_rules;
