// The packet worker thread: the engine, one forwarder per TUN queue, and the control handler. It polls the
// queues, runs batches within a time budget, and returns to its event loop between them so control requests are
// answered promptly. Everything per packet happens in forwarder.ts.
import { parentPort, workerData } from 'node:worker_threads';
import { validateEngineConfig } from '../engine/config.js';
import { Engine } from '../engine/engine.js';
import { TunDevice, pollReadable, drainEventFd } from '../io/tun.js';
import { ControlRequestError, handleControl } from './control-protocol.js';
import { Forwarder, LoopCounter } from './forwarder.js';
import { TunPacketDevice } from './tun-device.js';
import { StoreSync } from './store-sync.js';
import { FlowMap } from '../fastpath/flow-map.js';
import { FastpathCounter, Flag, type MainMessage, type WorkerInit, type WorkerMessage } from './worker-messages.js';

// Started ahead of its config (packet-loop.ts prestartPacketWorker: its modules load while the main thread reads the
// config file), it gets its WorkerInit as the first message.
const init = (workerData as WorkerInit | null) ?? await new Promise<WorkerInit>((resolve) => parentPort!.once('message', (m: { init: WorkerInit }) => resolve(m.init)));
const port = parentPort!;
const loopCounters = new Float64Array(init.loopCounters);
const flags = new Int32Array(init.flags);
const post = (m: WorkerMessage): void => port.postMessage(m);
const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const nowMs = (): number => performance.timeOrigin + performance.now();
const yieldToEventLoop = (): Promise<void> => new Promise((r) => setImmediate(r));
const IDLE_POLL_MS = 50;

/** Engine exceptions are bugs: report them, at most one a second (with how many were not reported). */
let lastErrorReport = -Infinity, unreported = 0;
function onEngineError(e: unknown, head: Uint8Array): void {
  const t = performance.now();
  if (t - lastErrorReport < 1000) { unreported++; return; }
  lastErrorReport = t;
  post({ type: 'engine-error', error: errText(e), head: Buffer.from(head).toString('hex'), suppressed: unreported });
  unreported = 0;
}

let sync: StoreSync | undefined;
let fpMap: FlowMap | undefined;
let fpCounters: Float64Array | undefined;

/** How often the program's per-backend counters are added to the engine's (the per-backend metrics lag by this). */
const FOLD_STATS_MS = 1000;
let nextFold = 0;

/** Applies the engine's offload events to the kernel map (between batches) and publishes the writer's counters. */
function applyOffload(now: number): void {
  if (!fpMap) return;
  if (now >= nextFold) { nextFold = now + FOLD_STATS_MS; fpMap.foldBackendStats(); }
  if (fpMap.apply(now) === 0) return;
  const c = fpMap.counters, s = fpCounters!;
  s[FastpathCounter.Inserted] = c.inserted;
  s[FastpathCounter.Removed] = c.removed;
  s[FastpathCounter.InsertErrors] = c.insertErrors;
  s[FastpathCounter.Checks] = c.checks;
  s[FastpathCounter.Flushes] = c.flushes;
}

function main(): void {
  let engine: Engine;
  let forwarders: Forwarder[];
  try {
    engine = new Engine(validateEngineConfig(init.engine, 'engine'), init.engineCounters);
    const onHold = (slot: Uint8Array, h: number, len: number, flags: number, now: number) => sync?.hold(slot, h, len, flags, now) ?? false;
    forwarders = init.tunFds.map((fd) => new Forwarder(engine, new TunPacketDevice(TunDevice.fromFd(fd, init.tunName, init.tunFlags, init.vnetHdrBytes)), {
      counters: loopCounters, batchMax: init.batchMax, tickMs: init.tickIntervalMs, onEngineError, onHold,
    }));
    const ts = init.tokenStore;
    if (ts) {
      // Held packets go out through the first queue's forwarder (one engine decides for every queue). The store
      // client runs on the main thread; this thread only exchanges messages with it.
      sync = new StoreSync(engine, forwarders[0], {
        keyPrefix: ts.keyPrefix, maxPackets: ts.holdMaxPackets, maxBytes: ts.holdMaxBytes, maxWaitMs: ts.holdMs, tries: ts.holdTries,
        ttlMs: ts.ttlMs, lingerMs: engine.config.timeouts.tokenLingerMs,
      }, new Float64Array(init.storeCounters), post);
    }
    if (init.fastpath) {
      fpMap = new FlowMap(init.fastpath.flowsFd, engine, init.fastpath.statsFd);
      fpCounters = new Float64Array(init.fastpath.counters);
      engine.offload.enabled = true;
    }
  } catch (e) {
    post({ type: 'start-failed', error: errText(e) });
    port.close();
    return;
  }

  port.on('message', (m: MainMessage) => {
    if (m.type !== 'call') { sync?.onMessage(m, nowMs()); return; }
    try {
      post({ type: 'result', id: m.id, ok: true, value: handleControl(engine, m.op, m.req as never) });
    } catch (e) {
      post({ type: 'result', id: m.id, ok: false, error: errText(e), refused: e instanceof ControlRequestError });
    }
  });
  post({ type: 'ready' });
  void loop(forwarders);
}

/** Reads a queue until it is empty or the slice budget is spent. Returns packets read, or -1 when reading failed. */
function drain(f: Forwarder, budgetEnd: number): number {
  let total = 0;
  for (;;) {
    const got = f.runOnce(nowMs());
    if (got < 0) return -1;
    total += got;
    if (got === 0 || performance.now() > budgetEnd) return total;
  }
}

async function loop(forwarders: Forwarder[]): Promise<void> {
  const nq = forwarders.length;
  const pollFds = [...init.tunFds, init.wakeFd];
  const pollScratch = Buffer.alloc(8 * (nq + 1));
  const WAKE_BIT = 1 << nq;
  const spinMs = init.spinUs / 1000;
  while (Atomics.load(flags, Flag.stop) === 0) {
    if (Atomics.exchange(flags, Flag.resetMax, 0) === 1) {
      loopCounters[LoopCounter.MaxBatchMs] = 0;
      loopCounters[LoopCounter.MaxBatch] = 0;
    }
    Atomics.add(flags, Flag.busy, 1); // odd: counters change until the wait below
    forwarders[0].maybeTick(nowMs());
    applyOffload(nowMs());
    sync?.step(nowMs());
    Atomics.add(flags, Flag.busy, 1);
    // The main thread wakes this one (wakeFd) when it posts a store answer; a retry waits at most a few ms.
    const ready = pollReadable(pollFds, sync && sync.pool.size > 0 ? 2 : IDLE_POLL_MS, pollScratch);
    if (ready & WAKE_BIT) drainEventFd(init.wakeFd);
    Atomics.add(flags, Flag.busy, 1);
    let ok = true, got = 0;
    const budgetEnd = performance.now() + init.sliceBudgetMs;
    for (let q = 0; q < nq; q++) {
      if ((ready & (1 << q)) === 0) continue;
      const r = drain(forwarders[q], budgetEnd);
      if (r < 0) ok = false; else got += r;
    }
    // Flows decided in these batches go on the fast path now, before their next packets queue up in the TUN.
    if (got > 0) applyOffload(nowMs());
    // Busy-poll for a short while after traffic: the next packet of a request/response exchange is caught
    // without a sleep/wake-up. Bounded by spinUs of idleness and by the slice budget (control messages wait).
    if (ok && got > 0 && spinMs > 0) {
      const t1 = performance.now();
      const hardEnd = t1 + init.sliceBudgetMs;
      for (let now = t1, idleEnd = t1 + spinMs; now < idleEnd && now < hardEnd && ok; now = performance.now()) {
        let hit = 0;
        for (let q = 0; q < nq && ok; q++) {
          const r = drain(forwarders[q], hardEnd);
          if (r < 0) ok = false; else hit += r;
        }
        if (hit > 0) { loopCounters[LoopCounter.SpinHits] += hit; idleEnd = performance.now() + spinMs; }
      }
    }
    Atomics.add(flags, Flag.busy, 1); // even again
    // Control requests are delivered only when this thread's event loop runs.
    if (ok) await yieldToEventLoop();
    else await new Promise((r) => setTimeout(r, 10)); // e.g. the device was deleted under us: do not spin
  }
  // The queue fds belong to the main thread, which closes them once this thread has ended.
  post({ type: 'stopped' });
  port.close();
}

main();
