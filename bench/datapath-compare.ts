#!/usr/bin/env node
// Data path benchmark (root, Linux): old vs new TUN path of `mplb run` on a testbed with rate limits off.
// Subcommands:
//   run [--rounds N] [--modes plain,offload,...] [--seconds S] [--pings N] [--servers N] [--bulk 0] [--out FILE]
//       builds a testbed (and a noBalancer one for the kernel-routing ceiling), then per round runs every mode in
//       turn (order reversed every other round): 1 MPTCP connection, 8 MPTCP connections, a TCP ping-pong.
//       Mode syntax: kernel | nft | plain | offload[:q=N][:spin=US]. kernel: VIP on server 1, plain routing
//       (a second testbed); nft: nftables DNAT VIP -> server 1 in the balancer namespace (conntrack NATs replies).
//   echo-server --port P            TCP echo (in a server namespace)
//   pingpong --host H --port P [--count N] [--size B]   request/response RTTs, prints JSON
//   micro                           call overhead: koffi read/write vs fs.readSync/writeSync (no network)
//   lb --config JSON --queues N [--spin US] [--vnet]   packet loop + routes (in the balancer namespace)
// Everything runs inside namespaces the testbed makes (mplb-<runId>-*), torn down on exit or failure.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = fileURLToPath(import.meta.url);
const trafficCli = fileURLToPath(new URL('../src/traffic/cli.js', import.meta.url));
const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------- echo server and ping-pong client ----------------

async function echoServer(port: number): Promise<void> {
  const srv = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('data', (d) => s.write(d));
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => srv.listen(port, r));
  out({ event: 'listening', port });
  const quit = () => { srv.close(); process.exit(0); };
  process.on('SIGTERM', quit);
  process.on('SIGINT', quit);
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function pingpong(host: string, port: number, count: number, size: number): Promise<void> {
  const s = net.connect({ host, port });
  s.setNoDelay(true);
  await new Promise<void>((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); setTimeout(() => reject(new Error('connect timeout')), 5000); });
  const payload = Buffer.alloc(size, 0x61);
  const rtts: number[] = [];
  let got = 0;
  let t0 = 0;
  let done: (() => void) | undefined;
  s.on('data', (d) => {
    got += d.length;
    if (got >= size) {
      got -= size;
      rtts.push(Number(process.hrtime.bigint() - BigInt(t0)) / 1000);
      done?.();
    }
  });
  const deadline = Date.now() + 30000;
  for (let i = 0; i < count + 50 && Date.now() < deadline; i++) {
    await new Promise<void>((resolve) => {
      done = resolve;
      t0 = Number(process.hrtime.bigint());
      s.write(payload);
    });
  }
  s.destroy();
  const r = rtts.slice(50).sort((a, b) => a - b); // the first 50 warm up
  out({ count: r.length, p50Us: quantile(r, 0.5), p90Us: quantile(r, 0.9), p99Us: quantile(r, 0.99), minUs: r[0] });
}

// ---------------- lb: packet loop with any shape ----------------

async function lbRunner(values: Record<string, string | boolean | undefined>): Promise<void> {
  const { startPacketLoop } = await import('../src/dataplane/packet-loop.js');
  const { installRoutes } = await import('../src/dataplane/routes.js');
  const { validateRunConfig } = await import('../src/control/run-config.js');
  const cfg = validateRunConfig(JSON.parse(String(values.config)));
  const loop = await startPacketLoop({
    tunName: cfg.device.name,
    mtu: cfg.device.mtu,
    txQueueLen: 4000,
    engine: cfg.engine,
    vnetHdr: values.vnet === true,
    queues: Number(values.queues ?? 1),
    spinUs: Number(values.spin ?? 0),
  });
  const vips = [...new Set(cfg.engine.vips.map((v) => v.address.replace(/:\d+$/, '')))];
  const backends = [...new Set(cfg.engine.vips.flatMap((v) => v.backends.map((b) => b.address)))];
  const routes = await installRoutes({ tunName: loop.tunName, vips, backends });
  process.on('exit', () => routes.undo());
  out({ event: 'ready', pid: process.pid });
  const stop = async () => { routes.undo(); await loop.stop(); process.exit(0); };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (l) => {
    if (l.trim() === 'stats') out({ event: 'stats', value: { loop: loop.stats(), engine: loop.engine.stats() } });
  });
}

// ---------------- micro: per-call overhead ----------------

async function micro(): Promise<void> {
  const koffi = (await import('koffi')).default ?? (await import('koffi'));
  const lib = koffi.load('libc.so.6');
  const kread = lib.func('long read(int fd, void *buf, unsigned long n)');
  const kwrite = lib.func('long write(int fd, const void *buf, unsigned long n)');
  const kpipe = lib.func('int pipe2(_Out_ int *fds, int flags)');
  const kgetppid = lib.func('int getppid()');
  const zero = fs.openSync('/dev/zero', 'r');
  const nul = fs.openSync('/dev/null', 'w');
  const fds = [0, 0];
  kpipe(fds, 0o4000 /* O_NONBLOCK */);
  const b64 = new Uint8Array(64), b64k = new Uint8Array(65536);
  const N = 200000;
  const time = (f: () => void, n = N) => { for (let i = 0; i < 1000; i++) f(); const t = process.hrtime.bigint(); for (let i = 0; i < n; i++) f(); return Number(process.hrtime.bigint() - t) / n; };
  const res: Record<string, number> = {
    koffiGetppidNs: time(() => kgetppid()),
    koffiRead64Ns: time(() => kread(zero, b64, 64)),
    fsReadSync64Ns: time(() => fs.readSync(zero, b64, 0, 64, null)),
    koffiWrite64Ns: time(() => kwrite(nul, b64, 64)),
    fsWriteSync64Ns: time(() => fs.writeSync(nul, b64, 0, 64)),
    koffiRead64kNs: time(() => kread(zero, b64k, 65536), 20000),
    fsReadSync64kNs: time(() => fs.readSync(zero, b64k, 0, 65536, null), 20000),
    koffiReadEagainNs: time(() => kread(fds[0], b64, 64)),
    fsReadSyncEagainNs: time(() => { try { fs.readSync(fds[0], b64, 0, 64, null); } catch { /* EAGAIN */ } }, 50000),
  };
  for (const k of Object.keys(res)) res[k] = Math.round(res[k]);
  out(res);
}

// ---------------- orchestration ----------------

interface Mode { name: string; kind: 'kernel' | 'nft' | 'mplb' | 'lb'; env: Record<string, string>; workers: number; queues: number; spin: number; vnet: boolean }

function parseMode(s: string): Mode {
  const [base, ...opts] = s.split(':');
  const kv = Object.fromEntries(opts.map((o) => o.split('=') as [string, string]));
  const queues = Number(kv.q ?? 1), spin = Number(kv.spin ?? 0), workers = Number(kv.w ?? 1);
  if (base === 'kernel' || base === 'nft') return { name: s, kind: base, env: {}, workers: 0, queues: 0, spin: 0, vnet: false };
  if (base !== 'plain' && base !== 'offload') throw new Error(`unknown mode ${s}`);
  return {
    name: s,
    kind: 'mplb',
    env: { MPLB_DATAPATH: base, MPLB_QUEUES: String(queues), MPLB_SPIN_US: String(spin) },
    workers, queues, spin, vnet: base === 'offload',
  };
}

const children = new Set<ChildProcess>();
process.on('exit', () => { for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL'); });

function startInNs(ns: string, args: string[], env: Record<string, string> = {}): Promise<{ child: ChildProcess; lines: AsyncIterableIterator<string> }> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let err = '';
  child.stderr!.on('data', (d) => { err += d; });
  const lines = readline.createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${args.join(' ')} in ${ns}: nothing within 15 s: ${err}`)), 15000);
    child.once('exit', (c) => { clearTimeout(t); reject(new Error(`${args.slice(0, 2).join(' ')} in ${ns} exited ${c}: ${err}`)); });
    void lines.next().then((r) => { clearTimeout(t); if (r.done) reject(new Error(`no output: ${err}`)); else resolve({ child, lines }); });
  });
}

async function stopChild(c: ChildProcess | undefined): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const ex = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 5000);
  await ex;
  clearTimeout(t);
}

function runJson(ns: string, args: string[], hardMs: number): Promise<any> {
  return new Promise((resolve) => {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let o = '', e = '';
    child.stdout!.on('data', (d) => { o += d; });
    child.stderr!.on('data', (d) => { e += d; });
    const k = setTimeout(() => child.kill('SIGKILL'), hardMs);
    child.once('exit', () => {
      clearTimeout(k);
      children.delete(child);
      try { resolve(JSON.parse(o.trim().split('\n').pop() ?? '')); } catch { resolve({ error: `no JSON: ${e.trim().slice(0, 300)}` }); }
    });
  });
}

/** utime + stime of a process and its threads, in seconds. */
function cpuSeconds(pid: number): number {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / 100;
  } catch { return NaN; }
}

const median = (xs: number[]) => { const s = xs.filter(Number.isFinite).sort((a, b) => a - b); return s.length ? (s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN; };

async function orchestrate(values: Record<string, string | boolean | undefined>): Promise<void> {
  const { testbedUp, testbedDown } = await import('../src/testbed/testbed.js');
  const { startBalancerProcess } = await import('../src/testbed/balancer-process.js');
  const { nstatIn } = await import('../src/testbed/netns.js');
  const joinResets = (nss: string[]) => nss.reduce((a, ns) => a + (nstatIn(ns, ['MPTcpExtMPJoinNoTokenFound']).MPTcpExtMPJoinNoTokenFound ?? 0), 0);
  const modes = String(values.modes ?? 'plain,offload').split(',').map(parseMode);
  const rounds = Number(values.rounds ?? 3);
  const seconds = String(values.seconds ?? '5');
  const pings = String(values.pings ?? '2000');
  const nServers = Number(values.servers ?? 2);
  const results: Array<Record<string, unknown>> = [];
  const writeDoc = (summary: unknown) => {
    const doc = { at: new Date().toISOString(), host: { cpus: os.cpus().length, load: os.loadavg() }, rounds, seconds, modes: modes.map((m) => m.name), summary, results };
    if (values.out) fs.writeFileSync(String(values.out), JSON.stringify(doc, null, 2));
  };
  // Every result is written at once: a run cut short still leaves its rounds behind.
  const log = (o: Record<string, unknown>) => { results.push(o); process.stderr.write(`${JSON.stringify(o)}\n`); writeDoc(undefined); };
  const tb = testbedUp({ mode: 'balancer', servers: nServers, rateMbit: 0 });
  const kb = modes.some((m) => m.kind === 'kernel') ? testbedUp({ mode: 'noBalancer', servers: 1, rateMbit: 0 }) : undefined;
  const procs: ChildProcess[] = [];
  try {
    for (const t of [tb, kb]) {
      if (!t) continue;
      for (const s of t.servers) {
        procs.push((await startInNs(s.ns, [trafficCli, 'server', '--port', '5201', '--tcp-port', '5202'])).child);
        procs.push((await startInNs(s.ns, [here, 'echo-server', '--port', '5203'])).child);
      }
    }
    const vips = [5201, 5202, 5203].map((p) => ({ address: `${tb.vips[0]}:${p}`, backends: tb.servers.map((s) => ({ address: s.addr })) }));
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? modes : [...modes].reverse();
      for (const m of order) {
        const t = m.kind === 'kernel' ? kb! : tb;
        try {
        let stopLb: (() => Promise<void>) | undefined;
        let lbPid = 0;
        let lbStats: (() => Promise<any>) | undefined;
        if (m.kind === 'nft') {
          const table = `table ip mplbbench {\n chain pre {\n  type nat hook prerouting priority dstnat; policy accept;\n  ip daddr ${tb.vips[0]} tcp dport { 5201, 5202, 5203 } dnat to ${tb.servers[0].addr}\n }\n}\n`;
          execFileSync('ip', ['netns', 'exec', tb.namespaces.balancer, 'nft', '-f', '-'], { input: table });
          stopLb = async () => { execFileSync('ip', ['netns', 'exec', tb.namespaces.balancer, 'nft', 'delete', 'table', 'ip', 'mplbbench']); };
        } else if (m.kind === 'mplb') {
          const saved = { ...process.env };
          Object.assign(process.env, m.env);
          try {
            const lb = await startBalancerProcess(tb, { engine: { vips } });
            stopLb = () => lb.stop();
            lbPid = lb.pid;
            lbStats = () => lb.request('stats');
          } finally {
            for (const k of Object.keys(m.env)) { if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k]; }
          }
        } else if (m.kind === 'lb') {
          const cfg = { device: { name: 'mplb0' }, vips, tables: { maxFlows: 65536, maxConnections: 32768 } };
          const r = await startInNs(tb.namespaces.balancer, [here, 'lb', '--config', JSON.stringify(cfg), '--queues', String(m.queues), '--spin', String(m.spin), ...(m.vnet ? ['--vnet'] : [])]);
          stopLb = () => stopChild(r.child);
          lbPid = r.child.pid!;
          lbStats = async () => {
            r.child.stdin!.write('stats\n');
            for (;;) { const l = await r.lines.next(); if (l.done) return undefined; const o = JSON.parse(l.value); if (o.event === 'stats') return o.value; }
          };
        }
        try {
          await sleep(300);
          const j0 = joinResets(t.namespaces.servers);
          const c0 = lbPid ? cpuSeconds(lbPid) : NaN;
          const bulk = values.bulk !== '0';
          const skipped = { goodputMbps: NaN, ok: true, connections: [] };
          const one = !bulk ? skipped : await runJson(t.namespaces.client, [trafficCli, 'client', '--host', t.vips[0], '--port', '5201', '--seconds', seconds, '--connections', '1', '--json'], 60000);
          const c1 = lbPid ? cpuSeconds(lbPid) : NaN;
          const eight = !bulk ? skipped : await runJson(t.namespaces.client, [trafficCli, 'client', '--host', t.vips[0], '--port', '5201', '--seconds', seconds, '--connections', '8', '--json'], 60000);
          const c2 = lbPid ? cpuSeconds(lbPid) : NaN;
          const joinNoToken = joinResets(t.namespaces.servers) - j0;
          const pp = await runJson(t.namespaces.client, [here, 'pingpong', '--host', t.vips[0], '--port', '5203', '--count', pings, '--size', '64'], 60000);
          const st = lbStats ? await lbStats().catch((e: Error) => ({ error: e.message })) : undefined;
          const sub = (r: any) => (r?.connections ?? []).map((c: any) => `${c.subflowsTotalMax}/${c.server?.subflowsTotalMax ?? '?'}`).join(' ');
          log({
            round, mode: m.name,
            one: { mbps: one.goodputMbps, ok: one.ok, subflows: sub(one), cpuPerSec: (c1 - c0) / Number(seconds) },
            eight: { mbps: eight.goodputMbps, ok: eight.ok, subflows: sub(eight), cpuPerSec: (c2 - c1) / Number(seconds) },
            ping: pp,
            joinNoToken,
            loop: st?.loop ? { packetsIn: st.engine?.counters?.packets_in, gso: st.loop.gsoPackets, bytesIn: st.engine?.counters?.bytes_in, busyMs: Math.round(st.loop.busyMs), batches: st.loop.batches, spinHits: st.loop.spinHits, writeErrors: st.loop.writeErrors, badDeviceHeader: st.engine?.drops?.bad_device_header, queues: st.loop.queues } : undefined,
            engine: st?.engine?.counters ? { joins_steered_by_token: st.engine.counters.joins_steered_by_token, joins_unknown_token: st.engine.counters.joins_unknown_token, midstream_no_flow: st.engine.counters.midstream_no_flow, stateless_reply: st.engine.counters.stateless_reply, dropped: st.engine.counters.dropped } : undefined,
          });
        } finally {
          await stopLb?.();
        }
        } catch (e) {
          log({ round, mode: m.name, error: (e as Error).message.slice(0, 500) });
        }
      }
    }
  } finally {
    for (const p of procs) await stopChild(p);
    testbedDown(tb);
    if (kb) testbedDown(kb);
  }
  const summary: Record<string, unknown> = {};
  for (const m of modes) {
    const rs = results.filter((r) => r.mode === m.name && !r.error) as any[];
    const pick = (f: (r: any) => number) => { const xs = rs.map(f).filter(Number.isFinite); return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length }; };
    summary[m.name] = {
      oneMbps: pick((r) => r.one.mbps), eightMbps: pick((r) => r.eight.mbps),
      pingP50Us: pick((r) => r.ping.p50Us), pingP90Us: pick((r) => r.ping.p90Us),
      cpuOne: pick((r) => r.one.cpuPerSec), cpuEight: pick((r) => r.eight.cpuPerSec),
    };
  }
  writeDoc(summary);
  out({ summary });
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  const { values } = parseArgs({
    args: rest,
    strict: false,
    options: {
      port: { type: 'string' }, host: { type: 'string' }, count: { type: 'string' }, size: { type: 'string' },
      config: { type: 'string' }, workers: { type: 'string' }, queues: { type: 'string' }, spin: { type: 'string' }, vnet: { type: 'boolean' },
      rounds: { type: 'string' }, modes: { type: 'string' }, seconds: { type: 'string' }, pings: { type: 'string' }, out: { type: 'string' }, servers: { type: 'string' }, bulk: { type: 'string' },
    },
  });
  if (cmd === 'echo-server') return echoServer(Number(values.port));
  if (cmd === 'pingpong') return pingpong(String(values.host), Number(values.port), Number(values.count ?? 2000), Number(values.size ?? 64));
  if (cmd === 'lb') return lbRunner(values);
  if (cmd === 'micro') return micro();
  if (cmd === 'run') return orchestrate(values);
  process.stderr.write(`usage: ${path.basename(here)} run|echo-server|pingpong|lb ...\n`);
  process.exit(2);
}

main().catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
