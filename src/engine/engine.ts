// Stage 2 of the packet path, and the engine's front door: decide where each packet goes.
// parse (parse.ts) -> decide (this file: flow table, token table, selection) -> rewrite (rewrite.ts).
// Lifetimes and expiry are in lifecycle.ts, read-only views of the tables in introspect.ts.
// Pure: bytes and time in, a verdict and an in-place rewrite out. No I/O, no timers, no allocation per packet
// for established flows; new flows allocate nothing either except the SHA digest of a learned key.
import type { EngineConfig } from './config.js';
import { ConnFlag, ConnTable } from './conn-table.js';
import { Counter, Counters, DropReason } from './counters.js';
import { FlowState, FlowTable, MptcpMode } from './flow-table.js';
import { hashTuple, SMI_MASK } from './hash.js';
import { Introspection, type ConnectionInfo } from './introspect.js';
import { Lifecycle, msTick } from './lifecycle.js';
import { Offload } from './offload.js';
import { decodeMptcpOption, JoinForm, MptcpOption, MptcpSubtype, OptionStatus, TCPOPT_MPTCP } from '../wire/mptcp-options.js';
import { loadAddressWords, nextTcpOption, PacketView, parsePacket, ParseStatus, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN } from '../wire/parse.js';
import { natEndpoint, natToBackend, natToClient, stripTcpOption, writeResetForSyn } from './rewrite.js';
import { Services } from './services.js';
import { HoldKind, StoreEvent, StoreEventRing } from './store-events.js';
import { IcmpHandler, IcmpOutcome } from './icmp.js';
import { formatEndpoint } from '../wire/addr.js';
import { tokenFromKeyBytes } from '../wire/tokens.js';

export const enum Verdict {
  /** Dropped; `lastDrop` says why. */
  Drop = 0,
  /** Rewritten towards a backend. */
  ToBackend = 1,
  /** Rewritten towards the client. */
  ToClient = 2,
  /** Replaced by an answer to its sender (a RST); `outLen` is its length. */
  Reply = 3,
  /** Left untouched, to be held while the shared token store is asked (`lastHold` says for what). */
  Hold = 4,
}
export const VERDICT_LABELS = ['drop', 'to_backend', 'to_client', 'reply', 'hold'] as const;

/** How the backend of the last new flow was chosen. */
export const enum Steer { None = 0, Policy = 1, Token = 2, UnknownTokenHashed = 3, Stateless = 4 }
export const STEER_LABELS = ['none', 'policy', 'token', 'fallback', 'stateless'] as const;

/** Where keys were learned from (for counters and replay). */
const enum KeySource { SynAck = 0, Ack = 1, Data = 2 }

const CROSS_VIP = FlowState.CrossVip;

export type { ConnectionInfo } from './introspect.js';

export class Engine {
  readonly services: Services;
  readonly flows: FlowTable;
  readonly conns: ConnTable;
  readonly counters: Counters;
  private cfg: EngineConfig;
  private readonly view = new PacketView();
  private readonly opt = new MptcpOption();
  /** Packet address words: source in 0..3, destination in 4..7 (IPv4 uses word 0 and 4). */
  private readonly a = new Uint32Array(8);
  /** The flow-hash seed as a small integer (see hashTuple). */
  private readonly seed: number;
  private readonly life: Lifecycle;
  private readonly info: Introspection;
  private readonly icmp: IcmpHandler;
  /** The kernel fast path's side of the engine (offload.ts): off unless the tc-bpf data path is attached. */
  readonly offload: Offload;

  // The last decision, for replay and tests (plain fields: reading them allocates nothing).
  outLen = 0;
  lastDrop: number = 0;
  lastFlow = -1;
  lastBackend = -1;
  lastVip = -1;
  lastSteer: Steer = Steer.None;
  /** The last packet was an MP_JOIN SYN towards a VIP. */
  lastJoin = false;
  lastJoinToken = 0;
  /** Backend of the connection owning lastJoinToken, or -1 when unknown or ambiguous. */
  lastJoinConnBackend = -1;
  /** Connection whose keys the last packet taught us, or -1. */
  lastKeysConn = -1;

  // The shared token store (src/dataplane/store-sync.ts drives these; without a store they stay off).
  /** What the engine tells the store, drained between batches. */
  readonly storeEvents = new StoreEventRing();
  /** The store is up: a join with an unknown token, or a packet with no flow, is held (Verdict.Hold) to ask it. */
  holdEnabled = false;
  /** Set by the forwarder while it replays a released (or refused) held packet: decide it without holding. */
  noHold = false;
  /** What the last Hold waits for, and the subflow it was for ("client:port>vip:port"). */
  lastHold: HoldKind | 0 = 0;
  lastHoldSubflow = '';
  /** The last HoldKind.Flow is a join's third ACK: its entry may be published a moment later, so ask again. */
  lastHoldMayRace = false;
  /** The store's backend for the next packet processed (a released HoldKind.Flow), or -1; pinBackend: this packet's. */
  private pinNext = -1;
  private pinBackend = -1;

  /** `sharedCounters`: back the counters with this memory, so another thread can read them (see Counters). */
  constructor(cfg: EngineConfig, sharedCounters?: SharedArrayBuffer) {
    this.cfg = cfg;
    this.counters = new Counters(sharedCounters);
    this.services = new Services(cfg.tables.maglevSize, cfg.hashSeed, cfg.policy);
    this.services.applyConfig(cfg);
    this.flows = new FlowTable(cfg.tables.maxFlows);
    this.conns = new ConnTable(cfg.tables.maxConnections, cfg.hashSeed);
    this.seed = cfg.hashSeed & SMI_MASK;
    this.offload = new Offload(this.flows, this.counters);
    this.life = new Lifecycle(this.flows, this.conns, this.counters, cfg.timeouts, this.storeEvents, this.offload);
    this.info = new Introspection(this.services, this.flows, this.conns, this.seed);
    this.icmp = new IcmpHandler(this.services, this.flows, this.counters, this.seed, cfg.icmp);
  }

  get config(): EngineConfig { return this.cfg; }

  /** Live reconfiguration: VIPs, backends, weights, policy, timeouts. Flows and tokens are kept. Table sizes cannot change. */
  reconfigure(cfg: EngineConfig): void {
    // What the engine must read of a flow depends on mptcpAware: offloaded flows come back to be looked at again.
    // Nothing else a reload changes alters an existing flow's rewrite (VIP and backend indices are kept).
    if (cfg.mptcpAware !== this.cfg.mptcpAware) this.offload.releaseAll();
    this.cfg = { ...cfg, tables: this.cfg.tables, hashSeed: this.cfg.hashSeed };
    this.services.applyConfig(this.cfg);
    this.life.setTimeouts(this.cfg.timeouts);
    this.icmp.setConfig(this.cfg.icmp);
  }

  /**
   * Decides and rewrites one IP packet at buf[off, off+len) received at time nowMs. Hot path.
   * On ToBackend/ToClient the packet was rewritten in place (same length); on Reply it was replaced by
   * an answer of `outLen` bytes at `off` with a full checksum. `partialCsum`: the TCP checksum field holds the
   * uncomplemented pseudo-header sum (virtio_net_hdr NEEDS_CSUM).
   */
  process(buf: Uint8Array, off: number, len: number, nowMs: number, partialCsum = false): Verdict {
    const ev = this.counters.events;
    ev[Counter.PacketsIn]++;
    ev[Counter.BytesIn] += len;
    this.outLen = len;
    this.lastDrop = 0;
    this.lastFlow = -1;
    this.lastBackend = -1;
    this.lastVip = -1;
    this.lastSteer = Steer.None;
    this.lastJoin = false;
    this.lastKeysConn = -1;
    this.lastHold = 0;
    // A pin is for the released packet alone: when its flow exists by now (an earlier packet of it was released
    // first) or it is dropped, the pin must not carry over to the next packet with no flow, another subflow's.
    this.pinBackend = this.pinNext;
    this.pinNext = -1;
    const v = this.view;
    v.partialCsum = partialCsum;
    const st = parsePacket(buf, off, len, v);
    if (st !== ParseStatus.Ok) return st === ParseStatus.Icmp ? this.icmpPacket(buf, nowMs) : this.drop(st as number as DropReason);
    const a = this.a;
    loadAddressWords(buf, v.srcAddrOff, v.addrLen, a, 0);
    loadAddressWords(buf, v.dstAddrOff, v.addrLen, a, 4);
    const now = msTick(nowMs);
    const vip = this.services.findVip(a, v.family, v.dstPort);
    // The packet's 4-tuple hash keys the flow lookup of either direction: inbound (client -> VIP) and outbound
    // (backend -> client) index entries are both hashed source first.
    const h = hashTuple(a, 0, v.srcPort, a, 4, v.dstPort, this.seed);
    if (vip >= 0) return this.inbound(buf, vip, h, now);
    const r = this.flows.lookupOut(h, a, v.srcPort, v.dstPort, this.services.beAddr, this.services.bePort);
    if (r >= 0) return this.outbound(buf, r, now);
    return this.statelessReply(buf);
  }

  /**
   * A reply from a backend endpoint with no flow (mplb restarted, or the table was full when its SYN came):
   * NAT it back to the backend's VIP so that subflows opened before a restart keep working both ways.
   */
  private statelessReply(buf: Uint8Array): Verdict {
    const v = this.view;
    const b = this.services.findBackendByEndpoint(this.a, v.srcPort);
    if (b < 0) return this.drop(DropReason.NoService);
    this.counters.events[Counter.StatelessReply]++;
    this.lastBackend = b;
    this.lastVip = this.services.beVip[b];
    this.lastSteer = Steer.Stateless;
    natToClient(buf, v, this.services, b);
    return this.countOut(b);
  }

  /** ICMP/ICMPv6 (icmp.ts): errors about a flow follow it, echo requests to a VIP are answered. */
  private icmpPacket(buf: Uint8Array, nowMs: number): Verdict {
    const h = this.icmp, o = h.handle(buf, this.view, nowMs);
    this.lastVip = h.lastVip;
    this.lastFlow = h.lastFlow;
    this.lastBackend = h.lastBackend;
    if (o === IcmpOutcome.Drop) return this.drop(h.dropReason);
    if (o === IcmpOutcome.Reply) { this.counters.events[Counter.Replied]++; this.outLen = h.outLen; return Verdict.Reply; }
    return o === IcmpOutcome.ToBackend ? this.countIn(h.lastBackend) : this.countOut(h.lastBackend);
  }

  /** Counts a packet sent to backend b (per backend: packets and bytes each way, for metrics). */
  private countIn(b: number): Verdict {
    this.counters.events[Counter.ToBackend]++;
    const st = this.services.beStats, i = b << 2;
    st[i]++;
    st[i + 1] += this.view.ipLen;
    return Verdict.ToBackend;
  }

  private countOut(b: number): Verdict {
    this.counters.events[Counter.ToClient]++;
    const st = this.services.beStats, i = b << 2;
    st[i + 2]++;
    st[i + 3] += this.view.ipLen;
    return Verdict.ToClient;
  }

  private drop(reason: DropReason): Verdict {
    this.counters.events[Counter.Dropped]++;
    this.counters.drops[reason]++;
    this.lastDrop = reason;
    return Verdict.Drop;
  }

  // ---- client -> VIP ----

  private inbound(buf: Uint8Array, vip: number, hIn: number, now: number): Verdict {
    const v = this.view, a = this.a, flows = this.flows;
    this.lastVip = vip;
    let r = flows.lookupIn(hIn, a, v.srcPort, vip);
    const tf = v.tcpFlags;
    const isSyn = (tf & (TCP_SYN | TCP_ACK)) === TCP_SYN;
    if (r >= 0 && isSyn && (flows.state(r) & (FlowState.Rst | FlowState.FinClient | FlowState.FinServer)) !== 0) {
      // A new SYN on a closed flow's 4-tuple is a new connection (port reuse), not a retransmission.
      this.life.removeFlow(r, now);
      this.counters.events[Counter.FlowsReopened]++;
      r = -1;
    }
    if (r < 0) {
      if (this.services.vipRemoved[vip]) return this.drop(DropReason.NoService);
      if (isSyn) return this.newFlow(buf, vip, hIn, now);
      return this.midstream(buf, vip, hIn, now);
    }
    let st = flows.state(r);
    if (tf & TCP_RST) st |= FlowState.Rst;
    if (tf & TCP_FIN) st |= FlowState.FinClient;
    if ((tf & TCP_ACK) !== 0 && (tf & TCP_SYN) === 0) st |= FlowState.Established;
    flows.setState(r, st);
    flows.setLastSeen(r, now);
    if (this.needsScan(r, st, tf) && v.optEnd > v.optOff) this.scanInbound(buf, r, now);
    const b = flows.backend(r);
    this.lastFlow = r;
    this.lastBackend = b;
    this.offload.update(r, this.cfg.mptcpAware);
    if (flows.state(r) & CROSS_VIP) natEndpoint(buf, v, v.dstAddrOff, v.l4Off + 2, this.services.beAddrBytes, b << 4, this.services.bePort[b]);
    else natToBackend(buf, v, this.services, b);
    return this.countIn(b);
  }

  /**
   * Whether an MPTCP flow's packet needs its options read. Keys are read until learned. After that only
   * MP_FASTCLOSE matters. RFC 6824 section 3.5 (v0): "Host A sends an ACK containing the MP_FASTCLOSE option on one
   * subflow ... On all the other subflows, Host A sends a regular TCP RST", and that one subflow may be a join: v0
   * flows, joins included, are read on every packet. v1 hosts send it with a RST on every subflow (RFC 8684 section
   * 3.5 allows both forms; Linux sends the RST form), so v1 flows are read on RSTs only. An MP_FASTCLOSE on a plain v1
   * ACK is not acted on: the peer's RSTs then close the subflows and the token lingers as after any close.
   */
  private needsScan(r: number, st: number, tcpFlags: number): boolean {
    const mode = this.flows.mptcpMode(r);
    if (mode === MptcpMode.None || !this.cfg.mptcpAware) return false;
    return mode === MptcpMode.V0 || (tcpFlags & TCP_RST) !== 0
      || (st & (FlowState.KeysDone | FlowState.ClientSeen)) !== (FlowState.KeysDone | FlowState.ClientSeen);
  }

  /**
   * A non-SYN packet with no flow (table full earlier, mplb restarted, or the subflow moved here from another
   * balancer): forward it where its SYN would go. With a shared token store the store is asked first (a join's
   * subflow went where its token said, not where it hashes), and the answer becomes a local flow.
   */
  private midstream(buf: Uint8Array, vip: number, hIn: number, now: number): Verdict {
    const ev = this.counters.events;
    let b = this.pinBackend;
    this.pinBackend = -1;
    const first = this.mptcpAwareFirst(buf);
    // Only joins have subflow entries in the store. A first subflow (MP_CAPABLE on its third ACK or first data)
    // hashes alike on every balancer: asking would only delay it, and a delay past the client's RTO moves it again.
    if (b < 0 && this.holdEnabled && !this.noHold && first !== MptcpSubtype.MpCapable) {
      this.lastHoldMayRace = first === MptcpSubtype.MpJoin;
      return this.hold(HoldKind.Flow, buf);
    }
    ev[Counter.MidstreamNoFlow]++;
    if (first === MptcpSubtype.MpCapable && this.findMpCapableKeys(buf)) ev[Counter.KeysForUnopenedFlow]++;
    // The store names the connection's backend; a subflow of the other family goes to the same server's peer.
    if (b >= 0 && this.services.vipFamily[this.services.beVip[b]] !== this.view.family) {
      const p = this.services.bePeer[b];
      b = p >= 0 && this.services.beVip[p] === vip ? p : -1;
    }
    if (b < 0) b = this.services.select(vip, buf, this.view);
    if (b < 0) return this.drop(DropReason.NoBackend);
    this.lastBackend = b;
    this.lastSteer = Steer.Stateless;
    // Asked the store once: keep the answer, so this subflow's next packets are not held again.
    if (this.holdEnabled || this.noHold) this.adoptFlow(vip, b, hIn, now);
    if (this.services.beVip[b] !== vip) natEndpoint(buf, this.view, this.view.dstAddrOff, this.view.l4Off + 2, this.services.beAddrBytes, b << 4, this.services.bePort[b]);
    else natToBackend(buf, this.view, this.services, b);
    return this.countIn(b);
  }

  /** A flow entry for a subflow that arrived established (the store's backend, or the policy's). */
  private adoptFlow(vip: number, b: number, hIn: number, now: number): void {
    const v = this.view, svc = this.services;
    const hOut = hashTuple(svc.beAddr, b << 2, svc.bePort[b], this.a, 0, v.srcPort, this.seed);
    let state = FlowState.SynSeen | FlowState.SynAckSeen | FlowState.Established | FlowState.KeysDone | FlowState.ClientSeen;
    if (v.family === 6) state |= FlowState.V6;
    if (svc.beVip[b] !== vip) state |= CROSS_VIP;
    const r = this.flows.insert(hIn, hOut, this.a, v.srcPort, vip, b, state, now);
    if (r < 0) return; // table full: stays stateless
    this.counters.events[Counter.FlowsAdopted]++;
    this.lastFlow = r;
  }

  /** Leaves the packet untouched for the store to be asked; it is counted in once, when it is released. */
  private hold(kind: HoldKind, buf: Uint8Array): Verdict {
    const v = this.view, ev = this.counters.events;
    ev[Counter.PacketsIn]--;
    ev[Counter.BytesIn] -= this.outLen;
    ev[Counter.PacketsHeld]++;
    this.lastHold = kind;
    if (kind === HoldKind.Flow) {
      this.lastHoldSubflow = `${formatEndpoint(buf, v.srcAddrOff, v.addrLen, v.srcPort)}>${formatEndpoint(buf, v.dstAddrOff, v.addrLen, v.dstPort)}`;
    }
    return Verdict.Hold;
  }

  private newFlow(buf: Uint8Array, vip: number, hIn: number, now: number): Verdict {
    const v = this.view, a = this.a, ev = this.counters.events, opt = this.opt;
    const svc = this.services, conns = this.conns;
    // Find MP_CAPABLE or MP_JOIN in the SYN.
    let capVer = -1, joinToken = -1;
    for (let o = this.nextMptcp(buf, v.optOff); o >= 0; o = this.nextMptcp(buf, o + buf[o + 1])) {
      if (!this.decode(buf, o)) continue;
      if (opt.subtype === MptcpSubtype.MpCapable && capVer < 0) capVer = opt.version;
      else if (opt.subtype === MptcpSubtype.MpJoin && opt.joinForm === JoinForm.Syn && joinToken < 0) joinToken = opt.token;
    }
    if (capVer >= 0) ev[Counter.MpCapableSyn]++;
    let b: number;
    let conn = -1;
    let steer: Steer = Steer.Policy;
    if (joinToken >= 0) {
      this.lastJoin = true;
      this.lastJoinToken = joinToken;
      this.lastJoinConnBackend = -1;
      if (!this.cfg.mptcpAware) {
        ev[Counter.JoinsUnaware]++;
        b = svc.select(vip, buf, v);
      } else {
        conn = conns.find(joinToken);
        if (conn >= 0 && (conns.flags[conn] & ConnFlag.Lingering) !== 0 && this.life.connExpired(conn, now)) {
          this.life.freeConn(conn);
          conn = -1;
        }
        let jb = -1;
        if (conn >= 0 && (conns.flags[conn] & ConnFlag.Ambiguous) === 0 && (jb = this.joinBackend(conn, vip)) >= 0) {
          b = jb;
          steer = Steer.Token;
          this.lastJoinConnBackend = b;
          ev[Counter.JoinsSteeredByToken]++;
        } else if (conn < 0 && this.holdEnabled && !this.noHold) {
          // Unknown here: its first subflow may have passed another balancer. Ask the shared store.
          return this.hold(HoldKind.Token, buf);
        } else {
          ev[Counter.JoinsUnknownToken]++;
          if (conn >= 0) ev[(conns.flags[conn] & ConnFlag.Ambiguous) !== 0 ? Counter.JoinsAmbiguousToken : Counter.JoinsFamilyUnpaired]++;
          conn = -1;
          const answer = this.cfg.unknownTokenAnswer;
          if (answer === 'drop') { ev[Counter.JoinsUnknownDropped]++; return this.drop(DropReason.JoinUnknownToken); }
          if (answer === 'reset') {
            ev[Counter.JoinsUnknownReset]++;
            ev[Counter.Replied]++;
            this.outLen = writeResetForSyn(buf, v);
            return Verdict.Reply;
          }
          ev[Counter.JoinsUnknownHashed]++;
          steer = Steer.UnknownTokenHashed;
          b = svc.select(vip, buf, v);
        }
      }
    } else {
      b = svc.select(vip, buf, v);
    }
    if (b < 0) return this.drop(DropReason.NoBackend);
    const bo = b << 2;
    const hOut = hashTuple(svc.beAddr, bo, svc.bePort[b], a, 0, v.srcPort, this.seed);
    let state = FlowState.SynSeen;
    if (v.family === 6) state |= FlowState.V6;
    if (joinToken >= 0) state |= FlowState.Join | FlowState.KeysDone;
    if (capVer >= 0) state |= FlowState.MpCapable;
    if (svc.beVip[b] !== vip) state |= CROSS_VIP;
    let r = this.flows.insert(hIn, hOut, a, v.srcPort, vip, b, state, now);
    if (r < 0 && this.life.evictFlow(now)) r = this.flows.insert(hIn, hOut, a, v.srcPort, vip, b, state, now);
    this.lastBackend = b;
    this.lastSteer = steer;
    if (r < 0) {
      // Without a flow entry a join's later packets would be hashed elsewhere: refuse it; the client retries.
      if (joinToken >= 0 && steer === Steer.Token) return this.drop(DropReason.FlowTableFull);
      ev[Counter.StatelessForward]++;
      this.lastSteer = Steer.Stateless;
    } else {
      ev[Counter.FlowsCreated]++;
      this.lastFlow = r;
      // A join speaks its connection's version; of MP_CAPABLE versions, 0 and 1 are the ones with a known key
      // hash, others are forwarded without steering.
      if (joinToken >= 0) this.flows.setMptcpMode(r, conn < 0 ? MptcpMode.JoinUnknown : (conns.flags[conn] & ConnFlag.V1) !== 0 ? MptcpMode.V1 : MptcpMode.V0);
      else if (capVer === 0) this.flows.setMptcpMode(r, MptcpMode.V0);
      else if (capVer === 1) this.flows.setMptcpMode(r, MptcpMode.V1);
      if (conn >= 0) {
        this.life.linkFlow(r, conn);
        // So that the subflow stays on its backend if ECMP moves it to another balancer.
        if (steer === Steer.Token) this.storeEvents.push(StoreEvent.JoinSteered, r, conn);
      }
    }
    if (state & CROSS_VIP) natEndpoint(buf, v, v.dstAddrOff, v.l4Off + 2, svc.beAddrBytes, b << 4, svc.bePort[b]);
    else natToBackend(buf, v, svc, b);
    return this.countIn(b);
  }

  /**
   * Where a join for live connection c that arrived on VIP vip goes, or -1. In the connection's family: its backend
   * (another VIP of the same family too, counted). In the other family (a dual-stack client's subflow over IPv6
   * of a connection opened over IPv4, or the reverse): the same server's backend on vip, when vip's service pairs
   * it; the connection's own address cannot be reached in that family.
   */
  private joinBackend(c: number, vip: number): number {
    const svc = this.services, b = this.conns.backend[c];
    if (svc.vipFamily[svc.beVip[b]] === svc.vipFamily[vip]) {
      if (this.conns.vip[c] !== vip) this.counters.events[Counter.JoinsVipMismatch]++;
      return b;
    }
    const p = svc.bePeer[b];
    if (p < 0 || svc.beVip[p] !== vip) return -1;
    this.counters.events[Counter.JoinsCrossFamily]++;
    return p;
  }

  /** MPTCP options of a client packet on a known flow: keys (third ACK / first data) and MP_FASTCLOSE. */
  private scanInbound(buf: Uint8Array, r: number, now: number): void {
    const v = this.view, opt = this.opt, flows = this.flows;
    // The client's key comes in its first packet after the SYN (third ACK, or v1 first data): look once.
    flows.orState(r, FlowState.ClientSeen);
    for (let o = this.nextMptcp(buf, v.optOff); o >= 0; o = this.nextMptcp(buf, o + buf[o + 1])) {
      // Only the subtypes acted on here are decoded; the rest pass through untouched.
      const sub = buf[o + 1] >= 3 ? buf[o + 2] >>> 4 : -1;
      if (sub !== MptcpSubtype.MpCapable && sub !== MptcpSubtype.MpFastclose) continue;
      if (!this.decode(buf, o)) continue;
      if (sub === MptcpSubtype.MpFastclose) { this.fastclose(r, now); continue; }
      if (!opt.hasReceiverKey || (opt.version !== 0 && opt.version !== 1)) continue;
      // Third ACK or v1 first data: sender = client key, receiver = server key.
      const st = flows.state(r);
      if ((st & FlowState.KeysDone) === 0) {
        if ((st & FlowState.MpCapable) === 0) continue;
        this.learnKeys(buf, r, opt.version, opt.receiverKeyOff, opt.senderKeyOff, v.payloadLen > 0 ? KeySource.Data : KeySource.Ack, now);
      } else {
        const c = flows.conn(r);
        if (c >= 0 && (this.conns.flags[c] & ConnFlag.HasClientKey) === 0) this.storeClientKey(c, buf, opt.senderKeyOff);
      }
    }
  }

  /** MP_CAPABLE or MP_JOIN if the packet carries one (the first found), else -1; -1 when not MPTCP-aware. */
  private mptcpAwareFirst(buf: Uint8Array): number {
    if (!this.cfg.mptcpAware) return -1;
    for (let o = this.nextMptcp(buf, this.view.optOff); o >= 0; o = this.nextMptcp(buf, o + buf[o + 1])) {
      if (buf[o + 1] < 3) continue;
      const st = buf[o + 2] >>> 4;
      if (st === MptcpSubtype.MpCapable || st === MptcpSubtype.MpJoin) return st;
    }
    return -1;
  }

  private findMpCapableKeys(buf: Uint8Array): boolean {
    for (let o = this.nextMptcp(buf, this.view.optOff); o >= 0; o = this.nextMptcp(buf, o + buf[o + 1])) {
      if (buf[o + 1] >= 20 && buf[o + 2] >>> 4 === MptcpSubtype.MpCapable) return true;
    }
    return false;
  }

  /** Offset of the next MPTCP option at or after pos, or -1 at the end of the options (a malformed list is counted). */
  private nextMptcp(buf: Uint8Array, pos: number): number {
    const end = this.view.optEnd;
    for (;;) {
      const o = nextTcpOption(buf, pos, end);
      if (o < 0) { if (o === -2) this.counters.events[Counter.TcpOptionsMalformed]++; return -1; }
      if (buf[o] === TCPOPT_MPTCP) return o;
      pos = o + buf[o + 1];
    }
  }

  /** Decodes the MPTCP option at o into `opt`; false, and counted, when it is malformed or of an unknown subtype. */
  private decode(buf: Uint8Array, o: number): boolean {
    const s = decodeMptcpOption(buf, o, buf[o + 1], this.opt);
    if (s === OptionStatus.Ok) return true;
    this.counters.events[s === OptionStatus.UnknownSubtype ? Counter.MptcpOptionUnknownSubtype : Counter.MptcpOptionMalformed]++;
    return false;
  }

  // ---- backend -> client ----

  private outbound(buf: Uint8Array, r: number, now: number): Verdict {
    const v = this.view, flows = this.flows;
    const tf = v.tcpFlags;
    let st = flows.state(r);
    if (tf & TCP_RST) st |= FlowState.Rst;
    if (tf & TCP_FIN) st |= FlowState.FinServer;
    if ((tf & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK)) st |= FlowState.SynAckSeen;
    flows.setState(r, st);
    flows.setLastSeen(r, now);
    this.lastFlow = r;
    this.lastVip = flows.vip(r);
    if (flows.mptcpMode(r) !== MptcpMode.None && this.cfg.mptcpAware) {
      if ((tf & TCP_SYN) !== 0 && (st & FlowState.KeysDone) === 0) this.scanSynAck(buf, r, now);
      else if (v.optEnd > v.optOff && this.needsScan(r, st, tf)) this.scanOutbound(buf, r, now);
    }
    const b = flows.backend(r);
    this.lastBackend = b;
    this.offload.update(r, this.cfg.mptcpAware);
    if (flows.state(r) & CROSS_VIP) {
      const vip = flows.vip(r);
      natEndpoint(buf, v, v.srcAddrOff, v.l4Off, this.services.vipAddrBytes, vip << 4, this.services.vipPort[vip]);
    } else {
      natToClient(buf, v, this.services, b);
    }
    return this.countOut(b);
  }

  /** The server's SYN/ACK: learn its key, or see the fallback. */
  private scanSynAck(buf: Uint8Array, r: number, now: number): void {
    const v = this.view, opt = this.opt, flows = this.flows;
    for (let o = this.nextMptcp(buf, v.optOff); o >= 0; o = this.nextMptcp(buf, o + buf[o + 1])) {
      if (!this.decode(buf, o)) continue;
      if (opt.subtype !== MptcpSubtype.MpCapable || !opt.hasSenderKey) continue;
      if (opt.version !== 0 && opt.version !== 1) break;
      // SYN/ACK: the only key is the sender's, i.e. the server's.
      if (!this.learnKeys(buf, r, opt.version, opt.senderKeyOff, -1, KeySource.SynAck, now)) stripTcpOption(buf, v, o, buf[o + 1]);
      return;
    }
    // RFC 8684 section 3.1: "If the SYN/ACK ... does not include an MP_CAPABLE option, the initiator MUST fall back".
    flows.orState(r, FlowState.Fallback | FlowState.KeysDone);
    if ((flows.state(r) & FlowState.Join) === 0) this.counters.events[Counter.MptcpFallback]++;
  }

  private scanOutbound(buf: Uint8Array, r: number, now: number): void {
    for (let o = this.nextMptcp(buf, this.view.optOff); o >= 0; o = this.nextMptcp(buf, o + buf[o + 1])) {
      if (buf[o + 1] >= 3 && buf[o + 2] >>> 4 === MptcpSubtype.MpFastclose && this.decode(buf, o)) this.fastclose(r, now);
    }
  }

  // ---- tokens ----

  /**
   * Registers the server token of flow r's connection. Returns false when the packet (a SYN/ACK) must have its
   * MP_CAPABLE stripped because the token belongs to a live connection on another backend.
   */
  private learnKeys(buf: Uint8Array, r: number, version: number, serverKeyOff: number, clientKeyOff: number, src: KeySource, now: number): boolean {
    const flows = this.flows, conns = this.conns, ev = this.counters.events;
    const token = tokenFromKeyBytes(version, buf, serverKeyOff);
    const b = flows.backend(r);
    flows.orState(r, FlowState.KeysDone);
    let ambiguousWith = -1;
    const old = conns.find(token);
    if (old >= 0) {
      const oldLive = (conns.flags[old] & ConnFlag.Lingering) === 0 || !this.life.connExpired(old, now);
      if (conns.backend[old] === b || !oldLive) {
        // A server never reuses a live token, so the older entry is stale.
        conns.unindexToken(old);
        if (conns.subflows[old] === 0) this.life.freeConn(old);
        ev[Counter.TokenReplaced]++;
      } else if (src === KeySource.SynAck) {
        flows.orState(r, FlowState.Fallback);
        ev[Counter.TokenCollisionStripped]++;
        return false;
      } else {
        conns.flags[old] |= ConnFlag.Ambiguous;
        ambiguousWith = old;
        ev[Counter.TokenCollisionAmbiguous]++;
      }
    }
    const c = conns.alloc(token, version, b, flows.vip(r), now);
    if (c < 0 && !this.life.evictConn()) { ev[Counter.ConnTableFull]++; return true; }
    const cc = c >= 0 ? c : conns.alloc(token, version, b, flows.vip(r), now);
    if (cc < 0) { ev[Counter.ConnTableFull]++; return true; }
    copyKey(buf, serverKeyOff, conns.keys, cc * 4);
    if (clientKeyOff >= 0) this.storeClientKey(cc, buf, clientKeyOff);
    if (ambiguousWith >= 0) conns.flags[cc] |= ConnFlag.Ambiguous;
    else {
      conns.indexToken(cc);
      this.storeEvents.push(StoreEvent.TokenLearned, cc, token);
    }
    this.life.linkFlow(r, cc);
    ev[Counter.ConnsCreated]++;
    ev[src === KeySource.SynAck ? Counter.KeysFromSynAck : src === KeySource.Ack ? Counter.KeysFromAck : Counter.KeysFromData]++;
    this.lastKeysConn = cc;
    return true;
  }

  private storeClientKey(c: number, buf: Uint8Array, off: number): void {
    copyKey(buf, off, this.conns.keys, c * 4 + 2);
    this.conns.flags[c] |= ConnFlag.HasClientKey;
  }

  /** MP_FASTCLOSE: the whole connection is gone (RFC 8684 section 3.5); its subflows close like after a RST. */
  private fastclose(r: number, now: number): void {
    this.counters.events[Counter.FastcloseSeen]++;
    this.life.closeConnectionOf(r, now);
  }

  /**
   * Expires idle flows and lingering tokens. Call it periodically (every ~100 ms); each call visits at most
   * `budget` records of each table, so its cost is bounded whatever the table sizes.
   */
  tick(nowMs: number, budget = Math.max(4096, this.flows.capacity >>> 5)): void {
    this.life.tick(msTick(nowMs), budget);
  }

  /**
   * The kernel's answer to an OffloadEvent.Check of flow r: its last packet on the fast path was at nowMs - ageMs
   * (ageMs < 0: the kernel has no entry). Cold (called by the packet worker between batches).
   */
  offloadSeen(r: number, ageMs: number, nowMs: number): void {
    const now = msTick(nowMs);
    this.offload.seen(r, ageMs < 0 ? -1 : msTick(nowMs - ageMs), now);
  }

  // ---- the shared token store (cold: called by store-sync.ts between batches) ----

  /** What the store should hold for connection c, or undefined when it is not steerable (gone, ambiguous). */
  storeInfo(c: number): { token: number; vip: string; backend: string; version: number; ours: boolean } | undefined {
    const conns = this.conns;
    if (c < 0 || c >= conns.capacity || !conns.live[c]) return undefined;
    const f = conns.flags[c];
    if ((f & ConnFlag.Indexed) === 0 || (f & ConnFlag.Ambiguous) !== 0) return undefined;
    const svc = this.services;
    return { token: conns.token[c], vip: svc.vipId(conns.vip[c]), backend: svc.backendId(conns.backend[c]), version: f & ConnFlag.V1 ? 1 : 0, ours: (f & ConnFlag.Remote) === 0 };
  }

  /** Subflows of connection c that were steered here by token (the ones published as subflow entries). */
  *joinSubflows(c: number): Generator<number> {
    for (let f = this.conns.firstFlow[c]; f >= 0; f = this.flows.next(f)) if (this.flows.state(f) & FlowState.Join) yield f;
  }

  /** Another balancer holds this token for a different backend: nobody may steer joins by it. */
  markTokenAmbiguous(token: number): void {
    const c = this.conns.find(token >>> 0);
    if (c >= 0) this.conns.flags[c] |= ConnFlag.Ambiguous;
  }

  /**
   * A connection learned by another balancer, from the store: joins for its token are steered to its backend.
   * False when the entry names a VIP or backend this balancer does not have (refused) or the table is full.
   */
  adoptConnection(token: number, e: { vip: string; backend: string; version: number }, nowMs: number): boolean {
    const b = this.resolveBackend(e);
    if (b < 0) return false;
    const conns = this.conns, now = msTick(nowMs);
    if (conns.find(token >>> 0) >= 0) return true; // learned meanwhile
    let c = conns.alloc(token >>> 0, e.version, b, this.services.beVip[b], now);
    if (c < 0 && this.life.evictConn()) c = conns.alloc(token >>> 0, e.version, b, this.services.beVip[b], now);
    if (c < 0) { this.counters.events[Counter.ConnTableFull]++; return false; }
    conns.flags[c] |= ConnFlag.Remote | ConnFlag.Established;
    conns.indexToken(c);
    this.counters.events[Counter.ConnsAdopted]++;
    return true;
  }

  /** The store's backend for the next packet without a flow (a released subflow hold). */
  pinNextFlow(e: { vip: string; backend: string }): boolean {
    this.pinNext = this.resolveBackend(e);
    return this.pinNext >= 0;
  }

  /** Forgets a pin whose packet will not be processed after all. */
  clearPin(): void { this.pinNext = -1; }

  private resolveBackend(e: { vip: string; backend: string }): number {
    const svc = this.services;
    const v = svc.findVipById(e.vip);
    if (v < 0 || svc.vipRemoved[v]) return -1;
    const b = svc.findBackend(e.backend, v);
    return b >= 0 && !svc.beRemoved[b] ? b : -1;
  }

  // ---- introspection (cold; introspect.ts) ----

  /** Backend of the flow a reply packet belongs to (its source is the VIP, its destination the client), or -1. */
  backendOfReply(buf: Uint8Array, off: number, len: number): number { return this.info.backendOfReply(buf, off, len); }
  flowDescription(r: number): string { return this.info.flowDescription(r); }
  connectionInfo(c: number): ConnectionInfo { return this.info.connectionInfo(c); }
  /** Live connection indices (for the admin API and replay). */
  connectionIndices(): Generator<number> { return this.info.connectionIndices(); }
  findConnection(token: number): number { return this.conns.find(token >>> 0); }
  addressOf(b: number): string { return this.info.addressOf(b); }
}

function copyKey(buf: Uint8Array, off: number, keys: Uint32Array, at: number): void {
  keys[at] = ((buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]) >>> 0;
  keys[at + 1] = ((buf[off + 4] << 24) | (buf[off + 5] << 16) | (buf[off + 6] << 8) | buf[off + 7]) >>> 0;
}
