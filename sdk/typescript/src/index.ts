// @aetherium/sdk: the TypeScript SDK of Aetherium's REST API v1 (ESM, no runtime dependencies: the platform's
// fetch, ReadableStream and WebSocket). See README.md.
export {
  Aetherium,
  VMs,
  Executions,
  Tasks,
  Jobs,
  Files,
  Processes,
  Shells,
  Runs,
  Agents,
  Secrets,
  Logs,
} from "./client.js";
export type {
  ClientOptions,
  Waited,
  WaitOptions,
  AndWaitOptions,
  PageOptions,
  ListVMsOptions,
  ListRunsOptions,
  LogQueryOptions,
  OutputEvent,
  EndEvent,
  ExecutionEvent,
  StreamExecutionOptions,
  RunStreamedOptions,
  StreamedResult,
  UploadOptions,
  UploadBody,
  FileDownload,
  ProcessOutputOptions,
  StreamRunOptions,
} from "./client.js";
export type { CallOptions, MutatingOptions, FetchLike } from "./http.js";
export { Shell } from "./shell.js";
export type { ShellOptions, ShellExit, WebSocketLike, WebSocketConstructor } from "./shell.js";
export {
  AetheriumError,
  APIError,
  BadRequestError,
  UnauthorizedError,
  PermissionDeniedError,
  NotFoundError,
  ConflictError,
  PayloadTooLargeError,
  ValidationError,
  RateLimitedError,
  InternalServerError,
  NotImplementedError,
  ServiceUnavailableError,
  ConnectionError,
  TimeoutError,
  AbortError,
  TaskError,
  WaitError,
  StreamEndedError,
  ShellError,
  isCode,
  isNotFound,
} from "./errors.js";
export type { ErrorCode } from "./errors.js";
export * from "./types.js";
export type { paths, components, operations } from "./openapi.js";
