// Crafted IPv4 SYNs (MP_CAPABLE or MP_JOIN) to ask the engine where a subflow would go.
// A trimmed copy of test/helpers/packets.ts: src/ must not import test/.
import { parseIp } from '../wire/addr.js';
import { checksum, transportChecksum } from '../wire/checksum.js';
import { encodeMptcpOption, type MptcpOptionSpec } from '../wire/mptcp-encode.js';
import { JoinForm, MptcpSubtype } from '../wire/mptcp-options.js';

const SYN = 0x02;

function ipv4(a: string): Uint8Array {
  const p = parseIp(a);
  if (!p || p.family !== 4) throw new Error(`not an IPv4 address: ${a}`);
  return p.bytes;
}

/** An IPv4 TCP SYN from src:sport to dst:dport carrying one MPTCP option, with valid checksums. */
export function mptcpSyn(src: string, sport: number, dst: string, dport: number, opt: MptcpOptionSpec): Uint8Array {
  const tmp = new Uint8Array(64);
  let n = encodeMptcpOption(opt, tmp, 0);
  while (n % 4) tmp[n++] = 1; // NOP padding
  const tcpLen = 20 + n;
  const p = new Uint8Array(20 + tcpLen);
  p[0] = 0x45; p[2] = p.length >> 8; p[3] = p.length & 0xff; p[6] = 0x40; p[8] = 64; p[9] = 6;
  p.set(ipv4(src), 12); p.set(ipv4(dst), 16);
  const c = checksum(p, 0, 20); p[10] = c >> 8; p[11] = c & 0xff;
  const dv = new DataView(p.buffer);
  dv.setUint16(20, sport); dv.setUint16(22, dport); dv.setUint32(24, 1000);
  p[32] = (tcpLen / 4) << 4; p[33] = SYN; dv.setUint16(34, 65535);
  p.set(tmp.subarray(0, n), 40);
  dv.setUint16(36, transportChecksum(p, 12, 16, 4, 6, 20, tcpLen));
  return p;
}

export const capableSyn = (): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpCapable, version: 1 });
export const joinSyn = (token: number): MptcpOptionSpec => ({ subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, token, nonce: 0x11223344, addrId: 1 });
