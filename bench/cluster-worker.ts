// The worker thread of the 'threads' variant of bench/cluster.bench.ts: the engine and the StoreSync generate n new
// MPTCP connections and post their store requests to the main thread (as src/dataplane/packet-worker.ts does), which
// serves them with the TokenStore. Collisions come back as messages.
import { parentPort, workerData } from 'node:worker_threads';
import type { StoreAnswer, StoreRequests } from '../src/dataplane/store-sync.js';
import { makeLoad } from './cluster.bench.js';

const { n, salt, prefix } = workerData as { n: number; salt: number; prefix: string };
const port = parentPort!;
const load = makeLoad(n, salt, false, prefix, (r: StoreRequests) => port.postMessage(r));
port.on('message', (m: StoreAnswer) => load.sync?.onMessage(m, Date.now()));
const K = 64;
let loopMs = 0;
for (let i0 = 0, round = 0; i0 < n; i0 += K, round++) {
  const t = performance.now();
  load.round(i0);
  loopMs += performance.now() - t;
  // Let collision answers in now and then, as the packet worker's event loop does between batches.
  if ((round & 63) === 63) await new Promise((r) => setImmediate(r));
}
load.finish();
load.check();
port.postMessage({ type: 'done', loopS: loopMs / 1000 });
