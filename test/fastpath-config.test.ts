// The datapath setting (run config) and the fast path's series in /metrics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Controller, inProcessPort } from '../src/control/controller.js';
import { Metrics } from '../src/control/metrics.js';
import { validateRunConfig } from '../src/control/run-config.js';
import { ConfigError } from '../src/engine/config.js';
import type { PacketLoopStats } from '../src/dataplane/packet-loop.js';
import { FP_COUNTER_LABELS } from '../src/fastpath/layout.js';

const base = { vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }] }], tables: { maxFlows: 64, maxConnections: 64 } };

test('datapath: tun, tc-bpf and auto are taken; absent means tun (left unset); anything else is refused with the field', () => {
  for (const d of ['tun', 'tc-bpf', 'auto'] as const) assert.equal(validateRunConfig({ ...base, datapath: d }).datapath, d);
  assert.equal(validateRunConfig(base).datapath, undefined);
  for (const bad of ['xdp', 'TC-BPF', 1, true, null]) {
    assert.throws(() => validateRunConfig({ ...base, datapath: bad }), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /^datapath: must be one of tun, tc-bpf, auto, got /);
      return true;
    }, String(bad));
  }
});

test('fastpath.maxFlows: tables.maxFlows capped at 131072 by default; bounds and unknown keys refused with the field', () => {
  assert.equal(validateRunConfig(base).fastpath, undefined, 'unset: the balancer uses the default');
  assert.deepEqual(validateRunConfig({ ...base, fastpath: {} }).fastpath, { maxFlows: 64 }, 'default: tables.maxFlows when smaller');
  assert.deepEqual(validateRunConfig({ ...base, tables: { maxFlows: 1 << 20, maxConnections: 64 }, fastpath: {} }).fastpath, { maxFlows: 131072 });
  assert.deepEqual(validateRunConfig({ ...base, fastpath: { maxFlows: 4096 } }).fastpath, { maxFlows: 4096 });
  for (const [bad, re] of [[{ maxFlows: 8 }, /^fastpath\.maxFlows: /], [{ maxFlows: 1.5 }, /^fastpath\.maxFlows: /], [{ maxFlows: 1 << 25 }, /^fastpath\.maxFlows: /], [{ size: 1 }, /^fastpath/], ['big', /^fastpath/]] as const) {
    assert.throws(() => validateRunConfig({ ...base, fastpath: bad }), (e: unknown) => e instanceof ConfigError && re.test(e.message), JSON.stringify(bad));
  }
});

test('/metrics: the program\'s counters (NATed packets and bytes, passes by reason), the map writer\'s, attached interfaces', async () => {
  const cfg = validateRunConfig(base);
  const ctl = new Controller(inProcessPort(cfg), cfg);
  const program = Object.fromEntries(FP_COUNTER_LABELS.map((l, i) => [l, 100 + i]));
  const loop = {
    batches: 1, ticks: 1, busyMs: 0, maxLoopLagMs: 0, maxBatch: 1, readErrors: 0, writeErrors: 0, lastErrno: 0, gsoPackets: 0, spinHits: 0, maxControlMs: 0,
    queues: 1, vnetHdrBytes: 12, offloads: 7,
    fastpath: { interfaces: ['lbc0', 'lbs1'], program, inserted: 40, removed: 38, insertErrors: 1, checks: 5, flushes: 0 },
  } satisfies PacketLoopStats;
  const text = await new Metrics({ controller: ctl, loopStats: () => loop, processMetrics: false }).render();
  assert.match(text, /^mplb_fastpath_attached\{interface="lbc0"\} 1$/m);
  assert.match(text, /^mplb_fastpath_attached\{interface="lbs1"\} 1$/m);
  assert.match(text, /^mplb_fastpath_packets_total 100$/m);
  assert.match(text, /^mplb_fastpath_bytes_total 101$/m);
  assert.match(text, /^mplb_fastpath_passed_total\{reason="no_entry"\} 103$/m);
  assert.match(text, /^mplb_fastpath_passed_total\{reason="mptcp"\} 105$/m);
  assert.match(text, /^mplb_fastpath_program_events_total\{event="syn_stale"\} 107$/m);
  assert.match(text, /^mplb_fastpath_program_events_total\{event="errors"\} 108$/m);
  assert.match(text, /^mplb_fastpath_map_updates_total\{op="inserted"\} 40$/m);
  assert.match(text, /^mplb_fastpath_map_updates_total\{op="insert_errors"\} 1$/m);
  const without = await new Metrics({ controller: ctl, loopStats: () => ({ ...loop, fastpath: undefined }), processMetrics: false }).render();
  assert.doesNotMatch(without, /^mplb_fastpath_attached\{/m, 'datapath tun: nothing attached');
  assert.match(without, /^mplb_fastpath_packets_total 0$/m, 'datapath tun: nothing NATed in the kernel');
});
