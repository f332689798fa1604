// The engine's offload decisions (src/engine/offload.ts), pure: which flows go on the kernel fast path and when,
// what comes back, and the idle-expiry question to the kernel. No kernel here: the ring is read directly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { Counter } from '../src/engine/counters.js';
import { FlowState } from '../src/engine/flow-table.js';
import { OffloadEvent } from '../src/engine/offload.js';
import { ACK, FIN, RST, SYN, capAck, capData, capSyn, capSynAck, dss, endpoints, fastclose, joinSyn, tcp } from './helpers/packets.js';
import { keyToken } from '../src/wire/tokens.js';

const VIP = '198.18.100.1';
const BACKENDS = ['198.18.10.2', '198.18.11.2'];
const T0 = 2_000_000;
const tok = (v: number) => keyToken(v, 0, 0xabcdef);

function engine(over: Record<string, unknown> = {}): Engine {
  const e = new Engine(validateEngineConfig({
    vips: [{ address: `${VIP}:5201`, backends: BACKENDS.map((address) => ({ address })) }],
    tables: { maxFlows: 256, maxConnections: 256 },
    ...over,
  }));
  e.offload.enabled = true;
  return e;
}

function send(e: Engine, pkt: Uint8Array, now = T0): Verdict { return e.process(pkt, 0, pkt.length, now); }

/** Pending ring events as [kind, client port]. */
function events(e: Engine): Array<[OffloadEvent, number]> {
  const out: Array<[OffloadEvent, number]> = [];
  const ring = e.offload.ring;
  ring.drain((i) => out.push([ring.kind[i] as OffloadEvent, ring.portVip[i] & 0xffff]));
  return out;
}

const c = (sport: number, flags: number, options: Parameters<typeof tcp>[0]['options'] = [], payload = 0, src = '198.18.1.2') =>
  tcp({ src, dst: VIP, sport, dport: 5201, flags, options, payload });
const s = (be: string, dport: number, flags: number, options: Parameters<typeof tcp>[0]['options'] = [], dst = '198.18.1.2') =>
  tcp({ src: be, dst, sport: 5201, dport, flags, options });

/** SYN, SYN/ACK (server key), returns the backend. */
function open(e: Engine, sport: number, version: number | null, src = '198.18.1.2'): string {
  const syn = c(sport, SYN, version === null ? [] : [capSyn(version, version === 0 ? 0x1111n : undefined)], 0, src);
  assert.equal(send(e, syn), Verdict.ToBackend);
  const be = endpoints(syn).dst.split(':')[0];
  assert.equal(send(e, s(be, sport, SYN | ACK, version === null ? [] : [capSynAck(version, 0xabcdefn)], src)), Verdict.ToClient);
  return be;
}

test('plain TCP: offloaded at the third ACK, not before; comes back at the FIN', () => {
  const e = engine();
  open(e, 40000, null);
  assert.deepEqual(events(e), [], 'SYN and SYN/ACK: not yet');
  send(e, c(40000, ACK));
  assert.deepEqual(events(e), [[OffloadEvent.Insert, 40000]]);
  send(e, c(40000, ACK, [], 100));
  assert.deepEqual(events(e), [], 'inserted once');
  send(e, c(40000, ACK | FIN));
  assert.deepEqual(events(e), [[OffloadEvent.Remove, 40000]]);
  assert.equal(e.counters.events[Counter.FlowsOffloaded], 1);
  assert.equal(e.counters.events[Counter.FlowsOffloadReleased], 1);
});

test('offload off (datapath tun): the engine writes nothing', () => {
  const e = engine();
  e.offload.enabled = false;
  open(e, 40001, 1);
  send(e, c(40001, ACK, [capAck(1, 0x1111n, 0xabcdefn)]));
  assert.equal(e.offload.ring.length, 0);
  assert.equal(e.counters.events[Counter.FlowsOffloaded], 0);
});

test('MPTCP v1: not offloaded until the keys are learned and the client\'s first packet after the SYN was read', () => {
  const e = engine();
  // No SYN/ACK seen here (it went through another balancer): keys only from the client.
  const syn = c(40002, SYN, [capSyn(1)]);
  send(e, syn);
  // A client ACK before any key: established, but the engine still needs the keys.
  assert.equal(events(e).length, 0);
  send(e, c(40002, ACK, [capAck(1, 0x1111n, 0xabcdefn)]));
  assert.deepEqual(events(e), [[OffloadEvent.Insert, 40002]], 'keys from the third ACK: now it may go');
  assert.notEqual(e.findConnection(tok(1)), -1);
});

test('MPTCP v1 with the third ACK lost: the first data carries the keys, offloaded after it', () => {
  const e = engine();
  const be = open(e, 40003, 1);
  assert.equal(events(e).length, 0);
  // The SYN/ACK taught the server key; the client's first packet after the SYN is what the engine still reads.
  send(e, c(40003, ACK, [capData(0x1111n, 0xabcdefn, 100)], 100));
  assert.deepEqual(events(e), [[OffloadEvent.Insert, 40003]]);
  assert.ok(be);
});

test('join: steered by token, offloaded at its own third ACK; v0 subflows too (the program passes MP_FASTCLOSE up)', () => {
  for (const version of [0, 1]) {
    const e = engine();
    const be = open(e, 40010, version);
    send(e, c(40010, ACK, [capAck(version, 0x1111n, 0xabcdefn)]));
    assert.deepEqual(events(e), [[OffloadEvent.Insert, 40010]], `v${version} first subflow`);
    const token = tok(version);
    const j = c(40011, SYN, [joinSyn(token)], 0, '198.18.1.3');
    assert.equal(send(e, j), Verdict.ToBackend);
    assert.equal(endpoints(j).dst, `${be}:5201`);
    assert.equal(send(e, s(be, 40011, SYN | ACK, [], '198.18.1.3')), Verdict.ToClient);
    assert.equal(events(e).length, 0);
    send(e, c(40011, ACK, [dss(1n)], 0, '198.18.1.3'));
    assert.deepEqual(events(e), [[OffloadEvent.Insert, 40011]], `v${version} join`);
  }
});

test('MP_FASTCLOSE passed up on an ACK of a v0 subflow: every subflow of the connection comes back', () => {
  const e = engine();
  const be = open(e, 40020, 0);
  send(e, c(40020, ACK, [capAck(0, 0x1111n, 0xabcdefn)]));
  const j = c(40021, SYN, [joinSyn(tok(0))], 0, '198.18.1.3');
  send(e, j);
  send(e, s(be, 40021, SYN | ACK, [], '198.18.1.3'));
  send(e, c(40021, ACK, [dss(1n)], 0, '198.18.1.3'));
  assert.equal(events(e).length, 2);
  send(e, c(40020, ACK, [fastclose(0xabcdefn)]));
  const ev = events(e);
  assert.deepEqual(ev.map((x) => x[0]), [OffloadEvent.Remove, OffloadEvent.Remove]);
  assert.deepEqual(ev.map((x) => x[1]).sort(), [40020, 40021]);
  assert.equal(e.counters.events[Counter.ConnsFastclosed], 1);
});

test('RST from the backend: the flow comes back; a SYN reusing its 4-tuple is a new flow that is offloaded again', () => {
  const e = engine();
  const be = open(e, 40030, null);
  send(e, c(40030, ACK));
  events(e);
  send(e, s(be, 40030, RST | ACK));
  assert.deepEqual(events(e), [[OffloadEvent.Remove, 40030]]);
  // Port reuse: the old (closed) flow is removed, a new one made and offloaded after its handshake.
  open(e, 40030, null);
  assert.deepEqual(events(e), [], 'removal of a flow already released queues nothing');
  send(e, c(40030, ACK));
  assert.deepEqual(events(e), [[OffloadEvent.Insert, 40030]]);
});

test('idle expiry: an offloaded flow is not expired before the kernel is asked; alive there -> kept, idle there -> expired and removed', () => {
  const e = engine();
  open(e, 40040, null);
  send(e, c(40040, ACK));
  open(e, 40041, null);
  send(e, c(40041, ACK));
  events(e);
  const later = T0 + e.config.timeouts.establishedMs + 1000;
  e.tick(later);
  const checks = (() => { const out: number[] = []; const ring = e.offload.ring; ring.drain((i) => { assert.equal(ring.kind[i], OffloadEvent.Check); out.push(ring.flow[i]); }); return out; })();
  assert.equal(checks.length, 2);
  assert.equal(e.flows.used, 2, 'none expired while the kernel was being asked');
  // A second sweep before the answer does not expire them either (small tables are swept several times a tick).
  e.tick(later);
  assert.equal(e.flows.used, 2);
  assert.equal(e.offload.ring.length, 0, 'and does not ask twice');
  // Flow of port 40040 carried traffic 10 ms ago on the fast path; the other had none since its insert.
  for (const r of checks) e.offloadSeen(r, e.flows.clientPort(r) === 40040 ? 10 : -1, later);
  e.tick(later + 1);
  assert.equal(e.flows.used, 1);
  const [left] = checks.filter((r) => e.flows.isLive(r));
  assert.equal(e.flows.clientPort(left), 40040);
  assert.ok(e.flows.state(left) & FlowState.Offloaded);
  assert.deepEqual(events(e), [[OffloadEvent.Remove, 40041]], 'the expired flow leaves the kernel map');
  assert.equal(e.counters.events[Counter.OffloadRefreshed], 1);
  // The kept flow is asked again only after another idle period, measured from the kernel's time.
  e.tick(later + 2);
  assert.equal(e.offload.ring.length, 0);
});

test('a lost removal (ring full) asks for a flush; forgetAll clears every offload bit', () => {
  const e = engine();
  for (let p = 0; p < 3; p++) { open(e, 40050 + p, null); send(e, c(40050 + p, ACK)); }
  assert.equal(e.offload.ring.length, 3);
  // Fill the ring to capacity, then a FIN's removal cannot be queued.
  const ring = e.offload.ring;
  while (!ring.full) ring.push(OffloadEvent.Check, e.flows, 0, false);
  send(e, c(40050, ACK | FIN));
  assert.equal(e.offload.flushPending, true);
  assert.equal(e.counters.events[Counter.OffloadEventsLost], 1);
  e.offload.forgetAll();
  assert.equal(e.offload.flushPending, false);
  assert.equal(ring.length, 0);
  for (let r = 0; r < e.flows.capacity; r++) if (e.flows.isLive(r)) assert.equal(e.flows.state(r) & FlowState.Offloaded, 0);
  // The next packet of a live flow offloads it again.
  send(e, c(40051, ACK, [], 10));
  assert.deepEqual(events(e), [[OffloadEvent.Insert, 40051]]);
});

test('reload that flips mptcpAware takes every offloaded flow back; other reloads keep them', () => {
  const e = engine();
  open(e, 40060, 1);
  send(e, c(40060, ACK, [capAck(1, 0x1111n, 0xabcdefn)]));
  events(e);
  const cfg = e.config;
  e.reconfigure({ ...cfg, vips: cfg.vips.map((v) => ({ ...v, backends: v.backends.map((b, i) => ({ ...b, weight: i === 0 ? 0 : 1 })) })) });
  assert.equal(e.offload.ring.length, 0, 'a drain changes no existing flow');
  e.reconfigure({ ...e.config, mptcpAware: false });
  assert.deepEqual(events(e), [[OffloadEvent.Remove, 40060]]);
});

test('insert refused by the kernel (map full): the flow stays on the TUN path, retried only after a back-off', () => {
  const e = engine();
  open(e, 40070, null);
  send(e, c(40070, ACK));
  const ring = e.offload.ring;
  let r = -1;
  ring.drain((i) => { r = ring.flow[i]; });
  e.offload.insertFailed(r);
  assert.equal(e.flows.state(r) & FlowState.Offloaded, 0);
  for (let i = 0; i < 10; i++) send(e, c(40070, ACK, [], 1));
  assert.equal(ring.length, 0, 'no retry on every packet');
  for (let i = 0; i < 300; i++) send(e, c(40070, ACK, [], 1));
  assert.deepEqual(events(e), [[OffloadEvent.Insert, 40070]], 'tried again after the back-off');
  assert.equal(e.counters.events[Counter.OffloadInsertFailed], 1);
});
