-- Answers of mutating API requests sent with an Idempotency-Key (internal/api). Keep in step with
-- ../postgres/00005_idempotency_keys.sql. Keys are per owner; a row without done_at is a request in progress.
-- Rows expire (expires_at, 24 h after the first request) and are purged.

-- +goose Up
CREATE TABLE idempotency_keys (
    owner_id    TEXT    NOT NULL,
    key         TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL,
    done_at     TEXT,
    status      INTEGER,
    header      TEXT CHECK (header IS NULL OR json_valid(header)),
    body        BLOB,
    PRIMARY KEY (owner_id, key)
) STRICT;
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);

-- +goose Down
DROP TABLE idempotency_keys;
