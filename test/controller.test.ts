import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, ControlError, inProcessPort } from '../src/control/controller.js';
import { validateRunConfig } from '../src/control/run-config.js';
import { keyToken } from '../src/wire/tokens.js';
import { ACK, SYN, capSyn, capSynAck, joinSyn, tcp, endpoints } from './helpers/packets.js';
import { controlState, engineBackends, outcome, rng, slowPort } from './helpers/ports.js';

const VIP = '198.18.100.1:80';
function setup() {
  const cfg = validateRunConfig({ vips: [{ address: VIP, backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2', weight: 3 }] }], tables: { maxFlows: 256, maxConnections: 256 } });
  const port = inProcessPort(cfg);
  return { ctl: new Controller(port, cfg), p: port.local };
}

function connect(p: ReturnType<typeof setup>['p'], sport: number, key: bigint): string {
  const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport, dport: 80, flags: SYN, options: [capSyn(1)] });
  p.process(syn, 0, syn.length, 1);
  const be = endpoints(syn).dst.split(':')[0];
  const sa = tcp({ src: be, dst: '198.18.1.2', sport: 80, dport: sport, flags: SYN | ACK, options: [capSynAck(1, key)] });
  p.process(sa, 0, sa.length, 2);
  return be;
}

test('drain keeps joins of existing connections on the draining backend; undrain restores the weight', async () => {
  const { ctl, p } = setup();
  let key = 1n, be = '';
  for (; key < 50n; key++) { be = connect(p, 1000 + Number(key), key); if (be === '198.18.11.2') break; }
  await ctl.drain(VIP, '198.18.11.2:80');
  let v = (await ctl.vips())[0].backends.find((b) => b.address === '198.18.11.2')!;
  assert.equal(v.weight, 0);
  assert.equal(v.draining, true);
  assert.equal(v.configuredWeight, 3);
  for (let i = 0; i < 20; i++) assert.equal(connect(p, 3000 + i, 1000n + BigInt(i)), '198.18.10.2', 'no new connection on the drained backend');
  const join = tcp({ src: '198.18.2.2', dst: '198.18.100.1', sport: 999, dport: 80, flags: SYN, options: [joinSyn(keyToken(1, 0, Number(key)))] });
  p.process(join, 0, join.length, 3);
  assert.equal(endpoints(join).dst, '198.18.11.2:80', 'join follows its connection to the draining backend');
  await ctl.undrain(VIP, '198.18.11.2:80');
  v = (await ctl.vips())[0].backends.find((b) => b.address === '198.18.11.2')!;
  assert.equal(v.weight, 3);
  assert.equal(v.draining, false);
});

test('unknown VIPs, backends, bad weights and tokens are refused with a status', async () => {
  const { ctl } = setup();
  await assert.rejects(ctl.setWeight(VIP, '1.2.3.4:80', 1), (e: unknown) => e instanceof ControlError && e.status === 404);
  await assert.rejects(ctl.setWeight('198.18.100.9:80', '198.18.10.2:80', 1), (e: unknown) => e instanceof ControlError && e.status === 404);
  await assert.rejects(ctl.setWeight(VIP, '198.18.10.2:80', -1), (e: unknown) => e instanceof ControlError && e.status === 400);
  await assert.rejects(ctl.connection('zz'), (e: unknown) => e instanceof ControlError && e.status === 400);
  await assert.rejects(ctl.connection('abcd'), (e: unknown) => e instanceof ControlError && e.status === 404);
  await assert.rejects(ctl.addBackend(VIP, { address: '2001:db8::1' }), (e: unknown) => e instanceof ControlError && e.status === 400 && /IPv6 backend/.test(e.message));
  await assert.rejects(ctl.addVip({ address: VIP, backends: [] }), (e: unknown) => e instanceof ControlError && e.status === 409);
  assert.throws(() => ctl.connections(-1), ControlError);
});

test('live changes keep flows and tokens: add and remove backends and VIPs', async () => {
  const { ctl, p } = setup();
  const be = connect(p, 5000, 77n);
  await ctl.addBackend(VIP, { address: '198.18.12.2' });
  await ctl.removeBackend(VIP, `${be}:80`);
  await ctl.addVip({ address: '198.18.100.2:443', backends: [{ address: '198.18.12.2' }] });
  const c = await ctl.connection(keyToken(1, 0, 77).toString(16)) as { backend: string; subflows: string[] };
  assert.equal(c.backend, `${be}:80`, 'the token still maps to the removed backend');
  const more = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5000, dport: 80, flags: ACK });
  p.process(more, 0, more.length, 5);
  assert.equal(endpoints(more).dst, `${be}:80`, 'its established flow continues');
  assert.equal((await ctl.vips()).length, 2);
  await ctl.removeVip('198.18.100.2:443');
  assert.equal(ctl.config.engine.vips.length, 1);
});

test('health verdicts take a backend out of selection and survive a reload', async () => {
  const { ctl, p } = setup();
  await ctl.setHealthy(VIP, '198.18.11.2:80', false);
  for (let i = 0; i < 20; i++) assert.equal(connect(p, 6000 + i, 2000n + BigInt(i)), '198.18.10.2');
  await ctl.setWeight(VIP, '198.18.10.2:80', 2);
  for (let i = 0; i < 10; i++) assert.equal(connect(p, 7000 + i, 3000n + BigInt(i)), '198.18.10.2', 'still out after a config change');
  assert.equal((await ctl.vips())[0].backends[1].healthy, false);
  await ctl.setHealthy(VIP, '198.18.11.2:80', true);
  const seen = new Set<string>();
  for (let i = 0; i < 40; i++) seen.add(connect(p, 8000 + i, 4000n + BigInt(i)));
  assert.equal(seen.size, 2);
});

test('a reload keeps control-plane drains, and undrain then restores the weight from the new file', async () => {
  const { ctl } = setup();
  await ctl.drain('198.18.100.1:80', '198.18.11.2:80');
  const next = validateRunConfig({ vips: [{ address: VIP, backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2', weight: 5 }] }], tables: { maxFlows: 256, maxConnections: 256 } });
  await ctl.reload(next);
  let b = (await ctl.vips())[0].backends[1];
  assert.equal(b.weight, 0, 'still drained after the reload');
  assert.equal(b.configuredWeight, 5);
  // Another spelling of the same VIP and backend reaches the same drain mark.
  await ctl.undrain('198.18.100.1:80', '198.18.11.2:80');
  b = (await ctl.vips())[0].backends[1];
  assert.equal(b.weight, 5);
  assert.equal(b.draining, false);
});

test('concurrent changes all take effect: each is built from the config the previous one left', async () => {
  const { ctl } = setup();
  const extra = Array.from({ length: 20 }, (_, i) => `198.18.101.${i + 1}:80`);
  await Promise.all(extra.map((address) => ctl.addVip({ address, backends: [{ address: '198.18.10.2' }] })));
  assert.equal(ctl.config.engine.vips.length, 21);
  await Promise.all([...extra.map((v) => ctl.removeVip(v)), ctl.setWeight(VIP, '198.18.10.2:80', 5)]);
  assert.deepEqual(ctl.config.engine.vips.map((v) => v.address), [VIP]);
  assert.equal(ctl.config.engine.vips[0].backends[0].weight, 5);
  // A refused change does not block the ones queued behind it.
  const results = await Promise.allSettled([ctl.addVip({ address: VIP, backends: [] }), ctl.addVip({ address: extra[0], backends: [] })]);
  assert.deepEqual(results.map((r) => r.status), ['rejected', 'fulfilled']);
});

// ---- changes: one at a time in arrival order; a failed change leaves everything as it was ----

const addr = (i: number) => `198.18.${20 + (i >> 8)}.${i & 255}`;
/** A Controller over a port whose reload takes 1-5 ms, with `n` backends of weights 1-7 on VIP. */
function slowSetup(n = 2, seed = 1) {
  const backends = n === 2 ? [{ address: '198.18.10.2' }, { address: '198.18.11.2', weight: 3 }] : Array.from({ length: n }, (_, i) => ({ address: addr(i + 1), weight: (i % 7) + 1 }));
  const cfg = validateRunConfig({ vips: [{ address: VIP, backends }], tables: { maxFlows: 256, maxConnections: 256, maglevSize: 1021 } });
  const port = slowPort(cfg, { seed });
  return { ctl: new Controller(port, cfg), port, cfg };
}

test('100 concurrent backend adds: all 100 are in the config and in the engine', async () => {
  const { ctl, port } = slowSetup();
  await Promise.all(Array.from({ length: 100 }, (_, i) => ctl.addBackend(VIP, { address: addr(i + 1), weight: 2 })));
  const ids = ctl.config.engine.vips[0].backends.map((b) => `${b.address}:${b.port}`);
  assert.equal(ids.length, 102, 'every added backend is in the config');
  const eng = await engineBackends(port);
  assert.equal(eng.length, 102, 'every added backend is in the engine');
  for (let i = 1; i <= 100; i++) assert.equal(eng.find((b) => b.id === `${addr(i)}:80`)?.weight, 2, `${addr(i)} in the engine with weight 2`);
});

test('100 concurrent drains: all weight 0 in the engine and draining; 100 concurrent undrains restore each weight', async () => {
  const { ctl, port } = slowSetup(100);
  await Promise.all(Array.from({ length: 100 }, (_, i) => ctl.drain(VIP, `${addr(i + 1)}:80`)));
  let eng = await engineBackends(port);
  assert.deepEqual(eng.filter((b) => b.weight !== 0).map((b) => b.id), [], 'every drained backend has weight 0 in the engine');
  const views = (await ctl.vips())[0].backends;
  assert.equal(views.filter((b) => b.draining && b.weight === 0).length, 100);
  assert.deepEqual(views.map((b) => b.configuredWeight), Array.from({ length: 100 }, (_, i) => (i % 7) + 1));
  await Promise.all(Array.from({ length: 100 }, (_, i) => ctl.undrain(VIP, `${addr(i + 1)}:80`)));
  eng = await engineBackends(port);
  assert.deepEqual(eng.map((b) => b.weight), Array.from({ length: 100 }, (_, i) => (i % 7) + 1), 'each configured weight is back');
  assert.deepEqual(ctl.drainedBackends(), []);
});

test('100 concurrent backend removals: all gone from the config and the engine', async () => {
  const { ctl, port } = slowSetup(100);
  await Promise.all(Array.from({ length: 100 }, (_, i) => ctl.removeBackend(VIP, `${addr(i + 1)}:80`)));
  assert.deepEqual(ctl.config.engine.vips[0].backends, []);
  assert.deepEqual(await engineBackends(port), []);
});

type Op = [name: 'addBackend' | 'removeBackend' | 'drain' | 'undrain' | 'setWeight' | 'setHealthy', ...args: unknown[]];
/** A random sequence of changes over a pool of 12 backend addresses (some not there yet, some twice). */
function randomOps(seed: number, n: number): Op[] {
  const r = rng(seed);
  const pick = () => addr(1 + Math.floor(r() * 12));
  return Array.from({ length: n }, (): Op => {
    const x = r();
    if (x < 0.25) return ['addBackend', VIP, { address: pick(), weight: Math.floor(r() * 5) }];
    if (x < 0.4) return ['removeBackend', VIP, `${pick()}:80`];
    if (x < 0.6) return ['drain', VIP, `${pick()}:80`];
    if (x < 0.75) return ['undrain', VIP, `${pick()}:80`];
    if (x < 0.9) return ['setWeight', VIP, `${pick()}:80`, Math.floor(r() * 5)];
    return ['setHealthy', VIP, `${pick()}:80`, r() < 0.5];
  });
}
const run = (ctl: Controller, [name, ...args]: Op) => (ctl[name] as (...a: unknown[]) => Promise<unknown>)(...args);

test('mixed concurrent adds, removals, drains, undrains, weights and verdicts end as the same changes run one by one', async () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const ops = randomOps(seed, 150);
    const a = slowSetup(6, seed);
    const concurrent = (await Promise.allSettled(ops.map((op) => run(a.ctl, op)))).map(outcome);
    const b = slowSetup(6, seed);
    const serial: string[] = [];
    for (const op of ops) serial.push(outcome((await Promise.allSettled([run(b.ctl, op)]))[0]));
    assert.deepEqual(concurrent, serial, `seed ${seed}: each change answers as it would in a serial run`);
    assert.deepEqual(await controlState(a.ctl, a.port), await controlState(b.ctl, b.port), `seed ${seed}: same end state as a serial run`);
  }
});

test('a change whose reload fails (or that is invalid) leaves config, drains and health verdicts as they were; the next change works', async () => {
  const { ctl, port } = slowSetup();
  await ctl.drain(VIP, '198.18.11.2:80');
  await ctl.setHealthy(VIP, '198.18.10.2:80', false);
  const before = await controlState(ctl, port);
  const next = validateRunConfig({ vips: [{ address: VIP, backends: [{ address: '198.18.10.2', weight: 4 }] }], tables: { maxFlows: 256, maxConnections: 256 } });
  const changes: Array<[string, () => Promise<unknown>]> = [
    ['addBackend', () => ctl.addBackend(VIP, { address: '198.18.12.2' })],
    ['removeBackend', () => ctl.removeBackend(VIP, '198.18.10.2:80')],
    ['drain', () => ctl.drain(VIP, '198.18.10.2:80')],
    ['undrain', () => ctl.undrain(VIP, '198.18.11.2:80')],
    ['setWeight', () => ctl.setWeight(VIP, '198.18.11.2:80', 5)],
    ['addVip', () => ctl.addVip({ address: '198.18.100.2:443', backends: [{ address: '198.18.12.2' }] })],
    ['removeVip', () => ctl.removeVip(VIP)],
    ['reload', () => ctl.reload(next)],
  ];
  for (const [name, change] of changes) {
    port.failNextReload();
    await assert.rejects(change(), /simulated reload failure/, name);
    assert.deepEqual(await controlState(ctl, port), before, `${name}: nothing changed`);
  }
  // Refused before any reload: invalid input.
  await assert.rejects(ctl.addBackend(VIP, { address: '2001:db8::1' }), (e: unknown) => e instanceof ControlError && e.status === 400);
  await assert.rejects(ctl.setWeight(VIP, '198.18.11.2:80', 70000), (e: unknown) => e instanceof ControlError && e.status === 400);
  assert.deepEqual(await controlState(ctl, port), before, 'invalid changes: nothing changed');
  // A health verdict the engine refuses is not recorded.
  port.failNextSetUp();
  await assert.rejects(ctl.setHealthy(VIP, '198.18.11.2:80', false), /simulated setUp failure/);
  assert.deepEqual(await controlState(ctl, port), before, 'setHealthy: nothing changed');
  // The next change works and sees the state as it was.
  await ctl.undrain(VIP, '198.18.11.2:80');
  const bs = (await ctl.vips())[0].backends;
  assert.deepEqual(bs.map((b) => [b.id, b.weight, b.draining, b.healthy]), [['198.18.10.2:80', 1, false, false], ['198.18.11.2:80', 3, false, true]]);
});

test('changes that are not about weights keep drained backends drained, and undrain restores the configured weight', async () => {
  const { ctl, port } = slowSetup();
  await ctl.setWeight(VIP, '198.18.11.2:80', 7);
  await ctl.drain(VIP, '198.18.11.2:80');
  const same = (c: typeof ctl.config) => c;
  const changes: Array<[string, () => Promise<unknown>]> = [
    ['timeouts (as PUT /api/v1/timeouts did it)', () => ctl.reload({ ...ctl.config, engine: { ...ctl.config.engine, timeouts: { ...ctl.config.engine.timeouts, synMs: 9000 } } })],
    ['policy', () => ctl.reload({ ...ctl.config, engine: { ...ctl.config.engine, policy: 'hash-5tuple' } })],
    ['add another VIP', () => ctl.addVip({ address: '198.18.100.2:443', backends: [{ address: '198.18.12.2' }] })],
    ['remove the other VIP', () => ctl.removeVip('198.18.100.2:443')],
    ['reload of the same config', () => ctl.reload(same(ctl.config))],
  ];
  for (const [name, change] of changes) {
    await change();
    const b = (await ctl.vips())[0].backends[1];
    assert.deepEqual([b.weight, b.draining, b.configuredWeight], [0, true, 7], `${name}: still drained, weight 7 remembered`);
    assert.equal((await engineBackends(port)).find((x) => x.id === '198.18.11.2:80')!.weight, 0, `${name}: weight 0 in the engine`);
  }
  await ctl.undrain(VIP, '198.18.11.2:80');
  assert.equal((await ctl.vips())[0].backends[1].weight, 7, 'undrain restores 7');
  assert.equal((await engineBackends(port)).find((x) => x.id === '198.18.11.2:80')!.weight, 7);
});

test('a change that changes nothing sends no reload and no health call', async () => {
  const { ctl, port } = slowSetup();
  await ctl.drain(VIP, '198.18.11.2:80');
  assert.equal(port.counts.reloads, 1);
  await ctl.drain(VIP, '198.18.11.2:80');
  await ctl.undrain(VIP, '198.18.10.2:80');
  await ctl.setWeight(VIP, '198.18.10.2:80', 1);
  await ctl.reload(ctl.config);
  await ctl.reload({ ...ctl.config, engine: { ...ctl.config.engine, timeouts: { ...ctl.config.engine.timeouts } } });
  assert.equal(port.counts.reloads, 1, 'drain of a drained backend, undrain of an undrained one, the same weight, the same config: no reload');
  await ctl.setHealthy(VIP, '198.18.10.2:80', true);
  assert.equal(port.counts.setUps, 0, 'healthy again: no health call');
  await ctl.setHealthy(VIP, '198.18.10.2:80', false);
  await ctl.setHealthy(VIP, '198.18.10.2:80', false);
  assert.equal(port.counts.setUps, 1, 'unhealthy twice: one health call');
  assert.equal(port.counts.reloads, 1);
  await ctl.undrain(VIP, '198.18.11.2:80');
  assert.equal(port.counts.reloads, 2, 'a real change still reloads');
});
