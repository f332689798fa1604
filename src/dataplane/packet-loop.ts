// Main-thread side of the packet loop: opens the TUN, starts the worker that reads/processes/writes
// packets, relays control messages and exposes shared counters.
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import path from 'node:path';
import { openTun, createEventFd, signalEventFd, closeFd, TunDevice, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 } from '../io/tun.js';
import { validVnetHdrBytes } from '../wire/vnet-hdr.js';

/** What a processor module's `createProcessor(options)` returns. */
export interface PacketProcessor {
  /** Hot path: packet is buf[0..len); rewrite in place and return the length to write back, or 0 to drop. */
  process(buf: Uint8Array, len: number, nowMs: number): number;
  /**
   * Hot path of the offload (IFF_VNET_HDR) loop, required there: the IP packet is buf[off..off+len), possibly a
   * GSO super-packet of up to 64 KiB; `partialCsum` means the TCP checksum field holds the uncomplemented
   * pseudo-header sum (virtio NEEDS_CSUM). Returns the length to write back with the packet's own virtio header
   * (> 0), the negated length of a new packet written at `off` with full checksums (a reply; it goes out with
   * a zeroed header), or 0 to drop.
   */
  processAt?(buf: Uint8Array, off: number, len: number, nowMs: number, partialCsum: boolean): number;
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
  /**
   * Open the TUN with IFF_VNET_HDR + TUNSETVNETHDRSZ + TUNSETOFFLOAD: reads may hold GSO super-packets (up to
   * 64 KiB) with partial checksums, written back with their virtio header. The processor must have processAt().
   */
  vnetHdr?: boolean;
  /** virtio_net_hdr size, 10 or 12 (default 12). */
  vnetHdrBytes?: number;
  /** TUN_F_* offloads with vnetHdr (default TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6). */
  offloads?: number;
  /** TUN queues (IFF_MULTI_QUEUE when > 1; default 1). Every queue is served by one of the workers. */
  queues?: number;
  /**
   * Worker threads (default 1, at most `queues`); worker i serves queues i, i + workers, ... Each worker has its
   * OWN processor instance, so more than one is only correct for processors that keep no per-flow state (or a
   * single backend): the kernel picks a packet's queue by flow hash, so the two directions of a NAT flow and the
   * subflows of one MPTCP connection may land on different workers (see docs/datapath.md).
   */
  workers?: number;
  /** After handling packets, keep polling the queues without sleeping for this long (µs; default 0). */
  spinUs?: number;
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
  /** Reads whose virtio_net_hdr was malformed (dropped, counted in `dropped` too). */
  vnetMalformed: 14,
  /** Reads that were GSO super-packets (gso_type != NONE). */
  gsoPackets: 15,
  /** Replies written with a zeroed virtio header. */
  replies: 16,
  /** Reads that returned a packet during a busy-poll spin (instead of after poll()). */
  spinHits: 17,
} as const;
export const COUNTER_SLOTS = 24;

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
  vnetMalformed: number;
  gsoPackets: number;
  replies: number;
  spinHits: number;
  /** Longest control() round trip seen by the main thread (ms). */
  maxControlMs: number;
  /** Data path shape: TUN queues, worker threads, virtio header bytes (0 = off), offload bits. */
  queues: number;
  workers: number;
  vnetHdrBytes: number;
  offloads: number;
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
  /** The queue fds this worker serves (the first is also tunFd). */
  tunFds: number[];
  workerIndex: number;
  spinUs: number;
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

const DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;

/** One worker thread and what belongs to it. */
interface WorkerSlot {
  worker: Worker;
  counters: Float64Array;
  flags: Int32Array;
  wakeFd: number;
  exited: Promise<number>;
  exitCode?: number;
  error?: Error;
}

export async function startPacketLoop(opts: PacketLoopOptions): Promise<PacketLoop> {
  const nQueues = opts.queues ?? 1;
  const nWorkers = opts.workers ?? 1;
  if (!Number.isInteger(nQueues) || nQueues < 1 || nQueues > 16) throw new PacketLoopError('LOOP_START_FAILED', `queues must be an integer 1..16, got ${nQueues}`);
  if (!Number.isInteger(nWorkers) || nWorkers < 1 || nWorkers > nQueues) throw new PacketLoopError('LOOP_START_FAILED', `workers must be an integer 1..queues (${nQueues}), got ${nWorkers}`);
  const vnetBytes = opts.vnetHdr ? opts.vnetHdrBytes ?? 12 : 0;
  if (opts.vnetHdr && !validVnetHdrBytes(vnetBytes)) throw new PacketLoopError('LOOP_START_FAILED', `vnetHdrBytes must be 10 or 12, got ${vnetBytes}`);
  const offloads = opts.vnetHdr ? opts.offloads ?? DEFAULT_OFFLOADS : 0;
  // Opened here, not in the workers: errors surface synchronously with their TunError code, and the queues of a
  // multi-queue device are all opened here and handed to the workers.
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
  const wakeFds: number[] = [];
  let closedFds = false;
  const closeFds = () => {
    if (closedFds) return;
    closedFds = true;
    for (const d of devs) d.close();
    for (const fd of wakeFds) closeFd(fd);
  };
  try {
    for (let q = 1; q < nQueues; q++) devs.push(tun.openQueue(true));
    for (let w = 0; w < nWorkers; w++) wakeFds.push(createEventFd());
  } catch (e) {
    closeFds();
    throw e;
  }

  const slots: WorkerSlot[] = [];
  for (let w = 0; w < nWorkers; w++) {
    const countersSab = new SharedArrayBuffer(COUNTER_SLOTS * 8);
    const flagsSab = new SharedArrayBuffer(FLAG_SLOTS * 4);
    const fds = devs.filter((_, q) => q % nWorkers === w).map((d) => d.fd);
    const init: WorkerInit = {
      tunFds: fds,
      workerIndex: w,
      spinUs: opts.spinUs ?? 0,
      tunFd: fds[0],
      tunName: tun.name,
      tunFlags: tun.flags,
      vnetHdrBytes: tun.vnetHdrBytes,
      wakeFd: wakeFds[w],
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
    const slot = { worker, counters: new Float64Array(countersSab), flags: new Int32Array(flagsSab), wakeFd: wakeFds[w] } as WorkerSlot;
    slot.exited = new Promise<number>((resolve) => {
      worker.on('exit', (code) => {
        slot.exitCode = code;
        resolve(code);
      });
    });
    worker.on('error', (err) => { slot.error = err; });
    slots.push(slot);
  }
  const counters = slots[0].counters;

  // Control requests: sent to every worker (each has its own processor); answered with worker 0's value.
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; t0: number; timer: NodeJS.Timeout; left: number; value?: unknown; error?: string }>();
  let maxControlMs = 0;
  let nextId = 1;
  let anyExited = false;
  let firstExitCode: number | undefined;

  const failPending = (why: string) => {
    for (const [id, p] of pending) {
      clearTimeout(p.timer);
      p.reject(new PacketLoopError('LOOP_STOPPED', why));
      pending.delete(id);
    }
  };
  const describeError = (s: WorkerSlot) => (s.error ? `: ${s.error.message}` : '');

  for (const s of slots) {
    void s.exited.then((code) => {
      if (!anyExited) {
        anyExited = true;
        firstExitCode = code;
      }
      failPending(`packet loop worker exited (code ${code})${describeError(s)}`);
      // One worker gone: stop the others, then close the fds once nobody reads them.
      for (const o of slots) if (o !== s && o.exitCode === undefined) Atomics.store(o.flags, Flag.stop, 1);
      if (slots.every((o) => o.exitCode !== undefined)) closeFds();
      else for (const o of slots) if (o.exitCode === undefined && !closedFds) signalEventFd(o.wakeFd);
    });
  }
  const exited = Promise.all(slots.map((s) => s.exited)).then(() => {
    closeFds();
    return firstExitCode ?? 0;
  });

  const onReply = (w: number, m: WorkerMessage & { type: 'control-reply' }) => {
    const p = pending.get(m.id);
    if (!p) return;
    if (w === 0) p.value = m.ok ? m.value : undefined;
    if (!m.ok && p.error === undefined) p.error = m.error;
    if (--p.left > 0) return;
    pending.delete(m.id);
    clearTimeout(p.timer);
    const ms = performance.now() - p.t0;
    if (ms > maxControlMs) maxControlMs = ms;
    if (p.error === undefined) p.resolve(p.value);
    else p.reject(new PacketLoopError('LOOP_CONTROL_FAILED', p.error));
  };

  const ready = Promise.all(slots.map((s, w) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new PacketLoopError('LOOP_START_FAILED', `packet loop worker did not start within ${opts.startTimeoutMs ?? 10000} ms`)), opts.startTimeoutMs ?? 10000);
    s.worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'ready') {
        clearTimeout(timer);
        resolve();
      } else if (m.type === 'start-failed') {
        clearTimeout(timer);
        reject(new PacketLoopError('LOOP_START_FAILED', `packet loop could not start: ${m.error}`));
      } else if (m.type === 'control-reply') {
        onReply(w, m);
      }
    });
    void s.exited.then((code) => {
      clearTimeout(timer);
      reject(new PacketLoopError('LOOP_START_FAILED', `packet loop worker exited during start (code ${code})${describeError(s)}`));
    });
  })));

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    if (stopping) return stopping;
    stopping = (async () => {
      for (const s of slots) {
        if (s.exitCode !== undefined) continue;
        Atomics.store(s.flags, Flag.stop, 1);
        if (!closedFds) signalEventFd(s.wakeFd);
      }
      const t = setTimeout(() => { for (const s of slots) if (s.exitCode === undefined) void s.worker.terminate(); }, 2000);
      await exited;
      clearTimeout(t);
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

  const sum = (k: number) => slots.reduce((a, s) => a + s.counters[k], 0);
  const max = (k: number) => slots.reduce((a, s) => Math.max(a, s.counters[k]), 0);
  const readStats = (): PacketLoopStats => ({
    packetsIn: sum(Counter.packetsIn),
    packetsOut: sum(Counter.packetsOut),
    dropped: sum(Counter.dropped),
    readErrors: sum(Counter.readErrors),
    writeErrors: sum(Counter.writeErrors),
    processErrors: sum(Counter.processErrors),
    bytesIn: sum(Counter.bytesIn),
    bytesOut: sum(Counter.bytesOut),
    batches: sum(Counter.batches),
    ticks: sum(Counter.ticks),
    maxLoopLagMs: max(Counter.maxLoopLagMs),
    maxBatch: max(Counter.maxBatch),
    lastErrno: max(Counter.lastErrno),
    busyMs: sum(Counter.busyMs),
    vnetMalformed: sum(Counter.vnetMalformed),
    gsoPackets: sum(Counter.gsoPackets),
    replies: sum(Counter.replies),
    spinHits: sum(Counter.spinHits),
    maxControlMs,
    queues: nQueues,
    workers: nWorkers,
    vnetHdrBytes: tun.vnetHdrBytes,
    offloads,
  });

  return {
    tunName: tun.name,
    counters,
    exited,
    stats: readStats,
    resetMax() {
      maxControlMs = 0;
      for (const s of slots) Atomics.store(s.flags, Flag.resetMax, 1);
    },
    control(msg: unknown, timeoutMs = 5000): Promise<unknown> {
      if (anyExited || stopping) return Promise.reject(new PacketLoopError('LOOP_STOPPED', 'packet loop is stopped'));
      const id = nextId++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new PacketLoopError('LOOP_CONTROL_TIMEOUT', `processor did not answer a control message within ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, { resolve, reject, t0: performance.now(), timer, left: slots.length });
        for (const s of slots) {
          s.worker.postMessage({ type: 'control', id, msg });
          // Wake the worker out of poll() so the message is handled now, not at the next poll timeout.
          signalEventFd(s.wakeFd);
        }
      });
    },
    stop,
  };
}
