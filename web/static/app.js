// The Aetherium dashboard: a single page over the REST API (/api/v1), no framework, no build step.
import { api, getKey, setKey, clearKey, setUnauthorizedHandler, sse, isAbort, raw } from './api.js';
import { h, clear, field, fmtTime, badge, table, dl } from './dom.js';

const main = document.getElementById('main');
const statusEl = document.getElementById('status');
const nav = document.getElementById('nav');
const liveEl = document.getElementById('live');

// say puts a message in the aria-live status line (errors too: role=status is polite, errors get .error).
export function say(msg, isError = false) {
  statusEl.textContent = msg || '';
  statusEl.classList.toggle('error', !!isError);
}
export const fail = (e) => { if (!isAbort(e)) say(e?.message || String(e), true); };

// ---- live events: one stream of the owner's events (GET /events), shared by every view ----
const listeners = new Set();
export const recent = []; // the last events, newest last
let eventsCtl = null;
let lastEventId = '';

export function onEvents(fn) { listeners.add(fn); return () => listeners.delete(fn); }

function startEvents() {
  if (eventsCtl) return;
  eventsCtl = new AbortController();
  const { signal } = eventsCtl;
  const run = async () => {
    while (!signal.aborted) {
      try {
        await sse(lastEventId ? '/events' : '/events?after=0', (ev) => {
          if (ev.id) lastEventId = ev.id;
          if (ev.event === 'live') { liveEl.hidden = false; return; }
          let data = {};
          try { data = JSON.parse(ev.data); } catch { return; }
          const e = { type: ev.event, id: ev.id, data };
          recent.push(e);
          if (recent.length > 1000) recent.shift();
          for (const fn of listeners) fn(e);
        }, { signal, lastEventId });
      } catch (e) {
        if (isAbort(e) || signal.aborted) return;
        if (e.status === 503) { liveEl.hidden = true; return; } // no event log on this server
      }
      liveEl.hidden = true;
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  run();
}

function stopEvents() {
  eventsCtl?.abort();
  eventsCtl = null;
  lastEventId = '';
  recent.length = 0;
  liveEl.hidden = true;
}

// ---- routing ----
const routes = [];
const route = (pattern, view) => routes.push({ re: new RegExp(`^${pattern.replace(/:(\w+)/g, '(?<$1>[^/]+)')}/?$`), view });
let current = null; // {ctl, cleanup}

export function go(path, replace = false) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

async function render() {
  if (current) {
    current.ctl.abort();
    for (const fn of current.cleanups) { try { fn(); } catch { /* view already gone */ } }
  }
  const ctl = new AbortController();
  const ctx = { signal: ctl.signal, cleanups: [], onCleanup(fn) { this.cleanups.push(fn); } };
  current = { ctl, cleanups: ctx.cleanups };
  let path = location.pathname;
  if (!getKey() && path !== '/signin') { history.replaceState(null, '', '/signin'); path = '/signin'; }
  if (getKey() && (path === '/' || path === '/signin')) { history.replaceState(null, '', '/vms'); path = '/vms'; }
  nav.hidden = !getKey();
  for (const a of nav.querySelectorAll('a')) {
    const on = path === a.getAttribute('href') || path.startsWith(`${a.getAttribute('href')}/`);
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (getKey()) startEvents();
  for (const r of routes) {
    const m = r.re.exec(path);
    if (!m) continue;
    clear(main);
    try {
      await r.view(main, m.groups || {}, ctx);
    } catch (e) { fail(e); }
    return;
  }
  clear(main, h('h1', {}, 'Not found'), h('p', {}, 'No page here. ', h('a', { href: '/vms' }, 'Go to the VMs')));
}

// Links inside the app navigate without reloading.
document.addEventListener('click', (e) => {
  const a = e.target.closest?.('a[href]');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || a.target || a.download) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/api/') || url.pathname.startsWith('/assets/')) return;
  e.preventDefault();
  say('');
  go(url.pathname + url.search);
  main.focus({ preventScroll: true });
});
window.addEventListener('popstate', render);

function signOut(msg) {
  clearKey();
  stopEvents();
  go('/signin', true);
  if (msg) say(msg, true);
}
setUnauthorizedHandler(() => { if (getKey()) signOut('Your API key was refused: sign in again.'); });
document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));

// refresher calls load now and again after events that pass filter (at most every 300 ms).
export function refresher(ctx, filter, load) {
  let timer = null;
  const off = onEvents((e) => {
    if (!filter(e) || timer) return;
    timer = setTimeout(() => { timer = null; if (!ctx.signal.aborted) load().catch(fail); }, 300);
  });
  ctx.onCleanup(() => { off(); clearTimeout(timer); });
  return load().catch(fail);
}

// ---- views ----
route('/signin', async (root) => {
  const input = field('API key', { type: 'password', name: 'key', required: true, autocomplete: 'current-password' },
    'Kept in this tab only (sessionStorage). The first admin key is in the data directory (admin-api-key).');
  const form = h('form', { class: 'card narrow', 'aria-labelledby': 'signin-h' },
    h('h1', { id: 'signin-h' }, 'Sign in'),
    input,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = form.elements.key.value.trim();
    say('Checking the key…');
    try {
      await api('GET', '/status', undefined, { key });
      setKey(key);
      say('Signed in.');
      go('/vms', true);
    } catch (err) {
      say(err.status === 401 ? 'That API key is not valid.' : err.message, true);
      form.elements.key.focus();
    }
  });
  clear(root, form);
  form.elements.key.focus();
});

route('/vms', async (root, _p, ctx) => {
  const list = h('div', { 'aria-busy': 'true' });
  const form = h('form', { class: 'card create', 'aria-labelledby': 'create-h' },
    h('h2', { id: 'create-h' }, 'Create a VM'),
    h('div', { class: 'row' },
      field('Name', { name: 'name', required: true, maxlength: 63, placeholder: 'my-vm' }),
      field('Image', { name: 'image', placeholder: 'default' }),
      field('vCPUs', { name: 'vcpus', type: 'number', min: 1, max: 64, placeholder: 'default' }),
      field('Memory (MiB)', { name: 'memory_mb', type: 'number', min: 128, step: 128, placeholder: 'default' }),
      field('Tools', { name: 'tools', placeholder: 'git,node' }, 'Comma-separated')),
    h('button', { type: 'submit', class: 'primary' }, 'Create'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = form.elements;
    const body = { name: f.name.value.trim() };
    if (f.image.value.trim()) body.image = f.image.value.trim();
    if (f.vcpus.value) body.vcpus = Number(f.vcpus.value);
    if (f.memory_mb.value) body.memory_mb = Number(f.memory_mb.value);
    const tools = f.tools.value.split(',').map((s) => s.trim()).filter(Boolean);
    if (tools.length) body.tools = tools;
    try {
      const acc = await api('POST', '/vms', body);
      say(`Creating VM ${acc.vm.name}…`);
      form.reset();
      load();
    } catch (err) { fail(err); }
  });
  const load = async () => {
    const status = showDeleted.checked ? '' : '&status=pending,creating,running,paused,stopping,stopped,failed';
    const { vms } = await api('GET', `/vms?limit=200${status}`, undefined, { signal: ctx.signal });
    list.removeAttribute('aria-busy');
    clear(list, table('Your VMs', [
      { label: 'Name', cell: (v) => h('a', { href: `/vms/${v.id}` }, v.name) },
      { label: 'Status', cell: (v) => badge(v.status) },
      { label: 'vCPU / memory', cell: (v) => `${v.vcpus} / ${v.memory_mb} MiB` },
      { label: 'Address', cell: (v) => v.network?.ip || '—' },
      { label: 'Tools', cell: (v) => (v.installed_tools || v.tools || []).join(', ') || '—' },
      { label: 'Created', cell: (v) => fmtTime(v.created_at) },
      { label: 'Actions', cell: (v) => (['stopping', 'deleted'].includes(v.status) ? '' : h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete ${v.name}`, onclick: () => deleteVM(v, load) }, 'Delete')) },
    ], vms || [], 'No VMs yet: create one above.'));
  };
  const showDeleted = h('input', { type: 'checkbox', id: 'show-deleted', onchange: () => load().catch(fail) });
  clear(root, h('h1', {}, 'VMs'), form, h('section', { 'aria-label': 'VM list' },
    h('div', { class: 'check' }, showDeleted, h('label', { for: 'show-deleted' }, 'Show deleted VMs')), list));
  await refresher(ctx, (e) => e.type === 'vm.status', load);
});

export async function deleteVM(vm, after) {
  if (!window.confirm(`Delete VM ${vm.name}? Its disk and everything in it are gone.`)) return false;
  try {
    await api('DELETE', `/vms/${vm.id}`);
    say(`Deleting VM ${vm.name}…`);
    await after?.();
    return true;
  } catch (e) { fail(e); return false; }
}

route('/vms/:id', async (root, { id }, ctx) => {
  const { vmPage } = await import('./vm.js');
  await vmPage(root, id, ctx);
});

route('/runs', async (root, _p, ctx) => {
  const list = h('div');
  const load = async () => {
    const { runs } = await api('GET', '/runs?limit=100', undefined, { signal: ctx.signal });
    clear(list, table('Agent runs', [
      { label: 'Run', cell: (r) => h('a', { href: `/runs/${r.id}` }, r.id.slice(0, 8)) },
      { label: 'Status', cell: (r) => badge(r.status) },
      { label: 'Repository', cell: (r) => r.repo?.url || '' },
      { label: 'Agent', cell: (r) => r.agent },
      { label: 'Prompt', cell: (r) => (r.prompt || '').slice(0, 80) },
      { label: 'Created', cell: (r) => fmtTime(r.created_at) },
    ], runs || [], 'No runs yet (POST /api/v1/runs, or aetherium run).'));
  };
  clear(root, h('h1', {}, 'Runs'), list);
  await refresher(ctx, (e) => e.type.startsWith('run.'), load);
});

route('/runs/:id', async (root, { id }, ctx) => {
  const info = h('div');
  const transcript = h('ol', { class: 'transcript', 'aria-live': 'polite', 'aria-label': 'Transcript' });
  const diff = h('pre', { class: 'diff', tabindex: 0, 'aria-label': 'Diff' });
  const load = async () => {
    const run = await api('GET', `/runs/${id}`, undefined, { signal: ctx.signal });
    const ended = ['completed', 'failed', 'cancelled'].includes(run.status);
    clear(info, dl([
      ['Status', badge(run.status)], ['Repository', `${run.repo?.url || ''} ${run.repo?.ref || ''}`], ['Agent', run.agent],
      ['Model', run.model], ['VM', run.vm_id ? h('a', { href: `/vms/${run.vm_id}` }, run.vm_id) : ''],
      ['Created', fmtTime(run.created_at)], ['Completed', fmtTime(run.completed_at)], ['Error', run.error],
      ['Prompt', h('span', { class: 'pre' }, run.prompt)],
    ]), ended ? '' : h('button', {
      type: 'button', class: 'danger', onclick: async () => {
        try { await api('POST', `/runs/${id}/cancel`); say('Cancelling the run…'); } catch (e) { fail(e); }
      },
    }, 'Cancel run'));
    if (ended) loadDiff();
  };
  const loadDiff = async () => {
    try {
      const text = await (await raw('GET', `/runs/${id}/diff`, undefined, { signal: ctx.signal })).text();
      clear(diff, text ? text.split('\n').map((l) => h('span', { class: l.startsWith('+') ? 'add' : l.startsWith('-') ? 'del' : l.startsWith('@@') ? 'hunk' : '' }, `${l}\n`)) : 'No changes.');
    } catch (e) { fail(e); }
  };
  clear(root, h('h1', {}, `Run ${id.slice(0, 8)}`), info,
    h('h2', {}, 'Transcript'), transcript, h('h2', {}, 'Diff'), diff);
  clear(diff, 'Available when the agent has finished.');
  await refresher(ctx, (e) => e.type.startsWith('run.') && e.data.id === id, load);
  sse(`/runs/${id}/stream`, (ev) => {
    let e;
    try { e = JSON.parse(ev.data); } catch { return; }
    transcript.append(h('li', { class: `t-${e.type}` }, h('span', { class: 'muted' }, `${e.type} `), describe(e)));
    if (e.type === 'end') load().catch(fail);
  }, { signal: ctx.signal }).catch(fail);
});

function describe(e) {
  const d = e.data || {};
  if (e.type === 'status') return `${d.status}: ${d.message || ''}`;
  if (e.type === 'output' || e.type === 'stderr') return d.text;
  if (e.type === 'end') return `${d.status}${d.error ? `: ${d.error}` : ''}`;
  if (e.type === 'agent') {
    const parts = (d.message?.content || []).map((c) => (c.type === 'text' ? c.text : c.type === 'tool_use'
      ? `[${c.name}] ${JSON.stringify(c.input)}` : c.type === 'tool_result' ? `[result] ${typeof c.content === 'string' ? c.content : JSON.stringify(c.content)}` : ''));
    if (parts.length) return `${d.type}: ${parts.join(' ').slice(0, 2000)}`;
    if (d.type === 'result') return `result: ${d.result || d.subtype || ''}`;
    return d.type || JSON.stringify(d).slice(0, 500);
  }
  return JSON.stringify(d).slice(0, 500);
}

// Tasks and jobs: a page of the caller's own (GET /tasks, GET /jobs), reloaded when the event log says one changed,
// and a look-up by id.
function listPage(root, ctx, { title, kind, path, key, changed, columns }) {
  const form = h('form', { class: 'card row', role: 'search' },
    field(`${title.slice(0, -1)} id`, { name: 'id', required: true, pattern: '[0-9a-fA-F\\-]{36}', placeholder: 'uuid' }),
    h('button', { type: 'submit' }, 'Look up'));
  form.addEventListener('submit', (e) => { e.preventDefault(); go(`/${kind}/${form.elements.id.value.trim().toLowerCase()}`); });
  const list = h('div');
  const load = async () => {
    const out = await api('GET', `${path}?limit=100`, undefined, { signal: ctx.signal });
    clear(list, table(`Your ${kind}`, columns, out[key] || [], `No ${kind} yet.`));
  };
  clear(root, h('h1', {}, title), form, h('h2', {}, `Your ${kind}`), list);
  return refresher(ctx, changed, load);
}

route('/tasks', async (root, _p, ctx) => listPage(root, ctx, {
  title: 'Tasks', kind: 'tasks', path: '/tasks', key: 'tasks', changed: (e) => e.type.startsWith('task.'),
  columns: [
    { label: 'Task', cell: (t) => h('a', { href: `/tasks/${t.id}` }, t.id.slice(0, 8)) },
    { label: 'Type', cell: (t) => t.type }, { label: 'Status', cell: (t) => badge(t.status) },
    { label: 'VM', cell: (t) => (t.vm_id ? h('a', { href: `/vms/${t.vm_id}` }, t.vm_id.slice(0, 8)) : '') },
    { label: 'Created', cell: (t) => fmtTime(t.created_at) }, { label: 'Error', cell: (t) => t.error || '' },
  ],
}));

route('/jobs', async (root, _p, ctx) => listPage(root, ctx, {
  title: 'Jobs', kind: 'jobs', path: '/jobs', key: 'jobs', changed: (e) => e.type.startsWith('execution.') || e.type.startsWith('task.'),
  columns: [
    { label: 'Job', cell: (j) => h('a', { href: `/jobs/${j.id}` }, j.id.slice(0, 8)) },
    { label: 'Status', cell: (j) => badge(j.status) },
    { label: 'VM', cell: (j) => (j.vm_id ? h('a', { href: `/vms/${j.vm_id}` }, j.vm_id.slice(0, 8)) : '') },
    { label: 'Commands', cell: (j) => String((j.commands || []).length) }, { label: 'Created', cell: (j) => fmtTime(j.created_at) },
  ],
}));

route('/tasks/:id', async (root, { id }, ctx) => {
  const body = h('div');
  clear(root, h('h1', {}, `Task ${id.slice(0, 8)}`), body);
  await refresher(ctx, (e) => e.type === 'task.finished' && e.data.id === id, async () => {
    const t = await api('GET', `/tasks/${id}`, undefined, { signal: ctx.signal });
    clear(body, dl([['Type', t.type], ['Status', badge(t.status)], ['VM', t.vm_id ? h('a', { href: `/vms/${t.vm_id}` }, t.vm_id) : ''],
      ['Job', t.job_id ? h('a', { href: `/jobs/${t.job_id}` }, t.job_id) : ''], ['Worker', t.worker_id],
      ['Attempts', `${t.attempts} of ${t.max_retries + 1}`], ['Created', fmtTime(t.created_at)],
      ['Completed', fmtTime(t.completed_at)], ['Error', t.error]]),
    t.result ? [h('h2', {}, 'Result'), h('pre', { tabindex: 0 }, JSON.stringify(t.result, null, 2))] : '');
  });
});

route('/jobs/:id', async (root, { id }, ctx) => {
  const body = h('div');
  clear(root, h('h1', {}, `Job ${id.slice(0, 8)}`), body);
  await refresher(ctx, (e) => e.data.job_id === id, async () => {
    const j = await api('GET', `/jobs/${id}`, undefined, { signal: ctx.signal });
    clear(body, dl([['Status', badge(j.status)], ['VM', j.vm_id ? h('a', { href: `/vms/${j.vm_id}` }, j.vm_id) : ''],
      ['Task', h('a', { href: `/tasks/${j.task_id}` }, j.task_id)], ['Created', fmtTime(j.created_at)],
      ['Completed', fmtTime(j.completed_at)], ['Error', j.error]]),
    h('h2', {}, 'Executions'),
    table('Executions', [
      { label: 'Command', cell: (x) => [x.command, ...(x.args || [])].join(' ') },
      { label: 'Status', cell: (x) => badge(x.status) }, { label: 'Exit', cell: (x) => x.exit_code ?? '' },
      { label: 'Output', cell: (x) => h('pre', { class: 'out' }, (x.stdout || '') + (x.stderr || '')) },
    ], j.executions || []));
  });
});

route('/events', async (root, _p, ctx) => {
  const list = h('ol', { class: 'events', reversed: true, 'aria-label': 'Events, newest first' });
  const line = (e) => h('li', {}, h('code', {}, e.type), ' ', badge(e.data.status), ' ',
    e.data.name || (e.data.id || '').slice(0, 8), ' ', h('span', { class: 'muted' }, fmtTime(e.data.time)));
  clear(list, recent.slice(-200).reverse().map(line));
  clear(root, h('h1', {}, 'Events'), h('p', { class: 'muted' }, 'Your VMs, tasks, executions and runs as they change (GET /api/v1/events).'), list);
  ctx.onCleanup(onEvents((e) => list.prepend(line(e))));
});

route('/admin', async (root, _p, ctx) => {
  // Which admin routes this server has comes from its OpenAPI document, so nothing is asked of a missing route.
  const [doc, st] = await Promise.all([
    fetch('/api/v1/openapi.json', { signal: ctx.signal }).then((r) => r.json()),
    api('GET', '/status', undefined, { signal: ctx.signal }),
  ]);
  const has = (p) => !!doc.paths?.[p];
  const workers = h('section', { 'aria-labelledby': 'w-h' }, h('h2', { id: 'w-h' }, 'Workers'),
    dl([['Cluster', badge(st.status)], ['Registered', st.workers?.registered], ['Live', st.workers?.live],
      ['Stale after', `${st.workers?.stale_after_seconds} s`]]));
  const keys = h('section', { 'aria-labelledby': 'k-h' }, h('h2', { id: 'k-h' }, 'API keys'));
  clear(root, h('h1', {}, 'Admin'), workers, keys);
  if (has('/workers')) {
    const list = h('div');
    workers.append(list);
    const res = (r) => (r ? `${r.vcpus} vCPU, ${r.memory_mb} MiB, ${r.vms} VMs` : '—');
    const load = async () => {
      try {
        const { workers: ws } = await api('GET', '/workers', undefined, { signal: ctx.signal });
        clear(list, table('Workers', [
          { label: 'Id', cell: (w) => w.id }, { label: 'Host', cell: (w) => w.hostname },
          { label: 'Backend', cell: (w) => `${w.backend}${w.backend_health && w.backend_health !== 'ok' ? ` (${w.backend_health})` : ''}` },
          { label: 'State', cell: (w) => badge(w.state) },
          { label: 'Offers', cell: (w) => res(w.capacity) }, { label: 'Used', cell: (w) => res(w.used) },
          { label: 'Heartbeat', cell: (w) => fmtTime(w.last_heartbeat) },
          { label: 'Actions', cell: (w) => (has('/workers/{worker}/drain') ? h('button', {
            type: 'button', class: 'small', 'aria-label': `${w.drained ? 'Undrain' : 'Drain'} ${w.id}`,
            onclick: async () => {
              if (!w.drained && !window.confirm(`Drain ${w.id}? It takes no new VMs; its VMs stay.`)) return;
              try {
                await api('POST', `/workers/${encodeURIComponent(w.id)}/${w.drained ? 'undrain' : 'drain'}`);
                say(`${w.id} ${w.drained ? 'takes new VMs again' : 'is drained'}.`);
                await load();
              } catch (e) { fail(e); }
            },
          }, w.drained ? 'Undrain' : 'Drain') : '') },
        ], ws || [], 'No worker has registered.'));
      } catch (e) { clear(list, h('p', { class: 'muted' }, e.status === 403 ? 'The list of workers is for administrators\' keys.' : e.message)); }
    };
    await load();
  } else {
    workers.append(h('p', { class: 'muted' }, 'The list of workers is not available on this server (only the counts above).'));
  }
  if (has('/apikeys')) {
    const list = h('div');
    keys.append(list);
    const load = async () => {
      try {
        const { api_keys: ks } = await api('GET', '/apikeys', undefined, { signal: ctx.signal });
        clear(list, table('API keys', [
          { label: 'Name', cell: (k) => k.name }, { label: 'Prefix', cell: (k) => h('code', {}, k.prefix) },
          { label: 'Role', cell: (k) => k.role }, { label: 'Scopes', cell: (k) => (k.scopes || []).join(', ') || '—' },
          { label: 'Owner', cell: (k) => h('code', {}, (k.owner_id || '').slice(0, 8)) },
          { label: 'Created', cell: (k) => fmtTime(k.created_at) }, { label: 'Last used', cell: (k) => fmtTime(k.last_used_at) || '—' },
          { label: 'State', cell: (k) => (k.revoked_at ? badge('revoked') : k.expires_at && new Date(k.expires_at) < new Date() ? badge('expired') : badge('active')) },
          { label: 'Actions', cell: (k) => (k.revoked_at ? '' : h('button', {
            type: 'button', class: 'danger small', 'aria-label': `Revoke key ${k.name}`,
            onclick: async () => {
              if (!window.confirm(`Revoke the key ${k.name} (${k.prefix})? Whoever uses it is refused from now on.`)) return;
              try { await api('DELETE', `/apikeys/${k.id}`); say(`Revoked ${k.name}.`); await load(); } catch (e) { fail(e); }
            },
          }, 'Revoke')) },
        ], ks || []));
      } catch (e) { clear(list, h('p', { class: 'muted' }, e.status === 403 ? 'API keys are managed with an administrator\'s key.' : e.message)); }
    };
    await load();
  } else {
    keys.append(h('p', { class: 'muted' }, 'API keys are not managed over the API on this server: use the CLI on the server host (aetherium apikey create|list|revoke).'));
  }
});
render();
