-- Placement across workers (issue 14): a worker can be drained by an admin (it takes no new VMs; a heartbeat never
-- clears it), and an owner can have quotas (0: no limit). Keep in step with ../postgres/00020_placement.sql.

-- +goose Up
ALTER TABLE workers ADD COLUMN drained INTEGER NOT NULL DEFAULT 0 CHECK (drained IN (0, 1));
CREATE TABLE owner_quotas (
    owner_id      TEXT    NOT NULL PRIMARY KEY CHECK (length(owner_id) BETWEEN 1 AND 255),
    max_vms       INTEGER NOT NULL DEFAULT 0 CHECK (max_vms >= 0),
    max_vcpus     INTEGER NOT NULL DEFAULT 0 CHECK (max_vcpus >= 0),
    max_memory_mb INTEGER NOT NULL DEFAULT 0 CHECK (max_memory_mb >= 0),
    updated_at    TEXT    NOT NULL
) STRICT;

-- +goose Down
DROP TABLE owner_quotas;
ALTER TABLE workers DROP COLUMN drained;
