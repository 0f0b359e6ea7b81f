-- Owners' secrets (internal/secrets), sealed with AES-256-GCM: the value is never stored, only its ciphertext,
-- the nonce and the id of the key that sealed it (so keys can be rotated). Keep in step with
-- ../postgres/00006_secrets.sql. secret_key_checks holds a known text sealed under each key in use, so that start-up
-- tells a wrong key from a right one without opening any owner's secret. executions.secret_env maps environment
-- variables to secret names (never values).

-- +goose Up
CREATE TABLE secrets (
    owner_id     TEXT NOT NULL,
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    key_id       TEXT NOT NULL CHECK (length(key_id) BETWEEN 1 AND 64),
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    last_used_at TEXT,
    PRIMARY KEY (owner_id, name)
) STRICT;
CREATE INDEX secrets_key_id ON secrets (key_id);

CREATE TABLE secret_key_checks (
    key_id     TEXT NOT NULL PRIMARY KEY CHECK (length(key_id) BETWEEN 1 AND 64),
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

ALTER TABLE executions ADD COLUMN secret_env TEXT CHECK (secret_env IS NULL OR json_valid(secret_env));

-- +goose Down
ALTER TABLE executions DROP COLUMN secret_env;
DROP TABLE secret_key_checks;
DROP TABLE secrets;
