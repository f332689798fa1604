// MPTCP option encoder: specs, their lengths, encoding into a caller's buffer, and the spec of a decoded option
// (RFC 6824 / RFC 8684 §3). Cold path (tests, tools, crafted packets): specs are validated, bad ones throw RangeError.
import {
  DSS_FLAG_A, DSS_FLAG_a, DSS_FLAG_F, DSS_FLAG_M, DSS_FLAG_m, dssBaseLength, JoinForm, MPC_FLAG_A, MPC_FLAG_B, MPC_FLAG_C,
  MPC_FLAG_H, MptcpOption, MptcpSubtype, OPTION_STATUS_LABELS, OptionStatus, TCPOPT_MPTCP, TCPRST_FLAG_T,
} from './mptcp-options.js';
import { keyToBigInt } from './tokens.js';

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
        ...(o.hasSenderKey ? { senderKey: keyToBigInt(o.senderKeyHi, o.senderKeyLo) } : {}),
        ...(o.hasReceiverKey ? { receiverKey: keyToBigInt(o.receiverKeyHi, o.receiverKeyLo) } : {}),
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
        ...(o.hasDataAck ? { dataAck: keyToBigInt(o.dataAckHi, o.dataAckLo) } : {}),
        ...(o.hasMapping
          ? {
              mapping: {
                dsn: keyToBigInt(o.dsnHi, o.dsnLo),
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
        ...(o.hasHmac ? { hmac: keyToBigInt(o.hmacHi, o.hmacLo) } : {}),
      };
    case MptcpSubtype.RemoveAddr:
      if (o.addrIdCount === 0) break;
      return { subtype: MptcpSubtype.RemoveAddr, addrIds: copyBytes(buf, o.addrIdsOff, o.addrIdCount), reserved: o.reserved };
    case MptcpSubtype.MpPrio:
      return { subtype: MptcpSubtype.MpPrio, backup: o.backup, reserved: o.reserved, ...(o.hasAddrId ? { addrId: o.addrId } : {}) };
    case MptcpSubtype.MpFail:
      return { subtype: MptcpSubtype.MpFail, dsn: keyToBigInt(o.dsnHi, o.dsnLo), reserved: o.reserved };
    case MptcpSubtype.MpFastclose:
      return { subtype: MptcpSubtype.MpFastclose, receiverKey: keyToBigInt(o.receiverKeyHi, o.receiverKeyLo), reserved: o.reserved };
    case MptcpSubtype.MpTcpRst:
      return { subtype: MptcpSubtype.MpTcpRst, flags: o.rstFlags, reason: o.reason };
  }
  throw new RangeError(`MPTCP option: no spec for subtype ${o.subtype}`);
}
