"""Unit tests of the SDK's own protocol code, against the published contracts: RFC 6455's worked examples for the
WebSocket client, the WHATWG event-stream format, RFC 3339 times, the API's error envelope, and the retry rules
(a local HTTP server standing in for a gateway that answers 503: the real one cannot be made to on demand)."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import struct
import threading
import unittest

import harness  # noqa: F401  (puts src/ on sys.path)

import aetherium
from aetherium import _sse, _ws
from aetherium._wire import BaseURL, CaseHeaders, go_duration, parse_head
from aetherium.errors import error_from_response
from aetherium.models import VMData, parse_time


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked frame, as a server sends it."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def unmask_client_frame(frame: bytes):  # type: ignore[no-untyped-def]
    """Decodes one client frame: (fin, opcode, payload), checking that it is masked as RFC 6455 requires."""
    assert frame[1] & 0x80, "client frames must be masked"
    n, pos = frame[1] & 0x7F, 2
    if n == 126:
        n, pos = struct.unpack("!H", frame[2:4])[0], 4
    elif n == 127:
        n, pos = struct.unpack("!Q", frame[2:10])[0], 10
    key = frame[pos:pos + 4]
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(frame[pos + 4:pos + 4 + n]))
    return bool(frame[0] & 0x80), frame[0] & 0x0F, payload


class WebSocket(unittest.TestCase):
    def test_rfc6455_examples(self) -> None:
        # Section 1.3: the handshake's worked example.
        self.assertEqual(_ws.accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        # Section 5.7: "A single-frame masked text message" with the key 37 fa 21 3d.
        frame = _ws.encode_frame(_ws.OP_TEXT, b"Hello", mask_key=bytes.fromhex("37fa213d"))
        self.assertEqual(frame, bytes.fromhex("818537fa213d7f9f4d5158"))
        # Section 5.7: the unmasked and fragmented examples a server may send.
        p = _ws.Protocol()
        self.assertEqual(p.receive(bytes.fromhex("810548656c6c6f")), [("text", "Hello")])
        self.assertEqual(p.receive(bytes.fromhex("010348656c")), [])
        self.assertEqual(p.receive(bytes.fromhex("80026c6f")), [("text", "Hello")])

    def test_lengths_and_byte_by_byte(self) -> None:
        for n in (0, 125, 126, 65535, 65536, 70_000):
            payload = bytes(i % 251 for i in range(n))
            fin, op, got = unmask_client_frame(_ws.encode_frame(_ws.OP_BINARY, payload))
            self.assertEqual((fin, op, got), (True, _ws.OP_BINARY, payload), n)
            p = _ws.Protocol()
            self.assertEqual(p.receive(server_frame(_ws.OP_BINARY, payload)), [("binary", payload)], n)
        # A frame that arrives a byte at a time is assembled the same.
        p = _ws.Protocol()
        events = []
        for b in server_frame(_ws.OP_BINARY, b"x" * 300):
            events += p.receive(bytes([b]))
        self.assertEqual(events, [("binary", b"x" * 300)])

    def test_ping_between_fragments_is_answered(self) -> None:
        p = _ws.Protocol()
        data = (server_frame(_ws.OP_BINARY, b"ab", fin=False) + server_frame(_ws.OP_PING, b"keepalive")
                + server_frame(_ws.OP_CONT, b"cd", fin=False) + server_frame(_ws.OP_CONT, b"ef"))
        self.assertEqual(p.receive(data), [("ping", b"keepalive"), ("binary", b"abcdef")])
        self.assertEqual(unmask_client_frame(p.take_outgoing()), (True, _ws.OP_PONG, b"keepalive"))
        self.assertEqual(p.take_outgoing(), b"")

    def test_close_handshake(self) -> None:
        p = _ws.Protocol()
        ev = p.receive(server_frame(_ws.OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
        self.assertEqual(ev, [("close", (1000, "bye"))])
        self.assertEqual(unmask_client_frame(p.take_outgoing()), (True, _ws.OP_CLOSE, struct.pack("!H", 1000)))
        self.assertEqual(p.send_close(), b"", "a close is sent once")
        q = _ws.Protocol()
        fin, op, payload = unmask_client_frame(q.send_close(1001, "going"))
        self.assertEqual((op, struct.unpack("!H", payload[:2])[0], payload[2:]), (_ws.OP_CLOSE, 1001, b"going"))

    def test_protocol_errors(self) -> None:
        cases = {
            "masked server frame": bytes.fromhex("818537fa213d7f9f4d5158"),
            "reserved bits": bytes([0xC1, 0x00]),
            "fragmented ping": bytes([0x09, 0x00]),
            "long ping": server_frame(_ws.OP_PING, b"x" * 126),
            "continuation without message": server_frame(_ws.OP_CONT, b"x"),
            "new message inside another": server_frame(_ws.OP_TEXT, b"a", fin=False) + server_frame(_ws.OP_TEXT, b"b"),
            "unknown opcode": server_frame(0x3, b""),
        }
        for name, data in cases.items():
            with self.assertRaises(_ws.ProtocolError, msg=name):
                _ws.Protocol().receive(data)
        with self.assertRaises(_ws.ProtocolError) as cm:
            _ws.Protocol().receive(server_frame(_ws.OP_TEXT, b"\xff\xfe"))
        self.assertEqual(cm.exception.close_code, _ws.CLOSE_INVALID_DATA)
        with self.assertRaises(_ws.ProtocolError) as cm:
            _ws.Protocol(max_message=10).receive(server_frame(_ws.OP_BINARY, b"x" * 11))
        self.assertEqual(cm.exception.close_code, _ws.CLOSE_TOO_BIG)

    def test_handshake_check(self) -> None:
        key = _ws.new_key()
        good = CaseHeaders([("Upgrade", "websocket"), ("Connection", "Upgrade"),
                            ("Sec-WebSocket-Accept", _ws.accept_for(key))])
        _ws.check_handshake(101, good, key)
        bad = CaseHeaders([("Upgrade", "websocket"), ("Connection", "Upgrade"),
                           ("Sec-WebSocket-Accept", _ws.accept_for(_ws.new_key()))])
        with self.assertRaises(_ws.ProtocolError):
            _ws.check_handshake(101, bad, key)
        with self.assertRaises(_ws.ProtocolError):
            _ws.check_handshake(200, good, key)


class EventStream(unittest.TestCase):
    def test_whatwg_parsing(self) -> None:
        p = _sse.SSEParser()
        text = (b": comment\r\n\r\nevent: stdout\r\ndata: {\"a\":1}\r\n\r\n"
                b"id: 7\rdata: two\rdata:lines\r\r"
                b"event: x\n\n"  # no data: not dispatched
                b"data: last\n\n")
        events = []
        for i in range(len(text)):  # a byte at a time, CR split from its LF
            events += p.feed(text[i:i + 1])
        self.assertEqual(events, [("stdout", '{"a":1}', None), ("message", "two\nlines", "7"),
                                  ("message", "last", "7")])
        self.assertEqual(p.feed(b"data: partial"), [])


class Wire(unittest.TestCase):
    def test_times(self) -> None:
        t = parse_time("2026-12-03T08:01:15.911784123Z")
        self.assertEqual(t, dt.datetime(2026, 12, 3, 8, 1, 15, 911784, tzinfo=dt.timezone.utc))
        t2 = parse_time("2026-12-03T10:01:15+02:00")
        assert t2 is not None
        self.assertEqual(t2.astimezone(dt.timezone.utc).hour, 8)
        self.assertIsNone(parse_time(""))
        with self.assertRaises(ValueError):
            parse_time("yesterday")

    def test_models_ignore_unknown_fields(self) -> None:
        vm = VMData.from_dict({"id": "x", "status": "running", "created_at": "2026-01-02T03:04:05Z",
                               "network": {"egress": {"allow_cidrs": ["10.0.0.0/8"]}, "ip": "1.2.3.4"},
                               "a_field_of_a_newer_server": 1})
        self.assertEqual((vm.id, vm.status, vm.created_at.year), ("x", "running", 2026))  # type: ignore[union-attr]
        assert vm.network is not None and vm.network.egress is not None
        self.assertEqual(vm.network.egress.allow_cidrs, ["10.0.0.0/8"])
        self.assertEqual(vm.raw["a_field_of_a_newer_server"], 1)

    def test_error_envelope(self) -> None:
        h = CaseHeaders([("Content-Type", "application/json"), ("X-Request-Id", "rid-1"), ("Retry-After", "3")])
        e = error_from_response(429, h, b'{"error":{"code":"rate_limited","message":"slow down"}}')
        self.assertIsInstance(e, aetherium.RateLimitedError)
        self.assertEqual((e.status, e.code, e.message, e.request_id, e.retry_after),
                         (429, "rate_limited", "slow down", "rid-1", 3.0))
        self.assertIn("rid-1", str(e))
        e = error_from_response(502, CaseHeaders([("Content-Type", "text/html")]), b"<html>bad gateway</html>")
        self.assertIsInstance(e, aetherium.ServerError)
        self.assertEqual(e.code, "")
        self.assertIn("proxy", e.message)
        self.assertNotIn("<html>", e.message)
        self.assertIsInstance(error_from_response(503, CaseHeaders([]), b""), aetherium.ServiceUnavailableError)

    def test_urls_and_durations(self) -> None:
        b = BaseURL("http://127.0.0.1:8080/api/v1/")
        self.assertEqual((b.host, b.port, b.path, b.host_header), ("127.0.0.1", 8080, "", "127.0.0.1:8080"))
        self.assertEqual(b.target("/vms", [("status", "a,b"), ("cursor", "x y")]),
                         "/api/v1/vms?status=a%2Cb&cursor=x+y")
        self.assertEqual(BaseURL("https://example.com/prefix").target("/x"), "/prefix/api/v1/x")
        for bad in ("", "ftp://x", "http://", "http://h/?q=1", "http://u:p@h"):
            with self.assertRaises(ValueError, msg=bad):
                BaseURL(bad)
        self.assertEqual(go_duration(59.9), "59900ms")
        self.assertEqual(parse_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket")[0], 101)
        self.assertNotIn("secret", repr(aetherium.Client("http://h", "secret")))
        with self.assertRaises(ValueError):
            aetherium.Client("http://h", "bad key")


class RouteCheck(unittest.TestCase):
    def test_unmatched_routes(self) -> None:
        saved = set(harness._routes)
        try:
            harness._routes.clear()
            harness._routes.update({("GET", "/api/v1/vms/a%2Fb"), ("POST", "/api/v1/vms/x/processes/p/wait?t=1"),
                                    ("GET", "/api/v1/nope"), ("DELETE", "/api/v1/secrets")})
            spec = {"paths": {"/vms/{id}": {"get": {}}, "/vms/{id}/processes/{pid}/wait": {"post": {}},
                              "/secrets": {"get": {}}}}
            self.assertEqual(harness.unmatched_routes(spec), ["DELETE /secrets", "GET /nope"])
        finally:
            harness._routes.clear()
            harness._routes.update(saved)


class _Cut(http.server.BaseHTTPRequestHandler):
    """A gateway whose answers break off: a download shorter than its Content-Length, an event stream that
    closes before its end event."""

    def do_GET(self) -> None:  # noqa: N802
        if "/files" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 40000)
        else:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'event: stdout\ndata: {"offset":0,"data":"abc"}\n\n')
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class BrokenAnswers(unittest.TestCase):
    def setUp(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Cut)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def tearDown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def test_sync(self) -> None:
        c = aetherium.Client(self.url, "k", retries=0)
        with c.download("vm", "/f") as d:
            with self.assertRaises(aetherium.TransportError) as cm:
                d.read()
        self.assertIn("cut short", str(cm.exception))
        s = c.stream_execution("e")
        got = []
        with self.assertRaises(aetherium.StreamEndedError):
            for ch in s:
                got.append(ch.data)
        self.assertEqual((got, s.stdout_offset, s.end), ([b"abc"], 3, None))

    def test_async(self) -> None:
        async def run() -> None:
            c = aetherium.AsyncClient(self.url, "k", retries=0)
            d = await c.download("vm", "/f")
            with self.assertRaises(aetherium.TransportError):
                await d.read()
            await d.aclose()
            s = await c.stream_execution("e")
            with self.assertRaises(aetherium.StreamEndedError):
                async for _ in s:
                    pass
            self.assertEqual(s.stdout_offset, 3)
        asyncio.run(run())

    def test_connection_refused(self) -> None:
        port = harness.free_port()
        with self.assertRaises(aetherium.TransportError):
            aetherium.Client("http://127.0.0.1:%d" % port, "k", retries=1).health()
        with self.assertRaises(aetherium.TransportError):
            asyncio.run(aetherium.AsyncClient("http://127.0.0.1:%d" % port, "k", retries=1).health())


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        ok = self.path == "/api/v1/health" and self.headers.get("Authorization") == "Bearer k"
        body = b'{"status":"ok","version":"tls"}' if ok else b'{"error":{"code":"not_found","message":"x"}}'
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class TLS(unittest.TestCase):
    """https:// through both clients, with a certificate made here (openssl) and trusted through ssl_context; an
    untrusted certificate is refused."""

    def setUp(self) -> None:
        import shutil
        import ssl
        import subprocess
        import tempfile
        if not shutil.which("openssl"):
            self.skipTest("SKIPPED: no openssl to make a test certificate")
        self.dir = tempfile.mkdtemp(prefix="aeth-tls-")
        self.cert, key = self.dir + "/cert.pem", self.dir + "/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", self.cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = "https://127.0.0.1:%d" % self.httpd.server_address[1]

    def tearDown(self) -> None:
        import shutil
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_https(self) -> None:
        import ssl
        trusted = ssl.create_default_context(cafile=self.cert)
        self.assertEqual(aetherium.Client(self.url, "k", ssl_context=trusted).health().version, "tls")
        h = asyncio.run(aetherium.AsyncClient(self.url, "k", ssl_context=trusted).health())
        self.assertEqual(h.version, "tls")
        with self.assertRaises(aetherium.TransportError) as cm:
            aetherium.Client(self.url, "k", retries=0).health()
        self.assertIn("CERTIFICATE", str(cm.exception).upper())
        with self.assertRaises(aetherium.TransportError):
            asyncio.run(aetherium.AsyncClient(self.url, "k", retries=0).health())


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first two requests of a path, then 201; records the Idempotency-Key of each."""

    seen: list = []  # type: ignore[type-arg]

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        type(self).seen.append((self.headers.get("Idempotency-Key"), body))
        if len(type(self).seen) <= 2:
            payload = b'{"error":{"code":"service_unavailable","message":"try again"}}'
            self.send_response(503)
            self.send_header("Retry-After", "0")
        else:
            payload = json.dumps({"task_id": "t", "vm": {"id": "v", "name": "n", "status": "pending"}}).encode()
            self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class Retries(unittest.TestCase):
    def setUp(self) -> None:
        _Flaky.seen = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def tearDown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def check(self) -> None:
        keys = {k for k, _ in _Flaky.seen}
        bodies = {b for _, b in _Flaky.seen}
        self.assertEqual(len(_Flaky.seen), 3)
        self.assertEqual(len(keys), 1, "every attempt carries the same key")
        self.assertRegex(keys.pop(), r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        self.assertEqual(len(bodies), 1, "and the same bytes")

    def test_sync_retries_with_one_key(self) -> None:
        vm = aetherium.Client(self.url, "k", retries=2).create_vm("n", wait=False)
        self.assertEqual(vm.id, "v")
        self.check()

    def test_async_retries_with_one_key(self) -> None:
        vm = asyncio.run(aetherium.AsyncClient(self.url, "k", retries=2).create_vm("n", wait=False))
        self.assertEqual(vm.id, "v")
        self.check()

    def test_no_retries(self) -> None:
        with self.assertRaises(aetherium.ServiceUnavailableError) as cm:
            aetherium.Client(self.url, "k", retries=0).create_vm("n", wait=False)
        self.assertEqual(cm.exception.code, "service_unavailable")
        self.assertEqual(len(_Flaky.seen), 1)
        self.assertIsNone(_Flaky.seen[0][0], "no key without retries or a caller's key")


if __name__ == "__main__":
    unittest.main()
