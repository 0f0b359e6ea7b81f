-- +goose Up
-- A VM can be paused (issue 15): its guest is frozen and keeps its memory, disk and network lease. SQLite cannot
-- change a CHECK constraint in place, so the table is rebuilt with the new one (no other table references it).
CREATE TABLE vms_new (
    id          TEXT    NOT NULL PRIMARY KEY,
    owner_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    vcpu_count  INTEGER NOT NULL DEFAULT 0,
    memory_mb   INTEGER NOT NULL DEFAULT 0,
    image       TEXT    NOT NULL DEFAULT '',
    kernel_path TEXT    NOT NULL DEFAULT '',
    rootfs_path TEXT    NOT NULL DEFAULT '',
    socket_path TEXT    NOT NULL DEFAULT '',
    worker_id   TEXT    NOT NULL DEFAULT '',
    error       TEXT    NOT NULL DEFAULT '',
    metadata    TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    started_at  TEXT,
    stopped_at  TEXT,
    extra       TEXT CHECK (extra IS NULL OR json_valid(extra)),
    CONSTRAINT vms_status_check
        CHECK (status IN ('pending', 'creating', 'running', 'paused', 'stopping', 'stopped', 'deleted', 'failed'))
) STRICT;
INSERT INTO vms_new (id, owner_id, name, status, vcpu_count, memory_mb, image, kernel_path, rootfs_path, socket_path, worker_id, error, metadata, created_at, updated_at, started_at, stopped_at, extra)
    SELECT id, owner_id, name, status, vcpu_count, memory_mb, image, kernel_path, rootfs_path, socket_path, worker_id, error, metadata, created_at, updated_at, started_at, stopped_at, extra FROM vms;
DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
CREATE UNIQUE INDEX vms_owner_name_live ON vms (owner_id, name) WHERE status <> 'deleted';
CREATE INDEX vms_created ON vms (created_at DESC, id DESC);
CREATE INDEX vms_owner_created ON vms (owner_id, created_at DESC, id DESC);
CREATE INDEX vms_worker_created ON vms (worker_id, created_at DESC, id DESC);
CREATE INDEX vms_status_created ON vms (status, created_at DESC, id DESC);

-- +goose Down
-- A paused VM's guest is still there, frozen: the older schema can only call it running.
UPDATE vms SET status = 'running' WHERE status = 'paused';
CREATE TABLE vms_new (
    id          TEXT    NOT NULL PRIMARY KEY,
    owner_id    TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    vcpu_count  INTEGER NOT NULL DEFAULT 0,
    memory_mb   INTEGER NOT NULL DEFAULT 0,
    image       TEXT    NOT NULL DEFAULT '',
    kernel_path TEXT    NOT NULL DEFAULT '',
    rootfs_path TEXT    NOT NULL DEFAULT '',
    socket_path TEXT    NOT NULL DEFAULT '',
    worker_id   TEXT    NOT NULL DEFAULT '',
    error       TEXT    NOT NULL DEFAULT '',
    metadata    TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL,
    started_at  TEXT,
    stopped_at  TEXT,
    extra       TEXT CHECK (extra IS NULL OR json_valid(extra)),
    CONSTRAINT vms_status_check
        CHECK (status IN ('pending', 'creating', 'running', 'stopping', 'stopped', 'deleted', 'failed'))
) STRICT;
INSERT INTO vms_new (id, owner_id, name, status, vcpu_count, memory_mb, image, kernel_path, rootfs_path, socket_path, worker_id, error, metadata, created_at, updated_at, started_at, stopped_at, extra)
    SELECT id, owner_id, name, status, vcpu_count, memory_mb, image, kernel_path, rootfs_path, socket_path, worker_id, error, metadata, created_at, updated_at, started_at, stopped_at, extra FROM vms;
DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
CREATE UNIQUE INDEX vms_owner_name_live ON vms (owner_id, name) WHERE status <> 'deleted';
CREATE INDEX vms_created ON vms (created_at DESC, id DESC);
CREATE INDEX vms_owner_created ON vms (owner_id, created_at DESC, id DESC);
CREATE INDEX vms_worker_created ON vms (worker_id, created_at DESC, id DESC);
CREATE INDEX vms_status_created ON vms (status, created_at DESC, id DESC);
