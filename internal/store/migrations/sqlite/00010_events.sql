-- The owner-scoped event log (GET /api/v1/events). Keep in step with ../postgres/00010_events.sql.
-- Rows are appended by the transactions that change a VM's, task's, execution's or run's state; id is the SSE id.
-- event_horizons remembers, per owner, the highest id pruned, so a client resuming from before it is told so.

-- +goose Up
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id   TEXT    NOT NULL,
    type       TEXT    NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    subject    TEXT    NOT NULL,
    vm_id      TEXT    NOT NULL DEFAULT '',
    data       TEXT    NOT NULL CHECK (json_valid(data)),
    created_at TEXT    NOT NULL
) STRICT;
CREATE INDEX events_owner ON events (owner_id, id);
CREATE INDEX events_created ON events (created_at);

CREATE TABLE event_horizons (
    owner_id       TEXT    PRIMARY KEY,
    pruned_through INTEGER NOT NULL
) STRICT;

-- +goose Down
DROP TABLE event_horizons;
DROP TABLE events;
