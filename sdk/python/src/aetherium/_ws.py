"""A minimal RFC 6455 (WebSocket) client protocol with no I/O: the handshake's key and its check, frame encoding
(always masked, as a client must) and an incremental decoder that reassembles fragmented messages, answers pings
and follows the closing handshake. The sync and asyncio shells drive it over a socket or asyncio streams.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import List, Optional, Tuple, Union

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

# Bounds one message from the server (it sends at most 32 KiB of output per message), like the Go SDK's limit.
MAX_MESSAGE = 4 << 20
# The largest message the SDK sends (the server accepts up to 1 MiB per message).
STDIN_MESSAGE = 256 << 10


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``close_code`` is the code to close with."""

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


def new_key() -> str:
    """A Sec-WebSocket-Key: 16 random bytes in base64."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def check_handshake(status: int, headers: "HeaderGetter", key: str) -> None:
    """Raises ProtocolError unless the answer is a valid 101 for key (the caller handles non-101 answers)."""
    if status != 101:
        raise ProtocolError("handshake: HTTP %d, want 101" % status)
    if (headers.get("upgrade") or "").lower() != "websocket":
        raise ProtocolError("handshake: Upgrade is %r, want websocket" % headers.get("upgrade"))
    if "upgrade" not in [t.strip().lower() for t in (headers.get("connection") or "").split(",")]:
        raise ProtocolError("handshake: Connection does not include Upgrade")
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise ProtocolError("handshake: wrong Sec-WebSocket-Accept")
    if headers.get("sec-websocket-extensions"):
        raise ProtocolError("handshake: the server chose extensions the client did not offer")


class HeaderGetter:  # typing only: anything with a case-insensitive get
    def get(self, name: str) -> Optional[str]:  # pragma: no cover
        raise NotImplementedError


def mask(payload: bytes, key: bytes) -> bytes:
    """XORs payload with the 4-byte masking key (RFC 6455 section 5.3), fast for large payloads."""
    if not payload:
        return b""
    n = len(payload)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, fin: bool = True, mask_key: Optional[bytes] = None) -> bytes:
    """One client frame: masked with mask_key (random when None)."""
    if mask_key is None:
        mask_key = os.urandom(4)
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 1 << 16:
        head.append(0x80 | 126)
        head += struct.pack("!H", n)
    else:
        head.append(0x80 | 127)
        head += struct.pack("!Q", n)
    return bytes(head) + mask_key + mask(payload, mask_key)


def encode_close(code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


# Events of Protocol.receive: ("text", str), ("binary", bytes), ("ping", bytes), ("pong", bytes),
# ("close", (code, reason)).
Event = Tuple[str, Union[str, bytes, Tuple[int, str]]]


class Protocol:
    """The client side of a WebSocket connection after its handshake. ``receive`` takes bytes from the server
    and returns events; what must be written back (pongs, the answer to a close) accumulates in
    ``take_outgoing()``."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message
        self._frag_op: Optional[int] = None
        self._frag: List[bytes] = []
        self._frag_len = 0
        self._out: List[bytes] = []
        self.close_sent = False
        self.close_received = False

    def take_outgoing(self) -> bytes:
        out = b"".join(self._out)
        self._out = []
        return out

    def send_text(self, text: str) -> bytes:
        return encode_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> bytes:
        return encode_frame(OP_BINARY, data)

    def send_ping(self, payload: bytes = b"") -> bytes:
        return encode_frame(OP_PING, payload[:125])

    def send_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        if self.close_sent:
            return b""
        self.close_sent = True
        return encode_close(code, reason)

    def receive(self, data: bytes) -> List[Event]:
        self._buf += data
        events: List[Event] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return events
            fin, op, payload = frame
            ev = self._handle(fin, op, payload)
            if ev is not None:
                events.append(ev)

    def _next_frame(self) -> Optional[Tuple[bool, int, bytes]]:
        b = self._buf
        if len(b) < 2:
            return None
        fin = bool(b[0] & 0x80)
        if b[0] & 0x70:
            raise ProtocolError("reserved bits set without a negotiated extension")
        op = b[0] & 0x0F
        if b[1] & 0x80:
            raise ProtocolError("the server masked a frame")
        n = b[1] & 0x7F
        pos = 2
        if n == 126:
            if len(b) < 4:
                return None
            n = struct.unpack("!H", b[2:4])[0]
            pos = 4
        elif n == 127:
            if len(b) < 10:
                return None
            n = struct.unpack("!Q", b[2:10])[0]
            pos = 10
        if op >= 0x8:
            if not fin or n > 125:
                raise ProtocolError("fragmented or oversized control frame")
        elif n > self._max:
            raise ProtocolError("message larger than %d bytes" % self._max, CLOSE_TOO_BIG)
        if len(b) < pos + n:
            return None
        payload = bytes(b[pos:pos + n])
        del b[:pos + n]
        return fin, op, payload

    def _handle(self, fin: bool, op: int, payload: bytes) -> Optional[Event]:
        if op == OP_PING:
            if not self.close_sent:
                self._out.append(encode_frame(OP_PONG, payload))
            return ("ping", payload)
        if op == OP_PONG:
            return ("pong", payload)
        if op == OP_CLOSE:
            self.close_received = True
            code, reason = 1005, ""
            if len(payload) == 1:
                raise ProtocolError("close frame with a 1-byte payload")
            if len(payload) >= 2:
                code = struct.unpack("!H", payload[:2])[0]
                try:
                    reason = payload[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError("close reason is not UTF-8", CLOSE_INVALID_DATA)
            if not self.close_sent:
                # Echo the code back (RFC 6455 section 5.5.1); 1005 (no code) is answered with an empty close.
                self.close_sent = True
                self._out.append(encode_frame(OP_CLOSE, payload[:2] if code != 1005 else b""))
            return ("close", (code, reason))
        if op in (OP_TEXT, OP_BINARY):
            if self._frag_op is not None:
                raise ProtocolError("a new message began before the previous one ended")
            if fin:
                return self._message(op, payload)
            self._frag_op, self._frag, self._frag_len = op, [payload], len(payload)
            return None
        if op == OP_CONT:
            if self._frag_op is None:
                raise ProtocolError("a continuation frame without a message")
            self._frag.append(payload)
            self._frag_len += len(payload)
            if self._frag_len > self._max:
                raise ProtocolError("message larger than %d bytes" % self._max, CLOSE_TOO_BIG)
            if not fin:
                return None
            op, data = self._frag_op, b"".join(self._frag)
            self._frag_op, self._frag, self._frag_len = None, [], 0
            return self._message(op, data)
        raise ProtocolError("unknown opcode %#x" % op)

    def _message(self, op: int, data: bytes) -> Event:
        if op == OP_TEXT:
            try:
                return ("text", data.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError("text message is not UTF-8", CLOSE_INVALID_DATA)
        return ("binary", data)
