// Which flows the kernel fast path (bpf/fastpath.bpf.c) may carry, and when they come back to the engine.
// The engine decides; this file writes small integer records into a fixed ring (like store-events.ts) that the
// packet worker drains between batches into map updates (src/fastpath/flow-map.ts). Pure, no allocation.
//
// A flow is offloaded once the engine no longer needs its packets: established, no FIN or RST seen, and for an
// MPTCP subflow its keys learned and the client's first packet after the SYN read (Engine.needsScan is then
// false for everything but RSTs, which the program never NATs). The program also passes up FIN, RST and any
// segment with an MPTCP option other than DSS, so MP_FASTCLOSE (v0 on an ACK, RFC 6824 3.5) still reaches the
// engine. A flow comes back when the engine sees its FIN or RST, when it is removed (expiry, eviction, reopen),
// on MP_FASTCLOSE, and when mptcpAware changes. Idle expiry asks the kernel first (OffloadEvent.Check).
import { Counter, type Counters } from './counters.js';
import { FlowState, MptcpMode, type FlowTable } from './flow-table.js';

export const enum OffloadEvent {
  /** Put flow r's two entries (client -> VIP, backend -> client) in the kernel map. */
  Insert = 1,
  /** Take them out (the key fields say which: flow r may already be free). */
  Remove = 2,
  /** Flow r looks idle to the engine: read the kernel's last-seen times and answer with Engine.offloadSeen. */
  Check = 3,
}

const CLOSED = FlowState.Rst | FlowState.FinClient | FlowState.FinServer;
const KEYS_READ = FlowState.KeysDone | FlowState.ClientSeen;
const INSERT_BACKOFF = 256;
const OFFLOAD_BITS = FlowState.Offloaded | FlowState.OffloadCheck | FlowState.OffloadIdle;

/** A fixed ring of offload events with each flow's key fields copied in (a removed flow's record is reused). */
export class OffloadRing {
  readonly kind: Uint8Array;
  readonly flow: Int32Array;
  /** Client address words (as FlowTable keeps them), 4 per event. */
  readonly client: Uint32Array;
  /** client port | vip << 16 */
  readonly portVip: Uint32Array;
  /** backend | state << 16 (the state's V6, CrossVip and MPTCP facts) */
  readonly backendState: Uint32Array;
  /** 1 when the flow is an MPTCP subflow (the program then reads its options). */
  readonly mptcp: Uint8Array;
  private head = 0;
  private tail = 0;

  constructor(readonly capacity = 65536) {
    this.kind = new Uint8Array(capacity);
    this.flow = new Int32Array(capacity);
    this.client = new Uint32Array(capacity * 4);
    this.portVip = new Uint32Array(capacity);
    this.backendState = new Uint32Array(capacity);
    this.mptcp = new Uint8Array(capacity);
  }

  get length(): number { return this.tail - this.head; }
  get full(): boolean { return this.tail - this.head >= this.capacity; }

  /** Hot: copies flow r's key fields into the next slot. The caller checked `full`. */
  push(kind: OffloadEvent, flows: FlowTable, r: number, mptcp: boolean): void {
    const i = this.tail % this.capacity;
    this.kind[i] = kind;
    this.flow[i] = r;
    for (let w = 0; w < 4; w++) this.client[i * 4 + w] = flows.clientWord(r, w);
    this.portVip[i] = flows.clientPort(r) | (flows.vip(r) << 16);
    this.backendState[i] = (flows.backend(r) | (flows.state(r) << 16)) >>> 0;
    this.mptcp[i] = mptcp ? 1 : 0;
    this.tail++;
  }

  /** Hands each pending event's slot index to `f` in order, then empties the ring. */
  drain(f: (slot: number) => void): number {
    let n = 0;
    while (this.head < this.tail) {
      const i = this.head % this.capacity;
      this.head++;
      n++;
      f(i);
    }
    this.head = this.tail = 0;
    return n;
  }

  clear(): void { this.head = this.tail = 0; }
}

export class Offload {
  /** Set by the packet worker when the tc-bpf data path is attached; off, the engine writes nothing. */
  enabled = false;
  /**
   * A removal could not be queued (ring full): the kernel map may hold an entry the engine has forgotten. The
   * worker then empties the map and calls `forgetAll` (flows come back through the TUN and are offloaded again).
   */
  flushPending = false;
  readonly ring: OffloadRing;
  private backoff = 0;

  constructor(private readonly flows: FlowTable, private readonly counters: Counters, ringCapacity = 65536) {
    this.ring = new OffloadRing(ringCapacity);
  }

  /** Whether flow r's packets may all go on the fast path now (see the file comment). Hot. */
  wanted(r: number, aware: boolean): boolean {
    const st = this.flows.state(r);
    if ((st & FlowState.Established) === 0 || (st & CLOSED) !== 0) return false;
    if (!aware || this.flows.mptcpMode(r) === MptcpMode.None) return true;
    return (st & KEYS_READ) === KEYS_READ;
  }

  /** After the engine handled a packet of flow r: offload it when it may go, release it when it must come back. Hot. */
  update(r: number, aware: boolean): void {
    if (!this.enabled) return;
    const st = this.flows.state(r);
    const on = (st & FlowState.Offloaded) !== 0;
    const want = this.wanted(r, aware);
    // Seen here just now: not idle, whatever the kernel said.
    if ((st & FlowState.OffloadIdle) !== 0) this.flows.setState(r, st & ~FlowState.OffloadIdle);
    if (want === on) return;
    if (want) this.insert(r, aware);
    else this.release(r);
  }

  private insert(r: number, aware: boolean): void {
    // The kernel map was full: try again only every INSERT_BACKOFF candidates, not on every packet.
    if (this.backoff > 0) { this.backoff--; return; }
    if (this.ring.full) { this.counters.events[Counter.OffloadEventsLost]++; return; } // tried again on its next packet
    const mptcp = aware && this.flows.mptcpMode(r) !== MptcpMode.None;
    this.ring.push(OffloadEvent.Insert, this.flows, r, mptcp);
    this.flows.orState(r, FlowState.Offloaded);
    this.counters.events[Counter.FlowsOffloaded]++;
  }

  /** The worker could not insert flow r's entries (map full): it stays on the TUN path for now. */
  insertFailed(r: number): void {
    const flows = this.flows;
    if (flows.isLive(r)) flows.setState(r, flows.state(r) & ~(OFFLOAD_BITS));
    this.counters.events[Counter.OffloadInsertFailed]++;
    this.backoff = INSERT_BACKOFF;
  }

  /** Takes flow r off the fast path (its record stays). No-op when it is not on it. */
  release(r: number): void {
    const st = this.flows.state(r);
    if ((st & FlowState.Offloaded) === 0) return;
    this.flows.setState(r, st & ~(OFFLOAD_BITS));
    this.counters.events[Counter.FlowsOffloadReleased]++;
    if (this.ring.full) { this.lost(); return; }
    this.ring.push(OffloadEvent.Remove, this.flows, r, false);
  }

  /**
   * Lifecycle asks before expiring flow r. Returns true when it may go now; false when the kernel must be asked
   * first (a Check was queued: the flow may be carrying traffic the engine does not see).
   */
  mayExpire(r: number): boolean {
    const st = this.flows.state(r);
    if (!this.enabled || (st & FlowState.Offloaded) === 0 || (st & FlowState.OffloadIdle) !== 0) return true;
    // Asked, not answered yet (a small table's tick can visit a flow twice before the worker drains the ring).
    if ((st & FlowState.OffloadCheck) !== 0 || this.ring.full) return false;
    this.flows.orState(r, FlowState.OffloadCheck);
    this.ring.push(OffloadEvent.Check, this.flows, r, false);
    this.counters.events[Counter.OffloadChecks]++;
    return false;
  }

  /** The kernel's answer to a Check: the flow's last packet on the fast path was at tick `seen` (or none, -1). */
  seen(r: number, seen: number, now: number): void {
    const flows = this.flows;
    if (!flows.isLive(r) || (flows.state(r) & FlowState.OffloadCheck) === 0) return;
    const st = flows.state(r) & ~FlowState.OffloadCheck;
    // Newer than what the engine saw: the flow is alive on the fast path. Otherwise it is idle there too.
    if (seen >= 0 && ((now - flows.lastSeen(r)) & 0x3fffffff) > ((now - seen) & 0x3fffffff)) {
      flows.setLastSeen(r, seen);
      flows.setState(r, st);
      this.counters.events[Counter.OffloadRefreshed]++;
    } else {
      flows.setState(r, st | FlowState.OffloadIdle);
    }
  }

  private lost(): void {
    this.counters.events[Counter.OffloadEventsLost]++;
    this.flushPending = true;
  }

  /** Every flow off the fast path (the worker emptied the kernel map): cold, O(table capacity). */
  forgetAll(): void {
    const flows = this.flows;
    for (let r = 0; r < flows.capacity; r++) {
      if (flows.isLive(r)) flows.setState(r, flows.state(r) & ~(OFFLOAD_BITS));
    }
    this.ring.clear();
    this.flushPending = false;
    this.counters.events[Counter.OffloadFlushes]++;
  }

  /** Takes every offloaded flow back (e.g. mptcpAware changed, so what the engine must read changed). Cold. */
  releaseAll(): void {
    const flows = this.flows;
    for (let r = 0; r < flows.capacity; r++) if (flows.isLive(r)) this.release(r);
  }
}
