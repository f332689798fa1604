// redis-server inside a testbed namespace (the token store of a balancer cluster): started by the testbed,
// bound to its namespace address only, no persistence, a password, stopped by PID on teardown.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { sleepSync, TestbedError } from './netns.js';

export interface RedisInfo {
  /** Namespace redis runs in. */
  ns: string;
  /** Address it is bound to (its namespace address on the control network) and port. */
  host: string;
  port: number;
  /** `requirepass` (random per testbed). */
  password: string;
  /** redis-server's PID (`ip netns exec` execs it, so this is the server itself). */
  pid: number;
  /** Config file (holds the password, mode 0600), log file and working directory (removed on teardown). */
  confFile: string;
  logFile: string;
  dir: string;
}

/** redis-server on PATH (or in the usual Debian places), or undefined. */
export function findRedisServer(): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/bin', '/usr/sbin', '/usr/local/bin'];
  for (const d of dirs) {
    if (!d) continue;
    const p = path.join(d, 'redis-server');
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** 'Z' (zombie) or 'X' (dead) in /proc/PID/stat, or no such process: the process is gone. */
export function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state === 'Z' || state === 'X';
  } catch {
    return true;
  }
}

function listening(ns: string, host: string, port: number): boolean {
  try {
    const out = execFileSync('ip', ['netns', 'exec', ns, 'ss', '-Hltn', 'sport', '=', `:${port}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 });
    return out.split('\n').some((l) => l.includes(`${host}:${port}`));
  } catch {
    return false;
  }
}

/**
 * Starts redis-server in `ns` (synchronously: returns once it listens). The password is in the config file,
 * never on the command line; `--bind`, `--port`, `--save ''` and `--appendonly no` are on it for `ps` readers.
 * Detached, so that a persistent testbed (`mplb testbed up`) keeps it after the creating process exits.
 */
export function startRedis(ns: string, opts: { host: string; port: number; password: string; dir: string; readyTimeoutMs?: number }): RedisInfo {
  const bin = findRedisServer();
  if (!bin) throw new TestbedError('TESTBED_TOOL_MISSING', '"redis-server" was not found: install the Debian package redis-server (the cluster testbed runs its token store)');
  fs.mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const confFile = path.join(opts.dir, 'redis.conf');
  const logFile = path.join(opts.dir, 'redis.log');
  fs.writeFileSync(confFile, [
    '# written by the mplb testbed; removed on teardown',
    `requirepass ${opts.password}`,
    'protected-mode yes',
    'daemonize no',
    'supervised no',
    `dir ${opts.dir}`,
    `logfile ${logFile}`,
    'maxmemory 128mb',
    'maxmemory-policy noeviction',
    '',
  ].join('\n'), { mode: 0o600 });
  const log = fs.openSync(logFile, 'a');
  let pid: number | undefined;
  try {
    const child = spawn('ip', ['netns', 'exec', ns, bin, confFile, '--bind', opts.host, '--port', String(opts.port), '--save', '', '--appendonly', 'no'], {
      detached: true,
      stdio: ['ignore', log, log],
    });
    child.on('error', () => undefined);
    child.unref();
    pid = child.pid;
  } finally {
    fs.closeSync(log);
  }
  if (!pid) throw new TestbedError('TESTBED_CMD_FAILED', `redis-server could not be started in ${ns}`);
  const info: RedisInfo = { ns, host: opts.host, port: opts.port, password: opts.password, pid, confFile, logFile, dir: opts.dir };
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 5000);
  for (;;) {
    if (processGone(pid)) {
      throw new TestbedError('TESTBED_CMD_FAILED', `redis-server in ${ns} exited at start: ${readTail(logFile)}`);
    }
    if (listening(ns, opts.host, opts.port)) return info;
    if (Date.now() > deadline) {
      stopRedis(info);
      throw new TestbedError('TESTBED_CMD_FAILED', `redis-server in ${ns} did not listen on ${opts.host}:${opts.port} within ${opts.readyTimeoutMs ?? 5000} ms: ${readTail(logFile)}`);
    }
    sleepSync(50);
  }
}

function readTail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-5).join(' | ');
  } catch {
    return '(no log)';
  }
}

/** Is `pid` still the redis-server this testbed started? (Its namespace, or its process title.) */
function isOurRedis(info: Pick<RedisInfo, 'ns' | 'host' | 'port' | 'pid'>): boolean {
  try {
    const ns = execFileSync('ip', ['netns', 'identify', String(info.pid)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
    if (ns === info.ns) return true;
  } catch {
    // fall through to the title
  }
  try {
    const cmd = fs.readFileSync(`/proc/${info.pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
    return cmd.includes('redis-server') && cmd.includes(`${info.host}:${info.port}`);
  } catch {
    return false;
  }
}

/** SIGTERM by PID (only if it is still our redis-server), SIGKILL after 2 s; removes its directory. Synchronous. */
export function stopRedis(info: Partial<RedisInfo> | undefined): void {
  if (!info) return;
  if (info.pid && info.ns && info.host && info.port && !processGone(info.pid) && isOurRedis(info as RedisInfo)) {
    try {
      process.kill(info.pid, 'SIGTERM');
    } catch {
      // gone meanwhile
    }
    const deadline = Date.now() + 2000;
    while (!processGone(info.pid) && Date.now() < deadline) sleepSync(25);
    if (!processGone(info.pid)) {
      try {
        process.kill(info.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  // Only a directory the testbed named (<stateDir>/<runId>-redis).
  if (info.dir && /^[0-9a-z]{6}-redis$/.test(path.basename(info.dir))) fs.rmSync(info.dir, { recursive: true, force: true });
}

/** One RESP reply: a status or error line as written ("+OK", "-NOAUTH ..."), a bulk string, an integer as ":n", null, or an array. */
export type RedisReply = string | null | RedisReply[];

/**
 * Sends redis commands from inside namespace `fromNs` (e.g. a balancer's) and resolves with one reply per command
 * (the AUTH reply first when a password is given), so a test can check that the store is reachable from there.
 * `password` undefined: no AUTH. Bounded: the helper gives up after timeoutMs.
 */
export function redisCommands(fromNs: string, info: Pick<RedisInfo, 'host' | 'port'>, password: string | undefined, commands: string[][], timeoutMs = 3000): Promise<RedisReply[]> {
  const all = password === undefined ? commands : [['AUTH', password], ...commands];
  const resp = all.map((c) => `*${c.length}\r\n${c.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`).join('');
  const script = `
const net = require('node:net');
const want = Number(process.env.N);
const s = net.connect(Number(process.env.PORT), process.env.HOST);
let buf = Buffer.alloc(0);
const out = (o, code) => { process.stdout.write(JSON.stringify(o) + '\\n'); process.exit(code); };
// One reply at buf[pos]: [value, next position], or undefined when incomplete.
const parse = (pos) => {
  const e = buf.indexOf('\\r\\n', pos); if (e < 0) return undefined;
  const line = buf.toString('utf8', pos, e), t = line[0], n = Number(line.slice(1));
  if (t === '$') { if (n < 0) return [null, e + 2]; if (buf.length < e + 2 + n + 2) return undefined; return [buf.toString('utf8', e + 2, e + 2 + n), e + 4 + n]; }
  if (t === '*') { if (n < 0) return [null, e + 2]; const a = []; let p = e + 2; for (let i = 0; i < n; i++) { const r = parse(p); if (!r) return undefined; a.push(r[0]); p = r[1]; } return [a, p]; }
  return [line, e + 2];
};
s.setTimeout(Number(process.env.T), () => out({ error: 'timeout' }, 2));
s.on('connect', () => s.write(process.env.RESP));
s.on('error', (e) => out({ error: e.message }, 1));
s.on('data', (d) => {
  buf = Buffer.concat([buf, d]);
  const replies = []; let p = 0;
  while (replies.length < want) { const r = parse(p); if (!r) return; replies.push(r[0]); p = r[1]; }
  s.destroy(); out({ replies }, 0);
});`;
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', fromNs, process.execPath, '-e', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, HOST: info.host, PORT: String(info.port), RESP: resp, N: String(all.length), T: String(timeoutMs) },
    });
    let out = '', err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const killer = setTimeout(() => child.kill('SIGKILL'), timeoutMs + 5000);
    child.once('exit', () => {
      clearTimeout(killer);
      try {
        const o = JSON.parse(out.trim()) as { replies?: RedisReply[]; error?: string };
        if (o.replies) resolve(o.replies);
        else reject(new Error(`redis at ${info.host}:${info.port} from ${fromNs}: ${o.error}`));
      } catch {
        reject(new Error(`redis helper in ${fromNs} printed nothing: ${err.trim()}`));
      }
    });
  });
}

/** `redis://:PASSWORD@HOST:PORT` for a client library (the password is URL-safe base64). */
export function redisUrl(info: Pick<RedisInfo, 'host' | 'port' | 'password'>): string {
  return `redis://:${encodeURIComponent(info.password)}@${info.host}:${info.port}`;
}
