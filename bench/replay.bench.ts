// `mplb replay` on a large capture: records/s and peak RSS of the command itself (a child process), reading a
// generated capture from disk. The capture is streamed, so the peak should not grow with the file.
// Run alone: node dist/bench/replay.bench.js [--quick]   (full: 5 million records, about 580 MB in $TMPDIR)
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { BenchResult } from './engine.bench.js';
import { fmt, verdict } from './report.js';
import { writeMptcpCapture, type GenResult } from '../test/helpers/capture-gen.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const MAXRSS = new URL('../test/helpers/maxrss.js', import.meta.url).href;

interface Run { seconds: number; records: number; peakRssMiB: number; connections: number }

/** One `mplb replay FILE --json` in a child process: wall time, peak RSS, and the counts it reported. */
function replayOnce(file: string, gen: GenResult): Run {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--import', MAXRSS, MAIN, 'replay', file, '--json'], { encoding: 'utf8', maxBuffer: 1 << 30 });
  const seconds = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`mplb replay exited ${r.status}: ${r.stderr.slice(0, 2000)}`);
  const doc = JSON.parse(r.stdout) as { packets: { total: number }; connections: unknown[]; summary: { onConnectionBackend: number } };
  if (doc.packets.total !== gen.records) throw new Error(`replayed ${doc.packets.total} of ${gen.records} records`);
  if (doc.summary.onConnectionBackend !== gen.connections) throw new Error(`${doc.summary.onConnectionBackend} of ${gen.connections} joins on their connection's server`);
  const kb = Number(/maxrss_kb=(\d+)/.exec(r.stderr)?.[1] ?? NaN);
  return { seconds, records: doc.packets.total, peakRssMiB: kb / 1024, connections: doc.connections.length };
}

export async function runReplayBench(opts: { quick: boolean }): Promise<BenchResult[]> {
  const big = opts.quick ? 100_000 : 5_000_000;
  const small = opts.quick ? 20_000 : 1_000_000;
  const dir = mkdtempSync(`${tmpdir()}/mplb-replay-bench-`);
  try {
    const sizes: { gen: GenResult; run: Run; genSeconds: number; rates: number[] }[] = [];
    const runs = opts.quick ? 1 : 3;
    // The same connections both times (the report and the tables grow with them), 20 or 100 records each: what the
    // file size alone costs in memory shows as the difference.
    for (const [records, perConnection] of [[small, 20], [big, 100]]) {
      const file = `${dir}/capture-${records}.pcap`;
      const t0 = performance.now();
      const gen = writeMptcpCapture(file, { records, perConnection });
      const genSeconds = (performance.now() - t0) / 1000;
      // The machine is shared: the median of a few runs of the large file, with the range.
      const all = Array.from({ length: records === big ? runs : 1 }, () => replayOnce(file, gen));
      const rates = all.map((x) => x.records / x.seconds).sort((x, y) => x - y);
      const run = all.find((x) => x.records / x.seconds === rates[rates.length >> 1])!;
      run.peakRssMiB = Math.max(...all.map((x) => x.peakRssMiB));
      sizes.push({ gen, run, genSeconds, rates });
      rmSync(file, { force: true });
    }
    const [s, b] = sizes;
    const mb = (n: number) => Math.round(n / 1e5) / 10;
    const rps = Math.round(b.run.records / b.run.seconds);
    return [{
      spread: [Math.round(b.rates[0]), Math.round(b.rates[b.rates.length - 1])],
      id: opts.quick ? 'replay.records_per_s_quick' : 'replay.records_per_s_5m',
      value: rps,
      unit: 'records/s',
      target: 'n/a (bounded memory)',
      peers: {
        peak_rss_mib: Math.round(b.run.peakRssMiB),
        [`peak_rss_mib_at_${small}_same_connections`]: Math.round(s.run.peakRssMiB),
        capture_mb: mb(b.gen.bytes),
        seconds: Math.round(b.run.seconds * 10) / 10,
        [`records_per_s_at_${small}`]: Math.round(s.run.records / s.run.seconds),
      },
      note: `\`mplb replay FILE --json\` as a child process on a generated ${fmt(b.gen.records)}-record raw-IPv4 pcap of ${mb(b.gen.bytes)} MB `
        + `(${b.gen.connections} MPTCP v1 connections one after another at 1000/s, each with a join, 88 data packets of 100 bytes with DSS, FINs; `
        + `read from the page cache in 1 MiB chunks, twice: the first pass counts SYNs and infers the VIP): wall time including start-up (median of ${b.rates.length} runs), `
        + `the highest peak RSS of the runs from the child's getrusage. The same ${s.gen.connections} connections in ${fmt(s.gen.records)} records (${mb(s.gen.bytes)} MB): `
        + `${Math.round(s.run.peakRssMiB)} MiB, so memory follows the connections (the report's connections[] and joins[], tables sized by the SYNs), not the file.`,
    }];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const r of await runReplayBench({ quick: process.argv.includes('--quick') })) {
    const spread = r.spread ? ` (${fmt(r.spread[0])}-${fmt(r.spread[1])})` : '';
    console.log(`${r.id} ${fmt(r.value)}${spread} ${r.unit}  ${Object.entries(r.peers).map(([k, v]) => `${k}=${v}`).join(' ')}`);
    console.log(`  ${r.note}`);
    // The row bench/run.ts would write into BENCHMARKS.md.
    console.log(`| \`${r.id}\` | ${fmt(r.value)}${spread} ${r.unit} | ${r.target} | ${verdict(r)} | ${Object.entries(r.peers).map(([k, v]) => `${k}: ${fmt(v)}`).join('<br>')} | ${r.note ?? ''} |`);
  }
}
