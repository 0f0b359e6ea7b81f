//go:build linux

package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// Request bodies of Firecracker's API (firecracker-api.yaml, definitions of the same names). Only the fields this
// backend sets; optional ones are omitted when zero so that Firecracker's defaults apply.
type machineConfig struct {
	VCPUCount       int  `json:"vcpu_count"`
	MemSizeMib      int  `json:"mem_size_mib"`
	SMT             bool `json:"smt"`
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
}

type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

type networkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

type vsockDevice struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

type logger struct {
	LogPath    string `json:"log_path"`
	Level      string `json:"level"`
	ShowLevel  bool   `json:"show_level"`
	ShowOrigin bool   `json:"show_log_origin"`
}

type instanceAction struct {
	ActionType string `json:"action_type"`
}

type vmStateBody struct {
	State string `json:"state"`
}

// SnapshotType is a snapshot's kind: a full copy of guest memory, or only the pages dirtied since the last one.
type SnapshotType string

// Snapshot types.
const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

type snapshotCreate struct {
	MemFilePath  string       `json:"mem_file_path"`
	SnapshotPath string       `json:"snapshot_path"`
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
}

type memoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type snapshotLoad struct {
	SnapshotPath string         `json:"snapshot_path"`
	MemBackend   *memoryBackend `json:"mem_backend,omitempty"`
	ResumeVM     bool           `json:"resume_vm"`
	// EnableDiffSnapshots keeps dirty page tracking on in the restored VM, so that it can make Diff snapshots
	// too. The spec deprecates it in favour of track_dirty_pages, a later name; this is the one the releases since
	// 1.1 that this backend supports all know (their snapshot docs use it).
	EnableDiffSnapshots bool `json:"enable_diff_snapshots,omitempty"`
}

// APIError is an error answer of Firecracker's API: its status and the fault_message of its body.
type APIError struct {
	Method, Path string
	Status       int
	Fault        string
}

func (e *APIError) Error() string {
	msg := e.Fault
	if msg == "" {
		msg = "(no fault message)"
	}
	return fmt.Sprintf("firecracker API %s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), msg)
}

// apiClient talks to one firecracker process over its API socket.
type apiClient struct {
	sock string
	http *http.Client
}

func newAPIClient(sock string) *apiClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		// One request at a time, rarely: no point in keeping connections.
		DisableKeepAlives: true,
	}
	return &apiClient{sock: sock, http: &http.Client{Transport: tr}}
}

// call sends body as JSON with method to path and expects 204 (or 200); anything else is an *APIError.
func (c *apiClient) call(ctx context.Context, method, path string, body any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker API %s %s: encode: %w", method, path, err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker API %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker API %s %s (socket %s): %w", method, path, c.sock, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusOK {
		return nil
	}
	apiErr := &APIError{Method: method, Path: path, Status: resp.StatusCode}
	var fault struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(data, &fault) == nil && fault.FaultMessage != "" {
		apiErr.Fault = fault.FaultMessage
	} else {
		apiErr.Fault = strings.TrimSpace(string(data))
	}
	return apiErr
}

// ready reports whether the API socket answers (GET /, describeInstance).
func (c *apiClient) ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("firecracker API GET /: %s", resp.Status)
	}
	return nil
}

// instanceState is the VM's state as GET / (describeInstance) gives it: "Not started", "Running" or "Paused".
func (c *apiClient) instanceState(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("firecracker API GET / (socket %s): %w", c.sock, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", &APIError{Method: http.MethodGet, Path: "/", Status: resp.StatusCode, Fault: strings.TrimSpace(string(data))}
	}
	var info struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return "", fmt.Errorf("firecracker API GET /: %w", err)
	}
	return info.State, nil
}
