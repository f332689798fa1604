// What `mplb demo` needs from the machine, checked before anything is created: nothing is installed for the user.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

export class DemoPreflightError extends Error {
  readonly code = 'EDEMO_PREFLIGHT';
  constructor(message: string) {
    super(message);
    this.name = 'DemoPreflightError';
  }
}

function haveTool(cmd: string): boolean {
  try {
    execFileSync(cmd, ['-V'], { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch (e) {
    // Present but unhappy with -V still counts as present; only ENOENT means missing.
    return (e as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

/** Returns undefined when the demo can run, else one line naming the missing package or condition. */
export function demoPreflightProblem(): string | undefined {
  if (process.platform !== 'linux') return 'the demo needs Linux (network namespaces, MPTCP, TUN)';
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'the demo needs root (it creates network namespaces, veth links, tc qdiscs and a TUN device): run it with sudo';
  for (const tool of ['ip', 'tc', 'nstat']) {
    if (!haveTool(tool)) return `"${tool}" was not found: install the Debian package iproute2`;
  }
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing: load the tun module (modprobe tun) or give the container the device';
  if (!existsSync('/proc/sys/net/mptcp/enabled')) return 'the kernel has no MPTCP (/proc/sys/net/mptcp/enabled is missing): CONFIG_MPTCP=y is needed';
  // The value only matters in the root namespace; the testbed sets net.mptcp.enabled=1 in its own namespaces.
  // Still refuse a 0 here: it usually means the administrator turned MPTCP off on purpose.
  if (readFileSync('/proc/sys/net/mptcp/enabled', 'utf8').trim() !== '1') return 'MPTCP is disabled (net.mptcp.enabled=0): enable it with sysctl -w net.mptcp.enabled=1';
  const req = createRequire(import.meta.url);
  for (const pkg of ['koffi', 'yaml']) {
    try {
      req.resolve(pkg);
    } catch {
      return `the npm package "${pkg}" is missing: run npm ci in the mplb directory`;
    }
  }
  return undefined;
}

export function demoPreflight(): void {
  const p = demoPreflightProblem();
  if (p) throw new DemoPreflightError(p);
}
