// What the engine tells the shared token store, without allocating or waiting on the packet path: a fixed ring of
// small integer records that the packet worker drains between batches and turns into pipelined store writes.
// When the ring is full the event is dropped and counted (the store then learns it at the next refresh).

export const enum StoreEvent {
  /** A token was learned here: publish token -> (VIP, backend, version). a = connection, b = token. */
  TokenLearned = 1,
  /** A join was steered by token: publish its subflow -> backend, so the subflow stays put if it moves balancer. a = flow, b = connection. */
  JoinSteered = 2,
  /** The connection's last subflow closed: shorten its token's lifetime to the linger. a = connection, b = token. */
  ConnLinger = 3,
  /** MP_FASTCLOSE: the connection is gone at once. a = connection, b = token. */
  ConnClosed = 4,
}

/** What a held packet waits for (Verdict.Hold). */
export const enum HoldKind { Token = 1, Flow = 2 }

export class StoreEventRing {
  readonly kind: Uint8Array;
  readonly a: Int32Array;
  readonly b: Int32Array;
  private head = 0;
  private tail = 0;
  /** Events lost because the ring was full. */
  dropped = 0;
  /** Off until a store is configured: the engine then writes nothing. */
  enabled = false;

  constructor(readonly capacity = 65536) {
    this.kind = new Uint8Array(capacity);
    this.a = new Int32Array(capacity);
    this.b = new Int32Array(capacity);
  }

  get length(): number { return this.tail - this.head; }

  /** Hot: records one event (no allocation). */
  push(kind: StoreEvent, a: number, b: number): void {
    if (!this.enabled) return;
    if (this.tail - this.head >= this.capacity) { this.dropped++; return; }
    const i = this.tail % this.capacity;
    this.kind[i] = kind;
    this.a[i] = a;
    this.b[i] = b | 0;
    this.tail++;
  }

  /** Hands every pending event to `f` in order, then empties the ring. */
  drain(f: (kind: StoreEvent, a: number, b: number) => void): number {
    let n = 0;
    while (this.head < this.tail) {
      const i = this.head % this.capacity;
      this.head++;
      n++;
      f(this.kind[i] as StoreEvent, this.a[i], this.b[i]);
    }
    this.head = this.tail = 0;
    return n;
  }
}
