"""The sync client against a real `aetherium serve` (Docker backend)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
import unittest
import uuid

import harness

import aetherium
from aetherium import (BadRequestError, ConflictError, NotFoundError, UnauthorizedError, ValidationError)

SERVER = harness.Server()


def setUpModule() -> None:
    harness.record_routes()
    SERVER.start()


def tearDownModule() -> None:
    try:
        # Every request the tests sent is a route of the server's OpenAPI document.
        spec = harness.openapi(SERVER)
        bad = harness.unmatched_routes(spec)
        if bad:
            raise AssertionError("requests not in the OpenAPI document: %s" % bad)
        assert harness.recorded_routes() > 0, "the requests were not recorded"
    finally:
        SERVER.stop()


def client(**kw) -> aetherium.Client:  # type: ignore[no-untyped-def]
    return aetherium.Client(SERVER.url, SERVER.api_key, **kw)


class CoreFlow(unittest.TestCase):
    def test_create_exec_stream_files_shell_delete(self) -> None:
        c = client()
        t0 = time.monotonic()
        with c.create_vm("py-core", memory_mb=256) as vm:
            self.assertIsInstance(vm, aetherium.VM)
            self.assertEqual(vm.status, "running", vm.error)
            self.assertEqual(vm.worker_id, SERVER.worker_id)
            print("\n  create_vm (wait): %.2fs" % (time.monotonic() - t0))

            # Buffered: the exit code is a result, both streams are kept.
            ex = vm.exec("sh", ["-c", "echo out; echo err >&2; exit 3"])
            self.assertEqual((ex.status, ex.exit_code, ex.stdout, ex.stderr), ("completed", 3, "out\n", "err\n"))
            self.assertIsNotNone(ex.completed_at)

            # Streamed: the first line arrives while the command still sleeps, and bytes that are not UTF-8
            # come through intact. (The first sleep lets the stream subscribe before the first write: output
            # written before that comes from the store, which is saved every second.)
            times = {}
            got = {"stdout": b"", "stderr": b""}
            cmd = "sleep 0.5; echo first; sleep 1.2; echo second; printf '\\377\\001' >&2"
            with vm.exec_stream("sh", ["-c", cmd]) as s:
                for ch in s:
                    self.assertEqual(ch.offset, len(got[ch.stream]), "chunks follow each other without gaps")
                    got[ch.stream] += ch.data
                    for line in (b"first", b"second"):
                        if line in got["stdout"] and line not in times:
                            times[line] = time.monotonic()
            self.assertEqual(got, {"stdout": b"first\nsecond\n", "stderr": b"\xff\x01"})
            self.assertIsNotNone(s.end)
            assert s.end is not None
            self.assertEqual((s.end.status, s.end.exit_code), ("completed", 0))
            self.assertEqual(s.end.stdout_bytes, len(got["stdout"]))
            self.assertGreater(times[b"second"] - times[b"first"], 0.8, "output was streamed, not buffered")
            # The same stream replayed after the end, resumed from an offset.
            with c.stream_execution(s.execution_id, stdout_offset=6) as again:
                out = b"".join(ch.data for ch in again if ch.stream == "stdout")
            self.assertEqual(out, b"second\n")

            # 10 MB round trip: a file of known size (Content-Length) and a generator (chunked).
            data = os.urandom(10 * 1024 * 1024)
            digest = hashlib.sha256(data).hexdigest()
            with tempfile.TemporaryFile() as f:
                f.write(data)
                f.seek(0)
                t0 = time.monotonic()
                info = vm.upload("/tmp/big.bin", f, mode="0600")
                up = time.monotonic() - t0
            self.assertEqual((info.size, info.mode, info.type), (len(data), "0600", "file"))
            self.assertEqual(vm.exec("sha256sum", ["/tmp/big.bin"]).stdout.split()[0], digest)
            chunks = (data[i:i + 300_001] for i in range(0, len(data), 300_001))
            info = vm.upload("/tmp/sub/big2.bin", chunks, mkdir_parents=True)
            self.assertEqual(info.size, len(data))
            t0 = time.monotonic()
            h = hashlib.sha256()
            with vm.download("/tmp/sub/big2.bin") as d:
                self.assertEqual((d.size, d.mode), (len(data), "0644"))
                for piece in d:
                    h.update(piece)
            down = time.monotonic() - t0
            self.assertEqual(h.hexdigest(), digest)
            self.assertEqual(d.received, len(data))
            print("  10 MB upload %.2fs, download %.2fs" % (up, down))
            self.assertEqual([e.name for e in vm.list_dir("/tmp/sub").entries], ["big2.bin"])
            with self.assertRaises(ConflictError) as cm:
                vm.upload("/tmp/big.bin", b"x", overwrite=False)
            self.assertEqual(cm.exception.code, "already_exists")

            # A shell on a terminal: type `echo hi`, see `hi` on a line of its own (the terminal echoes the
            # command line too), then the exit code comes back.
            with vm.shell(rows=30, cols=100) as sh:
                self.assertTrue(sh.id.startswith("shell-"))
                sh.write("echo hi\n")
                seen = sh.expect(re.compile(rb"(?m)^hi\r?$"), timeout=15)
                self.assertIn(b"echo hi", seen)
                sh.ping(b"are you there")
                sh.write("stty size; exit 7\n")
                term = io.BytesIO()
                exit_ = sh.wait(term, timeout=15)
            self.assertEqual(exit_.exit_code, 7)
            self.assertIn(b"30 100", term.getvalue())
            self.assertEqual(sh.pongs, 1, "the server answered the ping")

            # Without a terminal: stdin, end of stdin, stderr apart, and a signal.
            with vm.shell(["sh", "-c", "tr a-z A-Z; echo done >&2; exit 2"], tty=False) as sh:
                sh.write("hello\n")
                sh.write(b"x" * 3_000_000)  # more than one message of the server's 1 MiB limit
                sh.write("\n")
                sh.close_stdin()
                out, err = io.BytesIO(), io.BytesIO()
                exit_ = sh.wait(out, err, timeout=15)
            self.assertEqual((exit_.exit_code, out.getvalue(), err.getvalue()),
                             (2, b"HELLO\n" + b"X" * 3_000_000 + b"\n", b"done\n"))
            with vm.shell(["sleep", "60"], tty=False) as sh:
                sh.signal("TERM")
                exit_ = sh.wait(timeout=15)
            self.assertEqual((exit_.exit_code, exit_.signal), (128 + 15, "SIGTERM"))
            vm_id = vm.id
        # The context manager deleted the VM (and waited for it).
        self.assertEqual(c.get_vm(vm_id).status, "deleted")
        self.assertEqual(SERVER.leftover_containers(), [])

    def test_processes_jobs_pagination_secrets(self) -> None:
        c = client()
        a = c.create_vm("py-a", memory_mb=256)
        b = c.create_vm("py-b", memory_mb=256, wait=False)
        try:
            self.assertEqual(b.status, "pending")
            # Pages of one VM each, followed to the end, give every VM once (deleted ones of other tests too).
            ids, cursor, pages = [], "", 0
            while True:
                vms, cursor = c.list_vms(limit=1, cursor=cursor)
                self.assertLessEqual(len(vms), 1)
                ids += [v.id for v in vms]
                pages += 1
                if not cursor:
                    break
            self.assertEqual(len(ids), len(set(ids)), "no VM twice")
            self.assertLessEqual({a.id, b.id}, set(ids))
            self.assertGreaterEqual(pages, 2)
            self.assertEqual(sorted(v.id for v in c.iter_vms(page_size=2)), sorted(ids))
            live = [v.id for v in c.iter_vms(status=["pending", "creating", "running"])]
            self.assertEqual(sorted(live), sorted([a.id, b.id]))

            # A background process: output by offset, a signal, its exit.
            p = a.start_process(shell="echo started; exec sleep 300", id="sleeper")
            self.assertEqual((p.id, p.state), ("sleeper", "running"))
            deadline = time.monotonic() + 15
            while a.read_process_output("sleeper").bytes != b"started\n":
                self.assertLess(time.monotonic(), deadline, "process output never came")
                time.sleep(0.1)
            a.signal_process("sleeper", "KILL")
            p = a.wait_process("sleeper", timeout=10)
            self.assertEqual((p.state, p.signal), ("exited", "SIGKILL"))
            self.assertIn("sleeper", [q.id for q in a.list_processes()])
            a.remove_process("sleeper")
            with self.assertRaises(NotFoundError) as cm:
                a.read_process_output("sleeper")
            self.assertEqual(cm.exception.code, "process_not_found")

            # A job of three commands on the second VM, once it runs; stop_on_error stops at the failing one.
            b.wait_until_running(timeout=60)
            self.assertEqual(b.status, "running")
            job = c.run_job(["echo one", ["sh", "-c", "exit 4"], "echo never"], vm_id=b.id, stop_on_error=True)
            self.assertEqual(job.status, "failed")
            self.assertEqual([e.exit_code for e in job.executions][:2], [0, 4])
            self.assertEqual(job.executions[0].stdout, "one\n")
            self.assertEqual(len([e for e in job.executions if e.stdout == "never\n"]), 0)

            # Secrets: the value is injected, scrubbed from the output, and never returned.
            name = "PY_SDK_TOKEN"
            value = "tok-" + uuid.uuid4().hex
            s, created = c.put_secret(name, value)
            self.assertTrue(created)
            self.assertEqual(s.name, name)
            self.assertNotIn(value, repr(c.list_secrets()))
            self.assertIn(name, [x.name for x in c.list_secrets()])
            ex = a.exec("sh", ["-c", "echo $T"], secret_env={"T": name})
            self.assertEqual(ex.stdout, "***\n")
            self.assertFalse(c.put_secret(name, value + "2")[1], "a replaced secret is not new")
            c.delete_secret(name)
            self.assertNotIn(name, [x.name for x in c.list_secrets()])
            with self.assertRaises(ValidationError):
                c.put_secret("bad name", "v")
        finally:
            a.delete()
            c.delete_vm(b.id)

    def test_idempotency_key(self) -> None:
        c = client()
        key = str(uuid.uuid4())
        vm = c.create_vm("py-idem", memory_mb=256, idempotency_key=key)
        try:
            again = c.create_vm("py-idem", memory_mb=256, idempotency_key=key)
            self.assertEqual(again.id, vm.id, "a retried create makes one VM")
            with self.assertRaises(ValidationError) as cm:
                c.create_vm("py-idem-other", idempotency_key=key)
            self.assertEqual(cm.exception.code, "idempotency_key_reused")
            ekey = str(uuid.uuid4())
            first = vm.exec("sh", ["-c", "echo run >> /tmp/count; wc -l < /tmp/count"], idempotency_key=ekey)
            second = vm.exec("sh", ["-c", "echo run >> /tmp/count; wc -l < /tmp/count"], idempotency_key=ekey)
            self.assertEqual(first.id, second.id)
            self.assertEqual(vm.read_file("/tmp/count"), b"run\n", "the command ran once")
        finally:
            vm.delete()


class Contract(unittest.TestCase):
    """The SDK's types against the server's OpenAPI document (GET /api/v1/openapi.json): no field the server
    does not have, none of its fields missing; request bodies use only the schema's properties."""

    def test_models_match_the_schemas(self) -> None:
        import dataclasses

        from aetherium import _wire, models
        from aetherium.client import _job_body, _process_body, _run_body

        schemas = harness.openapi(SERVER)["components"]["schemas"]
        checked = 0
        for name in models.__all__ + ["VMData"]:
            cls = getattr(models, name)
            if not (isinstance(cls, type) and issubclass(cls, models.Model)):
                continue
            schema = schemas["VM" if name == "VMData" else name]
            fields = {f.name for f in dataclasses.fields(cls) if f.name != "raw" and not f.name.startswith("_")}
            self.assertEqual(fields, set(schema.get("properties", {})), name)
            checked += 1
        self.assertGreater(checked, 30)
        bodies = {
            "CreateVMRequest": _wire.create_vm_body("n", 1, 2, "i", "low", {"a": "b"}, {"egress": {}}, ["jq"],
                                                    {"jq": "1"}, 60, 30, "pause"),
            "ExecuteRequest": _wire.execute_body("c", ["a"], {"A": "1"}, {"B": "S"}, "/", "u", 5, "high"),
            "CreateJobRequest": _job_body(["x"], "v", {"name": "n"}, True, True, "low"),
            "JobCommand": _wire.job_command(aetherium.JobCommand("c", ["a"], {"A": "1"}, {"B": "S"}, "/", "u", 3)),
            "StartProcessRequest": _process_body("c", ["a"], "s", {"A": "1"}, "/", "u", 3, "id"),
            "CreateRunRequest": _run_body("u", "p", "r", "s", "a", "m", 1, 2, ["t"], {"A": "1"}, {"B": "S"},
                                          {"id": "v"}, True, "b", "low"),
        }
        for name, body in bodies.items():  # every option given: the body has exactly the schema's properties
            self.assertEqual(set(body), set(schemas[name]["properties"]), name)


class Errors(unittest.TestCase):
    def test_typed_errors(self) -> None:
        c = client()
        with self.assertRaises(NotFoundError) as cm:
            c.get_vm("no-such-vm")
        e = cm.exception
        self.assertEqual((e.status, e.code), (404, "not_found"))
        self.assertIn("no-such-vm", e.message)
        self.assertRegex(e.request_id, r"^[0-9a-f-]{36}$")
        self.assertIsInstance(e, aetherium.AetheriumError)

        before = [v.id for v in c.iter_vms()]
        with self.assertRaises(ValidationError) as cm2:
            c.create_vm("py-bad", vcpus=99)
        self.assertEqual((cm2.exception.status, cm2.exception.code), (422, "validation_failed"))
        self.assertIn("vcpus", cm2.exception.message)
        with self.assertRaises(ValidationError):
            c.create_vm("not a valid name!")
        self.assertEqual([v.id for v in c.iter_vms()], before, "bad input changes nothing")

        with self.assertRaises(UnauthorizedError) as cm3:
            aetherium.Client(SERVER.url, "ae_wrong").list_vms()
        self.assertEqual(cm3.exception.status, 401)
        with self.assertRaises(ValidationError) as cm4:
            c.list_vms(limit=100000)
        self.assertIn("limit", cm4.exception.message)
        with self.assertRaises(ValueError):
            aetherium.Client("ftp://x", "k")
        with self.assertRaises(ValueError):
            c.create_vm("x", idempotency_key="bad\nkey")

        # A wait that ends first: the error has the VM, whose creation goes on; delete it.
        with self.assertRaises(aetherium.WaitTimeoutError) as cm5:
            c.create_vm("py-slow", memory_mb=256, timeout=0.01)
        self.assertIsInstance(cm5.exception, TimeoutError)
        self.assertTrue(cm5.exception.task_id)
        slow = cm5.exception.vm
        self.assertIsNotNone(slow)
        self.assertEqual(c.get_task(cm5.exception.task_id).vm_id, slow.id)
        slow.delete()

    def test_errors_of_a_vm(self) -> None:
        c = client()
        vm = c.create_vm("py-err", memory_mb=256)
        with self.assertRaises(NotFoundError) as cm:
            vm.read_file("/no/such/file")
        self.assertEqual(cm.exception.code, "path_not_found")
        with self.assertRaises(ValidationError):
            vm.stat("relative/path")
        with self.assertRaises(ValidationError) as cm0:
            vm.add_tools(["no-such-tool-xyz"])
        self.assertIn("no-such-tool-xyz", cm0.exception.message)
        acc = vm.execute("true")
        with self.assertRaises(BadRequestError) as cm1:
            c.stream_execution(acc.execution_id, stdout_offset=-1)
        self.assertEqual(cm1.exception.status, 400)
        ex = vm.exec("sleep", ["30"], timeout_seconds=1)
        self.assertTrue(ex.timed_out)
        self.assertNotEqual(ex.exit_code, 0)
        vm.delete()
        with self.assertRaises(ConflictError) as cm2:
            vm.exec("true")
        self.assertEqual(cm2.exception.code, "vm_not_running")
        with self.assertRaises(ConflictError) as cm3:
            vm.shell()
        self.assertEqual(cm3.exception.code, "vm_not_running")
        with self.assertRaises(ConflictError) as cm4:
            vm.delete()
        self.assertEqual(cm4.exception.code, "conflict")
        with vm:  # exiting deletes again: a VM deleted already is what the exit wants, not an error
            pass

    def test_runs(self) -> None:
        """Runs need a microVM backend; on Docker a run is refused without its secret, and with one it is
        accepted and ends failed, which still exercises start, the transcript stream, the run and its diff."""
        c = client()
        with self.assertRaises(ValidationError) as cm:
            c.create_run("https://github.com/octocat/Hello-World", "say hi")
        self.assertIn("ANTHROPIC_API_KEY", cm.exception.message)
        self.assertIn("claude-code", [a.name for a in c.list_agents()])
        c.put_secret("ANTHROPIC_API_KEY", "sk-not-a-real-key")
        try:
            run = c.create_run("https://github.com/octocat/Hello-World", "say hi", vm={"memory_mb": 256})
            self.assertEqual(run.status, "pending")
            with c.stream_run(run.id) as events:
                seen = [ev.type for ev in events]
            self.assertEqual(seen[-1], "end")
            assert events.end is not None
            self.assertEqual(events.end.status, "failed")
            self.assertIn("credential proxy", events.end.error)
            self.assertEqual(c.get_run(run.id).status, "failed")
            self.assertEqual(c.run_diff(run.id), b"")
            self.assertIn(run.id, [r.id for r in c.list_runs().runs])
            with self.assertRaises(ConflictError):
                c.cancel_run(run.id)
            with self.assertRaises(NotFoundError):
                c.get_run(str(uuid.uuid4()))
        finally:
            c.delete_secret("ANTHROPIC_API_KEY")


if __name__ == "__main__":
    unittest.main()
