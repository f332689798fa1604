// End-to-end dual stack: a real Linux MPTCP client opens each connection over IPv4 (to the service's IPv4 VIP)
// and adds a subflow over IPv6 (to the service's IPv6 VIP); mplb must steer that join by token to the same server,
// at its IPv6 address. How the client learns the IPv6 VIP: every server announces it (ADD_ADDR, an in-kernel path
// manager `signal` endpoint; the kernel announces it although the address is not the server's own), and the client's
// in-kernel path manager opens a subflow to an announced address of the other family only from an IPv6 socket:
// the client connects to "::ffff:" + the IPv4 VIP (measured on Linux 6.18; an AF_INET socket gets no such subflow).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { testbedUp, testbedDown, type TestbedHandle } from '../../src/testbed/testbed.js';
import { startBalancerProcess, type BalancerProcess } from '../../src/testbed/balancer-process.js';
import { ipn, listNetns } from '../../src/testbed/netns.js';
import {
  CLIENT_NSTAT, MPTCP_PORT, SERVER_NSTAT, diff, engineConnections, engineStats, mptcpBatchChecked, nonZero, nstatDelta, nstatMany, preflightReason6,
  runClientTo, startTrafficServer, tmpDir, type TrafficServerProc,
} from './balancer-harness.js';

const CI = process.env.CI === 'true';
const N_SERVERS = 3;
const reason = preflightReason6();

if (reason) {
  test('dual-stack e2e prerequisites', (t) => {
    if (CI) assert.fail(`the dual-stack end-to-end tests cannot run here: ${reason}. CI must run them as root on Linux with iproute2 and IPv6.`);
    t.skip(reason);
  });
} else {
  describe('dual stack: an IPv4 connection\'s IPv6 join through mplb', { timeout: 120000 }, () => {
    let tb: TestbedHandle;
    let dir: string;
    let servers: TrafficServerProc[] = [];
    let lb: BalancerProcess | undefined;
    const names = Array.from({ length: N_SERVERS }, (_, i) => `srv${i + 1}`);

    /** The service "web": one IPv4 and one IPv6 VIP; the IPv6 VIP lists the servers in reverse (paired by name). */
    const vips = (service: boolean) => [
      { address: `${tb.vips[0]}:${MPTCP_PORT}`, ...(service ? { service: 'web' } : {}), backends: tb.servers.map((s, i) => ({ address: s.addr, ...(service ? { server: names[i] } : {}) })) },
      { address: `[${tb.vips6[0]}]:${MPTCP_PORT}`, ...(service ? { service: 'web' } : {}), backends: tb.servers.map((s, i) => ({ address: s.addr6!, ...(service ? { server: names[i] } : {}) })).reverse() },
    ];
    const startLb = async (service: boolean) => {
      await lb?.stop();
      lb = await startBalancerProcess(tb, { engine: { vips: vips(service), unknownTokenAnswer: 'reset' } });
    };

    before(async () => {
      dir = tmpDir();
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      tb = testbedUp({ runId: `ds${randomBytes(2).toString('hex')}`, mode: 'balancer', servers: N_SERVERS, rateMbit: 0, ipv6: true });
      // The client's only extra subflow is then the one to the announced IPv6 VIP (not one from its second IPv4 address).
      const eps = ipn(tb.namespaces.client, ['mptcp', 'endpoint', 'show']);
      const id4 = new RegExp(`^${tb.client.addrs[1].replace(/\./g, '\\.')} id (\\d+)`, 'm').exec(eps)?.[1];
      assert.ok(id4, `client endpoint of ${tb.client.addrs[1]} not found in: ${eps}`);
      ipn(tb.namespaces.client, ['mptcp', 'endpoint', 'delete', 'id', id4]);
      for (const s of tb.servers) ipn(s.ns, ['mptcp', 'endpoint', 'add', tb.vips6[0], 'signal']);
      servers = await Promise.all(tb.servers.map((s) => startTrafficServer(s.ns, s.addr, dir, '::')));
      await startLb(true);
    });

    after(async () => {
      try { await lb?.stop(); } catch { /* teardown goes on */ }
      for (const s of servers) { try { await s.stop(); } catch { /* teardown goes on */ } }
      if (tb) testbedDown(tb);
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    test('12 connections opened over IPv4, each joined over IPv6: both subflows on one server, the join at its IPv6 address', { timeout: 60000 }, async (t) => {
      const join6 = (f: string) => f.startsWith(`[${tb.client.addrs6![0]}]:`) && f.endsWith(`>[${tb.vips6[0]}]:${MPTCP_PORT}`);
      const init4 = (f: string) => f.startsWith(`${tb.client.addrs[0]}:`) && f.endsWith(`>${tb.vips[0]}:${MPTCP_PORT}`);
      await mptcpBatchChecked({
        tb, lb: lb!, servers, host: `::ffff:${tb.vips[0]}`, clientAddr: `::ffff:${tb.client.addrs[0]}`, serverAddr: (i) => tb.servers[i].addr,
        n: 12, clientArgs: ['--seconds', '1.5'],
        atLeastN: ['joins_cross_family'],
        zero: ['joins_unknown_token', 'joins_family_unpaired', 'joins_ambiguous_token', 'joins_vip_mismatch', 'token_collision_stripped', 'token_collision_ambiguous', 'mptcp_fallback', 'midstream_no_flow', 'stateless_reply'],
        // The engine's record of the IPv4 connection holds its IPv6 join: one subflow of each family.
        checkConn: (ec) => (ec.subflows.length === 2 && ec.subflows.some(init4) && ec.subflows.some(join6) ? undefined : `engine subflows ${ec.subflows.join(', ')}: expected ${tb.client.addrs[0]} > ${tb.vips[0]} and [${tb.client.addrs6![0]}] > [${tb.vips6[0]}]`),
      }, t, 'dual-stack connections');
    });

    test('without a service pairing the two VIPs, the IPv6 join gets the unknown-token answer (reset), counted; the IPv4 subflow carries on', { timeout: 45000 }, async (t) => {
      await startLb(false);
      const n = 6;
      const e0 = await engineStats(lb!);
      const s0 = nstatMany(tb.namespaces.servers, SERVER_NSTAT);
      const c0 = nstatMany([tb.namespaces.client], CLIENT_NSTAT);
      const r = await runClientTo(tb, `::ffff:${tb.vips[0]}`, ['--port', String(MPTCP_PORT), '--connections', String(n), '--seconds', '1.5', '--timeout-ms', '15000'], 25000);
      const e1 = await engineStats(lb!);
      const ed = diff(e0.engine.counters, e1.engine.counters);
      const sd = nstatDelta(s0, nstatMany(tb.namespaces.servers, SERVER_NSTAT), SERVER_NSTAT).sum;
      const cd = nstatDelta(c0, nstatMany([tb.namespaces.client], CLIENT_NSTAT), CLIENT_NSTAT).sum;
      const conns = await engineConnections(lb!);
      t.diagnostic(`unpaired: engine ${JSON.stringify(nonZero(ed))}, servers ${JSON.stringify(nonZero(sd))}, client ${JSON.stringify(nonZero(cd))}`);
      assert.ok(r.connections.every((c) => !c.error && c.server?.bytes === c.bytesSent), `every connection completes on its IPv4 subflow: ${r.connections.map((c) => c.error ?? 'ok').join(', ')}`);
      assert.ok(r.connections.every((c) => c.server?.subflowsTotalMax === 1), `servers saw one subflow per connection: ${r.connections.map((c) => c.server?.subflowsTotalMax).join(',')}`);
      assert.ok(cd.MPTcpExtMPJoinSynTx >= n, `the client tried the IPv6 joins (MPJoinSynTx ${cd.MPTcpExtMPJoinSynTx})`);
      assert.ok(ed.joins_family_unpaired >= n && ed.joins_unknown_reset >= n, `engine joins_family_unpaired ${ed.joins_family_unpaired}, joins_unknown_reset ${ed.joins_unknown_reset}, expected >= ${n}`);
      assert.equal(ed.joins_steered_by_token, 0);
      assert.equal(sd.MPTcpExtMPJoinSynRx, 0, 'no join reached a server');
      assert.ok(conns.every((c) => c.subflows.every((f) => !f.startsWith('['))), 'no IPv6 subflow was linked to a connection');
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
