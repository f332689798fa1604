// The forwarder: device read -> engine -> verdict -> device write, one batch at a time. The same loop serves
// `mplb run` (a TUN queue, in the packet worker) and `mplb replay` (a capture), and tests (MemoryDevice).
// Packets are counted once, by the engine (packets_in = to_backend + to_client + replied + dropped, device-side
// drops included); the loop counts only what is its own: batches, time, device errors.
import { DropReason } from '../engine/counters.js';
import { Verdict, type Engine } from '../engine/engine.js';
import { PacketBatch, SlotIn, SlotOut, type PacketDevice } from './device.js';

/** Slots of the loop's own counters (a Float64Array, shared with the main thread in `mplb run`). */
export const enum LoopCounter {
  Batches = 0,
  Ticks = 1,
  /** Total time spent in batches (ms): packets / busyMs estimates the loop's capacity. */
  BusyMs = 2,
  /** Longest batch (ms): how long the worker's event loop (control messages) was kept waiting. */
  MaxBatchMs = 3,
  MaxBatch = 4,
  ReadErrors = 5,
  WriteErrors = 6,
  /** Last errno seen on read or write (0 = none). */
  LastErrno = 7,
  /** Reads that were GSO super-packets. */
  GsoPackets = 8,
  /** Packets read while busy-polling after traffic (instead of after poll()). */
  SpinHits = 9,
  /** Engine table fill, refreshed at every tick (gauges). */
  Flows = 10,
  Connections = 11,
  Count = 12,
}
export const LOOP_COUNTER_LABELS = [
  'batches', 'ticks', 'busy_ms', 'max_batch_ms', 'max_batch', 'read_errors', 'write_errors', 'last_errno',
  'gso_packets', 'spin_hits', 'flows', 'connections',
] as const;
export const LOOP_COUNTERS_BYTES = LoopCounter.Count * 8;

export interface ForwarderOptions {
  /** Most packets per batch (default 64: a batch's slots hold 64 KiB super-packets). */
  batchMax?: number;
  /** Engine tick period in ms of the batch clock (default 100). */
  tickMs?: number;
  /** Loop counters (default: private memory). */
  counters?: Float64Array;
  /** Called after each packet's verdict (replay watches decisions); not set on the TUN path. */
  observe?: (batch: PacketBatch, slot: number, verdict: Verdict) => void;
  /** Called when the engine throws (a bug): the packet is dropped as `engine_error`. */
  onEngineError?: (err: unknown, packet: Uint8Array) => void;
  /**
   * Called for a packet the engine held (Verdict.Hold: the shared token store must be asked): true when it was
   * copied out to be released later (`release`); false, and the engine answers it at once without the store.
   */
  onHold?: (slot: Uint8Array, headerBytes: number, len: number, flags: number, nowMs: number) => boolean;
}

/** A packet given back after a hold: device header + IP packet, and its slot flags. */
export interface ReleasedPacket { readonly bytes: Uint8Array; readonly headerBytes: number; readonly flags: number }

export class Forwarder {
  readonly batch: PacketBatch;
  readonly counters: Float64Array;
  private readonly max: number;
  private readonly tickMs: number;
  private nextTick = -Infinity;
  private readonly observe?: ForwarderOptions['observe'];
  private readonly onEngineError?: ForwarderOptions['onEngineError'];
  private readonly onHold?: ForwarderOptions['onHold'];
  /** One slot for packets released after a hold (rare: joins and moved subflows that needed the store). */
  private releaseBatch?: PacketBatch;

  constructor(readonly engine: Engine, readonly device: PacketDevice, opts: ForwarderOptions = {}) {
    this.max = opts.batchMax ?? 64;
    this.batch = new PacketBatch(this.max, device.headerBytes);
    this.tickMs = opts.tickMs ?? 100;
    this.counters = opts.counters ?? new Float64Array(LoopCounter.Count);
    this.observe = opts.observe;
    this.onEngineError = opts.onEngineError;
    this.onHold = opts.onHold;
  }

  /** Expires engine state when a tick is due at `nowMs`. */
  maybeTick(nowMs: number): void {
    // A clock that went back (concatenated captures, a bad timestamp) restarts the ticks from there.
    if (nowMs < this.nextTick - this.tickMs) this.nextTick = nowMs;
    if (nowMs < this.nextTick) return;
    this.nextTick = nowMs + this.tickMs;
    this.engine.tick(nowMs);
    const c = this.counters;
    c[LoopCounter.Ticks]++;
    c[LoopCounter.Flows] = this.engine.flows.used;
    c[LoopCounter.Connections] = this.engine.conns.used;
  }

  /**
   * Hot: reads one batch, decides every packet, writes back what goes on. `nowMs` is the wall clock; a device with
   * its own clock (a capture) overrides it. Returns packets read, or -errno when reading failed (the caller backs off).
   */
  runOnce(nowMs: number): number {
    const b = this.batch, c = this.counters;
    const t0 = performance.now();
    const got = this.device.read(b, this.max);
    if (got <= 0) {
      if (got < 0) { c[LoopCounter.ReadErrors]++; c[LoopCounter.LastErrno] = -got; }
      return got;
    }
    const now = b.timeMs === b.timeMs ? b.timeMs : nowMs;
    this.maybeTick(now);
    this.decide(b, now);
    const w = this.device.write(b);
    if (w < 0) { c[LoopCounter.WriteErrors]++; c[LoopCounter.LastErrno] = -w; }
    c[LoopCounter.Batches]++;
    if (got > c[LoopCounter.MaxBatch]) c[LoopCounter.MaxBatch] = got;
    const ms = performance.now() - t0;
    c[LoopCounter.BusyMs] += ms;
    if (ms > c[LoopCounter.MaxBatchMs]) c[LoopCounter.MaxBatchMs] = ms;
    return got;
  }

  /** The engine's verdict for every slot of the batch: one translation, Verdict -> SlotOut. */
  private decide(b: PacketBatch, now: number): void {
    const engine = this.engine, H = b.headerBytes;
    let gso = 0;
    for (let i = 0; i < b.count; i++) {
      const len = b.len[i];
      if (b.bad[i] !== 0) {
        engine.counters.countDrop(b.bad[i] as DropReason, len);
        continue;
      }
      const flags = b.flags[i];
      if (flags & SlotIn.Gso) gso++;
      const view = b.views[i];
      let v = this.process(view, H, len, now, flags);
      if (v === Verdict.Hold) {
        if (this.onHold && this.onHold(view, H, len, flags, now)) continue; // written when released
        engine.noHold = true; // not kept: answered now, as without a store
        v = this.process(view, H, len, now, flags);
        engine.noHold = false;
      }
      if (v === Verdict.Reply) {
        // A reply is at most as long as what it answers (a RST for a SYN), so it fits the slot.
        b.out[i] = SlotOut.Reply;
        b.outLen[i] = engine.outLen;
      } else if (v !== Verdict.Drop) {
        b.out[i] = SlotOut.Forward;
        b.outLen[i] = len;
      }
      if (this.observe) this.observe(b, i, v);
    }
    this.counters[LoopCounter.GsoPackets] += gso;
  }

  private process(view: Uint8Array, H: number, len: number, now: number, flags: number): Verdict {
    try {
      return this.engine.process(view, H, len, now, (flags & SlotIn.PartialCsum) !== 0);
    } catch (e) {
      this.engine.counters.countEngineError();
      this.onEngineError?.(e, view.slice(H, H + Math.min(len, 64)));
      return Verdict.Drop;
    }
  }

  /**
   * A held packet comes back with the store's answer already given to the engine (adopted token or flow, or none):
   * the engine decides it without holding again, and it is written like any other.
   */
  release(p: ReleasedPacket, nowMs: number): void {
    const b = (this.releaseBatch ??= new PacketBatch(1, this.batch.headerBytes));
    if (p.headerBytes !== b.headerBytes || p.bytes.length > b.slotBytes) { this.engine.clearPin(); return; }
    b.reset();
    b.views[0].set(p.bytes, 0);
    b.push(p.bytes.length - p.headerBytes, p.flags, 0);
    this.engine.noHold = true;
    try { this.decide(b, nowMs); } finally { this.engine.noHold = false; }
    const w = this.device.write(b);
    if (w < 0) { this.counters[LoopCounter.WriteErrors]++; this.counters[LoopCounter.LastErrno] = -w; }
  }
}
