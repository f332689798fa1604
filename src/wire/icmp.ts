// ICMP (RFC 792, RFC 1191) and ICMPv6 (RFC 4443) messages, read in place after parse.ts found one: the type, and
// for an error the quoted (embedded) IP header and first bytes of TCP. Wire input never throws: the result is an
// IcmpStatus; every offset is checked against the end of the ICMP message, which parse.ts bounded by the IP length.
import { checksum, transportChecksum } from './checksum.js';
import { IPPROTO_TCP, MAX_IPV6_EXT_HEADERS, type PacketView } from './parse.js';

export const IPPROTO_ICMP = 1;
export const IPPROTO_ICMPV6 = 58;

export const ICMP_ECHO_REPLY = 0, ICMP_DEST_UNREACH = 3, ICMP_ECHO_REQUEST = 8, ICMP_TIME_EXCEEDED = 11, ICMP_PARAM_PROBLEM = 12;
/** RFC 1191: destination unreachable, code 4 "fragmentation needed and DF set". */
export const ICMP_CODE_FRAG_NEEDED = 4;
export const ICMPV6_DEST_UNREACH = 1, ICMPV6_PACKET_TOO_BIG = 2, ICMPV6_TIME_EXCEEDED = 3, ICMPV6_PARAM_PROBLEM = 4;
export const ICMPV6_ECHO_REQUEST = 128, ICMPV6_ECHO_REPLY = 129;

/** RFC 792 / RFC 4443: every message starts with type, code, checksum and 4 type-specific bytes. */
export const ICMP_HEADER_BYTES = 8;
/** RFC 792: the quote is "the internet header plus the first 64 bits of the original datagram's data". */
export const QUOTED_L4_MIN_BYTES = 8;

export const enum IcmpKind { Other = 0, Error = 1, EchoRequest = 2 }

export const enum IcmpStatus {
  Ok = 0,
  /** Fewer than 8 bytes of ICMP header. */
  Truncated = 1,
  BadChecksum = 2,
  /** The quote ends before the IP header plus 8 bytes of TCP. */
  EmbeddedTruncated = 3,
  /** Wrong IP version, bad header length or total length, too many extension headers. */
  EmbeddedBadHeader = 4,
  EmbeddedNotTcp = 5,
  /** A non-first fragment: no ports in it. */
  EmbeddedFragment = 6,
}
export const ICMP_STATUS_LABELS = [
  'ok', 'truncated', 'bad_checksum', 'embedded_truncated', 'embedded_bad_header', 'embedded_not_tcp', 'embedded_fragment',
] as const;

/** Offsets into one ICMP message; rebound per packet. Embedded fields are set only for Kind Error with status Ok. */
export class IcmpView {
  family = 0;
  icmpOff = 0;
  icmpLen = 0;
  type = 0;
  code = 0;
  kind: IcmpKind = IcmpKind.Other;
  /** A path-MTU error (IPv4 fragmentation needed, IPv6 packet too big). */
  pmtu = false;
  /** The next-hop MTU it announces (RFC 1191 section 4, RFC 4443 section 3.2), else 0. */
  mtu = 0;
  inIpOff = 0;
  inSrcOff = 0;
  inDstOff = 0;
  inAddrLen = 0;
  inL4Off = 0;
  /** Quoted bytes from the embedded TCP header to the end of the message (at least 8). */
  inL4Avail = 0;
  inSrcPort = 0;
  inDstPort = 0;
  /** Offset of the embedded IPv4 header checksum, or -1 (IPv6 has none). */
  inIpCsumOff = -1;
  /** Offset of the embedded TCP checksum when the quote reaches it, or -1. */
  inTcpCsumOff = -1;
}

/**
 * Reads the ICMP/ICMPv6 message of the parsed packet `v` (proto 1 for IPv4, 58 for IPv6; l4Off/l4Len bounded by
 * parse.ts) into `out`. Verifies the checksum. Reads nothing at or past v.l4Off + v.l4Len.
 */
export function parseIcmp(buf: Uint8Array, v: PacketView, out: IcmpView): IcmpStatus {
  const o = v.l4Off, len = v.l4Len, end = o + len;
  out.family = v.family;
  out.icmpOff = o;
  out.icmpLen = len;
  out.kind = IcmpKind.Other;
  out.pmtu = false;
  out.mtu = 0;
  if (len < ICMP_HEADER_BYTES) return IcmpStatus.Truncated;
  // RFC 792: "The checksum is the 16-bit ones's complement of the one's complement sum of the ICMP message";
  // RFC 4443 section 2.3: ICMPv6's also covers "an IPv6 'pseudo-header'". A correct one sums to zero.
  const c = v.family === 4 ? checksum(buf, o, len) : transportChecksum(buf, v.srcAddrOff, v.dstAddrOff, 16, IPPROTO_ICMPV6, o, len);
  if (c !== 0) return IcmpStatus.BadChecksum;
  const type = buf[o], code = buf[o + 1];
  out.type = type;
  out.code = code;
  if (v.family === 4) {
    if (type === ICMP_ECHO_REQUEST) { out.kind = IcmpKind.EchoRequest; return IcmpStatus.Ok; }
    if (type !== ICMP_DEST_UNREACH && type !== ICMP_TIME_EXCEEDED && type !== ICMP_PARAM_PROBLEM) return IcmpStatus.Ok;
    out.kind = IcmpKind.Error;
    if (type === ICMP_DEST_UNREACH && code === ICMP_CODE_FRAG_NEEDED) {
      out.pmtu = true;
      // RFC 1191 section 4: "the low-order 16 bits of the ICMP header's unused field" carry the Next-Hop MTU.
      out.mtu = (buf[o + 6] << 8) | buf[o + 7];
    }
    return embeddedV4(buf, o + ICMP_HEADER_BYTES, end, out);
  }
  if (type === ICMPV6_ECHO_REQUEST) { out.kind = IcmpKind.EchoRequest; return IcmpStatus.Ok; }
  if (type < ICMPV6_DEST_UNREACH || type > ICMPV6_PARAM_PROBLEM) return IcmpStatus.Ok;
  out.kind = IcmpKind.Error;
  if (type === ICMPV6_PACKET_TOO_BIG) {
    out.pmtu = true;
    out.mtu = ((buf[o + 4] << 24) | (buf[o + 5] << 16) | (buf[o + 6] << 8) | buf[o + 7]) >>> 0;
  }
  return embeddedV6(buf, o + ICMP_HEADER_BYTES, end, out);
}

function embeddedV4(buf: Uint8Array, p: number, end: number, out: IcmpView): IcmpStatus {
  if (end - p < 20) return IcmpStatus.EmbeddedTruncated;
  if (buf[p] >>> 4 !== 4) return IcmpStatus.EmbeddedBadHeader;
  const ihl = (buf[p] & 0x0f) << 2;
  if (ihl < 20) return IcmpStatus.EmbeddedBadHeader;
  // The quoted packet was a TCP segment mplb forwarded: its own length covered a whole TCP header.
  const total = (buf[p + 2] << 8) | buf[p + 3];
  if (total < ihl + 20) return IcmpStatus.EmbeddedBadHeader;
  if (buf[p + 9] !== IPPROTO_TCP) return IcmpStatus.EmbeddedNotTcp;
  if ((((buf[p + 6] << 8) | buf[p + 7]) & 0x1fff) !== 0) return IcmpStatus.EmbeddedFragment;
  const t = p + ihl;
  if (end - t < QUOTED_L4_MIN_BYTES) return IcmpStatus.EmbeddedTruncated;
  out.inIpOff = p;
  out.inSrcOff = p + 12;
  out.inDstOff = p + 16;
  out.inAddrLen = 4;
  out.inIpCsumOff = p + 10;
  return embeddedTcp(buf, t, end, out);
}

function embeddedV6(buf: Uint8Array, p: number, end: number, out: IcmpView): IcmpStatus {
  if (end - p < 40) return IcmpStatus.EmbeddedTruncated;
  if (buf[p] >>> 4 !== 6) return IcmpStatus.EmbeddedBadHeader;
  // RFC 4443 section 3.1: "As much of invoking packet as possible without the ICMPv6 packet exceeding the minimum
  // IPv6 MTU": the quote may end anywhere, so extension headers are walked up to the end of the message.
  let next = buf[p + 6];
  let pos = p + 40;
  let walked = 0;
  while (next === 0 || next === 43 || next === 44 || next === 60 || next === 51) {
    if (++walked > MAX_IPV6_EXT_HEADERS) return IcmpStatus.EmbeddedBadHeader;
    if (end - pos < 8) return IcmpStatus.EmbeddedTruncated;
    if (next === 44) {
      if ((((buf[pos + 2] << 8) | buf[pos + 3]) & 0xfff8) !== 0) return IcmpStatus.EmbeddedFragment;
      next = buf[pos];
      pos += 8;
      continue;
    }
    const hlen = next === 51 ? (buf[pos + 1] + 2) << 2 : (buf[pos + 1] + 1) << 3;
    next = buf[pos];
    pos += hlen;
    if (pos > end) return IcmpStatus.EmbeddedTruncated;
  }
  if (next !== IPPROTO_TCP) return IcmpStatus.EmbeddedNotTcp;
  if (end - pos < QUOTED_L4_MIN_BYTES) return IcmpStatus.EmbeddedTruncated;
  out.inIpOff = p;
  out.inSrcOff = p + 8;
  out.inDstOff = p + 24;
  out.inAddrLen = 16;
  out.inIpCsumOff = -1;
  return embeddedTcp(buf, pos, end, out);
}

function embeddedTcp(buf: Uint8Array, t: number, end: number, out: IcmpView): IcmpStatus {
  out.inL4Off = t;
  out.inL4Avail = end - t;
  out.inSrcPort = (buf[t] << 8) | buf[t + 1];
  out.inDstPort = (buf[t + 2] << 8) | buf[t + 3];
  // TCP checksum at bytes 16-17 of the header: patched only when quoted whole.
  out.inTcpCsumOff = end - t >= 18 ? t + 16 : -1;
  return IcmpStatus.Ok;
}

/** Writes the ICMP checksum of the message at v.l4Off (its checksum field is overwritten). ICMPv6 covers the pseudo-header. */
export function writeIcmpChecksum(buf: Uint8Array, v: PacketView): void {
  const o = v.l4Off;
  buf[o + 2] = 0;
  buf[o + 3] = 0;
  const c = v.family === 4 ? checksum(buf, o, v.l4Len) : transportChecksum(buf, v.srcAddrOff, v.dstAddrOff, 16, IPPROTO_ICMPV6, o, v.l4Len);
  buf[o + 2] = c >>> 8;
  buf[o + 3] = c & 0xff;
}
