// The packet worker's side of the shared token store. The store client itself (src/cluster/token-store.ts) lives
// on the main thread, whose event loop is free to wait on sockets; this side, between batches, turns the engine's
// store events into write requests, sends lookups for held packets (retrying within the wait), and releases them
// to the forwarder with the answers that come back. The engine never waits: while the store is down nothing is held.
import type { Engine } from '../engine/engine.js';
import { StoreEvent } from '../engine/store-events.js';
import { encodeEntry, flowKey, tokenKey, type StoreEntry, type StoreWrite } from '../cluster/token-store.js';
import type { Forwarder } from './forwarder.js';
import { HoldKind, HoldPool, type HeldPacket, type HoldLimits } from './hold.js';

export interface StoreSyncOptions extends HoldLimits {
  keyPrefix: string;
  /** Lifetime of a live token's entry; refreshed every third of it. */
  ttlMs: number;
  /** Lifetime after the last subflow closed (the engine's tokenLingerMs). */
  lingerMs: number;
  /** Store lookups per held packet within maxWaitMs (the first one included). */
  tries: number;
}

/** Worker -> main: what to write and what to look up (one message per loop turn that has any). */
export interface StoreRequests {
  type: 'store';
  /** Tokens learned here: set-if-absent (a collision comes back as 'store-collision'). */
  publish: Array<{ token: number; entry: StoreEntry }>;
  writes: StoreWrite[];
  lookups: Array<{ id: number; key: string }>;
}

/** Main -> worker. */
export type StoreAnswer =
  | { type: 'store-state'; up: boolean; republish: boolean }
  | { type: 'store-answers'; answers: Array<{ id: number; outcome: 'found' | 'absent' | 'ambiguous' | 'invalid' | 'error'; entry?: StoreEntry }> }
  | { type: 'store-collision'; token: number };

/** Slots of the store's counters (shared memory, read by the main thread). */
export const enum SyncCounter {
  StoreUp = 0,
  JoinsHeld = 1,
  JoinsFoundInStore = 2,
  JoinsRetried = 3,
  JoinsTimedOut = 4,
  JoinsNotInStore = 5,
  FlowsHeld = 6,
  FlowsFoundInStore = 7,
  FlowsNotInStore = 8,
  HoldRefused = 9,
  Collisions = 10,
  EventsDropped = 11,
  RejectedEntries = 12,
  Republished = 13,
  Lookups = 14,
  LookupErrors = 15,
  /** How long released packets were held: total ms, and a histogram by HOLD_WAIT_BUCKETS_MS upper bounds. */
  HoldWaitMsTotal = 16,
  HoldWaitHist = 17,
  Count = HoldWaitHist + 13,
}
/** Upper bounds (ms) of the hold-time histogram's buckets; the last bucket takes everything longer. */
export const HOLD_WAIT_BUCKETS_MS = [0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] as const;
export const SYNC_COUNTER_LABELS = [
  'store_up', 'joins_held', 'joins_found_in_store', 'joins_store_retried', 'joins_store_timed_out', 'joins_not_in_store',
  'flows_held', 'flows_found_in_store', 'flows_not_in_store', 'hold_refused', 'store_collisions', 'store_events_dropped',
  'store_entries_rejected', 'store_republished', 'store_lookups', 'store_lookup_errors', 'hold_wait_ms_total',
  ...HOLD_WAIT_BUCKETS_MS.map((b) => `hold_wait_le_${b}ms`), 'hold_wait_gt_512ms',
] as const;

export class StoreSync {
  readonly pool: HoldPool;
  private req: StoreRequests = { type: 'store', publish: [], writes: [], lookups: [] };
  private readonly retryAt = new Map<number, number>();
  /** When the next refresh is due (NaN until the first step: nothing learned yet needs one). */
  private nextRefresh = NaN;
  private up = false;

  constructor(private readonly engine: Engine, private readonly fwd: Forwarder, private readonly opts: StoreSyncOptions,
    readonly counters: Float64Array, private readonly send: (r: StoreRequests) => void) {
    this.pool = new HoldPool(opts);
    engine.storeEvents.enabled = true;
  }

  /** Called by the forwarder for a packet the engine held: keep it, or say no (the engine then answers it at once). */
  hold(view: Uint8Array, headerBytes: number, len: number, flags: number, nowMs: number): boolean {
    const e = this.engine;
    const kind = e.lastHold === HoldKind.Flow ? HoldKind.Flow : HoldKind.Token;
    const p = this.pool.hold(kind, e.lastJoinToken, kind === HoldKind.Flow ? e.lastHoldSubflow : '', view, headerBytes, len, flags, nowMs);
    if (!p) { this.counters[SyncCounter.HoldRefused]++; return false; }
    // A DSS or plain packet with no flow is asked for once: "absent" then means no balancer steered it by token.
    if (kind === HoldKind.Flow && !e.lastHoldMayRace) p.maxTries = 1;
    this.counters[kind === HoldKind.Token ? SyncCounter.JoinsHeld : SyncCounter.FlowsHeld]++;
    this.ask(p);
    return true;
  }

  /** What the main thread says. */
  onMessage(m: StoreAnswer, nowMs: number): void {
    if (m.type === 'store-state') {
      this.up = m.up;
      this.engine.holdEnabled = m.up;
      this.counters[SyncCounter.StoreUp] = m.up ? 1 : 0;
      if (m.up && m.republish) { this.counters[SyncCounter.Republished]++; this.refresh(true); }
      if (!m.up) for (const p of [...this.pool.all()]) this.release(p, undefined, nowMs); // answer them now, locally
    } else if (m.type === 'store-collision') {
      this.counters[SyncCounter.Collisions]++;
      this.engine.markTokenAmbiguous(m.token);
    } else {
      for (const a of m.answers) this.onAnswer(a.id, a.outcome, a.entry, nowMs);
    }
  }

  /** Between batches: events out, retries and expired holds, refresh when due; one message to the main thread. */
  step(nowMs: number): void {
    this.engine.storeEvents.drain((kind, a, b) => this.onEvent(kind, a, b));
    this.counters[SyncCounter.EventsDropped] = this.engine.storeEvents.dropped;
    for (const [id, at] of this.retryAt) {
      if (nowMs < at) continue;
      this.retryAt.delete(id);
      const p = this.pool.get(id);
      if (p) this.ask(p);
    }
    for (const p of this.pool.expired(nowMs)) {
      this.counters[p.kind === HoldKind.Token ? SyncCounter.JoinsTimedOut : SyncCounter.FlowsNotInStore]++;
      this.release(p, undefined, nowMs);
    }
    if (this.nextRefresh !== this.nextRefresh) this.nextRefresh = nowMs + this.opts.ttlMs / 3;
    if (this.up && nowMs >= this.nextRefresh) { this.nextRefresh = nowMs + this.opts.ttlMs / 3; this.refresh(false); }
    const r = this.req;
    if (r.publish.length + r.writes.length + r.lookups.length > 0) {
      this.req = { type: 'store', publish: [], writes: [], lookups: [] };
      this.send(r);
    }
  }

  private onEvent(kind: StoreEvent, a: number, b: number): void {
    const e = this.engine, pre = this.opts.keyPrefix;
    switch (kind) {
      case StoreEvent.TokenLearned: {
        const info = e.storeInfo(a);
        if (info && info.token === (b >>> 0)) this.req.publish.push({ token: info.token, entry: entryOf(info) });
        return;
      }
      case StoreEvent.JoinSteered: {
        const info = e.storeInfo(b);
        if (info && e.flows.isLive(a)) this.req.writes.push({ op: 'set', key: flowKey(pre, e.flowDescription(a)), value: encodeEntry(entryOf(info)), ttlMs: this.opts.ttlMs });
        return;
      }
      case StoreEvent.ConnLinger:
        this.req.writes.push({ op: 'expire', key: tokenKey(pre, b), ttlMs: Math.max(1, this.opts.lingerMs) });
        return;
      case StoreEvent.ConnClosed:
        this.req.writes.push({ op: 'del', key: tokenKey(pre, b) });
        return;
    }
  }

  /**
   * Keeps the entries of live connections learned here alive (set-if-absent again: a missing one is recreated, a
   * collision marker is kept); `all`: the store came back, subflow entries are written again too.
   */
  private refresh(all: boolean): void {
    const e = this.engine, pre = this.opts.keyPrefix, ttl = this.opts.ttlMs;
    for (const c of e.connectionIndices()) {
      const info = e.storeInfo(c);
      if (!info) continue;
      const entry = entryOf(info);
      // Published again, not just extended: a publish that failed (a burst, a blip) is repaired by the next refresh.
      if (info.ours) this.req.publish.push({ token: info.token, entry });
      for (const f of e.joinSubflows(c)) {
        const key = flowKey(pre, e.flowDescription(f));
        this.req.writes.push(all ? { op: 'set', key, value: encodeEntry(entry), ttlMs: ttl } : { op: 'expire', key, ttlMs: ttl });
      }
    }
  }

  private ask(p: HeldPacket): void {
    p.tries++;
    this.req.lookups.push({ id: p.id, key: p.kind === HoldKind.Token ? tokenKey(this.opts.keyPrefix, p.token) : flowKey(this.opts.keyPrefix, p.subflow) });
  }

  private onAnswer(id: number, outcome: string, entry: StoreEntry | undefined, nowMs: number): void {
    const p = this.pool.get(id);
    if (!p) return;
    const c = this.counters;
    c[SyncCounter.Lookups]++;
    if (outcome === 'found' && entry) {
      c[p.kind === HoldKind.Token ? SyncCounter.JoinsFoundInStore : SyncCounter.FlowsFoundInStore]++;
      this.release(p, entry, nowMs);
      return;
    }
    if (outcome === 'error') c[SyncCounter.LookupErrors]++;
    // The race is real: a join can reach this balancer microseconds after its third ACK reached another one, before
    // that one has published the token; and a join's own ACK can reach this balancer before the one that steered its
    // SYN has published the subflow. Ask again within the wait.
    // A failed lookup (a command timed out on a busy store) is asked again too; the wait still bounds it.
    if ((outcome === 'absent' || outcome === 'error') && p.tries < Math.min(p.maxTries, this.opts.tries)) {
      if (p.kind === HoldKind.Token) c[SyncCounter.JoinsRetried]++;
      this.retryAt.set(id, nowMs + this.opts.maxWaitMs / this.opts.tries);
      return;
    }
    if (outcome === 'invalid') c[SyncCounter.RejectedEntries]++;
    c[p.kind === HoldKind.Token ? SyncCounter.JoinsNotInStore : SyncCounter.FlowsNotInStore]++;
    this.release(p, undefined, nowMs);
  }

  /** Gives a held packet back to the forwarder with what the store said (undefined: answer it without). */
  private release(p: HeldPacket, entry: StoreEntry | undefined, nowMs: number): void {
    if (!this.pool.take(p.id)) return;
    const waited = nowMs - p.heldAtMs;
    this.counters[SyncCounter.HoldWaitMsTotal] += waited;
    let k = 0;
    while (k < HOLD_WAIT_BUCKETS_MS.length && waited > HOLD_WAIT_BUCKETS_MS[k]) k++;
    this.counters[SyncCounter.HoldWaitHist + k]++;
    this.retryAt.delete(p.id);
    if (entry) {
      const e = this.engine;
      const ok = p.kind === HoldKind.Token ? e.adoptConnection(p.token, entry, nowMs) : e.pinNextFlow(entry);
      // An entry naming a VIP or backend this balancer does not have is refused: the packet is answered locally.
      if (!ok) this.counters[SyncCounter.RejectedEntries]++;
    }
    this.fwd.release(p, nowMs);
  }
}

const entryOf = (i: { vip: string; backend: string; version: number }): StoreEntry => ({ vip: i.vip, backend: i.backend, version: i.version });
