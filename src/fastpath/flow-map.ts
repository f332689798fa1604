// The packet worker's writer of the fast path's flow map: turns the engine's offload events (engine/offload.ts)
// into map updates between batches, with reused key/value buffers (no allocation per event) and no process spawned.
// Each update is one bpf(2) syscall through libbpf (bpf_map_update_elem), about 2 per new connection.
import type { Engine } from '../engine/engine.js';
import { FlowState } from '../engine/flow-table.js';
import { OffloadEvent } from '../engine/offload.js';
import { BPF_ANY, libbpf, type Libbpf } from './libbpf.js';
import { FpDir, FpFlag, KEY_BYTES, readLastSeenNs, VALUE_BYTES, writeKey, writeValue } from './layout.js';

/** What the writer did, for the loop's stats. */
export interface FlowMapCounters { inserted: number; removed: number; insertErrors: number; checks: number; flushes: number }

export class FlowMap {
  readonly counters: FlowMapCounters = { inserted: 0, removed: 0, insertErrors: 0, checks: 0, flushes: 0 };
  private readonly l: Libbpf;
  private readonly kIn = Buffer.alloc(KEY_BYTES);
  private readonly kOut = Buffer.alloc(KEY_BYTES);
  private readonly kNext = Buffer.alloc(KEY_BYTES);
  private readonly val = Buffer.alloc(VALUE_BYTES);
  private readonly client = Buffer.alloc(16);
  /** errno of the last failed update (E2BIG: map full). */
  lastErrno = 0;

  constructor(private readonly fd: number, private readonly engine: Engine) {
    this.l = libbpf();
  }

  /** Applies every pending offload event, then a flush when a removal was lost. Returns events applied. */
  apply(nowMs: number): number {
    const off = this.engine.offload;
    if (off.ring.length === 0 && !off.flushPending) return 0; // the common turn: nothing to do, nothing allocated
    const n = off.ring.drain((slot) => this.applyOne(slot, nowMs));
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
    // client -> VIP, and backend -> client: the packets' own 4-tuples as they reach the balancer.
    writeKey(this.kIn, family, c, 0, cport, svc.vipAddrBytes, vip << 4, svc.vipPort[vip]);
    writeKey(this.kOut, family, svc.beAddrBytes, b << 4, svc.bePort[b], c, 0, cport);
    if (kind === OffloadEvent.Insert) {
      const flags = ring.mptcp[slot] ? FpFlag.Mptcp : 0;
      // The engine's rewrite (rewrite.ts): destination -> the flow's backend; source -> the flow's VIP.
      writeValue(this.val, family, svc.beAddrBytes, b << 4, svc.bePort[b], FpDir.Dst, flags);
      let rc = l.mapUpdate(this.fd, this.kIn, this.val, BPF_ANY);
      if (rc === 0) {
        writeValue(this.val, family, svc.vipAddrBytes, vip << 4, svc.vipPort[vip], FpDir.Src, flags);
        rc = l.mapUpdate(this.fd, this.kOut, this.val, BPF_ANY);
        if (rc !== 0) l.mapDelete(this.fd, this.kIn);
      }
      if (rc === 0) { this.counters.inserted++; return; }
      // Map full (E2BIG) or out of memory: the flow stays on the TUN path, where it is still decided correctly.
      this.lastErrno = -rc;
      this.counters.insertErrors++;
      e.offload.insertFailed(r);
      return;
    }
    if (kind === OffloadEvent.Remove) {
      l.mapDelete(this.fd, this.kIn);
      l.mapDelete(this.fd, this.kOut);
      this.counters.removed++;
      return;
    }
    // Check: the newest of the two directions' last-seen times.
    this.counters.checks++;
    const nowNs = Number(process.hrtime.bigint());
    let newest = -1;
    if (l.mapLookup(this.fd, this.kIn, this.val) === 0) newest = Math.max(newest, readLastSeenNs(this.val));
    if (l.mapLookup(this.fd, this.kOut, this.val) === 0) newest = Math.max(newest, readLastSeenNs(this.val));
    e.offloadSeen(r, newest <= 0 ? -1 : Math.max(0, (nowNs - newest) / 1e6), nowMs);
  }
}
