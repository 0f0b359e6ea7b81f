/** One server-sent event. */
export interface ServerSentEvent {
  /** The event's type ("message" when none was given). */
  event: string;
  /** Its data lines joined with "\n". */
  data: string;
  /** Its id, when it had one. */
  id: string | undefined;
}

/** Bounds one event; the server sends at most 32 KiB of output (256 KiB of transcript) per event. */
const MAX_EVENT_CHARS = 8 << 20;

/**
 * Parses a text/event-stream (the WHATWG "server-sent events" format) as it arrives. Comments (the server's
 * `: ping`) and retry fields are skipped; lines may end with "\n", "\r\n" or "\r". A partly received event at the
 * end of the input is dropped, as the format says. The stream is cancelled when the consumer stops early.
 */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let event = "";
  let id: string | undefined;
  let data: string[] = [];
  let dataChars = 0;
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) {
        finished = true;
        return;
      }
      buf += decoder.decode(value, { stream: true });
      for (;;) {
        const i = buf.search(/[\r\n]/);
        if (i < 0) break;
        // A "\r" at the very end may be followed by the "\n" of the same line ending in the next chunk.
        if (buf[i] === "\r" && i === buf.length - 1) break;
        const line = buf.slice(0, i);
        buf = buf.slice(buf[i] === "\r" && buf[i + 1] === "\n" ? i + 2 : i + 1);
        if (line === "") {
          if (data.length > 0) yield { event: event || "message", data: data.join("\n"), id };
          event = "";
          data = [];
          dataChars = 0;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "id") id = value;
        else if (field === "data") {
          data.push(value);
          dataChars += value.length;
        }
      }
      if (buf.length + dataChars > MAX_EVENT_CHARS) {
        throw new Error(`server-sent event larger than ${MAX_EVENT_CHARS} characters`);
      }
    }
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
