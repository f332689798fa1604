// Dual-stack services: an IPv4 VIP and an IPv6 VIP with one `service` name front the same servers (paired by
// their backends' `server` names); a join of a connection opened on one arrives on the other and must reach the
// same server, at its address in the join's family. Byte-exact: the engine's output is compared with the packet
// the builder makes for the expected addresses (its checksums computed from scratch, not patched).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Engine, Verdict } from '../src/engine/engine.js';
import { ConfigError, validateEngineConfig } from '../src/engine/config.js';
import { keyToken } from '../src/wire/tokens.js';
import { defaultVips } from '../src/testbed/balancer-process.js';
import type { TestbedHandle } from '../src/testbed/testbed.js';
import { ACK, SYN, capAck, capSyn, capSynAck, checksumsOk, endpoints, joinSyn, tcp, type TcpSpec } from './helpers/packets.js';

const VIP4 = '198.18.100.1', VIP6 = '2001:db8::100', PORT = 5201;
const CLI4 = '198.18.1.2', CLI6 = '2001:db8:c::2';
/** server name -> [IPv4 address, IPv6 address]. */
const SERVERS: Record<string, [string, string]> = {
  s1: ['198.18.11.2', '2001:db8:11::2'],
  s2: ['198.18.12.2', '2001:db8:12::2'],
  s3: ['198.18.13.2', '2001:db8:13::2'],
};
const T0 = 1_000_000;

/** The v6 VIP lists its backends in another order than the v4 one: pairing is by name, not by position. */
function dualStackVips(o: { weights?: Record<string, number>; v6Servers?: string[]; v6Service?: string } = {}): Array<Record<string, unknown>> {
  const v4 = Object.keys(SERVERS), v6 = o.v6Servers ?? [...v4].reverse();
  return [
    { address: `${VIP4}:${PORT}`, service: 'web', backends: v4.map((s) => ({ address: SERVERS[s][0], server: s, weight: o.weights?.[s] ?? 1 })) },
    { address: `[${VIP6}]:${PORT}`, ...(o.v6Service === '' ? {} : { service: o.v6Service ?? 'web' }), backends: v6.map((s) => ({ address: SERVERS[s][1], ...(o.v6Service === '' ? {} : { server: s }), weight: o.weights?.[s] ?? 1 })) },
  ];
}

function engine(vips = dualStackVips(), over: Record<string, unknown> = {}): Engine {
  return new Engine(validateEngineConfig({ vips, tables: { maxFlows: 4096, maxConnections: 4096 }, unknownTokenAnswer: 'reset', ...over }));
}

function send(e: Engine, pkt: Uint8Array): [Verdict, Uint8Array] {
  const v = e.process(pkt, 0, pkt.length, T0);
  return [v, pkt.subarray(0, e.outLen)];
}

/** Sends spec and checks the output is byte for byte the packet `expect` describes (spec with other endpoints). */
function sendExpect(e: Engine, spec: TcpSpec, expect: Partial<TcpSpec>, verdict: Verdict, what: string): void {
  const [v, out] = send(e, tcp(spec));
  assert.equal(v, verdict, `${what}: verdict`);
  assert.deepEqual(Buffer.from(out), Buffer.from(tcp({ ...spec, ...expect })), `${what}: bytes`);
}

const serverOf = (addr: string) => Object.keys(SERVERS).find((s) => SERVERS[s].includes(addr))!;

/**
 * Opens an MPTCP v1 connection from `cli` to `vip` (SYN, SYN/ACK with the server key, third ACK); returns the
 * server it landed on and the server token.
 */
function open(e: Engine, cli: string, vip: string, sport: number, serverKey: bigint): { server: string; token: number } {
  const [v, out] = send(e, tcp({ src: cli, dst: vip, sport, dport: PORT, flags: SYN, options: [capSyn(1)] }));
  assert.equal(v, Verdict.ToBackend);
  const be = endpoints(out).dst.replace(/:\d+$/, '');
  const addr = vip.includes(':') ? Buffer.from(be, 'hex') : undefined;
  const beText = addr ? Object.values(SERVERS).map((p) => p[1]).find((a) => Buffer.from(tcpAddr(a)).equals(addr))! : be;
  sendExpect(e, { src: beText, dst: cli, sport: PORT, dport: sport, flags: SYN | ACK, options: [capSynAck(1, serverKey)] }, { src: vip }, Verdict.ToClient, 'SYN/ACK');
  sendExpect(e, { src: cli, dst: vip, sport, dport: PORT, flags: ACK, options: [capAck(1, 0x77n, serverKey)] }, { dst: beText }, Verdict.ToBackend, 'third ACK');
  return { server: serverOf(beText), token: keyToken(1, Number(serverKey >> 32n), Number(serverKey & 0xffffffffn)) };
}

/** 16 address bytes of an IPv6 text (through the builder, so the test does not parse addresses on its own). */
function tcpAddr(a6: string): Uint8Array {
  return tcp({ src: a6, dst: a6, sport: 1, dport: 1, flags: 0 }).subarray(8, 24);
}

test('a v4 connection\'s join on the service\'s v6 VIP reaches the same server at its v6 address (every server)', () => {
  const e = engine();
  const seen = new Set<string>();
  for (let i = 0; i < 24 && seen.size < 3; i++) {
    const { server, token } = open(e, CLI4, VIP4, 40000 + i, 0x1000n + BigInt(i) * 0x1234567n);
    seen.add(server);
    const join: TcpSpec = { src: CLI6, dst: VIP6, sport: 50000 + i, dport: PORT, flags: SYN, options: [joinSyn(token)] };
    sendExpect(e, join, { dst: SERVERS[server][1] }, Verdict.ToBackend, `join of connection ${i} (on ${server})`);
    // The join's own flow both ways: SYN/ACK back from the v6 address, its ACK to it again.
    sendExpect(e, { src: SERVERS[server][1], dst: CLI6, sport: PORT, dport: 50000 + i, flags: SYN | ACK }, { src: VIP6 }, Verdict.ToClient, 'join SYN/ACK');
    sendExpect(e, { src: CLI6, dst: VIP6, sport: 50000 + i, dport: PORT, flags: ACK, payload: 10 }, { dst: SERVERS[server][1] }, Verdict.ToBackend, 'join ACK');
    // The join is a subflow of the v4 connection (one record, two subflows).
    const c = e.connectionInfo(e.findConnection(token));
    assert.equal(c.subflows.length, 2);
  }
  assert.equal(seen.size, 3, 'connections reached every server');
  const s = e.counters.snapshot().counters;
  assert.equal(s.joins_steered_by_token, s.joins_cross_family);
  assert.ok(s.joins_cross_family >= 3);
  assert.equal(s.joins_unknown_token, 0);
  assert.equal(s.joins_vip_mismatch, 0, 'a paired other-family VIP is not a mismatch');
});

test('a v6 connection\'s join on the service\'s v4 VIP reaches the same server at its v4 address', () => {
  const e = engine();
  const { server, token } = open(e, CLI6, VIP6, 41000, 0xfeedfacecafen);
  const join: TcpSpec = { src: '198.18.2.2', dst: VIP4, sport: 51000, dport: PORT, flags: SYN, options: [joinSyn(token)] };
  sendExpect(e, join, { dst: SERVERS[server][0] }, Verdict.ToBackend, 'v4 join');
  sendExpect(e, { src: SERVERS[server][0], dst: '198.18.2.2', sport: PORT, dport: 51000, flags: SYN | ACK }, { src: VIP4 }, Verdict.ToClient, 'v4 join SYN/ACK');
  assert.equal(e.counters.snapshot().counters.joins_cross_family, 1);
});

test('a join on a v6 VIP that is not the v4 VIP\'s service gets the unknown-token answer, counted', () => {
  // Same servers, but the v6 VIP has no service: nothing says its addresses are the v4 backends' machines.
  const e = engine(dualStackVips({ v6Service: '' }));
  const { token } = open(e, CLI4, VIP4, 42000, 0xabcdef012345n);
  const [v, out] = send(e, tcp({ src: CLI6, dst: VIP6, sport: 52000, dport: PORT, flags: SYN, options: [joinSyn(token)] }));
  assert.equal(v, Verdict.Reply, 'reset, the configured unknown-token answer');
  assert.ok(checksumsOk(out));
  assert.equal(endpoints(out).dst.split(':')[1], '52000');
  const s = e.counters.snapshot().counters;
  assert.equal(s.joins_unknown_token, 1);
  assert.equal(s.joins_family_unpaired, 1);
  assert.equal(s.joins_unknown_reset, 1);
  assert.equal(s.joins_steered_by_token, 0);
  assert.equal(s.joins_ambiguous_token, 0);
});

test('a join on the v6 VIP of a service where its server has no v6 address: unknown-token answer (hash), counted', () => {
  const e = engine(dualStackVips({ v6Servers: ['s2'] }), { unknownTokenAnswer: 'hash' });
  let c: { server: string; token: number } | undefined;
  for (let i = 0; i < 24; i++) {
    c = open(e, CLI4, VIP4, 43000 + i, 0x5000n + BigInt(i) * 0x7654321n);
    if (c.server !== 's2') break;
  }
  assert.notEqual(c!.server, 's2');
  const [v, out] = send(e, tcp({ src: CLI6, dst: VIP6, sport: 53000, dport: PORT, flags: SYN, options: [joinSyn(c!.token)] }));
  assert.equal(v, Verdict.ToBackend);
  assert.equal(Buffer.from(out).subarray(24, 40).equals(Buffer.from(tcpAddr(SERVERS.s2[1]))), true, 'hashed to the only v6 backend');
  const s = e.counters.snapshot().counters;
  assert.equal(s.joins_family_unpaired, 1);
  assert.equal(s.joins_unknown_hashed, 1);
  assert.equal(s.joins_cross_family, 0);
});

test('drained servers: new connections avoid them, but their connections\' joins still reach them across families', () => {
  const e = engine();
  const conns = Array.from({ length: 12 }, (_, i) => open(e, CLI4, VIP4, 44000 + i, 0x9000n + BigInt(i) * 0x1357913n));
  const drained = conns[0].server;
  // Drain that server in both VIPs (as the admin API's drain does, weight 0).
  e.reconfigure(validateEngineConfig({ vips: dualStackVips({ weights: { [drained]: 0 } }), unknownTokenAnswer: 'reset', tables: { maxFlows: 4096, maxConnections: 4096 } }));
  for (const [i, c] of conns.entries()) {
    sendExpect(e, { src: CLI6, dst: VIP6, sport: 54000 + i, dport: PORT, flags: SYN, options: [joinSyn(c.token)] }, { dst: SERVERS[c.server][1] }, Verdict.ToBackend, `join ${i} (server ${c.server}, drained ${drained})`);
  }
  for (let i = 0; i < 30; i++) {
    const [, out] = send(e, tcp({ src: CLI6, dst: VIP6, sport: 45000 + i, dport: PORT, flags: SYN, options: [capSyn(1)] }));
    assert.notEqual(Buffer.from(out).subarray(24, 40).equals(Buffer.from(tcpAddr(SERVERS[drained][1]))), true, 'a new v6 connection reached the drained server');
  }
  assert.equal(e.counters.snapshot().counters.joins_cross_family, conns.length);
});

test('a removed v6 backend is no peer any more: its server\'s v6 joins get the unknown-token answer', () => {
  const e = engine();
  const { server, token } = open(e, CLI4, VIP4, 46000, 0x2468acen);
  const rest = Object.keys(SERVERS).filter((s) => s !== server);
  e.reconfigure(validateEngineConfig({ vips: dualStackVips({ v6Servers: rest }), unknownTokenAnswer: 'reset', tables: { maxFlows: 4096, maxConnections: 4096 } }));
  const [v] = send(e, tcp({ src: CLI6, dst: VIP6, sport: 56000, dport: PORT, flags: SYN, options: [joinSyn(token)] }));
  assert.equal(v, Verdict.Reply);
  assert.equal(e.counters.snapshot().counters.joins_family_unpaired, 1);
  // Its v4 joins still go to it.
  sendExpect(e, { src: '198.18.2.2', dst: VIP4, sport: 56001, dport: PORT, flags: SYN, options: [joinSyn(token)] }, { dst: SERVERS[server][0] }, Verdict.ToBackend, 'v4 join');
});

test('a subflow the shared store pins to a v4 backend, arriving over v6 without a flow, goes to that server\'s v6 address', () => {
  const e = engine();
  assert.ok(e.pinNextFlow({ vip: `${VIP4}:${PORT}`, backend: `${SERVERS.s2[0]}:${PORT}` }));
  sendExpect(e, { src: CLI6, dst: VIP6, sport: 57000, dport: PORT, flags: ACK, payload: 20 }, { dst: SERVERS.s2[1] }, Verdict.ToBackend, 'pinned v6 subflow');
});

test('config: service and server names are validated with the field path', () => {
  const bad = (vips: unknown, path: string, re: RegExp) => {
    assert.throws(() => validateEngineConfig({ vips }), (e: unknown) => e instanceof ConfigError && e.path === path && re.test(e.reason), `expected ${path} ${re}`);
  };
  const v4 = (service: unknown, backends: unknown[] = [{ address: '198.18.11.2', server: 's1' }]) => ({ address: `${VIP4}:80`, service, backends });
  bad([v4('web'), { address: '198.18.100.2:80', service: 'web', backends: [{ address: '198.18.12.2', server: 's1' }] }], 'vips[1].service', /already has an IPv4 VIP \(vips\[0\]\)/);
  bad([v4('web', [{ address: '198.18.11.2', server: 's1' }, { address: '198.18.12.2' }])], 'vips[0].backends[1].server', /required in a VIP of service "web"/);
  bad([v4('web', [{ address: '198.18.11.2', server: 's1' }, { address: '198.18.12.2', server: 's1' }])], 'vips[0].backends[1].server', /server "s1" appears twice/);
  bad([{ address: `${VIP4}:80`, backends: [{ address: '198.18.11.2', server: 's1' }] }], 'vips[0].backends[0].server', /has no service/);
  bad([v4('web site')], 'vips[0].service', /must be a name/);
  bad([v4(7)], 'vips[0].service', /must be a name/);
  bad([v4('web', [{ address: '198.18.11.2', server: '' }])], 'vips[0].backends[0].server', /must be a name/);
  // Valid: one v4 and one v6 VIP of a service, and a service with one VIP so far (the API adds the other later).
  const ok = validateEngineConfig({ vips: dualStackVips() });
  assert.equal(ok.vips[1].service, 'web');
  assert.equal(ok.vips[1].backends[0].server, 's3');
  assert.doesNotThrow(() => validateEngineConfig({ vips: [v4('solo')] }));
});

test('property: pairing joins exactly the backends whose server names match, both ways, and survives reconfiguration', () => {
  const names = fc.uniqueArray(fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f'), { maxLength: 6 });
  fc.assert(fc.property(names, names, names, fc.boolean(), (n4, n6, n6later, sameService) => {
    const cfg = (v6: string[]) => validateEngineConfig({ vips: [
      { address: `${VIP4}:${PORT}`, service: 'web', backends: n4.map((n, i) => ({ address: `198.18.20.${i + 1}`, server: n })) },
      { address: `[${VIP6}]:${PORT}`, service: sameService ? 'web' : 'other', backends: v6.map((n, i) => ({ address: `2001:db8:20::${i + 1}`, server: n })) },
    ], tables: { maxFlows: 64, maxConnections: 64 } });
    const e = new Engine(cfg(n6));
    // A backend's server name, from its address (index in the list that configured it now), or undefined if removed.
    const nameOf = (b: number, v6: string[]): string | undefined => {
      const info = e.services.backendInfo(b);
      if (info.removed) return undefined;
      const k = Number(info.address.split(/[.:]/).pop()) - 1;
      return info.vip === 0 ? n4[k] : v6[parseInt(info.address.split(':').pop()!, 16) - 1];
    };
    const check = (v6: string[]) => {
      const svc = e.services;
      for (let b = 0; b < svc.backendCount; b++) {
        const mine = nameOf(b, v6), p = svc.bePeer[b], info = svc.backendInfo(b);
        // A removed backend may keep a peer (its connections' joins of the other family still reach the server).
        if (mine === undefined) continue;
        const other = info.vip === 0 ? v6 : n4;
        if (!sameService || !other.includes(mine)) { assert.equal(p, -1, `${info.id} (${mine}) has no peer`); continue; }
        assert.ok(p >= 0, `${info.id} (${mine}) is paired`);
        assert.notEqual(svc.backendInfo(p).vip, info.vip, 'a peer is on the other VIP');
        assert.equal(nameOf(p, v6), mine, 'the peer carries the same server name');
        assert.equal(svc.bePeer[p], b, 'pairing is symmetric');
      }
    };
    check(n6);
    // Servers leave and join the v6 VIP: removed backends stop being peers, new ones become peers.
    e.reconfigure(cfg(n6later));
    check(n6later);
  }), { numRuns: 300 });
});

test('the testbed\'s default balancer config on an ipv6 testbed is one valid dual-stack service that pairs each server', () => {
  const tb = { ipv6: true, vips: ['198.19.0.10'], vips6: ['fd00:19::10'], servers: [{ addr: '198.18.11.2', addr6: 'fd00:18:11::2' }, { addr: '198.18.12.2', addr6: 'fd00:18:12::2' }] } as unknown as TestbedHandle;
  const e = new Engine(validateEngineConfig({ vips: defaultVips(tb, 5201), tables: { maxFlows: 64, maxConnections: 64 } }));
  const svc = e.services;
  assert.equal(svc.backendCount, 4);
  for (let b = 0; b < 4; b++) {
    const me = svc.backendInfo(b), peer = svc.backendInfo(svc.bePeer[b]);
    assert.equal(tb.servers.findIndex((s) => s.addr === me.address || s.addr6 === me.address), tb.servers.findIndex((s) => s.addr === peer.address || s.addr6 === peer.address), `${me.id} pairs with ${peer.id}`);
    assert.notEqual(me.vip, peer.vip);
  }
  assert.equal(defaultVips({ ...tb, ipv6: false } as TestbedHandle, 5201).length, 1, 'IPv4 only without ipv6');
});

test('control plane: a server added to one VIP of a service needs its name (400); drained through the API in both VIPs, its joins still cross families', async () => {
  const { Controller, ControlError, inProcessPort } = await import('../src/control/controller.js');
  const { validateRunConfig } = await import('../src/control/run-config.js');
  const cfg = validateRunConfig({ vips: dualStackVips({ v6Servers: ['s1', 's2'] }), unknownTokenAnswer: 'reset', tables: { maxFlows: 256, maxConnections: 256 } });
  const port = inProcessPort(cfg);
  const ctl = new Controller(port, cfg), e = port.local;
  const v6 = `[${VIP6}]:${PORT}`;
  await assert.rejects(ctl.addBackend(v6, { address: SERVERS.s3[1] }), (err: unknown) => err instanceof ControlError && err.status === 400 && /engine\.vips\[1\]\.backends\[2\]\.server: required/.test(err.message));
  // A connection on s3 (v4 only so far): its v6 join is unpaired, then paired once s3's v6 address is added.
  let c: { server: string; token: number } | undefined;
  for (let i = 0; i < 40 && c?.server !== 's3'; i++) c = open(e, CLI4, VIP4, 47000 + i, 0x3000n + BigInt(i) * 0x2468ace1n);
  assert.equal(c!.server, 's3');
  let [v] = send(e, tcp({ src: CLI6, dst: VIP6, sport: 57100, dport: PORT, flags: SYN, options: [joinSyn(c!.token)] }));
  assert.equal(v, Verdict.Reply, 'no v6 address of s3 yet: unknown-token answer');
  await ctl.addBackend(v6, { address: SERVERS.s3[1], server: 's3' });
  for (const vip of [`${VIP4}:${PORT}`, v6]) await ctl.drain(vip, `${vip === v6 ? `[${SERVERS.s3[1]}]` : SERVERS.s3[0]}:${PORT}`);
  sendExpect(e, { src: CLI6, dst: VIP6, sport: 57101, dport: PORT, flags: SYN, options: [joinSyn(c!.token)] }, { dst: SERVERS.s3[1] }, Verdict.ToBackend, 'v6 join to the drained s3');
  const s = e.counters.snapshot().counters;
  assert.equal(s.joins_family_unpaired, 1);
  assert.equal(s.joins_cross_family, 1);
});
