-- A link may name a command to run on every pull request opened, reopened or pushed to (e.g. the tests), reported
-- as a check run (internal/integrations/github). Empty: none. Keep in step with the other store's 00013.

-- +goose Up
ALTER TABLE integration_links ADD COLUMN pr_command TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE integration_links DROP COLUMN pr_command;
