"""The synchronous client: http.client for requests and streams, a socket for the shell's WebSocket."""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import os
import re
import socket
import ssl
import threading
import time
from typing import (IO, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)

from . import _sse, _ws
from ._ws import STDIN_MESSAGE
from ._wire import (IDEMPOTENCY_KEY, IO_CHUNK, MAX_ERROR_BODY, MAX_POLL, MAX_TRANSIENT_FAILURES, MIN_POLL,
                    STREAM_IDLE_TIMEOUT, USER_AGENT, BaseURL, CaseHeaders, CommandLike, Query, base_headers,
                    check_api_key, check_idempotency_key, create_vm_body, encode_json, execute_body, go_duration,
                    is_transient, job_command, new_idempotency_key, page_query, parse_head, retry_pause,
                    retryable, seg, shell_query, upload_query, vm_path, wait_chunk)
from .errors import (AetheriumError, ConflictError, NotFoundError, ShellClosedError, ShellError, StreamEndedError,
                     TaskError, TransportError, WaitTimeoutError, error_from_response)
from .models import (Agent, Chunk, Execution, ExecutionEnd, ExecutionList, ExecuteAccepted, FileInfo, FileList,
                     Health, Job, JobAccepted, LogList, Process, ProcessOutput, Ready, Run, RunEnd, RunEvent,
                     RunList, Secret, ShellExit, Status, Task, VMData)

__all__ = ["Client", "VM", "ExecStream", "RunStream", "FileDownload", "Shell"]

Body = Union[bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes], None]
Sink = Union[IO[bytes], Callable[[bytes], Any], None]


def _sink_write(sink: Sink, data: bytes) -> None:
    if sink is None:
        return
    if callable(sink) and not hasattr(sink, "write"):
        sink(data)
    else:
        sink.write(data)  # type: ignore[union-attr]


def _body_size(body: Any) -> Optional[int]:
    """The length of a file-like body from its position to its end, when it can be known."""
    try:
        fd = body.fileno()
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000):  # not a regular file
            return None
        return st.st_size - body.tell()
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    try:
        pos = body.tell()
        end = body.seek(0, io.SEEK_END)
        body.seek(pos)
        return end - pos
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


class _Response:
    """An open answer: status, headers, and the http.client response to read the body from."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = CaseHeaders(resp.getheaders())

    def read(self, n: int = -1) -> bytes:
        try:
            return self.resp.read(n) if n >= 0 else self.resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise TransportError("reading the answer: %s" % (e or type(e).__name__)) from e

    def read1(self, n: int) -> bytes:
        try:
            return self.resp.read1(n)
        except socket.timeout as e:
            raise TransportError("the stream was silent for too long (no data nor heartbeat)") from e
        except (OSError, http.client.HTTPException) as e:
            raise TransportError("reading the answer: %s" % (e or type(e).__name__)) from e

    def settimeout(self, t: Optional[float]) -> None:
        if self.conn.sock is not None:
            self.conn.sock.settimeout(t)

    def error(self) -> AetheriumError:
        try:
            body = self.resp.read(MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            body = b""
        self.close()
        return error_from_response(self.status, self.headers, body)

    def close(self) -> None:
        try:
            self.resp.close()
        finally:
            self.conn.close()


class Client:
    """A client of Aetherium's REST API v1.

    ``timeout`` (seconds) bounds connecting and every read of a request; calls that ask the server to wait
    (``?wait=``) add that wait to it, and streams wait up to 45 s between reads (the server sends a heartbeat
    every 15 s). Waiting calls (``create_vm``, ``exec``...) take their own total ``timeout``.

    ``retries``: mutating calls carry an ``Idempotency-Key`` of their own (or the caller's ``idempotency_key``)
    and are sent again up to ``retries`` times after a transient failure (no answer, 429, 502, 503, 504, 409
    idempotency_in_progress), so a retried create makes one VM and a retried execute runs once. GETs are retried
    the same way. Uploads and streams are sent once. Safe for use from several threads.
    """

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 30.0, retries: int = 2,
                 user_agent: str = USER_AGENT, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self._base = BaseURL(base_url)
        self._key = check_api_key(api_key)
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._ua = user_agent
        self._ssl = ssl_context if ssl_context is not None else (
            ssl.create_default_context() if self._base.scheme == "https" else None)

    def __repr__(self) -> str:  # never the key
        return "aetherium.Client(%r)" % str(self._base)

    @property
    def base_url(self) -> str:
        return str(self._base)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: every request has its own connection."""

    # --- transport ---

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._base.scheme == "https":
            return http.client.HTTPSConnection(self._base.host, self._base.port, timeout=timeout,
                                               context=self._ssl, blocksize=IO_CHUNK)
        return http.client.HTTPConnection(self._base.host, self._base.port, timeout=timeout, blocksize=IO_CHUNK)

    def _open(self, method: str, target: str, headers: Dict[str, str], body: Any = None,
              timeout: Optional[float] = None) -> _Response:
        t = self.timeout if timeout is None else timeout
        conn = self._connect(t)
        h = base_headers(self._base, self._key, self._ua)
        h.update(headers)
        h.pop("Host", None)  # http.client sends it
        try:
            conn.request(method, target, body=body, headers=h)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise TransportError("%s %s: %s" % (method, target.split("?")[0], e or type(e).__name__)) from e
        return _Response(conn, resp)

    def _request(self, method: str, path: str, query: Optional[Query] = None, body: Any = None,
                 ok: Sequence[int] = (), wait: float = 0.0, idempotency_key: Optional[str] = None,
                 ) -> Tuple[int, CaseHeaders, Any]:
        """Sends a JSON request (with retries) and decodes a 2xx answer (or one of ok)."""
        mutating = method in ("POST", "PUT", "PATCH", "DELETE")
        key = check_idempotency_key(idempotency_key) if idempotency_key else None
        if mutating and self.retries > 0 and key is None:
            key = new_idempotency_key()
        attempts = 1 + (self.retries if (not mutating or key) else 0)
        data = encode_json(body) if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if mutating and key:
            headers[IDEMPOTENCY_KEY] = key
        target = self._base.target(path, query)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(method, target, headers, data, ok, wait)
            except AetheriumError as e:
                if attempt >= attempts or not (retryable(e) if key else is_transient(e)):
                    raise
                time.sleep(retry_pause(attempt, e))

    def _once(self, method: str, target: str, headers: Dict[str, str], data: Optional[bytes],
              ok: Sequence[int], wait: float) -> Tuple[int, CaseHeaders, Any]:
        r = self._open(method, target, headers, data, self.timeout + wait)
        try:
            if not (200 <= r.status < 300 or r.status in ok):
                raise r.error()
            raw = r.read()
        finally:
            r.close()
        if not raw:
            return r.status, r.headers, None
        try:
            return r.status, r.headers, json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            ctype = r.headers.get("content-type") or ""
            if "json" not in ctype:
                raise AetheriumError("unexpected answer from server: HTTP %d (%s body; is a proxy in the way?)"
                                     % (r.status, ctype or "no content type"), status=r.status)
            raise TransportError("decode the answer of %s: %s" % (target.split("?")[0], e)) from e

    # --- system ---

    def health(self) -> Health:
        return Health.from_dict(self._request("GET", "/health")[2])

    def ready(self) -> Ready:
        """GET /ready; a 503 that carries the checks is a result (status not_ready), not an error."""
        return Ready.from_dict(self._request("GET", "/ready", ok=(503,))[2])

    def status(self) -> Status:
        return Status.from_dict(self._request("GET", "/status")[2])

    # --- tasks ---

    def get_task(self, task_id: str) -> Task:
        return Task.from_dict(self._request("GET", "/tasks/" + seg(task_id))[2])

    def wait_task(self, task_id: str, timeout: Optional[float] = None, poll: float = MAX_POLL) -> Task:
        """Polls a task until it is done (completed or failed); pauses start at 50 ms and double up to poll. A
        failed task is returned, not raised. Raises WaitTimeoutError when timeout (seconds) passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, transient = min(MIN_POLL, poll), 0
        while True:
            try:
                t = self.get_task(task_id)
                transient = 0
                if t.done:
                    return t
            except AetheriumError as e:
                if not is_transient(e) or transient >= MAX_TRANSIENT_FAILURES:
                    raise
                transient += 1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError(task_id, "timeout after %gs" % timeout)  # type: ignore[str-format]
                pause = min(pause, left)
            time.sleep(pause)
            pause = min(pause * 2, poll)

    def _left(self, deadline: Optional[float]) -> Optional[float]:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    # --- VMs ---

    def create_vm(self, name: str, *, vcpus: int = 0, memory_mb: int = 0, image: str = "", priority: str = "",
                  metadata: Optional[Mapping[str, str]] = None, network: Optional[Mapping[str, Any]] = None,
                  tools: Optional[Sequence[str]] = None, tool_versions: Optional[Mapping[str, str]] = None,
                  lifetime_seconds: int = 0, idle_timeout_seconds: int = 0, on_idle: str = "",
                  wait: bool = True, timeout: Optional[float] = None,
                  idempotency_key: Optional[str] = None) -> "VM":
        """Creates a VM. With wait (the default) returns it running, however long that takes (or up to timeout
        seconds: then WaitTimeoutError, whose ``vm`` has the id); a failed creation raises TaskError with the
        failed VM as ``vm``. Without wait returns the pending VM at once. Use it as a context manager to delete
        it on exit: ``with client.create_vm("demo") as vm: ...``. lifetime_seconds (the API's timeout_seconds: deleted that
        long after creation), idle_timeout_seconds and on_idle ("pause" or "delete") give it a lifetime."""
        body = create_vm_body(name, vcpus, memory_mb, image, priority, metadata, network, tools, tool_versions,
                              lifetime_seconds, idle_timeout_seconds, on_idle)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline)) if wait else 0.0
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = self._request("POST", "/vms", q, body, wait=chunk, idempotency_key=idempotency_key)
        vm = self._vm(obj.get("vm") or {})
        if not wait:
            return vm
        task = Task.from_dict(obj["task"]) if obj.get("task") else None
        if status == 202 or task is None or not task.done:
            try:
                task = self.wait_task(obj["task_id"], self._left(deadline))
            except WaitTimeoutError as e:
                e.vm = vm
                raise
            vm = self.get_vm(vm.id)
        if task.status != "completed":
            raise TaskError(task.id, task.error or vm.error, vm=vm)
        return vm

    def _vm(self, d: Mapping[str, Any]) -> "VM":
        vm = VM.from_dict(dict(d))
        vm._client = self
        return vm

    def get_vm(self, vm_id: str) -> "VM":
        return self._vm(self._request("GET", vm_path(vm_id))[2])

    def list_vms(self, status: Optional[Sequence[str]] = None, limit: int = 0,
                 cursor: str = "") -> Tuple[List["VM"], str]:
        """One page of VMs, newest first, and the cursor of the next page ("" at the end)."""
        q: Query = []
        if status:
            q.append(("status", ",".join(status)))
        q += page_query(limit, cursor)
        obj = self._request("GET", "/vms", q)[2]
        return [self._vm(v) for v in obj.get("vms") or []], obj.get("next_cursor") or ""

    def iter_vms(self, status: Optional[Sequence[str]] = None, page_size: int = 0) -> Iterator["VM"]:
        """Every VM, following the pages."""
        cursor = ""
        while True:
            vms, cursor = self.list_vms(status, page_size, cursor)
            yield from vms
            if not cursor:
                return

    def delete_vm(self, vm_id: str, wait: bool = True, timeout: Optional[float] = None,
                  idempotency_key: Optional[str] = None) -> Task:
        """Deletes a VM; with wait returns the finished task (TaskError when it failed), else the pending one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline)) if wait else 0.0
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = self._request("DELETE", vm_path(vm_id), q, wait=chunk, idempotency_key=idempotency_key)
        task = Task.from_dict(obj["task"]) if obj.get("task") else Task(id=obj.get("task_id", ""))
        if not wait:
            return task
        if status == 202 or not task.done:
            task = self.wait_task(obj["task_id"], self._left(deadline))
        if task.status != "completed":
            raise TaskError(task.id, task.error)
        return task

    def add_tools(self, vm_id: str, tools: Sequence[str], tool_versions: Optional[Mapping[str, str]] = None,
                  priority: str = "", timeout: Optional[float] = None) -> Task:
        """Installs tools into a running VM and waits for the task (its result lists the tools)."""
        body: Dict[str, Any] = {"tools": list(tools)}
        if tool_versions:
            body["tool_versions"] = dict(tool_versions)
        if priority:
            body["priority"] = priority
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline))
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = self._request("POST", vm_path(vm_id, "/tools"), q, body, wait=chunk)
        task = Task.from_dict(obj["task"]) if obj.get("task") else None
        if status == 202 or task is None or not task.done:
            task = self.wait_task(obj["task_id"], self._left(deadline))
        if task.status != "completed":
            raise TaskError(task.id, task.error)
        return task

    # --- executions ---

    def execute(self, vm_id: str, command: str, args: Sequence[str] = (), *, env: Optional[Mapping[str, str]] = None,
                secret_env: Optional[Mapping[str, str]] = None, working_dir: str = "", user: str = "",
                timeout_seconds: int = 0, priority: str = "", idempotency_key: Optional[str] = None,
                ) -> ExecuteAccepted:
        """Starts a command and returns at once (202): follow it with stream_execution or wait_execution."""
        body = execute_body(command, args, env, secret_env, working_dir, user, timeout_seconds, priority)
        obj = self._request("POST", vm_path(vm_id, "/execute"), None, body, idempotency_key=idempotency_key)[2]
        return ExecuteAccepted.from_dict(obj)

    def exec(self, vm_id: str, command: str, args: Sequence[str] = (), *, env: Optional[Mapping[str, str]] = None,
             secret_env: Optional[Mapping[str, str]] = None, working_dir: str = "", user: str = "",
             timeout_seconds: int = 0, priority: str = "", timeout: Optional[float] = None,
             idempotency_key: Optional[str] = None) -> Execution:
        """Runs a command and returns its execution (buffered output, up to 1 MiB per stream). Its exit code,
        whatever it is, is a result; a command that could not run raises TaskError (``execution`` set)."""
        body = execute_body(command, args, env, secret_env, working_dir, user, timeout_seconds, priority)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline))
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = self._request("POST", vm_path(vm_id, "/execute"), q, body, wait=chunk,
                                       idempotency_key=idempotency_key)
        acc = ExecuteAccepted.from_dict(obj)
        if status != 202 and acc.execution is not None:
            return _check_execution(acc, acc.execution, None)
        return self.wait_execution(acc, self._left(deadline))

    def wait_execution(self, acc: ExecuteAccepted, timeout: Optional[float] = None) -> Execution:
        task = self.wait_task(acc.task_id, timeout)
        return _check_execution(acc, self.get_execution(acc.execution_id), task)

    def get_execution(self, execution_id: str) -> Execution:
        return Execution.from_dict(self._request("GET", "/executions/" + seg(execution_id))[2])

    def list_executions(self, vm_id: str, limit: int = 0, cursor: str = "") -> ExecutionList:
        obj = self._request("GET", vm_path(vm_id, "/executions"), page_query(limit, cursor))[2]
        return ExecutionList.from_dict(obj)

    def stream_execution(self, execution_id: str, stdout_offset: int = 0, stderr_offset: int = 0) -> "ExecStream":
        """Follows an execution's output (server-sent events) from the offsets: iterate the stream for its
        chunks; ``end`` is set after the last. Works before, while and after the command runs."""
        q: Query = []
        if stdout_offset:
            q.append(("stdout_offset", str(stdout_offset)))
        if stderr_offset:
            q.append(("stderr_offset", str(stderr_offset)))
        r = self._open_stream("/executions/" + seg(execution_id) + "/stream", q, {})
        return ExecStream(r, execution_id, stdout_offset, stderr_offset)

    def exec_stream(self, vm_id: str, command: str, args: Sequence[str] = (), *,
                    env: Optional[Mapping[str, str]] = None, secret_env: Optional[Mapping[str, str]] = None,
                    working_dir: str = "", user: str = "", timeout_seconds: int = 0, priority: str = "",
                    idempotency_key: Optional[str] = None) -> "ExecStream":
        """Starts a command and streams its output as it is written."""
        acc = self.execute(vm_id, command, args, env=env, secret_env=secret_env, working_dir=working_dir,
                           user=user, timeout_seconds=timeout_seconds, priority=priority,
                           idempotency_key=idempotency_key)
        s = self.stream_execution(acc.execution_id)
        s.task_id = acc.task_id
        return s

    def _open_stream(self, path: str, query: Query, headers: Dict[str, str]) -> _Response:
        h = {"Accept": "text/event-stream"}
        h.update(headers)
        attempt = 0
        while True:
            attempt += 1
            try:
                r = self._open("GET", self._base.target(path, query), h, None, self.timeout)
                if r.status != 200:
                    raise r.error()
                break
            except AetheriumError as e:
                if attempt > self.retries or not is_transient(e):
                    raise
                time.sleep(retry_pause(attempt, e))
        ctype = (r.headers.get("content-type") or "").split(";")[0].strip()
        if ctype != "text/event-stream":
            r.close()
            raise AetheriumError("unexpected answer from server: HTTP %d (%s body; is a proxy in the way?)"
                                 % (r.status, ctype), status=r.status)
        r.settimeout(max(self.timeout, STREAM_IDLE_TIMEOUT))
        return r

    # --- jobs ---

    def create_job(self, commands: Sequence[CommandLike], *, vm_id: str = "", vm: Optional[Mapping[str, Any]] = None,
                   stop_on_error: bool = False, delete_vm_after: bool = False, priority: str = "",
                   idempotency_key: Optional[str] = None) -> JobAccepted:
        """Starts a job (commands run in order in one VM: vm_id, or a new VM described by vm) at once (202)."""
        body = _job_body(commands, vm_id, vm, stop_on_error, delete_vm_after, priority)
        return JobAccepted.from_dict(self._request("POST", "/jobs", None, body, idempotency_key=idempotency_key)[2])

    def run_job(self, commands: Sequence[CommandLike], *, vm_id: str = "", vm: Optional[Mapping[str, Any]] = None,
                stop_on_error: bool = False, delete_vm_after: bool = False, priority: str = "",
                timeout: Optional[float] = None, idempotency_key: Optional[str] = None) -> Job:
        """Runs a job and returns it ended, with its executions. A job that ended failed is a result."""
        body = _job_body(commands, vm_id, vm, stop_on_error, delete_vm_after, priority)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline))
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = self._request("POST", "/jobs", q, body, wait=chunk, idempotency_key=idempotency_key)
        acc = JobAccepted.from_dict(obj)
        if status != 202 and acc.job is not None:
            return acc.job
        self.wait_task(acc.task_id, self._left(deadline))
        return self.get_job(acc.job_id)

    def get_job(self, job_id: str) -> Job:
        return Job.from_dict(self._request("GET", "/jobs/" + seg(job_id))[2])

    # --- files ---

    def upload(self, vm_id: str, path: str, data: Body, *, mode: Union[str, int, None] = None, owner: str = "",
               mkdir_parents: bool = False, overwrite: bool = True, size: Optional[int] = None) -> FileInfo:
        """Streams data (bytes, str, a binary file, or an iterable of bytes) into a file of a running VM. The file
        appears at path only once complete. A file of known size is sent with Content-Length, anything else
        chunked; either way in 64 KiB pieces, never held whole. Sent once: an upload is safe to send again."""
        q = upload_query(path, mode, owner, mkdir_parents, overwrite)
        headers = {"Content-Type": "application/octet-stream", "Accept": "application/json"}
        body: Any = data
        if isinstance(data, str):
            body = data.encode("utf-8")
        if body is None:
            body = b""
        if isinstance(body, (bytes, bytearray, memoryview)):
            headers["Content-Length"] = str(len(body))
        else:
            n = size if size is not None else (_body_size(body) if hasattr(body, "read") else None)
            if n is not None:
                headers["Content-Length"] = str(n)
            elif hasattr(body, "read"):
                body = _iter_file(body)  # chunked
        r = self._open("PUT", self._base.target(vm_path(vm_id, "/files"), q), headers, body, self.timeout)
        try:
            if r.status != 200:
                raise r.error()
            return FileInfo.from_dict(json.loads(r.read().decode("utf-8")))
        finally:
            r.close()

    def download(self, vm_id: str, path: str) -> "FileDownload":
        """Opens a file of a running VM for reading; its bytes stream as they are read. Use it as a context
        manager or close it. A transfer cut short raises TransportError, never looks like a short file."""
        target = self._base.target(vm_path(vm_id, "/files"), [("path", path)])
        attempt = 0
        while True:
            attempt += 1
            try:
                r = self._open("GET", target, {"Accept": "application/octet-stream"}, None, self.timeout)
                if r.status != 200:
                    raise r.error()
                return FileDownload(r)
            except AetheriumError as e:
                if attempt > self.retries or not is_transient(e):
                    raise
                time.sleep(retry_pause(attempt, e))

    def read_file(self, vm_id: str, path: str) -> bytes:
        with self.download(vm_id, path) as d:
            return d.read()

    def write_file(self, vm_id: str, path: str, data: Body, **kw: Any) -> FileInfo:
        return self.upload(vm_id, path, data, **kw)

    def stat(self, vm_id: str, path: str) -> FileInfo:
        return FileInfo.from_dict(self._request("GET", vm_path(vm_id, "/fs/stat"), [("path", path)])[2])

    def list_dir(self, vm_id: str, path: str) -> FileList:
        return FileList.from_dict(self._request("GET", vm_path(vm_id, "/fs/list"), [("path", path)])[2])

    def mkdir(self, vm_id: str, path: str, mode: str = "", parents: bool = False, owner: str = "") -> FileInfo:
        body: Dict[str, Any] = {"path": path}
        if mode:
            body["mode"] = mode
        if parents:
            body["parents"] = True
        if owner:
            body["owner"] = owner
        return FileInfo.from_dict(self._request("POST", vm_path(vm_id, "/fs/mkdir"), None, body)[2])

    def remove(self, vm_id: str, path: str, recursive: bool = False) -> None:
        q = [("path", path), ("recursive", "true" if recursive else "false")]
        self._request("DELETE", vm_path(vm_id, "/fs"), q)

    # --- processes ---

    def start_process(self, vm_id: str, command: str = "", args: Sequence[str] = (), *, shell: str = "",
                      env: Optional[Mapping[str, str]] = None, working_dir: str = "", user: str = "",
                      timeout_seconds: int = 0, id: str = "") -> Process:
        """Starts a background process (command with args, or shell: a line for /bin/sh -c)."""
        body = _process_body(command, args, shell, env, working_dir, user, timeout_seconds, id)
        return Process.from_dict(self._request("POST", vm_path(vm_id, "/processes"), None, body)[2])

    def list_processes(self, vm_id: str) -> List[Process]:
        obj = self._request("GET", vm_path(vm_id, "/processes"))[2]
        return [Process.from_dict(p) for p in obj.get("processes") or []]

    def read_process_output(self, vm_id: str, pid: str, stream: str = "stdout", offset: int = 0,
                            max_bytes: int = 0) -> ProcessOutput:
        q: Query = [("stream", stream), ("offset", str(offset))]
        if max_bytes > 0:
            q.append(("max_bytes", str(max_bytes)))
        return ProcessOutput.from_dict(self._request("GET", vm_path(vm_id, "/processes/" + seg(pid) + "/output"), q)[2])

    def wait_process(self, vm_id: str, pid: str, timeout: float = 0) -> Process:
        """Waits until the process exits or timeout seconds pass (0: the server's default, 60 s)."""
        q = [("timeout", go_duration(timeout))] if timeout > 0 else None
        obj = self._request("POST", vm_path(vm_id, "/processes/" + seg(pid) + "/wait"), q,
                            wait=timeout if timeout > 0 else 60.0)[2]
        return Process.from_dict(obj)

    def signal_process(self, vm_id: str, pid: str, signal: str) -> None:
        """Sends a signal ("TERM", "KILL", a number) to the process's group."""
        self._request("POST", vm_path(vm_id, "/processes/" + seg(pid) + "/signal"), None, {"signal": signal})

    def remove_process(self, vm_id: str, pid: str) -> None:
        self._request("DELETE", vm_path(vm_id, "/processes/" + seg(pid)))

    # --- shells ---

    def shell(self, vm_id: str, command: Optional[Sequence[str]] = None, *, tty: bool = True, rows: int = 0,
              cols: int = 0, term: str = "", env: Optional[Mapping[str, str]] = None, working_dir: str = "",
              user: str = "", connect_timeout: Optional[float] = None) -> "Shell":
        """Opens an interactive command (default a login shell on a terminal) over a WebSocket. Without tty,
        stdout and stderr stay apart and stdin can be closed (close_stdin): exec with stdin and signals."""
        q = shell_query(command, tty, rows, cols, term, env, working_dir, user)
        return Shell._open(self, self._base.target(vm_path(vm_id, "/shell"), q),
                           self.timeout if connect_timeout is None else connect_timeout)

    # --- runs ---

    def create_run(self, repo_url: str, prompt: str, *, ref: str = "", credentials_secret: str = "",
                   agent: str = "", model: str = "", max_turns: int = 0, timeout_seconds: int = 0,
                   tools: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
                   secret_env: Optional[Mapping[str, str]] = None, vm: Optional[Mapping[str, Any]] = None,
                   keep_vm: bool = False, push_branch: Optional[str] = None, priority: str = "",
                   idempotency_key: Optional[str] = None) -> Run:
        """Starts an agent run on a repository (202); follow it with stream_run."""
        body = _run_body(repo_url, prompt, ref, credentials_secret, agent, model, max_turns, timeout_seconds,
                         tools, env, secret_env, vm, keep_vm, push_branch, priority)
        obj = self._request("POST", "/runs", None, body, idempotency_key=idempotency_key)[2]
        return Run.from_dict(obj.get("run") or {})

    def get_run(self, run_id: str) -> Run:
        return Run.from_dict(self._request("GET", "/runs/" + seg(run_id))[2])

    def list_runs(self, status: Optional[Sequence[str]] = None, repo: str = "", vm_id: str = "", limit: int = 0,
                  cursor: str = "") -> RunList:
        q: Query = [("status", s) for s in status or []]
        if repo:
            q.append(("repo", repo))
        if vm_id:
            q.append(("vm_id", vm_id))
        q += page_query(limit, cursor)
        return RunList.from_dict(self._request("GET", "/runs", q)[2])

    def cancel_run(self, run_id: str) -> Run:
        return Run.from_dict(self._request("POST", "/runs/" + seg(run_id) + "/cancel", None, {})[2])

    def run_diff(self, run_id: str) -> bytes:
        """The run's patch against the commit it started from (empty before the agent has finished)."""
        r = self._open("GET", self._base.target("/runs/" + seg(run_id) + "/diff"), {"Accept": "text/x-diff"})
        try:
            if r.status != 200:
                raise r.error()
            return r.read()
        finally:
            r.close()

    def stream_run(self, run_id: str, after: int = 0) -> "RunStream":
        """Follows a run's transcript from after its event ``after`` (Last-Event-ID): iterate it for RunEvents;
        the end event comes last and sets ``end``."""
        h = {"Last-Event-ID": str(after)} if after > 0 else {}
        return RunStream(self._open_stream("/runs/" + seg(run_id) + "/stream", [], h), run_id, after)

    def list_agents(self) -> List[Agent]:
        return [Agent.from_dict(a) for a in self._request("GET", "/agents")[2].get("agents") or []]

    # --- secrets ---

    def put_secret(self, name: str, value: str) -> Tuple[Secret, bool]:
        """Creates or replaces a secret; returns its description (never the value) and whether it is new."""
        status, _, obj = self._request("PUT", "/secrets/" + seg(name), None, {"value": value})
        return Secret.from_dict(obj), status == 201

    def list_secrets(self) -> List[Secret]:
        return [Secret.from_dict(s) for s in self._request("GET", "/secrets")[2].get("secrets") or []]

    def delete_secret(self, name: str) -> None:
        self._request("DELETE", "/secrets/" + seg(name))

    # --- logs ---

    def logs(self, *, vm_id: str = "", execution_id: str = "", run_id: str = "", since: str = "", until: str = "",
             limit: int = 0, q: str = "") -> LogList:
        query = [(k, v) for k, v in (("vm_id", vm_id), ("execution_id", execution_id), ("run_id", run_id),
                                     ("since", since), ("until", until), ("q", q)) if v]
        if limit:
            query.append(("limit", str(limit)))
        return LogList.from_dict(self._request("GET", "/logs", query)[2])


def _check_execution(acc: ExecuteAccepted, ex: Execution, task: Optional[Task]) -> Execution:
    if ex.status == "failed" or (ex.exit_code is None and task is not None and task.status == "failed"):
        raise TaskError(acc.task_id, ex.error or (task.error if task else ""), execution=ex)
    return ex


def _job_body(commands: Sequence[CommandLike], vm_id: str, vm: Optional[Mapping[str, Any]], stop_on_error: bool,
              delete_vm_after: bool, priority: str) -> Dict[str, Any]:
    if isinstance(commands, str):
        commands = [commands]
    body: Dict[str, Any] = {"commands": [job_command(c) for c in commands]}
    if vm_id:
        body["vm_id"] = vm_id
    if vm is not None:
        body["vm"] = dict(vm)
    if stop_on_error:
        body["stop_on_error"] = True
    if delete_vm_after:
        body["delete_vm_after"] = True
    if priority:
        body["priority"] = priority
    return body


def _process_body(command: str, args: Sequence[str], shell: str, env: Optional[Mapping[str, str]], working_dir: str,
                  user: str, timeout_seconds: int, id: str) -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    for k, v in (("command", command), ("shell", shell), ("working_dir", working_dir), ("user", user),
                 ("id", id)):
        if v:
            body[k] = v
    if args:
        body["args"] = list(args)
    if env:
        body["env"] = dict(env)
    if timeout_seconds:
        body["timeout_seconds"] = timeout_seconds
    return body


def _run_body(repo_url: str, prompt: str, ref: str, credentials_secret: str, agent: str, model: str, max_turns: int,
              timeout_seconds: int, tools: Optional[Sequence[str]], env: Optional[Mapping[str, str]],
              secret_env: Optional[Mapping[str, str]], vm: Optional[Mapping[str, Any]], keep_vm: bool,
              push_branch: Optional[str], priority: str) -> Dict[str, Any]:
    repo: Dict[str, Any] = {"url": repo_url}
    if ref:
        repo["ref"] = ref
    if credentials_secret:
        repo["credentials_secret"] = credentials_secret
    body: Dict[str, Any] = {"repo": repo, "prompt": prompt}
    for k, v in (("agent", agent), ("model", model), ("max_turns", max_turns),
                 ("timeout_seconds", timeout_seconds), ("priority", priority)):
        if v:
            body[k] = v
    if tools:
        body["tools"] = list(tools)
    if env:
        body["env"] = dict(env)
    if secret_env:
        body["secret_env"] = dict(secret_env)
    if vm is not None:
        body["vm"] = dict(vm)
    if keep_vm:
        body["keep_vm"] = True
    if push_branch is not None:
        body["push"] = {"branch": push_branch} if push_branch else {}
    return body


def _matches(pattern: Any, got: bytes) -> bool:
    if isinstance(pattern, str):
        return pattern.encode("utf-8") in got
    if isinstance(pattern, (bytes, bytearray)):
        return bytes(pattern) in got
    return pattern.search(got) is not None


def _iter_file(f: Any) -> Iterator[bytes]:
    while True:
        b = f.read(IO_CHUNK)
        if not b:
            return
        yield b


def decode_chunk(event: str, data: str) -> Chunk:
    oc = json.loads(data)
    if oc.get("data_base64"):
        payload = base64.b64decode(oc["data_base64"])
    else:
        payload = (oc.get("data") or "").encode("utf-8")
    return Chunk(stream=event, offset=int(oc.get("offset") or 0), data=payload)


class ExecStream:
    """An execution's output as it is written (GET /executions/{id}/stream). Iterate it for :class:`Chunk`
    objects; after the last, ``end`` says how the execution ended. ``stdout_offset``/``stderr_offset`` are where
    each stream got to, to resume with ``client.stream_execution(id, stdout_offset=..., stderr_offset=...)``
    after a StreamEndedError."""

    def __init__(self, resp: _Response, execution_id: str, stdout_offset: int = 0, stderr_offset: int = 0) -> None:
        self._r = resp
        self.execution_id = execution_id
        self.task_id = ""
        self.end: Optional[ExecutionEnd] = None
        self.stdout_offset = stdout_offset
        self.stderr_offset = stderr_offset
        self._parser = _sse.SSEParser()

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._r.close()

    def __iter__(self) -> Iterator[Chunk]:
        try:
            while self.end is None:
                data = self._r.read1(IO_CHUNK)
                if not data:
                    raise StreamEndedError("the stream of execution %s closed before its end" % self.execution_id)
                for event, payload, _ in self._parser.feed(data):
                    if event in ("stdout", "stderr"):
                        ch = decode_chunk(event, payload)
                        setattr(self, event + "_offset", ch.offset + len(ch.data))
                        yield ch
                    elif event == "end":
                        self.end = ExecutionEnd.from_dict(json.loads(payload))
                        break
        except TransportError as e:
            self.close()
            raise StreamEndedError("the stream of execution %s broke: %s" % (self.execution_id, e)) from e
        except BaseException as e:
            # A stream that failed (not one merely abandoned by its loop, GeneratorExit) is done with.
            if not isinstance(e, GeneratorExit):
                self.close()
            raise
        finally:
            if self.end is not None:
                self.close()

    def wait(self, stdout: Sink = None, stderr: Sink = None) -> ExecutionEnd:
        """Copies the output to stdout and stderr (binary files or callables; None discards) until the end."""
        for ch in self:
            _sink_write(stdout if ch.stream == "stdout" else stderr, ch.data)
        assert self.end is not None
        return self.end


class RunStream:
    """A run's transcript (GET /runs/{id}/stream): iterate it for :class:`RunEvent`; the end event comes last
    and sets ``end``. ``last_seq`` resumes a broken stream (``client.stream_run(id, after=last_seq)``)."""

    def __init__(self, resp: _Response, run_id: str, after: int = 0) -> None:
        self._r = resp
        self.run_id = run_id
        self.last_seq = after
        self.end: Optional[RunEnd] = None
        self._parser = _sse.SSEParser()

    def __enter__(self) -> "RunStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._r.close()

    def __iter__(self) -> Iterator[RunEvent]:
        try:
            while self.end is None:
                data = self._r.read1(IO_CHUNK)
                if not data:
                    raise StreamEndedError("the stream of run %s closed before its end" % self.run_id)
                for _, payload, _ in self._parser.feed(data):
                    ev = RunEvent.from_dict(json.loads(payload))
                    self.last_seq = ev.seq
                    yield ev
                    if ev.type == "end":
                        self.end = RunEnd.from_dict(ev.data if isinstance(ev.data, dict) else {})
                        break
        except TransportError as e:
            self.close()
            raise StreamEndedError("the stream of run %s broke: %s" % (self.run_id, e)) from e
        except BaseException as e:
            # A stream that failed (not one merely abandoned by its loop, GeneratorExit) is done with.
            if not isinstance(e, GeneratorExit):
                self.close()
            raise
        finally:
            if self.end is not None:
                self.close()


class FileDownload(io.RawIOBase):
    """A file being downloaded from a VM: a readable binary stream (``read``, iteration in chunks, ``shutil
    .copyfileobj``). ``size`` is its length, ``mode`` its permission bits ("0644"), ``uid``/``gid`` its owner,
    ``mtime`` its modification time. Reading past a transfer that was cut short raises TransportError."""

    def __init__(self, resp: _Response) -> None:
        super().__init__()
        self._r = resp
        h = resp.headers
        self.size = int(h.get("content-length") or -1)
        self.mode = h.get("x-aetherium-file-mode") or ""
        self.uid = int(h.get("x-aetherium-file-uid") or 0)
        self.gid = int(h.get("x-aetherium-file-gid") or 0)
        lm = h.get("last-modified")
        self.mtime = None
        if lm:
            import email.utils
            try:
                self.mtime = email.utils.parsedate_to_datetime(lm)
            except (TypeError, ValueError):
                self.mtime = None
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._r.read1(len(b))
        if not data:
            if self.size >= 0 and self.received < self.size:
                raise TransportError("download cut short: %d of %d bytes" % (self.received, self.size))
            return 0
        n = len(data)
        b[:n] = data
        self.received += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while True:
                chunk = self.read(IO_CHUNK)
                if not chunk:
                    return b"".join(parts)
                parts.append(chunk)
        return super().read(size) or b""

    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        while True:
            chunk = self.read(IO_CHUNK)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        if not self.closed:
            self._r.close()
        super().close()


class Shell:
    """An interactive command in a VM over a WebSocket (GET /vms/{id}/shell). ``write`` sends stdin,
    ``recv``/``expect``/``wait`` read the output; ``resize``, ``signal``, ``close_stdin`` and ``ping`` may be
    called from another thread while one reads. Closing the session kills the command."""

    def __init__(self, sock: socket.socket, proto: _ws.Protocol, started_id: str) -> None:
        self._sock = sock
        self._proto = proto
        self._send_lock = threading.Lock()
        self.id = started_id
        self.exit: Optional[ShellExit] = None
        self.pongs = 0
        self._pending: List[_ws.Event] = []
        self._closed = False

    @classmethod
    def _open(cls, client: Client, target: str, timeout: float) -> "Shell":
        base = client._base
        try:
            sock = socket.create_connection((base.host, base.port), timeout=timeout)
            if base.scheme == "https":
                assert client._ssl is not None
                sock = client._ssl.wrap_socket(sock, server_hostname=base.host)
        except OSError as e:
            raise TransportError("open shell: %s" % e) from e
        key = _ws.new_key()
        h = base_headers(base, client._key, client._ua)
        h.update({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
                  "Sec-WebSocket-Version": "13"})
        req = "GET %s HTTP/1.1\r\n" % target + "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        try:
            sock.sendall(req.encode("latin-1"))
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(IO_CHUNK)
                if not chunk:
                    raise TransportError("open shell: the server closed the connection during the handshake")
                buf += chunk
                if len(buf) > 1 << 20:
                    raise TransportError("open shell: handshake answer too large")
            head, _, rest = buf.partition(b"\r\n\r\n")
            status, headers = parse_head(head)
            if status != 101:
                n = int(headers.get("content-length") or 0)
                while len(rest) < min(n, MAX_ERROR_BODY):
                    chunk = sock.recv(IO_CHUNK)
                    if not chunk:
                        break
                    rest += chunk
                raise error_from_response(status, headers, rest[:n])
            _ws.check_handshake(status, headers, key)
        except _ws.ProtocolError as e:
            sock.close()
            raise TransportError("open shell: %s" % e) from e
        except socket.timeout as e:
            sock.close()
            raise TransportError("open shell: timeout") from e
        except (OSError, AetheriumError):
            sock.close()
            raise
        proto = _ws.Protocol()
        sh = cls(sock, proto, "")
        sh._pending = proto.receive(rest) if rest else []
        # The server's first message says the command runs, and as which process.
        ev = sh._next_event(timeout)
        if ev is None or ev[0] != "text":
            sh.close()
            raise ShellClosedError("open shell: expected a control message first")
        m = json.loads(ev[1])  # type: ignore[arg-type]
        if m.get("type") == "error":
            sh.close()
            raise ShellError(m.get("message", ""), code=m.get("code", ""))
        if m.get("type") != "started":
            sh.close()
            raise ShellClosedError("open shell: unexpected first message %r" % m.get("type"))
        sh.id = m.get("id", "")
        sock.settimeout(None)
        return sh

    def __enter__(self) -> "Shell":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, frame: bytes) -> None:
        if not frame:
            return
        with self._send_lock:
            try:
                self._sock.sendall(frame)
            except OSError as e:
                raise ShellClosedError("shell: send: %s" % e) from e

    def _next_event(self, timeout: Optional[float]) -> Optional[_ws.Event]:
        """The next data or close event (pings are answered here), or None at the end of the connection."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._pending:
                ev = self._pending.pop(0)
                if ev[0] == "ping":
                    continue
                if ev[0] == "pong":
                    self.pongs += 1
                    continue
                return ev
            if self._closed:
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("shell: no output within %gs" % timeout)  # type: ignore[str-format]
                self._sock.settimeout(left)
            else:
                self._sock.settimeout(None)
            try:
                data = self._sock.recv(IO_CHUNK)
            except socket.timeout:
                continue
            except OSError as e:
                raise ShellClosedError("shell: receive: %s" % e) from e
            if not data:
                self._closed = True
                return None
            try:
                self._pending = self._proto.receive(data)
            except _ws.ProtocolError as e:
                self._send(self._proto.send_close(e.close_code, str(e)[:100]))
                self.close()
                raise ShellClosedError("shell: %s" % e) from e
            self._send(self._proto.take_outgoing())

    def recv(self, timeout: Optional[float] = None) -> Optional[Tuple[str, bytes]]:
        """The next output, as ("stdout", bytes) or ("stderr", bytes), or None once the command has ended (then
        ``exit`` says how). Raises ShellError when the server reports a failure, ShellClosedError when the
        connection ends first, TimeoutError when nothing comes within timeout seconds."""
        while True:
            if self.exit is not None:
                return None
            ev = self._next_event(timeout)
            if ev is None:
                raise ShellClosedError("the shell's connection closed before the command ended")
            kind, payload = ev
            if kind == "binary":
                return ("stdout", payload)  # type: ignore[return-value]
            if kind == "close":
                raise ShellClosedError("the server closed the shell before the command ended: %r" % (payload,))
            try:
                m = json.loads(payload)  # type: ignore[arg-type]
            except ValueError:
                continue
            t = m.get("type")
            if t == "stderr":
                return ("stderr", base64.b64decode(m.get("data") or ""))
            if t == "exit":
                self.exit = ShellExit(exit_code=int(m.get("exit_code") or 0), signal=m.get("signal") or "",
                                      timed_out=bool(m.get("timed_out")), duration_ms=m.get("duration_ms"))
                self._finish()
                return None
            if t == "error":
                self.close()
                raise ShellError(m.get("message") or "", code=m.get("code") or "")
            # A message of a newer server: nothing to do with it.

    def _finish(self) -> None:
        # The closing handshake: send ours, and read until the server's close (briefly) before closing.
        try:
            self._send(self._proto.send_close())
            end = time.monotonic() + 2.0
            while not self._proto.close_received and time.monotonic() < end:
                ev = self._next_event(max(0.01, end - time.monotonic()))
                if ev is None:
                    break
        except (TimeoutError, AetheriumError):
            pass
        self.close()

    def expect(self, pattern: Union[bytes, str, "re.Pattern[bytes]"], timeout: float = 10.0) -> bytes:
        """Reads output until pattern (bytes, str, or a compiled bytes regex) appears in it and returns
        everything read; TimeoutError otherwise. A terminal echoes input: match the output, not the command."""
        got = b""
        deadline = time.monotonic() + timeout
        while not _matches(pattern, got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("shell: %r not seen within %gs; got %r" % (pattern, timeout, got[-200:]))
            out = self.recv(left)
            if out is None:
                raise ShellClosedError("shell ended before %r was seen; got %r" % (pattern, got[-200:]))
            got += out[1]
        return got

    def wait(self, stdout: Sink = None, stderr: Sink = None, timeout: Optional[float] = None) -> ShellExit:
        """Copies the output to stdout and stderr (binary files or callables) until the command ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            out = self.recv(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if out is None:
                assert self.exit is not None
                return self.exit
            _sink_write(stdout if out[0] == "stdout" else stderr, out[1])

    def write(self, data: Union[bytes, str]) -> None:
        """Sends data to the command's stdin."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        # The server reads messages of at most 1 MiB: larger input goes as several messages.
        for i in range(0, len(data), STDIN_MESSAGE):
            self._send(self._proto.send_binary(data[i:i + STDIN_MESSAGE]))

    def _control(self, m: Dict[str, Any]) -> None:
        self._send(self._proto.send_text(json.dumps(m)))

    def resize(self, rows: int, cols: int) -> None:
        self._control({"type": "resize", "rows": rows, "cols": cols})

    def signal(self, sig: str) -> None:
        """Sends a signal ("INT", "TERM", a number) to the command's process group."""
        self._control({"type": "signal", "signal": sig})

    def close_stdin(self) -> None:
        """Ends stdin (without a terminal; a terminal's EOF is ^D, written as a byte)."""
        self._control({"type": "eof"})

    def ping(self, payload: bytes = b"ping") -> None:
        """Sends a WebSocket ping; the server's pong is counted in ``pongs`` as output is read."""
        self._send(self._proto.send_ping(payload))

    def close(self) -> None:
        """Ends the session; a command still running is killed."""
        if self._closed and self._sock.fileno() < 0:
            return
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass


@dataclasses.dataclass
class VM(VMData):
    """A VM bound to its client: the data of :class:`aetherium.models.VMData` plus methods. As a context
    manager it deletes the VM (and waits for that) on exit."""

    _client: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("this VM is not bound to a client")
        return self._client  # type: ignore[no-any-return]

    def __enter__(self) -> "VM":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.delete()
        except NotFoundError:
            pass  # gone already
        except ConflictError as e:
            if e.code != "conflict":  # "conflict": deleted already (or being deleted), which is what exit wants
                raise

    def refresh(self) -> "VM":
        """Reads the VM again and updates this object."""
        fresh = self.client.get_vm(self.id)
        for f in dataclasses.fields(VMData):
            setattr(self, f.name, getattr(fresh, f.name))
        return self

    def delete(self, wait: bool = True, timeout: Optional[float] = None) -> Task:
        return self.client.delete_vm(self.id, wait=wait, timeout=timeout)

    def wait_until_running(self, timeout: Optional[float] = None) -> "VM":
        """Polls a VM made with ``wait=False`` until it is no longer pending or creating, and updates this
        object. Raises TaskError when it failed, WaitTimeoutError when timeout passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = MIN_POLL
        while self.refresh().status in ("pending", "creating"):
            if deadline is not None and time.monotonic() + pause > deadline:
                raise WaitTimeoutError("", "vm %s still %s" % (self.id, self.status), vm=self)
            time.sleep(pause)
            pause = min(pause * 2, MAX_POLL)
        if self.status != "running":
            raise TaskError("", "vm %s is %s: %s" % (self.id, self.status, self.error), vm=self)
        return self

    def exec(self, command: str, args: Sequence[str] = (), **kw: Any) -> Execution:
        return self.client.exec(self.id, command, args, **kw)

    def execute(self, command: str, args: Sequence[str] = (), **kw: Any) -> ExecuteAccepted:
        return self.client.execute(self.id, command, args, **kw)

    def exec_stream(self, command: str, args: Sequence[str] = (), **kw: Any) -> ExecStream:
        return self.client.exec_stream(self.id, command, args, **kw)

    def upload(self, path: str, data: Body, **kw: Any) -> FileInfo:
        return self.client.upload(self.id, path, data, **kw)

    def download(self, path: str) -> FileDownload:
        return self.client.download(self.id, path)

    def read_file(self, path: str) -> bytes:
        return self.client.read_file(self.id, path)

    def write_file(self, path: str, data: Body, **kw: Any) -> FileInfo:
        return self.client.upload(self.id, path, data, **kw)

    def stat(self, path: str) -> FileInfo:
        return self.client.stat(self.id, path)

    def list_dir(self, path: str) -> FileList:
        return self.client.list_dir(self.id, path)

    def mkdir(self, path: str, **kw: Any) -> FileInfo:
        return self.client.mkdir(self.id, path, **kw)

    def remove(self, path: str, recursive: bool = False) -> None:
        self.client.remove(self.id, path, recursive)

    def start_process(self, command: str = "", args: Sequence[str] = (), **kw: Any) -> Process:
        return self.client.start_process(self.id, command, args, **kw)

    def list_processes(self) -> List[Process]:
        return self.client.list_processes(self.id)

    def read_process_output(self, pid: str, stream: str = "stdout", offset: int = 0,
                            max_bytes: int = 0) -> ProcessOutput:
        return self.client.read_process_output(self.id, pid, stream, offset, max_bytes)

    def wait_process(self, pid: str, timeout: float = 0) -> Process:
        return self.client.wait_process(self.id, pid, timeout)

    def signal_process(self, pid: str, signal: str) -> None:
        self.client.signal_process(self.id, pid, signal)

    def remove_process(self, pid: str) -> None:
        self.client.remove_process(self.id, pid)

    def shell(self, command: Optional[Sequence[str]] = None, **kw: Any) -> Shell:
        return self.client.shell(self.id, command, **kw)

    def add_tools(self, tools: Sequence[str], **kw: Any) -> Task:
        return self.client.add_tools(self.id, tools, **kw)

    def list_executions(self, limit: int = 0, cursor: str = "") -> ExecutionList:
        return self.client.list_executions(self.id, limit, cursor)

