// End-to-end: path-MTU discovery through mplb (issue 12). client -- router -- balancer (mplb run, TUN) -- server,
// in namespaces made for this run (mpicmp-<random>-*). The router's port toward the client has MTU 1400, every
// other port 1500: the server's full-size segments make the router send ICMP "fragmentation needed" (IPv6:
// "packet too big") to their source, the VIP. mplb must hand them to the server, or the download stalls.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { TestbedHandle } from '../../src/testbed/testbed.js';
import { startBalancerProcess, type BalancerProcess } from '../../src/testbed/balancer-process.js';
import { ipn, sysctlIn, tryRun } from '../../src/testbed/netns.js';
import { preflightReason } from './balancer-harness.js';

const CI = process.env.CI === 'true';
const reason = preflightReason() ?? (spawnSync('iperf3', ['--version']).status === 0 ? undefined : 'needs iperf3 (Debian package iperf3)')
  ?? (spawnSync('ping', ['-V']).status === 0 ? undefined : 'needs ping (Debian package iputils-ping)')
  ?? (spawnSync('nft', ['--version']).status === 0 ? undefined : 'needs nft (Debian package nftables)');

const RUN = `mpicmp-${randomBytes(3).toString('hex')}`;
const NS = { cli: `${RUN}-c`, rtr: `${RUN}-r`, lb: `${RUN}-lb`, srv: `${RUN}-s` };
const PORT = 5201;
/** The server rejects connections to this port with an ICMP error (nft), which mplb must translate for the client. */
const REJECT_PORT = 5202;
const V4 = { cli: '10.77.1.2', rtrCli: '10.77.1.1', rtrLb: '10.77.2.1', lbRtr: '10.77.2.2', lbSrv: '10.77.3.1', srv: '10.77.3.2', vip: '10.77.100.1' };
const V6 = { cli: 'fd77:1::2', rtrCli: 'fd77:1::1', rtrLb: 'fd77:2::1', lbRtr: 'fd77:2::2', lbSrv: 'fd77:3::1', srv: 'fd77:3::2', vip: 'fd77:100::1' };
const SMALL_MTU = 1400;
/** Bytes each download moves; bounded in time by DOWNLOAD_TIMEOUT_S. */
const DOWNLOAD = '300M';
const DOWNLOAD_TIMEOUT_S = 20;
const MIN_MBPS = 1000;

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  teardown();
});

function teardown(): void {
  for (const ns of Object.values(NS)) tryRun('ip', ['netns', 'del', ns]);
}

function link(a: string, aIf: string, b: string, bIf: string): void {
  ipn(a, ['link', 'add', aIf, 'type', 'veth', 'peer', 'name', bIf, 'netns', b]);
  ipn(a, ['link', 'set', aIf, 'up']);
  ipn(b, ['link', 'set', bIf, 'up']);
}

function addr(ns: string, dev: string, a4: string, a6: string): void {
  ipn(ns, ['addr', 'add', `${a4}/24`, 'dev', dev]);
  // No duplicate address detection: the address is usable at once (and nothing else is on the link).
  ipn(ns, ['-6', 'addr', 'add', `${a6}/64`, 'dev', dev, 'nodad']);
}

function topology(): void {
  for (const ns of Object.values(NS)) {
    spawnSync('ip', ['netns', 'add', ns], { stdio: 'ignore' });
    ipn(ns, ['link', 'set', 'lo', 'up']);
  }
  link(NS.cli, 'c0', NS.rtr, 'r0');
  link(NS.rtr, 'r1', NS.lb, 'l0');
  link(NS.lb, 'l1', NS.srv, 's0');
  addr(NS.cli, 'c0', V4.cli, V6.cli);
  addr(NS.rtr, 'r0', V4.rtrCli, V6.rtrCli);
  addr(NS.rtr, 'r1', V4.rtrLb, V6.rtrLb);
  addr(NS.lb, 'l0', V4.lbRtr, V6.lbRtr);
  addr(NS.lb, 'l1', V4.lbSrv, V6.lbSrv);
  addr(NS.srv, 's0', V4.srv, V6.srv);
  ipn(NS.cli, ['route', 'add', 'default', 'via', V4.rtrCli]);
  ipn(NS.cli, ['-6', 'route', 'add', 'default', 'via', V6.rtrCli]);
  ipn(NS.rtr, ['route', 'add', `${V4.vip}/32`, 'via', V4.lbRtr]);
  ipn(NS.rtr, ['-6', 'route', 'add', `${V6.vip}/128`, 'via', V6.lbRtr]);
  ipn(NS.lb, ['route', 'add', 'default', 'via', V4.rtrLb]);
  ipn(NS.lb, ['-6', 'route', 'add', 'default', 'via', V6.rtrLb]);
  ipn(NS.srv, ['route', 'add', 'default', 'via', V4.lbSrv]);
  ipn(NS.srv, ['-6', 'route', 'add', 'default', 'via', V6.lbSrv]);
  for (const ns of [NS.rtr, NS.lb]) {
    sysctlIn(ns, 'net.ipv4.ip_forward', '1');
    sysctlIn(ns, 'net.ipv6.conf.all.forwarding', '1');
  }
}

/** The router's port toward the client: SMALL_MTU for the test, 1500 for the baseline. */
function setHopMtu(mtu: number): void {
  ipn(NS.rtr, ['link', 'set', 'r0', 'mtu', String(mtu)]);
  // Forget path MTUs learned by an earlier download (IPv4 and IPv6 exceptions on the server).
  tryRun('ip', ['-n', NS.srv, 'route', 'flush', 'cache']);
  tryRun('ip', ['-n', NS.srv, '-6', 'route', 'flush', 'cache']);
}

interface Download { completed: boolean; bytes: number; mbps: number; detail: string }

/** iperf3 -R: the server sends DOWNLOAD bytes to the client through the VIP; killed by `timeout` if it stalls. */
function download(vip: string): Download {
  const r = spawnSync('ip', ['netns', 'exec', NS.cli, 'timeout', String(DOWNLOAD_TIMEOUT_S), 'iperf3', '-c', vip, '-p', String(PORT), '-R', '-n', DOWNLOAD,
    '--json', '--connect-timeout', '3000'], { encoding: 'utf8', timeout: (DOWNLOAD_TIMEOUT_S + 10) * 1000 });
  if (r.status !== 0) return { completed: false, bytes: 0, mbps: 0, detail: `iperf3 exit ${r.status} (124 = timed out after ${DOWNLOAD_TIMEOUT_S} s): ${(r.stdout ?? '').slice(-300)} ${(r.stderr ?? '').slice(-300)}` };
  const j = JSON.parse(r.stdout) as { end: { sum_received: { bytes: number; bits_per_second: number } } };
  const s = j.end.sum_received;
  return { completed: true, bytes: s.bytes, mbps: s.bits_per_second / 1e6, detail: '' };
}

type Counters = Record<string, number>;
async function engineCounters(lb: BalancerProcess): Promise<Counters> {
  const s = await lb.request('stats') as { engine: { counters: Counters; drops: Counters } };
  return { ...s.engine.counters, ...Object.fromEntries(Object.entries(s.engine.drops).map(([k, v]) => [`drop:${k}`, v])) };
}
const delta = (a: Counters, b: Counters, k: string) => (b[k] ?? 0) - (a[k] ?? 0);

if (reason) {
  test('ICMP end to end (path MTU, ping)', (t) => {
    if (CI) assert.fail(`the ICMP end-to-end tests cannot run here: ${reason}. CI must run them as root on Linux.`);
    t.skip(reason);
  });
} else {
  describe('ICMP through mplb: path-MTU discovery and ping', { timeout: 240_000 }, () => {
    let lb: BalancerProcess | undefined;
    let iperf: ChildProcess | undefined;

    before(async () => {
      teardown();
      topology();
      iperf = spawn('ip', ['netns', 'exec', NS.srv, 'iperf3', '-s', '-p', String(PORT)], { stdio: 'ignore' });
      children.add(iperf);
      const tb = { runId: RUN, vips: [V4.vip], servers: [], namespaces: { balancer: NS.lb, balancers: [NS.lb] } } as unknown as TestbedHandle;
      lb = await startBalancerProcess(tb, {
        engine: {
          vips: [
            { address: `${V4.vip}:${PORT}`, backends: [{ address: V4.srv }] },
            { address: `[${V6.vip}]:${PORT}`, backends: [{ address: V6.srv }] },
            { address: `${V4.vip}:${REJECT_PORT}`, backends: [{ address: V4.srv }] },
            { address: `[${V6.vip}]:${REJECT_PORT}`, backends: [{ address: V6.srv }] },
          ],
          admin: { enabled: false },
        },
      });
      await new Promise((r) => setTimeout(r, 300)); // iperf3 listening
    });

    /** The server answers a SYN to REJECT_PORT with ICMP host unreachable (IPv6: address unreachable) from its address. */
    function rejectWithIcmp(): void {
      const nft = (args: string[]) => { const r = spawnSync('ip', ['netns', 'exec', NS.srv, 'nft', ...args], { encoding: 'utf8' }); assert.equal(r.status, 0, r.stderr); };
      nft(['add', 'table', 'inet', 'mpicmp']);
      nft(['add', 'chain', 'inet', 'mpicmp', 'in', '{ type filter hook input priority 0; }']);
      nft(['add', 'rule', 'inet', 'mpicmp', 'in', 'tcp', 'dport', String(REJECT_PORT), 'reject', 'with', 'icmpx', 'type', 'host-unreachable']);
    }

    after(async () => {
      await lb?.stop();
      if (iperf && iperf.exitCode === null) { iperf.kill('SIGTERM'); await new Promise((r) => iperf!.once('exit', r)); }
      teardown();
    });

    for (const fam of [4, 6] as const) {
      const vip = fam === 4 ? V4.vip : V6.vip;
      test(`IPv${fam}: a download across a ${SMALL_MTU}-byte hop completes (the router's ${fam === 4 ? 'fragmentation needed' : 'packet too big'} reaches the server)`, async (t) => {
        // Rates on a shared 2-core machine move with the load: baseline and small hop alternate, up to two rounds, and
        // the rate check passes if one round meets it. Every download must complete.
        const rounds: string[] = [];
        let c0: Counters = {}, c1: Counters = {}, rateOk = false;
        for (let round = 0; round < 2 && !rateOk; round++) {
          setHopMtu(1500);
          const base = download(vip);
          assert.ok(base.completed, `baseline download (no small hop) failed: ${base.detail}`);
          setHopMtu(SMALL_MTU);
          const before = await engineCounters(lb!);
          const small = download(vip);
          const after = await engineCounters(lb!);
          if (round === 0) { c0 = before; }
          c1 = after;
          rounds.push(`baseline ${base.mbps.toFixed(0)} Mbit/s, across the ${SMALL_MTU}-byte hop ${small.mbps.toFixed(0)} Mbit/s`);
          assert.ok(small.completed, `the download across the small hop did not complete: ${small.detail}`);
          assert.ok(small.bytes >= 300 * 1024 * 1024, `moved ${small.bytes} bytes`);
          rateOk = small.mbps >= MIN_MBPS || small.mbps >= 0.9 * base.mbps;
        }
        t.diagnostic(`IPv${fam}: ${rounds.join('; ')}; ICMP: to_backend ${delta(c0, c1, 'icmp_errors_to_backend')}, ` +
          `hashed ${delta(c0, c1, 'icmp_errors_to_backend_hashed')}, pmtu ${delta(c0, c1, 'icmp_pmtu_errors')}`);
        assert.ok(rateOk, `below ${MIN_MBPS} Mbit/s and below 90% of the baseline in every round: ${rounds.join('; ')}`);
        // The path MTU was learned through mplb: the router's errors were forwarded (by flow), none dropped.
        assert.ok(delta(c0, c1, 'icmp_pmtu_errors') >= 1, 'no path-MTU error went through mplb');
        assert.ok(delta(c0, c1, 'icmp_errors_to_backend') >= 1, 'no ICMP error was forwarded by its flow');
        for (const k of ['icmp_embedded_malformed', 'icmp_bad_checksum', 'icmp_no_service', 'icmp_no_flow', 'icmp_truncated']) {
          assert.equal(delta(c0, c1, `drop:${k}`), 0, `drops ${k}`);
        }
      });
    }

    for (const fam of [4, 6] as const) {
      test(`IPv${fam}: the server's ICMP unreachable reaches the client translated (its connect fails at once, not by timeout)`, async () => {
        if (fam === 4) rejectWithIcmp();
        const vip = fam === 4 ? V4.vip : V6.vip;
        const c0 = await engineCounters(lb!);
        const t0 = Date.now();
        // bash's /dev/tcp: one connect, its error on stderr; a connect nobody answers would take the whole 8 s.
        const r = spawnSync('ip', ['netns', 'exec', NS.cli, 'timeout', '8', 'bash', '-c', `exec 3<>/dev/tcp/${vip}/${REJECT_PORT}`], { encoding: 'utf8', timeout: 15000 });
        const ms = Date.now() - t0;
        const c1 = await engineCounters(lb!);
        assert.notEqual(r.status, 124, `the connect timed out: the ICMP error never reached the client (${r.stderr})`);
        assert.match(r.stderr, /No route to host/);
        assert.ok(ms < 4000, `the connect took ${ms} ms`);
        assert.ok(delta(c0, c1, 'icmp_errors_to_client') >= 1, 'no ICMP error was translated by its flow');
      });
    }

    for (const fam of [4, 6] as const) {
      test(`IPv${fam}: ping to the VIP is answered by mplb`, async () => {
        const vip = fam === 4 ? V4.vip : V6.vip;
        const c0 = await engineCounters(lb!);
        const r = spawnSync('ip', ['netns', 'exec', NS.cli, 'ping', `-${fam}`, '-c', '3', '-i', '0.2', '-W', '2', vip], { encoding: 'utf8', timeout: 15000 });
        const c1 = await engineCounters(lb!);
        assert.equal(r.status, 0, `ping failed: ${r.stdout} ${r.stderr}`);
        assert.match(r.stdout, /3 received/);
        assert.equal(delta(c0, c1, 'icmp_echo_answered'), 3);
      });
    }
  });
}
