"""What the sync and asyncio clients share: the server URL, request targets, retry rules, request bodies."""

from __future__ import annotations

import json
import math
import random
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlencode, urlsplit

from .errors import AetheriumError, TransportError
from .models import JobCommand

API_PREFIX = "/api/v1"
USER_AGENT = "aetherium-python/0.1"
IDEMPOTENCY_KEY = "Idempotency-Key"

# How long one request asks the server to hold its answer (?wait=): well under the server's 10 minute cap and the
# idle timeouts of common proxies. Longer waits poll the task after it, as the Go SDK does.
WAIT_CHUNK = 60.0
MIN_POLL, MAX_POLL = 0.05, 1.0
# Polls in a row that may fail for transient reasons before a wait gives up.
MAX_TRANSIENT_FAILURES = 5
MAX_RETRY_PAUSE = 5.0
# Streams: the server sends a comment at least every 15 s, so a read that waits longer means a dead connection.
STREAM_IDLE_TIMEOUT = 45.0
MAX_ERROR_BODY = 64 << 10
IO_CHUNK = 64 << 10

Query = List[Tuple[str, str]]


class BaseURL:
    """A parsed server URL: scheme, host, port and the path before /api/v1."""

    def __init__(self, raw: str) -> None:
        raw = (raw or "").strip()
        if not raw:
            raise ValueError("aetherium: empty server URL")
        u = urlsplit(raw)
        if u.scheme not in ("http", "https"):
            raise ValueError("aetherium: invalid server URL %r: want http://host[:port] or https://host[:port]" % raw)
        if not u.hostname:
            raise ValueError("aetherium: invalid server URL %r: no host" % raw)
        if u.query or u.fragment:
            raise ValueError("aetherium: invalid server URL %r: must not have a query or fragment" % raw)
        if u.username or u.password:
            raise ValueError("aetherium: invalid server URL: credentials belong in api_key, not the URL")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        path = u.path.rstrip("/")
        if path.endswith(API_PREFIX):
            path = path[: -len(API_PREFIX)]
        self.path = path
        default = (u.scheme == "http" and self.port == 80) or (u.scheme == "https" and self.port == 443)
        h = "[%s]" % self.host if ":" in self.host else self.host
        self.host_header = h if default else "%s:%d" % (h, self.port)

    def __str__(self) -> str:
        return "%s://%s%s" % (self.scheme, self.host_header, self.path)

    def target(self, path: str, query: Optional[Query] = None) -> str:
        t = self.path + API_PREFIX + path
        if query:
            t += "?" + urlencode(query)
        return t


def check_api_key(key: str) -> str:
    # A header value: refuse what would break the request, and never echo the key.
    for ch in key:
        if ch.isspace() or ord(ch) < 0x21 or ord(ch) > 0x7E:
            raise ValueError("aetherium: api key contains whitespace, control or non-ASCII characters")
    return key


def seg(s: str) -> str:
    """One path segment (an id, a name), escaped."""
    if not s:
        raise ValueError("aetherium: empty id")
    return quote(s, safe="")


def vm_path(vm_id: str, suffix: str = "") -> str:
    return "/vms/" + seg(vm_id) + suffix


def go_duration(seconds: float) -> str:
    """A duration the server parses (Go syntax), in whole milliseconds."""
    return "%dms" % max(1, int(round(seconds * 1000)))


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def check_idempotency_key(key: str) -> str:
    if not key or len(key) > 255 or any(ord(c) < 0x20 or ord(c) > 0x7E for c in key):
        raise ValueError("aetherium: an Idempotency-Key is 1 to 255 printable ASCII characters")
    return key


def encode_json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def base_headers(base: BaseURL, api_key: str, user_agent: str) -> Dict[str, str]:
    h = {"Host": base.host_header, "User-Agent": user_agent}
    if api_key:
        h["Authorization"] = "Bearer " + api_key
    return h


def is_transient(err: BaseException) -> bool:
    """Whether a failed call is worth sending again: no answer, 429, 502, 503, 504."""
    if isinstance(err, TransportError):
        return True
    if isinstance(err, AetheriumError):
        return err.status in (429, 502, 503, 504)
    return False


def retryable(err: BaseException) -> bool:
    """Whether a call with an Idempotency-Key may be sent again after err (also 409 idempotency_in_progress)."""
    if is_transient(err):
        return True
    return isinstance(err, AetheriumError) and err.status == 409 and err.code == "idempotency_in_progress"


def retry_pause(attempt: int, err: BaseException) -> float:
    """The pause before attempt+1: Retry-After when the server sent one, else 100 ms doubling, at most 5 s."""
    ra = getattr(err, "retry_after", None)
    if ra:
        return min(float(ra), MAX_RETRY_PAUSE)
    return min(0.1 * (2 ** (attempt - 1)) * (0.75 + random.random() / 2), MAX_RETRY_PAUSE)


def wait_chunk(deadline_left: Optional[float]) -> float:
    """The ?wait= of the first request of a waiting call, ending before the caller's deadline with a margin for
    the answer to travel (a request cut by the deadline would lose the task id). 0: poll instead."""
    d = WAIT_CHUNK
    if deadline_left is not None:
        left = deadline_left - max(deadline_left / 10, 0.2)
        d = min(d, left)
    return d if d >= 0.1 else 0.0


class CaseHeaders:
    """Response headers with case-insensitive lookup (the last value of a repeated name wins in ``get``)."""

    def __init__(self, items: Iterable[Tuple[str, str]]) -> None:
        self._items = list(items)
        self._map = {k.lower(): v for k, v in self._items}

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self._map.get(name.lower(), default)

    def items(self) -> List[Tuple[str, str]]:
        return list(self._items)


def parse_head(head: bytes) -> Tuple[int, CaseHeaders]:
    """Parses an HTTP/1.1 response head (status line and headers, without the blank line)."""
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransportError("malformed HTTP status line %r" % lines[0][:100])
    items = []
    for line in lines[1:]:
        if not line:
            continue
        k, sep, v = line.partition(":")
        if not sep:
            raise TransportError("malformed HTTP header line")
        items.append((k.strip(), v.strip()))
    return int(parts[1]), CaseHeaders(items)


# --- request bodies (the same for both clients) ---

def drop_empty(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (None, "", [], {}, 0, False) or k in ("command",)}


def create_vm_body(name: str, vcpus: int = 0, memory_mb: int = 0, image: str = "", priority: str = "",
                   metadata: Optional[Mapping[str, str]] = None, network: Optional[Mapping[str, Any]] = None,
                   tools: Optional[Sequence[str]] = None,
                   tool_versions: Optional[Mapping[str, str]] = None, timeout_seconds: int = 0,
                   idle_timeout_seconds: int = 0, on_idle: str = "") -> Dict[str, Any]:
    b = drop_empty({"vcpus": vcpus, "memory_mb": memory_mb, "image": image, "priority": priority,
                    "metadata": dict(metadata or {}), "network": dict(network) if network else None,
                    "tools": list(tools or []), "tool_versions": dict(tool_versions or {}),
                    "timeout_seconds": timeout_seconds, "idle_timeout_seconds": idle_timeout_seconds,
                    "on_idle": on_idle})
    b["name"] = name
    return b


def execute_body(command: str, args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
                 secret_env: Optional[Mapping[str, str]] = None, working_dir: str = "", user: str = "",
                 timeout_seconds: int = 0, priority: str = "") -> Dict[str, Any]:
    if isinstance(args, str):
        raise TypeError("args is a sequence of strings, not one string")
    b = drop_empty({"args": list(args), "env": dict(env or {}), "secret_env": dict(secret_env or {}),
                    "working_dir": working_dir, "user": user, "timeout_seconds": timeout_seconds,
                    "priority": priority})
    b["command"] = command
    return b


CommandLike = Union[str, Sequence[str], JobCommand, Mapping[str, Any]]


def job_command(c: CommandLike) -> Dict[str, Any]:
    """A job command from a JobCommand, a dict, an argv list, or a string (run with sh -c)."""
    if isinstance(c, JobCommand):
        return c.to_dict()
    if isinstance(c, str):
        return {"command": "sh", "args": ["-c", c]}
    if isinstance(c, Mapping):
        return dict(c)
    argv = list(c)
    if not argv:
        raise ValueError("aetherium: empty command")
    d: Dict[str, Any] = {"command": argv[0]}
    if argv[1:]:
        d["args"] = argv[1:]
    return d


def shell_query(command: Optional[Sequence[str]], tty: bool, rows: int, cols: int, term: str,
                env: Optional[Mapping[str, str]], working_dir: str, user: str) -> Query:
    q: Query = [("tty", "true" if tty else "false")]
    if isinstance(command, str):
        raise TypeError("command is an argv list; use ['sh', '-c', line] for a command line")
    for c in command or []:
        q.append(("command", c))
    if tty:
        if rows > 0 and cols > 0:
            q += [("rows", str(rows)), ("cols", str(cols))]
        if term:
            q.append(("term", term))
    for k, v in (env or {}).items():
        q.append(("env", "%s=%s" % (k, v)))
    if working_dir:
        q.append(("working_dir", working_dir))
    if user:
        q.append(("user", user))
    return q


def upload_query(path: str, mode: Union[str, int, None], owner: str, mkdir_parents: bool,
                 overwrite: bool) -> Query:
    q: Query = [("path", path)]
    if mode is not None:
        q.append(("mode", mode if isinstance(mode, str) else "%04o" % mode))
    if owner:
        q.append(("owner", owner))
    if mkdir_parents:
        q.append(("mkdir_parents", "true"))
    if not overwrite:
        q.append(("overwrite", "false"))
    return q


def page_query(limit: int, cursor: str) -> Query:
    q: Query = []
    if limit > 0:
        q.append(("limit", str(limit)))
    if cursor:
        q.append(("cursor", cursor))
    return q


def remaining(deadline: Optional[float], now: float) -> Optional[float]:
    if deadline is None:
        return None
    return max(0.0, deadline - now)


def read_timeout(base: float, wait: float) -> float:
    """The socket timeout of a request that asks the server to hold its answer for wait seconds."""
    return base + wait if not math.isinf(base) else base
