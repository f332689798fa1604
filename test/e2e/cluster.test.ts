// End-to-end, as root: the cluster testbed (`testbedUp({ balancers: 2 })`) does what it claims, with today's mplb
// (no shared token store): a router spreads the subflows of one MPTCP connection over two balancers by an L4 ECMP
// hash, replies return through either balancer, redis is reachable from both, plain TCP works through the pair, a
// balancer can be withdrawn from (and restored to) the ECMP routes mid-transfer, and teardown leaves nothing.
// Tests that need the token store are not here: they come with the store.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { testbedUp, testbedDown, testbedLoad, routerNexthops, serverGateways, type TestbedHandle } from '../../src/testbed/testbed.js';
import { startBalancerCluster, type BalancerProcess } from '../../src/testbed/balancer-process.js';
import { findRedisServer, processGone, redisCommands } from '../../src/testbed/redis.js';
import { listNetns, nsExec } from '../../src/testbed/netns.js';
import type { ClientReport, ConnectionResult } from '../../src/traffic/client.js';
import {
  CLIENT_NSTAT, MPTCP_PORT, SERVER_NSTAT, TCP_PORT, diff, engineConnections, engineStats, maxId, newConnections, nonZero, nstatDelta,
  nstatMany, preflightReason, runClient, sleep, startTrafficServer, tmpDir, type EngineStats, type TrafficServerProc,
} from './balancer-harness.js';

const CI = process.env.CI === 'true';
const N_BALANCERS = 2;
const N_SERVERS = 3;
const RATE_MBIT = 50;
/** The issue's measurement: with 2 balancers about half the joins reach the other one; at least this share must. */
const MIN_CROSS_SHARE = 0.3;
const MPTCP_BATCH = 20;
/** Batches pooled at most (see the joins test): the share of 20 is binomial and below 30% about 2% of the time. */
const MAX_MPTCP_BATCHES = 3;

function reason(): string | undefined {
  return preflightReason() ?? (findRedisServer() ? undefined : 'needs redis-server (Debian package redis-server)');
}

/** All bytes arrived and the server's trailer came back. */
const completed = (c: ConnectionResult) => c.server !== undefined && c.bytesSent > 0 && c.server.bytes === c.bytesSent && c.completionMs !== undefined;

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

const why = reason();

if (why) {
  test('cluster e2e prerequisites', (t) => {
    if (CI) assert.fail(`the cluster end-to-end tests cannot run here: ${why}. CI must run them as root on Linux with iproute2 and redis-server.`);
    t.skip(why);
  });
} else {
  describe(`cluster testbed: ${N_BALANCERS} mplb balancers behind an ECMP router, redis beside them`, { timeout: 240000 }, () => {
    let tb: TestbedHandle | undefined;
    let dir: string;
    let servers: TrafficServerProc[] = [];
    let lbs: BalancerProcess[] = [];
    let tornDown = false;

    const vipsConfig = (h: TestbedHandle) => [MPTCP_PORT, TCP_PORT].map((p) => ({ address: `${h.vips[0]}:${p}`, backends: h.servers.map((s) => ({ address: s.addr })) }));
    const stats = () => Promise.all(lbs.map(engineStats));
    const deltas = (a: EngineStats[], b: EngineStats[]) => a.map((x, i) => diff(x.engine.counters, b[i].engine.counters));
    const reportIds = async () => Promise.all(servers.map(async (s) => maxId(await s.report())));

    const teardown = async () => {
      if (tornDown) return;
      tornDown = true;
      for (const l of lbs) { try { await l.stop(); } catch { /* teardown goes on */ } }
      for (const s of servers) { try { await s.stop(); } catch { /* teardown goes on */ } }
      if (tb) testbedDown(tb);
    };

    before(async () => {
      dir = tmpDir();
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      tb = testbedUp({ balancers: N_BALANCERS, servers: N_SERVERS, rateMbit: RATE_MBIT });
      servers = await Promise.all(tb.servers.map((s) => startTrafficServer(s.ns, s.addr, dir)));
      // One config for both: same VIPs, backends and hashSeed, so Maglev agrees on every first subflow.
      lbs = await startBalancerCluster(tb, { engine: { vips: vipsConfig(tb) } });
    });

    after(async () => {
      await teardown();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    test('topology: one ECMP next hop per balancer with an L4 hash, servers route back over every balancer, redis reachable from each balancer only with its password', { timeout: 30000 }, async (t) => {
      const h = tb!;
      assert.equal(h.balancers.length, N_BALANCERS);
      assert.deepEqual(h.namespaces.balancers, h.balancers.map((b) => b.ns));
      assert.ok(h.router && h.redis && h.ecmp, 'a cluster testbed has a router, redis and ECMP state');
      for (const ns of [h.namespaces.client, h.namespaces.router!, ...h.namespaces.balancers, h.namespaces.switch!, h.namespaces.redis!, ...h.namespaces.servers]) {
        assert.match(ns, new RegExp(`^mplb-${h.runId}-`), `namespace ${ns} follows the mplb-<runid>- scheme`);
        assert.ok(listNetns().includes(ns), `namespace ${ns} exists`);
      }
      // Router: VIP/32 with one next hop per balancer, and the 5-tuple hash.
      assert.deepEqual(routerNexthops(h), h.balancers.map((b) => b.uplinkAddr));
      assert.equal(nsExec(h.router!.ns, 'sysctl', ['-n', 'net.ipv4.fib_multipath_hash_policy']).trim(), '1', 'router hashes on L4');
      // Servers: the way back is ECMP over every balancer's LAN address, with the same L4 hash.
      for (const [i, s] of h.servers.entries()) {
        assert.deepEqual(serverGateways(h, i), h.balancers.map((b) => b.lanAddr), `server ${s.addr} default route`);
        assert.equal(nsExec(s.ns, 'sysctl', ['-n', 'net.ipv4.fib_multipath_hash_policy']).trim(), '1', `server ${s.addr} hashes on L4`);
      }
      t.diagnostic(`router ${h.router!.ns}: ${h.vips[0]}/32 via ${routerNexthops(h).join(' + ')}; servers ${h.servers.map((s) => s.addr).join(', ')} default via ${h.servers[0].gateways.join(' + ')}; redis ${h.redis!.host}:${h.redis!.port} pid ${h.redis!.pid}`);

      // redis: AUTH + PING from every balancer; a key written through one balancer is read through the other.
      const r = h.redis!;
      const key = `mplb-test-${h.runId}`;
      for (const [i, b] of h.balancers.entries()) {
        const cmds = i === 0 ? [['PING'], ['SET', key, b.ns]] : [['PING'], ['GET', key]];
        const reply = await redisCommands(b.ns, r, r.password, cmds);
        assert.deepEqual(reply, ['+OK', '+PONG', i === 0 ? '+OK' : h.balancers[0].ns], `redis from ${b.ns}`);
      }
      const noAuth = await redisCommands(h.balancers[0].ns, r, undefined, [['PING']]);
      assert.match(String(noAuth[0]), /^-NOAUTH/, 'without the password redis refuses');
      const wrong = await redisCommands(h.balancers[1].ns, r, 'not-the-password', [['PING']]);
      assert.match(String(wrong[0]), /^-(WRONGPASS|ERR)/, 'a wrong password is refused');
      // Bound to its control-network address: the client has no way there.
      await assert.rejects(redisCommands(h.namespaces.client, r, r.password, [['PING']], 1500), 'the client namespace cannot reach redis');
      // No persistence: the testbed starts it with --save '' --appendonly no.
      assert.deepEqual(await redisCommands(h.balancers[0].ns, r, r.password, [['CONFIG', 'GET', 'save'], ['CONFIG', 'GET', 'appendonly']]), ['+OK', ['save', ''], ['appendonly', 'no']]);
    });

    test(`${MPTCP_BATCH} MPTCP connections: first subflows and joins reach both balancers, at least ${MIN_CROSS_SHARE * 100}% of joins reach the other balancer than their connection's first subflow`, { timeout: 90000 }, async (t) => {
      const h = tb!;
      // Pooled over batches of MPTCP_BATCH while the share is below the bar (at most MAX_MPTCP_BATCHES): a working
      // ECMP gives ~50%, so a low first batch is chance (binomial), and a broken one stays at 0% however many.
      const pooled = { joins: 0, cross: 0, crossTables: 0, noTokenFound: 0, connections: 0 };
      const perBalancer = h.balancers.map(() => ({ capable: 0, joins: 0, steered: 0, unknown: 0, statelessReply: 0, toClient: 0 }));
      for (let batch = 1; batch <= MAX_MPTCP_BATCHES; batch++) {
        const e0 = await stats();
        const c0 = nstatMany([h.namespaces.client], CLIENT_NSTAT);
        const s0 = nstatMany(h.namespaces.servers, SERVER_NSTAT);
        const r: ClientReport = await runClient(h, ['--port', String(MPTCP_PORT), '--connections', String(MPTCP_BATCH), '--seconds', '2', '--timeout-ms', '15000'], 25000);
        const e1 = await stats();
        const cd = nstatDelta(c0, nstatMany([h.namespaces.client], CLIENT_NSTAT), CLIENT_NSTAT).sum;
        const sd = nstatDelta(s0, nstatMany(h.namespaces.servers, SERVER_NSTAT), SERVER_NSTAT).sum;
        const tables = await Promise.all(lbs.map(engineConnections));
        const d = deltas(e0, e1);

        // Every connection delivered all its bytes: its first subflow works whichever balancer it reached.
        assert.equal(r.connections.length, MPTCP_BATCH);
        const broken = r.connections.filter((c) => !completed(c));
        assert.deepEqual(broken.map((c) => `#${c.index}: ${c.error ?? `${c.server?.bytes} of ${c.bytesSent} bytes`}`), [], 'every MPTCP connection completes');

        // Each first subflow's SYN reached exactly one balancer, which learned its token: the connection is in the
        // table of exactly one balancer. Its join went to the same one (2 subflows there) or to the other (1).
        let crossTables = 0;
        for (const c of r.connections) {
          const tok = c.server?.tokenHex;
          assert.ok(tok && tok !== '00000000', `#${c.index} has a server token`);
          const where = tables.map((list) => list.filter((x) => x.token === tok));
          const holders = where.map((l, i) => (l.length > 0 ? i : -1)).filter((i) => i >= 0);
          assert.equal(holders.length, 1, `token ${tok} (#${c.index}) is known to balancers ${JSON.stringify(holders)}: its first subflow reached exactly one`);
          const subflows = where[holders[0]][0].subflows.length;
          assert.ok(subflows === 1 || subflows === 2, `token ${tok} has ${subflows} subflows on balancer ${holders[0]}`);
          if (subflows === 1) crossTables++;
        }
        const capable = d.map((x) => x.mp_capable_syn);
        const steered = d.map((x) => x.joins_steered_by_token);
        const unknown = d.map((x) => x.joins_unknown_token);
        const joins = sum(steered) + sum(unknown);
        t.diagnostic(`batch ${batch}: first subflows per balancer ${JSON.stringify(capable)}, joins per balancer ${JSON.stringify(steered.map((s, i) => s + unknown[i]))}; ` +
          `${sum(unknown)} of ${joins} joins reached the other balancer (tables say ${crossTables}), ${sd.MPTcpExtMPJoinNoTokenFound} were answered NoTokenFound; ` +
          `stateless replies per balancer ${JSON.stringify(d.map((x) => x.stateless_reply))}; client ${JSON.stringify(nonZero(cd))}; servers ${JSON.stringify(nonZero(sd))}`);
        for (const [i, x] of d.entries()) t.diagnostic(`  balancer ${i} (${h.balancers[i].ns}): ${JSON.stringify(nonZero(x))}`);

        // Accounting that does not depend on the share.
        assert.equal(sum(capable), MPTCP_BATCH, 'each MP_CAPABLE SYN reached exactly one balancer');
        assert.equal(joins, cd.MPTcpExtMPJoinSynTx, `each join SYN the client sent (${cd.MPTcpExtMPJoinSynTx}) reached exactly one balancer`);
        assert.equal(joins, MPTCP_BATCH, 'one join per connection');
        assert.equal(crossTables, sum(unknown), 'the balancers\' tables and their joins_unknown_token counters agree on which joins crossed');
        assert.ok(sd.MPTcpExtMPJoinNoTokenFound <= sum(unknown), 'only joins that reached the other balancer can meet a server without their token');
        // A join on the balancer that knows its token is steered to its server and completes there (a rare
        // server-side DSS mismatch aside, see NOTES-linux.md).
        assert.ok(sd.MPTcpExtMPJoinAckRx >= sum(steered) - sd.MPTcpExtDSSNotMatching, `servers completed ${sd.MPTcpExtMPJoinAckRx} joins, fewer than the ${sum(steered)} steered by token`);

        pooled.joins += joins;
        pooled.cross += sum(unknown);
        pooled.crossTables += crossTables;
        pooled.noTokenFound += sd.MPTcpExtMPJoinNoTokenFound;
        pooled.connections += MPTCP_BATCH;
        for (const [i, x] of d.entries()) {
          const p = perBalancer[i];
          p.capable += x.mp_capable_syn; p.steered += x.joins_steered_by_token; p.unknown += x.joins_unknown_token;
          p.joins += x.joins_steered_by_token + x.joins_unknown_token; p.statelessReply += x.stateless_reply; p.toClient += x.to_client;
        }
        if (pooled.cross / pooled.joins >= MIN_CROSS_SHARE) break;
        if (batch < MAX_MPTCP_BATCHES) t.diagnostic(`POOLING: ${pooled.cross} of ${pooled.joins} joins (${((100 * pooled.cross) / pooled.joins).toFixed(0)}%) is below ${MIN_CROSS_SHARE * 100}%; another batch of ${MPTCP_BATCH} is added to the same count`);
      }
      const share = pooled.cross / pooled.joins;
      t.diagnostic(`MEASURED: ${pooled.cross} of ${pooled.joins} joins (${(100 * share).toFixed(0)}%) reached the other balancer than their first subflow's, ${pooled.noTokenFound} were answered NoTokenFound (${pooled.connections} connections)`);
      // ECMP spreads both kinds of SYN over both balancers. Every first subflow has the same addresses
      // (client link 0 -> VIP), so first subflows on both balancers also show that the hash includes the ports.
      for (const [i, p] of perBalancer.entries()) {
        assert.ok(p.capable > 0, `balancer ${i} got no first subflow: ${JSON.stringify(perBalancer)}`);
        assert.ok(p.joins > 0, `balancer ${i} got no join: ${JSON.stringify(perBalancer)}`);
        assert.ok(p.toClient > 0, `balancer ${i} carried no reply: ${JSON.stringify(perBalancer)}`);
      }
      // Replies return through a balancer other than the one their SYN passed: it NATs them statelessly.
      assert.ok(sum(perBalancer.map((p) => p.statelessReply)) > 0, `no balancer NATed a reply for a flow it had not seen: ${JSON.stringify(perBalancer)}`);
      assert.ok(share >= MIN_CROSS_SHARE, `only ${pooled.cross} of ${pooled.joins} joins (${(100 * share).toFixed(0)}%) reached the other balancer; expected >= ${MIN_CROSS_SHARE * 100}%`);
    });

    test('plain TCP through the two balancers: 20 connections, every byte arrives, both balancers and all servers used', { timeout: 45000 }, async (t) => {
      const h = tb!;
      const n = 20;
      const since = await reportIds();
      const e0 = await stats();
      const r = await runClient(h, ['--port', String(TCP_PORT), '--tcp', '--connections', String(n), '--bytes', '1M', '--timeout-ms', '20000'], 30000);
      const e1 = await stats();
      const served = (await Promise.all(servers.map(async (s, i) => newConnections(await s.report(), since[i])))).map((l) => l.filter((c) => c.listener === 'tcp' && c.localPort === TCP_PORT));
      const d = deltas(e0, e1);
      t.diagnostic(`plain TCP: ${r.goodputMbps.toFixed(1)} Mbit/s, per server ${JSON.stringify(served.map((l) => l.length))}, flows created per balancer ${JSON.stringify(d.map((x) => x.flows_created))}, stateless replies ${JSON.stringify(d.map((x) => x.stateless_reply))}`);
      assert.equal(r.connections.length, n);
      for (const c of r.connections) {
        assert.ok(!c.error, `connection #${c.index} failed: ${c.error}`);
        assert.equal(c.bytesSent, 1024 * 1024);
        assert.equal(c.server?.bytes, c.bytesSent, `connection #${c.index}: server got ${c.server?.bytes} of ${c.bytesSent} bytes`);
        const where = served.map((l) => l.filter((s) => s.remoteAddress === h.client.addrs[0] && s.remotePort === c.localPort).length);
        assert.equal(sum(where), 1, `client port ${c.localPort} seen by servers ${JSON.stringify(where)}`);
      }
      assert.ok(served.every((l) => l.length > 0), `connections per server ${JSON.stringify(served.map((l) => l.length))}`);
      assert.ok(d.every((x) => x.flows_created > 0), `both balancers get SYNs: flows created ${JSON.stringify(d.map((x) => x.flows_created))}`);
      assert.ok(d.every((x) => x.to_client > 0), `both balancers carry replies: ${JSON.stringify(d.map((x) => x.to_client))}`);
      assert.equal(sum(d.map((x) => x.joins_unknown_token + x.mp_capable_syn)), 0, 'no MPTCP in a plain TCP run');
    });

    test(`the client links keep their ${RATE_MBIT} Mbit/s limit through the router: one plain TCP connection`, { timeout: 30000 }, async (t) => {
      const r = await runClient(tb!, ['--port', String(TCP_PORT), '--tcp', '--seconds', '2', '--timeout-ms', '12000'], 20000);
      t.diagnostic(`one plain TCP connection through the cluster: ${r.goodputMbps.toFixed(1)} Mbit/s`);
      assert.ok(r.ok, `transfer failed: ${r.connections[0]?.error}`);
      assert.ok(r.goodputMbps > 35 && r.goodputMbps < 60, `goodput ${r.goodputMbps.toFixed(1)} Mbit/s, expected about ${RATE_MBIT} (the tbf on the client link)`);
    });

    test('withdrawBalancer mid-transfer: routes follow in both directions, plain TCP transfers finish through the remaining balancer; restoreBalancer brings it back', { timeout: 60000 }, async (t) => {
      const h = tb!;
      const all = h.balancers.map((b) => b.uplinkAddr);
      const allLan = h.balancers.map((b) => b.lanAddr);
      assert.throws(() => h.withdrawBalancer(N_BALANCERS), /balancer index/);
      const e0 = await stats();
      const run = runClient(h, ['--port', String(TCP_PORT), '--tcp', '--connections', '12', '--seconds', '4', '--timeout-ms', '15000'], 25000);
      await sleep(1500);
      const eW = await stats();
      h.withdrawBalancer(1);
      const tW = Date.now();
      try {
        assert.deepEqual(routerNexthops(h), [all[0]], 'the router routes the VIP to balancer 0 only');
        for (let i = 0; i < h.servers.length; i++) assert.deepEqual(serverGateways(h, i), [allLan[0]], `server ${i} returns through balancer 0 only`);
        assert.deepEqual(h.ecmp, { toVips: [0], fromServers: [0] });
        assert.throws(() => h.withdrawBalancer(0), /last next hop/, 'the last balancer cannot be withdrawn');
        await sleep(500);
        const eQ = await stats();
        const r = await run;
        const e1 = await stats();
        const before = deltas(e0, eW), moved = deltas(eW, e1), quiet = deltas(eQ, e1);
        t.diagnostic(`withdrew balancer 1 1.5 s into 4 s transfers, the client finished ${Date.now() - tW} ms later; flows per balancer before ${JSON.stringify(before.map((x) => x.flows_created))}; after: balancer 0 midstream_no_flow ${moved[0].midstream_no_flow}, stateless_reply ${moved[0].stateless_reply}; balancer 1 packets from 0.5 s after the withdrawal to the end: ${quiet[1].to_backend + quiet[1].to_client}`);
        for (const c of r.connections) assert.ok(completed(c), `connection #${c.index}: ${c.error ?? `${c.server?.bytes} of ${c.bytesSent} bytes`}`);
        assert.equal(quiet[1].to_backend + quiet[1].to_client, 0, 'a withdrawn balancer carries nothing (0.5 s after the route change)');
        if (before[1].flows_created > 0) assert.ok(moved[0].midstream_no_flow > 0, 'the flows balancer 1 had carried continue on balancer 0 without their SYN');
        else t.diagnostic('NOTE: no connection had reached balancer 1 before the withdrawal (chance 2^-12); the move was not exercised');

        // New connections while withdrawn: all on balancer 0.
        const eN = await stats();
        const rN = await runClient(h, ['--port', String(TCP_PORT), '--tcp', '--connections', '8', '--bytes', '256K', '--timeout-ms', '15000'], 25000);
        const dN = deltas(eN, await stats());
        for (const c of rN.connections) assert.ok(completed(c), `connection #${c.index} while withdrawn: ${c.error}`);
        assert.equal(dN[1].flows_created, 0, 'no new flow reaches the withdrawn balancer');
        assert.ok(dN[0].flows_created >= 8, `balancer 0 created ${dN[0].flows_created} flows for 8 connections`);
      } finally {
        h.restoreBalancer(1);
      }
      assert.deepEqual(routerNexthops(h), all, 'restored: the VIP route has both next hops again');
      for (let i = 0; i < h.servers.length; i++) assert.deepEqual(serverGateways(h, i), allLan, `restored: server ${i} returns over both`);
      const eR = await stats();
      const rR = await runClient(h, ['--port', String(TCP_PORT), '--tcp', '--connections', '20', '--bytes', '256K', '--timeout-ms', '15000'], 25000);
      const dR = deltas(eR, await stats());
      for (const c of rR.connections) assert.ok(completed(c), `connection #${c.index} after the restore: ${c.error}`);
      t.diagnostic(`after the restore: flows per balancer ${JSON.stringify(dR.map((x) => x.flows_created))}`);
      assert.ok(dR.every((x) => x.flows_created > 0), `both balancers get new connections again: ${JSON.stringify(dR.map((x) => x.flows_created))}`);
    });

    test('teardown: no namespace of this run and no redis process are left', { timeout: 30000 }, async () => {
      const h = tb!;
      const redis = h.redis!;
      assert.ok(!processGone(redis.pid), 'redis runs before the teardown');
      await teardown();
      const left = listNetns().filter((n) => n.startsWith(`mplb-${h.runId}-`));
      assert.deepEqual(left, [], 'namespaces left behind');
      // The testbed waited for redis to die; the zombie is reaped on this process's next event loop turns.
      const deadline = Date.now() + 3000;
      while (Date.now() < deadline) {
        try { process.kill(redis.pid, 0); } catch { break; }
        await sleep(50);
      }
      assert.ok(processGone(redis.pid), `redis-server ${redis.pid} is still running`);
      assert.throws(() => process.kill(redis.pid, 0), /ESRCH/, `redis-server ${redis.pid} has not been reaped`);
      assert.ok(!fs.existsSync(redis.dir), `redis directory ${redis.dir} is left`);
      assert.ok(!fs.existsSync(h.stateFile), `state file ${h.stateFile} is left`);
      for (const l of lbs) assert.ok(processGone(l.pid), `mplb run ${l.pid} is still running`);
    });
  });

  test('cluster options are checked before anything is made, and a failure half-way removes everything made', { timeout: 30000 }, () => {
    const code = (f: () => unknown) => { try { f(); } catch (e) { return (e as { code?: string }).code; } return 'no error'; };
    assert.equal(code(() => testbedUp({ balancers: 17 })), 'TESTBED_BAD_OPTION');
    assert.equal(code(() => testbedUp({ balancers: 0 })), 'TESTBED_BAD_OPTION');
    assert.equal(code(() => testbedUp({ balancers: 2, mode: 'noBalancer' })), 'TESTBED_BAD_OPTION');
    assert.equal(code(() => testbedUp({ balancers: 2, clientAddrs: ['198.18.10.7', '198.18.2.2'] })), 'TESTBED_BAD_OPTION', 'a client address on the server LAN');
    assert.equal(code(() => testbedUp({ balancers: 2, vips: ['198.18.101.9'] })), 'TESTBED_BAD_OPTION', 'a VIP on a router link');
    // The same VIP twice: the router's second `ip route add` fails after every namespace exists.
    const runId = randomBytes(3).toString('hex');
    assert.equal(code(() => testbedUp({ runId, balancers: 2, servers: 1, rateMbit: 0, vips: ['198.19.0.10', '198.19.0.10'] })), 'TESTBED_CMD_FAILED');
    assert.deepEqual(listNetns().filter((n) => n.startsWith(`mplb-${runId}-`)), [], 'the failed testbed left namespaces');
    assert.equal(testbedLoad(runId), undefined, 'the failed testbed left its state file');
  });
}
