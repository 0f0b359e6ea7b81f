// A VM's page: details, a terminal (xterm.js over the shell WebSocket, opened with a one-time ticket), commands
// with live output, and a file browser.
import { api, raw, sse, isAbort, BASE } from './api.js';
import { h, clear, field, fmtTime, fmtBytes, badge, table, dl } from './dom.js';
import { say, fail, refresher, deleteVM, go } from './app.js';

export async function vmPage(root, id, ctx) {
  let vm = null;
  const details = h('div');
  const actions = h('div', { class: 'actions' });
  const termBox = h('div', { class: 'term', id: 'terminal' });
  const termStatus = h('p', { class: 'muted', 'aria-live': 'polite' });
  const termBtn = h('button', { type: 'button' }, 'Open terminal');
  const execOut = h('pre', { class: 'out', id: 'exec-output', tabindex: 0, 'aria-live': 'polite', 'aria-label': 'Command output' });
  const execStatus = h('p', { class: 'muted', id: 'exec-status', 'aria-live': 'polite' });
  const execs = h('div');
  const files = h('div');
  let term = null; // {close()}

  const load = async () => {
    vm = await api('GET', `/vms/${id}`, undefined, { signal: ctx.signal });
    clear(details, dl([
      ['Status', badge(vm.status)], ['Id', h('code', {}, vm.id)], ['Image', vm.image || 'default'],
      ['vCPU', vm.vcpus], ['Memory', `${vm.memory_mb} MiB`], ['Address', vm.network?.ip || '—'],
      ['Tools', (vm.installed_tools || vm.tools || []).join(', ') || '—'], ['Worker', vm.worker_id],
      ['Created', fmtTime(vm.created_at)], ['Expires', fmtTime(vm.expires_at)], ['Error', vm.error],
    ]));
    const running = vm.status === 'running';
    clear(actions,
      running ? h('button', { type: 'button', onclick: () => lifecycle('pause') }, 'Pause') : '',
      vm.status === 'paused' ? h('button', { type: 'button', onclick: () => lifecycle('resume') }, 'Resume') : '',
      vm.status === 'stopping' ? '' : h('button', {
        type: 'button', class: 'danger', onclick: async () => {
          term?.close();
          if (await deleteVM(vm)) go('/vms');
        },
      }, 'Delete VM'));
    termBtn.disabled = !running;
    execForm.querySelector('button').disabled = !running;
    if (!running && !term) termStatus.textContent = `The terminal needs a running VM (this one is ${vm.status}).`;
    else if (!term) termStatus.textContent = '';
  };
  const lifecycle = async (op) => {
    try { await api('POST', `/vms/${id}/${op}`); say(`${op === 'pause' ? 'Pausing' : 'Resuming'} the VM…`); } catch (e) { fail(e); }
  };

  // ---- terminal ----
  // A shell that ended keeps its screen readable until the terminal is opened again (or the page left).
  let ended = null;
  termBtn.addEventListener('click', async () => {
    if (term) { term.close(); return; }
    ended?.close();
    termBtn.disabled = true;
    try {
      const t = await openTerminal(termBox, id, termStatus, (byUser) => {
        term = null;
        ended = byUser ? null : t;
        termBtn.textContent = 'Open terminal';
      });
      term = t;
      termBtn.textContent = 'Close terminal';
    } catch (e) { fail(e); } finally { termBtn.disabled = vm?.status !== 'running'; }
  });
  ctx.onCleanup(() => { term?.close(); ended?.close(); });

  // ---- commands ----
  const execForm = h('form', { class: 'row', id: 'exec-form' },
    field('Command', { name: 'command', required: true, placeholder: 'uname -a', autocomplete: 'off' }, 'Run with /bin/sh -c'),
    h('button', { type: 'submit', class: 'primary' }, 'Run'));
  let execCtl = null;
  execForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const line = execForm.elements.command.value;
    execCtl?.abort();
    execCtl = new AbortController();
    const signal = execCtl.signal;
    ctx.onCleanup(() => execCtl?.abort());
    clear(execOut);
    execStatus.textContent = 'Starting…';
    try {
      const acc = await api('POST', `/vms/${id}/execute`, { command: '/bin/sh', args: ['-c', line] });
      await follow(acc.execution_id, signal);
      loadExecs();
    } catch (err) { if (!isAbort(err)) { execStatus.textContent = ''; fail(err); } }
  });
  const follow = async (execID, signal) => {
    execStatus.textContent = 'Running…';
    await sse(`/executions/${execID}/stream`, (ev) => {
      const d = JSON.parse(ev.data);
      if (ev.event === 'stdout' || ev.event === 'stderr') {
        const text = d.data ?? atob(d.data_base64 || '');
        execOut.append(ev.event === 'stderr' ? h('span', { class: 'stderr' }, text) : text);
        execOut.scrollTop = execOut.scrollHeight;
      } else if (ev.event === 'end') {
        execStatus.textContent = d.status === 'completed'
          ? `Exited with ${d.exit_code}${d.timed_out ? ' (timed out)' : ''}.` : `Failed: ${d.error || d.status}`;
      }
    }, { signal });
  };
  const loadExecs = async () => {
    const { executions } = await api('GET', `/vms/${id}/executions?limit=20`, undefined, { signal: ctx.signal });
    clear(execs, table('Executions', [
      { label: 'Command', cell: (x) => h('code', {}, [x.command, ...(x.args || [])].join(' ')) },
      { label: 'Status', cell: (x) => badge(x.status) },
      { label: 'Exit', cell: (x) => x.exit_code ?? '' },
      { label: 'Started', cell: (x) => fmtTime(x.started_at) },
      { label: 'Output', cell: (x) => h('button', {
        type: 'button', class: 'small', 'aria-label': `Show the output of ${x.command}`, onclick: () => {
          execCtl?.abort(); execCtl = new AbortController(); clear(execOut);
          follow(x.id, execCtl.signal).catch((err) => { if (!isAbort(err)) fail(err); });
          execOut.focus();
        },
      }, 'Show') },
    ], executions || [], 'No commands run yet.'));
  };

  // ---- files ----
  let dir = '/';
  const pathForm = h('form', { class: 'row', role: 'search' },
    field('Directory', { name: 'path', value: dir, required: true }),
    h('button', { type: 'submit' }, 'List'));
  pathForm.addEventListener('submit', (e) => { e.preventDefault(); listDir(pathForm.elements.path.value.trim() || '/'); });
  const upload = h('form', { class: 'row' },
    field('Upload a file to this directory', { name: 'file', type: 'file', required: true }),
    h('button', { type: 'submit' }, 'Upload'));
  upload.addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = upload.elements.file.files[0];
    if (!f) return;
    const target = `${dir.replace(/\/$/, '')}/${f.name}`;
    try {
      say(`Uploading ${f.name}…`);
      await raw('PUT', `/vms/${id}/files?path=${encodeURIComponent(target)}`, f, { headers: { 'Content-Type': 'application/octet-stream' } });
      say(`Uploaded ${target} (${fmtBytes(f.size)}).`);
      upload.reset();
      listDir(dir);
    } catch (err) { fail(err); }
  });
  const download = async (p, name) => {
    try {
      const blob = await (await raw('GET', `/vms/${id}/files?path=${encodeURIComponent(p)}`)).blob();
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) { fail(e); }
  };
  const listDir = async (p) => {
    try {
      const ans = await api('GET', `/vms/${id}/fs/list?path=${encodeURIComponent(p)}`, undefined, { signal: ctx.signal });
      dir = ans.path;
      pathForm.elements.path.value = dir;
      const parent = dir === '/' ? null : dir.replace(/\/[^/]+\/?$/, '') || '/';
      const entries = (ans.entries || []).sort((a, b) => (a.type === 'directory') === (b.type === 'directory') ? a.name.localeCompare(b.name) : a.type === 'directory' ? -1 : 1);
      clear(files,
        parent ? h('button', { type: 'button', class: 'link', onclick: () => listDir(parent) }, '↑ Parent directory') : '',
        table(`Files in ${dir}`, [
          { label: 'Name', cell: (f) => (f.type === 'directory'
            ? h('button', { type: 'button', class: 'link', onclick: () => listDir(f.path) }, `${f.name}/`)
            : f.type === 'file' ? h('button', { type: 'button', class: 'link', 'aria-label': `Download ${f.name}`, onclick: () => download(f.path, f.name) }, f.name)
              : `${f.name}${f.link_target ? ` → ${f.link_target}` : ''}`) },
          { label: 'Size', cell: (f) => (f.type === 'file' ? fmtBytes(f.size) : '') },
          { label: 'Mode', cell: (f) => h('code', {}, f.mode) },
          { label: 'Modified', cell: (f) => fmtTime(f.mod_time) },
        ], entries, 'Empty directory.'));
    } catch (e) { fail(e); }
  };

  clear(root,
    h('p', {}, h('a', { href: '/vms' }, '← VMs')),
    h('h1', { id: 'vm-h' }, 'VM'),
    h('div', { class: 'cols' },
      h('section', { 'aria-labelledby': 'd-h', class: 'card' }, h('h2', { id: 'd-h' }, 'Details'), details, actions),
      h('section', { 'aria-labelledby': 't-h', class: 'card wide' }, h('h2', { id: 't-h' }, 'Terminal'), termBtn, termStatus, termBox),
      h('section', { 'aria-labelledby': 'x-h', class: 'card wide' }, h('h2', { id: 'x-h' }, 'Run a command'), execForm, execStatus, execOut,
        h('h3', {}, 'Recent executions'), execs),
      h('section', { 'aria-labelledby': 'f-h', class: 'card wide' }, h('h2', { id: 'f-h' }, 'Files'), pathForm, upload, files)));
  await refresher(ctx, (e) => e.data.id === id || e.data.vm_id === id, async () => {
    const was = vm?.status;
    await load();
    root.querySelector('#vm-h').textContent = `VM ${vm.name}`;
    document.title = `${vm.name} · Aetherium`;
    if (vm.status === 'running' && was !== 'running') { listDir(dir); loadExecs().catch(fail); }
    if (vm.status !== 'running' && !was) loadExecs().catch(fail);
  });
}

// openTerminal connects an xterm.js terminal to the VM's shell and returns {close()}.
async function openTerminal(box, id, status, onClose) {
  const [{ Terminal }, { FitAddon }] = await Promise.all([import('./vendor/xterm.mjs'), import('./vendor/addon-fit.mjs')]);
  clear(box);
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000, screenReaderMode: false,
    fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  status.textContent = 'Connecting…';
  const { ticket } = await api('POST', `/vms/${id}/shell/ticket`);
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams({ ticket, rows: term.rows, cols: term.cols, term: 'xterm-256color' });
  const ws = new WebSocket(`${proto}//${location.host}${BASE}/vms/${id}/shell?${q}`);
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  let closed = false;
  const subs = [
    term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); }),
    term.onBinary((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(Uint8Array.from(d, (c) => c.charCodeAt(0))); }),
    term.onResize(({ rows, cols }) => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', rows, cols })); }),
  ];
  const ro = new ResizeObserver(() => { try { fit.fit(); } catch { /* hidden */ } });
  ro.observe(box);
  ws.onopen = () => { if (closed) return; status.textContent = 'Connected.'; term.focus(); };
  ws.onmessage = (m) => {
    if (typeof m.data !== 'string') { term.write(new Uint8Array(m.data)); return; }
    let msg;
    try { msg = JSON.parse(m.data); } catch { return; }
    if (msg.type === 'exit') status.textContent = `The shell exited (${msg.signal || `code ${msg.exit_code}`}).`;
    else if (msg.type === 'error') status.textContent = `Shell error: ${msg.message}`;
    else if (msg.type === 'stderr') term.write(Uint8Array.from(atob(msg.data), (c) => c.charCodeAt(0)));
  };
  let disposed = false;
  const stop = () => { closed = true; ro.disconnect(); subs.forEach((s) => s.dispose()); };
  // close ends the session (closing the WebSocket kills the shell) and removes the terminal.
  const close = () => {
    const wasOpen = !closed;
    if (wasOpen) stop();
    if (ws.readyState <= WebSocket.OPEN) ws.close();
    if (!disposed) { disposed = true; term.dispose(); clear(box); }
    if (wasOpen) { status.textContent = 'Closed.'; onClose(true); }
  };
  ws.onclose = () => {
    if (closed) return;
    if (!status.textContent.startsWith('The shell exited') && !status.textContent.startsWith('Shell error')) {
      status.textContent = 'Disconnected.';
    }
    stop();
    onClose(false);
  };
  return { close };
}
