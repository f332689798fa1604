import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, ControlError, inProcessPort } from '../src/control/controller.js';
import { validateRunConfig } from '../src/control/run-config.js';
import { keyToken } from '../src/wire/tokens.js';
import { ACK, SYN, capSyn, capSynAck, joinSyn, tcp, endpoints } from './helpers/packets.js';

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
