// End-to-end: `mplb demo --quick` (as root, in namespaces the demo makes and removes) reproduces the poster's
// result in miniature: the unaware balancer loses the second path, mplb keeps it.
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cmdDemo } from '../../src/cli/demo-command.js';
import { demoPreflightProblem } from '../../src/demo/preflight.js';
import { listNetns } from '../../src/testbed/netns.js';

const CI = process.env.CI === 'true';
const MODES = ['noBalancer', 'unaware', 'aware'] as const;

interface ModeDoc { goodputMbps: number[]; completionSeconds: Array<number | null>; subflowsEstablished: number; joinsReset: number }
interface DemoDoc { rateMbps: number; seconds: number; modes: Record<(typeof MODES)[number], ModeDoc> }

/** Minimal well-formedness check: one root, balanced and properly nested tags, no stray '<' or '&'. */
function checkXml(text: string): string | undefined {
  const stack: string[] = [];
  let roots = 0;
  const re = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>|<\?xml[^>]*\?>|<!--[\s\S]*?-->/g;
  let last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const between = text.slice(last, m.index);
    if (/[<>]/.test(between)) return `stray markup before offset ${m.index}: ${JSON.stringify(between.slice(0, 40))}`;
    if (/&(?!(amp|lt|gt|quot|apos|#\d+);)/.test(between)) return `unescaped & before offset ${m.index}`;
    last = re.lastIndex;
    if (!m[2]) continue;
    const names = [...(m[3] ?? '').matchAll(/([\w:-]+)=/g)].map((a) => a[1]);
    if (new Set(names).size !== names.length) return `<${m[2]}> repeats an attribute (${names.join(' ')})`;
    if (m[1]) {
      if (stack.pop() !== m[2]) return `</${m[2]}> does not close the open element`;
    } else if (!m[4]) {
      if (stack.length === 0) roots++;
      stack.push(m[2]);
    } else if (stack.length === 0) roots++;
  }
  if (text.slice(last).trim()) return 'text after the root element';
  if (stack.length) return `unclosed <${stack.join('><')}>`;
  if (roots !== 1) return `${roots} root elements`;
  return undefined;
}

const problem = demoPreflightProblem();

test('mplb demo --quick: aware keeps both paths, unaware loses one', { timeout: 150000 }, async (t) => {
  if (problem) {
    if (CI) assert.fail(`the demo cannot run here: ${problem}. CI must run this test as root on Linux with iproute2.`);
    t.skip(problem);
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mplb-demo-test-'));
  const runIds: string[] = [];
  try {
    let doc: DemoDoc | undefined;
    for (let attempt = 1; attempt <= 2; attempt++) {
      const jsonFile = path.join(dir, 'demo.json');
      const started = Date.now();
      // Quick mode: 1 run, 3 s, 20 Mbit/s links, sizes 1M,2M,4M.
      const code = await cmdDemo(['--quick', '--out', path.join(dir, 'out'), '--json', jsonFile]);
      assert.equal(code, 0, 'mplb demo --quick exited with an error');
      doc = JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as DemoDoc;
      const full = JSON.parse(fs.readFileSync(path.join(dir, 'out', 'results.json'), 'utf8')) as { joins: Record<string, { serverDssNotMatching: number }>; setup: { testbedRunId: string } };
      runIds.push(full.setup.testbedRunId);
      t.diagnostic(`attempt ${attempt} took ${((Date.now() - started) / 1000).toFixed(1)} s: ${JSON.stringify(doc.modes)}`);
      const aware = doc.modes.aware;
      // A server-side DSS mismatch (seen rarely with no balancer at all) can cost the aware run its second
      // subflow: retried once, and said so, never passed silently.
      const dss = full.joins.aware.serverDssNotMatching + full.joins.noBalancer.serverDssNotMatching;
      if (attempt === 1 && dss > 0 && (aware.subflowsEstablished !== 2 || doc.modes.noBalancer.subflowsEstablished !== 2)) {
        t.diagnostic(`RETRY: servers counted MPTcpExtDSSNotMatching (${dss}), a known rare server-side reset, not a balancer fault`);
        continue;
      }
      // A sized transfer that stalled (seen once in CI through mplb, not reproduced in later runs): retried once
      // and reported with mplb's counters for that run, never passed silently. Two in a row fail the test.
      const failed = (['noBalancer', 'unaware', 'aware'] as const).filter((m) => doc!.modes[m].completionSeconds.some((c) => c === null));
      if (attempt === 1 && failed.length > 0) {
        const detail = JSON.parse(fs.readFileSync(path.join(dir, "out", "results.json"), "utf8")) as { samples?: unknown };
        t.diagnostic(`RETRY: a sized transfer did not complete in ${failed.join(', ')}; run details: ${JSON.stringify(detail.samples).slice(0, 4000)}`);
        continue;
      }
      // One 3 s run per mode: a busy moment on the shared machine can cost one mode a few Mbit/s (seen in CI-like
      // runs: aware 29.7 against 37.2 once, 37.0-37.3 against 34.4-36.5 in the next ones). Retried once, and said so.
      const [nb0, un0, aw0] = MODES.map((m) => doc!.modes[m].goodputMbps[0]);
      if (attempt === 1 && (aw0 / un0 < 1.5 || aw0 < 0.8 * nb0)) {
        t.diagnostic(`RETRY: goodput below the loose targets in one quick run (noBalancer ${nb0}, unaware ${un0}, aware ${aw0} Mbit/s)`);
        continue;
      }
      break;
    }
    const d = doc!;
    // Shape: exactly the documented fields.
    assert.equal(d.rateMbps, 20);
    assert.equal(d.seconds, 3);
    assert.deepEqual(Object.keys(d.modes).sort(), [...MODES].sort());
    for (const m of MODES) {
      const x = d.modes[m];
      assert.deepEqual(Object.keys(x).sort(), ['completionSeconds', 'goodputMbps', 'joinsReset', 'subflowsEstablished']);
      assert.equal(x.goodputMbps.length, 1, `${m}: one goodput per run`);
      assert.equal(x.completionSeconds.length, 1, `${m}: one completion time per run`);
      assert.ok(x.goodputMbps.every((g) => typeof g === 'number' && g > 0), `${m}: goodput ${x.goodputMbps}`);
      assert.ok(x.completionSeconds.every((c) => typeof c === 'number' && c > 0), `${m}: completion ${x.completionSeconds}`);
      assert.equal(typeof x.subflowsEstablished, 'number');
      assert.equal(typeof x.joinsReset, 'number');
    }
    const [nb, un, aw] = MODES.map((m) => d.modes[m].goodputMbps[0]);
    // Looser than the full demo's targets (>= 1.8 and >= 0.9): one 3 s run on a shared 2-core machine is noisy.
    assert.ok(aw / un >= 1.5, `aware/unaware = ${(aw / un).toFixed(2)} (${aw.toFixed(1)} / ${un.toFixed(1)} Mbit/s), expected >= 1.5`);
    assert.ok(aw >= 0.8 * nb, `aware ${aw.toFixed(1)} Mbit/s < 80% of noBalancer ${nb.toFixed(1)} Mbit/s`);
    assert.equal(d.modes.aware.subflowsEstablished, 2, 'aware: the join must be established');
    assert.equal(d.modes.noBalancer.subflowsEstablished, 2, 'noBalancer: the join must be established');
    assert.ok(d.modes.unaware.joinsReset > 0, 'unaware: the server that got the join must reset it');
    assert.equal(d.modes.aware.joinsReset, 0, 'aware: no join may be reset');

    for (const f of ['goodput-over-time.svg', 'completion-time.svg']) {
      const svg = fs.readFileSync(path.join(dir, 'out', f), 'utf8');
      assert.equal(checkXml(svg), undefined, `${f} is not well-formed: ${checkXml(svg)}`);
      assert.match(svg, /<polyline /, `${f} has no data line`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // Only this demo's testbeds: other tests may run testbeds of their own at the same time.
  const left = listNetns().filter((n) => runIds.some((id) => n.startsWith(`mplb-${id}-`)));
  assert.deepEqual(left, [], 'the demo left namespaces behind');
});

// The cluster variant: `mplb demo --balancers 2 --quick` (needs redis-server too). Each mode sends a probe of 16 short
// connections, a timed pool of 4 and 3 sized ones, so with the router's per-subflow hash a join reaches the other
// balancer than its first subflow with near certainty (all 23 keep to their balancer with probability 2^-23).
interface ClusterModeDoc extends ModeDoc { connections: number; connectionsWithBothSubflows: number; joinsCrossed: number | null; joinsViaStore: number | null }
interface ClusterDoc { rateMbps: number; seconds: number; balancers: number; connections: number; probe: number; modes: Record<'noBalancer' | 'noStore' | 'store', ClusterModeDoc> }
const CLUSTER_MODES = ['noBalancer', 'noStore', 'store'] as const;
const noRedis = spawnSync('redis-server', ['--version']).status === 0 ? undefined : 'redis-server is not installed (Debian package redis-server)';

test('mplb demo --balancers 2 --quick: with the store no join is reset and goodput matches no balancer; without it crossing joins are reset', { timeout: 150000 }, async (t) => {
  const why = problem ?? noRedis;
  if (why) {
    if (CI) assert.fail(`the cluster demo cannot run here: ${why}. CI must run this test as root on Linux with iproute2 and redis-server.`);
    t.skip(why);
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mplb-demo-cluster-test-'));
  const runIds: string[] = [];
  type Full = { setup: { testbedRunId: string }; joins: Record<string, { serverDssNotMatching: number }>; samples: Array<{ mode: string; connections: Array<{ transfer: string; index: number; crossed: boolean | null; subflowsClient: number }> }> };
  try {
    let d!: ClusterDoc, full!: Full;
    for (let attempt = 1; attempt <= 2; attempt++) {
      const jsonFile = path.join(dir, 'demo.json');
      const started = Date.now();
      // Quick mode: 1 run, 3 s, 20 Mbit/s links, sizes 1M,2M,4M; 4 connections in the timed pool, a probe of 16.
      const code = await cmdDemo(['--balancers', '2', '--quick', '--out', path.join(dir, 'out'), '--json', jsonFile]);
      assert.equal(code, 0, 'mplb demo --balancers 2 --quick exited with an error');
      d = JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as ClusterDoc;
      full = JSON.parse(fs.readFileSync(path.join(dir, 'out', 'results.json'), 'utf8')) as Full;
      runIds.push(full.setup.testbedRunId);
      t.diagnostic(`attempt ${attempt} took ${((Date.now() - started) / 1000).toFixed(1)} s: ${JSON.stringify(d.modes)}`);
      for (const s of full.samples) t.diagnostic(`${s.mode}: crossed ${s.connections.filter((c) => c.crossed).map((c) => `${c.transfer}#${c.index}`).join(' ') || 'none'}`);
      // A join that is not established even with no balancer at all (seen rarely, e.g. the server-side DSS mismatch)
      // can cost a timed connection its second subflow: retried once, and said so; never passed silently.
      const dss = full.joins.store.serverDssNotMatching + full.joins.noBalancer.serverDssNotMatching;
      const lost = (['noBalancer', 'store'] as const).filter((m) => d.modes[m].connectionsWithBothSubflows !== d.modes[m].connections);
      if (attempt === 1 && lost.length > 0) {
        t.diagnostic(`RETRY: ${lost.join(', ')} lost a subflow (servers' MPTcpExtDSSNotMatching: ${dss}); the run's details: ${JSON.stringify(full.joins)}`);
        continue;
      }
      break;
    }

    assert.equal(d.balancers, 2);
    assert.equal(d.connections, 4);
    assert.equal(d.probe, 16);
    assert.deepEqual(Object.keys(d.modes).sort(), [...CLUSTER_MODES].sort());
    for (const m of CLUSTER_MODES) {
      const x = d.modes[m];
      assert.equal(x.goodputMbps.length, 1, `${m}: one goodput per run`);
      assert.ok(x.goodputMbps[0] > 0, `${m}: goodput ${x.goodputMbps}`);
      // noStore may stall: a transfer whose join was reset, or whose steered join moved to the other balancer.
      if (m !== 'noStore') assert.ok(x.completionSeconds.every((c) => typeof c === 'number' && c > 0), `${m}: completion ${x.completionSeconds}`);
      assert.equal(x.connections, 4, `${m}: 4 connections in the timed pool`);
    }
    const { noBalancer: nb, noStore: ns, store: st } = d.modes;
    // With the store: every join steered, the crossing ones through the store, both paths on every connection.
    assert.equal(st.joinsReset, 0, 'store: no join may be reset');
    assert.equal(st.connectionsWithBothSubflows, st.connections, 'store: every connection has both subflows');
    assert.ok((st.joinsViaStore ?? 0) >= 1, `store: no join was steered with the store's answer (${st.joinsCrossed} crossed)`);
    if (st.joinsViaStore !== st.joinsCrossed) t.diagnostic(`NOTE: store: ${st.joinsViaStore} joins via the store, ${st.joinsCrossed} classified as crossed from the tables`);
    // Aggregate goodput: with the store at least 90% of no balancer. Not bounded above: no balancer puts every connection
    // on server 1 (the VIP lives there), the balancers spread them over both servers, and on this shared machine that
    // measured 0-11% faster in --quick runs (never a fault of the store).
    const ratio = st.goodputMbps[0] / nb.goodputMbps[0];
    t.diagnostic(`MEASURED: store/noBalancer aggregate goodput ${ratio.toFixed(3)} (${st.goodputMbps[0].toFixed(1)} / ${nb.goodputMbps[0].toFixed(1)} Mbit/s)`);
    assert.ok(ratio >= 0.9, `store ${st.goodputMbps[0].toFixed(1)} Mbit/s is more than 10% below noBalancer ${nb.goodputMbps[0].toFixed(1)} Mbit/s (ratio ${ratio.toFixed(2)})`);
    assert.equal(nb.subflowsEstablished, 2, 'noBalancer: every join is established');
    // Without the store: at least one join crossed and was reset (a connection stuck on one path).
    assert.ok((ns.joinsCrossed ?? 0) >= 1, `noStore: no join reached the other balancer among ${d.probe + ns.connections + 3} connections`);
    assert.ok(ns.joinsReset >= 1, 'noStore: a crossing join must be reset');
    t.diagnostic(`MEASURED: noStore: ${ns.joinsCrossed} joins crossed, ${ns.joinsReset} reset`);
    const timedCrossed = full.samples.filter((s) => s.mode === 'noStore').flatMap((s) => s.connections.filter((c) => c.transfer === 'timed' && c.crossed));
    for (const c of timedCrossed) assert.equal(c.subflowsClient, 1, `noStore: timed connection #${c.index} crossed, so it must be left with one subflow`);
    if (timedCrossed.length > 0) assert.equal(ns.subflowsEstablished, 1, 'noStore: the fewest subflows is one');

    for (const f of ['goodput-over-time.svg', 'completion-time.svg']) {
      const svg = fs.readFileSync(path.join(dir, 'out', f), 'utf8');
      assert.equal(checkXml(svg), undefined, `${f} is not well-formed: ${checkXml(svg)}`);
      assert.match(svg, /<polyline /, `${f} has no data line`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  const left = listNetns().filter((n) => runIds.some((id) => n.startsWith(`mplb-${id}-`)));
  assert.deepEqual(left, [], 'the demo left namespaces behind');
});
