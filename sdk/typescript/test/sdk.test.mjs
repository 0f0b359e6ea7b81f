// The SDK against a real `aetherium serve` on the Docker backend (started by harness.mjs): VMs, executions
// buffered and streamed, a 10 MB file round trip, processes, shells, jobs, secrets, typed errors, idempotent
// retries, time limits and aborts, and runs as far as the Docker backend takes them (it refuses them at once).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { inspect } from "node:util";
import WebSocket from "ws";

import {
  Aetherium,
  AetheriumError,
  BadRequestError,
  ConflictError,
  NotFoundError,
  TaskError,
  UnauthorizedError,
  ValidationError,
  WaitError,
  TimeoutError,
  AbortError,
  isCode,
  isNotFound,
  Processes,
} from "../dist/index.js";
import { dockerAvailable, startServe } from "./harness.mjs";

const requireServices = process.env.AETHERIUM_REQUIRE_SERVICES === "1";
const haveDocker = dockerAvailable();
if (!haveDocker) {
  const msg = "SKIPPING the SDK tests: no Docker engine answers (`docker version` failed)";
  if (requireServices) throw new Error(msg.replace("SKIPPING", "FAILING") + " and AETHERIUM_REQUIRE_SERVICES=1");
  console.error(`NOTE: ${msg}`);
}

const text = (b) => new TextDecoder().decode(b);
const sha256 = (b) => createHash("sha256").update(b).digest("hex");

describe("client construction", () => {
  test("refuses bad server URLs and keys, never shows the key", () => {
    assert.throws(() => new Aetherium({ baseUrl: "" }), AetheriumError);
    assert.throws(() => new Aetherium({ baseUrl: "ftp://host" }), /want http/);
    assert.throws(() => new Aetherium({ baseUrl: "http://h/?x=1" }), /query or fragment/);
    assert.throws(() => new Aetherium({ baseUrl: "http://h", apiKey: "ae_x y" }), /whitespace/);
    const c = new Aetherium({ baseUrl: "http://127.0.0.1:1/api/v1/", apiKey: "ae_secretsecret" });
    assert.equal(c.baseUrl, "http://127.0.0.1:1");
    assert.ok(!String(c).includes("secret") && !JSON.stringify(c).includes("secret"));
    assert.ok(!inspect(c, { depth: 10, showHidden: true }).includes("secret"));
    assert.ok(!inspect(c.vms, { depth: 10, showHidden: true }).includes("secret"), "nor through a group");
  });

  test("a server that does not answer is a ConnectionError", async () => {
    const c = new Aetherium({ baseUrl: "http://127.0.0.1:1", apiKey: "k", timeoutMs: 5000 });
    await assert.rejects(c.health(), (e) => e.name === "ConnectionError" && e.status === 0);
  });
});

describe("against aetherium serve (Docker backend)", { skip: !haveDocker && "no Docker engine" }, () => {
  /** @type {Awaited<ReturnType<typeof startServe>>} */
  let srv;
  /** @type {Aetherium} */
  let ae;
  let vm;

  before(async () => {
    srv = await startServe();
    ae = new Aetherium({ baseUrl: srv.baseUrl, apiKey: srv.apiKey, WebSocket, retries: 2 });
  });

  after(async () => {
    await srv?.stop();
  });

  test("health, ready and status", async () => {
    const h = await ae.health();
    assert.equal(h.status, "ok");
    assert.equal((await ae.ready()).status, "ready");
    assert.ok((await ae.status()).workers.live >= 1);
  });

  test("typed errors: unauthorized, not found, bad input that changes nothing", async () => {
    const anon = new Aetherium({ baseUrl: srv.baseUrl, apiKey: "ae_wrongkey_" + "x".repeat(43) });
    await assert.rejects(anon.vms.list(), (e) => {
      assert.ok(e instanceof UnauthorizedError, e);
      assert.equal(e.status, 401);
      assert.equal(e.code, "unauthorized");
      assert.ok(e.requestId, "the request id is kept");
      return true;
    });

    const missing = randomUUID();
    await assert.rejects(ae.vms.get(missing), (e) => {
      assert.ok(e instanceof NotFoundError && isNotFound(e) && isCode(e, "not_found"), e);
      assert.equal(e.status, 404);
      assert.ok(e.requestId);
      return true;
    });
    await assert.rejects(ae.executions.get(missing), NotFoundError);
    await assert.rejects(ae.runs.get(missing), NotFoundError);
    await assert.rejects(ae.runs.diff(missing), NotFoundError);

    const before = await ae.vms.list();
    await assert.rejects(ae.vms.create({ name: "not a valid name!" }), (e) => {
      assert.ok(e instanceof ValidationError, e);
      assert.equal(e.code, "validation_failed");
      assert.match(e.message, /name/);
      return true;
    });
    await assert.rejects(ae.vms.create({ name: "ok", vcpus: 1000 }), (e) => e instanceof ValidationError && /vcpus/.test(e.message));
    // An unknown field is refused by the server's strict JSON decoding.
    await assert.rejects(ae.vms.create({ name: "ok", vcpu: 1 }), (e) => e instanceof BadRequestError && e.code === "invalid_json");
    await assert.rejects(ae.runs.create({ repo: { url: "https://github.com/org/repo" }, prompt: "  " }), ValidationError);
    await assert.rejects(ae.secrets.put("1bad-name", "v"), ValidationError);
    const afterList = await ae.vms.list();
    assert.deepEqual(afterList.vms.map((v) => v.id), before.vms.map((v) => v.id), "bad input created nothing");
  });

  test("create with wait, list with pagination, get", async () => {
    const [a, b] = await Promise.all([
      ae.vms.createAndWait({ name: "sdk-ts-a", memory_mb: 512 }),
      ae.vms.createAndWait({ name: "sdk-ts-b" }),
    ]);
    vm = a;
    assert.equal(a.status, "running");
    assert.equal(a.worker_id, srv.workerId);
    assert.equal(b.status, "running");

    // A duplicate name is a conflict.
    await assert.rejects(ae.vms.create({ name: "sdk-ts-a" }), (e) => e instanceof ConflictError && e.code === "conflict");

    const page = await ae.vms.list({ limit: 1, status: ["running"] });
    assert.equal(page.vms.length, 1);
    assert.ok(page.next_cursor, "a full page has a cursor");
    const seen = [];
    for await (const v of ae.vms.listAll({ limit: 1, status: ["running"] })) seen.push(v.id);
    assert.deepEqual(new Set(seen), new Set([a.id, b.id]));
    assert.equal(seen.length, 2);

    assert.equal((await ae.vms.get(a.id)).name, "sdk-ts-a");
    const del = await ae.vms.deleteAndWait(b.id);
    assert.equal(del.status, "completed");
    assert.equal((await ae.vms.get(b.id)).status, "deleted");
  });

  test("exec buffered: output and exit codes are results", async () => {
    const hello = await ae.executions.run(vm.id, { command: "echo", args: ["hello"] });
    assert.equal(hello.status, "completed");
    assert.equal(hello.exit_code, 0);
    assert.equal(hello.stdout, "hello\n");
    const three = await ae.executions.run(vm.id, { command: "sh", args: ["-c", "echo oops >&2; exit 3"] });
    assert.equal(three.exit_code, 3);
    assert.equal(three.stderr, "oops\n");
    const list = await ae.executions.list(vm.id, { limit: 1 });
    assert.equal(list.executions[0].id, three.id);
  });

  test("exec streamed: chunks arrive live, in order, with the end", async () => {
    const chunks = [];
    const t0 = Date.now();
    const res = await ae.executions.runStreamed(
      vm.id,
      { command: "sh", args: ["-c", "sleep 0.5; echo one; sleep 1.5; echo two >&2; printf 'x\\377y'"] },
      {
        onStdout: (d, offset) => chunks.push({ s: "stdout", d, offset, at: Date.now() - t0 }),
        onStderr: (d, offset) => chunks.push({ s: "stderr", d, offset, at: Date.now() - t0 }),
      },
    );
    const end = Date.now() - t0;
    assert.equal(res.status, "completed");
    assert.equal(res.exit_code, 0);
    const out = Buffer.concat(chunks.filter((c) => c.s === "stdout").map((c) => c.d));
    const err = Buffer.concat(chunks.filter((c) => c.s === "stderr").map((c) => c.d));
    assert.deepEqual(out, Buffer.from([..."one\n"].map((c) => c.charCodeAt(0)).concat([0x78, 0xff, 0x79])), "bytes that are not UTF-8 survive");
    assert.equal(text(err), "two\n");
    assert.equal(res.stdout_bytes, out.length);
    // The command writes its first line after a pause, once the stream is surely open: output written before the
    // subscription is live comes from the store, which is saved every second (docs/api.md).
    const first = chunks.find((c) => c.s === "stdout");
    assert.equal(first.offset, 0);
    assert.ok(end - first.at > 1000, `the first line came live (${first.at} ms), before the end (${end} ms)`);

    // The stream of an execution that has ended replays it; breaking out of the loop closes it.
    const replay = [];
    for await (const ev of ae.executions.stream(res.executionId)) replay.push(ev.type);
    assert.equal(replay.at(-1), "end");
    assert.ok(replay.includes("stdout") && replay.includes("stderr"));
    // Resuming at offsets skips what was received already.
    const resumed = [];
    for await (const ev of ae.executions.stream(res.executionId, { stdoutOffset: 4, stderrOffset: 4 })) {
      if (ev.type !== "end") resumed.push([ev.type, ev.offset, [...ev.data]]);
    }
    assert.deepEqual(resumed, [["stdout", 4, [0x78, 0xff, 0x79]]]);
    await assert.rejects(async () => {
      for await (const _ of ae.executions.stream(randomUUID())) void _;
    }, NotFoundError);
  });

  test("idempotent retries: a lost answer is retried and the command runs once", async () => {
    let posts = 0;
    let replayed = "";
    // A fetch whose first POST reaches the server but whose answer is lost, as on a connection cut after sending.
    const lossy = async (url, init) => {
      const res = await fetch(url, init);
      if (init.method === "POST" && String(url).includes("/execute")) {
        posts++;
        if (posts === 1) {
          await res.body?.cancel();
          throw new TypeError("fetch failed: the answer was lost");
        }
        replayed = res.headers.get("idempotent-replayed") ?? "";
      }
      return res;
    };
    const c = new Aetherium({ baseUrl: srv.baseUrl, apiKey: srv.apiKey, fetch: lossy, retries: 2 });
    const exec = await c.executions.run(vm.id, { command: "sh", args: ["-c", "echo ran >> /tmp/once; wc -l < /tmp/once"] });
    assert.equal(posts, 2, "sent twice");
    assert.equal(replayed, "true", "the second answer is the first one's, replayed");
    assert.equal(exec.stdout.trim(), "1");
    const count = await ae.executions.run(vm.id, { command: "sh", args: ["-c", "wc -l < /tmp/once"] });
    assert.equal(count.stdout.trim(), "1", "the command ran once");

    // An answer whose body breaks while it is read is retried too, and replayed.
    let cut = 0;
    const cutting = async (url, init) => {
      const res = await fetch(url, init);
      if (init.method === "POST" && String(url).includes("/execute") && cut++ === 0) {
        const broken = new ReadableStream({ pull: (ctl) => ctl.error(new TypeError("terminated")) });
        await res.body?.cancel();
        return new Response(broken, { status: res.status, headers: res.headers });
      }
      return res;
    };
    const c2 = new Aetherium({ baseUrl: srv.baseUrl, apiKey: srv.apiKey, fetch: cutting, retries: 1 });
    const again = await c2.executions.run(vm.id, { command: "sh", args: ["-c", "echo ran >> /tmp/twice; wc -l < /tmp/twice"] });
    assert.equal(cut, 2);
    assert.equal(again.stdout.trim(), "1", "the command ran once");
    // Without retries the broken answer is a ConnectionError, with no second request.
    cut = 0;
    const c3 = new Aetherium({ baseUrl: srv.baseUrl, apiKey: srv.apiKey, fetch: cutting });
    await assert.rejects(c3.executions.start(vm.id, { command: "true" }), (e) => e.name === "ConnectionError");
    assert.equal(cut, 1);

    // The caller's own key: the same key and request get the same execution.
    const key = randomUUID();
    const a = await ae.executions.start(vm.id, { command: "true" }, { idempotencyKey: key });
    const b = await ae.executions.start(vm.id, { command: "true" }, { idempotencyKey: key });
    assert.equal(a.execution_id, b.execution_id);
    await assert.rejects(ae.executions.start(vm.id, { command: "false" }, { idempotencyKey: key }), (e) =>
      isCode(e, "idempotency_key_reused"),
    );
  });

  test("time limits and aborts", async () => {
    await assert.rejects(ae.executions.run(vm.id, { command: "sleep", args: ["3"] }, { timeoutMs: 700 }), (e) => {
      assert.ok(e instanceof WaitError, e);
      assert.ok(e.taskId);
      assert.ok(e.cause instanceof TimeoutError);
      return true;
    });
    const ctl = new AbortController();
    const p = ae.executions.run(vm.id, { command: "sleep", args: ["3"] }, { signal: ctl.signal });
    setTimeout(() => ctl.abort(), 300);
    await assert.rejects(p, (e) => e instanceof WaitError || e instanceof AbortError);
    // A plain call whose answer is slower than its limit: a network that holds every answer 500 ms.
    const slowFetch = async (url, init) => {
      const res = await fetch(url, init);
      await new Promise((resolve, reject) => {
        const t = setTimeout(resolve, 500);
        init.signal?.addEventListener("abort", () => (clearTimeout(t), reject(init.signal.reason)), { once: true });
      });
      return res;
    };
    const slow = new Aetherium({ baseUrl: srv.baseUrl, apiKey: srv.apiKey, fetch: slowFetch, timeoutMs: 100 });
    await assert.rejects(slow.vms.list(), (e) => e instanceof TimeoutError && /timed out after 100 ms/.test(e.message));
    assert.ok((await slow.vms.list({ timeoutMs: 5000 })).vms.length > 0, "a per-call limit replaces the client's");
    // An aborted stream stops.
    const acc = await ae.executions.start(vm.id, { command: "sh", args: ["-c", "echo a; sleep 5"] });
    const ctl2 = new AbortController();
    const got = [];
    await assert.rejects(async () => {
      for await (const ev of ae.executions.stream(acc.execution_id, { signal: ctl2.signal })) {
        got.push(ev.type);
        ctl2.abort();
      }
    }, (e) => e instanceof AbortError || e.name === "AbortError");
    assert.deepEqual(got, ["stdout"]);
  });

  test("files: a 10 MB streamed round trip, equal by hash", async () => {
    const size = 10 * 1024 * 1024;
    const data = randomBytes(size);
    const want = sha256(data);
    // Streamed in 64 KiB pieces, never as one body.
    let off = 0;
    const stream = new ReadableStream({
      pull(ctl) {
        if (off >= size) return ctl.close();
        ctl.enqueue(new Uint8Array(data.subarray(off, off + 65536)));
        off += 65536;
      },
    });
    const t0 = Date.now();
    const info = await ae.files.upload(vm.id, "/tmp/sdk/big.bin", stream, { mode: "0640", mkdirParents: true });
    const up = Date.now() - t0;
    assert.equal(info.size, size);
    assert.equal(info.mode, "0640");
    assert.equal(info.type, "file");

    const inVM = await ae.executions.run(vm.id, { command: "sha256sum", args: ["/tmp/sdk/big.bin"] });
    assert.equal(inVM.stdout.split(" ")[0], want, "the VM has the same bytes");

    const t1 = Date.now();
    const dl = await ae.files.download(vm.id, "/tmp/sdk/big.bin");
    assert.equal(dl.size, size);
    assert.equal(dl.mode, "0640");
    const h = createHash("sha256");
    let n = 0;
    for await (const chunk of dl.body) {
      h.update(chunk);
      n += chunk.byteLength;
    }
    const down = Date.now() - t1;
    assert.equal(n, size);
    assert.equal(h.digest("hex"), want);
    console.log(`# 10 MB upload ${up} ms, download ${down} ms`);

    // Small bodies of other kinds, and the rest of the file routes.
    await ae.files.upload(vm.id, "/tmp/sdk/a.txt", "hello file\n");
    await ae.files.upload(vm.id, "/tmp/sdk/b.bin", new Uint8Array([1, 2, 3]), { overwrite: false });
    await assert.rejects(ae.files.upload(vm.id, "/tmp/sdk/b.bin", "x", { overwrite: false }), (e) => isCode(e, "already_exists"));
    assert.equal(await (await ae.files.download(vm.id, "/tmp/sdk/a.txt")).text(), "hello file\n");
    assert.deepEqual([...(await (await ae.files.download(vm.id, "/tmp/sdk/b.bin")).bytes())], [1, 2, 3]);
    assert.equal((await ae.files.stat(vm.id, "/tmp/sdk/a.txt")).size, 11);
    await ae.files.mkdir(vm.id, { path: "/tmp/sdk/dir/sub", parents: true });
    const ls = await ae.files.list(vm.id, "/tmp/sdk");
    assert.deepEqual(ls.entries.map((e) => e.name), ["a.txt", "b.bin", "big.bin", "dir"]);
    await assert.rejects(ae.files.remove(vm.id, "/tmp/sdk/dir"), (e) => isCode(e, "directory_not_empty"));
    await ae.files.remove(vm.id, "/tmp/sdk/dir", { recursive: true });
    await assert.rejects(ae.files.download(vm.id, "/tmp/sdk/dir"), (e) => e instanceof NotFoundError && e.code === "path_not_found");
    await assert.rejects(ae.files.stat(vm.id, "relative/path"), ValidationError);
  });

  test("processes: start, output, signal, wait, remove", async () => {
    const p = await ae.processes.start(vm.id, { shell: "echo started; exec sleep 300", id: "sdk-sleeper" });
    assert.equal(p.id, "sdk-sleeper");
    assert.equal(p.state, "running");
    await assert.rejects(ae.processes.start(vm.id, { shell: "true", id: "sdk-sleeper" }), (e) => isCode(e, "already_exists"));
    let out;
    for (let i = 0; i < 100; i++) {
      out = await ae.processes.output(vm.id, p.id);
      if (out.data === "started\n") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(text(Processes.bytes(out)), "started\n");
    assert.ok((await ae.processes.list(vm.id)).some((x) => x.id === p.id));
    await ae.processes.signal(vm.id, p.id, "TERM");
    const done = await ae.processes.wait(vm.id, p.id, { waitMs: 10_000 });
    assert.equal(done.state, "exited");
    assert.match(done.signal, /^(SIG)?TERM$/);
    await ae.processes.remove(vm.id, p.id);
    await assert.rejects(ae.processes.output(vm.id, p.id), (e) => isCode(e, "process_not_found"));
  });

  test("shells: a terminal session, stdin and signals without one, refused handshakes", async () => {
    let screen = "";
    const decoder = new TextDecoder();
    const sh = await ae.shells.open(vm.id, { rows: 30, cols: 100, onStdout: (d) => (screen += decoder.decode(d, { stream: true })) });
    assert.match(sh.id, /^shell-/);
    sh.write("echo hi\n");
    for (let i = 0; i < 100 && !/(^|\n)hi\r?\n/.test(screen); i++) await new Promise((r) => setTimeout(r, 50));
    assert.match(screen, /(^|\n)hi\r?\n/, `the terminal shows hi: ${JSON.stringify(screen)}`);
    sh.resize(40, 120);
    sh.write("stty size; exit 7\n");
    const exit = await sh.wait();
    assert.equal(exit.exitCode, 7);
    assert.match(screen, /40 120/);

    // Without a terminal: stdin to EOF, stderr apart.
    let out = "";
    let err = "";
    const cat = await ae.shells.open(vm.id, {
      tty: false,
      command: ["sh", "-c", "cat; echo done >&2"],
      onStdout: (d) => (out += text(d)),
      onStderr: (d) => (err += text(d)),
    });
    cat.write("line 1\n");
    cat.write(new TextEncoder().encode("line 2\n"));
    cat.closeStdin();
    assert.equal((await cat.wait()).exitCode, 0);
    assert.equal(out, "line 1\nline 2\n");
    assert.equal(err, "done\n");

    // A signal ends a command.
    const sleeper = await ae.shells.open(vm.id, { tty: false, command: ["sleep", "100"] });
    sleeper.signal("INT");
    const ended = await sleeper.wait();
    assert.match(ended.signal, /^(SIG)?INT$/);
    assert.notEqual(ended.exitCode, 0);

    await assert.rejects(ae.shells.open(vm.id, { signal: AbortSignal.abort() }), AbortError);
    // Aborting a session kills its command.
    const ctl = new AbortController();
    const long = await ae.shells.open(vm.id, { tty: false, command: ["sleep", "100"], signal: ctl.signal });
    assert.ok((await ae.processes.list(vm.id)).some((p) => p.id === long.id && p.attached && p.state === "running"));
    ctl.abort();
    await assert.rejects(long.wait(), AbortError);
    for (let i = 0; i < 50 && (await ae.processes.list(vm.id)).some((p) => p.id === long.id && p.state === "running"); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(!(await ae.processes.list(vm.id)).some((p) => p.id === long.id && p.state === "running"), "the command was killed");

    await assert.rejects(ae.shells.open(randomUUID()), (e) => e instanceof NotFoundError && e.status === 404);
    const nokey = new Aetherium({ baseUrl: srv.baseUrl, apiKey: "ae_wrongkey_" + "x".repeat(43), WebSocket });
    await assert.rejects(nokey.shells.open(vm.id), UnauthorizedError);
    const nows = new Aetherium({ baseUrl: srv.baseUrl, apiKey: srv.apiKey });
    if (!globalThis.WebSocket) await assert.rejects(nows.shells.open(vm.id), /need a WebSocket/);
  });

  test("jobs: several commands in order", async () => {
    const job = await ae.jobs.runAndWait({
      vm_id: vm.id,
      commands: [{ command: "echo", args: ["first"] }, { command: "sh", args: ["-c", "echo second; exit 4"] }],
    });
    assert.equal(job.status, "completed");
    assert.deepEqual(job.executions.map((e) => [e.stdout, e.exit_code]), [["first\n", 0], ["second\n", 4]]);
    assert.equal((await ae.jobs.get(job.id)).id, job.id);
  });

  test("secrets: put, list without values, injected and scrubbed, delete", async () => {
    const value = "sdk-ts-" + randomBytes(12).toString("hex");
    const made = await ae.secrets.put("SDK_TS_TOKEN", value);
    assert.equal(made.created, true);
    assert.ok(!JSON.stringify(made).includes(value));
    assert.equal((await ae.secrets.put("SDK_TS_TOKEN", value + "2")).created, false);
    const list = await ae.secrets.list();
    assert.ok(list.some((s) => s.name === "SDK_TS_TOKEN"));
    assert.ok(!JSON.stringify(list).includes(value));
    const exec = await ae.executions.run(vm.id, { command: "sh", args: ["-c", 'echo "[$T]"'], secret_env: { T: "SDK_TS_TOKEN" } });
    assert.equal(exec.stdout, "[***]\n", "the value reached the command and was scrubbed from its output");
    await ae.secrets.delete("SDK_TS_TOKEN");
    await assert.rejects(ae.secrets.delete("SDK_TS_TOKEN"), NotFoundError);
  });

  test("runs: start, the transcript stream, get, diff, cancel (a run the Docker backend refuses)", async () => {
    // The Docker backend has no credential proxy: the worker ends the run at once, before any clone or model
    // request, with an end event saying why. That is a real run's lifecycle without an agent or a network.
    await ae.secrets.put("ANTHROPIC_API_KEY", "sk-ant-not-a-real-key-" + randomBytes(8).toString("hex"));
    try {
      const key = randomUUID();
      const req = { repo: { url: "https://github.com/aetherium/example" }, prompt: "say hi" };
      const acc = await ae.runs.create(req, { idempotencyKey: key });
      assert.equal(acc.run.agent, "claude-code");
      assert.equal((await ae.runs.create(req, { idempotencyKey: key })).run.id, acc.run.id, "a retried create starts one run");
      const events = [];
      const end = await ae.runs.follow(acc.run.id, (e) => events.push(e), { signal: AbortSignal.timeout(60_000) });
      assert.equal(end.status, "failed");
      assert.match(end.error, /credential proxy/);
      assert.deepEqual(events.map((e) => e.seq), events.map((_, i) => i + 1), "seqs 1, 2, 3... without gaps");
      assert.equal(events.at(-1).type, "end");
      // The stream of an ended run replays the same transcript.
      const replay = [];
      for await (const e of ae.runs.stream(acc.run.id)) replay.push(e.seq);
      assert.deepEqual(replay, events.map((e) => e.seq));
      // Resuming after a seq (Last-Event-ID) gives only what came after it.
      const tail = [];
      for await (const e of ae.runs.stream(acc.run.id, { after: events.length - 1 })) tail.push(e.seq);
      assert.deepEqual(tail, [events.length]);
      const run = await ae.runs.get(acc.run.id);
      assert.equal(run.status, "failed");
      assert.equal(await ae.runs.diff(acc.run.id), "");
      await assert.rejects(ae.runs.cancel(acc.run.id), (e) => e instanceof ConflictError && e.code === "conflict");
      const failed = await ae.runs.list({ status: ["failed"] });
      assert.ok(failed.runs.some((r) => r.id === acc.run.id));
      assert.equal((await ae.runs.list({ status: ["running"] })).runs.length, 0);
      assert.ok((await ae.agents.list()).some((a) => a.name === "claude-code"));
    } finally {
      await ae.secrets.delete("ANTHROPIC_API_KEY");
    }
  });

  test("delete with wait; a deleted VM refuses work", async () => {
    const task = await ae.vms.deleteAndWait(vm.id);
    assert.equal(task.status, "completed");
    assert.equal((await ae.vms.get(vm.id)).status, "deleted");
    await assert.rejects(ae.vms.delete(vm.id), ConflictError);
    await assert.rejects(ae.executions.start(vm.id, { command: "true" }), (e) => isCode(e, "vm_not_running"));
    await assert.rejects(ae.files.stat(vm.id, "/"), (e) => e instanceof ConflictError && e.code === "vm_not_running");
  });
});
