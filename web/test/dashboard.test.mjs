// The dashboard in headless Chromium against a real server (test/e2e/dashboard_test.go starts it):
//   AETHERIUM_URL=http://127.0.0.1:8080 AETHERIUM_API_KEY=... node web/test/dashboard.test.mjs
// Signs in, creates a VM, types `echo hi` in its terminal and sees `hi`, runs a command and sees its output stream
// in, deletes the VM; writes screenshots of the main pages to AETHERIUM_SCREENSHOTS (default: a temp dir); fails
// on any console error or page error. CHROMIUM: the browser (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.AETHERIUM_URL || 'http://127.0.0.1:8080';
const key = process.env.AETHERIUM_API_KEY;
if (!key) { console.error('AETHERIUM_API_KEY is required'); process.exit(2); }
const shots = process.env.AETHERIUM_SCREENSHOTS || mkdtempSync(join(tmpdir(), 'aetherium-dashboard-'));
mkdirSync(shots, { recursive: true });
const vmName = `web-${Date.now().toString(36)}`;
const t0 = Date.now();
const step = (s) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${s}`);

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const errors = [];
let failed = false;
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 850 } });
  page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()} (${m.location().url})`); });
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    const f = r.failure()?.errorText || '';
    if (!f.includes('ERR_ABORTED')) errors.push(`request failed: ${r.url()} ${f}`);
  });
  page.on('dialog', (d) => d.accept());
  page.setDefaultTimeout(60000);

  // First paint of the sign-in page.
  await page.goto(base + '/', { waitUntil: 'load' });
  await page.getByLabel('API key').waitFor();
  const fcp = await page.evaluate(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? -1);
  const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0]?.duration ?? -1);
  step(`first contentful paint ${fcp.toFixed(0)} ms, page load ${nav.toFixed(0)} ms`);
  if (fcp < 0 || fcp > 1000) throw new Error(`first paint took ${fcp} ms (want < 1000)`);
  await page.screenshot({ path: join(shots, 'signin.png') });

  // A wrong key is refused, with a message.
  await page.getByLabel('API key').fill('not-a-key');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('status').filter({ hasText: 'not valid' }).waitFor();
  // (the 401 is logged by Chromium as a failed resource: expected here, and only here)
  errors.length = 0;

  await page.getByLabel('API key').fill(key);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'VMs', exact: true }).waitFor();
  step('signed in');

  // Create a VM from the form.
  await page.getByLabel('Name', { exact: true }).fill(vmName);
  await page.getByRole('button', { name: 'Create' }).click();
  const link = page.getByRole('link', { name: vmName });
  await link.waitFor();
  const row = page.locator('tr', { has: link });
  await row.locator('.badge', { hasText: 'running' }).waitFor({ timeout: 180000 }); // live, from the events stream
  step('vm running (seen through the events stream)');
  await page.screenshot({ path: join(shots, 'vms.png'), fullPage: true });
  await link.click();
  await page.getByRole('heading', { name: `VM ${vmName}` }).waitFor();
  await page.locator('.props .badge', { hasText: 'running' }).waitFor();

  // The terminal: type `echo hi` and see `hi` on a line of its own.
  await page.getByRole('button', { name: 'Open terminal' }).click();
  await page.getByText('Connected.', { exact: true }).waitFor();
  await page.locator('#terminal .xterm-rows').waitFor();
  await page.waitForTimeout(300); // the shell's prompt
  await page.locator('#terminal').click();
  await page.keyboard.type('echo hi');
  await page.keyboard.press('Enter');
  // The command line as typed (echoed by the terminal, on one row: the terminal has its real width), then its output.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#terminal .xterm-rows > div')].map((r) => r.textContent.trim());
    const at = rows.findIndex((r) => r.endsWith('echo hi'));
    return at >= 0 && rows.slice(at + 1).includes('hi');
  }, null, { timeout: 30000 });
  step('terminal: typed echo hi, saw hi');
  // `exit` ends the shell (its screen stays); the terminal opens again with a new ticket.
  await page.keyboard.type('exit');
  await page.keyboard.press('Enter');
  await page.getByText('The shell exited (code 0).', { exact: true }).waitFor();
  await page.getByRole('button', { name: 'Open terminal' }).click();
  await page.getByText('Connected.', { exact: true }).waitFor();
  await page.getByRole('button', { name: 'Close terminal' }).click();
  await page.getByText('Closed.', { exact: true }).waitFor();
  step('terminal: exit, reopened, closed');

  // A command whose output streams in: the first line shows before the command ends.
  await page.getByLabel('Command', { exact: true }).fill('echo first; sleep 4; echo second');
  await page.getByRole('button', { name: 'Run', exact: true }).click();
  await page.locator('#exec-output', { hasText: 'first' }).waitFor();
  const early = await page.locator('#exec-output').textContent();
  const status = await page.locator('#exec-status').textContent();
  if (early.includes('second') || !status.includes('Running')) {
    throw new Error(`output did not stream: output ${JSON.stringify(early)}, status ${JSON.stringify(status)}`);
  }
  await page.locator('#exec-status', { hasText: 'Exited with 0' }).waitFor();
  const out = await page.locator('#exec-output').textContent();
  if (out !== 'first\nsecond\n') throw new Error(`output ${JSON.stringify(out)}`);
  step('execution output streamed live');

  // The file browser lists /etc.
  await page.getByLabel('Directory', { exact: true }).fill('/etc');
  await page.getByRole('button', { name: 'List' }).click();
  await page.getByRole('button', { name: 'Download hostname' }).or(page.getByRole('button', { name: 'Download passwd' })).first().waitFor();
  step('file browser listed /etc');
  // Upload a file to /tmp, see it listed, download it back.
  await page.getByLabel('Directory', { exact: true }).fill('/tmp');
  await page.getByRole('button', { name: 'List' }).click();
  await page.locator('#main table caption', { hasText: 'Files in /tmp' }).or(page.getByText('Empty directory.')).first().waitFor();
  await page.getByLabel('Upload a file to this directory').setInputFiles({ name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from('hello from the dashboard\n') });
  await page.getByRole('button', { name: 'Upload', exact: true }).click();
  const dl = page.waitForEvent('download');
  await page.getByRole('button', { name: 'Download hello.txt' }).click();
  const file = await dl;
  const chunks = [];
  for await (const c of await file.createReadStream()) chunks.push(c);
  if (Buffer.concat(chunks).toString() !== 'hello from the dashboard\n' || file.suggestedFilename() !== 'hello.txt') {
    throw new Error(`downloaded ${file.suggestedFilename()}: ${JSON.stringify(Buffer.concat(chunks).toString())}`);
  }
  step('file browser: uploaded and downloaded /tmp/hello.txt');
  await page.screenshot({ path: join(shots, 'vm.png'), fullPage: true });

  // An agent run (it cannot succeed here: no model key, no reachable repository): its page shows the transcript
  // live, cancels it, and shows its end and its (empty) diff.
  const json = { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' };
  await fetch(`${base}/api/v1/secrets/ANTHROPIC_API_KEY`, { method: 'PUT', headers: json, body: JSON.stringify({ value: 'sk-ant-not-a-key' }) });
  const runRes = await fetch(`${base}/api/v1/runs`, { method: 'POST', headers: json,
    body: JSON.stringify({ repo: { url: 'https://github.com/aetherium/does-not-exist' }, prompt: 'say hi', timeout_seconds: 120 }) });
  const run = (await runRes.json()).run;
  if (!run?.id) throw new Error(`POST /runs: ${runRes.status}`);
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Runs' }).click();
  await page.getByRole('link', { name: run.id.slice(0, 8) }).click();
  await page.getByRole('heading', { name: `Run ${run.id.slice(0, 8)}` }).waitFor();
  await page.locator('.transcript li').first().waitFor();
  const cancel = page.getByRole('button', { name: 'Cancel run' });
  if (await cancel.isVisible()) await cancel.click().catch(() => {}); // it may end by itself first
  await page.locator('.transcript li.t-end').waitFor({ timeout: 150000 });
  await page.locator('.diff', { hasText: /No changes\.|diff --git/ }).waitFor();
  step(`run page: transcript (${await page.locator('.transcript li').count()} events), ended, diff`);
  await page.screenshot({ path: join(shots, 'run.png'), fullPage: true });

  // The other pages render (screenshots), at laptop and phone widths.
  for (const [name, heading] of [['runs', 'Runs'], ['tasks', 'Tasks'], ['jobs', 'Jobs'], ['events', 'Events'], ['admin', 'Admin']]) {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: heading }).click();
    await page.getByRole('heading', { name: heading, exact: true }).waitFor();
    if (name === 'tasks') await page.locator('table').waitFor(); // GET /tasks
    if (name === 'admin') {
      await page.getByRole('cell', { name: 'e2e-dashboard', exact: true }).waitFor(); // GET /workers (an admin's key)
      await page.getByRole('button', { name: 'Revoke key admin' }).waitFor(); // GET /apikeys: the admin key itself
    }
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
    if (name === 'tasks') {
      // A task's own page (GET /tasks/{id}), and back.
      await page.locator('tr', { has: page.locator('.badge', { hasText: 'completed' }) }).locator('a[href^="/tasks/"]').first().click();
      await page.getByRole('heading', { name: /^Task [0-9a-f]{8}$/ }).waitFor();
      await page.locator('.props .badge', { hasText: 'completed' }).first().waitFor();
      await page.screenshot({ path: join(shots, 'task.png'), fullPage: true });
      await page.goBack();
      await page.getByRole('heading', { name: 'Tasks', exact: true }).waitFor();
    }
  }
  await page.setViewportSize({ width: 375, height: 812 });
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'VMs' }).click();
  await page.getByRole('link', { name: vmName }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`the VM list is ${overflow}px wider than a 375px screen`);
  await page.screenshot({ path: join(shots, 'vms-phone.png'), fullPage: true });
  await page.getByRole('link', { name: vmName }).click();
  await page.getByRole('heading', { name: `VM ${vmName}` }).waitFor();
  await page.screenshot({ path: join(shots, 'vm-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1366, height: 850 });

  // A reload of the VM's page (the server answers its route with the app), then the keyboard: the first Tab stop
  // is the skip link.
  await page.reload();
  await page.getByRole('heading', { name: `VM ${vmName}` }).waitFor();
  await page.keyboard.press('Tab');
  const first = await page.evaluate(() => document.activeElement?.textContent);
  if (first !== 'Skip to content') throw new Error(`the first Tab stop is ${JSON.stringify(first)}`);

  // Delete the VM (confirmed) from its page: it leaves the list.
  await page.getByRole('button', { name: 'Delete VM' }).click();
  await page.getByRole('heading', { name: 'VMs', exact: true }).waitFor();
  await page.getByRole('link', { name: vmName }).waitFor({ state: 'detached', timeout: 120000 });
  step('vm deleted');

  if (errors.length) throw new Error(`errors in the page:\n  ${errors.join('\n  ')}`);
  step(`passed; screenshots in ${shots}`);
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
  try {
    await page?.screenshot({ path: join(shots, 'failure.png'), fullPage: true });
    console.error(`page at the failure: ${page.url()} (failure.png); live updates: ${await page.evaluate(() => !document.getElementById('live').hidden)}`);
  } catch { /* the page is gone */ }
  if (errors.length) console.error(`errors in the page:\n  ${errors.join('\n  ')}`);
} finally {
  await browser.close();
  // Whatever happened, the VM does not outlive the test.
  try {
    const auth = { Authorization: `Bearer ${key}` };
    const { vms } = await (await fetch(`${base}/api/v1/vms?limit=500`, { headers: auth })).json();
    for (const vm of (vms || []).filter((v) => v.name === vmName && !['stopping', 'deleted'].includes(v.status))) {
      await fetch(`${base}/api/v1/vms/${vm.id}`, { method: 'DELETE', headers: auth });
      console.error(`cleanup: deleted vm ${vm.id}`);
    }
  } catch (e) { console.error(`cleanup: ${e.message}`); }
}
process.exit(failed ? 1 : 0);
