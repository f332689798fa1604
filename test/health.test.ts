// Health checks on a manual clock with scripted probes: rise/fall thresholds, flapping, timeouts, live config,
// per-VIP overrides, and the verdicts' effect on selection. Plus the real connect probe on loopback.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Writable } from 'node:stream';
import { Controller, inProcessPort } from '../src/control/controller.js';
import { validateRunConfig } from '../src/control/run-config.js';
import { HealthChecker, connectProbe, type ProbeResult, type ProbeTarget, type Scheduler } from '../src/control/health.js';
import { createLogger } from '../src/control/logger.js';
import { ConfigError } from '../src/engine/config.js';
import { listenMptcp, mptcpAvailable } from '../src/io/mptcp-socket.js';
import { ACK, SYN, capSyn, capSynAck, tcp, endpoints } from './helpers/packets.js';

const VIP = '198.18.100.1:80';
const B1 = '198.18.10.2:80', B2 = '198.18.11.2:80';

/** Time moves only when told; due timers fire in order, and the promise chains they start settle in between. */
class ManualClock implements Scheduler {
  t = 0;
  private timers: Array<{ at: number; id: number; fn: () => void }> = [];
  private nextId = 1;
  now(): number { return this.t; }
  setTimeout(fn: () => void, ms: number): unknown { const id = this.nextId++; this.timers.push({ at: this.t + ms, id, fn }); return id; }
  clearTimeout(h: unknown): void { this.timers = this.timers.filter((x) => x.id !== h); }
  get pending(): number { return this.timers.length; }
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    await settle();
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.timers[0];
      if (!next || next.at > end) break;
      this.timers.shift();
      this.t = next.at;
      next.fn();
      await settle();
    }
    this.t = end;
  }
}
/** Lets every queued promise continuation run (no clock involved). */
const settle = () => new Promise<void>((r) => setImmediate(r));

/** Probe answers per backend id: a fixed verdict, a script consumed one per probe, or 'hang'. */
type Answer = boolean | 'hang';
function scriptedProbe() {
  const scripts = new Map<string, Answer[]>();
  const fixed = new Map<string, Answer>();
  const calls: ProbeTarget[] = [];
  const probe = (t: ProbeTarget): Promise<ProbeResult> => {
    calls.push(t);
    const a = scripts.get(t.backend)?.shift() ?? fixed.get(t.backend) ?? true;
    if (a === 'hang') return new Promise(() => undefined);
    return Promise.resolve(a ? { ok: true } : { ok: false, error: 'ECONNREFUSED' });
  };
  return { probe, scripts, fixed, calls };
}

function setup(health: Record<string, unknown> = {}) {
  const cfg = validateRunConfig({
    vips: [{ address: VIP, backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2' }] }],
    tables: { maxFlows: 1024, maxConnections: 1024 },
    health: { enabled: true, ...health },
  });
  const port = inProcessPort(cfg);
  const ctl = new Controller(port, cfg);
  const clock = new ManualClock();
  const sp = scriptedProbe();
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(chunk, _enc, cb) { for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l)); cb(); } });
  const checker = new HealthChecker({ controller: ctl, scheduler: clock, probe: sp.probe, logger: createLogger({ level: 'info', destination: sink }) });
  return { ctl, p: port.local, clock, sp, checker, lines };
}

/** Backends that 30 new connections land on. */
function landing(p: ReturnType<typeof setup>['p'], base: number): Set<string> {
  const seen = new Set<string>();
  for (let i = 0; i < 30; i++) {
    const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: base + i, dport: 80, flags: SYN, options: [capSyn(1)] });
    p.process(syn, 0, syn.length, 1);
    seen.add(endpoints(syn).dst);
  }
  return seen;
}
const stateOf = async (ctl: Controller, id: string) => (await ctl.vips())[0].backends.find((b) => b.id === id)!.healthy;

test('fall: a backend goes down on the fall-th failure in a row, leaves selection, and the change is logged and counted', async () => {
  const { ctl, p, sp, checker, lines } = setup({ rise: 2, fall: 3 });
  sp.fixed.set(B2, false);
  for (let round = 1; round <= 2; round++) {
    await checker.runRound();
    assert.equal(await stateOf(ctl, B2), true, `still up after ${round} failure(s)`);
    assert.equal(checker.get(VIP, B2)!.failures, round);
  }
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false, 'down after 3 failures');
  const h = checker.get(VIP, B2)!;
  assert.deepEqual([h.state, h.checks.fail, h.transitions.down, h.lastError], ['down', 3, 1, 'ECONNREFUSED']);
  assert.deepEqual(landing(p, 1000), new Set([B1]), 'new connections avoid the down backend');
  const log = lines.find((l) => l.msg?.toString().startsWith('backend down'));
  assert.ok(log, JSON.stringify(lines));
  assert.deepEqual([log.level, log.vip, log.backend, log.reason], ['warn', VIP, B2, 'ECONNREFUSED']);
  assert.equal(checker.get(VIP, B1)!.state, 'up');
});

test('rise: a down backend needs rise successes in a row to come back', async () => {
  const { ctl, p, sp, checker, lines } = setup({ rise: 2, fall: 1 });
  sp.scripts.set(B2, [false, true, false, true, true]);
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false, 'fall 1: down at once');
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false, 'one success is not enough');
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false, 'a failure resets the count');
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false);
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), true, 'two successes in a row: up');
  assert.deepEqual(checker.get(VIP, B2)!.transitions, { up: 1, down: 1 });
  assert.deepEqual(landing(p, 2000), new Set([B1, B2]), 'back in selection');
  assert.ok(lines.some((l) => l.level === 'info' && String(l.msg).startsWith('backend up') && l.backend === B2));
});

test('flapping below the thresholds changes nothing; flapping across them moves at most once per threshold', async () => {
  const { ctl, sp, checker } = setup({ rise: 2, fall: 3 });
  // Two failures, one success, repeated: never three failures in a row.
  sp.scripts.set(B2, Array.from({ length: 30 }, (_, i) => i % 3 === 2));
  for (let i = 0; i < 30; i++) await checker.runRound();
  assert.equal(await stateOf(ctl, B2), true);
  assert.deepEqual(checker.get(VIP, B2)!.transitions, { up: 0, down: 0 });
  assert.deepEqual(checker.get(VIP, B2)!.checks, { ok: 10, fail: 20 });
  // Down, then alternating: one success never reaches rise 2, so it stays down.
  sp.scripts.set(B2, [false, false, false, ...Array.from({ length: 20 }, (_, i) => i % 2 === 0)]);
  for (let i = 0; i < 23; i++) await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false);
  assert.deepEqual(checker.get(VIP, B2)!.transitions, { up: 0, down: 1 });
});

test('rounds run every intervalMs on the injected clock; a hanging probe fails at timeoutMs', async () => {
  const { ctl, sp, clock, checker } = setup({ intervalMs: 2000, timeoutMs: 500, fall: 2 });
  sp.fixed.set(B2, 'hang');
  checker.start();
  await clock.advance(0);
  assert.equal(sp.calls.length, 2, 'first round at once: both backends probed');
  assert.equal(checker.rounds, 0, 'round waits for the hanging probe');
  await clock.advance(499);
  assert.equal(checker.rounds, 0);
  await clock.advance(1);
  assert.equal(checker.rounds, 1, 'the timeout ends the round');
  assert.equal(checker.get(VIP, B2)!.lastError, 'timeout after 500 ms');
  await clock.advance(1499);
  assert.equal(sp.calls.length, 2, 'next round not before intervalMs from the previous start');
  await clock.advance(1);
  assert.equal(sp.calls.length, 4);
  await clock.advance(500);
  assert.equal(await stateOf(ctl, B2), false, 'second timeout: down (fall 2)');
  assert.equal(checker.get(VIP, B1)!.state, 'up');
  await checker.stop();
  assert.equal(clock.pending, 0, 'stop clears the timer');
  await clock.advance(10_000);
  assert.equal(sp.calls.length, 4, 'no rounds after stop');
});

test('live config: interval, thresholds, per-VIP overrides and turning checks off take effect at the next round', async () => {
  const { ctl, sp, clock, checker } = setup({ intervalMs: 1000, timeoutMs: 100, fall: 5 });
  sp.fixed.set(B2, false);
  checker.start();
  await clock.advance(0);
  assert.deepEqual(sp.calls.map((c) => [c.backend, c.check, c.port, c.timeoutMs]), [[B1, 'tcp', 80, 100], [B2, 'tcp', 80, 100]]);
  // A reload: fall 1, MPTCP checks on port 5201 for this VIP, every 3 s.
  await ctl.reload({ ...ctl.config, health: { ...ctl.config.health, intervalMs: 3000, fall: 1, vips: { [VIP]: { check: 'mptcp', port: 5201 } } } });
  await clock.advance(1000);
  assert.deepEqual(sp.calls.slice(2).map((c) => [c.backend, c.check, c.port]), [[B1, 'mptcp', 5201], [B2, 'mptcp', 5201]]);
  assert.equal(await stateOf(ctl, B2), false, 'fall 1 applies');
  await clock.advance(2999);
  assert.equal(sp.calls.length, 4, 'the new interval applies');
  await clock.advance(1);
  assert.equal(sp.calls.length, 6);
  // Checks off for the VIP: no probes, and the checker's verdicts are withdrawn.
  await ctl.reload({ ...ctl.config, health: { ...ctl.config.health, vips: { [VIP]: { enabled: false } } } });
  await clock.advance(3000);
  assert.equal(sp.calls.length, 6);
  assert.equal(await stateOf(ctl, B2), true, 'no checks, no verdict: back in selection');
  assert.equal(checker.get(VIP, B2)!.checked, false);
  await checker.stop();
});

test('backends added and removed through the Controller are picked up and forgotten', async () => {
  const { ctl, sp, checker } = setup({ fall: 1 });
  await checker.runRound();
  await ctl.addBackend(VIP, { address: '198.18.12.2' });
  sp.fixed.set('198.18.12.2:80', false);
  await checker.runRound();
  assert.equal(await stateOf(ctl, '198.18.12.2:80'), false);
  await ctl.removeBackend(VIP, B1);
  await checker.runRound();
  assert.equal(checker.get(VIP, B1), undefined);
  assert.deepEqual(checker.snapshot().map((s) => s.backend).sort(), [B2, '198.18.12.2:80']);
  // A probe that throws is a failure, not a crash.
  sp.fixed.set(B2, true);
  const boom = new HealthChecker({ controller: ctl, scheduler: new ManualClock(), probe: () => { throw new Error('boom'); } });
  await boom.runRound();
  assert.equal(boom.get(VIP, B2)!.lastError, 'boom');
});

test('a backend removed and added again between rounds starts from the Controller\'s verdict (healthy) and is taken out again', async () => {
  const { ctl, sp, checker } = setup({ fall: 1 });
  sp.fixed.set(B2, false);
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false);
  // Removing forgets the verdict: the re-added backend is in selection until a probe says otherwise.
  await ctl.removeBackend(VIP, B2);
  await ctl.addBackend(VIP, { address: '198.18.11.2' });
  assert.equal(await stateOf(ctl, B2), true);
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false, 'still failing: out of selection again');
  assert.equal(checker.get(VIP, B2)!.state, 'down');
});

test('health config: defaults and validation', () => {
  const base = { vips: [{ address: VIP, backends: [{ address: '198.18.10.2' }] }] };
  const c = validateRunConfig(base);
  assert.deepEqual(c.health, { enabled: false, intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3, check: 'tcp', vips: {} });
  assert.equal(validateRunConfig({ ...base, health: { intervalMs: 500 } }).health.timeoutMs, 500, 'timeout defaults to at most the interval');
  const o = validateRunConfig({ ...base, health: { vips: { '198.18.100.1:80': { check: 'mptcp', port: 5201, enabled: true } } } }).health.vips;
  assert.deepEqual(o, { [VIP]: { check: 'mptcp', port: 5201, enabled: true } });
  const refuses = (h: unknown, path: string, re: RegExp) => assert.throws(() => validateRunConfig({ ...base, health: h }), (e: unknown) => e instanceof ConfigError && e.path === path && re.test(e.reason));
  refuses({ timeoutMs: 3000 }, 'health.timeoutMs', /must not exceed intervalMs/);
  refuses({ intervalMs: 10 }, 'health.intervalMs', /100-3600000/);
  refuses({ rise: 0 }, 'health.rise', /1-100/);
  refuses({ fall: 'three' }, 'health.fall', /integer/);
  refuses({ check: 'http' }, 'health.check', /one of tcp, mptcp/);
  refuses({ vips: { '198.18.100.9:80': {} } }, 'health.vips["198.18.100.9:80"]', /names no VIP/);
  refuses({ vips: { '198.18.100.1:80': { check: 'udp' } } }, 'health.vips["198.18.100.1:80"].check', /one of tcp, mptcp/);
  refuses({ vips: [] }, 'health.vips', /mapping/);
  refuses({ enabled: 1 }, 'health.enabled', /true or false/);
});

/** A TCP server on loopback (and a port nothing listens on) for the real probe. */
async function loopbackServers() {
  const tcpSrv = net.createServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => tcpSrv.listen(0, '127.0.0.1', r));
  const closed = net.createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const closedPort = (closed.address() as net.AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  return { tcpSrv, tcpPort: (tcpSrv.address() as net.AddressInfo).port, closedPort };
}
const target = (port: number, check: 'tcp' | 'mptcp'): ProbeTarget => ({ vip: VIP, backend: 'b', address: '127.0.0.1', port, check, timeoutMs: 2000 });
const closeServer = (s: net.Server) => new Promise<void>((r) => s.close(() => r()));

test('the real connect probe on loopback: TCP connects, a closed port is refused', async () => {
  const { tcpSrv, tcpPort, closedPort } = await loopbackServers();
  try {
    assert.deepEqual(await connectProbe(target(tcpPort, 'tcp')), { ok: true });
    assert.deepEqual(await connectProbe(target(closedPort, 'tcp')), { ok: false, error: 'ECONNREFUSED' });
  } finally {
    await closeServer(tcpSrv);
  }
});

// Needs MPTCP in this network namespace: skipped (never passed) without it, and a failure in CI, which must have it.
test('the real MPTCP probe on loopback: an MPTCP server passes, a TCP-only server fails the check', async (t) => {
  const mp = mptcpAvailable();
  if (!mp.ok) {
    if (process.env.CI === 'true') assert.fail(`the MPTCP health probe test cannot run here: ${mp.reason}. CI must run it on Linux with net.mptcp.enabled=1.`);
    t.skip(`no MPTCP here: ${mp.reason}`);
    return;
  }
  const { tcpSrv, tcpPort } = await loopbackServers();
  const mpSrv = net.createServer((s) => s.on('error', () => undefined));
  try {
    await listenMptcp(mpSrv, { port: 0, host: '127.0.0.1' });
    assert.deepEqual(await connectProbe(target((mpSrv.address() as net.AddressInfo).port, 'mptcp')), { ok: true });
    const fb = await connectProbe(target(tcpPort, 'mptcp'));
    assert.equal(fb.ok, false);
    assert.match(fb.error!, /does not speak MPTCP/);
  } finally {
    if (mpSrv.listening) await closeServer(mpSrv);
    await closeServer(tcpSrv);
  }
});

test('a health verdict keeps existing flows: only new connections move', async () => {
  const { ctl, p, sp, checker } = setup({ fall: 1 });
  // An established connection on B2 ...
  let sport = 3000, be = '';
  for (; sport < 3100; sport++) {
    const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport, dport: 80, flags: SYN, options: [capSyn(1)] });
    p.process(syn, 0, syn.length, 1);
    be = endpoints(syn).dst;
    if (be === B2) break;
  }
  const sa = tcp({ src: '198.18.11.2', dst: '198.18.1.2', sport: 80, dport: sport, flags: SYN | ACK, options: [capSynAck(1, 42n)] });
  p.process(sa, 0, sa.length, 2);
  sp.fixed.set(B2, false);
  await checker.runRound();
  assert.equal(await stateOf(ctl, B2), false);
  const more = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport, dport: 80, flags: ACK });
  p.process(more, 0, more.length, 3);
  assert.equal(endpoints(more).dst, B2, 'the established flow stays on its (now unhealthy) backend');
});
