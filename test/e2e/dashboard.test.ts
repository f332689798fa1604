// The dashboard in real headless Chromium (playwright-core) against `mplb run` on the namespace testbed: the page
// loads, shows live MPTCP connections with their subflows and backends, and a drain clicked on the page takes effect
// (the API reports weight 0 / draining, new connections avoid the backend, existing ones keep both subflows).
// The admin server listens on 127.0.0.1 inside the balancer namespace, so the browser runs there too: this file,
// started with MPLB_DASHBOARD_DRIVER=1 under `ip netns exec`, is the browser driver (JSON lines on stdin/stdout).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { testbedUp, testbedDown, type TestbedHandle } from '../../src/testbed/testbed.js';
import { listNetns } from '../../src/testbed/netns.js';
import { startBalancerProcess, type BalancerProcess } from '../../src/testbed/balancer-process.js';
import { children, engineConnections, preflightReason, runClient, startTrafficServer, tmpDir, MPTCP_PORT, type TrafficServerProc } from './balancer-harness.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const TOKEN = 'e2e-dashboard-token-5f0c1d2e';
const ADMIN_PORT = 9740;

// ---------------------------------------------------------------- driver side (inside the balancer namespace)

async function runDriver(): Promise<void> {
  const origin = process.env.MPLB_DASHBOARD_URL!;
  const profile = process.env.MPLB_DASHBOARD_PROFILE!;
  const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  const { chromium } = await import('playwright-core');
  const ctx = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1280, height: 1000 } });
  // The browser may load nothing but the admin server.
  await ctx.route('**/*', (r) => (r.request().url().startsWith(`${origin}/`) ? r.continue() : r.abort()));
  const page = ctx.pages()[0] ?? await ctx.newPage();
  const problems: string[] = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  const conns = () => page.$$eval('[data-testid="subflows"]', (els) => els.map((e) => {
    const token = (e as HTMLElement).dataset.token!;
    const be = document.querySelector(`[data-testid="conn-backend"][data-token="${token}"]`);
    return { token, subflows: Number((e as HTMLElement).dataset.count), backend: be?.textContent?.replace(/^\W+/, '') ?? '' };
  }));
  const cmds: Record<string, (a: any) => Promise<unknown>> = {
    async open() {
      await page.goto(`${origin}/`);
      await page.locator('[data-testid="backend"]').first().waitFor({ timeout: 10000 });
      return { title: await page.title(), backends: await page.$$eval('[data-testid="backend"]', (els) => els.map((e) => (e as HTMLElement).dataset.backend)) };
    },
    async waitConnections(a: { min: number; timeoutMs: number }) {
      await page.waitForFunction((min) => [...document.querySelectorAll('[data-testid="subflows"]')].filter((e) => Number((e as HTMLElement).dataset.count) >= 2).length >= min, a.min, { timeout: a.timeoutMs, polling: 200 });
      return conns();
    },
    async drain(a: { backend: string; token: string }) {
      await page.fill('#token', a.token);
      await page.click('#token-save');
      await page.waitForFunction(() => document.getElementById('token-state')?.textContent === 'token OK', undefined, { timeout: 5000 });
      await page.locator(`tr[data-backend="${a.backend}"] button[data-action="drain"]`).click();
      await page.locator(`tr[data-backend="${a.backend}"][data-draining="true"]`).waitFor({ timeout: 5000 });
      return { flash: await page.textContent('#flash'), row: await page.textContent(`tr[data-backend="${a.backend}"]`) };
    },
    async screenshot(a: { path: string }) { await page.screenshot({ path: a.path, fullPage: true }); return a.path; },
    async text(a: { selector: string }) { return page.textContent(a.selector); },
    async api(a: { path: string }) { const r = await fetch(`${origin}${a.path}`); return { status: r.status, body: await r.json() }; },
    async problems() { return problems; },
    async quit() { await ctx.close(); setImmediate(() => process.exit(0)); return true; },
  };
  out({ event: 'ready' });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const { id, cmd, arg } = JSON.parse(line) as { id: number; cmd: string; arg?: unknown };
    try { out({ id, ok: true, value: await cmds[cmd](arg) }); } catch (e) { out({ id, ok: false, error: (e as Error).message }); }
  }
  await ctx.close();
}

// ---------------------------------------------------------------- test side

interface Driver { call(cmd: string, arg?: unknown, timeoutMs?: number): Promise<any>; stop(): Promise<void>; child: ChildProcess }

async function startDriver(ns: string, origin: string, profile: string): Promise<Driver> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, fileURLToPath(import.meta.url)], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, MPLB_DASHBOARD_DRIVER: '1', MPLB_DASHBOARD_URL: origin, MPLB_DASHBOARD_PROFILE: profile },
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const waiting = new Map<number, (o: any) => void>();
  let ready: (() => void) | undefined;
  readline.createInterface({ input: child.stdout! }).on('line', (l) => {
    let o: any;
    try { o = JSON.parse(l); } catch { return; }
    if (o.event === 'ready') ready?.();
    else waiting.get(o.id)?.(o);
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`browser driver not ready within 20 s: ${stderr}`)), 20000);
    ready = () => { clearTimeout(t); resolve(); };
    void exited.then(() => { clearTimeout(t); reject(new Error(`browser driver exited: ${stderr}`)); });
  });
  let next = 1;
  return {
    child,
    call(cmd, arg, timeoutMs = 20000) {
      const id = next++;
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => { waiting.delete(id); reject(new Error(`driver: no answer to ${cmd} within ${timeoutMs} ms; stderr: ${stderr}`)); }, timeoutMs);
        waiting.set(id, (o) => { clearTimeout(t); waiting.delete(id); if (o.ok) resolve(o.value); else reject(new Error(`driver ${cmd}: ${o.error}`)); });
        child.stdin!.write(`${JSON.stringify({ id, cmd, arg })}\n`);
      });
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin!.write(`${JSON.stringify({ id: 0, cmd: 'quit' })}\n`);
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

async function playwrightMissing(): Promise<string | undefined> {
  try { await import('playwright-core'); return undefined; } catch (e) { return `playwright-core cannot be loaded: ${(e as Error).message}`; }
}

async function dashboardTest(t: { diagnostic(m: string): void; skip(m: string): void }): Promise<void> {
  const reason = preflightReason() ?? (fs.existsSync(CHROMIUM) ? undefined : `needs Chromium at ${CHROMIUM} (Debian package chromium)`) ?? await playwrightMissing();
  if (reason) {
    if (process.env.CI === 'true') assert.fail(`the dashboard browser test cannot run here: ${reason}. CI must run it as root on Linux with iproute2, MPTCP and ${CHROMIUM}.`);
    t.skip(reason);
    return;
  }
  const t0 = Date.now();
  const dir = tmpDir();
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'mplb-chromium-'));
  let tb: TestbedHandle | undefined;
  let lb: BalancerProcess | undefined;
  let driver: Driver | undefined;
  let driverStarting: Promise<Driver> | undefined;
  const servers: TrafficServerProc[] = [];
  try {
    tb = testbedUp({ rateMbit: 50, servers: 2 });
    // Chromium starts (seconds on a busy machine) while the servers and mplb come up.
    driverStarting = startDriver(tb.namespaces.balancer, `http://127.0.0.1:${ADMIN_PORT}`, profile);
    driverStarting.catch(() => undefined);
    for (const s of tb.servers) servers.push(await startTrafficServer(s.ns, s.addr, dir));
    // Root-level sections ride along in `engine` (startBalancerProcess spreads it into the config file).
    lb = await startBalancerProcess(tb, { engine: { admin: { port: ADMIN_PORT, token: TOKEN }, health: { enabled: true, intervalMs: 1000, timeoutMs: 500, check: 'mptcp' } } });
    const vip = `${tb.vips[0]}:${MPTCP_PORT}`;
    t.diagnostic(`testbed ${tb.runId} and mplb up after ${Date.now() - t0} ms`);
    driver = await driverStarting;
    t.diagnostic(`browser up after ${Date.now() - t0} ms`);

    // Four MPTCP connections (two subflows each) keep running while the page is looked at and the drain is clicked.
    const background = runClient(tb, ['--port', String(MPTCP_PORT), '--connections', '4', '--seconds', '12', '--timeout-ms', '25000'], 40000);
    const opened = await driver.call('open');
    t.diagnostic(`page "${opened.title}" shows backends ${JSON.stringify(opened.backends)} after ${Date.now() - t0} ms`);
    assert.equal(opened.title, 'mplb dashboard');
    assert.deepEqual([...opened.backends].sort(), tb.servers.map((s) => `${s.addr}:${MPTCP_PORT}`).sort());

    const shown = await driver.call('waitConnections', { min: 4, timeoutMs: 15000 }) as Array<{ token: string; subflows: number; backend: string }>;
    t.diagnostic(`page shows ${shown.length} connections: ${shown.map((c) => `${c.token} ${c.subflows} subflows -> ${c.backend}`).join(', ')}`);
    const live = shown.filter((c) => c.subflows >= 2);
    assert.ok(live.length >= 4, 'four connections with two subflows each');
    // Drain a backend that has live connections: they must keep going (joins still reach it).
    const target = live[0].backend;
    const onTarget = live.filter((c) => c.backend === target).map((c) => c.token);

    const drained = await driver.call('drain', { backend: target, token: TOKEN });
    t.diagnostic(`clicked drain on ${target}: "${drained.flash}"`);
    const api = await driver.call('api', { path: `/api/v1/vips/${encodeURIComponent(vip)}/backends/${encodeURIComponent(target)}` });
    assert.equal(api.status, 200);
    assert.equal(api.body.weight, 0, 'the API reports weight 0');
    assert.equal(api.body.draining, true, 'the API reports draining');
    assert.deepEqual([api.body.health?.checked, api.body.health?.state], [true, 'up'], 'MPTCP health checks pass against the traffic servers');
    assert.ok(api.body.health.checks.ok >= 1);

    // Let the chart gather a few points, then one screenshot for a human to look at.
    await new Promise((r) => setTimeout(r, 2000));
    const shot = path.join(os.tmpdir(), `mplb-dashboard-${tb.runId}.png`);
    await driver.call('screenshot', { path: shot });
    t.diagnostic(`screenshot: ${shot}`);
    assert.match(String(await driver.call('text', { selector: '#legend' })), /total \d/);

    const bg = await background;
    const bad = bg.connections.filter((c) => c.error || c.subflowsTotalMax !== 2 || c.server?.subflowsTotalMax !== 2);
    assert.deepEqual(bad.map((c) => `#${c.index} ${c.error ?? ''} ${c.subflowsTotalMax}/${c.server?.subflowsTotalMax}`), [], `connections running during the drain (${onTarget.length} on ${target}) completed with both subflows`);

    // New connections avoid the drained backend.
    const fresh = await runClient(tb, ['--port', String(MPTCP_PORT), '--connections', '12', '--bytes', '256K', '--timeout-ms', '15000'], 25000);
    assert.ok(fresh.ok, `new connections failed: ${fresh.connections.filter((c) => c.error).map((c) => c.error).join('; ')}`);
    const engine = new Map((await engineConnections(lb)).map((c) => [c.token, c.backend]));
    const placed = fresh.connections.map((c) => engine.get(c.server!.tokenHex!));
    t.diagnostic(`new connections went to ${JSON.stringify(placed)}`);
    assert.equal(placed.filter((b) => b === undefined).length, 0, 'the engine knows every new connection by token');
    assert.equal(placed.filter((b) => b === target).length, 0, `no new connection on the drained backend ${target}`);

    // SIGHUP with an edited file: the other backend's weight changes, the drain mark and the flows survive.
    const before = (await engineConnections(lb)).length;
    const file = parseYaml(fs.readFileSync(lb.configFile, 'utf8')) as { vips: Array<{ backends: Array<{ address: string; weight?: number }> }> };
    const other = file.vips[0].backends.find((b) => `${b.address}:${MPTCP_PORT}` !== target)!;
    other.weight = 2;
    fs.writeFileSync(lb.configFile, stringifyYaml(file));
    process.kill(lb.pid, 'SIGHUP');
    let after: any;
    for (let i = 0; i < 50; i++) {
      after = (await driver.call('api', { path: `/api/v1/vips/${encodeURIComponent(vip)}/backends` })).body.backends;
      if (after.find((b: any) => b.address === other.address)?.weight === 2) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(after.map((b: any) => [b.id, b.weight, b.draining]).sort(), [[target, 0, true], [`${other.address}:${MPTCP_PORT}`, 2, false]].sort(), 'reload applied; the drain survived');
    assert.equal((await engineConnections(lb)).length, before, 'connections survive the reload');
    assert.match(lb.stderr(), /"msg":"config reloaded"/);

    const problems = await driver.call('problems') as string[];
    assert.deepEqual(problems, [], 'no console errors (CSP violations included) on the page');
    t.diagnostic(`done in ${Date.now() - t0} ms`);
  } finally {
    driver ??= await driverStarting?.catch(() => undefined);
    await driver?.stop().catch(() => undefined);
    await lb?.stop().catch(() => undefined);
    for (const s of servers) await s.stop().catch(() => undefined);
    if (tb) testbedDown(tb);
    fs.rmSync(profile, { recursive: true, force: true });
    fs.rmSync(dir, { recursive: true, force: true });
    if (tb) assert.deepEqual(listNetns().filter((n) => n.startsWith(`mplb-${tb!.runId}-`)), [], 'namespaces of this run are gone');
  }
}

if (process.env.MPLB_DASHBOARD_DRIVER === '1') {
  await runDriver();
} else {
  test('dashboard in headless Chromium: live MPTCP connections, and a drain clicked on the page takes effect', { timeout: 90000 }, (t) => dashboardTest(t));
}
