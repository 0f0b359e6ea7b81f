"""Aetherium's Python SDK: sync (:class:`Client`) and asyncio (:class:`AsyncClient`) clients of the REST API v1.

Standard library only. See sdk/python/README.md.
"""

from .async_client import AsyncClient, AsyncExecStream, AsyncFileDownload, AsyncRunStream, AsyncShell, AsyncVM
from .client import VM, Client, ExecStream, FileDownload, RunStream, Shell
from .errors import (AetheriumError, BadRequestError, ConflictError, NotFoundError, PayloadTooLargeError,
                     PermissionDeniedError, RateLimitedError, ServerError, ServiceUnavailableError, ShellClosedError,
                     ShellError, StreamEndedError, TaskError, TransportError, UnauthorizedError, ValidationError,
                     WaitTimeoutError)
from .models import (Agent, Chunk, Execution, ExecutionEnd, ExecuteAccepted, FileInfo, FileList, Job, JobAccepted,
                     JobCommand, Process, ProcessOutput, Run, RunEnd, RunEvent, RunList, Secret, ShellExit, Task,
                     VMData)

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient", "VM", "AsyncVM", "ExecStream", "AsyncExecStream", "RunStream", "AsyncRunStream",
    "FileDownload", "AsyncFileDownload", "Shell", "AsyncShell",
    "AetheriumError", "BadRequestError", "ConflictError", "NotFoundError", "PayloadTooLargeError",
    "PermissionDeniedError", "RateLimitedError", "ServerError", "ServiceUnavailableError", "ShellClosedError",
    "ShellError", "StreamEndedError", "TaskError", "TransportError", "UnauthorizedError", "ValidationError",
    "WaitTimeoutError",
    "Agent", "Chunk", "Execution", "ExecutionEnd", "ExecuteAccepted", "FileInfo", "FileList", "Job", "JobAccepted",
    "JobCommand", "Process", "ProcessOutput", "Run", "RunEnd", "RunEvent", "RunList", "Secret", "ShellExit", "Task",
    "VMData",
]
