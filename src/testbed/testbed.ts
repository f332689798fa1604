// Testbed: network namespaces with real Linux MPTCP hosts (a client with two rate-limited links, a
// balancer namespace, N servers), recorded in a JSON state file so any process can tear them down.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { ipn, listNetns, netnsPids, run, sleepSync, sysctlIn, TestbedError, tryRun } from './netns.js';

export { TestbedError } from './netns.js';

export type TestbedMode = 'balancer' | 'noBalancer';

export interface TestbedOptions {
  /** 6 hex digits; random when omitted. Namespace names are mplb-<runId>-<role>. */
  runId?: string;
  /** 'noBalancer': VIP lives on server 1 (lo) and the balancer namespace just routes to it (the ceiling).
   *  'balancer': VIP routing is left to `mplb run` (routes.ts) inside the balancer namespace. Default 'balancer'. */
  mode?: TestbedMode;
  /** Number of servers (default 2). */
  servers?: number;
  /** tbf rate per client link in Mbit/s, applied on both ends (both directions). 0 or null = no limit. Default 50. */
  rateMbit?: number | null;
  /** Client addresses on link 0 and link 1 (each gets a /24; the balancer side takes .1, or .254 if taken). */
  clientAddrs?: [string, string];
  /** Virtual addresses (IPv4). Default ['198.19.0.10']. */
  vips?: string[];
  /** Configure MPTCP limits and the client's subflow endpoint (default true). */
  mptcp?: boolean;
  /** Keep the testbed when this process exits (default false: removed on exit, SIGINT, SIGTERM). */
  persist?: boolean;
  /** Where state files go (default os.tmpdir()/mplb-testbeds). */
  stateDir?: string;
}

export interface LinkInfo {
  /** Device name inside its namespace. */
  dev: string;
  addr: string;
  prefixLen: number;
  /** Device and address at the other end. */
  peerDev: string;
  peerAddr: string;
}

export interface TestbedHandle {
  runId: string;
  mode: TestbedMode;
  createdAt: string;
  /** PID of the process that made it. */
  creatorPid: number;
  persist: boolean;
  stateFile: string;
  rateMbit: number | null;
  vips: string[];
  namespaces: { client: string; balancer: string; servers: string[] };
  client: { addrs: [string, string]; links: [LinkInfo, LinkInfo] };
  /** Balancer-side view: links towards the client and towards each server. */
  balancer: { clientLinks: [LinkInfo, LinkInfo]; serverLinks: LinkInfo[] };
  servers: Array<{ ns: string; addr: string; link: LinkInfo }>;
  /** Every command run, in order (for debugging). */
  log: string[];
}

export interface TestbedStatusEntry {
  runId: string;
  stateFile: string;
  mode?: TestbedMode;
  creatorPid?: number;
  creatorAlive?: boolean;
  persist?: boolean;
  namespaces: Array<{ name: string; exists: boolean }>;
}

export interface TestbedStatus {
  testbeds: TestbedStatusEntry[];
  /** mplb-xxxxxx-* namespaces that no state file mentions. */
  orphanNamespaces: string[];
}

const NS_RE = /^mplb-([0-9a-f]{6})-/;

export function defaultStateDir(): string {
  return path.join(os.tmpdir(), 'mplb-testbeds');
}

function ipv4Parts(a: string): number[] {
  if (net.isIPv4(a) === false) throw new TestbedError('TESTBED_BAD_OPTION', `"${a}" is not an IPv4 address`);
  return a.split('.').map(Number);
}

/** The balancer-side address for a client address: .1 of the same /24 (.254 if the client has .1). */
function gatewayFor(a: string): string {
  const p = ipv4Parts(a);
  return `${p[0]}.${p[1]}.${p[2]}.${p[3] === 1 ? 254 : 1}`;
}

function subnet24(a: string): string {
  const p = ipv4Parts(a);
  return `${p[0]}.${p[1]}.${p[2]}.0/24`;
}

function inBenchRange(a: string): boolean {
  const p = ipv4Parts(a);
  return p[0] === 198 && (p[1] === 18 || p[1] === 19);
}

// Live handles of this process that must go when it exits.
const owned = new Map<string, TestbedHandle>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const h of [...owned.values()]) downOne(h.runId, h.stateFile, h.namespaces);
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => {
      for (const h of [...owned.values()]) downOne(h.runId, h.stateFile, h.namespaces);
      process.removeListener(sig, handler);
      // Die of the same signal unless someone else listens for it.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

function writeState(h: TestbedHandle): void {
  fs.mkdirSync(path.dirname(h.stateFile), { recursive: true });
  const tmp = `${h.stateFile}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(h, null, 2));
  fs.renameSync(tmp, h.stateFile);
}

/** Builds the testbed. On any failure everything made so far is removed and the error rethrown. */
export function testbedUp(opts: TestbedOptions = {}): TestbedHandle {
  const runId = opts.runId ?? randomBytes(3).toString('hex');
  if (!/^[0-9a-f]{6}$/.test(runId)) throw new TestbedError('TESTBED_BAD_OPTION', `runId "${runId}" must be 6 lowercase hex digits`);
  const mode = opts.mode ?? 'balancer';
  const nServers = opts.servers ?? 2;
  if (!Number.isInteger(nServers) || nServers < 1 || nServers > 200) throw new TestbedError('TESTBED_BAD_OPTION', `servers must be 1..200, got ${nServers}`);
  const rate = opts.rateMbit === undefined ? 50 : opts.rateMbit;
  const clientAddrs: [string, string] = opts.clientAddrs ?? ['198.18.1.2', '198.18.2.2'];
  const vips = opts.vips ?? ['198.19.0.10'];
  for (const a of [...clientAddrs, ...vips]) {
    if (!inBenchRange(a)) throw new TestbedError('TESTBED_BAD_OPTION', `address ${a} is outside 198.18.0.0/15 (the benchmarking range the testbed must use)`);
  }
  const serverSubnets = Array.from({ length: nServers }, (_, i) => `198.18.${10 + i + 1}.0/24`);
  const clientSubnets = clientAddrs.map(subnet24);
  if (clientSubnets[0] === clientSubnets[1]) throw new TestbedError('TESTBED_BAD_OPTION', `the two client addresses must be in different /24s (${clientAddrs.join(', ')})`);
  for (const s of clientSubnets) {
    if (serverSubnets.includes(s)) throw new TestbedError('TESTBED_BAD_OPTION', `client subnet ${s} overlaps a server link (198.18.11.0/24 upwards are used for servers)`);
  }
  for (const v of vips) {
    if (clientSubnets.includes(subnet24(v)) || serverSubnets.includes(subnet24(v))) throw new TestbedError('TESTBED_BAD_OPTION', `VIP ${v} falls inside a link subnet`);
  }
  const existing = new Set(listNetns());
  const prefix = `mplb-${runId}`;
  if ([...existing].some((n) => n.startsWith(`${prefix}-`))) throw new TestbedError('TESTBED_BAD_OPTION', `namespaces for run ${runId} already exist`);

  const nsC = `${prefix}-cli`;
  const nsB = `${prefix}-lb`;
  const nsS = Array.from({ length: nServers }, (_, i) => `${prefix}-srv${i + 1}`);
  const stateFile = path.join(opts.stateDir ?? defaultStateDir(), `${runId}.json`);
  const link = (dev: string, addr: string, peerDev: string, peerAddr: string): LinkInfo => ({ dev, addr, prefixLen: 24, peerDev, peerAddr });
  const cLinks: [LinkInfo, LinkInfo] = [
    link('c0', clientAddrs[0], 'lbc0', gatewayFor(clientAddrs[0])),
    link('c1', clientAddrs[1], 'lbc1', gatewayFor(clientAddrs[1])),
  ];
  const servers = nsS.map((ns, i) => ({ ns, addr: `198.18.${10 + i + 1}.2`, link: link('eth0', `198.18.${10 + i + 1}.2`, `lbs${i + 1}`, `198.18.${10 + i + 1}.1`) }));
  const h: TestbedHandle = {
    runId,
    mode,
    createdAt: new Date().toISOString(),
    creatorPid: process.pid,
    persist: opts.persist ?? false,
    stateFile,
    rateMbit: rate && rate > 0 ? rate : null,
    vips,
    namespaces: { client: nsC, balancer: nsB, servers: nsS },
    client: { addrs: clientAddrs, links: cLinks },
    balancer: {
      clientLinks: [link('lbc0', cLinks[0].peerAddr, 'c0', clientAddrs[0]), link('lbc1', cLinks[1].peerAddr, 'c1', clientAddrs[1])],
      serverLinks: servers.map((s) => link(s.link.peerDev, s.link.peerAddr, s.link.dev, s.addr)),
    },
    servers,
    log: [],
  };
  // Record before creating anything so a crash half-way can still be cleaned up from the state file.
  writeState(h);
  if (!h.persist) {
    owned.set(runId, h);
    installExitHooks();
  }
  const ip = (ns: string, args: string[]) => {
    h.log.push(`ip -n ${ns} ${args.join(' ')}`);
    ipn(ns, args);
  };
  const sysctl = (ns: string, k: string, v: string) => {
    h.log.push(`[${ns}] sysctl ${k}=${v}`);
    sysctlIn(ns, k, v);
  };
  const tc = (ns: string, args: string[]) => {
    h.log.push(`tc -n ${ns} ${args.join(' ')}`);
    run('tc', ['-n', ns, ...args]);
  };

  try {
    for (const ns of [nsC, nsB, ...nsS]) {
      h.log.push(`ip netns add ${ns}`);
      run('ip', ['netns', 'add', ns]);
      ip(ns, ['link', 'set', 'lo', 'up']);
    }
    // veth pairs are created directly inside their namespaces: nothing appears in the caller's namespace.
    for (const l of cLinks) {
      h.log.push(`ip link add ${l.dev} netns ${nsC} type veth peer name ${l.peerDev} netns ${nsB}`);
      run('ip', ['link', 'add', l.dev, 'netns', nsC, 'type', 'veth', 'peer', 'name', l.peerDev, 'netns', nsB]);
      ip(nsC, ['addr', 'add', `${l.addr}/24`, 'dev', l.dev]);
      ip(nsB, ['addr', 'add', `${l.peerAddr}/24`, 'dev', l.peerDev]);
      ip(nsC, ['link', 'set', l.dev, 'up']);
      ip(nsB, ['link', 'set', l.peerDev, 'up']);
    }
    for (const s of servers) {
      h.log.push(`ip link add ${s.link.dev} netns ${s.ns} type veth peer name ${s.link.peerDev} netns ${nsB}`);
      run('ip', ['link', 'add', s.link.dev, 'netns', s.ns, 'type', 'veth', 'peer', 'name', s.link.peerDev, 'netns', nsB]);
      ip(s.ns, ['addr', 'add', `${s.addr}/24`, 'dev', s.link.dev]);
      ip(nsB, ['addr', 'add', `${s.link.peerAddr}/24`, 'dev', s.link.peerDev]);
      ip(s.ns, ['link', 'set', s.link.dev, 'up']);
      ip(nsB, ['link', 'set', s.link.peerDev, 'up']);
      ip(s.ns, ['route', 'add', 'default', 'via', s.link.peerAddr, 'dev', s.link.dev]);
    }

    // Client: each source address leaves by its own link (tables 101, 102); main default via link 0.
    ip(nsC, ['route', 'add', 'default', 'via', cLinks[0].peerAddr, 'dev', cLinks[0].dev]);
    cLinks.forEach((l, i) => {
      const table = String(101 + i);
      ip(nsC, ['route', 'add', subnet24(l.addr), 'dev', l.dev, 'src', l.addr, 'table', table]);
      ip(nsC, ['route', 'add', 'default', 'via', l.peerAddr, 'dev', l.dev, 'table', table]);
      ip(nsC, ['rule', 'add', 'from', l.addr, 'table', table, 'priority', String(1000 + i)]);
    });

    if (opts.mptcp ?? true) {
      for (const ns of [nsC, ...nsS]) {
        sysctl(ns, 'net.mptcp.enabled', '1');
        ip(ns, ['mptcp', 'limits', 'set', 'subflow', '2', 'add_addr_accepted', '2']);
      }
      ip(nsC, ['mptcp', 'endpoint', 'add', cLinks[1].addr, 'dev', cLinks[1].dev, 'subflow']);
    }

    sysctl(nsB, 'net.ipv4.ip_forward', '1');
    if (mode === 'noBalancer') {
      for (const v of vips) {
        ip(nsS[0], ['addr', 'add', `${v}/32`, 'dev', 'lo']);
        ip(nsB, ['route', 'add', `${v}/32`, 'via', servers[0].addr, 'dev', servers[0].link.peerDev]);
      }
    }

    if (h.rateMbit) {
      // tbf on both veth ends = both directions limited. Burst ~4 ms of data (at least 32 KB).
      const burst = Math.max(32 * 1024, Math.round((h.rateMbit * 1e6 / 8) * 0.004));
      for (const [ns, dev] of [[nsC, 'c0'], [nsC, 'c1'], [nsB, 'lbc0'], [nsB, 'lbc1']] as const) {
        tc(ns, ['qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', `${h.rateMbit}mbit`, 'burst', String(burst), 'latency', '25ms']);
      }
    }
  } catch (e) {
    downOne(runId, stateFile, h.namespaces);
    owned.delete(runId);
    throw e;
  }
  writeState(h);
  return h;
}

function killNamespaceProcesses(namespaces: string[]): void {
  const pids = new Set<number>();
  for (const ns of namespaces) for (const p of netnsPids(ns)) if (p !== process.pid) pids.add(p);
  if (pids.size === 0) return;
  // These processes live in namespaces this project made for this run, so they are ours.
  for (const p of pids) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      pids.delete(p);
    }
  }
  const deadline = Date.now() + 1500;
  while (pids.size > 0 && Date.now() < deadline) {
    sleepSync(50);
    for (const p of [...pids]) {
      try {
        process.kill(p, 0);
      } catch {
        pids.delete(p);
      }
    }
  }
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

function downOne(runId: string, stateFile: string, ns: { client: string; balancer: string; servers: string[] } | undefined): string[] {
  const present = new Set(listNetns());
  const names = new Set<string>();
  if (ns) for (const n of [ns.client, ns.balancer, ...ns.servers]) names.add(n);
  // Also anything else carrying this run's prefix (e.g. made by a crashed older version).
  for (const n of present) if (n.startsWith(`mplb-${runId}-`)) names.add(n);
  const toDelete = [...names].filter((n) => present.has(n));
  killNamespaceProcesses(toDelete);
  for (const n of toDelete) tryRun('ip', ['netns', 'del', n]);
  try {
    fs.unlinkSync(stateFile);
  } catch {
    // already gone
  }
  owned.delete(runId);
  return toDelete;
}

function readState(file: string): Partial<TestbedHandle> | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<TestbedHandle>;
  } catch {
    return undefined;
  }
}

function stateFiles(dir: string): string[] {
  try {
    return fs
      .readdirSync(dir)
      .filter((f) => /^[0-9a-f]{6}\.json$/.test(f))
      .map((f) => path.join(dir, f));
  } catch {
    return [];
  }
}

/**
 * Removes a testbed (handle or runId), or with no argument every testbed recorded in state files.
 * Processes still running inside its namespaces are terminated. Synchronous; returns deleted namespaces.
 */
export function testbedDown(target?: TestbedHandle | string, opts: { stateDir?: string } = {}): string[] {
  const dir = opts.stateDir ?? (typeof target === 'object' ? path.dirname(target.stateFile) : defaultStateDir());
  if (target === undefined) {
    const removed: string[] = [];
    for (const f of stateFiles(dir)) {
      const s = readState(f);
      const runId = path.basename(f, '.json');
      removed.push(...downOne(runId, f, s?.namespaces));
    }
    return removed;
  }
  const runId = typeof target === 'string' ? target : target.runId;
  const file = typeof target === 'string' ? path.join(dir, `${runId}.json`) : target.stateFile;
  const s = typeof target === 'string' ? readState(file) : target;
  return downOne(runId, file, s?.namespaces);
}

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function testbedStatus(opts: { stateDir?: string } = {}): TestbedStatus {
  const present = new Set(listNetns());
  const known = new Set<string>();
  const testbeds: TestbedStatusEntry[] = [];
  for (const f of stateFiles(opts.stateDir ?? defaultStateDir())) {
    const s = readState(f);
    const runId = path.basename(f, '.json');
    const names = s?.namespaces ? [s.namespaces.client, s.namespaces.balancer, ...s.namespaces.servers] : [];
    for (const n of present) if (n.startsWith(`mplb-${runId}-`) && !names.includes(n)) names.push(n);
    names.forEach((n) => known.add(n));
    testbeds.push({
      runId,
      stateFile: f,
      mode: s?.mode,
      creatorPid: s?.creatorPid,
      creatorAlive: alive(s?.creatorPid),
      persist: s?.persist,
      namespaces: names.map((name) => ({ name, exists: present.has(name) })),
    });
  }
  const orphanNamespaces = [...present].filter((n) => NS_RE.test(n) && !known.has(n));
  return { testbeds, orphanNamespaces };
}

/** Reads a recorded testbed back from its state file (e.g. in another process). */
export function testbedLoad(runId: string, opts: { stateDir?: string } = {}): TestbedHandle | undefined {
  const s = readState(path.join(opts.stateDir ?? defaultStateDir(), `${runId}.json`));
  return s && s.runId ? (s as TestbedHandle) : undefined;
}
