package client

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// PauseVM asks for a running VM's pause and lets the server hold the answer up to wait (0: answer at once). done
// reports whether the task finished in that time; then acc.Task is final. Pausing a paused VM succeeds.
func (c *Client) PauseVM(ctx context.Context, id string, wait time.Duration) (acc *TaskAccepted, done bool, err error) {
	return c.vmAction(ctx, id, "pause", wait)
}

// ResumeVM asks for a paused VM's resume, like PauseVM. Resuming a running VM succeeds.
func (c *Client) ResumeVM(ctx context.Context, id string, wait time.Duration) (acc *TaskAccepted, done bool, err error) {
	return c.vmAction(ctx, id, "resume", wait)
}

func (c *Client) vmAction(ctx context.Context, id, action string, wait time.Duration) (*TaskAccepted, bool, error) {
	acc := new(TaskAccepted)
	status, err := c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(id)+"/"+action, waitQuery(wait), nil, acc)
	if err != nil {
		return nil, false, err
	}
	return acc, status != http.StatusAccepted, nil
}

// Keepalive counts as activity in the VM and pushes its hard expiry to at least seconds from now (0: its own
// timeout); it returns the VM with its new expires_at and last_activity_at.
func (c *Client) Keepalive(ctx context.Context, id string, seconds int) (*VM, error) {
	vm := new(VM)
	var body any
	if seconds != 0 {
		body = KeepaliveRequest{Seconds: seconds}
	}
	if _, err := c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(id)+"/keepalive", nil, body, vm); err != nil {
		return nil, err
	}
	return vm, nil
}
