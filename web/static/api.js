// The API client of the dashboard: the key lives in sessionStorage (gone with the tab) and goes as a Bearer header.
const KEY = 'aetherium.apiKey';
export const BASE = '/api/v1';

export const getKey = () => sessionStorage.getItem(KEY) || '';
export const setKey = (k) => sessionStorage.setItem(KEY, k);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class APIError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

// Handlers of a 401 (the app signs out).
let onUnauthorized = () => {};
export const setUnauthorizedHandler = (fn) => { onUnauthorized = fn; };

async function errorOf(res) {
  let code = '', message = '';
  try {
    const body = await res.json();
    code = body?.error?.code || '';
    message = body?.error?.message || '';
  } catch { /* not JSON */ }
  if (res.status === 401) onUnauthorized();
  return new APIError(res.status, code, message || `${res.status} ${res.statusText}`);
}

function headers(extra = {}, key = getKey()) {
  const h = { ...extra };
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// api calls a JSON route and returns its decoded answer (null for 204).
export async function api(method, path, body, opts = {}) {
  const init = { method, headers: headers({ Accept: 'application/json' }, opts.key), signal: opts.signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(BASE + path, init);
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return null;
  const type = res.headers.get('Content-Type') || '';
  return type.includes('json') ? res.json() : res.text();
}

// raw is fetch with the key, for files (downloads and uploads) and the diff.
export async function raw(method, path, body, opts = {}) {
  const res = await fetch(BASE + path, { method, body, headers: headers(opts.headers), signal: opts.signal });
  if (!res.ok) throw await errorOf(res);
  return res;
}

// sse reads a server-sent event stream with fetch (EventSource cannot send Authorization) and calls onEvent with
// {event, id, data} for each event until the stream ends or signal aborts. It resolves when the stream ends.
export async function sse(path, onEvent, { signal, lastEventId } = {}) {
  const h = headers({ Accept: 'text/event-stream' });
  if (lastEventId) h['Last-Event-ID'] = lastEventId;
  const res = await fetch(BASE + path, { headers: h, signal, cache: 'no-store' });
  if (!res.ok) throw await errorOf(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { event: 'message', id: null, data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (ev.data.length) onEvent({ event: ev.event, id: ev.id, data: ev.data.join('\n') });
        ev = { event: 'message', id: null, data: [] };
        continue;
      }
      if (line[0] === ':') continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let v = c < 0 ? '' : line.slice(c + 1);
      if (v[0] === ' ') v = v.slice(1);
      if (field === 'data') ev.data.push(v);
      else if (field === 'event') ev.event = v;
      else if (field === 'id') ev.id = v;
    }
  }
}

export const isAbort = (e) => e?.name === 'AbortError';
