// The connection table: one record per MPTCP connection whose server token is known (token -> backend),
// with the list of its subflows. Tokens are unique per server, not across servers (RFC 8684 section 3.2), so a
// token can be claimed by two live connections on different backends; such a token is marked ambiguous.
import { hashToken, SMI_MASK } from './hash.js';
import { OpenIndex } from './open-addressing.js';

export const enum ConnFlag {
  /** MPTCP v1 (RFC 8684); else v0 (RFC 6824). */
  V1 = 1 << 0,
  /** The token is in the index (joins can find this connection). */
  Indexed = 1 << 1,
  /** Another live connection on another backend has the same token: joins cannot be steered by it. */
  Ambiguous = 1 << 2,
  /** No subflow left: the token lingers until lastSeen + tokenLingerMs. */
  Lingering = 1 << 3,
  HasClientKey = 1 << 4,
  /** One of its subflows got past the handshake (only such connections linger). */
  Established = 1 << 5,
  /** Taken from the shared token store: its keys were learned by another balancer, which owns its store entry. */
  Remote = 1 << 6,
}

export class ConnTable {
  readonly capacity: number;
  used = 0;
  readonly token: Uint32Array;
  readonly backend: Uint16Array;
  readonly vip: Uint16Array;
  readonly flags: Uint8Array;
  readonly subflows: Uint8Array;
  readonly firstFlow: Int32Array;
  readonly lastSeen: Uint32Array;
  /** Server key then client key, two words each (hi, lo). */
  readonly keys: Uint32Array;
  readonly live: Uint8Array;
  private readonly nextFree: Int32Array;
  private freeHead: number;
  // Token index: entry = record + 1.
  private readonly index: OpenIndex;

  /** The index seed, as a small integer. */
  private readonly seed: number;

  constructor(capacity: number, seed: number) {
    this.seed = seed & SMI_MASK;
    this.capacity = capacity;
    this.token = new Uint32Array(capacity);
    this.backend = new Uint16Array(capacity);
    this.vip = new Uint16Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.subflows = new Uint8Array(capacity);
    this.firstFlow = new Int32Array(capacity);
    this.lastSeen = new Uint32Array(capacity);
    this.keys = new Uint32Array(capacity * 4);
    this.live = new Uint8Array(capacity);
    this.nextFree = new Int32Array(capacity);
    for (let i = 0; i < capacity - 1; i++) this.nextFree[i] = i + 1;
    this.nextFree[capacity - 1] = -1;
    this.freeHead = 0;
    const tokens = this.token, indexSeed = this.seed;
    this.index = new OpenIndex(capacity * 2, (e) => hashToken(tokens[e - 1], indexSeed));
  }

  /** The connection indexed under `token`, or -1. */
  find(token: number): number {
    const idx = this.index.slots, mask = this.index.mask;
    let s = hashToken(token, this.seed) & mask;
    for (;;) {
      const e = idx[s];
      if (e === 0) return -1;
      if (this.token[e - 1] === token) return e - 1;
      s = (s + 1) & mask;
    }
  }

  /** Allocates a record (not indexed yet); -1 when full. */
  alloc(token: number, version: number, backend: number, vip: number, nowMs: number): number {
    const c = this.freeHead;
    if (c < 0) return -1;
    this.freeHead = this.nextFree[c];
    this.used++;
    this.token[c] = token;
    this.backend[c] = backend;
    this.vip[c] = vip;
    this.flags[c] = version >= 1 ? ConnFlag.V1 : 0;
    this.subflows[c] = 0;
    this.firstFlow[c] = -1;
    this.lastSeen[c] = nowMs; // already a 30-bit tick
    this.keys.fill(0, c * 4, c * 4 + 4);
    this.live[c] = 1;
    return c;
  }

  /** Puts c's token in the index; the caller has checked that no other record holds it. */
  indexToken(c: number): void {
    this.index.insert(hashToken(this.token[c], this.seed), c + 1);
    this.flags[c] |= ConnFlag.Indexed;
  }

  unindexToken(c: number): void {
    if (!(this.flags[c] & ConnFlag.Indexed)) return;
    this.flags[c] &= ~ConnFlag.Indexed;
    this.index.remove(hashToken(this.token[c], this.seed), c + 1);
  }

  free(c: number): void {
    this.unindexToken(c);
    this.live[c] = 0;
    this.flags[c] = 0;
    this.nextFree[c] = this.freeHead;
    this.freeHead = c;
    this.used--;
  }
}
