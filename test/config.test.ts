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
  refuses({ ...ok, device: { tabel: 2711 } }, 'device.tabel', /unknown field \(allowed: name, mtu, table, rulePriority, stateFile\)/);
  assert.deepEqual(validateRunConfig({ ...ok, device: { table: 2711, rulePriority: 10100 } }).device, { name: 'mplb0', mtu: 1500, table: 2711, rulePriority: 10100 });
  refuses({ ...ok, bogus: {} }, 'bogus', /unknown field/);
  refuses({ ...ok, device: { stateFile: 'relative.json' } }, 'device.stateFile', /absolute file path/);
  assert.equal(validateRunConfig({ ...ok, device: { stateFile: '/var/lib/mplb/mplb0.json' } }).device.stateFile, '/var/lib/mplb/mplb0.json');
  assert.equal('stateFile' in validateRunConfig(ok).device, false, 'no stateFile: routes.ts picks the default per device and namespace');
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

// ---- hardening (issue 9): hostile or careless files are config errors with short, exact messages ----

function withFile<T>(name: string, text: string | Buffer, fn: (file: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'mplb-config-'));
  try {
    const f = join(dir, name);
    writeFileSync(f, text);
    return fn(f);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The ConfigError loadRunConfig(file) throws (fails the test when it throws anything else, or nothing). */
function loadError(file: string): ConfigError {
  try { loadRunConfig(file); } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String((e as Error)?.stack ?? e).slice(0, 300)}`);
    return e;
  }
  assert.fail('the file was accepted');
}

test('a YAML alias bomb ("billion laughs") is a config error naming the problem, not an internal error', () => {
  const levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
  for (let i = 1; i < 9; i++) {
    const p = String.fromCharCode(97 + i - 1), c = String.fromCharCode(97 + i);
    levels.push(`${c}: &${c} [${Array(9).fill(`*${p}`).join(',')}]`);
  }
  withFile('bomb.yaml', `${levels.join('\n')}\nvips: *i\n`, (f) => {
    const e = loadError(f);
    assert.equal(e.path, f);
    assert.match(e.reason, /alias/i);
    assert.ok(e.message.length < 400, `message of ${e.message.length} characters`);
  });
});

test('a file over 1 MiB is refused at once, with its size and the cap, and nothing of it is echoed', () => {
  const big = Buffer.alloc(50 * 1024 * 1024, 'x');
  big.write('policy: "', 0);
  withFile('big.yaml', big, (f) => {
    const t0 = performance.now();
    const e = loadError(f);
    const ms = performance.now() - t0;
    assert.ok(ms < 500, `took ${ms.toFixed(0)} ms`);
    assert.match(e.reason, /52428800 bytes/);
    assert.match(e.reason, /1048576/);
    assert.ok(e.message.length < 400, `message of ${e.message.length} characters`);
  });
});

test('values echoed in errors are cut short with "..."', () => {
  const long = 'x'.repeat(500_000);
  const cases: unknown[] = [
    { ...ok, policy: long },
    { ...ok, unknownTokenAnswer: long },
    { ...ok, timeouts: { synMs: long } },
    { ...ok, [long]: 1 },
    { ...ok, tables: { [long]: 1 } },
    { vips: [{ address: long, backends: [] }] },
    { vips: [{ address: '198.18.100.1:80', backends: [{ address: long }] }] },
    { vips: [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2', [long]: 1 }] }] },
    { ...ok, device: { name: long } },
    { ...ok, device: { [long]: 1 } },
    { ...ok, admin: { address: long } },
    { ...ok, admin: { port: long } },
    { ...ok, health: { check: long } },
    { ...ok, health: { vips: { [long]: {} } } },
    { ...ok, log: { level: long } },
  ];
  for (const doc of cases) {
    assert.throws(() => validateRunConfig(doc), (e: unknown) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.ok(e.message.length < 400, `message of ${e.message.length} characters: ${e.message.slice(0, 200)}`);
      assert.match(e.message, /\.\.\./);
      return true;
    });
  }
  // Through a file too (under the size cap).
  withFile('long.yaml', `vips: []\npolicy: "${'y'.repeat(900_000)}"\n`, (f) => {
    const e = loadError(f);
    assert.equal(e.path, 'policy');
    assert.ok(e.message.length < 400, `message of ${e.message.length} characters`);
  });
});

test('IPv6 backends are compared canonically: one backend spelled twice is a duplicate', () => {
  const v6 = (backends: unknown[]) => ({ vips: [{ address: '[2001:db8::1]:443', backends }] });
  refuses(v6([{ address: '2001:db8::2' }, { address: '2001:DB8:0:0::2' }]), 'vips[0].backends[1]', /duplicate backend \[2001:db8::2\]:443/);
  refuses(v6([{ address: '2001:db8::2', port: 8443 }, { address: '2001:0db8::0002', port: 8443 }]), 'vips[0].backends[1]', /duplicate backend \[2001:db8::2\]:8443/);
  // Other ports of the same address are other backends.
  assert.equal(validateRunConfig(v6([{ address: '2001:db8::2' }, { address: '2001:DB8::2', port: 8443 }])).engine.vips[0].backends.length, 2);
  refuses({ vips: [{ address: '[2001:db8::1]:443', backends: [] }, { address: '[2001:DB8:0::1]:443', backends: [] }] }, 'vips[1].address', /duplicate VIP/);
});

test('addresses that cannot work behind the TUN are refused with the reason', () => {
  const vip = (address: string, backends: string[] = ['198.18.10.2']) => ({ vips: [{ address, backends: backends.map((a) => ({ address: a })) }] });
  refuses(vip('198.18.100.1:80', ['198.18.100.1']), 'vips[0].backends[0].address', /is the VIP's own address/);
  refuses(vip('[2001:db8::1]:443', ['2001:DB8::1']), 'vips[0].backends[0].address', /is the VIP's own address/);
  // Another VIP's address loops into the TUN just the same.
  refuses({ vips: [vip('198.18.100.1:80').vips[0], { address: '198.18.100.2:80', backends: [{ address: '198.18.100.1', port: 8080 }] }] }, 'vips[1].backends[0].address', /is the address of VIP 198\.18\.100\.1:80/);
  refuses(vip('0.0.0.0:80'), 'vips[0].address', /unspecified/);
  refuses(vip('[::]:80', ['2001:db8::2']), 'vips[0].address', /unspecified/);
  refuses(vip('255.255.255.255:80'), 'vips[0].address', /broadcast/);
  refuses(vip('224.0.0.1:80'), 'vips[0].address', /multicast/);
  refuses(vip('239.1.2.3:80'), 'vips[0].address', /multicast/);
  refuses(vip('[ff02::1]:80', ['2001:db8::2']), 'vips[0].address', /multicast/);
  refuses(vip('127.0.0.1:80'), 'vips[0].address', /loopback/);
  refuses(vip('127.3.4.5:80'), 'vips[0].address', /loopback/);
  refuses(vip('[::1]:80', ['2001:db8::2']), 'vips[0].address', /loopback/);
  for (const [b, why] of [['127.0.0.1', /loopback/], ['0.0.0.0', /unspecified/], ['255.255.255.255', /broadcast/], ['224.0.0.5', /multicast/]] as const) {
    refuses(vip('198.18.100.1:80', [b]), 'vips[0].backends[0].address', why);
  }
  refuses(vip('[2001:db8::1]:443', ['::1']), 'vips[0].backends[0].address', /loopback/);
  refuses(vip('[2001:db8::1]:443', ['ff05::2']), 'vips[0].backends[0].address', /multicast/);
});

test('zone-scoped addresses (fe80::1%lo) are refused in validation, before any TUN exists', () => {
  refuses({ vips: [{ address: '[2001:db8::1]:443', backends: [{ address: 'fe80::1%lo' }] }] }, 'vips[0].backends[0].address', /zone/);
  refuses({ vips: [{ address: '[fe80::1%lo]:443', backends: [{ address: '2001:db8::2' }] }] }, 'vips[0].address', /zone/);
  assert.throws(() => validateEngineConfig({ vips: [{ address: '[2001:db8::1]:443', backends: [{ address: 'fe80::1%eth0' }] }] }), /zone/);
});
