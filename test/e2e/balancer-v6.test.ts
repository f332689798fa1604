// End-to-end over IPv6: `mplb run` with IPv6 VIPs in the balancer namespace of a dual-stack testbed
// (testbedUp({ ipv6: true })), real Linux MPTCP client and servers speaking IPv6 only through it. The IPv6 twin of
// the first two tests of balancer.test.ts: plain TCP through the VIP, and 50 concurrent MPTCP connections whose
// two IPv6 subflows each land on one server. Rate limits are off: these tests are about where subflows land.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { testbedUp, testbedDown, type TestbedHandle } from '../../src/testbed/testbed.js';
import { startBalancerProcess, type BalancerProcess } from '../../src/testbed/balancer-process.js';
import { listNetns } from '../../src/testbed/netns.js';
import {
  MPTCP_PORT, TCP_PORT, diff, engineStats, maxId, mptcpBatchChecked, newConnections, nonZero, preflightReason6, runClientTo,
  startTrafficServer, tmpDir, type TrafficServerProc,
} from './balancer-harness.js';

const CI = process.env.CI === 'true';
const N_SERVERS = 3;
const reason = preflightReason6();

if (reason) {
  test('IPv6 balancer e2e prerequisites', (t) => {
    if (CI) assert.fail(`the IPv6 balancer end-to-end tests cannot run here: ${reason}. CI must run them as root on Linux with iproute2 and IPv6.`);
    t.skip(reason);
  });
} else {
  describe('mplb run over IPv6 between real Linux MPTCP hosts', { timeout: 120000 }, () => {
    let tb: TestbedHandle;
    let dir: string;
    let servers: TrafficServerProc[] = [];
    let lb: BalancerProcess | undefined;
    const vip6 = () => tb.vips6[0];
    const cli6 = () => tb.client.addrs6![0];

    before(async () => {
      dir = tmpDir();
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      tb = testbedUp({ runId: `ds${randomBytes(2).toString('hex')}`, mode: 'balancer', servers: N_SERVERS, rateMbit: 0, ipv6: true });
      // "::" listens on both families (the servers' reports then name IPv6 peers as the kernel gives them).
      servers = await Promise.all(tb.servers.map((s) => startTrafficServer(s.ns, s.addr6!, dir, '::')));
      const vips = [MPTCP_PORT, TCP_PORT].map((p) => ({ address: `[${vip6()}]:${p}`, backends: tb.servers.map((s) => ({ address: s.addr6! })) }));
      lb = await startBalancerProcess(tb, { engine: { vips } });
    });

    after(async () => {
      try { await lb?.stop(); } catch { /* teardown goes on */ }
      for (const s of servers) { try { await s.stop(); } catch { /* teardown goes on */ } }
      if (tb) testbedDown(tb);
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    test('the testbed has IPv6 on every hop: addresses, VIP and routes as IPv4 has them', () => {
      assert.equal(tb.ipv6, true);
      assert.deepEqual(tb.vips6, ['fd00:19::10'], 'the mirror of 198.19.0.10');
      assert.deepEqual(tb.client.addrs6, ['fd00:18:1::2', 'fd00:18:2::2']);
      assert.deepEqual(tb.servers.map((s) => s.addr6), ['fd00:18:11::2', 'fd00:18:12::2', 'fd00:18:13::2']);
    });

    test('plain TCP over IPv6: full byte counts, spread over all servers, one server per connection', { timeout: 30000 }, async (t) => {
      const n = 30;
      const since = await Promise.all(servers.map(async (s) => maxId(await s.report())));
      const e0 = await engineStats(lb!);
      const r = await runClientTo(tb, vip6(), ['--port', String(TCP_PORT), '--tcp', '--connections', String(n), '--bytes', '1M', '--timeout-ms', '15000'], 25000);
      const e1 = await engineStats(lb!);
      const served = (await Promise.all(servers.map(async (s, i) => newConnections(await s.report(), since[i])))).map((l) => l.filter((c) => c.listener === 'tcp' && c.localPort === TCP_PORT));
      const d = diff(e0.engine.counters, e1.engine.counters);
      t.diagnostic(`plain TCP over IPv6: ${r.goodputMbps.toFixed(0)} Mbit/s, per server ${JSON.stringify(served.map((l) => l.length))}, engine ${JSON.stringify(nonZero(d))}`);
      assert.equal(r.connections.length, n);
      for (const c of r.connections) {
        assert.ok(!c.error, `connection #${c.index} failed: ${c.error}`);
        assert.equal(c.bytesSent, 1024 * 1024);
        assert.equal(c.server?.bytes, c.bytesSent, `connection #${c.index}: server got ${c.server?.bytes} of ${c.bytesSent} bytes`);
        // NAT keeps the client's IPv6 address and port: exactly one server saw this connection.
        const where = served.map((l) => l.filter((s) => s.remoteAddress === cli6() && s.remotePort === c.localPort).length);
        assert.equal(where.reduce((a, b) => a + b, 0), 1, `client port ${c.localPort} seen by servers ${JSON.stringify(where)}`);
      }
      assert.ok(served.every((l) => l.length > 0), `connections per server ${JSON.stringify(served.map((l) => l.length))}: every server should get some of ${n}`);
      assert.equal(d.flows_created, n, 'one flow per TCP connection');
      for (const k of ['midstream_no_flow', 'stateless_reply', 'stateless_forward', 'mp_capable_syn', 'conns_created']) assert.equal(d[k], 0, `engine ${k}`);
      assert.ok(d.to_backend > 0 && d.to_client > 0, 'both directions went through the engine');
      const drops = nonZero(diff(e0.engine.drops, e1.engine.drops));
      delete drops.not_tcp;
      delete drops.icmp_unhandled_type; // the same packets, now read as ICMPv6
      assert.deepEqual(drops, {}, 'no drops but IPv6 control packets from the TUN (not_tcp)');
      assert.equal(d.packets_in, d.to_backend + d.to_client + d.replied + d.dropped);
    });

    test('50 concurrent MPTCP connections over IPv6: both subflows of each on one server, no join reset', { timeout: 60000 }, async (t) => {
      await mptcpBatchChecked({
        tb, lb: lb!, servers, host: vip6(), clientAddr: cli6(), serverAddr: (i) => tb.servers[i].addr6!, n: 50, clientArgs: ['--seconds', '1.5'],
        zero: ['joins_unknown_token', 'joins_ambiguous_token', 'joins_cross_family', 'token_collision_stripped', 'token_collision_ambiguous', 'mptcp_fallback', 'midstream_no_flow', 'stateless_reply'],
        // The join comes from the client's second IPv6 address (its IPv6 subflow endpoint).
        checkConn: (ec) => (ec.subflows.some((f) => f.startsWith(`[${tb.client.addrs6![1]}]:`)) ? undefined : `no subflow from ${tb.client.addrs6![1]} in the engine's record: ${ec.subflows.join(', ')}`),
      }, t, '50 MPTCP connections over IPv6');
    });

    test('nothing of this run is left in ip netns list', async () => {
      await lb?.stop();
      lb = undefined;
      for (const s of servers) await s.stop();
      testbedDown(tb);
      assert.deepEqual(listNetns().filter((ns) => ns.startsWith(`mplb-${tb.runId}-`)), []);
    });
  });
}
