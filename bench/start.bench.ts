// Start-time benchmark (root, Linux): `mplb run` with 2,000 VIPs, timed from outside the process, from the spawn of
// `ip netns exec NS node dist/src/cli/main.js run ...` to its "ready" line on stdout. mplb prints that line only when
// every VIP's route is in, the packet worker has built the engine and is polling the TUN, and the admin API listens.
// After each ready line this bench checks from outside that the last VIP's route is there and that the TUN is up,
// then stops mplb with SIGTERM and checks that it left nothing behind (the next run starts from the same state).
//
// The namespace (mpstart-<hex>-bench) is made for this run only and removed on exit, also on failure. No traffic.
//
//   node dist/bench/start.bench.js [--runs N] [--vips N] [--write] [--compare OTHER/dist/src/cli/main.js [--compare-label TEXT]]
//
// --write puts the figures in BENCHMARKS.md's start section (between its markers); without it they are printed only.
// --compare: also time another build of mplb (e.g. a checkout of the commit before a change), alternating run by run
// with this one in the same namespace, so that both see the same load on a shared machine.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const arg = (name: string, d: number) => { const i = process.argv.indexOf(name); return i >= 0 ? Number(process.argv[i + 1]) : d; };
const RUNS = arg('--runs', 7);
const N_VIPS = arg('--vips', 2000);
const WRITE = process.argv.includes('--write');
const COMPARE = process.argv.includes('--compare') ? path.resolve(process.argv[process.argv.indexOf('--compare') + 1]) : undefined;
const COMPARE_LABEL = process.argv.includes('--compare-label') ? process.argv[process.argv.indexOf('--compare-label') + 1] : COMPARE;
const TARGET_MS = 2000;
export const START_BEGIN = '<!-- start section: written by node dist/bench/start.bench.js --write -->';
export const START_END = '<!-- end of start section -->';

const NS = `mpstart-${randomBytes(3).toString('hex')}-bench`;
const vipOf = (i: number) => `198.19.${i >> 8}.${i & 255}`;
const children = new Set<ChildProcess>();
let made = false;
function teardown(): void {
  for (const c of children) if (c.pid && c.exitCode === null && c.signalCode === null) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  if (made) { made = false; try { execFileSync('ip', ['netns', 'del', NS], { stdio: 'ignore' }); } catch { /* not there */ } }
}

const ipNs = (args: string[]) => execFileSync('ip', ['-n', NS, ...args], { encoding: 'utf8', timeout: 20000 });
const snapshot = () => [ipNs(['-4', 'route', 'show', 'table', 'all']), ipNs(['-4', 'rule', 'show']), ipNs(['-o', 'link', 'show']).replace(/\d+: /g, ''),
  execFileSync('ip', ['netns', 'exec', NS, 'cat', '/proc/sys/net/ipv4/ip_forward'], { encoding: 'utf8' })].join('\n');

interface One { readyMs: number; inside: Record<string, number>; cpuMs: number }

/** CPU time (ms) of a process so far: its threads (the packet worker too) and its children it has waited for (ip). */
function cpuMsOf(pid: number): number {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const v = f.slice(f.lastIndexOf(')') + 2).split(' ').map(Number);
  // Fields 14-17 (utime, stime, cutime, cstime), counted from field 3 after the command name.
  return ((v[11] + v[12] + v[13] + v[14]) * 1000) / CLK_TCK;
}
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

async function once(file: string, main = MAIN): Promise<One> {
  const t0 = performance.now();
  const child = spawn('ip', ['netns', 'exec', NS, process.execPath, main, 'run', '--config', file, '--control-stdin'], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => { children.delete(child); r(code); }));
  const ready = await new Promise<{ ms: number; line: string }>((resolve, reject) => {
    readline.createInterface({ input: child.stdout! }).on('line', (l) => { if (l.includes('"ready"')) resolve({ ms: performance.now() - t0, line: l }); });
    void exited.then((c) => reject(new Error(`mplb run exited (${c}) before ready: ${err.slice(0, 1000)}`)));
  });
  const cpuMs = cpuMsOf(child.pid!);
  // Checked from outside, after the line: every VIP routed into the TUN, the TUN up.
  const routes = ipNs(['-4', 'route', 'show', 'dev', 'mplb0']).split('\n').filter((l) => /^198\.19\./.test(l)).length;
  if (routes !== N_VIPS) throw new Error(`ready with ${routes} of ${N_VIPS} VIP routes`);
  if (!/state (UP|UNKNOWN)/.test(ipNs(['link', 'show', 'mplb0']))) throw new Error('ready but the TUN is not up');
  const inside = (JSON.parse(ready.line) as { startMs: Record<string, number> }).startMs;
  child.kill('SIGTERM');
  const code = await exited;
  if (code !== 0) throw new Error(`mplb run exited ${code} after SIGTERM: ${err.slice(0, 1000)}`);
  return { readyMs: ready.ms, inside, cpuMs };
}

/** 1-minute load averages at the start and the end of the runs (the machine is shared). */
const loads: number[] = [];
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };

export async function runStartBench(): Promise<{ readyMs: number[]; inside: Array<Record<string, number>>; execMs: number[]; cpuMs: number[]; other?: number[]; otherCpuMs?: number[] }> {
  if (process.getuid?.() !== 0) throw new Error('the start bench needs root (a network namespace and a TUN device)');
  process.on('exit', teardown);
  for (const s of ['SIGINT', 'SIGTERM'] as const) process.on(s, () => { teardown(); process.exit(130); });
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mpstart-bench-'));
  process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));
  const file = path.join(tmp, 'mplb.yaml');
  // The lifecycle e2e test's config: 2,000 VIPs over 200 backend pairs, default Maglev tables (65537 slots).
  fs.writeFileSync(file, stringify({
    device: { name: 'mplb0', stateFile: path.join(tmp, 'state.json') },
    vips: Array.from({ length: N_VIPS }, (_, i) => ({ address: `${vipOf(i)}:80`, backends: [{ address: `198.18.${i % 200}.2` }, { address: `198.18.${i % 200}.3` }] })),
    tables: { maxFlows: 4096, maxConnections: 2048 },
    admin: { address: '127.0.0.1', port: 0, token: 'start-bench-token-0d1f' },
    log: { level: 'warn' },
  }));
  execFileSync('ip', ['netns', 'add', NS]);
  made = true;
  ipNs(['link', 'set', 'lo', 'up']);
  const clean = snapshot();
  // What `ip netns exec` + node's own start cost before mplb's first line (a floor no change to mplb can remove).
  const execMs: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    execFileSync('ip', ['netns', 'exec', NS, process.execPath, '-e', '0']);
    execMs.push(performance.now() - t);
  }
  loads.push(os.loadavg()[0]);
  const readyMs: number[] = [], inside: Array<Record<string, number>> = [], other: number[] = [], cpuMs: number[] = [], otherCpuMs: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    // Alternating with the other build (if any), which goes first in odd runs.
    for (const main of COMPARE ? (i % 2 ? [COMPARE, MAIN] : [MAIN, COMPARE]) : [MAIN]) {
      const r = await once(file, main);
      const who = main === MAIN ? 'this build' : main;
      if (snapshot() !== clean) throw new Error(`run ${i + 1} of ${who} left something behind after its SIGTERM`);
      if (main === MAIN) { readyMs.push(r.readyMs); inside.push(r.inside); cpuMs.push(r.cpuMs); } else { other.push(r.readyMs); otherCpuMs.push(r.cpuMs); }
      process.stderr.write(`start bench: run ${i + 1}/${RUNS} (${who}): ready after ${r.readyMs.toFixed(0)} ms, CPU ${r.cpuMs.toFixed(0)} ms; mplb's own figures (ms): ${JSON.stringify(r.inside)}\n`);
    }
  }
  loads.push(os.loadavg()[0]);
  teardown();
  return { readyMs, inside, execMs, cpuMs, ...(COMPARE ? { other, otherCpuMs } : {}) };
}

function section(r: Awaited<ReturnType<typeof runStartBench>>): string {
  const m = median(r.readyMs);
  const keys = Object.keys(r.inside[0] ?? {});
  const parts = keys.map((k) => `${k} ${median(r.inside.map((x) => x[k])).toFixed(0)}`).join(', ');
  let head = '';
  try { head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim(); } catch { /* not a checkout */ }
  return `${START_BEGIN}
## Start time: \`mplb run\` with ${N_VIPS} VIPs (bench/start.bench.ts)

| id | value | target | verdict |
|---|---|---|---|
| \`start.ready_ms_${N_VIPS}_vips\` | ${m.toFixed(0)} ms (${Math.min(...r.readyMs).toFixed(0)}-${Math.max(...r.readyMs).toFixed(0)}) | <= ${TARGET_MS} ms | ${m <= TARGET_MS ? 'met' : 'missed'} |

Measured (commit ${head || 'unknown'}, ${new Date().toISOString()}, ${os.cpus().length} cores, Node ${process.version}, 1-minute load average
${loads.map((x) => x.toFixed(1)).join(' at the start, ')} at the end: the machine is shared with other jobs) as the wall time from the
spawn of \`ip netns exec NS node dist/src/cli/main.js run --config FILE --control-stdin\` to its \`ready\` line, read by
the parent (median of ${r.readyMs.length} runs, min-max in parentheses; all runs: ${r.readyMs.map((x) => x.toFixed(0)).join(', ')} ms). The line comes
after every VIP's route is in, the packet worker has built the engine and polls the TUN, and the admin API listens; the
bench checks the ${N_VIPS} routes and the TUN from outside after each line, then sends SIGTERM and checks that nothing is
left. Config: the lifecycle e2e test's (${N_VIPS} VIPs over 200 backend pairs, 65537-slot Maglev tables). Of that,
\`ip netns exec\` + an empty node takes ${median(r.execMs).toFixed(0)} ms (${r.execMs.map((x) => x.toFixed(0)).join(', ')}). mplb's own split (medians, ms from its
first line; the routes go in during the data plane's start, so routesMs overlaps dataplaneMs): ${parts}. CPU time of the
mplb process until the line (its threads and the ip processes it waited for, from /proc/PID/stat; less sensitive to the
load than wall time): median ${median(r.cpuMs).toFixed(0)} ms (${Math.min(...r.cpuMs).toFixed(0)}-${Math.max(...r.cpuMs).toFixed(0)}).${r.other ? `

Alternated run by run (the same namespace and config, either first in turn) with ${COMPARE_LABEL}: ready after
${median(r.other).toFixed(0)} ms (${Math.min(...r.other).toFixed(0)}-${Math.max(...r.other).toFixed(0)}; all runs: ${r.other.map((x) => x.toFixed(0)).join(', ')} ms), CPU ${median(r.otherCpuMs!).toFixed(0)} ms (${Math.min(...r.otherCpuMs!).toFixed(0)}-${Math.max(...r.otherCpuMs!).toFixed(0)}).` : ''}

What the start does now (docs/design.md): the packet worker starts before the config is read; config files in the plain
YAML subset are read by src/control/yaml-subset.ts (the yaml library is loaded only for other files); the routes go in
while the worker builds the engine; Maglev tables with one weight and under 16 backends are built in closed form (about
2x faster for backend pairs); ioredis loads only with a token store; VIP lookup at build and IPv4 parsing are linear.

Rerun (root): \`npm run build && node dist/bench/start.bench.js [--runs N] [--write] [--compare OTHER/dist/src/cli/main.js --compare-label TEXT]\`.
${START_END}`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  runStartBench().then((r) => {
    const s = section(r);
    process.stdout.write(`${s}\n`);
    if (WRITE) {
      const f = `${ROOT}BENCHMARKS.md`;
      const md = fs.readFileSync(f, 'utf8');
      const a = md.indexOf(START_BEGIN), b = md.indexOf(START_END);
      fs.writeFileSync(f, a >= 0 && b > a ? md.slice(0, a) + s + md.slice(b + START_END.length) : `${md.trimEnd()}\n\n${s}\n`);
    }
  }, (e: Error) => { process.stderr.write(`start bench: ${e.stack ?? e.message}\n`); teardown(); process.exit(1); });
}
