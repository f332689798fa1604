// Kernel routing that puts the TUN in the path (NAT mode): VIP host routes into the TUN, and a policy
// rule so the backends' replies (source = a backend address) are looked up in a table whose default
// route is the TUN, while packets mplb writes into the TUN (iif TUN) are routed normally.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

export interface RoutesOptions {
  tunName: string;
  /** Virtual addresses (IPv4 and/or IPv6): host routes into the TUN. */
  vips: string[];
  /** Backend addresses whose packets must pass through the TUN on their way back. */
  backends: string[];
  /** If set, only backend packets arriving on these interfaces are steered (one rule per pair). */
  backendInterfaces?: string[];
  /** Routing table holding "default dev TUN" (default 2710). */
  table?: number;
  /** Priority of the "iif TUN lookup main" rule; backend rules use priority + 1 (default 10000). */
  rulePriority?: number;
  /** Set ip_forward=1 and rp_filter=0 (default true); old values come back on undo. */
  setSysctls?: boolean;
}

export interface RoutesHandle {
  /** The commands that were run, in order (for logs). */
  readonly applied: readonly string[];
  /**
   * Removes exactly what was added, newest first; synchronous and idempotent (safe in 'exit' handlers).
   * `keepGuard`: leave the blackhole guards and the backend rules, so that while mplb is down packets to the VIPs
   * and un-NATed replies from backends are dropped (not leaked to clients, whose RSTs would kill the connections);
   * the next installRoutes takes them over.
   */
  undo(opts?: { keepGuard?: boolean }): void;
  readonly undone: boolean;
}

export type RoutesErrorCode = 'ROUTES_IP_MISSING' | 'ROUTES_EPERM' | 'ROUTES_EXISTS' | 'ROUTES_BAD_ADDRESS' | 'ROUTES_FAILED';

export class RoutesError extends Error {
  readonly code: RoutesErrorCode;
  constructor(code: RoutesErrorCode, message: string) {
    super(message);
    this.name = 'RoutesError';
    this.code = code;
  }
}

function runIp(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new RoutesError('ROUTES_IP_MISSING', 'the "ip" command (iproute2) was not found: install iproute2');
    const msg = (err.stderr ?? '').trim();
    if (/File exists/.test(msg)) throw new RoutesError('ROUTES_EXISTS', `"ip ${args.join(' ')}" failed: ${msg}: something else already installed it; remove it or pick another table/priority`);
    if (/Operation not permitted/.test(msg)) throw new RoutesError('ROUTES_EPERM', `"ip ${args.join(' ')}" needs root (CAP_NET_ADMIN)`);
    throw new RoutesError('ROUTES_FAILED', `"ip ${args.join(' ')}" failed: ${msg || err.message}`);
  }
}

function tryIp(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: 'ignore' });
  } catch {
    // already gone: undo is idempotent
  }
}

function readSysctl(p: string): string | undefined {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function writeSysctl(p: string, v: string): void {
  try {
    fs.writeFileSync(p, v);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EACCES' || err.code === 'EPERM' || err.code === 'EROFS') throw new RoutesError('ROUTES_EPERM', `writing ${p} needs root`);
    throw new RoutesError('ROUTES_FAILED', `writing ${v} to ${p} failed: ${err.message}`);
  }
}

/** Metric of the blackhole guards: above the TUN routes (metric 0), which win while the TUN exists. */
const GUARD_METRIC = '4096';

export function installRoutes(opts: RoutesOptions): RoutesHandle {
  const table = String(opts.table ?? 2710);
  const prio = opts.rulePriority ?? 10000;
  const tun = opts.tunName;
  for (const a of [...opts.vips, ...opts.backends]) {
    if (net.isIP(a) === 0) throw new RoutesError('ROUTES_BAD_ADDRESS', `"${a}" is not an IPv4 or IPv6 address`);
  }
  const families = new Set<4 | 6>();
  for (const a of [...opts.vips, ...opts.backends]) families.add(net.isIP(a) === 6 ? 6 : 4);

  const applied: string[] = [];
  // Each step is tagged: guard steps survive undo({ keepGuard: true }).
  const undoSteps: Array<{ guard: boolean; run: () => void }> = [];
  let undone = false;
  const undo = (o: { keepGuard?: boolean } = {}) => {
    if (undone) return;
    undone = true;
    while (undoSteps.length > 0) {
      const step = undoSteps.pop()!;
      if (o.keepGuard && step.guard) continue;
      try {
        step.run();
      } catch {
        // keep going: remove as much as possible
      }
    }
  };
  const ip = (args: string[], inverse: string[], guard = false) => {
    // Guards and rules may be left from a previous run (keepGuard, or a crash): replace them, never duplicate.
    if (guard) tryIp(inverse);
    runIp(args);
    applied.push(`ip ${args.join(' ')}`);
    undoSteps.push({ guard, run: () => tryIp(inverse) });
  };
  const sysctl = (p: string, v: string) => {
    const old = readSysctl(p);
    if (old === undefined) throw new RoutesError('ROUTES_FAILED', `${p} does not exist (is the interface there, IPv6 enabled?)`);
    if (old === v) return;
    writeSysctl(p, v);
    applied.push(`${p}=${v}`);
    undoSteps.push({ guard: true, run: () => {
      // Restore only if nobody changed it since.
      if (readSysctl(p) === v) writeSysctl(p, old);
    } });
  };

  try {
    if (opts.setSysctls ?? true) {
      if (families.has(4)) {
        sysctl('/proc/sys/net/ipv4/ip_forward', '1');
        // Packets mplb writes carry the client's (or the VIP's) source, which is not routed via the TUN.
        sysctl('/proc/sys/net/ipv4/conf/all/rp_filter', '0');
        sysctl(`/proc/sys/net/ipv4/conf/${tun}/rp_filter`, '0');
      }
      if (families.has(6)) sysctl('/proc/sys/net/ipv6/conf/all/forwarding', '1');
    }
    // Guards first: blackhole routes with a high metric under the TUN routes. The kernel removes the TUN routes
    // with the device; the guards then drop traffic instead of routing it around the balancer.
    for (const fam of families) {
      const f = fam === 6 ? '-6' : '-4';
      ip([f, 'route', 'add', 'blackhole', 'default', 'table', table, 'metric', GUARD_METRIC],
        [f, 'route', 'del', 'blackhole', 'default', 'table', table, 'metric', GUARD_METRIC], true);
      const r1 = ['rule', 'add', 'priority', String(prio), 'iif', tun, 'lookup', 'main'];
      ip([f, ...r1], [f, 'rule', 'del', ...r1.slice(2)], true);
    }
    for (const vip of opts.vips) {
      const f = net.isIP(vip) === 6 ? '-6' : '-4';
      const dst = `${vip}/${f === '-6' ? 128 : 32}`;
      ip([f, 'route', 'add', 'blackhole', dst, 'metric', GUARD_METRIC], [f, 'route', 'del', 'blackhole', dst, 'metric', GUARD_METRIC], true);
    }
    for (const b of opts.backends) {
      const f = net.isIP(b) === 6 ? '-6' : '-4';
      const from = `${b}/${f === '-6' ? 128 : 32}`;
      const ifaces = opts.backendInterfaces && opts.backendInterfaces.length > 0 ? opts.backendInterfaces : [undefined];
      for (const dev of ifaces) {
        const sel = ['priority', String(prio + 1), 'from', from, ...(dev ? ['iif', dev] : []), 'lookup', table];
        ip([f, 'rule', 'add', ...sel], [f, 'rule', 'del', ...sel], true);
      }
    }
    // The TUN routes last, so undo removes them first: the VIPs stop entering a TUN that is about to go away.
    for (const fam of families) {
      const f = fam === 6 ? '-6' : '-4';
      ip([f, 'route', 'add', 'default', 'dev', tun, 'table', table], [f, 'route', 'del', 'default', 'dev', tun, 'table', table]);
    }
    for (const vip of opts.vips) {
      const f = net.isIP(vip) === 6 ? '-6' : '-4';
      const dst = `${vip}/${f === '-6' ? 128 : 32}`;
      ip([f, 'route', 'add', dst, 'dev', tun], [f, 'route', 'del', dst, 'dev', tun]);
    }
  } catch (e) {
    undo();
    throw e;
  }

  return {
    applied,
    undo,
    get undone() {
      return undone;
    },
  };
}
