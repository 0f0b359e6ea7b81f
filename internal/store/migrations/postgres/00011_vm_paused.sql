-- +goose Up
-- A VM can be paused (issue 15): its guest is frozen and keeps its memory, disk and network lease.
ALTER TABLE vms DROP CONSTRAINT vms_status_check;
ALTER TABLE vms ADD CONSTRAINT vms_status_check
    CHECK (status IN ('pending', 'creating', 'running', 'paused', 'stopping', 'stopped', 'deleted', 'failed'));

-- +goose Down
-- A paused VM's guest is still there, frozen: the older schema can only call it running.
UPDATE vms SET status = 'running' WHERE status = 'paused';
ALTER TABLE vms DROP CONSTRAINT vms_status_check;
ALTER TABLE vms ADD CONSTRAINT vms_status_check
    CHECK (status IN ('pending', 'creating', 'running', 'stopping', 'stopped', 'deleted', 'failed'));
