// Weighted Maglev lookup table (Eisenbud et al., "Maglev", NSDI 2016, section 3.4). Cold path.
//
// As in the paper, each backend walks its own permutation of the slots (offset + j*skip mod size,
// from two hashes of its id) and backends claim free slots along their permutations until the
// table is full. The fill order differs: the paper gives each backend one *claim* per turn; here
// each backend makes one *probe* per turn (a race along the permutations) and stops at its quota,
// size * w / sum(w) rounded by largest remainder. Until quotas bind, a slot goes to the backend
// that reaches it first, which is rendezvous hashing: removing a backend hands its slots to the
// runners-up and leaves everyone else's alone. Only the tail of the fill, where quotas bind,
// shifts. At 65537 slots and N >= 50 this moves about half as many extra slots as the paper's
// loop (bench/maglev.bench.ts). What is left, roughly 0.6-0.8 * sqrt(size) slots whatever N is,
// is the price of exact shares: the runners-up split a removed backend's slots by chance, and
// evening that out moves other slots. So "within 1.1x of ideal" needs size >~ 50 * N^2.
//
// Weights: weight w probes position j at time -ln(1 - j/size) / w (an exponential race), so the
// first-come shares already follow the weights and quotas only trim them. Raising one weight lets
// that backend win a superset of slots, so few others move.
//
// Turn order, and every tie, is by a hash of the id, never by position in the input array, so
// balancers that list the same backends in a different order build the same slot -> id mapping.

import { hashString } from './hash.js';

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

/** Largest table accepted (16M slots); keeps all slot arithmetic in int32. */
const MAX_SIZE = 1 << 24;

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
 * every process, whatever their order in the array. Each backend gets size * w / sum(w) slots,
 * rounded up or down. Throws RangeError for a non-prime size, a table of the wrong length or a
 * bad weight. Ids should be unique; duplicates share a permutation and split its slots.
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
  if (!Number.isSafeInteger(totalWeight)) throw new RangeError('maglev total weight exceeds 2^53');

  // Members: live backends sorted by (weight desc, id hash, id). The index is the tie-break for
  // equal probe times, and equal weights form contiguous groups.
  const rankKey = new Map<number, number>();
  for (const i of live) rankKey.set(i, hashString(backends[i].id, RANK_SEED));
  live.sort((a, b) => {
    const d = backends[b].weight - backends[a].weight || rankKey.get(a)! - rankKey.get(b)!;
    if (d !== 0) return d;
    const ia = backends[a].id;
    const ib = backends[b].id;
    return ia < ib ? -1 : ia > ib ? 1 : a - b;
  });

  const owner = new Int32Array(n); // member -> index into `backends`
  const cursor = new Int32Array(n); // slot at the member's next probe
  const skip = new Int32Array(n);
  const quota = new Int32Array(n); // slots still to claim
  const invWeight = new Float64Array(n);
  const frac = new Float64Array(n);
  let assigned = 0;
  for (let m = 0; m < n; m++) {
    const i = live[m];
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

  // Group g (equal weights) covers members [start[g], start[g + 1]).
  const start: number[] = [0];
  for (let m = 1; m < n; m++) if (invWeight[m] !== invWeight[m - 1]) start.push(m);
  start.push(n);
  const groups = start.length - 1;

  const st: Race = {
    table,
    size,
    uniform: groups === 1,
    owner,
    cursor,
    skip,
    quota,
    invWeight,
    step: new Int32Array(n),
    due: new Float64Array(n),
    heap: new Int32Array(n),
    filled: 0,
  };
  // Lockstep turns are cheapest while most members are still claiming and groups are large; the
  // rest runs as events. Both give the same table: the probe order is the same. With one weight and
  // fewer than 16 members (the lockstep phase would stop at the first member done) that phase has a
  // closed form that walks the slots once instead of probing them (raceUniformBySlots).
  if (groups === 1 && n < 16) {
    if (!raceUniformBySlots(st, n)) raceByEvents(st, n);
    return table;
  }
  if ((groups === 1 || groups * 8 <= n) && raceInGroups(st, start, Math.max(1, n >> 3))) return table;
  raceByEvents(st, n);
  return table;
}

/** Shared state of one build. */
interface Race {
  table: Int32Array;
  size: number;
  uniform: boolean; // one weight for all: order by step alone, no logarithms needed
  owner: Int32Array;
  cursor: Int32Array;
  skip: Int32Array;
  quota: Int32Array;
  invWeight: Float64Array;
  step: Int32Array; // permutation position of cursor
  due: Float64Array; // time of the next probe
  heap: Int32Array;
  filled: number;
}

/**
 * Phase one: members of equal weight probe together, one step per turn, groups ordered by a small
 * heap on (time, group); group g covers members [start[g], start[g + 1]). Stops after the turn in
 * which `stopAfterDone` members reached their quota; leaves step/due set per member. Returns true
 * if the table is full.
 */
function raceInGroups(st: Race, start: readonly number[], stopAfterDone: number): boolean {
  const { table, size, uniform, owner, cursor, skip, quota, invWeight, step, due } = st;
  const groups = start.length - 1;
  const gStep = new Int32Array(groups);
  const gDue = new Float64Array(groups);
  const gLive = new Int32Array(groups); // members still below quota
  const gHeap = new Int32Array(groups);
  let gLen = 0;
  for (let g = 0; g < groups; g++) {
    for (let m = start[g]; m < start[g + 1]; m++) if (quota[m] > 0) gLive[g]++;
    if (gLive[g] > 0) gHeap[gLen++] = g; // all due at time 0: index order is heap order
  }
  let filled = st.filled;
  let done = 0;
  while (done < stopAfterDone && gLen > 0) {
    const g = gHeap[0];
    const end = start[g + 1];
    for (let m = start[g]; m < end; m++) {
      let c = cursor[m];
      if (table[c] < 0) {
        if (quota[m] === 0) continue;
        table[c] = owner[m];
        if (++filled === size) return true;
        if (--quota[m] === 0) {
          done++;
          gLive[g]--;
        }
      }
      c += skip[m];
      if (c >= size) c -= size;
      cursor[m] = c;
    }
    if (gLive[g] === 0) {
      // Drop it, or its step would run on past the end of the permutation.
      gHeap[0] = gHeap[--gLen];
    } else {
      const j = ++gStep[g];
      gDue[g] = uniform ? j : probeTime(j, size, invWeight[start[g]]);
    }
    siftDown(gHeap, gDue, gLen, 0);
  }
  st.filled = filled;
  for (let g = 0; g < groups; g++) {
    for (let m = start[g]; m < start[g + 1]; m++) {
      step[m] = gStep[g];
      due[m] = gDue[g];
    }
  }
  return false;
}

/** x^-1 mod p for a prime p < 2^24 and 0 < x < p (extended Euclid). */
function modInverse(x: number, p: number): number {
  let [r0, r1, t0, t1] = [p, x, 0, 1];
  while (r1 !== 0) {
    const q = Math.floor(r0 / r1);
    [r0, r1] = [r1, r0 - q * r1];
    [t0, t1] = [t1, t0 - q * t1];
  }
  return t0 < 0 ? t0 + p : t0;
}

/** Scratch arrays of raceUniformBySlots, grown as needed (a build for 2,000 VIPs would otherwise allocate them per table). */
let scratchKey = new Int32Array(0), scratchHist = new Int32Array(0);

/**
 * Phase one with one weight for all and stopAfterDone = 1 (fewer than 16 members), in closed form: the
 * same table and state as raceInGroups. In lockstep turns j = 0, 1, ..., member m probes slot
 * (offset_m + j * skip_m) mod size, and until the first member reaches its quota nobody skips a probe.
 * So slot s goes to the member whose permutation reaches it first, at pos_m(s) = (s - offset_m) *
 * skip_m^-1 mod size, ties to the lower member, if that turn is at most T, the turn in which the first
 * member reaches its quota (that turn completes: every member makes its probe of turn T; one claim per
 * member per turn, so nobody passes its quota). Members with no quota never claim. Since pos_m(s + 1) =
 * pos_m(s) + skip_m^-1, this walks the slots a few times where probing takes about size * ln(size)
 * probes. Returns true if the table is full.
 */
function raceUniformBySlots(st: Race, n: number): boolean {
  const { table, size, owner, cursor, skip, quota, step, due } = st;
  if (scratchKey.length < size) scratchKey = new Int32Array(size);
  const nb = (size >> 8) + 1;
  if (scratchHist.length < 16 * Math.max(nb, 256)) scratchHist = new Int32Array(16 * Math.max(nb, 256));
  // key[s] = (first turn that reaches s) * 16 + member: the smallest key is the first probe, ties to the
  // lower member. Below 2^28 (size < 2^24, n < 16).
  const key = scratchKey, hist = scratchHist;
  hist.fill(0, 0, 16 * nb);
  // The last member with a quota: its sweep also counts each member's turns in buckets of 256 turns (a
  // histogram small enough to stay in the cache), to find T below.
  let lastClaimer = -1, first = true;
  for (let m = 0; m < n; m++) if (quota[m] > 0) lastClaimer = m;
  for (let m = 0; m < n; m++) {
    if (quota[m] === 0) continue;
    const inv = modInverse(skip[m], size);
    // Products stay below 2^48: exact in doubles.
    let p = (((size - cursor[m]) % size) * inv) % size;
    if (first && m === lastClaimer) {
      for (let s = 0; s < size; s++) {
        key[s] = (p << 4) | m;
        hist[m * nb + (p >> 8)]++;
        p += inv;
        if (p >= size) p -= size;
      }
    } else if (first) {
      for (let s = 0; s < size; s++) {
        key[s] = (p << 4) | m;
        p += inv;
        if (p >= size) p -= size;
      }
    } else if (m === lastClaimer) {
      for (let s = 0; s < size; s++) {
        let k = (p << 4) | m;
        const o = key[s];
        if (o < k) k = o;
        key[s] = k;
        hist[(k & 15) * nb + (k >> 12)]++;
        p += inv;
        if (p >= size) p -= size;
      }
    } else {
      for (let s = 0; s < size; s++) {
        const k = (p << 4) | m;
        if (k < key[s]) key[s] = k;
        p += inv;
        if (p >= size) p -= size;
      }
    }
    first = false;
  }
  // T: the bucket in which the first member reaches its quota, then the turn within it.
  const cum = new Int32Array(n);
  let bucket = -1;
  for (let b = 0; b < nb && bucket < 0; b++) {
    for (let m = 0; m < n; m++) if (quota[m] > 0 && cum[m] + hist[m * nb + b] >= quota[m]) bucket = b;
    if (bucket < 0) for (let m = 0; m < n; m++) cum[m] += hist[m * nb + b];
  }
  hist.fill(0, 0, 16 * 256);
  for (let s = 0; s < size; s++) { const k = key[s]; if (k >> 12 === bucket) hist[(k & 15) * 256 + ((k >> 4) & 255)]++; }
  let last = -1;
  for (let t = 0; t < 256 && last < 0; t++) {
    for (let m = 0; m < n; m++) {
      cum[m] += hist[m * 256 + t];
      if (quota[m] > 0 && cum[m] >= quota[m]) last = (bucket << 8) + t;
    }
  }
  // cum[m] is now member m's claims up to and including turn T.
  const end = (last + 1) << 4;
  let filled = 0, below = 0, lone = -1;
  for (let m = 0; m < n; m++) {
    filled += cum[m];
    if (quota[m] > cum[m]) { below++; lone = m; }
  }
  if (below === 1) {
    // One member left below its quota: it takes every slot still free (its quota is what is left), as the
    // event phase would, in the same pass.
    const o = owner[lone];
    for (let s = 0; s < size; s++) { const k = key[s]; table[s] = k < end ? owner[k & 15] : o; }
    st.filled = size;
    return true;
  }
  for (let s = 0; s < size; s++) { const k = key[s]; if (k < end) table[s] = owner[k & 15]; }
  st.filled = filled;
  if (filled === size) return true;
  const next = last + 1;
  for (let m = 0; m < n; m++) {
    quota[m] -= cum[m];
    step[m] = next;
    due[m] = next;
    cursor[m] = (cursor[m] + ((next * skip[m]) % size)) % size;
  }
  return false;
}

/**
 * Phase two: a heap of members on (time of next probe, member). The member due first scans past
 * taken slots in a tight loop (probes that would change nothing), so the order, and the table,
 * are those of turn-by-turn probing.
 */
function raceByEvents(st: Race, n: number): void {
  const { table, size, uniform, owner, cursor, skip, quota, invWeight, step, due, heap } = st;
  let heapLen = 0;
  for (let m = 0; m < n; m++) if (quota[m] > 0) heap[heapLen++] = m;
  for (let i = (heapLen >> 1) - 1; i >= 0; i--) siftDown(heap, due, heapLen, i);
  let filled = st.filled;
  while (heapLen > 0) {
    const m = heap[0];
    if (heapLen === 1) {
      // The last member below quota: its quota is exactly the free slots left (the quotas sum to size), and it
      // would claim each of them as its permutation reaches it. Give them to it in one pass instead (same table).
      const o = owner[m];
      for (let c = 0; c < size; c++) if (table[c] < 0) table[c] = o;
      filled = size;
      quota[m] = 0;
      break;
    }
    let c = cursor[m];
    if (table[c] < 0) {
      table[c] = owner[m];
      if (++filled === size) break;
      if (--quota[m] === 0) {
        heap[0] = heap[--heapLen];
        siftDown(heap, due, heapLen, 0);
        continue;
      }
    }
    // A free slot remains (the table is not full), so the scan ends within one cycle.
    const s = skip[m];
    let j = step[m];
    do {
      c += s;
      if (c >= size) c -= size;
      j++;
    } while (table[c] >= 0);
    cursor[m] = c;
    step[m] = j;
    due[m] = uniform ? j : probeTime(j, size, invWeight[m]);
    siftDown(heap, due, heapLen, 0);
  }
  st.filled = filled;
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

/** When a member of weight 1/invWeight probes step j of its permutation (j < size). */
function probeTime(j: number, size: number, invWeight: number): number {
  return -Math.log1p(-j / size) * invWeight;
}

/** Restores heap order below i: earlier due first, equal due by lower index. */
function siftDown(heap: Int32Array, due: Float64Array, n: number, i: number): void {
  if (n === 0) return;
  const x = heap[i];
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
