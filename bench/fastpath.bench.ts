// The kernel fast path against its peers (issue 11), root only: iperf3 under mptcpize (a client nobody here wrote),
// 1 and 8 connections, on one testbed with rate limits off, modes alternated round by round (order reversed every
// other round): plain routing, nftables DNAT (every connection to server 1, so iperf3's control and data
// connections meet), HAProxy under mptcpize (balance source), mplb tun and mplb tc-bpf (policy hash-ip-pair: a
// client's connections reach one server). Also per mode: small packets (iperf3 TCP with an 88-byte MSS:
// packets/s through the balancer), TCP ping-pong RTT p50, machine CPU seconds per GB in the 8-connection run, and
// new MPTCP connections/s (the project's traffic client: 100 concurrent 1 KB connections). Plus the cost of the
// map updates per new connection (no traffic). Every process it starts is stopped by PID; the testbed is removed.
// Run: node dist/bench/fastpath.bench.js [--rounds 3] [--seconds 5] [--modes plain,nft,haproxy,tun,tc-bpf] [--json FILE]
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { testbedDown, testbedUp, type TestbedHandle } from '../src/testbed/testbed.js';
import { startBalancerProcess, type BalancerProcess } from '../src/testbed/balancer-process.js';
import { ipn, tryRun } from '../src/testbed/netns.js';
import { stopChild } from '../src/demo/demo.js';
import { fastpathCost } from './fastpath-cost.bench.js';

const IPERF = 5201, ECHO = 5202, SINK = 5203;
const NFT_TABLE = 'mplb_fp_bench';
const TRAFFIC = fileURLToPath(new URL('../src/traffic/cli.js', import.meta.url));
const TOOLS = fileURLToPath(new URL('./datapath-compare.js', import.meta.url));
type Mode = 'plain' | 'nft' | 'haproxy' | 'tun' | 'tc-bpf';
const ALL: Mode[] = ['plain', 'nft', 'haproxy', 'tun', 'tc-bpf'];
const log = (s: string) => process.stderr.write(`fastpath-bench: ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const children = new Set<ChildProcess>();

function nsRun(ns: string, cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(c);
    let stdout = '', stderr = '';
    c.stdout!.on('data', (d) => { stdout += d; });
    c.stderr!.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('close', (code) => { clearTimeout(t); children.delete(c); resolve({ code, stdout, stderr }); });
  });
}

function nsStart(ns: string, cmd: string, args: string[]): ChildProcess {
  const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(c);
  c.on('exit', () => children.delete(c));
  return c;
}


async function waitListen(ns: string, port: number, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(50)) {
    if (execFileSync('ip', ['netns', 'exec', ns, 'ss', '-Hltn'], { encoding: 'utf8' }).includes(`:${port} `)) return;
  }
  throw new Error(`nothing listens on ${port} in ${ns}`);
}

const CLK_TCK = 100;
function machineBusy(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) / CLK_TCK;
}

function rxStats(ns: string, devs: string[]): { packets: number; bytes: number } {
  const j = JSON.parse(ipn(ns, ['-j', '-s', 'link', 'show'])) as Array<{ ifname: string; stats64?: { rx: { packets: number; bytes: number } } }>;
  const ls = j.filter((l) => devs.includes(l.ifname));
  return { packets: ls.reduce((s, l) => s + (l.stats64?.rx.packets ?? 0), 0), bytes: ls.reduce((s, l) => s + (l.stats64?.rx.bytes ?? 0), 0) };
}

/** A device's gso_max_segs (veth default 65535). */
function gsoMaxSegs(ns: string, dev: string): number {
  const j = JSON.parse(ipn(ns, ['-j', '-d', 'link', 'show', 'dev', dev])) as Array<{ gso_max_segs?: number }>;
  return j[0]?.gso_max_segs ?? 65535;
}

function median(xs: number[]): number {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = s.length >> 1;
  return s.length & 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

interface Peer { up(): Promise<void>; down(): Promise<void>; stats?(): Promise<{ kernel: number; engine: number } | undefined> }

function peers(tb: TestbedHandle): Record<Mode, Peer> {
  const lb = tb.namespaces.balancer, s1 = tb.servers[0], vip = tb.vips[0];
  const servers = tb.servers.map((s) => s.addr);
  let hp: ChildProcess | undefined, bp: BalancerProcess | undefined;
  const ports = [IPERF, ECHO, SINK];
  const mplb = (datapath: 'tun' | 'tc-bpf'): Peer => ({
    async up() {
      const backends = servers.map((address) => ({ address }));
      bp = await startBalancerProcess(tb, { engine: { datapath, policy: 'hash-ip-pair', vips: ports.map((p) => ({ address: `${vip}:${p}`, backends })) } });
    },
    async down() { await bp?.stop(); bp = undefined; },
    async stats() {
      const s = await bp?.request('stats') as { loop: { fastpath?: { program: { packets: number } } }; engine: { counters: { packets_in: number } } } | undefined;
      return s ? { kernel: s.loop.fastpath?.program.packets ?? 0, engine: s.engine.counters.packets_in } : undefined;
    },
  });
  return {
    plain: {
      async up() { ipn(s1.ns, ['addr', 'add', `${vip}/32`, 'dev', 'lo']); ipn(lb, ['route', 'add', `${vip}/32`, 'via', s1.addr, 'dev', s1.link.peerDev]); },
      async down() { tryRun('ip', ['-n', lb, 'route', 'del', `${vip}/32`, 'via', s1.addr, 'dev', s1.link.peerDev]); tryRun('ip', ['-n', s1.ns, 'addr', 'del', `${vip}/32`, 'dev', 'lo']); },
    },
    nft: {
      async up() {
        // Every connection to server 1: nftables hashes subflows on their own, so only one server keeps joins right.
        const f = `/tmp/${NFT_TABLE}-${process.pid}.nft`;
        writeFileSync(f, `table ip ${NFT_TABLE} {\n  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr ${vip} meta l4proto tcp dnat to ${s1.addr}\n  }\n}\n`);
        execFileSync('ip', ['netns', 'exec', lb, 'nft', '-f', f], { timeout: 10000 });
      },
      async down() { tryRun('ip', ['netns', 'exec', lb, 'nft', 'delete', 'table', 'ip', NFT_TABLE]); tryRun('ip', ['netns', 'exec', lb, 'conntrack', '-F']); },
    },
    haproxy: {
      async up() {
        const f = `/tmp/mplb-fp-haproxy-${process.pid}.cfg`;
        const fe = (p: number) => `frontend f${p}\n  bind ${vip}:${p}\n  default_backend b${p}\nbackend b${p}\n  balance source\n${servers.map((a, i) => `  server s${i} ${a}:${p}`).join('\n')}\n`;
        writeFileSync(f, `global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n${ports.map(fe).join('')}`);
        ipn(lb, ['addr', 'add', `${vip}/32`, 'dev', 'lo']);
        ipn(lb, ['mptcp', 'limits', 'set', 'subflow', '2', 'add_addr_accepted', '2']);
        hp = nsStart(lb, 'mptcpize', ['run', 'haproxy', '-f', f, '-db']);
        await waitListen(lb, IPERF);
      },
      async down() { if (hp) await stopChild(hp); hp = undefined; tryRun('ip', ['-n', lb, 'addr', 'del', `${vip}/32`, 'dev', 'lo']); },
    },
    tun: mplb('tun'),
    'tc-bpf': mplb('tc-bpf'),
  };
}

interface Run { g1: number; g8: number; smallPps: number; /** Mean bytes per packet counted (Ethernet frames) in the small-packet run. */ smallBytes: number; /** Machine CPU µs per packet counted there (every process: client, servers, balancer). */ smallCpuUs: number; rttP50Us: number; cpuSecPerGB: number; cps: number; fastShare?: number }

async function iperf(tb: TestbedHandle, args: string[], seconds: number): Promise<{ bps: number; bytes: number }> {
  const r = await nsRun(tb.namespaces.client, 'mptcpize', ['run', 'iperf3', '-c', tb.vips[0], '-p', String(IPERF), '-t', String(seconds), '-J', ...args], (seconds + 20) * 1000);
  try {
    const j = JSON.parse(r.stdout) as { end?: { sum_received?: { bits_per_second: number; bytes: number } }; error?: string };
    if (!j.end?.sum_received) throw new Error(j.error ?? 'no result');
    return { bps: j.end.sum_received.bits_per_second, bytes: j.end.sum_received.bytes };
  } catch (e) {
    log(`iperf3 ${args.join(' ')} failed: ${(e as Error).message} ${r.stderr.slice(0, 200)}`);
    return { bps: NaN, bytes: NaN };
  }
}

async function measure(tb: TestbedHandle, seconds: number, lbStats: () => Promise<{ kernel: number; engine: number } | undefined>): Promise<Run> {
  const g1 = await iperf(tb, ['-P', '1'], seconds);
  let smallBytes = NaN, smallCpuUs = NaN;
  const s0 = await lbStats();
  const busy0 = machineBusy();
  const g8 = await iperf(tb, ['-P', '8'], seconds);
  const cpu = machineBusy() - busy0;
  const s1 = await lbStats();
  // Small packets: plain TCP (not MPTCP: no DSS on every segment) with an 88-byte MSS (-M). The MSS alone is not
  // enough: over veth the client's stack sends GSO packets of up to 64 KB (many 88-byte segments in one skb, one
  // packet on the balancer), so the client's links get gso_max_segs 1 for this run: every packet the balancer
  // forwards is one segment. Counted at the balancer's client-side links; a failed iperf3 run counts as no figure.
  const devs = tb.client.links.map((l) => l.peerDev);
  const cdevs = tb.client.links.map((l) => l.dev);
  const segs0 = cdevs.map((d) => gsoMaxSegs(tb.namespaces.client, d));
  let smallPps = NaN;
  try {
    for (const d of cdevs) ipn(tb.namespaces.client, ['link', 'set', 'dev', d, 'gso_max_segs', '1']);
    const r0 = rxStats(tb.namespaces.balancer, devs), t0 = Date.now(), b0 = machineBusy();
    const sp = await nsRun(tb.namespaces.client, 'iperf3', ['-c', tb.vips[0], '-p', String(IPERF), '-t', '3', '-N', '-M', '88', '-J'], 25000);
    const r1 = rxStats(tb.namespaces.balancer, devs);
    smallCpuUs = (machineBusy() - b0) * 1e6 / Math.max(1, r1.packets - r0.packets);
    smallPps = (r1.packets - r0.packets) / ((Date.now() - t0) / 1000);
    smallBytes = (r1.bytes - r0.bytes) / Math.max(1, r1.packets - r0.packets);
    if (sp.code !== 0) { log(`small-packet iperf3 failed (${sp.code}): ${sp.stderr.slice(0, 200)}`); smallPps = NaN; }
  } finally {
    cdevs.forEach((d, i) => tryRun('ip', ['-n', tb.namespaces.client, 'link', 'set', 'dev', d, 'gso_max_segs', String(segs0[i])]));
  }
  const pp = await nsRun(tb.namespaces.client, process.execPath, [TOOLS, 'pingpong', '--host', tb.vips[0], '--port', String(ECHO), '--count', '2000'], 40000);
  let rtt = NaN;
  try { rtt = (JSON.parse(pp.stdout.trim().split('\n').pop()!) as { p50Us: number }).p50Us; } catch { log(`pingpong failed: ${pp.stderr.slice(0, 200)}`); }
  const c0 = Date.now();
  const cr = await nsRun(tb.namespaces.client, process.execPath, [TRAFFIC, 'client', '--host', tb.vips[0], '--port', String(SINK), '--connections', '100', '--bytes', '1K', '--timeout-ms', '20000', '--json'], 30000);
  let cps = NaN;
  try { const j = JSON.parse(cr.stdout) as { ok: boolean; durationMs: number }; cps = j.ok ? 100 / (j.durationMs / 1000) : NaN; } catch { cps = NaN; }
  if (!Number.isFinite(cps)) log(`connection-rate client failed after ${Date.now() - c0} ms: ${cr.stderr.slice(0, 200)}`);
  const run: Run = { g1: g1.bps / 1e9, g8: g8.bps / 1e9, smallPps, smallBytes, smallCpuUs, rttP50Us: rtt, cpuSecPerGB: cpu / (g8.bytes / 1e9), cps };
  if (s0 && s1) run.fastShare = (s1.kernel - s0.kernel) / Math.max(1, s1.kernel - s0.kernel + s1.engine - s0.engine);
  return run;
}

/**
 * The map writer's cost per connection, no traffic: n plain TCP handshakes and FINs through a real engine, and the
 * time of FlowMap.apply only (the worker's batched bpf_map_update_batch / bpf_map_delete_batch calls), per connection.
 */
export async function mapUpdateCost(): Promise<{ usPerConnection: number; n: number }> {
  const { loadFastpath } = await import('../src/fastpath/loader.js');
  const { FlowMap } = await import('../src/fastpath/flow-map.js');
  const { Engine } = await import('../src/engine/engine.js');
  const { validateEngineConfig } = await import('../src/engine/config.js');
  const { buildTcpPacket } = await import('../src/wire/build.js');
  const n = 20000, per = 256;
  const h = loadFastpath({ maxEntries: 2 * n, priority: 1 });
  const e = new Engine(validateEngineConfig({ vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2' }] }], tables: { maxFlows: 2 * n, maxConnections: 1024 } }));
  e.offload.enabled = true;
  const map = new FlowMap(h.flowsFd, e);
  const pkt = (src: string, dst: string, sport: number, dport: number, flags: number) => buildTcpPacket({ src, dst, sport, dport, flags });
  let ns = 0n;
  try {
    // In groups of `per` connections, as the worker sees them between batches under a burst.
    for (const closing of [false, true]) {
      for (let g = 0; g < n; g += per) {
        for (let i = g; i < g + per && i < n; i++) {
          const client = `198.18.${4 + (i >> 14)}.${2 + ((i >> 8) & 63)}`, cp = 1024 + (i & 0xff) * 200 + (i >> 14);
          if (!closing) {
            const syn = pkt(client, '198.18.100.1', cp, 80, 0x02);
            e.process(syn, 0, syn.length, 1000);
            const be = `${syn[16]}.${syn[17]}.${syn[18]}.${syn[19]}`;
            const sa = pkt(be, client, 80, cp, 0x12);
            e.process(sa, 0, sa.length, 1000);
          }
          const last = pkt(client, '198.18.100.1', cp, 80, closing ? 0x11 : 0x10);
          e.process(last, 0, last.length, 1000);
        }
        const t0 = process.hrtime.bigint();
        map.apply(1000);
        ns += process.hrtime.bigint() - t0;
      }
    }
    if (map.counters.inserted !== n || map.counters.removed !== n) throw new Error(`map writer: ${JSON.stringify(map.counters)}, expected ${n} inserted and removed`);
    return { usPerConnection: Number(ns) / 1000 / n, n };
  } finally {
    h.close();
  }
}

export interface FastpathBenchResult {
  machine: Record<string, string>; rounds: number; seconds: number; mapUpdateUsPerConnection: number;
  /** The program alone, per packet kind (bench/fastpath-cost.bench.ts: BPF_PROG_TEST_RUN, median of the kernel's means). */
  programNs: Record<string, number>;
  runs: Record<string, Run[]>; medians: Record<string, Record<string, number>>;
}

export async function runFastpathBench(o: { rounds: number; seconds: number; modes?: Mode[] }): Promise<FastpathBenchResult> {
  const { rounds, seconds } = o;
  const modes = o.modes ?? ALL;
  for (const m of modes) if (!ALL.includes(m)) throw new Error(`unknown mode ${m}`);
  const cost = await mapUpdateCost();
  const programNs = fastpathCost()[0].nsPerPacket;
  log(`program per packet: ${Object.entries(programNs).map(([k, v]) => `${k} ${v} ns`).join(', ')}`);
  log(`map writer: ${cost.usPerConnection.toFixed(2)} us per connection (its two entries inserted and removed, batches of 256, ${cost.n} connections)`);
  const tb = testbedUp({ mode: 'balancer', servers: 2, rateMbit: 0, runId: `fa57${randomBytes(1).toString('hex')}` });
  const servers: ChildProcess[] = [];
  const stopAll = () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } };
  process.on('exit', stopAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => { stopAll(); testbedDown(tb); process.exit(1); });
  const res: Record<string, Run[]> = Object.fromEntries(modes.map((m) => [m, []]));
  try {
    for (const s of tb.servers) {
      servers.push(nsStart(s.ns, 'mptcpize', ['run', 'iperf3', '-s', '-p', String(IPERF)]));
      servers.push(nsStart(s.ns, process.execPath, [TOOLS, 'echo-server', '--port', String(ECHO)]));
      servers.push(nsStart(s.ns, process.execPath, [TRAFFIC, 'server', '--port', String(SINK)]));
    }
    for (const s of tb.servers) for (const p of [IPERF, ECHO, SINK]) await waitListen(s.ns, p);
    const ps = peers(tb);
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 ? [...modes].reverse() : modes;
      for (const m of order) {
        const p = ps[m];
        await p.up();
        await sleep(300);
        try {
          // mplb modes: the share of packets NATed in the kernel over the 8-connection run, from mplb's own stats.
          const run = await measure(tb, seconds, async () => p.stats?.());
          res[m].push(run);
          log(`round ${r + 1} ${m}: 1 conn ${run.g1.toFixed(2)} Gbit/s, 8 conn ${run.g8.toFixed(2)}, small ${Math.round(run.smallPps)} pkt/s (${Math.round(run.smallBytes)} B each, ${run.smallCpuUs.toFixed(1)} machine CPU µs each), rtt p50 ${run.rttP50Us?.toFixed(0)} us, ${run.cpuSecPerGB.toFixed(2)} CPU s/GB, ${run.cps.toFixed(0)} conn/s${run.fastShare !== undefined ? `, fast path share ${run.fastShare.toFixed(3)}` : ''}`);
        } finally {
          await p.down();
        }
      }
    }
  } finally {
    for (const c of servers) await stopChild(c);
    testbedDown(tb);
  }
  const med = (m: string, k: keyof Run) => median(res[m].map((x) => x[k] as number));
  const summary = Object.fromEntries(modes.map((m) => [m, { g1: med(m, 'g1'), g8: med(m, 'g8'), smallPps: med(m, 'smallPps'), smallCpuUs: med(m, 'smallCpuUs'), rttP50Us: med(m, 'rttP50Us'), cpuSecPerGB: med(m, 'cpuSecPerGB'), cps: med(m, 'cps'), fastShare: med(m, 'fastShare') }]));
  return { machine: { kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(), loadavgAfter: readFileSync('/proc/loadavg', 'utf8').trim() }, rounds, seconds, mapUpdateUsPerConnection: cost.usPerConnection, programNs, runs: res, medians: summary };
}

/** The BENCHMARKS.md section (between markers, so that `npm run bench -- --only fastpath` replaces it alone). */
export const FASTPATH_BEGIN = '<!-- fastpath section: written by npm run bench -- --only fastpath -->';
export const FASTPATH_END = '<!-- end of fastpath section -->';
export function fastpathSection(r: FastpathBenchResult, when: string): string {
  const rng = (m: string, k: keyof Run, d = 2) => {
    const xs = r.runs[m].map((x) => x[k] as number).filter(Number.isFinite);
    if (!xs.length) return 'n/a';
    const f = (x: number) => x.toFixed(d);
    return `${f(median(xs))} [${f(Math.min(...xs))}-${f(Math.max(...xs))}]`;
  };
  const names: Record<string, string> = { plain: 'plain routing', nft: 'nftables DNAT (all to server 1)', haproxy: 'HAProxy under mptcpize', tun: 'mplb tun', 'tc-bpf': 'mplb tc-bpf' };
  const rows = Object.keys(r.runs).map((m) => `| ${names[m]} | ${rng(m, 'g1')} | ${rng(m, 'g8')} | ${rng(m, 'smallPps', 0)} | ${rng(m, 'smallCpuUs', 1)} | ${rng(m, 'rttP50Us', 0)} | ${rng(m, 'cpuSecPerGB')} | ${rng(m, 'cps', 0)} | ${m === 'tc-bpf' || m === 'tun' ? rng(m, 'fastShare', 3) : '-'} |`);
  const med = r.medians, ratio = (a: string, b: string, k: string) => (med[a] && med[b] ? (med[a][k] / med[b][k]).toFixed(2) : 'n/a');
  const t = 'tc-bpf';
  const added = med[t] && med.nft ? (med[t].rttP50Us - med.nft.rttP50Us).toFixed(0) : 'n/a';
  return `${FASTPATH_BEGIN}
## The kernel fast path (bench/fastpath.bench.ts, issue 11)

Measured ${when}: ${r.rounds} rounds of ${r.seconds} s per mode, modes alternated (order reversed every other round),
one testbed (client with two links, balancer namespace, two servers, real Linux MPTCP, rate limits off). Medians
[min-max]. Load average after the run: ${r.machine.loadavgAfter} (a shared 2-core machine: other sessions ran
their tests meanwhile). Rerun: \`npm run bench -- --only fastpath\` (root; iperf3, mptcpd, haproxy, nftables).

| mode | 1 conn Gbit/s | 8 conn Gbit/s | small packets/s | machine CPU µs per small packet | RTT p50 µs | machine CPU s/GB | MPTCP conn/s | fast path share |
|---|---|---|---|---|---|---|---|---|
${rows.join('\n')}

mplb tc-bpf against its targets (ratios of medians): ${ratio(t, 'nft', 'g1')}x / ${ratio(t, 'nft', 'g8')}x nftables DNAT (target 0.95x) and
${ratio(t, 'plain', 'g1')}x / ${ratio(t, 'plain', 'g8')}x plain routing (target 0.9x) with 1 / 8 connections; small packets ${ratio(t, 'nft', 'smallPps')}x nftables
(target 1.0x); added RTT p50 over nftables ${added} µs (target <= 20); CPU per GB ${ratio(t, 'nft', 'cpuSecPerGB')}x nftables' (target <= 1).
The small-packet rate is set by the sender here (one iperf3 stream, one segment per packet, client, balancer and
servers on 2 cores): mplb tun reached ${med.tun ? Math.round(med.tun.smallPps) : 'n/a'} packets/s in the same run, so that column cannot tell the balancers apart. The
machine CPU per small packet can: mplb tc-bpf ${ratio(t, 'nft', 'smallCpuUs')}x nftables', mplb tun ${ratio('tun', 'nft', 'smallCpuUs')}x.
The map writer's cost per connection (its two entries inserted and later removed, FlowMap.apply on bursts of 256
connections: one bpf_map_update_batch / bpf_map_delete_batch call each, no traffic): ${r.mapUpdateUsPerConnection.toFixed(2)} µs.
The program alone per packet (BPF_PROG_TEST_RUN in a namespace of its own, FIB answer complete, 200 runs per skb,
median of 2000 calls; \`node dist/bench/fastpath-cost.bench.js\`, which also compares builds with --object):
${Object.entries(r.programNs ?? {}).map(([k, v]) => `${k.replace(/_/g, ' ')} ${v} ns`).join(', ')}.

Read with care. On this shared machine the spread between rounds of one mode (up to 1.7x) is larger than the
differences between plain routing, nftables DNAT and mplb tc-bpf, so a ratio above 1 means "no measurable cost", not
"faster than routing". Small packets: plain-TCP iperf3 with an 88-byte MSS (-M 88) for 3 s, with the client's links set to gso_max_segs 1
(without it the client's stack hands veth GSO packets of many segments, which the balancer forwards as one: earlier
figures in this file counted those, not small packets); packets received on the balancer's client-side links per
second (the client's data segments; the servers' ACKs arrive on the other side), mean frame size ${Math.round(median(Object.values(r.runs).flat().map((x) => x.smallBytes)))} bytes.
The connections/s column is bounded by the traffic client (one Node process opening 100 connections), not by a
balancer; the engine's own rate is engine.new_mptcp_conns_per_s above, and the fast path adds the map writer's cost.

How: goodput is iperf3 3.12 under \`mptcpize run\` (client and servers), \`-P 1\` and \`-P 8\`, the receiver's
sum. iperf3's control and data connections must reach one server: nftables DNATs everything to server 1, HAProxy
uses \`balance source\`, mplb uses policy \`hash-ip-pair\` (client and VIP addresses). Small packets: plain-TCP
iperf3 with an 88-byte MSS (-M 88) for 3 s, client links at gso_max_segs 1, packets counted on the balancer's client-side links. RTT: a
TCP ping-pong of 2000 exchanges (bench/datapath-compare.js pingpong). CPU: whole-machine busy time during the
8-connection run over the GB it moved (includes client, servers and other tenants). Connections/s: the project's
traffic client opening 100 concurrent MPTCP connections of 1 KB each (two subflows each), over its wall time.
The fast path share is the kernel program's NATed packets over those plus the engine's, during the 8-connection run.
${FASTPATH_END}`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, seconds: { type: 'string', default: '5' }, modes: { type: 'string', default: ALL.join(',') }, json: { type: 'string' } } });
  runFastpathBench({ rounds: Number(values.rounds), seconds: Number(values.seconds), modes: values.modes!.split(',') as Mode[] }).then((out) => {
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 2));
  }, (e) => { process.stderr.write(`fastpath-bench: ${(e as Error).stack}\n`); process.exitCode = 1; });
}
