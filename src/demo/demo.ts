// `mplb demo`: the poster's experiment (Liénardy and Donnet, "Towards a Multipath TCP Aware Load Balancer")
// on a real testbed: a client with two rate-limited links, then (0) no balancer, (1) an MPTCP-unaware
// balancer whose hash sends the two subflows to different servers, (2) mplb, MPTCP-aware. Modes alternate
// within each run because the machine is shared and noisy.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ENGINE_DEFAULTS, validateEngineConfig } from '../engine/config.js';
import { Engine } from '../engine/engine.js';
import { startBalancerProcess, type BalancerProcess } from '../testbed/balancer-process.js';
import { ipn, nstatIn, sysctlIn } from '../testbed/netns.js';
import { testbedDown, testbedUp, type TestbedHandle } from '../testbed/testbed.js';
import type { ClientReport } from '../traffic/client.js';
import { buildTcpPacket, capSyn, joinSyn } from '../wire/build.js';
import { TCP_SYN } from '../wire/parse.js';
import { lineChart, type PlotSeries } from './plot.js';
import { demoPreflight } from './preflight.js';

export type DemoMode = 'noBalancer' | 'unaware' | 'aware';
export const DEMO_MODES: readonly DemoMode[] = ['noBalancer', 'unaware', 'aware'];

/** Targets from the poster: the aware balancer matches no balancer and doubles the unaware one. */
export const TARGETS = { awareOverNoBalancer: 0.9, awareOverUnaware: 1.8 };

export interface DemoOptions {
  runs: number;
  /** Length of the timed transfer of each run, seconds. */
  seconds: number;
  /** tbf rate of each client link, Mbit/s. */
  rateMbit: number;
  servers: number;
  /** Transfer sizes for the completion-time curve: labels as given ("10M") and bytes (K/M/G = 1024^n). */
  sizes: Array<{ label: string; bytes: number }>;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /**
   * Balancers (default 1: the experiment above). 2 or more: the cluster experiment (src/demo/cluster.ts): mplb
   * balancers behind an ECMP router, without and with the shared token store.
   */
  balancers?: number;
  /** Cluster only: concurrent MPTCP connections of the timed transfer (default 4). */
  connections?: number;
}

/** Per mode, exactly the fields of the `--json` document. */
export interface ModeSummary {
  goodputMbps: number[];
  /** Completion of the largest size, seconds, one per run (null when that transfer failed). */
  completionSeconds: Array<number | null>;
  /** Fewest subflows the client saw on the timed connection of any run. */
  subflowsEstablished: number;
  /** Joins the servers reset for an unknown token (MPTcpExtMPJoinNoTokenFound), summed over runs. */
  joinsReset: number;
}

export interface TransferSample {
  bytes: number;
  label?: string;
  ok: boolean;
  goodputMbps: number;
  /** Connected -> server trailer (all bytes received), seconds. */
  completionSeconds: number | null;
  subflowsClient: number;
  subflowsServer: number | null;
  serverToken?: string;
  error?: string;
}

export interface RunSample {
  run: number;
  mode: DemoMode;
  /** Position of this mode within its run (orders rotate from run to run). */
  position: number;
  timed: TransferSample & { durationSeconds: number };
  /** Client's bytes acknowledged (data level) since the client started, sampled every 100 ms. */
  ackedSeries: Array<{ tMs: number; bytesAcked: number }>;
  /** Goodput over time of the timed transfer: [seconds since start, Mbit/s over the last 500 ms]. */
  rateSeries: Array<[number, number]>;
  sized: TransferSample[];
  joinsReset: number;
  /** nstat deltas over this sample: client, and each server. */
  nstat: { client: Record<string, number>; servers: Array<Record<string, number>> };
  /** mplb's engine counters and packet loop counters at the end (balancer modes). */
  engine?: Record<string, number>;
  loop?: Record<string, unknown>;
}

export interface DemoResult {
  rateMbps: number;
  seconds: number;
  modes: Record<DemoMode, ModeSummary>;
  runs: number;
  servers: number;
  sizes: Array<{ label: string; bytes: number }>;
  /** Per mode, per size label: completion seconds per run. */
  completionBySize: Record<DemoMode, Record<string, Array<number | null>>>;
  /** Join accounting summed over runs: client sent / got a SYN-ACK; servers received / reset for an unknown token. */
  joins: Record<DemoMode, { clientSynTx: number; clientSynAckRx: number; serverSynRx: number; serverNoTokenFound: number; serverOutRsts: number; serverDssNotMatching: number }>;
  /** Per run, measured in the same run. */
  ratios: { awareOverUnaware: number[]; awareOverNoBalancer: number[]; medianAwareOverUnaware: number; medianAwareOverNoBalancer: number };
  targets: typeof TARGETS;
  pass: { awareOverNoBalancer: boolean; awareOverUnaware: boolean; all: boolean };
  setup: {
    vip: string;
    port: number;
    clientAddrs: [string, string];
    /** Where the unaware balancer's hash sends each client address (asked from the engine before the run). */
    hashedBackends: [string, string];
    policy: 'hash-ip-pair';
    hashSeed: number;
    testbedRunId: string;
  };
  startedAt: string;
  durationSeconds: number;
  samples: RunSample[];
}

export const VIP = '198.19.0.10';
export const PORT = 5201;
const TRAFFIC_CLI = fileURLToPath(new URL('../traffic/cli.js', import.meta.url));
export const CLIENT_COUNTERS = ['MPTcpExtMPCapableSYNTX', 'MPTcpExtMPCapableSYNACKRX', 'MPTcpExtMPJoinSynTx', 'MPTcpExtMPJoinSynAckRx', 'MPTcpExtMPRstRx', 'TcpAttemptFails'];
export const SERVER_COUNTERS = ['MPTcpExtMPCapableSYNRX', 'MPTcpExtMPJoinSynRx', 'MPTcpExtMPJoinAckRx', 'MPTcpExtMPJoinNoTokenFound', 'MPTcpExtMPRstTx', 'MPTcpExtDSSNotMatching', 'TcpOutRsts'];

// ---------- small statistics ----------

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const k = v.length >> 1;
  return v.length % 2 ? v[k] : (v[k - 1] + v[k]) / 2;
}
export const finite = (xs: Array<number | null>): number[] => xs.filter((x): x is number => x !== null && Number.isFinite(x));
export const round = (x: number, d = 3) => (Number.isFinite(x) ? Number(x.toFixed(d)) : x);

/** "10M" -> 10 MiB, like the traffic client's --bytes (K/M/G are powers of 1024). */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)$/.exec(s.trim());
  if (!m) throw new Error(`bad transfer size "${s}" (e.g. 500K, 10M, 1G)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Math.round(Number(m[1]) * mult);
}

// ---------- choosing the client addresses: ask the engine ----------

function engineConfig(servers: string[], mptcpAware: boolean) {
  return {
    vips: [{ address: `${VIP}:${PORT}`, backends: servers.map((address) => ({ address })) }],
    // hash-ip-pair in both balancer modes: the unaware one follows the hash, the aware one must override it for joins.
    policy: 'hash-ip-pair' as const,
    mptcpAware,
    hashSeed: ENGINE_DEFAULTS.hashSeed,
    tables: { maxFlows: 65536, maxConnections: 32768 },
  };
}

/**
 * Picks client addresses 198.18.1.x (initial subflow) and 198.18.2.y (join) whose subflows the unaware
 * balancer hashes to different servers, by feeding crafted SYNs to an engine with the balancer's config.
 */
export function pickClientAddrs(servers: string[]): { addrs: [string, string]; backends: [string, string] } {
  const engine = new Engine(validateEngineConfig(engineConfig(servers, false)));
  let sport = 40000;
  const where = (src: string, join: boolean): string => {
    const p = buildTcpPacket({ src, sport: sport++, dst: VIP, dport: PORT, flags: TCP_SYN, options: [join ? joinSyn(0x12345678) : capSyn(1)] });
    engine.process(p, 0, p.length, 0);
    if (engine.lastBackend < 0) throw new Error(`the engine sent no backend for a SYN from ${src}`);
    return engine.services.backendId(engine.lastBackend);
  };
  // .1 and .254 are the balancer's side of each link; a bounded search.
  for (let x = 2; x < 254; x++) {
    const a = `198.18.1.${x}`;
    const ba = where(a, false);
    for (let y = 2; y < 40; y++) {
      const b = `198.18.2.${y}`;
      const bb = where(b, true);
      if (bb !== ba) return { addrs: [a, b], backends: [ba, bb] };
    }
  }
  throw new Error('no pair of client addresses hashes to two different servers (are there at least 2 servers?)');
}

// ---------- child processes (all inside the testbed's namespaces; killed by PID) ----------

const children = new Set<ChildProcess>();
let exitHook = false;
function track(c: ChildProcess): ChildProcess {
  children.add(c);
  c.once('exit', () => children.delete(c));
  if (!exitHook) {
    exitHook = true;
    // Last resort; the testbed's own hooks also kill whatever runs in its namespaces.
    process.on('exit', () => {
      for (const k of children) if (k.pid && k.exitCode === null && k.signalCode === null) k.kill('SIGKILL');
    });
  }
  return c;
}

export async function stopChild(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const done = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 3000);
  await done;
  clearTimeout(t);
}

/** Starts the traffic sink in a server namespace and waits for its "listening" line. */
export function startTrafficServer(ns: string): Promise<ChildProcess> {
  const c = track(spawn('ip', ['netns', 'exec', ns, process.execPath, TRAFFIC_CLI, 'server', '--port', String(PORT)], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let err = '';
  c.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const rl = readline.createInterface({ input: c.stdout! });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { c.kill('SIGKILL'); reject(new Error(`traffic server in ${ns} did not start within 10 s: ${err.trim()}`)); }, 10000);
    c.once('exit', (code) => { clearTimeout(t); reject(new Error(`traffic server in ${ns} exited (${code}): ${err.trim()}`)); });
    rl.once('line', (line) => {
      clearTimeout(t);
      if (line.includes('"listening"')) resolve(c);
      else reject(new Error(`traffic server in ${ns} said: ${line}`));
    });
  });
}

/** Runs the traffic client in the client namespace; a failed transfer still yields a report when possible. */
export function runClient(tb: TestbedHandle, args: string[], timeoutMs: number): Promise<ClientReport> {
  return new Promise((resolve, reject) => {
    const c = execFile(
      'ip',
      ['netns', 'exec', tb.namespaces.client, process.execPath, TRAFFIC_CLI, 'client', '--host', VIP, '--port', String(PORT), '--json', '--timeout-ms', String(timeoutMs), ...args],
      { timeout: timeoutMs + 10000, killSignal: 'SIGKILL', encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        try {
          resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as ClientReport);
        } catch {
          reject(new Error(`traffic client produced no report (${err?.message ?? 'no error'}): ${stderr.trim()}`));
        }
      },
    );
    track(c);
  });
}

export function toSample(r: ClientReport, bytes: number, label?: string): TransferSample {
  const c = r.connections[0];
  return {
    bytes,
    label,
    ok: r.ok,
    goodputMbps: round(r.goodputMbps),
    completionSeconds: r.ok && c?.completionMs !== undefined ? round(c.completionMs / 1000) : null,
    subflowsClient: c?.subflowsTotalMax ?? 0,
    subflowsServer: c?.server?.subflowsTotalMax ?? null,
    serverToken: c?.server?.tokenHex,
    error: c?.error,
  };
}

/**
 * Goodput over time from the cumulative bytes-acked series, over a sliding window: MPTCP's data-level
 * acknowledgements arrive in bursts (both subflows, reordering), so 100 ms deltas alone look spiky.
 */
export function rateSeries(series: Array<{ tMs: number; bytesAcked: number }>, windowMs = 500): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let j = 0;
  for (let i = 0; i < series.length; i++) {
    while (j < i && series[i].tMs - series[j + 1].tMs >= windowMs) j++;
    const dt = series[i].tMs - series[j].tMs;
    out.push([round(series[i].tMs / 1000), dt > 0 ? round(((series[i].bytesAcked - series[j].bytesAcked) * 8) / (dt * 1000), 2) : 0]);
  }
  return out;
}

export function snapshotCounters(tb: TestbedHandle) {
  return { client: nstatIn(tb.namespaces.client, CLIENT_COUNTERS), servers: tb.namespaces.servers.map((ns) => nstatIn(ns, SERVER_COUNTERS)) };
}
export function delta(a: Record<string, number>, b: Record<string, number>, names: string[]): Record<string, number> {
  return Object.fromEntries(names.map((k) => [k, (b[k] ?? 0) - (a[k] ?? 0)]));
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------- the experiment ----------

export function validateDemoOptions(o: DemoOptions): void {
  const bad = (m: string) => { throw Object.assign(new Error(m), { code: 'EDEMO_OPTION' }); };
  if (!Number.isInteger(o.runs) || o.runs < 1 || o.runs > 20) bad(`runs must be an integer 1-20, got ${o.runs}`);
  if (!(o.seconds >= 1 && o.seconds <= 60)) bad(`seconds must be 1-60, got ${o.seconds}`);
  if (!(o.rateMbit >= 1 && o.rateMbit <= 1000)) bad(`rate must be 1-1000 Mbit/s, got ${o.rateMbit}`);
  if (!Number.isInteger(o.servers) || o.servers < 2 || o.servers > 16) bad(`servers must be an integer 2-16 (the unaware case needs two), got ${o.servers}`);
  if (o.sizes.length < 1 || o.sizes.length > 8) bad(`give 1-8 transfer sizes, got ${o.sizes.length}`);
  for (const s of o.sizes) if (!(s.bytes >= 1024 && s.bytes <= 1024 ** 3)) bad(`transfer size ${s.label} must be 1K-1G`);
  const nb = o.balancers ?? 1;
  if (!Number.isInteger(nb) || nb < 1 || nb > 8) bad(`balancers must be an integer 1-8, got ${nb}`);
  if (o.connections !== undefined) {
    if (nb < 2) bad('connections is for the cluster experiment (--balancers 2 or more): the one-balancer demo runs one connection, as in the poster');
    if (!Number.isInteger(o.connections) || o.connections < 1 || o.connections > 32) bad(`connections must be an integer 1-32, got ${o.connections}`);
  }
}

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  validateDemoOptions(o);
  if ((o.balancers ?? 1) > 1) throw Object.assign(new Error('runDemo is the one-balancer experiment: use runClusterDemo (src/demo/cluster.ts) for --balancers 2+'), { code: 'EDEMO_OPTION' });
  demoPreflight();
  const log = o.log ?? (() => undefined);
  const t0 = Date.now();
  const startedAt = new Date().toISOString();
  const sizes = [...o.sizes].sort((a, b) => a.bytes - b.bytes);
  // The testbed numbers servers 198.18.(11+i).2; checked against the handle below.
  const serverAddrs = Array.from({ length: o.servers }, (_, i) => `198.18.${11 + i}.2`);
  const pick = pickClientAddrs(serverAddrs);
  log(`client addresses ${pick.addrs[0]} and ${pick.addrs[1]}: hash-ip-pair sends them to ${pick.backends[0]} and ${pick.backends[1]}`);

  const tb = testbedUp({ mode: 'balancer', rateMbit: o.rateMbit, servers: o.servers, clientAddrs: pick.addrs, vips: [VIP] });
  log(`testbed ${tb.runId} up: ${o.servers} servers, two ${o.rateMbit} Mbit/s client links`);
  const servers: ChildProcess[] = [];
  let balancer: BalancerProcess | undefined;
  let vipOnServer = false;
  const samples: RunSample[] = [];
  const srv1 = tb.servers[0];
  const addVipRoute = () => {
    ipn(srv1.ns, ['addr', 'add', `${VIP}/32`, 'dev', 'lo']);
    ipn(tb.namespaces.balancer, ['route', 'add', `${VIP}/32`, 'via', srv1.addr, 'dev', srv1.link.peerDev]);
    vipOnServer = true;
  };
  const delVipRoute = () => {
    if (!vipOnServer) return;
    vipOnServer = false;
    ipn(tb.namespaces.balancer, ['route', 'del', `${VIP}/32`]);
    ipn(srv1.ns, ['addr', 'del', `${VIP}/32`, 'dev', 'lo']);
  };
  try {
    const actual = tb.servers.map((s) => s.addr);
    if (actual.join() !== serverAddrs.join()) throw new Error(`testbed server addresses ${actual.join(', ')} differ from the expected ${serverAddrs.join(', ')}`);
    // Cached TCP metrics (ssthresh per destination) would carry one mode's losses into the next mode's start.
    for (const ns of [tb.namespaces.client, ...tb.namespaces.servers]) sysctlIn(ns, 'net.ipv4.tcp_no_metrics_save', '1');
    for (const s of tb.servers) servers.push(await startTrafficServer(s.ns));

    const bytesTime = (bytes: number) => Math.ceil(((bytes * 8) / (o.rateMbit * 1e6)) * 1000);
    for (let run = 0; run < o.runs; run++) {
      // Rotate the order too, so no mode always goes first after a quiet moment.
      const order = DEMO_MODES.map((_, i) => DEMO_MODES[(i + run) % DEMO_MODES.length]);
      for (const [position, mode] of order.entries()) {
        if (mode === 'noBalancer') addVipRoute();
        else balancer = await startBalancerProcess(tb, { port: PORT, engine: engineConfig(serverAddrs, mode === 'aware') });
        try {
          const before = snapshotCounters(tb);
          // Bounded: the client gives up after its timeout; a single path takes bytes*8/rate.
          const timedR = await runClient(tb, ['--seconds', String(o.seconds)], o.seconds * 1000 + 20000);
          const sized: TransferSample[] = [];
          for (const s of sizes) sized.push(toSample(await runClient(tb, ['--bytes', String(s.bytes)], bytesTime(s.bytes) * 4 + 15000), s.bytes, s.label));
          const after = snapshotCounters(tb);
          const nstat = {
            client: delta(before.client, after.client, CLIENT_COUNTERS),
            servers: after.servers.map((a, i) => delta(before.servers[i], a, SERVER_COUNTERS)),
          };
          let engine: Record<string, number> | undefined;
          let loop: Record<string, unknown> | undefined;
          if (balancer) {
            const st = (await balancer.request('stats')) as { loop?: Record<string, unknown>; engine?: { counters?: Record<string, number> } };
            engine = st.engine?.counters;
            loop = st.loop;
          }
          const timed = { ...toSample(timedR, timedR.totalBytes), durationSeconds: round(timedR.durationMs / 1000) };
          const sample: RunSample = {
            run,
            mode,
            position,
            timed,
            ackedSeries: timedR.series,
            rateSeries: rateSeries(timedR.series),
            sized,
            joinsReset: nstat.servers.reduce((a, s) => a + s.MPTcpExtMPJoinNoTokenFound, 0),
            nstat,
            engine,
            loop,
          };
          samples.push(sample);
          const last = sized[sized.length - 1];
          const errs = [timed, ...sized].filter((x) => x.error).map((x) => `${x.label ?? 'timed'}: ${x.error}`);
          log(
            `run ${run + 1}/${o.runs} ${mode.padEnd(10)} ${timed.goodputMbps.toFixed(1).padStart(6)} Mbit/s, subflows ${timed.subflowsClient}, ` +
              `${last.label} in ${last.completionSeconds?.toFixed(2) ?? 'FAILED'} s, joins reset ${sample.joinsReset}` +
              `${engine ? `, joins steered by token ${engine.joins_steered_by_token ?? 0}` : ''}${errs.length ? `; errors: ${errs.join('; ')}` : ''}`,
          );
        } finally {
          if (mode === 'noBalancer') delVipRoute();
          if (balancer) {
            await balancer.stop();
            balancer = undefined;
          }
        }
        await sleep(200);
      }
    }
  } finally {
    await balancer?.stop().catch(() => undefined);
    await Promise.all(servers.map(stopChild));
    testbedDown(tb);
    log(`testbed ${tb.runId} removed`);
  }
  return summarize(o, sizes, pick, tb.runId, startedAt, (Date.now() - t0) / 1000, samples);
}

function summarize(
  o: DemoOptions,
  sizes: Array<{ label: string; bytes: number }>,
  pick: { addrs: [string, string]; backends: [string, string] },
  runId: string,
  startedAt: string,
  durationSeconds: number,
  samples: RunSample[],
): DemoResult {
  const of = (m: DemoMode) => samples.filter((s) => s.mode === m).sort((a, b) => a.run - b.run);
  const modes = {} as Record<DemoMode, ModeSummary>;
  const completionBySize = {} as Record<DemoMode, Record<string, Array<number | null>>>;
  const joins = {} as DemoResult['joins'];
  for (const m of DEMO_MODES) {
    const ss = of(m);
    const sum = (f: (s: RunSample) => number) => ss.reduce((a, s) => a + f(s), 0);
    const srv = (k: string) => (s: RunSample) => s.nstat.servers.reduce((a, x) => a + (x[k] ?? 0), 0);
    joins[m] = {
      clientSynTx: sum((s) => s.nstat.client.MPTcpExtMPJoinSynTx ?? 0),
      clientSynAckRx: sum((s) => s.nstat.client.MPTcpExtMPJoinSynAckRx ?? 0),
      serverSynRx: sum(srv('MPTcpExtMPJoinSynRx')),
      serverNoTokenFound: sum(srv('MPTcpExtMPJoinNoTokenFound')),
      serverOutRsts: sum(srv('TcpOutRsts')),
      serverDssNotMatching: sum(srv('MPTcpExtDSSNotMatching')),
    };
    modes[m] = {
      goodputMbps: ss.map((s) => s.timed.goodputMbps),
      completionSeconds: ss.map((s) => s.sized[s.sized.length - 1]?.completionSeconds ?? null),
      subflowsEstablished: ss.length ? Math.min(...ss.map((s) => s.timed.subflowsClient)) : 0,
      joinsReset: ss.reduce((a, s) => a + s.joinsReset, 0),
    };
    completionBySize[m] = Object.fromEntries(sizes.map((z, i) => [z.label, ss.map((s) => s.sized[i]?.completionSeconds ?? null)]));
  }
  const byRun = (m: DemoMode) => new Map(of(m).map((s) => [s.run, s.timed.goodputMbps]));
  const aw = byRun('aware'), un = byRun('unaware'), nb = byRun('noBalancer');
  const awareOverUnaware: number[] = [], awareOverNoBalancer: number[] = [];
  for (let r = 0; r < o.runs; r++) {
    if (aw.has(r) && un.has(r)) awareOverUnaware.push(round(aw.get(r)! / un.get(r)!));
    if (aw.has(r) && nb.has(r)) awareOverNoBalancer.push(round(aw.get(r)! / nb.get(r)!));
  }
  const mU = round(median(awareOverUnaware)), mN = round(median(awareOverNoBalancer));
  const pass = { awareOverNoBalancer: mN >= TARGETS.awareOverNoBalancer, awareOverUnaware: mU >= TARGETS.awareOverUnaware, all: false };
  pass.all = pass.awareOverNoBalancer && pass.awareOverUnaware;
  return {
    rateMbps: o.rateMbit,
    seconds: o.seconds,
    modes,
    runs: o.runs,
    servers: o.servers,
    sizes,
    completionBySize,
    joins,
    ratios: { awareOverUnaware, awareOverNoBalancer, medianAwareOverUnaware: mU, medianAwareOverNoBalancer: mN },
    targets: TARGETS,
    pass,
    setup: { vip: VIP, port: PORT, clientAddrs: pick.addrs, hashedBackends: pick.backends, policy: 'hash-ip-pair', hashSeed: ENGINE_DEFAULTS.hashSeed, testbedRunId: runId },
    startedAt,
    durationSeconds: round(durationSeconds, 1),
    samples,
  };
}

// ---------- output ----------

/** The `--json` document: the agreed shape, plus completionBySize, ratios and pass at the top level. */
export function demoJson(r: DemoResult): unknown {
  return {
    rateMbps: r.rateMbps,
    seconds: r.seconds,
    modes: Object.fromEntries(DEMO_MODES.map((m) => [m, {
      goodputMbps: r.modes[m].goodputMbps,
      completionSeconds: r.modes[m].completionSeconds,
      subflowsEstablished: r.modes[m].subflowsEstablished,
      joinsReset: r.modes[m].joinsReset,
    }])),
    sizes: r.sizes.map((s) => s.label),
    completionBySize: r.completionBySize,
    ratios: r.ratios,
    pass: r.pass,
  };
}

/** Every mode of either experiment (one balancer: DemoMode; a cluster: src/demo/cluster.ts's ClusterMode). */
export type AnyDemoMode = DemoMode | 'noStore' | 'store';
export const MODE_LABEL: Record<AnyDemoMode, string> = {
  noBalancer: 'no balancer', unaware: 'MPTCP-unaware LB', aware: 'mplb (MPTCP-aware)',
  noStore: 'mplb x N, no token store', store: 'mplb x N, shared token store',
};
const LABEL = MODE_LABEL;
const COLOR: Record<AnyDemoMode, string> = { noBalancer: '#555555', unaware: '#d62728', aware: '#1f77b4', noStore: '#d62728', store: '#1f77b4' };

/** Rows of cells as aligned text lines, a rule under the first (header) row. */
export function formatTable(rows: string[][]): string[] {
  const w = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  const lines = rows.map((row) => row.map((cell, i) => cell.padEnd(w[i])).join('  ').trimEnd());
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  return lines;
}

export function formatDemo(r: DemoResult): string {
  const largest = r.sizes[r.sizes.length - 1]?.label ?? '?';
  const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  const rows = [['mode', 'goodput Mbit/s median (min-max)', `${largest} completion s (median)`, 'subflows', 'joins reset', 'joins sent/answered']];
  for (const m of DEMO_MODES) {
    const g = r.modes[m].goodputMbps, c = finite(r.modes[m].completionSeconds);
    rows.push([m, `${fmt(median(g))} (${fmt(Math.min(...g))}-${fmt(Math.max(...g))})`, c.length < r.modes[m].completionSeconds.length ? `${fmt(median(c), 2)} (${r.modes[m].completionSeconds.length - c.length} failed)` : fmt(median(c), 2), String(r.modes[m].subflowsEstablished), String(r.modes[m].joinsReset), `${r.joins[m].clientSynTx}/${r.joins[m].clientSynAckRx}`]);
  }
  const lines = formatTable(rows);
  const pf = (ok: boolean) => (ok ? 'PASS' : 'MISS');
  lines.push('');
  lines.push(`${r.runs} run(s) x ${r.seconds} s at ${r.rateMbps} Mbit/s per link, ${r.servers} servers, sizes ${r.sizes.map((s) => s.label).join(',')}; client ${r.setup.clientAddrs.join(' + ')} hashed to ${r.setup.hashedBackends.join(' / ')} (hash-ip-pair)`);
  lines.push(`aware/unaware    = ${fmt(r.ratios.medianAwareOverUnaware, 2)} median of per-run ratios [${r.ratios.awareOverUnaware.map((x) => x.toFixed(2)).join(', ')}] (target >= ${TARGETS.awareOverUnaware})`);
  lines.push(`aware/noBalancer = ${fmt(r.ratios.medianAwareOverNoBalancer, 2)} median of per-run ratios [${r.ratios.awareOverNoBalancer.map((x) => x.toFixed(2)).join(', ')}] (target >= ${TARGETS.awareOverNoBalancer})`);
  lines.push(`${pf(r.pass.all)}: aware >= ${TARGETS.awareOverNoBalancer * 100}% of noBalancer ${pf(r.pass.awareOverNoBalancer)}, aware/unaware >= ${TARGETS.awareOverUnaware} ${pf(r.pass.awareOverUnaware)}`);
  return lines.join('\n');
}

/** Median run of a mode by goodput (the one drawn bold). */
function medianRun<S extends { timed: { goodputMbps: number } }>(ss: S[]): S | undefined {
  const sorted = [...ss].sort((a, b) => a.timed.goodputMbps - b.timed.goodputMbps);
  return sorted[(sorted.length - 1) >> 1];
}

/** What the two plots need from either experiment's result. */
export interface PlotInput<M extends AnyDemoMode> {
  rateMbps: number;
  seconds: number;
  runs: number;
  sizes: Array<{ label: string; bytes: number }>;
  samples: Array<{ mode: M; run: number; timed: { goodputMbps: number }; rateSeries: Array<[number, number]> }>;
  completionBySize: Record<M, Record<string, Array<number | null>>>;
}

export function goodputSvg(r: DemoResult): string {
  return goodputPlot(r, DEMO_MODES, 'Goodput over time: one MPTCP connection, two client links');
}

export function goodputPlot<M extends AnyDemoMode>(r: PlotInput<M>, modes: readonly M[], title: string, labels: Record<AnyDemoMode, string> = LABEL): string {
  const series: PlotSeries[] = [];
  for (const m of modes) {
    const ss = r.samples.filter((s) => s.mode === m);
    const med = medianRun(ss);
    for (const s of ss) if (s !== med) series.push({ name: `${labels[m]} run ${s.run + 1}`, color: COLOR[m], points: s.rateSeries, width: 1, opacity: 0.3, legend: false });
    if (med) series.push({ name: `${labels[m]} (median ${median(ss.map((s) => s.timed.goodputMbps)).toFixed(1)})`, color: COLOR[m], points: med.rateSeries, width: 2.2 });
  }
  return lineChart({
    title,
    subtitle: `${r.rateMbps} Mbit/s per link, ${r.seconds} s transfers, ${r.runs} run(s): median run bold, other runs faint`,
    xLabel: 'time since start (s)',
    yLabel: 'goodput (Mbit/s, 500 ms window)',
    series,
    hLines: [{ y: r.rateMbps, label: 'one link' }, { y: 2 * r.rateMbps, label: 'two links' }],
    xMin: 0,
  });
}

export function completionSvg(r: DemoResult): string {
  return completionPlot(r, DEMO_MODES, 'Time to complete a transfer');
}

export function completionPlot<M extends AnyDemoMode>(r: PlotInput<M>, modes: readonly M[], title: string, labels: Record<AnyDemoMode, string> = LABEL, note = ''): string {
  const mib = (b: number) => b / 1024 ** 2;
  const series: PlotSeries[] = modes.map((m) => {
    const rows = r.sizes.map((z) => ({ x: mib(z.bytes), v: finite(r.completionBySize[m][z.label] ?? []) })).filter((p) => p.v.length > 0);
    return {
      name: labels[m],
      color: COLOR[m],
      points: rows.map((p) => [p.x, median(p.v)] as [number, number]),
      errorBars: r.runs > 1 ? rows.map((p) => [p.x, Math.min(...p.v), Math.max(...p.v)] as [number, number, number]) : undefined,
      markers: true,
    };
  });
  return lineChart({
    title,
    subtitle: `${r.rateMbps} Mbit/s per link, median of ${r.runs} run(s)${r.runs > 1 ? ', bars: min-max' : ''}${note}`,
    xLabel: 'transfer size (MiB)',
    yLabel: 'completion time (s)',
    series,
    xMin: 0,
  });
}

/** Writes results.json, goodput-over-time.svg and completion-time.svg into dir; returns the paths. */
export function writeDemoOutputs(r: DemoResult, dir: string): string[] {
  return writeOutputFiles(dir, [
    ['results.json', `${JSON.stringify(r, null, 2)}\n`],
    ['goodput-over-time.svg', goodputSvg(r)],
    ['completion-time.svg', completionSvg(r)],
  ]);
}

/** Writes [name, text] files into dir (made if missing); returns the paths. */
export function writeOutputFiles(dir: string, files: Array<[string, string]>): string[] {
  fs.mkdirSync(dir, { recursive: true });
  return files.map(([name, text]) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text);
    return p;
  });
}
