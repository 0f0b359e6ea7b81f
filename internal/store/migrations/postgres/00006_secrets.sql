-- Owners' secrets (internal/secrets), sealed with AES-256-GCM: the value is never stored, only its ciphertext,
-- the nonce and the id of the key that sealed it (so keys can be rotated). Keep in step with
-- ../sqlite/00006_secrets.sql. secret_key_checks holds a known text sealed under each key in use, so that start-up
-- tells a wrong key from a right one without opening any owner's secret. executions.secret_env maps environment
-- variables to secret names (never values).

-- +goose Up
CREATE TABLE secrets (
    owner_id     text        NOT NULL,
    name         text        NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$'),
    key_id       text        NOT NULL CHECK (length(key_id) BETWEEN 1 AND 64),
    nonce        bytea       NOT NULL,
    ciphertext   bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    CONSTRAINT secrets_pkey PRIMARY KEY (owner_id, name)
);
CREATE INDEX secrets_key_id ON secrets (key_id);

CREATE TABLE secret_key_checks (
    key_id     text        PRIMARY KEY CHECK (length(key_id) BETWEEN 1 AND 64),
    nonce      bytea       NOT NULL,
    ciphertext bytea       NOT NULL,
    created_at timestamptz NOT NULL
);

ALTER TABLE executions ADD COLUMN secret_env jsonb;

-- +goose Down
ALTER TABLE executions DROP COLUMN secret_env;
DROP TABLE secret_key_checks;
DROP TABLE secrets;
