// MPTCP option codec (TCP option kind 30): RFC 6824 (v0) and RFC 8684 (v1) §3, all nine subtypes.
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

// ---------------------------------------------------------------------------------------------------------
// Encoding: cold path (tests, rewrites, tools). Specs are validated; bad ones throw RangeError.

export interface MpCapableSpec {
  subtype: MptcpSubtype.MpCapable;
  /** 0 (RFC 6824) or 1..15; lengths 4, 22 and 24 need >= 1. */
  version: number;
  /** Raw flags byte; the booleans below are OR-ed into it. */
  flags?: number;
  checksumRequired?: boolean;
  extensibility?: boolean;
  noJoinToSource?: boolean;
  hmacSha?: boolean;
  senderKey?: bigint;
  /** Needs senderKey. */
  receiverKey?: bigint;
  /** Needs receiverKey (length 22). */
  dataLength?: number;
  /** Needs dataLength (length 24). */
  checksum?: number;
}
export interface MpJoinSpec {
  subtype: MptcpSubtype.MpJoin;
  form: JoinForm.Syn | JoinForm.SynAck | JoinForm.Ack;
  backup?: boolean;
  addrId?: number;
  /** SYN only. */
  token?: number;
  /** SYN and SYN/ACK. */
  nonce?: number;
  /** SYN/ACK: 8 bytes; ACK: 20 bytes. */
  hmac?: Uint8Array;
  /** SYN, SYN/ACK: 3 bits; ACK: 12 bits. */
  reserved?: number;
}
export interface DssSpec {
  subtype: MptcpSubtype.Dss;
  dataFin?: boolean;
  dataAck?: bigint;
  /** Default: dataAck needs more than 32 bits. Settable without dataAck (the 'a' bit is then ignored on the wire). */
  dataAck64?: boolean;
  mapping?: { dsn: bigint; ssn: number; dataLevelLength: number; checksum?: number };
  /** Default: dsn needs more than 32 bits. */
  dsn64?: boolean;
  /** 7 bits: 4 in the subtype byte, then 3 above F. */
  reserved?: number;
}
export interface AddAddrSpec {
  subtype: MptcpSubtype.AddAddr;
  /** 0: RFC 6824 layout (IPVer nibble); 1 (default): RFC 8684 (E flag, HMAC). */
  version?: 0 | 1;
  addrId: number;
  /** 4 or 16 bytes. */
  address: Uint8Array;
  port?: number;
  /** v1 only; when false an hmac is required. */
  echo?: boolean;
  /** v1, when not echo. */
  hmac?: bigint;
  /** v1: 3 bits. */
  reserved?: number;
}
export interface RemoveAddrSpec {
  subtype: MptcpSubtype.RemoveAddr;
  addrIds: ArrayLike<number>;
  /** 4 bits. */
  reserved?: number;
}
export interface MpPrioSpec {
  subtype: MptcpSubtype.MpPrio;
  backup?: boolean;
  /** Present: length 4 (RFC 6824 form). */
  addrId?: number;
  /** 3 bits. */
  reserved?: number;
}
export interface MpFailSpec {
  subtype: MptcpSubtype.MpFail;
  dsn: bigint;
  /** 12 bits. */
  reserved?: number;
}
export interface MpFastcloseSpec {
  subtype: MptcpSubtype.MpFastclose;
  receiverKey: bigint;
  /** 12 bits. */
  reserved?: number;
}
export interface MpTcpRstSpec {
  subtype: MptcpSubtype.MpTcpRst;
  /** U V W T nibble; `transient` is OR-ed in as T. */
  flags?: number;
  transient?: boolean;
  reason: number;
}
export type MptcpOptionSpec =
  | MpCapableSpec
  | MpJoinSpec
  | DssSpec
  | AddAddrSpec
  | RemoveAddrSpec
  | MpPrioSpec
  | MpFailSpec
  | MpFastcloseSpec
  | MpTcpRstSpec;

const U64_MAX = (1n << 64n) - 1n;

function checkUint(name: string, v: number, max: number): number {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`MPTCP option: ${name} ${v} is not an integer in 0..${max}`);
  return v;
}
function checkU64(name: string, v: bigint, max: bigint = U64_MAX): bigint {
  if (typeof v !== 'bigint' || v < 0n || v > max) throw new RangeError(`MPTCP option: ${name} is not a bigint in 0..${max}`);
  return v;
}
function put16(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 8;
  b[i + 1] = v & 0xff;
}
function put32(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 24;
  b[i + 1] = (v >>> 16) & 0xff;
  b[i + 2] = (v >>> 8) & 0xff;
  b[i + 3] = v & 0xff;
}
function put64(b: Uint8Array, i: number, v: bigint): void {
  put32(b, i, Number(v >> 32n));
  put32(b, i + 4, Number(v & 0xffffffffn));
}
function putBytes(b: Uint8Array, i: number, src: Uint8Array, n: number, name: string): void {
  if (!(src instanceof Uint8Array) || src.length !== n) throw new RangeError(`MPTCP option: ${name} must be ${n} bytes`);
  b.set(src, i);
}

/** Bytes the option described by `spec` takes; throws RangeError if it is not encodable. */
export function mptcpOptionLength(spec: MptcpOptionSpec): number {
  switch (spec.subtype) {
    case MptcpSubtype.MpCapable: {
      const v = checkUint('version', spec.version, 15);
      let n = 4;
      if (spec.senderKey !== undefined) n = 12;
      if (spec.receiverKey !== undefined) {
        if (n !== 12) throw new RangeError('MPTCP option: MP_CAPABLE receiverKey needs senderKey');
        n = 20;
      }
      if (spec.dataLength !== undefined) {
        if (n !== 20) throw new RangeError('MPTCP option: MP_CAPABLE dataLength needs both keys');
        n = 22;
      }
      if (spec.checksum !== undefined) {
        if (n !== 22) throw new RangeError('MPTCP option: MP_CAPABLE checksum needs dataLength');
        n = 24;
      }
      if (v === 0 && n !== 12 && n !== 20) throw new RangeError(`MPTCP option: MP_CAPABLE v0 has no length-${n} form`);
      return n;
    }
    case MptcpSubtype.MpJoin:
      if (spec.form === JoinForm.Syn) return 12;
      if (spec.form === JoinForm.SynAck) return 16;
      if (spec.form === JoinForm.Ack) return 24;
      throw new RangeError('MPTCP option: MP_JOIN form must be Syn, SynAck or Ack');
    case MptcpSubtype.Dss: {
      const flags = dssSpecFlags(spec);
      return dssBaseLength(flags) + (spec.mapping?.checksum !== undefined ? 2 : 0);
    }
    case MptcpSubtype.AddAddr: {
      const a = spec.address;
      if (!(a instanceof Uint8Array) || (a.length !== 4 && a.length !== 16)) {
        throw new RangeError('MPTCP option: ADD_ADDR address must be 4 or 16 bytes');
      }
      let n = 4 + a.length + (spec.port !== undefined ? 2 : 0);
      if ((spec.version ?? 1) === 1) {
        if (!spec.echo) {
          if (spec.hmac === undefined) throw new RangeError('MPTCP option: ADD_ADDR v1 without echo needs an hmac');
          n += 8;
        } else if (spec.hmac !== undefined) {
          throw new RangeError('MPTCP option: ADD_ADDR echo carries no hmac');
        }
      } else if (spec.echo || spec.hmac !== undefined || spec.reserved) {
        throw new RangeError('MPTCP option: ADD_ADDR v0 has no echo, hmac or reserved bits');
      }
      return n;
    }
    case MptcpSubtype.RemoveAddr: {
      const n = spec.addrIds.length;
      if (n < 1 || n > 252) throw new RangeError('MPTCP option: REMOVE_ADDR needs 1..252 address ids');
      return 3 + n;
    }
    case MptcpSubtype.MpPrio:
      return spec.addrId !== undefined ? 4 : 3;
    case MptcpSubtype.MpFail:
    case MptcpSubtype.MpFastclose:
      return 12;
    case MptcpSubtype.MpTcpRst:
      return 4;
    default:
      throw new RangeError(`MPTCP option: cannot encode subtype ${(spec as { subtype: unknown }).subtype}`);
  }
}

function dssSpecFlags(spec: DssSpec): number {
  let flags = 0;
  if (spec.dataFin) flags |= DSS_FLAG_F;
  if (spec.dataAck !== undefined) {
    checkU64('dataAck', spec.dataAck);
    flags |= DSS_FLAG_A;
    const wide = spec.dataAck64 ?? spec.dataAck > 0xffffffffn;
    if (!wide && spec.dataAck > 0xffffffffn) throw new RangeError('MPTCP option: 32-bit dataAck too large');
    if (wide) flags |= DSS_FLAG_a;
  } else if (spec.dataAck64) {
    flags |= DSS_FLAG_a;
  }
  if (spec.mapping !== undefined) {
    checkU64('dsn', spec.mapping.dsn);
    flags |= DSS_FLAG_M;
    const wide = spec.dsn64 ?? spec.mapping.dsn > 0xffffffffn;
    if (!wide && spec.mapping.dsn > 0xffffffffn) throw new RangeError('MPTCP option: 32-bit dsn too large');
    if (wide) flags |= DSS_FLAG_m;
  } else if (spec.dsn64) {
    flags |= DSS_FLAG_m;
  }
  return flags;
}

const encodeScratch = new Uint8Array(256);

/**
 * Writes the option at out[outOff] (kind and length included) and returns the bytes written.
 * Throws RangeError on a spec that is not encodable or a buffer too small. Cold path.
 */
export function encodeMptcpOption(spec: MptcpOptionSpec, out: Uint8Array, outOff: number): number {
  const len = mptcpOptionLength(spec);
  if (!Number.isInteger(outOff) || outOff < 0 || outOff + len > out.length) {
    throw new RangeError(`MPTCP option: ${len} bytes do not fit at offset ${outOff} of a ${out.length}-byte buffer`);
  }
  // Built in a scratch buffer so that a spec rejected halfway leaves the caller's bytes untouched.
  const buf = encodeScratch;
  const off = 0;
  buf.fill(0, 0, len);
  buf[off] = TCPOPT_MPTCP;
  buf[off + 1] = len;
  const st = spec.subtype << 4;
  switch (spec.subtype) {
    case MptcpSubtype.MpCapable: {
      let flags = checkUint('flags', spec.flags ?? 0, 0xff);
      if (spec.checksumRequired) flags |= MPC_FLAG_A;
      if (spec.extensibility) flags |= MPC_FLAG_B;
      if (spec.noJoinToSource) flags |= MPC_FLAG_C;
      if (spec.hmacSha) flags |= MPC_FLAG_H;
      buf[off + 2] = st | spec.version;
      buf[off + 3] = flags;
      if (len >= 12) put64(buf, off + 4, checkU64('senderKey', spec.senderKey!));
      if (len >= 20) put64(buf, off + 12, checkU64('receiverKey', spec.receiverKey!));
      if (len >= 22) put16(buf, off + 20, checkUint('dataLength', spec.dataLength!, 0xffff));
      if (len === 24) put16(buf, off + 22, checkUint('checksum', spec.checksum!, 0xffff));
      break;
    }
    case MptcpSubtype.MpJoin: {
      if (spec.form === JoinForm.Ack) {
        const r = checkUint('reserved', spec.reserved ?? 0, 0xfff);
        if (spec.backup || spec.addrId !== undefined || spec.token !== undefined || spec.nonce !== undefined) {
          throw new RangeError('MPTCP option: MP_JOIN ACK has no backup flag, address id, token or nonce');
        }
        buf[off + 2] = st | (r >> 8);
        buf[off + 3] = r & 0xff;
        putBytes(buf, off + 4, spec.hmac ?? new Uint8Array(0), 20, 'MP_JOIN ACK hmac');
        break;
      }
      const r = checkUint('reserved', spec.reserved ?? 0, 7);
      buf[off + 2] = st | (r << 1) | (spec.backup ? 1 : 0);
      buf[off + 3] = checkUint('addrId', spec.addrId ?? 0, 0xff);
      if (spec.form === JoinForm.Syn) {
        if (spec.hmac !== undefined) throw new RangeError('MPTCP option: MP_JOIN SYN has no hmac');
        put32(buf, off + 4, checkUint('token', spec.token ?? 0, 0xffffffff));
        put32(buf, off + 8, checkUint('nonce', spec.nonce ?? 0, 0xffffffff));
      } else {
        if (spec.token !== undefined) throw new RangeError('MPTCP option: MP_JOIN SYN/ACK has no token');
        putBytes(buf, off + 4, spec.hmac ?? new Uint8Array(0), 8, 'MP_JOIN SYN/ACK hmac');
        put32(buf, off + 12, checkUint('nonce', spec.nonce ?? 0, 0xffffffff));
      }
      break;
    }
    case MptcpSubtype.Dss: {
      const flags = dssSpecFlags(spec);
      const r = checkUint('reserved', spec.reserved ?? 0, 0x7f);
      buf[off + 2] = st | (r >> 3);
      buf[off + 3] = ((r & 7) << 5) | flags;
      let p = off + 4;
      if (spec.dataAck !== undefined) {
        if (flags & DSS_FLAG_a) { put64(buf, p, spec.dataAck); p += 8; }
        else { put32(buf, p, Number(spec.dataAck)); p += 4; }
      }
      const m = spec.mapping;
      if (m !== undefined) {
        if (flags & DSS_FLAG_m) { put64(buf, p, m.dsn); p += 8; }
        else { put32(buf, p, Number(m.dsn)); p += 4; }
        put32(buf, p, checkUint('ssn', m.ssn, 0xffffffff));
        put16(buf, p + 4, checkUint('dataLevelLength', m.dataLevelLength, 0xffff));
        if (m.checksum !== undefined) put16(buf, p + 6, checkUint('checksum', m.checksum, 0xffff));
      }
      break;
    }
    case MptcpSubtype.AddAddr: {
      const a = spec.address;
      let nibble: number;
      if ((spec.version ?? 1) === 0) nibble = a.length === 4 ? 4 : 6;
      else nibble = (checkUint('reserved', spec.reserved ?? 0, 7) << 1) | (spec.echo ? 1 : 0);
      buf[off + 2] = st | nibble;
      buf[off + 3] = checkUint('addrId', spec.addrId, 0xff);
      buf.set(a, off + 4);
      let p = off + 4 + a.length;
      if (spec.port !== undefined) { put16(buf, p, checkUint('port', spec.port, 0xffff)); p += 2; }
      if (spec.hmac !== undefined) put64(buf, p, checkU64('hmac', spec.hmac));
      break;
    }
    case MptcpSubtype.RemoveAddr: {
      buf[off + 2] = st | checkUint('reserved', spec.reserved ?? 0, 0xf);
      for (let i = 0; i < spec.addrIds.length; i++) buf[off + 3 + i] = checkUint('addrId', spec.addrIds[i], 0xff);
      break;
    }
    case MptcpSubtype.MpPrio: {
      buf[off + 2] = st | (checkUint('reserved', spec.reserved ?? 0, 7) << 1) | (spec.backup ? 1 : 0);
      if (spec.addrId !== undefined) buf[off + 3] = checkUint('addrId', spec.addrId, 0xff);
      break;
    }
    case MptcpSubtype.MpFail:
    case MptcpSubtype.MpFastclose: {
      const r = checkUint('reserved', spec.reserved ?? 0, 0xfff);
      buf[off + 2] = st | (r >> 8);
      buf[off + 3] = r & 0xff;
      put64(buf, off + 4, spec.subtype === MptcpSubtype.MpFail ? checkU64('dsn', spec.dsn) : checkU64('receiverKey', spec.receiverKey));
      break;
    }
    case MptcpSubtype.MpTcpRst: {
      const f = checkUint('flags', spec.flags ?? 0, 0xf) | (spec.transient ? TCPRST_FLAG_T : 0);
      buf[off + 2] = st | f;
      buf[off + 3] = checkUint('reason', spec.reason, 0xff);
      break;
    }
  }
  out.set(buf.subarray(0, len), outOff);
  return len;
}

/** A plain Uint8Array copy (Buffer#slice would share memory with the packet). */
function copyBytes(buf: Uint8Array, start: number, n: number): Uint8Array {
  return new Uint8Array(buf.subarray(start, start + n));
}

function u64(hi: number, lo: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/**
 * The spec that re-encodes a successfully decoded option byte for byte (HMAC and address bytes are
 * copied from `buf`, which must be the buffer it was decoded from). Throws RangeError for a subtype that
 * cannot be encoded (unknown, or a record that did not decode Ok). Cold path.
 */
export function mptcpOptionToSpec(o: MptcpOption, buf: Uint8Array): MptcpOptionSpec {
  if (o.status !== OptionStatus.Ok) throw new RangeError(`MPTCP option: no spec for a ${OPTION_STATUS_LABELS[o.status]} option`);
  switch (o.subtype) {
    case MptcpSubtype.MpCapable:
      return {
        subtype: MptcpSubtype.MpCapable,
        version: o.version,
        flags: o.flags,
        ...(o.hasSenderKey ? { senderKey: u64(o.senderKeyHi, o.senderKeyLo) } : {}),
        ...(o.hasReceiverKey ? { receiverKey: u64(o.receiverKeyHi, o.receiverKeyLo) } : {}),
        ...(o.hasDataLength ? { dataLength: o.dataLength } : {}),
        ...(o.hasChecksum ? { checksum: o.checksum } : {}),
      };
    case MptcpSubtype.MpJoin:
      if (o.joinForm === JoinForm.Syn) {
        return { subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, backup: o.backup, addrId: o.addrId, token: o.token, nonce: o.nonce, reserved: o.reserved };
      }
      if (o.joinForm === JoinForm.SynAck) {
        return {
          subtype: MptcpSubtype.MpJoin, form: JoinForm.SynAck, backup: o.backup, addrId: o.addrId,
          hmac: copyBytes(buf, o.hmacOff, 8), nonce: o.nonce, reserved: o.reserved,
        };
      }
      if (o.joinForm === JoinForm.Ack) {
        return { subtype: MptcpSubtype.MpJoin, form: JoinForm.Ack, hmac: copyBytes(buf, o.hmacOff, 20), reserved: o.reserved };
      }
      break;
    case MptcpSubtype.Dss:
      return {
        subtype: MptcpSubtype.Dss,
        dataFin: o.dataFin,
        dataAck64: o.dataAck64,
        dsn64: o.dsn64,
        reserved: o.reserved,
        ...(o.hasDataAck ? { dataAck: u64(o.dataAckHi, o.dataAckLo) } : {}),
        ...(o.hasMapping
          ? {
              mapping: {
                dsn: u64(o.dsnHi, o.dsnLo),
                ssn: o.ssn,
                dataLevelLength: o.dataLevelLength,
                ...(o.hasChecksum ? { checksum: o.checksum } : {}),
              },
            }
          : {}),
      };
    case MptcpSubtype.AddAddr:
      if (o.ipVersion === 0) break;
      return {
        subtype: MptcpSubtype.AddAddr,
        version: o.addAddrVersion === 0 ? 0 : 1,
        addrId: o.addrId,
        address: copyBytes(buf, o.addrOff, o.ipVersion === 4 ? 4 : 16),
        ...(o.hasPort ? { port: o.port } : {}),
        ...(o.addAddrVersion === 0 ? {} : { echo: o.echo, reserved: o.reserved }),
        ...(o.hasHmac ? { hmac: u64(o.hmacHi, o.hmacLo) } : {}),
      };
    case MptcpSubtype.RemoveAddr:
      if (o.addrIdCount === 0) break;
      return { subtype: MptcpSubtype.RemoveAddr, addrIds: copyBytes(buf, o.addrIdsOff, o.addrIdCount), reserved: o.reserved };
    case MptcpSubtype.MpPrio:
      return { subtype: MptcpSubtype.MpPrio, backup: o.backup, reserved: o.reserved, ...(o.hasAddrId ? { addrId: o.addrId } : {}) };
    case MptcpSubtype.MpFail:
      return { subtype: MptcpSubtype.MpFail, dsn: u64(o.dsnHi, o.dsnLo), reserved: o.reserved };
    case MptcpSubtype.MpFastclose:
      return { subtype: MptcpSubtype.MpFastclose, receiverKey: u64(o.receiverKeyHi, o.receiverKeyLo), reserved: o.reserved };
    case MptcpSubtype.MpTcpRst:
      return { subtype: MptcpSubtype.MpTcpRst, flags: o.rstFlags, reason: o.reason };
  }
  throw new RangeError(`MPTCP option: no spec for subtype ${o.subtype}`);
}

// ---------------------------------------------------------------------------------------------------------
// Debug text, close to tcpdump's print-mptcp.c output. Cold path: allocates strings.

function hex(n: number, digits: number): string {
  return n.toString(16).padStart(digits, '0');
}
function hex64(hi: number, lo: number): string {
  return '0x' + hex(hi, 8) + hex(lo, 8);
}
function seqText(is64: boolean, hi: number, lo: number): string {
  return is64 ? u64(hi, lo).toString() : String(lo);
}
function ipText(o: MptcpOption, buf: Uint8Array | undefined): string {
  if (o.ipVersion === 4) return `${o.addr4 >>> 24}.${(o.addr4 >>> 16) & 0xff}.${(o.addr4 >>> 8) & 0xff}.${o.addr4 & 0xff}`;
  if (buf === undefined) return `ipv6@${o.addrOff}`;
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(((buf[o.addrOff + i] << 8) | buf[o.addrOff + i + 1]).toString(16));
  return parts.join(':');
}

/**
 * Short human text for a decoded option, e.g. "capable v1 flags [H] {0x29a6c86981ad933c}" or
 * "join id 0 token 0xe47f0142 nonce 0x1b665a18". Pass the buffer it was decoded from to print the
 * MP_JOIN ACK's full HMAC, REMOVE_ADDR ids and IPv6 addresses.
 */
export function describeMptcpOption(o: MptcpOption, buf?: Uint8Array): string {
  if (o.status === OptionStatus.UnknownSubtype) return `mptcp subtype ${o.subtype} len ${o.length}`;
  if (o.status !== OptionStatus.Ok) {
    const name = o.subtype >= 0 && o.subtype < MPTCP_SUBTYPE_LABELS.length ? MPTCP_SUBTYPE_LABELS[o.subtype] : 'mptcp';
    return `${name} len ${o.length} [${OPTION_STATUS_LABELS[o.status]}]`;
  }
  switch (o.subtype) {
    case MptcpSubtype.MpCapable: {
      let f = '';
      if (o.checksumRequired) f += 'A';
      if (o.extensibility) f += 'B';
      if (o.noJoinToSource) f += 'C';
      if (o.hmacSha) f += 'H';
      const parts: string[] = [];
      if (o.hasSenderKey) parts.push(hex64(o.senderKeyHi, o.senderKeyLo));
      if (o.hasReceiverKey) parts.push(hex64(o.receiverKeyHi, o.receiverKeyLo));
      if (o.hasDataLength) parts.push(`data_len=${o.dataLength}`);
      if (o.hasChecksum) parts.push(`csum=0x${o.checksum.toString(16)}`);
      return `capable v${o.version} flags [${f || 'none'}]` + (parts.length ? ` {${parts.join(',')}}` : '');
    }
    case MptcpSubtype.MpJoin: {
      const b = o.backup ? ' backup' : '';
      if (o.joinForm === JoinForm.Syn) return `join${b} id ${o.addrId} token 0x${hex(o.token, 8)} nonce 0x${hex(o.nonce, 8)}`;
      if (o.joinForm === JoinForm.SynAck) return `join${b} id ${o.addrId} hmac ${hex64(o.hmacHi, o.hmacLo)} nonce 0x${hex(o.nonce, 8)}`;
      if (buf === undefined) return `join hmac ${hex64(o.hmacHi, o.hmacLo)}...`;
      let h = '0x';
      for (let i = 0; i < 20; i++) h += hex(buf[o.hmacOff + i], 2);
      return `join hmac ${h}`;
    }
    case MptcpSubtype.Dss: {
      let s = 'dss';
      if (o.dataFin) s += ' fin';
      if (o.hasDataAck) s += ' ack ' + seqText(o.dataAck64, o.dataAckHi, o.dataAckLo);
      if (o.hasMapping) {
        s += ` seq ${seqText(o.dsn64, o.dsnHi, o.dsnLo)} subseq ${o.ssn} len ${o.dataLevelLength}`;
        if (o.hasChecksum) s += ` csum 0x${o.checksum.toString(16)}`;
      }
      return s;
    }
    case MptcpSubtype.AddAddr: {
      const kind = o.addAddrVersion === 0 ? `v0-ip${o.ipVersion}` : o.echo ? 'v1-echo' : 'v1';
      let s = `add-addr ${kind} id ${o.addrId} ${ipText(o, buf)}`;
      if (o.hasPort) s += ` port ${o.port}`;
      if (o.hasHmac) s += ` hmac ${hex64(o.hmacHi, o.hmacLo)}`;
      return s;
    }
    case MptcpSubtype.RemoveAddr: {
      if (buf === undefined) return `rem-addr ${o.addrIdCount} ids`;
      let s = 'rem-addr';
      for (let i = 0; i < o.addrIdCount; i++) s += ` id ${buf[o.addrIdsOff + i]}`;
      return s;
    }
    case MptcpSubtype.MpPrio:
      return `mp-prio ${o.backup ? 'backup' : 'non-backup'}` + (o.hasAddrId ? ` id ${o.addrId}` : '');
    case MptcpSubtype.MpFail:
      return `mp-fail seq ${u64(o.dsnHi, o.dsnLo)}`;
    case MptcpSubtype.MpFastclose:
      return `fast-close key ${hex64(o.receiverKeyHi, o.receiverKeyLo)}`;
    case MptcpSubtype.MpTcpRst: {
      let f = '';
      if (o.rstFlags & 8) f += 'U';
      if (o.rstFlags & 4) f += 'V';
      if (o.rstFlags & 2) f += 'W';
      if (o.rstFlags & 1) f += 'T';
      const r = o.reason < TCPRST_REASON_LABELS.length ? TCPRST_REASON_LABELS[o.reason] : String(o.reason);
      return `tcprst flags [${f || 'none'}] reason ${r}`;
    }
    default:
      return `mptcp subtype ${o.subtype} len ${o.length}`;
  }
}
