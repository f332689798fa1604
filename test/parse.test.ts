import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PacketView, parsePacket, ParseStatus, nextTcpOption, MAX_IPV6_EXT_HEADERS } from '../src/wire/parse.js';
import { applyDelta, checksum, replaceDelta, applyDeltaPartial, sumWords, fold } from '../src/wire/checksum.js';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { ACK, SYN, capSyn, capSynAck, checksumsOk, joinSyn, tcp } from './helpers/packets.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

test('IPv4 with header options: TCP found after IHL, ports and flags read', () => {
  // IHL 6 (one 4-byte option: NOP NOP NOP EOL), total 44, TCP SYN 1234 -> 80, data offset 5.
  const p = hex('46000030 00004000 4006 0000 c6120102 c6126401 01010100  04d20050 00000001 00000000 5002ffff 00000000  00000000');
  const v = new PacketView();
  assert.equal(parsePacket(p, 0, p.length, v), ParseStatus.Ok);
  assert.equal(v.l4Off, 24);
  assert.equal(v.srcPort, 1234);
  assert.equal(v.dstPort, 80);
  assert.equal(v.tcpFlags, SYN);
  assert.equal(v.payloadLen, 4);
  assert.equal(v.ipLen, 48);
});

test('IPv4 length checks: IHL < 5, total length beyond the buffer, fragments, non-TCP', () => {
  const base = tcp({ src: '198.18.0.1', dst: '198.18.0.2', sport: 1, dport: 2, flags: SYN });
  const v = new PacketView();
  const m = (f: (p: Uint8Array) => void) => { const p = base.slice(); f(p); return parsePacket(p, 0, p.length, v); };
  assert.equal(m((p) => { p[0] = 0x44; }), ParseStatus.BadIpHeader);
  assert.equal(m((p) => { p[3] = 200; }), ParseStatus.BadIpLength);
  assert.equal(m((p) => { p[3] = 10; }), ParseStatus.BadIpLength);
  assert.equal(m((p) => { p[6] = 0x20; }), ParseStatus.Fragment, 'MF set');
  assert.equal(m((p) => { p[7] = 0x10; }), ParseStatus.Fragment, 'offset set');
  assert.equal(m((p) => { p[9] = 17; }), ParseStatus.NotTcp);
  assert.equal(m((p) => { p[32] = 0x40; }), ParseStatus.BadTcpHeader, 'data offset 4');
  assert.equal(m((p) => { p[32] = 0xf0; }), ParseStatus.BadTcpHeader, 'data offset past the end');
  assert.equal(m((p) => { p[0] = 0x55; }), ParseStatus.BadVersion);
  assert.equal(parsePacket(base, 0, 19, v), ParseStatus.Truncated);
  assert.equal(parsePacket(base, 0, 0, v), ParseStatus.Truncated);
  // Trailing link padding after the IP packet is ignored.
  const padded = new Uint8Array(base.length + 6); padded.set(base);
  assert.equal(parsePacket(padded, 0, padded.length, v), ParseStatus.Ok);
  assert.equal(v.ipLen, base.length);
});

/** IPv6 TCP packet with the given extension headers (each [nextHeaderValue, bytes]). */
function v6WithExt(exts: Array<[number, Uint8Array]>): Uint8Array {
  const t = tcp({ src: '2001:db8::1', dst: '2001:db8::2', sport: 7, dport: 8, flags: SYN });
  const body = t.subarray(40);
  const extLen = exts.reduce((n, [, b]) => n + b.length, 0);
  const p = new Uint8Array(40 + extLen + body.length);
  p.set(t.subarray(0, 40));
  const payload = extLen + body.length;
  p[4] = payload >> 8; p[5] = payload & 0xff;
  p[6] = exts.length ? exts[0][0] : 6;
  let o = 40;
  exts.forEach(([, b], i) => { p.set(b, o); p[o] = i + 1 < exts.length ? exts[i + 1][0] : 6; o += b.length; });
  p.set(body, o);
  return p;
}

test('IPv6 extension headers: hop-by-hop, destination options, routing, atomic fragment are walked; a bounded walk', () => {
  const v = new PacketView();
  const hbh = new Uint8Array(8), dst = new Uint8Array(16), frag = new Uint8Array(8), rt = new Uint8Array(8);
  dst[1] = 1; // 16 bytes
  const p = v6WithExt([[0, hbh], [60, dst], [43, rt], [44, frag]]);
  assert.equal(parsePacket(p, 0, p.length, v), ParseStatus.Ok);
  assert.equal(v.l4Off, 40 + 8 + 16 + 8 + 8);
  assert.equal(v.srcPort, 7);
  const fragMore = frag.slice(); fragMore[3] = 1;
  const pf = v6WithExt([[44, fragMore]]);
  assert.equal(parsePacket(pf, 0, pf.length, v), ParseStatus.Fragment);
  const many = v6WithExt(Array.from({ length: MAX_IPV6_EXT_HEADERS + 1 }, () => [60, new Uint8Array(8)] as [number, Uint8Array]));
  assert.equal(parsePacket(many, 0, many.length, v), ParseStatus.ExtHeaderLimit);
  const longExt = dst.slice(); longExt[1] = 200; // claims 1608 bytes
  const pl = v6WithExt([[60, longExt]]);
  assert.equal(parsePacket(pl, 0, pl.length, v), ParseStatus.BadIpHeader);
  const zero = v6WithExt([]); zero[4] = 0; zero[5] = 0;
  assert.equal(parsePacket(zero, 0, zero.length, v), ParseStatus.BadIpLength, 'jumbograms are refused');
});

test('TCP option walk: NOPs skipped, EOL ends, zero/short/overlong lengths are malformed', () => {
  const b = hex('01 01 08 0a 00000001 00000002 1e 04 8100 00');
  assert.equal(nextTcpOption(b, 0, b.length), 2);
  assert.equal(nextTcpOption(b, 12, b.length), 12);
  assert.equal(nextTcpOption(b, 16, b.length), -1);
  assert.equal(nextTcpOption(hex('1e 00'), 0, 2), -2);
  assert.equal(nextTcpOption(hex('1e 01'), 0, 2), -2);
  assert.equal(nextTcpOption(hex('1e 05 00 00'), 0, 4), -2);
  assert.equal(nextTcpOption(hex('1e'), 0, 1), -2);
  assert.equal(nextTcpOption(hex(''), 0, 0), -1);
});

test('property: parsing arbitrary bytes never throws and never depends on bytes outside the window', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 120 }), fc.integer({ min: 0, max: 8 }), (bytes, pad) => {
    const a = new Uint8Array(pad + bytes.length + 16).fill(0x00);
    const b = new Uint8Array(pad + bytes.length + 16).fill(0xff);
    a.set(bytes, pad); b.set(bytes, pad);
    const va = new PacketView(), vb = new PacketView();
    const sa = parsePacket(a, pad, bytes.length, va), sb = parsePacket(b, pad, bytes.length, vb);
    assert.equal(sa, sb);
    if (sa === ParseStatus.Ok) assert.deepEqual({ ...va }, { ...vb });
  }), { numRuns: 3000 });
});

test('property: mutated valid packets parse to a status without throwing, with offsets inside the packet', () => {
  const seeds = [
    tcp({ src: '198.18.0.1', dst: '198.18.0.2', sport: 1, dport: 2, flags: SYN, options: [capSyn(1)], payload: 10 }),
    tcp({ src: '2001:db8::1', dst: '2001:db8::2', sport: 1, dport: 2, flags: SYN, options: [joinSyn(5)] }),
  ];
  fc.assert(fc.property(fc.integer({ min: 0, max: 1 }), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 6 }), fc.nat(), (which, muts, cut) => {
    const p = seeds[which].slice();
    for (const [i, x] of muts) p[i % p.length] = x;
    const len = cut % (p.length + 1);
    const v = new PacketView();
    if (parsePacket(p, 0, len, v) === ParseStatus.Ok) {
      assert.ok(v.l4Off + v.tcpHdrLen <= len && v.optEnd <= v.l4Off + v.l4Len && v.ipLen <= len);
      for (let o = nextTcpOption(p, v.optOff, v.optEnd); o >= 0; o = nextTcpOption(p, o + p[o + 1], v.optEnd)) {
        assert.ok(o + p[o + 1] <= v.optEnd);
      }
    }
  }), { numRuns: 3000 });
});

test('property: an incremental checksum update equals a full recomputation (RFC 1624)', () => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 20, maxLength: 60 }), fc.nat(), fc.uint8Array({ minLength: 4, maxLength: 4 }), (data, at, repl) => {
    const d = data.slice(0, data.length & ~1);
    d[0] = 0; d[1] = 0;
    const c = checksum(d, 0, d.length);
    d[0] = c >> 8; d[1] = c & 0xff;
    const pos = 2 + ((at % ((d.length - 6) >> 1)) << 1);
    const old = d.slice(pos, pos + 4);
    d.set(repl, pos);
    applyDelta(d, 0, replaceDelta(old, 0, repl, 0, 4));
    assert.equal(fold(sumWords(d, 0, d.length, 0)), 0xffff, 'the region sums to -0 with its checksum');
  }), { numRuns: 2000 });
  // The partial (NEEDS_CSUM) variant adds without complementing.
  const f = new Uint8Array([0x12, 0x34]);
  applyDeltaPartial(f, 0, 0x0001);
  assert.deepEqual([...f], [0x12, 0x35]);
});

test('property: NAT both ways keeps IPv4 and IPv6 checksums valid for random addresses, ports and payloads', () => {
  const arbV4 = fc.tuple(fc.nat(255), fc.nat(255)).map(([x, y]) => `198.19.${x}.${y}`);
  const arbV6 = fc.tuple(fc.nat(0xffff), fc.nat(0xffff)).map(([x, y]) => `2001:db8:${x.toString(16)}::${y.toString(16)}`);
  for (const [arb, vipAddr, family] of [[arbV4, '198.18.100.1', 4], [arbV6, '2001:db8::100', 6]] as const) {
    fc.assert(fc.property(arb, arb, fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 1, max: 65535 }), fc.integer({ min: 1, max: 65535 }), fc.nat(300),
      (client, backend, vport, bport, cport, payload) => {
        const vip = family === 4 ? `${vipAddr}:${vport}` : `[${vipAddr}]:${vport}`;
        const e = new Engine(validateEngineConfig({ vips: [{ address: vip, backends: [{ address: backend, port: bport }] }], tables: { maxFlows: 16, maxConnections: 16 } }));
        const syn = tcp({ src: client, dst: vipAddr, sport: cport, dport: vport, flags: SYN, options: [capSyn(1)], payload });
        assert.equal(e.process(syn, 0, syn.length, 1), Verdict.ToBackend);
        assert.ok(checksumsOk(syn));
        const back = tcp({ src: backend, dst: client, sport: bport, dport: cport, flags: SYN | ACK, options: [capSynAck(1, 99n)], payload });
        assert.equal(e.process(back, 0, back.length, 2), Verdict.ToClient);
        assert.ok(checksumsOk(back));
      }), { numRuns: 300 });
  }
});

test('byte-exact NAT fixture: a SYN to the VIP becomes byte for byte the SYN the backend would get directly', () => {
  const e = new Engine(validateEngineConfig({ vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2', port: 8080 }] }], tables: { maxFlows: 16, maxConnections: 16 } }));
  const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 1234, dport: 80, flags: SYN, seq: 1, options: [capSyn(1)] });
  e.process(syn, 0, syn.length, 0);
  const direct = tcp({ src: '198.18.1.2', dst: '198.18.10.2', sport: 1234, dport: 8080, flags: SYN, seq: 1, options: [capSyn(1)] });
  assert.equal(Buffer.from(syn).toString('hex'), Buffer.from(direct).toString('hex'));
  const synack = tcp({ src: '198.18.10.2', dst: '198.18.1.2', sport: 8080, dport: 1234, flags: SYN | ACK, options: [capSynAck(1, 0x0102030405060708n)] });
  e.process(synack, 0, synack.length, 1);
  const seen = tcp({ src: '198.18.100.1', dst: '198.18.1.2', sport: 80, dport: 1234, flags: SYN | ACK, options: [capSynAck(1, 0x0102030405060708n)] });
  assert.equal(Buffer.from(synack).toString('hex'), Buffer.from(seen).toString('hex'));
});

test('property: the engine never throws on random or mutated packets, and every packet gets exactly one verdict', () => {
  const e = new Engine(validateEngineConfig({
    vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2' }] }],
    unknownTokenAnswer: 'reset', tables: { maxFlows: 64, maxConnections: 32 },
  }));
  const seeds = [
    tcp({ src: '198.18.1.1', dst: '198.18.100.1', sport: 5, dport: 80, flags: SYN, options: [capSyn(1)] }),
    tcp({ src: '198.18.1.1', dst: '198.18.100.1', sport: 6, dport: 80, flags: SYN, options: [joinSyn(77)] }),
    tcp({ src: '198.18.10.2', dst: '198.18.1.1', sport: 80, dport: 5, flags: SYN | ACK, options: [capSynAck(1, 5n)] }),
  ];
  let n = 0;
  fc.assert(fc.property(fc.nat(2), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 8 }), fc.uint8Array({ maxLength: 80 }), fc.boolean(), (which, muts, rnd, useRnd) => {
    const p = useRnd ? rnd.slice() : seeds[which].slice();
    for (const [i, x] of muts) if (p.length) p[i % p.length] = x;
    const v = e.process(p, 0, p.length, n++);
    assert.ok(v >= Verdict.Drop && v <= Verdict.Reply);
    assert.ok(e.outLen <= p.length);
    if (n % 50 === 0) e.tick(n);
  }), { numRuns: 5000 });
  const c = e.counters.snapshot().counters;
  assert.equal(c.packets_in, c.to_backend + c.to_client + c.replied + c.dropped);
  assert.ok(e.flows.used <= 64 && e.conns.used <= 32);
});

test('partial checksums (virtio NEEDS_CSUM): NAT patches only the pseudo-header sum, and the device completion is valid', () => {
  const e = new Engine(validateEngineConfig({ vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2', port: 8080 }] }], tables: { maxFlows: 16, maxConnections: 16 } }));
  // Turn a packet's full checksum into what a GSO sender leaves: the folded pseudo-header sum, uncomplemented.
  const toPartial = (p: Uint8Array) => {
    const t = 20, len = p.length - t;
    const ps = fold(sumWords(p, 12, 8, 0) + 6 + len);
    p[t + 16] = ps >> 8; p[t + 17] = ps & 0xff;
  };
  // What the device does: checksum the segment starting from the field's value.
  const complete = (p: Uint8Array) => {
    const t = 20;
    const c = ~fold(sumWords(p, t, p.length - t, 0)) & 0xffff;
    p[t + 16] = c >> 8; p[t + 17] = c & 0xff;
  };
  const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 1234, dport: 80, flags: SYN, options: [capSyn(1)], payload: 333 });
  toPartial(syn);
  assert.equal(e.process(syn, 0, syn.length, 0, true), Verdict.ToBackend);
  assert.equal(checksum(syn, 0, 20), 0, 'the IPv4 header checksum is always full');
  complete(syn);
  assert.ok(checksumsOk(syn));
  const back = tcp({ src: '198.18.10.2', dst: '198.18.1.2', sport: 8080, dport: 1234, flags: SYN | ACK, options: [capSynAck(1, 5n)], payload: 1000 });
  toPartial(back);
  assert.equal(e.process(back, 0, back.length, 1, true), Verdict.ToClient);
  complete(back);
  assert.ok(checksumsOk(back));
});
