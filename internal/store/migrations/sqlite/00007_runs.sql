-- Agent runs (internal/model/run.go): one agent working on one repository in one VM. The request is kept as one
-- document (spec), the result as another; status, owner, VM and repository are columns because lists filter on
-- them. The diff is its own column, read only by GET /runs/{id}/diff. run_events is the transcript, numbered per run
-- without gaps, so a stream can be replayed from any point (Last-Event-ID). Keep in step with
-- ../postgres/00007_runs.sql.

-- +goose Up
CREATE TABLE runs (
    id               TEXT    NOT NULL PRIMARY KEY,
    owner_id         TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'preparing', 'running', 'completed', 'failed', 'cancelled')),
    vm_id            TEXT,
    repo_url         TEXT    NOT NULL,
    agent            TEXT    NOT NULL,
    spec             TEXT    NOT NULL CHECK (json_valid(spec)),
    task_id          TEXT,
    worker_id        TEXT    NOT NULL DEFAULT '',
    error            TEXT    NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    usage            TEXT CHECK (usage IS NULL OR json_valid(usage)),
    result           TEXT CHECK (result IS NULL OR json_valid(result)),
    diff             BLOB,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    started_at       TEXT,
    completed_at     TEXT
) STRICT;
CREATE INDEX runs_created ON runs (created_at DESC, id DESC);
CREATE INDEX runs_owner_created ON runs (owner_id, created_at DESC, id DESC);
CREATE INDEX runs_vm ON runs (vm_id);

CREATE TABLE run_events (
    run_id     TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL CHECK (seq > 0),
    type       TEXT    NOT NULL CHECK (length(type) BETWEEN 1 AND 32),
    data       TEXT    NOT NULL CHECK (json_valid(data)),
    created_at TEXT    NOT NULL,
    PRIMARY KEY (run_id, seq)
) STRICT;

-- +goose Down
DROP TABLE run_events;
DROP TABLE runs;
