// /metrics shows the shared token store: up or not, every store counter by name, and the hold-wait histogram
// (cumulative buckets, as Prometheus histograms are).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, inProcessPort } from '../src/control/controller.js';
import { Metrics } from '../src/control/metrics.js';
import { validateRunConfig } from '../src/control/run-config.js';
import type { PacketLoopStats } from '../src/dataplane/packet-loop.js';
import { HOLD_WAIT_BUCKETS_MS, SYNC_COUNTER_LABELS } from '../src/dataplane/store-sync.js';

test('token store metrics: up gauge, events by name, hold-wait buckets cumulative', async () => {
  const cfg = validateRunConfig({ vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }] }], tables: { maxFlows: 64, maxConnections: 64 } });
  const ctl = new Controller(inProcessPort(cfg), cfg);
  const store: Record<string, number> = Object.fromEntries(SYNC_COUNTER_LABELS.map((l) => [l, 0]));
  Object.assign(store, { store_up: 1, joins_held: 7, joins_found_in_store: 5, joins_store_timed_out: 2, hold_wait_le_1ms: 3, hold_wait_le_2ms: 2, hold_wait_gt_512ms: 1 });
  const loop = { batches: 1, ticks: 1, busyMs: 0, maxLoopLagMs: 0, maxBatch: 1, readErrors: 0, writeErrors: 0, lastErrno: 0, gsoPackets: 0, spinHits: 0, maxControlMs: 0, queues: 1, vnetHdrBytes: 12, offloads: 7, store } satisfies PacketLoopStats;
  const text = await new Metrics({ controller: ctl, loopStats: () => loop, processMetrics: false }).render();
  assert.match(text, /^mplb_token_store_up\{store="redis"\} 1$/m);
  assert.match(text, /^mplb_token_store_events_total\{event="joins_held"\} 7$/m);
  assert.match(text, /^mplb_token_store_events_total\{event="joins_store_timed_out"\} 2$/m);
  assert.match(text, /^mplb_token_store_hold_wait_bucket\{le="0.5"\} 0$/m);
  assert.match(text, /^mplb_token_store_hold_wait_bucket\{le="1"\} 3$/m);
  assert.match(text, /^mplb_token_store_hold_wait_bucket\{le="2"\} 5$/m, 'cumulative');
  assert.match(text, /^mplb_token_store_hold_wait_bucket\{le="512"\} 5$/m);
  assert.match(text, /^mplb_token_store_hold_wait_bucket\{le="\+Inf"\} 6$/m);
  assert.equal(HOLD_WAIT_BUCKETS_MS.length + 1, SYNC_COUNTER_LABELS.filter((l) => l.startsWith('hold_wait_') && l !== 'hold_wait_ms_total').length);
  const without = await new Metrics({ controller: ctl, loopStats: () => ({ ...loop, store: undefined }), processMetrics: false }).render();
  assert.doesNotMatch(without, /^mplb_token_store_(up|events_total|hold_wait_bucket)\{/m, 'no store configured: no store series');
});
