import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, validateEngineConfig, ENGINE_DEFAULTS } from '../src/engine/config.js';
import { canonicalEndpoint, endpointId, loadRunConfig, validateRunConfig } from '../src/control/run-config.js';

const ok = { vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }] }] };

function refuses(doc: unknown, path: string, reason: RegExp): void {
  assert.throws(() => validateRunConfig(doc), (e: unknown) => {
    assert.ok(e instanceof ConfigError, String(e));
    assert.equal(e.path, path);
    assert.match(e.reason, reason);
    return true;
  });
}

test('defaults are filled in and documented values hold', () => {
  const c = validateRunConfig(ok);
  assert.equal(c.device.name, 'mplb0');
  assert.equal(c.device.mtu, 1500);
  assert.equal(c.device.table, 2710);
  assert.equal(c.device.rulePriority, 10000);
  assert.equal(c.engine.policy, 'maglev');
  assert.equal(c.engine.mptcpAware, true);
  assert.equal(c.engine.unknownTokenAnswer, 'hash');
  assert.equal(c.engine.timeouts.tokenLingerMs, 60_000);
  assert.equal(c.engine.tables.maglevSize, 65537);
  assert.equal(c.engine.vips[0].backends[0].port, 80, 'backend port defaults to the VIP port');
  assert.equal(c.engine.vips[0].backends[0].weight, 1);
  assert.deepEqual(ENGINE_DEFAULTS.timeouts, c.engine.timeouts);
});

test('bad configs are refused with the field path and the reason', () => {
  refuses({}, 'vips', /list of VIPs/);
  refuses({ ...ok, policy: 'roundrobin' }, 'policy', /one of maglev, hash-5tuple, hash-ip-pair/);
  refuses({ ...ok, mptcpAware: 'yes' }, 'mptcpAware', /true or false/);
  refuses({ ...ok, unknownTokenAnswer: 'ignore' }, 'unknownTokenAnswer', /hash, drop, reset/);
  refuses({ vips: [{ address: '198.18.100.1', backends: [] }] }, 'vips[0].address', /addr:port/);
  refuses({ vips: [{ address: '198.18.100.1:70000', backends: [] }] }, 'vips[0].address', /port 1-65535/);
  refuses({ vips: [{ address: '198.18.100.1:80', backends: [{ address: 'backend-1' }] }] }, 'vips[0].backends[0].address', /not an IP address/);
  refuses({ vips: [{ address: '198.18.100.1:80', backends: [{ address: '2001:db8::1' }] }] }, 'vips[0].backends[0].address', /IPv6 backend for an IPv4 VIP/);
  refuses({ vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2', weight: -1 }] }] }, 'vips[0].backends[0].weight', /between 0 and 65535/);
  refuses({ vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2', wieght: 2 }] }] }, 'vips[0].backends[0].wieght', /unknown field/);
  refuses({ vips: [ok.vips[0], ok.vips[0]] }, 'vips[1].address', /duplicate VIP/);
  refuses({ ...ok, tables: { maglevSize: 65536 } }, 'tables.maglevSize', /prime/);
  refuses({ ...ok, tables: { maxFlows: 0 } }, 'tables.maxFlows', /between 16/);
  refuses({ ...ok, timeouts: { tokenLingerMs: 1.5 } }, 'timeouts.tokenLingerMs', /integer/);
  refuses({ ...ok, device: { name: 'a-name-longer-than-15' } }, 'device.name', /1-15/);
  refuses({ ...ok, device: { mtu: 100 } }, 'device.mtu', /576-65535/);
  refuses({ ...ok, device: { table: 254 } }, 'device.table', /253-255/);
  refuses({ ...ok, device: { table: 0 } }, 'device.table', /integer 1-4294967295/);
  refuses({ ...ok, device: { table: '2711' } }, 'device.table', /integer/);
  refuses({ ...ok, device: { rulePriority: 32765 } }, 'device.rulePriority', /integer 1-32764/);
  refuses({ ...ok, device: { rulePriority: 0 } }, 'device.rulePriority', /integer 1-32764/);
  refuses({ ...ok, device: { tabel: 2711 } }, 'device.tabel', /unknown field \(allowed: name, mtu, table, rulePriority\)/);
  assert.deepEqual(validateRunConfig({ ...ok, device: { table: 2711, rulePriority: 10100 } }).device, { name: 'mplb0', mtu: 1500, table: 2711, rulePriority: 10100 });
  refuses({ ...ok, bogus: {} }, 'bogus', /unknown field/);
  assert.throws(() => validateEngineConfig([]), /must be a mapping/);
});

test('YAML files: a valid one loads; a syntax error names the file and line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mplb-config-'));
  try {
    const good = join(dir, 'good.yaml');
    writeFileSync(good, 'device:\n  name: mplbt0\nvips:\n  - address: "[2001:db8::1]:443"\n    backends:\n      - { address: "2001:db8:1::2", port: 8443, weight: 3 }\npolicy: hash-ip-pair\n');
    const c = loadRunConfig(good);
    assert.equal(c.device.name, 'mplbt0');
    assert.equal(c.engine.vips[0].backends[0].weight, 3);
    assert.equal(c.engine.policy, 'hash-ip-pair');
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'vips:\n  - address: [unclosed\n');
    assert.throws(() => loadRunConfig(bad), (e: unknown) => e instanceof ConfigError && e.path === bad && /YAML syntax.*line/i.test(e.reason));
    assert.throws(() => loadRunConfig(join(dir, 'missing.yaml')), (e: unknown) => e instanceof ConfigError && /cannot read/.test(e.reason));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('one canonical endpoint spelling for VIPs and backends (the engine ids)', () => {
  assert.equal(endpointId('2001:DB8:0:0::1', 443), '[2001:db8::1]:443');
  assert.equal(endpointId('198.18.10.2', 80), '198.18.10.2:80');
  assert.equal(canonicalEndpoint('[2001:0db8::0001]:443'), endpointId('2001:db8::1', 443));
  assert.equal(canonicalEndpoint('198.18.10.2'), undefined, 'a VIP needs a port');
});
