// `mplb demo --balancers N`: the poster's experiment (a client with two rate-limited links, MPTCP transfers) through
// N mplb balancers behind the cluster testbed's ECMP router (src/testbed/testbed.ts, balancers >= 2), in three modes
// alternated run by run: (noBalancer) plain routing to the VIP on server 1, the same router and balancer namespaces
// forwarding in the kernel; (noStore) N mplb balancers that do not share their tokens, so a join the router sends to
// another balancer than its connection's first subflow is reset there; (store) the same balancers sharing tokens
// through the testbed's redis-server, so such a join is held, looked up and steered.
//
// The router hashes every subflow on its own: whether a connection's join reaches the other balancer ("crosses") is
// random, about 1 in N per connection. (In this testbed the router's multipath hash follows the flow hash the client's
// socket put on the packet, not the 5-tuple: `ip route get` with the ports predicts the balancer of about half of the
// first subflows. TCP picks a new flow hash after a retransmission timeout, so a subflow can also move to the other
// balancer mid-connection: with the store its entry is found there, without it a steered join is then lost.) Each run
// therefore sends, before the timed transfer, a probe of 16 short concurrent connections (1 s each: long enough for the join to be made), makes the
// timed transfer a pool of concurrent connections (default 4; more subflows than that underfill the 20 Mbit/s links
// of --quick), and records for every connection which balancer saw its first subflow and which one its join (from
// the balancers' connection tables), and whether it crossed. With 16 + 4 + the sized ones per run, a run in which no
// join crosses has a probability of about 2^-23 with two balancers.
import type { ChildProcess } from 'node:child_process';
import { HOLD_WAIT_BUCKETS_MS } from '../dataplane/store-sync.js';
import { ENGINE_DEFAULTS } from '../engine/config.js';
import { startBalancerCluster, type BalancerProcess } from '../testbed/balancer-process.js';
import { ipn, sysctlIn } from '../testbed/netns.js';
import { findRedisServer } from '../testbed/redis.js';
import { testbedDown, testbedUp } from '../testbed/testbed.js';
import type { ClientReport } from '../traffic/client.js';
import {
  CLIENT_COUNTERS, MODE_LABEL, PORT, SERVER_COUNTERS, VIP, completionPlot, delta, finite, formatTable, goodputPlot, median, rateSeries, round,
  runClient, sleep, snapshotCounters, startTrafficServer, stopChild, toSample, validateDemoOptions, writeOutputFiles,
  type AnyDemoMode, type DemoOptions, type TransferSample,
} from './demo.js';
import { DemoPreflightError, demoPreflight } from './preflight.js';

export type ClusterMode = 'noBalancer' | 'noStore' | 'store';
export const CLUSTER_MODES: readonly ClusterMode[] = ['noBalancer', 'noStore', 'store'];

/** With the store the balancers must do what one aware balancer does: match no balancer, reset no join. */
export const CLUSTER_TARGETS = { storeOverNoBalancer: 0.9, storeJoinsReset: 0 };

/** Where one MPTCP connection's subflows went (timed pool or a sized transfer). */
export interface ClusterConnection {
  /** 'probe' (the short connections), 'timed' (the pool) or the size label of a sized transfer. */
  transfer: string;
  index: number;
  /** Client port of the first subflow. */
  localPort: number | null;
  /** The server's token (hex), from the server's trailer. */
  token: string | null;
  ok: boolean;
  subflowsClient: number;
  goodputMbps: number | null;
  completionSeconds: number | null;
  /** Balancer (index) whose table holds the first subflow: it saw the MP_CAPABLE SYN. Null without mplb. */
  firstBalancer: number | null;
  /** Balancer whose table holds the join's subflow; null when none does (the join was reset, or never sent). */
  joinBalancer: number | null;
  /** The join did not reach the first subflow's balancer. Null without mplb (plain routing cannot tell). */
  crossed: boolean | null;
  error?: string;
}

export interface ClusterRunSample {
  run: number;
  mode: ClusterMode;
  position: number;
  /** The timed pool as a whole: aggregate goodput, fewest subflows of its connections, first to last byte. */
  timed: TransferSample & { durationSeconds: number; connections: number };
  ackedSeries: Array<{ tMs: number; bytesAcked: number }>;
  rateSeries: Array<[number, number]>;
  /** One connection per size (the poster's completion-time curve). */
  sized: Array<TransferSample & { crossed: boolean | null }>;
  /** Every connection of this sample: the probe, the timed pool, then the sized ones. */
  connections: ClusterConnection[];
  /** Joins reset: by the servers (MPTcpExtMPJoinNoTokenFound) plus by the balancers (joins_unknown_reset). */
  joinsReset: number;
  joinsResetByServers: number;
  joinsResetByBalancers: number;
  /** Connections whose join crossed (null without mplb). */
  joinsCrossed: number | null;
  /** Joins steered with the store's answer (store mode; null otherwise). */
  joinsViaStore: number | null;
  nstat: { client: Record<string, number>; servers: Array<Record<string, number>> };
  /** Per balancer: engine counters and store counters over this sample (deltas). */
  balancers?: Array<{ engine: Record<string, number>; store?: Record<string, number> }>;
}

export interface ClusterModeSummary {
  /** Aggregate goodput of the timed pool, one per run. */
  goodputMbps: number[];
  /** Completion of the largest size, one per run (null: failed). */
  completionSeconds: Array<number | null>;
  /** Fewest subflows the client saw on any connection of the timed pools. */
  subflowsEstablished: number;
  /** Joins reset, by servers or balancers, summed over runs (probe, timed and sized transfers). */
  joinsReset: number;
  /** Timed-pool connections over all runs, and how many of them had both subflows. */
  connections: number;
  connectionsWithBothSubflows: number;
  /** Connections (probe, timed and sized) whose join reached another balancer than their first subflow; null without mplb. */
  joinsCrossed: number | null;
  /** Joins steered with the store's answer; null without the store. */
  joinsViaStore: number | null;
}

export interface HoldWaitSummary {
  /** Bucket upper bounds (ms); the last count is everything above the last bound. */
  boundsMs: readonly number[];
  counts: number[];
  total: number;
  totalMs: number;
  /** Upper bound of the bucket holding the median / 99th percentile hold (Infinity: above the last bound). */
  p50LeMs: number;
  p99LeMs: number;
  meanMs: number;
}

export interface ClusterDemoResult {
  balancers: number;
  rateMbps: number;
  seconds: number;
  /** Concurrent connections of each timed pool. */
  connections: number;
  /** Short connections (1 s each, concurrent) of each run's probe. */
  probe: number;
  runs: number;
  servers: number;
  sizes: Array<{ label: string; bytes: number }>;
  modes: Record<ClusterMode, ClusterModeSummary>;
  completionBySize: Record<ClusterMode, Record<string, Array<number | null>>>;
  joins: Record<ClusterMode, { clientSynTx: number; clientSynAckRx: number; serverSynRx: number; serverNoTokenFound: number; balancerResets: number; serverDssNotMatching: number }>;
  /** Per-connection goodput of the timed pools, split by whether the join crossed (median, Mbit/s; NaN: none). */
  perConnection: Record<ClusterMode, { crossedMbps: number; sameMbps: number; crossed: number; same: number }>;
  /** How long the held packets (joins, moved subflows) waited for the store in store mode, both balancers, all runs. */
  holdWait: HoldWaitSummary;
  /** Store counters summed over balancers and runs (store mode). */
  store: Record<string, number>;
  ratios: { storeOverNoBalancer: number[]; noStoreOverNoBalancer: number[]; medianStoreOverNoBalancer: number; medianNoStoreOverNoBalancer: number };
  targets: typeof CLUSTER_TARGETS;
  pass: { storeOverNoBalancer: boolean; storeJoinsReset: boolean; all: boolean };
  setup: {
    vip: string;
    port: number;
    clientAddrs: [string, string];
    policy: 'maglev';
    unknownTokenAnswer: 'reset';
    hashSeed: number;
    testbedRunId: string;
    keyPrefix: string;
  };
  startedAt: string;
  durationSeconds: number;
  samples: ClusterRunSample[];
}

export interface EngineConnection { token: string; backend: string; subflows: string[] }
interface BalancerStats { loop: { store?: Record<string, number> }; engine: { counters: Record<string, number> } }

const ENGINE_TABLES = { maxFlows: 65536, maxConnections: 32768 };
const PROBE_CONNECTIONS = 16;
/** Seconds of sending per probe connection: a transfer over before the client's path manager opens the join says nothing. */
const PROBE_SECONDS = 1;

/** Every connection in a balancer's table (pages of 1000, bounded). */
export async function connectionTable(lb: BalancerProcess): Promise<EngineConnection[]> {
  const all: EngineConnection[] = [];
  for (let off = 0, pages = 0; pages < 100; pages++) {
    const page = (await lb.request(`connections ${off}`)) as { total: number; connections: EngineConnection[] };
    all.push(...page.connections);
    off += page.connections.length;
    if (page.connections.length === 0 || off >= page.total) break;
  }
  return all;
}

/**
 * Which balancer saw a connection's first subflow (its client port on the client's first address) and which one its
 * join (a subflow from the client's second address), from the balancers' tables. A join no table holds crossed when
 * the client has one subflow (it was reset by a balancer that did not know its token, or never sent: the client's
 * MPJoinSynTx count tells), and is unknown when the client has two (its entry is gone already).
 */
export function locateConnection(tables: EngineConnection[][], token: string | undefined, addrs: [string, string], localPort: number | undefined, subflowsClient: number): { firstBalancer: number | null; joinBalancer: number | null; crossed: boolean | null } {
  if (!token || localPort === undefined) return { firstBalancer: null, joinBalancer: null, crossed: null };
  let firstBalancer: number | null = null, joinBalancer: number | null = null;
  const first = `${addrs[0]}:${localPort}>`, join = `${addrs[1]}:`;
  for (const [i, list] of tables.entries()) {
    for (const c of list) {
      if (c.token !== token) continue;
      if (c.subflows.some((s) => s.startsWith(first))) firstBalancer = i;
      if (c.subflows.some((s) => s.startsWith(join))) joinBalancer = i;
    }
  }
  // A connection no balancer knows (expired, or the table was read too late) says nothing.
  if (firstBalancer === null) return { firstBalancer, joinBalancer, crossed: null };
  if (joinBalancer === null) return { firstBalancer, joinBalancer, crossed: subflowsClient < 2 ? true : null };
  return { firstBalancer, joinBalancer, crossed: joinBalancer !== firstBalancer };
}

/** Sums the hold-wait histograms (`hold_wait_le_*ms`, `hold_wait_gt_512ms`) of store counter records. */
export function holdWaitSummary(records: Array<Record<string, number> | undefined>): HoldWaitSummary {
  const counts = new Array<number>(HOLD_WAIT_BUCKETS_MS.length + 1).fill(0);
  let totalMs = 0;
  for (const r of records) {
    if (!r) continue;
    HOLD_WAIT_BUCKETS_MS.forEach((b, i) => { counts[i] += r[`hold_wait_le_${b}ms`] ?? 0; });
    counts[HOLD_WAIT_BUCKETS_MS.length] += r[`hold_wait_gt_${HOLD_WAIT_BUCKETS_MS[HOLD_WAIT_BUCKETS_MS.length - 1]}ms`] ?? 0;
    totalMs += r.hold_wait_ms_total ?? 0;
  }
  const total = counts.reduce((a, b) => a + b, 0);
  const pct = (p: number): number => {
    if (total === 0) return NaN;
    let acc = 0;
    for (let i = 0; i < counts.length; i++) {
      acc += counts[i];
      if (acc >= p * total) return i < HOLD_WAIT_BUCKETS_MS.length ? HOLD_WAIT_BUCKETS_MS[i] : Infinity;
    }
    return Infinity;
  };
  return { boundsMs: HOLD_WAIT_BUCKETS_MS, counts, total, totalMs: round(totalMs), p50LeMs: pct(0.5), p99LeMs: pct(0.99), meanMs: total ? round(totalMs / total) : NaN };
}

function engineConfig(servers: string[]) {
  return {
    vips: [{ address: `${VIP}:${PORT}`, backends: servers.map((address) => ({ address })) }],
    // The same on every balancer: Maglev then sends a first subflow to one server whichever balancer it reaches.
    policy: 'maglev' as const,
    hashSeed: ENGINE_DEFAULTS.hashSeed,
    // A join whose token is unknown (here, and in the store) is answered with a RST: a miss is visible, and a
    // crossing join without the store is reset as it would be by the server that does not know it.
    unknownTokenAnswer: 'reset' as const,
    tables: ENGINE_TABLES,
  };
}

const sumRec = (rs: Array<Record<string, number> | undefined>): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const r of rs) if (r) for (const [k, v] of Object.entries(r)) out[k] = (out[k] ?? 0) + v;
  return out;
};

export async function runClusterDemo(o: DemoOptions): Promise<ClusterDemoResult> {
  validateDemoOptions(o);
  const nb = o.balancers ?? 2;
  if (nb < 2) throw Object.assign(new Error('runClusterDemo needs balancers >= 2'), { code: 'EDEMO_OPTION' });
  demoPreflight();
  if (!findRedisServer()) throw new DemoPreflightError('"redis-server" was not found: install the Debian package redis-server (the balancers share their tokens through it)');
  const pool = o.connections ?? 4;
  const probe = PROBE_CONNECTIONS;
  const log = o.log ?? (() => undefined);
  const t0 = Date.now();
  const startedAt = new Date().toISOString();
  const sizes = [...o.sizes].sort((a, b) => a.bytes - b.bytes);

  const tb = testbedUp({ balancers: nb, servers: o.servers, rateMbit: o.rateMbit, vips: [VIP] });
  const serverAddrs = tb.servers.map((s) => s.addr);
  const addrs = tb.client.addrs;
  const keyPrefix = `mplb:${tb.runId}:`;
  log(`testbed ${tb.runId} up: ${nb} balancers behind an ECMP router, ${o.servers} servers, two ${o.rateMbit} Mbit/s client links, redis ${tb.redis!.host}:${tb.redis!.port}`);
  const servers: ChildProcess[] = [];
  let lbs: BalancerProcess[] = [];
  let routed = false;
  // startBalancerProcess adds an 'exit' listener per start that stop() leaves in place (src/testbed/balancer-process.ts):
  // 2 per mode and balancer over the runs would pass Node's warning threshold of 10.
  process.setMaxListeners(Math.max(process.getMaxListeners(), 10 + 2 * nb * o.runs + 4));
  const samples: ClusterRunSample[] = [];
  const srv1 = tb.servers[0];
  // No balancer: the VIP lives on server 1 and every balancer namespace just routes to it (the router's ECMP
  // route stays as it is, so both subflows still cross a balancer namespace, in the kernel).
  const addVipRoutes = () => {
    ipn(srv1.ns, ['addr', 'add', `${VIP}/32`, 'dev', 'lo']);
    routed = true;
    for (const b of tb.balancers) ipn(b.ns, ['route', 'add', `${VIP}/32`, 'via', srv1.addr, 'dev', b.serverLinks[0].dev]);
  };
  const delVipRoutes = () => {
    if (!routed) return;
    routed = false;
    // Each step on its own: a route that was never added (a failed addVipRoutes) must not keep the others in place.
    const errors: string[] = [];
    for (const step of [...tb.balancers.map((b) => () => ipn(b.ns, ['route', 'del', `${VIP}/32`])), () => ipn(srv1.ns, ['addr', 'del', `${VIP}/32`, 'dev', 'lo'])]) {
      try { step(); } catch (e) { errors.push((e as Error).message); }
    }
    if (errors.length) log(`removing the no-balancer routes: ${errors.join('; ')}`);
  };
  const stats = () => Promise.all(lbs.map(async (l) => (await l.request('stats')) as BalancerStats));
  const tables = () => Promise.all(lbs.map(connectionTable));
  const waitStoreUp = async (ms = 15000) => {
    for (const tw = Date.now(); Date.now() - tw < ms; await sleep(100)) {
      const s = await stats();
      if (s.every((x) => x.loop.store?.store_up === 1)) return;
    }
    throw new Error(`the balancers did not see the token store up within ${ms} ms`);
  };
  try {
    for (const ns of [tb.namespaces.client, ...tb.namespaces.servers]) sysctlIn(ns, 'net.ipv4.tcp_no_metrics_save', '1');
    for (const s of tb.servers) servers.push(await startTrafficServer(s.ns));
    const bytesTime = (bytes: number) => Math.ceil(((bytes * 8) / (o.rateMbit * 1e6)) * 1000);

    for (let run = 0; run < o.runs; run++) {
      const order = CLUSTER_MODES.map((_, i) => CLUSTER_MODES[(i + run) % CLUSTER_MODES.length]);
      for (const [position, mode] of order.entries()) {
        if (mode === 'noBalancer') addVipRoutes();
        else {
          const store = mode === 'store';
          lbs = await startBalancerCluster(tb, {
            port: PORT,
            engine: { ...engineConfig(serverAddrs), ...(store ? { tokenStore: { url: `redis://${tb.redis!.host}:${tb.redis!.port}`, keyPrefix } } : {}) },
            env: store ? { MPLB_TOKEN_STORE_PASSWORD: tb.redis!.password } : {},
          });
          if (store) await waitStoreUp();
        }
        try {
          const before = snapshotCounters(tb);
          const e0 = lbs.length ? await stats() : [];
          const conns: ClusterConnection[] = [];
          const place = async (r: ClientReport, transfer: string) => {
            const t = lbs.length ? await tables() : [];
            for (const c of r.connections) {
              const where = lbs.length ? locateConnection(t, c.server?.tokenHex, addrs, c.localPort, c.subflowsTotalMax) : { firstBalancer: null, joinBalancer: null, crossed: null };
              conns.push({
                transfer, index: c.index, localPort: c.localPort ?? null, token: c.server?.tokenHex ?? null,
                ok: !c.error && c.server !== undefined && c.server.bytes === c.bytesSent,
                subflowsClient: c.subflowsTotalMax, goodputMbps: c.goodputMbps !== undefined ? round(c.goodputMbps) : null,
                completionSeconds: c.completionMs !== undefined ? round(c.completionMs / 1000) : null, ...where, ...(c.error ? { error: c.error } : {}),
              });
            }
          };
          // The probe: many short connections, for the join accounting (which joins cross is up to the hash).
          await place(await runClient(tb, ['--seconds', String(PROBE_SECONDS), '--connections', String(probe)], 30000), 'probe');
          // Bounded: the client gives up after its timeout.
          const timedR = await runClient(tb, ['--seconds', String(o.seconds), '--connections', String(pool)], o.seconds * 1000 + 20000);
          await place(timedR, 'timed');
          const sized: ClusterRunSample['sized'] = [];
          for (const s of sizes) {
            const r = await runClient(tb, ['--bytes', String(s.bytes)], bytesTime(s.bytes) * 4 + 15000);
            await place(r, s.label);
            sized.push({ ...toSample(r, s.bytes, s.label), crossed: conns[conns.length - 1]?.transfer === s.label ? conns[conns.length - 1].crossed : null });
          }
          const after = snapshotCounters(tb);
          const nstat = {
            client: delta(before.client, after.client, CLIENT_COUNTERS),
            servers: after.servers.map((a, i) => delta(before.servers[i], a, SERVER_COUNTERS)),
          };
          let balancers: ClusterRunSample['balancers'];
          if (lbs.length) {
            const e1 = await stats();
            balancers = e1.map((x, i) => ({
              engine: delta(e0[i].engine.counters, x.engine.counters, Object.keys(x.engine.counters)),
              ...(x.loop.store ? { store: delta(e0[i].loop.store ?? {}, x.loop.store, Object.keys(x.loop.store)) } : {}),
            }));
          }
          const timedConns = timedR.connections;
          const timed = {
            bytes: timedR.totalBytes,
            ok: timedR.ok,
            goodputMbps: round(timedR.goodputMbps),
            completionSeconds: timedR.ok ? round(timedR.durationMs / 1000) : null,
            subflowsClient: timedConns.length ? Math.min(...timedConns.map((c) => c.subflowsTotalMax)) : 0,
            subflowsServer: timedConns.length && timedConns.every((c) => c.server) ? Math.min(...timedConns.map((c) => c.server!.subflowsTotalMax)) : null,
            durationSeconds: round(timedR.durationMs / 1000),
            connections: timedConns.length,
            ...(timedConns.some((c) => c.error) ? { error: timedConns.filter((c) => c.error).map((c) => `#${c.index}: ${c.error}`).join('; ') } : {}),
          };
          const byServers = nstat.servers.reduce((a, s) => a + s.MPTcpExtMPJoinNoTokenFound, 0);
          const byBalancers = balancers ? balancers.reduce((a, b) => a + (b.engine.joins_unknown_reset ?? 0), 0) : 0;
          const crossedList = conns.filter((c) => c.crossed === true);
          const sample: ClusterRunSample = {
            run, mode, position, timed, ackedSeries: timedR.series, rateSeries: rateSeries(timedR.series), sized, connections: conns,
            joinsReset: byServers + byBalancers, joinsResetByServers: byServers, joinsResetByBalancers: byBalancers,
            joinsCrossed: lbs.length ? crossedList.length : null,
            joinsViaStore: mode === 'store' && balancers ? balancers.reduce((a, b) => a + (b.store?.joins_found_in_store ?? 0), 0) : null,
            nstat,
            ...(balancers ? { balancers } : {}),
          };
          samples.push(sample);
          const last = sized[sized.length - 1];
          const two = timedConns.filter((c) => c.subflowsTotalMax >= 2).length;
          const where = lbs.length ? `, crossed ${crossedList.length}/${conns.length} [${crossedList.map((c) => (c.transfer === 'timed' ? `#${c.index}` : c.transfer)).join(' ')}]` : '';
          log(
            `run ${run + 1}/${o.runs} ${mode.padEnd(10)} ${timed.goodputMbps.toFixed(1).padStart(6)} Mbit/s (${timedConns.length} conns, ${two} with 2 subflows), ` +
              `${last?.label} in ${last?.completionSeconds?.toFixed(2) ?? 'FAILED'} s, joins reset ${sample.joinsReset}${where}` +
              `${sample.joinsViaStore !== null ? `, via store ${sample.joinsViaStore}` : ''}${timed.error ? `; errors: ${timed.error}` : ''}`,
          );
        } finally {
          if (mode === 'noBalancer') delVipRoutes();
          await Promise.all(lbs.map((l) => l.stop().catch(() => undefined)));
          lbs = [];
        }
        await sleep(200);
      }
    }
  } finally {
    await Promise.all(lbs.map((l) => l.stop().catch(() => undefined)));
    await Promise.all(servers.map(stopChild));
    testbedDown(tb);
    log(`testbed ${tb.runId} removed`);
  }
  return summarizeCluster(o, nb, pool, probe, sizes, addrs, tb.runId, keyPrefix, startedAt, (Date.now() - t0) / 1000, samples);
}

function summarizeCluster(
  o: DemoOptions, nb: number, pool: number, probe: number, sizes: Array<{ label: string; bytes: number }>, addrs: [string, string], runId: string, keyPrefix: string,
  startedAt: string, durationSeconds: number, samples: ClusterRunSample[],
): ClusterDemoResult {
  const of = (m: ClusterMode) => samples.filter((s) => s.mode === m).sort((a, b) => a.run - b.run);
  const modes = {} as ClusterDemoResult['modes'];
  const completionBySize = {} as ClusterDemoResult['completionBySize'];
  const joins = {} as ClusterDemoResult['joins'];
  const perConnection = {} as ClusterDemoResult['perConnection'];
  for (const m of CLUSTER_MODES) {
    const ss = of(m);
    const sum = (f: (s: ClusterRunSample) => number) => ss.reduce((a, s) => a + f(s), 0);
    const srv = (k: string) => (s: ClusterRunSample) => s.nstat.servers.reduce((a, x) => a + (x[k] ?? 0), 0);
    joins[m] = {
      clientSynTx: sum((s) => s.nstat.client.MPTcpExtMPJoinSynTx ?? 0),
      clientSynAckRx: sum((s) => s.nstat.client.MPTcpExtMPJoinSynAckRx ?? 0),
      serverSynRx: sum(srv('MPTcpExtMPJoinSynRx')),
      serverNoTokenFound: sum(srv('MPTcpExtMPJoinNoTokenFound')),
      balancerResets: sum((s) => s.joinsResetByBalancers),
      serverDssNotMatching: sum(srv('MPTcpExtDSSNotMatching')),
    };
    const timedConns = ss.flatMap((s) => s.connections.filter((c) => c.transfer === 'timed'));
    modes[m] = {
      goodputMbps: ss.map((s) => s.timed.goodputMbps),
      completionSeconds: ss.map((s) => s.sized[s.sized.length - 1]?.completionSeconds ?? null),
      subflowsEstablished: timedConns.length ? Math.min(...timedConns.map((c) => c.subflowsClient)) : 0,
      joinsReset: sum((s) => s.joinsReset),
      connections: timedConns.length,
      connectionsWithBothSubflows: timedConns.filter((c) => c.subflowsClient >= 2).length,
      joinsCrossed: m === 'noBalancer' ? null : sum((s) => s.joinsCrossed ?? 0),
      joinsViaStore: m === 'store' ? sum((s) => s.joinsViaStore ?? 0) : null,
    };
    const cr = timedConns.filter((c) => c.crossed === true).map((c) => c.goodputMbps ?? NaN);
    const same = timedConns.filter((c) => c.crossed === false).map((c) => c.goodputMbps ?? NaN);
    perConnection[m] = { crossedMbps: round(median(cr)), sameMbps: round(median(same)), crossed: cr.length, same: same.length };
    completionBySize[m] = Object.fromEntries(sizes.map((z, i) => [z.label, ss.map((s) => s.sized[i]?.completionSeconds ?? null)]));
  }
  const storeSamples = of('store');
  const holdWait = holdWaitSummary(storeSamples.flatMap((s) => (s.balancers ?? []).map((b) => b.store)));
  const store = sumRec(storeSamples.flatMap((s) => (s.balancers ?? []).map((b) => b.store)));
  const byRun = (m: ClusterMode) => new Map(of(m).map((s) => [s.run, s.timed.goodputMbps]));
  const st = byRun('store'), ns = byRun('noStore'), nbal = byRun('noBalancer');
  const storeOverNoBalancer: number[] = [], noStoreOverNoBalancer: number[] = [];
  for (let r = 0; r < o.runs; r++) {
    if (st.has(r) && nbal.has(r)) storeOverNoBalancer.push(round(st.get(r)! / nbal.get(r)!));
    if (ns.has(r) && nbal.has(r)) noStoreOverNoBalancer.push(round(ns.get(r)! / nbal.get(r)!));
  }
  const mS = round(median(storeOverNoBalancer)), mN = round(median(noStoreOverNoBalancer));
  const pass = { storeOverNoBalancer: mS >= CLUSTER_TARGETS.storeOverNoBalancer, storeJoinsReset: modes.store.joinsReset <= CLUSTER_TARGETS.storeJoinsReset, all: false };
  pass.all = pass.storeOverNoBalancer && pass.storeJoinsReset;
  return {
    balancers: nb, rateMbps: o.rateMbit, seconds: o.seconds, connections: pool, probe, runs: o.runs, servers: o.servers, sizes,
    modes, completionBySize, joins, perConnection, holdWait, store,
    ratios: { storeOverNoBalancer, noStoreOverNoBalancer, medianStoreOverNoBalancer: mS, medianNoStoreOverNoBalancer: mN },
    targets: CLUSTER_TARGETS, pass,
    setup: { vip: VIP, port: PORT, clientAddrs: addrs, policy: 'maglev', unknownTokenAnswer: 'reset', hashSeed: ENGINE_DEFAULTS.hashSeed, testbedRunId: runId, keyPrefix },
    startedAt, durationSeconds: round(durationSeconds, 1), samples,
  };
}

// ---------- output ----------

/** The `--json` document: the one-balancer shape per mode plus the cluster's fields. */
export function clusterDemoJson(r: ClusterDemoResult): unknown {
  return {
    rateMbps: r.rateMbps,
    seconds: r.seconds,
    balancers: r.balancers,
    connections: r.connections,
    probe: r.probe,
    modes: Object.fromEntries(CLUSTER_MODES.map((m) => [m, { ...r.modes[m] }])),
    perConnection: r.perConnection,
    holdWait: { p50LeMs: r.holdWait.p50LeMs, p99LeMs: r.holdWait.p99LeMs, meanMs: r.holdWait.meanMs, held: r.holdWait.total },
    sizes: r.sizes.map((s) => s.label),
    completionBySize: r.completionBySize,
    ratios: r.ratios,
    pass: r.pass,
  };
}

const labels = (n: number): Record<AnyDemoMode, string> => ({ ...MODE_LABEL, noStore: `${n} x mplb, no token store`, store: `${n} x mplb, shared token store` });

const ms = (x: number) => (x === Infinity ? '> 512' : Number.isFinite(x) ? String(x) : 'n/a');

export function formatClusterDemo(r: ClusterDemoResult): string {
  const largest = r.sizes[r.sizes.length - 1]?.label ?? '?';
  const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  const rows = [['mode', 'goodput Mbit/s median (min-max)', `${largest} completion s (median)`, 'subflows', 'conns w/ 2 subflows', 'joins crossed', 'joins reset', 'via store', 'joins sent/answered']];
  for (const m of CLUSTER_MODES) {
    const s = r.modes[m], g = s.goodputMbps, c = finite(s.completionSeconds);
    rows.push([
      m,
      `${fmt(median(g))} (${fmt(Math.min(...g))}-${fmt(Math.max(...g))})`,
      c.length < s.completionSeconds.length ? `${fmt(median(c), 2)} (${s.completionSeconds.length - c.length} failed)` : fmt(median(c), 2),
      String(s.subflowsEstablished),
      `${s.connectionsWithBothSubflows}/${s.connections}`,
      s.joinsCrossed === null ? 'n/a' : String(s.joinsCrossed),
      String(s.joinsReset),
      s.joinsViaStore === null ? '-' : String(s.joinsViaStore),
      `${r.joins[m].clientSynTx}/${r.joins[m].clientSynAckRx}`,
    ]);
  }
  const lines = formatTable(rows);
  const pf = (ok: boolean) => (ok ? 'PASS' : 'MISS');
  const pc = (m: ClusterMode) => `${m} ${fmt(r.perConnection[m].crossedMbps)} (${r.perConnection[m].crossed} crossed) vs ${fmt(r.perConnection[m].sameMbps)} (${r.perConnection[m].same} same balancer)`;
  const totalConns = CLUSTER_MODES.filter((m) => m !== 'noBalancer').reduce((a, m) => a + r.samples.filter((s) => s.mode === m).reduce((b, s) => b + s.connections.length, 0), 0);
  lines.push('');
  lines.push(`${r.runs} run(s) x ${r.seconds} s at ${r.rateMbps} Mbit/s per link, ${r.balancers} balancers behind an ECMP router, ${r.servers} servers, ` +
    `timed transfer = ${r.connections} concurrent MPTCP connections (goodput is their sum), sizes ${r.sizes.map((s) => s.label).join(',')} one connection each, ` +
    `and before them a probe of ${r.probe} concurrent 1 s connections per run`);
  lines.push(`Which joins cross is up to the router's per-subflow hash (random per connection): "joins crossed" counts the connections (probe, timed and sized) whose join reached another ` +
    `balancer than their first subflow, read from the balancers' tables (${totalConns} connections through mplb; per connection in results.json). "joins reset" counts the ` +
    `balancers' RSTs for unknown tokens and the servers' MPJoinNoTokenFound; it can exceed "crossed" when a connection could not be classified (its table entry gone, or it failed).`);
  lines.push(`per-connection goodput of the timed pools, Mbit/s median, join crossed vs not: ${pc('noStore')}; ${pc('store')}`);
  const sc = r.store;
  lines.push(`store: ${sc.joins_held ?? 0} joins held, ${sc.joins_found_in_store ?? 0} found in the store, ${sc.joins_store_retried ?? 0} retried, ${sc.joins_store_timed_out ?? 0} timed out, ` +
    `${sc.joins_not_in_store ?? 0} not in it; hold wait p50 <= ${ms(r.holdWait.p50LeMs)} ms, p99 <= ${ms(r.holdWait.p99LeMs)} ms, mean ${fmt(r.holdWait.meanMs, 2)} ms over ${r.holdWait.total} held packets`);
  lines.push(`store/noBalancer   = ${fmt(r.ratios.medianStoreOverNoBalancer, 2)} median of per-run ratios [${r.ratios.storeOverNoBalancer.map((x) => x.toFixed(2)).join(', ')}] (target >= ${CLUSTER_TARGETS.storeOverNoBalancer})`);
  lines.push(`noStore/noBalancer = ${fmt(r.ratios.medianNoStoreOverNoBalancer, 2)} median of per-run ratios [${r.ratios.noStoreOverNoBalancer.map((x) => x.toFixed(2)).join(', ')}] ` +
    `(the links stay full while any connection keeps both paths: the loss is per connection, above)`);
  lines.push(`${pf(r.pass.all)}: store >= ${CLUSTER_TARGETS.storeOverNoBalancer * 100}% of noBalancer ${pf(r.pass.storeOverNoBalancer)}, store resets no join ${pf(r.pass.storeJoinsReset)} ` +
    `(noStore: ${r.modes.noStore.joinsCrossed ?? 0} joins crossed, ${r.modes.noStore.joinsReset} reset)`);
  return lines.join('\n');
}

export function clusterGoodputSvg(r: ClusterDemoResult): string {
  return goodputPlot(r, CLUSTER_MODES, `Goodput over time: ${r.connections} MPTCP connections (sum), two client links, ${r.balancers} balancers`, labels(r.balancers));
}

export function clusterCompletionSvg(r: ClusterDemoResult): string {
  return completionPlot(r, CLUSTER_MODES, `Time to complete a transfer (one MPTCP connection, ${r.balancers} balancers)`, labels(r.balancers), '; whether its join crosses is up to the ECMP hash');
}

/** Writes results.json, goodput-over-time.svg and completion-time.svg into dir; returns the paths. */
export function writeClusterDemoOutputs(r: ClusterDemoResult, dir: string): string[] {
  return writeOutputFiles(dir, [
    ['results.json', `${JSON.stringify(r, null, 2)}\n`],
    ['goodput-over-time.svg', clusterGoodputSvg(r)],
    ['completion-time.svg', clusterCompletionSvg(r)],
  ]);
}
