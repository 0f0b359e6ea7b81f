-- A webhook delivery keeps the progress of its handling (internal/integrations: a GitHub delivery's reaction,
-- tracking comment, check run and the job or run it started), so that a retry resumes instead of starting the work
-- and its reports a second time. Keep in step with ../postgres/00012_webhook_progress.sql.

-- +goose Up
ALTER TABLE webhook_deliveries ADD COLUMN progress TEXT CHECK (progress IS NULL OR json_valid(progress));

-- +goose Down
ALTER TABLE webhook_deliveries DROP COLUMN progress;
