// Weighted Maglev lookup table (Eisenbud et al., "Maglev", NSDI 2016, section 3.4). Cold path.
//
// As in the paper, each backend walks its own permutation of the slots (offset + j*skip mod size,
// from two hashes of its id) and the table is filled by letting backends claim free slots along
// their permutations. The fill order differs: the paper gives each backend one *claim* per turn;
// here each backend makes one *probe* per turn and stops once it holds its quota
// (size * w / sum(w), rounded by largest remainder). Until quotas bind, a slot goes to the backend
// that reaches it first in its permutation, i.e. rendezvous hashing, so removing a backend hands
// its slots to the next ones in line and leaves the others' alone; only the last few percent of
// the fill, where quotas bind, shift. Measured with 65537 slots, the slots moved beyond the removed
// backend's own are ~40% fewer than with the paper's loop; see bench/maglev.bench.ts.
//
// Weights: a backend with weight w probes position j at time -ln(1 - j/size) / w, an exponential
// race, so first-come shares already match the weights and quotas make them exact (to one slot).
// Backends with equal weight probe in lockstep, so with equal weights no logarithm is needed.
//
// Turn order is by a hash of the id, never by position in the input array, so balancers that list
// the same backends in a different order build the same slot -> backend id mapping.

import { hashString } from './flow-hash.js';

export const MAGLEV_DEFAULT_SIZE = 65537;

/** id: stable identity (e.g. "10.0.0.1:80"); weight >= 0 integer; 0 = not in the table (draining). */
export interface MaglevBackend {
  id: string;
  weight: number;
}

// Fixed seeds: permutations and turn order must be the same in every process.
const OFFSET_SEED = 0x4d41474c;
const SKIP_SEED = 0x45563136;
const RANK_SEED = 0x52414e4b;

/** Largest table accepted; keeps cursor arithmetic (cursor + skip < 2 * size) inside int32. */
const MAX_SIZE = 0x3fffffff;

export function isPrime(n: number): boolean {
  if (!Number.isSafeInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  if (n % 3 === 0) return n === 3;
  for (let d = 5; d * d <= n; d += 6) {
    if (n % d === 0 || n % (d + 2) === 0) return false;
  }
  return true;
}

/**
 * Fills `table` (length = size, a prime) with indices into `backends`, or -1 everywhere if no
 * backend has weight > 0. Deterministic: the same set of backends gives the same slot owners in
 * every process, whatever their order in the array. Each backend gets size * w / sum(w) slots to
 * within one. Throws RangeError for a non-prime size, a table of the wrong length or a bad weight.
 * Ids should be unique; duplicates share a permutation and split its slots.
 */
export function buildMaglevTable(
  backends: readonly MaglevBackend[],
  size: number = MAGLEV_DEFAULT_SIZE,
  table?: Int32Array,
): Int32Array {
  if (!isPrime(size) || size > MAX_SIZE) {
    throw new RangeError(`maglev table size must be a prime <= ${MAX_SIZE}, got ${size}`);
  }
  if (table === undefined) {
    table = new Int32Array(size);
  } else if (table.length !== size) {
    throw new RangeError(`maglev table length ${table.length} does not match size ${size}`);
  }
  table.fill(-1);

  const live: number[] = [];
  let totalWeight = 0;
  for (let i = 0; i < backends.length; i++) {
    const w = backends[i].weight;
    if (!Number.isSafeInteger(w) || w < 0) {
      throw new RangeError(`maglev weight must be a non-negative integer, got ${w} for ${backends[i].id}`);
    }
    if (w > 0) {
      live.push(i);
      totalWeight += w;
    }
  }
  const n = live.length;
  if (n === 0) return table;
  if (!Number.isSafeInteger(totalWeight)) {
    throw new RangeError('maglev total weight exceeds 2^53');
  }

  // Rank = turn order: by id hash, then id, so it ignores input order and removals barely shift it.
  const rankKey = new Map<number, number>();
  for (const i of live) rankKey.set(i, hashString(backends[i].id, RANK_SEED));
  live.sort((a, b) => {
    const d = rankKey.get(a)! - rankKey.get(b)!;
    if (d !== 0) return d;
    const ia = backends[a].id;
    const ib = backends[b].id;
    return ia < ib ? -1 : ia > ib ? 1 : a - b;
  });

  // Member m = position in (weight desc, rank) order: the tie-break for equal probe times.
  const order = new Int32Array(n);
  for (let r = 0; r < n; r++) order[r] = r;
  order.sort((a, b) => backends[live[b]].weight - backends[live[a]].weight || a - b);

  const owner = new Int32Array(n); // member -> index into `backends`
  const cursor = new Int32Array(n); // slot of the member's current candidate
  const step = new Int32Array(n); // permutation position j of that slot
  const skip = new Int32Array(n);
  const quota = new Int32Array(n); // slots still to claim
  const invWeight = new Float64Array(n);
  const frac = new Float64Array(n);
  let assigned = 0;
  for (let m = 0; m < n; m++) {
    const i = live[order[m]];
    const b = backends[i];
    owner[m] = i;
    cursor[m] = hashString(b.id, OFFSET_SEED) % size;
    skip[m] = (hashString(b.id, SKIP_SEED) % (size - 1)) + 1;
    invWeight[m] = 1 / b.weight;
    const share = (size * b.weight) / totalWeight;
    quota[m] = Math.floor(share);
    frac[m] = share - quota[m];
    assigned += quota[m];
  }
  distributeRemainder(quota, frac, size - assigned);

  // Event-driven probe race: each member's candidate is the first free slot along its
  // permutation; the earliest candidate (time, member) claims next. Probes of taken slots change
  // nothing, so skipping them in a tight scan gives the same table as probing turn by turn.
  const due = new Float64Array(n);
  const heap = new Int32Array(n);
  let heapLen = 0;
  for (let m = 0; m < n; m++) {
    if (quota[m] > 0) heap[heapLen++] = m; // due = 0 for all: member order is heap order
  }
  race(table, size, cursor, step, skip, quota, owner, invWeight, expTimes(size), due, heap, heapLen);
  return table;
}

/** The fill loop, kept apart so it is optimized on its own. Hot within a build. */
function race(
  table: Int32Array,
  size: number,
  cursor: Int32Array,
  step: Int32Array,
  skip: Int32Array,
  quota: Int32Array,
  owner: Int32Array,
  invWeight: Float64Array,
  times: Float64Array,
  due: Float64Array,
  heap: Int32Array,
  heapLen: number,
): void {
  let filled = 0;
  while (heapLen > 0) {
    const m = heap[0];
    let c = cursor[m];
    if (table[c] < 0) {
      table[c] = owner[m];
      if (++filled === size) break;
      if (--quota[m] === 0) {
        heap[0] = heap[--heapLen];
        siftDown(heap, due, heapLen);
        continue;
      }
    }
    // Scan on to the next free slot; one exists, since the table is not full.
    const s = skip[m];
    let j = step[m];
    do {
      c += s;
      if (c >= size) c -= size;
      j++;
    } while (table[c] >= 0);
    cursor[m] = c;
    step[m] = j;
    due[m] = times[j] * invWeight[m];
    siftDown(heap, due, heapLen);
  }
}

/** Gives the `extra` leftover slots to the largest fractional shares, ties to the lower member. */
function distributeRemainder(quota: Int32Array, frac: Float64Array, extra: number): void {
  if (extra <= 0) return;
  const n = quota.length;
  const order = new Int32Array(n);
  for (let m = 0; m < n; m++) order[m] = m;
  order.sort((a, b) => frac[b] - frac[a] || a - b);
  for (let k = 0; k < extra; k++) quota[order[k % n]] += 1;
}

let timesSize = 0;
let timesCache: Float64Array | null = null;

/** times[j] = -ln(1 - j/size): when a unit-weight backend probes position j. Cached per size. */
function expTimes(size: number): Float64Array {
  if (timesCache === null || timesSize !== size) {
    const t = new Float64Array(size);
    for (let j = 0; j < size; j++) t[j] = -Math.log1p(-j / size);
    timesCache = t;
    timesSize = size;
  }
  return timesCache;
}

/** Restores heap order from the root: earlier due first, equal due by lower member. */
function siftDown(heap: Int32Array, due: Float64Array, n: number): void {
  if (n === 0) return;
  let i = 0;
  const x = heap[0];
  const dx = due[x];
  for (;;) {
    let c = 2 * i + 1;
    if (c >= n) break;
    let hc = heap[c];
    let dc = due[hc];
    if (c + 1 < n) {
      const h2 = heap[c + 1];
      const d2 = due[h2];
      if (d2 < dc || (d2 === dc && h2 < hc)) {
        c++;
        hc = h2;
        dc = d2;
      }
    }
    if (!(dc < dx || (dc === dx && hc < x))) break;
    heap[i] = hc;
    i = c;
  }
  heap[i] = x;
}
