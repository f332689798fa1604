// virtio_net_hdr codec (src/wire/vnet-hdr.ts): byte-exact fixtures and validation. The offload path around it
// (TunPacketDevice + forwarder + engine) is tested in forwarder.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  encodeVnetHdr, parseVnetHdr, writeZeroVnetHdr, VnetHdr, VnetStatus,
  VNET_GSO_ECN, VNET_GSO_TCPV4, VNET_GSO_TCPV6, VNET_GSO_UDP_L4, VNET_HDR_F_DATA_VALID, VNET_HDR_F_NEEDS_CSUM,
} from '../src/wire/vnet-hdr.js';
import { ACK, tcp } from './helpers/packets.js';

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
