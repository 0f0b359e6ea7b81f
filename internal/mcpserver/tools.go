package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/google/uuid"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aetherium/aetherium/pkg/client"
)

// Bounds of the tools' arguments. They keep one tool call small enough for a model's context and bounded in
// time; the API enforces its own limits behind them.
const (
	DefaultExecTimeout = 60   // seconds
	MaxExecTimeout     = 3600 // seconds
	// DefaultOutputBytes and MaxOutputBytes bound what exec returns of each stream (the API keeps at most 1 MiB).
	DefaultOutputBytes = 64 << 10
	MaxOutputBytes     = 1 << 20
	// DefaultReadBytes and MaxReadBytes bound what read_file returns.
	DefaultReadBytes = 256 << 10
	MaxReadBytes     = 1 << 20
	// MaxWriteBytes bounds write_file's content once decoded (the MCP request carrying it is bounded too).
	MaxWriteBytes = 768 << 10
	// DefaultDirEntries and MaxDirEntries bound what list_dir returns.
	DefaultDirEntries = 500
	MaxDirEntries     = 5000
	// createVMTimeout bounds the wait for a VM to be running; startGrace is added to an exec's timeout for the
	// time to queue and start the command.
	createVMTimeout = 5 * time.Minute
	startGrace      = 60 * time.Second
	// maxNamePages bounds how many pages of VMs a name lookup reads.
	maxNamePages = 20
)

type tools struct{ api API }

// ---- inputs and outputs. Descriptions are written for the model that calls the tools.

type vmRef struct {
	VM string `json:"vm" jsonschema:"the VM's id (as returned by create_vm or list_vms) or its name"`
}

type createVMIn struct {
	Name     string   `json:"name" jsonschema:"a name for the VM: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit; unique among your VMs is easiest"`
	Image    string   `json:"image,omitempty" jsonschema:"the VM's image (template); omit for the server's default image"`
	VCPUs    int      `json:"vcpus,omitempty" jsonschema:"virtual CPUs; omit for the server's default (1)"`
	MemoryMB int      `json:"memory_mb,omitempty" jsonschema:"memory in MiB; omit for the server's default (512)"`
	Tools    []string `json:"tools,omitempty" jsonschema:"tools to install when the image lacks them, e.g. \"jq\" or \"node@22\""`
}

type vmOut struct {
	ID       string    `json:"id" jsonschema:"the VM's id: pass it as vm to the other tools"`
	Name     string    `json:"name"`
	Status   string    `json:"status" jsonschema:"pending, creating, running, stopping, deleted or failed"`
	Image    string    `json:"image,omitempty"`
	VCPUs    int       `json:"vcpus"`
	MemoryMB int       `json:"memory_mb"`
	Error    string    `json:"error,omitempty"`
	Created  time.Time `json:"created_at"`
}

type listVMsIn struct {
	Status []string `json:"status,omitempty" jsonschema:"only VMs in one of these statuses; omit for all"`
	Limit  int      `json:"limit,omitempty" jsonschema:"at most this many VMs"`
	Cursor string   `json:"cursor,omitempty" jsonschema:"next_cursor of a previous list_vms, to get the next page"`
}

type listVMsOut struct {
	VMs        []vmOut `json:"vms"`
	NextCursor string  `json:"next_cursor,omitempty" jsonschema:"set when there are more VMs: pass it as cursor"`
}

type execIn struct {
	VM             string            `json:"vm" jsonschema:"the VM's id or name"`
	Command        string            `json:"command,omitempty" jsonschema:"the program to run, e.g. \"ls\" or \"/usr/bin/python3\" (no shell: use shell for pipes, redirections, globs); give command or shell, not both"`
	Args           []string          `json:"args,omitempty" jsonschema:"the program's arguments, one per element (only with command)"`
	Shell          string            `json:"shell,omitempty" jsonschema:"a command line run by /bin/sh -c, e.g. \"cd /src && make test 2>&1 | tail -50\"; give command or shell, not both"`
	WorkingDir     string            `json:"working_dir,omitempty" jsonschema:"absolute directory to run in; omit for the default"`
	Env            map[string]string `json:"env,omitempty" jsonschema:"extra environment variables"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty" jsonschema:"kill the command after this many seconds"`
	MaxOutputBytes int               `json:"max_output_bytes,omitempty" jsonschema:"return at most this many bytes of stdout and of stderr each (the rest is cut, and *_truncated is true)"`
}

type execOut struct {
	ExecutionID     string `json:"execution_id"`
	ExitCode        *int   `json:"exit_code" jsonschema:"the command's exit code; null when it was killed before exiting"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	StdoutTruncated bool   `json:"stdout_truncated" jsonschema:"true when stdout was longer than what is returned"`
	StderrTruncated bool   `json:"stderr_truncated" jsonschema:"true when stderr was longer than what is returned"`
	TimedOut        bool   `json:"timed_out" jsonschema:"true when the command was killed by timeout_seconds"`
	DurationMS      int64  `json:"duration_ms"`
}

type readFileIn struct {
	VM       string `json:"vm" jsonschema:"the VM's id or name"`
	Path     string `json:"path" jsonschema:"absolute path of the file in the VM"`
	MaxBytes int    `json:"max_bytes,omitempty" jsonschema:"return at most this many bytes from the start of the file"`
}

type readFileOut struct {
	Path          string `json:"path"`
	Size          int64  `json:"size" jsonschema:"the file's full size in bytes"`
	Content       string `json:"content,omitempty" jsonschema:"the bytes read, when they are UTF-8 text"`
	ContentBase64 string `json:"content_base64,omitempty" jsonschema:"the bytes read, base64, when they are not UTF-8 text"`
	Truncated     bool   `json:"truncated" jsonschema:"true when only the first max_bytes bytes are returned"`
	Mode          string `json:"mode" jsonschema:"permission bits in octal, e.g. 0644"`
}

type writeFileIn struct {
	VM            string `json:"vm" jsonschema:"the VM's id or name"`
	Path          string `json:"path" jsonschema:"absolute path of the file in the VM; an existing file is replaced"`
	Content       string `json:"content" jsonschema:"the file's content (text, or base64 when encoding is base64)"`
	Encoding      string `json:"encoding,omitempty" jsonschema:"how content is encoded: text (UTF-8, the default) or base64"`
	Mode          string `json:"mode,omitempty" jsonschema:"permission bits in octal, e.g. 0755 for a script; default 0644"`
	CreateParents bool   `json:"create_parents,omitempty" jsonschema:"create missing parent directories (like mkdir -p)"`
}

type fileOut struct {
	Path       string    `json:"path"`
	Name       string    `json:"name"`
	Type       string    `json:"type" jsonschema:"file, directory, symlink or other"`
	Size       int64     `json:"size"`
	Mode       string    `json:"mode"`
	ModTime    time.Time `json:"mod_time"`
	LinkTarget string    `json:"link_target,omitempty"`
}

type listDirIn struct {
	VM         string `json:"vm" jsonschema:"the VM's id or name"`
	Path       string `json:"path" jsonschema:"absolute path of the directory in the VM"`
	MaxEntries int    `json:"max_entries,omitempty" jsonschema:"return at most this many entries (sorted by name)"`
}

type listDirOut struct {
	Path      string    `json:"path"`
	Entries   []fileOut `json:"entries"`
	Truncated bool      `json:"truncated" jsonschema:"true when the directory has more entries than returned"`
}

type deleteVMOut struct {
	ID      string `json:"id"`
	Deleted bool   `json:"deleted"`
}

type startRunIn struct {
	RepoURL        string   `json:"repo_url" jsonschema:"the git repository: https://host/path, ssh://host/path or user@host:path"`
	Ref            string   `json:"ref,omitempty" jsonschema:"branch, tag or commit to start from; default: the repository's default branch"`
	Prompt         string   `json:"prompt" jsonschema:"what the agent should do"`
	Agent          string   `json:"agent,omitempty" jsonschema:"the agent of the server's catalog; default claude-code"`
	Model          string   `json:"model,omitempty" jsonschema:"the model the agent uses; default: the agent's"`
	MaxTurns       int      `json:"max_turns,omitempty" jsonschema:"bound on the agent's turns"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty" jsonschema:"stop the agent after this many seconds; default: the server's"`
	VM             string   `json:"vm,omitempty" jsonschema:"a running VM (id or name) to run in; default: a new VM, deleted afterwards"`
	KeepVM         bool     `json:"keep_vm,omitempty" jsonschema:"keep the VM the run created, to look at it afterwards"`
	PushBranch     string   `json:"push_branch,omitempty" jsonschema:"push the agent's commits to this branch of the repository"`
	Tools          []string `json:"tools,omitempty" jsonschema:"tools to install in the VM first, e.g. \"go@1.24\""`
}

type runRef struct {
	RunID string `json:"run_id" jsonschema:"the run's id, as returned by start_run"`
}

type runOut struct {
	ID           string     `json:"id"`
	Status       string     `json:"status" jsonschema:"pending, preparing, running, completed, failed or cancelled; poll get_run until it is one of the last three"`
	Done         bool       `json:"done"`
	Agent        string     `json:"agent"`
	VMID         string     `json:"vm_id,omitempty"`
	Error        string     `json:"error,omitempty"`
	ResultText   string     `json:"result_text,omitempty" jsonschema:"what the agent said last"`
	ResultError  bool       `json:"result_is_error,omitempty"`
	HeadCommit   string     `json:"head_commit,omitempty"`
	PushedBranch string     `json:"pushed_branch,omitempty"`
	FilesChanged int        `json:"files_changed,omitempty"`
	Insertions   int        `json:"insertions,omitempty"`
	Deletions    int        `json:"deletions,omitempty"`
	CreatedAt    time.Time  `json:"created_at"`
	CompletedAt  *time.Time `json:"completed_at,omitempty"`
}

// ---- registration

func (t *tools) register(s *mcp.Server) {
	idempotentRead := &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true}
	addTool(s, &mcp.Tool{Name: "create_vm", Title: "Create a sandbox VM",
		Description: "Create an isolated Linux VM (a sandbox) and wait until it is running. Returns its id, to pass as vm to the other tools. Delete it with delete_vm when done.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)},
	}, func(sc *jsonschema.Schema) {
		prop(sc, "name").MinLength, prop(sc, "name").MaxLength, prop(sc, "name").Pattern = ptr(1), ptr(63), `^[A-Za-z0-9][A-Za-z0-9._-]*$`
		bound(prop(sc, "vcpus"), 1, 32)
		bound(prop(sc, "memory_mb"), 128, 65536)
		prop(sc, "tools").MaxItems = ptr(50)
	}, t.createVM)
	addTool(s, &mcp.Tool{Name: "list_vms", Title: "List VMs", Annotations: idempotentRead,
		Description: "List your VMs, newest first, with their id, name and status."},
		func(sc *jsonschema.Schema) {
			prop(sc, "status").Items.Enum = []any{"pending", "creating", "running", "stopping", "deleted", "failed"}
			bound(prop(sc, "limit"), 1, 100)
		}, t.listVMs)
	addTool(s, &mcp.Tool{Name: "exec", Title: "Run a command in a VM",
		Description: "Run a command in a running VM and wait for it to end. Give either command (a program, with args) or shell (a /bin/sh -c command line). A non-zero exit code is a result, not an error. Output beyond max_output_bytes is cut (see stdout_truncated).",
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(true)},
	}, func(sc *jsonschema.Schema) {
		prop(sc, "command").MinLength = ptr(1)
		prop(sc, "shell").MinLength = ptr(1)
		prop(sc, "args").MaxItems = ptr(1000)
		prop(sc, "working_dir").Pattern = `^/`
		bound(prop(sc, "timeout_seconds"), 1, MaxExecTimeout)
		setDefault(prop(sc, "timeout_seconds"), DefaultExecTimeout)
		bound(prop(sc, "max_output_bytes"), 1, MaxOutputBytes)
		setDefault(prop(sc, "max_output_bytes"), DefaultOutputBytes)
	}, t.exec)
	addTool(s, &mcp.Tool{Name: "read_file", Title: "Read a file of a VM", Annotations: idempotentRead,
		Description: "Read a file of a running VM: text comes back as content, other bytes as content_base64."},
		func(sc *jsonschema.Schema) {
			absPath(prop(sc, "path"))
			bound(prop(sc, "max_bytes"), 1, MaxReadBytes)
			setDefault(prop(sc, "max_bytes"), DefaultReadBytes)
		}, t.readFile)
	addTool(s, &mcp.Tool{Name: "write_file", Title: "Write a file in a VM",
		Description: "Write a file in a running VM, replacing any existing file at that path. The file appears only once completely written.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(true), IdempotentHint: true}},
		func(sc *jsonschema.Schema) {
			absPath(prop(sc, "path"))
			prop(sc, "content").MaxLength = ptr(MaxWriteBytes * 4 / 3)
			prop(sc, "encoding").Enum = []any{"text", "base64"}
			setDefault(prop(sc, "encoding"), "text")
			prop(sc, "mode").Pattern = `^0?[0-7]{3}$|^[0-7]{4}$`
		}, t.writeFile)
	addTool(s, &mcp.Tool{Name: "list_dir", Title: "List a directory of a VM", Annotations: idempotentRead,
		Description: "List the entries of a directory of a running VM, sorted by name, with type, size and mode."},
		func(sc *jsonschema.Schema) {
			absPath(prop(sc, "path"))
			bound(prop(sc, "max_entries"), 1, MaxDirEntries)
			setDefault(prop(sc, "max_entries"), DefaultDirEntries)
		}, t.listDir)
	addTool(s, &mcp.Tool{Name: "delete_vm", Title: "Delete a VM",
		Description: "Delete a VM and everything in it, and wait until it is gone.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(true), IdempotentHint: true}},
		nil, t.deleteVM)
	addTool(s, &mcp.Tool{Name: "start_run", Title: "Start a coding agent run",
		Description: "Start a coding agent (claude-code by default) on a git repository in a fresh sandbox. Returns at once with the run's id; poll get_run until done is true.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(true)}},
		func(sc *jsonschema.Schema) {
			prop(sc, "repo_url").MinLength = ptr(1)
			prop(sc, "prompt").MinLength = ptr(1)
			bound(prop(sc, "max_turns"), 1, 1000)
			bound(prop(sc, "timeout_seconds"), 1, 24*3600)
		}, t.startRun)
	addTool(s, &mcp.Tool{Name: "get_run", Title: "Get a run", Annotations: idempotentRead,
		Description: "Get a run's status and, once done, its result: the agent's last words, commits and diff size."},
		func(sc *jsonschema.Schema) { prop(sc, "run_id").MinLength = ptr(1) }, t.getRun)

	s.AddResourceTemplate(&mcp.ResourceTemplate{
		Name: "vm-logs", Title: "VM console log", URITemplate: "aetherium://vms/{id}/logs", MIMEType: "text/plain",
		Description: "What a VM printed on its console (kept after the VM is deleted when the server keeps logs), oldest line first.",
	}, t.readLogs)
}

// addTool registers a typed tool whose input schema is inferred from In (required: the fields without
// omitempty; additionalProperties: false), then tightened by refine (bounds, patterns, enums, defaults). The SDK
// validates arguments against it and answers a violation as a tool error, never a protocol error.
func addTool[In, Out any](s *mcp.Server, tool *mcp.Tool, refine func(*jsonschema.Schema), h mcp.ToolHandlerFor[In, Out]) {
	sc, err := jsonschema.For[In](nil)
	if err != nil {
		panic(fmt.Sprintf("mcpserver: schema of %s: %v", tool.Name, err)) // a programming error, caught by tests
	}
	for name, p := range sc.Properties {
		// Inference types slices and maps as ["null", "array"]: an optional argument is left out, never null.
		if len(p.Types) == 2 && slices.Contains(p.Types, "null") {
			p.Type, p.Types = p.Types[slices.Index(p.Types, "null")^1], nil
		}
		if name == "vm" {
			p.MinLength = ptr(1)
		}
	}
	if refine != nil {
		refine(sc)
	}
	tool.InputSchema = sc
	mcp.AddTool(s, tool, h)
}

func prop(sc *jsonschema.Schema, name string) *jsonschema.Schema {
	p, ok := sc.Properties[name]
	if !ok {
		panic("mcpserver: no property " + name)
	}
	return p
}

func bound(p *jsonschema.Schema, lo, hi float64) { p.Minimum, p.Maximum = &lo, &hi }

func absPath(p *jsonschema.Schema) { p.Pattern, p.MinLength = `^/`, ptr(1) }

func setDefault(p *jsonschema.Schema, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	p.Default = b
}

func ptr[T any](v T) *T { return &v }

// ---- handlers. A returned error becomes a tool error (IsError) whose text the model reads.

func (t *tools) createVM(ctx context.Context, _ *mcp.CallToolRequest, in createVMIn) (*mcp.CallToolResult, vmOut, error) {
	ctx, cancel := context.WithTimeout(ctx, createVMTimeout)
	defer cancel()
	vm, err := t.api.CreateVMAndWait(ctx, client.CreateVMRequest{Name: in.Name, Image: in.Image, VCPUs: in.VCPUs,
		MemoryMB: in.MemoryMB, Tools: in.Tools})
	if err != nil {
		var te *client.TaskError
		var we *client.WaitError
		switch {
		case errors.As(err, &te) && vm != nil:
			return nil, vmOut{}, fmt.Errorf("vm %q (%s) failed to start: %s", in.Name, vm.ID, te.Message)
		case errors.As(err, &we) && vm != nil:
			return nil, vmOut{}, fmt.Errorf("vm %q (%s) is not running after %s (status %s); look again with list_vms",
				in.Name, vm.ID, createVMTimeout, vm.Status)
		}
		return nil, vmOut{}, fmt.Errorf("create vm %q: %w", in.Name, apiErr(err))
	}
	return nil, toVMOut(*vm), nil
}

func (t *tools) listVMs(ctx context.Context, _ *mcp.CallToolRequest, in listVMsIn) (*mcp.CallToolResult, listVMsOut, error) {
	l, err := t.api.ListVMs(ctx, client.ListVMsOptions{Status: in.Status, Limit: in.Limit, Cursor: in.Cursor})
	if err != nil {
		return nil, listVMsOut{}, fmt.Errorf("list vms: %w", apiErr(err))
	}
	out := listVMsOut{VMs: make([]vmOut, 0, len(l.VMs)), NextCursor: l.NextCursor}
	for _, vm := range l.VMs {
		out.VMs = append(out.VMs, toVMOut(vm))
	}
	return nil, out, nil
}

func (t *tools) exec(ctx context.Context, _ *mcp.CallToolRequest, in execIn) (*mcp.CallToolResult, execOut, error) {
	req := client.ExecuteRequest{Command: in.Command, Args: in.Args, Env: in.Env, WorkingDir: in.WorkingDir,
		TimeoutSeconds: in.TimeoutSeconds}
	switch {
	case in.Command != "" && in.Shell != "":
		return nil, execOut{}, errors.New("give command or shell, not both")
	case in.Shell != "":
		if len(in.Args) > 0 {
			return nil, execOut{}, errors.New("args go with command, not with shell: put them in the shell command line")
		}
		req.Command, req.Args = "/bin/sh", []string{"-c", in.Shell}
	case in.Command == "":
		return nil, execOut{}, errors.New("give command (a program) or shell (a command line)")
	}
	id, err := t.resolveVM(ctx, in.VM)
	if err != nil {
		return nil, execOut{}, err
	}
	// The command is killed after its timeout; the grace covers queueing and starting it.
	ctx, cancel := context.WithTimeout(ctx, time.Duration(in.TimeoutSeconds)*time.Second+startGrace)
	defer cancel()
	e, err := t.api.ExecAndWait(ctx, id, req)
	if err != nil {
		var te *client.TaskError
		var we *client.WaitError
		switch {
		case errors.As(err, &te):
			return nil, execOut{}, fmt.Errorf("the command could not be run in vm %q: %s", in.VM, te.Message)
		case errors.As(err, &we) && ctx.Err() != nil:
			return nil, execOut{}, fmt.Errorf("the command in vm %q has not ended %s after its timeout (task %s): the VM or its worker may be busy",
				in.VM, startGrace, we.TaskID)
		}
		return nil, execOut{}, fmt.Errorf("exec in vm %q: %w", in.VM, vmErr(in.VM, err))
	}
	out := execOut{ExecutionID: e.ID, ExitCode: e.ExitCode, TimedOut: e.TimedOut,
		StdoutTruncated: e.StdoutTruncated, StderrTruncated: e.StderrTruncated}
	var cut bool
	out.Stdout, cut = truncateUTF8(e.Stdout, in.MaxOutputBytes)
	out.StdoutTruncated = out.StdoutTruncated || cut
	out.Stderr, cut = truncateUTF8(e.Stderr, in.MaxOutputBytes)
	out.StderrTruncated = out.StderrTruncated || cut
	if e.DurationMS != nil {
		out.DurationMS = *e.DurationMS
	}
	return nil, out, nil
}

func (t *tools) readFile(ctx context.Context, _ *mcp.CallToolRequest, in readFileIn) (*mcp.CallToolResult, readFileOut, error) {
	id, err := t.resolveVM(ctx, in.VM)
	if err != nil {
		return nil, readFileOut{}, err
	}
	d, err := t.api.Download(ctx, id, in.Path)
	if err != nil {
		return nil, readFileOut{}, fmt.Errorf("read %s: %w", in.Path, vmErr(in.VM, err))
	}
	defer d.Close()
	// One byte more than asked tells a file that is longer than max_bytes from one that is exactly as long;
	// closing early stops the transfer of the rest.
	b, err := io.ReadAll(io.LimitReader(d, int64(in.MaxBytes)+1))
	if err != nil {
		return nil, readFileOut{}, fmt.Errorf("read %s: %w", in.Path, err)
	}
	out := readFileOut{Path: in.Path, Size: d.Size, Mode: client.ModeString(d.Mode)}
	if len(b) > in.MaxBytes {
		b, out.Truncated = b[:in.MaxBytes], true
	}
	if out.Size < int64(len(b)) {
		out.Size = int64(len(b)) // unknown length (chunked answer)
	}
	if utf8.Valid(b) || (out.Truncated && utf8.Valid(trimPartialRune(b))) {
		out.Content = string(trimPartialRune(b))
	} else {
		out.ContentBase64 = base64.StdEncoding.EncodeToString(b)
	}
	return nil, out, nil
}

func (t *tools) writeFile(ctx context.Context, _ *mcp.CallToolRequest, in writeFileIn) (*mcp.CallToolResult, fileOut, error) {
	content := []byte(in.Content)
	if in.Encoding == "base64" {
		b, err := base64.StdEncoding.DecodeString(in.Content)
		if err != nil {
			return nil, fileOut{}, fmt.Errorf("content is not valid base64: %w", err)
		}
		content = b
	}
	if len(content) > MaxWriteBytes {
		return nil, fileOut{}, fmt.Errorf("content is %d bytes; write_file takes at most %d per call", len(content), MaxWriteBytes)
	}
	opts := client.UploadOptions{MkdirParents: in.CreateParents, Size: int64(len(content))}
	if in.Mode != "" {
		m, err := client.ParseMode(in.Mode)
		if err != nil {
			return nil, fileOut{}, err
		}
		opts.Mode = m
	}
	id, err := t.resolveVM(ctx, in.VM)
	if err != nil {
		return nil, fileOut{}, err
	}
	info, err := t.api.Upload(ctx, id, in.Path, bytes.NewReader(content), opts)
	if err != nil {
		return nil, fileOut{}, fmt.Errorf("write %s: %w", in.Path, vmErr(in.VM, err))
	}
	return nil, toFileOut(*info), nil
}

func (t *tools) listDir(ctx context.Context, _ *mcp.CallToolRequest, in listDirIn) (*mcp.CallToolResult, listDirOut, error) {
	id, err := t.resolveVM(ctx, in.VM)
	if err != nil {
		return nil, listDirOut{}, err
	}
	l, err := t.api.ListDir(ctx, id, in.Path)
	if err != nil {
		return nil, listDirOut{}, fmt.Errorf("list %s: %w", in.Path, vmErr(in.VM, err))
	}
	out := listDirOut{Path: l.Path, Entries: make([]fileOut, 0, min(len(l.Entries), in.MaxEntries))}
	for i, e := range l.Entries {
		if i == in.MaxEntries {
			out.Truncated = true
			break
		}
		out.Entries = append(out.Entries, toFileOut(e))
	}
	return nil, out, nil
}

func (t *tools) deleteVM(ctx context.Context, _ *mcp.CallToolRequest, in vmRef) (*mcp.CallToolResult, deleteVMOut, error) {
	id, err := t.resolveVM(ctx, in.VM)
	if err != nil {
		return nil, deleteVMOut{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, createVMTimeout)
	defer cancel()
	if _, err := t.api.DeleteVMAndWait(ctx, id); err != nil {
		var te *client.TaskError
		if errors.As(err, &te) {
			return nil, deleteVMOut{}, fmt.Errorf("deleting vm %q failed: %s", in.VM, te.Message)
		}
		return nil, deleteVMOut{}, fmt.Errorf("delete vm: %w", vmErr(in.VM, err))
	}
	return nil, deleteVMOut{ID: id, Deleted: true}, nil
}

func (t *tools) startRun(ctx context.Context, _ *mcp.CallToolRequest, in startRunIn) (*mcp.CallToolResult, runOut, error) {
	req := client.CreateRunRequest{Repo: client.RunRepo{URL: in.RepoURL, Ref: in.Ref}, Prompt: in.Prompt, Agent: in.Agent,
		Model: in.Model, MaxTurns: in.MaxTurns, TimeoutSeconds: in.TimeoutSeconds, Tools: in.Tools, KeepVM: in.KeepVM}
	if in.VM != "" {
		id, err := t.resolveVM(ctx, in.VM)
		if err != nil {
			return nil, runOut{}, err
		}
		req.VM = &client.RunVM{ID: id}
	}
	if in.PushBranch != "" {
		req.Push = &client.RunPush{Branch: in.PushBranch}
	}
	acc, err := t.api.CreateRun(ctx, req)
	if err != nil {
		return nil, runOut{}, fmt.Errorf("start run: %w", apiErr(err))
	}
	if acc.Run == nil {
		return nil, runOut{}, errors.New("start run: the server answered without the run")
	}
	return nil, toRunOut(*acc.Run), nil
}

func (t *tools) getRun(ctx context.Context, _ *mcp.CallToolRequest, in runRef) (*mcp.CallToolResult, runOut, error) {
	r, err := t.api.GetRun(ctx, in.RunID)
	if err != nil {
		if client.IsNotFound(err) {
			return nil, runOut{}, fmt.Errorf("run %q not found", in.RunID)
		}
		return nil, runOut{}, fmt.Errorf("get run: %w", apiErr(err))
	}
	return nil, toRunOut(*r), nil
}

// readLogs answers aetherium://vms/{id}/logs. Resources have no tool errors: failures are JSON-RPC errors, an
// unknown VM the SDK's resource-not-found error.
func (t *tools) readLogs(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	uri := req.Params.URI
	ref, ok := strings.CutPrefix(uri, "aetherium://vms/")
	ref, ok2 := strings.CutSuffix(ref, "/logs")
	if !ok || !ok2 || ref == "" || strings.Contains(ref, "/") {
		return nil, mcp.ResourceNotFoundError(uri)
	}
	id, err := t.resolveVM(ctx, ref)
	if err != nil {
		return nil, mcp.ResourceNotFoundError(uri)
	}
	l, err := t.api.VMLogs(ctx, id, client.LogQuery{Limit: 1000})
	if err != nil {
		if client.IsNotFound(err) {
			return nil, mcp.ResourceNotFoundError(uri)
		}
		return nil, fmt.Errorf("logs of vm %q: %w", ref, apiErr(err))
	}
	var b strings.Builder
	for i := len(l.Entries) - 1; i >= 0; i-- { // the API answers newest first
		e := l.Entries[i]
		fmt.Fprintf(&b, "%s %s\n", e.Time.UTC().Format(time.RFC3339Nano), e.Line)
	}
	return &mcp.ReadResourceResult{Contents: []*mcp.ResourceContents{{URI: uri, MIMEType: "text/plain", Text: b.String()}}}, nil
}

// resolveVM turns a VM reference (an id, or a name: names never look like ids) into an id.
func (t *tools) resolveVM(ctx context.Context, ref string) (string, error) {
	if uuid.Validate(ref) == nil {
		return strings.ToLower(ref), nil
	}
	var ids []string
	cursor := ""
	for range maxNamePages {
		page, err := t.api.ListVMs(ctx, client.ListVMsOptions{Cursor: cursor})
		if err != nil {
			return "", fmt.Errorf("look up vm %q: %w", ref, apiErr(err))
		}
		for _, vm := range page.VMs {
			if vm.Name == ref && vm.Status != "deleted" {
				ids = append(ids, vm.ID)
			}
		}
		if page.NextCursor == "" || page.NextCursor == cursor {
			break
		}
		cursor = page.NextCursor
	}
	switch len(ids) {
	case 0:
		return "", fmt.Errorf("vm %q not found", ref)
	case 1:
		return ids[0], nil
	}
	return "", fmt.Errorf("%d VMs are named %q (%s): use an id", len(ids), ref, strings.Join(ids, ", "))
}

// vmErr words an API error about a VM for a model: a 404 on the VM itself says which VM.
func vmErr(ref string, err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) && ae.Code == client.CodeNotFound {
		return fmt.Errorf("vm %q not found", ref)
	}
	return apiErr(err)
}

// apiErr keeps the API's message and code (the model can act on "validation_failed: name ..."), and drops the
// wrapping of transport errors that would only say the request's URL.
func apiErr(err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) {
		return ae
	}
	return err
}

func toVMOut(vm client.VM) vmOut {
	return vmOut{ID: vm.ID, Name: vm.Name, Status: vm.Status, Image: vm.Image, VCPUs: vm.VCPUs, MemoryMB: vm.MemoryMB,
		Error: vm.Error, Created: vm.CreatedAt}
}

func toFileOut(f client.FileInfo) fileOut {
	return fileOut{Path: f.Path, Name: f.Name, Type: f.Type, Size: f.Size, Mode: f.Mode, ModTime: f.ModTime, LinkTarget: f.LinkTarget}
}

func toRunOut(r client.Run) runOut {
	out := runOut{ID: r.ID, Status: r.Status, Done: r.Done(), Agent: r.Agent, VMID: r.VMID, Error: r.Error,
		CreatedAt: r.CreatedAt, CompletedAt: r.CompletedAt}
	if res := r.Result; res != nil {
		out.ResultText, out.ResultError, out.HeadCommit, out.PushedBranch = res.Text, res.IsError, res.HeadCommit, res.PushedBranch
		if ds := res.DiffStat; ds != nil {
			out.FilesChanged, out.Insertions, out.Deletions = ds.FilesChanged, ds.Insertions, ds.Deletions
		}
	}
	return out
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncateUTF8(s string, n int) (string, bool) {
	if len(s) <= n {
		return s, false
	}
	return string(trimPartialRune([]byte(s[:n]))), true
}

// trimPartialRune drops an incomplete UTF-8 sequence at the end of b (at most 3 bytes), left by a cut.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= 3 && i <= len(b); i++ {
		r := b[len(b)-i]
		if r < 0x80 {
			return b // ASCII: nothing partial
		}
		if r >= 0xC0 { // a start byte: is its sequence complete?
			if utf8.FullRune(b[len(b)-i:]) {
				return b
			}
			return b[:len(b)-i]
		}
	}
	return b
}
