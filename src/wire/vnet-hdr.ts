// The virtio_net_hdr that precedes every packet on a TUN opened with IFF_VNET_HDR (include/uapi/linux/virtio_net.h,
// virtio spec 1.2 section 5.1.6). Pure: parse/validate into a reusable object, write a zeroed header. Never throws on
// wire input: a malformed header is a status the caller counts and drops. Hot path: no allocation.
//
// Layout (little endian on a TUN: tun_is_little_endian() is true on x86-64/arm64 without TUNSETVNETBE):
//   0 u8  flags        NEEDS_CSUM 1, DATA_VALID 2, RSC_INFO 4
//   1 u8  gso_type     NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5, | ECN 0x80
//   2 u16 hdr_len      bytes of headers (the kernel reports skb_headlen(): may be more than the real headers)
//   4 u16 gso_size     segment payload size (MSS) when gso_type != NONE
//   6 u16 csum_start   where the device starts summing (the L4 header) when NEEDS_CSUM
//   8 u16 csum_offset  where from csum_start it stores the sum (16 for TCP, 6 for UDP)
//  10 u16 num_buffers  only in the 12-byte (mergeable / virtio 1.0) form; ignored

export const VNET_HDR_F_NEEDS_CSUM = 1;
export const VNET_HDR_F_DATA_VALID = 2;
export const VNET_HDR_F_RSC_INFO = 4;
const KNOWN_FLAGS = VNET_HDR_F_NEEDS_CSUM | VNET_HDR_F_DATA_VALID | VNET_HDR_F_RSC_INFO;

export const VNET_GSO_NONE = 0;
export const VNET_GSO_TCPV4 = 1;
export const VNET_GSO_UDP = 3;
export const VNET_GSO_TCPV6 = 4;
export const VNET_GSO_UDP_L4 = 5;
export const VNET_GSO_ECN = 0x80;

/** The TCP checksum field sits 16 bytes into the TCP header. */
export const TCP_CSUM_OFFSET = 16;

export const enum VnetStatus {
  Ok = 0,
  /** Fewer bytes than a header, or no packet after it. */
  Truncated = 1,
  /** A flag bit the virtio spec does not define. */
  BadFlags = 2,
  /** Unknown gso_type, or ECN on a non-TCP type. */
  BadGsoType = 3,
  /** GSO with gso_size 0 or larger than the packet. */
  BadGsoSize = 4,
  /** hdr_len beyond the packet. */
  BadHdrLen = 5,
  /** NEEDS_CSUM with csum_start/csum_offset outside the packet. */
  BadCsum = 6,
  /** GSO type that does not match the IP version of the packet (TCPV4 on IPv6 or the reverse). */
  GsoFamilyMismatch = 7,
}
export const VNET_STATUS_LABELS = ['ok', 'truncated', 'bad_flags', 'bad_gso_type', 'bad_gso_size', 'bad_hdr_len', 'bad_csum', 'gso_family_mismatch'] as const;

/** Header sizes the TUN accepts through TUNSETVNETHDRSZ that this module understands. */
export function validVnetHdrBytes(n: number): boolean {
  return n === 10 || n === 12;
}

/** One header's fields; one instance is rebound per packet. */
export class VnetHdr {
  flags = 0;
  gsoType = 0;
  hdrLen = 0;
  gsoSize = 0;
  csumStart = 0;
  csumOffset = 0;
  /** True when the TCP checksum field holds the uncomplemented pseudo-header sum (NEEDS_CSUM). */
  get needsCsum(): boolean { return (this.flags & VNET_HDR_F_NEEDS_CSUM) !== 0; }
  /** gso_type without the ECN bit. */
  get gsoKind(): number { return this.gsoType & ~VNET_GSO_ECN; }
}

const u16 = (b: Uint8Array, o: number): number => b[o] | (b[o + 1] << 8);

/**
 * Parses and validates the header at buf[off, off+hdrBytes) of a packet of pktLen bytes that follows it at
 * buf[off+hdrBytes, off+hdrBytes+pktLen). Fills `out` (partially on failure).
 */
export function parseVnetHdr(buf: Uint8Array, off: number, hdrBytes: number, pktLen: number, out: VnetHdr): VnetStatus {
  if (off < 0 || hdrBytes < 10 || pktLen < 1 || off + hdrBytes + pktLen > buf.length) return VnetStatus.Truncated;
  const flags = buf[off];
  const gsoType = buf[off + 1];
  out.flags = flags;
  out.gsoType = gsoType;
  out.hdrLen = u16(buf, off + 2);
  out.gsoSize = u16(buf, off + 4);
  out.csumStart = u16(buf, off + 6);
  out.csumOffset = u16(buf, off + 8);
  if ((flags & ~KNOWN_FLAGS) !== 0) return VnetStatus.BadFlags;
  const kind = gsoType & ~VNET_GSO_ECN;
  if (kind !== VNET_GSO_NONE) {
    if (kind !== VNET_GSO_TCPV4 && kind !== VNET_GSO_TCPV6 && kind !== VNET_GSO_UDP && kind !== VNET_GSO_UDP_L4) return VnetStatus.BadGsoType;
    if ((gsoType & VNET_GSO_ECN) !== 0 && kind !== VNET_GSO_TCPV4 && kind !== VNET_GSO_TCPV6) return VnetStatus.BadGsoType;
    if (out.gsoSize === 0 || out.gsoSize > pktLen) return VnetStatus.BadGsoSize;
    if (out.hdrLen > pktLen) return VnetStatus.BadHdrLen;
    const version = buf[off + hdrBytes] >>> 4;
    if ((kind === VNET_GSO_TCPV4 && version !== 4) || (kind === VNET_GSO_TCPV6 && version !== 6)) return VnetStatus.GsoFamilyMismatch;
  } else if (gsoType !== 0) {
    return VnetStatus.BadGsoType; // ECN without GSO
  } else if (out.hdrLen > pktLen) {
    return VnetStatus.BadHdrLen;
  }
  if ((flags & VNET_HDR_F_NEEDS_CSUM) !== 0 && out.csumStart + out.csumOffset + 2 > pktLen) return VnetStatus.BadCsum;
  return VnetStatus.Ok;
}

/** Writes an all-zero header (no GSO, no NEEDS_CSUM: the packet after it carries full checksums). */
export function writeZeroVnetHdr(buf: Uint8Array, off: number, hdrBytes: number): void {
  for (let i = 0; i < hdrBytes; i++) buf[off + i] = 0;
}

export interface VnetHdrFields {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

/** Encodes a header (cold: tests, fixtures). */
export function encodeVnetHdr(f: VnetHdrFields, hdrBytes = 12): Uint8Array {
  const b = new Uint8Array(hdrBytes);
  b[0] = f.flags ?? 0;
  b[1] = f.gsoType ?? 0;
  const put = (o: number, v = 0) => { b[o] = v & 0xff; b[o + 1] = (v >>> 8) & 0xff; };
  put(2, f.hdrLen);
  put(4, f.gsoSize);
  put(6, f.csumStart);
  put(8, f.csumOffset);
  return b;
}
