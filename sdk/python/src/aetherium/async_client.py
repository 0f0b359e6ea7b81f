"""The asyncio client: a small HTTP/1.1 client and the shell's WebSocket over asyncio streams
(``asyncio.open_connection``), so requests, streams, uploads, downloads and shells are real non-blocking I/O. The
one use of a thread is reading a *local file* given to ``upload`` (``loop.run_in_executor``), since asyncio has
no non-blocking file reads."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import inspect
import json
import ssl
import time
from typing import (IO, Any, AsyncIterable, AsyncIterator, Awaitable, Callable, Dict, Iterable, List, Mapping,
                    Optional, Sequence, Tuple, Union)

from . import _sse, _ws
from ._ws import STDIN_MESSAGE
from ._wire import (IDEMPOTENCY_KEY, IO_CHUNK, MAX_ERROR_BODY, MAX_POLL, MAX_TRANSIENT_FAILURES, MIN_POLL,
                    STREAM_IDLE_TIMEOUT, USER_AGENT, BaseURL, CaseHeaders, CommandLike, Query, base_headers,
                    check_api_key, check_idempotency_key, create_vm_body, encode_json, execute_body, go_duration,
                    is_transient, new_idempotency_key, page_query, parse_head, retry_pause, retryable, seg,
                    shell_query, upload_query, vm_path, wait_chunk)
from .client import _body_size, _check_execution, _job_body, _process_body, _run_body, decode_chunk
from .errors import (AetheriumError, ConflictError, NotFoundError, ShellClosedError, ShellError, StreamEndedError,
                     TaskError, TransportError, WaitTimeoutError, error_from_response)
from .models import (Agent, Chunk, Execution, ExecutionEnd, ExecutionList, ExecuteAccepted, FileInfo, FileList,
                     Health, Job, JobAccepted, LogList, Process, ProcessOutput, Ready, Run, RunEnd, RunEvent,
                     RunList, Secret, ShellExit, Status, Task, VMData)

__all__ = ["AsyncClient", "AsyncVM", "AsyncExecStream", "AsyncRunStream", "AsyncFileDownload", "AsyncShell"]

AsyncBody = Union[bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes], AsyncIterable[bytes],
                  asyncio.StreamReader, None]
AsyncSink = Union[IO[bytes], Callable[[bytes], Any], None]


async def _sink_write(sink: AsyncSink, data: bytes) -> None:
    if sink is None:
        return
    if callable(sink) and not hasattr(sink, "write"):
        r = sink(data)
    else:
        r = sink.write(data)  # type: ignore[union-attr]
    if inspect.isawaitable(r):
        await r


async def _timed(aw: Awaitable[Any], timeout: Optional[float], what: str) -> Any:
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError as e:
        raise TransportError("%s: timeout after %gs" % (what, timeout or 0)) from e
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        raise TransportError("%s: %s" % (what, e or type(e).__name__)) from e


class _AsyncResponse:
    """An answer being read from an asyncio stream, with its body decoded (Content-Length, chunked, or up to
    the end of the connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int,
                 headers: CaseHeaders, method: str, timeout: Optional[float]) -> None:
        self.reader, self.writer = reader, writer
        self.status, self.headers = status, headers
        self.timeout = timeout
        te = (headers.get("transfer-encoding") or "").lower()
        cl = headers.get("content-length")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self._mode, self._left = "none", 0
        elif "chunked" in te:
            self._mode, self._left = "chunked", 0
        elif cl is not None:
            self._mode, self._left = "length", int(cl)
        else:
            self._mode, self._left = "eof", 0
        self._done = self._mode == "none" or (self._mode == "length" and self._left == 0)

    async def read1(self, n: int = IO_CHUNK) -> bytes:
        """Up to n bytes of the body; b"" at its end. A body cut short raises TransportError."""
        if self._done:
            return b""
        r, t = self.reader, self.timeout
        if self._mode == "length":
            data = await _timed(r.read(min(n, self._left)), t, "read the answer")
            if not data:
                raise TransportError("the answer was cut short: %d bytes missing" % self._left)
            self._left -= len(data)
            self._done = self._left == 0
            return data  # type: ignore[no-any-return]
        if self._mode == "eof":
            data = await _timed(r.read(n), t, "read the answer")
            self._done = not data
            return data  # type: ignore[no-any-return]
        if self._left == 0:  # chunked: the next chunk's size line
            line = await _timed(r.readline(), t, "read the answer")
            if not line.endswith(b"\n"):
                raise TransportError("the answer was cut short (chunked encoding)")
            try:
                self._left = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise TransportError("malformed chunk size in the answer")
            if self._left == 0:
                while True:  # trailers, up to the blank line
                    line = await _timed(r.readline(), t, "read the answer")
                    if line in (b"\r\n", b"\n", b""):
                        break
                self._done = True
                return b""
        data = await _timed(r.read(min(n, self._left)), t, "read the answer")
        if not data:
            raise TransportError("the answer was cut short (chunked encoding)")
        self._left -= len(data)
        if self._left == 0:
            await _timed(r.readexactly(2), t, "read the answer")
        return data  # type: ignore[no-any-return]

    async def read(self, limit: int = -1) -> bytes:
        parts: List[bytes] = []
        total = 0
        while limit < 0 or total < limit:
            b = await self.read1(IO_CHUNK if limit < 0 else min(IO_CHUNK, limit - total))
            if not b:
                break
            parts.append(b)
            total += len(b)
        return b"".join(parts)

    async def error(self) -> AetheriumError:
        try:
            body = await self.read(MAX_ERROR_BODY)
        except TransportError:
            body = b""
        await self.close()
        return error_from_response(self.status, self.headers, body)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass


class AsyncClient:
    """The asyncio twin of :class:`aetherium.Client`: the same methods, as coroutines, with the same
    ``timeout`` and ``retries`` rules. Streams are async iterators; VMs are ``async with`` context managers."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 30.0, retries: int = 2,
                 user_agent: str = USER_AGENT, ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self._base = BaseURL(base_url)
        self._key = check_api_key(api_key)
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self._ua = user_agent
        self._ssl = ssl_context if ssl_context is not None else (
            ssl.create_default_context() if self._base.scheme == "https" else None)

    def __repr__(self) -> str:
        return "aetherium.AsyncClient(%r)" % str(self._base)

    @property
    def base_url(self) -> str:
        return str(self._base)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Nothing to release: every request has its own connection."""

    # --- transport ---

    async def _connect(self, timeout: float) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        b = self._base
        kw: Dict[str, Any] = {"limit": 1 << 20}
        if b.scheme == "https":
            kw.update(ssl=self._ssl, server_hostname=b.host)
        return await _timed(asyncio.open_connection(b.host, b.port, **kw), timeout,  # type: ignore[no-any-return]
                            "connect to %s" % b)

    async def _open(self, method: str, target: str, headers: Dict[str, str], body: Any = None,
                    timeout: Optional[float] = None) -> _AsyncResponse:
        t = self.timeout if timeout is None else timeout
        reader, writer = await self._connect(self.timeout)
        h = base_headers(self._base, self._key, self._ua)
        h.update(headers)
        h["Connection"] = "close"
        what = "%s %s" % (method, target.split("?")[0])
        try:
            chunked = False
            if isinstance(body, str):
                body = body.encode("utf-8")
            if isinstance(body, (bytes, bytearray, memoryview)):
                h["Content-Length"] = str(len(body))
            elif body is not None and "Content-Length" not in h:
                h["Transfer-Encoding"] = "chunked"
                chunked = True
            elif body is None and method in ("POST", "PUT", "PATCH"):
                h["Content-Length"] = "0"
            head = "%s %s HTTP/1.1\r\n" % (method, target) + "".join("%s: %s\r\n" % kv for kv in h.items())
            writer.write(head.encode("latin-1") + b"\r\n")
            if isinstance(body, (bytes, bytearray, memoryview)):
                # In pieces, so that a large body neither blocks the loop nor sits whole in the transport's buffer.
                view = memoryview(body)
                for i in range(0, len(view), IO_CHUNK):
                    writer.write(view[i:i + IO_CHUNK])
                    await _timed(writer.drain(), self.timeout, what)
            elif body is not None:
                async for piece in _aiter_body(body):
                    if not piece:
                        continue
                    if chunked:
                        writer.writelines([b"%x\r\n" % len(piece), piece, b"\r\n"])
                    else:
                        writer.write(piece)
                    await _timed(writer.drain(), self.timeout, what)
                if chunked:
                    writer.write(b"0\r\n\r\n")
            await _timed(writer.drain(), self.timeout, what)
            raw = await _timed(reader.readuntil(b"\r\n\r\n"), t, what)
            status, rh = parse_head(raw[:-4])
            while status == 100:  # Continue: the real answer follows
                raw = await _timed(reader.readuntil(b"\r\n\r\n"), t, what)
                status, rh = parse_head(raw[:-4])
        except BaseException:
            writer.close()
            raise
        return _AsyncResponse(reader, writer, status, rh, method, t)

    async def _request(self, method: str, path: str, query: Optional[Query] = None, body: Any = None,
                       ok: Sequence[int] = (), wait: float = 0.0, idempotency_key: Optional[str] = None,
                       ) -> Tuple[int, CaseHeaders, Any]:
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
                return await self._once(method, target, headers, data, ok, wait)
            except AetheriumError as e:
                if attempt >= attempts or not (retryable(e) if key else is_transient(e)):
                    raise
                await asyncio.sleep(retry_pause(attempt, e))

    async def _once(self, method: str, target: str, headers: Dict[str, str], data: Optional[bytes],
                    ok: Sequence[int], wait: float) -> Tuple[int, CaseHeaders, Any]:
        r = await self._open(method, target, headers, data, self.timeout + wait)
        try:
            if not (200 <= r.status < 300 or r.status in ok):
                raise await r.error()
            raw = await r.read()
        finally:
            await r.close()
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

    async def _open_get(self, path: str, query: Query, headers: Dict[str, str]) -> _AsyncResponse:
        attempt = 0
        while True:
            attempt += 1
            try:
                r = await self._open("GET", self._base.target(path, query), headers, None, self.timeout)
                if r.status != 200:
                    raise await r.error()
                return r
            except AetheriumError as e:
                if attempt > self.retries or not is_transient(e):
                    raise
                await asyncio.sleep(retry_pause(attempt, e))

    async def _open_stream(self, path: str, query: Query, headers: Dict[str, str]) -> _AsyncResponse:
        h = {"Accept": "text/event-stream"}
        h.update(headers)
        r = await self._open_get(path, query, h)
        ctype = (r.headers.get("content-type") or "").split(";")[0].strip()
        if ctype != "text/event-stream":
            await r.close()
            raise AetheriumError("unexpected answer from server: HTTP %d (%s body; is a proxy in the way?)"
                                 % (r.status, ctype), status=r.status)
        r.timeout = max(self.timeout, STREAM_IDLE_TIMEOUT)
        return r

    def _left(self, deadline: Optional[float]) -> Optional[float]:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    # --- system and tasks ---

    async def health(self) -> Health:
        return Health.from_dict((await self._request("GET", "/health"))[2])

    async def ready(self) -> Ready:
        return Ready.from_dict((await self._request("GET", "/ready", ok=(503,)))[2])

    async def status(self) -> Status:
        return Status.from_dict((await self._request("GET", "/status"))[2])

    async def get_task(self, task_id: str) -> Task:
        return Task.from_dict((await self._request("GET", "/tasks/" + seg(task_id)))[2])

    async def wait_task(self, task_id: str, timeout: Optional[float] = None, poll: float = MAX_POLL) -> Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause, transient = min(MIN_POLL, poll), 0
        while True:
            try:
                t = await self.get_task(task_id)
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
                    raise WaitTimeoutError(task_id, "timeout after %gs" % (timeout or 0))
                pause = min(pause, left)
            await asyncio.sleep(pause)
            pause = min(pause * 2, poll)

    # --- VMs ---

    def _vm(self, d: Mapping[str, Any]) -> "AsyncVM":
        vm = AsyncVM.from_dict(dict(d))
        vm._client = self
        return vm

    async def create_vm(self, name: str, *, vcpus: int = 0, memory_mb: int = 0, image: str = "",
                        priority: str = "", metadata: Optional[Mapping[str, str]] = None,
                        network: Optional[Mapping[str, Any]] = None, tools: Optional[Sequence[str]] = None,
                        tool_versions: Optional[Mapping[str, str]] = None, lifetime_seconds: int = 0,
                        idle_timeout_seconds: int = 0, on_idle: str = "", wait: bool = True,
                        timeout: Optional[float] = None, idempotency_key: Optional[str] = None) -> "AsyncVM":
        """See :meth:`aetherium.Client.create_vm`; ``async with await client.create_vm(...) as vm`` deletes
        it on exit (or ``async with client.vm(...)``)."""
        body = create_vm_body(name, vcpus, memory_mb, image, priority, metadata, network, tools, tool_versions,
                              lifetime_seconds, idle_timeout_seconds, on_idle)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline)) if wait else 0.0
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = await self._request("POST", "/vms", q, body, wait=chunk, idempotency_key=idempotency_key)
        vm = self._vm(obj.get("vm") or {})
        if not wait:
            return vm
        task = Task.from_dict(obj["task"]) if obj.get("task") else None
        if status == 202 or task is None or not task.done:
            try:
                task = await self.wait_task(obj["task_id"], self._left(deadline))
            except WaitTimeoutError as e:
                e.vm = vm
                raise
            vm = await self.get_vm(vm.id)
        if task.status != "completed":
            raise TaskError(task.id, task.error or vm.error, vm=vm)
        return vm

    def vm(self, name: str, **kw: Any) -> "_VMContext":
        """``async with client.vm("demo") as vm:`` creates a VM (waiting until it runs) and deletes it on exit."""
        return _VMContext(self, name, kw)

    async def get_vm(self, vm_id: str) -> "AsyncVM":
        return self._vm((await self._request("GET", vm_path(vm_id)))[2])

    async def list_vms(self, status: Optional[Sequence[str]] = None, limit: int = 0,
                       cursor: str = "") -> Tuple[List["AsyncVM"], str]:
        q: Query = []
        if status:
            q.append(("status", ",".join(status)))
        q += page_query(limit, cursor)
        obj = (await self._request("GET", "/vms", q))[2]
        return [self._vm(v) for v in obj.get("vms") or []], obj.get("next_cursor") or ""

    async def iter_vms(self, status: Optional[Sequence[str]] = None, page_size: int = 0) -> AsyncIterator["AsyncVM"]:
        cursor = ""
        while True:
            vms, cursor = await self.list_vms(status, page_size, cursor)
            for v in vms:
                yield v
            if not cursor:
                return

    async def delete_vm(self, vm_id: str, wait: bool = True, timeout: Optional[float] = None,
                        idempotency_key: Optional[str] = None) -> Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline)) if wait else 0.0
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = await self._request("DELETE", vm_path(vm_id), q, wait=chunk,
                                             idempotency_key=idempotency_key)
        task = Task.from_dict(obj["task"]) if obj.get("task") else Task(id=obj.get("task_id", ""))
        if not wait:
            return task
        if status == 202 or not task.done:
            task = await self.wait_task(obj["task_id"], self._left(deadline))
        if task.status != "completed":
            raise TaskError(task.id, task.error)
        return task

    async def add_tools(self, vm_id: str, tools: Sequence[str], tool_versions: Optional[Mapping[str, str]] = None,
                        priority: str = "", timeout: Optional[float] = None) -> Task:
        body: Dict[str, Any] = {"tools": list(tools)}
        if tool_versions:
            body["tool_versions"] = dict(tool_versions)
        if priority:
            body["priority"] = priority
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline))
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = await self._request("POST", vm_path(vm_id, "/tools"), q, body, wait=chunk)
        task = Task.from_dict(obj["task"]) if obj.get("task") else None
        if status == 202 or task is None or not task.done:
            task = await self.wait_task(obj["task_id"], self._left(deadline))
        if task.status != "completed":
            raise TaskError(task.id, task.error)
        return task

    # --- executions ---

    async def execute(self, vm_id: str, command: str, args: Sequence[str] = (), *,
                      env: Optional[Mapping[str, str]] = None, secret_env: Optional[Mapping[str, str]] = None,
                      working_dir: str = "", user: str = "", timeout_seconds: int = 0, priority: str = "",
                      idempotency_key: Optional[str] = None) -> ExecuteAccepted:
        body = execute_body(command, args, env, secret_env, working_dir, user, timeout_seconds, priority)
        obj = (await self._request("POST", vm_path(vm_id, "/execute"), None, body,
                                   idempotency_key=idempotency_key))[2]
        return ExecuteAccepted.from_dict(obj)

    async def exec(self, vm_id: str, command: str, args: Sequence[str] = (), *,
                   env: Optional[Mapping[str, str]] = None, secret_env: Optional[Mapping[str, str]] = None,
                   working_dir: str = "", user: str = "", timeout_seconds: int = 0, priority: str = "",
                   timeout: Optional[float] = None, idempotency_key: Optional[str] = None) -> Execution:
        body = execute_body(command, args, env, secret_env, working_dir, user, timeout_seconds, priority)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline))
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = await self._request("POST", vm_path(vm_id, "/execute"), q, body, wait=chunk,
                                             idempotency_key=idempotency_key)
        acc = ExecuteAccepted.from_dict(obj)
        if status != 202 and acc.execution is not None:
            return _check_execution(acc, acc.execution, None)
        return await self.wait_execution(acc, self._left(deadline))

    async def wait_execution(self, acc: ExecuteAccepted, timeout: Optional[float] = None) -> Execution:
        task = await self.wait_task(acc.task_id, timeout)
        return _check_execution(acc, await self.get_execution(acc.execution_id), task)

    async def get_execution(self, execution_id: str) -> Execution:
        return Execution.from_dict((await self._request("GET", "/executions/" + seg(execution_id)))[2])

    async def list_executions(self, vm_id: str, limit: int = 0, cursor: str = "") -> ExecutionList:
        return ExecutionList.from_dict((await self._request("GET", vm_path(vm_id, "/executions"),
                                                            page_query(limit, cursor)))[2])

    async def stream_execution(self, execution_id: str, stdout_offset: int = 0,
                               stderr_offset: int = 0) -> "AsyncExecStream":
        q: Query = []
        if stdout_offset:
            q.append(("stdout_offset", str(stdout_offset)))
        if stderr_offset:
            q.append(("stderr_offset", str(stderr_offset)))
        r = await self._open_stream("/executions/" + seg(execution_id) + "/stream", q, {})
        return AsyncExecStream(r, execution_id, stdout_offset, stderr_offset)

    async def exec_stream(self, vm_id: str, command: str, args: Sequence[str] = (), **kw: Any) -> "AsyncExecStream":
        acc = await self.execute(vm_id, command, args, **kw)
        s = await self.stream_execution(acc.execution_id)
        s.task_id = acc.task_id
        return s

    # --- jobs ---

    async def create_job(self, commands: Sequence[CommandLike], *, vm_id: str = "",
                         vm: Optional[Mapping[str, Any]] = None, stop_on_error: bool = False,
                         delete_vm_after: bool = False, priority: str = "",
                         idempotency_key: Optional[str] = None) -> JobAccepted:
        body = _job_body(commands, vm_id, vm, stop_on_error, delete_vm_after, priority)
        return JobAccepted.from_dict((await self._request("POST", "/jobs", None, body,
                                                          idempotency_key=idempotency_key))[2])

    async def run_job(self, commands: Sequence[CommandLike], *, vm_id: str = "",
                      vm: Optional[Mapping[str, Any]] = None, stop_on_error: bool = False,
                      delete_vm_after: bool = False, priority: str = "", timeout: Optional[float] = None,
                      idempotency_key: Optional[str] = None) -> Job:
        body = _job_body(commands, vm_id, vm, stop_on_error, delete_vm_after, priority)
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = wait_chunk(self._left(deadline))
        q = [("wait", go_duration(chunk))] if chunk else None
        status, _, obj = await self._request("POST", "/jobs", q, body, wait=chunk, idempotency_key=idempotency_key)
        acc = JobAccepted.from_dict(obj)
        if status != 202 and acc.job is not None:
            return acc.job
        await self.wait_task(acc.task_id, self._left(deadline))
        return await self.get_job(acc.job_id)

    async def get_job(self, job_id: str) -> Job:
        return Job.from_dict((await self._request("GET", "/jobs/" + seg(job_id)))[2])

    # --- files ---

    async def upload(self, vm_id: str, path: str, data: AsyncBody, *, mode: Union[str, int, None] = None,
                     owner: str = "", mkdir_parents: bool = False, overwrite: bool = True,
                     size: Optional[int] = None) -> FileInfo:
        """Streams data (bytes, str, an async iterable of bytes, an asyncio.StreamReader, an iterable of bytes or
        a binary file, read in a thread) into a file of a running VM; sent with Content-Length when the size is
        known, chunked otherwise."""
        q = upload_query(path, mode, owner, mkdir_parents, overwrite)
        headers = {"Content-Type": "application/octet-stream", "Accept": "application/json"}
        body: Any = b"" if data is None else data
        if not isinstance(body, (bytes, bytearray, memoryview, str)):
            n = size if size is not None else (_body_size(body) if hasattr(body, "read") and
                                               not isinstance(body, asyncio.StreamReader) else None)
            if n is not None:
                headers["Content-Length"] = str(n)
        r = await self._open("PUT", self._base.target(vm_path(vm_id, "/files"), q), headers, body, self.timeout)
        try:
            if r.status != 200:
                raise await r.error()
            return FileInfo.from_dict(json.loads((await r.read()).decode("utf-8")))
        finally:
            await r.close()

    async def download(self, vm_id: str, path: str) -> "AsyncFileDownload":
        r = await self._open_get(vm_path(vm_id, "/files"), [("path", path)], {"Accept": "application/octet-stream"})
        return AsyncFileDownload(r)

    async def read_file(self, vm_id: str, path: str) -> bytes:
        async with await self.download(vm_id, path) as d:
            return await d.read()

    async def write_file(self, vm_id: str, path: str, data: AsyncBody, **kw: Any) -> FileInfo:
        return await self.upload(vm_id, path, data, **kw)

    async def stat(self, vm_id: str, path: str) -> FileInfo:
        return FileInfo.from_dict((await self._request("GET", vm_path(vm_id, "/fs/stat"), [("path", path)]))[2])

    async def list_dir(self, vm_id: str, path: str) -> FileList:
        return FileList.from_dict((await self._request("GET", vm_path(vm_id, "/fs/list"), [("path", path)]))[2])

    async def mkdir(self, vm_id: str, path: str, mode: str = "", parents: bool = False, owner: str = "") -> FileInfo:
        body: Dict[str, Any] = {"path": path}
        if mode:
            body["mode"] = mode
        if parents:
            body["parents"] = True
        if owner:
            body["owner"] = owner
        return FileInfo.from_dict((await self._request("POST", vm_path(vm_id, "/fs/mkdir"), None, body))[2])

    async def remove(self, vm_id: str, path: str, recursive: bool = False) -> None:
        await self._request("DELETE", vm_path(vm_id, "/fs"),
                            [("path", path), ("recursive", "true" if recursive else "false")])

    # --- processes ---

    async def start_process(self, vm_id: str, command: str = "", args: Sequence[str] = (), *, shell: str = "",
                            env: Optional[Mapping[str, str]] = None, working_dir: str = "", user: str = "",
                            timeout_seconds: int = 0, id: str = "") -> Process:
        body = _process_body(command, args, shell, env, working_dir, user, timeout_seconds, id)
        return Process.from_dict((await self._request("POST", vm_path(vm_id, "/processes"), None, body))[2])

    async def list_processes(self, vm_id: str) -> List[Process]:
        obj = (await self._request("GET", vm_path(vm_id, "/processes")))[2]
        return [Process.from_dict(p) for p in obj.get("processes") or []]

    async def read_process_output(self, vm_id: str, pid: str, stream: str = "stdout", offset: int = 0,
                                  max_bytes: int = 0) -> ProcessOutput:
        q: Query = [("stream", stream), ("offset", str(offset))]
        if max_bytes > 0:
            q.append(("max_bytes", str(max_bytes)))
        return ProcessOutput.from_dict((await self._request(
            "GET", vm_path(vm_id, "/processes/" + seg(pid) + "/output"), q))[2])

    async def wait_process(self, vm_id: str, pid: str, timeout: float = 0) -> Process:
        q = [("timeout", go_duration(timeout))] if timeout > 0 else None
        obj = (await self._request("POST", vm_path(vm_id, "/processes/" + seg(pid) + "/wait"), q,
                                   wait=timeout if timeout > 0 else 60.0))[2]
        return Process.from_dict(obj)

    async def signal_process(self, vm_id: str, pid: str, signal: str) -> None:
        await self._request("POST", vm_path(vm_id, "/processes/" + seg(pid) + "/signal"), None, {"signal": signal})

    async def remove_process(self, vm_id: str, pid: str) -> None:
        await self._request("DELETE", vm_path(vm_id, "/processes/" + seg(pid)))

    # --- shells ---

    async def shell(self, vm_id: str, command: Optional[Sequence[str]] = None, *, tty: bool = True, rows: int = 0,
                    cols: int = 0, term: str = "", env: Optional[Mapping[str, str]] = None, working_dir: str = "",
                    user: str = "", connect_timeout: Optional[float] = None) -> "AsyncShell":
        q = shell_query(command, tty, rows, cols, term, env, working_dir, user)
        return await AsyncShell._open(self, self._base.target(vm_path(vm_id, "/shell"), q),
                                      self.timeout if connect_timeout is None else connect_timeout)

    # --- runs ---

    async def create_run(self, repo_url: str, prompt: str, *, ref: str = "", credentials_secret: str = "",
                         agent: str = "", model: str = "", max_turns: int = 0, timeout_seconds: int = 0,
                         tools: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None,
                         secret_env: Optional[Mapping[str, str]] = None, vm: Optional[Mapping[str, Any]] = None,
                         keep_vm: bool = False, push_branch: Optional[str] = None, priority: str = "",
                         idempotency_key: Optional[str] = None) -> Run:
        body = _run_body(repo_url, prompt, ref, credentials_secret, agent, model, max_turns, timeout_seconds,
                         tools, env, secret_env, vm, keep_vm, push_branch, priority)
        obj = (await self._request("POST", "/runs", None, body, idempotency_key=idempotency_key))[2]
        return Run.from_dict(obj.get("run") or {})

    async def get_run(self, run_id: str) -> Run:
        return Run.from_dict((await self._request("GET", "/runs/" + seg(run_id)))[2])

    async def list_runs(self, status: Optional[Sequence[str]] = None, repo: str = "", vm_id: str = "",
                        limit: int = 0, cursor: str = "") -> RunList:
        q: Query = [("status", s) for s in status or []]
        if repo:
            q.append(("repo", repo))
        if vm_id:
            q.append(("vm_id", vm_id))
        q += page_query(limit, cursor)
        return RunList.from_dict((await self._request("GET", "/runs", q))[2])

    async def cancel_run(self, run_id: str) -> Run:
        return Run.from_dict((await self._request("POST", "/runs/" + seg(run_id) + "/cancel", None, {}))[2])

    async def run_diff(self, run_id: str) -> bytes:
        r = await self._open_get("/runs/" + seg(run_id) + "/diff", [], {"Accept": "text/x-diff"})
        try:
            return await r.read()
        finally:
            await r.close()

    async def stream_run(self, run_id: str, after: int = 0) -> "AsyncRunStream":
        h = {"Last-Event-ID": str(after)} if after > 0 else {}
        return AsyncRunStream(await self._open_stream("/runs/" + seg(run_id) + "/stream", [], h), run_id, after)

    async def list_agents(self) -> List[Agent]:
        return [Agent.from_dict(a) for a in (await self._request("GET", "/agents"))[2].get("agents") or []]

    # --- secrets ---

    async def put_secret(self, name: str, value: str) -> Tuple[Secret, bool]:
        status, _, obj = await self._request("PUT", "/secrets/" + seg(name), None, {"value": value})
        return Secret.from_dict(obj), status == 201

    async def list_secrets(self) -> List[Secret]:
        return [Secret.from_dict(s) for s in (await self._request("GET", "/secrets"))[2].get("secrets") or []]

    async def delete_secret(self, name: str) -> None:
        await self._request("DELETE", "/secrets/" + seg(name))

    async def logs(self, *, vm_id: str = "", execution_id: str = "", run_id: str = "", since: str = "",
                   until: str = "", limit: int = 0, q: str = "") -> LogList:
        query = [(k, v) for k, v in (("vm_id", vm_id), ("execution_id", execution_id), ("run_id", run_id),
                                     ("since", since), ("until", until), ("q", q)) if v]
        if limit:
            query.append(("limit", str(limit)))
        return LogList.from_dict((await self._request("GET", "/logs", query))[2])


async def _aiter_body(body: Any) -> AsyncIterator[bytes]:
    if isinstance(body, asyncio.StreamReader):
        while True:
            b = await body.read(IO_CHUNK)
            if not b:
                return
            yield b
    elif hasattr(body, "__aiter__"):
        async for b in body:
            yield bytes(b)
    elif hasattr(body, "read"):
        loop = asyncio.get_running_loop()
        while True:
            b = await loop.run_in_executor(None, body.read, IO_CHUNK)
            if not b:
                return
            yield b
    else:
        for b in body:
            yield bytes(b)


class _VMContext:
    def __init__(self, client: AsyncClient, name: str, kw: Dict[str, Any]) -> None:
        self._c, self._name, self._kw = client, name, kw
        self._vm: Optional[AsyncVM] = None

    async def __aenter__(self) -> "AsyncVM":
        self._vm = await self._c.create_vm(self._name, **self._kw)
        return self._vm

    async def __aexit__(self, *exc: Any) -> None:
        if self._vm is not None:
            await self._vm.delete()


class AsyncExecStream:
    """An execution's output: ``async for chunk in stream``; ``end`` is set after the last chunk."""

    def __init__(self, resp: _AsyncResponse, execution_id: str, stdout_offset: int = 0, stderr_offset: int = 0) -> None:
        self._r = resp
        self.execution_id = execution_id
        self.task_id = ""
        self.end: Optional[ExecutionEnd] = None
        self.stdout_offset, self.stderr_offset = stdout_offset, stderr_offset
        self._parser = _sse.SSEParser()

    async def __aenter__(self) -> "AsyncExecStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._r.close()

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        try:
            while self.end is None:
                data = await self._r.read1(IO_CHUNK)
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
            await self.aclose()
            raise StreamEndedError("the stream of execution %s broke: %s" % (self.execution_id, e)) from e
        except BaseException as e:
            # A stream that failed (not one merely abandoned by its loop, GeneratorExit) is done with.
            if not isinstance(e, GeneratorExit):
                await self.aclose()
            raise
        finally:
            if self.end is not None:
                await self.aclose()

    async def wait(self, stdout: AsyncSink = None, stderr: AsyncSink = None) -> ExecutionEnd:
        async for ch in self:
            await _sink_write(stdout if ch.stream == "stdout" else stderr, ch.data)
        assert self.end is not None
        return self.end


class AsyncRunStream:
    """A run's transcript: ``async for event in stream``; the end event comes last and sets ``end``."""

    def __init__(self, resp: _AsyncResponse, run_id: str, after: int = 0) -> None:
        self._r = resp
        self.run_id = run_id
        self.last_seq = after
        self.end: Optional[RunEnd] = None
        self._parser = _sse.SSEParser()

    async def __aenter__(self) -> "AsyncRunStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._r.close()

    async def __aiter__(self) -> AsyncIterator[RunEvent]:
        try:
            while self.end is None:
                data = await self._r.read1(IO_CHUNK)
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
            await self.aclose()
            raise StreamEndedError("the stream of run %s broke: %s" % (self.run_id, e)) from e
        except BaseException as e:
            # A stream that failed (not one merely abandoned by its loop, GeneratorExit) is done with.
            if not isinstance(e, GeneratorExit):
                await self.aclose()
            raise
        finally:
            if self.end is not None:
                await self.aclose()


class AsyncFileDownload:
    """A file being downloaded: ``await read(n)``, or ``async for chunk in download``. ``size``, ``mode``,
    ``uid``, ``gid`` and ``mtime`` describe it. A transfer cut short raises TransportError."""

    def __init__(self, resp: _AsyncResponse) -> None:
        self._r = resp
        h = resp.headers
        self.size = int(h.get("content-length") or -1)
        self.mode = h.get("x-aetherium-file-mode") or ""
        self.uid = int(h.get("x-aetherium-file-uid") or 0)
        self.gid = int(h.get("x-aetherium-file-gid") or 0)
        lm = h.get("last-modified")
        self.mtime = None
        if lm:
            try:
                self.mtime = email.utils.parsedate_to_datetime(lm)
            except (TypeError, ValueError):
                self.mtime = None
        self.received = 0

    async def __aenter__(self) -> "AsyncFileDownload":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = []
            while True:
                b = await self.read(IO_CHUNK)
                if not b:
                    return b"".join(parts)
                parts.append(b)
        data = await self._r.read1(n)
        self.received += len(data)
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            b = await self.read(IO_CHUNK)
            if not b:
                return
            yield b

    async def aclose(self) -> None:
        await self._r.close()


class AsyncShell:
    """The asyncio twin of :class:`aetherium.Shell`: ``await write``, ``await recv``, ``await expect``,
    ``await wait``; ``async with`` closes it (killing a command that still runs)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: _ws.Protocol) -> None:
        self._reader, self._writer, self._proto = reader, writer, proto
        self._lock = asyncio.Lock()
        self.id = ""
        self.exit: Optional[ShellExit] = None
        self.pongs = 0
        self._pending: List[_ws.Event] = []
        self._closed = False

    @classmethod
    async def _open(cls, client: AsyncClient, target: str, timeout: float) -> "AsyncShell":
        reader, writer = await client._connect(timeout)
        key = _ws.new_key()
        h = base_headers(client._base, client._key, client._ua)
        h.update({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
                  "Sec-WebSocket-Version": "13"})
        req = "GET %s HTTP/1.1\r\n" % target + "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        try:
            writer.write(req.encode("latin-1"))
            await _timed(writer.drain(), timeout, "open shell")
            raw = await _timed(reader.readuntil(b"\r\n\r\n"), timeout, "open shell")
            status, headers = parse_head(raw[:-4])
            if status != 101:
                resp = _AsyncResponse(reader, writer, status, headers, "GET", timeout)
                raise await resp.error()
            try:
                _ws.check_handshake(status, headers, key)
            except _ws.ProtocolError as e:
                raise TransportError("open shell: %s" % e) from e
        except BaseException:
            writer.close()
            raise
        sh = cls(reader, writer, _ws.Protocol())
        ev = await sh._next_event(timeout)
        if ev is None or ev[0] != "text":
            await sh.close()
            raise ShellClosedError("open shell: expected a control message first")
        m = json.loads(ev[1])  # type: ignore[arg-type]
        if m.get("type") == "error":
            await sh.close()
            raise ShellError(m.get("message", ""), code=m.get("code", ""))
        if m.get("type") != "started":
            await sh.close()
            raise ShellClosedError("open shell: unexpected first message %r" % m.get("type"))
        sh.id = m.get("id", "")
        return sh

    async def __aenter__(self) -> "AsyncShell":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _send(self, frame: bytes) -> None:
        if not frame:
            return
        async with self._lock:
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (OSError, RuntimeError) as e:
                raise ShellClosedError("shell: send: %s" % e) from e

    async def _next_event(self, timeout: Optional[float]) -> Optional[_ws.Event]:
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
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("shell: no output within %gs" % (timeout or 0))
            try:
                data = await asyncio.wait_for(self._reader.read(IO_CHUNK), left)
            except asyncio.TimeoutError:
                continue
            except OSError as e:
                raise ShellClosedError("shell: receive: %s" % e) from e
            if not data:
                self._closed = True
                return None
            try:
                self._pending = self._proto.receive(data)
            except _ws.ProtocolError as e:
                await self._send(self._proto.send_close(e.close_code, str(e)[:100]))
                await self.close()
                raise ShellClosedError("shell: %s" % e) from e
            await self._send(self._proto.take_outgoing())

    async def recv(self, timeout: Optional[float] = None) -> Optional[Tuple[str, bytes]]:
        while True:
            if self.exit is not None:
                return None
            ev = await self._next_event(timeout)
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
                await self._finish()
                return None
            if t == "error":
                await self.close()
                raise ShellError(m.get("message") or "", code=m.get("code") or "")

    async def _finish(self) -> None:
        try:
            await self._send(self._proto.send_close())
            end = time.monotonic() + 2.0
            while not self._proto.close_received and time.monotonic() < end:
                if await self._next_event(max(0.01, end - time.monotonic())) is None:
                    break
        except (TimeoutError, AetheriumError):
            pass
        await self.close()

    async def expect(self, pattern: Any, timeout: float = 10.0) -> bytes:
        """Reads output until pattern (bytes, str or a compiled bytes regex) appears; returns all read."""
        from .client import _matches
        got = b""
        deadline = time.monotonic() + timeout
        while not _matches(pattern, got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("shell: %r not seen within %gs; got %r" % (pattern, timeout, got[-200:]))
            out = await self.recv(left)
            if out is None:
                raise ShellClosedError("shell ended before %r was seen; got %r" % (pattern, got[-200:]))
            got += out[1]
        return got

    async def wait(self, stdout: AsyncSink = None, stderr: AsyncSink = None,
                   timeout: Optional[float] = None) -> ShellExit:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            out = await self.recv(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if out is None:
                assert self.exit is not None
                return self.exit
            await _sink_write(stdout if out[0] == "stdout" else stderr, out[1])

    async def write(self, data: Union[bytes, str]) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        # The server reads messages of at most 1 MiB: larger input goes as several messages.
        for i in range(0, len(data), STDIN_MESSAGE):
            await self._send(self._proto.send_binary(data[i:i + STDIN_MESSAGE]))

    async def _control(self, m: Dict[str, Any]) -> None:
        await self._send(self._proto.send_text(json.dumps(m)))

    async def resize(self, rows: int, cols: int) -> None:
        await self._control({"type": "resize", "rows": rows, "cols": cols})

    async def signal(self, sig: str) -> None:
        await self._control({"type": "signal", "signal": sig})

    async def close_stdin(self) -> None:
        await self._control({"type": "eof"})

    async def ping(self, payload: bytes = b"ping") -> None:
        await self._send(self._proto.send_ping(payload))

    async def close(self) -> None:
        self._closed = True
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            pass


@dataclasses.dataclass
class AsyncVM(VMData):
    """A VM bound to an :class:`AsyncClient`; ``async with`` deletes it (and waits for that) on exit."""

    _client: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("this VM is not bound to a client")
        return self._client  # type: ignore[no-any-return]

    async def __aenter__(self) -> "AsyncVM":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.delete()
        except NotFoundError:
            pass  # gone already
        except ConflictError as e:
            if e.code != "conflict":  # "conflict": deleted already (or being deleted), which is what exit wants
                raise

    async def refresh(self) -> "AsyncVM":
        fresh = await self.client.get_vm(self.id)
        for f in dataclasses.fields(VMData):
            setattr(self, f.name, getattr(fresh, f.name))
        return self

    async def delete(self, wait: bool = True, timeout: Optional[float] = None) -> Task:
        return await self.client.delete_vm(self.id, wait=wait, timeout=timeout)

    async def wait_until_running(self, timeout: Optional[float] = None) -> "AsyncVM":
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = MIN_POLL
        while (await self.refresh()).status in ("pending", "creating"):
            if deadline is not None and time.monotonic() + pause > deadline:
                raise WaitTimeoutError("", "vm %s still %s" % (self.id, self.status), vm=self)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_POLL)
        if self.status != "running":
            raise TaskError("", "vm %s is %s: %s" % (self.id, self.status, self.error), vm=self)
        return self

    async def exec(self, command: str, args: Sequence[str] = (), **kw: Any) -> Execution:
        return await self.client.exec(self.id, command, args, **kw)

    async def execute(self, command: str, args: Sequence[str] = (), **kw: Any) -> ExecuteAccepted:
        return await self.client.execute(self.id, command, args, **kw)

    async def exec_stream(self, command: str, args: Sequence[str] = (), **kw: Any) -> AsyncExecStream:
        return await self.client.exec_stream(self.id, command, args, **kw)

    async def upload(self, path: str, data: AsyncBody, **kw: Any) -> FileInfo:
        return await self.client.upload(self.id, path, data, **kw)

    async def download(self, path: str) -> AsyncFileDownload:
        return await self.client.download(self.id, path)

    async def read_file(self, path: str) -> bytes:
        return await self.client.read_file(self.id, path)

    async def write_file(self, path: str, data: AsyncBody, **kw: Any) -> FileInfo:
        return await self.client.upload(self.id, path, data, **kw)

    async def stat(self, path: str) -> FileInfo:
        return await self.client.stat(self.id, path)

    async def list_dir(self, path: str) -> FileList:
        return await self.client.list_dir(self.id, path)

    async def mkdir(self, path: str, **kw: Any) -> FileInfo:
        return await self.client.mkdir(self.id, path, **kw)

    async def remove(self, path: str, recursive: bool = False) -> None:
        await self.client.remove(self.id, path, recursive)

    async def start_process(self, command: str = "", args: Sequence[str] = (), **kw: Any) -> Process:
        return await self.client.start_process(self.id, command, args, **kw)

    async def list_processes(self) -> List[Process]:
        return await self.client.list_processes(self.id)

    async def read_process_output(self, pid: str, stream: str = "stdout", offset: int = 0,
                                  max_bytes: int = 0) -> ProcessOutput:
        return await self.client.read_process_output(self.id, pid, stream, offset, max_bytes)

    async def wait_process(self, pid: str, timeout: float = 0) -> Process:
        return await self.client.wait_process(self.id, pid, timeout)

    async def signal_process(self, pid: str, signal: str) -> None:
        await self.client.signal_process(self.id, pid, signal)

    async def remove_process(self, pid: str) -> None:
        await self.client.remove_process(self.id, pid)

    async def shell(self, command: Optional[Sequence[str]] = None, **kw: Any) -> AsyncShell:
        return await self.client.shell(self.id, command, **kw)

    async def add_tools(self, tools: Sequence[str], **kw: Any) -> Task:
        return await self.client.add_tools(self.id, tools, **kw)

    async def list_executions(self, limit: int = 0, cursor: str = "") -> ExecutionList:
        return await self.client.list_executions(self.id, limit, cursor)
