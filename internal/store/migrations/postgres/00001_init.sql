-- Initial schema (PostgreSQL). Keep in step with ../sqlite/00001_init.sql: both dialects must describe the same
-- tables, constraints and indexes, because one conformance suite (internal/store/storetest) runs against both.
--
-- Conventions: optional text fields are NOT NULL DEFAULT '' (the model uses "" for absent, and '' keeps equality
-- filters such as target_worker = '' simple); optional references to other rows are nullable uuid; json documents
-- are jsonb and NULL when empty. Times are timestamptz written by the store at microsecond precision.
-- There are no foreign keys between tables: tasks may be stored before the VM or job they create, and rows are
-- never deleted (VMs end in status 'deleted'), so references are checked by the application layer.

-- +goose Up
CREATE TABLE vms (
    id          uuid        PRIMARY KEY,
    owner_id    text        NOT NULL,
    name        text        NOT NULL,
    status      text        NOT NULL,
    vcpu_count  integer     NOT NULL DEFAULT 0,
    memory_mb   integer     NOT NULL DEFAULT 0,
    image       text        NOT NULL DEFAULT '',
    kernel_path text        NOT NULL DEFAULT '',
    rootfs_path text        NOT NULL DEFAULT '',
    socket_path text        NOT NULL DEFAULT '',
    worker_id   text        NOT NULL DEFAULT '',
    error       text        NOT NULL DEFAULT '',
    metadata    jsonb,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    started_at  timestamptz,
    stopped_at  timestamptz,
    CONSTRAINT vms_status_check
        CHECK (status IN ('pending', 'creating', 'running', 'stopping', 'stopped', 'deleted', 'failed'))
);
-- A name is unique per owner among VMs that still exist; deleted VMs free their name.
CREATE UNIQUE INDEX vms_owner_name_live ON vms (owner_id, name) WHERE status <> 'deleted';
CREATE INDEX vms_created ON vms (created_at DESC, id DESC);
CREATE INDEX vms_owner_created ON vms (owner_id, created_at DESC, id DESC);
CREATE INDEX vms_worker_created ON vms (worker_id, created_at DESC, id DESC);
CREATE INDEX vms_status_created ON vms (status, created_at DESC, id DESC);

CREATE TABLE tasks (
    id            uuid        PRIMARY KEY,
    owner_id      text        NOT NULL,
    type          text        NOT NULL,
    status        text        NOT NULL,
    priority      text        NOT NULL,
    payload       jsonb,
    result        jsonb,
    error         text        NOT NULL DEFAULT '',
    vm_id         uuid,
    job_id        uuid,
    target_worker text        NOT NULL DEFAULT '',
    worker_id     text        NOT NULL DEFAULT '',
    max_retries   integer     NOT NULL DEFAULT 0,
    retry_count   integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    scheduled_at  timestamptz,
    started_at    timestamptz,
    completed_at  timestamptz,
    CONSTRAINT tasks_status_check CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    CONSTRAINT tasks_priority_check CHECK (priority IN ('critical', 'high', 'default', 'low'))
);
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_owner_created ON tasks (owner_id, created_at DESC, id DESC);
CREATE INDEX tasks_vm_created ON tasks (vm_id, created_at DESC, id DESC) WHERE vm_id IS NOT NULL;
CREATE INDEX tasks_job_created ON tasks (job_id, created_at DESC, id DESC) WHERE job_id IS NOT NULL;
-- Queue recovery asks for unfinished tasks by status and pinned worker.
CREATE INDEX tasks_status_target_created ON tasks (status, target_worker, created_at DESC, id DESC);
CREATE INDEX tasks_target_created ON tasks (target_worker, created_at DESC, id DESC);

CREATE TABLE jobs (
    id              uuid        PRIMARY KEY,
    owner_id        text        NOT NULL,
    vm_id           uuid,
    vm_spec         jsonb,
    commands        jsonb,
    stop_on_error   boolean     NOT NULL DEFAULT false,
    delete_vm_after boolean     NOT NULL DEFAULT false,
    status          text        NOT NULL,
    task_id         uuid,
    error           text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    started_at      timestamptz,
    completed_at    timestamptz,
    CONSTRAINT jobs_status_check CHECK (status IN ('pending', 'running', 'completed', 'failed'))
);
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at DESC, id DESC);

CREATE TABLE executions (
    id               uuid        PRIMARY KEY,
    owner_id         text        NOT NULL,
    vm_id            uuid        NOT NULL,
    job_id           uuid,
    task_id          uuid,
    seq              integer     NOT NULL DEFAULT 0,
    status           text        NOT NULL,
    command          text        NOT NULL,
    args             jsonb,
    env              jsonb,
    working_dir      text        NOT NULL DEFAULT '',
    timeout_seconds  integer     NOT NULL DEFAULT 0,
    exit_code        integer,
    -- Command output is arbitrary bytes (NUL, invalid UTF-8), which a text column would reject.
    stdout           bytea       NOT NULL DEFAULT ''::bytea,
    stderr           bytea       NOT NULL DEFAULT ''::bytea,
    stdout_truncated boolean     NOT NULL DEFAULT false,
    stderr_truncated boolean     NOT NULL DEFAULT false,
    timed_out        boolean     NOT NULL DEFAULT false,
    error            text        NOT NULL DEFAULT '',
    worker_id        text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    completed_at     timestamptz,
    duration_ms      bigint,
    CONSTRAINT executions_status_check CHECK (status IN ('pending', 'running', 'completed', 'failed'))
);
CREATE INDEX executions_created ON executions (created_at DESC, id DESC);
CREATE INDEX executions_owner_created ON executions (owner_id, created_at DESC, id DESC);
CREATE INDEX executions_vm_created ON executions (vm_id, created_at DESC, id DESC);
CREATE INDEX executions_job_seq ON executions (job_id, seq, created_at, id) WHERE job_id IS NOT NULL;
CREATE INDEX executions_task ON executions (task_id) WHERE task_id IS NOT NULL;

CREATE TABLE workers (
    id             text        PRIMARY KEY,
    hostname       text        NOT NULL DEFAULT '',
    backend        text        NOT NULL DEFAULT '',
    status         text        NOT NULL,
    capacity       integer     NOT NULL DEFAULT 0,
    metadata       jsonb,
    started_at     timestamptz NOT NULL,
    last_heartbeat timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    owner_id     text        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    prefix       text        NOT NULL,
    hash         text        NOT NULL,
    admin        boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_hash_unique UNIQUE (hash),
    CONSTRAINT api_keys_prefix_unique UNIQUE (prefix)
);
CREATE INDEX api_keys_created ON api_keys (created_at DESC, id DESC);
CREATE INDEX api_keys_owner ON api_keys (owner_id);

-- +goose Down
DROP TABLE api_keys;
DROP TABLE workers;
DROP TABLE executions;
DROP TABLE jobs;
DROP TABLE tasks;
DROP TABLE vms;
