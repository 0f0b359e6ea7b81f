"""An incremental parser of text/event-stream (the WHATWG "server-sent events" format), with no I/O."""

from __future__ import annotations

from typing import List, Optional, Tuple

# Bounds one event; the server sends at most 32 KiB of output (or one 256 KiB transcript entry) per event.
MAX_EVENT_BYTES = 8 << 20

Event = Tuple[str, str, Optional[str]]  # (event type, data, id)


class SSEParser:
    """Feed bytes as they arrive; get complete events back. Lines may end with LF, CRLF or CR; comments,
    ``retry`` and unknown fields are ignored; an event without data is not dispatched (as the format says)."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: List[str] = []
        self._has_data = False
        self._id: Optional[str] = None
        self._size = 0

    def feed(self, data: bytes) -> List[Event]:
        self._buf += data
        out: List[Event] = []
        while True:
            i_n = self._buf.find(b"\n")
            i_r = self._buf.find(b"\r")
            if i_n < 0 and i_r < 0:
                break
            if i_r >= 0 and (i_n < 0 or i_r < i_n):
                if i_r == len(self._buf) - 1:
                    break  # a CR last: the LF of a CRLF may come with the next bytes
                end, nxt = i_r, i_r + (2 if self._buf[i_r + 1:i_r + 2] == b"\n" else 1)
            else:
                end, nxt = i_n, i_n + 1
            line = self._buf[:end]
            self._buf = self._buf[nxt:]
            ev = self._line(line)
            if ev is not None:
                out.append(ev)
        if len(self._buf) + self._size > MAX_EVENT_BYTES:
            raise ValueError("server-sent event larger than %d bytes" % MAX_EVENT_BYTES)
        return out

    def _line(self, raw: bytes) -> Optional[Event]:
        line = raw.decode("utf-8", "replace")
        if line == "":
            ev: Optional[Event] = None
            if self._has_data:
                ev = (self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._has_data, self._size = "", [], False, 0
            return ev
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
            self._has_data = True
            self._size += len(raw)
            if self._size > MAX_EVENT_BYTES:
                raise ValueError("server-sent event larger than %d bytes" % MAX_EVENT_BYTES)
        elif field == "id" and "\x00" not in value:
            self._id = value
        return None
