// Test packets: the packet builder (src/wire/build.ts) under the short names the tests use, and checkers.
import { checksum, transportChecksum } from '../../src/wire/checksum.js';
import { PacketView, parsePacket, ParseStatus, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN } from '../../src/wire/parse.js';

export { buildTcpPacket as tcp, capAck, capData, capSyn, capSynAck, dss, fastclose, joinAck, joinSyn, mptcpOptions, type TcpSpec } from '../../src/wire/build.js';
export const SYN = TCP_SYN, ACK = TCP_ACK, FIN = TCP_FIN, RST = TCP_RST, PSH = TCP_PSH;

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
