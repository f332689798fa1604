import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { Forwarder } from '../src/dataplane/forwarder.js';
import { TunPacketDevice } from '../src/dataplane/tun-device.js';
import { ACK, SYN, capAck, capSyn, capSynAck, dss, tcp } from './helpers/packets.js';

// Optimize on the main thread: on a busy machine a background compile can leave the loop in unoptimized code (which
// boxes doubles) for a while, and that would be counted here as the engine's allocation.
v8.setFlagsFromString('--no-concurrent-recompilation');

/** Counts garbage collections while f runs synchronously (a scavenge only happens when something allocated). */
async function gcsDuring(f: () => void): Promise<number> {
  let n = 0;
  const obs = new PerformanceObserver((list) => { n += list.getEntries().length; });
  obs.observe({ entryTypes: ['gc'] });
  f();
  await new Promise((r) => setTimeout(r, 50)); // gc entries are delivered asynchronously
  obs.disconnect();
  return n;
}

test('the established-flow path allocates nothing: 4 million packets both ways cause at most one garbage collection', async () => {
  const e = new Engine(validateEngineConfig({
    vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2' }] }],
    tables: { maxFlows: 1024, maxConnections: 1024 },
  }));
  const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: SYN, options: [capSyn(1)] });
  e.process(syn, 0, syn.length, 1);
  const be = e.addressOf(e.lastBackend);
  const sa = tcp({ src: be, dst: '198.18.1.2', sport: 80, dport: 5, flags: SYN | ACK, options: [capSynAck(1, 9n)] });
  e.process(sa, 0, sa.length, 2);
  const ack = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: ACK, options: [capAck(1, 1n, 9n)] });
  e.process(ack, 0, ack.length, 3);
  const data = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: ACK, options: [dss(77n)], payload: 100 });
  const reply = tcp({ src: be, dst: '198.18.1.2', sport: 80, dport: 5, flags: ACK, options: [dss(78n)], payload: 100 });
  const d0 = data.slice(), r0 = reply.slice();
  const run = (n: number) => {
    for (let i = 0; i < n; i++) {
      data.set(d0); reply.set(r0);
      if (e.process(data, 0, data.length, 10 + i) !== Verdict.ToBackend) throw new Error('inbound');
      if (e.process(reply, 0, reply.length, 10 + i) !== Verdict.ToClient) throw new Error('outbound');
    }
  };
  run(100_000); // warm up: let the JIT compile the path first
  await new Promise((r) => setTimeout(r, 200)); // and let a busy machine's compiler thread finish
  run(10_000);
  // Even 8 bytes per packet would be 32 MB here, several young-generation collections; one collection is
  // tolerated for the runtime's own work (a late JIT tier-up, a GC cycle begun before the loop).
  const gcs = await gcsDuring(() => run(2_000_000));
  assert.ok(gcs <= 1, `${gcs} garbage collections during 4M established packets`);
  assert.equal(e.counters.snapshot().counters.to_backend, 2 + 2_110_000, 'SYN, third ACK and the data packets');
});

test('the forwarder path (TUN device with a virtio header, batches of 64) allocates nothing for established flows', async () => {
  const e = new Engine(validateEngineConfig({
    vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }] }],
    tables: { maxFlows: 1024, maxConnections: 1024 },
  }));
  const H = 12;
  const withHdr = (p: Uint8Array) => { const b = new Uint8Array(H + p.length); b.set(p, H); return b; };
  const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: SYN, options: [capSyn(1)] });
  const sa = tcp({ src: '198.18.10.2', dst: '198.18.1.2', sport: 80, dport: 5, flags: SYN | ACK, options: [capSynAck(1, 9n)] });
  const ack = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: ACK, options: [capAck(1, 1n, 9n)] });
  const frames = [syn, sa, ack].map(withHdr);
  const data = withHdr(tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: ACK, options: [dss(77n)], payload: 1000 }));
  const reply = withHdr(tcp({ src: '198.18.10.2', dst: '198.18.1.2', sport: 80, dport: 5, flags: ACK, options: [dss(78n)], payload: 1000 }));
  // A queue that hands out the handshake, then data and replies in turn, `budget` packets per batch; copies only.
  let left = 0, k = 0, written = 0;
  const queue = {
    vnetHdrBytes: H,
    read(buf: Uint8Array, offset: number): number {
      if (left === 0) return 0;
      left--;
      const f = k < frames.length ? frames[k] : (k & 1) === 0 ? data : reply;
      k++;
      buf.set(f, offset);
      return f.length;
    },
    write(_b: Uint8Array, length: number): number { written++; return length; },
    close(): void {},
  };
  const fwd = new Forwarder(e, new TunPacketDevice(queue));
  const run = (batches: number) => {
    for (let i = 0; i < batches; i++) {
      left = 64;
      if (fwd.runOnce(10 + i) !== 64) throw new Error('short batch');
    }
  };
  // Warm up until the loop runs optimized code (unoptimized code boxes doubles such as the batch timings), and give
  // the compiler thread time to finish on a busy machine.
  run(20_000);
  await new Promise((r) => setTimeout(r, 200));
  run(2_000);
  const before = written;
  const gcs = await gcsDuring(() => run(16_000)); // about a million packets
  assert.ok(gcs <= 1, `${gcs} garbage collections during ${written - before} packets through the forwarder`);
  assert.equal(written - before, 16_000 * 64, 'every packet was forwarded');
  const c = e.counters.snapshot().counters;
  assert.equal(c.packets_in, c.to_backend + c.to_client);
});
