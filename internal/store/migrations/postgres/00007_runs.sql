-- Agent runs (internal/model/run.go): one agent working on one repository in one VM. The request is kept as one
-- document (spec), the result as another; status, owner, VM and repository are columns because lists filter on
-- them. The diff is its own column, read only by GET /runs/{id}/diff. run_events is the transcript, numbered per run
-- without gaps, so a stream can be replayed from any point (Last-Event-ID). Keep in step with
-- ../sqlite/00007_runs.sql.

-- +goose Up
CREATE TABLE runs (
    id               uuid        PRIMARY KEY,
    owner_id         text        NOT NULL,
    status           text        NOT NULL,
    vm_id            uuid,
    repo_url         text        NOT NULL,
    agent            text        NOT NULL,
    spec             jsonb       NOT NULL,
    task_id          uuid,
    worker_id        text        NOT NULL DEFAULT '',
    error            text        NOT NULL DEFAULT '',
    cancel_requested boolean     NOT NULL DEFAULT false,
    usage            jsonb,
    result           jsonb,
    diff             bytea,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    started_at       timestamptz,
    completed_at     timestamptz,
    CONSTRAINT runs_status_check
        CHECK (status IN ('pending', 'preparing', 'running', 'completed', 'failed', 'cancelled'))
);
CREATE INDEX runs_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_owner_created ON runs (owner_id, created_at DESC, id DESC);
CREATE INDEX runs_vm ON runs (vm_id);

CREATE TABLE run_events (
    run_id     uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        bigint      NOT NULL CHECK (seq > 0),
    type       text        NOT NULL CHECK (length(type) BETWEEN 1 AND 32),
    data       jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT run_events_pkey PRIMARY KEY (run_id, seq)
);

-- +goose Down
DROP TABLE run_events;
DROP TABLE runs;
