// Package prep holds the rules that both store implementations apply to rows before they write them: defaults,
// validation, canonical ids and the normal form of times and empty collections. Keeping them in one place is what
// lets PostgreSQL and SQLite return exactly the same values for the same input.
package prep

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Page limits (see store.Page).
const (
	DefaultLimit = 50
	MaxLimit     = 500
)

// DefaultWorkerStatus is the status of a worker registered without one.
const DefaultWorkerStatus = "active"

// Limit returns the number of rows a page may hold.
func Limit(p store.Page) int {
	switch {
	case p.Limit <= 0:
		return DefaultLimit
	case p.Limit > MaxLimit:
		return MaxLimit
	default:
		return p.Limit
	}
}

// Now is the current time in its stored form.
func Now() time.Time { return Time(time.Now()) }

// Time returns t in UTC truncated to microseconds: PostgreSQL keeps no more, and SQLite is made to match it.
func Time(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Microsecond)
}

// TimePtr is Time for optional times.
func TimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := Time(*t)
	return &v
}

// UUID returns s in canonical form (lowercase, hyphenated), or false when s is not a uuid.
func UUID(s string) (string, bool) {
	u, err := uuid.Parse(s)
	if err != nil {
		return "", false
	}
	return u.String(), true
}

// NotFound is the error of a missing row.
func NotFound(kind, id string) error { return model.NotFound(kind, id) }

// Invalid is the error of input the store refuses to write.
func Invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", model.ErrInvalidInput, fmt.Sprintf(format, args...))
}

// Cursor canonicalises Page.After. An After that is not a uuid cannot name a row, so it is bad input.
func Cursor(kind string, p store.Page) (string, error) {
	if p.After == "" {
		return "", nil
	}
	id, ok := UUID(p.After)
	if !ok {
		return "", Invalid("page cursor %q is not a %s id", p.After, kind)
	}
	return id, nil
}

// UnknownCursor is the error of a cursor naming no row.
func UnknownCursor(kind, id string) error {
	return Invalid("page cursor %q names no %s", id, kind)
}

// newID fills an empty id and canonicalises a given one.
func newID(kind string, id *string) error {
	if *id == "" {
		*id = uuid.NewString()
		return nil
	}
	return ref(kind+" id", id)
}

// ref canonicalises an optional reference to a uuid-keyed row.
func ref(field string, id *string) error {
	if *id == "" {
		return nil
	}
	c, ok := UUID(*id)
	if !ok {
		return Invalid("%s %q is not a uuid", field, *id)
	}
	*id = c
	return nil
}

// TextOK reports whether every s can be stored as text: valid UTF-8 without NUL. PostgreSQL refuses anything else
// in text and jsonb columns; SQLite would take it, so both stores check first to behave the same.
func TextOK(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			return false
		}
	}
	return true
}

func checkText(what string, ss ...string) error {
	if !TextOK(ss...) {
		return Invalid("%s must be valid UTF-8 without NUL bytes", what)
	}
	return nil
}

func checkMap(what string, m map[string]string) error {
	for k, v := range m {
		if !TextOK(k, v) {
			return Invalid("%s must be valid UTF-8 without NUL bytes", what)
		}
	}
	return nil
}

// clean makes free-form text (error messages, which may quote command output) storable: invalid UTF-8 and NUL
// become U+FFFD. Refusing it instead would lose the record of a failure over one bad byte.
func clean(s string) string {
	if TextOK(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// cleanMap is clean for maps of free-form text; it copies rather than change the caller's map.
func cleanMap(m map[string]string) map[string]string {
	dirty := false
	for k, v := range m {
		if !TextOK(k, v) {
			dirty = true
			break
		}
	}
	if !dirty {
		return m
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[clean(k)] = clean(v)
	}
	return out
}

// cleanJSON is clean for json documents: invalid UTF-8 and the escape \u0000 (which jsonb cannot hold) become
// U+FFFD. Outside strings valid json has no backslashes, so a scan that skips each escaped character is exact.
func cleanJSON(r json.RawMessage) json.RawMessage {
	if utf8.Valid(r) && !bytes.Contains(r, []byte(`\u0000`)) {
		return r
	}
	out := bytes.ToValidUTF8(r, []byte("\uFFFD"))
	if !bytes.Contains(out, []byte(`\u0000`)) {
		return out
	}
	for i := 0; i+1 < len(out); i++ {
		if out[i] != '\\' {
			continue
		}
		if out[i+1] == 'u' && i+6 <= len(out) && string(out[i+2:i+6]) == "0000" {
			copy(out[i+2:i+6], "fffd")
		}
		i++ // skip the escaped character, so an escaped backslash is not taken for the start of an escape
	}
	return out
}

// normMap gives empty maps one form: nil. The stores keep them as NULL.
func normMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}

func normSlice(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func normRaw(field string, r json.RawMessage) (json.RawMessage, error) {
	if len(r) == 0 {
		return nil, nil
	}
	if !json.Valid(r) {
		return nil, Invalid("%s is not valid json", field)
	}
	return r, nil
}

// ---- VMs

// NewVM fills the defaults of a VM about to be created and checks it.
func NewVM(vm *model.VM, now time.Time) error {
	if vm == nil {
		return Invalid("nil vm")
	}
	if err := newID("vm", &vm.ID); err != nil {
		return err
	}
	if vm.Status == "" {
		vm.Status = model.VMPending
	}
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = now
	}
	if vm.UpdatedAt.IsZero() {
		vm.UpdatedAt = now
	}
	return checkVM(vm)
}

// UpdatedVM checks a VM that an Update callback changed from before. The id and creation time cannot change; a
// status change must be a legal transition.
func UpdatedVM(before model.VM, vm *model.VM, now time.Time) error {
	if vm.ID != before.ID {
		return Invalid("vm id cannot change (%q to %q)", before.ID, vm.ID)
	}
	if vm.Status != before.Status {
		if err := before.Status.CheckTransition(vm.Status); err != nil {
			return fmt.Errorf("vm %s: %w", before.ID, err)
		}
	}
	vm.CreatedAt = before.CreatedAt
	vm.UpdatedAt = now
	return checkVM(vm)
}

func checkVM(vm *model.VM) error {
	if !vm.Status.Valid() {
		return Invalid("unknown vm status %q", vm.Status)
	}
	if err := checkText("vm owner, name, image, paths and worker", vm.OwnerID, vm.Name, vm.Image, vm.KernelPath,
		vm.RootfsPath, vm.SocketPath, vm.WorkerID); err != nil {
		return err
	}
	vm.Error = clean(vm.Error)
	vm.Metadata = cleanMap(normMap(vm.Metadata))
	vm.CreatedAt = Time(vm.CreatedAt)
	vm.UpdatedAt = Time(vm.UpdatedAt)
	vm.StartedAt = TimePtr(vm.StartedAt)
	vm.StoppedAt = TimePtr(vm.StoppedAt)
	return nil
}

// ---- Tasks

// NewTask fills the defaults of a task about to be created and checks it.
func NewTask(t *model.Task, now time.Time) error {
	if t == nil {
		return Invalid("nil task")
	}
	if err := newID("task", &t.ID); err != nil {
		return err
	}
	if t.Status == "" {
		t.Status = model.TaskPending
	}
	if t.Priority == "" {
		t.Priority = model.PriorityDefault
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = now
	}
	if t.UpdatedAt.IsZero() {
		t.UpdatedAt = now
	}
	return checkTask(t)
}

// UpdatedTask checks a task that an Update callback changed from before.
func UpdatedTask(before model.Task, t *model.Task, now time.Time) error {
	if t.ID != before.ID {
		return Invalid("task id cannot change (%q to %q)", before.ID, t.ID)
	}
	t.CreatedAt = before.CreatedAt
	t.UpdatedAt = now
	return checkTask(t)
}

// TaskStatusValid reports whether s is a known task status.
func TaskStatusValid(s model.TaskStatus) bool {
	switch s {
	case model.TaskPending, model.TaskProcessing, model.TaskCompleted, model.TaskFailed:
		return true
	}
	return false
}

func checkTask(t *model.Task) error {
	if t.Type == "" {
		return Invalid("task type is empty")
	}
	if !TaskStatusValid(t.Status) {
		return Invalid("unknown task status %q", t.Status)
	}
	if !t.Priority.Valid() {
		return Invalid("unknown task priority %q", t.Priority)
	}
	if t.MaxRetries < 0 || t.RetryCount < 0 {
		return Invalid("task retries cannot be negative")
	}
	if err := checkText("task owner, type and workers", t.OwnerID, string(t.Type), t.TargetWorker,
		t.WorkerID); err != nil {
		return err
	}
	t.Error = clean(t.Error)
	var err error
	if t.Payload, err = normRaw("task payload", t.Payload); err != nil {
		return err
	}
	if t.Result, err = normRaw("task result", t.Result); err != nil {
		return err
	}
	t.Payload, t.Result = cleanJSON(t.Payload), cleanJSON(t.Result)
	if err := ref("task vm_id", &t.VMID); err != nil {
		return err
	}
	if err := ref("task job_id", &t.JobID); err != nil {
		return err
	}
	t.CreatedAt = Time(t.CreatedAt)
	t.UpdatedAt = Time(t.UpdatedAt)
	t.ScheduledAt = TimePtr(t.ScheduledAt)
	t.StartedAt = TimePtr(t.StartedAt)
	t.CompletedAt = TimePtr(t.CompletedAt)
	return nil
}

// ---- Jobs

// NewJob fills the defaults of a job about to be created and checks it.
func NewJob(j *model.Job, now time.Time) error {
	if j == nil {
		return Invalid("nil job")
	}
	if err := newID("job", &j.ID); err != nil {
		return err
	}
	if j.Status == "" {
		j.Status = model.JobPending
	}
	if j.CreatedAt.IsZero() {
		j.CreatedAt = now
	}
	if j.UpdatedAt.IsZero() {
		j.UpdatedAt = now
	}
	return checkJob(j)
}

// UpdatedJob checks a job that an Update callback changed from before.
func UpdatedJob(before model.Job, j *model.Job, now time.Time) error {
	if j.ID != before.ID {
		return Invalid("job id cannot change (%q to %q)", before.ID, j.ID)
	}
	j.CreatedAt = before.CreatedAt
	j.UpdatedAt = now
	return checkJob(j)
}

func checkJob(j *model.Job) error {
	switch j.Status {
	case model.JobPending, model.JobRunning, model.JobCompleted, model.JobFailed:
	default:
		return Invalid("unknown job status %q", j.Status)
	}
	if err := ref("job vm_id", &j.VMID); err != nil {
		return err
	}
	if err := ref("job task_id", &j.TaskID); err != nil {
		return err
	}
	if err := checkText("job owner", j.OwnerID); err != nil {
		return err
	}
	j.Error = clean(j.Error)
	for i, c := range j.Commands {
		what := fmt.Sprintf("job command %d", i)
		if err := checkText(what, c.Command, c.WorkingDir); err != nil {
			return err
		}
		if err := checkText(what+" args", c.Args...); err != nil {
			return err
		}
		if err := checkMap(what+" env", c.Env); err != nil {
			return err
		}
		if err := checkMap(what+" secret_env", c.SecretEnv); err != nil {
			return err
		}
	}
	if s := j.VMSpec; s != nil {
		if err := checkText("job vm spec", s.Name, s.Image); err != nil {
			return err
		}
		s.Metadata = cleanMap(s.Metadata)
	}
	if len(j.Commands) == 0 {
		j.Commands = nil
	}
	// The commands are stored as json with omitempty fields, so empty nested collections come back nil:
	// give them that form now so what the caller holds equals what a later read returns.
	for i := range j.Commands {
		j.Commands[i].Args = normSlice(j.Commands[i].Args)
		j.Commands[i].Env = normMap(j.Commands[i].Env)
		j.Commands[i].SecretEnv = normMap(j.Commands[i].SecretEnv)
	}
	if j.VMSpec != nil {
		j.VMSpec.Metadata = normMap(j.VMSpec.Metadata)
	}
	j.CreatedAt = Time(j.CreatedAt)
	j.UpdatedAt = Time(j.UpdatedAt)
	j.StartedAt = TimePtr(j.StartedAt)
	j.CompletedAt = TimePtr(j.CompletedAt)
	return nil
}

// ---- Executions

// NewExecution fills the defaults of an execution about to be created and checks it.
func NewExecution(e *model.Execution, now time.Time) error {
	if e == nil {
		return Invalid("nil execution")
	}
	if err := newID("execution", &e.ID); err != nil {
		return err
	}
	if e.Status == "" {
		e.Status = model.ExecutionPending
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = now
	}
	return checkExecution(e)
}

// UpdatedExecution checks an execution that an Update callback changed from before.
func UpdatedExecution(before model.Execution, e *model.Execution) error {
	if e.ID != before.ID {
		return Invalid("execution id cannot change (%q to %q)", before.ID, e.ID)
	}
	e.CreatedAt = before.CreatedAt
	return checkExecution(e)
}

func checkExecution(e *model.Execution) error {
	switch e.Status {
	case model.ExecutionPending, model.ExecutionRunning, model.ExecutionCompleted, model.ExecutionFailed:
	default:
		return Invalid("unknown execution status %q", e.Status)
	}
	if e.VMID == "" {
		return Invalid("execution vm_id is empty")
	}
	if err := ref("execution vm_id", &e.VMID); err != nil {
		return err
	}
	if err := ref("execution job_id", &e.JobID); err != nil {
		return err
	}
	if err := ref("execution task_id", &e.TaskID); err != nil {
		return err
	}
	// Command, arguments and environment reach execve, which cannot take NUL either. Output (Stdout, Stderr) is
	// kept byte for byte.
	if err := checkText("execution owner, command, working dir and worker", e.OwnerID, e.Command, e.WorkingDir,
		e.WorkerID); err != nil {
		return err
	}
	if err := checkText("execution args", e.Args...); err != nil {
		return err
	}
	if err := checkMap("execution env", e.Env); err != nil {
		return err
	}
	if err := checkMap("execution secret_env", e.SecretEnv); err != nil {
		return err
	}
	e.Error = clean(e.Error)
	e.Args = normSlice(e.Args)
	e.Env = normMap(e.Env)
	e.SecretEnv = normMap(e.SecretEnv)
	e.CreatedAt = Time(e.CreatedAt)
	e.StartedAt = TimePtr(e.StartedAt)
	e.CompletedAt = TimePtr(e.CompletedAt)
	return nil
}

// ---- Workers

// Worker fills the defaults of a worker about to be upserted and checks it.
func Worker(w *model.Worker, now time.Time) error {
	if w == nil {
		return Invalid("nil worker")
	}
	if w.ID == "" {
		return Invalid("worker id is empty")
	}
	if w.Status == "" {
		w.Status = DefaultWorkerStatus
	}
	if err := checkText("worker id, hostname, backend and status", w.ID, w.Hostname, w.Backend, w.Status); err != nil {
		return err
	}
	if w.StartedAt.IsZero() {
		w.StartedAt = now
	}
	if w.LastHeartbeat.IsZero() {
		w.LastHeartbeat = now
	}
	w.Metadata = cleanMap(normMap(w.Metadata))
	w.StartedAt = Time(w.StartedAt)
	w.LastHeartbeat = Time(w.LastHeartbeat)
	return nil
}

// ---- API keys

// JoinScopes is the stored form of a key's scopes: space-separated, "" for none.
func JoinScopes(ss []string) string { return strings.Join(ss, " ") }

// SplitScopes reads JoinScopes' form back.
func SplitScopes(s string) []string { return strings.Fields(s) }

// NewAPIKey fills the defaults of a key about to be created and checks it.
func NewAPIKey(k *model.APIKey, now time.Time) error {
	if k == nil {
		return Invalid("nil api key")
	}
	if err := newID("api key", &k.ID); err != nil {
		return err
	}
	if k.Hash == "" || k.Prefix == "" {
		return Invalid("api key hash and prefix are required")
	}
	if err := checkText("api key owner, name, prefix and hash", k.OwnerID, k.Name, k.Prefix, k.Hash); err != nil {
		return err
	}
	if k.Role == "" {
		k.Role = model.RoleUser
	}
	if k.Role != model.RoleAdmin && k.Role != model.RoleUser {
		return Invalid("api key role %q is not admin or user", k.Role)
	}
	for _, sc := range k.Scopes {
		if sc == "" || strings.ContainsAny(sc, " \t\n") || !TextOK(sc) {
			return Invalid("api key scope %q is empty or not a single word", sc)
		}
	}
	if len(k.Scopes) == 0 {
		k.Scopes = nil
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = now
	}
	k.CreatedAt = Time(k.CreatedAt)
	k.ExpiresAt = TimePtr(k.ExpiresAt)
	k.LastUsedAt = TimePtr(k.LastUsedAt)
	k.RevokedAt = TimePtr(k.RevokedAt)
	return nil
}

// ---- JSON columns

// MarshalMap encodes a map column; empty maps are stored as NULL (nil).
func MarshalMap(m map[string]string) ([]byte, error) {
	if len(m) == 0 {
		return nil, nil
	}
	return json.Marshal(m)
}

// UnmarshalMap decodes a map column; NULL and {} both come back nil.
func UnmarshalMap(b []byte) (map[string]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return normMap(m), nil
}

// MarshalStrings encodes a string list column; empty lists are stored as NULL (nil).
func MarshalStrings(s []string) ([]byte, error) {
	if len(s) == 0 {
		return nil, nil
	}
	return json.Marshal(s)
}

// UnmarshalStrings decodes a string list column; NULL and [] both come back nil.
func UnmarshalStrings(b []byte) ([]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var s []string
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return normSlice(s), nil
}

// MarshalCommands encodes a job's commands; no commands are stored as NULL (nil).
func MarshalCommands(c []model.JobCommand) ([]byte, error) {
	if len(c) == 0 {
		return nil, nil
	}
	return json.Marshal(c)
}

// UnmarshalCommands decodes a job's commands.
func UnmarshalCommands(b []byte) ([]model.JobCommand, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var c []model.JobCommand
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	if len(c) == 0 {
		return nil, nil
	}
	return c, nil
}

// MarshalSpec encodes a job's VM spec; nil is stored as NULL (nil).
func MarshalSpec(s *model.VMSpec) ([]byte, error) {
	if s == nil {
		return nil, nil
	}
	return json.Marshal(s)
}

// UnmarshalSpec decodes a job's VM spec.
func UnmarshalSpec(b []byte) (*model.VMSpec, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	var s model.VMSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Raw returns a json column as a RawMessage: NULL comes back nil.
func Raw(b []byte) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	return json.RawMessage(b)
}

// vmExtra is the JSON of a VM's extra column: the fields added after the vms table was made.
type vmExtra struct {
	Network        *model.VMNetwork  `json:"network,omitempty"`
	Tools          []string          `json:"tools,omitempty"`
	InstalledTools map[string]string `json:"installed_tools,omitempty"`
	Lifetime       *model.VMLifetime `json:"lifetime,omitempty"`
}

// MarshalVMExtra encodes a VM's network and tools for its extra column; nothing to store is NULL (nil).
func MarshalVMExtra(vm *model.VM) ([]byte, error) {
	if l := vm.Lifetime; l != nil {
		// Stored as every other time is: UTC, to the microsecond (the caller's copy too, as for the columns).
		for _, t := range []*time.Time{l.ExpiresAt, l.LastActivityAt} {
			if t != nil {
				*t = t.UTC().Truncate(time.Microsecond)
			}
		}
	}
	e := vmExtra{Network: vm.Network, Tools: vm.Tools, InstalledTools: vm.InstalledTools, Lifetime: vm.Lifetime}
	if e.Network == nil && len(e.Tools) == 0 && len(e.InstalledTools) == 0 && e.Lifetime == nil {
		return nil, nil
	}
	return json.Marshal(e)
}

// UnmarshalVMExtra decodes a VM's extra column into vm.
func UnmarshalVMExtra(b []byte, vm *model.VM) error {
	if len(b) == 0 {
		return nil
	}
	var e vmExtra
	if err := json.Unmarshal(b, &e); err != nil {
		return err
	}
	vm.Network, vm.Tools, vm.InstalledTools, vm.Lifetime = e.Network, e.Tools, e.InstalledTools, e.Lifetime
	if len(vm.Tools) == 0 {
		vm.Tools = nil
	}
	if len(vm.InstalledTools) == 0 {
		vm.InstalledTools = nil
	}
	return nil
}

// ---- Runs

// NewRun fills the defaults of a run about to be created and checks it.
func NewRun(r *model.Run, now time.Time) error {
	if r == nil {
		return Invalid("nil run")
	}
	if err := newID("run", &r.ID); err != nil {
		return err
	}
	if r.Status == "" {
		r.Status = model.RunPending
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = now
	}
	if r.UpdatedAt.IsZero() {
		r.UpdatedAt = now
	}
	return checkRun(r)
}

// UpdatedRun checks a run that an Update callback changed from before: an ended run keeps its status.
func UpdatedRun(before model.Run, r *model.Run, now time.Time) error {
	if r.ID != before.ID {
		return Invalid("run id cannot change (%q to %q)", before.ID, r.ID)
	}
	if before.Status.Done() && r.Status != before.Status {
		return fmt.Errorf("%w: run %s is %s and cannot become %s", model.ErrInvalidTransition, r.ID, before.Status, r.Status)
	}
	r.CreatedAt = before.CreatedAt
	r.UpdatedAt = now
	return checkRun(r)
}

func checkRun(r *model.Run) error {
	if !r.Status.Valid() {
		return Invalid("unknown run status %q", r.Status)
	}
	if r.OwnerID == "" {
		return Invalid("run owner is required")
	}
	if r.Spec.Repo.URL == "" || r.Spec.Agent == "" {
		return Invalid("run repo url and agent are required")
	}
	if err := ref("run vm_id", &r.VMID); err != nil {
		return err
	}
	if err := ref("run task_id", &r.TaskID); err != nil {
		return err
	}
	sp := &r.Spec
	if err := checkText("run", r.OwnerID, r.WorkerID, sp.Repo.URL, sp.Repo.Ref, sp.Repo.CredentialsSecret, sp.Prompt,
		sp.Agent, sp.Model, sp.GitSecret); err != nil {
		return err
	}
	if err := checkText("run tools", sp.Tools...); err != nil {
		return err
	}
	if err := checkMap("run env", sp.Env); err != nil {
		return err
	}
	if err := checkMap("run secret_env", sp.SecretEnv); err != nil {
		return err
	}
	r.Error = clean(r.Error)
	sp.Env, sp.SecretEnv, sp.Tools = normMap(sp.Env), normMap(sp.SecretEnv), normSlice(sp.Tools)
	if sp.VMSpec != nil {
		if err := checkText("run vm spec", sp.VMSpec.Name, sp.VMSpec.Image); err != nil {
			return err
		}
		sp.VMSpec.Metadata = normMap(cleanMap(sp.VMSpec.Metadata))
		sp.VMSpec.Tools = normSlice(sp.VMSpec.Tools)
	}
	if res := r.Result; res != nil {
		// What the agent printed is free-form text from the guest: kept, made storable.
		res.Text, res.Subtype, res.StderrTail, res.PushedBranch = clean(res.Text), clean(res.Subtype), clean(res.StderrTail), clean(res.PushedBranch)
		for i := range res.Commits {
			res.Commits[i].Subject = clean(res.Commits[i].Subject)
		}
		if len(res.Commits) == 0 {
			res.Commits = nil
		}
	}
	r.CreatedAt = Time(r.CreatedAt)
	r.UpdatedAt = Time(r.UpdatedAt)
	r.StartedAt = TimePtr(r.StartedAt)
	r.CompletedAt = TimePtr(r.CompletedAt)
	return nil
}

// RunEvents checks events about to be appended to a run's transcript, filling their run id and time.
func RunEvents(runID string, evs []*model.RunEvent, now time.Time) error {
	for _, e := range evs {
		if e == nil {
			return Invalid("nil run event")
		}
		if e.Type == "" || len(e.Type) > 32 || !TextOK(e.Type) {
			return Invalid("run event type %q must be 1-32 characters", e.Type)
		}
		if !json.Valid(e.Data) {
			return Invalid("run event data is not valid json")
		}
		e.Data = cleanJSON(e.Data)
		e.RunID = runID
		if e.Time.IsZero() {
			e.Time = now
		}
		e.Time = Time(e.Time)
	}
	return nil
}

// EventsLimit is the number of events an Events call returns: 500 by default, at most 5000.
func EventsLimit(limit int) int {
	if limit <= 0 {
		return 500
	}
	return min(limit, 5000)
}
