// MPTCP option decoder (TCP option kind 30): RFC 6824 (v0) and RFC 8684 (v1) §3, all nine subtypes; the types and
// constants the encoder (mptcp-encode.ts) and the describer (mptcp-describe.ts) share.
// decodeMptcpOption is on the hot path: it never throws, never allocates, never reads outside [off, off+len).

export const TCPOPT_MPTCP = 30;

export const enum MptcpSubtype {
  MpCapable = 0,
  MpJoin = 1,
  Dss = 2,
  AddAddr = 3,
  RemoveAddr = 4,
  MpPrio = 5,
  MpFail = 6,
  MpFastclose = 7,
  MpTcpRst = 8,
}
/** Metric labels indexed by MptcpSubtype. */
export const MPTCP_SUBTYPE_LABELS = [
  'mp_capable', 'mp_join', 'dss', 'add_addr', 'remove_addr', 'mp_prio', 'mp_fail', 'mp_fastclose', 'mp_tcprst',
] as const;

export const enum OptionStatus {
  Ok = 0,
  BadLength = 1,
  /** Subtype > 8 (e.g. 0xf MP_EXPERIMENTAL): not an error for the packet, a balancer forwards it. */
  UnknownSubtype = 2,
  BadField = 3,
}
/** Metric labels indexed by OptionStatus. */
export const OPTION_STATUS_LABELS = ['ok', 'bad_length', 'unknown_subtype', 'bad_field'] as const;

/** Which of the three MP_JOIN forms an option is; decided by its length alone. */
export const enum JoinForm {
  None = 0,
  Syn = 1,
  SynAck = 2,
  Ack = 3,
}

/** MP_TCPRST reason codes, RFC 8684 §3.6, indexed by code. */
export const TCPRST_REASON_LABELS = [
  'Unspecified error',
  'MPTCP-specific error',
  'Lack of resources',
  'Administratively prohibited',
  'Too much outstanding data',
  'Unacceptable performance',
  'Middlebox interference',
] as const;

// MP_CAPABLE flag bits (RFC 8684 §3.1: "A B C D E F G H", A leftmost).
export const MPC_FLAG_A = 0x80; // checksum required
export const MPC_FLAG_B = 0x40; // extensibility
export const MPC_FLAG_C = 0x20; // v1: no joins to the source address/port
export const MPC_FLAG_H = 0x01; // HMAC-SHA1 (v0) / HMAC-SHA256 (v1)
// DSS flag bits (RFC 8684 §3.3 Fig. 9: "(reserved) |F|m|M|a|A|").
export const DSS_FLAG_A = 0x01; // data ACK present
export const DSS_FLAG_a = 0x02; // data ACK is 8 octets
export const DSS_FLAG_M = 0x04; // DSN, SSN, data-level length (and checksum, if negotiated) present
export const DSS_FLAG_m = 0x08; // DSN is 8 octets
export const DSS_FLAG_F = 0x10; // DATA_FIN
// MP_TCPRST flag bits (RFC 8684 §3.6: "U|V|W|T").
export const TCPRST_FLAG_T = 0x01; // transient error

/**
 * One reusable decoded record: decodeMptcpOption overwrites every field and never allocates.
 * 64-bit values come as two unsigned 32-bit halves. Fields of subtypes other than `subtype` hold their
 * reset values. `reserved` keeps the bits the RFC reserves, packed per subtype (see each decoder), so that
 * an option can be re-encoded byte for byte.
 */
export class MptcpOption {
  /** What decodeMptcpOption returned for this record. */
  status: OptionStatus = OptionStatus.BadLength;
  /** 0..15, or -1 when the option is too short to carry a subtype. */
  subtype = -1;
  /** The option's length byte. */
  length = 0;
  reserved = 0;

  // MP_CAPABLE
  version = 0;
  /** The whole flags byte, D..G bits included. */
  flags = 0;
  checksumRequired = false; // A
  extensibility = false; // B
  noJoinToSource = false; // C (v1 only)
  hmacSha = false; // H
  hasSenderKey = false;
  senderKeyHi = 0;
  senderKeyLo = 0;
  /** Offset of the sender's key in buf, -1 when absent. */
  senderKeyOff = -1;
  /** MP_CAPABLE receiver's key; also the MP_FASTCLOSE key. */
  hasReceiverKey = false;
  receiverKeyHi = 0;
  receiverKeyLo = 0;
  receiverKeyOff = -1;
  /** MP_CAPABLE data-level length (DSS's is dataLevelLength). */
  hasDataLength = false;
  dataLength = 0;
  /** MP_CAPABLE or DSS checksum. */
  hasChecksum = false;
  checksum = 0;

  // MP_JOIN (also MP_PRIO backup and address ids of MP_JOIN, ADD_ADDR, MP_PRIO)
  joinForm: JoinForm = JoinForm.None;
  backup = false;
  hasAddrId = false;
  addrId = 0;
  /** MP_JOIN SYN: the receiver's token. */
  token = 0;
  /** MP_JOIN SYN and SYN/ACK: the sender's random number. */
  nonce = 0;
  /** MP_JOIN SYN/ACK or ADD_ADDR: 64-bit truncated HMAC; MP_JOIN ACK: its first 64 bits. */
  hasHmac = false;
  hmacHi = 0;
  hmacLo = 0;
  hmacOff = -1;
  /** 8, or 20 for the MP_JOIN ACK's full HMAC. */
  hmacLength = 0;

  // DSS (dsnHi/dsnLo are also MP_FAIL's 64-bit DSN)
  dssFlags = 0;
  dataFin = false; // F
  dsn64 = false; // m
  hasMapping = false; // M
  dataAck64 = false; // a
  hasDataAck = false; // A
  dataAckHi = 0;
  dataAckLo = 0;
  dsnHi = 0;
  dsnLo = 0;
  ssn = 0;
  dataLevelLength = 0;

  // ADD_ADDR
  /** The protocol version the ADD_ADDR was decoded as (decode's mptcpVersion). */
  addAddrVersion = 0;
  ipVersion = 0;
  addrOff = -1;
  /** IPv4 address as an unsigned u32; 0 for IPv6. */
  addr4 = 0;
  hasPort = false;
  port = 0;
  echo = false;

  // REMOVE_ADDR
  addrIdCount = 0;
  addrIdsOff = -1;

  // MP_TCPRST
  rstFlags = 0;
  rstTransient = false;
  reason = 0;

  /** Puts every field back to its initial value. */
  clear(): void {
    this.status = OptionStatus.BadLength;
    this.subtype = -1;
    this.length = 0;
    this.reserved = 0;
    this.version = 0;
    this.flags = 0;
    this.checksumRequired = false;
    this.extensibility = false;
    this.noJoinToSource = false;
    this.hmacSha = false;
    this.hasSenderKey = false;
    this.senderKeyHi = 0;
    this.senderKeyLo = 0;
    this.senderKeyOff = -1;
    this.hasReceiverKey = false;
    this.receiverKeyHi = 0;
    this.receiverKeyLo = 0;
    this.receiverKeyOff = -1;
    this.hasDataLength = false;
    this.dataLength = 0;
    this.hasChecksum = false;
    this.checksum = 0;
    this.joinForm = JoinForm.None;
    this.backup = false;
    this.hasAddrId = false;
    this.addrId = 0;
    this.token = 0;
    this.nonce = 0;
    this.hasHmac = false;
    this.hmacHi = 0;
    this.hmacLo = 0;
    this.hmacOff = -1;
    this.hmacLength = 0;
    this.dssFlags = 0;
    this.dataFin = false;
    this.dsn64 = false;
    this.hasMapping = false;
    this.dataAck64 = false;
    this.hasDataAck = false;
    this.dataAckHi = 0;
    this.dataAckLo = 0;
    this.dsnHi = 0;
    this.dsnLo = 0;
    this.ssn = 0;
    this.dataLevelLength = 0;
    this.addAddrVersion = 0;
    this.ipVersion = 0;
    this.addrOff = -1;
    this.addr4 = 0;
    this.hasPort = false;
    this.port = 0;
    this.echo = false;
    this.addrIdCount = 0;
    this.addrIdsOff = -1;
    this.rstFlags = 0;
    this.rstTransient = false;
    this.reason = 0;
  }
}

function u16(b: Uint8Array, i: number): number {
  return (b[i] << 8) | b[i + 1];
}
function u32(b: Uint8Array, i: number): number {
  return ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0;
}

/**
 * Decodes one MPTCP option. `off` is the offset of the kind byte, `len` the option's length byte.
 * `mptcpVersion` (default 1) is the connection's negotiated version; only ADD_ADDR depends on it, since
 * RFC 6824 and RFC 8684 give that subtype different layouts: 0 selects RFC 6824's, anything else RFC 8684's.
 * Hot path: never throws, never allocates, reads only buf[off .. off+len-1]. The status is also left in
 * out.status; on any status but Ok the subtype-specific fields are unreliable.
 */
export function decodeMptcpOption(
  buf: Uint8Array,
  off: number,
  len: number,
  out: MptcpOption,
  mptcpVersion: number = 1,
): OptionStatus {
  out.clear();
  out.length = len;
  const st = decodeInto(buf, off, len, out, mptcpVersion);
  out.status = st;
  return st;
}

function decodeInto(buf: Uint8Array, off: number, len: number, out: MptcpOption, mptcpVersion: number): OptionStatus {
  // Defensive even though the caller checks: a window past the buffer would read undefined bytes.
  if (!(off >= 0) || !(len >= 0) || off + len > buf.length) return OptionStatus.BadLength;
  // RFC 8684 §3: "Subtype" is the first 4 bits after Kind and Length; without that byte there is no option.
  // (CVE-2017-13040 was a 3-byte DSS read as if its flags byte existed.)
  if (len < 3) return OptionStatus.BadLength;
  const b2 = buf[off + 2];
  const subtype = b2 >> 4;
  const nibble = b2 & 0x0f;
  out.subtype = subtype;
  switch (subtype) {
    case MptcpSubtype.MpCapable: return decodeCapable(buf, off, len, nibble, out);
    case MptcpSubtype.MpJoin: return decodeJoin(buf, off, len, nibble, out);
    case MptcpSubtype.Dss: return decodeDss(buf, off, len, nibble, out);
    case MptcpSubtype.AddAddr:
      return mptcpVersion === 0 ? decodeAddAddrV0(buf, off, len, nibble, out) : decodeAddAddrV1(buf, off, len, nibble, out);
    case MptcpSubtype.RemoveAddr: return decodeRemoveAddr(off, len, nibble, out);
    case MptcpSubtype.MpPrio: return decodePrio(buf, off, len, nibble, out);
    case MptcpSubtype.MpFail: return decodeFail(buf, off, len, nibble, out);
    case MptcpSubtype.MpFastclose: return decodeFastclose(buf, off, len, nibble, out);
    case MptcpSubtype.MpTcpRst: return decodeTcpRst(buf, off, len, nibble, out);
    default: return OptionStatus.UnknownSubtype;
  }
}

function decodeCapable(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  out.version = nibble;
  // RFC 8684 §3.1 Fig. 4: keys "(if option Length > 4)" / "(if option Length > 12)", then
  // "Data-Level Length (16 bits)" and "Checksum (16 bits, optional)": lengths 4, 12, 20, 22, 24.
  // RFC 6824 §3.1: the SYN and SYN/ACK carry the sender's key (12), the third ACK both keys (20).
  if (nibble === 0) {
    if (len !== 12 && len !== 20) return OptionStatus.BadLength;
  } else if (len !== 4 && len !== 12 && len !== 20 && len !== 22 && len !== 24) {
    return OptionStatus.BadLength;
  }
  const flags = buf[off + 3];
  out.flags = flags;
  out.checksumRequired = (flags & MPC_FLAG_A) !== 0;
  out.extensibility = (flags & MPC_FLAG_B) !== 0;
  out.noJoinToSource = nibble >= 1 && (flags & MPC_FLAG_C) !== 0;
  out.hmacSha = (flags & MPC_FLAG_H) !== 0;
  if (len >= 12) {
    out.hasSenderKey = true;
    out.senderKeyOff = off + 4;
    out.senderKeyHi = u32(buf, off + 4);
    out.senderKeyLo = u32(buf, off + 8);
  }
  if (len >= 20) {
    out.hasReceiverKey = true;
    out.receiverKeyOff = off + 12;
    out.receiverKeyHi = u32(buf, off + 12);
    out.receiverKeyLo = u32(buf, off + 16);
  }
  if (len >= 22) {
    out.hasDataLength = true;
    out.dataLength = u16(buf, off + 20);
  }
  if (len === 24) {
    out.hasChecksum = true;
    out.checksum = u16(buf, off + 22);
  }
  return OptionStatus.Ok;
}

function decodeJoin(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  // RFC 8684 §3.2 Figs. 5-7: SYN "Length = 12", SYN/ACK "Length = 16", third ACK "Length = 24".
  if (len === 12) {
    out.joinForm = JoinForm.Syn;
    out.token = u32(buf, off + 4);
    out.nonce = u32(buf, off + 8);
  } else if (len === 16) {
    out.joinForm = JoinForm.SynAck;
    out.hasHmac = true;
    out.hmacOff = off + 4;
    out.hmacLength = 8;
    out.hmacHi = u32(buf, off + 4);
    out.hmacLo = u32(buf, off + 8);
    out.nonce = u32(buf, off + 12);
  } else if (len === 24) {
    // "Subtype | (reserved)": 12 reserved bits, no B flag, no address id.
    out.joinForm = JoinForm.Ack;
    out.reserved = (nibble << 8) | buf[off + 3];
    out.hasHmac = true;
    out.hmacOff = off + 4;
    out.hmacLength = 20;
    out.hmacHi = u32(buf, off + 4);
    out.hmacLo = u32(buf, off + 8);
    return OptionStatus.Ok;
  } else {
    return OptionStatus.BadLength;
  }
  // SYN and SYN/ACK: "Subtype | (3 reserved bits) |B| Address ID".
  out.reserved = nibble >> 1;
  out.backup = (nibble & 1) !== 0;
  out.hasAddrId = true;
  out.addrId = buf[off + 3];
  return OptionStatus.Ok;
}

/** Length of a DSS option for `flags` without its optional checksum (RFC 8684 §3.3 Fig. 9). */
export function dssBaseLength(flags: number): number {
  let n = 4;
  // "A = Data ACK present", "a = Data ACK is 8 octets (if not set, Data ACK is 4 octets)"
  if (flags & DSS_FLAG_A) n += flags & DSS_FLAG_a ? 8 : 4;
  // "M = Data Sequence Number (DSN), Subflow Sequence Number (SSN), Data-Level Length, and Checksum
  // (if negotiated) present"; "m = Data Sequence Number is 8 octets (if not set, DSN is 4 octets)"
  if (flags & DSS_FLAG_M) n += (flags & DSS_FLAG_m ? 8 : 4) + 4 + 2;
  return n;
}

function decodeDss(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  if (len < 4) return OptionStatus.BadLength; // no flags byte (CVE-2017-13040)
  const b3 = buf[off + 3];
  const flags = b3 & 0x1f;
  const base = dssBaseLength(flags);
  const mapping = (flags & DSS_FLAG_M) !== 0;
  // The checksum's presence was negotiated in the handshake, which a decoder of one option cannot see:
  // accept the mapping both with and without its 2 checksum bytes, nothing else.
  if (len !== base && !(mapping && len === base + 2)) return OptionStatus.BadLength;
  out.reserved = (nibble << 3) | (b3 >> 5);
  out.dssFlags = flags;
  out.dataFin = (flags & DSS_FLAG_F) !== 0;
  out.dsn64 = (flags & DSS_FLAG_m) !== 0;
  out.hasMapping = mapping;
  out.dataAck64 = (flags & DSS_FLAG_a) !== 0;
  out.hasDataAck = (flags & DSS_FLAG_A) !== 0;
  let p = off + 4;
  if (out.hasDataAck) {
    if (out.dataAck64) {
      out.dataAckHi = u32(buf, p);
      out.dataAckLo = u32(buf, p + 4);
      p += 8;
    } else {
      out.dataAckLo = u32(buf, p);
      p += 4;
    }
  }
  if (mapping) {
    if (out.dsn64) {
      out.dsnHi = u32(buf, p);
      out.dsnLo = u32(buf, p + 4);
      p += 8;
    } else {
      out.dsnLo = u32(buf, p);
      p += 4;
    }
    out.ssn = u32(buf, p);
    out.dataLevelLength = u16(buf, p + 4);
    if (len === base + 2) {
      out.hasChecksum = true;
      out.checksum = u16(buf, p + 6);
    }
  }
  return OptionStatus.Ok;
}

function readAddr(buf: Uint8Array, off: number, ipVersion: number, out: MptcpOption): number {
  out.ipVersion = ipVersion;
  out.addrOff = off + 4;
  if (ipVersion === 4) {
    out.addr4 = u32(buf, off + 4);
    return off + 8;
  }
  return off + 20;
}

function decodeAddAddrV0(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  out.addAddrVersion = 0;
  if (len < 4) return OptionStatus.BadLength;
  // RFC 6824 §3.4.1: "Subtype | IPVer | Address ID", the address (4 or 16 octets), then
  // "Port (2 octets, optional)": IPv4 8 or 10, IPv6 20 or 22; IPVer is 4 or 6.
  let addrLen: number;
  if (nibble === 4) addrLen = 4;
  else if (nibble === 6) addrLen = 16;
  else return OptionStatus.BadField;
  if (len !== 4 + addrLen && len !== 6 + addrLen) return OptionStatus.BadLength;
  out.hasAddrId = true;
  out.addrId = buf[off + 3];
  const p = readAddr(buf, off, nibble, out);
  if (len === 6 + addrLen) {
    out.hasPort = true;
    out.port = u16(buf, p);
  }
  return OptionStatus.Ok;
}

function decodeAddAddrV1(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  out.addAddrVersion = 1;
  // RFC 8684 §3.4.1 Fig. 12: "Subtype |(rsv)|E| Address ID | Address (IPv4: 4 octets / IPv6: 16 octets)
  // | Port (2 octets, optional) | Truncated HMAC (8 octets, if E=0)". No IPVer field: the length says it.
  const echo = (nibble & 1) !== 0;
  const hmacLen = echo ? 0 : 8;
  let addrLen: number;
  let hasPort: boolean;
  const rest = len - 4 - hmacLen;
  if (rest === 4) { addrLen = 4; hasPort = false; }
  else if (rest === 6) { addrLen = 4; hasPort = true; }
  else if (rest === 16) { addrLen = 16; hasPort = false; }
  else if (rest === 18) { addrLen = 16; hasPort = true; }
  else return OptionStatus.BadLength;
  out.reserved = nibble >> 1;
  out.echo = echo;
  out.hasAddrId = true;
  out.addrId = buf[off + 3];
  let p = readAddr(buf, off, addrLen === 4 ? 4 : 6, out);
  if (hasPort) {
    out.hasPort = true;
    out.port = u16(buf, p);
    p += 2;
  }
  if (!echo) {
    out.hasHmac = true;
    out.hmacOff = p;
    out.hmacLength = 8;
    out.hmacHi = u32(buf, p);
    out.hmacLo = u32(buf, p + 4);
  }
  return OptionStatus.Ok;
}

function decodeRemoveAddr(off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  // RFC 8684 §3.4.2: "Length = 3+n", one octet per Address ID, at least one.
  if (len < 4) return OptionStatus.BadLength;
  out.reserved = nibble;
  out.addrIdCount = len - 3;
  out.addrIdsOff = off + 3;
  return OptionStatus.Ok;
}

function decodePrio(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  // RFC 6824 §3.3.8: "Subtype | |B| AddrID (opt)", so 3 or 4; RFC 8684 §3.3.8 drops the address id (3).
  if (len !== 3 && len !== 4) return OptionStatus.BadLength;
  out.reserved = nibble >> 1;
  out.backup = (nibble & 1) !== 0;
  if (len === 4) {
    out.hasAddrId = true;
    out.addrId = buf[off + 3];
  }
  return OptionStatus.Ok;
}

function decodeFail(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  // RFC 8684 §3.7: "Length = 12", "Subtype | (reserved)", then the 8-octet Data Sequence Number.
  if (len !== 12) return OptionStatus.BadLength;
  out.reserved = (nibble << 8) | buf[off + 3];
  out.dsn64 = true;
  out.dsnHi = u32(buf, off + 4);
  out.dsnLo = u32(buf, off + 8);
  return OptionStatus.Ok;
}

function decodeFastclose(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  // RFC 8684 §3.5: "Length = 12", "Subtype | (reserved)", "Option Receiver's Key (64 bits)".
  if (len !== 12) return OptionStatus.BadLength;
  out.reserved = (nibble << 8) | buf[off + 3];
  out.hasReceiverKey = true;
  out.receiverKeyOff = off + 4;
  out.receiverKeyHi = u32(buf, off + 4);
  out.receiverKeyLo = u32(buf, off + 8);
  return OptionStatus.Ok;
}

function decodeTcpRst(buf: Uint8Array, off: number, len: number, nibble: number, out: MptcpOption): OptionStatus {
  // RFC 8684 §3.6: "Subtype |U|V|W|T| Reason": 4 bytes, nothing optional.
  if (len !== 4) return OptionStatus.BadLength;
  out.rstFlags = nibble;
  out.rstTransient = (nibble & TCPRST_FLAG_T) !== 0;
  out.reason = buf[off + 3];
  return OptionStatus.Ok;
}
