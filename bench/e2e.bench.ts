// End-to-end bench on the testbed (root only): mplb side by side with plain kernel routing (the ceiling), an
// MPTCP-unaware kernel balancer (nftables DNAT, hash over the backends) and an MPTCP-terminating proxy (HAProxy in
// TCP mode under mptcpize), alternating between peers run by run on one testbed with rate limits off.
// Run alone: node dist/bench/e2e.bench.js [--quick]
import { spawn, type ChildProcess, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { BenchResult } from './engine.bench.js';
import { testbedDown, testbedUp, type TestbedHandle } from '../src/testbed/testbed.js';
import { startBalancerProcess, type BalancerProcess } from '../src/testbed/balancer-process.js';
import { ipn, isRoot, listNetns, nstatIn, tryRun } from '../src/testbed/netns.js';
import { fmt, verdict } from './report.js';

const VIP = '198.19.0.10';
const SINK = 5201, ECHO = 5202;
const TRAFFIC_CLI = fileURLToPath(new URL('../src/traffic/cli.js', import.meta.url));
const TOOLS = fileURLToPath(new URL('./e2e-tools.js', import.meta.url));
const NFT_TABLE = 'mplb_e2e';

type PeerName = 'plain_routing' | 'nft_dnat' | 'haproxy_mptcpize' | 'mplb';
const ALL_PEERS: PeerName[] = ['plain_routing', 'nft_dnat', 'haproxy_mptcpize', 'mplb'];

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
const log = (s: string) => process.stderr.write(`e2e: ${s}\n`);

// ---------------------------------------------------------------------------------------------- processes

const children = new Set<ChildProcess>();

interface Done { code: number | null; stdout: string; stderr: string; timedOut: boolean }

/** Runs a program inside a namespace (`ip netns exec` execs it: the child's PID is the program's). Bounded. */
function nsRun(ns: string, cmd: string, args: string[], timeoutMs: number, onLine?: (line: string) => void): Promise<Done> {
  return new Promise((resolve) => {
    const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(c);
    let stdout = '', stderr = '', timedOut = false, seen = 0;
    c.stdout!.on('data', (d) => {
      stdout += d;
      if (!onLine) return;
      for (let i; (i = stdout.indexOf('\n', seen)) >= 0; seen = i + 1) onLine(stdout.slice(seen, i));
    });
    c.stderr!.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { timedOut = true; c.kill('SIGKILL'); }, timeoutMs);
    c.on('error', (e) => { stderr += String(e); });
    c.on('close', (code) => { clearTimeout(t); children.delete(c); resolve({ code, stdout, stderr, timedOut }); });
  });
}

function lastJson<T>(d: Done, what: string): T {
  const lines = d.stdout.trim().split('\n').filter((l) => l.startsWith('{'));
  const last = lines[lines.length - 1];
  if (!last) throw new Error(`${what}: no JSON output (exit ${d.code}${d.timedOut ? ', timed out' : ''}): ${d.stderr.trim().slice(0, 400)}`);
  return JSON.parse(last) as T;
}

/** Starts a long-running program in a namespace and waits for a stdout line matching `ready` (if given). */
async function nsStart(ns: string, cmd: string, args: string[], ready?: RegExp, timeoutMs = 10000): Promise<{ child: ChildProcess; stderr: () => string }> {
  const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(c);
  let err = '', outBuf = '';
  c.stderr!.on('data', (d) => { err += d; if (err.length > 20000) err = err.slice(-10000); });
  c.on('exit', () => children.delete(c));
  if (ready) {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${cmd}: not ready within ${timeoutMs} ms: ${err.trim().slice(0, 400)}`)), timeoutMs);
      c.stdout!.on('data', (d) => { outBuf += d; if (ready.test(outBuf)) { clearTimeout(t); resolve(); } });
      c.once('exit', (code) => { clearTimeout(t); reject(new Error(`${cmd} exited (${code}) before ready: ${err.trim().slice(0, 400)}`)); });
    });
  }
  c.stdout!.resume();
  return { child: c, stderr: () => err };
}

async function stopChild(c: ChildProcess, graceMs = 3000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function which(cmd: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  for (const d of dirs) if (d && existsSync(join(d, cmd))) return join(d, cmd);
  return undefined;
}

// ---------------------------------------------------------------------------------------------- counters

const CLK_TCK = (() => { try { return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100; } catch { return 100; } })();

/** Busy CPU seconds of the whole machine (all cores): user+nice+system+irq+softirq+steal. */
function machineBusy(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + (steal ?? 0)) / CLK_TCK;
}

/** utime+stime of a process (all its threads), seconds; NaN when gone. */
function procCpu(pid: number): number {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

function linkRx(ns: string, devs: string[]): { packets: number; bytes: number } {
  const j = JSON.parse(ipn(ns, ['-j', '-s', 'link', 'show'])) as Array<{ ifname: string; stats64?: { rx: { packets: number; bytes: number } } }>;
  let packets = 0, bytes = 0;
  for (const l of j) if (devs.includes(l.ifname) && l.stats64) { packets += l.stats64.rx.packets; bytes += l.stats64.rx.bytes; }
  return { packets, bytes };
}

function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length & 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const range = (xs: number[]): [number, number] => { const s = xs.filter(Number.isFinite); return s.length ? [Math.min(...s), Math.max(...s)] : [NaN, NaN]; };
const r1 = (x: number) => Math.round(x * 10) / 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

// ---------------------------------------------------------------------------------------------- peers

interface PeerCtl { name: PeerName; pid(): number | undefined; up(): Promise<void>; down(): Promise<void>; mplb?(): BalancerProcess | undefined }

function makePeers(tb: TestbedHandle, tmp: string): Record<PeerName, PeerCtl> {
  const lb = tb.namespaces.balancer, s1 = tb.servers[0];
  const servers = tb.servers.map((s) => s.addr);

  const plain: PeerCtl = {
    name: 'plain_routing',
    pid: () => undefined,
    async up() {
      // The testbed's noBalancer mode, applied by hand: the VIP lives on server 1 and the balancer just routes.
      ipn(s1.ns, ['addr', 'add', `${VIP}/32`, 'dev', 'lo']);
      ipn(lb, ['route', 'add', `${VIP}/32`, 'via', s1.addr, 'dev', s1.link.peerDev]);
    },
    async down() {
      tryRun('ip', ['-n', lb, 'route', 'del', `${VIP}/32`, 'via', s1.addr, 'dev', s1.link.peerDev]);
      tryRun('ip', ['-n', s1.ns, 'addr', 'del', `${VIP}/32`, 'dev', 'lo']);
    },
  };

  const nftFile = join(tmp, 'nft.conf');
  const nft: PeerCtl = {
    name: 'nft_dnat',
    pid: () => undefined,
    async up() {
      const map = servers.map((a, i) => `${i} : ${a}`).join(', ');
      writeFileSync(nftFile, `table ip ${NFT_TABLE} {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr ${VIP} meta l4proto tcp dnat to jhash ip saddr . tcp sport mod ${servers.length} map { ${map} }
  }
}
`);
      // Replies are un-NATed by conntrack; the balancer namespace routes to the servers' links directly.
      execFileSync('ip', ['netns', 'exec', lb, 'nft', '-f', nftFile], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10000 });
    },
    async down() {
      tryRun('ip', ['netns', 'exec', lb, 'nft', 'delete', 'table', 'ip', NFT_TABLE]);
      if (which('conntrack')) tryRun('ip', ['netns', 'exec', lb, 'conntrack', '-F']);
    },
  };

  const cfgFile = join(tmp, 'haproxy.cfg');
  let hp: { child: ChildProcess; stderr: () => string } | undefined;
  let limits = '';
  const haproxy: PeerCtl = {
    name: 'haproxy_mptcpize',
    pid: () => hp?.child.pid,
    async up() {
      const be = (port: number) => servers.map((a, i) => `  server s${i + 1} ${a}:${port}`).join('\n');
      writeFileSync(cfgFile, `global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend sink
  bind ${VIP}:${SINK}
  default_backend sink
backend sink
  balance source
${be(SINK)}
frontend echo
  bind ${VIP}:${ECHO}
  default_backend echo
backend echo
  balance source
${be(ECHO)}
`);
      ipn(lb, ['addr', 'add', `${VIP}/32`, 'dev', 'lo']);
      // HAProxy terminates MPTCP here: this namespace must accept the client's join.
      limits = ipn(lb, ['mptcp', 'limits', 'show']).trim();
      ipn(lb, ['mptcp', 'limits', 'set', 'subflow', '2', 'add_addr_accepted', '2']);
      hp = await nsStart(lb, 'mptcpize', ['run', 'haproxy', '-f', cfgFile, '-db']);
      // Ready when both frontends listen (bounded).
      for (let i = 0; i < 100; i++) {
        const ss = execFileSync('ip', ['netns', 'exec', lb, 'ss', '-Hltn'], { encoding: 'utf8' });
        if (ss.includes(`${VIP}:${SINK}`) && ss.includes(`${VIP}:${ECHO}`)) return;
        if (hp.child.exitCode !== null) break;
        await sleep(50);
      }
      throw new Error(`haproxy did not start: ${hp.stderr().trim().slice(0, 400)}`);
    },
    async down() {
      if (hp) await stopChild(hp.child);
      hp = undefined;
      tryRun('ip', ['-n', lb, 'addr', 'del', `${VIP}/32`, 'dev', 'lo']);
      const m = /subflows?\s+(\d+)/.exec(limits), a = /add_addr_accepted\s+(\d+)/.exec(limits);
      if (m && a) tryRun('ip', ['-n', lb, 'mptcp', 'limits', 'set', 'subflow', m[1], 'add_addr_accepted', a[1]]);
    },
  };

  let bp: BalancerProcess | undefined;
  const mplb: PeerCtl = {
    name: 'mplb',
    pid: () => bp?.pid,
    mplb: () => bp,
    async up() {
      const backends = servers.map((address) => ({ address }));
      bp = await startBalancerProcess(tb, { engine: { vips: [{ address: `${VIP}:${SINK}`, backends }, { address: `${VIP}:${ECHO}`, backends }] } });
    },
    async down() {
      // SIGTERM: mplb removes its routes and rules and closes its TUN; stop() waits for the exit.
      if (bp) await bp.stop();
      bp = undefined;
    },
  };
  return { plain_routing: plain, nft_dnat: nft, haproxy_mptcpize: haproxy, mplb };
}

/** What a peer must leave behind: the balancer namespace (and server 1) exactly as before. */
function snapshot(tb: TestbedHandle, haveNft: boolean): string {
  const lb = tb.namespaces.balancer;
  const parts = [
    // IPv4 only: IPv6 link-local addresses and routes appear on their own (DAD) while the bench runs.
    ipn(lb, ['-4', 'rule', 'show']),
    ipn(lb, ['-6', 'rule', 'show']),
    ipn(lb, ['-4', 'route', 'show', 'table', 'all']),
    ipn(lb, ['-br', 'link', 'show']).replace(/\s+(UP|DOWN|UNKNOWN|LOWERLAYERDOWN)\s+/g, ' '),
    ipn(lb, ['-4', '-br', 'addr', 'show']).replace(/\s+(UP|DOWN|UNKNOWN|LOWERLAYERDOWN)\s+/g, ' '),
    ipn(tb.servers[0].ns, ['-4', '-br', 'addr', 'show']),
    ipn(lb, ['mptcp', 'limits', 'show']),
    execFileSync('ip', ['netns', 'exec', lb, 'sysctl', '-n', 'net.ipv4.ip_forward', 'net.ipv4.conf.all.rp_filter'], { encoding: 'utf8' }),
    haveNft ? execFileSync('ip', ['netns', 'exec', lb, 'nft', 'list', 'ruleset'], { encoding: 'utf8' }) : '',
  ];
  return parts.join('\n---\n');
}

function diffLines(a: string, b: string): string {
  const A = new Set(a.split('\n')), B = new Set(b.split('\n'));
  const gone = [...A].filter((l) => !B.has(l)).map((l) => `- ${l}`), added = [...B].filter((l) => !A.has(l)).map((l) => `+ ${l}`);
  return [...gone, ...added].join('\n');
}

// ---------------------------------------------------------------------------------------------- measurements

interface Goodput { mbps: number; bytes: number; subflows: number[]; errors: string[]; machineCpuS: number; procCpuS: number }

async function goodput(tb: TestbedHandle, peer: PeerCtl, conns: number, seconds: number): Promise<Goodput> {
  const pid = peer.pid();
  const m0 = machineBusy(), p0 = pid ? procCpu(pid) : NaN;
  const d = await nsRun(tb.namespaces.client, process.execPath, [TRAFFIC_CLI, 'client', '--host', VIP, '--port', String(SINK), '--seconds', String(seconds), '--connections', String(conns), '--json', '--interval-ms', '500'], (seconds + 40) * 1000);
  const m1 = machineBusy(), p1 = pid ? procCpu(pid) : NaN;
  const r = lastJson<{ goodputMbps: number; totalBytes: number; connections: Array<{ subflowsTotalMax: number; server?: { subflowsTotalMax: number }; error?: string }> }>(d, `goodput ${peer.name}`);
  return {
    mbps: r.goodputMbps,
    bytes: r.totalBytes,
    // The client's view: a join sent to the wrong server is reset and never counts; behind HAProxy the servers
    // see HAProxy's own one-subflow connection, so their count says nothing about the client's subflows.
    subflows: r.connections.map((c) => c.subflowsTotalMax),
    errors: r.connections.filter((c) => c.error).map((c) => c.error!),
    machineCpuS: m1 - m0,
    procCpuS: p1 - p0,
  };
}

interface Rtt { p50: number; p99: number; n: number; subflows: number }

async function rtt(tb: TestbedHandle, peer: PeerCtl, seconds: number): Promise<Rtt> {
  const d = await nsRun(tb.namespaces.client, process.execPath, [TOOLS, 'pingpong', '--host', VIP, '--port', String(ECHO), '--seconds', String(seconds), '--size', '32'], (seconds + 30) * 1000);
  const r = lastJson<{ n: number; p50Us: number; p99Us: number; subflows: number }>(d, `rtt ${peer.name}`);
  return { p50: r.p50Us, p99: r.p99Us, n: r.n, subflows: r.subflows };
}

interface Pps { pps: number; bytesPerPacket: number; retransShare: number }

async function smallPackets(tb: TestbedHandle, peer: PeerCtl, seconds: number): Promise<Pps> {
  const cli = tb.namespaces.client, lb = tb.namespaces.balancer;
  // Autocorking off in the client namespace: every small write leaves as its own segment while cwnd allows.
  const sysctl = (kv: string) => execFileSync('ip', ['netns', 'exec', cli, 'sysctl', '-q', '-w', kv]);
  sysctl('net.ipv4.tcp_autocorking=0');
  try {
    // Counters are read when the tool says it starts sending and when it stops (before it resets the connections).
    let a: { l: { packets: number; bytes: number }; n: Record<string, number>; t: number } | undefined, b: typeof a;
    const sample = () => ({ l: linkRx(lb, ['lbc0', 'lbc1']), n: nstatIn(cli, ['TcpOutSegs', 'TcpRetransSegs']), t: performance.now() });
    const d = await nsRun(cli, process.execPath, [TOOLS, 'small', '--host', VIP, '--port', String(SINK), '--seconds', String(seconds), '--connections', '8', '--size', '64'], (seconds + 30) * 1000, (line) => {
      if (line.includes('"sending"')) a = sample();
      else if (line.includes('"done"')) b = sample();
    });
    const r = lastJson<{ event: string; seconds: number; errors: number }>(d, `small packets ${peer.name}`);
    if (!a || !b || r.event !== 'done') throw new Error(`small packets ${peer.name}: the tool did not report its window: ${d.stderr.trim().slice(0, 300)}`);
    const pk = b.l.packets - a.l.packets, dt = (b.t - a.t) / 1000;
    const segs = (b.n.TcpOutSegs ?? 0) - (a.n.TcpOutSegs ?? 0), re = (b.n.TcpRetransSegs ?? 0) - (a.n.TcpRetransSegs ?? 0);
    return { pps: pk / dt, bytesPerPacket: (b.l.bytes - a.l.bytes) / Math.max(1, pk), retransShare: segs > 0 ? re / segs : 0 };
  } finally {
    sysctl('net.ipv4.tcp_autocorking=1');
  }
}

interface PeerRun { g1: Goodput; g8: Goodput; rtt: Rtt; pps: Pps }

// ---------------------------------------------------------------------------------------------- flood

interface FloodResult { share: number; baseline: number; attempted: number; twoSubflows: number; synsSent: number; synRate: number; floodSeconds: number; maxFlows: number; maxConns: number; flowCap: number; connCap: number; errors: string[]; drops: Record<string, number> }

async function floodRun(tb: TestbedHandle, peer: PeerCtl, quick: boolean): Promise<FloodResult> {
  const bp = peer.mplb!()!;
  const cli = tb.namespaces.client;
  const genuineArgs = (count: number) => [TOOLS, 'genuine', '--host', VIP, '--port', String(ECHO), '--count', String(count), '--concurrency', '10', '--hold-ms', '1000'];
  const count = quick ? 10 : 40;
  const base = lastJson<{ attempted: number; twoSubflows: number; errors: string[] }>(await nsRun(cli, process.execPath, genuineArgs(count), 60000), 'genuine (no flood)');
  const rate = 3000, floodSeconds = quick ? 3 : 6;
  let maxFlows = 0, maxConns = 0, flowCap = 0, connCap = 0, polling = true;
  const stats = async () => {
    const s = (await bp.request('stats')) as { engine: { flows: number; connections: number; maxFlows: number; maxConnections: number; drops?: Record<string, number> } };
    maxFlows = Math.max(maxFlows, s.engine.flows); maxConns = Math.max(maxConns, s.engine.connections);
    flowCap = s.engine.maxFlows; connCap = s.engine.maxConnections;
    return s;
  };
  const poller = (async () => { for (let i = 0; polling && i < 400; i++) { await stats().catch(() => undefined); await sleep(200); } })();
  const flood = nsRun(cli, process.execPath, [TOOLS, 'syns', '--dst', VIP, '--port', String(ECHO), '--src24', tb.client.addrs[0].split('.').slice(0, 3).join('.'), '--rate', String(rate), '--count', String(rate * floodSeconds)], (floodSeconds + 20) * 1000);
  await sleep(300);
  const gen = lastJson<{ attempted: number; twoSubflows: number; errors: string[] }>(await nsRun(cli, process.execPath, genuineArgs(count), 60000), 'genuine (flood)');
  const f = lastJson<{ sent: number; failed: number; seconds: number }>(await flood, 'syn flood');
  polling = false;
  await poller;
  const last = await stats();
  return {
    share: gen.twoSubflows / gen.attempted, baseline: base.twoSubflows / base.attempted, attempted: gen.attempted, twoSubflows: gen.twoSubflows,
    synsSent: f.sent, synRate: f.sent / f.seconds, floodSeconds: f.seconds, maxFlows, maxConns, flowCap, connCap,
    errors: [...base.errors, ...gen.errors], drops: last.engine.drops ?? {},
  };
}

// ---------------------------------------------------------------------------------------------- main

export async function runE2eBench(opts: { quick: boolean }): Promise<BenchResult[]> {
  if (process.platform !== 'linux' || !isRoot()) {
    log('skipped: the end-to-end bench needs root on Linux (network namespaces)');
    return [];
  }
  const quick = opts.quick;
  const runs = quick ? 1 : 7;
  const secs = quick ? 1.5 : 4;
  const rttSecs = quick ? 1 : 3;

  // Peers whose Debian package is missing are left out (never installed from here).
  const haveNft = which('nft') !== undefined;
  const peers: PeerName[] = [];
  const absent: string[] = [];
  for (const p of ALL_PEERS) {
    if (p === 'nft_dnat' && !haveNft) { log('peer nft_dnat absent: install the Debian package "nftables"'); absent.push('nft_dnat (package nftables missing)'); continue; }
    if (p === 'haproxy_mptcpize' && (!which('haproxy') || !which('mptcpize'))) {
      const pkg = [!which('haproxy') ? 'haproxy' : '', !which('mptcpize') ? 'mptcpd' : ''].filter(Boolean).join('" and "');
      log(`peer haproxy_mptcpize absent: install the Debian package "${pkg}"`);
      absent.push(`haproxy_mptcpize (package ${pkg} missing)`);
      continue;
    }
    peers.push(p);
  }

  const tmp = mkdtempSync(join(tmpdir(), 'mplb-e2e-'));
  const cleanupTmp = () => rmSync(tmp, { recursive: true, force: true });
  process.once('exit', cleanupTmp);
  // On a signal: remove the temp files and our children, let the testbed's own handler (registered later, in
  // testbedUp) tear the namespaces down, then die of the same signal.
  const onSignal = (sig: NodeJS.Signals) => {
    cleanupTmp();
    for (const c of children) c.kill('SIGKILL');
    for (const s of SIGNALS) process.removeListener(s, onSignal);
    setImmediate(() => process.kill(process.pid, sig));
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  let tb: TestbedHandle | undefined;
  const servers: ChildProcess[] = [];
  const res: Record<PeerName, PeerRun[]> = { plain_routing: [], nft_dnat: [], haproxy_mptcpize: [], mplb: [] };
  const mplbLoop: Array<Record<string, number>> = [];
  const joinCounters: Record<string, Record<string, number>> = {};
  let flood: FloodResult | undefined;
  const t0 = Date.now();
  try {
    tb = testbedUp({ mode: 'balancer', rateMbit: 0, servers: 2, vips: [VIP] });
    log(`testbed ${tb.runId} up (rate limits off, 2 servers, VIP ${VIP}); peers ${peers.join(', ')}; ${runs} run(s) each, alternating`);
    for (const s of tb.servers) {
      servers.push((await nsStart(s.ns, process.execPath, [TOOLS, 'serve', '--sink', String(SINK), '--echo', String(ECHO)], /"listening"/)).child);
    }
    const ctl = makePeers(tb, tmp);
    const clean = snapshot(tb, haveNft);
    const serverCounters = () => {
      const sum: Record<string, number> = {};
      for (const s of tb!.servers) for (const [k, v] of Object.entries(nstatIn(s.ns, ['MPTcpExtMPJoinSynRx', 'MPTcpExtMPJoinNoTokenFound', 'MPTcpExtMPCapableSYNRX', 'MPTcpExtDSSNotMatching']))) sum[k] = (sum[k] ?? 0) + v;
      // Joins that HAProxy's namespace accepted itself.
      sum.lbJoinSynRx = nstatIn(tb!.namespaces.balancer, ['MPTcpExtMPJoinSynRx']).MPTcpExtMPJoinSynRx ?? 0;
      return sum;
    };
    for (let run = 0; run < runs; run++) {
      // Rotate the order so no peer always runs first (or right after the same neighbour).
      const order = peers.map((_, i) => peers[(i + run) % peers.length]);
      for (const name of order) {
        const p = ctl[name];
        const c0 = serverCounters();
        const tp = [Date.now()];
        let pr: PeerRun;
        try {
          await p.up();
          tp.push(Date.now());
          const g1 = await goodput(tb, p, 1, secs);
          tp.push(Date.now());
          const g8 = await goodput(tb, p, 8, secs);
          tp.push(Date.now());
          const rt = await rtt(tb, p, rttSecs);
          tp.push(Date.now());
          const pp = await smallPackets(tb, p, secs);
          tp.push(Date.now());
          pr = { g1, g8, rtt: rt, pps: pp };
          if (name === 'mplb') {
            const s = (await p.mplb!()!.request('stats')) as { loop: Record<string, number>; engine: { counters: Record<string, number> } };
            mplbLoop.push({ ...s.loop, dropped: s.engine.counters.dropped });
          }
        } finally {
          await p.down();
        }
        const c1 = serverCounters();
        const jc = (joinCounters[name] ??= {});
        for (const k of Object.keys(c1)) jc[k] = (jc[k] ?? 0) + (c1[k] - (c0[k] ?? 0));
        res[name].push(pr);
        const after = snapshot(tb, haveNft);
        tp.push(Date.now());
        if (process.env.MPLB_E2E_TIMING) log(`timing ${name}: ${tp.slice(1).map((t, i) => ((t - tp[i]) / 1000).toFixed(1)).join(' ')} s (up, 1conn, 8conn, rtt, small, down+checks)`);
        if (after !== clean) throw new Error(`peer ${name} left residue in the balancer namespace:\n${diffLines(clean, after)}`);
        log(`run ${run + 1}/${runs} ${name.padEnd(16)} 1conn ${(pr.g1.mbps / 1000).toFixed(2)} Gbit/s (subflows ${pr.g1.subflows.join(',')}) ` +
          `8conn ${(pr.g8.mbps / 1000).toFixed(2)} Gbit/s  rtt p50 ${pr.rtt.p50.toFixed(0)} p99 ${pr.rtt.p99.toFixed(0)} us  ` +
          `small ${(pr.pps.pps / 1000).toFixed(1)} kpps (${pr.pps.bytesPerPacket.toFixed(0)} B/pkt)` + (pr.g1.errors.length + pr.g8.errors.length ? `  errors: ${[...pr.g1.errors, ...pr.g8.errors].slice(0, 2).join('; ')}` : ''));
      }
    }
    if (peers.includes('mplb')) {
      const p = ctl.mplb;
      try { await p.up(); flood = await floodRun(tb, p, quick); } finally { await p.down(); }
      const after = snapshot(tb, haveNft);
      if (after !== clean) throw new Error(`mplb left residue after the flood run:\n${diffLines(clean, after)}`);
      log(`flood: ${flood.twoSubflows}/${flood.attempted} genuine connections with 2 subflows under ${flood.synsSent} SYNs (${flood.synRate.toFixed(0)}/s); without flood ${(flood.baseline * 100).toFixed(0)}%; max flows ${flood.maxFlows}/${flood.flowCap}`);
    }
  } finally {
    for (const c of servers) await stopChild(c).catch(() => undefined);
    for (const c of [...children]) c.kill('SIGKILL');
    if (tb) testbedDown(tb);
    cleanupTmp();
    process.removeListener('exit', cleanupTmp);
    for (const s of SIGNALS) process.removeListener(s, onSignal);
    const left = tb ? listNetns().filter((n) => n.startsWith(`mplb-${tb!.runId}-`)) : [];
    if (left.length) log(`WARNING: namespaces left behind: ${left.join(', ')}`);
  }
  log(`done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  return summarize(res, peers, absent, mplbLoop, joinCounters, flood, { runs, secs, rttSecs, quick });
}

function summarize(res: Record<PeerName, PeerRun[]>, peers: PeerName[], absent: string[], mplbLoop: Array<Record<string, number>>,
  joins: Record<string, Record<string, number>>, flood: FloodResult | undefined, o: { runs: number; secs: number; rttSecs: number; quick: boolean }): BenchResult[] {
  const out: BenchResult[] = [];
  const others = peers.filter((p) => p !== 'mplb');
  const absentNote = absent.length ? ` Absent peers: ${absent.join('; ')}.` : '';
  const noise = ` ${o.runs} run(s) per peer, alternating peer by peer on one testbed (rate limits off); the machine is shared with other jobs (2 cores), so values are noisy: median with [min-max].`;
  // The datapath mplb actually ran with (its default, or MPLB_DATAPATH from the environment), from its own stats.
  const l0 = mplbLoop[0];
  const dp = !l0 ? 'unknown' : l0.vnetHdrBytes > 0 ? `offload (IFF_VNET_HDR ${l0.vnetHdrBytes}-byte header, TUN offloads 0x${(l0.offloads ?? 0).toString(16)}, ${l0.queues ?? 1} queue(s))` : `plain (one packet per read, ${l0.queues ?? 1} queue(s))`;
  const rng = (xs: number[], f = (x: number) => String(Math.round(x))) => { const [a, b] = range(xs); return `${f(a)}-${f(b)}`; };
  const subflowText = (k: 'g1' | 'g8') => peers.map((p) => {
    const all = res[p].flatMap((r) => r[k].subflows);
    return `${p} ${all.filter((s) => s >= 2).length}/${all.length}`;
  }).join(', ');

  for (const [k, id, conns] of [['g1', 'e2e.goodput_mbps_1conn', 1], ['g8', 'e2e.goodput_mbps_8conn', 8]] as const) {
    if (!peers.includes('mplb')) break;
    const v = res.mplb.map((r) => r[k].mbps);
    const pe: Record<string, number> = {};
    for (const p of others) pe[p] = r1(median(res[p].map((r) => r[k].mbps)));
    if (pe.nft_dnat) pe.ratio_vs_nft_dnat = r3(median(v) / pe.nft_dnat);
    let split = '';
    if (k === 'g1' && peers.includes('nft_dnat')) {
      // nftables hashes each subflow on its own 5-tuple: the join reaches the connection's server only by chance.
      const two = res.nft_dnat.filter((r) => r.g1.subflows[0] >= 2).map((r) => r.g1.mbps), one = res.nft_dnat.filter((r) => r.g1.subflows[0] < 2).map((r) => r.g1.mbps);
      if (two.length) { pe.nft_dnat_when_2_subflows = r1(median(two)); pe.ratio_vs_nft_dnat_when_2_subflows = r3(median(v) / median(two)); }
      split = ` nft_dnat runs whose join reached the same server (2 subflows): ${two.length ? `${rng(two)} Mbit/s` : 'none'}; runs whose join was reset by the other server (1 subflow): ${one.length ? `${rng(one)} Mbit/s` : 'none'}.`;
    }
    const errs = peers.map((p) => `${p} ${res[p].reduce((a, r) => a + r[k].errors.length, 0)}`).join(', ');
    const ranges = peers.map((p) => `${p} ${rng(res[p].map((r) => r[k].mbps))}`).join(', ');
    out.push({
      id, value: r1(median(v)), unit: 'Mbit/s', target: '>= 50% of nft_dnat', peers: pe, spread: range(v).map(r1) as [number, number],
      note: `${conns} MPTCP connection(s) from the client (mplb's traffic client, ${o.secs} s, 128 KiB writes) to the sink on the servers through each peer; ` +
        `ranges Mbit/s: ${ranges}. Connections with 2 subflows (client's MPTCP_INFO): ${subflowText(k)}.${split} Connections that failed or timed out: ${errs}. mplb datapath ${dp}.${noise}${absentNote}`,
    });
  }

  if (peers.includes('mplb') && peers.includes('plain_routing')) {
    const pe: Record<string, number> = {};
    for (const p of peers) { pe[`${p}_p50_us`] = r1(median(res[p].map((r) => r.rtt.p50))); pe[`${p}_p99_us`] = r1(median(res[p].map((r) => r.rtt.p99))); }
    const diffs = res.mplb.map((r, i) => r.rtt.p50 - (res.plain_routing[i]?.rtt.p50 ?? NaN));
    const ranges = peers.map((p) => `${p} p50 ${rng(res[p].map((r) => r.rtt.p50))} p99 ${rng(res[p].map((r) => r.rtt.p99))}`).join('; ');
    out.push({
      id: 'e2e.rtt_p50_added_us', value: r1(pe.mplb_p50_us - pe.plain_routing_p50_us), unit: 'us', target: '<= 100', peers: pe, spread: range(diffs).map(r1) as [number, number],
      note: `TCP request/response ping-pong of 32-byte messages over one MPTCP connection to an echo server (${o.rttSecs} s per run, Node on both ends, first 200 discarded); ` +
        `value = median mplb p50 - median plain-routing p50; spread = range of per-run paired differences. Ranges us: ${ranges}.${noise}${absentNote}`,
    });
  }

  if (peers.includes('mplb')) {
    const v = res.mplb.map((r) => r.pps.pps);
    const pe: Record<string, number> = {};
    for (const p of others) pe[p] = Math.round(median(res[p].map((r) => r.pps.pps)));
    const det = peers.map((p) => `${p} ${rng(res[p].map((r) => r.pps.pps))} pkt/s, ${Math.round(median(res[p].map((r) => r.pps.bytesPerPacket)))} B/pkt, retrans ${(median(res[p].map((r) => r.pps.retransShare)) * 100).toFixed(2)}%`).join('; ');
    out.push({
      id: 'e2e.small_packet_pps', value: Math.round(median(v)), unit: 'packets/s', target: 'n/a (side by side)', peers: pe, spread: range(v).map(Math.round) as [number, number],
      note: `8 MPTCP connections each doing 64-byte TCP_NODELAY writes as fast as the sockets take them (client autocorking off) for ${o.secs} s, then reset; packets/s received by the balancer namespace on its two client links during that window ` +
        `(client->VIP data + ACKs; segments grow when the path backs up, see B/pkt). ${det}.${noise}${absentNote}`,
    });

    const pe2: Record<string, number> = {};
    const perGb = (r: PeerRun, f: 'machineCpuS' | 'procCpuS') => r.g8[f] / (r.g8.bytes / 1e9);
    if (peers.includes('haproxy_mptcpize')) pe2.haproxy_process = r3(median(res.haproxy_mptcpize.map((r) => perGb(r, 'procCpuS'))));
    for (const p of peers) pe2[`machine_total_${p}`] = r3(median(res[p].map((r) => perGb(r, 'machineCpuS'))));
    const v2 = res.mplb.map((r) => perGb(r, 'procCpuS'));
    out.push({
      id: 'e2e.cpu_s_per_gb', value: r3(median(v2)), unit: 'CPU s/GB', target: 'n/a (side by side)', peers: pe2, spread: range(v2).map(r3) as [number, number],
      note: `Measured over the 8-connection bulk runs. value = utime+stime of the mplb process (all threads, /proc/PID/stat) per GB delivered; haproxy_process likewise. ` +
        `The kernel peers work in softirq context not attributable to a PID, so machine_total_* gives the whole machine's busy CPU (/proc/stat, all cores: client, servers, ` +
        `balancer and unrelated jobs on this shared machine) per GB for every peer; compare those with each other, not with the process figures.${noise}${absentNote}`,
    });
  }

  if (flood) {
    out.push({
      id: 'flood.e2e_genuine_success_share', value: r3(flood.share), unit: 'share', target: '>= 0.99',
      peers: { share_without_flood: r3(flood.baseline), max_flows: flood.maxFlows, flow_cap: flood.flowCap, max_conns: flood.maxConns, conn_cap: flood.connCap, syns_sent: flood.synsSent, syn_rate_per_s: Math.round(flood.synRate) },
      note: `mplb only. ${flood.synsSent} raw-socket MP_CAPABLE SYNs from random sources in the client's /24 (random ports) at about ${Math.round(flood.synRate)}/s for ${flood.floodSeconds.toFixed(1)} s, ` +
        `while ${flood.attempted} genuine MPTCP connections (10 at a time, 1 s each, echo checked) ran from the client; share that completed with 2 subflows. ` +
        `Before the flood: ${(flood.baseline * 100).toFixed(0)}% of as many. Table peaks polled from request('stats') every 200 ms.` +
        (flood.errors.length ? ` Errors: ${flood.errors.slice(0, 3).join('; ')}.` : ''),
    });
  }
  if (mplbLoop.length) {
    const sum = (k: string) => mplbLoop.reduce((a, s) => a + (s[k] ?? 0), 0);
    const extra = ` mplb counters over the runs: dropped ${sum('dropped')}, write errors ${sum('writeErrors')}, read errors ${sum('readErrors')}, gso packets ${sum('gsoPackets')}.`;
    const jn = Object.entries(joins).map(([p, c]) => `${p} joins rx ${c.MPTcpExtMPJoinSynRx ?? 0}${c.lbJoinSynRx ? ` (+${c.lbJoinSynRx} at the balancer)` : ''}, no-token ${c.MPTcpExtMPJoinNoTokenFound ?? 0}, DSS-not-matching ${c.MPTcpExtDSSNotMatching ?? 0}`).join('; ');
    for (const r of out) if (r.id.startsWith('e2e.goodput')) r.note += `${extra} Server counters (all runs): ${jn}.`;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- standalone

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const rs = await runE2eBench({ quick: process.argv.includes('--quick') });
  const rows = rs.map((r) => [r.id, `${fmt(r.value)}${r.spread ? ` (${fmt(r.spread[0])}-${fmt(r.spread[1])})` : ''}`, r.unit, r.target, verdict(r), Object.entries(r.peers).map(([k, v]) => `${k}=${fmt(v)}`).join(' ')]);
  const head = ['id', 'value (range)', 'unit', 'target', 'verdict', 'peers (same run)'];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (row: string[]) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(w[i]))).join('  ');
  console.log(line(head));
  for (const row of rows) console.log(line(row));
  if (process.argv.includes('--json')) for (const r of rs) console.log(JSON.stringify(r));
  else for (const r of rs) console.log(`\n${r.id}: ${r.note ?? ''}`);
}
