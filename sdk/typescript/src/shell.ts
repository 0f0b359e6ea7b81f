import { AbortError, AetheriumError, ShellError } from "./errors.js";
import { Deadline, errorFromResponse } from "./http.js";
import type { ShellMessage } from "./types.js";

/** What the SDK needs of a WebSocket: the standard browser interface (which Node's `ws` package implements too). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (ev: any) => void, options?: { once?: boolean }): void;
  removeEventListener(type: string, listener: (ev: any) => void): void;
}

/**
 * A WebSocket constructor: `globalThis.WebSocket`, or one injected in the client's options (Node.js 20 has none;
 * pass `WebSocket` from the `ws` package). Outside browsers it is called as `new WebSocket(url, { headers })`,
 * which both `ws` and Node's own WebSocket (22+) accept, so the handshake carries the API key.
 */
export type WebSocketConstructor = new (url: string, ...args: any[]) => WebSocketLike;

/** An interactive command (GET /vms/{id}/shell). */
export interface ShellOptions {
  /** The program and its arguments; empty: the VM's /bin/sh (a login shell with a terminal). */
  command?: string[];
  /** Run on a pseudo-terminal (default true): stdout and stderr are then one stream. */
  tty?: boolean;
  /** The terminal's size (24x80 when not given). */
  rows?: number;
  cols?: number;
  /** TERM of the terminal (default xterm-256color). */
  term?: string;
  env?: Record<string, string>;
  workingDir?: string;
  /** `user[:group]` to run as. */
  user?: string;
  /** Gets the command's stdout (with a terminal: everything it shows) as it arrives. */
  onStdout?: (data: Uint8Array) => void;
  /** Gets its stderr (without a terminal only). */
  onStderr?: (data: Uint8Array) => void;
  /** Ends the session (and kills the command) when aborted. */
  signal?: AbortSignal;
  /** Bounds the handshake (default: the client's timeoutMs); the session itself runs as long as it runs. */
  timeoutMs?: number;
}

/** How a shell's command ended. */
export interface ShellExit {
  /** The exit code; 128+n when signal n ended it (`signal` names it). */
  exitCode: number;
  signal: string;
  timedOut: boolean;
  durationMs: number | undefined;
}

const OPEN = 1;

/**
 * An interactive command running in a VM. write() sends stdin; the output goes to the onStdout/onStderr callbacks
 * given at open; wait() resolves with the exit once the command has ended.
 */
export class Shell {
  /** The command's process id in the VM's agent (see processes.list). */
  readonly id: string;
  private readonly exited: Promise<ShellExit>;

  /** @internal */
  constructor(
    private readonly ws: WebSocketLike,
    id: string,
    exited: Promise<ShellExit>,
  ) {
    this.id = id;
    this.exited = exited;
    // wait() may be called late, or never: a failure must not become an unhandled rejection meanwhile.
    exited.catch(() => {});
  }

  /** Sends data (text is sent as UTF-8) to the command's stdin. */
  write(data: string | Uint8Array): void {
    this.assertOpen();
    this.ws.send(typeof data === "string" ? new TextEncoder().encode(data) : data);
  }

  /** Tells the command's terminal its new size. */
  resize(rows: number, cols: number): void {
    this.control({ type: "resize", rows, cols });
  }

  /** Sends a signal ("INT", "TERM", a number) to the command's process group. */
  signal(sig: string): void {
    this.control({ type: "signal", signal: sig });
  }

  /** Ends the command's stdin (without a terminal; a terminal's EOF is ^D, written as "\x04"). */
  closeStdin(): void {
    this.control({ type: "eof" });
  }

  /** Resolves with how the command ended; rejects with a ShellError when the server reported a failure or the
   * connection ended first. */
  wait(): Promise<ShellExit> {
    return this.exited;
  }

  /** Ends the session; a command still running is killed. */
  close(): void {
    try {
      this.ws.close(1000);
    } catch {
      // Already closed.
    }
  }

  private control(m: ShellMessage): void {
    this.assertOpen();
    this.ws.send(JSON.stringify(m));
  }

  private assertOpen(): void {
    if (this.ws.readyState !== OPEN) throw new ShellError("the shell's connection is closed", { code: "shell_closed" });
  }
}

function toBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

function fromBase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Is this a browser, whose WebSocket cannot send headers? */
function inBrowser(): boolean {
  const g = globalThis as { window?: unknown; document?: unknown; process?: { versions?: { node?: string } } };
  return typeof g.window !== "undefined" && typeof g.document !== "undefined" && !g.process?.versions?.node;
}

/** @internal Opens a shell session: resolves once the server has started the command. */
export function openShell(
  Ctor: WebSocketConstructor,
  url: string,
  headers: Record<string, string>,
  opts: ShellOptions,
  handshakeTimeoutMs: number,
): Promise<Shell> {
  const wsUrl = url.replace(/^http/, "ws");
  const deadline = new Deadline(opts.signal, opts.timeoutMs ?? handshakeTimeoutMs);
  const ws = inBrowser() ? new Ctor(wsUrl) : new Ctor(wsUrl, { headers });
  ws.binaryType = "arraybuffer";

  return new Promise<Shell>((resolveOpen, rejectOpen) => {
    let started = false;
    let settled = false;
    let httpError: Promise<AetheriumError> | undefined;
    let resolveExit!: (e: ShellExit) => void;
    let rejectExit!: (e: unknown) => void;
    const exited = new Promise<ShellExit>((res, rej) => {
      resolveExit = res;
      rejectExit = rej;
    });

    const fail = (err: AetheriumError) => {
      if (settled) return;
      settled = true;
      if (!started) {
        deadline.dispose();
        rejectOpen(err);
      } else {
        rejectExit(err);
      }
      try {
        ws.close(1000);
      } catch {
        // Already closed.
      }
      cleanup();
    };
    const onAbort = () => {
      fail(started ? new AbortError("shell: aborted", { cause: opts.signal?.reason }) : deadline.reason("shell handshake"));
    };
    // The `ws` package reports the answer of a refused handshake (a 404 of another owner's VM, a 409 of a VM
    // that is not running): decode its envelope, as for any call. Browsers and undici say nothing about it.
    const wsEmitter = ws as unknown as { on?: (ev: string, fn: (...a: any[]) => void) => void };
    if (typeof wsEmitter.on === "function") {
      wsEmitter.on("unexpected-response", (_req: unknown, res: NodeLikeResponse) => {
        httpError = errorFromNodeResponse(res);
        httpError.then(fail, () => fail(new ShellError(`shell handshake refused: HTTP ${res.statusCode}`)));
      });
    }
    const onMessage = (ev: { data: unknown }) => {
      const bin = toBytes(ev.data);
      if (bin) {
        opts.onStdout?.(bin);
        return;
      }
      let m: ShellMessage;
      try {
        m = JSON.parse(String(ev.data)) as ShellMessage;
      } catch {
        return; // a message of a newer server
      }
      switch (m.type) {
        case "started":
          if (!started) {
            started = true;
            deadline.dispose();
            opts.signal?.addEventListener("abort", onAbort, { once: true });
            resolveOpen(new Shell(ws, m.id ?? "", exited));
          }
          break;
        case "stderr":
          if (m.data) opts.onStderr?.(fromBase64(m.data));
          break;
        case "exit":
          if (!settled) {
            settled = true;
            resolveExit({
              exitCode: m.exit_code ?? -1,
              signal: m.signal ?? "",
              timedOut: m.timed_out ?? false,
              durationMs: m.duration_ms,
            });
            try {
              ws.close(1000);
            } catch {
              // Closed by the server already.
            }
            cleanup();
          }
          break;
        case "error":
          fail(new ShellError(`${m.message ?? "shell failed"} (${m.code ?? "error"})`, { code: m.code ?? "" }));
          break;
      }
    };
    const onClose = (ev: { code?: number; reason?: string }) => {
      if (httpError) return; // the handshake's own error is on its way
      const why = ev.reason ? `: ${ev.reason}` : ev.code ? ` (close code ${ev.code})` : "";
      fail(
        new ShellError(
          started
            ? `shell connection closed before the command ended${why}`
            : `shell handshake failed${why}; the server refused the WebSocket or could not be reached`,
          { code: "shell_closed" },
        ),
      );
    };
    const onError = () => {
      // An error event is followed by close, which reports it (with the handshake's answer when there is one).
    };
    const cleanup = () => {
      ws.removeEventListener("message", onMessage);
      ws.removeEventListener("close", onClose);
      // The error listener stays: the `ws` package throws an error event that nobody listens to.
      opts.signal?.removeEventListener("abort", onAbort);
      deadline.signal.removeEventListener("abort", onAbort);
      deadline.dispose();
    };
    ws.addEventListener("message", onMessage);
    ws.addEventListener("close", onClose);
    ws.addEventListener("error", onError);
    deadline.signal.addEventListener("abort", onAbort, { once: true });
    // A signal that was aborted before the call fires no event.
    if (deadline.aborted) onAbort();
  });
}

interface NodeLikeResponse {
  statusCode?: number;
  statusMessage?: string;
  headers: Record<string, string | string[] | undefined>;
  on(ev: "data", fn: (chunk: Uint8Array) => void): void;
  on(ev: "end" | "error", fn: (...a: unknown[]) => void): void;
}

function errorFromNodeResponse(res: NodeLikeResponse): Promise<AetheriumError> {
  return new Promise((resolve) => {
    const parts: Uint8Array[] = [];
    let n = 0;
    res.on("data", (c: Uint8Array) => {
      if (n < 64 << 10) parts.push(c);
      n += c.byteLength;
    });
    const finish = () => {
      const h = new Headers();
      for (const [k, v] of Object.entries(res.headers)) {
        if (typeof v === "string") h.set(k, v);
        else if (Array.isArray(v)) for (const x of v) h.append(k, x);
      }
      const body = new Blob(parts as BlobPart[]);
      resolve(
        errorFromResponse(new Response(body, { status: res.statusCode ?? 500, statusText: res.statusMessage ?? "", headers: h })),
      );
    };
    res.on("end", finish);
    res.on("error", finish);
  });
}
