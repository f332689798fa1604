// Test packet builder: IPv4/IPv6 TCP packets with MPTCP options and correct checksums, and a checker.
import { parseIp } from '../../src/wire/addr.js';
import { checksum, transportChecksum } from '../../src/wire/checksum.js';
import { encodeMptcpOption, type MptcpOptionSpec } from '../../src/wire/mptcp-encode.js';
import { JoinForm, MptcpSubtype } from '../../src/wire/mptcp-options.js';
import { PacketView, parsePacket, ParseStatus } from '../../src/wire/parse.js';

export const SYN = 0x02, ACK = 0x10, FIN = 0x01, RST = 0x04, PSH = 0x08;

export interface TcpSpec {
  src: string; dst: string; sport: number; dport: number;
  flags: number; seq?: number; ack?: number;
  options?: MptcpOptionSpec[] | Uint8Array;
  payload?: number;
}

export function mptcpOptions(specs: MptcpOptionSpec[]): Uint8Array {
  const tmp = new Uint8Array(64);
  let n = 0;
  for (const s of specs) n += encodeMptcpOption(s, tmp, n);
  while (n % 4) tmp[n++] = 1; // NOP padding
  return tmp.slice(0, n);
}

export function tcp(spec: TcpSpec): Uint8Array {
  const s = parseIp(spec.src)!, d = parseIp(spec.dst)!;
  const opts = spec.options instanceof Uint8Array ? spec.options : mptcpOptions(spec.options ?? []);
  if (opts.length % 4) throw new Error('options must be padded');
  const tcpLen = 20 + opts.length + (spec.payload ?? 0);
  const ipLen = s.family === 4 ? 20 : 40;
  const p = new Uint8Array(ipLen + tcpLen);
  if (s.family === 4) {
    p[0] = 0x45; p[2] = p.length >> 8; p[3] = p.length & 0xff; p[6] = 0x40; p[8] = 64; p[9] = 6;
    p.set(s.bytes, 12); p.set(d.bytes, 16);
    const c = checksum(p, 0, 20); p[10] = c >> 8; p[11] = c & 0xff;
  } else {
    p[0] = 0x60; p[4] = tcpLen >> 8; p[5] = tcpLen & 0xff; p[6] = 6; p[7] = 64;
    p.set(s.bytes, 8); p.set(d.bytes, 24);
  }
  const t = ipLen;
  const dv = new DataView(p.buffer);
  dv.setUint16(t, spec.sport); dv.setUint16(t + 2, spec.dport);
  dv.setUint32(t + 4, spec.seq ?? 1000); dv.setUint32(t + 8, spec.ack ?? 0);
  p[t + 12] = ((20 + opts.length) / 4) << 4; p[t + 13] = spec.flags; dv.setUint16(t + 14, 65535);
  p.set(opts, t + 20);
  for (let i = 0; i < (spec.payload ?? 0); i++) p[t + 20 + opts.length + i] = (i * 7) & 0xff;
  const so = s.family === 4 ? 12 : 8;
  const c = transportChecksum(p, so, so + s.bytes.length, s.bytes.length, 6, t, tcpLen);
  dv.setUint16(t + 16, c);
  return p;
}

/** True when the IPv4 header checksum (if any) and the TCP checksum of pkt[0, len) verify. */
export function checksumsOk(pkt: Uint8Array, len = pkt.length): boolean {
  const v = new PacketView();
  if (parsePacket(pkt, 0, len, v) !== ParseStatus.Ok) return false;
  if (v.family === 4 && checksum(pkt, 0, v.l4Off) !== 0) return false;
  // Summing a region that includes its own correct checksum gives 0 after complement.
  return transportChecksum(pkt, v.srcAddrOff, v.dstAddrOff, v.addrLen, 6, v.l4Off, v.l4Len) === 0;
}

export function view(pkt: Uint8Array, len = pkt.length): PacketView {
  const v = new PacketView();
  const st = parsePacket(pkt, 0, len, v);
  if (st !== ParseStatus.Ok) throw new Error(`test packet does not parse: ${st}`);
  return v;
}

export function endpoints(pkt: Uint8Array, len = pkt.length): { src: string; dst: string } {
  const v = view(pkt, len);
  const f = (o: number) => (v.addrLen === 4 ? Array.from(pkt.subarray(o, o + 4)).join('.') : Buffer.from(pkt.subarray(o, o + 16)).toString('hex'));
  return { src: `${f(v.srcAddrOff)}:${v.srcPort}`, dst: `${f(v.dstAddrOff)}:${v.dstPort}` };
}

export const capSyn = (version: number, key?: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version, senderKey: key });
export const capSynAck = (version: number, serverKey: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version, senderKey: serverKey });
export const capAck = (version: number, clientKey: bigint, serverKey: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version, senderKey: clientKey, receiverKey: serverKey });
export const capData = (clientKey: bigint, serverKey: bigint, dataLength: number): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version: 1, senderKey: clientKey, receiverKey: serverKey, dataLength });
export const joinSyn = (token: number, nonce = 0x11223344, addrId = 1): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, token, nonce, addrId });
export const fastclose = (key: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpFastclose, receiverKey: key });
export const dss = (ack: bigint): MptcpOptionSpec => ({ subtype: MptcpSubtype.Dss, dataAck: ack });
