// The engine and the packet worker's side of the shared token store, without threads or Redis: a join whose token
// is unknown is held, looked up, and steered by the answer (retried when the store does not have it yet); a
// subflow with no flow is held and pinned to the store's backend; hostile answers are refused and counted; a store
// that goes down releases every held packet at once; what the engine learns is published; counters add up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateEngineConfig } from '../src/engine/config.js';
import { Engine } from '../src/engine/engine.js';
import { MemoryDevice } from '../src/dataplane/device.js';
import { Forwarder } from '../src/dataplane/forwarder.js';
import { StoreSync, SyncCounter, type StoreRequests } from '../src/dataplane/store-sync.js';
import { decodeEntry } from '../src/cluster/token-store.js';
import { ACK, FIN, SYN, capAck, capSyn, capSynAck, dss, endpoints, fastclose, joinAck, joinSyn, tcp } from './helpers/packets.js';
import { keyToken } from '../src/wire/tokens.js';

const VIP = '198.19.0.10', CLIENT = '198.18.1.2', CLIENT2 = '198.18.2.2';
const B1 = '198.18.10.101', B2 = '198.18.10.102';
const vipId = `${VIP}:5201`;

function setup(opts: { tries?: number; waitMs?: number } = {}) {
  const engine = new Engine(validateEngineConfig({
    vips: [{ address: vipId, backends: [{ address: B1 }, { address: B2 }] }], unknownTokenAnswer: 'reset',
    tables: { maxFlows: 256, maxConnections: 256 },
  }));
  const dev = new MemoryDevice();
  const sent: StoreRequests[] = [];
  let sync!: StoreSync;
  const fwd = new Forwarder(engine, dev, { onHold: (v, h, len, flags, now) => sync.hold(v, h, len, flags, now) });
  const counters = new Float64Array(SyncCounter.Count);
  sync = new StoreSync(engine, fwd, { keyPrefix: 'p:', maxPackets: 4, maxBytes: 1 << 20, maxWaitMs: opts.waitMs ?? 50, tries: opts.tries ?? 3, ttlMs: 60_000, lingerMs: 1000 }, counters, (r) => sent.push(r));
  sync.onMessage({ type: 'store-state', up: true, republish: false }, 0);
  return { engine, dev, fwd, sync, sent, counters };
}
const joinOf = (token: number, sport = 40000) => tcp({ src: CLIENT2, dst: VIP, sport, dport: 5201, flags: SYN, options: [joinSyn(token)] });
const lookups = (sent: StoreRequests[]) => sent.flatMap((r) => r.lookups);

test('an unknown join is held (not counted in yet), looked up, and steered to the backend the store names', () => {
  const { engine, dev, fwd, sync, sent, counters } = setup();
  dev.inject(joinOf(0x01020304));
  fwd.runOnce(1000);
  assert.equal(dev.written.length, 0, 'held, not written');
  let c = engine.counters.snapshot().counters;
  assert.equal(c.packets_in, 0, 'a held packet is counted in when released');
  assert.equal(c.packets_held, 1);
  sync.step(1001);
  assert.deepEqual(lookups(sent), [{ id: 1, key: 'p:t:01020304' }]);
  sync.onMessage({ type: 'store-answers', answers: [{ id: 1, outcome: 'found', entry: { vip: vipId, backend: `${B2}:5201`, version: 1 } }] }, 1002);
  assert.equal(dev.written.length, 1);
  assert.equal(endpoints(dev.written[0].pkt).dst, `${B2}:5201`, 'steered to the store\'s backend');
  c = engine.counters.snapshot().counters;
  assert.equal(c.joins_steered_by_token, 1);
  assert.equal(c.conns_adopted, 1);
  assert.equal(c.packets_in, c.to_backend + c.to_client + c.replied + c.dropped);
  assert.equal(counters[SyncCounter.JoinsFoundInStore], 1);
  // The steered join is published as a subflow entry, so it stays on B2 if ECMP moves it to another balancer.
  sync.step(1003);
  const w = sent.flatMap((r) => r.writes);
  assert.equal(w.length, 1);
  assert.deepEqual({ op: w[0].op, key: w[0].key }, { op: 'set', key: `p:f:${CLIENT2}:40000>${vipId}` });
  assert.deepEqual(decodeEntry((w[0] as { value: string }).value), { vip: vipId, backend: `${B2}:5201`, version: 1 });
  // Its next packets are the local flow's: nothing held.
  dev.inject(tcp({ src: CLIENT2, dst: VIP, sport: 40000, dport: 5201, flags: ACK }));
  fwd.runOnce(1004);
  assert.equal(endpoints(dev.written[1].pkt).dst, `${B2}:5201`);
  assert.equal(engine.counters.snapshot().counters.packets_held, 1);
});

test('the store does not have the token yet: retried within the wait, then the unknown-token answer', () => {
  const { engine, dev, fwd, sync, sent, counters } = setup({ tries: 3, waitMs: 30 });
  dev.inject(joinOf(0x0a0b0c0d));
  fwd.runOnce(0);
  sync.step(0);
  sync.onMessage({ type: 'store-answers', answers: [{ id: 1, outcome: 'absent' }] }, 1);
  sync.step(5);
  assert.equal(lookups(sent).length, 1, 'the retry waits a third of the wait');
  sync.step(11);
  assert.equal(lookups(sent).length, 2, 'asked again');
  assert.equal(counters[SyncCounter.JoinsRetried], 1);
  // The second answer finds it: published meanwhile by the balancer that saw the third ACK.
  sync.onMessage({ type: 'store-answers', answers: [{ id: 1, outcome: 'found', entry: { vip: vipId, backend: `${B1}:5201`, version: 1 } }] }, 12);
  assert.equal(endpoints(dev.written[0].pkt).dst, `${B1}:5201`);

  dev.inject(joinOf(0x0e0e0e0e, 40001));
  fwd.runOnce(100);
  sync.step(100);
  for (let i = 0; i < 3; i++) {
    const id = lookups(sent).at(-1)!.id;
    sync.onMessage({ type: 'store-answers', answers: [{ id, outcome: 'absent' }] }, 101 + i * 10);
    sync.step(111 + i * 10);
  }
  assert.equal(dev.written.length, 2);
  assert.equal(dev.written[1].reply, true, 'never found: the configured unknown-token answer (reset)');
  assert.equal(counters[SyncCounter.JoinsNotInStore], 1);
  assert.equal(engine.counters.snapshot().counters.joins_unknown_reset, 1);
});

test('a lookup that failed (a store command timed out) is asked again within the wait, like an absent one', () => {
  const { dev, fwd, sync, sent, counters } = setup({ tries: 3, waitMs: 30 });
  dev.inject(joinOf(0x0a0b0c0e));
  fwd.runOnce(0);
  sync.step(0);
  sync.onMessage({ type: 'store-answers', answers: [{ id: 1, outcome: 'error' }] }, 1);
  assert.equal(dev.written.length, 0, 'not answered on an error');
  sync.step(11);
  assert.equal(lookups(sent).length, 2, 'asked again');
  sync.onMessage({ type: 'store-answers', answers: [{ id: 1, outcome: 'found', entry: { vip: vipId, backend: `${B2}:5201`, version: 1 } }] }, 12);
  assert.equal(endpoints(dev.written[0].pkt).dst, `${B2}:5201`);
  assert.equal(counters[SyncCounter.LookupErrors], 1);
});

test('no answer within the wait: released with the unknown-token answer, counted as timed out', () => {
  const { dev, fwd, sync, counters } = setup({ waitMs: 20 });
  dev.inject(joinOf(0x11111111));
  fwd.runOnce(0);
  sync.step(0);
  sync.step(25);
  assert.equal(dev.written.length, 1);
  assert.equal(dev.written[0].reply, true);
  assert.equal(counters[SyncCounter.JoinsTimedOut], 1);
  // A late answer finds nothing to release.
  sync.onMessage({ type: 'store-answers', answers: [{ id: 1, outcome: 'found', entry: { vip: vipId, backend: `${B1}:5201`, version: 1 } }] }, 30);
  assert.equal(dev.written.length, 1);
});

test('hostile answers: an entry naming a backend or VIP this balancer does not have, or not parsing, is refused', () => {
  const { engine, dev, fwd, sync, counters } = setup();
  dev.inject(joinOf(0x22222222), joinOf(0x33333333, 40002));
  fwd.runOnce(0);
  sync.step(0);
  sync.onMessage({ type: 'store-answers', answers: [
    { id: 1, outcome: 'found', entry: { vip: vipId, backend: '203.0.113.9:5201', version: 1 } },
    { id: 2, outcome: 'invalid' },
  ] }, 1);
  assert.equal(dev.written.length, 2);
  assert.ok(dev.written.every((w) => w.reply), 'both answered as unknown tokens');
  assert.equal(counters[SyncCounter.RejectedEntries], 2);
  assert.equal(engine.counters.snapshot().counters.conns_adopted, 0);
  assert.equal(engine.findConnection(0x22222222), -1, 'nothing adopted');
});

test('a subflow with no flow (moved from another balancer) is held, pinned to the store\'s backend, and kept as a local flow', () => {
  const { engine, dev, fwd, sync, sent, counters } = setup();
  const ack = () => tcp({ src: CLIENT2, dst: VIP, sport: 45000, dport: 5201, flags: ACK, payload: 100 });
  dev.inject(ack());
  fwd.runOnce(0);
  assert.equal(engine.lastHold, 2);
  sync.step(0);
  assert.deepEqual(lookups(sent), [{ id: 1, key: `p:f:${CLIENT2}:45000>${vipId}` }]);
  // Pin it to the backend that hashing would NOT pick, to see the store's answer win.
  const hashed = new Engine(engine.config);
  const probe = ack();
  hashed.process(probe, 0, probe.length, 0);
  const other = endpoints(probe).dst === `${B1}:5201` ? B2 : B1;
  sync.onMessage({ type: 'store-answers', answers: [{ id: 1, outcome: 'found', entry: { vip: vipId, backend: `${other}:5201`, version: 1 } }] }, 1);
  assert.equal(endpoints(dev.written[0].pkt).dst, `${other}:5201`);
  assert.equal(counters[SyncCounter.FlowsFoundInStore], 1);
  assert.equal(engine.counters.snapshot().counters.flows_adopted, 1);
  dev.inject(ack());
  fwd.runOnce(2);
  assert.equal(endpoints(dev.written[1].pkt).dst, `${other}:5201`, 'the next packet follows the adopted flow, not held');
  assert.equal(engine.counters.snapshot().counters.packets_held, 1);
  // A DSS-only packet the store does not know (a first subflow after a restart, or one that moved): asked once,
  // then given the policy's backend at once; waiting for an entry that no balancer will write would stall it.
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 46000, dport: 5201, flags: ACK, options: [dss(7n)] }));
  fwd.runOnce(3);
  sync.step(3);
  const id = lookups(sent).at(-1)!.id;
  sync.onMessage({ type: 'store-answers', answers: [{ id, outcome: 'absent' }] }, 4);
  sync.step(4);
  assert.equal(dev.written.length, 3, 'released on the first absent answer');
  assert.equal(lookups(sent).length, 2, 'not asked again');
  assert.equal(counters[SyncCounter.FlowsNotInStore], 1);
  assert.equal(engine.counters.snapshot().counters.flows_adopted, 2);
});

test('two held packets of one moved subflow: the second answer steers only its own packet, never the next flow\'s', () => {
  // Seen in the cluster e2e after a balancer restart: the second release found the flow the first one adopted, the
  // pin it was given stayed, and the next packet with no flow (another connection's first subflow) took it: that
  // subflow went to another server, which reset it.
  const { dev, fwd, sync, sent } = setup();
  const first = () => tcp({ src: CLIENT, dst: VIP, sport: 48100, dport: 5201, flags: ACK, options: [capAck(1, 0x0102030405060708n, 0x1112131415161718n)] });
  const probe = first();
  new Engine(validateEngineConfig({ vips: [{ address: vipId, backends: [{ address: B1 }, { address: B2 }] }] })).process(probe, 0, probe.length, 0);
  const hashed = endpoints(probe).dst;
  const other = hashed === `${B1}:5201` ? B2 : B1;
  const moved = () => tcp({ src: CLIENT2, dst: VIP, sport: 45100, dport: 5201, flags: ACK, payload: 100 });
  dev.inject(moved());
  dev.inject(moved());
  fwd.runOnce(0);
  sync.step(0);
  const ids = lookups(sent).map((l) => l.id);
  assert.equal(ids.length, 2, 'both packets held and asked for');
  sync.onMessage({ type: 'store-answers', answers: ids.map((id) => ({ id, outcome: 'found', entry: { vip: vipId, backend: `${other}:5201`, version: 1 } })) }, 1);
  assert.deepEqual(dev.written.map((w) => endpoints(w.pkt).dst), [`${other}:5201`, `${other}:5201`]);
  dev.inject(first());
  fwd.runOnce(2);
  assert.equal(endpoints(dev.written[2].pkt).dst, hashed, 'the first subflow goes where the policy sends it, not to the stale pin');
});

test('a join\'s third ACK with no flow is asked for again within the wait (the balancer that steered its SYN may not have published yet)', () => {
  const { dev, fwd, sync, sent, counters } = setup();
  dev.inject(tcp({ src: CLIENT2, dst: VIP, sport: 47000, dport: 5201, flags: ACK, options: [joinAck()] }));
  fwd.runOnce(0);
  sync.step(0);
  for (let i = 0; i < 3; i++) {
    const id = lookups(sent).at(-1)!.id;
    assert.equal(dev.written.length, 0, `still held after ${i} absent answers`);
    sync.onMessage({ type: 'store-answers', answers: [{ id, outcome: 'absent' }] }, 1 + i * 20);
    sync.step(20 + i * 20);
  }
  assert.equal(lookups(sent).length, 3, 'asked the configured number of times');
  assert.equal(dev.written.length, 1, 'then given the policy\'s backend');
  assert.equal(counters[SyncCounter.FlowsNotInStore], 1);
});

test('a first subflow\'s third ACK with no flow (MP_CAPABLE: hashed alike on every balancer) is not held', () => {
  const { engine, dev, fwd, sent } = setup();
  const pkt = () => tcp({ src: CLIENT, dst: VIP, sport: 48000, dport: 5201, flags: ACK, options: [capAck(1, 0x0102030405060708n, 0x1112131415161718n)] });
  dev.inject(pkt());
  fwd.runOnce(0);
  assert.equal(dev.written.length, 1, 'forwarded at once');
  const probe = pkt();
  new Engine(engine.config).process(probe, 0, probe.length, 0);
  assert.equal(endpoints(dev.written[0].pkt).dst, endpoints(probe).dst, 'to the backend the policy picks');
  const c = engine.counters.snapshot().counters;
  assert.equal(c.packets_held, 0);
  assert.equal(c.flows_adopted, 1, 'kept as a local flow');
  assert.equal(lookups(sent).length, 0, 'the store is not asked');
});

test('the store goes down: every held packet is answered at once, and nothing more is held until it is back', () => {
  const { engine, dev, fwd, sync } = setup();
  dev.inject(joinOf(0x44444444));
  fwd.runOnce(0);
  sync.onMessage({ type: 'store-state', up: false, republish: false }, 1);
  assert.equal(dev.written.length, 1);
  assert.equal(dev.written[0].reply, true);
  dev.inject(joinOf(0x55555555, 40009));
  fwd.runOnce(2);
  assert.equal(dev.written.length, 2, 'answered without holding');
  assert.equal(engine.holdEnabled, false);
  assert.equal(engine.counters.snapshot().counters.packets_held, 1);
});

test('the hold pool is bounded: a packet that does not fit is answered at once', () => {
  const { dev, fwd, counters } = setup();
  for (let i = 0; i < 6; i++) dev.inject(joinOf(0x66660000 + i, 41000 + i));
  fwd.runOnce(0);
  assert.equal(dev.written.length, 2, '4 held, 2 answered');
  assert.equal(counters[SyncCounter.HoldRefused], 2);
});

test('what the engine learns is published: a token with its backend, shortened to the linger on close, deleted on MP_FASTCLOSE', () => {
  const { engine, dev, fwd, sync, sent } = setup();
  const syn = tcp({ src: CLIENT, dst: VIP, sport: 5000, dport: 5201, flags: SYN, options: [capSyn(1)] });
  dev.inject(syn);
  fwd.runOnce(0);
  const be = endpoints(dev.written[0].pkt).dst;
  const beAddr = be.split(':')[0];
  dev.inject(tcp({ src: beAddr, dst: CLIENT, sport: 5201, dport: 5000, flags: SYN | ACK, options: [capSynAck(1, 77n)] }));
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 5000, dport: 5201, flags: ACK, options: [capAck(1, 5n, 77n)] }));
  fwd.runOnce(1);
  sync.step(2);
  const token = keyToken(1, 0, 77);
  assert.deepEqual(sent.flatMap((r) => r.publish), [{ token, entry: { vip: vipId, backend: be, version: 1 } }]);
  // Both sides close: the subflow goes at expiry; the token then lingers, and the store entry is shortened.
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 5000, dport: 5201, flags: FIN | ACK }));
  dev.inject(tcp({ src: beAddr, dst: CLIENT, sport: 5201, dport: 5000, flags: FIN | ACK }));
  fwd.runOnce(3);
  engine.tick(3 + engine.config.timeouts.finMs + 1);
  sync.step(20_000);
  const ws = sent.flatMap((r) => r.writes);
  assert.ok(ws.some((w) => w.op === 'expire' && w.key === `p:t:${token.toString(16).padStart(8, '0')}` && w.ttlMs === 1000), JSON.stringify(ws));
  // Another connection, closed by MP_FASTCLOSE: its entry is deleted.
  const syn2 = tcp({ src: CLIENT, dst: VIP, sport: 5001, dport: 5201, flags: SYN, options: [capSyn(1)] });
  dev.inject(syn2);
  fwd.runOnce(30_000);
  const be2 = endpoints(dev.written.at(-1)!.pkt).dst.split(':')[0];
  dev.inject(tcp({ src: be2, dst: CLIENT, sport: 5201, dport: 5001, flags: SYN | ACK, options: [capSynAck(1, 99n)] }));
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 5001, dport: 5201, flags: ACK, options: [capAck(1, 6n, 99n)] }));
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 5001, dport: 5201, flags: ACK | 0x04, options: [fastclose(99n)] }));
  fwd.runOnce(30_001);
  sync.step(30_002);
  const t2 = keyToken(1, 0, 99).toString(16).padStart(8, '0');
  assert.ok(sent.flatMap((r) => r.writes).some((w) => w.op === 'del' && w.key === `p:t:${t2}`));
});

test('a collision reported by the store makes the token ambiguous here: its joins get the unknown-token answer', () => {
  const { engine, dev, fwd, sync } = setup();
  const syn = tcp({ src: CLIENT, dst: VIP, sport: 5000, dport: 5201, flags: SYN, options: [capSyn(1)] });
  dev.inject(syn);
  fwd.runOnce(0);
  const beAddr = endpoints(dev.written[0].pkt).dst.split(':')[0];
  dev.inject(tcp({ src: beAddr, dst: CLIENT, sport: 5201, dport: 5000, flags: SYN | ACK, options: [capSynAck(1, 123n)] }));
  fwd.runOnce(1);
  const token = keyToken(1, 0, 123);
  sync.onMessage({ type: 'store-collision', token }, 2);
  engine.holdEnabled = false; // answer locally: the token is known here, but ambiguous
  dev.inject(joinOf(token, 42000));
  fwd.runOnce(3);
  assert.equal(dev.written.at(-1)!.reply, true);
  assert.equal(engine.counters.snapshot().counters.joins_ambiguous_token, 1);
});

test('the refresh publishes this balancer\'s live tokens again (a failed publish is repaired), set-if-absent', () => {
  const { dev, fwd, sync, sent } = setup();
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 7000, dport: 5201, flags: SYN, options: [capSyn(1)] }));
  fwd.runOnce(0);
  const beAddr = endpoints(dev.written[0].pkt).dst.split(':')[0];
  dev.inject(tcp({ src: beAddr, dst: CLIENT, sport: 5201, dport: 7000, flags: SYN | ACK, options: [capSynAck(1, 4242n)] }));
  fwd.runOnce(1);
  sync.step(1);
  assert.equal(sent.flatMap((r) => r.publish).length, 1, 'published once when learned');
  sync.step(1 + 60_000 / 3 + 1);
  const pubs = sent.flatMap((r) => r.publish);
  assert.equal(pubs.length, 2, 'and again at the refresh, so a key the store lost comes back');
  assert.equal(pubs[1].token, keyToken(1, 0, 4242));
});
