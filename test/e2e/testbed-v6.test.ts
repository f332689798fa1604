// End-to-end, as root: the testbed's ipv6 option. Kernel routing only (no mplb): an IPv6 MPTCP connection to the
// IPv6 VIP uses both client links, as an IPv4 one does; the cluster's router and servers get IPv6 multipath routes
// over the balancers that withdraw/restore change with the IPv4 ones; without the option nothing IPv6 is configured.
import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { testbedUp, testbedDown, routerNexthops, serverGateways, serverGateways6, type TestbedHandle } from '../../src/testbed/testbed.js';
import { ipn, listNetns, nsExec } from '../../src/testbed/netns.js';
import { MPTCP_PORT, establishedPeers, preflightReason6, runClientTo, startTrafficServer, tmpDir, type TrafficServerProc } from './balancer-harness.js';

const CI = process.env.CI === 'true';
const reason = preflightReason6();
const runId = () => `ds${randomBytes(2).toString('hex')}`;
const made: TestbedHandle[] = [];

/** Global IPv6 addresses of dev in ns. */
const globals6 = (ns: string, dev: string) => (JSON.parse(ipn(ns, ['-6', '-j', 'addr', 'show', 'dev', dev, 'scope', 'global'])) as Array<{ addr_info?: Array<{ local?: string }> }>).flatMap((i) => (i.addr_info ?? []).map((a) => a.local)).filter((a): a is string => a !== undefined);

if (reason) {
  test('IPv6 testbed prerequisites', (t) => {
    if (CI) assert.fail(`the IPv6 testbed tests cannot run here: ${reason}. CI must run them as root on Linux with iproute2 and IPv6.`);
    t.skip(reason);
  });
} else {
  describe('testbed ipv6 option', { timeout: 90000 }, () => {
    after(() => { for (const h of made) testbedDown(h); });

    test('off (the default): IPv4 only, as before', () => {
      const h = testbedUp({ runId: runId(), rateMbit: 0, servers: 1 });
      made.push(h);
      assert.equal(h.ipv6, false);
      assert.deepEqual(h.vips6, []);
      assert.deepEqual(globals6(h.namespaces.client, 'c0'), []);
      assert.deepEqual(globals6(h.namespaces.servers[0], 'eth0'), []);
      assert.doesNotMatch(ipn(h.namespaces.client, ['mptcp', 'endpoint', 'show']), /fd00/);
      testbedDown(h);
    });

    test('refuses an IPv6 VIP outside its own ULA prefix, and vips6 without ipv6', () => {
      assert.throws(() => testbedUp({ runId: runId(), ipv6: true, vips6: ['2001:db8::1'] }), /outside fd00:18::\/32/);
      assert.throws(() => testbedUp({ runId: runId(), vips6: ['fd00:19::20'] }), /vips6 needs ipv6/);
    });

    describe('one balancer, kernel routing to the VIPs (noBalancer)', () => {
      let h: TestbedHandle;
      let srv: TrafficServerProc | undefined;
      let dir: string;
      after(async () => { await srv?.stop(); if (h) testbedDown(h); if (dir) fs.rmSync(dir, { recursive: true, force: true }); });

      test('an IPv6 MPTCP connection uses both links (one subflow from each client IPv6 address); an IPv4 one still has exactly 2 subflows', { timeout: 40000 }, async (t) => {
        h = testbedUp({ runId: runId(), mode: 'noBalancer', rateMbit: 0, servers: 1, ipv6: true });
        made.push(h);
        dir = tmpDir();
        assert.deepEqual(globals6(h.namespaces.client, 'c1'), ['fd00:18:2::2']);
        assert.deepEqual(globals6(h.namespaces.servers[0], 'lo'), [h.vips6[0]]);
        srv = await startTrafficServer(h.servers[0].ns, h.servers[0].addr6!, dir, '::');
        let peers: string[] = [];
        const run = runClientTo(h, h.vips6[0], ['--port', String(MPTCP_PORT), '--seconds', '2', '--timeout-ms', '10000'], 20000);
        for (const end = Date.now() + 1800; Date.now() < end && peers.length < 2;) {
          peers = establishedPeers(h.servers[0].ns, MPTCP_PORT);
          await new Promise((r) => setTimeout(r, 100));
        }
        const r6 = await run;
        t.diagnostic(`IPv6: ${r6.goodputMbps.toFixed(0)} Mbit/s, subflows ${r6.connections[0]?.subflowsTotalMax}, server peers ${peers.join(' ')}`);
        assert.equal(r6.connections[0]?.server?.bytes, r6.connections[0]?.bytesSent);
        assert.equal(r6.connections[0]?.subflowsTotalMax, 2);
        assert.deepEqual(peers.map((p) => p.replace(/\]:\d+$/, ']')).sort(), ['[fd00:18:1::2]', '[fd00:18:2::2]'], 'each client IPv6 address left by its own link');
        const r4 = await runClientTo(h, h.vips[0], ['--port', String(MPTCP_PORT), '--seconds', '1', '--timeout-ms', '10000'], 20000);
        assert.equal(r4.connections[0]?.server?.bytes, r4.connections[0]?.bytesSent);
        assert.equal(r4.connections[0]?.subflowsTotalMax, 2, 'the IPv6 endpoint adds no subflow to an IPv4 connection');
      });
    });

    test('cluster: IPv6 multipath routes over the balancers, L4 hash, changed with the IPv4 ones by withdraw/restore', { timeout: 40000 }, () => {
      const h = testbedUp({ runId: runId(), balancers: 2, servers: 2, rateMbit: 0, redis: false, ipv6: true });
      made.push(h);
      const up6 = h.balancers.map((b) => b.uplinkAddr6);
      const lan6 = h.balancers.map((b) => b.lanAddr6);
      assert.deepEqual(up6, ['fd00:18:101::2', 'fd00:18:102::2']);
      assert.deepEqual(lan6, ['fd00:18:10::1', 'fd00:18:10::2']);
      assert.deepEqual(routerNexthops(h, h.vips6[0]).sort(), [...up6].sort());
      assert.deepEqual(serverGateways6(h, 0).sort(), [...lan6].sort());
      assert.equal(nsExec(h.router!.ns, 'sysctl', ['-n', 'net.ipv6.fib_multipath_hash_policy']).trim(), '1');
      assert.equal(nsExec(h.servers[0].ns, 'sysctl', ['-n', 'net.ipv6.fib_multipath_hash_policy']).trim(), '1');
      // The router forwards IPv6 and each balancer routes the client's IPv6 networks back through it.
      for (const b of h.balancers) assert.match(nsExec(h.namespaces.client, 'ping', ['-6', '-c', '2', '-i', '0.2', '-W', '2', b.uplinkAddr6!]), / 0% packet loss/);
      for (const b of h.balancers) assert.equal(nsExec(b.ns, 'sysctl', ['-n', 'net.ipv6.conf.all.forwarding']).trim(), '1');
      h.withdrawBalancer(1);
      assert.deepEqual(routerNexthops(h, h.vips6[0]), [up6[0]]);
      assert.deepEqual(routerNexthops(h), [h.balancers[0].uplinkAddr]);
      assert.deepEqual(serverGateways6(h, 1), [lan6[0]]);
      assert.deepEqual(serverGateways(h, 1), [h.balancers[0].lanAddr]);
      h.restoreBalancer(1);
      assert.deepEqual(routerNexthops(h, h.vips6[0]).sort(), [...up6].sort());
      assert.deepEqual(serverGateways6(h, 1).sort(), [...lan6].sort());
      testbedDown(h);
      assert.deepEqual(listNetns().filter((ns) => ns.startsWith(`mplb-${h.runId}-`)), []);
    });
  });
}
