// Thin synchronous wrappers around ip/tc/sysctl for the testbed (network namespaces the project owns).
import { execFileSync } from 'node:child_process';

export class TestbedError extends Error {
  readonly code: 'TESTBED_NOT_ROOT' | 'TESTBED_TOOL_MISSING' | 'TESTBED_CMD_FAILED' | 'TESTBED_BAD_OPTION' | 'TESTBED_NO_MPTCP';
  constructor(code: TestbedError['code'], message: string) {
    super(message);
    this.name = 'TestbedError';
    this.code = code;
  }
}

/** Runs a command and returns stdout; throws TestbedError with its stderr. */
export function run(cmd: string, args: string[], input?: string): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], input, timeout: 20000 });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new TestbedError('TESTBED_TOOL_MISSING', `"${cmd}" was not found: install iproute2 (ip, tc, ss)`);
    const msg = (err.stderr ?? '').toString().trim() || err.message;
    if (/Operation not permitted|Permission denied/.test(msg)) {
      throw new TestbedError('TESTBED_NOT_ROOT', `"${cmd} ${args.join(' ')}" was refused: the testbed needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)`);
    }
    throw new TestbedError('TESTBED_CMD_FAILED', `"${cmd} ${args.join(' ')}" failed: ${msg}`);
  }
}

/** Runs and ignores failures (for teardown). */
export function tryRun(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 20000 });
    return true;
  } catch {
    return false;
  }
}

/** `ip -n NS ...` */
export function ipn(ns: string, args: string[]): string {
  return run('ip', ['-n', ns, ...args]);
}

/** `ip netns exec NS cmd ...` */
export function nsExec(ns: string, cmd: string, args: string[]): string {
  return run('ip', ['netns', 'exec', ns, cmd, ...args]);
}

export function sysctlIn(ns: string, key: string, value: string): void {
  nsExec(ns, 'sysctl', ['-q', '-w', `${key}=${value}`]);
}

export function listNetns(): string[] {
  let out = '';
  try {
    out = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return [];
  }
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n): n is string => !!n);
}

export function netnsPids(ns: string): number[] {
  try {
    const out = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return out
      .split(/\s+/)
      .filter((s) => /^\d+$/.test(s))
      .map(Number);
  } catch {
    return [];
  }
}

/** Absolute kernel counters (nstat) inside a namespace; history disabled so namespaces do not mix. */
export function nstatIn(ns: string, names?: string[]): Record<string, number> {
  let out = '';
  try {
    out = execFileSync('ip', ['netns', 'exec', ns, 'nstat', '-a', '-z', '-s'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      env: { ...process.env, NSTAT_HISTORY: '/dev/null' },
    });
  } catch {
    return {};
  }
  const res: Record<string, number> = {};
  for (const line of out.split('\n')) {
    const m = /^(\S+)\s+(\d+)/.exec(line);
    if (m && (!names || names.includes(m[1]))) res[m[1]] = Number(m[2]);
  }
  return res;
}

export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export function haveIp(): boolean {
  return tryRun('ip', ['-V']);
}
