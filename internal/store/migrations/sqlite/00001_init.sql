-- Initial schema (SQLite). Keep in step with ../postgres/00001_init.sql: both dialects must describe the same
-- tables, constraints and indexes, because one conformance suite (internal/store/storetest) runs against both.
--
-- SQLite has no uuid, jsonb or timestamptz types, so: ids are canonical lowercase uuid text (the store checks them);
-- json documents are text, NULL when empty; times are text in UTC with exactly six fractional digits
-- ("2006-01-02T15:04:05.000000Z", an RFC 3339 form) so that comparing the strings orders them chronologically, which
-- keyset pagination relies on; booleans are 0/1. Tables are STRICT so a value of the wrong type is an error, not a
-- silent conversion. There are no foreign keys between tables, as in PostgreSQL (see there for why).

-- +goose Up
CREATE TABLE vms (
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
    CONSTRAINT vms_status_check
        CHECK (status IN ('pending', 'creating', 'running', 'stopping', 'stopped', 'deleted', 'failed'))
) STRICT;
-- A name is unique per owner among VMs that still exist; deleted VMs free their name.
CREATE UNIQUE INDEX vms_owner_name_live ON vms (owner_id, name) WHERE status <> 'deleted';
CREATE INDEX vms_created ON vms (created_at DESC, id DESC);
CREATE INDEX vms_owner_created ON vms (owner_id, created_at DESC, id DESC);
CREATE INDEX vms_worker_created ON vms (worker_id, created_at DESC, id DESC);
CREATE INDEX vms_status_created ON vms (status, created_at DESC, id DESC);

CREATE TABLE tasks (
    id            TEXT    NOT NULL PRIMARY KEY,
    owner_id      TEXT    NOT NULL,
    type          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    priority      TEXT    NOT NULL,
    payload       TEXT CHECK (payload IS NULL OR json_valid(payload)),
    result        TEXT CHECK (result IS NULL OR json_valid(result)),
    error         TEXT    NOT NULL DEFAULT '',
    vm_id         TEXT,
    job_id        TEXT,
    target_worker TEXT    NOT NULL DEFAULT '',
    worker_id     TEXT    NOT NULL DEFAULT '',
    max_retries   INTEGER NOT NULL DEFAULT 0,
    retry_count   INTEGER NOT NULL DEFAULT 0,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    scheduled_at  TEXT,
    started_at    TEXT,
    completed_at  TEXT,
    CONSTRAINT tasks_status_check CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    CONSTRAINT tasks_priority_check CHECK (priority IN ('critical', 'high', 'default', 'low'))
) STRICT;
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_owner_created ON tasks (owner_id, created_at DESC, id DESC);
CREATE INDEX tasks_vm_created ON tasks (vm_id, created_at DESC, id DESC) WHERE vm_id IS NOT NULL;
CREATE INDEX tasks_job_created ON tasks (job_id, created_at DESC, id DESC) WHERE job_id IS NOT NULL;
-- Queue recovery asks for unfinished tasks by status and pinned worker.
CREATE INDEX tasks_status_target_created ON tasks (status, target_worker, created_at DESC, id DESC);
CREATE INDEX tasks_target_created ON tasks (target_worker, created_at DESC, id DESC);

CREATE TABLE jobs (
    id              TEXT    NOT NULL PRIMARY KEY,
    owner_id        TEXT    NOT NULL,
    vm_id           TEXT,
    vm_spec         TEXT CHECK (vm_spec IS NULL OR json_valid(vm_spec)),
    commands        TEXT CHECK (commands IS NULL OR json_valid(commands)),
    stop_on_error   INTEGER NOT NULL DEFAULT 0 CHECK (stop_on_error IN (0, 1)),
    delete_vm_after INTEGER NOT NULL DEFAULT 0 CHECK (delete_vm_after IN (0, 1)),
    status          TEXT    NOT NULL,
    task_id         TEXT,
    error           TEXT    NOT NULL DEFAULT '',
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    started_at      TEXT,
    completed_at    TEXT,
    CONSTRAINT jobs_status_check CHECK (status IN ('pending', 'running', 'completed', 'failed'))
) STRICT;
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at DESC, id DESC);

CREATE TABLE executions (
    id               TEXT    NOT NULL PRIMARY KEY,
    owner_id         TEXT    NOT NULL,
    vm_id            TEXT    NOT NULL,
    job_id           TEXT,
    task_id          TEXT,
    seq              INTEGER NOT NULL DEFAULT 0,
    status           TEXT    NOT NULL,
    command          TEXT    NOT NULL,
    args             TEXT CHECK (args IS NULL OR json_valid(args)),
    env              TEXT CHECK (env IS NULL OR json_valid(env)),
    working_dir      TEXT    NOT NULL DEFAULT '',
    timeout_seconds  INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    -- Command output is arbitrary bytes (NUL, invalid UTF-8): kept as blobs, byte for byte.
    stdout           BLOB    NOT NULL DEFAULT X'',
    stderr           BLOB    NOT NULL DEFAULT X'',
    stdout_truncated INTEGER NOT NULL DEFAULT 0 CHECK (stdout_truncated IN (0, 1)),
    stderr_truncated INTEGER NOT NULL DEFAULT 0 CHECK (stderr_truncated IN (0, 1)),
    timed_out        INTEGER NOT NULL DEFAULT 0 CHECK (timed_out IN (0, 1)),
    error            TEXT    NOT NULL DEFAULT '',
    worker_id        TEXT    NOT NULL DEFAULT '',
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    completed_at     TEXT,
    duration_ms      INTEGER,
    CONSTRAINT executions_status_check CHECK (status IN ('pending', 'running', 'completed', 'failed'))
) STRICT;
CREATE INDEX executions_created ON executions (created_at DESC, id DESC);
CREATE INDEX executions_owner_created ON executions (owner_id, created_at DESC, id DESC);
CREATE INDEX executions_vm_created ON executions (vm_id, created_at DESC, id DESC);
CREATE INDEX executions_job_seq ON executions (job_id, seq, created_at, id) WHERE job_id IS NOT NULL;
CREATE INDEX executions_task ON executions (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE workers (
    id             TEXT    NOT NULL PRIMARY KEY,
    hostname       TEXT    NOT NULL DEFAULT '',
    backend        TEXT    NOT NULL DEFAULT '',
    status         TEXT    NOT NULL,
    capacity       INTEGER NOT NULL DEFAULT 0,
    metadata       TEXT CHECK (metadata IS NULL OR json_valid(metadata)),
    started_at     TEXT    NOT NULL,
    last_heartbeat TEXT    NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    owner_id     TEXT    NOT NULL,
    name         TEXT    NOT NULL DEFAULT '',
    prefix       TEXT    NOT NULL,
    hash         TEXT    NOT NULL,
    admin        INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),
    created_at   TEXT    NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT,
    CONSTRAINT api_keys_hash_unique UNIQUE (hash),
    CONSTRAINT api_keys_prefix_unique UNIQUE (prefix)
) STRICT;
CREATE INDEX api_keys_created ON api_keys (created_at DESC, id DESC);
CREATE INDEX api_keys_owner ON api_keys (owner_id);

-- +goose Down
DROP TABLE api_keys;
DROP TABLE workers;
DROP TABLE executions;
DROP TABLE jobs;
DROP TABLE tasks;
DROP TABLE vms;
