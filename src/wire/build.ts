// Packet builder: IPv4/IPv6 TCP packets with MPTCP options and correct checksums, for the tests, the demo (which asks
// the engine where crafted SYNs go) and tools. Cold path: allocates, and throws RangeError on a spec it cannot build.
import { parseIp } from './addr.js';
import { checksum, transportChecksum } from './checksum.js';
import { encodeMptcpOption, type MptcpOptionSpec } from './mptcp-encode.js';
import { JoinForm, MptcpSubtype } from './mptcp-options.js';
import { IPPROTO_TCP } from './parse.js';

/** RFC 9293: "The TCP header (even one including options) is an integer multiple of 32 bits", at most 60 bytes. */
const MAX_TCP_OPTION_BYTES = 40;

export interface TcpSpec {
  src: string; dst: string; sport: number; dport: number;
  /** TCP flags byte (TCP_SYN | TCP_ACK ...). */
  flags: number;
  /** Default 1000. */
  seq?: number;
  /** Default 0. */
  ack?: number;
  /** MPTCP options (NOP-padded to 4 bytes), or raw option bytes already padded. */
  options?: MptcpOptionSpec[] | Uint8Array;
  /** Payload bytes (a fixed pattern). Default 0. */
  payload?: number;
}

/** The encoded options, NOP-padded to a multiple of 4 bytes. */
export function mptcpOptions(specs: readonly MptcpOptionSpec[]): Uint8Array {
  const tmp = new Uint8Array(64);
  let n = 0;
  for (const s of specs) n += encodeMptcpOption(s, tmp, n);
  while (n % 4) tmp[n++] = 1; // NOP
  return tmp.slice(0, n);
}

function address(text: string): { family: 4 | 6; bytes: Uint8Array } {
  const a = parseIp(text);
  if (a === null) throw new RangeError(`packet builder: not an IP address: ${JSON.stringify(text)}`);
  return a;
}

/** One IP packet (IPv4 or IPv6, by the addresses) carrying a TCP segment, with valid IP and TCP checksums. */
export function buildTcpPacket(spec: TcpSpec): Uint8Array {
  const s = address(spec.src), d = address(spec.dst);
  if (s.family !== d.family) throw new RangeError(`packet builder: ${spec.src} and ${spec.dst} are not of one family`);
  const opts = spec.options instanceof Uint8Array ? spec.options : mptcpOptions(spec.options ?? []);
  if (opts.length % 4 !== 0 || opts.length > MAX_TCP_OPTION_BYTES) throw new RangeError(`packet builder: ${opts.length} option bytes (a multiple of 4, at most 40)`);
  const payload = spec.payload ?? 0;
  const tcpLen = 20 + opts.length + payload;
  const ipLen = s.family === 4 ? 20 : 40;
  const p = new Uint8Array(ipLen + tcpLen);
  if (s.family === 4) {
    p[0] = 0x45; p[2] = p.length >> 8; p[3] = p.length & 0xff; p[6] = 0x40; p[8] = 64; p[9] = IPPROTO_TCP;
    p.set(s.bytes, 12); p.set(d.bytes, 16);
    const c = checksum(p, 0, 20); p[10] = c >> 8; p[11] = c & 0xff;
  } else {
    p[0] = 0x60; p[4] = tcpLen >> 8; p[5] = tcpLen & 0xff; p[6] = IPPROTO_TCP; p[7] = 64;
    p.set(s.bytes, 8); p.set(d.bytes, 24);
  }
  const t = ipLen;
  const dv = new DataView(p.buffer);
  dv.setUint16(t, spec.sport); dv.setUint16(t + 2, spec.dport);
  dv.setUint32(t + 4, spec.seq ?? 1000); dv.setUint32(t + 8, spec.ack ?? 0);
  p[t + 12] = ((20 + opts.length) / 4) << 4; p[t + 13] = spec.flags; dv.setUint16(t + 14, 65535);
  p.set(opts, t + 20);
  for (let i = 0; i < payload; i++) p[t + 20 + opts.length + i] = (i * 7) & 0xff;
  const so = s.family === 4 ? 12 : 8;
  dv.setUint16(t + 16, transportChecksum(p, so, so + s.bytes.length, s.bytes.length, IPPROTO_TCP, t, tcpLen));
  return p;
}

// Option specs for the handshake forms (RFC 8684 §3.1, §3.2, §3.5; RFC 6824 for v0).

/** SYN MP_CAPABLE: v0 carries the client's key (length 12), v1 none (length 4). */
export const capSyn = (version: number, key?: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version, senderKey: key });
/** SYN/ACK MP_CAPABLE: the server's key. */
export const capSynAck = (version: number, serverKey: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version, senderKey: serverKey });
/** Third ACK MP_CAPABLE: both keys. */
export const capAck = (version: number, clientKey: bigint, serverKey: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version, senderKey: clientKey, receiverKey: serverKey });
/** v1 first data MP_CAPABLE: both keys and the data-level length. */
export const capData = (clientKey: bigint, serverKey: bigint, dataLength: number): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version: 1, senderKey: clientKey, receiverKey: serverKey, dataLength });
/** MP_JOIN SYN: the receiver's token. */
export const joinSyn = (token: number, nonce = 0x11223344, addrId = 1): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, token, nonce, addrId });
/** MP_JOIN third ACK: the sender's truncated-free HMAC (20 bytes). */
export const joinAck = (hmac = new Uint8Array(20)): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpJoin, form: JoinForm.Ack, hmac });
/** MP_FASTCLOSE: the receiver's key. */
export const fastclose = (key: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpFastclose, receiverKey: key });
/** DSS with a 4- or 8-byte data ACK. */
export const dss = (ack: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.Dss, dataAck: ack });
