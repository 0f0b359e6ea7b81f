-- A link may name the only commands its source may run (/aetherium run <command>): exact commands, or a command
-- followed by plain arguments when it ends in " *" (integrations.Link.AllowsCommand). NULL: any command.
-- Keep in step with the other store's 00017.

-- +goose Up
ALTER TABLE integration_links ADD COLUMN allowed_commands jsonb;

-- +goose Down
ALTER TABLE integration_links DROP COLUMN allowed_commands;
