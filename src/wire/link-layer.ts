// Link-layer stripping for captured frames: finds the IPv4/IPv6 header behind the link types that
// libpcap writes (https://www.tcpdump.org/linktypes.html). Hot path for replay: no allocation, never throws.

export const enum LinkType {
  Null = 0,
  Ethernet = 1,
  Ppp = 9,
  Raw = 101,
  PppHdlc = 50,
  LinuxSll = 113,
  Loop = 108,
  LinuxSll2 = 276,
  Ipv4 = 228,
  Ipv6 = 229,
}

/** DLT_RAW as some BSDs write it into files instead of LINKTYPE_RAW (101). */
const LINKTYPE_RAW_BSD = 12;

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100; // 802.1Q
const ETHERTYPE_QINQ = 0x88a8; // 802.1ad
const ETHERTYPE_QINQ_OLD = 0x9100; // pre-standard QinQ, still seen in the wild
/** Bound on stacked VLAN tags, so a frame of repeated 0x8100 cannot loop long. */
const MAX_VLAN_TAGS = 4;
const VLAN_TAG_BYTES = 4;

const ETHERNET_HEADER_BYTES = 14;
const SLL_HEADER_BYTES = 16;
const SLL_PROTOCOL_OFFSET = 14;
const SLL2_HEADER_BYTES = 20;
const SLL2_PROTOCOL_OFFSET = 0;
const NULL_HEADER_BYTES = 4;

const PPP_ADDRESS = 0xff;
const PPP_CONTROL = 0x03;
const PPP_IPV4 = 0x0021;
const PPP_IPV6 = 0x0057;
/** Cisco HDLC address bytes (unicast, broadcast); DLT 50 frames may be Cisco HDLC, as tcpdump assumes. */
const CHDLC_UNICAST = 0x0f;
const CHDLC_BROADCAST = 0x8f;

// Address families in the null/loop header: AF_INET is 2 everywhere; AF_INET6 differs per OS.
const AF_INET = 2;
const AF_INET6_LINUX = 10;
const AF_INET6_BSD = 24; // NetBSD, OpenBSD, BSD/OS
const AF_INET6_FREEBSD = 28; // FreeBSD, DragonFly
const AF_INET6_DARWIN = 30; // macOS, iOS

const IPV4_MIN_HEADER_BYTES = 20;
const IPV6_HEADER_BYTES = 40;

/** What a frame says its payload is: 4, 6, or 0 for "either; look at the version nibble". */
type IpHint = 0 | 4 | 6;

function u16be(frame: Uint8Array, off: number): number {
  return (frame[off] << 8) | frame[off + 1];
}

/**
 * Checks that an IP header of the expected version starts at `off` and that its fixed part was
 * captured; returns `off` or -1. The fixed part is required so callers may read it unchecked.
 */
function checkIp(frame: Uint8Array, off: number, hint: IpHint): number {
  if (off >= frame.length) return -1;
  const version = frame[off] >> 4;
  if (hint !== 0 && version !== hint) return -1;
  if (version === 4) return frame.length - off >= IPV4_MIN_HEADER_BYTES ? off : -1;
  if (version === 6) return frame.length - off >= IPV6_HEADER_BYTES ? off : -1;
  return -1;
}

/** Follows an ethertype (at most MAX_VLAN_TAGS VLAN tags deep) to the IP header at `payloadOff`. */
function viaEthertype(frame: Uint8Array, ethertype: number, payloadOff: number): number {
  let type = ethertype;
  let off = payloadOff;
  for (let tags = 0; ; tags++) {
    if (type === ETHERTYPE_IPV4) return checkIp(frame, off, 4);
    if (type === ETHERTYPE_IPV6) return checkIp(frame, off, 6);
    if (type !== ETHERTYPE_VLAN && type !== ETHERTYPE_QINQ && type !== ETHERTYPE_QINQ_OLD) return -1;
    if (tags === MAX_VLAN_TAGS || off + VLAN_TAG_BYTES > frame.length) return -1;
    // A tag is TCI (2 bytes) then the inner ethertype (2 bytes).
    type = u16be(frame, off + 2);
    off += VLAN_TAG_BYTES;
  }
}

function viaAddressFamily(family: number, frame: Uint8Array): number {
  if (family === AF_INET) return checkIp(frame, NULL_HEADER_BYTES, 4);
  if (
    family === AF_INET6_LINUX ||
    family === AF_INET6_BSD ||
    family === AF_INET6_FREEBSD ||
    family === AF_INET6_DARWIN
  ) {
    return checkIp(frame, NULL_HEADER_BYTES, 6);
  }
  return -1;
}

/** PPP protocol field at `off`: 2 bytes, or 1 byte when protocol-field compression made it odd (RFC 1661 §6.5). */
function viaPppProtocol(frame: Uint8Array, off: number): number {
  if (off >= frame.length) return -1;
  let proto: number;
  let payload: number;
  if (frame[off] & 1) {
    proto = frame[off];
    payload = off + 1;
  } else {
    if (off + 2 > frame.length) return -1;
    proto = u16be(frame, off);
    payload = off + 2;
  }
  // A compressed 0x21 or 0x57 has the same value as its 2-byte form.
  if (proto === PPP_IPV4) return checkIp(frame, payload, 4);
  if (proto === PPP_IPV6) return checkIp(frame, payload, 6);
  return -1;
}

function viaPpp(frame: Uint8Array): number {
  // Address/control may be absent (address-and-control-field compression, RFC 1661 §6.6).
  const hasAddrCtl = frame.length >= 2 && frame[0] === PPP_ADDRESS && frame[1] === PPP_CONTROL;
  return viaPppProtocol(frame, hasAddrCtl ? 2 : 0);
}

function viaPppHdlc(frame: Uint8Array): number {
  if (frame.length < 4) return -1;
  if (frame[0] === PPP_ADDRESS) return frame[1] === PPP_CONTROL ? viaPppProtocol(frame, 2) : -1;
  // Cisco HDLC: address, control (0), then an ethertype.
  if ((frame[0] === CHDLC_UNICAST || frame[0] === CHDLC_BROADCAST) && frame[1] === 0) {
    return viaEthertype(frame, u16be(frame, 2), 4);
  }
  return -1;
}

/**
 * Offset of the IP header inside a link-layer frame, or -1 when the frame holds no IPv4/IPv6
 * packet or is malformed. A non-negative answer guarantees the fixed IP header (20 bytes for
 * IPv4, 40 for IPv6) lies inside the frame and its version nibble matches the link layer's claim.
 * Never throws. Hot path.
 */
export function ipOffset(linkType: number, frame: Uint8Array): number {
  switch (linkType) {
    case LinkType.Ethernet:
      if (frame.length < ETHERNET_HEADER_BYTES) return -1;
      return viaEthertype(frame, u16be(frame, 12), ETHERNET_HEADER_BYTES);
    case LinkType.LinuxSll:
      if (frame.length < SLL_HEADER_BYTES) return -1;
      return viaEthertype(frame, u16be(frame, SLL_PROTOCOL_OFFSET), SLL_HEADER_BYTES);
    case LinkType.LinuxSll2:
      if (frame.length < SLL2_HEADER_BYTES) return -1;
      return viaEthertype(frame, u16be(frame, SLL2_PROTOCOL_OFFSET), SLL2_HEADER_BYTES);
    case LinkType.Raw:
    case LINKTYPE_RAW_BSD:
      return checkIp(frame, 0, 0);
    case LinkType.Ipv4:
      return checkIp(frame, 0, 4);
    case LinkType.Ipv6:
      return checkIp(frame, 0, 6);
    case LinkType.Null: {
      // Host byte order of the capturing machine, which the file does not record: try both.
      // Families are small numbers, so exactly one reading has zero upper bytes.
      if (frame.length < NULL_HEADER_BYTES) return -1;
      const b0 = frame[0], b1 = frame[1], b2 = frame[2], b3 = frame[3];
      if (b1 === 0 && b2 === 0 && b3 === 0) return viaAddressFamily(b0, frame);
      if (b0 === 0 && b1 === 0 && b2 === 0) return viaAddressFamily(b3, frame);
      return -1;
    }
    case LinkType.Loop:
      // OpenBSD loop: the same header, always in network byte order.
      if (frame.length < NULL_HEADER_BYTES || frame[0] !== 0 || frame[1] !== 0 || frame[2] !== 0) return -1;
      return viaAddressFamily(frame[3], frame);
    case LinkType.Ppp:
      return viaPpp(frame);
    case LinkType.PppHdlc:
      return viaPppHdlc(frame);
    default:
      return -1;
  }
}

const LINK_TYPE_NAMES: ReadonlyMap<number, string> = new Map([
  [0, 'NULL'],
  [1, 'ETHERNET'],
  [9, 'PPP'],
  [12, 'RAW (BSD DLT 12)'],
  [50, 'PPP_HDLC'],
  [101, 'RAW'],
  [104, 'C_HDLC'],
  [105, 'IEEE802_11'],
  [108, 'LOOP'],
  [113, 'LINUX_SLL'],
  [127, 'IEEE802_11_RADIOTAP'],
  [228, 'IPV4'],
  [229, 'IPV6'],
  [276, 'LINUX_SLL2'],
]);

/** The LINKTYPE_ name of a link type (without the prefix), e.g. 'LINUX_SLL2', or 'LINKTYPE 147' when unknown. */
export function linkTypeName(linkType: number): string {
  return LINK_TYPE_NAMES.get(linkType) ?? `LINKTYPE ${linkType}`;
}
