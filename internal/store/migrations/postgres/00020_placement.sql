-- Placement across workers (issue 14): a worker can be drained by an admin (it takes no new VMs; a heartbeat never
-- clears it), and an owner can have quotas (0: no limit). Keep in step with ../sqlite/00020_placement.sql.

-- +goose Up
ALTER TABLE workers ADD COLUMN drained boolean NOT NULL DEFAULT false;
CREATE TABLE owner_quotas (
    owner_id      text        PRIMARY KEY CHECK (length(owner_id) BETWEEN 1 AND 255),
    max_vms       integer     NOT NULL DEFAULT 0 CHECK (max_vms >= 0),
    max_vcpus     integer     NOT NULL DEFAULT 0 CHECK (max_vcpus >= 0),
    max_memory_mb integer     NOT NULL DEFAULT 0 CHECK (max_memory_mb >= 0),
    updated_at    timestamptz NOT NULL
);

-- +goose Down
DROP TABLE owner_quotas;
ALTER TABLE workers DROP COLUMN drained;
