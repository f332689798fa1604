// The flow table: one record per TCP subflow, reachable from both directions' keys
// (client -> VIP, and backend -> client). Records are 12-word rows of one Uint32Array so that a lookup touches
// one index slot and one record (two cache lines) even when a million flows do not fit in cache.
// No allocation after construction.
import { OpenIndex } from './open-addressing.js';

/** Flow state bits (16 bits). */
export const enum FlowState {
  V6 = 1 << 0,
  SynSeen = 1 << 1,
  SynAckSeen = 1 << 2,
  Established = 1 << 3,
  FinClient = 1 << 4,
  FinServer = 1 << 5,
  Rst = 1 << 6,
  Join = 1 << 7,
  /** MP_CAPABLE was offered in the SYN (the flow's MptcpMode says which version). */
  MpCapable = 1 << 8,
  /** Keys have been learned (or the flow fell back / was stripped): no more key scanning. */
  KeysDone = 1 << 9,
  /** The connection fell back to plain TCP (no MP_CAPABLE in SYN/ACK, or stripped on a token collision). */
  Fallback = 1 << 10,
  /** A join steered to a connection on another VIP: NAT deltas are computed per packet. */
  CrossVip = 1 << 11,
  /** The client's first packet after its SYN was scanned for its key. */
  ClientSeen = 1 << 12,
  /** Its entries are in the kernel fast path's map (offload.ts): its packets may bypass the engine. */
  Offloaded = 1 << 13,
  /** Looked idle here: the kernel's last-seen times were asked for (offload.ts). */
  OffloadCheck = 1 << 14,
  /** The kernel answered: idle there too, so it may expire. */
  OffloadIdle = 1 << 15,
  Closing = FinClient | FinServer,
}

/** Which MPTCP a flow speaks: it decides which of its packets have their options read (Engine.needsScan). */
export const enum MptcpMode {
  /** Plain TCP, or an MP_CAPABLE version with no known key hash: options are never read. */
  None = 0,
  /** RFC 6824: MP_FASTCLOSE comes on an ACK, so every packet is read. A join of a v0 connection is V0 too. */
  V0 = 1,
  /** RFC 8684: once the keys are known only RSTs are read (MP_FASTCLOSE comes with a RST). */
  V1 = 2,
  /** A join whose connection is not known here (unknown or ambiguous token): read like V1. */
  JoinUnknown = 3,
}

/** Direction of an index entry: 0 = client -> VIP (inbound), 1 = backend -> client (outbound). */
export const DIR_IN = 0, DIR_OUT = 1;

// Record layout (words).
const W = 12;
const F_HASH_IN = 0, F_HASH_OUT = 1, F_ADDR = 2; // hash of direction d at F_HASH_IN + d; 2..5: client address words
const F_PORT_VIP = 6; // client port | vip << 16
const F_BACKEND_STATE = 7; // backend | state << 16
const F_MISC = 8; // MptcpMode (8 bits) | live << 8
const F_CONN = 9, F_NEXT = 10, F_LAST = 11;
const LIVE = 1 << 8;

export class FlowTable {
  readonly capacity: number;
  used = 0;
  private readonly rec: Uint32Array;
  // Index entry = (record << 1 | dir) + 1; its hash is the record's hash for that direction.
  private readonly index: OpenIndex;
  // The index's slots and mask, read by the lookups on every packet.
  private readonly slots: Int32Array;
  private readonly mask: number;
  private freeHead: number;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.rec = new Uint32Array(capacity * W);
    // Two keys per record at a load factor of at most 1/2.
    const rec = this.rec;
    this.index = new OpenIndex(capacity * 4, (e) => rec[((e - 1) >> 1) * W + F_HASH_IN + ((e - 1) & 1)]);
    this.slots = this.index.slots;
    this.mask = this.index.mask;
    for (let i = 0; i < capacity; i++) this.rec[i * W + F_NEXT] = i + 1 < capacity ? i + 1 : 0xffffffff;
    this.freeHead = 0;
  }

  // Field accessors (small enough for V8 to inline).
  state(r: number): number { return this.rec[r * W + F_BACKEND_STATE] >>> 16; }
  setState(r: number, st: number): void { const i = r * W + F_BACKEND_STATE; this.rec[i] = (this.rec[i] & 0xffff) | (st << 16); }
  orState(r: number, bits: number): void { this.rec[r * W + F_BACKEND_STATE] |= bits << 16; }
  backend(r: number): number { return this.rec[r * W + F_BACKEND_STATE] & 0xffff; }
  clientPort(r: number): number { return this.rec[r * W + F_PORT_VIP] & 0xffff; }
  vip(r: number): number { return this.rec[r * W + F_PORT_VIP] >>> 16; }
  clientWord(r: number, i: number): number { return this.rec[r * W + F_ADDR + i]; }
  mptcpMode(r: number): MptcpMode { return this.rec[r * W + F_MISC] & 0xff; }
  setMptcpMode(r: number, m: MptcpMode): void { const i = r * W + F_MISC; this.rec[i] = (this.rec[i] & ~0xff) | m; }
  isLive(r: number): boolean { return (this.rec[r * W + F_MISC] & LIVE) !== 0; }
  conn(r: number): number { return this.rec[r * W + F_CONN] | 0; }
  setConn(r: number, c: number): void { this.rec[r * W + F_CONN] = c; }
  next(r: number): number { return this.rec[r * W + F_NEXT] | 0; }
  setNext(r: number, n: number): void { this.rec[r * W + F_NEXT] = n; }
  lastSeen(r: number): number { return this.rec[r * W + F_LAST]; }
  setLastSeen(r: number, t: number): void { this.rec[r * W + F_LAST] = t; }

  /** Finds the inbound flow (client words a[0..3], client port, VIP v); -1 when absent. Hot path. */
  lookupIn(h: number, a: Uint32Array, aPort: number, v: number): number {
    const s = this.probe(h & this.mask, h, DIR_IN, a, 0, aPort, v);
    return s < 0 ? -1 : (this.slots[s] - 1) >> 1;
  }

  /**
   * Finds the outbound flow: source = its backend (address words a[0..3], port sPort, checked against beAddr/bePort),
   * destination = the client (words a[4..7], port dPort). Hot path.
   */
  lookupOut(h: number, a: Uint32Array, sPort: number, dPort: number, beAddr: Uint32Array, bePort: Uint16Array): number {
    const mask = this.mask;
    // One client address:port can have flows to several VIPs: the backend tells them apart.
    for (let s = this.probe(h & mask, h, DIR_OUT, a, 4, dPort, -1); s >= 0; s = this.probe((s + 1) & mask, h, DIR_OUT, a, 4, dPort, -1)) {
      const r = (this.slots[s] - 1) >> 1;
      const b = this.backend(r), bo = b << 2;
      if (bePort[b] === sPort && beAddr[bo] === a[0] && beAddr[bo + 1] === a[1] && beAddr[bo + 2] === a[2] && beAddr[bo + 3] === a[3]) return r;
    }
    return -1;
  }

  /**
   * The first slot at or after s in hash h's chain whose entry is direction `dir` of a record with that hash, client
   * words a[ao..ao+3], client port `port` and, when vip >= 0, VIP `vip`; -1 at the end of the chain. Every argument
   * is a small integer (hot path).
   */
  private probe(s: number, h: number, dir: number, a: Uint32Array, ao: number, port: number, vip: number): number {
    const idx = this.slots, mask = this.mask, rec = this.rec;
    for (;; s = (s + 1) & mask) {
      const e = idx[s];
      if (e === 0) return -1;
      const o = ((e - 1) >> 1) * W;
      const pv = rec[o + F_PORT_VIP];
      if (((e - 1) & 1) === dir && rec[o + F_HASH_IN + dir] === h && (pv & 0xffff) === port && (vip < 0 || pv >>> 16 === vip)
        && rec[o + F_ADDR] === a[ao] && rec[o + F_ADDR + 1] === a[ao + 1] && rec[o + F_ADDR + 2] === a[ao + 2] && rec[o + F_ADDR + 3] === a[ao + 3]) return s;
    }
  }

  /** Takes a free record and indexes it under both hashes; -1 when full. */
  insert(hIn: number, hOut: number, a: Uint32Array, clientPort: number, v: number, backend: number, state: number, nowMs: number): number {
    const r = this.freeHead;
    if (r < 0) return -1;
    const rec = this.rec, o = r * W;
    this.freeHead = rec[o + F_NEXT] | 0;
    this.used++;
    rec[o + F_HASH_IN] = hIn;
    rec[o + F_HASH_OUT] = hOut;
    rec[o + F_ADDR] = a[0]; rec[o + F_ADDR + 1] = a[1]; rec[o + F_ADDR + 2] = a[2]; rec[o + F_ADDR + 3] = a[3];
    rec[o + F_PORT_VIP] = clientPort | (v << 16);
    rec[o + F_BACKEND_STATE] = backend | (state << 16);
    rec[o + F_MISC] = LIVE;
    rec[o + F_CONN] = 0xffffffff;
    rec[o + F_NEXT] = 0xffffffff;
    rec[o + F_LAST] = nowMs;
    this.index.insert(hIn, ((r << 1) | DIR_IN) + 1);
    this.index.insert(hOut, ((r << 1) | DIR_OUT) + 1);
    return r;
  }

  /** Unindexes and frees a record. The caller unlinks it from its connection first. */
  remove(r: number): void {
    const rec = this.rec, o = r * W;
    this.index.remove(rec[o + F_HASH_IN], ((r << 1) | DIR_IN) + 1);
    this.index.remove(rec[o + F_HASH_OUT], ((r << 1) | DIR_OUT) + 1);
    rec[o + F_MISC] = 0;
    rec[o + F_BACKEND_STATE] = 0;
    rec[o + F_NEXT] = this.freeHead;
    this.freeHead = r;
    this.used--;
  }
}
