// Stage 3 of the packet path: in-place edits. NAT in both directions with incremental checksums (RFC 1624),
// MP_CAPABLE stripping for token collisions, and RST answers. Hot path: no allocation.
import { applyDelta, applyDeltaPartial, checksum, replaceDelta, transportChecksum } from '../wire/checksum.js';
import { TCP_ACK, TCP_RST, tcpSeq, type PacketView } from '../wire/parse.js';
import type { Services } from './services.js';

/** Copies n bytes without creating a subarray view (no allocation on the hot path). */
function copyBytes(src: Uint8Array, so: number, dst: Uint8Array, d: number, n: number): void {
  for (let i = 0; i < n; i++) dst[d + i] = src[so + i];
}

/** Inbound NAT: destination VIP:port -> backend b's address:port. Assumes the packet is addressed to b's VIP. */
export function natToBackend(buf: Uint8Array, v: PacketView, s: Services, b: number): void {
  copyBytes(s.beAddrBytes, b << 4, buf, v.dstAddrOff, v.addrLen);
  const port = s.bePort[b];
  buf[v.l4Off + 2] = port >>> 8;
  buf[v.l4Off + 3] = port & 0xff;
  if (v.family === 4) applyDelta(buf, v.ipOff + 10, s.beDeltaIpIn[b]);
  // A partial checksum covers only the pseudo-header (addresses); the port is summed later by the device.
  if (v.partialCsum) applyDeltaPartial(buf, v.l4Off + 16, s.beDeltaIpIn[b]);
  else applyDelta(buf, v.l4Off + 16, s.beDeltaTcpIn[b]);
}

/** Outbound NAT: source backend b's address:port -> its VIP's address:port. */
export function natToClient(buf: Uint8Array, v: PacketView, s: Services, b: number): void {
  const vip = s.beVip[b];
  copyBytes(s.vipAddrBytes, vip << 4, buf, v.srcAddrOff, v.addrLen);
  const port = s.vipPort[vip];
  buf[v.l4Off] = port >>> 8;
  buf[v.l4Off + 1] = port & 0xff;
  if (v.family === 4) applyDelta(buf, v.ipOff + 10, s.beDeltaIpOut[b]);
  if (v.partialCsum) applyDeltaPartial(buf, v.l4Off + 16, s.beDeltaIpOut[b]);
  else applyDelta(buf, v.l4Off + 16, s.beDeltaTcpOut[b]);
}

/**
 * General NAT of one endpoint (address at addrOff, port at portOff) to newAddr[newOff..]:newPort, deltas computed
 * from the packet itself. Used where no precomputed pair applies (a join that arrived on another VIP).
 */
export function natEndpoint(
  buf: Uint8Array, v: PacketView, addrOff: number, portOff: number, newAddr: Uint8Array, newOff: number, newPort: number,
): void {
  const n = v.addrLen;
  const ipDelta = replaceDelta(buf, addrOff, newAddr, newOff, n);
  const oldPort = (buf[portOff] << 8) | buf[portOff + 1];
  let tcpDelta = ipDelta + (~oldPort & 0xffff) + newPort;
  tcpDelta = (tcpDelta & 0xffff) + (tcpDelta >>> 16);
  tcpDelta = (tcpDelta & 0xffff) + (tcpDelta >>> 16);
  copyBytes(newAddr, newOff, buf, addrOff, n);
  buf[portOff] = newPort >>> 8;
  buf[portOff + 1] = newPort & 0xff;
  if (v.family === 4) applyDelta(buf, v.ipOff + 10, ipDelta);
  if (v.partialCsum) applyDeltaPartial(buf, v.l4Off + 16, ipDelta);
  else applyDelta(buf, v.l4Off + 16, tcpDelta);
}

const stripScratch = new Uint8Array(64);

/**
 * Replaces the TCP option at optOff (length optLen) with NOPs and patches the TCP checksum, so that the
 * receiver sees no such option. RFC 8684 section 3.1: "If the SYN/ACK ... does not include an MP_CAPABLE
 * option, the initiator MUST fall back to regular TCP."
 */
export function stripTcpOption(buf: Uint8Array, v: PacketView, optOff: number, optLen: number): void {
  // Checksum words are aligned to the TCP header start; cover whole words around the option.
  const start = v.l4Off + ((optOff - v.l4Off) & ~1);
  const end = v.l4Off + ((optOff + optLen - v.l4Off + 1) & ~1);
  const n = end - start;
  for (let i = 0; i < n; i++) stripScratch[i] = buf[start + i];
  buf.fill(1, optOff, optOff + optLen);
  // A partial checksum does not cover the TCP header yet: nothing to patch.
  if (!v.partialCsum) applyDelta(buf, v.l4Off + 16, replaceDelta(stripScratch, 0, buf, start, n));
}

/**
 * Rewrites the SYN in `v` into the RST that answers it, addressed back to the sender, with an MP_TCPRST option
 * (reason 1, "MPTCP-specific error"). Returns the new IP packet length. RFC 9293 section 3.10.7.1: "If the
 * incoming segment has no ACK field, the reset has sequence number zero and the ACK field is set to the sum of
 * the sequence number and segment length of the incoming segment."
 */
export function writeResetForSyn(buf: Uint8Array, v: PacketView): number {
  const ackNum = (tcpSeq(buf, v) + 1 + v.payloadLen) >>> 0;
  const sport = v.dstPort, dport = v.srcPort;
  const n = v.addrLen;
  // Swap addresses through a scratch copy (the regions do not overlap, but both are rewritten).
  for (let i = 0; i < n; i++) stripScratch[i] = buf[v.srcAddrOff + i];
  const o = v.ipOff;
  const tcpLen = 24;
  let t: number;
  if (v.family === 4) {
    buf.copyWithin(o + 12, v.dstAddrOff, v.dstAddrOff + 4); // new source = old destination
    for (let i = 0; i < 4; i++) buf[o + 16 + i] = stripScratch[i];
    buf[o] = 0x45; buf[o + 1] = 0;
    const total = 20 + tcpLen;
    buf[o + 2] = total >>> 8; buf[o + 3] = total & 0xff;
    buf[o + 4] = 0; buf[o + 5] = 0; buf[o + 6] = 0x40; buf[o + 7] = 0; // DF
    buf[o + 8] = 64; buf[o + 9] = 6; buf[o + 10] = 0; buf[o + 11] = 0;
    const c = checksum(buf, o, 20);
    buf[o + 10] = c >>> 8; buf[o + 11] = c & 0xff;
    t = o + 20;
  } else {
    buf.copyWithin(o + 8, v.dstAddrOff, v.dstAddrOff + 16);
    for (let i = 0; i < 16; i++) buf[o + 24 + i] = stripScratch[i];
    buf[o] = 0x60; buf[o + 1] = 0; buf[o + 2] = 0; buf[o + 3] = 0;
    buf[o + 4] = 0; buf[o + 5] = tcpLen; buf[o + 6] = 6; buf[o + 7] = 64;
    t = o + 40;
  }
  buf[t] = sport >>> 8; buf[t + 1] = sport & 0xff; buf[t + 2] = dport >>> 8; buf[t + 3] = dport & 0xff;
  buf.fill(0, t + 4, t + 8); // seq 0
  buf[t + 8] = ackNum >>> 24; buf[t + 9] = (ackNum >>> 16) & 0xff; buf[t + 10] = (ackNum >>> 8) & 0xff; buf[t + 11] = ackNum & 0xff;
  buf[t + 12] = (tcpLen >> 2) << 4; buf[t + 13] = TCP_RST | TCP_ACK;
  buf.fill(0, t + 14, t + 20); // window, checksum, urgent
  // MP_TCPRST: kind 30, length 4, subtype 8 with no flags, reason 1.
  buf[t + 20] = 30; buf[t + 21] = 4; buf[t + 22] = 0x80; buf[t + 23] = 1;
  const srcOff = v.family === 4 ? o + 12 : o + 8;
  const c = transportChecksum(buf, srcOff, srcOff + n, n, 6, t, tcpLen);
  buf[t + 16] = c >>> 8; buf[t + 17] = c & 0xff;
  return t + tcpLen - o;
}
