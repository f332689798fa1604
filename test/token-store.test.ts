// The shared token store against a real redis-server on loopback: set-if-absent publishing, collisions marked
// ambiguous cluster-wide, hostile values refused, a store that is down answers at once (never blocks), a store that
// comes back is announced, and a password is needed when configured.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TokenStore, decodeEntry, encodeEntry, tokenKey, type TokenStoreOptions } from '../src/cluster/token-store.js';
import { redisAvailable, startRedis, type RedisProc } from './helpers/redis.js';
import { Redis } from 'ioredis';
import { StoreServer } from '../src/dataplane/store-server.js';
import type { StoreAnswer } from '../src/dataplane/store-sync.js';

const CI = process.env.CI === 'true';
const missing = redisAvailable();
const opts = (r: RedisProc, extra: Partial<TokenStoreOptions> = {}): TokenStoreOptions => ({ url: r.url, keyPrefix: 'mplb:test:', password: r.password, connectTimeoutMs: 500, commandTimeoutMs: 200, ...extra });
const E = { vip: '198.19.0.10:5201', backend: '198.18.11.2:5201', version: 1 };

test('store values: encoded compactly, anything else refused', () => {
  assert.equal(encodeEntry(E), 'v1|198.19.0.10:5201|198.18.11.2:5201|1');
  assert.deepEqual(decodeEntry(encodeEntry(E)), E);
  assert.equal(decodeEntry(null), null);
  assert.equal(decodeEntry('ambiguous'), 'ambiguous');
  for (const bad of ['', 'v2|a|b|1', 'v1|a|b|2', 'v1||b|1', 'v1|a|b', 'v1|a|b|1|x', 'x'.repeat(500), '{"vip":1}']) assert.equal(decodeEntry(bad), 'invalid', JSON.stringify(bad.slice(0, 20)));
  assert.equal(tokenKey('p:', 0xdeadbeef), 'p:t:deadbeef');
  assert.equal(tokenKey('p:', 7), 'p:t:00000007');
});

if (missing) {
  test('token store against redis-server', (t) => {
    if (CI) assert.fail(`${missing}: CI must install it`);
    t.skip(missing);
  });
} else {
  describe('token store against a real redis-server', () => {
    let r: RedisProc;
    before(async () => { r = await startRedis({ password: 'test-password-123' }); });
    after(async () => { await r?.stop(); });

    test('publish then lookup; the same balancer republishing refreshes; another backend is a collision marked ambiguous', async () => {
      const a = new TokenStore(opts(r)), b = new TokenStore(opts(r));
      await a.connect(); await b.connect();
      try {
        assert.equal(a.state, 'up');
        assert.equal(await a.publishToken(0x01020304, E, 60_000), 'ok');
        assert.deepEqual(await b.lookupToken(0x01020304), { outcome: 'found', entry: E });
        assert.equal(await b.publishToken(0x01020304, E, 60_000), 'ok', 'the same entry from another balancer (keys seen on both) is no collision');
        assert.equal(await b.publishToken(0x01020304, { ...E, backend: '198.18.12.2:5201' }, 60_000), 'collision');
        assert.deepEqual(await a.lookupToken(0x01020304), { outcome: 'ambiguous' });
        assert.equal(b.counters.collisions, 1);
        assert.deepEqual(await a.lookupToken(0x0badf00d), { outcome: 'absent' });
      } finally { await a.close(); await b.close(); }
    });

    test('pipelined writes: subflow entries, TTL refresh, delete', async () => {
      const a = new TokenStore(opts(r));
      await a.connect();
      try {
        await a.publishToken(0x11111111, E, 60_000);
        assert.equal(await a.writeBatch([
          { op: 'set', key: 'mplb:test:f:198.18.2.2:40000>198.19.0.10:5201', value: encodeEntry(E), ttlMs: 60_000 },
          { op: 'expire', key: tokenKey('mplb:test:', 0x11111111), ttlMs: 50 },
        ]), true);
        assert.deepEqual(await a.lookupFlow('198.18.2.2:40000>198.19.0.10:5201'), { outcome: 'found', entry: E });
        await new Promise((res) => setTimeout(res, 120));
        assert.deepEqual(await a.lookupToken(0x11111111), { outcome: 'absent' }, 'the shortened TTL (a linger) ran out');
        await a.writeBatch([{ op: 'del', key: 'mplb:test:f:198.18.2.2:40000>198.19.0.10:5201' }]);
        assert.deepEqual(await a.lookupFlow('198.18.2.2:40000>198.19.0.10:5201'), { outcome: 'absent' });
      } finally { await a.close(); }
    });

    test('batched publishes (one Lua command): set-if-absent per token, the same entry refreshes, another backend or a bad value is a collision marked ambiguous', async () => {
      const raw = new Redis(r.url, { password: r.password, lazyConnect: true });
      await raw.connect();
      const a = new TokenStore(opts(r)), b = new TokenStore(opts(r));
      await a.connect(); await b.connect();
      try {
        const other = { ...E, backend: '198.18.12.2:5201' };
        await raw.set(tokenKey('mplb:test:', 0x0b000004), 'garbage', 'PX', 60_000);
        assert.deepEqual(await a.publishBatch([{ token: 0x0b000001, entry: E }, { token: 0x0b000002, entry: E }], 60_000), ['ok', 'ok']);
        await raw.pexpire(tokenKey('mplb:test:', 0x0b000001), 5_000);
        assert.deepEqual(await b.publishBatch([
          { token: 0x0b000001, entry: E }, { token: 0x0b000002, entry: other }, { token: 0x0b000003, entry: other }, { token: 0x0b000004, entry: E },
        ], 60_000), ['ok', 'collision', 'ok', 'collision']);
        assert.ok(Number(await raw.pttl(tokenKey('mplb:test:', 0x0b000001))) > 50_000, 'the same entry had its TTL refreshed');
        assert.deepEqual(await a.lookupToken(0x0b000002), { outcome: 'ambiguous' });
        assert.deepEqual(await a.lookupToken(0x0b000003), { outcome: 'found', entry: other });
        assert.deepEqual(await a.lookupToken(0x0b000004), { outcome: 'ambiguous' });
        assert.equal(b.counters.collisions, 2);
        assert.equal(b.counters.invalidValues, 1);
        // The script survives a SCRIPT FLUSH (ioredis falls back from EVALSHA to EVAL).
        await raw.call('SCRIPT', 'FLUSH');
        assert.deepEqual(await a.publishBatch([{ token: 0x0b000005, entry: E }], 60_000), ['ok']);
      } finally { await a.close(); await b.close(); raw.disconnect(); }
    });

    test('the main thread\'s store server: 600 publishes in batches, all acknowledged; a collision is reported to the worker; lookups answered together', async () => {
      const a = new TokenStore(opts(r)), b = new TokenStore(opts(r));
      await a.connect(); await b.connect();
      try {
        await b.publishToken(0x0c000007, { ...E, backend: '198.18.12.2:5201' }, 60_000);
        const got: StoreAnswer[] = [];
        const srv = new StoreServer(a, { ttlMs: 60_000, commandTimeoutMs: 200, batchMax: 100, batchesInFlight: 2 }, (m) => got.push(m));
        srv.serve({ type: 'store', publish: Array.from({ length: 600 }, (_, i) => ({ token: 0x0c000000 + i, entry: E })), writes: [], lookups: [{ id: 9, key: tokenKey('mplb:test:', 0x0c000001) }] });
        for (let i = 0; i < 100 && srv.outstanding > 0; i++) await new Promise((res) => setTimeout(res, 20));
        assert.equal(srv.outstanding, 0);
        assert.equal(srv.publishFailed, 0);
        assert.deepEqual(await b.lookupToken(0x0c000257), { outcome: 'found', entry: E });
        assert.deepEqual(got.filter((m) => m.type === 'store-collision'), [{ type: 'store-collision', token: 0x0c000007 }]);
        const ans = got.find((m) => m.type === 'store-answers');
        assert.ok(ans && ans.type === 'store-answers' && ans.answers.length === 1 && ans.answers[0].id === 9);
      } finally { await a.close(); await b.close(); }
    });

    test('pipelined writes that time out (the server stalls) are tried again, not lost', async () => {
      const raw = new Redis(r.url, { password: r.password, lazyConnect: true });
      await raw.connect();
      const a = new TokenStore(opts(r, { commandTimeoutMs: 40 }));
      await a.connect();
      try {
        // Write commands wait 120 ms: longer than the command timeout, shorter than the retries' backoff.
        await raw.call('CLIENT', 'PAUSE', '120', 'WRITE');
        const key = 'mplb:test:f:198.18.2.2:40001>198.19.0.10:5201';
        assert.equal(await a.writeBatch([{ op: 'set', key, value: encodeEntry(E), ttlMs: 60_000 }]), true);
        assert.ok(a.counters.writeErrors >= 1, 'the first try timed out');
        assert.deepEqual(await a.lookupFlow('198.18.2.2:40001>198.19.0.10:5201'), { outcome: 'found', entry: E });
      } finally { await a.close(); raw.disconnect(); }
    });

    test('hostile values are refused and counted, never used', async () => {
      const raw = new Redis(r.url, { password: r.password, lazyConnect: true });
      await raw.connect();
      const a = new TokenStore(opts(r));
      await a.connect();
      try {
        await raw.set(tokenKey('mplb:test:', 0x22222222), 'v1|1.2.3.4:80|' + 'x'.repeat(300) + '|1');
        await raw.set(tokenKey('mplb:test:', 0x33333333), 'DROP TABLE');
        assert.deepEqual(await a.lookupToken(0x22222222), { outcome: 'invalid' });
        assert.deepEqual(await a.lookupToken(0x33333333), { outcome: 'invalid' });
        assert.equal(a.counters.invalidValues, 2);
        assert.equal(await a.publishToken(0x33333333, E, 60_000), 'collision', 'a bad value in the way is not overwritten with a steering entry');
      } finally { await a.close(); raw.disconnect(); }
    });

    test('a wrong or missing password: the store stays down and every call answers at once', async () => {
      const a = new TokenStore(opts(r, { password: undefined }));
      await a.connect();
      try {
        const t0 = performance.now();
        assert.deepEqual(await a.lookupToken(1), { outcome: 'error' });
        assert.equal(await a.publishToken(1, E, 1000), 'error');
        assert.ok(performance.now() - t0 < 100, 'no waiting on a store that is not up');
        assert.notEqual(a.state, 'up');
      } finally { await a.close(); }
    });

    test('store killed: calls fail fast; restarted on the same port: reconnects and announces it', async () => {
      const r2 = await startRedis();
      const a = new TokenStore(opts(r2));
      let ups = 0;
      a.onUp = () => { ups++; };
      await a.connect();
      try {
        assert.equal(a.state, 'up');
        await r2.stop();
        await new Promise((res) => setTimeout(res, 100));
        const t0 = performance.now();
        assert.equal((await a.lookupToken(5)).outcome, 'error');
        assert.ok(performance.now() - t0 < 300, `a down store answered in ${Math.round(performance.now() - t0)} ms`);
        const r3 = await startRedis({ port: r2.port });
        try {
          for (let i = 0; i < 100 && a.state !== 'up'; i++) await new Promise((res) => setTimeout(res, 100));
          assert.equal(a.state, 'up', 'reconnected with backoff');
          assert.equal(ups, 1, 'onUp told the owner to publish its live tokens again');
          assert.ok(a.counters.reconnects >= 1);
        } finally { await r3.stop(); }
      } finally { await a.close(); }
    });
  });
}
