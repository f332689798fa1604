// ICMP / ICMPv6 through the engine: byte-exact error rewrites (expected packets assembled here, checksums from the
// from-scratch sum below, not the code under test), flows with no state, echo replies and their rate limit, config.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Engine, Verdict } from '../src/engine/engine.js';
import { ConfigError, validateEngineConfig } from '../src/engine/config.js';
import { validateRunConfig } from '../src/control/run-config.js';
import { DROP_REASON_LABELS, DropReason } from '../src/engine/counters.js';
import { parseIp } from '../src/wire/addr.js';
import { buildEchoRequest, buildIcmpError, buildIcmpPacket } from '../src/wire/icmp-build.js';
import { IcmpStatus, IcmpView, parseIcmp } from '../src/wire/icmp.js';
import { PacketView, parsePacket, ParseStatus } from '../src/wire/parse.js';
import { ACK, SYN, tcp } from './helpers/packets.js';

const VIP4 = '203.0.113.10', VIP6 = '2001:db8:100::10';
const BE4 = ['10.1.0.1', '10.1.0.2', '10.1.0.3'], BE6 = ['2001:db8:1::1', '2001:db8:1::2', '2001:db8:1::3'];
const CLIENT4 = '192.0.2.7', CLIENT6 = '2001:db8:c::7';
const ROUTER4 = '198.51.100.1', ROUTER6 = '2001:db8:ff::1';
const VPORT = 443, BPORT = 8443, CPORT = 40000;
const T0 = 5_000_000;

function engine(icmp: Record<string, unknown> = {}, policy = 'maglev'): Engine {
  return new Engine(validateEngineConfig({
    vips: [
      { address: `${VIP4}:${VPORT}`, backends: BE4.map((address) => ({ address, port: BPORT })) },
      { address: `[${VIP6}]:${VPORT}`, backends: BE6.map((address) => ({ address, port: BPORT })) },
    ],
    policy, tables: { maxFlows: 1024, maxConnections: 1024, maglevSize: 251 }, icmp,
  }));
}

// ---- an independent one's-complement sum (RFC 1071), byte by byte ----

function sum16(bytes: ArrayLike<number>, from: number, to: number, acc = 0): number {
  for (let i = from; i < to; i += 2) acc += bytes[i] * 256 + (i + 1 < to ? bytes[i + 1] : 0);
  while (acc > 0xffff) acc = (acc % 0x10000) + Math.floor(acc / 0x10000);
  return acc;
}
const complement = (s: number) => 0xffff - s;
/** The sum over a region that holds its own correct checksum is 0xffff. */
const regionOk = (p: Uint8Array, from: number, to: number) => sum16(p, from, to) === 0xffff;
function pseudo6(p: Uint8Array, len: number): number {
  const ph = [...p.subarray(8, 40), 0, 0, len >> 8, len & 0xff, 0, 0, 0, 58];
  return sum16(ph, 0, ph.length);
}
function icmpOk(p: Uint8Array): boolean {
  if (p[0] >> 4 === 4) return regionOk(p, 0, (p[0] & 15) * 4) && regionOk(p, (p[0] & 15) * 4, p.length);
  return sum16(p, 40, p.length, pseudo6(p, p.length - 40)) === 0xffff;
}
function put16(p: Uint8Array, at: number, v: number): void { p[at] = v >> 8; p[at + 1] = v & 0xff; }
const ip = (a: string) => parseIp(a)!.bytes;

/** The packet as it should leave: an IP header (copied from `like`, with new addresses), ICMP type/code/rest and body, checksums summed here. */
function expected(like: Uint8Array, src: string, dst: string, icmpHead: Uint8Array, body: Uint8Array, ttl?: number): Uint8Array {
  const v4 = like[0] >> 4 === 4, hl = v4 ? 20 : 40;
  const p = new Uint8Array(hl + 8 + body.length);
  p.set(like.subarray(0, hl), 0);
  if (v4) {
    p.set(ip(src), 12); p.set(ip(dst), 16);
    if (ttl !== undefined) p[8] = ttl;
    put16(p, 10, 0); put16(p, 10, complement(sum16(p, 0, 20)));
  } else {
    p.set(ip(src), 8); p.set(ip(dst), 24);
    if (ttl !== undefined) p[7] = ttl;
  }
  p.set(icmpHead.subarray(0, 8), hl);
  put16(p, hl + 2, 0);
  p.set(body, hl + 8);
  const s = v4 ? sum16(p, hl, p.length) : sum16(p, hl, p.length, pseudo6(p, p.length - hl));
  put16(p, hl + 2, complement(s));
  return p;
}

function send(e: Engine, pkt: Uint8Array, now = T0): [Verdict, Uint8Array] {
  const v = e.process(pkt, 0, pkt.length, now);
  return [v, pkt.slice(0, e.outLen)];
}

/** Opens a flow (client SYN) and returns its backend address. */
function openFlow(e: Engine, v6: boolean, cport = CPORT): string {
  const [v, out] = send(e, tcp({ src: v6 ? CLIENT6 : CLIENT4, dst: v6 ? VIP6 : VIP4, sport: cport, dport: VPORT, flags: SYN }));
  assert.equal(v, Verdict.ToBackend);
  const b = v6 ? BE6[e.lastBackend - BE4.length] : BE4[e.lastBackend];
  assert.deepEqual([...out.subarray(v6 ? 24 : 16, v6 ? 40 : 20)], [...ip(b)]);
  return b;
}

/** A full-size segment as the backend sends it, and the same after mplb (source VIP:443). */
function backendSegment(e: Engine, v6: boolean, be: string, cport = CPORT): { orig: Uint8Array; natted: Uint8Array } {
  const orig = tcp({ src: be, dst: v6 ? CLIENT6 : CLIENT4, sport: BPORT, dport: cport, flags: ACK, seq: 0x01020304, ack: 77, payload: v6 ? 1440 : 1460 });
  const natted = orig.slice();
  assert.equal(e.process(natted, 0, natted.length, T0), Verdict.ToClient);
  return { orig, natted };
}

const counters = (e: Engine) => e.counters.snapshot();

for (const v6 of [false, true]) {
  const fam = v6 ? 'IPv6' : 'IPv4';
  test(`${fam}: the router's ${v6 ? 'packet too big' : 'fragmentation needed'} about a VIP's segment goes to the flow's backend, byte-exact`, () => {
    const e = engine();
    const be = openFlow(e, v6);
    const { orig, natted } = backendSegment(e, v6, be);
    const err = buildIcmpError({ src: v6 ? ROUTER6 : ROUTER4, dst: v6 ? VIP6 : VIP4, type: v6 ? 2 : 3, code: v6 ? 0 : 4, rest: 1400, quoted: natted });
    const quoteLen = err.length - (v6 ? 48 : 28);
    assert.equal(quoteLen, v6 ? 1232 : 548, 'the quote is cut as a router cuts it');
    const input = err.slice();
    const [v, out] = send(e, err);
    assert.equal(v, Verdict.ToBackend);
    // Outer destination: the backend; the quote: the backend's own segment as it sent it (its checksums included).
    assert.deepEqual(out, expected(input, v6 ? ROUTER6 : ROUTER4, be, input.subarray(v6 ? 40 : 20), orig.subarray(0, quoteLen)));
    assert.ok(icmpOk(out));
    const c = counters(e).counters;
    assert.equal(c.icmp_errors_to_backend, 1);
    assert.equal(c.icmp_pmtu_errors, 1);
    assert.equal(c.to_backend, 2);
  });

  test(`${fam}: an error from the backend about the client's segment is translated back to the VIP, byte-exact`, () => {
    const e = engine();
    const be = openFlow(e, v6);
    const orig = tcp({ src: v6 ? CLIENT6 : CLIENT4, dst: v6 ? VIP6 : VIP4, sport: CPORT, dport: VPORT, flags: ACK, payload: 100 });
    const natted = orig.slice();
    assert.equal(e.process(natted, 0, natted.length, T0), Verdict.ToBackend);
    // From the backend itself: its address becomes the VIP's, like its TCP replies. From a router: it stays.
    for (const [src, outSrc] of [[be, v6 ? VIP6 : VIP4], [v6 ? ROUTER6 : ROUTER4, v6 ? ROUTER6 : ROUTER4]]) {
      const err = buildIcmpError({ src, dst: v6 ? CLIENT6 : CLIENT4, type: v6 ? 1 : 3, code: v6 ? 1 : 13, quoted: natted });
      const input = err.slice();
      const [v, out] = send(e, err);
      assert.equal(v, Verdict.ToClient, `from ${src}`);
      assert.deepEqual(out, expected(input, outSrc, v6 ? CLIENT6 : CLIENT4, input.subarray(v6 ? 40 : 20), orig));
    }
    assert.equal(counters(e).counters.icmp_errors_to_client, 2);
  });
}

test('IPv4: a quote of exactly the IP header + 8 bytes (no TCP checksum quoted) is rewritten with the quoted IP checksum right', () => {
  const e = engine();
  const be = openFlow(e, false);
  const { orig, natted } = backendSegment(e, false, be);
  const err = buildIcmpError({ src: ROUTER4, dst: VIP4, type: 11, quoted: natted, quoteBytes: 28 });
  const input = err.slice();
  const [v, out] = send(e, err);
  assert.equal(v, Verdict.ToBackend);
  assert.deepEqual(out, expected(input, ROUTER4, be, input.subarray(20), orig.subarray(0, 28)));
  assert.ok(regionOk(out, 28, 48), 'quoted IPv4 header checksum');
});

test('an error about a flow with no state goes where the VIP policy sends that flow (or is dropped with noFlowAnswer: drop)', () => {
  for (const policy of ['maglev', 'hash-5tuple', 'hash-ip-pair']) {
    for (const v6 of [false, true]) {
      for (let cport = 1000; cport < 1040; cport++) {
        const e = engine({}, policy);
        const quoted = tcp({ src: v6 ? VIP6 : VIP4, dst: v6 ? CLIENT6 : CLIENT4, sport: VPORT, dport: cport, flags: ACK, payload: 1000 });
        const [v] = send(e, buildIcmpError({ src: v6 ? ROUTER6 : ROUTER4, dst: v6 ? VIP6 : VIP4, type: v6 ? 2 : 3, code: v6 ? 0 : 4, rest: 1400, quoted }));
        assert.equal(v, Verdict.ToBackend);
        const hashed = e.lastBackend;
        assert.equal(counters(e).counters.icmp_errors_to_backend_hashed, 1);
        // The flow's own SYN, on the same engine (no state was made by the error): the same backend.
        openFlow(e, v6, cport);
        assert.equal(e.lastBackend, hashed, `${policy} ${v6 ? 6 : 4} port ${cport}`);
      }
    }
  }
  const e = engine({ noFlowAnswer: 'drop' });
  const quoted = tcp({ src: VIP4, dst: CLIENT4, sport: VPORT, dport: 999, flags: ACK });
  assert.equal(send(e, buildIcmpError({ src: ROUTER4, dst: VIP4, type: 3, code: 4, rest: 1400, quoted }))[0], Verdict.Drop);
  assert.equal(e.lastDrop, DropReason.IcmpNoFlow);
  assert.equal(counters(e).drops.icmp_no_flow, 1);
});

test('an error from a backend with no flow is translated statelessly to its VIP, like its TCP replies', () => {
  const e = engine();
  const orig = tcp({ src: CLIENT4, dst: VIP4, sport: 555, dport: VPORT, flags: ACK });
  const quoted = tcp({ src: CLIENT4, dst: BE4[1], sport: 555, dport: BPORT, flags: ACK });
  const err = buildIcmpError({ src: BE4[1], dst: CLIENT4, type: 3, code: 1, quoted });
  const input = err.slice();
  const [v, out] = send(e, err);
  assert.equal(v, Verdict.ToClient);
  assert.deepEqual(out, expected(input, VIP4, CLIENT4, input.subarray(20), orig));
  assert.equal(counters(e).counters.icmp_errors_to_client_stateless, 1);
});

test('malformed, foreign and unhandled ICMP is dropped under its named reason', () => {
  const e = engine();
  const be = openFlow(e, false);
  const { natted } = backendSegment(e, false, be);
  const good = () => buildIcmpError({ src: ROUTER4, dst: VIP4, type: 3, code: 4, rest: 1400, quoted: natted });
  const cases: Array<[string, Uint8Array, DropReason]> = [];
  const bad = good(); bad[30] ^= 0xff; cases.push(['bad checksum', bad, DropReason.IcmpBadChecksum]);
  cases.push(['quote cut at IP + 7', buildIcmpError({ src: ROUTER4, dst: VIP4, type: 3, code: 4, quoted: natted, quoteBytes: 27 }), DropReason.IcmpEmbeddedMalformed]);
  cases.push(['quote cut inside the IP header', buildIcmpError({ src: ROUTER4, dst: VIP4, type: 3, code: 4, quoted: natted, quoteBytes: 12 }), DropReason.IcmpEmbeddedMalformed]);
  const udp = natted.slice(0, 48); udp[9] = 17;
  cases.push(['quoted UDP', buildIcmpError({ src: ROUTER4, dst: VIP4, type: 3, code: 3, quoted: udp }), DropReason.IcmpEmbeddedNotTcp]);
  const frag = natted.slice(0, 48); frag[7] = 1;
  cases.push(['quoted later fragment', buildIcmpError({ src: ROUTER4, dst: VIP4, type: 3, code: 4, quoted: frag }), DropReason.IcmpEmbeddedMalformed]);
  const v6in4 = tcp({ src: VIP6, dst: CLIENT6, sport: VPORT, dport: CPORT, flags: ACK });
  cases.push(['IPv6 quoted in ICMPv4', buildIcmpError({ src: ROUTER4, dst: VIP4, type: 3, code: 4, quoted: v6in4 }), DropReason.IcmpEmbeddedMalformed]);
  cases.push(['sent to another address than the quote\'s source', buildIcmpError({ src: ROUTER4, dst: BE4[0], type: 3, code: 4, quoted: natted }), DropReason.IcmpNoService]);
  const stranger = tcp({ src: '198.51.100.9', dst: CLIENT4, sport: 80, dport: CPORT, flags: ACK });
  cases.push(['quote about no VIP and no backend', buildIcmpError({ src: ROUTER4, dst: '198.51.100.9', type: 3, code: 4, quoted: stranger }), DropReason.IcmpNoService]);
  cases.push(['echo reply', buildIcmpPacket({ src: CLIENT4, dst: VIP4, type: 0, body: new Uint8Array(8) }), DropReason.IcmpUnhandledType]);
  cases.push(['ICMPv6 neighbour solicitation', buildIcmpPacket({ src: CLIENT6, dst: VIP6, type: 135, body: new Uint8Array(16) }), DropReason.IcmpUnhandledType]);
  cases.push(['echo request to a non-VIP', buildEchoRequest(CLIENT4, '203.0.113.99', 1, 1), DropReason.IcmpUnhandledType]);
  cases.push(['4-byte ICMP', buildIcmpPacket({ src: CLIENT4, dst: VIP4, type: 8, body: new Uint8Array(0) }).slice(0, 24), DropReason.IcmpTruncated]);
  for (const [what, pkt, reason] of cases) {
    if (what === '4-byte ICMP') { pkt[2] = 0; pkt[3] = 24; pkt[10] = 0; pkt[11] = 0; put16(pkt, 10, complement(sum16(pkt, 0, 20))); }
    assert.equal(send(e, pkt)[0], Verdict.Drop, what);
    assert.equal(DROP_REASON_LABELS[e.lastDrop], DROP_REASON_LABELS[reason], what);
  }
});

for (const v6 of [false, true]) {
  test(`${v6 ? 'IPv6' : 'IPv4'}: an echo request to a VIP address is answered by mplb, byte-exact`, () => {
    const e = engine();
    const req = buildEchoRequest(v6 ? CLIENT6 : CLIENT4, v6 ? VIP6 : VIP4, 0x1234, 7, 56);
    const input = req.slice();
    const [v, out] = send(e, req);
    assert.equal(v, Verdict.Reply);
    const head = input.slice(v6 ? 40 : 20, v6 ? 48 : 28);
    head[0] = v6 ? 129 : 0;
    assert.deepEqual(out, expected(input, v6 ? VIP6 : VIP4, v6 ? CLIENT6 : CLIENT4, head, input.subarray(v6 ? 48 : 28), 64));
    assert.ok(icmpOk(out));
    assert.equal(counters(e).counters.icmp_echo_answered, 1);
    assert.equal(counters(e).counters.replied, 1);
  });
}

test('echo replies are rate-limited by a token bucket on the engine clock; echoReply: false drops them', () => {
  const e = engine({ echoRatePerSec: 5 });
  const ping = (now: number) => send(e, buildEchoRequest(CLIENT4, VIP4, 1, 1), now)[0];
  const burst = Array.from({ length: 10 }, () => ping(T0));
  assert.equal(burst.filter((v) => v === Verdict.Reply).length, 5);
  assert.equal(counters(e).drops.icmp_echo_rate_limited, 5);
  assert.equal(ping(T0 + 100), Verdict.Drop, '100 ms earns half a token');
  assert.equal(ping(T0 + 200), Verdict.Reply, '200 ms earns one');
  assert.equal(ping(T0 + 150), Verdict.Drop, 'a clock step back earns nothing');
  // A long pause saves at most one second's worth.
  const later = Array.from({ length: 8 }, () => ping(T0 + 60_000));
  assert.equal(later.filter((v) => v === Verdict.Reply).length, 5);
  e.reconfigure({ ...e.config, icmp: { ...e.config.icmp, echoReply: false } });
  assert.equal(ping(T0 + 120_000), Verdict.Drop);
  assert.equal(e.lastDrop, DropReason.IcmpEchoDisabled);
});

test('parse: ICMP and ICMPv6 (after an extension header) get their own status; UDP stays not_tcp', () => {
  const v = new PacketView();
  assert.equal(parsePacket(buildEchoRequest(CLIENT4, VIP4, 1, 1), 0, 84, v), ParseStatus.Icmp);
  const e6 = buildEchoRequest(CLIENT6, VIP6, 1, 1);
  assert.equal(parsePacket(e6, 0, e6.length, v), ParseStatus.Icmp);
  // The same message behind an 8-byte hop-by-hop header (next header 58, PadN).
  const hbh = new Uint8Array(e6.length + 8);
  hbh.set(e6.subarray(0, 40)); hbh.set([58, 0, 1, 4, 0, 0, 0, 0], 40); hbh.set(e6.subarray(40), 48);
  hbh[6] = 0; put16(hbh, 4, e6.length - 40 + 8);
  assert.equal(parsePacket(hbh, 0, hbh.length, v), ParseStatus.Icmp);
  assert.equal(v.l4Off, 48);
  const udp = tcp({ src: CLIENT4, dst: VIP4, sport: 1, dport: 2, flags: 0 }); udp[9] = 17;
  assert.equal(parsePacket(udp, 0, udp.length, v), ParseStatus.NotTcp);
  // The codec reads the PTB's MTU (32 bits) and the quote's ports.
  const quoted = tcp({ src: VIP6, dst: CLIENT6, sport: VPORT, dport: CPORT, flags: ACK, payload: 1400 });
  const ptb = buildIcmpError({ src: ROUTER6, dst: VIP6, type: 2, rest: 1280, quoted });
  assert.equal(parsePacket(ptb, 0, ptb.length, v), ParseStatus.Icmp);
  const iv = new IcmpView();
  assert.equal(parseIcmp(ptb, v, iv), IcmpStatus.Ok);
  assert.deepEqual([iv.pmtu, iv.mtu, iv.inSrcPort, iv.inDstPort, iv.inL4Avail], [true, 1280, VPORT, CPORT, 1232 - 40]);
});

test('icmp config: defaults, and bad values refused with the field path', () => {
  assert.deepEqual(validateEngineConfig({ vips: [] }).icmp, { echoReply: true, echoRatePerSec: 1000, noFlowAnswer: 'hash' });
  const refused = (icmp: unknown, path: string) => assert.throws(() => validateEngineConfig({ vips: [], icmp }), (err: unknown) => err instanceof ConfigError && err.path === path, path);
  refused({ echoRatePerSec: 0 }, 'icmp.echoRatePerSec');
  refused({ echoRatePerSec: 1.5 }, 'icmp.echoRatePerSec');
  refused({ echoReply: 'yes' }, 'icmp.echoReply');
  refused({ noFlowAnswer: 'reset' }, 'icmp.noFlowAnswer');
  refused({ rate: 1 }, 'icmp.rate');
  refused([], 'icmp');
  // The `mplb run` file takes the same section at its top level.
  assert.deepEqual(validateRunConfig({ vips: [], icmp: { echoReply: false } }).engine.icmp, { echoReply: false, echoRatePerSec: 1000, noFlowAnswer: 'hash' });
  assert.throws(() => validateRunConfig({ vips: [], icmp: { echoRatePerSec: 0 } }), (err: unknown) => err instanceof ConfigError && err.path === 'icmp.echoRatePerSec');
});
