// Maglev table benchmarks: build time and disruption on backend removal, against the paper's
// original fill loop (Eisenbud et al., NSDI 2016, section 3.4) as the peer.
// Run alone: node dist/bench/maglev.bench.js [--quick]

import { pathToFileURL } from 'node:url';
import { buildMaglevTable, MAGLEV_DEFAULT_SIZE, type MaglevBackend } from '../src/engine/maglev.js';
import { hashString, mix32 } from '../src/engine/hash.js';

export interface MaglevBenchResult {
  id: string;
  value: number;
  unit: string;
  target: string;
  peers: Record<string, number>;
}

const LARGE_SIZE = 655373; // the paper's larger table size

function makeBackends(n: number): MaglevBackend[] {
  const out: MaglevBackend[] = [];
  for (let i = 0; i < n; i++) out.push({ id: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:80`, weight: 1 });
  return out;
}

/** The paper's populate loop (one claim per backend per turn, unweighted), as the reference. */
function buildTextbookMaglev(backends: readonly MaglevBackend[], size: number, table: Int32Array): Int32Array {
  const n = backends.length;
  const next = new Int32Array(n);
  const skip = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = hashString(backends[i].id, 0x6f666673) % size;
    skip[i] = (hashString(backends[i].id, 0x736b6970) % (size - 1)) + 1;
  }
  table.fill(-1);
  let filled = 0;
  for (;;) {
    for (let i = 0; i < n; i++) {
      let c = next[i];
      while (table[c] >= 0) {
        c += skip[i];
        if (c >= size) c -= size;
      }
      table[c] = i;
      c += skip[i];
      if (c >= size) c -= size;
      next[i] = c;
      if (++filled === size) return table;
    }
  }
}

type Builder = (backends: readonly MaglevBackend[], size: number, table: Int32Array) => Int32Array;

function medianBuildMs(build: Builder, backends: readonly MaglevBackend[], runs: number): number {
  const table = new Int32Array(MAGLEV_DEFAULT_SIZE);
  for (let i = 0; i < 3; i++) build(backends, MAGLEV_DEFAULT_SIZE, table); // warm up the JIT
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    build(backends, MAGLEV_DEFAULT_SIZE, table);
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  return ms[ms.length >> 1];
}

interface Disruption {
  slots: number; // changed share of slots / (1/N), mean over the removals tried
  flows: number; // same over random flow hashes
}

/** Removes each of `removals` backends in turn from N equal ones; compares tables by backend id. */
function measureRemoval(build: Builder, n: number, size: number, removals: number, flows: number): Disruption {
  const all = makeBackends(n);
  const base = build(all, size, new Int32Array(size)).slice();
  const after = new Int32Array(size);
  const keptIndex = new Int32Array(n); // index in the reduced array -> index in `all`
  let slotSum = 0;
  let flowSum = 0;
  for (let k = 0; k < removals; k++) {
    const removed = Math.floor((k * n) / removals);
    const kept: MaglevBackend[] = [];
    for (let i = 0; i < n; i++) {
      if (i === removed) continue;
      keptIndex[kept.length] = i;
      kept.push(all[i]);
    }
    build(kept, size, after);
    let changed = 0;
    for (let s = 0; s < size; s++) if (keptIndex[after[s]] !== base[s]) changed++;
    let moved = 0;
    for (let f = 0; f < flows; f++) {
      const s = mix32(f ^ 0x5bd1e995) % size;
      if (keptIndex[after[s]] !== base[s]) moved++;
    }
    slotSum += (changed / size) * n;
    flowSum += (moved / flows) * n;
  }
  return { slots: slotSum / removals, flows: flowSum / removals };
}

const round3 = (x: number): number => Math.round(x * 1000) / 1000;

export async function runMaglevBench(opts: { quick: boolean }): Promise<MaglevBenchResult[]> {
  const runs = opts.quick ? 7 : 21;
  const removals = opts.quick ? 3 : 10;
  const flows = 1_000_000;
  const results: MaglevBenchResult[] = [];

  for (const n of [10, 100, 1000]) {
    const backends = makeBackends(n);
    results.push({
      id: `maglev.build_ms_${n}`,
      value: round3(medianBuildMs(buildMaglevTable, backends, runs)),
      unit: 'ms',
      target: '<= 10 ms',
      peers: { textbook_maglev: round3(medianBuildMs(buildTextbookMaglev, backends, runs)) },
    });
  }

  const peers: Record<string, number> = {};
  let worst = 0;
  for (const n of [10, 100]) {
    const d = measureRemoval(buildMaglevTable, n, MAGLEV_DEFAULT_SIZE, removals, flows);
    peers[`n${n}_slots`] = round3(d.slots);
    peers[`n${n}_flows`] = round3(d.flows);
    worst = Math.max(worst, d.slots, d.flows);
    const t = measureRemoval(buildTextbookMaglev, n, MAGLEV_DEFAULT_SIZE, removals, flows);
    peers[`textbook_maglev_n${n}_slots`] = round3(t.slots);
  }
  // How much of the excess is table size: the same N = 100 removal with the paper's larger table.
  peers.n100_slots_size655373 = round3(measureRemoval(buildMaglevTable, 100, LARGE_SIZE, removals, 0).slots);
  peers.textbook_maglev_n100_slots_size655373 = round3(
    measureRemoval(buildTextbookMaglev, 100, LARGE_SIZE, removals, 0).slots,
  );
  results.push({
    id: 'maglev.disruption_vs_ideal',
    value: round3(worst), // worst of N = 10 and N = 100, slots and flows, at 65537 slots
    unit: 'x ideal',
    target: '<= 1.10',
    peers,
  });
  return results;
}

function printTable(results: readonly MaglevBenchResult[]): void {
  const rows = results.map((r) => [
    r.id,
    String(r.value),
    r.unit,
    r.target,
    Object.entries(r.peers)
      .map(([k, v]) => `${k}=${v}`)
      .join(' '),
  ]);
  const head = ['id', 'value', 'unit', 'target', 'peers'];
  const width = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]): string => cells.map((x, c) => (c < 4 ? x.padEnd(width[c]) : x)).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  printTable(await runMaglevBench({ quick: process.argv.includes('--quick') }));
}
