// The server-sent events parser (dist/sse.js) on the format's corner cases: line endings split across reads,
// comments, multi-line data, ids, and a last event cut short (dropped, as the WHATWG format says).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readEvents } from "../dist/sse.js";

function streamOf(...pieces) {
  const enc = new TextEncoder();
  return new ReadableStream({
    start(ctl) {
      for (const p of pieces) ctl.enqueue(typeof p === "string" ? enc.encode(p) : p);
      ctl.close();
    },
  });
}

async function all(stream) {
  const out = [];
  for await (const ev of readEvents(stream)) out.push(ev);
  return out;
}

test("events, comments, ids and line endings", async () => {
  const evs = await all(
    streamOf(": execution 1\n\n", "event: stdout\r", "\ndata: {\"a\":1}\r\n\r", "\n", "id: 7\nevent: x\ndata: l1\ndata: l2\r\r", "data:no-space\n\n"),
  );
  assert.deepEqual(evs, [
    { event: "stdout", data: '{"a":1}', id: undefined },
    { event: "x", data: "l1\nl2", id: "7" },
    { event: "message", data: "no-space", id: "7" },
  ]);
});

test("a character split between reads, and a last event cut short", async () => {
  const bytes = new TextEncoder().encode("data: é€\n\ndata: never finished\n");
  const evs = await all(streamOf(bytes.subarray(0, 7), bytes.subarray(7, 9), bytes.subarray(9)));
  assert.deepEqual(evs, [{ event: "message", data: "é€", id: undefined }]);
});

test("stopping early cancels the stream", async () => {
  let cancelled = false;
  const s = new ReadableStream({
    pull(ctl) {
      ctl.enqueue(new TextEncoder().encode("data: x\n\n"));
    },
    cancel() {
      cancelled = true;
    },
  });
  for await (const ev of readEvents(s)) {
    assert.equal(ev.data, "x");
    break;
  }
  assert.ok(cancelled);
});
