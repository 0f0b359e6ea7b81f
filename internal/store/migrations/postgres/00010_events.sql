-- The owner-scoped event log (GET /api/v1/events). Keep in step with ../sqlite/00010_events.sql.
-- Rows are appended by the transactions that change a VM's, task's, execution's or run's state; id is the SSE id.
-- Appends take a transaction-level advisory lock first (see appendEvents in the store), so ids become visible in
-- order: a reader listing "id > last" never skips an id that commits later.
-- event_horizons remembers, per owner, the highest id pruned, so a client resuming from before it is told so.

-- +goose Up
CREATE TABLE events (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id   text        NOT NULL,
    type       text        NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
    subject    text        NOT NULL,
    vm_id      text        NOT NULL DEFAULT '',
    data       json        NOT NULL, -- json, not jsonb: kept byte for byte, as SQLite does
    created_at timestamptz NOT NULL
);
CREATE INDEX events_owner ON events (owner_id, id);
CREATE INDEX events_created ON events (created_at);

CREATE TABLE event_horizons (
    owner_id       text   PRIMARY KEY,
    pruned_through bigint NOT NULL
);

-- +goose Down
DROP TABLE event_horizons;
DROP TABLE events;
