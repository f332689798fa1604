// End-to-end: `mplb run` with `datapath: tc-bpf` between real Linux MPTCP hosts in namespaces made for this run.
// The balancer e2e checks (plain TCP NATed both ways, both subflows of every MPTCP connection on its token's
// server, a drained backend keeps its connections and their subflows) must give the same answers as on the TUN
// path, and most packets must go on the fast path. Also: stop detaches everything; a SIGKILLed run's program is
// removed by the next start. Needs root: skipped outside CI without it, failed in CI.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { stringify, parse } from 'yaml';
import { testbedUp, testbedDown, type TestbedHandle } from '../../src/testbed/testbed.js';
import { startBalancerProcess, type BalancerProcess } from '../../src/testbed/balancer-process.js';
import { listNetns } from '../../src/testbed/netns.js';
import { defaultObjectPath } from '../../src/fastpath/loader.js';
import type { ClientReport } from '../../src/traffic/client.js';
import type { FastpathStats } from '../../src/dataplane/packet-loop.js';
import {
  CLIENT_NSTAT, MPTCP_PORT, SERVER_NSTAT, TCP_PORT, diff, engineConnections, engineStats, establishedPeers, maxId, newConnections, nonZero,
  nstatDelta, nstatMany, preflightReason, runClient, sleep, startTrafficServer, tmpDir, type EngineStats, type TrafficServerProc,
} from './balancer-harness.js';

const CI = process.env.CI === 'true';
/** The stats' fast path section (the harness types the loop's stats as numbers only). */
const fpOf = (s: EngineStats) => (s.loop as unknown as { fastpath?: FastpathStats }).fastpath;
const N_SERVERS = 3;
const beAddr = (id: string) => id.replace(/:\d+$/, '');

function why(): string | undefined {
  const r = preflightReason();
  if (r) return r;
  if (!fs.existsSync(defaultObjectPath())) return `${defaultObjectPath()} is missing: npm run build needs clang and libbpf-dev`;
  return undefined;
}
const reason = why();
const runIds: string[] = [];

/** The fast path's packets over all packets (kernel + engine) between two stats samples. */
/** Packets NATed to and from every backend (the engine's per-backend counters, kernel-NATed ones folded in). */
async function backendPackets(lb: BalancerProcess): Promise<number> {
  const bs = (await lb.request('backends')) as Array<{ packetsIn: number; packetsOut: number }>;
  return bs.reduce((s, b) => s + b.packetsIn + b.packetsOut, 0);
}

function fastShare(a: EngineStats, b: EngineStats): { kernel: number; engine: number; share: number } {
  const kernel = (fpOf(b)?.program.packets ?? 0) - (fpOf(a)?.program.packets ?? 0);
  const engine = b.engine.counters.packets_in - a.engine.counters.packets_in;
  return { kernel, engine, share: kernel / Math.max(1, kernel + engine) };
}

/** tc filters at ingress of every interface of namespace ns (text of `tc filter show`). */
function ingressFilters(ns: string): string {
  const links = JSON.parse(execFileSync('ip', ['-n', ns, '-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{ ifname: string }>;
  return links.filter((l) => l.ifname !== 'lo').map((l) => `${l.ifname}: ${execFileSync('ip', ['netns', 'exec', ns, 'tc', 'filter', 'show', 'dev', l.ifname, 'ingress'], { encoding: 'utf8' })}`).join('\n');
}
const mplbFilters = (ns: string) => (ingressFilters(ns).match(/handle 0x6d70 /g) ?? []).length;

if (reason) {
  test('fast path e2e prerequisites', (t) => {
    if (CI) assert.fail(`the fast path end-to-end tests cannot run here: ${reason}. CI must run them as root with clang and libbpf-dev.`);
    t.skip(reason);
  });
} else {
  describe('mplb run with datapath: tc-bpf', { timeout: 180000 }, () => {
    let tb: TestbedHandle;
    let dir: string;
    let servers: TrafficServerProc[] = [];
    let lb: BalancerProcess | undefined;
    const vips = () => [MPTCP_PORT, TCP_PORT].map((p) => ({ address: `${tb.vips[0]}:${p}`, backends: tb.servers.map((s) => ({ address: s.addr })) }));
    const startLb = async () => { lb = await startBalancerProcess(tb, { engine: { datapath: 'tc-bpf', vips: vips() } }); return lb; };
    const since = () => Promise.all(servers.map(async (s) => maxId(await s.report())));
    const servedSince = async (ids: number[], listener: string) => (await Promise.all(servers.map(async (s, i) => newConnections(await s.report(), ids[i])))).map((l) => l.filter((c) => c.listener === listener));

    before(async () => {
      dir = tmpDir();
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      // "fa57" + random: this helper's run ids (namespaces mplb-fa57xx-*).
      tb = testbedUp({ mode: 'balancer', servers: N_SERVERS, rateMbit: 0, runId: `fa57${randomBytes(1).toString('hex')}` });
      runIds.push(tb.runId);
      servers = await Promise.all(tb.servers.map((s) => startTrafficServer(s.ns, s.addr, dir)));
      await startLb();
    });

    after(async () => {
      try { await lb?.stop(); } catch { /* teardown goes on */ }
      for (const s of servers) { try { await s.stop(); } catch { /* teardown goes on */ } }
      if (tb) testbedDown(tb);
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    test('the program is attached at ingress of every balancer interface but the TUN', async () => {
      const s = await engineStats(lb!);
      const fp = fpOf(s);
      assert.ok(fp, 'stats have a fastpath section');
      const links = (JSON.parse(execFileSync('ip', ['-n', tb.namespaces.balancer, '-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{ ifname: string }>)
        .map((l) => l.ifname).filter((n) => n !== 'lo' && n !== 'mplb0').sort();
      assert.deepEqual([...fp.interfaces].sort(), links);
      assert.equal(mplbFilters(tb.namespaces.balancer), links.length, ingressFilters(tb.namespaces.balancer));
    });

    test('plain TCP: every byte arrives, one server per connection with the client\'s address, most packets on the fast path', { timeout: 40000 }, async (t) => {
      const n = 20;
      const ids = await since();
      const e0 = await engineStats(lb!);
      await sleep(1100); // the worker adds the kernel's per-backend counters to the engine's once a second
      const b0 = await backendPackets(lb!);
      const r = await runClient(tb, ['--port', String(TCP_PORT), '--tcp', '--connections', String(n), '--bytes', '8M', '--timeout-ms', '20000'], 30000);
      await sleep(300); // the last FINs
      const e1 = await engineStats(lb!);
      await sleep(1100);
      const b1 = await backendPackets(lb!);
      const served = await servedSince(ids, 'tcp');
      const ed = diff(e0.engine.counters, e1.engine.counters);
      const f = fastShare(e0, e1);
      t.diagnostic(`plain TCP ${r.goodputMbps.toFixed(0)} Mbit/s; fast path ${f.kernel} packets, engine ${f.engine} (share ${f.share.toFixed(3)}); engine ${JSON.stringify(nonZero(ed))}; program ${JSON.stringify(nonZero(diff(fpOf(e0)!.program, fpOf(e1)!.program)))}`);
      assert.equal(r.connections.length, n);
      for (const c of r.connections) {
        assert.ok(!c.error, `connection #${c.index}: ${c.error}`);
        assert.equal(c.server?.bytes, 8 * 1024 * 1024, `connection #${c.index}: server got ${c.server?.bytes} bytes`);
        const where = served.map((l) => l.filter((s) => s.remoteAddress === tb.client.addrs[0] && s.remotePort === c.localPort).length);
        assert.equal(where.reduce((a, b) => a + b, 0), 1, `client port ${c.localPort} seen by servers ${JSON.stringify(where)}`);
      }
      assert.ok(served.every((l) => l.length > 0), `per server ${JSON.stringify(served.map((l) => l.length))}`);
      assert.equal(ed.flows_created, n);
      assert.equal(ed.flows_offloaded, n, 'every flow went on the fast path after its handshake');
      assert.ok(ed.flows_offload_released >= n, `each came back at its FIN (${ed.flows_offload_released})`);
      assert.ok(f.share > 0.5, `fast path share ${f.share.toFixed(3)}: most packets should bypass the engine`);
      for (const k of ['midstream_no_flow', 'stateless_reply', 'stateless_forward']) assert.equal(ed[k], 0, `engine ${k}`);
      assert.equal(fpOf(e1)!.program.errors, 0, 'no rewrite helper failed');
      assert.equal(fpOf(e1)!.insertErrors, 0);
      // Per-backend counters hold the kernel's packets too (they never reached the engine).
      assert.equal(b1 - b0, f.kernel + (ed.to_backend ?? 0) + (ed.to_client ?? 0), `per-backend packets ${b1 - b0}: kernel ${f.kernel} + engine ${(ed.to_backend ?? 0) + (ed.to_client ?? 0)}`);
    });

    const mptcpChecks = (r: ClientReport, n: number, diag: { diagnostic(m: string): void } | undefined, served: Awaited<ReturnType<typeof servedSince>>, conns: Awaited<ReturnType<typeof engineConnections>>): string[] => {
      const problems: string[] = [];
      let clientSawOne = 0;
      if (r.connections.length !== n) problems.push(`${r.connections.length} of ${n} connections reported`);
      for (const c of r.connections) {
        if (c.error || c.server?.bytes !== c.bytesSent || c.bytesSent === 0) { problems.push(`#${c.index} incomplete: ${c.error ?? `${c.server?.bytes}/${c.bytesSent}`}`); continue; }
        // The server's count is authoritative. At several Gbit/s the client sometimes never samples its join as
        // established (1/2) although the server has both subflows: seen with nftables DNAT too (1 of 24 connections
        // in one of three 6 Gbit/s runs, none on the TUN path at 0.3 Gbit/s), so it is reported, not failed.
        if (c.server?.subflowsTotalMax !== 2) problems.push(`#${c.index} subflows ${c.subflowsTotalMax}/${c.server?.subflowsTotalMax}`);
        else if (c.subflowsTotalMax === 1) clientSawOne++;
        const tok = c.server?.tokenHex;
        const hits = served.flatMap((l, i) => l.filter((s) => s.tokenHex === tok).map((s) => ({ i, s })));
        if (hits.length !== 1) { problems.push(`token ${tok} on ${hits.length} servers`); continue; }
        if (hits[0].s.subflowsTotalMax !== 2) problems.push(`token ${tok}: ${hits[0].s.subflowsTotalMax} subflows on its server`);
        const ec = conns.find((x) => x.token === tok);
        if (!ec || beAddr(ec.backend) !== tb.servers[hits[0].i].addr) problems.push(`engine maps token ${tok} to ${ec?.backend}, it lives on ${tb.servers[hits[0].i].addr}`);
      }
      if (clientSawOne > 0) diag?.diagnostic(`NOTE: the client sampled 1 subflow for ${clientSawOne} of ${n} connections whose server had 2`);
      return problems;
    };

    test('MPTCP: both subflows of every connection on its token\'s server, joins steered, most packets on the fast path', { timeout: 60000 }, async (t) => {
      const n = 24;
      for (let attempt = 1; ; attempt++) {
        const ids = await since();
        const e0 = await engineStats(lb!);
        const s0 = nstatMany(tb.namespaces.servers, SERVER_NSTAT);
        const c0 = nstatMany([tb.namespaces.client], CLIENT_NSTAT);
        // Timed, not sized: on the fast path 8 MB take well under the client's 100 ms sampling period, so a sized
        // transfer can end before the client samples its join (it then reports 1 subflow; the servers see 2).
        const r = await runClient(tb, ['--port', String(MPTCP_PORT), '--connections', String(n), '--seconds', '2', '--timeout-ms', '20000'], 30000);
        const e1 = await engineStats(lb!);
        const sd = nstatDelta(s0, nstatMany(tb.namespaces.servers, SERVER_NSTAT), SERVER_NSTAT).sum;
        const cd = nstatDelta(c0, nstatMany([tb.namespaces.client], CLIENT_NSTAT), CLIENT_NSTAT).sum;
        const ed = diff(e0.engine.counters, e1.engine.counters);
        const f = fastShare(e0, e1);
        const problems = mptcpChecks(r, n, t, await servedSince(ids, 'mptcp'), await engineConnections(lb!));
        if (sd.MPTcpExtMPJoinNoTokenFound !== 0) problems.push(`servers reset ${sd.MPTcpExtMPJoinNoTokenFound} joins (MPJoinNoTokenFound)`);
        if (!(ed.joins_steered_by_token >= n)) problems.push(`joins_steered_by_token ${ed.joins_steered_by_token} < ${n}`);
        for (const k of ['joins_unknown_token', 'midstream_no_flow', 'stateless_reply', 'mptcp_fallback']) if (ed[k] !== 0) problems.push(`engine ${k} = ${ed[k]}`);
        // Both subflows of each connection (the first and its join) are offloaded once their keys are read.
        if (!(ed.flows_offloaded >= 2 * n)) problems.push(`flows_offloaded ${ed.flows_offloaded} < ${2 * n}`);
        if (!(f.share > 0.5)) problems.push(`fast path share ${f.share.toFixed(3)} (kernel ${f.kernel}, engine ${f.engine})`);
        t.diagnostic(`attempt ${attempt}: ${r.goodputMbps.toFixed(0)} Mbit/s; fast path share ${f.share.toFixed(3)} (kernel ${f.kernel}, engine ${f.engine}); engine ${JSON.stringify(nonZero(ed))}; program ${JSON.stringify(nonZero(diff(fpOf(e0)!.program, fpOf(e1)!.program)))}; server nstat ${JSON.stringify(nonZero(sd))}; client nstat ${JSON.stringify(nonZero(cd))}`);
        if (problems.length === 0) break;
        if (attempt === 1 && sd.MPTcpExtDSSNotMatching > 0) {
          t.diagnostic(`RETRY: servers counted MPTcpExtDSSNotMatching ${sd.MPTcpExtDSSNotMatching} (known server-side reset): ${problems.join('; ')}`);
          continue;
        }
        assert.fail(problems.join('; '));
      }
    });

    test('drain under load: connections on the drained backend keep both subflows and finish; new ones avoid it', { timeout: 60000 }, async (t) => {
      const n = 9;
      const ids = await since();
      const e0 = await engineStats(lb!);
      const first = runClient(tb, ['--port', String(MPTCP_PORT), '--connections', String(n), '--seconds', '4', '--timeout-ms', '15000'], 25000);
      // Where the connections landed, from the servers' sockets (both subflows come from the client's addresses).
      let where = new Map<string, number>();
      for (const deadline = Date.now() + 2500; Date.now() < deadline; await sleep(100)) {
        where = new Map();
        tb.servers.forEach((s, i) => { for (const p of establishedPeers(s.ns, MPTCP_PORT)) where.set(p, i); });
        if (where.size >= 2 * n) break;
      }
      const counts = tb.servers.map((_, i) => [...where.values()].filter((x) => x === i).length);
      const drained = counts.indexOf(Math.max(...counts));
      assert.ok(counts[drained] > 0, `subflows per server ${JSON.stringify(counts)}`);
      // weight 0 in the file, then SIGHUP: the reload path of a real deployment.
      const cfg = parse(fs.readFileSync(lb!.configFile, 'utf8')) as { vips: Array<{ backends: Array<{ address: string; weight?: number }> }> };
      for (const v of cfg.vips) for (const b of v.backends) if (b.address === tb.servers[drained].addr) b.weight = 0;
      fs.writeFileSync(lb!.configFile, stringify(cfg));
      process.kill(lb!.pid, 'SIGHUP');
      await sleep(700);
      const eMid = await engineStats(lb!);
      const ids2 = await since();
      const second = await runClient(tb, ['--port', String(MPTCP_PORT), '--connections', '12', '--bytes', '1M', '--timeout-ms', '15000'], 25000);
      const r = await first;
      const e1 = await engineStats(lb!);
      const conns = await engineConnections(lb!);
      const servedFirst = await servedSince(ids, 'mptcp');
      const f = fastShare(e0, e1);
      t.diagnostic(`drained ${tb.servers[drained].addr} (subflows per server ${JSON.stringify(counts)}); fast path share ${f.share.toFixed(3)}; fast packets after the drain ${(fpOf(e1)!.program.packets - fpOf(eMid)!.program.packets)}`);
      // The first batch, drained server included: complete, two subflows each, on their token's server.
      // (servedFirst holds the second batch too: other tokens, so they do not disturb the lookups.)
      assert.deepEqual(mptcpChecks(r, n, t, servedFirst, conns), [], 'first batch');
      const onDrained = r.connections.filter((c) => [...where.entries()].some(([p, i]) => i === drained && p.endsWith(`:${c.localPort}`)));
      assert.ok(onDrained.length > 0, 'some connection ran on the drained server');
      // The second batch: none on the drained server.
      const served2 = await servedSince(ids2, 'mptcp');
      assert.equal(second.connections.filter((c) => !c.error).length, 12, 'second batch complete');
      assert.equal(served2[drained].length, 0, `new connections on the drained server: ${served2[drained].length}`);
      assert.ok(f.share > 0.5, `fast path share ${f.share.toFixed(3)}`);
    });

    test('stop removes every filter; after a SIGKILL the next start replaces the dead run\'s program', { timeout: 40000 }, async () => {
      const ns = tb.namespaces.balancer;
      const attached = mplbFilters(ns);
      assert.ok(attached > 0);
      await lb!.stop();
      lb = undefined;
      assert.equal(mplbFilters(ns), 0, `left after stop: ${ingressFilters(ns)}`);
      // SIGKILL: nothing runs at exit, the filters stay with their program.
      const killed = await startLb();
      assert.equal(mplbFilters(ns), attached);
      process.kill(killed.pid, 'SIGKILL');
      await sleep(500);
      assert.equal(mplbFilters(ns), attached, 'a SIGKILLed run leaves its filters');
      await killed.stop().catch(() => undefined);
      const again = await startLb();
      assert.match(again.stderr(), /removed a fast path program a previous run left/);
      assert.equal(mplbFilters(ns), attached, 'one filter per interface, the new run\'s');
      // And it works: a plain TCP transfer through the new run.
      const r = await runClient(tb, ['--port', String(TCP_PORT), '--tcp', '--connections', '2', '--bytes', '2M', '--timeout-ms', '15000'], 20000);
      assert.ok(r.connections.every((c) => !c.error && c.server?.bytes === 2 * 1024 * 1024), JSON.stringify(r.connections.map((c) => c.error ?? c.server?.bytes)));
      await again.stop();
      lb = undefined;
      assert.equal(mplbFilters(ns), 0);
    });

    test('datapath auto without a loadable program falls back to tun (logged) and balances; tc-bpf refuses to start', { timeout: 40000 }, async () => {
      const ns = tb.namespaces.balancer;
      assert.equal(lb, undefined, 'the previous test stopped its instance');
      const env = { MPLB_BPF_OBJECT: '/nonexistent/fastpath.bpf.o' };
      const auto = await startBalancerProcess(tb, { engine: { datapath: 'auto', vips: vips() }, env });
      lb = auto;
      assert.match(auto.stderr(), /datapath auto: the tc-bpf fast path is not available \(.*fastpath\.bpf\.o is missing.*\); using tun/);
      const s = await engineStats(auto);
      assert.equal(fpOf(s), undefined, 'no fast path in the stats');
      assert.equal(mplbFilters(ns), 0, 'nothing attached');
      const r = await runClient(tb, ['--port', String(TCP_PORT), '--tcp', '--connections', '2', '--bytes', '1M', '--timeout-ms', '15000'], 20000);
      assert.ok(r.connections.every((c) => !c.error && c.server?.bytes === 1024 * 1024));
      const s1 = await engineStats(auto);
      assert.ok(s1.engine.counters.to_backend - s.engine.counters.to_backend > 10 && s1.engine.counters.to_client - s.engine.counters.to_client > 10, 'the engine carried the packets both ways');
      await auto.stop();
      lb = undefined;
      await assert.rejects(startBalancerProcess(tb, { engine: { datapath: 'tc-bpf', vips: vips() }, env, startTimeoutMs: 15000 }), /datapath tc-bpf cannot start: .*fastpath\.bpf\.o is missing/);
      assert.equal(mplbFilters(ns), 0);
    });

    test('nothing of this run is left in ip netns list', async () => {
      for (const s of servers) await s.stop();
      servers = [];
      testbedDown(tb);
      const left = listNetns().filter((n) => runIds.some((id) => n.includes(id)));
      assert.deepEqual(left, []);
    });
  });
}
