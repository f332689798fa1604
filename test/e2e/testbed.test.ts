// End-to-end, as root, in network namespaces made for this run: real Linux MPTCP over two rate-limited
// links, first with plain kernel routing to the VIP (the ceiling), then through the TUN packet loop.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { testbedUp, testbedDown, type TestbedHandle } from '../../src/testbed/testbed.js';
import { isRoot, haveIp, listNetns, nstatIn } from '../../src/testbed/netns.js';
import type { ClientReport } from '../../src/traffic/client.js';
import type { ServerReport } from '../../src/traffic/server.js';

const CI = process.env.CI === 'true';
const cliJs = fileURLToPath(new URL('../../src/traffic/cli.js', import.meta.url));
const runnerJs = fileURLToPath(new URL('../../src/testbed/lb-runner.js', import.meta.url));
const RATE_MBIT = 50;
const MPTCP_PORT = 5201;
const TCP_PORT = 5202;

function preflight(): string | undefined {
  if (process.platform !== 'linux') return 'needs Linux';
  if (!isRoot()) return 'needs root (network namespaces, veth, tc, TUN)';
  if (!haveIp()) return 'needs the "ip" command (iproute2)';
  if (!fs.existsSync('/dev/net/tun')) return 'needs /dev/net/tun';
  if (!fs.existsSync('/proc/sys/net/mptcp/enabled')) return 'needs a kernel with MPTCP (CONFIG_MPTCP)';
  return undefined;
}

const children = new Set<ChildProcess>();

/** Starts `node script args` inside ns and resolves with the first JSON line it prints. */
function startInNs(ns: string, script: string, args: string[]): Promise<{ child: ChildProcess; first: Record<string, unknown>; lines: AsyncIterableIterator<string> }> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, script, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const rl = readline.createInterface({ input: child.stdout! });
  const lines = rl[Symbol.asyncIterator]();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${path.basename(script)} in ${ns} printed nothing within 10 s; stderr: ${stderr}`)), 10000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${path.basename(script)} in ${ns} exited with ${code}: ${stderr}`));
    });
    void lines.next().then((r) => {
      clearTimeout(timer);
      if (r.done) return;
      const first = JSON.parse(r.value) as Record<string, unknown>;
      if (first.event === 'error') reject(new Error(`${path.basename(script)} failed: ${String(first.code)} ${String(first.message)}`));
      else resolve({ child, first, lines });
    }, reject);
  });
}

async function stopChild(child: ChildProcess | undefined, how: 'SIGTERM' | 'stdin' = 'SIGTERM'): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  if (how === 'stdin') child.stdin?.end();
  else child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(t);
}

function runClient(h: TestbedHandle, args: string[]): Promise<ClientReport> {
  return new Promise((resolve, reject) => {
    execFile(
      'ip',
      ['netns', 'exec', h.namespaces.client, process.execPath, cliJs, 'client', '--host', h.vips[0], '--json', '--timeout-ms', '15000', ...args],
      { timeout: 25000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        // Exit code 1 still prints a report: let the assertions explain.
        try {
          resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as ClientReport);
        } catch {
          reject(new Error(`client produced no report (${err?.message ?? ''}): ${stderr}`));
        }
      },
    );
  });
}

const SERVER_COUNTERS = ['MPTcpExtMPCapableSYNRX', 'MPTcpExtMPJoinSynRx', 'MPTcpExtMPJoinNoTokenFound', 'MPTcpExtDSSNotMatching', 'TcpOutRsts'];

/** One MPTCP transfer with the checks; a transfer spoiled by a server-side DSS mismatch (seen rarely
 *  without any balancer in the path) is retried once and reported, never passed silently. */
async function mptcpTransferChecked(t: { diagnostic(m: string): void }, h: TestbedHandle, reportFile?: string): Promise<ClientReport> {
  for (let attempt = 1; ; attempt++) {
    const before = nstatIn(h.namespaces.servers[0], SERVER_COUNTERS);
    const r = await runClient(h, ['--port', String(MPTCP_PORT), '--seconds', '3']);
    const after = nstatIn(h.namespaces.servers[0], SERVER_COUNTERS);
    const delta = Object.fromEntries(SERVER_COUNTERS.map((k) => [k, (after[k] ?? 0) - (before[k] ?? 0)]));
    const c = r.connections[0];
    const problems: string[] = [];
    if (!r.ok) problems.push(`transfer failed: ${c?.error ?? 'unknown'}`);
    if (c?.subflowsTotalMax !== 2) problems.push(`client saw ${c?.subflowsTotalMax} subflows, expected 2`);
    if (c?.server?.subflowsTotalMax !== 2) problems.push(`server saw ${c?.server?.subflowsTotalMax} subflows, expected 2`);
    if (!c?.server?.tokenHex || c.server.tokenHex === '00000000') problems.push('server reported no MPTCP token');
    if (!(r.goodputMbps > 70)) problems.push(`goodput ${r.goodputMbps.toFixed(1)} Mbit/s is not above 70 (one link gives ~47)`);
    if (reportFile && c?.server?.tokenHex) {
      const rep = JSON.parse(fs.readFileSync(reportFile, 'utf8')) as ServerReport;
      if (!rep.connections.some((x) => x.tokenHex === c.server!.tokenHex && x.subflowsTotalMax === 2)) problems.push(`server report file has no connection with token ${c.server.tokenHex} and 2 subflows`);
    }
    t.diagnostic(`attempt ${attempt}: ${r.goodputMbps.toFixed(1)} Mbit/s, subflows client ${c?.subflowsTotalMax} server ${c?.server?.subflowsTotalMax}, token ${c?.server?.tokenHex}, server counters ${JSON.stringify(delta)}`);
    if (problems.length === 0) return r;
    if (attempt === 1 && delta.MPTcpExtDSSNotMatching > 0) {
      t.diagnostic(`RETRY: server counted DSSNotMatching (${delta.MPTcpExtDSSNotMatching}) - a known rare server-side reset, not a balancer fault: ${problems.join('; ')}`);
      continue;
    }
    assert.fail(`${problems.join('; ')}; server counters during the transfer: ${JSON.stringify(delta)}`);
  }
}

const reason = preflight();
const runIds: string[] = [];

if (reason) {
  test('e2e testbed prerequisites', (t) => {
    if (CI) assert.fail(`the end-to-end testbed cannot run here: ${reason}. CI must run this test as root on Linux with iproute2.`);
    t.skip(reason);
  });
} else {
  describe('e2e testbed', { timeout: 90000 }, () => {
    describe('noBalancer: VIP on server 1, kernel routing only', () => {
      let h: TestbedHandle | undefined;
      let server: ChildProcess | undefined;
      const reportFile = path.join(os.tmpdir(), `mplb-e2e-${process.pid}-report.json`);

      before(async () => {
        h = testbedUp({ mode: 'noBalancer', rateMbit: RATE_MBIT });
        runIds.push(h.runId);
        const s = await startInNs(h.namespaces.servers[0], cliJs, ['server', '--port', String(MPTCP_PORT), '--tcp-port', String(TCP_PORT), '--report', reportFile]);
        server = s.child;
      });
      after(async () => {
        await stopChild(server);
        if (h) testbedDown(h);
        fs.rmSync(reportFile, { force: true });
      });

      test('one balancer: the handle describes the one-balancer topology (no router, switch, redis or ECMP)', () => {
        const x = h!;
        assert.deepEqual(x.namespaces.balancers, [x.namespaces.balancer]);
        assert.equal(x.balancers.length, 1);
        assert.deepEqual(x.balancers[0].clientLinks.map((l) => l.dev), ['lbc0', 'lbc1']);
        assert.deepEqual(x.balancer.serverLinks.map((l) => l.dev), x.servers.map((_, i) => `lbs${i + 1}`));
        assert.equal(x.router, undefined);
        assert.equal(x.redis, undefined);
        assert.equal(x.ecmp, undefined);
        assert.deepEqual(x.servers.map((s) => s.gateways), x.servers.map((s) => [s.link.peerAddr]));
        assert.deepEqual(listNetns().filter((n) => n.startsWith(`mplb-${x.runId}-`)).sort(), [x.namespaces.client, x.namespaces.balancer, ...x.namespaces.servers].sort());
        assert.throws(() => x.withdrawBalancer(0), /one balancer/);
      });

      test('one MPTCP connection uses both links (2 subflows, > 70 Mbit/s)', async (t) => {
        await mptcpTransferChecked(t, h!, reportFile);
      });

      test('plain TCP works and stays on one link', async (t) => {
        const r = await runClient(h!, ['--port', String(TCP_PORT), '--tcp', '--seconds', '2']);
        t.diagnostic(`plain TCP: ${r.goodputMbps.toFixed(1)} Mbit/s`);
        assert.ok(r.ok, `plain TCP transfer failed: ${r.connections[0]?.error}`);
        assert.ok(r.goodputMbps > 35 && r.goodputMbps < 60, `plain TCP goodput ${r.goodputMbps.toFixed(1)} Mbit/s, expected about ${RATE_MBIT}`);
      });
    });

    describe('balancer: the packet loop alone (lb-runner: engine behind the TUN, one backend, no control plane)', () => {
      let h: TestbedHandle | undefined;
      let server: ChildProcess | undefined;
      let runner: ChildProcess | undefined;
      let runnerLines: AsyncIterableIterator<string> | undefined;

      const runnerStats = async (): Promise<Record<string, any>> => {
        runner!.stdin!.write('stats\n');
        for (;;) {
          const r = await runnerLines!.next();
          if (r.done) throw new Error('lb-runner ended');
          const m = JSON.parse(r.value) as Record<string, any>;
          if (m.event === 'stats') return m;
        }
      };

      before(async () => {
        h = testbedUp({ mode: 'balancer', rateMbit: RATE_MBIT });
        runIds.push(h.runId);
        server = (await startInNs(h.namespaces.servers[0], cliJs, ['server', '--port', String(MPTCP_PORT), '--tcp-port', String(TCP_PORT)])).child;
        const r = await startInNs(h.namespaces.balancer, runnerJs, [
          '--tun', 'mplb0',
          '--engine', JSON.stringify({ vips: [MPTCP_PORT, TCP_PORT].map((port) => ({ address: `${h!.vips[0]}:${port}`, backends: [{ address: h!.servers[0].addr }] })) }),
          '--vips', h.vips.join(','),
          '--backends', h.servers.map((s) => s.addr).join(','),
          '--probe-ms', '100',
        ]);
        runner = r.child;
        runnerLines = r.lines;
      });
      after(async () => {
        await stopChild(runner, 'stdin');
        await stopChild(server);
        if (h) testbedDown(h);
      });

      test('plain TCP to the VIP through the TUN', async (t) => {
        const r = await runClient(h!, ['--port', String(TCP_PORT), '--tcp', '--seconds', '2']);
        t.diagnostic(`plain TCP via TUN: ${r.goodputMbps.toFixed(1)} Mbit/s`);
        assert.ok(r.ok, `TCP via the TUN failed: ${r.connections[0]?.error}`);
        assert.ok(r.goodputMbps > 35, `TCP via the TUN: ${r.goodputMbps.toFixed(1)} Mbit/s, expected about ${RATE_MBIT}`);
      });

      test('MPTCP to the VIP through the TUN uses both links', async (t) => {
        await mptcpTransferChecked(t, h!);
      });

      test('packet loop counters and control latency', async (t) => {
        const s = await runnerStats();
        t.diagnostic(`loop ${JSON.stringify(s.loop)} engine ${JSON.stringify(s.engine)}`);
        const e = s.engine.counters;
        assert.ok(e.to_backend > 1000 && e.to_client > 1000, 'the engine NATed both directions');
        assert.equal(s.loop.writeErrors, 0);
        assert.equal(s.loop.readErrors, 0);
        assert.equal(s.engine.drops.engine_error, 0);
        assert.equal(e.packets_in, e.to_backend + e.to_client + e.replied + e.dropped, 'one count per packet');
        // ~100 ms is the goal; the limit leaves room for a machine shared with other jobs.
        assert.ok(s.loop.maxControlMs < 250, `control messages waited up to ${s.loop.maxControlMs} ms under load`);
      });
    });

    test('nothing of this run is left in ip netns list', () => {
      const left = listNetns().filter((n) => runIds.some((id) => n.startsWith(`mplb-${id}-`)));
      assert.deepEqual(left, []);
    });
  });
}

// Last resort if a hook could not run: kill what we started (by PID); the testbed's own exit hook removes namespaces.
process.on('exit', () => {
  for (const c of children) if (c.pid && c.exitCode === null) c.kill('SIGKILL');
});
