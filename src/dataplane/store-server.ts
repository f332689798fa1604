// The main thread's side of the shared token store: serves the packet worker's StoreRequests (store-sync.ts) with a
// TokenStore. Publishes are queued and sent as Lua batches (TokenStore.publishBatch): one command per batch instead
// of one per token is what lets one store client keep up with one engine; a failed batch is tried again after a
// backoff. Writes are pipelined (retried inside writeBatch); lookups are answered together.
import type { TokenStore } from '../cluster/token-store.js';
import type { StoreAnswer, StoreRequests } from './store-sync.js';

export interface StoreServerOptions {
  ttlMs: number;
  /** The store's command timeout: the unit of the retry backoff, and what the batches in flight must stay well inside. */
  commandTimeoutMs: number;
  /** Tokens per publish command. Default 256. */
  batchMax?: number;
  /** Most publish commands in flight. Default 8. */
  batchesInFlight?: number;
  /** Most tokens waiting to be sent; beyond it new publishes are dropped and counted. Default 65536. */
  maxQueued?: number;
}

/** Tries of one token's publish, first included. */
export const PUBLISH_TRIES = 3;

export interface StoreServerCounters {
  /** Publishes given up after PUBLISH_TRIES failures (tokens the cluster does not know; the next refresh repairs them). */
  publishFailed: number;
  /** Publishes dropped because the queue was full (the store cannot keep up with the engine). */
  publishDropped: number;
  /** Times a slow batch (over 3/4 of the command timeout) halved the batches allowed in flight. */
  windowShrinks: number;
}

export class StoreServer {
  /** Tokens handed over and not yet answered (ok, collision, given up, or dropped). */
  outstanding = 0;
  readonly counters: StoreServerCounters = { publishFailed: 0, publishDropped: 0, windowShrinks: 0 };
  // The queue: parallel arrays read from `head` (no per-token object; taking a batch does not move the rest).
  private qTokens: number[] = [];
  private qValues: string[] = [];
  private qTries: number[] = [];
  private head = 0;
  private inFlight = 0;
  /**
   * Batches allowed in flight now. The store answers batches one after another, so those in flight wait for each
   * other: on a slow store (or a slow machine) 8 batches of 256 can outlast the command timeout and fail although
   * the store is fine. Halved when a batch took more than 3/4 of the timeout, grown back one at a time when batches
   * come back within half of it.
   */
  private window: number;
  private readonly batchMax: number;
  private readonly batchesInFlight: number;
  private readonly maxQueued: number;

  constructor(private readonly store: TokenStore, private readonly opts: StoreServerOptions, private readonly answer: (m: StoreAnswer) => void) {
    this.batchMax = opts.batchMax ?? 256;
    this.batchesInFlight = opts.batchesInFlight ?? 8;
    this.maxQueued = opts.maxQueued ?? 65536;
    this.window = this.batchesInFlight;
  }

  /** Publish commands allowed in flight now (the adaptive window). */
  get batchesAllowed(): number { return this.window; }

  /** Tokens queued, not yet sent. */
  get queued(): number { return this.qTokens.length - this.head; }

  serve(m: StoreRequests): void {
    if (m.writes.length > 0) void this.store.writeBatch(m.writes);
    const p = m.publish, n = p.tokens.length;
    const room = Math.max(0, this.maxQueued - this.queued);
    const take = Math.min(n, room);
    for (let i = 0; i < take; i++) { this.qTokens.push(p.tokens[i]); this.qValues.push(p.values[p.entry[i]]); this.qTries.push(0); }
    if (take < n) this.counters.publishDropped += n - take;
    this.outstanding += take;
    this.pump();
    if (m.lookups.length > 0) {
      void Promise.all(m.lookups.map(async (l) => ({ id: l.id, ...(await this.store.lookup(l.key)) })))
        .then((answers) => this.answer({ type: 'store-answers', answers }));
    }
  }

  private enqueue(token: number, value: string, tries: number): void {
    this.qTokens.push(token); this.qValues.push(value); this.qTries.push(tries);
  }

  private pump(): void {
    while (this.inFlight < this.window && this.head < this.qTokens.length) {
      const from = this.head, to = Math.min(this.qTokens.length, from + this.batchMax);
      const tokens = this.qTokens.slice(from, to), values = this.qValues.slice(from, to), tries = this.qTries.slice(from, to);
      this.head = to;
      if (this.head === this.qTokens.length) { this.qTokens.length = 0; this.qValues.length = 0; this.qTries.length = 0; this.head = 0; }
      else if (this.head > 16384) { this.qTokens.splice(0, this.head); this.qValues.splice(0, this.head); this.qTries.splice(0, this.head); this.head = 0; }
      this.inFlight++;
      const t0 = performance.now();
      void this.store.publishBatch(tokens, values, this.opts.ttlMs).then((rs) => {
        this.inFlight--;
        const took = performance.now() - t0, limit = this.opts.commandTimeoutMs;
        if (took > limit * 0.75) { this.window = Math.max(1, this.window >> 1); this.counters.windowShrinks++; }
        else if (took < limit / 2 && this.window < this.batchesInFlight) this.window++;
        let again = 0, backoff = 0;
        for (let i = 0; i < rs.length; i++) {
          const r = rs[i];
          if (r === 'error' && tries[i] + 1 < PUBLISH_TRIES && this.store.up) { tries[i]++; again++; backoff = tries[i]; continue; }
          tries[i] = -1;
          this.outstanding--;
          if (r === 'collision') this.answer({ type: 'store-collision', token: tokens[i] });
          else if (r === 'error') this.counters.publishFailed++;
        }
        // After a backoff: a store stalled past the command timeout needs a moment, not an instant retry.
        if (again > 0) {
          setTimeout(() => {
            for (let i = 0; i < tokens.length; i++) if (tries[i] >= 0) this.enqueue(tokens[i], values[i], tries[i]);
            this.pump();
          }, limit * backoff * 2).unref();
        }
        this.pump();
      });
    }
  }
}
