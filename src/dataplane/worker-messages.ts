// What the main thread and the packet worker send each other (structured clone), and what they share.
import type { EngineConfig } from '../engine/config.js';
import type { TokenStoreConfig } from '../cluster/token-store.js';
import type { ControlOp, ControlReq, ControlRes } from './control-protocol.js';
import type { StoreAnswer, StoreRequests } from './store-sync.js';

/** Data handed to the worker at start. */
export interface WorkerInit {
  /** The TUN queue fds (owned by the main thread, which closes them after the worker ends). */
  tunFds: number[];
  tunName: string;
  tunFlags: number;
  vnetHdrBytes: number;
  /** eventfd that wakes the worker out of poll() (control requests, stop). */
  wakeFd: number;
  engine: EngineConfig;
  /** The shared token store, when balancers run in parallel (password resolved). */
  tokenStore?: TokenStoreConfig;
  /** Shared memory behind the store's counters (SyncCounter). */
  storeCounters: SharedArrayBuffer;
  /** Shared memory behind the engine's Counters and the loop's counters (LoopCounter). */
  engineCounters: SharedArrayBuffer;
  loopCounters: SharedArrayBuffer;
  flags: SharedArrayBuffer;
  tickIntervalMs: number;
  batchMax: number;
  sliceBudgetMs: number;
  spinUs: number;
  /** The tc-bpf fast path's flow map (fd shared by the process) and its writer's counters (FastpathCounter). */
  fastpath?: { flowsFd: number; statsFd: number; counters: SharedArrayBuffer };
}

/** The fast path writer's counters in shared memory (Float64), written by the worker. */
export const enum FastpathCounter { Inserted = 0, Removed = 1, InsertErrors = 2, Checks = 3, Flushes = 4, Count = 5 }

/** Int32 flags shared with the worker. */
/** `busy`: a sequence the worker makes odd while it changes counters and even while it waits (readers retry on odd or on a change). */
export const enum Flag { stop = 0, resetMax = 1, busy = 2, Count = 3 }

/** Main -> worker. */
export type MainMessage = { [K in ControlOp]: { type: 'call'; id: number; op: K; req: ControlReq<K> } }[ControlOp] | StoreAnswer;

/** Worker -> main. */
export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'start-failed'; error: string }
  | { type: 'result'; id: number; ok: true; value: ControlRes<ControlOp> }
  | { type: 'result'; id: number; ok: false; error: string; refused: boolean }
  | { type: 'engine-error'; error: string; head: string; suppressed: number }
  | StoreRequests
  | { type: 'stopped' };
