-- The JWT signing keys, shared by every gateway (the private key sealed by the secrets keyring when there is one),
-- and the audit log of mutating calls and token exchanges. Keep in step with the other store's 00015.

-- +goose Up
CREATE TABLE auth_signing_keys (
    id          text        PRIMARY KEY,
    algorithm   text        NOT NULL,
    public_key  bytea       NOT NULL,
    private_key bytea       NOT NULL,
    seal_key_id text        NOT NULL DEFAULT '',
    nonce       bytea,
    created_at  timestamptz NOT NULL
);
CREATE INDEX auth_signing_keys_created ON auth_signing_keys (created_at DESC, id DESC);

CREATE TABLE audit_log (
    seq        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL,
    key_id     text        NOT NULL DEFAULT '',
    owner_id   text        NOT NULL DEFAULT '',
    role       text        NOT NULL DEFAULT '',
    method     text        NOT NULL,
    route      text        NOT NULL,
    params     text        NOT NULL DEFAULT '',
    status     integer     NOT NULL,
    source     text        NOT NULL DEFAULT '',
    request_id text        NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_key ON audit_log (key_id, seq DESC);
CREATE INDEX audit_log_owner ON audit_log (owner_id, seq DESC);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE auth_signing_keys;
