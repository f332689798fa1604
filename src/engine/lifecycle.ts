// Lifetimes of flows and connections: a subflow joins its connection's list, leaves it when it ends, and the
// connection's token outlives its last subflow by tokenLingerMs (Linux keeps the connection for
// net.mptcp.close_timeout). Expiry runs in bounded steps (tick); a full table reclaims or evicts one record.
// No allocation.
import type { EngineConfig } from './config.js';
import { ConnFlag, type ConnTable } from './conn-table.js';
import { Counter, type Counters } from './counters.js';
import { FlowState, type FlowTable } from './flow-table.js';
import { StoreEvent, type StoreEventRing } from './store-events.js';
import type { Offload } from './offload.js';

/**
 * Times are kept as milliseconds modulo 2^30 (ages compared modulo 2^30, so timeouts stay below 2^29 ms, 6.2 days):
 * 30-bit values are V8 small integers, so passing them around allocates nothing.
 */
const TICK_MASK = 0x3fffffff;
export function msTick(nowMs: number): number { return (nowMs >>> 0) & TICK_MASK; }

/** Records visited per table and call when a table is full and one record must be reclaimed. */
const RECLAIM_SCAN = 64;

export class Lifecycle {
  /** Clock hands: where the next expiry or eviction scan of each table starts. */
  private flowHand = 0;
  private connHand = 0;

  constructor(
    private readonly flows: FlowTable,
    private readonly conns: ConnTable,
    private readonly counters: Counters,
    private timeouts: EngineConfig['timeouts'],
    private readonly storeEvents: StoreEventRing,
    private readonly offload?: Offload,
  ) {}

  setTimeouts(t: EngineConfig['timeouts']): void { this.timeouts = t; }

  /** The flow under the clock hand; the hand moves on. */
  private nextFlow(): number {
    const r = this.flowHand;
    this.flowHand = r + 1 === this.flows.capacity ? 0 : r + 1;
    return r;
  }

  private nextConn(): number {
    const c = this.connHand;
    this.connHand = c + 1 === this.conns.capacity ? 0 : c + 1;
    return c;
  }

  /** Puts flow r on connection c's subflow list; a lingering connection is live again. */
  linkFlow(r: number, c: number): void {
    const flows = this.flows, conns = this.conns;
    flows.setConn(r, c);
    flows.setNext(r, conns.firstFlow[c]);
    conns.firstFlow[c] = r;
    if (conns.subflows[c] < 255) conns.subflows[c]++;
    conns.flags[c] &= ~ConnFlag.Lingering;
  }

  /** Frees flow r, unlinking it from its connection; the connection lingers or is freed when r was its last subflow. */
  removeFlow(r: number, now: number): void {
    const flows = this.flows, conns = this.conns;
    const c = flows.conn(r);
    if (c >= 0) {
      let prev = -1;
      for (let f = conns.firstFlow[c]; f >= 0; prev = f, f = flows.next(f)) {
        if (f !== r) continue;
        if (prev < 0) conns.firstFlow[c] = flows.next(f);
        else flows.setNext(prev, flows.next(f));
        break;
      }
      if (conns.subflows[c] > 0) conns.subflows[c]--;
      if (flows.state(r) & FlowState.Established) conns.flags[c] |= ConnFlag.Established;
      if (conns.firstFlow[c] < 0) {
        // The token outlives the last subflow (Linux keeps the connection for net.mptcp.close_timeout), but only
        // for a connection that got past its handshake: one that never did can have no joins, and lingering it
        // would let a SYN flood that servers answer fill the table for a minute.
        if ((conns.flags[c] & (ConnFlag.Indexed | ConnFlag.Established)) === (ConnFlag.Indexed | ConnFlag.Established) && this.timeouts.tokenLingerMs > 0) {
          conns.flags[c] |= ConnFlag.Lingering;
          conns.lastSeen[c] = now;
          // Only the balancer that learned the token shortens its store entry: others may hold live subflows.
          if ((conns.flags[c] & ConnFlag.Remote) === 0) this.storeEvents.push(StoreEvent.ConnLinger, c, conns.token[c]);
        } else {
          this.freeConn(c);
        }
      }
    }
    this.offload?.release(r);
    flows.remove(r);
  }

  /** Frees connection c. Subflows still pointing at it (a replaced token) are detached first. */
  freeConn(c: number): void {
    for (let f = this.conns.firstFlow[c]; f >= 0;) {
      const n = this.flows.next(f);
      this.flows.setConn(f, -1);
      this.flows.setNext(f, -1);
      f = n;
    }
    this.conns.free(c);
  }

  /**
   * MP_FASTCLOSE on flow r: the whole connection is gone (RFC 8684 section 3.5). Its token leaves the index at once
   * and every subflow closes as after a RST.
   */
  closeConnectionOf(r: number, now: number): void {
    const c = this.flows.conn(r);
    if (c < 0) { this.flows.orState(r, FlowState.Rst); return; }
    this.conns.unindexToken(c);
    this.storeEvents.push(StoreEvent.ConnClosed, c, this.conns.token[c]);
    this.counters.events[Counter.ConnsFastclosed]++;
    for (let f = this.conns.firstFlow[c]; f >= 0; f = this.flows.next(f)) {
      this.flows.orState(f, FlowState.Rst);
      this.flows.setLastSeen(f, now);
      // Its subflows' remaining packets go through the engine again, as after any RST.
      this.offload?.release(f);
    }
  }

  flowExpired(r: number, now: number): boolean {
    const st = this.flows.state(r);
    const t = this.timeouts;
    const limit = st & FlowState.Rst ? t.rstMs
      : (st & FlowState.Closing) === FlowState.Closing ? t.finMs
        : st & FlowState.Established ? t.establishedMs : t.synMs;
    return ((now - this.flows.lastSeen(r)) & TICK_MASK) > limit;
  }

  /** A lingering connection past its linger (its token may be reclaimed). */
  connExpired(c: number, now: number): boolean {
    return ((now - this.conns.lastSeen[c]) & TICK_MASK) > this.timeouts.tokenLingerMs;
  }

  /** When the flow table is full: reclaim an expired flow, else evict an embryonic one (never an established flow). */
  evictFlow(now: number): boolean {
    const flows = this.flows;
    for (let i = 0; i < RECLAIM_SCAN; i++) {
      const r = this.nextFlow();
      if (!flows.isLive(r)) continue;
      if (this.flowExpired(r, now) && (this.offload === undefined || this.offload.mayExpire(r))) { this.removeFlow(r, now); this.counters.events[Counter.FlowsExpired]++; return true; }
      if ((flows.state(r) & FlowState.Established) === 0) {
        this.removeFlow(r, now);
        this.counters.events[Counter.FlowsEvictedEmbryonic]++;
        return true;
      }
    }
    return false;
  }

  /** When the connection table is full: reclaim a lingering connection. */
  evictConn(): boolean {
    const conns = this.conns;
    for (let i = 0; i < RECLAIM_SCAN; i++) {
      const c = this.nextConn();
      if (conns.live[c] && (conns.flags[c] & ConnFlag.Lingering) !== 0) {
        this.freeConn(c);
        this.counters.events[Counter.ConnsExpired]++;
        return true;
      }
    }
    return false;
  }

  /** Expires idle flows and lingering tokens, visiting at most `budget` records of each table. */
  tick(now: number, budget: number): void {
    const flows = this.flows, conns = this.conns;
    const ev = this.counters.events;
    for (let i = 0; i < budget && flows.used > 0; i++) {
      const r = this.nextFlow();
      // An offloaded flow may be busy on the fast path: the kernel's last-seen time is asked for first.
      if (flows.isLive(r) && this.flowExpired(r, now) && (this.offload === undefined || this.offload.mayExpire(r))) {
        const closed = (flows.state(r) & (FlowState.Rst | FlowState.FinClient | FlowState.FinServer)) !== 0;
        this.removeFlow(r, now);
        ev[closed ? Counter.FlowsClosed : Counter.FlowsExpired]++;
      }
    }
    for (let i = 0; i < budget && conns.used > 0; i++) {
      const c = this.nextConn();
      if (conns.live[c] && conns.firstFlow[c] < 0 && this.connExpired(c, now)) {
        this.freeConn(c);
        ev[Counter.ConnsExpired]++;
      }
    }
  }
}
