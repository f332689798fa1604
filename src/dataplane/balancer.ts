// `mplb run`: the engine behind a TUN in the current network namespace, with the routes that put it in the path.
// The packet loop runs in a worker thread; this (main) thread keeps the control plane.
import { existsSync } from 'node:fs';
import type { EngineConfig } from '../engine/config.js';
import type { TokenStoreConfig } from '../cluster/token-store.js';
import { formatIp, parseEndpoint, parseIp } from '../wire/addr.js';
import { TunError } from '../io/tun.js';
import type { EngineChannel } from './control-protocol.js';
import { startPacketLoop, type PacketLoop, type PacketLoopOptions, type PrestartedWorker } from './packet-loop.js';
export { prestartPacketWorker } from './packet-loop.js';
import { balancerInterfaces, detachStale, loadFastpath, type FastpathHandle } from '../fastpath/loader.js';
import { defaultFastpathFlows } from '../fastpath/layout.js';
import { checkRoutableAddresses, createRoutes, DEFAULT_RULE_PRIORITY, DEFAULT_TABLE, type RouteSet, type RoutesHandle } from './routes.js';

/** An environment problem that stops `mplb run`, with a stable code and a message that says what to do. */
export class BalancerError extends Error {
  constructor(readonly code: string, message: string) { super(message); this.name = 'BalancerError'; }
}

/** The start was stopped by a signal (SIGTERM, SIGINT) before it completed; what it had set up is gone again. */
export class StartAborted extends Error {
  readonly code = 'EABORTED';
  /** `inProgress`: the steps that were running when the stop was asked for (e.g. "engine build", "routes"). */
  constructor(readonly signal: string, readonly inProgress: readonly string[] = []) {
    super(`stopped by ${signal} during the start${inProgress.length > 0 ? ` (in progress then: ${inProgress.join(', ')})` : ''}; everything it had set up was removed`);
    this.name = 'StartAborted';
  }
}

/** Where a start's time went (ms), for the "running" log line: the routes go in during the data plane's start (overlapped). */
export interface StartTimings { dataplaneMs: number; routesMs: number }

/** The TUN device and its routing; none of it can change on reload. */
export interface BalancerDevice {
  name: string;
  mtu: number;
  /** Routing table for the backends' replies (default 2710); one per instance. */
  table?: number;
  /** Priority of the "iif TUN" rule; backend rules use priority + 1 (default 10000); one per instance. */
  rulePriority?: number;
  /** What a restart needs to restore the sysctls and remove stale routes (routes.ts); default per device and namespace. */
  stateFile?: string;
}

/** What the data plane needs from a config; the control plane's RunConfig is a structural superset. */
export interface BalancerConfig {
  device: BalancerDevice;
  engine: EngineConfig;
  /** A shared token store for balancers in parallel (password resolved); read at start only. */
  tokenStore?: TokenStoreConfig;
  /** 'tun' (default): every packet through the TUN; 'tc-bpf': established flows NATed in the kernel; 'auto': tc-bpf where it loads. Start only. */
  datapath?: 'tun' | 'tc-bpf' | 'auto';
  /** The kernel map's size in flows (default: defaultFastpathFlows). Start only. */
  fastpath?: { maxFlows: number };
}

export interface Balancer {
  readonly tunName: string;
  readonly loop: PacketLoop;
  config: BalancerConfig;
  /** The engine in the packet worker: typed control calls, counters from shared memory. */
  readonly engine: EngineChannel;
  readonly startTimings: StartTimings;
  /** The data path in use ('auto' resolved), and why auto fell back to tun when it did. */
  readonly datapath: 'tun' | 'tc-bpf';
  readonly datapathNote?: string;
  /**
   * Applies a new config: routes follow the VIP and backend sets (only the difference changes), engine changes live
   * (flows and tokens kept). Changes apply one at a time. A change whose routes cannot be added is refused with the
   * routes, rules, sysctls and engine as they were.
   */
  reload(cfg: BalancerConfig): Promise<void>;
  /** `keepGuard`: leave blackhole guards so a restarted mplb finds its clients' connections alive (routes.ts). */
  stop(opts?: { keepGuard?: boolean }): Promise<void>;
}

/** The addresses routes are needed for, in canonical spelling (the route diff compares text). */
function addresses(cfg: BalancerConfig): RouteSet {
  const vips = new Set<string>(), backends = new Set<string>();
  for (const v of cfg.engine.vips) {
    const ep = parseEndpoint(v.address)!;
    vips.add(formatIp(ep.addr.bytes, 0, ep.addr.bytes.length));
    for (const b of v.backends) {
      const a = parseIp(b.address);
      backends.add(a ? formatIp(a.bytes, 0, a.bytes.length) : b.address);
    }
  }
  return { vips: [...vips], backends: [...backends] };
}

const sameDevice = (a: BalancerDevice, b: BalancerDevice) => a.name === b.name && a.mtu === b.mtu && a.stateFile === b.stateFile
  && (a.table ?? DEFAULT_TABLE) === (b.table ?? DEFAULT_TABLE) && (a.rulePriority ?? DEFAULT_RULE_PRIORITY) === (b.rulePriority ?? DEFAULT_RULE_PRIORITY);

/** Checks what `mplb run` needs before touching anything. */
export function preflight(): void {
  if (process.platform !== 'linux') throw new BalancerError('ENOTLINUX', 'mplb run needs Linux (TUN devices and policy routing)');
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new BalancerError('EPERM', 'mplb run needs root (CAP_NET_ADMIN) to create its TUN device and routes: run it with sudo');
  }
  if (!existsSync('/dev/net/tun')) throw new BalancerError('ENOTUN', '/dev/net/tun is missing: load the tun module (modprobe tun) or give the container the device');
}

/** How the packet loop meets the TUN (see docs/datapath.md). */
export interface DatapathOptions {
  /** 'offload' (default): IFF_VNET_HDR with TSO/checksum offloads (GSO super-packets); 'plain': one IP packet per read. */
  mode?: 'offload' | 'plain';
  /** TUN queues (IFF_MULTI_QUEUE when > 1), all served by the one engine worker. Default: the number of cores. */
  queues?: number;
  /** Busy-poll this long (µs) after traffic before sleeping in poll(). */
  spinUs?: number;
  /** TUN_F_* bits for the offload mode (default CSUM | TSO4 | TSO6). */
  offloads?: number;
}

/**
 * Offloads on, one TUN queue, no busy-polling: measured in docs/datapath.md. Extra queues (MPLB_QUEUES) are all served
 * by the single engine worker (the engine's tables are not shared between threads) and reorder packets (below).
 */
export const DATAPATH_DEFAULTS: Required<Omit<DatapathOptions, 'offloads'>> = {
  mode: 'offload',
  // One queue: with several, the kernel moves a flow between queues as its two directions are written back on
  // different ones (tun's flow table keys on the symmetric hash), so one worker reading the queues in turn reorders
  // packets of one direction; receivers then drop them by PAWS (seen: 1059 PAWSEstab drops and a stalled transfer in
  // one 30-connection batch). Set MPLB_QUEUES for benchmarks.
  queues: 1,
  spinUs: 0,
};

/**
 * Data path options from the environment, for benchmarks and tests that start `mplb run` as a child:
 * MPLB_DATAPATH=offload|plain, MPLB_QUEUES=N, MPLB_SPIN_US=N. Unset or invalid values leave the defaults.
 */
export function datapathFromEnv(env: NodeJS.ProcessEnv = process.env): DatapathOptions {
  const o: DatapathOptions = {};
  if (env.MPLB_DATAPATH === 'offload' || env.MPLB_DATAPATH === 'plain') o.mode = env.MPLB_DATAPATH;
  const int = (s: string | undefined, lo: number, hi: number) => (s !== undefined && /^\d+$/.test(s) && Number(s) >= lo && Number(s) <= hi ? Number(s) : undefined);
  const q = int(env.MPLB_QUEUES, 1, 16);
  if (q !== undefined) o.queues = q;
  const spin = int(env.MPLB_SPIN_US, 0, 10000);
  if (spin !== undefined) o.spinUs = spin;
  return o;
}

export interface StartOptions {
  txQueueLen?: number;
  datapath?: DatapathOptions;
  onEngineError?: PacketLoopOptions['onEngineError'];
  /**
   * Stops the start at its next step (its reason, e.g. "SIGTERM", names the cause): what was set up is undone and the
   * start rejects with StartAborted. A step in progress finishes first (the engine build in the worker, one ip batch).
   */
  signal?: AbortSignal;
  /** A packet worker started ahead (prestartPacketWorker), whose modules loaded while the config was read. */
  prestarted?: PrestartedWorker;
}

export async function startBalancer(cfg: BalancerConfig, opts: StartOptions = {}): Promise<Balancer> {
  const aborted = () => {
    if (opts.signal?.aborted) throw new StartAborted(String(opts.signal.reason ?? 'a signal'));
  };
  preflight();
  checkRoutableAddresses(cfg.engine, 'engine');
  // A turn of the event loop first, so that a signal that came during the caller's synchronous work is seen.
  if (opts.signal) await new Promise<void>((resolve) => setImmediate(resolve));
  aborted();
  const t0 = performance.now();
  const fast = loadFastpathFor(cfg);
  const dp = { ...DATAPATH_DEFAULTS, ...datapathFromEnv(), ...(opts.datapath ?? {}) };
  // What was in progress when a stop was asked for, for the StartAborted message (and the lifecycle tests).
  const inProgress = new Set<string>();
  let atAbort: string[] = [];
  opts.signal?.addEventListener('abort', () => { atAbort = [...inProgress]; }, { once: true });
  const abortedError = () => new StartAborted(String(opts.signal?.reason ?? 'a signal'), atAbort);
  // The routes go in while the worker builds the engine (the two longest steps of a start, overlapped). Until the
  // start returns, a failure or a stop undoes them (below); the 'exit' handler covers any other end.
  let routes: RoutesHandle | undefined;
  let routesMs = 0;
  const undoOnExit = () => routes?.undo();
  const installRoutes = async (tunName: string) => {
    if (opts.signal?.aborted) throw abortedError();
    const r0 = performance.now();
    routes = createRoutes({ tunName, table: cfg.device.table, rulePriority: cfg.device.rulePriority, stateFile: cfg.device.stateFile });
    // Routes must not outlive the process, whatever ends it (registered before any is added).
    process.on('exit', undoOnExit);
    inProgress.add('routes');
    try {
      const first = await routes.change(addresses(cfg));
      for (const p of await first.commit()) process.stderr.write(`mplb: ${p}\n`);
    } finally {
      inProgress.delete('routes');
    }
    routesMs = performance.now() - r0;
  };
  const start = (d: typeof dp) => startPacketLoop({
    tunName: cfg.device.name,
    mtu: cfg.device.mtu,
    // Bursts from split super-packets overflow the default 500-packet queue.
    txQueueLen: opts.txQueueLen ?? 4000,
    engine: cfg.engine,
    tokenStore: cfg.tokenStore,
    vnetHdr: d.mode === 'offload',
    offloads: d.offloads,
    queues: d.queues,
    spinUs: d.spinUs,
    onEngineError: opts.onEngineError,
    ...(fast.handle ? { fastpath: { flowsFd: fast.handle.flowsFd, statsFd: fast.handle.statsFd, interfaces: () => fast.handle!.attached.map((a) => a.name), programCounters: () => fast.handle!.counters() } } : {}),
    // The engine builds a Maglev table per VIP in the worker before it is ready: 2,000 VIPs take seconds. A start
    // that takes long is no hazard now that a signal stops it: the timeout is only for a worker that hangs.
    startTimeoutMs: 10_000 + 20 * cfg.engine.vips.length,
    whileWorkerStarts: installRoutes,
    prestarted: opts.prestarted,
  });
  // The program detaches whatever ends the process (synchronous).
  const closeFast = () => fast.handle?.close();
  process.on('exit', closeFast);
  let loop: PacketLoop;
  let dataplaneMs = 0;
  inProgress.add('engine build');
  try {
    try {
      loop = await start(dp);
    } catch (e) {
      // A kernel or container without multi-queue/virtio-header TUN support: run the plain path rather than not at
      // all. Thrown before the TUN existed, so before the routes started.
      if (!(e instanceof TunError) || e.code !== 'TUN_IOCTL_FAILED' || (dp.mode === 'plain' && dp.queues === 1) || routes) throw e;
      process.stderr.write(`mplb: the ${dp.mode} data path with ${dp.queues} queue(s) could not start (${e.message}); using the plain single-queue path\n`);
      if (opts.signal?.aborted) throw abortedError();
      loop = await start({ ...dp, mode: 'plain', queues: 1 });
    } finally {
      inProgress.delete('engine build');
      dataplaneMs = performance.now() - t0;
    }
  } catch (e) {
    // The loop stopped itself (packet-loop.ts); routes the hook installed, or part of, go now (sysctls too).
    routes?.undo();
    process.off('exit', undoOnExit);
    closeFast();
    process.off('exit', closeFast);
    throw e;
  }
  let attachError: unknown;
  if (!opts.signal?.aborted) {
    // Last: the routes' check has refused a second instance at this rulePriority, so a filter found at it is stale.
    try { attachFastpath(cfg, fast); } catch (e) { attachError = e; }
  }
  if (opts.signal?.aborted || attachError !== undefined) {
    routes!.undo();
    process.off('exit', undoOnExit);
    closeFast();
    process.off('exit', closeFast);
    await loop.stop();
    throw attachError ?? abortedError();
  }
  const installed = routes!;
  const startTimings: StartTimings = { dataplaneMs: Math.round(dataplaneMs), routesMs: Math.round(routesMs) };
  let stopped = false;
  // Changes apply one at a time, each against the state the previous one left.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const p = queue.then(fn);
    queue = p.catch(() => undefined);
    return p;
  };
  const b: Balancer = {
    tunName: loop.tunName,
    loop,
    config: cfg,
    engine: loop.engine,
    startTimings,
    datapath: fast.handle && fast.handle.attached.length > 0 ? 'tc-bpf' : 'tun',
    ...(fast.note ? { datapathNote: fast.note } : {}),
    reload(next) {
      return serial(async () => {
        if (stopped) throw new BalancerError('ESTOPPED', 'mplb is stopping: the change was not applied');
        if (!sameDevice(next.device, b.config.device)) {
          throw new BalancerError('ERELOAD', 'device.* (name, mtu, table, rulePriority) cannot change on reload: restart mplb');
        }
        // Loopback, multicast, a backend on a VIP's address...: refused (ConfigError, a 400 for the admin API) before
        // any route changes. Config files are checked at validation; this covers the API's additions too.
        checkRoutableAddresses(next.engine, 'engine');
        // New routes first; the engine moves only once they are in; old routes go last. A failure at any step
        // before the commit leaves routes, rules, sysctls and the engine as they were.
        const change = await installed.change(addresses(next));
        try {
          await loop.engine.call('reconfigure', { config: next.engine });
        } catch (e) {
          await change.rollback();
          throw e;
        }
        for (const p of await change.commit()) process.stderr.write(`mplb: ${p}\n`);
        b.config = next;
      });
    },
    async stop(o = {}) {
      if (stopped) return;
      stopped = true;
      // A change in flight finishes (or rolls back) first, so undo sees what is really installed.
      await queue;
      // The fast path first: its flows go back to the TUN path, which still runs until the routes go.
      closeFast();
      process.off('exit', closeFast);
      installed.undo(o);
      process.off('exit', undoOnExit);
      await loop.stop();
    },
  };
  return b;
}

/** The data path asked for: the config's, or MPLB_FASTPATH (tun | tc-bpf | auto) for an unset one (the e2e suite on either path). */
function datapathMode(cfg: BalancerConfig): 'tun' | 'tc-bpf' | 'auto' {
  const env = process.env.MPLB_FASTPATH;
  return cfg.datapath ?? (env === 'tc-bpf' || env === 'auto' || env === 'tun' ? env : 'tun');
}

/**
 * Loads the tc-bpf fast path for cfg.datapath (src/fastpath/) before the packet worker starts (the worker writes its
 * map); attachFastpath attaches it once the routes are in. 'auto' falls back to tun with the reason; 'tc-bpf'
 * refuses to start without it.
 */
function loadFastpathFor(cfg: BalancerConfig): { handle?: FastpathHandle; note?: string } {
  const mode = datapathMode(cfg);
  if (mode === 'tun') return {};
  try {
    // Two entries per flow (one per direction), preallocated: inserts and deletes then take no kernel allocation
    // (half the map writer's cost per connection, measured in BENCHMARKS.md). MPLB_BPF_OBJECT: another object file
    // (tests use a missing one).
    const flows = cfg.fastpath?.maxFlows ?? defaultFastpathFlows(cfg.engine.tables.maxFlows);
    return { handle: loadFastpath({ maxEntries: 2 * flows, priority: cfg.device.rulePriority ?? DEFAULT_RULE_PRIORITY, objectPath: process.env.MPLB_BPF_OBJECT || undefined }) };
  } catch (e) {
    return fallback(mode, (e as Error).message);
  }
}

function fallback(mode: 'tc-bpf' | 'auto', why: string): { note: string } {
  if (mode === 'tc-bpf') throw new BalancerError('EFASTPATH', `datapath tc-bpf cannot start: ${why} (datapath: auto falls back to tun)`);
  process.stderr.write(`mplb: datapath auto: the tc-bpf fast path is not available (${why}); using tun\n`);
  return { note: why };
}

/**
 * Removes mplb filters a killed run left at this instance's priority (whatever the mode), then attaches the loaded
 * program at tc ingress of every interface of this namespace but loopback and the TUN. Its map is empty until the
 * engine offloads a flow, so nothing bypasses the engine before the worker decides. An 'auto' attach failure leaves
 * the program detached (the worker's map writes are then unused) and the data path is tun.
 */
function attachFastpath(cfg: BalancerConfig, fast: { handle?: FastpathHandle; note?: string }): void {
  const mode = datapathMode(cfg);
  const priority = cfg.device.rulePriority ?? DEFAULT_RULE_PRIORITY;
  let ifaces: Array<{ name: string; ifindex: number }> = [];
  try {
    ifaces = balancerInterfaces(cfg.device.name);
    const stale = detachStale(priority, ifaces);
    if (stale.length > 0) process.stderr.write(`mplb: removed a fast path program a previous run left on ${stale.join(', ')}\n`);
  } catch {
    // No libbpf (or no /sys): nothing of ours can be attached either; only tc-bpf and auto care, below.
  }
  if (mode === 'tun' || !fast.handle) return;
  try {
    if (ifaces.length === 0) throw new Error('no interface to attach to (only loopback and the TUN)');
    fast.handle.attach(ifaces);
  } catch (e) {
    // Detached, but left open: the worker holds its map fd until the stop closes it.
    fast.handle.detach();
    fast.note = fallback(mode, (e as Error).message).note;
  }
}
