// Property tests: ICMP/ICMPv6 errors and echoes, truncated (raw, or with lengths and checksum fixed so the quote is
// reached) and mutated, never throw, never read or write outside the packet, and are either forwarded with valid
// checksums or dropped under a named reason. Checksums are verified with the from-scratch sum below.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { DROP_REASON_LABELS } from '../src/engine/counters.js';
import { buildEchoRequest, buildIcmpError } from '../src/wire/icmp-build.js';
import { ACK, SYN, tcp } from './helpers/packets.js';

const VIP4 = '203.0.113.10', VIP6 = '2001:db8:100::10', C4 = '192.0.2.7', C6 = '2001:db8:c::7';
const BE4 = ['10.1.0.1', '10.1.0.2'], BE6 = ['2001:db8:1::1', '2001:db8:1::2'];
const T0 = 9_000_000;

function sum16(b: ArrayLike<number>, from: number, to: number, acc = 0): number {
  for (let i = from; i < to; i += 2) acc += b[i] * 256 + (i + 1 < to ? b[i + 1] : 0);
  while (acc > 0xffff) acc = (acc % 0x10000) + Math.floor(acc / 0x10000);
  return acc;
}
function pseudo6(p: Uint8Array, o: number, len: number): number {
  const ph = [...p.subarray(o + 8, o + 40), 0, 0, len >> 8, len & 0xff, 0, 0, 0, 58];
  return sum16(ph, 0, ph.length);
}

/** The same world every time: flows on both families, the packets the properties start from. */
function world(): { e: Engine; bases: Uint8Array[] } {
  const e = new Engine(validateEngineConfig({
    vips: [
      { address: `${VIP4}:443`, backends: BE4.map((address) => ({ address, port: 8443 })) },
      { address: `[${VIP6}]:443`, backends: BE6.map((address) => ({ address, port: 8443 })) },
    ],
    tables: { maxFlows: 256, maxConnections: 256, maglevSize: 251 }, icmp: { echoRatePerSec: 1_000_000 },
  }));
  const bases: Uint8Array[] = [];
  for (const v6 of [false, true]) {
    const vip = v6 ? VIP6 : VIP4, c = v6 ? C6 : C4;
    const syn = tcp({ src: c, dst: vip, sport: 40000, dport: 443, flags: SYN });
    e.process(syn, 0, syn.length, T0);
    const be = v6 ? BE6[e.lastBackend - 2] : BE4[e.lastBackend];
    const seg = tcp({ src: be, dst: c, sport: 8443, dport: 40000, flags: ACK, payload: 1400 });
    e.process(seg, 0, seg.length, T0);
    bases.push(buildIcmpError({ src: v6 ? '2001:db8:ff::1' : '198.51.100.1', dst: vip, type: v6 ? 2 : 3, code: v6 ? 0 : 4, rest: 1400, quoted: seg }));
    const up = tcp({ src: c, dst: vip, sport: 40000, dport: 443, flags: ACK, payload: 50 });
    e.process(up, 0, up.length, T0);
    bases.push(buildIcmpError({ src: be, dst: c, type: v6 ? 1 : 3, code: 1, quoted: up }));
    bases.push(buildEchoRequest(c, vip, 7, 9, 32));
    // About a flow with no state (another client port).
    bases.push(buildIcmpError({ src: v6 ? '2001:db8:ff::1' : '198.51.100.1', dst: vip, type: v6 ? 3 : 11, quoted: tcp({ src: vip, dst: c, sport: 443, dport: 41000, flags: ACK }) }));
  }
  return { e, bases };
}

/** Cuts the packet to n bytes; `consistent`: the IP length field says n too (so the parser reaches the ICMP message). */
function cut(base: Uint8Array, n: number, consistent: boolean): Uint8Array {
  const p = base.slice(0, n);
  if (consistent && n >= 40 && p[0] >> 4 === 6) { p[4] = (n - 40) >> 8; p[5] = (n - 40) & 0xff; }
  if (consistent && n >= 20 && p[0] >> 4 === 4) {
    p[2] = n >> 8; p[3] = n & 0xff;
    p[10] = 0; p[11] = 0;
    const s = 0xffff - sum16(p, 0, 20);
    p[10] = s >> 8; p[11] = s & 0xff;
  }
  return p;
}

/** Rewrites the ICMP checksum (so mutations inside the message get past its check). */
function fixIcmpChecksum(p: Uint8Array): void {
  const v4 = p[0] >> 4 === 4, o = v4 ? (p[0] & 15) * 4 : 40;
  if ((v4 && (p.length < 20 || p[9] !== 1)) || (!v4 && (p.length < 40 || p[6] !== 58)) || p.length < o + 4) return;
  p[o + 2] = 0; p[o + 3] = 0;
  const s = v4 ? sum16(p, o, p.length) : sum16(p, o, p.length, pseudo6(p, 0, p.length - 40));
  p[o + 2] = (0xffff - s) >> 8; p[o + 3] = (0xffff - s) & 0xff;
}

/** ICMP checksum (and IPv4 header checksum, when the input's was right) of the IP packet at buf[off..]. */
function checksumsOk(buf: Uint8Array, off: number, len: number, ipHdrWasOk: boolean): string | undefined {
  const p = buf.subarray(off, off + len);
  if (p[0] >> 4 === 4) {
    const hl = (p[0] & 15) * 4, total = (p[2] << 8) | p[3];
    if (p[9] !== 1) return undefined; // mutated into another protocol: not an ICMP question
    if (ipHdrWasOk && sum16(p, 0, hl) !== 0xffff) return 'IPv4 header checksum';
    if (sum16(p, hl, total) !== 0xffff) return 'ICMP checksum';
    return undefined;
  }
  if (p[6] !== 58) return undefined;
  const total = 40 + ((p[4] << 8) | p[5]);
  if (sum16(p, 40, total, pseudo6(p, 0, total - 40)) !== 0xffff) return 'ICMPv6 checksum';
  return undefined;
}

const ipHdrOk = (p: Uint8Array) => p.length >= 20 && p[0] >> 4 === 4 && (p[0] & 15) >= 5 && p.length >= (p[0] & 15) * 4 && sum16(p, 0, (p[0] & 15) * 4) === 0xffff;

test('property: cut and mutated ICMP never throws, reads nothing past the packet, and is forwarded valid or dropped by name', () => {
  const seeds = world().bases.length;
  const seen = new Map<string, number>();
  fc.assert(fc.property(
    fc.nat(seeds - 1), fc.nat(2000), fc.boolean(), fc.array(fc.tuple(fc.nat(2000), fc.nat(255)), { maxLength: 6 }), fc.boolean(),
    fc.nat(7), fc.uint8Array({ minLength: 64, maxLength: 64 }), fc.uint8Array({ minLength: 64, maxLength: 64 }),
    (which, cutAt, consistent, muts, fixSum, off, junkA, junkB) => {
      // Two engines in the same state: one sees the packet followed by junk A, the other by junk B.
      const a = world(), b = world();
      const base = a.bases[which];
      const pkt = cut(base, Math.min(cutAt, base.length), consistent);
      for (const [at, val] of muts) if (pkt.length > 0) pkt[at % pkt.length] = val;
      if (fixSum) fixIcmpChecksum(pkt);
      const hdrOk = ipHdrOk(pkt);
      const bufA = new Uint8Array(off + pkt.length + 64), bufB = new Uint8Array(off + pkt.length + 64);
      bufA.fill(0xa5, 0, off); bufB.fill(0xa5, 0, off);
      bufA.set(pkt, off); bufB.set(pkt, off);
      bufA.set(junkA, off + pkt.length); bufB.set(junkB, off + pkt.length);
      const before = a.e.counters.snapshot().counters;
      const vA = a.e.process(bufA, off, pkt.length, T0 + 1), vB = b.e.process(bufB, off, pkt.length, T0 + 1);
      // Nothing past the packet decided anything, and nothing outside it was written.
      assert.equal(vA, vB);
      assert.equal(a.e.lastDrop, b.e.lastDrop);
      assert.equal(a.e.outLen, b.e.outLen);
      assert.deepEqual(bufA.subarray(off, off + pkt.length), bufB.subarray(off, off + pkt.length));
      assert.ok(bufA.subarray(0, off).every((x) => x === 0xa5));
      assert.deepEqual(bufA.subarray(off + pkt.length), junkA);
      const label = vA === Verdict.Drop ? DROP_REASON_LABELS[a.e.lastDrop] : ['drop', 'to_backend', 'to_client', 'reply'][vA];
      seen.set(label, (seen.get(label) ?? 0) + 1);
      if (vA === Verdict.Drop) {
        assert.ok(a.e.lastDrop > 0 && DROP_REASON_LABELS[a.e.lastDrop] !== undefined, `drop without a named reason (${a.e.lastDrop})`);
      } else if (vA === Verdict.Reply || vA === Verdict.ToBackend || vA === Verdict.ToClient) {
        const bad = checksumsOk(bufA, off, vA === Verdict.Reply ? a.e.outLen : pkt.length, hdrOk || vA === Verdict.Reply);
        assert.equal(bad, undefined, `${bad} wrong after verdict ${vA}`);
      }
      const s = a.e.counters.snapshot().counters;
      assert.equal(s.packets_in, before.packets_in + 1);
      const outcomes = (c: Record<string, number>) => c.to_backend + c.to_client + c.replied + c.dropped;
      assert.equal(outcomes(s), outcomes(before) + 1, 'the packet has exactly one outcome');
    }), { numRuns: 400 });
  // The runs reached every outcome, not only the first checks.
  for (const k of ['to_backend', 'to_client', 'reply', 'icmp_bad_checksum', 'icmp_embedded_malformed']) assert.ok((seen.get(k) ?? 0) > 0, `no run ended in ${k}: ${JSON.stringify([...seen])}`);
});

test('property: a consistent cut of the quote anywhere is forwarded with valid checksums, or dropped as icmp_embedded_malformed', () => {
  const { bases } = world();
  fc.assert(fc.property(fc.constantFrom(0, 1, 4, 5), fc.nat(1300), (which, quote) => {
    const { e } = world();
    const base = bases[which], hl = base[0] >> 4 === 4 ? 20 : 40;
    const n = Math.min(base.length, hl + 8 + quote);
    const pkt = cut(base, n, true);
    fixIcmpChecksum(pkt);
    const v = e.process(pkt, 0, pkt.length, T0 + 1);
    const quotedIp = hl === 20 ? 20 : 40;
    if (quote < quotedIp + 8) {
      assert.equal(v, Verdict.Drop);
      assert.equal(DROP_REASON_LABELS[e.lastDrop], 'icmp_embedded_malformed');
    } else {
      assert.ok(v === Verdict.ToBackend || v === Verdict.ToClient, `verdict ${v} drop ${DROP_REASON_LABELS[e.lastDrop]} (base ${which}, quote ${quote})`);
      assert.equal(checksumsOk(pkt, 0, pkt.length, true), undefined);
      if (hl === 20) assert.equal(sum16(pkt, 28, 48), 0xffff, 'quoted IPv4 header checksum');
    }
  }), { numRuns: 300 });
});
