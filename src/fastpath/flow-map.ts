// The packet worker's writer of the fast path's flow map: turns the engine's offload events (engine/offload.ts)
// into map updates between batches, with reused key/value buffers (no allocation per event) and no process spawned.
// Each update is one bpf(2) syscall through libbpf (bpf_map_update_elem), about 2 per new connection.
import type { Engine } from '../engine/engine.js';
import { FlowState } from '../engine/flow-table.js';
import { OffloadEvent } from '../engine/offload.js';
import { libbpf, type Libbpf } from './libbpf.js';
import { FP_STAT_SLOTS, FpDir, FpFlag, KEY_BYTES, readLastSeenNs, STAT_BYTES, statSlot, VALUE_BYTES, writeKey, writeValue } from './layout.js';

/** What the writer did, for the loop's stats. */
export interface FlowMapCounters { inserted: number; removed: number; insertErrors: number; checks: number; flushes: number }

/** Flows per batched map call (two entries each). */
const BATCH = 256;

export class FlowMap {
  readonly counters: FlowMapCounters = { inserted: 0, removed: 0, insertErrors: 0, checks: 0, flushes: 0 };
  private readonly l: Libbpf;
  private readonly kIn = Buffer.alloc(KEY_BYTES);
  private readonly kOut = Buffer.alloc(KEY_BYTES);
  private readonly kNext = Buffer.alloc(KEY_BYTES);
  private readonly val = Buffer.alloc(VALUE_BYTES);
  private readonly client = Buffer.alloc(16);
  // A run of consecutive inserts or removals, sent as one bpf_map_update_batch / bpf_map_delete_batch call
  // (one syscall for up to BATCH flows instead of two per flow).
  private readonly keys = Buffer.alloc(2 * BATCH * KEY_BYTES);
  private readonly vals = Buffer.alloc(2 * BATCH * VALUE_BYTES);
  private readonly flowsOf = new Int32Array(BATCH);
  private readonly count = new Uint32Array(1);
  private pendingKind: OffloadEvent | 0 = 0;
  private pending = 0;
  /** errno of the last failed update (E2BIG: map full). */
  lastErrno = 0;

  // Per-backend counters of the program (read in one bpf_map_lookup_batch), and what was already added.
  private statKeys = Buffer.alloc(0);
  private statVals = Buffer.alloc(0);
  private readonly statOut = Buffer.alloc(4);
  private statSeen = new Float64Array(0);
  /** Slots the buffers above hold. */
  private statCap = 0;
  private readonly ncpu: number;

  /** statsFd: mplb_backend_stats, or -1 (per-backend counters of kernel-NATed packets are then not added). */
  constructor(private readonly fd: number, private readonly engine: Engine, private readonly statsFd = -1) {
    this.l = libbpf();
    this.ncpu = statsFd >= 0 ? this.l.possibleCpus() : 0;
  }

  /**
   * Adds what the program NATed per backend since the last call to the engine's per-backend counters (the packets
   * never reached the engine). One syscall for every live backend slot; cold (about once a second).
   */
  foldBackendStats(): void {
    if (this.statsFd < 0 || this.ncpu <= 0) return;
    const svc = this.engine.services, n = Math.min(FP_STAT_SLOTS, 2 * svc.backendCount);
    if (n === 0) return;
    if (this.statCap < n) {
      // Room for twice the slots in use (backends get added); two numbers (packets, bytes) seen per slot.
      const cap = Math.min(FP_STAT_SLOTS, 2 * n);
      const seen = new Float64Array(2 * cap);
      seen.set(this.statSeen);
      this.statSeen = seen;
      this.statKeys = Buffer.alloc(4 * cap);
      this.statVals = Buffer.alloc(STAT_BYTES * this.ncpu * cap);
      this.statCap = cap;
    }
    const count = this.count;
    count[0] = n;
    const rc = this.l.mapLookupBatch(this.statsFd, null, this.statOut, this.statKeys, this.statVals, count, null);
    // ENOENT with a count: the end of the array came first (all n were read).
    if (rc < 0 && count[0] === 0) return;
    const got = count[0], v = this.statVals, st = svc.beStats, seen = this.statSeen;
    for (let k = 0; k < got; k++) {
      const slot = this.statKeys.readUInt32LE(4 * k);
      if (slot >= n) continue;
      let packets = 0, bytes = 0;
      for (let c = 0, o = k * this.ncpu * STAT_BYTES; c < this.ncpu; c++, o += STAT_BYTES) {
        packets += Number(v.readBigUInt64LE(o));
        bytes += Number(v.readBigUInt64LE(o + 8));
      }
      const dp = packets - seen[2 * slot], db = bytes - seen[2 * slot + 1];
      if (dp <= 0 && db <= 0) continue;
      seen[2 * slot] = packets; seen[2 * slot + 1] = bytes;
      // beStats per backend: packets in, bytes in, packets out, bytes out; slot = backend * 2 + direction.
      const i = 4 * (slot >> 1) + ((slot & 1) === FpDir.Dst ? 0 : 2);
      st[i] += dp; st[i + 1] += db;
    }
  }

  /** Applies every pending offload event (in order), then a flush when a removal was lost. Returns events applied. */
  apply(nowMs: number): number {
    const off = this.engine.offload;
    if (off.ring.length === 0 && !off.flushPending) return 0; // the common turn: nothing to do, nothing allocated
    const n = off.ring.drain((slot) => this.applyOne(slot, nowMs));
    this.sendPending();
    if (off.flushPending) this.flush();
    return n;
  }

  /** Empties the kernel map and tells the engine no flow is offloaded any more. */
  flush(): void {
    const l = this.l;
    // Delete the first key until none is left: get_next_key(NULL) restarts at the head each time.
    for (let guard = 0; guard < (1 << 27) && l.mapNextKey(this.fd, null, this.kNext) === 0; guard++) l.mapDelete(this.fd, this.kNext);
    this.engine.offload.forgetAll();
    this.counters.flushes++;
  }

  private applyOne(slot: number, nowMs: number): void {
    const e = this.engine, ring = e.offload.ring, svc = e.services, l = this.l;
    const kind = ring.kind[slot] as OffloadEvent;
    const r = ring.flow[slot];
    const pv = ring.portVip[slot], bs = ring.backendState[slot];
    const cport = pv & 0xffff, vip = pv >>> 16, b = bs & 0xffff, st = bs >>> 16;
    const family: 4 | 6 = st & FlowState.V6 ? 6 : 4;
    const c = this.client;
    for (let w = 0; w < 4; w++) c.writeUInt32BE(ring.client[slot * 4 + w], w * 4);
    if (kind !== this.pendingKind || this.pending === BATCH) this.sendPending();
    if (kind === OffloadEvent.Insert || kind === OffloadEvent.Remove) {
      const i = this.pending++;
      this.pendingKind = kind;
      this.flowsOf[i] = r;
      // client -> VIP, and backend -> client: the packets' own 4-tuples as they reach the balancer.
      writeKey(this.keys, family, c, 0, cport, svc.vipAddrBytes, vip << 4, svc.vipPort[vip], 2 * i * KEY_BYTES);
      writeKey(this.keys, family, svc.beAddrBytes, b << 4, svc.bePort[b], c, 0, cport, (2 * i + 1) * KEY_BYTES);
      if (kind === OffloadEvent.Insert) {
        const flags = ring.mptcp[slot] ? FpFlag.Mptcp : 0;
        // The engine's rewrite (rewrite.ts): destination -> the flow's backend; source -> the flow's VIP.
        writeValue(this.vals, family, svc.beAddrBytes, b << 4, svc.bePort[b], FpDir.Dst, flags, 2 * i * VALUE_BYTES, statSlot(b, FpDir.Dst));
        writeValue(this.vals, family, svc.vipAddrBytes, vip << 4, svc.vipPort[vip], FpDir.Src, flags, (2 * i + 1) * VALUE_BYTES, statSlot(b, FpDir.Src));
      }
      return;
    }
    // Check: the newest of the two directions' last-seen times.
    writeKey(this.kIn, family, c, 0, cport, svc.vipAddrBytes, vip << 4, svc.vipPort[vip]);
    writeKey(this.kOut, family, svc.beAddrBytes, b << 4, svc.bePort[b], c, 0, cport);
    this.counters.checks++;
    const nowNs = Number(process.hrtime.bigint());
    let newest = -1;
    if (l.mapLookup(this.fd, this.kIn, this.val) === 0) newest = Math.max(newest, readLastSeenNs(this.val));
    if (l.mapLookup(this.fd, this.kOut, this.val) === 0) newest = Math.max(newest, readLastSeenNs(this.val));
    e.offloadSeen(r, newest <= 0 ? -1 : Math.max(0, (nowNs - newest) / 1e6), nowMs);
  }

  /** Sends the pending run of inserts or removals. */
  private sendPending(): void {
    const n = this.pending, kind = this.pendingKind, l = this.l;
    this.pending = 0;
    this.pendingKind = 0;
    if (n === 0) return;
    if (kind === OffloadEvent.Remove) {
      // A missing key (the program deleted it on a SYN, or it was never inserted) stops a batch: go on after it.
      for (let done = 0; done < 2 * n;) {
        this.count[0] = 2 * n - done;
        l.mapDeleteBatch(this.fd, this.keys.subarray(done * KEY_BYTES), this.count, null);
        done += this.count[0] + (done + this.count[0] < 2 * n ? 1 : 0);
      }
      this.counters.removed += n;
      return;
    }
    this.count[0] = 2 * n;
    const rc = l.mapUpdateBatch(this.fd, this.keys, this.vals, this.count, null);
    const ok = rc === 0 ? 2 * n : this.count[0];
    const flowsOk = ok >> 1;
    this.counters.inserted += flowsOk;
    if (flowsOk === n) return;
    // Map full (E2BIG) or out of memory: those flows stay on the TUN path, where they are still decided right.
    this.lastErrno = -rc;
    if (ok & 1) { // half a pair went in: take it out
      this.count[0] = 1;
      l.mapDeleteBatch(this.fd, this.keys.subarray((ok - 1) * KEY_BYTES), this.count, null);
    }
    for (let i = flowsOk; i < n; i++) {
      this.counters.insertErrors++;
      this.engine.offload.insertFailed(this.flowsOf[i]);
    }
  }
}
