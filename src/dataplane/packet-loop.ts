// Main-thread side of the packet loop: opens the TUN, starts the worker that reads/processes/writes
// packets, relays control messages and exposes shared counters.
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import { openTun, createEventFd, signalEventFd, closeFd, TunDevice } from '../io/tun.js';

/** What a processor module's `createProcessor(options)` returns. */
export interface PacketProcessor {
  /** Hot path: packet is buf[0..len); rewrite in place and return the length to write back, or 0 to drop. */
  process(buf: Uint8Array, len: number, nowMs: number): number;
  /** Called about every tickIntervalMs. */
  tick?(nowMs: number): void;
  /** Answers `loop.control(msg)`; may return a promise. */
  control?(msg: unknown): unknown;
  /** Called once when the loop stops. */
  close?(): void;
}
export type CreateProcessor = (options: unknown) => PacketProcessor | Promise<PacketProcessor>;

export interface PacketLoopOptions {
  /** TUN interface to create (in the current network namespace). */
  tunName: string;
  /** Link MTU of the TUN (default 1500). */
  mtu?: number;
  /** TUN transmit queue in packets (kernel default 500). */
  txQueueLen?: number;
  /** Absolute file path or URL of an ES module exporting createProcessor. */
  processorModule: string | URL;
  /** Structured-cloneable options passed to createProcessor. */
  processorOptions?: unknown;
  /** Use this already-open device instead of creating one (the loop makes it non-blocking and closes it on
   *  stop). Opened with vnetHdr, each packet in buf starts with the virtio_net_hdr. */
  tun?: TunDevice;
  tickIntervalMs?: number;
  /** Most packets handled before the worker returns to its event loop (default 256). */
  batchMax?: number;
  /** Longest time (ms) spent on one batch before returning to the event loop (default 5). */
  sliceBudgetMs?: number;
  /** Packet buffer size in bytes (default 65536 + 512 headroom for growing packets). */
  bufferBytes?: number;
  /** How long to wait for the worker's ready message (default 10000 ms). */
  startTimeoutMs?: number;
}

/** Indexes into the Float64Array of counters (written by the worker only). */
export const Counter = {
  packetsIn: 0,
  packetsOut: 1,
  dropped: 2,
  readErrors: 3,
  writeErrors: 4,
  processErrors: 5,
  bytesIn: 6,
  bytesOut: 7,
  batches: 8,
  ticks: 9,
  /** Longest stretch (ms) the worker's event loop was kept from running (one batch). */
  maxLoopLagMs: 10,
  maxBatch: 11,
  /** Last errno seen on read or write (0 = none). */
  lastErrno: 12,
  /** Total time spent in batches (ms): packetsIn / busyMs estimates the loop's capacity. */
  busyMs: 13,
} as const;
export const COUNTER_SLOTS = 16;

/** Int32 flags shared with the worker. */
export const Flag = { stop: 0, resetMax: 1 } as const;
export const FLAG_SLOTS = 4;

export interface PacketLoopStats {
  packetsIn: number;
  packetsOut: number;
  dropped: number;
  readErrors: number;
  writeErrors: number;
  processErrors: number;
  bytesIn: number;
  bytesOut: number;
  batches: number;
  ticks: number;
  maxLoopLagMs: number;
  maxBatch: number;
  lastErrno: number;
  busyMs: number;
  /** Longest control() round trip seen by the main thread (ms). */
  maxControlMs: number;
}

export interface PacketLoop {
  readonly tunName: string;
  /** Live counters (see Counter); read them any time without a message round trip. */
  readonly counters: Float64Array;
  stats(): PacketLoopStats;
  /** Zeroes the max-type counters (lag, batch, control latency). */
  resetMax(): void;
  /** Sends msg to the processor's control() and resolves with its answer. */
  control(msg: unknown, timeoutMs?: number): Promise<unknown>;
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

/** Data handed to the worker (structured clone). */
export interface WorkerInit {
  tunFd: number;
  tunName: string;
  tunFlags: number;
  vnetHdrBytes: number;
  wakeFd: number;
  processorUrl: string;
  processorOptions: unknown;
  counters: SharedArrayBuffer;
  flags: SharedArrayBuffer;
  tickIntervalMs: number;
  batchMax: number;
  sliceBudgetMs: number;
  bufferBytes: number;
}

/** Worker -> main messages. */
export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'start-failed'; error: string }
  | { type: 'control-reply'; id: number; ok: true; value: unknown }
  | { type: 'control-reply'; id: number; ok: false; error: string }
  | { type: 'stopped' };

function toUrl(m: string | URL): string {
  if (m instanceof URL) return m.href;
  if (/^(file|data):/.test(m)) return m;
  return pathToFileURL(path.resolve(m)).href;
}

export async function startPacketLoop(opts: PacketLoopOptions): Promise<PacketLoop> {
  // Opened here, not in the worker: errors surface synchronously with their TunError code, and
  // later several queues (IFF_MULTI_QUEUE) can be opened here and handed to several workers.
  opts.tun?.setNonBlocking(true);
  const tun = opts.tun ?? openTun({ name: opts.tunName, mtu: opts.mtu ?? 1500, txQueueLen: opts.txQueueLen, nonBlocking: true, up: true });
  let wakeFd = -1;
  try {
    wakeFd = createEventFd();
  } catch (e) {
    tun.close();
    throw e;
  }
  const countersSab = new SharedArrayBuffer(COUNTER_SLOTS * 8);
  const flagsSab = new SharedArrayBuffer(FLAG_SLOTS * 4);
  const counters = new Float64Array(countersSab);
  const flags = new Int32Array(flagsSab);
  const init: WorkerInit = {
    tunFd: tun.fd,
    tunName: tun.name,
    tunFlags: tun.flags,
    vnetHdrBytes: tun.vnetHdrBytes,
    wakeFd,
    processorUrl: toUrl(opts.processorModule),
    processorOptions: opts.processorOptions,
    counters: countersSab,
    flags: flagsSab,
    tickIntervalMs: opts.tickIntervalMs ?? 100,
    batchMax: opts.batchMax ?? 256,
    sliceBudgetMs: opts.sliceBudgetMs ?? 5,
    bufferBytes: opts.bufferBytes ?? 65536 + 512,
  };
  const worker = new Worker(new URL('./packet-worker.js', import.meta.url), { workerData: init });

  let closedFds = false;
  const closeFds = () => {
    if (closedFds) return;
    closedFds = true;
    tun.close();
    closeFd(wakeFd);
  };
  let exitCode: number | undefined;
  let workerError: Error | undefined;
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; t0: number; timer: NodeJS.Timeout }>();
  let maxControlMs = 0;
  let nextId = 1;

  const failPending = (why: string) => {
    for (const [id, p] of pending) {
      clearTimeout(p.timer);
      p.reject(new PacketLoopError('LOOP_STOPPED', why));
      pending.delete(id);
    }
  };

  const exited = new Promise<number>((resolve) => {
    worker.on('exit', (code) => {
      exitCode = code;
      failPending(`packet loop worker exited (code ${code})${workerError ? `: ${workerError.message}` : ''}`);
      // Only now is nobody reading the fd: safe to close it.
      closeFds();
      resolve(code);
    });
  });
  worker.on('error', (err) => {
    workerError = err;
  });

  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new PacketLoopError('LOOP_START_FAILED', `packet loop worker did not start within ${opts.startTimeoutMs ?? 10000} ms`)), opts.startTimeoutMs ?? 10000);
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'ready') {
        clearTimeout(timer);
        resolve();
      } else if (m.type === 'start-failed') {
        clearTimeout(timer);
        reject(new PacketLoopError('LOOP_START_FAILED', `packet loop could not start: ${m.error}`));
      } else if (m.type === 'control-reply') {
        const p = pending.get(m.id);
        if (!p) return;
        pending.delete(m.id);
        clearTimeout(p.timer);
        const ms = performance.now() - p.t0;
        if (ms > maxControlMs) maxControlMs = ms;
        if (m.ok) p.resolve(m.value);
        else p.reject(new PacketLoopError('LOOP_CONTROL_FAILED', m.error));
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new PacketLoopError('LOOP_START_FAILED', `packet loop worker exited during start (code ${code})${workerError ? `: ${workerError.message}` : ''}`));
    });
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    if (stopping) return stopping;
    stopping = (async () => {
      if (exitCode === undefined) {
        Atomics.store(flags, Flag.stop, 1);
        if (!closedFds) signalEventFd(wakeFd);
        const t = setTimeout(() => void worker.terminate(), 2000);
        await exited;
        clearTimeout(t);
      }
      closeFds();
    })();
    return stopping;
  };

  try {
    await ready;
  } catch (e) {
    await stop();
    throw e;
  }

  const readStats = (): PacketLoopStats => ({
    packetsIn: counters[Counter.packetsIn],
    packetsOut: counters[Counter.packetsOut],
    dropped: counters[Counter.dropped],
    readErrors: counters[Counter.readErrors],
    writeErrors: counters[Counter.writeErrors],
    processErrors: counters[Counter.processErrors],
    bytesIn: counters[Counter.bytesIn],
    bytesOut: counters[Counter.bytesOut],
    batches: counters[Counter.batches],
    ticks: counters[Counter.ticks],
    maxLoopLagMs: counters[Counter.maxLoopLagMs],
    maxBatch: counters[Counter.maxBatch],
    lastErrno: counters[Counter.lastErrno],
    busyMs: counters[Counter.busyMs],
    maxControlMs,
  });

  return {
    tunName: tun.name,
    counters,
    exited,
    stats: readStats,
    resetMax() {
      maxControlMs = 0;
      Atomics.store(flags, Flag.resetMax, 1);
    },
    control(msg: unknown, timeoutMs = 5000): Promise<unknown> {
      if (exitCode !== undefined || stopping) return Promise.reject(new PacketLoopError('LOOP_STOPPED', 'packet loop is stopped'));
      const id = nextId++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new PacketLoopError('LOOP_CONTROL_TIMEOUT', `processor did not answer a control message within ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, { resolve, reject, t0: performance.now(), timer });
        worker.postMessage({ type: 'control', id, msg });
        // Wake the worker out of poll() so the message is handled now, not at the next poll timeout.
        signalEventFd(wakeFd);
      });
    },
    stop,
  };
}
