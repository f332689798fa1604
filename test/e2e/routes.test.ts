// End-to-end: the kernel routes `mplb run` installs, in network namespaces made for this run only
// (mplbR-<hex>-cli, -lb, -s1, -s2, -s3; removed on exit, also on failure). Plain TCP request/response traffic:
// these tests are about routes and rules, not MPTCP. Each `mplb run` is a real child process with its admin API
// on 127.0.0.1 inside the balancer namespace, reached through a small HTTP helper running in that namespace.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { children, preflightReason, sleep } from './balancer-harness.js';
import { listNetns } from '../../src/testbed/netns.js';

const CI = process.env.CI === 'true';
const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const TOKEN = 'e2e-routes-token-3b9d71c0';
const ADMIN_PORT = 9741;
const RUN = randomBytes(3).toString('hex');
const NS = { cli: `mplbR-${RUN}-cli`, lb: `mplbR-${RUN}-lb`, s: [1, 2, 3].map((i) => `mplbR-${RUN}-s${i}`) };
const SRV = [1, 2, 3].map((i) => `198.18.${10 + i}.2`);
const VIP_A = '198.19.0.10';
const VIP_CONFLICT = '198.19.0.9';
const VIP_B = '198.19.0.30';
const VIP_C = '198.19.0.20';
/** VIP B's backends: s1 (shared with VIP A, so its rule must stay) and 35 addresses that only carry rules. */
const B_BACKENDS = [SRV[0], ...Array.from({ length: 35 }, (_, i) => `198.18.60.${i + 1}`)];

// ---------------------------------------------------------------- namespaces

const ip = (args: string[]) => execFileSync('ip', args, { encoding: 'utf8', timeout: 20000 });
const ipLb = (args: string[]) => ip(['-n', NS.lb, ...args]);
let made = false;

function teardown(): void {
  if (!made) return;
  made = false;
  for (const c of children) if (c.pid && c.exitCode === null && c.signalCode === null) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  for (const ns of [NS.cli, NS.lb, ...NS.s]) { try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }); } catch { /* not there */ } }
}

function buildNamespaces(): void {
  made = true;
  process.on('exit', teardown);
  for (const ns of [NS.cli, NS.lb, ...NS.s]) { ip(['netns', 'add', ns]); ip(['-n', ns, 'link', 'set', 'lo', 'up']); }
  // veth ends are created inside their namespaces: nothing appears in the caller's namespace.
  ip(['link', 'add', 'c0', 'netns', NS.cli, 'type', 'veth', 'peer', 'name', 'lbc0', 'netns', NS.lb]);
  ip(['-n', NS.cli, 'addr', 'add', '198.18.1.2/24', 'dev', 'c0']);
  ip(['-n', NS.lb, 'addr', 'add', '198.18.1.1/24', 'dev', 'lbc0']);
  ip(['-n', NS.cli, 'link', 'set', 'c0', 'up']);
  ip(['-n', NS.lb, 'link', 'set', 'lbc0', 'up']);
  ip(['-n', NS.cli, 'route', 'add', 'default', 'via', '198.18.1.1']);
  NS.s.forEach((ns, i) => {
    ip(['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', `lbs${i + 1}`, 'netns', NS.lb]);
    ip(['-n', ns, 'addr', 'add', `${SRV[i]}/24`, 'dev', 'eth0']);
    ip(['-n', NS.lb, 'addr', 'add', `198.18.${11 + i}.1/24`, 'dev', `lbs${i + 1}`]);
    ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    ip(['-n', NS.lb, 'link', 'set', `lbs${i + 1}`, 'up']);
    ip(['-n', ns, 'route', 'add', 'default', 'via', `198.18.${11 + i}.1`]);
  });
  // ip_forward stays 0 in the balancer namespace: mplb sets it, and must put it back.
}

/** The balancer namespace's routing state: what a failed or foreign change must leave exactly as it was. */
function snapshot(): Record<string, string> {
  // IPv6 link-local addresses of a TUN are random per device: leave the local table and fe80 out.
  const v6 = (s: string) => s.split('\n').filter((l) => !/table local|fe80::/.test(l)).join('\n');
  // /proc/sys/net is per namespace: read it from inside.
  const inLb = (keys: string[]) => execFileSync('ip', ['netns', 'exec', NS.lb, 'cat', ...keys], { encoding: 'utf8' });
  return {
    route4: ipLb(['-4', 'route', 'show', 'table', 'all']),
    route6: v6(ipLb(['-6', 'route', 'show', 'table', 'all'])),
    rule4: ipLb(['-4', 'rule', 'show']),
    rule6: ipLb(['-6', 'rule', 'show']),
    sysctl: inLb(['/proc/sys/net/ipv4/ip_forward', '/proc/sys/net/ipv4/conf/all/rp_filter', '/proc/sys/net/ipv6/conf/all/forwarding']),
  };
}

// ---------------------------------------------------------------- helpers in the namespaces (JSON lines)

interface Peer { call(o: Record<string, unknown>, timeoutMs?: number): Promise<any>; child: ChildProcess; stop(): Promise<void> }

function track(c: ChildProcess): ChildProcess { children.add(c); c.once('exit', () => children.delete(c)); return c; }

async function startPeer(ns: string, src: string, args: string[]): Promise<Peer> {
  const child = track(spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', src, ...args], { stdio: ['pipe', 'pipe', 'pipe'] }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const waiting = new Map<number, (o: any) => void>();
  let ready: (() => void) | undefined;
  readline.createInterface({ input: child.stdout! }).on('line', (l) => {
    let o: any;
    try { o = JSON.parse(l); } catch { return; }
    if (o.event === 'ready') ready?.(); else waiting.get(o.id)?.(o);
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`helper in ${ns} not ready within 10 s: ${stderr}`)), 10000);
    ready = () => { clearTimeout(t); resolve(); };
    void exited.then(() => { clearTimeout(t); reject(new Error(`helper in ${ns} exited: ${stderr}`)); });
  });
  let next = 1;
  return {
    child,
    call(o, timeoutMs = 60000) {
      const id = next++;
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => { waiting.delete(id); reject(new Error(`helper in ${ns}: no answer to ${JSON.stringify(o).slice(0, 80)} within ${timeoutMs} ms; stderr: ${stderr}`)); }, timeoutMs);
        waiting.set(id, (r) => { clearTimeout(t); waiting.delete(id); resolve(r); });
        child.stdin!.write(`${JSON.stringify({ ...o, id })}\n`);
      });
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
}

// A line server: answers every line with "<name> <line>" (so a client sees which server answered).
const SERVER_SRC = `
const net = require('net');
const name = process.argv[1];
net.createServer((s) => {
  let buf = '';
  s.on('error', () => {});
  s.on('data', (d) => { buf += d; let i; while ((i = buf.indexOf('\\n')) >= 0) { const l = buf.slice(0, i); buf = buf.slice(i + 1); s.write(name + ' ' + l + '\\n'); } });
}).listen(80, '0.0.0.0', () => console.log(JSON.stringify({ event: 'ready' })));
// Gone with the test process, even if it could not stop us.
process.stdin.on('end', () => process.exit(0)).resume();
`;

// The client: one request per new connection ('once', or a loop with 'loopStart'/'loopStop'), and one held
// connection that sends a line every 100 ms ('hold'/'holdStatus').
const CLIENT_SRC = `
const net = require('net');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
function request(host, port, timeoutMs) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect({ host, port });
    let buf = '', done = false;
    const finish = (r) => { if (done) return; done = true; clearTimeout(timer); s.destroy(); resolve({ ...r, ms: Date.now() - t0 }); };
    const timer = setTimeout(() => finish({ ok: false, error: 'timeout' }), timeoutMs);
    s.on('connect', () => s.write('req\\n'));
    s.on('data', (d) => { buf += d; if (buf.includes('\\n')) finish({ ok: true, answer: buf.trim() }); });
    s.on('error', (e) => finish({ ok: false, error: e.code || e.message }));
    s.on('close', () => finish({ ok: false, error: 'closed' }));
  });
}
let loop = null, hold = null;
const cmds = {
  once: (a) => request(a.host, a.port, a.timeoutMs || 3000),
  loopStart: (a) => {
    loop = { n: 0, ok: 0, fail: 0, errors: [], maxMs: 0, stop: false, done: null };
    loop.done = (async () => { while (!loop.stop) { const r = await request(a.host, a.port, a.timeoutMs); loop.n++; loop.maxMs = Math.max(loop.maxMs, r.ms); if (r.ok) loop.ok++; else { loop.fail++; if (loop.errors.length < 20) loop.errors.push(r.error + ' after ' + r.ms + ' ms'); } await new Promise((r) => setTimeout(r, a.gapMs)); } })();
    return {};
  },
  loopStop: async () => { loop.stop = true; await loop.done; const { stop, done, ...r } = loop; return r; },
  hold: (a) => new Promise((resolve) => {
    hold = { sent: 0, answered: 0, errors: [], last: '', closed: false };
    const s = net.connect({ host: a.host, port: a.port });
    let buf = '';
    s.on('connect', () => { hold.timer = setInterval(() => { s.write('ping ' + hold.sent++ + '\\n'); }, 100); resolve({}); });
    s.on('data', (d) => { buf += d; let i; while ((i = buf.indexOf('\\n')) >= 0) { hold.last = buf.slice(0, i); buf = buf.slice(i + 1); hold.answered++; } });
    s.on('error', (e) => { hold.errors.push(e.code || e.message); resolve({ error: e.message }); });
    s.on('close', () => { hold.closed = true; clearInterval(hold.timer); });
  }),
  holdStatus: () => { const { timer, ...r } = hold; return r; },
};
require('readline').createInterface({ input: process.stdin }).on('line', async (l) => {
  const o = JSON.parse(l);
  out({ id: o.id, ...(await cmds[o.cmd](o)) });
}).on('close', () => process.exit(0));
out({ event: 'ready' });
`;

// HTTP to the admin API inside the balancer namespace; 'change' also polls /healthz while the change runs, so a
// blocked event loop shows as a slow /healthz.
const HTTP_SRC = `
const [port, token] = process.argv.slice(1);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
async function req(method, p, body) {
  const t0 = performance.now();
  const r = await fetch('http://127.0.0.1:' + port + p, { method, headers: { authorization: 'Bearer ' + token, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json; try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, body: json, ms: performance.now() - t0 };
}
const cmds = {
  req: (o) => req(o.method, o.path, o.body),
  change: async (o) => {
    let done = false, healthMaxMs = 0, probes = 0;
    const probe = (async () => { while (!done) { const t = performance.now(); await req('GET', '/healthz'); healthMaxMs = Math.max(healthMaxMs, performance.now() - t); probes++; await new Promise((r) => setTimeout(r, 2)); } })();
    const r = await req(o.method, o.path, o.body);
    done = true;
    await probe;
    return { ...r, healthMaxMs, probes };
  },
  many: async (o) => { const t0 = performance.now(); const rs = await Promise.all(o.reqs.map((x) => req(x.method, x.path, x.body))); return { statuses: rs.map((r) => r.status), errors: rs.filter((r) => r.status >= 300).map((r) => r.body), ms: performance.now() - t0 }; },
};
require('readline').createInterface({ input: process.stdin }).on('line', async (l) => {
  const o = JSON.parse(l);
  try { out({ id: o.id, ...(await cmds[o.cmd](o)) }); } catch (e) { out({ id: o.id, error: String(e) }); }
}).on('close', () => process.exit(0));
out({ event: 'ready' });
`;

// ---------------------------------------------------------------- mplb run

interface Mplb { child: ChildProcess; stderr(): string; stop(): Promise<number | null>; exited: Promise<number | null> }

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mplb-e2e-routes-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
let cfgN = 0;

function config(device: Record<string, unknown>, vips: Array<{ address: string; backends: string[] }>, admin = true): string {
  const file = path.join(tmp, `mplb-${++cfgN}.yaml`);
  fs.writeFileSync(file, stringify({
    device,
    vips: vips.map((v) => ({ address: v.address, backends: v.backends.map((address) => ({ address })) })),
    tables: { maxFlows: 4096, maxConnections: 2048 },
    admin: admin ? { address: '127.0.0.1', port: ADMIN_PORT, token: TOKEN } : { enabled: false },
    log: { level: 'warn' },
  }));
  return file;
}

/** Starts `mplb run`; resolves at its ready line, rejects (with stderr and exit code) if it exits first. */
async function startMplb(file: string, args: string[] = []): Promise<Mplb> {
  const child = track(spawn('ip', ['netns', 'exec', NS.lb, process.execPath, MAIN, 'run', '--config', file, '--control-stdin', ...args], { stdio: ['pipe', 'pipe', 'pipe'] }));
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`mplb run not ready within 15 s: ${err}`)), 15000);
    readline.createInterface({ input: child.stdout! }).on('line', (l) => { if (l.includes('"ready"')) { clearTimeout(t); resolve(); } });
    void exited.then((code) => { clearTimeout(t); reject(Object.assign(new Error(`mplb run exited (${code}) before ready: ${err.trim()}`), { exitCode: code, stderr: err })); });
  });
  return {
    child,
    exited,
    stderr: () => err,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      return child.exitCode;
    },
  };
}

const A_CONFIG = () => config({ name: 'mplb0' }, [{ address: `${VIP_A}:80`, backends: [SRV[0], SRV[1]] }]);

const reason = preflightReason();

if (reason) {
  test('routes e2e prerequisites', (t) => {
    if (CI) assert.fail(`the routes end-to-end tests cannot run here: ${reason}. CI must run them as root on Linux with iproute2.`);
    t.skip(reason);
  });
} else {
  describe('kernel routes of mplb run', { timeout: 110000 }, () => {
    let client: Peer, http: Peer;
    let a: Mplb | undefined;
    const servers: Peer[] = [];
    const once = (host: string) => client.call({ cmd: 'once', host, port: 80 });
    const api = (method: string, p: string, body?: unknown) => http.call({ cmd: 'req', method, path: p, body });
    const restartA = async (args: string[] = []) => {
      await a?.stop();
      a = await startMplb(A_CONFIG(), args);
      const r = await once(VIP_A);
      assert.equal(r.ok, true, `VIP A answers after mplb starts: ${JSON.stringify(r)}`);
    };

    before(async () => {
      buildNamespaces();
      for (let i = 0; i < NS.s.length; i++) servers.push(await startPeer(NS.s[i], SERVER_SRC, [`s${i + 1}`]));
      client = await startPeer(NS.cli, CLIENT_SRC, []);
      http = await startPeer(NS.lb, HTTP_SRC, [String(ADMIN_PORT), TOKEN]);
    });

    after(async () => {
      try { await a?.stop(); } catch { /* teardown goes on */ }
      for (const p of [client, http, ...servers]) { try { await p?.stop(); } catch { /* teardown goes on */ } }
      teardown();
    });

    test('a change whose route cannot be installed is refused and leaves routes, rules, sysctls and the engine as they were', async (t) => {
      await restartA();
      ipLb(['route', 'add', `${VIP_CONFLICT}/32`, 'dev', 'lo']);
      try {
        const s0 = snapshot();
        const v0 = (await api('GET', '/api/v1/vips')).body.vips.map((v: { address: string }) => v.address);
        const r = await api('POST', '/api/v1/vips', { address: `${VIP_CONFLICT}:80`, backends: [{ address: SRV[1] }] });
        t.diagnostic(`refused add: ${r.status} ${JSON.stringify(r.body)} in ${r.ms.toFixed(1)} ms`);
        assert.ok(r.status >= 400, `the conflicting VIP was accepted: ${r.status}`);
        assert.match(String(r.body.error), new RegExp(`${VIP_CONFLICT.replace(/\./g, '\\.')}/32.*File exists|File exists.*${VIP_CONFLICT.replace(/\./g, '\\.')}`), 'the error names the route and the reason');
        assert.deepEqual(snapshot(), s0, 'routes, rules and sysctls after the refused change');
        assert.deepEqual((await api('GET', '/api/v1/vips')).body.vips.map((v: { address: string }) => v.address), v0, 'the engine config is unchanged');
        assert.equal((await once(VIP_A)).ok, true, 'VIP A still answers');
        // A change with the same address set (a weight) leaves routes alone too.
        const w = await api('PUT', `/api/v1/vips/${VIP_A}:80/backends/${SRV[0]}:80/weight`, { weight: 2 });
        assert.equal(w.status, 200, JSON.stringify(w.body));
        assert.deepEqual(snapshot(), s0, 'routes after a weight change that followed the refused one');
      } finally {
        ipLb(['route', 'del', `${VIP_CONFLICT}/32`, 'dev', 'lo']);
      }
      // Once the conflict is gone the same change goes through, and undoing it restores the state.
      const s1 = snapshot();
      const r2 = await api('POST', '/api/v1/vips', { address: `${VIP_CONFLICT}:80`, backends: [{ address: SRV[1] }] });
      assert.equal(r2.status, 201, JSON.stringify(r2.body));
      const answer = await once(VIP_CONFLICT);
      assert.equal(answer.answer, 's2 req', JSON.stringify(answer));
      assert.equal((await api('DELETE', `/api/v1/vips/${VIP_CONFLICT}:80`)).status, 200);
      assert.deepEqual(snapshot(), s1, 'state after adding and removing the VIP');
    });

    test('a second instance on the same routing table refuses to start and leaves the first instance alone', async (t) => {
      await restartA();
      await client.call({ cmd: 'hold', host: VIP_A, port: 80 });
      await sleep(500);
      const s0 = snapshot();
      const h0 = await client.call({ cmd: 'holdStatus' });
      assert.ok(h0.answered > 0, `held connection answered nothing: ${JSON.stringify(h0)}`);
      // Same table and priorities (the defaults), other device, the same backends.
      const t0 = Date.now();
      const second = await startMplb(config({ name: 'mplb1' }, [{ address: `${VIP_C}:80`, backends: [SRV[0], SRV[1]] }], false)).then(
        (m) => ({ started: m }), (e: Error & { exitCode?: number; stderr?: string }) => ({ error: e }));
      if ('started' in second) { await second.started.stop(); assert.fail('the second instance started on the first instance\'s table'); }
      t.diagnostic(`second instance refused in ${Date.now() - t0} ms: ${second.error.stderr?.trim()}`);
      assert.deepEqual(snapshot(), s0, 'the first instance\'s routes, rules and sysctls');
      await sleep(1000);
      const h1 = await client.call({ cmd: 'holdStatus' });
      assert.deepEqual(h1.errors, [], 'the held connection through the first instance');
      assert.equal(h1.closed, false);
      assert.ok(h1.answered >= h0.answered + 8, `held connection: ${h1.answered - h0.answered} answers in the last second (${JSON.stringify(h1)})`);
      assert.equal(second.error.exitCode, 1);
      assert.match(second.error.stderr ?? '', /table 2710.*mplb0/, 'the refusal names the table and the device that holds it');
      assert.equal((await once(VIP_A)).ok, true, 'a new connection through the first instance');
    });

    test('a second instance with its own device, table and rule priority runs beside the first; stopping it leaves the first alone', async (t) => {
      const s0 = snapshot();
      const h0 = await client.call({ cmd: 'holdStatus' });
      const b = await startMplb(config({ name: 'mplb1', table: 2711, rulePriority: 10100 }, [{ address: `${VIP_C}:80`, backends: [SRV[2]] }], false));
      try {
        assert.equal((await once(VIP_C)).answer, 's3 req', 'VIP C through the second instance');
        assert.equal((await once(VIP_A)).ok, true, 'VIP A through the first instance');
        t.diagnostic(`rules with both instances:\n${ipLb(['rule', 'show']).trim()}`);
      } finally {
        assert.equal(await b.stop(), 0, b.stderr());
      }
      assert.deepEqual(snapshot(), s0, 'after the second instance stopped');
      await sleep(500);
      const h1 = await client.call({ cmd: 'holdStatus' });
      assert.deepEqual(h1.errors, []);
      assert.ok(h1.answered > h0.answered, 'held connection through the first instance kept going');
    });

    test('30 add/remove cycles of a 36-backend VIP: no failed request to an unchanged VIP, no unchanged route deleted, the API keeps answering', { timeout: 80000 }, async (t) => {
      await restartA();
      const s0 = snapshot();
      const mon = track(spawn('ip', ['-n', NS.lb, 'monitor', 'route', 'rule'], { stdio: ['ignore', 'pipe', 'ignore'] }));
      let monText = '';
      mon.stdout!.on('data', (d: Buffer) => { monText += d.toString(); });
      await sleep(300);
      await client.call({ cmd: 'loopStart', host: VIP_A, port: 80, gapMs: 10, timeoutMs: 3000 });
      const addMs: number[] = [], delMs: number[] = [], health: number[] = [];
      const vipB = { address: `${VIP_B}:80`, backends: B_BACKENDS.map((address) => ({ address })) };
      try {
        for (let i = 0; i < 30; i++) {
          const add = await http.call({ cmd: 'change', method: 'POST', path: '/api/v1/vips', body: vipB });
          assert.equal(add.status, 201, JSON.stringify(add.body));
          const del = await http.call({ cmd: 'change', method: 'DELETE', path: `/api/v1/vips/${VIP_B}:80` });
          assert.equal(del.status, 200, JSON.stringify(del.body));
          addMs.push(add.ms); delMs.push(del.ms); health.push(add.healthMaxMs, del.healthMaxMs);
        }
      } finally {
        const loop = await client.call({ cmd: 'loopStop' });
        await sleep(300);
        mon.kill('SIGTERM');
        const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]?.toFixed(1);
        t.diagnostic(`per change: add median ${med(addMs)} ms max ${Math.max(...addMs).toFixed(1)} ms; remove median ${med(delMs)} ms max ${Math.max(...delMs).toFixed(1)} ms; slowest /healthz during a change ${Math.max(...health).toFixed(1)} ms`);
        t.diagnostic(`requests to VIP A during the cycles: ${JSON.stringify(loop)}`);
        assert.equal(loop.fail, 0, `failed requests to the unchanged VIP: ${JSON.stringify(loop.errors)}`);
        assert.ok(loop.n >= 30, `only ${loop.n} requests were made`);
      }
      const deleted = monText.split('\n').filter((l) => l.startsWith('Deleted'));
      // Only VIP B's routes and the rules of its own backends may go; s1 is also VIP A's backend.
      const foreign = deleted.filter((l) => !(l.includes(VIP_B) || /from 198\.18\.60\.\d+ /.test(l)));
      t.diagnostic(`ip monitor: ${deleted.length} deletions, e.g. ${deleted.slice(0, 3).join(' | ')}`);
      assert.deepEqual(foreign.slice(0, 10), [], 'deleted routes/rules that the unchanged VIP needs');
      assert.equal(deleted.length, 30 * (2 + 35), 'one deletion per route and rule of VIP B per cycle');
      assert.ok(Math.max(...health) < 300, `/healthz took up to ${Math.max(...health).toFixed(1)} ms during a change: the control thread was blocked`);
      assert.deepEqual(snapshot(), s0, 'state after the cycles');
    });

    test('an IPv6 VIP gets its routes through the IPv6 batch and loses them on removal', async () => {
      const r = await api('POST', '/api/v1/vips', { address: '[2001:db8:100::30]:80', backends: [{ address: '2001:db8:60::1' }] });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const v6 = ipLb(['-6', 'route', 'show', 'table', 'all']);
      assert.match(v6, /^2001:db8:100::30 dev mplb0/m);
      assert.match(v6, /^blackhole 2001:db8:100::30 dev lo metric 4096/m);
      assert.match(v6, /^default dev mplb0 table 2710/m);
      assert.match(ipLb(['-6', 'rule', 'show']), /from 2001:db8:60::1 lookup 2710/);
      assert.equal((await api('DELETE', '/api/v1/vips/[2001:db8:100::30]:80')).status, 200);
      assert.doesNotMatch(ipLb(['-6', 'route', 'show', 'table', 'all']), /2001:db8:100::30|dev mplb0 table 2710/);
      assert.doesNotMatch(ipLb(['-6', 'rule', 'show']), /2001:db8:60::1/);
    });

    test('40 VIPs added and then removed by concurrent requests: every change takes effect', async (t) => {
      const s0 = snapshot();
      const vips = Array.from({ length: 40 }, (_, i) => `198.19.1.${i + 1}:80`);
      const add = await http.call({ cmd: 'many', reqs: vips.map((address) => ({ method: 'POST', path: '/api/v1/vips', body: { address, backends: [{ address: SRV[1] }] } })) });
      assert.deepEqual(add.errors, []);
      const listed = (await api('GET', '/api/v1/vips')).body.vips.map((v: { address: string }) => v.address);
      assert.equal(listed.length, 41, `VIPs after 40 concurrent adds: ${listed.length}`);
      assert.equal((ipLb(['route', 'show']).match(/^198\.19\.1\.\d+ dev mplb0/gm) ?? []).length, 40);
      assert.equal((await once('198.19.1.40')).answer, 's2 req');
      const del = await http.call({ cmd: 'many', reqs: vips.map((v) => ({ method: 'DELETE', path: `/api/v1/vips/${v}` })) });
      t.diagnostic(`40 concurrent adds took ${add.ms.toFixed(0)} ms, 40 concurrent removals ${del.ms.toFixed(0)} ms`);
      assert.deepEqual(del.errors, []);
      assert.deepEqual((await api('GET', '/api/v1/vips')).body.vips.map((v: { address: string }) => v.address), [`${VIP_A}:80`]);
      assert.deepEqual(snapshot(), s0, 'state after the concurrent removals');
    });

    test('a stop removes every route and rule it added and restores the sysctls', async () => {
      await a?.stop();
      a = undefined;
      const left = snapshot();
      assert.doesNotMatch(left.route4 + left.route6, /mplb0|metric 4096|table 2710/);
      assert.doesNotMatch(left.rule4 + left.rule6, /2710|mplb0/);
      assert.equal(left.sysctl, '0\n0\n0\n', 'ip_forward, rp_filter and IPv6 forwarding are back to 0');
    });

    test('a restart after --keep-guard takes the guards over, without duplicates', async () => {
      await restartA(['--keep-guard']);
      const s0 = snapshot();
      await a!.stop();
      a = undefined;
      const kept = ipLb(['-4', 'route', 'show', 'table', 'all']);
      assert.match(kept, new RegExp(`^blackhole ${VIP_A.replace(/\./g, '\\.')} metric 4096`, 'm'), 'the VIP guard stays');
      assert.doesNotMatch(kept, /dev mplb0/);
      assert.match(ipLb(['rule', 'show']), new RegExp(`from ${SRV[0].replace(/\./g, '\\.')} lookup 2710`));
      await restartA();
      assert.deepEqual(snapshot(), s0, 'the restarted instance has exactly the routes and rules of the first one');
      await a!.stop();
      a = undefined;
      const left = snapshot();
      assert.doesNotMatch(left.route4 + left.route6, /mplb0|metric 4096|table 2710/, 'a stop without --keep-guard removes the guards it took over');
      assert.doesNotMatch(left.rule4 + left.rule6, /2710|mplb0/);
    });

    test('nothing of this run is left in ip netns list', async () => {
      for (const p of [client, http, ...servers]) await p.stop();
      teardown();
      assert.deepEqual(listNetns().filter((n) => n.startsWith(`mplbR-${RUN}-`)), []);
    });
  });
}
