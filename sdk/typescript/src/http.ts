import {
  AbortError,
  AetheriumError,
  ConnectionError,
  TimeoutError,
  errorClassFor,
} from "./errors.js";

/** The fetch the client calls: the platform's by default, or one the caller injects (a proxy agent, a test). */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

/** Options every call takes. */
export interface CallOptions {
  /** Ends the call (and, for the ...AndWait helpers, the wait) when aborted. */
  signal?: AbortSignal;
  /**
   * A time limit for this call in milliseconds, replacing the client's `timeoutMs`. For plain calls it bounds the
   * request until its answer is read; for the ...AndWait helpers it bounds the whole wait; for streams (execution
   * output, run transcripts, downloads, shells) it bounds the wait for the server's first answer only.
   */
  timeoutMs?: number;
}

/** Options of the calls that change something. */
export interface MutatingOptions extends CallOptions {
  /**
   * Sent as the `Idempotency-Key` header: a call repeated with the same key and the same request within 24 h gets
   * the first call's answer instead of running again. With `retries` on, the client makes a key per call itself.
   */
  idempotencyKey?: string;
}

export interface TransportConfig {
  baseUrl: string;
  apiKey: string | undefined;
  fetch: FetchLike;
  timeoutMs: number;
  retries: number;
  userAgent: string | undefined;
  headers: Record<string, string>;
}

export const API_PREFIX = "/api/v1";
const MAX_ERROR_BODY = 64 << 10;

export type Query = Record<string, string | number | boolean | readonly string[] | undefined>;

export interface RequestSpec {
  method: "GET" | "POST" | "PUT" | "DELETE";
  path: string;
  query?: Query | undefined;
  /** A JSON body (serialized once, so every retry sends the same bytes). */
  json?: unknown;
  /** A raw body (uploads): never retried, never with an Idempotency-Key. */
  body?: Blob | ArrayBuffer | ArrayBufferView | ReadableStream<Uint8Array> | string | undefined;
  headers?: Record<string, string>;
  accept?: string;
  /** Statuses besides 2xx whose answer is a result, not an error (GET /ready's 503). */
  alsoOk?: readonly number[];
  /** Extra milliseconds this request may take on top of the time limit (the server-side ?wait=). */
  extraMs?: number;
  /** Whether the time limit stops at the answer's headers (streams) instead of covering the body. */
  streaming?: boolean;
}

/** A response with the time limit's cleanup: call done() once the body has been consumed. */
export interface OpenResponse {
  response: Response;
  done: () => void;
}

/** Joins the caller's signal and a timer into one signal, telling apart which one fired. */
export class Deadline {
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private timedOut = false;
  private readonly onAbort: () => void;

  constructor(
    private readonly outer: AbortSignal | undefined,
    readonly timeoutMs: number | undefined,
  ) {
    this.signal = this.controller.signal;
    this.onAbort = () => this.controller.abort(outer?.reason);
    if (outer?.aborted) {
      this.controller.abort(outer.reason);
    } else {
      outer?.addEventListener("abort", this.onAbort, { once: true });
    }
    if (timeoutMs !== undefined && timeoutMs > 0 && timeoutMs < Infinity) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        this.controller.abort(new TimeoutError(`timed out after ${timeoutMs} ms`));
      }, timeoutMs);
    }
  }

  /** Milliseconds left before the timer fires (Infinity without one). */
  remaining(start: number): number {
    if (this.timeoutMs === undefined || this.timeoutMs <= 0) return Infinity;
    return this.timeoutMs - (Date.now() - start);
  }

  /** The error that describes why the signal fired. */
  reason(what: string): AetheriumError {
    if (this.timedOut) return new TimeoutError(`${what}: timed out after ${this.timeoutMs} ms`);
    return new AbortError(`${what}: aborted`, { cause: this.outer?.reason });
  }

  get aborted(): boolean {
    return this.signal.aborted;
  }

  /** Stops the timer but keeps following the caller's signal (a stream that outlives the time limit). */
  clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  dispose(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.outer?.removeEventListener("abort", this.onAbort);
  }
}

/** Sleeps ms, or less when signal aborts (then it rejects with the deadline's reason). */
export function sleep(ms: number, deadline: Deadline | undefined, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (deadline?.aborted) {
      reject(deadline.reason(what));
      return;
    }
    const onAbort = () => {
      clearTimeout(t);
      reject(deadline!.reason(what));
    };
    const t = setTimeout(() => {
      deadline?.signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    deadline?.signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** A random version 4 UUID, the kind of Idempotency-Key the server expects. */
export function newIdempotencyKey(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  c!.getRandomValues(b);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Turns an error answer into the APIError subclass of its status, from the envelope when there is one. */
export async function errorFromResponse(res: Response): Promise<AetheriumError> {
  const requestId = res.headers.get("x-request-id") ?? undefined;
  const retryAfterRaw = Number.parseInt(res.headers.get("retry-after") ?? "", 10);
  const retryAfter = Number.isFinite(retryAfterRaw) && retryAfterRaw > 0 ? retryAfterRaw : undefined;
  let text = "";
  try {
    text = await readLimited(res, MAX_ERROR_BODY);
  } catch {
    // A body that breaks is no reason to lose the status.
  }
  const Cls = errorClassFor(res.status);
  const ct = (res.headers.get("content-type") ?? "").split(";")[0]!.trim().toLowerCase();
  try {
    const env = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    if (env && typeof env.error === "object" && env.error && typeof env.error.code === "string" && env.error.code) {
      const message = typeof env.error.message === "string" && env.error.message ? env.error.message : res.statusText;
      return new Cls(message, { status: res.status, code: env.error.code, requestId, retryAfter });
    }
  } catch {
    // Not the API's JSON: described below.
  }
  let message = `unexpected answer from server: HTTP ${res.status} ${res.statusText}`.trimEnd();
  if (ct === "text/plain" && text) {
    // eslint-disable-next-line no-control-regex
    let line = text.trim().split("\n")[0]!.replace(/[\u0000-\u001f\u007f]/g, "");
    if (line.length > 200) line = line.slice(0, 200) + "...";
    if (line) message += `: ${line}`;
  } else if (ct && ct !== "application/json" && !ct.endsWith("+json")) {
    message += ` (${ct} body; is a proxy in the way?)`;
  }
  return new Cls(message, { status: res.status, requestId, retryAfter });
}

async function readLimited(res: Response, limit: number): Promise<string> {
  if (!res.body) return "";
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    while (n < limit) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value);
      n += value.byteLength;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  const all = new Uint8Array(Math.min(n, limit));
  let off = 0;
  for (const p of parts) {
    const take = Math.min(p.byteLength, all.byteLength - off);
    all.set(p.subarray(0, take), off);
    off += take;
    if (off >= all.byteLength) break;
  }
  return new TextDecoder().decode(all);
}

function transient(err: unknown): boolean {
  if (err instanceof ConnectionError || err instanceof TimeoutError) return true;
  if (err instanceof AetheriumError) {
    if ([429, 502, 503, 504].includes(err.status)) return true;
    return err.status === 409 && err.code === "idempotency_in_progress";
  }
  return false;
}

/** Sends the API's requests: credentials, time limits, abort signals, error envelopes, retries. */
export class Transport {
  // The key lives in a private field, out of the config: printing or inspecting a client never shows it.
  readonly #apiKey: string | undefined;
  readonly config: Omit<TransportConfig, "apiKey">;

  constructor(config: TransportConfig) {
    const { apiKey, ...rest } = config;
    this.#apiKey = apiKey;
    this.config = rest;
  }

  url(path: string, query?: Query): string {
    let u = this.config.baseUrl + API_PREFIX + path;
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) {
        if (v === undefined) continue;
        if (Array.isArray(v)) for (const item of v) q.append(k, item);
        else q.append(k, String(v));
      }
      const s = q.toString();
      if (s) u += "?" + s;
    }
    return u;
  }

  headers(extra?: Record<string, string>): Record<string, string> {
    const h: Record<string, string> = { ...this.config.headers };
    if (this.config.userAgent) h["User-Agent"] = this.config.userAgent;
    if (this.#apiKey) h["Authorization"] = `Bearer ${this.#apiKey}`;
    return { ...h, ...extra };
  }

  /**
   * Sends a request and returns its answer once a 2xx (or alsoOk) status arrived; other answers throw the error of
   * their status. Mutating JSON calls carry an Idempotency-Key when asked or when retries are on, and are then sent
   * again after transient failures (network errors, time-outs, 429, 502, 503, 504, 409 idempotency_in_progress).
   */
  async open(spec: RequestSpec, opts: MutatingOptions = {}): Promise<OpenResponse> {
    return this.send(spec, opts, async (response, done) => ({ response, done }));
  }

  /**
   * open() and read the answer as JSON (undefined for an empty body, 204). A body cut short is a transport failure:
   * retried like one (the server replays the answer for the same Idempotency-Key).
   */
  async json<T>(spec: RequestSpec, opts: MutatingOptions = {}): Promise<{ status: number; body: T }> {
    const what = `${spec.method} ${spec.path}`;
    return this.send(spec, opts, async (response, done, deadline) => {
      let text: string;
      try {
        text = await response.text();
      } catch (err) {
        if (deadline.aborted) throw deadline.reason(`${what}: reading the answer`);
        throw new ConnectionError(`${what}: reading the answer: ${err instanceof Error ? err.message : err}`, { cause: err });
      } finally {
        done();
      }
      if (!text) return { status: response.status, body: undefined as T };
      try {
        return { status: response.status, body: JSON.parse(text) as T };
      } catch (err) {
        throw new AetheriumError(`${what}: the answer (${response.status}) is not JSON`, {
          status: response.status,
          requestId: response.headers.get("x-request-id") ?? undefined,
          cause: err,
        });
      }
    });
  }

  private async send<R>(
    spec: RequestSpec,
    opts: MutatingOptions,
    consume: (res: Response, done: () => void, deadline: Deadline) => Promise<R>,
  ): Promise<R> {
    const mutating = spec.method !== "GET";
    const raw = spec.body !== undefined;
    let key = opts.idempotencyKey;
    let attempts = 1;
    // As the Go SDK: retries are for the calls that change something, made safe by their key. Reads are left to
    // the caller (the task polls of the wait helpers retry transient failures themselves).
    if (mutating && !raw && this.config.retries > 0) {
      key ??= newIdempotencyKey();
      attempts += this.config.retries;
    }
    const body = spec.json !== undefined ? JSON.stringify(spec.json) : spec.body;
    const headers = this.headers({
      Accept: spec.accept ?? "application/json",
      ...(spec.json !== undefined ? { "Content-Type": "application/json" } : {}),
      ...(mutating && !raw && key ? { "Idempotency-Key": key } : {}),
      ...spec.headers,
    });
    const url = this.url(spec.path, spec.query);
    const what = `${spec.method} ${spec.path}`;
    const limit = opts.timeoutMs ?? this.config.timeoutMs;
    for (let attempt = 1; ; attempt++) {
      const deadline = new Deadline(opts.signal, limit > 0 ? limit + (spec.extraMs ?? 0) : undefined);
      let err: AetheriumError;
      try {
        let res: Response;
        try {
          const init: RequestInit & { duplex?: "half" } = { method: spec.method, headers, signal: deadline.signal };
          if (body !== undefined) init.body = body as BodyInit;
          if (raw && typeof ReadableStream !== "undefined" && body instanceof ReadableStream) init.duplex = "half";
          res = await this.config.fetch(url, init);
        } catch (e) {
          throw deadline.aborted
            ? deadline.reason(what)
            : new ConnectionError(`${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
        }
        if ((res.status >= 200 && res.status < 300) || spec.alsoOk?.includes(res.status)) {
          if (spec.streaming) {
            // The limit was for the server's first answer: the body streams as long as it takes, still under the
            // caller's signal.
            deadline.clearTimer();
            return await consume(res, () => {}, deadline);
          }
          return await consume(res, () => deadline.dispose(), deadline);
        }
        throw await errorFromResponse(res);
      } catch (e) {
        deadline.dispose();
        if (!(e instanceof AetheriumError)) throw e;
        err = e;
      }
      if (attempt >= attempts || !transient(err) || opts.signal?.aborted) throw err;
      const pause = err.retryAfter ? Math.min(err.retryAfter * 1000, 5000) : Math.min(100 * 2 ** (attempt - 1), 5000);
      const wait = new Deadline(opts.signal, undefined);
      try {
        await sleep(pause, wait, what);
      } finally {
        wait.dispose();
      }
    }
  }
}
