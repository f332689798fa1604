// ICMP handling allocates nothing per packet either: forwarded errors (both ways) and answered echoes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { buildEchoRequest, buildIcmpError } from '../src/wire/icmp-build.js';
import { ACK, SYN, tcp } from './helpers/packets.js';

v8.setFlagsFromString('--no-concurrent-recompilation');

async function gcsDuring(f: () => void): Promise<number> {
  let n = 0;
  const obs = new PerformanceObserver((list) => { n += list.getEntries().length; });
  obs.observe({ entryTypes: ['gc'] });
  f();
  await new Promise((r) => setTimeout(r, 50));
  obs.disconnect();
  return n;
}

test('ICMP errors (to the backend and back to the client) and echo replies allocate nothing: 600k packets, at most one GC', async () => {
  const e = new Engine(validateEngineConfig({
    vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2' }] }],
    tables: { maxFlows: 1024, maxConnections: 1024 }, icmp: { echoRatePerSec: 1_000_000 },
  }));
  const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: SYN });
  e.process(syn, 0, syn.length, 1);
  const be = e.addressOf(e.lastBackend);
  const seg = tcp({ src: be, dst: '198.18.1.2', sport: 80, dport: 5, flags: ACK, payload: 1400 });
  e.process(seg, 0, seg.length, 2);
  const up = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 5, dport: 80, flags: ACK, payload: 100 });
  e.process(up, 0, up.length, 3);
  const toBe = buildIcmpError({ src: '198.18.200.1', dst: '198.18.100.1', type: 3, code: 4, rest: 1400, quoted: seg, quoteBytes: 128 });
  const toCl = buildIcmpError({ src: be, dst: '198.18.1.2', type: 3, code: 1, quoted: up, quoteBytes: 128 });
  const echo = buildEchoRequest('198.18.1.2', '198.18.100.1', 1, 1);
  const a0 = toBe.slice(), b0 = toCl.slice(), c0 = echo.slice();
  let t = 10;
  const run = (n: number) => {
    for (let i = 0; i < n; i++) {
      toBe.set(a0); toCl.set(b0); echo.set(c0);
      t += 1;
      if (e.process(toBe, 0, toBe.length, t) !== Verdict.ToBackend) throw new Error('to backend');
      if (e.process(toCl, 0, toCl.length, t) !== Verdict.ToClient) throw new Error('to client');
      if (e.process(echo, 0, echo.length, t) !== Verdict.Reply) throw new Error('echo');
    }
  };
  run(50_000);
  await new Promise((r) => setTimeout(r, 200));
  run(5_000);
  const gcs = await gcsDuring(() => run(200_000));
  assert.ok(gcs <= 1, `${gcs} garbage collections during 600k ICMP packets`);
  assert.equal(e.counters.snapshot().counters.icmp_echo_answered, 255_000);
});
