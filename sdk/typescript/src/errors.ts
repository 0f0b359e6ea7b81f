import type { components } from "./openapi.js";

/** The machine-readable codes of the API's error envelope (a newer server may send others). */
export type ErrorCode = components["schemas"]["ErrorDetail"]["code"];

/** Every error this SDK throws is an AetheriumError or one of its subclasses. */
export class AetheriumError extends Error {
  /** The HTTP status, 0 when no answer was received (a network failure, a timeout, an abort). */
  readonly status: number;
  /**
   * The envelope's code (`not_found`, `rate_limited`, `validation_failed`, ...), empty when the server sent no
   * envelope (a proxy's error page, say) or when the error is the client's own.
   */
  readonly code: ErrorCode | (string & {}) | "";
  /** The server's `X-Request-Id` for the failed request, when it answered: quote it when reporting a problem. */
  readonly requestId: string | undefined;
  /** Seconds the server asked to wait before a retry (`Retry-After`), when it said. */
  readonly retryAfter: number | undefined;

  constructor(
    message: string,
    init: { status?: number; code?: string; requestId?: string | undefined; retryAfter?: number | undefined; cause?: unknown } = {},
  ) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = new.target.name;
    this.status = init.status ?? 0;
    this.code = init.code ?? "";
    this.requestId = init.requestId;
    this.retryAfter = init.retryAfter;
  }
}

/** An error answer of the API (any non-2xx status). The subclasses below narrow it by status. */
export class APIError extends AetheriumError {}
/** 400: malformed JSON, unknown fields, bad query values, a bad Idempotency-Key. */
export class BadRequestError extends APIError {}
/** 401: the API key or token is missing, malformed, unknown, revoked or expired. */
export class UnauthorizedError extends APIError {}
/**
 * 403: the VM's guest refuses it (`permission_denied`), or the credential may not do this (`forbidden`: a scope it
 * lacks, an admin's route).
 */
export class PermissionDeniedError extends APIError {}
/** 404: no such resource, or another owner's (`not_found`, `path_not_found`, `process_not_found`). */
export class NotFoundError extends APIError {}
/** 409: `conflict`, `vm_not_running`, `already_exists`, `idempotency_in_progress`, ... */
export class ConflictError extends APIError {}
/** 413: the body is over the server's limit. */
export class PayloadTooLargeError extends APIError {}
/** 422: well-formed but invalid input (`validation_failed`: the message names the field), `idempotency_key_reused`. */
export class ValidationError extends APIError {}
/** 429: `rate_limited` or `too_many_processes`. */
export class RateLimitedError extends APIError {}
/** 500 and other 5xx without a class of their own. */
export class InternalServerError extends APIError {}
/** 501: `unsupported` (an agent too old) or `not_implemented` (e.g. log queries without a Loki). */
export class NotImplementedError extends APIError {}
/** 503: the queue, or the worker hosting the VM, cannot take the request now; retry. */
export class ServiceUnavailableError extends APIError {}

/** The request did not get an answer: DNS, refused or reset connection, a body cut short. */
export class ConnectionError extends AetheriumError {}
/** The client's own time limit (`timeoutMs`) passed before the server answered. */
export class TimeoutError extends AetheriumError {}
/** The caller's AbortSignal ended the call. */
export class AbortError extends AetheriumError {}

/**
 * A task ran to its end and failed: an infrastructure failure (the VM could not be made, the command could not be
 * run). A command's non-zero exit code is a result, never a TaskError.
 */
export class TaskError extends AetheriumError {
  readonly taskId: string;
  /** What the failed task left: the VM (createAndWait), the task (deleteAndWait) or the execution (run). */
  readonly result: unknown;
  constructor(taskId: string, message: string, result?: unknown) {
    super(`task ${taskId} failed: ${message || "no error message"}`, { code: "task_failed" });
    this.taskId = taskId;
    this.result = result;
  }
}

/**
 * A wait ended (timeout or abort) before the task did. The task goes on server-side; `taskId` lets the caller follow
 * it later, and `last` is what was seen last (the VM of a create, for instance), when anything was.
 */
export class WaitError extends AetheriumError {
  readonly taskId: string;
  readonly last: unknown;
  constructor(taskId: string, cause: unknown, last?: unknown) {
    super(`task ${taskId} not finished: ${cause instanceof Error ? cause.message : String(cause)}`, {
      code: "wait_ended",
      cause,
    });
    this.taskId = taskId;
    this.last = last;
  }
}

/**
 * A stream (an execution's output, a run's transcript) closed before its end event. The execution or run goes on;
 * resume with the offsets (`executions.stream(id, { stdoutOffset, stderrOffset })`) or the last seq (`runs.stream(id,
 * { after })`).
 */
export class StreamEndedError extends AetheriumError {
  constructor(message: string, cause?: unknown) {
    super(message, { code: "stream_ended", cause });
  }
}

/**
 * A failure inside a shell session: the server's `error` message (the command could not be run, the VM's agent
 * went away; `code` is the server's), or the connection closing before the command's exit (`shell_closed`).
 */
export class ShellError extends AetheriumError {}

/** The error class of an API answer with this status. */
export function errorClassFor(status: number): typeof APIError {
  switch (status) {
    case 400:
      return BadRequestError;
    case 401:
      return UnauthorizedError;
    case 403:
      return PermissionDeniedError;
    case 404:
      return NotFoundError;
    case 409:
      return ConflictError;
    case 413:
      return PayloadTooLargeError;
    case 422:
      return ValidationError;
    case 429:
      return RateLimitedError;
    case 501:
      return NotImplementedError;
    case 503:
      return ServiceUnavailableError;
  }
  return status >= 500 ? InternalServerError : APIError;
}

/** Whether err is an AetheriumError with this code. */
export function isCode(err: unknown, code: ErrorCode | (string & {})): boolean {
  return err instanceof AetheriumError && err.code === code;
}

/** Whether err is a 404 of the API. */
export function isNotFound(err: unknown): err is NotFoundError {
  return err instanceof NotFoundError;
}
