// Engine benchmarks, in process on one core: established-flow packets/s (10 thousand and 1 million live
// MPTCP connections, packets drawn at random), new MPTCP connections/s, bytes per connection, and floods.
// Run alone: node dist/bench/engine.bench.js [--quick]
import { pathToFileURL } from 'node:url';
import { validateEngineConfig } from '../src/engine/config.js';
import { Engine, Verdict } from '../src/engine/engine.js';
import { encodeMptcpOption } from '../src/wire/mptcp-encode.js';
import { JoinForm, MptcpSubtype } from '../src/wire/mptcp-options.js';
import { keyToken } from '../src/wire/tokens.js';

export interface BenchResult { id: string; value: number; unit: string; target: string; peers: Record<string, number>; note?: string; spread?: [number, number] }

const VIP = [198, 18, 100, 1];
const BACKENDS = 8;

/** A TCP/IPv4 packet template with the given options and payload; checksums are not needed by the engine. */
function template(flags: number, options: Uint8Array, payload: number): Uint8Array {
  const optLen = (options.length + 3) & ~3;
  const p = new Uint8Array(20 + 20 + optLen + payload);
  p[0] = 0x45; p[2] = p.length >> 8; p[3] = p.length & 0xff; p[6] = 0x40; p[8] = 64; p[9] = 6;
  p.set(VIP, 16);
  p[22] = 5201 >> 8; p[23] = 5201 & 0xff;
  p[32] = ((20 + optLen) / 4) << 4; p[33] = flags; p[34] = 0xff; p[35] = 0xff;
  p.fill(1, 40, 40 + optLen);
  p.set(options, 40);
  return p;
}

function opts(...specs: Parameters<typeof encodeMptcpOption>[0][]): Uint8Array {
  const b = new Uint8Array(40);
  let n = 0;
  for (const s of specs) n += encodeMptcpOption(s, b, n);
  return b.slice(0, n);
}

/** NOP NOP TS(10) + DSS with a 4-byte data ACK: a typical MPTCP ACK / data segment. */
function dataOptions(): Uint8Array {
  const ts = new Uint8Array([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
  const dss = opts({ subtype: MptcpSubtype.Dss, dataAck: 12345n });
  const o = new Uint8Array(ts.length + dss.length);
  o.set(ts); o.set(dss, ts.length);
  return o;
}

/** Client i: a unique (address, port) pair. */
function setClient(p: Uint8Array, i: number, second = false): void {
  const a = 0x0a000000 + (i >>> 4) + (second ? 0x00800000 : 0);
  p[12] = a >>> 24; p[13] = (a >>> 16) & 0xff; p[14] = (a >>> 8) & 0xff; p[15] = a & 0xff;
  const port = 1024 + (i & 15);
  p[20] = port >> 8; p[21] = port & 0xff;
}

function makeEngine(conns: number): Engine {
  return new Engine(validateEngineConfig({
    vips: [{ address: `${VIP.join('.')}:5201`, backends: Array.from({ length: BACKENDS }, (_, b) => ({ address: `198.18.${10 + b}.2` })) }],
    tables: { maxFlows: Math.max(64, conns * 2 + 1024), maxConnections: Math.max(64, conns + 1024) },
  }));
}

/** Opens n MPTCP v1 connections, each with a second subflow (join), through the engine. */
function openConnections(e: Engine, n: number, t0 = 0): void {
  const syn = template(0x02, opts({ subtype: MptcpSubtype.MpCapable, version: 1 }), 0);
  const synack = template(0x12, opts({ subtype: MptcpSubtype.MpCapable, version: 1, senderKey: 0n }), 0);
  const ack = template(0x10, opts({ subtype: MptcpSubtype.MpCapable, version: 1, senderKey: 1n, receiverKey: 0n }), 0);
  const join = template(0x02, opts({ subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, token: 0, nonce: 7, addrId: 1 }), 0);
  const work = new Uint8Array(128);
  for (let i = 0; i < n; i++) {
    work.set(syn); setClient(work, i);
    e.process(work, 0, syn.length, t0);
    const b = e.lastBackend;
    // SYN/ACK from the chosen backend to the client, carrying key i + 1.
    work.set(synack);
    work.set(work.subarray(0, 0), 0);
    const ca = 0x0a000000 + (i >>> 4), port = 1024 + (i & 15);
    work[12] = 198; work[13] = 18; work[14] = 10 + (b % BACKENDS); work[15] = 2;
    work[16] = ca >>> 24; work[17] = (ca >>> 16) & 0xff; work[18] = (ca >>> 8) & 0xff; work[19] = ca & 0xff;
    work[20] = 5201 >> 8; work[21] = 5201 & 0xff; work[22] = port >> 8; work[23] = port & 0xff;
    writeKey(work, 44, i + 1);
    e.process(work, 0, synack.length, t0);
    work.set(ack); setClient(work, i); writeKey(work, 44 + 8, i + 1);
    e.process(work, 0, ack.length, t0);
    work.set(join); setClient(work, i, true);
    const tok = tokens !== null && i < tokens.length ? tokens[i] : keyToken(1, 0, i + 1);
    work[44] = tok >>> 24; work[45] = (tok >>> 16) & 0xff; work[46] = (tok >>> 8) & 0xff; work[47] = tok & 0xff;
    e.process(work, 0, join.length, t0);
  }
}
let tokens: Uint32Array | null = null;

function writeKey(p: Uint8Array, off: number, k: number): void {
  p.fill(0, off, off + 4);
  p[off + 4] = k >>> 24; p[off + 5] = (k >>> 16) & 0xff; p[off + 6] = (k >>> 8) & 0xff; p[off + 7] = k & 0xff;
}

function median(xs: number[]): number { const s = xs.slice().sort((a, b) => a - b); return s[s.length >> 1]; }

/**
 * Established packets/s: each packet is the template re-addressed to a random live connection (the fields the
 * engine rewrites are restored first, as a device read would deliver them); payload bytes are not touched.
 */
function establishedPps(e: Engine, conns: number, size: number, seconds: number, runs: number): { median: number; min: number; max: number } {
  const optionsBytes = dataOptions();
  const t = template(0x10, optionsBytes, Math.max(0, size - 40 - optionsBytes.length));
  const work = t.slice();
  const len = t.length;
  const order = new Uint32Array(1 << 20);
  let x = 0x9e3779b9;
  for (let i = 0; i < order.length; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; order[i] = (x >>> 0) % conns; }
  const rates: number[] = [];
  let bad = 0;
  for (let run = 0; run < runs; run++) {
    let n = 0;
    const t0 = performance.now();
    const until = t0 + seconds * 1000;
    let now = t0;
    while (now < until) {
      for (let k = 0; k < 65536; k++) {
        const i = order[(n + k) & 0xfffff];
        // Restore what the last rewrite changed: destination, ports, checksums.
        work[16] = 198; work[17] = 18; work[18] = 100; work[19] = 1; work[22] = 0x14; work[23] = 0x51;
        work[10] = 0; work[11] = 0; work[36] = 0; work[37] = 0;
        const a = 0x0a000000 + (i >>> 4);
        work[12] = a >>> 24; work[13] = (a >>> 16) & 0xff; work[14] = (a >>> 8) & 0xff; work[15] = a & 0xff;
        work[21] = (1024 + (i & 15)) & 0xff; work[20] = (1024 + (i & 15)) >> 8;
        if (e.process(work, 0, len, 1000) !== Verdict.ToBackend || e.lastFlow < 0) bad++;
      }
      n += 65536;
      now = performance.now();
    }
    rates.push(n / ((now - t0) / 1000));
  }
  if (bad > 0) throw new Error(`established bench: ${bad} packets did not follow a flow`);
  return { median: median(rates), min: Math.min(...rates), max: Math.max(...rates) };
}

function newConnectionsPerSecond(n: number, runs: number): { median: number; min: number; max: number } {
  tokens = new Uint32Array(n);
  for (let i = 0; i < n; i++) tokens[i] = keyToken(1, 0, i + 1); // the join's token: the client's work, not ours
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    const e = makeEngine(n);
    const t0 = performance.now();
    openConnections(e, n);
    const dt = (performance.now() - t0) / 1000;
    const c = e.counters.snapshot().counters;
    // Random 32-bit tokens collide (about n^2 / 2^33 pairs): those connections fall back, the rest must steer.
    if (c.joins_steered_by_token + c.token_collision_stripped < n) throw new Error(`new-connection bench: ${c.joins_steered_by_token} of ${n} joins steered`);
    rates.push(n / dt);
  }
  tokens = null;
  return { median: median(rates), min: Math.min(...rates), max: Math.max(...rates) };
}

function gc(): void { (globalThis as { gc?: () => void }).gc?.(); }

/** Bytes per live connection with two subflows, at n connections (tables sized for n). */
function bytesPerConnection(n: number): { heap: number; rss: number; e: Engine } {
  gc();
  const m0 = process.memoryUsage();
  const e = makeEngine(n);
  openConnections(e, n);
  gc();
  const m1 = process.memoryUsage();
  // Token collisions (about n^2 / 2^33) strip MP_CAPABLE: those connections fall back and need no entry.
  const stripped = e.counters.snapshot().counters.token_collision_stripped;
  if (e.conns.used + stripped !== n || e.flows.used !== 2 * n) throw new Error(`memory bench: ${e.conns.used} connections (${stripped} fell back on a token collision), ${e.flows.used} flows`);
  const heap = (m1.heapUsed + m1.arrayBuffers - m0.heapUsed - m0.arrayBuffers) / n;
  return { heap, rss: (m1.rss - m0.rss) / n, e };
}

/** Floods of SYNs and forged MP_CAPABLE ACKs, with genuine MPTCP connections interleaved. */
function flood(total: number): { genuineShare: number; maxFlows: number; maxConns: number; evicted: number; ignored: number; capFlows: number; capConns: number } {
  const capFlows = 65536, capConns = 16384;
  const e = new Engine(validateEngineConfig({
    vips: [{ address: `${VIP.join('.')}:5201`, backends: Array.from({ length: BACKENDS }, (_, b) => ({ address: `198.18.${10 + b}.2` })) }],
    tables: { maxFlows: capFlows, maxConnections: capConns },
  }));
  const syn = template(0x02, opts({ subtype: MptcpSubtype.MpCapable, version: 1 }), 0);
  const forged = template(0x10, opts({ subtype: MptcpSubtype.MpCapable, version: 1, senderKey: 1n, receiverKey: 2n }), 0);
  const work = new Uint8Array(128);
  let x = 12345, ok = 0, genuine = 0, maxFlows = 0, maxConns = 0;
  let now = 0;
  const synack = template(0x12, opts({ subtype: MptcpSubtype.MpCapable, version: 1, senderKey: 0n }), 0);
  const join = template(0x02, opts({ subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, token: 0, nonce: 7, addrId: 1 }), 0);
  for (let i = 0; i < total; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    // Alternate a random-source SYN and a forged ACK with keys for a flow never opened.
    const p = (i & 1) === 0 ? syn : forged;
    work.set(p);
    const a = (0x64000000 | (x & 0x00ffffff)) >>> 0;
    work[12] = a >>> 24; work[13] = (a >>> 16) & 0xff; work[14] = (a >>> 8) & 0xff; work[15] = a & 0xff;
    work[20] = (x >>> 24) | 4; work[21] = (x >>> 16) & 0xff;
    if ((i & 1) === 1) writeKey(work, 52, x >>> 0);
    e.process(work, 0, p.length, now);
    if (i % 1000 === 0) now += 100;
    if (i % 4096 === 0) e.tick(now);
    // Every 200th step, one genuine connection with a join, checked end to end.
    if (i % 200 === 0) {
      genuine++;
      const id = 0x200000 + genuine;
      work.set(syn); setClient(work, id);
      if (e.process(work, 0, syn.length, now) !== Verdict.ToBackend) continue;
      const b = e.lastBackend;
      const ca = 0x0a000000 + (id >>> 4), port = 1024 + (id & 15);
      work.set(synack);
      work[12] = 198; work[13] = 18; work[14] = 10 + (b % BACKENDS); work[15] = 2;
      work[16] = ca >>> 24; work[17] = (ca >>> 16) & 0xff; work[18] = (ca >>> 8) & 0xff; work[19] = ca & 0xff;
      work[20] = 5201 >> 8; work[21] = 5201 & 0xff; work[22] = port >> 8; work[23] = port & 0xff;
      writeKey(work, 44, id);
      e.process(work, 0, synack.length, now);
      work.set(join); setClient(work, id, true);
      const tok = keyToken(1, 0, id);
      work[44] = tok >>> 24; work[45] = (tok >>> 16) & 0xff; work[46] = (tok >>> 8) & 0xff; work[47] = tok & 0xff;
      if (e.process(work, 0, join.length, now) === Verdict.ToBackend && e.lastBackend === b) ok++;
    }
    if (e.flows.used > maxFlows) maxFlows = e.flows.used;
    if (e.conns.used > maxConns) maxConns = e.conns.used;
  }
  const c = e.counters.snapshot().counters;
  return { genuineShare: ok / genuine, maxFlows, maxConns, evicted: c.flows_evicted_embryonic, ignored: c.keys_for_unopened_flow, capFlows, capConns };
}

/** For profiling and A/B runs: established 64-byte packets/s at n connections, best of `runs`. */
export function establishedBest(n: number, runs: number, seconds: number): number {
  const e = makeEngine(n);
  openConnections(e, n);
  let best = 0;
  for (let i = 0; i < runs; i++) best = Math.max(best, establishedPps(e, n, 64, seconds, 1).median);
  return best;
}

export async function runEngineBench(o: { quick: boolean }): Promise<BenchResult[]> {
  const secs = o.quick ? 0.3 : 2, runs = o.quick ? 1 : 5;
  const big = o.quick ? 100_000 : 1_000_000;
  const out: BenchResult[] = [];
  const spread = (r: { min: number; max: number }, k = 1): [number, number] => [Math.round(r.min / k), Math.round(r.max / k)];

  const small = makeEngine(10_000);
  openConnections(small, 10_000);
  const p64 = establishedPps(small, 10_000, 64, secs, runs);
  out.push({ id: 'engine.established_pps_64b', value: Math.round(p64.median), unit: 'packets/s', target: '>= 10000000', spread: spread(p64), peers: { maglev_paper_per_core: 2_000_000, beamer_per_core: 3_300_000 }, note: '10 thousand live MPTCP connections (20 thousand subflows), random order' });
  const p1500 = establishedPps(small, 10_000, 1500, secs, runs);
  out.push({ id: 'engine.established_pps_1500b', value: Math.round(p1500.median), unit: 'packets/s', target: '>= 10000000', spread: spread(p1500), peers: {}, note: '10 thousand connections; payload bytes are not touched by the engine' });

  const mem = bytesPerConnection(big);
  const pBig = establishedPps(mem.e, big, 64, secs, runs);
  out.push({ id: 'engine.established_pps_64b_1m', value: Math.round(pBig.median), unit: 'packets/s', target: '>= 5000000', spread: spread(pBig), peers: {}, note: `${big} live connections (2 subflows each), random order` });
  out.push({ id: 'engine.bytes_per_conn_1m', value: Math.round(mem.heap), unit: 'bytes', target: '<= 200', peers: { rss_bytes_per_conn: Math.round(mem.rss) }, note: `${big} connections with 2 subflows; tables sized for them` });

  const nc = newConnectionsPerSecond(o.quick ? 20_000 : 200_000, runs);
  out.push({ id: 'engine.new_mptcp_conns_per_s', value: Math.round(nc.median), unit: 'connections/s', target: '>= 250000', spread: spread(nc), peers: { katran_lru_update_limit: 125_000 }, note: 'SYN, SYN/ACK with key (SHA-256 token), third ACK, one MP_JOIN each' });

  const f = flood(o.quick ? 200_000 : 2_000_000);
  out.push({ id: 'flood.genuine_success_share', value: Math.round(f.genuineShare * 1000) / 1000, unit: 'share', target: '>= 0.99', peers: { max_flows: f.maxFlows, flow_cap: f.capFlows, max_conns: f.maxConns, conn_cap: f.capConns, embryonic_evicted: f.evicted, forged_keys_ignored: f.ignored }, note: `${o.quick ? '100 thousand' : '1 million'} random-source SYNs and as many forged MP_CAPABLE ACKs, a genuine connection + join every 200 packets` });
  return out;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const r of await runEngineBench({ quick: process.argv.includes('--quick') })) console.log(JSON.stringify(r));
}
