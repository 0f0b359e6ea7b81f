"""Exceptions of the SDK.

Every error answer of the API becomes an :class:`AetheriumError` (or the subclass its status maps to) carrying
the HTTP ``status``, the envelope's ``code`` and ``message`` (``{"error": {"code": ..., "message": ...}}``) and
the ``request_id`` the server logged it under (``X-Request-Id``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "AetheriumError", "BadRequestError", "UnauthorizedError", "PermissionDeniedError", "NotFoundError",
    "ConflictError", "ValidationError", "PayloadTooLargeError", "RateLimitedError", "ServerError",
    "ServiceUnavailableError", "TransportError", "TaskError", "WaitTimeoutError", "StreamEndedError",
    "ShellError", "ShellClosedError", "error_from_response",
]


class AetheriumError(Exception):
    """An error answer of the API, or (for subclasses without a status) a failure of the SDK's own.

    ``code`` is the envelope's stable, machine-readable code (``not_found``, ``validation_failed``...), empty when
    the body was not the API's envelope (a proxy's error page). ``retry_after`` is the ``Retry-After`` header in
    seconds, when sent.
    """

    def __init__(self, message: str, status: int = 0, code: str = "", request_id: str = "",
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        s = self.message
        if self.code:
            s += " (%s)" % self.code
        if self.status:
            s = "HTTP %d: %s" % (self.status, s)
        if self.request_id:
            s += " [request %s]" % self.request_id
        return s

    def __repr__(self) -> str:
        return "%s(status=%r, code=%r, message=%r, request_id=%r)" % (
            type(self).__name__, self.status, self.code, self.message, self.request_id)


class BadRequestError(AetheriumError):
    """400: malformed JSON, unknown fields, bad query values, a malformed Idempotency-Key."""


class UnauthorizedError(AetheriumError):
    """401: a missing, unknown or revoked API key."""


class PermissionDeniedError(AetheriumError):
    """403: the VM's guest refuses it (``permission_denied``), or the credential may not do this (``forbidden``: a
    scope it lacks, an admin's route)."""


class NotFoundError(AetheriumError):
    """404: an unknown id, another owner's resource, a path or process the VM does not have."""


class ConflictError(AetheriumError):
    """409: ``conflict``, ``vm_not_running``, ``already_exists``, ``idempotency_in_progress``..."""


class ValidationError(AetheriumError):
    """422: a value out of range (the message names the field), ``idempotency_key_reused``, ``unknown_user``."""


class PayloadTooLargeError(AetheriumError):
    """413: a body over the limit."""


class RateLimitedError(AetheriumError):
    """429: too many requests (or ``too_many_processes`` in a VM); ``retry_after`` says when to come back."""


class ServerError(AetheriumError):
    """5xx: a failure of the server (``internal_error``, ``guest_io_error``, ``not_implemented``...)."""


class ServiceUnavailableError(ServerError):
    """503: the queue is down, or the worker hosting the VM cannot be reached."""


class TransportError(AetheriumError):
    """The request did not get an answer: connection refused or reset, a timeout, a malformed answer."""


class TaskError(AetheriumError):
    """A task ran to its end and failed (an infrastructure failure; a command's exit code is a result).

    ``vm`` is the VM in its failed state when a create failed, so that it can be deleted; ``execution`` the
    execution that could not be run.
    """

    def __init__(self, task_id: str, message: str, vm: Any = None, execution: Any = None) -> None:
        super().__init__("task %s failed: %s" % (task_id, message or "no error message"))
        self.task_id = task_id
        self.vm = vm
        self.execution = execution


class WaitTimeoutError(AetheriumError, TimeoutError):
    """A wait ended (its timeout passed) before the task finished. The task goes on server-side: ``task_id``
    lets the caller look at it later, and ``vm`` is the VM last seen when the wait was for a create."""

    def __init__(self, task_id: str, message: str = "", vm: Any = None) -> None:
        super().__init__("task %s not finished: %s" % (task_id, message or "timeout"))
        self.task_id = task_id
        self.vm = vm


class StreamEndedError(AetheriumError):
    """A stream closed or broke before its end event. The execution (or run) goes on; resume with the offsets
    (``stdout_offset``/``stderr_offset``) or the last ``seq`` seen."""


class ShellError(AetheriumError):
    """A failure the server reported inside a shell session (``{"type": "error"}``): the command could not run,
    or the VM's agent went away."""


class ShellClosedError(AetheriumError):
    """The shell's connection ended before the command's exit was reported."""


_BY_STATUS: Dict[int, Type[AetheriumError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}

_STATUS_TEXT = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
                415: "Unsupported Media Type", 422: "Unprocessable Entity", 429: "Too Many Requests",
                500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
                503: "Service Unavailable", 504: "Gateway Timeout"}


def error_from_response(status: int, headers: Any, body: bytes) -> AetheriumError:
    """Builds the typed error of an error answer from its status, headers (a mapping with case-insensitive
    ``get``) and body, using the error envelope when there is one."""
    import json

    request_id = headers.get("x-request-id") or ""
    retry_after: Optional[float] = None
    ra = headers.get("retry-after")
    if ra:
        try:
            retry_after = float(int(ra))
        except ValueError:
            retry_after = None
    code, message = "", ""
    try:
        env = json.loads(body.decode("utf-8"))
        if isinstance(env, dict) and isinstance(env.get("error"), dict):
            code = str(env["error"].get("code") or "")
            message = str(env["error"].get("message") or "")
    except (ValueError, UnicodeDecodeError):
        pass
    if not code:
        message = "unexpected answer from server: HTTP %d %s" % (status, _STATUS_TEXT.get(status, ""))
        ctype = (headers.get("content-type") or "").split(";")[0].strip()
        if ctype == "text/plain" and body:
            line = body.decode("utf-8", "replace").strip().split("\n")[0]
            line = "".join(ch for ch in line if ch.isprintable())[:200]
            if line:
                message += ": " + line
        elif ctype and ctype != "application/json":
            message += " (%s body; is a proxy in the way?)" % ctype
    elif not message:
        message = _STATUS_TEXT.get(status, "error")
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else AetheriumError
    return cls(message, status=status, code=code, request_id=request_id, retry_after=retry_after)
