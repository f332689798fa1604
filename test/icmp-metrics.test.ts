// /metrics shows the ICMP outcomes: mplb_icmp_total by outcome, path-MTU errors, and ICMP drops by reason.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Metrics } from '../src/control/metrics.js';
import type { Controller } from '../src/control/controller.js';
import { inProcessChannel } from '../src/dataplane/control-protocol.js';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { buildEchoRequest, buildIcmpError } from '../src/wire/icmp-build.js';
import { ACK, SYN, tcp } from './helpers/packets.js';

test('/metrics: ICMP errors by outcome, path-MTU errors, echo answered, ICMP drops by reason', async () => {
  const e = new Engine(validateEngineConfig({
    vips: [{ address: '203.0.113.10:443', backends: [{ address: '10.1.0.1' }] }], tables: { maxFlows: 64, maxConnections: 64, maglevSize: 251 },
    icmp: { echoRatePerSec: 2 },
  }));
  const go = (p: Uint8Array) => e.process(p, 0, p.length, 1000);
  assert.equal(go(tcp({ src: '192.0.2.7', dst: '203.0.113.10', sport: 40000, dport: 443, flags: SYN })), Verdict.ToBackend);
  const seg = tcp({ src: '10.1.0.1', dst: '192.0.2.7', sport: 443, dport: 40000, flags: ACK, payload: 1400 });
  assert.equal(go(seg), Verdict.ToClient);
  assert.equal(go(buildIcmpError({ src: '198.51.100.1', dst: '203.0.113.10', type: 3, code: 4, rest: 1400, quoted: seg })), Verdict.ToBackend);
  for (let i = 0; i < 3; i++) go(buildEchoRequest('192.0.2.7', '203.0.113.10', 1, i));
  const m = new Metrics({ controller: {} as Controller, processMetrics: false });
  const text = await m.render({ vips: [], stats: inProcessChannel(e).stats(), timeMs: 0 });
  const val = (re: RegExp) => { const x = re.exec(text); assert.ok(x, `no ${re} in\n${text}`); return Number(x[1]); };
  assert.equal(val(/^mplb_icmp_total\{outcome="to_backend"\} (\S+)$/m), 1);
  assert.equal(val(/^mplb_icmp_total\{outcome="to_backend_hashed"\} (\S+)$/m), 0);
  assert.equal(val(/^mplb_icmp_total\{outcome="echo_answered"\} (\S+)$/m), 2);
  assert.equal(val(/^mplb_icmp_pmtu_errors_total (\S+)$/m), 1);
  assert.equal(val(/^mplb_drops_total\{reason="icmp_echo_rate_limited"\} (\S+)$/m), 1);
  assert.equal(val(/^mplb_drops_total\{reason="icmp_embedded_malformed"\} (\S+)$/m), 0);
});
