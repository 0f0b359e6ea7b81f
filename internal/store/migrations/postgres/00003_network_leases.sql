-- Address leases of the network manager (internal/network). Keep in step with ../sqlite/00003_network_leases.sql.
-- A scope is one allocation pool (a host and its bridge's CIDR). An address, a VM and a MAC (derived from the
-- address) each appear at most once per scope; Acquire also serialises on a transaction advisory lock per scope.

-- +goose Up
CREATE TABLE network_leases (
    scope      text        NOT NULL,
    ip         text        NOT NULL,
    vm_id      text        NOT NULL,
    owner      text        NOT NULL DEFAULT '',
    mac        text        NOT NULL,
    created_at timestamptz NOT NULL,
    CONSTRAINT network_leases_pkey PRIMARY KEY (scope, ip),
    CONSTRAINT network_leases_scope_vm UNIQUE (scope, vm_id),
    CONSTRAINT network_leases_scope_mac UNIQUE (scope, mac)
);

-- +goose Down
DROP TABLE network_leases;
