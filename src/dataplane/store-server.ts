// The main thread's side of the shared token store: serves the packet worker's StoreRequests (store-sync.ts) with a
// TokenStore. Publishes are queued and sent as Lua batches (TokenStore.publishBatch), 8 batches in flight: one
// command per batch instead of one per token is what lets one store client keep up with one engine; a failed batch
// is tried again after a backoff. Writes are pipelined (retried inside writeBatch); lookups are answered together.
import type { TokenStore } from '../cluster/token-store.js';
import type { StoreAnswer, StoreRequests } from './store-sync.js';

export interface StoreServerOptions {
  ttlMs: number;
  /** The store's command timeout: the unit of the retry backoff. */
  commandTimeoutMs: number;
  /** Tokens per publish command. Default 256. */
  batchMax?: number;
  /** Publish commands in flight. Default 8 (about 10 ms of redis work: well inside a 50 ms command timeout). */
  batchesInFlight?: number;
}

/** Tries of one token's publish, first included. */
export const PUBLISH_TRIES = 3;

type Publish = StoreRequests['publish'][number] & { tries: number };

export class StoreServer {
  /** Tokens handed over and not yet answered (ok, collision, or given up). */
  outstanding = 0;
  /** Publishes given up after PUBLISH_TRIES failures. */
  publishFailed = 0;
  private readonly queue: Publish[] = [];
  private inFlight = 0;
  private readonly batchMax: number;
  private readonly batchesInFlight: number;

  constructor(private readonly store: TokenStore, private readonly opts: StoreServerOptions, private readonly answer: (m: StoreAnswer) => void) {
    this.batchMax = opts.batchMax ?? 256;
    this.batchesInFlight = opts.batchesInFlight ?? 8;
  }

  serve(m: StoreRequests): void {
    if (m.writes.length > 0) void this.store.writeBatch(m.writes);
    for (const p of m.publish) this.queue.push({ token: p.token, entry: p.entry, tries: 0 });
    this.outstanding += m.publish.length;
    this.pump();
    if (m.lookups.length > 0) {
      void Promise.all(m.lookups.map(async (l) => ({ id: l.id, ...(await this.store.lookup(l.key)) })))
        .then((answers) => this.answer({ type: 'store-answers', answers }));
    }
  }

  private pump(): void {
    while (this.inFlight < this.batchesInFlight && this.queue.length > 0) {
      const batch = this.queue.splice(0, this.batchMax);
      this.inFlight++;
      void this.store.publishBatch(batch, this.opts.ttlMs).then((rs) => {
        this.inFlight--;
        const again: Publish[] = [];
        rs.forEach((r, i) => {
          const p = batch[i];
          if (r === 'error' && ++p.tries < PUBLISH_TRIES && this.store.up) { again.push(p); return; }
          this.outstanding--;
          if (r === 'collision') this.answer({ type: 'store-collision', token: p.token });
          else if (r === 'error') this.publishFailed++;
        });
        // After a backoff: a store stalled past the command timeout needs a moment, not an instant retry.
        if (again.length > 0) setTimeout(() => { this.queue.push(...again); this.pump(); }, this.opts.commandTimeoutMs * again[0].tries * 2).unref();
        this.pump();
      });
    }
  }
}
