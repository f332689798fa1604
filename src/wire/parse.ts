// Stage 1 of the packet path: validate IPv4 (RFC 791) / IPv6 (RFC 8200) and TCP (RFC 9293) headers once, in place,
// into a reusable PacketView of offsets. Wire input never throws: the result is a ParseStatus. Hot path.

export const enum ParseStatus {
  Ok = 0,
  Truncated = 1,
  BadVersion = 2,
  BadIpHeader = 3,
  BadIpLength = 4,
  Fragment = 5,
  ExtHeaderLimit = 6,
  NotTcp = 7,
  BadTcpHeader = 8,
  /** An ICMP (IPv4, protocol 1) or ICMPv6 (IPv6, next header 58) message: read by icmp.ts, not dropped as not_tcp. */
  Icmp = 9,
}
export const PARSE_STATUS_LABELS = [
  'ok', 'truncated', 'bad_ip_version', 'bad_ip_header', 'bad_ip_length', 'fragment', 'ipv6_ext_header_limit', 'not_tcp', 'bad_tcp_header', 'icmp',
] as const;

export const IPPROTO_TCP = 6;
/** IPv6 extension headers walked before giving up (RFC 8200 sets no limit; a balancer must). */
export const MAX_IPV6_EXT_HEADERS = 8;

export const TCP_FIN = 0x01, TCP_SYN = 0x02, TCP_RST = 0x04, TCP_PSH = 0x08, TCP_ACK = 0x10;

/** Offsets into the packet after a successful parse; one instance is rebound per packet. */
export class PacketView {
  family = 0; // 4 or 6
  ipOff = 0;
  /** Bytes of the IP packet per its length field (trailing link padding excluded). */
  ipLen = 0;
  srcAddrOff = 0;
  dstAddrOff = 0;
  addrLen = 0;
  proto = 0;
  l4Off = 0;
  l4Len = 0;
  srcPort = 0;
  dstPort = 0;
  tcpFlags = 0;
  tcpHdrLen = 0;
  optOff = 0;
  optEnd = 0;
  payloadLen = 0;
  /**
   * The TCP checksum field holds the uncomplemented pseudo-header sum (virtio_net_hdr NEEDS_CSUM, GSO packets
   * from a TUN with offloads): the device completes it, so edits patch only the pseudo-header part. Set by the caller.
   */
  partialCsum = false;
}

/** Parses the IP packet at buf[off, off+len). Fills `v` (partially on failure). */
export function parsePacket(buf: Uint8Array, off: number, len: number, v: PacketView): ParseStatus {
  if (len < 1 || off < 0 || off + len > buf.length) return ParseStatus.Truncated;
  const version = buf[off] >>> 4;
  v.ipOff = off;
  if (version === 4) {
    if (len < 20) return ParseStatus.Truncated;
    const ihl = (buf[off] & 0x0f) << 2;
    // RFC 791: "Internet Header Length ... the minimum value for a correct header is 5."
    if (ihl < 20) return ParseStatus.BadIpHeader;
    const total = (buf[off + 2] << 8) | buf[off + 3];
    if (total < ihl || total > len) return ParseStatus.BadIpLength;
    v.family = 4;
    v.ipLen = total;
    v.srcAddrOff = off + 12;
    v.dstAddrOff = off + 16;
    v.addrLen = 4;
    v.proto = buf[off + 9];
    // A non-first fragment has no TCP header; a first fragment lacks the rest of it. Neither can be balanced.
    if ((((buf[off + 6] << 8) | buf[off + 7]) & 0x3fff) !== 0) return ParseStatus.Fragment;
    v.l4Off = off + ihl;
    v.l4Len = total - ihl;
  } else if (version === 6) {
    if (len < 40) return ParseStatus.Truncated;
    const payload = (buf[off + 4] << 8) | buf[off + 5];
    // Jumbograms (payload length 0 with a hop-by-hop option) are not supported: a zero length is refused.
    if (payload === 0 || 40 + payload > len) return ParseStatus.BadIpLength;
    v.family = 6;
    v.ipLen = 40 + payload;
    v.srcAddrOff = off + 8;
    v.dstAddrOff = off + 24;
    v.addrLen = 16;
    let next = buf[off + 6];
    let pos = off + 40;
    const end = off + 40 + payload;
    let walked = 0;
    // Bounded walk: hop-by-hop 0, routing 43, fragment 44, destination options 60, AH 51.
    while (next === 0 || next === 43 || next === 44 || next === 60 || next === 51) {
      if (++walked > MAX_IPV6_EXT_HEADERS) return ParseStatus.ExtHeaderLimit;
      if (pos + 8 > end) return ParseStatus.BadIpHeader;
      if (next === 44) {
        // Fragment header: any fragment (offset or M flag) cannot be balanced on its own.
        if ((((buf[pos + 2] << 8) | buf[pos + 3]) & 0xfff9) !== 0) return ParseStatus.Fragment;
        next = buf[pos];
        pos += 8;
        continue;
      }
      // RFC 4302: AH length is in 4-octet units minus 2; the others in 8-octet units not counting the first 8.
      const hlen = next === 51 ? (buf[pos + 1] + 2) << 2 : (buf[pos + 1] + 1) << 3;
      next = buf[pos];
      pos += hlen;
      if (pos > end) return ParseStatus.BadIpHeader;
    }
    v.proto = next;
    v.l4Off = pos;
    v.l4Len = end - pos;
  } else {
    return ParseStatus.BadVersion;
  }
  if (v.proto !== IPPROTO_TCP) {
    // Off the TCP path: one more comparison, only for packets that are not TCP.
    return v.proto === (v.family === 4 ? 1 : 58) ? ParseStatus.Icmp : ParseStatus.NotTcp;
  }
  const t = v.l4Off;
  if (v.l4Len < 20) return ParseStatus.BadTcpHeader;
  const doff = (buf[t + 12] >>> 4) << 2;
  // RFC 9293: "Data Offset ... The TCP header (even one including options) is an integer multiple of 32 bits."
  if (doff < 20 || doff > v.l4Len) return ParseStatus.BadTcpHeader;
  v.srcPort = (buf[t] << 8) | buf[t + 1];
  v.dstPort = (buf[t + 2] << 8) | buf[t + 3];
  v.tcpFlags = buf[t + 13];
  v.tcpHdrLen = doff;
  v.optOff = t + 20;
  v.optEnd = t + doff;
  v.payloadLen = v.l4Len - doff;
  return ParseStatus.Ok;
}

/** TCP sequence number of a parsed packet. Read on demand: a u32 kept in an object field would box a heap number. */
export function tcpSeq(buf: Uint8Array, v: PacketView): number {
  const t = v.l4Off;
  return ((buf[t + 4] << 24) | (buf[t + 5] << 16) | (buf[t + 6] << 8) | buf[t + 7]) >>> 0;
}

/** TCP acknowledgment number of a parsed packet. */
export function tcpAck(buf: Uint8Array, v: PacketView): number {
  const t = v.l4Off;
  return ((buf[t + 8] << 24) | (buf[t + 9] << 16) | (buf[t + 10] << 8) | buf[t + 11]) >>> 0;
}

/**
 * Bounded TCP option walk: returns the offset of the next option of kind >= 2 at or after `pos`
 * (skipping NOPs), or -1 at the end of the list, or -2 when the list is malformed. The option's
 * length byte is then at ret+1 and is guaranteed to be >= 2 and to fit before `end`.
 */
export function nextTcpOption(buf: Uint8Array, pos: number, end: number): number {
  while (pos < end) {
    const kind = buf[pos];
    if (kind === 0) return -1; // End of Option List
    if (kind === 1) { pos++; continue; } // NOP
    // RFC 9293: "an option-length octet ... counts the two octets of option-kind and option-length".
    if (pos + 1 >= end) return -2;
    const olen = buf[pos + 1];
    if (olen < 2 || pos + olen > end) return -2;
    return pos;
  }
  return -1;
}

/**
 * Reads an address (addrLen 4 or 16 bytes at buf[off]) as big-endian words into out[at..at+3]; IPv4 fills the last
 * three with 0. Hot path: the words stay in a typed array, never in a variable passed to a call (u32 values above
 * 2^30 would be boxed).
 */
export function loadAddressWords(buf: Uint8Array, off: number, addrLen: number, out: Uint32Array, at: number): void {
  out[at] = ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
  if (addrLen === 4) { out[at + 1] = 0; out[at + 2] = 0; out[at + 3] = 0; return; }
  out[at + 1] = ((buf[off + 4] << 24) | (buf[off + 5] << 16) | (buf[off + 6] << 8) | buf[off + 7]) >>> 0;
  out[at + 2] = ((buf[off + 8] << 24) | (buf[off + 9] << 16) | (buf[off + 10] << 8) | buf[off + 11]) >>> 0;
  out[at + 3] = ((buf[off + 12] << 24) | (buf[off + 13] << 16) | (buf[off + 14] << 8) | buf[off + 15]) >>> 0;
}
