// Package mcpserver is Aetherium's Model Context Protocol server: tools and resources through which an AI agent
// gets sandboxes (create a VM, run commands, read and write its files, start agent runs) over the official Go
// SDK (github.com/modelcontextprotocol/go-sdk).
//
// Design: the tools are a thin layer over API, a small interface that *client.Client (pkg/client) satisfies, so
// every side effect goes through Aetherium's REST API and is scoped to the owner of the API key that made the
// call, exactly as the API scopes it. Two transports use the same tools:
//
//   - stdio (`aetherium mcp`, internal/cli): the client talks to the API at AETHERIUM_SERVER with
//     AETHERIUM_API_KEY, over the network like every other CLI command;
//   - streamable HTTP, mounted by the gateway at /api/v1/mcp behind the API's own authentication (HTTPHandler):
//     each HTTP request builds a server whose client forwards that request's bearer key to the API handler in
//     the same process (InProcessTransport), with no network hop, so the tools act as the authenticated caller.
//     The handler is stateless (no Mcp-Session-Id): a session bound to the key that opened it could be replayed
//     with another key, while a stateless request is always exactly its own caller.
package mcpserver

import (
	"context"
	"io"
	"log/slog"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aetherium/aetherium/pkg/client"
)

// API is the part of Aetherium's REST API the tools use. *client.Client satisfies it.
type API interface {
	CreateVMAndWait(ctx context.Context, req client.CreateVMRequest) (*client.VM, error)
	ListVMs(ctx context.Context, opts client.ListVMsOptions) (*client.VMList, error)
	DeleteVMAndWait(ctx context.Context, id string) (*client.Task, error)
	ExecAndWait(ctx context.Context, vmID string, req client.ExecuteRequest) (*client.Execution, error)
	Download(ctx context.Context, vmID, path string) (*client.FileDownload, error)
	Upload(ctx context.Context, vmID, path string, r io.Reader, opts client.UploadOptions) (*client.FileInfo, error)
	ListDir(ctx context.Context, vmID, path string) (*client.FileList, error)
	CreateRun(ctx context.Context, req client.CreateRunRequest) (*client.RunAccepted, error)
	GetRun(ctx context.Context, id string) (*client.Run, error)
	VMLogs(ctx context.Context, vmID string, q client.LogQuery) (*client.LogList, error)
}

var _ API = (*client.Client)(nil)

// Options configure New.
type Options struct {
	// Version is reported to clients in the initialize answer (default "dev").
	Version string
	// Logger receives the SDK's log (nil: nothing is logged).
	Logger *slog.Logger
}

// instructions is sent to clients at initialize; models read it to know how to use the tools together.
const instructions = `Aetherium gives you isolated Linux sandboxes (VMs). Typical flow: create_vm (returns the VM's id),
then exec to run commands, write_file / read_file / list_dir to work with files, and delete_vm when done. VMs can
be referred to by id or by name. start_run starts a coding agent on a git repository in a sandbox; poll it with
get_run. A VM's console log is the resource aetherium://vms/{id}/logs.`

// New returns an MCP server whose tools act through api.
func New(api API, opts Options) *mcp.Server {
	if opts.Version == "" {
		opts.Version = "dev"
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "aetherium", Title: "Aetherium sandboxes", Version: opts.Version},
		&mcp.ServerOptions{Instructions: instructions, Logger: opts.Logger})
	t := &tools{api: api}
	t.register(s)
	return s
}
