// End-to-end dual stack: a real Linux MPTCP client opens each connection over IPv4 (to the service's IPv4 VIP)
// and adds a subflow over IPv6 (to the service's IPv6 VIP); mplb must steer that join by token to the same server,
// at its IPv6 address. How the client learns the IPv6 VIP: every server announces it (ADD_ADDR, an in-kernel path
// manager `signal` endpoint; the kernel announces it although the address is not the server's own), and the client's
// in-kernel path manager opens a subflow to an announced address of the other family only from an IPv6 socket:
// the client connects to "::ffff:" + the IPv4 VIP (measured on Linux 6.18; an AF_INET socket gets no such subflow).
// Linux net/mptcp/pm.c, mptcp_pm_addr_families_match(), which both path managers call: "if sk is ipv4 or ipv6_only
// allows only same-family local and remote addresses, otherwise allow any matching local/remote pair".
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { testbedUp, testbedDown, type TestbedHandle } from '../../src/testbed/testbed.js';
import { startBalancerCluster, startBalancerProcess, type BalancerProcess } from '../../src/testbed/balancer-process.js';
import { ipn, listNetns } from '../../src/testbed/netns.js';
import { findRedisServer } from '../../src/testbed/redis.js';
import {
  CLIENT_NSTAT, MPTCP_PORT, SERVER_NSTAT, diff, engineConnections, engineStats, maxId, mptcpBatchChecked, newConnections, nonZero, nstatDelta, nstatMany,
  preflightReason6, runClientTo, startTrafficServer, tmpDir, type TrafficServerProc,
} from './balancer-harness.js';

const CI = process.env.CI === 'true';
const N_SERVERS = 3;
const RATE_MBIT = 50;
const reason = preflightReason6();
const clusterReason = reason ?? (findRedisServer() ? undefined : 'needs redis-server (Debian package redis-server) for the cluster');

/** The service "web" of a dual-stack testbed: one IPv4 and one IPv6 VIP; the IPv6 VIP lists the servers in reverse (paired by name). */
function webVips(tb: TestbedHandle, service: boolean): Array<Record<string, unknown>> {
  const names = tb.servers.map((_, i) => `srv${i + 1}`);
  return [
    { address: `${tb.vips[0]}:${MPTCP_PORT}`, ...(service ? { service: 'web' } : {}), backends: tb.servers.map((s, i) => ({ address: s.addr, ...(service ? { server: names[i] } : {}) })) },
    { address: `[${tb.vips6[0]}]:${MPTCP_PORT}`, ...(service ? { service: 'web' } : {}), backends: tb.servers.map((s, i) => ({ address: s.addr6!, ...(service ? { server: names[i] } : {}) })).reverse() },
  ];
}

/**
 * Every server announces the service's IPv6 VIP; the client's only extra subflow is the one to it, from its second
 * link's IPv6 address: the IPv4 endpoint of that link goes, its IPv6 endpoint becomes `fullmesh` (an announced
 * address is otherwise joined from the routed source, i.e. over the first subflow's link).
 */
function announceVip6(tb: TestbedHandle): void {
  const eps = ipn(tb.namespaces.client, ['mptcp', 'endpoint', 'show']);
  const id = (a: string) => new RegExp(`^${a.replace(/[.]/g, '[.]')} id (\\d+)`, 'm').exec(eps)?.[1];
  const id4 = id(tb.client.addrs[1]), id6 = id(tb.client.addrs6![1]);
  assert.ok(id4 && id6, `client endpoints of ${tb.client.addrs[1]} and ${tb.client.addrs6![1]} not found in: ${eps}`);
  ipn(tb.namespaces.client, ['mptcp', 'endpoint', 'delete', 'id', id4]);
  ipn(tb.namespaces.client, ['mptcp', 'endpoint', 'change', 'id', id6, 'fullmesh']);
  for (const s of tb.servers) ipn(s.ns, ['mptcp', 'endpoint', 'add', tb.vips6[0], 'signal']);
}

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
    const startLb = async (service: boolean) => {
      await lb?.stop();
      lb = await startBalancerProcess(tb, { engine: { vips: webVips(tb, service), unknownTokenAnswer: 'reset' } });
    };

    before(async () => {
      dir = tmpDir();
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      // 50 Mbit/s per client link: a connection whose IPv6 join works uses both links.
      tb = testbedUp({ runId: `ds${randomBytes(2).toString('hex')}`, mode: 'balancer', servers: N_SERVERS, rateMbit: RATE_MBIT, ipv6: true });
      announceVip6(tb);
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
      const join6 = (f: string) => f.startsWith(`[${tb.client.addrs6![1]}]:`) && f.endsWith(`>[${tb.vips6[0]}]:${MPTCP_PORT}`);
      const init4 = (f: string) => f.startsWith(`${tb.client.addrs[0]}:`) && f.endsWith(`>${tb.vips[0]}:${MPTCP_PORT}`);
      await mptcpBatchChecked({
        tb, lb: lb!, servers, host: `::ffff:${tb.vips[0]}`, clientAddr: `::ffff:${tb.client.addrs[0]}`, serverAddr: (i) => tb.servers[i].addr,
        n: 12, clientArgs: ['--seconds', '1.5'],
        atLeastN: ['joins_cross_family'],
        zero: ['joins_unknown_token', 'joins_family_unpaired', 'joins_ambiguous_token', 'joins_vip_mismatch', 'token_collision_stripped', 'token_collision_ambiguous', 'mptcp_fallback', 'midstream_no_flow', 'stateless_reply'],
        // The engine's record of the IPv4 connection holds its IPv6 join: one subflow of each family.
        checkConn: (ec) => (ec.subflows.length === 2 && ec.subflows.some(init4) && ec.subflows.some(join6) ? undefined : `engine subflows ${ec.subflows.join(', ')}: expected ${tb.client.addrs[0]} > ${tb.vips[0]} and [${tb.client.addrs6![1]}] > [${tb.vips6[0]}]`),
      }, t, 'dual-stack connections');
    });

    test('one dual-stack connection uses both links: IPv4 on the first, IPv6 on the second (> 70 Mbit/s on two 50 Mbit/s links)', { timeout: 30000 }, async (t) => {
      const r = await runClientTo(tb, `::ffff:${tb.vips[0]}`, ['--port', String(MPTCP_PORT), '--seconds', '4', '--timeout-ms', '15000'], 25000);
      const c = r.connections[0];
      t.diagnostic(`MEASURED: one dual-stack connection through mplb: ${c?.goodputMbps?.toFixed(1)} Mbit/s, subflows ${c?.subflowsTotalMax}/${c?.server?.subflowsTotalMax}`);
      assert.equal(c?.server?.bytes, c?.bytesSent);
      assert.equal(c?.server?.subflowsTotalMax, 2);
      assert.ok((c?.goodputMbps ?? 0) > 70, `${c?.goodputMbps?.toFixed(1)} Mbit/s: the IPv6 subflow did not carry the second link's share`);
    });

    test('without a service pairing the two VIPs, the IPv6 join gets the unknown-token answer (reset), counted; the IPv4 subflow carries on', { timeout: 45000 }, async (t) => {
      await startLb(false);
      const n = 6;
      const e0 = await engineStats(lb!);
      const s0 = nstatMany(tb.namespaces.servers, SERVER_NSTAT);
      const c0 = nstatMany([tb.namespaces.client], CLIENT_NSTAT);
      const r = await runClientTo(tb, `::ffff:${tb.vips[0]}`, ['--port', String(MPTCP_PORT), '--connections', String(n), '--seconds', '1.5', '--timeout-ms', '15000', '--min-subflows', '2'], 25000);
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
      const one = await runClientTo(tb, `::ffff:${tb.vips[0]}`, ['--port', String(MPTCP_PORT), '--seconds', '4', '--timeout-ms', '15000'], 25000);
      t.diagnostic(`MEASURED: one connection whose IPv6 join is refused: ${one.connections[0]?.goodputMbps?.toFixed(1)} Mbit/s`);
      assert.ok((one.connections[0]?.goodputMbps ?? 100) < 55, 'one link only');
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

if (clusterReason) {
  test('dual-stack cluster e2e prerequisites', (t) => {
    if (CI) assert.fail(`the dual-stack cluster end-to-end test cannot run here: ${clusterReason}. CI must run it as root with iproute2, IPv6 and redis-server.`);
    t.skip(clusterReason);
  });
} else {
  describe('dual stack through two balancers sharing tokens: the IPv6 join may reach the other balancer', { timeout: 120000 }, () => {
    let tb: TestbedHandle;
    let dir: string;
    let servers: TrafficServerProc[] = [];
    let lbs: BalancerProcess[] = [];

    before(async () => {
      dir = tmpDir();
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      // The router hashes the IPv4 subflow and the IPv6 join each on its own (fib_multipath_hash_policy=1, both families).
      tb = testbedUp({ runId: `ds${randomBytes(2).toString('hex')}`, balancers: 2, servers: N_SERVERS, rateMbit: 0, ipv6: true });
      announceVip6(tb);
      servers = await Promise.all(tb.servers.map((s) => startTrafficServer(s.ns, s.addr, dir, '::')));
      lbs = await startBalancerCluster(tb, {
        engine: { vips: webVips(tb, true), unknownTokenAnswer: 'reset', tokenStore: { url: `redis://${tb.redis!.host}:${tb.redis!.port}`, keyPrefix: `mplb:${tb.runId}:`, holdMs: 500, commandTimeoutMs: 150 } },
        env: { MPLB_TOKEN_STORE_PASSWORD: tb.redis!.password },
      });
      // Both balancers connected to the store before any join can need it.
      for (const t0 = Date.now(); ; await new Promise((r) => setTimeout(r, 100))) {
        const st = await Promise.all(lbs.map(engineStats));
        if (st.every((x) => (x.loop as unknown as { store?: Record<string, number> }).store?.store_up === 1)) break;
        assert.ok(Date.now() - t0 < 15000, 'the balancers did not reach the store within 15 s');
      }
    });

    after(async () => {
      for (const l of lbs) { try { await l.stop(); } catch { /* teardown goes on */ } }
      for (const s of servers) { try { await s.stop(); } catch { /* teardown goes on */ } }
      if (tb) testbedDown(tb);
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    test('16 connections over IPv4, each joined over IPv6: every join steered to its server\'s IPv6 address, through either balancer', { timeout: 60000 }, async (t) => {
      const n = 16;
      const since = await Promise.all(servers.map(async (s) => maxId(await s.report())));
      const e0 = await Promise.all(lbs.map(engineStats));
      const s0 = nstatMany(tb.namespaces.servers, SERVER_NSTAT);
      const r = await runClientTo(tb, `::ffff:${tb.vips[0]}`, ['--port', String(MPTCP_PORT), '--connections', String(n), '--seconds', '1.5', '--timeout-ms', '15000', '--min-subflows', '2'], 25000);
      const e1 = await Promise.all(lbs.map(engineStats));
      const sd = nstatDelta(s0, nstatMany(tb.namespaces.servers, SERVER_NSTAT), SERVER_NSTAT).sum;
      const d = e0.map((x, i) => diff(x.engine.counters, e1[i].engine.counters));
      const store = e0.map((x, i) => diff((x.loop as unknown as { store: Record<string, number> }).store, (e1[i].loop as unknown as { store: Record<string, number> }).store));
      const served = (await Promise.all(servers.map(async (s, i) => newConnections(await s.report(), since[i])))).map((l) => l.filter((c) => c.listener === 'mptcp'));
      const sum = (k: string) => d.reduce((a, x) => a + (x[k] ?? 0), 0);
      const fromStore = store.reduce((a, x) => a + (x.joins_found_in_store ?? 0), 0);
      t.diagnostic(`per balancer ${JSON.stringify(d.map(nonZero))}; store ${JSON.stringify(store.map(nonZero))}; servers ${JSON.stringify(nonZero(sd))}`);
      const problems: string[] = [];
      for (const c of r.connections) {
        if (c.error || c.server?.bytes !== c.bytesSent) { problems.push(`#${c.index} incomplete: ${c.error ?? `${c.server?.bytes}/${c.bytesSent}`}`); continue; }
        const hits = served.flatMap((l) => l.filter((x) => x.tokenHex === c.server!.tokenHex));
        if (hits.length !== 1) problems.push(`token ${c.server!.tokenHex} on ${hits.length} servers`);
        else if (hits[0].subflowsTotalMax !== 2) problems.push(`token ${c.server!.tokenHex}: ${hits[0].subflowsTotalMax} subflow(s) on its server`);
      }
      assert.deepEqual(problems, []);
      assert.equal(r.connections.length, n);
      assert.equal(sd.MPTcpExtMPJoinNoTokenFound, 0, 'no join reached a server without its connection');
      assert.ok(sd.MPTcpExtMPJoinSynRx >= n, `servers got ${sd.MPTcpExtMPJoinSynRx} join SYNs`);
      assert.equal(sum('joins_cross_family'), n, 'every IPv6 join was steered to its server\'s IPv6 address');
      assert.equal(sum('joins_steered_by_token'), n);
      assert.equal(sum('joins_unknown_token'), 0);
      // Both subflows were hashed on their own by the router: some joins reached the other balancer and needed the store.
      assert.ok(fromStore > 0, `no join needed the store (${fromStore}): the router never split a connection's subflows`);
    });
  });
}
