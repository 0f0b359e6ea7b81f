-- +goose Up
ALTER TABLE executions ADD COLUMN run_as TEXT NOT NULL DEFAULT '';
ALTER TABLE executions ADD COLUMN peak_memory_kb INTEGER;

-- +goose Down
ALTER TABLE executions DROP COLUMN peak_memory_kb;
ALTER TABLE executions DROP COLUMN run_as;
