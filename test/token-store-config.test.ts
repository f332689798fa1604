// The `tokenStore` config section: refused with the field and the reason; defaults; the password from the
// environment or a file, never required in the file itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveStorePassword, validateRunConfig } from '../src/control/run-config.js';
import { TOKEN_STORE_DEFAULTS } from '../src/cluster/token-store.js';

const vips = [{ address: '198.18.100.1:80', backends: [{ address: '198.18.10.2' }] }];
const cfg = (tokenStore: unknown) => validateRunConfig({ vips, tokenStore });

test('tokenStore: absent means each balancer on its own; present needs a redis:// url; defaults filled', () => {
  assert.equal(validateRunConfig({ vips }).tokenStore, undefined);
  const ts = cfg({ url: 'redis://198.18.9.254:6379' }).tokenStore!;
  assert.deepEqual(ts, { url: 'redis://198.18.9.254:6379', ...TOKEN_STORE_DEFAULTS });
  assert.equal(cfg({ url: 'redis://store.example:6380/2', keyPrefix: 'tier-a:', holdMs: 20 }).tokenStore!.holdMs, 20);
});

test('tokenStore: each bad field is refused by name with the reason', () => {
  const cases: Array<[unknown, RegExp]> = [
    [{}, /tokenStore\.url: must be redis:\/\/HOST:PORT/],
    [{ url: 'http://x:1' }, /tokenStore\.url/],
    [{ url: 'redis://a b:1' }, /tokenStore\.url/],
    [{ url: 'redis://x:1', keyPrefix: 'has space' }, /tokenStore\.keyPrefix/],
    [{ url: 'redis://x:1', holdMs: 0 }, /tokenStore\.holdMs: must be an integer 1-2000/],
    [{ url: 'redis://x:1', holdTries: 11 }, /tokenStore\.holdTries/],
    [{ url: 'redis://x:1', holdMaxBytes: 100 }, /tokenStore\.holdMaxBytes/],
    [{ url: 'redis://x:1', password: 'inline' }, /tokenStore\.password: unknown field/],
    [{ url: 'redis://x:1', passwordFile: '' }, /tokenStore\.passwordFile: must be a file path/],
    ['redis://x:1', /tokenStore: must be a mapping/],
  ];
  for (const [v, re] of cases) assert.throws(() => cfg(v), re, JSON.stringify(v));
});

test('the store password: MPLB_TOKEN_STORE_PASSWORD wins, else the first line of passwordFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mplb-ts-'));
  try {
    const f = join(dir, 'pw');
    writeFileSync(f, 's3cret-from-file\nignored\n');
    const ts = cfg({ url: 'redis://x:1', passwordFile: f }).tokenStore!;
    assert.equal(resolveStorePassword(ts, {}), 's3cret-from-file');
    assert.equal(resolveStorePassword(ts, { MPLB_TOKEN_STORE_PASSWORD: 'from-env' }), 'from-env');
    assert.equal(resolveStorePassword(cfg({ url: 'redis://x:1' }).tokenStore!, {}), undefined);
    assert.throws(() => resolveStorePassword(cfg({ url: 'redis://x:1', passwordFile: join(dir, 'missing') }).tokenStore!, {}), /tokenStore\.passwordFile: cannot read/);
    writeFileSync(f, '\n');
    assert.throws(() => resolveStorePassword(ts, {}), /is empty/);
  } finally { rmSync(dir, { recursive: true, force: true }); }
});
