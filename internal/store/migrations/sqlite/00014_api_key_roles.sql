-- API keys get a role (admin or user, from the old admin flag, which is kept in step for a downgrade), scopes
-- that narrow what they may do (space-separated; empty: every scope of the role) and an expiry. Keep in step with
-- the other store's 00014.

-- +goose Up
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('admin', 'user'));
UPDATE api_keys SET role = 'admin' WHERE admin = 1;
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;

-- +goose Down
ALTER TABLE api_keys DROP COLUMN expires_at;
ALTER TABLE api_keys DROP COLUMN scopes;
ALTER TABLE api_keys DROP COLUMN role;
