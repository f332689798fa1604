// virtio_net_hdr helper (src/dataplane/vnet-hdr.ts): byte-exact fixtures, validation, and one packet through the
// offload path's per-packet step with the real engine processor (GSO super-packet with a partial checksum, a reply).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  encodeVnetHdr, parseVnetHdr, vnetStep, writeZeroVnetHdr, VnetHdr, VnetOutcome, VnetStatus, VnetStep,
  VNET_GSO_ECN, VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_GSO_UDP_L4, VNET_HDR_F_DATA_VALID, VNET_HDR_F_NEEDS_CSUM,
} from '../src/wire/vnet-hdr.js';
import { createProcessor } from '../src/dataplane/engine-processor.js';
import { fold, sumWords, checksum } from '../src/wire/checksum.js';
import { ACK, SYN, capSyn, checksumsOk, joinSyn, tcp } from './helpers/packets.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s+/g, ''), 'hex'));

/** hdr bytes followed by the packet, in one buffer with room to spare (as the worker's read buffer). */
function frame(hdr: Uint8Array, pkt: Uint8Array, room = 256): Uint8Array {
  const b = new Uint8Array(hdr.length + pkt.length + room);
  b.set(hdr, 0);
  b.set(pkt, hdr.length);
  return b;
}

test('a TCPv4 GSO header as the kernel writes it: little-endian fields, byte-exact', () => {
  // NEEDS_CSUM, GSO TCPV4, hdr_len 66, gso_size 1448, csum_start 20, csum_offset 16, num_buffers 0.
  const h = hex('01 01 4200 a805 1400 1000 0000');
  const pkt = tcp({ src: '198.18.1.2', dst: '198.19.0.10', sport: 40000, dport: 5201, flags: ACK, payload: 4 * 1448 });
  const b = frame(h, pkt);
  const v = new VnetHdr();
  assert.equal(parseVnetHdr(b, 0, 12, pkt.length, v), VnetStatus.Ok);
  assert.deepEqual({ ...v }, { flags: 1, gsoType: 1, hdrLen: 66, gsoSize: 1448, csumStart: 20, csumOffset: 16 });
  assert.equal(v.needsCsum, true);
  assert.equal(v.gsoKind, VNET_GSO_TCPV4);
  assert.deepEqual(encodeVnetHdr({ flags: 1, gsoType: 1, hdrLen: 66, gsoSize: 1448, csumStart: 20, csumOffset: 16 }), h);
  assert.deepEqual(encodeVnetHdr({ flags: 1, gsoType: 1, hdrLen: 66, gsoSize: 1448, csumStart: 20, csumOffset: 16 }, 10), h.subarray(0, 10));
});

test('headers that are fine: none at all, DATA_VALID, NEEDS_CSUM without GSO, TCPV6 with ECN, 10-byte form', () => {
  const v = new VnetHdr();
  const ack = tcp({ src: '198.18.1.2', dst: '198.19.0.10', sport: 1, dport: 2, flags: ACK });
  const ack6 = tcp({ src: '2001:db8::1', dst: '2001:db8::2', sport: 1, dport: 2, flags: ACK, payload: 3000 });
  const ok = (h: Uint8Array, p: Uint8Array) => parseVnetHdr(frame(h, p), 0, h.length, p.length, v);
  assert.equal(ok(hex('00 00 0000 0000 0000 0000 0000'), ack), VnetStatus.Ok);
  assert.equal(ok(hex('02 00 0000 0000 0000 0000 0000'), ack), VnetStatus.Ok);
  assert.equal(ok(hex('01 00 0000 0000 1400 1000 0000'), ack), VnetStatus.Ok);
  assert.equal(ok(encodeVnetHdr({ flags: 1, gsoType: VNET_GSO_TCPV6 | VNET_GSO_ECN, hdrLen: 74, gsoSize: 1428, csumStart: 40, csumOffset: 16 }), ack6), VnetStatus.Ok);
  assert.equal(ok(hex('01 01 4200 a805 1400 1000'), tcp({ src: '198.18.1.2', dst: '198.19.0.10', sport: 1, dport: 2, flags: ACK, payload: 3000 })), VnetStatus.Ok);
});

test('malformed headers are a status, never an exception', () => {
  const v = new VnetHdr();
  const p4 = tcp({ src: '198.18.1.2', dst: '198.19.0.10', sport: 1, dport: 2, flags: ACK, payload: 2000 });
  const p6 = tcp({ src: '2001:db8::1', dst: '2001:db8::2', sport: 1, dport: 2, flags: ACK, payload: 2000 });
  const st = (f: Parameters<typeof encodeVnetHdr>[0], p = p4) => parseVnetHdr(frame(encodeVnetHdr(f), p), 0, 12, p.length, v);
  const gso = { flags: VNET_HDR_F_NEEDS_CSUM, gsoType: VNET_GSO_TCPV4, hdrLen: 66, gsoSize: 1448, csumStart: 20, csumOffset: 16 };
  assert.equal(st(gso), VnetStatus.Ok);
  assert.equal(st({ ...gso, flags: 0x08 }), VnetStatus.BadFlags, 'undefined flag bit');
  assert.equal(st({ ...gso, gsoType: 2 }), VnetStatus.BadGsoType, 'gso_type 2 does not exist');
  assert.equal(st({ ...gso, gsoType: 0x20 }), VnetStatus.BadGsoType, 'UDP tunnel GSO is not negotiated');
  assert.equal(st({ ...gso, gsoType: VNET_GSO_ECN }), VnetStatus.BadGsoType, 'ECN without GSO');
  assert.equal(st({ ...gso, gsoType: VNET_GSO_UDP_L4 | VNET_GSO_ECN }), VnetStatus.BadGsoType, 'ECN on UDP');
  assert.equal(st({ ...gso, gsoSize: 0 }), VnetStatus.BadGsoSize);
  assert.equal(st({ ...gso, gsoSize: p4.length + 1 }), VnetStatus.BadGsoSize);
  assert.equal(st({ ...gso, hdrLen: p4.length + 1 }), VnetStatus.BadHdrLen);
  assert.equal(st({ hdrLen: p4.length + 1 }), VnetStatus.BadHdrLen, 'without GSO too');
  assert.equal(st({ ...gso, csumStart: p4.length - 17 }), VnetStatus.BadCsum, 'sum stored past the end');
  assert.equal(st({ ...gso, csumStart: 0xffff, csumOffset: 0xffff }), VnetStatus.BadCsum);
  assert.equal(st({ flags: VNET_HDR_F_DATA_VALID, csumStart: 0xffff, csumOffset: 0xffff }), VnetStatus.Ok, 'csum fields only matter with NEEDS_CSUM');
  assert.equal(st(gso, p6), VnetStatus.GsoFamilyMismatch, 'TCPV4 on an IPv6 packet');
  assert.equal(st({ ...gso, gsoType: VNET_GSO_TCPV6, csumStart: 40 }, p4), VnetStatus.GsoFamilyMismatch, 'TCPV6 on an IPv4 packet');
  // Truncation: buffer shorter than header + packet, no packet, header too small, negative offset.
  const b = frame(encodeVnetHdr(gso), p4, 0);
  assert.equal(parseVnetHdr(b, 0, 12, p4.length + 1, v), VnetStatus.Truncated);
  assert.equal(parseVnetHdr(b, 0, 12, 0, v), VnetStatus.Truncated);
  assert.equal(parseVnetHdr(b, 0, 8, p4.length, v), VnetStatus.Truncated);
  assert.equal(parseVnetHdr(b, -1, 12, p4.length, v), VnetStatus.Truncated);
  assert.equal(parseVnetHdr(new Uint8Array(5), 0, 12, 1, v), VnetStatus.Truncated);
});

test('parseVnetHdr never throws, and Ok implies the documented bounds (random bytes)', () => {
  const v = new VnetHdr();
  fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), fc.integer({ min: -2, max: 220 }), fc.constantFrom(10, 12), (b, pktLen, hb) => {
    const s = parseVnetHdr(b, 0, hb, pktLen, v);
    if (s !== VnetStatus.Ok) return;
    assert.ok(hb + pktLen <= b.length && pktLen >= 1);
    assert.equal(v.flags & ~7, 0);
    if (v.gsoKind !== 0) assert.ok(v.gsoSize >= 1 && v.gsoSize <= pktLen && v.hdrLen <= pktLen);
    if (v.needsCsum) assert.ok(v.csumStart + v.csumOffset + 2 <= pktLen);
  }), { numRuns: 3000 });
});

test('writeZeroVnetHdr zeroes exactly the header', () => {
  const b = new Uint8Array(16).fill(0xaa);
  writeZeroVnetHdr(b, 2, 12);
  assert.deepEqual([...b], [0xaa, 0xaa, ...new Array(12).fill(0), 0xaa, 0xaa]);
});

// ---- the per-packet step of the offload loop, with the engine processor ----

const VIP = '198.19.0.10', BACKEND = '198.18.11.2', CLIENT = '198.18.1.2';
const engineProc = (extra: Record<string, unknown> = {}) => createProcessor({ config: { vips: [{ address: `${VIP}:5201`, backends: [{ address: BACKEND }] }], tables: { maxFlows: 64, maxConnections: 64 }, ...extra } });
const processAtOf = (p: ReturnType<typeof engineProc>) => p.processAt!.bind(p);

/** What a GSO sender leaves in the TCP checksum field: the folded pseudo-header sum, uncomplemented. */
function toPartial(p: Uint8Array, off: number): void {
  const tl = ((p[off + 2] << 8) | p[off + 3]) - 20;
  const ps = fold(sumWords(p, off + 12, 8, 0) + 6 + tl);
  p[off + 36] = ps >> 8; p[off + 37] = ps & 0xff;
}
/** What the device does at segmentation time: sum from csum_start, store the complement. */
function completeAt(p: Uint8Array, off: number, len: number): void {
  const c = ~fold(sumWords(p, off + 20, len - 20, 0)) & 0xffff;
  p[off + 36] = c >> 8; p[off + 37] = c & 0xff;
}

test('offload step: a 64 KiB GSO super-packet with a partial checksum is NATed, its virtio header passed through unchanged', () => {
  const proc = engineProc();
  const at = processAtOf(proc);
  const step = new VnetStep();
  const syn = tcp({ src: CLIENT, dst: VIP, sport: 40000, dport: 5201, flags: SYN, options: [capSyn(1)] });
  const b0 = frame(new Uint8Array(12), syn);
  assert.equal(vnetStep(b0, 12, 12 + syn.length, 1, at, step), VnetOutcome.Forward);
  assert.equal(step.writeLen, 12 + syn.length);
  assert.ok(checksumsOk(b0.subarray(12, 12 + syn.length)), 'a packet without NEEDS_CSUM keeps a full checksum');

  const payload = 65535 - 40;
  const big = tcp({ src: CLIENT, dst: VIP, sport: 40000, dport: 5201, flags: ACK, payload });
  toPartial(big, 0);
  const hdr = encodeVnetHdr({ flags: VNET_HDR_F_NEEDS_CSUM, gsoType: VNET_GSO_TCPV4, hdrLen: 66, gsoSize: 1448, csumStart: 20, csumOffset: 16 });
  const b = frame(hdr, big);
  assert.equal(vnetStep(b, 12, 12 + big.length, 2, at, step), VnetOutcome.Forward);
  assert.equal(step.writeLen, 12 + big.length, 'NAT changes no lengths');
  assert.deepEqual(b.subarray(0, 12), hdr, 'header passed through byte for byte');
  const out = b.slice(12, 12 + big.length);
  assert.deepEqual([...out.subarray(16, 20)], [198, 18, 11, 2], 'destination rewritten to the backend');
  assert.equal(checksum(out, 0, 20), 0, 'IPv4 header checksum full');
  // The field must now be the partial sum for the NEW pseudo-header; the device completes it into a valid checksum.
  const expect = out.slice();
  toPartial(expect, 0);
  assert.deepEqual([...out.subarray(36, 38)], [...expect.subarray(36, 38)]);
  completeAt(out, 0, out.length);
  assert.ok(checksumsOk(out));
});

test('offload step: a reply (RST for an unknown join) goes out with a zeroed header; malformed headers never reach the engine', () => {
  const proc = engineProc({ unknownTokenAnswer: 'reset' });
  const at = processAtOf(proc);
  const step = new VnetStep();
  const join = tcp({ src: CLIENT, dst: VIP, sport: 40001, dport: 5201, flags: SYN, options: [joinSyn(0x01020304)] });
  toPartial(join, 0);
  const b = frame(encodeVnetHdr({ flags: VNET_HDR_F_NEEDS_CSUM, hdrLen: join.length, csumStart: 20, csumOffset: 16 }), join);
  assert.equal(vnetStep(b, 12, 12 + join.length, 1, at, step), VnetOutcome.Reply);
  assert.deepEqual([...b.subarray(0, 12)], new Array(12).fill(0));
  const rst = b.subarray(12, step.writeLen);
  assert.equal(rst[33] & 0x04, 0x04, 'RST');
  assert.ok(checksumsOk(rst), 'the reply carries full checksums');
  assert.deepEqual([...rst.subarray(16, 20)], [198, 18, 1, 2], 'back to the client');

  const before = (proc.control!({ op: 'stats' }) as { packets_in?: number; counters?: { packets_in: number } });
  const bad = frame(encodeVnetHdr({ flags: 0x40 }), join);
  assert.equal(vnetStep(bad, 12, 12 + join.length, 2, at, step), VnetOutcome.Malformed);
  assert.equal(step.status, VnetStatus.BadFlags);
  assert.equal(vnetStep(bad, 12, 12, 2, at, step), VnetOutcome.Malformed, 'a header and no packet');
  assert.equal(vnetStep(bad, 12, 5, 2, at, step), VnetOutcome.Malformed, 'a short read');
  const after = (proc.control!({ op: 'stats' }) as typeof before);
  assert.deepEqual(after, before, 'the engine saw none of them');
});

test('offload step: processor drops and bogus lengths are drops', () => {
  const step = new VnetStep();
  const p = tcp({ src: CLIENT, dst: '198.18.200.1', sport: 1, dport: 2, flags: ACK });
  const b = frame(new Uint8Array(12), p);
  assert.equal(vnetStep(b, 12, 12 + p.length, 0, processAtOf(engineProc()), step), VnetOutcome.Drop, 'no service');
  assert.equal(vnetStep(b, 12, 12 + p.length, 0, () => p.length + 1, step), VnetOutcome.Drop, 'longer than read');
  assert.equal(vnetStep(b, 12, 12 + p.length, 0, () => -(b.length), step), VnetOutcome.Drop, 'reply larger than the buffer');
  assert.equal(vnetStep(b, 12, 12 + p.length, 0, () => NaN, step), VnetOutcome.Drop);
  assert.equal(step.writeLen, 0);
});
