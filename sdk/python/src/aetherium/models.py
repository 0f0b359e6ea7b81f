"""Wire types of Aetherium's REST API v1, as plain dataclasses.

Each class mirrors a type of the Go SDK (pkg/client/types.go), field for field, in snake_case as the JSON has it.
``from_dict`` ignores fields it does not know (a newer server may send more) and keeps the whole object in ``raw``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import re
import typing
from typing import Any, Dict, List, Optional, Type, TypeVar

__all__ = [
    "VM", "VMNetwork", "EgressPolicy", "Task", "Execution", "ExecutionList", "VMList", "ExecuteAccepted",
    "TaskAccepted", "Job", "JobCommand", "JobAccepted", "FileInfo", "FileList", "Process", "ProcessOutput",
    "Chunk", "ExecutionEnd", "ShellExit", "Secret", "Run", "RunRepo", "RunPush", "RunUsage", "RunResult",
    "DiffStat", "RunCommit", "RunAccepted", "RunList", "RunEvent", "RunEnd", "Agent", "Health", "Ready", "Status",
    "WorkersStatus", "LogEntry", "LogList", "parse_time",
]

T = TypeVar("T", bound="Model")

_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$")


def parse_time(value: Optional[str]) -> Optional[_dt.datetime]:
    """Parses an RFC 3339 time as Go writes it (nanoseconds, ``Z``), which ``datetime.fromisoformat`` of Python
    3.9 and 3.10 refuses. Returns an aware datetime (UTC when the text has no offset), or None for None/""."""
    if not value:
        return None
    m = _TIME_RE.match(value)
    if not m:
        raise ValueError("not an RFC 3339 time: %r" % value)
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    tz = _dt.timezone.utc
    if sign:
        off = _dt.timedelta(hours=int(oh), minutes=int(om))
        tz = _dt.timezone(off if sign == "+" else -off)
    return _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=tz)


_hints_cache: Dict[type, Dict[str, Any]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    h = _hints_cache.get(cls)
    if h is None:
        h = typing.get_type_hints(cls)
        _hints_cache[cls] = h
    return h


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value) if len(args) == 1 else value
    if origin in (list, List):
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(item, v) for v in value] if isinstance(value, list) else value
    if origin in (dict, Dict):
        args = typing.get_args(tp)
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(item, v) for k, v in value.items()} if isinstance(value, dict) else value
    if tp is _dt.datetime:
        return parse_time(value) if isinstance(value, str) else value
    if isinstance(tp, type) and issubclass(tp, Model):
        return tp.from_dict(value) if isinstance(value, dict) else value
    if tp is float and isinstance(value, int):
        return float(value)
    return value


class Model:
    """Base of the wire types: ``from_dict`` builds one from decoded JSON."""

    raw: Dict[str, Any]

    @classmethod
    def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
        kwargs: Dict[str, Any] = {}
        hints = _hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "raw" or f.name.startswith("_"):
                continue
            key = f.metadata.get("json", f.name)
            if key in data:
                kwargs[f.name] = _convert(hints[f.name], data[key])
        obj = cls(**kwargs)
        obj.raw = data
        return obj


def _raw() -> Any:
    return dataclasses.field(default_factory=dict, repr=False, compare=False)


@dataclasses.dataclass
class EgressPolicy(Model):
    allow_cidrs: List[str] = dataclasses.field(default_factory=list)
    deny_cidrs: List[str] = dataclasses.field(default_factory=list)
    allow_domains: List[str] = dataclasses.field(default_factory=list)
    deny_domains: List[str] = dataclasses.field(default_factory=list)
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class VMNetwork(Model):
    egress: Optional[EgressPolicy] = None
    ip: str = ""
    mac: str = ""
    gateway: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class VMData(Model):
    """A VM as the API shows it (GET /vms/{id}). The clients return it as a :class:`aetherium.VM` or
    :class:`aetherium.AsyncVM`, which add methods bound to the client."""

    id: str = ""
    name: str = ""
    status: str = ""
    vcpus: int = 0
    memory_mb: int = 0
    image: str = ""
    worker_id: str = ""
    error: str = ""
    metadata: Dict[str, str] = dataclasses.field(default_factory=dict)
    network: Optional[VMNetwork] = None
    tools: List[str] = dataclasses.field(default_factory=list)
    installed_tools: Dict[str, str] = dataclasses.field(default_factory=dict)
    created_at: Optional[_dt.datetime] = None
    updated_at: Optional[_dt.datetime] = None
    started_at: Optional[_dt.datetime] = None
    stopped_at: Optional[_dt.datetime] = None
    # Lifetime (docs/api.md, "VM lifetimes"): the hard timeout and when it falls, the idle timeout and what it does.
    timeout_seconds: int = 0
    expires_at: Optional[_dt.datetime] = None
    idle_timeout_seconds: int = 0
    on_idle: str = ""
    last_activity_at: Optional[_dt.datetime] = None
    raw: Dict[str, Any] = _raw()


VM = VMData  # the data type's name in this module; aetherium.VM is the bound subclass


@dataclasses.dataclass
class Task(Model):
    id: str = ""
    type: str = ""
    status: str = ""  # pending, processing, completed, failed
    priority: str = ""
    vm_id: str = ""
    job_id: str = ""
    worker_id: str = ""
    result: Any = None
    error: str = ""
    attempts: int = 0
    max_retries: int = 0
    created_at: Optional[_dt.datetime] = None
    updated_at: Optional[_dt.datetime] = None
    scheduled_at: Optional[_dt.datetime] = None
    started_at: Optional[_dt.datetime] = None
    completed_at: Optional[_dt.datetime] = None
    raw: Dict[str, Any] = _raw()

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


@dataclasses.dataclass
class Execution(Model):
    id: str = ""
    vm_id: str = ""
    job_id: str = ""
    task_id: str = ""
    status: str = ""
    command: str = ""
    args: List[str] = dataclasses.field(default_factory=list)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    secret_env: Dict[str, str] = dataclasses.field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    exit_code: Optional[int] = None
    peak_memory_kb: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    error: str = ""
    worker_id: str = ""
    created_at: Optional[_dt.datetime] = None
    started_at: Optional[_dt.datetime] = None
    completed_at: Optional[_dt.datetime] = None
    duration_ms: Optional[int] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class ExecutionList(Model):
    executions: List[Execution] = dataclasses.field(default_factory=list)
    next_cursor: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class VMList(Model):
    vms: List[VMData] = dataclasses.field(default_factory=list)
    next_cursor: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class ExecuteAccepted(Model):
    task_id: str = ""
    execution_id: str = ""
    execution: Optional[Execution] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class TaskAccepted(Model):
    task_id: str = ""
    task: Optional[Task] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class JobCommand(Model):
    command: str = ""
    args: List[str] = dataclasses.field(default_factory=list)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    secret_env: Dict[str, str] = dataclasses.field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    timeout_seconds: int = 0
    raw: Dict[str, Any] = _raw()

    def to_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"command": self.command}
        for k in ("args", "env", "secret_env", "working_dir", "user", "timeout_seconds"):
            v = getattr(self, k)
            if v:
                d[k] = v
        return d


@dataclasses.dataclass
class Job(Model):
    id: str = ""
    vm_id: str = ""
    status: str = ""
    task_id: str = ""
    commands: List[JobCommand] = dataclasses.field(default_factory=list)
    stop_on_error: bool = False
    delete_vm_after: bool = False
    error: str = ""
    executions: List[Execution] = dataclasses.field(default_factory=list)
    created_at: Optional[_dt.datetime] = None
    updated_at: Optional[_dt.datetime] = None
    started_at: Optional[_dt.datetime] = None
    completed_at: Optional[_dt.datetime] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class JobAccepted(Model):
    task_id: str = ""
    job_id: str = ""
    job: Optional[Job] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class FileInfo(Model):
    path: str = ""
    name: str = ""
    type: str = ""  # file, directory, symlink, other
    size: int = 0
    mode: str = ""  # octal as chmod writes it: "0644", "4755"
    mod_time: Optional[_dt.datetime] = None
    link_target: str = ""
    uid: int = 0
    gid: int = 0
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class FileList(Model):
    path: str = ""
    entries: List[FileInfo] = dataclasses.field(default_factory=list)
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class Process(Model):
    id: str = ""
    pid: int = 0
    command: str = ""
    tty: bool = False
    attached: bool = False
    state: str = ""  # running or exited
    started_at: Optional[_dt.datetime] = None
    exit_code: Optional[int] = None
    signal: str = ""
    timed_out: bool = False
    duration_ms: Optional[int] = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class ProcessOutput(Model):
    stream: str = ""
    offset: int = 0
    next_offset: int = 0
    dropped: int = 0
    total: int = 0
    eof: bool = False
    data: str = ""
    data_base64: str = ""
    raw: Dict[str, Any] = _raw()

    @property
    def bytes(self) -> bytes:
        """The output's bytes, whichever way the server sent them."""
        if self.data_base64:
            return base64.b64decode(self.data_base64)
        return self.data.encode("utf-8")


@dataclasses.dataclass
class Chunk:
    """Output of a streamed execution: ``data`` starts at ``offset`` of ``stream`` (stdout or stderr)."""

    stream: str
    offset: int
    data: bytes


@dataclasses.dataclass
class ExecutionEnd(Model):
    """The ``end`` event of an execution's stream, the last one."""

    status: str = ""
    exit_code: Optional[int] = None
    timed_out: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    error: str = ""
    stdout_bytes: Optional[int] = None
    stderr_bytes: Optional[int] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class ShellExit:
    """How a shell's command ended: exit code (128+n for signal n, which ``signal`` names)."""

    exit_code: int
    signal: str = ""
    timed_out: bool = False
    duration_ms: Optional[int] = None


@dataclasses.dataclass
class Secret(Model):
    name: str = ""
    created_at: Optional[_dt.datetime] = None
    updated_at: Optional[_dt.datetime] = None
    last_used_at: Optional[_dt.datetime] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunRepo(Model):
    url: str = ""
    ref: str = ""
    credentials_secret: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunPush(Model):
    branch: str = ""
    draft_pr: bool = False
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunUsage(Model):
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: Optional[float] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class DiffStat(Model):
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunCommit(Model):
    sha: str = ""
    subject: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunResult(Model):
    text: str = ""
    is_error: bool = False
    subtype: str = ""
    exit_code: Optional[int] = None
    timed_out: bool = False
    turns: int = 0
    agent_cost_usd: Optional[float] = None
    base_commit: str = ""
    head_commit: str = ""
    diff_stat: Optional[DiffStat] = None
    diff_truncated: bool = False
    commits: List[RunCommit] = dataclasses.field(default_factory=list)
    pushed_branch: str = ""
    stderr_tail: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class Run(Model):
    id: str = ""
    status: str = ""  # pending, preparing, running, completed, failed, cancelled
    repo: Optional[RunRepo] = None
    prompt: str = ""
    agent: str = ""
    model: str = ""
    max_turns: int = 0
    timeout_seconds: int = 0
    tools: List[str] = dataclasses.field(default_factory=list)
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    secret_env: Dict[str, str] = dataclasses.field(default_factory=dict)
    vm_id: str = ""
    keep_vm: bool = False
    push: Optional[RunPush] = None
    task_id: str = ""
    worker_id: str = ""
    error: str = ""
    cancel_requested: bool = False
    usage: Optional[RunUsage] = None
    result: Optional[RunResult] = None
    created_at: Optional[_dt.datetime] = None
    updated_at: Optional[_dt.datetime] = None
    started_at: Optional[_dt.datetime] = None
    completed_at: Optional[_dt.datetime] = None
    raw: Dict[str, Any] = _raw()

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")


@dataclasses.dataclass
class RunAccepted(Model):
    task_id: str = ""
    run: Optional[Run] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunList(Model):
    runs: List[Run] = dataclasses.field(default_factory=list)
    next_cursor: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunEvent(Model):
    """One event of a run's transcript: type agent, output, stderr, status or end (the last)."""

    seq: int = 0
    type: str = ""
    data: Any = None
    time: Optional[_dt.datetime] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class RunEnd(Model):
    status: str = ""
    error: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class Agent(Model):
    name: str = ""
    description: str = ""
    command: List[str] = dataclasses.field(default_factory=list)
    tools: List[str] = dataclasses.field(default_factory=list)
    user: str = ""
    output: str = ""
    proxy: List[str] = dataclasses.field(default_factory=list)
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class Health(Model):
    status: str = ""
    version: str = ""
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class Ready(Model):
    status: str = ""  # ready or not_ready
    checks: Dict[str, str] = dataclasses.field(default_factory=dict)
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class WorkersStatus(Model):
    registered: int = 0
    live: int = 0
    stale_after_seconds: int = 0
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class Status(Model):
    status: str = ""  # ok or degraded
    workers: Optional[WorkersStatus] = None
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class LogEntry(Model):
    time: Optional[_dt.datetime] = None
    line: str = ""
    kind: str = ""
    level: str = ""
    metadata: Dict[str, str] = dataclasses.field(default_factory=dict)
    raw: Dict[str, Any] = _raw()


@dataclasses.dataclass
class LogList(Model):
    entries: List[LogEntry] = dataclasses.field(default_factory=list)
    source: str = ""
    raw: Dict[str, Any] = _raw()
