import {
  AbortError,
  AetheriumError,
  ConnectionError,
  StreamEndedError,
  TaskError,
  TimeoutError,
  WaitError,
} from "./errors.js";
import {
  Deadline,
  Transport,
  sleep,
  type CallOptions,
  type FetchLike,
  type MutatingOptions,
  type Query,
} from "./http.js";
import { openShell, type Shell, type ShellOptions, type WebSocketConstructor } from "./shell.js";
import { readEvents } from "./sse.js";
import type {
  AddToolsRequest,
  Agent,
  CreateJobRequest,
  CreateRunRequest,
  CreateVMRequest,
  ExecuteAccepted,
  ExecuteRequest,
  Execution,
  ExecutionEnd,
  ExecutionList,
  FileInfo,
  FileList,
  Health,
  Job,
  JobAccepted,
  LogList,
  MkdirRequest,
  OutputChunk,
  Process,
  ProcessList,
  ProcessOutput,
  Ready,
  Run,
  RunAccepted,
  RunEnd,
  RunEvent,
  RunList,
  RunStatus,
  Secret,
  SecretList,
  StartProcessRequest,
  Status,
  Task,
  TaskAccepted,
  VM,
  VMAccepted,
  VMList,
  VMStatus,
} from "./types.js";

/** How a client is made. */
export interface ClientOptions {
  /** The server, e.g. "http://127.0.0.1:8080" (a trailing "/api/v1" is accepted and dropped). */
  baseUrl: string;
  /** The API key, sent as a bearer token; may be left out for /health and /ready. */
  apiKey?: string;
  /**
   * Milliseconds a call may take (default 60 000; 0: no limit). A call that asks the server to wait (`waitMs`)
   * gets that time on top; streams are bounded until the server's first answer only. Per call: `timeoutMs`.
   */
  timeoutMs?: number;
  /**
   * How many times a call that changes something is sent again after a transient failure (a network error, a
   * time-out, 429, 502, 503, 504, 409 idempotency_in_progress), with growing pauses (Retry-After when sent, at
   * most 5 s). Such calls then carry an Idempotency-Key made per call, so the server answers a retry with the
   * first answer: a VM is never created twice and a command never runs twice. Default 0. Uploads are never
   * retried (their body is a stream); sending one again is safe by itself.
   */
  retries?: number;
  /** The fetch to use (default globalThis.fetch): a fetch with a proxy agent, or a test's. */
  fetch?: FetchLike;
  /**
   * The WebSocket constructor of shells (default globalThis.WebSocket). Node.js 20 has none: pass `WebSocket`
   * from the `ws` package. Browsers' WebSocket cannot send the Authorization header the API needs.
   */
  WebSocket?: WebSocketConstructor;
  /** How long one request of the ...AndWait helpers asks the server to wait (?wait=; default 60 000 ms). */
  waitChunkMs?: number;
  /** The longest pause between two polls of a task (default 1000 ms). */
  maxPollMs?: number;
  /** Sent as User-Agent where the platform lets a script set it (not in browsers). */
  userAgent?: string;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
}

/** An answer of a call that asked the server to wait: `done` says whether the task finished in that time. */
export type Waited<T> = T & { done: boolean };

/** Options of the calls that start a task and may let the server wait for it. */
export interface WaitOptions extends MutatingOptions {
  /** Let the server hold its answer up to this long (?wait=, at most 10 minutes server-side); 0: answer at once. */
  waitMs?: number;
}

/** Options of the ...AndWait helpers: `timeoutMs` and `signal` bound the whole wait. */
export interface AndWaitOptions extends MutatingOptions {}

/** Paging of a list. */
export interface PageOptions extends CallOptions {
  /** Page size, 1 to 500 (default 50). */
  limit?: number;
  /** The `next_cursor` of the previous page. */
  cursor?: string;
}

export interface ListVMsOptions extends PageOptions {
  status?: VMStatus[];
}

export interface ListRunsOptions extends PageOptions {
  status?: RunStatus[];
  repo?: string;
  vmId?: string;
}

export interface LogQueryOptions extends CallOptions {
  vmId?: string;
  executionId?: string;
  runId?: string;
  /** RFC 3339 times or Dates. */
  since?: string | Date;
  until?: string | Date;
  limit?: number;
  /** A plain substring of the line. */
  q?: string;
}

/** A piece of a streamed execution's output. */
export interface OutputEvent {
  type: "stdout" | "stderr";
  /** Where data starts in its stream; a jump past the previous chunk's end means output was lost. */
  offset: number;
  data: Uint8Array;
}

/** The last event of a streamed execution. */
export interface EndEvent {
  type: "end";
  end: ExecutionEnd;
}

export type ExecutionEvent = OutputEvent | EndEvent;

export interface StreamExecutionOptions extends CallOptions {
  /** Skip the output before these offsets (resuming a broken stream). */
  stdoutOffset?: number;
  stderrOffset?: number;
}

export interface RunStreamedOptions extends MutatingOptions {
  /** Gets stdout as it is written. */
  onStdout?: (data: Uint8Array, offset: number) => void;
  /** Gets stderr as it is written. */
  onStderr?: (data: Uint8Array, offset: number) => void;
}

/** The result of executions.runStreamed: the execution's id and how it ended. */
export interface StreamedResult extends ExecutionEnd {
  executionId: string;
  taskId: string;
}

export interface UploadOptions extends CallOptions {
  /** Permission bits in octal, as chmod writes them ("0755", "4755"); default 0644. */
  mode?: string;
  /** `user[:group]`, names or numbers the guest knows; default root. */
  owner?: string;
  /** Create missing parent directories. */
  mkdirParents?: boolean;
  /** false: fail with 409 already_exists instead of replacing an existing file (default true). */
  overwrite?: boolean;
}

/** Anything an upload takes as a body. A ReadableStream is streamed (Node.js; browsers only over HTTP/2). */
export type UploadBody = ReadableStream<Uint8Array> | Blob | ArrayBuffer | ArrayBufferView | string;

/** A file being downloaded: read `body` to its end (or call bytes()/text()). */
export interface FileDownload {
  /**
   * The file's bytes as they arrive. A transfer cut short ends with an error, never with a short file that looks
   * complete (the byte count is checked against Content-Length).
   */
  body: ReadableStream<Uint8Array>;
  /** The file's length (Content-Length), -1 when the server did not say. */
  size: number;
  /** Permission bits in octal ("0644"). */
  mode: string | undefined;
  uid: number | undefined;
  gid: number | undefined;
  modTime: Date | undefined;
  /** Reads the whole file. */
  bytes(): Promise<Uint8Array>;
  /** Reads the whole file as UTF-8 text. */
  text(): Promise<string>;
}

export interface ProcessOutputOptions extends CallOptions {
  stream?: "stdout" | "stderr";
  offset?: number;
  /** At most this many bytes (0: all that is kept). */
  maxBytes?: number;
}

export interface StreamRunOptions extends CallOptions {
  /** Start after the event with this seq (sent as Last-Event-ID): resumes a broken stream. */
  after?: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_WAIT_CHUNK_MS = 60_000;
const DEFAULT_MAX_POLL_MS = 1_000;
const MIN_POLL_MS = 50;
const MAX_TRANSIENT_FAILURES = 5;

function taskDone(status: string): boolean {
  return status === "completed" || status === "failed";
}

/** The server parses a Go duration; whole milliseconds keep it short. */
function goDuration(ms: number): string {
  return `${Math.max(1, Math.round(ms))}ms`;
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

function parseBaseUrl(raw: string): string {
  const s = raw.trim();
  if (!s) throw new AetheriumError("client: empty server URL");
  let u: URL;
  try {
    u = new URL(s);
  } catch (err) {
    throw new AetheriumError(`client: invalid server URL ${JSON.stringify(s)}`, { cause: err });
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new AetheriumError(`client: invalid server URL ${JSON.stringify(s)}: want http://host[:port] or https://host[:port]`);
  }
  if (u.search || u.hash) throw new AetheriumError(`client: invalid server URL ${JSON.stringify(s)}: must not have a query or fragment`);
  let path = u.pathname.replace(/\/+$/, "");
  if (path.endsWith("/api/v1")) path = path.slice(0, -"/api/v1".length);
  return u.origin + path;
}

function decodeChunk(oc: OutputChunk): Uint8Array {
  if (oc.data_base64) {
    const bin = atob(oc.data_base64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  return new TextEncoder().encode(oc.data ?? "");
}

function uploadBody(body: UploadBody): Blob | ArrayBuffer | ArrayBufferView | ReadableStream<Uint8Array> | string {
  if (typeof body === "string" || body instanceof ArrayBuffer || body instanceof Blob) return body;
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  return body; // a ReadableStream
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let n = 0;
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    n += value.byteLength;
  }
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/**
 * A client of Aetherium's REST API v1. Its groups mirror the API: vms, executions, tasks, jobs, files, processes,
 * shells, runs, agents, secrets, logs. Safe to share.
 *
 * ```ts
 * const ae = new Aetherium({ baseUrl: "http://127.0.0.1:8080", apiKey: process.env.AETHERIUM_API_KEY });
 * const vm = await ae.vms.createAndWait({ name: "demo" });
 * const out = await ae.executions.run(vm.id, { command: "echo", args: ["hi"] });
 * await ae.vms.deleteAndWait(vm.id);
 * ```
 */
export class Aetherium {
  readonly vms: VMs;
  readonly executions: Executions;
  readonly tasks: Tasks;
  readonly jobs: Jobs;
  readonly files: Files;
  readonly processes: Processes;
  readonly shells: Shells;
  readonly runs: Runs;
  readonly agents: Agents;
  readonly secrets: Secrets;
  readonly logs: Logs;
  /** @internal */
  readonly t: Transport;
  /** @internal */
  readonly opts: { waitChunkMs: number; maxPollMs: number; WebSocket: WebSocketConstructor | undefined };

  constructor(options: ClientOptions) {
    const f = options.fetch ?? (globalThis.fetch as FetchLike | undefined);
    if (!f) throw new AetheriumError("client: no fetch in this platform; pass one as options.fetch");
    const apiKey = options.apiKey ?? "";
    // The key is a header value: refuse what fetch would refuse later, and never echo the key.
    // eslint-disable-next-line no-control-regex
    if (/[\s\u0000-\u001f\u007f-\uffff]/.test(apiKey)) {
      throw new AetheriumError("client: api key contains whitespace, control or non-ASCII characters");
    }
    this.t = new Transport({
      baseUrl: parseBaseUrl(options.baseUrl),
      apiKey: apiKey || undefined,
      // Called unbound, a platform fetch throws "Illegal invocation" in browsers.
      fetch: options.fetch ?? ((input, init) => f(input, init)),
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      retries: Math.max(0, Math.floor(options.retries ?? 0)),
      userAgent: options.userAgent,
      headers: options.headers ?? {},
    });
    this.opts = {
      waitChunkMs: options.waitChunkMs && options.waitChunkMs > 0 ? options.waitChunkMs : DEFAULT_WAIT_CHUNK_MS,
      maxPollMs: options.maxPollMs && options.maxPollMs > 0 ? options.maxPollMs : DEFAULT_MAX_POLL_MS,
      WebSocket: options.WebSocket,
    };
    this.vms = new VMs(this);
    this.executions = new Executions(this);
    this.tasks = new Tasks(this);
    this.jobs = new Jobs(this);
    this.files = new Files(this);
    this.processes = new Processes(this);
    this.shells = new Shells(this);
    this.runs = new Runs(this);
    this.agents = new Agents(this);
    this.secrets = new Secrets(this);
    this.logs = new Logs(this);
  }

  /** The server this client talks to. */
  get baseUrl(): string {
    return this.t.config.baseUrl;
  }

  /** Never shows the API key. */
  toString(): string {
    return `Aetherium{${this.baseUrl}}`;
  }

  /** @internal */
  toJSON(): unknown {
    return { baseUrl: this.baseUrl };
  }

  /** @internal What Node.js's console.log and util.inspect show. */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  /** GET /health: liveness. */
  async health(opts: CallOptions = {}): Promise<Health> {
    return (await this.t.json<Health>({ method: "GET", path: "/health" }, opts)).body;
  }

  /** GET /ready: a 503 that carries the checks is a result (`status: "not_ready"`), not an error. */
  async ready(opts: CallOptions = {}): Promise<Ready> {
    return (await this.t.json<Ready>({ method: "GET", path: "/ready", alsoOk: [503] }, opts)).body;
  }

  /** GET /status: how many workers can take tasks now. */
  async status(opts: CallOptions = {}): Promise<Status> {
    return (await this.t.json<Status>({ method: "GET", path: "/status" }, opts)).body;
  }

  /** @internal Sends a task-starting call that may let the server wait. */
  async waited<T>(method: "POST" | "DELETE", path: string, json: unknown, opts: WaitOptions, query?: Query): Promise<Waited<T>> {
    const waitMs = opts.waitMs && opts.waitMs > 0 ? opts.waitMs : 0;
    const { status, body } = await this.t.json<T>(
      { method, path, json, query: { ...query, wait: waitMs ? goDuration(waitMs) : undefined }, extraMs: waitMs },
      opts,
    );
    return { ...(body as T), done: status !== 202 };
  }

  /**
   * @internal The ?wait= of the first request of an ...AndWait helper: it ends before the caller's deadline, with a
   * margin for the answer to travel (a request cut by the deadline would lose the task id needed to follow up).
   */
  chunk(deadline: Deadline, start: number): number {
    let d = this.opts.waitChunkMs;
    const left = deadline.remaining(start);
    if (left !== Infinity) d = Math.min(d, left - Math.max(left / 10, 200));
    return d < 100 ? 0 : d;
  }
}

/** Runs an ...AndWait helper under one deadline (the call's timeoutMs, or none: waits take as long as tasks). */
async function underDeadline<T>(opts: AndWaitOptions, fn: (d: Deadline, start: number) => Promise<T>): Promise<T> {
  const d = new Deadline(opts.signal, opts.timeoutMs);
  try {
    return await fn(d, Date.now());
  } finally {
    d.dispose();
  }
}

/** The options of one request made inside an ...AndWait helper: its signal is the helper's deadline. */
function inner(d: Deadline, opts: MutatingOptions = {}): MutatingOptions {
  const o: MutatingOptions = { signal: d.signal };
  if (opts.idempotencyKey !== undefined) o.idempotencyKey = opts.idempotencyKey;
  return o;
}

function rethrow(d: Deadline, err: unknown, what: string, taskId?: string, last?: unknown): never {
  if (d.aborted) {
    const reason = d.reason(what);
    if (taskId) throw new WaitError(taskId, reason, last);
    throw reason;
  }
  throw err;
}

class Group {
  constructor(protected readonly c: Aetherium) {}
  protected get t(): Transport {
    return this.c.t;
  }
}

/** VMs: POST/GET/DELETE /vms. */
export class VMs extends Group {
  /** Asks for a VM (202 at once, or the server waits up to `waitMs`; `done` says whether it finished). */
  create(req: CreateVMRequest, opts: WaitOptions = {}): Promise<Waited<VMAccepted>> {
    return this.c.waited<VMAccepted>("POST", "/vms", req, opts);
  }

  /**
   * Creates a VM and waits until it runs, however long that takes (the server waits first, then the task is
   * polled). A failed creation throws a TaskError whose `result` is the failed VM; a wait that ends first (timeoutMs,
   * signal) throws a WaitError whose `last` is the VM last seen, so its id is known.
   */
  createAndWait(req: CreateVMRequest, opts: AndWaitOptions = {}): Promise<VM> {
    return underDeadline(opts, async (d, start) => {
      const acc = await this.c
        .waited<VMAccepted>("POST", "/vms", req, { ...inner(d, opts), waitMs: this.c.chunk(d, start) })
        .catch((err) => rethrow(d, err, "create vm"));
      let vm = acc.vm;
      let task = acc.task;
      if (!acc.done || !task) {
        task = await this.c.tasks.wait(acc.task_id, { signal: d.signal }).catch((err) => rethrow(d, err, "create vm", acc.task_id, vm));
        vm = await this.get(vm.id, { signal: d.signal }).catch((err) => rethrow(d, err, "create vm", acc.task_id, vm));
      }
      if (task.status !== "completed") throw new TaskError(task.id, task.error || vm.error || "", vm);
      return vm;
    });
  }

  /** One page of VMs, newest first. */
  async list(opts: ListVMsOptions = {}): Promise<VMList> {
    const query: Query = { status: opts.status?.length ? opts.status.join(",") : undefined, limit: opts.limit, cursor: opts.cursor };
    return (await this.t.json<VMList>({ method: "GET", path: "/vms", query }, opts)).body;
  }

  /** Every VM, page by page. */
  async *listAll(opts: Omit<ListVMsOptions, "cursor"> = {}): AsyncGenerator<VM> {
    let cursor: string | undefined;
    do {
      const page = await this.list({ ...opts, ...(cursor ? { cursor } : {}) });
      yield* page.vms;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** A VM by id (NotFoundError for an unknown one, or another owner's). */
  async get(id: string, opts: CallOptions = {}): Promise<VM> {
    return (await this.t.json<VM>({ method: "GET", path: `/vms/${enc(id)}` }, opts)).body;
  }

  /** Asks for a VM's deletion (202 at once, or the server waits up to `waitMs`). */
  delete(id: string, opts: WaitOptions = {}): Promise<Waited<TaskAccepted>> {
    return this.c.waited<TaskAccepted>("DELETE", `/vms/${enc(id)}`, undefined, opts);
  }

  /** Deletes a VM and waits until it is gone. A failed deletion throws a TaskError whose `result` is the task. */
  deleteAndWait(id: string, opts: AndWaitOptions = {}): Promise<Task> {
    return underDeadline(opts, async (d, start) => {
      const acc = await this.c
        .waited<TaskAccepted>("DELETE", `/vms/${enc(id)}`, undefined, { ...inner(d, opts), waitMs: this.c.chunk(d, start) })
        .catch((err) => rethrow(d, err, "delete vm"));
      let task = acc.task;
      if (!acc.done || !task || !taskDone(task.status)) {
        task = await this.c.tasks.wait(acc.task_id, { signal: d.signal }).catch((err) => rethrow(d, err, "delete vm", acc.task_id));
      }
      if (task.status !== "completed") throw new TaskError(task.id, task.error ?? "", task);
      return task;
    });
  }

  /** Installs tools into a running VM (POST /vms/{id}/tools). */
  addTools(id: string, req: AddToolsRequest, opts: WaitOptions = {}): Promise<Waited<TaskAccepted>> {
    return this.c.waited<TaskAccepted>("POST", `/vms/${enc(id)}/tools`, req, opts);
  }
}

/** Executions: commands run as tasks, their stored results and their live output. */
export class Executions extends Group {
  /** Starts a command (202 at once, or the server waits up to `waitMs`; then `execution` is final). */
  start(vmId: string, req: ExecuteRequest, opts: WaitOptions = {}): Promise<Waited<ExecuteAccepted>> {
    return this.c.waited<ExecuteAccepted>("POST", `/vms/${enc(vmId)}/execute`, req, opts);
  }

  /**
   * Runs a command and waits for its result, however long it runs (buffered: the stored output, up to 1 MiB per
   * stream). Its exit code, whatever it is, is a result. A command that could not be run throws a TaskError whose
   * `result` is the execution; a wait that ends first throws a WaitError.
   */
  run(vmId: string, req: ExecuteRequest, opts: AndWaitOptions = {}): Promise<Execution> {
    return underDeadline(opts, async (d, start) => {
      const acc = await this.start(vmId, req, { ...inner(d, opts), waitMs: this.c.chunk(d, start) }).catch((err) =>
        rethrow(d, err, "execute"),
      );
      if (acc.done && acc.execution) return this.checked(acc, acc.execution, undefined);
      return this.waitWithin(acc, d);
    });
  }

  /** Waits until an execution started with start() has ended, as run() does. */
  wait(acc: ExecuteAccepted, opts: CallOptions = {}): Promise<Execution> {
    return underDeadline(opts, (d) => this.waitWithin(acc, d));
  }

  private async waitWithin(acc: ExecuteAccepted, d: Deadline): Promise<Execution> {
    const task = await this.c.tasks.wait(acc.task_id, { signal: d.signal }).catch((err) => rethrow(d, err, "execute", acc.task_id));
    const exec = await this.get(acc.execution_id, { signal: d.signal }).catch((err) => rethrow(d, err, "execute", acc.task_id));
    return this.checked(acc, exec, task);
  }

  private checked(acc: ExecuteAccepted, exec: Execution, task: Task | undefined): Execution {
    if (exec.status === "failed" || (exec.exit_code === null && task?.status === "failed")) {
      throw new TaskError(acc.task_id, exec.error || task?.error || "", exec);
    }
    return exec;
  }

  /**
   * Runs a command and streams its output as it is written: onStdout/onStderr get every chunk in order, and the
   * promise resolves with how it ended (exit code, byte counts). The stream is opened right after the command is
   * queued; output written before it opened is replayed from the store, so nothing is missed.
   */
  async runStreamed(vmId: string, req: ExecuteRequest, opts: RunStreamedOptions = {}): Promise<StreamedResult> {
    const acc = await this.start(vmId, req, opts);
    const stream: StreamExecutionOptions = {};
    if (opts.signal) stream.signal = opts.signal;
    for await (const ev of this.stream(acc.execution_id, stream)) {
      if (ev.type === "end") return { ...ev.end, executionId: acc.execution_id, taskId: acc.task_id };
      (ev.type === "stdout" ? opts.onStdout : opts.onStderr)?.(ev.data, ev.offset);
    }
    // stream() throws StreamEndedError rather than ending without an end event.
    throw new StreamEndedError(`stream of execution ${acc.execution_id} ended without its end event`);
  }

  /**
   * Follows an execution's output (GET /executions/{id}/stream, server-sent events): stdout and stderr chunks in
   * order, live while it runs or replayed when it has ended, then its end event, the last. A stream that closes
   * before the end throws StreamEndedError (resume with stdoutOffset/stderrOffset). Breaking out of the loop closes
   * the stream.
   */
  async *stream(id: string, opts: StreamExecutionOptions = {}): AsyncGenerator<ExecutionEvent> {
    const query: Query = {
      stdout_offset: opts.stdoutOffset ? opts.stdoutOffset : undefined,
      stderr_offset: opts.stderrOffset ? opts.stderrOffset : undefined,
    };
    const path = `/executions/${enc(id)}/stream`;
    const { response } = await this.t.open({ method: "GET", path, query, accept: "text/event-stream", streaming: true }, opts);
    yield* sseOrThrow(response, path, opts.signal, async function* (ev) {
      if (ev.event === "stdout" || ev.event === "stderr") {
        const oc = JSON.parse(ev.data) as OutputChunk;
        yield { type: ev.event, offset: oc.offset, data: decodeChunk(oc) } as OutputEvent;
      } else if (ev.event === "end") {
        yield { type: "end", end: JSON.parse(ev.data) as ExecutionEnd } as EndEvent;
        return true;
      }
      return false;
    }, `stream of execution ${id}`);
  }

  /** An execution with its stored output. */
  async get(id: string, opts: CallOptions = {}): Promise<Execution> {
    return (await this.t.json<Execution>({ method: "GET", path: `/executions/${enc(id)}` }, opts)).body;
  }

  /** One page of a VM's executions, newest first. */
  async list(vmId: string, opts: PageOptions = {}): Promise<ExecutionList> {
    const query: Query = { limit: opts.limit, cursor: opts.cursor };
    return (await this.t.json<ExecutionList>({ method: "GET", path: `/vms/${enc(vmId)}/executions`, query }, opts)).body;
  }
}

/**
 * Reads a server-sent event stream through handle, which yields what an event means and returns true after the
 * last one. The stream ending before that is a StreamEndedError.
 */
async function* sseOrThrow<T>(
  response: Response,
  path: string,
  signal: AbortSignal | undefined,
  handle: (ev: { event: string; data: string; id: string | undefined }) => AsyncGenerator<T, boolean>,
  what: string,
): AsyncGenerator<T> {
  const ct = (response.headers.get("content-type") ?? "").split(";")[0]!.trim();
  if (ct !== "text/event-stream" || !response.body) {
    await response.body?.cancel().catch(() => {});
    throw new AetheriumError(`${path}: expected text/event-stream, got ${ct || "no content type"}`, { status: response.status });
  }
  try {
    for await (const ev of readEvents(response.body)) {
      let last: boolean;
      try {
        last = yield* handle(ev);
      } catch (err) {
        if (err instanceof SyntaxError) throw new StreamEndedError(`${what}: malformed ${ev.event} event: ${err.message}`, err);
        throw err;
      }
      if (last) return;
    }
  } catch (err) {
    if (err instanceof AetheriumError) throw err;
    if (signal?.aborted) throw new AbortError(`${what}: aborted`, { cause: signal.reason });
    throw new StreamEndedError(`${what}: the stream broke: ${err instanceof Error ? err.message : err}`, err);
  }
  throw new StreamEndedError(`${what}: the stream closed before the end event`);
}

/** Tasks: GET /tasks/{id} and waiting for one. */
export class Tasks extends Group {
  async get(id: string, opts: CallOptions = {}): Promise<Task> {
    return (await this.t.json<Task>({ method: "GET", path: `/tasks/${enc(id)}` }, opts)).body;
  }

  /**
   * Polls a task until it is done (completed or failed), pausing 50 ms at first and doubling up to maxPollMs. A
   * failed task is returned, not thrown. A few transient failures in a row (network, 429, 502-504) are retried. When
   * timeoutMs or signal end the wait first, a WaitError is thrown with the last task seen.
   */
  wait(id: string, opts: CallOptions & { maxPollMs?: number } = {}): Promise<Task> {
    const maxPoll = opts.maxPollMs && opts.maxPollMs > 0 ? opts.maxPollMs : this.c.opts.maxPollMs;
    return underDeadline(opts, async (d) => {
      let pause = Math.min(MIN_POLL_MS, maxPoll);
      let last: Task | undefined;
      let transient = 0;
      for (;;) {
        try {
          const t = await this.get(id, { signal: d.signal });
          transient = 0;
          last = t;
          if (taskDone(t.status)) return t;
        } catch (err) {
          if (d.aborted) throw new WaitError(id, d.reason(`wait for task ${id}`), last);
          const retry =
            err instanceof ConnectionError ||
            err instanceof TimeoutError ||
            (err instanceof AetheriumError && [429, 502, 503, 504].includes(err.status));
          if (!retry || transient >= MAX_TRANSIENT_FAILURES) throw err;
          transient++;
        }
        try {
          await sleep(pause, d, `wait for task ${id}`);
        } catch (err) {
          throw new WaitError(id, err, last);
        }
        pause = Math.min(pause * 2, maxPoll);
      }
    });
  }
}

/** Jobs: several commands in order in one VM. */
export class Jobs extends Group {
  /** Starts a job (202 at once, or the server waits up to `waitMs`; then `job` is final). */
  create(req: CreateJobRequest, opts: WaitOptions = {}): Promise<Waited<JobAccepted>> {
    return this.c.waited<JobAccepted>("POST", "/jobs", req, opts);
  }

  /** Runs a job and waits for it with its executions. A job that ended "failed" is a result: see its status. */
  runAndWait(req: CreateJobRequest, opts: AndWaitOptions = {}): Promise<Job> {
    return underDeadline(opts, async (d, start) => {
      const acc = await this.create(req, { ...inner(d, opts), waitMs: this.c.chunk(d, start) }).catch((err) => rethrow(d, err, "job"));
      if (acc.done && acc.job) return acc.job;
      await this.c.tasks.wait(acc.task_id, { signal: d.signal }).catch((err) => rethrow(d, err, "job", acc.task_id));
      return this.get(acc.job_id, { signal: d.signal }).catch((err) => rethrow(d, err, "job", acc.task_id));
    });
  }

  /** A job with its executions in command order. */
  async get(id: string, opts: CallOptions = {}): Promise<Job> {
    return (await this.t.json<Job>({ method: "GET", path: `/jobs/${enc(id)}` }, opts)).body;
  }
}

/** Files of a running VM: streamed uploads and downloads, stat, list, mkdir, remove. */
export class Files extends Group {
  /**
   * Streams body into a file of a running VM (PUT /vms/{id}/files). The file appears at path only once complete; an
   * upload cut short writes nothing. Never retried and without an Idempotency-Key (the server refuses one here);
   * sending it again is safe by itself. The time limit is the call's timeoutMs only (uploads take what they take).
   */
  async upload(vmId: string, path: string, body: UploadBody, opts: UploadOptions = {}): Promise<FileInfo> {
    const query: Query = {
      path,
      mode: opts.mode,
      owner: opts.owner,
      mkdir_parents: opts.mkdirParents ? "true" : undefined,
      overwrite: opts.overwrite === false ? "false" : undefined,
    };
    const o: CallOptions = { timeoutMs: opts.timeoutMs ?? 0 };
    if (opts.signal) o.signal = opts.signal;
    const { body: info } = await this.t.json<FileInfo>(
      {
        method: "PUT",
        path: `/vms/${enc(vmId)}/files`,
        query,
        body: uploadBody(body),
        headers: { "Content-Type": "application/octet-stream" },
      },
      o,
    );
    return info;
  }

  /**
   * Opens a file of a running VM for reading (GET /vms/{id}/files): resolves once the server has answered, with the
   * bytes as a ReadableStream that errors if the transfer is cut short.
   */
  async download(vmId: string, path: string, opts: CallOptions = {}): Promise<FileDownload> {
    const { response } = await this.t.open(
      { method: "GET", path: `/vms/${enc(vmId)}/files`, query: { path }, accept: "application/octet-stream", streaming: true },
      opts,
    );
    const lenHeader = response.headers.get("content-length");
    const size = lenHeader === null ? -1 : Number(lenHeader);
    let received = 0;
    const checked = (response.body ?? new Blob([]).stream()).pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, ctl) {
          received += chunk.byteLength;
          ctl.enqueue(chunk);
        },
        flush(ctl) {
          if (size >= 0 && received !== size) {
            ctl.error(new StreamEndedError(`download of ${path}: got ${received} of ${size} bytes: the transfer was cut short`));
          }
        },
      }),
    );
    const num = (h: string) => {
      const v = response.headers.get(h);
      return v === null || v === "" || !Number.isFinite(Number(v)) ? undefined : Number(v);
    };
    const lm = response.headers.get("last-modified");
    const d: FileDownload = {
      body: checked,
      size,
      mode: response.headers.get("x-aetherium-file-mode") ?? undefined,
      uid: num("x-aetherium-file-uid"),
      gid: num("x-aetherium-file-gid"),
      modTime: lm ? new Date(lm) : undefined,
      bytes: () => readAll(checked),
      text: async () => new TextDecoder().decode(await readAll(checked)),
    };
    return d;
  }

  /** Describes a file or directory; a symbolic link is described itself. */
  async stat(vmId: string, path: string, opts: CallOptions = {}): Promise<FileInfo> {
    return (await this.t.json<FileInfo>({ method: "GET", path: `/vms/${enc(vmId)}/fs/stat`, query: { path } }, opts)).body;
  }

  /** Lists a directory, sorted by name. */
  async list(vmId: string, path: string, opts: CallOptions = {}): Promise<FileList> {
    return (await this.t.json<FileList>({ method: "GET", path: `/vms/${enc(vmId)}/fs/list`, query: { path } }, opts)).body;
  }

  /** Creates a directory (with `parents`, like mkdir -p). */
  async mkdir(vmId: string, req: MkdirRequest, opts: MutatingOptions = {}): Promise<FileInfo> {
    return (await this.t.json<FileInfo>({ method: "POST", path: `/vms/${enc(vmId)}/fs/mkdir`, json: req }, opts)).body;
  }

  /** Removes a file or an empty directory, or with recursive a whole tree. */
  async remove(vmId: string, path: string, opts: MutatingOptions & { recursive?: boolean } = {}): Promise<void> {
    await this.t.json({ method: "DELETE", path: `/vms/${enc(vmId)}/fs`, query: { path, recursive: opts.recursive ? "true" : undefined } }, opts);
  }
}

/** Background processes of a VM's agent. */
export class Processes extends Group {
  private p(vmId: string, pid?: string, suffix = ""): string {
    return `/vms/${enc(vmId)}/processes${pid === undefined ? "" : "/" + enc(pid)}${suffix}`;
  }

  /** Starts a background process and returns at once (give it an `id` to make a retried start safe). */
  async start(vmId: string, req: StartProcessRequest, opts: MutatingOptions = {}): Promise<Process> {
    return (await this.t.json<Process>({ method: "POST", path: this.p(vmId), json: req }, opts)).body;
  }

  /** The processes the agent keeps (shell sessions too, `attached`), oldest first. */
  async list(vmId: string, opts: CallOptions = {}): Promise<Process[]> {
    return (await this.t.json<ProcessList>({ method: "GET", path: this.p(vmId) }, opts)).body.processes;
  }

  /** One stream of a process's output from `offset` on; pass `next_offset` back to read on. */
  async output(vmId: string, pid: string, opts: ProcessOutputOptions = {}): Promise<ProcessOutput> {
    const query: Query = { stream: opts.stream ?? "stdout", offset: opts.offset ?? 0, max_bytes: opts.maxBytes || undefined };
    return (await this.t.json<ProcessOutput>({ method: "GET", path: this.p(vmId, pid, "/output"), query }, opts)).body;
  }

  /** The bytes of an output answer, whichever way they were sent. */
  static bytes(o: ProcessOutput): Uint8Array {
    return decodeChunk({ offset: o.offset, ...(o.data !== undefined ? { data: o.data } : {}), ...(o.data_base64 ? { data_base64: o.data_base64 } : {}) });
  }

  /** Waits until the process exits or timeoutMs passes server-side (default 60 s); then it is still `running`. */
  async wait(vmId: string, pid: string, opts: MutatingOptions & { waitMs?: number } = {}): Promise<Process> {
    const waitMs = opts.waitMs && opts.waitMs > 0 ? opts.waitMs : 0;
    const query: Query = { timeout: waitMs ? goDuration(waitMs) : undefined };
    return (
      await this.t.json<Process>({ method: "POST", path: this.p(vmId, pid, "/wait"), query, extraMs: waitMs || 60_000 }, opts)
    ).body;
  }

  /** Sends a signal ("TERM", "KILL", a number) to the process's group. */
  async signal(vmId: string, pid: string, signal: string, opts: MutatingOptions = {}): Promise<void> {
    await this.t.json({ method: "POST", path: this.p(vmId, pid, "/signal"), json: { signal } }, opts);
  }

  /** Forgets an exited process and its output. */
  async remove(vmId: string, pid: string, opts: MutatingOptions = {}): Promise<void> {
    await this.t.json({ method: "DELETE", path: this.p(vmId, pid) }, opts);
  }
}

/** Interactive commands over a WebSocket (GET /vms/{id}/shell): stdin, a terminal, signals. */
export class Shells extends Group {
  /**
   * Starts an interactive command (a terminal with /bin/sh by default) and resolves once the server has started it.
   * The handshake's refusal is the usual typed error (NotFoundError, ConflictError vm_not_running) with the `ws`
   * package; other WebSocket implementations do not tell the status, and give a ShellError.
   */
  open(vmId: string, opts: ShellOptions = {}): Promise<Shell> {
    const Ctor = this.c.opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) {
      return Promise.reject(
        new AetheriumError("shells need a WebSocket: this platform has none (Node.js 20); pass options.WebSocket, e.g. from the ws package"),
      );
    }
    const tty = opts.tty ?? true;
    const query: Query = {
      tty: String(tty),
      command: opts.command?.length ? opts.command : undefined,
      rows: tty && opts.rows ? opts.rows : undefined,
      cols: tty && opts.cols ? opts.cols : undefined,
      term: tty ? opts.term : undefined,
      env: opts.env ? Object.entries(opts.env).map(([k, v]) => `${k}=${v}`) : undefined,
      working_dir: opts.workingDir,
      user: opts.user,
    };
    const url = this.t.url(`/vms/${enc(vmId)}/shell`, query);
    return openShell(Ctor, url, this.t.headers(), opts, this.t.config.timeoutMs);
  }
}

/** Agent runs: a coding agent working on a repository. */
export class Runs extends Group {
  /** Starts a run (202 with the run; follow it with stream()). */
  async create(req: CreateRunRequest, opts: MutatingOptions = {}): Promise<RunAccepted> {
    return (await this.t.json<RunAccepted>({ method: "POST", path: "/runs", json: req }, opts)).body;
  }

  async get(id: string, opts: CallOptions = {}): Promise<Run> {
    return (await this.t.json<Run>({ method: "GET", path: `/runs/${enc(id)}` }, opts)).body;
  }

  /** One page of runs, newest first. */
  async list(opts: ListRunsOptions = {}): Promise<RunList> {
    const query: Query = {
      status: opts.status?.length ? opts.status.join(",") : undefined,
      repo: opts.repo,
      vm_id: opts.vmId,
      limit: opts.limit,
      cursor: opts.cursor,
    };
    return (await this.t.json<RunList>({ method: "GET", path: "/runs", query }, opts)).body;
  }

  /** Asks a run to stop (ConflictError when it has ended). */
  async cancel(id: string, opts: MutatingOptions = {}): Promise<Run> {
    return (await this.t.json<Run>({ method: "POST", path: `/runs/${enc(id)}/cancel` }, opts)).body;
  }

  /** The run's patch against the commit it started from (empty until the agent has finished). */
  async diff(id: string, opts: CallOptions = {}): Promise<string> {
    const { response, done } = await this.t.open({ method: "GET", path: `/runs/${enc(id)}/diff`, accept: "text/x-diff" }, opts);
    try {
      return await response.text();
    } finally {
      done();
    }
  }

  /**
   * Follows a run's transcript (server-sent events): every event in order, replayed then live, up to and including
   * the end event. A broken stream throws StreamEndedError; resume with `after` = the last seq seen.
   */
  async *stream(id: string, opts: StreamRunOptions = {}): AsyncGenerator<RunEvent> {
    const path = `/runs/${enc(id)}/stream`;
    const headers: Record<string, string> = opts.after ? { "Last-Event-ID": String(opts.after) } : {};
    const { response } = await this.t.open({ method: "GET", path, headers, accept: "text/event-stream", streaming: true }, opts);
    yield* sseOrThrow(response, path, opts.signal, async function* (ev) {
      const e = JSON.parse(ev.data) as RunEvent;
      yield e;
      return e.type === "end";
    }, `stream of run ${id}`);
  }

  /** Follows a run to its end and returns the end's data (status, error). */
  async follow(id: string, onEvent?: (e: RunEvent) => void, opts: StreamRunOptions = {}): Promise<RunEnd> {
    for await (const e of this.stream(id, opts)) {
      onEvent?.(e);
      if (e.type === "end") return e.data as unknown as RunEnd;
    }
    throw new StreamEndedError(`stream of run ${id} ended without its end event`);
  }
}

/** The agent catalog. */
export class Agents extends Group {
  async list(opts: CallOptions = {}): Promise<Agent[]> {
    return (await this.t.json<{ agents: Agent[] }>({ method: "GET", path: "/agents" }, opts)).body.agents;
  }
}

/** The caller's secrets: values go in, never come out. */
export class Secrets extends Group {
  /** Creates or replaces a secret; `created` says whether it is new. The answer never holds the value. */
  async put(name: string, value: string, opts: CallOptions = {}): Promise<{ secret: Secret; created: boolean }> {
    const { status, body } = await this.t.json<Secret>({ method: "PUT", path: `/secrets/${enc(name)}`, json: { value } }, opts);
    return { secret: body, created: status === 201 };
  }

  /** Names and times, by name. */
  async list(opts: CallOptions = {}): Promise<Secret[]> {
    return (await this.t.json<SecretList>({ method: "GET", path: "/secrets" }, opts)).body.secrets;
  }

  async delete(name: string, opts: CallOptions = {}): Promise<void> {
    await this.t.json({ method: "DELETE", path: `/secrets/${enc(name)}` }, opts);
  }
}

/** Log queries (GET /logs, /vms/{id}/logs). */
export class Logs extends Group {
  async query(opts: LogQueryOptions = {}): Promise<LogList> {
    const t = (x: string | Date | undefined) => (x instanceof Date ? x.toISOString() : x);
    const query: Query = {
      vm_id: opts.vmId,
      execution_id: opts.executionId,
      run_id: opts.runId,
      since: t(opts.since),
      until: t(opts.until),
      limit: opts.limit,
      q: opts.q,
    };
    return (await this.t.json<LogList>({ method: "GET", path: "/logs", query }, opts)).body;
  }

  /** A VM's console lines (needs a Loki on the server). */
  async vm(vmId: string, opts: Omit<LogQueryOptions, "vmId" | "executionId" | "runId"> = {}): Promise<LogList> {
    const t = (x: string | Date | undefined) => (x instanceof Date ? x.toISOString() : x);
    const query: Query = { since: t(opts.since), until: t(opts.until), limit: opts.limit, q: opts.q };
    return (await this.t.json<LogList>({ method: "GET", path: `/vms/${enc(vmId)}/logs`, query }, opts)).body;
  }
}
