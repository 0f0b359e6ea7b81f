"""The asyncio client against a real `aetherium serve` (Docker backend): the same core flow as test_sync."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import time
import unittest
import uuid

import harness

import aetherium
from aetherium import ConflictError, NotFoundError, UnauthorizedError, ValidationError

SERVER = harness.Server()
# Made outside the event loop: 10 MB of random bytes and their hash would block it for a noticeable while.
DATA = os.urandom(10 * 1024 * 1024)
DIGEST = hashlib.sha256(DATA).hexdigest()


def setUpModule() -> None:
    harness.record_routes()
    SERVER.start()


def tearDownModule() -> None:
    try:
        bad = harness.unmatched_routes(harness.openapi(SERVER))
        if bad:
            raise AssertionError("requests not in the OpenAPI document: %s" % bad)
    finally:
        SERVER.stop()


class AsyncCoreFlow(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.c = aetherium.AsyncClient(SERVER.url, SERVER.api_key)

    async def test_create_exec_stream_files_shell_delete(self) -> None:
        c = self.c
        async with c.vm("py-async", memory_mb=256) as vm:
            self.assertIsInstance(vm, aetherium.AsyncVM)
            self.assertEqual(vm.status, "running", vm.error)

            ex = await vm.exec("sh", ["-c", "echo out; echo err >&2; exit 3"])
            self.assertEqual((ex.exit_code, ex.stdout, ex.stderr), (3, "out\n", "err\n"))

            # Streamed while it runs; the event loop stays free meanwhile (a ticker runs alongside).
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            t = asyncio.ensure_future(ticker())
            arrivals = []
            s = await vm.exec_stream("sh", ["-c", "sleep 0.5; echo first; sleep 1.2; echo second"])
            async with s:
                async for ch in s:
                    arrivals.append((time.monotonic(), ch.data))
            t.cancel()
            self.assertEqual(b"".join(d for _, d in arrivals), b"first\nsecond\n")
            self.assertGreater(arrivals[-1][0] - arrivals[0][0], 0.8, "output was streamed, not buffered")
            self.assertGreater(ticks, 20, "the loop ran other tasks while the stream waited")
            assert s.end is not None
            self.assertEqual((s.end.status, s.end.exit_code), ("completed", 0))

            # 10 MB: up from an async generator (chunked), and from bytes (Content-Length); down as a stream.
            data, digest = DATA, DIGEST

            async def pieces():  # type: ignore[no-untyped-def]
                for i in range(0, len(data), 250_000):
                    yield data[i:i + 250_000]
                    await asyncio.sleep(0)

            info = await vm.upload("/tmp/big.bin", pieces())
            self.assertEqual(info.size, len(data))
            self.assertEqual((await vm.exec("sha256sum", ["/tmp/big.bin"])).stdout.split()[0], digest)
            await vm.upload("/tmp/big2.bin", data)
            h = hashlib.sha256()
            async with await vm.download("/tmp/big2.bin") as d:
                self.assertEqual(d.size, len(data))
                async for piece in d:
                    h.update(piece)
            self.assertEqual(h.hexdigest(), digest)
            # A local file is read in a thread (asyncio has no non-blocking file reads).
            with open(os.path.join(SERVER.data_dir, "local.bin"), "wb+") as f:
                f.write(data[:1_000_000])
                f.seek(0)
                await vm.upload("/tmp/local.bin", f)
            self.assertEqual(await vm.read_file("/tmp/local.bin"), data[:1_000_000])

            async with await vm.shell() as sh:
                await sh.write("echo hi\n")
                await sh.expect(re.compile(rb"(?m)^hi\r?$"), timeout=15)
                await sh.ping()
                await sh.write("exit 5\n")
                exit_ = await sh.wait(timeout=15)
            self.assertEqual(exit_.exit_code, 5)
            self.assertEqual(sh.pongs, 1)

            async with await vm.shell(["sh", "-c", "cat; echo bye >&2"], tty=False) as sh:
                await sh.write(b"\x00\x01binary")
                await sh.close_stdin()
                out, err = io.BytesIO(), io.BytesIO()
                exit_ = await sh.wait(out, err, timeout=15)
            self.assertEqual((exit_.exit_code, out.getvalue(), err.getvalue()), (0, b"\x00\x01binary", b"bye\n"))
            vm_id = vm.id
        self.assertEqual((await c.get_vm(vm_id)).status, "deleted")
        left = await asyncio.get_running_loop().run_in_executor(None, SERVER.leftover_containers)
        self.assertEqual(left, [])

    async def test_concurrent_vms_and_errors(self) -> None:
        c = self.c
        with self.assertRaises(NotFoundError) as cm:
            await c.get_vm("missing")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "not_found"))
        self.assertTrue(cm.exception.request_id)
        with self.assertRaises(ValidationError):
            await c.create_vm("py-bad", memory_mb=1)
        with self.assertRaises(UnauthorizedError):
            await aetherium.AsyncClient(SERVER.url, "ae_nope").list_vms()

        # Two VMs made at the same time, each running a command, in one event loop.
        vms = await asyncio.gather(c.create_vm("py-c1", memory_mb=256), c.create_vm("py-c2", memory_mb=256))
        try:
            outs = await asyncio.gather(*(v.exec("echo", [v.name]) for v in vms))
            self.assertEqual([o.stdout for o in outs], ["py-c1\n", "py-c2\n"])
            page, cursor = await c.list_vms(status=["running"], limit=1)
            self.assertEqual(len(page), 1)
            self.assertTrue(cursor)
            names = sorted([v.name async for v in c.iter_vms(status=["running"], page_size=1)])
            self.assertEqual(names, ["py-c1", "py-c2"])

            key = str(uuid.uuid4())
            e1 = await vms[0].exec("sh", ["-c", "echo x >> /tmp/n"], idempotency_key=key)
            e2 = await vms[0].exec("sh", ["-c", "echo x >> /tmp/n"], idempotency_key=key)
            self.assertEqual(e1.id, e2.id)
            self.assertEqual(await vms[0].read_file("/tmp/n"), b"x\n")

            job = await c.run_job(["echo a", "echo b"], vm_id=vms[1].id)
            self.assertEqual([e.stdout for e in job.executions], ["a\n", "b\n"])
            p = await vms[1].start_process(shell="echo bg", id="bg")
            p = await vms[1].wait_process(p.id, timeout=10)
            self.assertEqual((p.state, p.exit_code), ("exited", 0))
            self.assertEqual((await vms[1].read_process_output("bg")).bytes, b"bg\n")
            with self.assertRaises(NotFoundError):
                await vms[1].download("/nope")
            with self.assertRaises(ValidationError):
                await vms[1].add_tools(["no-such-tool-xyz"])
        finally:
            await asyncio.gather(*(v.delete() for v in vms))
        with self.assertRaises(ConflictError) as cm2:
            await vms[0].exec("true")
        self.assertEqual(cm2.exception.code, "vm_not_running")


if __name__ == "__main__":
    unittest.main()
