-- Address leases of the network manager (internal/network). Keep in step with ../postgres/00003_network_leases.sql.
-- A scope is one allocation pool (a host and its bridge's CIDR). An address, a VM and a MAC (derived from the
-- address) each appear at most once per scope; Acquire runs in one BEGIN IMMEDIATE transaction.

-- +goose Up
CREATE TABLE network_leases (
    scope      TEXT NOT NULL,
    ip         TEXT NOT NULL,
    vm_id      TEXT NOT NULL,
    owner      TEXT NOT NULL DEFAULT '',
    mac        TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (scope, ip),
    CONSTRAINT network_leases_scope_vm UNIQUE (scope, vm_id),
    CONSTRAINT network_leases_scope_mac UNIQUE (scope, mac)
) STRICT;

-- +goose Down
DROP TABLE network_leases;
