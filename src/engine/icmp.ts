// ICMP and ICMPv6 in the engine: errors (RFC 792, RFC 1191 fragmentation needed, RFC 4443 packet too big) that
// quote a balanced flow's packet go to that flow's other end with addresses, ports and every checksum rewritten;
// echo requests to a VIP are answered (rate-limited). Called by engine.ts for ParseStatus.Icmp. Pure, no allocation.
import type { IcmpConfig } from './config.js';
import { Counter, type Counters, DropReason } from './counters.js';
import type { FlowTable } from './flow-table.js';
import { hashEndpoint, hashTuple } from './hash.js';
import { OpenIndex } from './open-addressing.js';
import type { Services } from './services.js';
import { applyDelta, checksum, fold, replaceDelta } from '../wire/checksum.js';
import { ICMP_ECHO_REPLY, ICMPV6_ECHO_REPLY, IcmpKind, IcmpStatus, IcmpView, parseIcmp, writeIcmpChecksum } from '../wire/icmp.js';
import { loadAddressWords, PacketView } from '../wire/parse.js';

/** What engine.ts does with the packet (it maps these to its Verdict and per-backend counts). */
export const enum IcmpOutcome { Drop = 0, ToBackend = 1, ToClient = 2, Reply = 3 }

const STATUS_DROP: readonly number[] = [
  0, DropReason.IcmpTruncated, DropReason.IcmpBadChecksum, DropReason.IcmpEmbeddedMalformed,
  DropReason.IcmpEmbeddedMalformed, DropReason.IcmpEmbeddedNotTcp, DropReason.IcmpEmbeddedMalformed,
];

export class IcmpHandler {
  private readonly iv = new IcmpView();
  /** The quoted packet seen as the flow's own client->VIP packet (addresses and ports swapped), for the policy hash. */
  private readonly flip = new PacketView();
  /** Quoted addresses: client or backend in words 0..3, VIP or client in 4..7 (hashTuple / lookup order). */
  private readonly a = new Uint32Array(8);
  /** Outer destination address words (4..7). */
  private readonly outer = new Uint32Array(8);
  private readonly scratch = new Uint8Array(16);
  private cfg: IcmpConfig;
  private tokens: number;
  private lastRefillMs = -1;
  /** VIP addresses (any port) for echo; rebuilt when the VIP count changes (VIPs are appended, never moved). */
  private vipAddrIndex = new OpenIndex(4);
  private indexedVips = -1;

  // The last decision (read by engine.ts).
  dropReason: number = 0;
  lastBackend = -1;
  lastVip = -1;
  lastFlow = -1;
  outLen = 0;

  constructor(private readonly services: Services, private readonly flows: FlowTable, private readonly counters: Counters,
    private readonly seed: number, cfg: IcmpConfig) {
    this.cfg = cfg;
    this.tokens = cfg.echoRatePerSec;
  }

  setConfig(cfg: IcmpConfig): void {
    if (cfg.echoRatePerSec !== this.cfg.echoRatePerSec) this.tokens = Math.min(this.tokens, cfg.echoRatePerSec);
    this.cfg = cfg;
  }

  /** Decides the ICMP packet `v` (already parsed as IP by parse.ts). */
  handle(buf: Uint8Array, v: PacketView, nowMs: number): IcmpOutcome {
    this.dropReason = 0;
    this.lastBackend = -1;
    this.lastVip = -1;
    this.lastFlow = -1;
    const iv = this.iv;
    const st = parseIcmp(buf, v, iv);
    if (st !== IcmpStatus.Ok) return this.drop(STATUS_DROP[st] as DropReason);
    if (iv.kind === IcmpKind.EchoRequest) return this.echo(buf, v, nowMs);
    if (iv.kind !== IcmpKind.Error) return this.drop(DropReason.IcmpUnhandledType);
    // An ICMPv4 message quotes IPv4, an ICMPv6 one IPv6 (icmp.ts checks the quoted version). Quoted destination in
    // words 0..3, quoted source in 4..7: that is the lookup order of both directions below.
    const a = this.a;
    loadAddressWords(buf, v.dstAddrOff, v.addrLen, this.outer, 4);
    loadAddressWords(buf, iv.inDstOff, iv.inAddrLen, a, 0);
    loadAddressWords(buf, iv.inSrcOff, iv.inAddrLen, a, 4);
    // RFC 792: the error goes to "the source network and address from the original datagram's data": anything else
    // is not about a packet of this balancer's flows.
    if (!this.outerDstIs(4)) return this.drop(DropReason.IcmpNoService);
    // Client side: the quote is a packet mplb sent to a client (source VIP:port, destination client:port).
    const vip = this.services.findVip(a, v.family, iv.inSrcPort);
    if (vip >= 0) return this.toBackend(buf, v, vip);
    // Backend side: the quote is a packet mplb sent to a backend (source client:port, destination backend:port).
    return this.toClient(buf, v);
  }

  /** The outer destination equals quoted address words a[at..at+3]. */
  private outerDstIs(at: number): boolean {
    const o = this.outer, a = this.a;
    return o[4] === a[at] && o[5] === a[at + 1] && o[6] === a[at + 2] && o[7] === a[at + 3];
  }

  private toBackend(buf: Uint8Array, v: PacketView, vip: number): IcmpOutcome {
    const iv = this.iv, a = this.a, svc = this.services, ev = this.counters.events;
    this.lastVip = vip;
    const h = hashTuple(a, 0, iv.inDstPort, a, 4, iv.inSrcPort, this.seed);
    const r = this.flows.lookupIn(h, a, iv.inDstPort, vip);
    let b: number;
    if (r >= 0) {
      b = this.flows.backend(r);
      this.lastFlow = r;
      ev[Counter.IcmpErrorsToBackend]++;
    } else {
      if (this.cfg.noFlowAnswer === 'drop' || svc.vipRemoved[vip]) return this.drop(DropReason.IcmpNoFlow);
      // The flow's own packets would be hashed client first: hash the quote with its ends swapped, so the error goes
      // where the policy sends (and, weights unchanged, sent) that flow.
      const f = this.flip;
      f.family = v.family; f.addrLen = iv.inAddrLen; f.proto = 6;
      f.srcAddrOff = iv.inDstOff; f.dstAddrOff = iv.inSrcOff; f.srcPort = iv.inDstPort; f.dstPort = iv.inSrcPort;
      b = svc.select(vip, buf, f);
      if (b < 0) return this.drop(DropReason.IcmpNoFlow);
      ev[Counter.IcmpErrorsToBackendHashed]++;
    }
    this.lastBackend = b;
    if (iv.pmtu) ev[Counter.IcmpPmtuErrors]++;
    const bo = b << 4, n = iv.inAddrLen;
    // Outer destination VIP -> backend; the quote's source VIP:port -> backend:port, as the backend sent it.
    const d = replaceDelta(buf, v.dstAddrOff, svc.beAddrBytes, bo, n);
    copy(svc.beAddrBytes, bo, buf, v.dstAddrOff, n);
    if (v.family === 4) applyDelta(buf, v.ipOff + 10, d);
    rewriteQuoted(buf, iv, iv.inSrcOff, iv.inL4Off, svc.beAddrBytes, bo, svc.bePort[b]);
    writeIcmpChecksum(buf, v);
    return IcmpOutcome.ToBackend;
  }

  private toClient(buf: Uint8Array, v: PacketView): IcmpOutcome {
    const iv = this.iv, a = this.a, svc = this.services, ev = this.counters.events, flows = this.flows;
    const h = hashTuple(a, 0, iv.inDstPort, a, 4, iv.inSrcPort, this.seed);
    const r = flows.lookupOut(h, a, iv.inDstPort, iv.inSrcPort, svc.beAddr, svc.bePort);
    let b: number, vip: number;
    if (r >= 0) {
      b = flows.backend(r);
      vip = flows.vip(r);
      this.lastFlow = r;
      ev[Counter.IcmpErrorsToClient]++;
    } else {
      // As statelessReply does for TCP: the backend's own VIP (none, or several VIPs share it: no answer).
      b = svc.findBackendByEndpoint(a, iv.inDstPort);
      if (b < 0) return this.drop(DropReason.IcmpNoService);
      if (this.cfg.noFlowAnswer === 'drop') return this.drop(DropReason.IcmpNoFlow);
      vip = svc.beVip[b];
      ev[Counter.IcmpErrorsToClientStateless]++;
    }
    this.lastBackend = b;
    this.lastVip = vip;
    if (iv.pmtu) ev[Counter.IcmpPmtuErrors]++;
    const vo = vip << 4, n = iv.inAddrLen;
    // The backend itself sent the error: its source becomes the VIP, like its TCP replies. A router's stays.
    if (sameBytes(buf, v.srcAddrOff, svc.beAddrBytes, b << 4, n)) {
      const d = replaceDelta(buf, v.srcAddrOff, svc.vipAddrBytes, vo, n);
      copy(svc.vipAddrBytes, vo, buf, v.srcAddrOff, n);
      if (v.family === 4) applyDelta(buf, v.ipOff + 10, d);
    }
    // The quote's destination backend:port -> VIP:port, as the client sent it.
    rewriteQuoted(buf, iv, iv.inDstOff, iv.inL4Off + 2, svc.vipAddrBytes, vo, svc.vipPort[vip]);
    writeIcmpChecksum(buf, v);
    return IcmpOutcome.ToClient;
  }

  /** Echo request to a VIP address: turned into its echo reply in place (RFC 792: "the source and destination addresses are simply reversed"). */
  private echo(buf: Uint8Array, v: PacketView, nowMs: number): IcmpOutcome {
    loadAddressWords(buf, v.dstAddrOff, v.addrLen, this.outer, 4);
    const vip = this.findVipAddress(v.family);
    if (vip < 0) return this.drop(DropReason.IcmpUnhandledType);
    this.lastVip = vip;
    if (!this.cfg.echoReply) return this.drop(DropReason.IcmpEchoDisabled);
    if (!this.takeToken(nowMs)) return this.drop(DropReason.IcmpEchoRateLimited);
    const n = v.addrLen, s = this.scratch;
    copy(buf, v.srcAddrOff, s, 0, n);
    copy(buf, v.dstAddrOff, buf, v.srcAddrOff, n);
    copy(s, 0, buf, v.dstAddrOff, n);
    const o = v.ipOff;
    if (v.family === 4) {
      buf[v.l4Off] = ICMP_ECHO_REPLY;
      buf[o + 8] = 64; // TTL
      buf[o + 10] = 0; buf[o + 11] = 0;
      const c = checksum(buf, o, v.l4Off - o);
      buf[o + 10] = c >>> 8; buf[o + 11] = c & 0xff;
    } else {
      buf[v.l4Off] = ICMPV6_ECHO_REPLY;
      buf[o + 7] = 64; // hop limit
    }
    buf[v.l4Off + 1] = 0;
    writeIcmpChecksum(buf, v);
    this.outLen = v.ipLen;
    this.counters.events[Counter.IcmpEchoAnswered]++;
    return IcmpOutcome.Reply;
  }

  /** Token bucket on the engine's clock: echoRatePerSec tokens a second, at most one second's worth saved. */
  private takeToken(nowMs: number): boolean {
    const rate = this.cfg.echoRatePerSec;
    if (this.lastRefillMs < 0 || nowMs < this.lastRefillMs) this.lastRefillMs = nowMs; // first call, or a clock step back
    else {
      this.tokens = Math.min(rate, this.tokens + ((nowMs - this.lastRefillMs) * rate) / 1000);
      this.lastRefillMs = nowMs;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** A live VIP whose address is the outer destination (words 4..7 of `outer`), or -1. */
  private findVipAddress(family: number): number {
    const svc = this.services;
    if (this.indexedVips !== svc.vipCount) this.indexVipAddresses();
    const slots = this.vipAddrIndex.slots, mask = this.vipAddrIndex.mask, w = svc.vipAddr, o = this.outer;
    for (let s = hashEndpoint(o, 4, 0, this.seed) & mask; slots[s] !== 0; s = (s + 1) & mask) {
      const vip = slots[s] - 1, i = vip << 2;
      if (svc.vipFamily[vip] === family && svc.vipRemoved[vip] === 0 && w[i] === o[4] && w[i + 1] === o[5] && w[i + 2] === o[6] && w[i + 3] === o[7]) return vip;
    }
    return -1;
  }

  /** Cold: when VIPs were added. */
  private indexVipAddresses(): void {
    const svc = this.services, n = svc.vipCount;
    const index = new OpenIndex(Math.max(8, n * 2));
    for (let vip = 0; vip < n; vip++) index.insert(hashEndpoint(svc.vipAddr, vip << 2, 0, this.seed), vip + 1);
    this.vipAddrIndex = index;
    this.indexedVips = n;
  }

  private drop(reason: DropReason): IcmpOutcome {
    this.dropReason = reason;
    return IcmpOutcome.Drop;
  }
}

/**
 * One endpoint of the quoted packet (address at addrOff, port at portOff) -> newAddr[newOff..]:newPort, with the
 * quoted IPv4 header checksum and, when quoted, the TCP checksum patched (RFC 1624), so the receiver's stack finds
 * the quote consistent. The ICMP checksum is written afterwards over the whole message.
 */
function rewriteQuoted(buf: Uint8Array, iv: IcmpView, addrOff: number, portOff: number, newAddr: Uint8Array, newOff: number, newPort: number): void {
  const n = iv.inAddrLen;
  const ipDelta = replaceDelta(buf, addrOff, newAddr, newOff, n);
  const oldPort = (buf[portOff] << 8) | buf[portOff + 1];
  const tcpDelta = fold(ipDelta + (~oldPort & 0xffff) + newPort);
  copy(newAddr, newOff, buf, addrOff, n);
  buf[portOff] = newPort >>> 8;
  buf[portOff + 1] = newPort & 0xff;
  if (iv.inIpCsumOff >= 0) applyDelta(buf, iv.inIpCsumOff, ipDelta);
  if (iv.inTcpCsumOff >= 0) applyDelta(buf, iv.inTcpCsumOff, tcpDelta);
}

function copy(src: Uint8Array, so: number, dst: Uint8Array, d: number, n: number): void {
  for (let i = 0; i < n; i++) dst[d + i] = src[so + i];
}

function sameBytes(x: Uint8Array, xo: number, y: Uint8Array, yo: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (x[xo + i] !== y[yo + i]) return false;
  return true;
}
