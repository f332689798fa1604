// Packets the engine held while the shared token store is asked (a join whose token is unknown here, a subflow with
// no local flow): copied out of the batch into a bounded pool, released when the answer comes or the wait runs out.
// Bounded in count, bytes and time; a packet that does not fit is not held (the engine then answers it at once).
// Allocation happens only here, on the miss path, never for established flows.

import { HoldKind } from '../engine/store-events.js';
export { HoldKind };

export interface HeldPacket {
  readonly id: number;
  readonly kind: HoldKind;
  /** The join's token (HoldKind.Token). */
  readonly token: number;
  /** The subflow as the store keys it, "client:port>vip:port" (HoldKind.Flow). */
  readonly subflow: string;
  /** Device header + IP packet, as read. */
  readonly bytes: Uint8Array;
  /** Device header bytes at the start of `bytes`. */
  readonly headerBytes: number;
  readonly flags: number;
  readonly heldAtMs: number;
  /** Store lookups made for it so far. */
  tries: number;
  /** Lookups it may get (capped by the configured tries). */
  maxTries: number;
}

export interface HoldLimits {
  maxPackets: number;
  maxBytes: number;
  /** Longest a packet waits for the store, in ms. */
  maxWaitMs: number;
}

export class HoldPool {
  private readonly held = new Map<number, HeldPacket>();
  private bytes = 0;
  private nextId = 1;
  /** Packets refused because the pool was full (count or bytes). */
  refused = 0;

  constructor(readonly limits: HoldLimits) {}

  get size(): number { return this.held.size; }
  get usedBytes(): number { return this.bytes; }

  /** Copies a packet in; undefined when it does not fit (the caller answers it without the store). */
  hold(kind: HoldKind, token: number, subflow: string, src: Uint8Array, headerBytes: number, len: number, flags: number, nowMs: number): HeldPacket | undefined {
    const n = headerBytes + len;
    if (this.held.size >= this.limits.maxPackets || this.bytes + n > this.limits.maxBytes) { this.refused++; return undefined; }
    const p: HeldPacket = { id: this.nextId++, kind, token, subflow, bytes: src.slice(0, n), headerBytes, flags, heldAtMs: nowMs, tries: 0, maxTries: Infinity };
    this.held.set(p.id, p);
    this.bytes += n;
    return p;
  }

  get(id: number): HeldPacket | undefined { return this.held.get(id); }

  /** Takes a packet out (to release it). */
  take(id: number): HeldPacket | undefined {
    const p = this.held.get(id);
    if (!p) return undefined;
    this.held.delete(id);
    this.bytes -= p.bytes.length;
    return p;
  }

  /** Packets whose wait is over at `nowMs`, oldest first. */
  expired(nowMs: number): HeldPacket[] {
    const out: HeldPacket[] = [];
    for (const p of this.held.values()) if (nowMs - p.heldAtMs >= this.limits.maxWaitMs) out.push(p);
    return out;
  }

  all(): IterableIterator<HeldPacket> { return this.held.values(); }
}
