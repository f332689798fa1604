// Services: a reconfiguration rebuilds the selection tables of the VIPs whose inputs changed, and only those.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateEngineConfig, type VipConfig } from '../src/engine/config.js';
import { Engine } from '../src/engine/engine.js';
import { buildMaglevTable } from '../src/engine/maglev.js';
import { Services } from '../src/engine/services.js';
import { SYN, capSyn, tcp, view } from './helpers/packets.js';

const vips = (weight2: number, policy3?: 'hash-5tuple' | 'hash-ip-pair'): VipConfig[] => [1, 2, 3].map((n) => ({
  address: `198.18.100.${n}:80`,
  backends: [10, 11, 12].map((b) => ({ address: `198.18.${b}.${n}`, weight: n === 2 && b === 11 ? weight2 : 1 })),
  ...(n === 3 && policy3 ? { policy: policy3 } : {}),
}));

/** Where each of 200 client SYNs to VIP n would go (backend ids), asked of the VIP's tables directly. */
function decisions(e: Engine, n: number): string[] {
  const v = e.services.findVipById(`198.18.100.${n}:80`);
  const out: string[] = [];
  for (let i = 0; i < 200; i++) {
    const p = tcp({ src: `10.1.${i >> 8}.${i & 255}`, dst: `198.18.100.${n}`, sport: 30000 + i, dport: 80, flags: SYN, options: [capSyn(1)] });
    out.push(e.services.backendId(e.services.select(v, p, view(p))));
  }
  return out;
}

test('changing one backend weight of VIP 2 rebuilds VIP 2 only; VIPs 1 and 3 keep their tables and decisions', () => {
  const e = new Engine(validateEngineConfig({ vips: vips(1), tables: { maxFlows: 1024, maxConnections: 1024 } }));
  const svc = e.services;
  const [v1, v2, v3] = [1, 2, 3].map((n) => svc.findVipById(`198.18.100.${n}:80`));
  const before = { t1: svc.vipMaglev[v1], t2: svc.vipMaglev[v2], t3: svc.vipMaglev[v3], builds: svc.tableBuilds };
  const d1 = decisions(e, 1), d3 = decisions(e, 3);
  assert.equal(before.builds, 3, 'one build per VIP at start');

  e.reconfigure(validateEngineConfig({ vips: vips(5) }));
  assert.equal(svc.tableBuilds, before.builds + 1, 'one table built');
  assert.equal(svc.vipMaglev[v1], before.t1, 'VIP 1 keeps its table object');
  assert.equal(svc.vipMaglev[v3], before.t3, 'VIP 3 keeps its table object');
  assert.notEqual(svc.vipMaglev[v2], before.t2, 'VIP 2 has a new table');
  assert.deepEqual(decisions(e, 1), d1);
  assert.deepEqual(decisions(e, 3), d3);
  // The new table is what a fresh build of VIP 2's backends gives (positions in the VIP's backend list).
  const fresh = buildMaglevTable([10, 11, 12].map((b) => ({ id: `198.18.${b}.2:80`, weight: b === 11 ? 5 : 1 })), e.config.tables.maglevSize);
  assert.deepEqual(svc.vipMaglev[v2], fresh);
  assert.deepEqual(svc.vipBackends[v2].map((b) => svc.backendId(b)), [10, 11, 12].map((b) => `198.18.${b}.2:80`));
  const fromFresh = new Engine(validateEngineConfig({ vips: vips(5), tables: { maxFlows: 1024, maxConnections: 1024 } }));
  assert.deepEqual(decisions(e, 2), decisions(fromFresh, 2), 'VIP 2 decides like an engine started with the new config');
});

test('an identical reconfiguration, or a health report that changes nothing, builds nothing', () => {
  const e = new Engine(validateEngineConfig({ vips: vips(1), tables: { maxFlows: 1024, maxConnections: 1024 } }));
  const svc = e.services;
  const builds = svc.tableBuilds;
  e.reconfigure(validateEngineConfig({ vips: vips(1) }));
  const b = svc.findBackend('198.18.10.1:80');
  svc.setUp(b, true);
  svc.setWeight(b, 1);
  assert.equal(svc.tableBuilds, builds);
  svc.setUp(b, false);
  assert.equal(svc.tableBuilds, builds + 1, 'a backend going down rebuilds its VIP');
  assert.ok(!decisions(e, 1).includes('198.18.10.1:80'));
});

test('a VIP on a hash policy keeps no Maglev table; moving between hash policies rebuilds nothing', () => {
  const e = new Engine(validateEngineConfig({ vips: vips(1, 'hash-5tuple'), tables: { maxFlows: 1024, maxConnections: 1024 } }));
  const svc = e.services;
  const v3 = svc.findVipById('198.18.100.3:80');
  assert.equal(svc.vipMaglev[v3].length, 0);
  assert.equal(svc.vipActive[v3].length, 3);
  const builds = svc.tableBuilds;
  e.reconfigure(validateEngineConfig({ vips: vips(1, 'hash-ip-pair') }));
  assert.equal(svc.tableBuilds, builds);
  e.reconfigure(validateEngineConfig({ vips: vips(1) }));
  assert.equal(svc.tableBuilds, builds + 1, 'back to maglev: VIP 3 gets its table again');
  assert.equal(svc.vipMaglev[v3].length, e.config.tables.maglevSize);
});

test('VIPs with the same backends and weights share one Maglev table; a change to one gives it its own', () => {
  const be = (a: string) => ({ address: a });
  const vips = Array.from({ length: 50 }, (_, i) => ({ address: `198.19.1.${i + 1}:80`, backends: [be(`198.18.${i % 5}.2`), be(`198.18.${i % 5}.3`)] }));
  const cfg = validateEngineConfig({ vips, tables: { maglevSize: 1021 } });
  const svc = new Services(cfg.tables.maglevSize, cfg.hashSeed, cfg.policy);
  svc.applyConfig(cfg);
  assert.equal(svc.tableBuilds, 5, '5 distinct backend pairs, 5 tables for 50 VIPs');
  assert.equal(svc.vipMaglev[0], svc.vipMaglev[5], 'same inputs, same table');
  assert.notEqual(svc.vipMaglev[0], svc.vipMaglev[1]);
  // The same table as a VIP built on its own: sharing changes no decision.
  const alone = new Services(cfg.tables.maglevSize, cfg.hashSeed, cfg.policy);
  alone.applyConfig(validateEngineConfig({ vips: [vips[5]], tables: { maglevSize: 1021 } }));
  assert.deepEqual([...svc.vipMaglev[5]], [...alone.vipMaglev[0]]);
  // Weight change on VIP 0's first backend: VIP 0 gets a new table, VIP 5 keeps the shared one untouched.
  const shared = svc.vipMaglev[5], copy = [...shared];
  svc.setWeight(svc.vipBackends[0][0], 3);
  assert.notEqual(svc.vipMaglev[0], shared);
  assert.equal(svc.vipMaglev[5], shared);
  assert.deepEqual([...shared], copy, 'a shared table is never written');
});
