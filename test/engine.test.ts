import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { keyToken } from '../src/wire/tokens.js';
import { DropReason } from '../src/engine/counters.js';
import { MptcpMode } from '../src/engine/flow-table.js';
import { MptcpOption, decodeMptcpOption, MptcpSubtype } from '../src/wire/mptcp-options.js';
import { nextTcpOption, tcpAck, tcpSeq } from '../src/wire/parse.js';
import { ACK, FIN, RST, SYN, capAck, capData, capSyn, capSynAck, checksumsOk, endpoints, fastclose, joinSyn, tcp, view, dss } from './helpers/packets.js';

const VIP = '198.18.100.1';
const BACKENDS = ['198.18.10.2', '198.18.11.2', '198.18.12.2', '198.18.13.2'];

/** Small tables so that one tick() sweeps them whole. */
function engine(over: Record<string, unknown> = {}, nBackends = 4): Engine {
  return new Engine(validateEngineConfig({
    vips: [{ address: `${VIP}:5201`, backends: BACKENDS.slice(0, nBackends).map((address) => ({ address })) }],
    tables: { maxFlows: 4096, maxConnections: 4096 },
    ...over,
  }));
}

const T0 = 1_000_000;
const hi = (k: bigint) => Number(k >> 32n), lo = (k: bigint) => Number(k & 0xffffffffn);

/** Sends a packet through the engine and returns [verdict, packet]. */
function send(e: Engine, pkt: Uint8Array, now = T0): [Verdict, Uint8Array] {
  const verdict = e.process(pkt, 0, pkt.length, now);
  return [verdict, pkt.subarray(0, e.outLen)];
}

/** Client SYN -> backend; the backend's SYN/ACK (optionally with a server key) -> client. Returns the backend address. */
function handshake(e: Engine, client: string, sport: number, version: number, serverKey: bigint | null, opts: { returnPath?: boolean; clientKey?: bigint; now?: number } = {}): string {
  const now = opts.now ?? T0;
  const syn = tcp({ src: client, dst: VIP, sport, dport: 5201, flags: SYN, options: [capSyn(version, version === 0 ? (opts.clientKey ?? 0x1111n) : undefined)] });
  const [v1, out] = send(e, syn, now);
  assert.equal(v1, Verdict.ToBackend);
  assert.ok(checksumsOk(out), 'SYN checksums after NAT');
  const backend = endpoints(out).dst.split(':')[0];
  if (opts.returnPath !== false) {
    const synack = tcp({ src: backend, dst: client, sport: 5201, dport: sport, flags: SYN | ACK, options: serverKey === null ? [] : [capSynAck(version, serverKey)] });
    const [v2, out2] = send(e, synack, now);
    assert.equal(v2, Verdict.ToClient);
    assert.equal(endpoints(out2).src, `${VIP}:5201`);
    assert.ok(checksumsOk(out2), 'SYN/ACK checksums after NAT');
  }
  return backend;
}

function joinTo(e: Engine, client: string, sport: number, token: number, now = T0): [Verdict, Uint8Array] {
  return send(e, tcp({ src: client, dst: VIP, sport, dport: 5201, flags: SYN, options: [joinSyn(token)] }), now);
}

test('plain TCP: NAT both ways with valid checksums, later packets follow the flow, no token registered', () => {
  const e = engine();
  const b = handshake(e, '198.18.1.2', 40000, 1, null);
  assert.ok(BACKENDS.includes(b));
  for (let i = 0; i < 5; i++) {
    const [v, out] = send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 40000, dport: 5201, flags: ACK, payload: 100 + i }));
    assert.equal(v, Verdict.ToBackend);
    assert.equal(endpoints(out).dst, `${b}:5201`);
    assert.ok(checksumsOk(out));
  }
  const s = e.counters.snapshot().counters;
  assert.equal(s.flows_created, 1);
  assert.equal(s.mptcp_fallback, 1, 'MP_CAPABLE SYN answered without MP_CAPABLE is a fallback');
  assert.equal(e.conns.used, 0);
});

for (const version of [0, 1]) {
  test(`MPTCP v${version}: the token from the SYN/ACK key steers every join to the connection's backend`, () => {
    const e = engine();
    const conns: Array<{ token: number; backend: string }> = [];
    for (let i = 0; i < 40; i++) {
      const key = 0x1000_0000_0000n + BigInt(i) * 0x9e37_79b9n;
      const backend = handshake(e, '198.18.1.2', 30000 + i, version, key);
      conns.push({ token: keyToken(version, hi(key), lo(key)), backend });
    }
    assert.equal(e.conns.used, 40);
    const used = new Set(conns.map((c) => c.backend));
    assert.ok(used.size >= 3, `connections spread over backends (${used.size})`);
    for (const [i, c] of conns.entries()) {
      const [v, out] = joinTo(e, '198.18.2.2', 50000 + i, c.token);
      assert.equal(v, Verdict.ToBackend);
      assert.equal(endpoints(out).dst, `${c.backend}:5201`, `join ${i} lands on its connection's backend`);
      assert.equal(e.lastJoinConnBackend, e.lastBackend);
      assert.ok(checksumsOk(out));
    }
    assert.equal(e.counters.snapshot().counters.joins_steered_by_token, 40);
    const info = e.connectionInfo(e.findConnection(conns[0].token));
    assert.equal(info.subflows.length, 2);
    assert.equal(info.version, version);
  });
}

test('unaware mode: joins are hashed like any SYN, so with 4 backends most land elsewhere', () => {
  const e = engine({ mptcpAware: false });
  let wrong = 0;
  for (let i = 0; i < 40; i++) {
    const key = 0x2000_0000_0000n + BigInt(i);
    const b = handshake(e, '198.18.1.2', 30000 + i, 1, key);
    const [, out] = joinTo(e, '198.18.2.2', 50000 + i, keyToken(1, hi(key), lo(key)));
    if (endpoints(out).dst !== `${b}:5201`) wrong++;
  }
  assert.ok(wrong >= 15, `misrouted joins: ${wrong}`);
  assert.equal(e.conns.used, 0);
  assert.equal(e.counters.snapshot().counters.joins_unaware, 40);
});

test('no return path: keys learned from the third ACK, and from v1 first data when the ACK was lost', () => {
  const e = engine();
  const k1 = 0x546054e621704ae7n, k2 = 0x7a3a71076535379en;
  const b1 = handshake(e, '198.18.1.2', 41000, 1, null, { returnPath: false });
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 41000, dport: 5201, flags: ACK, options: [capAck(1, 0xc1n, k1)] }));
  const b2 = handshake(e, '198.18.1.2', 41001, 1, null, { returnPath: false });
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 41001, dport: 5201, flags: ACK | 0x08, options: [capData(0xc2n, k2, 100)], payload: 100 }));
  const s = e.counters.snapshot().counters;
  assert.equal(s.keys_from_ack, 1);
  assert.equal(s.keys_from_data, 1);
  assert.equal(endpoints(joinTo(e, '198.18.2.2', 1, 0xd41b3875)[1]).dst, `${b1}:5201`);
  assert.equal(endpoints(joinTo(e, '198.18.2.2', 2, 0x0c84b3eb)[1]).dst, `${b2}:5201`);
  const info = e.connectionInfo(e.findConnection(0xd41b3875));
  assert.equal(info.serverKey, '546054e621704ae7');
  assert.equal(info.clientKey, '00000000000000c1');
});

test('an ACK carrying keys for a flow never seen opening registers nothing', () => {
  const e = engine();
  for (let i = 0; i < 100; i++) {
    send(e, tcp({ src: '198.18.1.9', dst: VIP, sport: 1000 + i, dport: 5201, flags: ACK, options: [capAck(1, 1n, BigInt(i) + 7n)] }));
  }
  assert.equal(e.conns.used, 0);
  assert.equal(e.flows.used, 0);
  assert.equal(e.counters.snapshot().counters.keys_for_unopened_flow, 100);
});

test('keys in the third ACK do not override the SYN/ACK key (a client cannot pick the token)', () => {
  const e = engine();
  const key = 0x1234n;
  handshake(e, '198.18.1.2', 42000, 1, key);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 42000, dport: 5201, flags: ACK, options: [capAck(1, 0x77n, 0x9999n)] }));
  assert.equal(e.findConnection(keyToken(1, 0, 0x9999)), -1);
  assert.ok(e.findConnection(keyToken(1, 0, 0x1234)) >= 0);
  assert.equal(e.connectionInfo(e.findConnection(keyToken(1, 0, 0x1234))).clientKey, '0000000000000077');
});

for (const answer of ['hash', 'drop', 'reset'] as const) {
  test(`unknown-token join answered by '${answer}' and counted`, () => {
    const e = engine({ unknownTokenAnswer: answer });
    const pkt = tcp({ src: '198.18.2.2', dst: VIP, sport: 55555, dport: 5201, flags: SYN, seq: 0xfffffff0, options: [joinSyn(0xdeadbeef)], payload: 0 });
    const [v, out] = send(e, pkt);
    const s = e.counters.snapshot();
    assert.equal(s.counters.joins_unknown_token, 1);
    if (answer === 'hash') {
      assert.equal(v, Verdict.ToBackend);
      assert.equal(s.counters.joins_unknown_hashed, 1);
      assert.equal(e.lastJoinConnBackend, -1);
    } else if (answer === 'drop') {
      assert.equal(v, Verdict.Drop);
      assert.equal(e.lastDrop, DropReason.JoinUnknownToken);
      assert.equal(s.drops.join_unknown_token, 1);
    } else {
      assert.equal(v, Verdict.Reply);
      assert.equal(out.length, 44);
      assert.ok(checksumsOk(out));
      const rv = view(out);
      assert.deepEqual(endpoints(out), { src: `${VIP}:5201`, dst: '198.18.2.2:55555' });
      assert.equal(rv.tcpFlags, RST | ACK);
      assert.equal(tcpSeq(out, rv), 0);
      assert.equal(tcpAck(out, rv), 0xfffffff1, 'ACK = SYN seq + 1 (mod 2^32)');
      const o = nextTcpOption(out, rv.optOff, rv.optEnd);
      const opt = new MptcpOption();
      decodeMptcpOption(out, o, out[o + 1], opt);
      assert.equal(opt.subtype, MptcpSubtype.MpTcpRst);
      assert.equal(e.flows.used, 0);
    }
  });
}

test('IPv6 VIP: NAT, token steering and RST answers', () => {
  const e = new Engine(validateEngineConfig({
    unknownTokenAnswer: 'reset',
    vips: [{ address: '[2001:db8::100]:443', backends: [{ address: '2001:db8:1::2', port: 8443 }, { address: '2001:db8:2::2', port: 8443 }] }],
  }));
  const syn = tcp({ src: '2001:db8:9::2', dst: '2001:db8::100', sport: 1234, dport: 443, flags: SYN, options: [capSyn(1)] });
  const [v, out] = send(e, syn);
  assert.equal(v, Verdict.ToBackend);
  assert.ok(checksumsOk(out));
  const be = view(out);
  assert.equal(be.dstPort, 8443);
  const beAddr = Buffer.from(out.subarray(be.dstAddrOff, be.dstAddrOff + 16));
  const synack = tcp({ src: e.addressOf(e.lastBackend), dst: '2001:db8:9::2', sport: 8443, dport: 1234, flags: SYN | ACK, options: [capSynAck(1, 0xabcdefn)] });
  const [v2, out2] = send(e, synack);
  assert.equal(v2, Verdict.ToClient);
  assert.ok(checksumsOk(out2));
  assert.equal(view(out2).srcPort, 443);
  const [v3, out3] = send(e, tcp({ src: '2001:db8:9::3', dst: '2001:db8::100', sport: 999, dport: 443, flags: SYN, options: [joinSyn(keyToken(1, 0, 0xabcdef))] }));
  assert.equal(v3, Verdict.ToBackend);
  const jv = view(out3);
  assert.deepEqual(Buffer.from(out3.subarray(jv.dstAddrOff, jv.dstAddrOff + 16)), beAddr);
  const [v4, out4] = send(e, tcp({ src: '2001:db8:9::3', dst: '2001:db8::100', sport: 998, dport: 443, flags: SYN, options: [joinSyn(1)] }));
  assert.equal(v4, Verdict.Reply);
  assert.equal(out4.length, 64);
  assert.ok(checksumsOk(out4));
});

// Keys found by a birthday search: SHA-256 (v1) and SHA-1 (v0) tokens collide.
const COLLIDING: Record<number, [bigint, bigint]> = {
  1: [0x5eed00010000b109n, 0x5eed0001000156d9n],
  0: [0x5eed000000006d74n, 0x5eed00000000e48en],
};

test('the crafted colliding keys really collide', () => {
  for (const v of [0, 1]) {
    const [a, b] = COLLIDING[v];
    assert.equal(keyToken(v, hi(a), lo(a)), keyToken(v, hi(b), lo(b)));
  }
});

/** Opens connections from distinct ports until one lands on a backend other than `not`. */
function handshakeElsewhere(e: Engine, not: string, version: number, key: bigint | null, returnPath: boolean): { sport: number; backend: string; synack?: Uint8Array } {
  for (let sport = 20000; sport < 20100; sport++) {
    const syn = tcp({ src: '198.18.1.3', dst: VIP, sport, dport: 5201, flags: SYN, options: [capSyn(version, version === 0 ? 5n : undefined)] });
    const [, out] = send(e, syn);
    const backend = endpoints(out).dst.split(':')[0];
    if (backend === not) {
      send(e, tcp({ src: '198.18.1.3', dst: VIP, sport, dport: 5201, flags: RST }));
      continue;
    }
    if (!returnPath) return { sport, backend };
    const synack = tcp({ src: backend, dst: '198.18.1.3', sport: 5201, dport: sport, flags: SYN | ACK, options: key === null ? [] : [capSynAck(version, key)] });
    send(e, synack);
    return { sport, backend, synack };
  }
  throw new Error('no other backend');
}

for (const version of [0, 1]) {
  test(`token collision v${version} with the SYN/ACK seen: MP_CAPABLE is stripped, the new connection falls back`, () => {
    const e = engine();
    const [k1, k2] = COLLIDING[version];
    const token = keyToken(version, hi(k1), lo(k1));
    const b1 = handshake(e, '198.18.1.2', 43000, version, k1);
    const { synack } = handshakeElsewhere(e, b1, version, k2, true);
    const sv = view(synack!);
    assert.ok(checksumsOk(synack!), 'checksum patched after the strip');
    for (let o = sv.optOff; o < sv.optEnd; o++) assert.equal(synack![o], 1, 'option bytes became NOPs');
    assert.equal(e.counters.snapshot().counters.token_collision_stripped, 1);
    // The first connection keeps its token; its joins are unaffected.
    assert.equal(endpoints(joinTo(e, '198.18.2.2', 1, token)[1]).dst, `${b1}:5201`);
    assert.equal(e.conns.used, 1);
  });
}

test('token collision without the SYN/ACK: the token becomes ambiguous, joins get the unknown-token answer', () => {
  const e = engine({ unknownTokenAnswer: 'drop' });
  const [k1, k2] = COLLIDING[1];
  const token = keyToken(1, hi(k1), lo(k1));
  const b1 = handshake(e, '198.18.1.2', 44000, 1, null, { returnPath: false });
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 44000, dport: 5201, flags: ACK, options: [capAck(1, 1n, k1)] }));
  assert.equal(endpoints(joinTo(e, '198.18.2.2', 1, token)[1]).dst, `${b1}:5201`);
  const { sport } = handshakeElsewhere(e, b1, 1, null, false);
  send(e, tcp({ src: '198.18.1.3', dst: VIP, sport, dport: 5201, flags: ACK, options: [capAck(1, 2n, k2)] }));
  const s = e.counters.snapshot().counters;
  assert.equal(s.token_collision_ambiguous, 1);
  const [v] = joinTo(e, '198.18.2.2', 2, token);
  assert.equal(v, Verdict.Drop);
  assert.equal(e.counters.snapshot().counters.joins_ambiguous_token, 1);
});

test('a new connection on the same backend takes over a stale token', () => {
  const e = engine({}, 1);
  handshake(e, '198.18.1.2', 45000, 1, 0x42n);
  handshake(e, '198.18.1.2', 45001, 1, 0x42n);
  assert.equal(e.counters.snapshot().counters.token_replaced, 1);
  const c = e.findConnection(keyToken(1, 0, 0x42));
  assert.deepEqual(e.connectionInfo(c).subflows, ['198.18.1.2:45001>198.18.100.1:5201']);
});

test('lifetimes: FIN/FIN and RST close flows, the token lingers 60 s after the last subflow', () => {
  const e = engine();
  const key = 0x5150n;
  const token = keyToken(1, 0, 0x5150);
  const b = handshake(e, '198.18.1.2', 46000, 1, key);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 46000, dport: 5201, flags: ACK, options: [capAck(1, 3n, key)] }));
  const [, j] = joinTo(e, '198.18.2.2', 46001, token);
  assert.equal(endpoints(j).dst, `${b}:5201`);
  // Subflow 1 closes with FIN both ways; the join subflow with a RST.
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 46000, dport: 5201, flags: FIN | ACK }, ), T0 + 1000);
  send(e, tcp({ src: b, dst: '198.18.1.2', sport: 5201, dport: 46000, flags: FIN | ACK }), T0 + 1000);
  send(e, tcp({ src: '198.18.2.2', dst: VIP, sport: 46001, dport: 5201, flags: RST }), T0 + 1000);
  e.tick(T0 + 5000);
  assert.equal(e.flows.used, 1, 'RST flow gone after rstMs (2 s), FIN flow still in finMs (10 s)');
  e.tick(T0 + 12_000);
  assert.equal(e.flows.used, 0);
  const c = e.findConnection(token);
  assert.ok(c >= 0 && e.connectionInfo(c).lingering, 'token lingers');
  // A join during the linger is still steered.
  const [v2, j2] = joinTo(e, '198.18.2.2', 46002, token, T0 + 40_000);
  assert.equal(v2, Verdict.ToBackend);
  assert.equal(endpoints(j2).dst, `${b}:5201`);
  send(e, tcp({ src: '198.18.2.2', dst: VIP, sport: 46002, dport: 5201, flags: RST }), T0 + 40_000);
  e.tick(T0 + 43_000);
  assert.ok(e.findConnection(token) >= 0, 'linger restarts from the last subflow');
  e.tick(T0 + 42_000 + 60_001 + 1000);
  assert.equal(e.findConnection(token), -1, 'token expired after the linger');
  assert.equal(e.conns.used, 0);
  const s = e.counters.snapshot().counters;
  assert.equal(s.conns_expired, 1);
  assert.equal(s.flows_closed, 3);
});

test('idle timeouts: an embryonic flow expires after synMs, an established one after establishedMs', () => {
  const e = engine({ timeouts: { synMs: 1000, establishedMs: 5000 } });
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 1, dport: 5201, flags: SYN }));
  handshake(e, '198.18.1.2', 2, 1, null);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 2, dport: 5201, flags: ACK }));
  e.tick(T0 + 1500);
  assert.equal(e.flows.used, 1);
  e.tick(T0 + 4000);
  assert.equal(e.flows.used, 1);
  e.tick(T0 + 5500);
  assert.equal(e.flows.used, 0);
  assert.equal(e.counters.snapshot().counters.flows_expired, 2);
});

test('MP_FASTCLOSE closes every subflow and removes the token at once', () => {
  const e = engine();
  const key = 0xfa57n, token = keyToken(1, 0, 0xfa57);
  handshake(e, '198.18.1.2', 47000, 1, key);
  joinTo(e, '198.18.2.2', 47001, token);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 47000, dport: 5201, flags: ACK | RST, options: [fastclose(key)] }));
  assert.equal(e.findConnection(token), -1);
  e.tick(T0 + 3000);
  assert.equal(e.flows.used, 0);
  assert.equal(e.conns.used, 0);
  assert.equal(e.counters.snapshot().counters.conns_fastclosed, 1);
});

test('a join subflow speaks its connection\'s MPTCP version; a join of an unknown connection has none known', () => {
  const e = engine();
  for (const version of [0, 1]) {
    const key = 0x70e0n + BigInt(version);
    handshake(e, '198.18.1.2', 47200 + version, version, key);
    assert.equal(e.flows.mptcpMode(e.lastFlow), version === 0 ? MptcpMode.V0 : MptcpMode.V1);
    joinTo(e, '198.18.2.2', 47210 + version, keyToken(version, hi(key), lo(key)));
    assert.equal(e.flows.mptcpMode(e.lastFlow), version === 0 ? MptcpMode.V0 : MptcpMode.V1, `join of a v${version} connection`);
  }
  joinTo(e, '198.18.2.2', 47220, 0x0badf00d);
  assert.equal(e.flows.mptcpMode(e.lastFlow), MptcpMode.JoinUnknown);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 47230, dport: 5201, flags: SYN }));
  assert.equal(e.flows.mptcpMode(e.lastFlow), MptcpMode.None);
});

// RFC 6824 section 3.5: "the sender will send a TCP ACK containing the MP_FASTCLOSE option"; v0 has no RST form,
// so a v0 fast close must be seen on a plain ACK of any subflow, the joins included.
for (const on of ['first', 'join'] as const) {
  for (const from of ['client', 'server'] as const) {
    test(`MPTCP v0: an MP_FASTCLOSE on a plain ACK of the ${on} subflow (from the ${from}) closes the connection`, () => {
      const e = engine();
      const key = 0x0fa570n, token = keyToken(0, 0, 0x0fa570);
      const b = handshake(e, '198.18.1.2', 47100, 0, key);
      send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 47100, dport: 5201, flags: ACK, options: [capAck(0, 0x1111n, key)] }));
      const [v] = joinTo(e, '198.18.2.2', 47101, token);
      assert.equal(v, Verdict.ToBackend);
      // The join's handshake completes and data flows on both subflows before the fast close.
      send(e, tcp({ src: b, dst: '198.18.2.2', sport: 5201, dport: 47101, flags: SYN | ACK }));
      for (const [client, sport] of [['198.18.1.2', 47100], ['198.18.2.2', 47101]] as const) {
        send(e, tcp({ src: client, dst: VIP, sport, dport: 5201, flags: ACK, options: [dss(1n)] }));
        send(e, tcp({ src: client, dst: VIP, sport, dport: 5201, flags: ACK, options: [dss(2n)], payload: 100 }));
      }
      const [client, sport] = on === 'first' ? ['198.18.1.2', 47100] : ['198.18.2.2', 47101];
      const close = from === 'client'
        ? tcp({ src: client, dst: VIP, sport, dport: 5201, flags: ACK, options: [fastclose(key)] })
        : tcp({ src: b, dst: client, sport: 5201, dport: sport, flags: ACK, options: [fastclose(0x1111n)] });
      const [vc] = send(e, close);
      assert.equal(vc, from === 'client' ? Verdict.ToBackend : Verdict.ToClient);
      assert.equal(e.findConnection(token), -1, 'token unindexed');
      assert.equal(e.counters.snapshot().counters.conns_fastclosed, 1);
      e.tick(T0 + 3000);
      assert.equal(e.flows.used, 0, 'both subflows closed like after a RST');
      assert.equal(e.conns.used, 0);
    });
  }
}

test('a SYN on a closed 4-tuple opens a new flow (port reuse)', () => {
  const e = engine();
  handshake(e, '198.18.1.2', 48000, 1, null);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 48000, dport: 5201, flags: RST }));
  handshake(e, '198.18.1.2', 48000, 1, null);
  assert.equal(e.counters.snapshot().counters.flows_reopened, 1);
  assert.equal(e.flows.used, 1);
});

test('SYN flood: the flow table stays bounded, established flows survive, evictions are counted', () => {
  const e = engine({ tables: { maxFlows: 256, maxConnections: 64 } });
  const est: Array<[number, string]> = [];
  for (let i = 0; i < 50; i++) {
    const b = handshake(e, '198.18.1.2', 10000 + i, 1, BigInt(i + 1));
    send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 10000 + i, dport: 5201, flags: ACK, options: [dss(1n)] }));
    est.push([10000 + i, b]);
  }
  for (let i = 0; i < 20000; i++) {
    const src = `198.19.${(i >> 8) & 255}.${i & 255}`;
    send(e, tcp({ src, dst: VIP, sport: 1024 + (i % 60000), dport: 5201, flags: SYN, options: [capSyn(1)] }), T0 + i);
    assert.ok(e.flows.used <= 256);
  }
  const s = e.counters.snapshot().counters;
  assert.ok(s.flows_evicted_embryonic > 19000, `evicted ${s.flows_evicted_embryonic}`);
  for (const [sport, b] of est) {
    const [v, out] = send(e, tcp({ src: '198.18.1.2', dst: VIP, sport, dport: 5201, flags: ACK }), T0 + 30000);
    assert.equal(v, Verdict.ToBackend);
    assert.ok(e.lastFlow >= 0, 'still has its flow entry');
    assert.equal(endpoints(out).dst, `${b}:5201`);
  }
  assert.equal(e.conns.used, 50);
});

test('connection table bound: tokens beyond the cap are counted, not stored', () => {
  const e = engine({ tables: { maxFlows: 1024, maxConnections: 16 } });
  for (let i = 0; i < 40; i++) handshake(e, '198.18.1.2', 10000 + i, 1, BigInt(i + 1));
  assert.equal(e.conns.used, 16);
  assert.equal(e.counters.snapshot().counters.conn_table_full, 24);
});

test('packets to no VIP and without a flow are dropped as no_service; non-TCP as not_tcp', () => {
  const e = engine();
  const [v] = send(e, tcp({ src: '198.18.1.2', dst: '198.18.200.1', sport: 1, dport: 2, flags: SYN }));
  assert.equal(v, Verdict.Drop);
  const udp = tcp({ src: '198.18.1.2', dst: VIP, sport: 1, dport: 5201, flags: SYN });
  udp[9] = 17;
  assert.equal(send(e, udp)[0], Verdict.Drop);
  const d = e.counters.snapshot().drops;
  assert.equal(d.no_service, 1);
  assert.equal(d.not_tcp, 1);
});

test('draining a backend: no new connections, but joins of its connections still reach it', () => {
  const e = engine({}, 2);
  const key = 0xd7a1n, token = keyToken(1, 0, 0xd7a1);
  const b = handshake(e, '198.18.1.2', 49000, 1, key);
  const bi = e.services.findBackend(`${b}:5201`);
  e.services.setWeight(bi, 0);
  for (let i = 0; i < 30; i++) assert.notEqual(handshake(e, '198.18.1.4', 100 + i, 1, null), b);
  assert.equal(endpoints(joinTo(e, '198.18.2.2', 49001, token)[1]).dst, `${b}:5201`);
});

test('reconfigure keeps flows and tokens, and new backends take new connections', () => {
  const e = engine({}, 1);
  const key = 0x77n, token = keyToken(1, 0, 0x77);
  handshake(e, '198.18.1.2', 1, 1, key);
  e.reconfigure(validateEngineConfig({ vips: [{ address: `${VIP}:5201`, backends: [{ address: BACKENDS[1] }] }] }));
  assert.equal(endpoints(joinTo(e, '198.18.2.2', 2, token)[1]).dst, `${BACKENDS[0]}:5201`, 'old backend keeps its joins');
  assert.equal(handshake(e, '198.18.1.2', 3, 1, null), BACKENDS[1]);
});

test('restart: a fresh engine with the same config keeps established subflows working in both directions', () => {
  const before = engine();
  const b = handshake(before, '198.18.1.2', 51000, 1, 0xabcn);
  const after = engine();
  const [v1, out1] = send(after, tcp({ src: '198.18.1.2', dst: VIP, sport: 51000, dport: 5201, flags: ACK, payload: 10 }));
  assert.equal(v1, Verdict.ToBackend);
  assert.equal(endpoints(out1).dst, `${b}:5201`, 'Maglev sends it where its SYN went');
  const [v2, out2] = send(after, tcp({ src: b, dst: '198.18.1.2', sport: 5201, dport: 51000, flags: ACK, payload: 10 }));
  assert.equal(v2, Verdict.ToClient);
  assert.equal(endpoints(out2).src, `${VIP}:5201`);
  assert.ok(checksumsOk(out2));
  const s = after.counters.snapshot().counters;
  assert.equal(s.midstream_no_flow, 1);
  assert.equal(s.stateless_reply, 1);
  // Joins of connections from before the restart have unknown tokens: the configured answer applies.
  joinTo(after, '198.18.2.2', 51001, keyToken(1, 0, 0xabc));
  assert.equal(after.counters.snapshot().counters.joins_unknown_token, 1);
});

test('counter and drop labels cover every slot', async () => {
  const { COUNTER_LABELS, DROP_REASON_LABELS } = await import('../src/engine/counters.js');
  const e = engine();
  assert.equal(e.counters.events.length, COUNTER_LABELS.length);
  assert.equal(e.counters.drops.length, DROP_REASON_LABELS.length);
  assert.equal(new Set(COUNTER_LABELS).size, COUNTER_LABELS.length);
});

test('per-backend packet and byte counters follow the traffic each way', () => {
  const e = engine({}, 2);
  const b = handshake(e, '198.18.1.2', 52000, 1, null);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 52000, dport: 5201, flags: ACK, payload: 100 }));
  const bi = e.services.findBackend(`${b}:5201`);
  const info = e.services.backendInfo(bi);
  assert.equal(info.packetsIn, 2);
  assert.equal(info.bytesIn, 44 + 140, 'SYN (20+20+4 option bytes) and a 100-byte segment');
  assert.equal(info.packetsOut, 1);
  const other = e.services.backendInfo(bi === 0 ? 1 : 0);
  assert.equal(other.packetsIn + other.packetsOut, 0);
});

test('a connection that never got past its handshake does not linger: answered SYN floods cannot hold tokens', () => {
  const e = engine({ timeouts: { synMs: 1000 } });
  for (let i = 0; i < 50; i++) handshake(e, `198.19.7.${i}`, 1000 + i, 1, BigInt(0x1000 + i));
  assert.equal(e.conns.used, 50, 'the SYN/ACKs taught 50 tokens');
  e.tick(T0 + 2000);
  assert.equal(e.flows.used, 0);
  assert.equal(e.conns.used, 0, 'freed with their embryonic flows, no 60 s linger');
  // An established connection still lingers.
  handshake(e, '198.18.1.2', 2000, 1, 0x77n, { now: T0 + 3000 });
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 2000, dport: 5201, flags: ACK }), T0 + 3000);
  send(e, tcp({ src: '198.18.1.2', dst: VIP, sport: 2000, dport: 5201, flags: RST }), T0 + 3000);
  e.tick(T0 + 6000);
  assert.equal(e.flows.used, 0);
  assert.equal(e.conns.used, 1);
  assert.ok(e.connectionInfo(e.findConnection(keyToken(1, 0, 0x77))).lingering);
});
