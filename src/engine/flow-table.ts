// The flow table: one record per TCP subflow, reachable from both directions' keys
// (client -> VIP, and backend -> client), in preallocated typed arrays. No allocation after construction.

/** Flow state bits. */
export const enum FlowState {
  V6 = 1 << 0,
  SynSeen = 1 << 1,
  SynAckSeen = 1 << 2,
  Established = 1 << 3,
  FinClient = 1 << 4,
  FinServer = 1 << 5,
  Rst = 1 << 6,
  Join = 1 << 7,
  /** MP_CAPABLE was offered in the SYN (mptcp version in `mpVer`). */
  MpCapable = 1 << 8,
  /** Keys have been learned (or the flow fell back / was stripped): no more key scanning. */
  KeysDone = 1 << 9,
  /** The connection fell back to plain TCP (no MP_CAPABLE in SYN/ACK, or stripped on a token collision). */
  Fallback = 1 << 10,
  Closing = FinClient | FinServer,
}

/** Direction of a lookup hit: 0 = client -> VIP (inbound), 1 = backend -> client (outbound). */
export const DIR_IN = 0, DIR_OUT = 1;

/** Murmur3-style mixing over the ten numbers of a flow key; returns an unsigned 32-bit hash. Hot path. */
export function tupleHash(
  a0: number, a1: number, a2: number, a3: number, aPort: number,
  b0: number, b1: number, b2: number, b3: number, bPort: number, seed: number,
): number {
  let h = seed | 0;
  h = mixIn(h, a0); h = mixIn(h, a1); h = mixIn(h, a2); h = mixIn(h, a3);
  h = mixIn(h, b0); h = mixIn(h, b1); h = mixIn(h, b2); h = mixIn(h, b3);
  h = mixIn(h, (aPort << 16) | bPort);
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35); h ^= h >>> 16;
  return h >>> 0;
}

function mixIn(h: number, w: number): number {
  w = Math.imul(w, 0xcc9e2d51); w = (w << 15) | (w >>> 17); w = Math.imul(w, 0x1b873593);
  h ^= w; h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

export class FlowTable {
  readonly capacity: number;
  used = 0;
  // Record fields.
  readonly clientAddr: Uint32Array; // 4 words per record
  readonly clientPort: Uint16Array;
  readonly vip: Uint16Array;
  readonly backend: Uint16Array;
  readonly state: Uint16Array;
  /** MPTCP version + 1 from the SYN's MP_CAPABLE (0: none). */
  readonly mpVer: Uint8Array;
  readonly conn: Int32Array;
  /** Next subflow of the same connection, or the next free record when free. */
  readonly next: Int32Array;
  readonly lastSeen: Uint32Array; // ms, modulo 2^32
  readonly hashIn: Uint32Array;
  readonly hashOut: Uint32Array;
  /** 1 while the record is in use (sweeps skip free records). */
  readonly live: Uint8Array;
  // Index: open addressing, linear probing; entry = (record << 1 | dir) + 1, 0 = empty.
  private readonly index: Int32Array;
  private readonly mask: number;
  private freeHead: number;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.clientAddr = new Uint32Array(capacity * 4);
    this.clientPort = new Uint16Array(capacity);
    this.vip = new Uint16Array(capacity);
    this.backend = new Uint16Array(capacity);
    this.state = new Uint16Array(capacity);
    this.mpVer = new Uint8Array(capacity);
    this.conn = new Int32Array(capacity);
    this.next = new Int32Array(capacity);
    this.lastSeen = new Uint32Array(capacity);
    this.hashIn = new Uint32Array(capacity);
    this.hashOut = new Uint32Array(capacity);
    this.live = new Uint8Array(capacity);
    // Two keys per record at a load factor of at most 1/2.
    let size = 4;
    while (size < capacity * 4) size <<= 1;
    this.index = new Int32Array(size);
    this.mask = size - 1;
    for (let i = 0; i < capacity - 1; i++) this.next[i] = i + 1;
    this.next[capacity - 1] = -1;
    this.freeHead = 0;
  }

  /**
   * Finds the flow whose key in direction `dir` matches. For DIR_IN the key is (client words a[0..3], port aPort,
   * VIP v's address, vPort); the caller compares the VIP. Returns the record or -1. Hot path.
   */
  lookupIn(h: number, a: Uint32Array, aPort: number, v: number): number {
    const idx = this.index, mask = this.mask;
    let s = h & mask;
    for (;;) {
      const e = idx[s];
      if (e === 0) return -1;
      const r = (e - 1) >> 1;
      if (((e - 1) & 1) === DIR_IN && this.hashIn[r] === h && this.clientPort[r] === aPort && this.vip[r] === v) {
        const o = r << 2;
        const ca = this.clientAddr;
        if (ca[o] === a[0] && ca[o + 1] === a[1] && ca[o + 2] === a[2] && ca[o + 3] === a[3]) return r;
      }
      s = (s + 1) & mask;
    }
  }

  /**
   * Finds the flow whose outbound key matches: source = backend (checked by the caller via `beAddr`/`bePort`),
   * destination = client words a[4..7] and port dPort. Hot path.
   */
  lookupOut(h: number, a: Uint32Array, sPort: number, dPort: number, beAddr: Uint32Array, bePort: Uint16Array): number {
    const idx = this.index, mask = this.mask;
    let s = h & mask;
    for (;;) {
      const e = idx[s];
      if (e === 0) return -1;
      const r = (e - 1) >> 1;
      if (((e - 1) & 1) === DIR_OUT && this.hashOut[r] === h && this.clientPort[r] === dPort) {
        const o = r << 2;
        const ca = this.clientAddr;
        const b = this.backend[r];
        const bo = b << 2;
        if (ca[o] === a[4] && ca[o + 1] === a[5] && ca[o + 2] === a[6] && ca[o + 3] === a[7] && bePort[b] === sPort
          && beAddr[bo] === a[0] && beAddr[bo + 1] === a[1] && beAddr[bo + 2] === a[2] && beAddr[bo + 3] === a[3]) return r;
      }
      s = (s + 1) & mask;
    }
  }

  /** Takes a free record and indexes it under both hashes; -1 when full. */
  insert(hIn: number, hOut: number, a: Uint32Array, clientPort: number, v: number, backend: number, state: number, nowMs: number): number {
    const r = this.freeHead;
    if (r < 0) return -1;
    this.freeHead = this.next[r];
    this.used++;
    const o = r << 2;
    this.clientAddr[o] = a[0]; this.clientAddr[o + 1] = a[1]; this.clientAddr[o + 2] = a[2]; this.clientAddr[o + 3] = a[3];
    this.clientPort[r] = clientPort;
    this.vip[r] = v;
    this.backend[r] = backend;
    this.state[r] = state;
    this.mpVer[r] = 0;
    this.conn[r] = -1;
    this.next[r] = -1;
    this.lastSeen[r] = nowMs >>> 0;
    this.hashIn[r] = hIn;
    this.hashOut[r] = hOut;
    this.live[r] = 1;
    this.place(hIn, ((r << 1) | DIR_IN) + 1);
    this.place(hOut, ((r << 1) | DIR_OUT) + 1);
    return r;
  }

  private place(h: number, entry: number): void {
    const idx = this.index, mask = this.mask;
    let s = h & mask;
    while (idx[s] !== 0) s = (s + 1) & mask;
    idx[s] = entry;
  }

  /** Unindexes and frees a record. The caller unlinks it from its connection first. */
  remove(r: number): void {
    this.unplace(this.hashIn[r], ((r << 1) | DIR_IN) + 1);
    this.unplace(this.hashOut[r], ((r << 1) | DIR_OUT) + 1);
    this.live[r] = 0;
    this.state[r] = 0;
    this.next[r] = this.freeHead;
    this.freeHead = r;
    this.used--;
  }

  /** Backward-shift deletion keeps probe chains intact without tombstones. */
  private unplace(h: number, entry: number): void {
    const idx = this.index, mask = this.mask;
    let s = h & mask;
    while (idx[s] !== entry) {
      if (idx[s] === 0) return; // not present (cannot happen for a live record)
      s = (s + 1) & mask;
    }
    let hole = s;
    let j = s;
    for (;;) {
      j = (j + 1) & mask;
      const e = idx[j];
      if (e === 0) break;
      const r = (e - 1) >> 1;
      const home = ((((e - 1) & 1) === DIR_IN ? this.hashIn[r] : this.hashOut[r]) & mask);
      // Move e into the hole when its home slot is not in the cyclic range (hole, j].
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!inRange) { idx[hole] = e; hole = j; }
    }
    idx[hole] = 0;
  }
}
