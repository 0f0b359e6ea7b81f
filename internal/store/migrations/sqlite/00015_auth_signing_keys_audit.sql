-- The JWT signing keys, shared by every gateway (the private key sealed by the secrets keyring when there is one),
-- and the audit log of mutating calls and token exchanges. Keep in step with the other store's 00015.

-- +goose Up
CREATE TABLE auth_signing_keys (
    id          TEXT NOT NULL PRIMARY KEY,
    algorithm   TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    private_key BLOB NOT NULL,
    seal_key_id TEXT NOT NULL DEFAULT '',
    nonce       BLOB,
    created_at  TEXT NOT NULL
) STRICT;
CREATE INDEX auth_signing_keys_created ON auth_signing_keys (created_at DESC, id DESC);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT    NOT NULL,
    key_id     TEXT    NOT NULL DEFAULT '',
    owner_id   TEXT    NOT NULL DEFAULT '',
    role       TEXT    NOT NULL DEFAULT '',
    method     TEXT    NOT NULL,
    route      TEXT    NOT NULL,
    params     TEXT    NOT NULL DEFAULT '',
    status     INTEGER NOT NULL,
    source     TEXT    NOT NULL DEFAULT '',
    request_id TEXT    NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_key ON audit_log (key_id, seq DESC);
CREATE INDEX audit_log_owner ON audit_log (owner_id, seq DESC);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE auth_signing_keys;
