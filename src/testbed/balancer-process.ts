// Starts `mplb run` inside one of a testbed's balancer namespaces as a child process and talks to it over
// --control-stdin (JSON lines). Used by the demo, the end-to-end tests and the benchmarks.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { TestbedHandle } from './testbed.js';

export interface BalancerProcessOptions {
  /** Which balancer namespace (index into tb.balancers, default 0: the only one with 1 balancer). */
  balancer?: number;
  /**
   * Engine settings merged over the defaults; vips default to defaultVips(tb, port): the testbed's VIP on `port`
   * with all servers (and its IPv6 twin as one dual-stack service on an ipv6 testbed).
   * Balancers in parallel need the same vips, backends and hashSeed: give each the same `engine`.
   */
  engine?: Record<string, unknown>;
  port?: number;
  tunName?: string;
  startTimeoutMs?: number;
  /** Extra `mplb run` arguments, e.g. ['--keep-guard']. */
  args?: string[];
  /** Extra environment for the child (e.g. MPLB_DATAPATH). */
  env?: Record<string, string>;
}

export interface BalancerProcess {
  /** Index into tb.balancers and the namespace it runs in. */
  readonly balancer: number;
  readonly ns: string;
  readonly pid: number;
  readonly configFile: string;
  /** Sends a control line ('stats', 'connections 0') and resolves with the answer's value. */
  request(line: string, timeoutMs?: number): Promise<unknown>;
  /** SIGTERM, then waits for the exit (SIGKILL after 5 s). Idempotent. */
  stop(): Promise<void>;
  /** Everything the process wrote to stderr. */
  stderr(): string;
}

const MAIN = fileURLToPath(new URL('../cli/main.js', import.meta.url));

/** The namespace of balancer i (older state files have no `balancers` list: their one balancer). */
function balancerNs(tb: TestbedHandle, i: number): string {
  const list = tb.namespaces.balancers ?? [tb.namespaces.balancer];
  if (!Number.isInteger(i) || i < 0 || i >= list.length) throw new RangeError(`balancer ${i}: testbed ${tb.runId} has balancers 0-${list.length - 1}`);
  return list[i];
}

/**
 * The testbed's VIP on `port` with every server; on an ipv6 testbed also its IPv6 VIP, the two as one dual-stack
 * service (each server named by its namespace role), so that an IPv4 connection's IPv6 join reaches its server.
 */
export function defaultVips(tb: TestbedHandle, port: number): Array<Record<string, unknown>> {
  if (!tb.ipv6) return [{ address: `${tb.vips[0]}:${port}`, backends: tb.servers.map((s) => ({ address: s.addr })) }];
  const name = (i: number) => `srv${i + 1}`;
  return [
    { address: `${tb.vips[0]}:${port}`, service: 'testbed', backends: tb.servers.map((s, i) => ({ address: s.addr, server: name(i) })) },
    { address: `[${tb.vips6[0]}]:${port}`, service: 'testbed', backends: tb.servers.map((s, i) => ({ address: s.addr6!, server: name(i) })) },
  ];
}

export async function startBalancerProcess(tb: TestbedHandle, opts: BalancerProcessOptions = {}): Promise<BalancerProcess> {
  const index = opts.balancer ?? 0;
  const ns = balancerNs(tb, index);
  const port = opts.port ?? 5201;
  const config = {
    device: { name: opts.tunName ?? 'mplb0' },
    vips: defaultVips(tb, port),
    tables: { maxFlows: 65536, maxConnections: 32768 },
    ...(opts.engine ?? {}),
  };
  const dir = mkdtempSync(join(tmpdir(), 'mplb-run-'));
  // The config directory goes with this process even if it is interrupted before stop().
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  process.once('exit', cleanup);
  const configFile = join(dir, 'mplb.yaml');
  writeFileSync(configFile, stringify(config));
  const child: ChildProcess = spawn('ip', ['netns', 'exec', ns, process.execPath, MAIN, 'run', '--config', configFile, '--control-stdin', ...(opts.args ?? [])], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...(opts.env ?? {}) } });
  let err = '';
  let buf = '';
  const waiters: Array<(o: Record<string, unknown>) => boolean> = [];
  child.stderr!.on('data', (d) => { err += d; });
  child.stdout!.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let o: Record<string, unknown>;
      try { o = JSON.parse(line) as Record<string, unknown>; } catch { continue; }
      const k = waiters.findIndex((w) => w(o));
      if (k >= 0) waiters.splice(k, 1);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitFor = (pred: (o: Record<string, unknown>) => boolean, timeoutMs: number, what: string) => new Promise<Record<string, unknown>>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`mplb run: no ${what} within ${timeoutMs} ms; stderr: ${err.trim()}`)), timeoutMs);
    waiters.push((o) => { if (!pred(o)) return false; clearTimeout(t); resolve(o); return true; });
    void exited.then((code) => { clearTimeout(t); reject(new Error(`mplb run exited (${code}) before ${what}; stderr: ${err.trim()}`)); });
  });
  try {
    await waitFor((o) => o.event === 'ready', opts.startTimeoutMs ?? 15000, 'ready line');
  } catch (e) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  let stopped = false;
  return {
    balancer: index,
    ns,
    pid: child.pid!,
    configFile,
    request(line, timeoutMs = 5000) {
      const cmd = line.split(' ')[0];
      const p = waitFor((o) => o.event === cmd || (o.event === 'error' && o.command === cmd), timeoutMs, `answer to ${cmd}`);
      child.stdin!.write(`${line}\n`);
      return p.then((o) => { if (o.event === 'error') throw new Error(String(o.message)); return o.value; });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      rmSync(dir, { recursive: true, force: true });
    },
    stderr: () => err,
  };
}

/**
 * `mplb run` in every balancer namespace of the testbed with one config (same VIPs, backends, hashSeed: Maglev
 * then sends a first subflow to the same backend whichever balancer it reaches). All or nothing: if one fails to
 * start, the others are stopped. `balancer` in opts is ignored.
 */
export async function startBalancerCluster(tb: TestbedHandle, opts: BalancerProcessOptions = {}): Promise<BalancerProcess[]> {
  const n = (tb.namespaces.balancers ?? [tb.namespaces.balancer]).length;
  const started = await Promise.allSettled(Array.from({ length: n }, (_, i) => startBalancerProcess(tb, { ...opts, balancer: i })));
  const ok = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await Promise.all(ok.map((b) => b.stop().catch(() => undefined)));
    throw failed.reason;
  }
  return ok;
}
