-- +goose Up
-- A VM's network (egress policy and address) and tools (asked for and installed), as one JSON document.
ALTER TABLE vms ADD COLUMN extra jsonb;

-- +goose Down
ALTER TABLE vms DROP COLUMN extra;
