// Worker-thread side of the packet loop: poll the TUN queue(s), read a batch, process in place, write back;
// return to this worker's event loop between batches so control messages are answered promptly.
// Two hot paths: plain IP packets (runBatch), and packets behind a virtio_net_hdr (runBatchVnet: GSO
// super-packets with partial checksums, header passed through unchanged, zeroed for replies).
import { parentPort, workerData } from 'node:worker_threads';
import { TunDevice, pollReadable, drainEventFd } from '../io/tun.js';
import { Counter, Flag, type PacketProcessor, type WorkerInit, type WorkerMessage, type CreateProcessor } from './packet-loop.js';
import { vnetStep, VnetOutcome, VnetStep, type ProcessAt } from '../wire/vnet-hdr.js';

const init = workerData as WorkerInit;
const port = parentPort!;
const counters = new Float64Array(init.counters);
const flags = new Int32Array(init.flags);
const tunFds = init.tunFds ?? [init.tunFd];
const queues = tunFds.map((fd) => TunDevice.fromFd(fd, init.tunName, init.tunFlags, init.vnetHdrBytes));
const nq = queues.length;
const buf = new Uint8Array(init.bufferBytes);
const pollScratch = Buffer.alloc(8 * (nq + 1));
const pollFds = [...tunFds, init.wakeFd];
const WAKE_BIT = 1 << nq;
const IDLE_POLL_MS = 50;
const hdrBytes = init.vnetHdrBytes;
const step = new VnetStep();
const spinMs = (init.spinUs ?? 0) / 1000;

function post(m: WorkerMessage): void {
  port.postMessage(m);
}

function errText(e: unknown): string {
  return e instanceof Error ? `${e.message}` : String(e);
}

const nowMs = (): number => performance.timeOrigin + performance.now();
const yieldToEventLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

async function loadProcessor(): Promise<PacketProcessor> {
  const mod = (await import(init.processorUrl)) as { createProcessor?: CreateProcessor };
  if (typeof mod.createProcessor !== 'function') {
    throw new Error(`${init.processorUrl} does not export a createProcessor(options) function`);
  }
  const p = await mod.createProcessor(init.processorOptions);
  if (!p || typeof p.process !== 'function') {
    throw new Error(`createProcessor() in ${init.processorUrl} returned no object with a process(buf, len, nowMs) method`);
  }
  return p;
}

/** Hot: one batch. All packets of a batch get the same nowMs (monotonic, epoch-based, fractional). Reads until the TUN is empty, batchMax packets, or the time budget is spent.
 *  Returns false when reading failed (the caller backs off instead of spinning). */
function runBatch(proc: PacketProcessor, tun: TunDevice): boolean {
  let readOk = true;
  const t0 = performance.now();
  const now = performance.timeOrigin + t0;
  const budgetEnd = t0 + init.sliceBudgetMs;
  const max = init.batchMax;
  let n = 0;
  let pin = 0, pout = 0, drop = 0, bin = 0, bout = 0;
  while (n < max) {
    const len = tun.read(buf);
    if (len === 0) break;
    if (len < 0) {
      counters[Counter.readErrors]++;
      counters[Counter.lastErrno] = -len;
      readOk = false;
      break;
    }
    n++;
    pin++;
    bin += len;
    let out: number;
    try {
      out = proc.process(buf, len, now);
    } catch {
      counters[Counter.processErrors]++;
      out = 0;
    }
    if (out > 0) {
      const w = tun.write(buf, out);
      if (w < 0) {
        counters[Counter.writeErrors]++;
        counters[Counter.lastErrno] = -w;
      } else {
        pout++;
        bout += out;
      }
    } else {
      drop++;
    }
    if ((n & 31) === 0 && performance.now() > budgetEnd) break;
  }
  counters[Counter.packetsIn] += pin;
  counters[Counter.packetsOut] += pout;
  counters[Counter.dropped] += drop;
  counters[Counter.bytesIn] += bin;
  counters[Counter.bytesOut] += bout;
  counters[Counter.batches]++;
  if (n > counters[Counter.maxBatch]) counters[Counter.maxBatch] = n;
  const lag = performance.now() - t0;
  counters[Counter.busyMs] += lag;
  if (lag > counters[Counter.maxLoopLagMs]) counters[Counter.maxLoopLagMs] = lag;
  return readOk;
}

/** Hot: like runBatch, for a TUN with IFF_VNET_HDR: buf[0, hdrBytes) is the virtio_net_hdr, the IP packet follows
 *  (vnetStep does the per-packet work). Returns the number of packets read, or -1 when reading failed. */
function runBatchVnet(tun: TunDevice, processAt: ProcessAt): number {
  const t0 = performance.now();
  const now = performance.timeOrigin + t0;
  const budgetEnd = t0 + init.sliceBudgetMs;
  const max = init.batchMax;
  const H = hdrBytes;
  let n = 0;
  let pin = 0, pout = 0, drop = 0, bin = 0, bout = 0, gso = 0, bad = 0, replies = 0;
  let failed = false;
  while (n < max) {
    const got = tun.read(buf);
    if (got === 0) break;
    if (got < 0) {
      counters[Counter.readErrors]++;
      counters[Counter.lastErrno] = -got;
      failed = true;
      break;
    }
    n++;
    pin++;
    let o: VnetOutcome;
    try {
      o = vnetStep(buf, H, got, now, processAt, step);
    } catch {
      counters[Counter.processErrors]++;
      o = VnetOutcome.Drop;
    }
    if (o === VnetOutcome.Malformed) {
      bad++;
      drop++;
    } else {
      bin += got - H;
      if (step.hdr.gsoType !== 0) gso++;
      if (o === VnetOutcome.Drop) {
        drop++;
      } else {
        if (o === VnetOutcome.Reply) replies++;
        const w = tun.write(buf, step.writeLen);
        if (w < 0) {
          counters[Counter.writeErrors]++;
          counters[Counter.lastErrno] = -w;
        } else {
          pout++;
          bout += step.writeLen - H;
        }
      }
    }
    if ((n & 15) === 0 && performance.now() > budgetEnd) break;
  }
  counters[Counter.packetsIn] += pin;
  counters[Counter.packetsOut] += pout;
  counters[Counter.dropped] += drop;
  counters[Counter.bytesIn] += bin;
  counters[Counter.bytesOut] += bout;
  counters[Counter.gsoPackets] += gso;
  counters[Counter.vnetMalformed] += bad;
  counters[Counter.replies] += replies;
  if (n > 0) {
    counters[Counter.batches]++;
    if (n > counters[Counter.maxBatch]) counters[Counter.maxBatch] = n;
    const lag = performance.now() - t0;
    counters[Counter.busyMs] += lag;
    if (lag > counters[Counter.maxLoopLagMs]) counters[Counter.maxLoopLagMs] = lag;
  }
  return failed ? -1 : n;
}

async function main(): Promise<void> {
  let proc: PacketProcessor;
  try {
    proc = await loadProcessor();
  } catch (e) {
    post({ type: 'start-failed', error: errText(e) });
    port.close();
    return;
  }
  const processAt = hdrBytes > 0 && typeof proc.processAt === 'function' ? proc.processAt.bind(proc) : undefined;
  if (hdrBytes > 0 && typeof processAt !== 'function') {
    post({ type: 'start-failed', error: `the TUN has a virtio_net_hdr (vnetHdr) but the processor of ${init.processorUrl} has no processAt(buf, off, len, nowMs, partialCsum) method` });
    port.close();
    return;
  }

  port.on('message', (m: { type: string; id: number; msg: unknown }) => {
    if (m.type !== 'control') return;
    const reply = (p: Promise<unknown>) =>
      p.then(
        (value) => {
          try {
            post({ type: 'control-reply', id: m.id, ok: true, value });
          } catch (e) {
            // e.g. DataCloneError: the answer holds functions or other uncloneable values
            post({ type: 'control-reply', id: m.id, ok: false, error: `control answer cannot be sent: ${errText(e)}` });
          }
        },
        (e) => post({ type: 'control-reply', id: m.id, ok: false, error: errText(e) }),
      );
    if (typeof proc.control !== 'function') {
      void reply(Promise.reject(new Error('the processor has no control(msg) method')));
      return;
    }
    try {
      void reply(Promise.resolve(proc.control(m.msg)));
    } catch (e) {
      void reply(Promise.reject(e));
    }
  });
  post({ type: 'ready' });

  const tickMs = init.tickIntervalMs;
  let nextTick = performance.now() + tickMs;
  while (Atomics.load(flags, Flag.stop) === 0) {
    if (Atomics.exchange(flags, Flag.resetMax, 0) === 1) {
      counters[Counter.maxLoopLagMs] = 0;
      counters[Counter.maxBatch] = 0;
    }
    const t = performance.now();
    if (t >= nextTick) {
      try {
        proc.tick?.(nowMs());
      } catch {
        counters[Counter.processErrors]++;
      }
      counters[Counter.ticks]++;
      nextTick = t + tickMs;
    }
    const waitMs = Math.max(0, Math.min(IDLE_POLL_MS, Math.ceil(nextTick - t)));
    const ready = pollReadable(pollFds, waitMs, pollScratch);
    if (ready & WAKE_BIT) drainEventFd(init.wakeFd);
    let ok = true;
    if (processAt) {
      let got = 0;
      for (let q = 0; q < nq; q++) {
        if ((ready & (1 << q)) === 0) continue;
        const r = runBatchVnet(queues[q], processAt);
        if (r < 0) ok = false;
        else got += r;
      }
      // Busy-poll for a short while after traffic: the next packet of a request/response exchange is caught
      // without a sleep/wake-up. Bounded by spinUs of idleness and by the slice budget (control messages wait).
      if (ok && got > 0 && spinMs > 0) {
        const t1 = performance.now();
        const hardEnd = t1 + init.sliceBudgetMs;
        let idleEnd = t1 + spinMs;
        for (let now = t1; now < idleEnd && now < hardEnd; now = performance.now()) {
          let hit = 0;
          for (let q = 0; q < nq; q++) {
            const r = runBatchVnet(queues[q], processAt);
            if (r < 0) { ok = false; break; }
            hit += r;
          }
          if (!ok) break;
          if (hit > 0) {
            counters[Counter.spinHits] += hit;
            idleEnd = performance.now() + spinMs;
          }
        }
      }
    } else {
      for (let q = 0; q < nq; q++) if ((ready & (1 << q)) !== 0 && !runBatch(proc, queues[q])) ok = false;
    }
    // Messages (control) are delivered only when this thread's event loop runs.
    if (ok) await yieldToEventLoop();
    else await new Promise((r) => setTimeout(r, 10)); // e.g. device deleted under us: do not spin
  }
  try {
    proc.close?.();
  } catch {
    // closing is best effort
  }
  post({ type: 'stopped' });
  port.close();
}

void main();
