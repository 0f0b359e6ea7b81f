-- Answers of mutating API requests sent with an Idempotency-Key (internal/api). Keep in step with
-- ../sqlite/00005_idempotency_keys.sql. Keys are per owner; a row without done_at is a request in progress.
-- Rows expire (expires_at, 24 h after the first request) and are purged.

-- +goose Up
CREATE TABLE idempotency_keys (
    owner_id    text        NOT NULL,
    key         text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint text        NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    done_at     timestamptz,
    status      integer,
    header      jsonb,
    body        bytea,
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (owner_id, key)
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);

-- +goose Down
DROP TABLE idempotency_keys;
