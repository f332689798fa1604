// Helpers for test/e2e/balancer.test.ts: traffic servers and clients inside a testbed's namespaces,
// kernel counters, engine counters and socket listings. Every child started here is tracked by PID.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { isRoot, haveIp, nsExec, nstatIn } from '../../src/testbed/netns.js';
import type { TestbedHandle } from '../../src/testbed/testbed.js';
import type { BalancerProcess } from '../../src/testbed/balancer-process.js';
import type { ClientReport, ConnectionResult } from '../../src/traffic/client.js';
import type { ServerReport, ServedConnection } from '../../src/traffic/server.js';

export const MPTCP_PORT = 5201;
export const TCP_PORT = 5202;
const cliJs = fileURLToPath(new URL('../../src/traffic/cli.js', import.meta.url));

/** Why an IPv6 testbed (testbedUp({ ipv6: true })) cannot run here, or undefined. */
export function preflightReason6(): string | undefined {
  const r = preflightReason();
  if (r) return r;
  // New namespaces start with IPv6 on unless the kernel has none (ipv6.disable=1 removes this directory).
  if (!fs.existsSync('/proc/sys/net/ipv6/conf/default')) return 'needs a kernel with IPv6 (booted without ipv6.disable=1)';
  return undefined;
}

/** Why the testbed cannot run here, or undefined. */
export function preflightReason(): string | undefined {
  if (process.platform !== 'linux') return 'needs Linux';
  if (!isRoot()) return 'needs root (network namespaces, veth, tc, TUN)';
  if (!haveIp()) return 'needs the "ip" command (iproute2)';
  if (!fs.existsSync('/dev/net/tun')) return 'needs /dev/net/tun';
  if (!fs.existsSync('/proc/sys/net/mptcp/enabled')) return 'needs a kernel with MPTCP (CONFIG_MPTCP)';
  return undefined;
}

/** Children of this process; killed by PID if a hook could not stop them. */
export const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (c.pid && c.exitCode === null && c.signalCode === null) {
    try { c.kill('SIGKILL'); } catch { /* gone */ }
  }
});

function track(c: ChildProcess): ChildProcess {
  children.add(c);
  c.once('exit', () => children.delete(c));
  return c;
}

export interface TrafficServerProc {
  ns: string;
  addr: string;
  child: ChildProcess;
  pid: number;
  reportFile: string;
  /** Asks for a fresh report (SIGUSR1) and reads it. */
  report(): Promise<ServerReport>;
  stop(): Promise<void>;
}

/**
 * `cli.js server` (MPTCP on 5201, plain TCP on 5202) in ns; resolves once it listens. `host`: the listen address
 * (default 0.0.0.0; "::" listens on both families, so IPv6 subflows of an IPv4 connection are accepted too).
 */
export async function startTrafficServer(ns: string, addr: string, dir: string, host?: string): Promise<TrafficServerProc> {
  const reportFile = path.join(dir, `${ns}.json`);
  // `ip netns exec` execs node, so the child's PID is the server's (SIGSTOP/SIGUSR1 reach it directly).
  const child = track(spawn('ip', ['netns', 'exec', ns, process.execPath, cliJs, 'server', '--port', String(MPTCP_PORT), '--tcp-port', String(TCP_PORT), '--report', reportFile, ...(host ? ['--host', host] : [])], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const rl = readline.createInterface({ input: child.stdout! });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`traffic server in ${ns} not listening within 10 s: ${stderr}`)), 10000);
    child.once('exit', (code) => { clearTimeout(t); reject(new Error(`traffic server in ${ns} exited (${code}): ${stderr}`)); });
    rl.once('line', (l) => {
      clearTimeout(t);
      try {
        const o = JSON.parse(l) as { event?: string };
        if (o.event === 'listening') resolve(); else reject(new Error(`traffic server in ${ns}: ${l}`));
      } catch { reject(new Error(`traffic server in ${ns}: ${l}`)); }
    });
  });
  rl.on('line', () => undefined);
  const read = (): ServerReport | undefined => {
    try { return JSON.parse(fs.readFileSync(reportFile, 'utf8')) as ServerReport; } catch { return undefined; }
  };
  return {
    ns,
    addr,
    child,
    pid: child.pid!,
    reportFile,
    async report() {
      const before = read()?.generatedAt;
      process.kill(child.pid!, 'SIGUSR1');
      const deadline = Date.now() + 3000;
      for (;;) {
        await sleep(50);
        const r = read();
        if (r && r.generatedAt !== before) return r;
        if (Date.now() > deadline) throw new Error(`traffic server in ${ns} wrote no fresh report within 3 s: ${stderr}`);
      }
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Connections a server served after `sinceId` (ids grow per server process). */
export function newConnections(r: ServerReport, sinceId: number): ServedConnection[] {
  return r.connections.filter((c) => c.id > sinceId);
}

export function maxId(r: ServerReport): number {
  return r.connections.reduce((m, c) => Math.max(m, c.id), 0);
}

/** `cli.js client ... --json` in the client namespace; killed after hardMs. Exit code 1 still gives a report. */
export function runClient(tb: TestbedHandle, args: string[], hardMs: number): Promise<ClientReport> {
  return runClientTo(tb, tb.vips[0], args, hardMs);
}

/** runClient towards `host` (an IPv6 VIP, or "::ffff:" + an IPv4 VIP for an IPv6 socket on an IPv4 path). */
export function runClientTo(tb: TestbedHandle, host: string, args: string[], hardMs: number): Promise<ClientReport> {
  const child = track(spawn('ip', ['netns', 'exec', tb.namespaces.client, process.execPath, cliJs, 'client', '--host', host, '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] }));
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), hardMs);
  return new Promise((resolve, reject) => {
    child.once('exit', (code, sig) => {
      clearTimeout(killer);
      try {
        resolve(JSON.parse(out.trim().split('\n').pop() ?? '') as ClientReport);
      } catch {
        reject(new Error(`client produced no report (exit ${code ?? sig}): ${err.trim()}`));
      }
    });
  });
}

export const SERVER_NSTAT = ['MPTcpExtMPCapableSYNRX', 'MPTcpExtMPJoinSynRx', 'MPTcpExtMPJoinAckRx', 'MPTcpExtMPJoinNoTokenFound', 'MPTcpExtDSSNotMatching', 'MPTcpExtMPTCPRetrans', 'TcpOutRsts', 'TcpAttemptFails', 'TcpExtTCPAbortOnData', 'MPTcpExtMPJoinAckHMacFailure', 'MPTcpExtMPJoinRejected', 'TcpInCsumErrors', 'TcpExtTCPTimeouts', 'IpInDiscards', 'TcpExtListenDrops'];
export const CLIENT_NSTAT = ['MPTcpExtMPJoinSynTx', 'MPTcpExtMPJoinSynAckRx', 'MPTcpExtMPCapableSYNTX', 'MPTcpExtMPCapableSYNACKRX', 'TcpAttemptFails', 'TcpEstabResets', 'TcpOutRsts', 'MPTcpExtMPRstRx', 'MPTcpExtMPJoinSynAckHMacFailure', 'MPTcpExtMPJoinSynTxConnectErr', 'TcpExtTCPTimeouts', 'TcpRetransSegs', 'TcpInCsumErrors'];

/** Absolute kernel counters per namespace (nstatIn sets NSTAT_HISTORY=/dev/null per call). */
export function nstatMany(nss: string[], names?: string[]): Record<string, Record<string, number>> {
  return Object.fromEntries(nss.map((ns) => [ns, nstatIn(ns, names)]));
}

/** Per-namespace and summed deltas between two nstatMany snapshots. */
export function nstatDelta(a: Record<string, Record<string, number>>, b: Record<string, Record<string, number>>, names: string[]): { per: Record<string, Record<string, number>>; sum: Record<string, number> } {
  const per: Record<string, Record<string, number>> = {};
  const sum: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  for (const ns of Object.keys(b)) {
    per[ns] = {};
    for (const n of names) {
      const d = (b[ns][n] ?? 0) - (a[ns]?.[n] ?? 0);
      per[ns][n] = d;
      sum[n] += d;
    }
  }
  return { per, sum };
}

export interface EngineStats {
  loop: Record<string, number>;
  engine: { counters: Record<string, number>; drops: Record<string, number>; flows: number; connections: number };
}

export async function engineStats(lb: BalancerProcess): Promise<EngineStats> {
  return (await lb.request('stats')) as EngineStats;
}

/** b - a for every key of b. */
export function diff(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - (a[k] ?? 0)]));
}

/** Only the non-zero entries (for short messages). */
export function nonZero(o: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== 0));
}

export interface EngineConnection { token: string; backend: string; vip: string; subflows: string[]; ambiguous: boolean; lingering: boolean }

/** Every connection the engine knows (pages of 1000). */
export async function engineConnections(lb: BalancerProcess): Promise<EngineConnection[]> {
  const all: EngineConnection[] = [];
  for (let off = 0; off < 100000;) {
    const page = (await lb.request(`connections ${off}`)) as { total: number; connections: EngineConnection[] };
    all.push(...page.connections);
    off += page.connections.length;
    if (page.connections.length === 0 || off >= page.total) break;
  }
  return all;
}

/** Peer ports of established TCP sockets (subflows included) on local port `port` inside ns, keyed "addr:port". */
export function establishedPeers(ns: string, port: number): string[] {
  const out = execFileSync('ip', ['netns', 'exec', ns, 'ss', '-tnH', 'state', 'established', 'sport', '=', `:${port}`], { encoding: 'utf8', timeout: 10000 });
  const peers: string[] = [];
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    // Recv-Q Send-Q Local Peer (state column omitted by the filter)
    if (f.length >= 4) peers.push(f[3]);
  }
  return peers;
}

export function haveNft(): boolean {
  try { execFileSync('nft', ['--version'], { stdio: 'ignore', timeout: 10000 }); return true; } catch { return false; }
}

export function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'mplb-e2e-lb-'));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface ForwardProbe {
  /** Counter values, or undefined when nft is not available. */
  read(): Record<string, number> | undefined;
  remove(): void;
}

/**
 * Counting-only nftables rules in the balancer namespace (forward hook, policy accept): backend-sourced
 * packets leaving towards the client (un-NATed replies) and client RSTs addressed straight to a backend.
 * dropLeak: also drop those un-NATed replies (they can only exist while mplb is not in the path).
 */
export function forwardProbe(tb: TestbedHandle, dir: string, dropLeak = false): ForwardProbe {
  const ns = tb.namespaces.balancer;
  const be = `{ ${tb.servers.map((s) => s.addr).join(', ')} }`;
  const cl = `{ ${tb.balancer.clientLinks.map((l) => `"${l.dev}"`).join(', ')} }`;
  const file = path.join(dir, 'probe.nft');
  fs.writeFileSync(file, `table inet mplbprobe {
  chain fw {
    type filter hook forward priority -300; policy accept;
    ip saddr ${be} oifname ${cl} counter ${dropLeak ? 'drop ' : ''}comment "backend_src_to_client"
    iifname ${cl} ip daddr ${be} tcp flags & rst != 0 counter comment "client_rst_to_backend"
  }
}
`);
  try {
    execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', file], { stdio: 'ignore', timeout: 10000 });
  } catch {
    return { read: () => undefined, remove: () => undefined };
  }
  return {
    read() {
      try {
        const out = execFileSync('ip', ['netns', 'exec', ns, 'nft', 'list', 'table', 'inet', 'mplbprobe'], { encoding: 'utf8', timeout: 10000 });
        const res: Record<string, number> = {};
        for (const m of out.matchAll(/counter packets (\d+) bytes \d+.*comment "(\w+)"/g)) res[m[2]] = Number(m[1]);
        return res;
      } catch {
        return undefined;
      }
    },
    remove() {
      try { execFileSync('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'mplbprobe'], { stdio: 'ignore', timeout: 10000 }); } catch { /* namespace gone */ }
    },
  };
}

/** The address of an engine backend or VIP id ("1.2.3.4:80", "[fd00::1]:80"). */
export function idAddr(id: string): string {
  return id.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
}

export interface MptcpBatchSpec {
  tb: TestbedHandle;
  lb: BalancerProcess;
  servers: TrafficServerProc[];
  /** What the client connects to (an IPv6 VIP, or "::ffff:" + an IPv4 VIP). */
  host: string;
  /** The initial subflow's client address as the servers report it. */
  clientAddr: string;
  /** Server i's address as the engine's connection record names its backend. */
  serverAddr(i: number): string;
  n: number;
  clientArgs: string[];
  /** Engine counters that must not move. */
  zero: string[];
  /** Engine counters that must grow by at least n (joins_steered_by_token is always one). */
  atLeastN?: string[];
  /** A further check of each connection's engine record (e.g. that one subflow is IPv6); a problem or undefined. */
  checkConn?(ec: EngineConnection, c: ConnectionResult): string | undefined;
}

export interface MptcpBatchResult { r: ClientReport; problems: string[]; dssNotMatching: number; engineDelta: Record<string, number>; kernel: string }

/**
 * The only drops expected with the e2e traffic: the fresh TUN's own IPv6 router solicitations and MLD reports
 * (icmp_unhandled_type; not_tcp before ICMP was read).
 */
const EXPECTED_DROPS = ['not_tcp', 'icmp_unhandled_type'];

/** Drops between two engine snapshots, the expected ones left out. */
export function unexpectedDrops(a: EngineStats, b: EngineStats): Record<string, number> {
  const d = nonZero(diff(a.engine.drops, b.engine.drops));
  for (const k of EXPECTED_DROPS) delete d[k];
  return d;
}

/** Every packet counted in has one verdict; no packet loop read/write errors; no engine exceptions. */
export function accountingProblems(a: EngineStats, b: EngineStats): string[] {
  const d = diff(a.engine.counters, b.engine.counters);
  const p: string[] = [];
  if (d.packets_in !== d.to_backend + d.to_client + d.replied + d.dropped) p.push(`packets_in ${d.packets_in} != to_backend + to_client + replied + dropped (${JSON.stringify(nonZero(d))})`);
  for (const k of ['readErrors', 'writeErrors']) if (b.loop[k] !== a.loop[k]) p.push(`packet loop ${k} went from ${a.loop[k]} to ${b.loop[k]}`);
  if (b.engine.drops.engine_error !== a.engine.drops.engine_error) p.push(`engine errors: ${b.engine.drops.engine_error - a.engine.drops.engine_error}`);
  return p;
}

/**
 * Connections spread by a hash may leave servers empty by chance: all n of them on some m - 1 of k servers has
 * probability at most C(k, m - 1) * ((m - 1) / k)^n. The check asks for the most servers m for which that is below
 * 1e-5: all 3 of 3 from 32 connections, 2 of 3 from 12 (one left empty is 2.3% there), both of 2 from 18.
 */
export function spreadProblem(counts: number[]): string | undefined {
  const k = counts.length, n = counts.reduce((a, b) => a + b, 0);
  const choose = (a: number, b: number) => { let c = 1; for (let i = 0; i < b; i++) c = (c * (a - i)) / (i + 1); return c; };
  let need = 1;
  for (let m = 2; m <= k; m++) if (choose(k, m - 1) * Math.pow((m - 1) / k, n) < 1e-5) need = m;
  const used = counts.filter((c) => c > 0).length;
  return used < need ? `connections per server ${JSON.stringify(counts)}: ${used} of ${k} servers got any, expected at least ${need} for ${n} hashed connections` : undefined;
}

/** Open TCP and MPTCP sockets on the MPTCP port in the client and server namespaces, and the client's qdiscs. */
function stallSnapshot(tb: TestbedHandle): string {
  const run = (ns: string, cmd: string, args: string[]) => {
    try { return nsExec(ns, cmd, args).replace(/\s+/g, ' ').trim(); } catch (e) { return `(${(e as Error).message})`; }
  };
  const port = `( sport = :${MPTCP_PORT} or dport = :${MPTCP_PORT} )`;
  const out = [`client tcp: ${run(tb.namespaces.client, 'ss', ['-tniem', 'state', 'established', port])}`, `client mptcp: ${run(tb.namespaces.client, 'ss', ['-Mnim'])}`, `client qdisc: ${run(tb.namespaces.client, 'tc', ['-s', 'qdisc'])}`];
  for (const ns of tb.namespaces.servers) out.push(`${ns} tcp: ${run(ns, 'ss', ['-tniem', port])}`, `${ns} mptcp: ${run(ns, 'ss', ['-Mnim'])}`);
  return out.join(' | ');
}

/**
 * N MPTCP connections from the client, then every check of "all subflows of each connection on one server": two
 * subflows at both ends, the server token on exactly one server, the engine's record naming that server, no join
 * reset at the servers, engine counters. Returns the problems (empty = fine).
 */
export async function mptcpBatch(spec: MptcpBatchSpec, t: { diagnostic(m: string): void }): Promise<MptcpBatchResult> {
  const { tb, lb, servers, n } = spec;
  const since = await Promise.all(servers.map(async (s) => maxId(await s.report())));
  const e0 = await engineStats(lb);
  const s0 = nstatMany(tb.namespaces.servers);
  const c0 = nstatMany([tb.namespaces.client]);
  // A connection still open 2 s before the client gives up is stalled: what its sockets and the client's queues
  // looked like then goes into the failure message (afterwards the client has closed them).
  const clientTimeoutMs = 15000;
  let stall = '';
  const snap = setTimeout(() => { stall = stallSnapshot(tb); }, clientTimeoutMs - 2000);
  const r = await runClientTo(tb, spec.host, ['--port', String(MPTCP_PORT), '--connections', String(n), '--timeout-ms', String(clientTimeoutMs), '--min-subflows', '2', ...spec.clientArgs], 25000);
  clearTimeout(snap);
  const e1 = await engineStats(lb);
  const s1 = nstatMany(tb.namespaces.servers);
  const c1 = nstatMany([tb.namespaces.client]);
  const served = await Promise.all(servers.map(async (s, i) => newConnections(await s.report(), since[i])));
  const engineConns = await engineConnections(lb);
  const sd = nstatDelta(s0, s1, SERVER_NSTAT).sum;
  const cd = nstatDelta(c0, c1, CLIENT_NSTAT).sum;
  const ed = diff(e0.engine.counters, e1.engine.counters);
  const problems: string[] = [];
  if (r.connections.length !== n) problems.push(`client reported ${r.connections.length} connections, expected ${n}`);
  const bad = r.connections.filter((c) => c.error || c.server?.bytes !== c.bytesSent || c.bytesSent === 0);
  if (bad.length > 0) problems.push(`${bad.length} connections incomplete, e.g. #${bad[0].index}: ${bad[0].error ?? `${bad[0].server?.bytes} of ${bad[0].bytesSent} bytes`}`);
  const notTwo = r.connections.filter((c) => c.subflowsTotalMax !== 2 || c.server?.subflowsTotalMax !== 2 || c.fallback);
  if (notTwo.length > 0) problems.push(`${notTwo.length} connections without 2 subflows (client/server): ${notTwo.slice(0, 8).map((c) => `#${c.index} ${c.subflowsTotalMax}/${c.server?.subflowsTotalMax}${c.fallback ? ' fallback' : ''}`).join(', ')}`);
  const perServer = served.map((l) => l.filter((c) => c.listener === 'mptcp'));
  for (const c of r.connections) {
    const tok = c.server?.tokenHex;
    if (!tok || tok === '00000000') { problems.push(`#${c.index} has no server token`); continue; }
    const hits: Array<{ srv: number; sc: ServedConnection }> = [];
    perServer.forEach((l, srv) => l.forEach((sc) => { if (sc.tokenHex === tok) hits.push({ srv, sc }); }));
    if (hits.length !== 1) { problems.push(`token ${tok} (#${c.index}) found on ${hits.length} servers`); continue; }
    const { srv, sc } = hits[0];
    if (sc.subflowsTotalMax !== 2) problems.push(`token ${tok} on ${spec.serverAddr(srv)} had ${sc.subflowsTotalMax} subflows`);
    if (sc.remoteAddress !== spec.clientAddr || sc.remotePort !== c.localPort) problems.push(`token ${tok}: server saw peer ${sc.remoteAddress}:${sc.remotePort}, client was ${spec.clientAddr}:${c.localPort}`);
    const ec = engineConns.find((x) => x.token === tok);
    if (!ec) { problems.push(`engine has no connection for token ${tok}`); continue; }
    if (idAddr(ec.backend) !== spec.serverAddr(srv)) problems.push(`engine maps token ${tok} to ${ec.backend}, but it lives on ${spec.serverAddr(srv)}`);
    const extra = spec.checkConn?.(ec, c);
    if (extra) problems.push(`token ${tok}: ${extra}`);
  }
  const counts = perServer.map((l) => l.length);
  const spread = spreadProblem(counts);
  if (spread) problems.push(spread);
  if (counts.reduce((a, b) => a + b, 0) !== n) problems.push(`servers served ${counts.reduce((a, b) => a + b, 0)} MPTCP connections, expected ${n}`);
  if (sd.MPTcpExtMPJoinNoTokenFound !== 0) problems.push(`servers reset ${sd.MPTcpExtMPJoinNoTokenFound} joins with an unknown token (MPJoinNoTokenFound)`);
  if (sd.MPTcpExtMPJoinSynRx < n) problems.push(`servers got ${sd.MPTcpExtMPJoinSynRx} join SYNs, expected >= ${n}`);
  if (sd.MPTcpExtMPJoinAckRx < n) problems.push(`servers completed ${sd.MPTcpExtMPJoinAckRx} join handshakes (MPJoinAckRx), expected >= ${n}`);
  if (cd.MPTcpExtMPJoinSynTx < n) problems.push(`client sent ${cd.MPTcpExtMPJoinSynTx} join SYNs, expected >= ${n}`);
  for (const k of ['joins_steered_by_token', 'conns_created', ...(spec.atLeastN ?? [])]) if (!(ed[k] >= n)) problems.push(`engine ${k} ${ed[k]} < ${n}`);
  for (const k of spec.zero) if (ed[k] !== 0) problems.push(`engine ${k} = ${ed[k]}, expected 0`);
  const drops = unexpectedDrops(e0, e1);
  if (Object.keys(drops).length > 0) problems.push(`engine drops ${JSON.stringify(drops)}`);
  problems.push(...accountingProblems(e0, e1));
  // Every TCP and MPTCP counter that moved (not the per-segment ones), so that a failure shows the kernel's view.
  const tcpish = (a: Record<string, Record<string, number>>, b: Record<string, Record<string, number>>) => {
    const names = [...new Set(Object.values(b).flatMap((o) => Object.keys(o)))].filter((k) => /^(MPTcp|Tcp)/.test(k) && !/Curr|Octets|Segs$|Coalesce|OFO|WndShared|PureAcks|HPHits|HPAcks|DelayedACK|Delivered|OrigDataSent/.test(k));
    return nonZero(nstatDelta(a, b, names).sum);
  };
  const kernel = `servers ${JSON.stringify(tcpish(s0, s1))}, client ${JSON.stringify(tcpish(c0, c1))}`;
  if (problems.length > 0 && stall) problems.push(`sockets 2 s before the client's timeout: ${stall}`);
  t.diagnostic(`${n} MPTCP connections to ${spec.host} in ${r.durationMs.toFixed(0)} ms: per server ${JSON.stringify(counts)}, engine ${JSON.stringify(nonZero(ed))}, kernel ${kernel}`);
  return { r, problems, dssNotMatching: sd.MPTcpExtDSSNotMatching, engineDelta: ed, kernel };
}

/** mptcpBatch, failing on any problem; one retry only when the servers counted DSSNotMatching (a known server-side reset), reported. */
export async function mptcpBatchChecked(spec: MptcpBatchSpec, t: { diagnostic(m: string): void }, what: string): Promise<MptcpBatchResult> {
  for (let attempt = 1; ; attempt++) {
    const res = await mptcpBatch(spec, t);
    if (res.problems.length === 0) {
      if (res.dssNotMatching > 0) t.diagnostic(`NOTE: servers counted MPTcpExtDSSNotMatching ${res.dssNotMatching} during a passing ${what} batch`);
      return res;
    }
    if (attempt === 1 && res.dssNotMatching > 0) {
      t.diagnostic(`RETRY of ${what}: servers counted MPTcpExtDSSNotMatching ${res.dssNotMatching} (known server-side join reset, not a balancer fault): ${res.problems.join('; ')}`);
      continue;
    }
    throw new Error(`${what}: ${res.problems.join('; ')}${res.dssNotMatching > 0 ? ` (servers also counted MPTcpExtDSSNotMatching ${res.dssNotMatching}, on the retry)` : ''}; engine ${JSON.stringify(nonZero(res.engineDelta))}; kernel counters: ${res.kernel}`);
  }
}
