// ICMP / ICMPv6 packet builder (errors quoting a packet, echo requests) with correct checksums, for tests, capture
// fixtures and tools. Cold path: allocates, and throws RangeError on a spec it cannot build.
import { parseIp } from './addr.js';
import { checksum, transportChecksum } from './checksum.js';
import { IPPROTO_ICMP, IPPROTO_ICMPV6 } from './icmp.js';

export interface IcmpSpec {
  src: string;
  dst: string;
  type: number;
  code?: number;
  /** The 4 type-specific bytes (MTU for fragmentation needed / packet too big, echo id and sequence). */
  rest?: number;
  /** The message body: the quoted packet of an error, the data of an echo. */
  body: Uint8Array;
}

function address(text: string): { family: 4 | 6; bytes: Uint8Array } {
  const a = parseIp(text);
  if (a === null) throw new RangeError(`ICMP builder: not an IP address: ${JSON.stringify(text)}`);
  return a;
}

/** One IPv4 packet carrying ICMP, or one IPv6 packet carrying ICMPv6 (by the addresses). */
export function buildIcmpPacket(spec: IcmpSpec): Uint8Array {
  const s = address(spec.src), d = address(spec.dst);
  if (s.family !== d.family) throw new RangeError(`ICMP builder: ${spec.src} and ${spec.dst} are not of one family`);
  const hl = s.family === 4 ? 20 : 40;
  const icmpLen = 8 + spec.body.length;
  if (hl + icmpLen > 65535) throw new RangeError('ICMP builder: packet longer than 65535 bytes');
  const p = new Uint8Array(hl + icmpLen);
  if (s.family === 4) {
    p[0] = 0x45; p[2] = p.length >> 8; p[3] = p.length & 0xff; p[8] = 64; p[9] = IPPROTO_ICMP;
    p.set(s.bytes, 12); p.set(d.bytes, 16);
    const c = checksum(p, 0, 20); p[10] = c >> 8; p[11] = c & 0xff;
  } else {
    p[0] = 0x60; p[4] = icmpLen >> 8; p[5] = icmpLen & 0xff; p[6] = IPPROTO_ICMPV6; p[7] = 64;
    p.set(s.bytes, 8); p.set(d.bytes, 24);
  }
  const o = hl, rest = (spec.rest ?? 0) >>> 0;
  p[o] = spec.type; p[o + 1] = spec.code ?? 0;
  p[o + 4] = rest >>> 24; p[o + 5] = (rest >>> 16) & 0xff; p[o + 6] = (rest >>> 8) & 0xff; p[o + 7] = rest & 0xff;
  p.set(spec.body, o + 8);
  const c = s.family === 4 ? checksum(p, o, icmpLen) : transportChecksum(p, 8, 24, 16, IPPROTO_ICMPV6, o, icmpLen);
  p[o + 2] = c >> 8; p[o + 3] = c & 0xff;
  return p;
}

/**
 * An error about `quoted` as a router sends it: IPv4 quotes up to 576 bytes in all (RFC 1812 section 4.3.2.3),
 * IPv6 as much as fits in 1280 (RFC 4443 section 3.1); `quoteBytes` overrides that.
 */
export function buildIcmpError(spec: Omit<IcmpSpec, 'body'> & { quoted: Uint8Array; quoteBytes?: number }): Uint8Array {
  const v6 = address(spec.src).family === 6;
  const max = spec.quoteBytes ?? (v6 ? 1280 - 48 : 576 - 28);
  return buildIcmpPacket({ ...spec, body: spec.quoted.slice(0, Math.min(max, spec.quoted.length)) });
}

/** An echo request (ICMP type 8, ICMPv6 type 128) with `dataBytes` of a fixed pattern. */
export function buildEchoRequest(src: string, dst: string, id: number, seq: number, dataBytes = 56): Uint8Array {
  const body = new Uint8Array(dataBytes);
  for (let i = 0; i < dataBytes; i++) body[i] = (i * 13 + 5) & 0xff;
  return buildIcmpPacket({ src, dst, type: address(src).family === 4 ? 8 : 128, rest: ((id & 0xffff) << 16 | (seq & 0xffff)) >>> 0, body });
}
