// End-to-end: the lifecycle of `mplb run` in a network namespace made for this run only (mplbH-<hex>-lb, removed on
// exit, also on failure): a SIGTERM at any moment of a 2,000-VIP start leaves nothing behind (no TUN, rules, routes,
// guards; sysctls as before), and a SIGKILL followed by a restart and a stop puts ip_forward back to its value from
// before the first start. No traffic: these tests are about what mplb sets up and takes down.
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
const RUN = randomBytes(3).toString('hex');
// MPLB_TEST_NS_PREFIX: another prefix for the namespace, for runs next to other jobs on one machine.
const PREFIX = process.env.MPLB_TEST_NS_PREFIX ?? 'mplbH';
const NS = `${PREFIX}-${RUN}-lb`;
const TOKEN = 'e2e-lifecycle-token-5c1e9a';
const N_VIPS = 2000;
const vipOf = (i: number) => `198.19.${i >> 8}.${i & 255}`;

const ip = (args: string[]) => execFileSync('ip', args, { encoding: 'utf8', timeout: 20000 });
const ipNs = (args: string[]) => ip(['-n', NS, ...args]);
const inNs = (cmd: string, args: string[]) => execFileSync('ip', ['netns', 'exec', NS, cmd, ...args], { encoding: 'utf8', timeout: 20000 });
let made = false;

function teardown(): void {
  if (!made) return;
  made = false;
  for (const c of children) if (c.pid && c.exitCode === null && c.signalCode === null) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  try { execFileSync('ip', ['netns', 'del', NS], { stdio: 'ignore' }); } catch { /* not there */ }
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mplb-e2e-lifecycle-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
const STATE = path.join(tmp, 'state', 'mplb0.json');

/** Everything mplb may set up in the namespace, as text: after a stop it must equal the state before the start. */
function snapshot(): Record<string, string> {
  const v6 = (s: string) => s.split('\n').filter((l) => !/table local|fe80::/.test(l)).join('\n');
  return {
    links: ipNs(['-o', 'link', 'show']).split('\n').map((l) => l.split(':').slice(1, 2).join('').trim()).filter(Boolean).join(' '),
    route4: ipNs(['-4', 'route', 'show', 'table', 'all']),
    route6: v6(ipNs(['-6', 'route', 'show', 'table', 'all'])),
    rule4: ipNs(['-4', 'rule', 'show']),
    rule6: ipNs(['-6', 'rule', 'show']),
    sysctl: inNs('cat', ['/proc/sys/net/ipv4/ip_forward', '/proc/sys/net/ipv4/conf/all/rp_filter', '/proc/sys/net/ipv6/conf/all/forwarding']),
    stateFile: fs.existsSync(STATE) ? fs.readFileSync(STATE, 'utf8') : '(none)',
  };
}

let cfgN = 0;
function config(nVips: number, extra: Record<string, unknown> = {}): string {
  const file = path.join(tmp, `mplb-${++cfgN}.yaml`);
  fs.writeFileSync(file, stringify({
    device: { name: 'mplb0', stateFile: STATE },
    vips: Array.from({ length: nVips }, (_, i) => ({ address: `${vipOf(i)}:80`, backends: [{ address: `198.18.${i % 200}.2` }, { address: `198.18.${i % 200}.3` }] })),
    tables: { maxFlows: 4096, maxConnections: 2048, ...(extra.tables as object ?? {}) },
    admin: { address: '127.0.0.1', port: 0, token: TOKEN },
    log: { level: 'warn' },
  }));
  return file;
}

interface Run { child: ChildProcess; t0: number; ready: Promise<number>; exited: Promise<{ code: number | null; signal: string | null; ms: number }>; stderr(): string; admin(): string | undefined; startMs(): unknown }

function start(file: string): Run {
  const t0 = performance.now();
  const child = spawn('ip', ['netns', 'exec', NS, process.execPath, MAIN, 'run', '--config', file, '--control-stdin'], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  let err = '', admin: string | undefined, startMs: unknown;
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: string | null; ms: number }>((r) => child.once('exit', (code, signal) => { children.delete(child); r({ code, signal, ms: performance.now() - t0 }); }));
  const ready = new Promise<number>((resolve, reject) => {
    readline.createInterface({ input: child.stdout! }).on('line', (l) => {
      if (!l.includes('"ready"')) return;
      try { ({ admin, startMs } = JSON.parse(l) as { admin?: string; startMs?: unknown }); } catch { /* keep going */ }
      resolve(performance.now() - t0);
    });
    void exited.then((x) => reject(new Error(`mplb run exited (${x.code ?? x.signal}) before ready: ${err.trim().slice(0, 2000)}`)));
  });
  ready.catch(() => undefined);
  return { child, t0, ready, exited, stderr: () => err, admin: () => admin, startMs: () => startMs };
}

/** Waits for the exit (SIGKILL after `ms`, a failure). */
async function exitOf(r: Run, ms = 60000): Promise<{ code: number | null; signal: string | null; ms: number }> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => { timer = setTimeout(() => { r.child.kill('SIGKILL'); reject(new Error(`mplb run did not exit within ${ms} ms: ${r.stderr().slice(0, 2000)}`)); }, ms); });
  try { return await Promise.race([r.exited, late]); } finally { clearTimeout(timer); }
}

/** Resolves when `ip monitor` in the namespace prints a line matching `re` (started before mplb, so nothing is missed). */
function monitor(re: RegExp): { seen: Promise<void>; stop(): void; ready: Promise<void> } {
  const mon = spawn('ip', ['-n', NS, 'monitor', 'link', 'route'], { stdio: ['ignore', 'pipe', 'ignore'] });
  children.add(mon);
  mon.once('exit', () => children.delete(mon));
  const seen = new Promise<void>((resolve) => {
    readline.createInterface({ input: mon.stdout! }).on('line', (l) => { if (re.test(l)) resolve(); });
  });
  return { seen, stop: () => { if (mon.exitCode === null) mon.kill('SIGTERM'); }, ready: sleep(200) };
}

const reason = preflightReason();

if (reason) {
  test('lifecycle e2e prerequisites', (t) => {
    if (CI) assert.fail(`the lifecycle end-to-end tests cannot run here: ${reason}. CI must run them as root on Linux with iproute2.`);
    t.skip(reason);
  });
} else {
  describe('mplb run lifecycle', { timeout: 600000 }, () => {
    let clean: Record<string, string>;
    before(() => {
      made = true;
      process.on('exit', teardown);
      ip(['netns', 'add', NS]);
      ipNs(['link', 'set', 'lo', 'up']);
      // A new namespace starts with ip_forward=0: mplb sets 1 and must put 0 back, whatever ends it.
      clean = snapshot();
      assert.equal(clean.sysctl.split('\n')[0], '0');
    });
    after(() => teardown());

    test(`a full start with ${N_VIPS} VIPs, and a stop, leave nothing behind`, async (t) => {
      const r = start(config(N_VIPS));
      const readyMs = await r.ready;
      t.diagnostic(`${N_VIPS} VIPs (Maglev tables of 65537): ready after ${readyMs.toFixed(0)} ms; mplb's own figures (ms): ${JSON.stringify(r.startMs())}`);
      assert.match(ipNs(['route', 'show']), new RegExp(`^${vipOf(N_VIPS - 1).replace(/\./g, '\\.')} dev mplb0`, 'm'));
      assert.equal(inNs('cat', ['/proc/sys/net/ipv4/ip_forward']).trim(), '1');
      r.child.kill('SIGTERM');
      const x = await exitOf(r);
      assert.deepEqual([x.code, x.signal], [0, null], r.stderr());
      assert.deepEqual(snapshot(), clean);
    });

    // Moments in ms after the spawn, and events seen by `ip monitor`: the TUN appearing, the first guard route, the
    // last VIP's route (routes in, the control plane not up yet) and the ready line.
    // 'overlap' (default tables only): the first guard route while the worker still builds the 65537-slot tables; the
    // routes go in during the engine build, and mplb must say that both were in progress when the signal came.
    const moments: Array<number | 'tun' | 'first-route' | 'overlap' | 'last-route' | 'ready'> = [0, 50, 100, 200, 400, 800, 1600, 'tun', 'first-route', 'last-route', 'ready'];
    for (const [label, maglevSize] of [['small Maglev tables (start spread over every step)', 251], ['default Maglev tables', 65537]] as const) {
      test(`SIGTERM at any moment of a ${N_VIPS}-VIP start (${label}): the start stops, undoes what it did, exits 0`, async (t) => {
        const file = config(N_VIPS, { tables: { maglevSize } });
        const ms = maglevSize === 65537 ? [400, 'overlap', 'last-route', 'ready'] as const : moments;
        const problems: string[] = [];
        for (const m of ms) {
          const lastVip = new RegExp(`^${vipOf(N_VIPS - 1).replace(/\./g, '\\.')} dev mplb0`);
          const mon = typeof m === 'string' && m !== 'ready' ? monitor(m === 'tun' ? /: mplb0: / : m === 'first-route' || m === 'overlap' ? /^blackhole / : lastVip) : undefined;
          // Whether the TUN existed when the signal went: a SIGTERM that kills mplb after that is a missing handler.
          const tun = monitor(/: mplb0: /);
          let tunSeen = false;
          void tun.seen.then(() => { tunSeen = true; });
          await Promise.all([mon?.ready, tun.ready]);
          const r = start(file);
          let at = '';
          try {
            if (typeof m === 'number') { await sleep(m); at = `${m} ms`; }
            else if (m === 'ready') { await r.ready; at = 'ready'; }
            else { await Promise.race([mon!.seen, r.exited]); at = m; }
          } finally { mon?.stop(); }
          const sentMs = performance.now() - r.t0;
          const tunBefore = tunSeen;
          r.child.kill('SIGTERM');
          const x = await exitOf(r);
          tun.stop();
          const left = snapshot();
          const diff = Object.keys(clean).filter((k) => left[k] !== clean[k]);
          t.diagnostic(`SIGTERM at ${at} (${sentMs.toFixed(0)} ms): exit ${x.code ?? x.signal} after ${x.ms.toFixed(0)} ms; left behind: ${diff.map((k) => `${k}: ${left[k].split('\n').filter((l) => !clean[k].includes(l)).slice(0, 2).join(' | ')}`).join('; ') || 'nothing'}`);
          // While node starts, before mplb's first line ran (tens of ms; more on a busy machine), the default action
          // ends it, with nothing done yet. Once mplb runs its handlers are set: nothing it does comes before them.
          if (x.signal === 'SIGTERM' && (tunBefore || sentMs >= 1000)) problems.push(`killed by the signal at ${at} (${sentMs.toFixed(0)} ms${tunBefore ? ', the TUN existed' : ''}): the handlers must be set from the first step`);
          if (x.signal !== 'SIGTERM' && x.code !== 0) problems.push(`exit code ${x.code} after a SIGTERM at ${at}: ${r.stderr().slice(0, 500)}`);
          if (m === 'overlap' && !/in progress then: (engine build, routes|routes, engine build)/.test(r.stderr())) {
            problems.push(`the SIGTERM at the first route did not come while both the engine build and the routes were in progress: ${r.stderr().slice(0, 500)}`);
          }
          if (diff.length > 0) {
            problems.push(`left behind after a SIGTERM at ${at}: ${diff.join(', ')}`);
            // Clean up for the next moment (a failed run), as a stop would.
            inNs('sh', ['-c', `ip route flush table 2710; ip -6 route flush table 2710; ip route show type blackhole | sed 's/^/route del /' | ip -force -batch -; ip rule show | grep -E 'lookup 2710|iif mplb0' | sed -E 's/^([0-9]+):\\s*(.*)$/rule del priority \\1 \\2/' | ip -force -batch -; echo 0 > /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv6/conf/all/forwarding; rm -f ${STATE}; true`]);
          }
        }
        assert.deepEqual(problems, []);
      });
    }

    test('SIGKILL, restart, stop: ip_forward goes back to 0 (the value before the first start), not to the 1 the killed run set', async () => {
      const file = config(3);
      const a = start(file);
      await a.ready;
      assert.equal(inNs('cat', ['/proc/sys/net/ipv4/ip_forward']).trim(), '1');
      a.child.kill('SIGKILL');
      await exitOf(a);
      // The killed run's guards, rules and sysctls are still there; its TUN went with its file descriptor.
      assert.equal(inNs('cat', ['/proc/sys/net/ipv4/ip_forward']).trim(), '1');
      const b = start(file);
      try { await b.ready; } finally { b.child.kill('SIGTERM'); }
      const x = await exitOf(b);
      assert.equal(x.code, 0, b.stderr());
      assert.deepEqual(snapshot(), clean, 'after SIGKILL, restart and stop');
    });

    test('SIGKILL while the start installs its routes, restart, stop: nothing is left, ip_forward is 0 again', async () => {
      const file = config(N_VIPS, { tables: { maglevSize: 251 } });
      const mon = monitor(/^blackhole /);
      await mon.ready;
      const a = start(file);
      await Promise.race([mon.seen, a.exited]);
      a.child.kill('SIGKILL');
      mon.stop();
      await exitOf(a);
      assert.equal(inNs('cat', ['/proc/sys/net/ipv4/ip_forward']).trim(), '1', 'the sysctls were set before the routes');
      assert.ok(fs.existsSync(STATE), 'the state file was written before anything changed');
      const b = start(file);
      try { await b.ready; } finally { b.child.kill('SIGTERM'); }
      assert.equal((await exitOf(b)).code, 0, b.stderr());
      assert.deepEqual(snapshot(), clean);
    });

    test('--keep-guard, restart, stop: the guards are taken over and ip_forward still goes back to 0', async () => {
      const file = config(3);
      const a = start(file);
      await a.ready;
      const args = ['netns', 'exec', NS, process.execPath, MAIN, 'run', '--config', file, '--control-stdin', '--keep-guard'];
      a.child.kill('SIGTERM');
      await exitOf(a);
      const k = spawn('ip', args, { stdio: ['pipe', 'pipe', 'pipe'] });
      children.add(k);
      await new Promise<void>((resolve) => readline.createInterface({ input: k.stdout! }).on('line', (l) => { if (l.includes('"ready"')) resolve(); }));
      k.kill('SIGTERM');
      await new Promise((r) => k.once('exit', r));
      children.delete(k);
      assert.match(ipNs(['-4', 'route', 'show', 'table', 'all']), /^blackhole 198\.19\.0\.0 metric 4096/m, 'the guards stay');
      assert.equal(inNs('cat', ['/proc/sys/net/ipv4/ip_forward']).trim(), '1');
      assert.ok(fs.existsSync(STATE), 'the state file stays with the guards');
      const b = start(file);
      try { await b.ready; } finally { b.child.kill('SIGTERM'); }
      assert.equal((await exitOf(b)).code, 0, b.stderr());
      assert.deepEqual(snapshot(), clean, 'the stop without --keep-guard restores the values from before the first start');
    });

    test('SIGKILL, then a restart with other VIPs and backends: the killed run\'s guards and rules are removed too', async () => {
      const a = start(config(3));
      await a.ready;
      a.child.kill('SIGKILL');
      await exitOf(a);
      const file = path.join(tmp, 'other.yaml');
      fs.writeFileSync(file, stringify({ device: { name: 'mplb0', stateFile: STATE }, vips: [{ address: '198.19.9.1:80', backends: [{ address: '198.18.99.2' }] }], admin: { enabled: false }, log: { level: 'warn' } }));
      const b = start(file);
      try {
        await b.ready;
        assert.doesNotMatch(ipNs(['-4', 'route', 'show', 'table', 'all']), new RegExp(`blackhole ${vipOf(0).replace(/\./g, '\\.')} `), 'the killed run\'s VIP guard went at the restart');
        assert.doesNotMatch(ipNs(['-4', 'rule', 'show']), /from 198\.18\.0\.2 /, 'the killed run\'s backend rule went at the restart');
      } finally { b.child.kill('SIGTERM'); }
      assert.equal((await exitOf(b)).code, 0, b.stderr());
      assert.deepEqual(snapshot(), clean);
    });

    test('the admin API refuses a loopback VIP and a backend on a VIP address (400), routes untouched', async () => {
      const r = start(config(2));
      try {
      await r.ready;
      const before = snapshot();
      const url = r.admin()!;
      const post = (p: string, body: unknown) => inNs(process.execPath, ['-e', `fetch(${JSON.stringify(url + p)}, { method: 'POST', headers: { authorization: 'Bearer ${TOKEN}' }, body: ${JSON.stringify(JSON.stringify(body))} }).then(async (r) => console.log(r.status, await r.text()))`]);
      assert.match(post('/api/v1/vips', { address: '127.0.0.9:80', backends: [{ address: '198.18.0.2' }] }), /^400 .*loopback/s);
      assert.match(post(`/api/v1/vips/${vipOf(0)}:80/backends`, { address: vipOf(1) }), /^400 .*is the address of VIP/s);
      assert.deepEqual(snapshot(), before);
      } finally { r.child.kill('SIGTERM'); }
      assert.equal((await exitOf(r)).code, 0);
      assert.deepEqual(snapshot(), clean);
    });

    test('nothing of this run is left in ip netns list', () => {
      teardown();
      assert.deepEqual(listNetns().filter((n) => n.startsWith(`${PREFIX}-${RUN}`)), []);
    });
  });
}
