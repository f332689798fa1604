// Starts `mplb run` inside a testbed's balancer namespace as a child process and talks to it over
// --control-stdin (JSON lines). Used by the demo, the end-to-end tests and the benchmarks.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { TestbedHandle } from './testbed.js';

export interface BalancerProcessOptions {
  /** Engine settings merged over the defaults; vips default to the testbed's VIP on `port` with all servers. */
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

export async function startBalancerProcess(tb: TestbedHandle, opts: BalancerProcessOptions = {}): Promise<BalancerProcess> {
  const port = opts.port ?? 5201;
  const config = {
    device: { name: opts.tunName ?? 'mplb0' },
    vips: [{ address: `${tb.vips[0]}:${port}`, backends: tb.servers.map((s) => ({ address: s.addr })) }],
    tables: { maxFlows: 65536, maxConnections: 32768 },
    ...(opts.engine ?? {}),
  };
  const dir = mkdtempSync(join(tmpdir(), 'mplb-run-'));
  // The config directory goes with this process even if it is interrupted before stop().
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  process.once('exit', cleanup);
  const configFile = join(dir, 'mplb.yaml');
  writeFileSync(configFile, stringify(config));
  const child: ChildProcess = spawn('ip', ['netns', 'exec', tb.namespaces.balancer, process.execPath, MAIN, 'run', '--config', configFile, '--control-stdin', ...(opts.args ?? [])], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...(opts.env ?? {}) } });
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
