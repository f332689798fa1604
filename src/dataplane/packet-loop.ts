// Main-thread side of the packet loop: opens the TUN, starts the packet worker (the engine and its forwarders),
// and gives the control plane an EngineChannel: typed calls to the worker, counters read from shared memory.
import { Worker } from 'node:worker_threads';
import { COUNTERS_BYTES, Counters } from '../engine/counters.js';
import type { EngineConfig } from '../engine/config.js';
import type { TokenStoreConfig } from '../cluster/token-store.js';
import { SYNC_COUNTER_LABELS, SyncCounter, type StoreAnswer } from './store-sync.js';
import { StoreServer } from './store-server.js';
import { TokenStore } from '../cluster/token-store.js';
import { openTun, createEventFd, signalEventFd, closeFd, TunDevice, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 } from '../io/tun.js';
import { validVnetHdrBytes } from '../wire/vnet-hdr.js';
import { ControlRequestError, engineStats, type ControlOp, type ControlReq, type ControlRes, type EngineChannel } from './control-protocol.js';
import { LOOP_COUNTERS_BYTES, LoopCounter } from './forwarder.js';
import { FastpathCounter, Flag, type MainMessage, type WorkerInit, type WorkerMessage } from './worker-messages.js';

export interface PacketLoopOptions {
  /** TUN interface to create (in the current network namespace). */
  tunName: string;
  /** Link MTU of the TUN (default 1500). */
  mtu?: number;
  /** TUN transmit queue in packets (kernel default 500). */
  txQueueLen?: number;
  /** The engine's config (validated again in the worker). */
  engine: EngineConfig;
  /** A shared token store for balancers in parallel: the worker talks to it between batches. */
  tokenStore?: TokenStoreConfig;
  /** Use this already-open device instead of creating one (the loop makes it non-blocking and closes it on stop). */
  tun?: TunDevice;
  tickIntervalMs?: number;
  /** Most packets per batch (default 16: a batch holds its first packet back for the reads of the others). */
  batchMax?: number;
  /** Longest time (ms) spent reading a queue before returning to the event loop (default 5). */
  sliceBudgetMs?: number;
  /** How long to wait for the worker's ready message (default 10000 ms). */
  startTimeoutMs?: number;
  /**
   * Open the TUN with IFF_VNET_HDR + TUNSETVNETHDRSZ + TUNSETOFFLOAD: reads may hold GSO super-packets (up to
   * 64 KiB) with partial checksums, written back with their virtio header.
   */
  vnetHdr?: boolean;
  /** virtio_net_hdr size, 10 or 12 (default 12). */
  vnetHdrBytes?: number;
  /** TUN_F_* offloads with vnetHdr (default TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6). */
  offloads?: number;
  /** TUN queues (IFF_MULTI_QUEUE when > 1; default 1), all served by the one worker and its one engine. */
  queues?: number;
  /** After handling packets, keep polling the queues without sleeping for this long (µs; default 0). */
  spinUs?: number;
  /**
   * Runs once the TUN exists, while the worker builds the engine (the start's two longest steps, overlapped; e.g. the
   * routes into the TUN). The start resolves only when both are done. If either fails, the worker is stopped and the
   * first failure is thrown once this has settled too, so the caller can undo what it did.
   */
  whileWorkerStarts?: (tunName: string) => Promise<void>;
  /** A worker from prestartPacketWorker (used if still unused; otherwise a new one is started). */
  prestarted?: PrestartedWorker;
  /** The tc-bpf fast path (already loaded and attached): the worker writes its flow map; stats read its counters. */
  fastpath?: { flowsFd: number; statsFd: number; interfaces: () => string[]; programCounters: () => Record<string, number> };
  /** An engine exception (a bug): the packet was dropped and counted as engine_error. At most one a second. */
  onEngineError?: (e: { error: string; head: string; suppressed: number }) => void;
}

export interface PacketLoopStats {
  batches: number;
  ticks: number;
  busyMs: number;
  /** Longest batch (ms): how long the worker's event loop (and so control requests) waited, since the last reset. */
  maxLoopLagMs: number;
  maxBatch: number;
  readErrors: number;
  writeErrors: number;
  lastErrno: number;
  gsoPackets: number;
  spinHits: number;
  /** Longest control round trip seen by the main thread (ms). */
  maxControlMs: number;
  /** The shared token store's state and counters (absent without a store). */
  store?: Record<string, number>;
  /** Data path shape: TUN queues, virtio header bytes (0 = off), offload bits. */
  queues: number;
  vnetHdrBytes: number;
  offloads: number;
  /** The tc-bpf fast path (absent on the TUN-only path): the program's per-CPU counters summed, and its map writer's. */
  fastpath?: FastpathStats;
}

export interface FastpathStats {
  interfaces: string[];
  /** bpf/fastpath.bpf.c's counters (packets and bytes NATed in the kernel, packets passed up by reason). */
  program: Record<string, number>;
  inserted: number;
  removed: number;
  insertErrors: number;
  checks: number;
  flushes: number;
}

export interface PacketLoop {
  readonly tunName: string;
  /** The engine in the worker: typed control calls, counters without a round trip. */
  readonly engine: EngineChannel;
  stats(): PacketLoopStats;
  /** Zeroes the max-type counters (lag, batch, control latency). */
  resetMax(): void;
  /** Stops the worker, closes the TUN (the kernel removes the device). Idempotent. */
  stop(): Promise<void>;
  /** Resolves with the worker's exit code once it has ended (for any reason). */
  readonly exited: Promise<number>;
}

export class PacketLoopError extends Error {
  readonly code: 'LOOP_START_FAILED' | 'LOOP_STOPPED' | 'LOOP_CONTROL_TIMEOUT' | 'LOOP_CONTROL_FAILED';
  constructor(code: PacketLoopError['code'], message: string) {
    super(message);
    this.name = 'PacketLoopError';
    this.code = code;
  }
}

const DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;

const WORKER_URL = new URL('./packet-worker.js', import.meta.url);

/** A packet worker started before its config is known (its thread and modules load meanwhile). */
export interface PrestartedWorker {
  /** The worker and its exit and error, watched from its start; once only (then undefined). */
  take(): { worker: Worker; exited: Promise<number>; error: () => Error | undefined } | undefined;
  /** Ends it if it was never taken (a start that failed before its data path); idempotent. */
  discard(): void;
}

/**
 * Starts the packet worker thread ahead of startPacketLoop, which then hands it its WorkerInit as a message. The worker
 * does not keep the process alive until it is taken (a config error still ends mplb at once).
 */
export function prestartPacketWorker(): PrestartedWorker {
  const worker = new Worker(WORKER_URL, { workerData: null });
  worker.unref();
  let error: Error | undefined;
  worker.on('error', (e) => { error = e; });
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  let taken = false;
  return {
    take() {
      if (taken) return undefined;
      taken = true;
      worker.ref();
      return { worker, exited, error: () => error };
    },
    discard() {
      if (taken) return;
      taken = true;
      void worker.terminate();
    },
  };
}

/** The store client's own counters, with metric-style names. */
function storeClientCounters(s: TokenStore): Record<string, number> {
  const c = s.counters;
  return {
    store_writes: c.writes, store_write_errors: c.writeErrors, store_reads: c.reads, store_read_errors: c.readErrors,
    store_invalid_values: c.invalidValues, store_reconnects: c.reconnects,
  };
}
const CONTROL_TIMEOUT_MS = 5000;

export async function startPacketLoop(opts: PacketLoopOptions): Promise<PacketLoop> {
  const nQueues = opts.queues ?? 1;
  if (!Number.isInteger(nQueues) || nQueues < 1 || nQueues > 16) throw new PacketLoopError('LOOP_START_FAILED', `queues must be an integer 1..16, got ${nQueues}`);
  const vnetBytes = opts.vnetHdr ? opts.vnetHdrBytes ?? 12 : 0;
  if (opts.vnetHdr && !validVnetHdrBytes(vnetBytes)) throw new PacketLoopError('LOOP_START_FAILED', `vnetHdrBytes must be 10 or 12, got ${vnetBytes}`);
  const offloads = opts.vnetHdr ? opts.offloads ?? DEFAULT_OFFLOADS : 0;
  // Opened here, not in the worker: errors surface synchronously with their TunError code.
  opts.tun?.setNonBlocking(true);
  const tun = opts.tun ?? openTun({
    name: opts.tunName,
    mtu: opts.mtu ?? 1500,
    txQueueLen: opts.txQueueLen,
    nonBlocking: true,
    up: true,
    multiQueue: nQueues > 1,
    vnetHdr: opts.vnetHdr,
    vnetHdrBytes: opts.vnetHdr ? vnetBytes : undefined,
    offloads: opts.vnetHdr ? offloads : undefined,
  });
  const devs: TunDevice[] = [tun];
  let wakeFd = -1;
  let closedFds = false;
  const closeFds = () => {
    if (closedFds) return;
    closedFds = true;
    for (const d of devs) d.close();
    if (wakeFd >= 0) closeFd(wakeFd);
  };
  try {
    for (let q = 1; q < nQueues; q++) devs.push(tun.openQueue(true));
    wakeFd = createEventFd();
  } catch (e) {
    closeFds();
    throw e;
  }

  const engineSab = new SharedArrayBuffer(COUNTERS_BYTES);
  const loopSab = new SharedArrayBuffer(LOOP_COUNTERS_BYTES);
  const flagsSab = new SharedArrayBuffer(Flag.Count * 4);
  const storeSab = new SharedArrayBuffer(SyncCounter.Count * 8);
  const storeCounters = new Float64Array(storeSab);
  const engineCounters = new Counters(engineSab);
  const loopCounters = new Float64Array(loopSab);
  const flags = new Int32Array(flagsSab);
  const fpSab = opts.fastpath ? new SharedArrayBuffer(FastpathCounter.Count * 8) : undefined;
  const fpWriter = fpSab ? new Float64Array(fpSab) : undefined;
  const init: WorkerInit = {
    tunFds: devs.map((d) => d.fd),
    tunName: tun.name,
    tunFlags: tun.flags,
    vnetHdrBytes: tun.vnetHdrBytes,
    wakeFd,
    engine: opts.engine,
    tokenStore: opts.tokenStore,
    storeCounters: storeSab,
    engineCounters: engineSab,
    loopCounters: loopSab,
    flags: flagsSab,
    tickIntervalMs: opts.tickIntervalMs ?? 100,
    batchMax: opts.batchMax ?? 16,
    sliceBudgetMs: opts.sliceBudgetMs ?? 5,
    spinUs: opts.spinUs ?? 0,
    ...(opts.fastpath && fpSab ? { fastpath: { flowsFd: opts.fastpath.flowsFd, statsFd: opts.fastpath.statsFd, counters: fpSab } } : {}),
  };
  const pre = opts.prestarted?.take();
  let worker: Worker, workerExit: Promise<number>, workerError: () => Error | undefined;
  if (pre) {
    ({ worker, exited: workerExit, error: workerError } = pre);
    worker.postMessage({ init });
  } else {
    worker = new Worker(WORKER_URL, { workerData: init });
    let err: Error | undefined;
    worker.on('error', (e) => { err = e; });
    workerError = () => err;
    workerExit = new Promise<number>((resolve) => worker.once('exit', resolve));
  }
  let exitCode: number | undefined;
  const exited = workerExit.then((code) => {
    exitCode = code;
    closeFds();
    return code;
  });
  const describeError = () => { const e = workerError(); return e ? `: ${e.message}` : ''; };

  // The shared token store's client: here, on the main thread, whose event loop waits on its socket. The worker
  // sends what to write and what to look up; answers go back with a wake-up, so a held join waits one round trip.
  const ts = opts.tokenStore;
  const store = ts ? new TokenStore({ url: ts.url, keyPrefix: ts.keyPrefix, password: ts.password, connectTimeoutMs: ts.connectTimeoutMs, commandTimeoutMs: ts.commandTimeoutMs }) : undefined;
  const toWorker = (m: StoreAnswer) => {
    if (exitCode !== undefined) return;
    worker.postMessage(m);
    if (!closedFds) signalEventFd(wakeFd);
  };
  const storeServer = store ? new StoreServer(store, { ttlMs: ts!.ttlMs, commandTimeoutMs: ts!.commandTimeoutMs }, toWorker) : undefined;
  if (store) {
    let everUp = false;
    store.onState = (up) => { toWorker({ type: 'store-state', up, republish: up && everUp }); if (up) everUp = true; };
  }

  const pending = new Map<number, { resolve: (v: never) => void; reject: (e: Error) => void; t0: number; timer: NodeJS.Timeout }>();
  let maxControlMs = 0;
  let nextId = 1;
  void exited.then((code) => {
    for (const [id, p] of pending) {
      clearTimeout(p.timer);
      p.reject(new PacketLoopError('LOOP_STOPPED', `packet loop worker exited (code ${code})${describeError()}`));
      pending.delete(id);
    }
  });

  const ready = new Promise<void>((resolve, reject) => {
    const ms = opts.startTimeoutMs ?? 10000;
    const timer = setTimeout(() => reject(new PacketLoopError('LOOP_START_FAILED', `packet loop worker did not start within ${ms} ms`)), ms);
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'ready') { clearTimeout(timer); resolve(); return; }
      if (m.type === 'start-failed') { clearTimeout(timer); reject(new PacketLoopError('LOOP_START_FAILED', `packet loop could not start: ${m.error}`)); return; }
      if (m.type === 'engine-error') { opts.onEngineError?.(m); return; }
      if (m.type === 'store') { storeServer?.serve(m); return; }
      if (m.type !== 'result') return;
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      clearTimeout(p.timer);
      const took = performance.now() - p.t0;
      if (took > maxControlMs) maxControlMs = took;
      if (m.ok) p.resolve(m.value as never);
      else p.reject(m.refused ? new ControlRequestError(m.error) : new PacketLoopError('LOOP_CONTROL_FAILED', m.error));
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new PacketLoopError('LOOP_START_FAILED', `packet loop worker exited during start (code ${code})${describeError()}`));
    });
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exitCode === undefined) {
        Atomics.store(flags, Flag.stop, 1);
        if (!closedFds) signalEventFd(wakeFd);
      }
      const t = setTimeout(() => { if (exitCode === undefined) void worker.terminate(); }, 2000);
      await exited;
      clearTimeout(t);
    })();
    return stopping;
  };

  // Connected while the worker starts, not after: a restarted balancer's first packets are subflows that moved or
  // outlived the restart, and until the store is up they are hashed (a join to the wrong server) instead of looked up.
  // Not waited for: a store that is down at start is retried in the background; steering is local meanwhile.
  if (store) void store.connect();
  // Started after everything above that can throw (a TunError before it means the hook never ran).
  const during = opts.whileWorkerStarts ? Promise.resolve().then(() => opts.whileWorkerStarts!(tun.name)) : undefined;
  during?.catch(() => undefined);
  try {
    try {
      await ready;
    } finally {
      // A worker that failed fast still waits for the hook: its caller undoes what the hook did only once it is done.
      await during?.catch(() => undefined);
    }
    await during;
  } catch (e) {
    await stop();
    await store?.close();
    throw e;
  }
  void exited.then(() => store?.close());

  const call = <K extends ControlOp>(op: K, req: ControlReq<K>): Promise<ControlRes<K>> => {
    if (exitCode !== undefined || stopping) return Promise.reject(new PacketLoopError('LOOP_STOPPED', 'packet loop is stopped'));
    const id = nextId++;
    return new Promise<ControlRes<K>>((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new PacketLoopError('LOOP_CONTROL_TIMEOUT', `the packet worker did not answer ${op} within ${CONTROL_TIMEOUT_MS} ms`));
      }, CONTROL_TIMEOUT_MS);
      pending.set(id, { resolve: resolve as (v: never) => void, reject, t0: performance.now(), timer });
      worker.postMessage({ type: 'call', id, op, req } as MainMessage);
      // Wake the worker out of poll() so the request is handled now, not at the next poll timeout.
      signalEventFd(wakeFd);
    });
  };
  const caps = { maxFlows: opts.engine.tables.maxFlows, maxConnections: opts.engine.tables.maxConnections };
  const L = loopCounters;

  return {
    tunName: tun.name,
    exited,
    engine: {
      call,
      stats: () => consistentRead(flags, () => engineStats(engineCounters, { flows: L[LoopCounter.Flows], connections: L[LoopCounter.Connections], ...caps })),
    },
    stats: () => ({
      batches: L[LoopCounter.Batches],
      ticks: L[LoopCounter.Ticks],
      busyMs: L[LoopCounter.BusyMs],
      maxLoopLagMs: L[LoopCounter.MaxBatchMs],
      maxBatch: L[LoopCounter.MaxBatch],
      readErrors: L[LoopCounter.ReadErrors],
      writeErrors: L[LoopCounter.WriteErrors],
      lastErrno: L[LoopCounter.LastErrno],
      gsoPackets: L[LoopCounter.GsoPackets],
      spinHits: L[LoopCounter.SpinHits],
      maxControlMs,
      ...(store ? { store: { ...Object.fromEntries(SYNC_COUNTER_LABELS.map((l, i) => [l, storeCounters[i]])), ...storeClientCounters(store) } } : {}),
      queues: nQueues,
      vnetHdrBytes: tun.vnetHdrBytes,
      offloads,
      // Only while attached ('auto' may have fallen back after loading it).
      ...(opts.fastpath && fpWriter && opts.fastpath.interfaces().length > 0 ? {
        fastpath: {
          interfaces: opts.fastpath.interfaces(),
          program: opts.fastpath.programCounters(),
          inserted: fpWriter[FastpathCounter.Inserted],
          removed: fpWriter[FastpathCounter.Removed],
          insertErrors: fpWriter[FastpathCounter.InsertErrors],
          checks: fpWriter[FastpathCounter.Checks],
          flushes: fpWriter[FastpathCounter.Flushes],
        },
      } : {}),
    }),
    resetMax() {
      maxControlMs = 0;
      Atomics.store(flags, Flag.resetMax, 1);
    },
    stop,
  };
}

/**
 * A read of the worker's shared counters that no packet is half counted in (packets_in incremented, its verdict not
 * yet): taken while the worker waits (Flag.busy even and unchanged across the read). Tries for at most 20 ms, then
 * returns an unchecked read (a worker that never waits is saturated; its counters are still off by a batch at most).
 */
function consistentRead<T>(flags: Int32Array, read: () => T): T {
  const end = performance.now() + 20;
  do {
    const s = Atomics.load(flags, Flag.busy);
    if ((s & 1) === 0) {
      const r = read();
      if (Atomics.load(flags, Flag.busy) === s) return r;
    }
  } while (performance.now() < end);
  return read();
}
