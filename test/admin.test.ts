// Admin API over an in-process engine on 127.0.0.1:0: every endpoint, refused and malformed requests, drain keeping
// joins, reload keeping flows, drain marks and health verdicts, and the Prometheus output.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Controller, inProcessPort } from '../src/control/controller.js';
import { ADMIN_DEFAULTS, DEVICE_DEFAULTS, HEALTH_DEFAULTS, LOG_DEFAULTS, loadRunConfig, validateRunConfig, type RunConfig } from '../src/control/run-config.js';
import { ENGINE_DEFAULTS } from '../src/engine/config.js';
import { resolveAdminToken, startAdminServer, reloadConfig, type AdminServer } from '../src/control/admin-server.js';
import { HealthChecker, type Scheduler } from '../src/control/health.js';
import { ConfigError } from '../src/engine/config.js';
import type { PacketLoopStats } from '../src/dataplane/packet-loop.js';
import { keyToken } from '../src/wire/tokens.js';
import { ACK, SYN, capSyn, capSynAck, joinSyn, tcp, endpoints } from './helpers/packets.js';
import { controlState, engineBackends, outcome, rng, slowPort, type TestPort } from './helpers/ports.js';

const VIP = '198.18.100.1:80';
const B1 = '198.18.10.2:80', B2 = '198.18.11.2:80';
const TOKEN = 'test-admin-token-0123456789';
const doc = () => ({ vips: [{ address: VIP, backends: [{ address: '198.18.10.2' }, { address: '198.18.11.2', weight: 3 }] }], tables: { maxFlows: 1024, maxConnections: 1024 } });

/** A scheduler that never fires on its own: these tests step health rounds by hand. */
const idle: Scheduler = { now: () => 0, setTimeout: () => 0, clearTimeout: () => undefined };

interface Env {
  ctl: Controller;
  p: ReturnType<typeof inProcessPort>['local'];
  admin: AdminServer;
  health: HealthChecker;
  probeOk: Map<string, boolean>;
  next: { cfg?: RunConfig };
  port: ReturnType<typeof inProcessPort> | TestPort;
}

/** `slow`: the port's reload takes 1-5 ms like the balancer's, so concurrent requests overlap in it. */
async function setup(opts: { token?: string; authReads?: boolean; cfg?: RunConfig; slow?: boolean } = {}): Promise<Env> {
  const cfg = opts.cfg ?? validateRunConfig(doc());
  const port = opts.slow ? slowPort(cfg) : inProcessPort(cfg);
  const ctl = new Controller(port, cfg);
  const probeOk = new Map<string, boolean>();
  const health = new HealthChecker({ controller: ctl, scheduler: idle, probe: async (t) => ({ ok: probeOk.get(t.backend) ?? true, error: 'refused' }) });
  const next: Env['next'] = {};
  const admin = await startAdminServer({
    controller: ctl, port: 0, token: 'token' in opts ? opts.token : TOKEN, authReads: opts.authReads, health, processMetrics: false,
    loopStats: () => ({ packetsIn: 10, packetsOut: 9, dropped: 1, readErrors: 0, writeErrors: 0, processErrors: 0, bytesIn: 1000, bytesOut: 900, batches: 3, ticks: 5, maxLoopLagMs: 12.5, maxBatch: 4, lastErrno: 0, busyMs: 2, maxControlMs: 1.5 }) as unknown as PacketLoopStats,
    reload: async () => { await reloadConfig(ctl, next.cfg ?? validateRunConfig(doc())); },
  });
  return { ctl, p: port.local, admin, health, probeOk, next, port };
}

interface Res { status: number; headers: Headers; body: any; text: string }
async function call(env: Env, method: string, path: string, opts: { token?: string | null; body?: unknown; raw?: string } = {}): Promise<Res> {
  const headers: Record<string, string> = {};
  const tok = opts.token === undefined ? TOKEN : opts.token;
  if (tok !== null) headers.authorization = `Bearer ${tok}`;
  let body: string | undefined;
  if (opts.raw !== undefined) body = opts.raw;
  else if (opts.body !== undefined) { body = JSON.stringify(opts.body); headers['content-type'] = 'application/json'; }
  const r = await fetch(`${env.admin.url}${path}`, { method, headers, body });
  const text = await r.text();
  let parsed: unknown;
  try { parsed = JSON.parse(text); } catch { parsed = undefined; }
  return { status: r.status, headers: r.headers, body: parsed, text };
}
const enc = encodeURIComponent;
const bpath = (b: string, rest = '') => `/api/v1/vips/${enc(VIP)}/backends/${enc(b)}${rest}`;

/** An MPTCP v1 connection from sport: SYN, then the server's SYN/ACK with `key`; returns the backend address. */
function connect(p: Env['p'], sport: number, key: bigint, t = 1): string {
  const syn = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport, dport: 80, flags: SYN, options: [capSyn(1)] });
  p.process(syn, 0, syn.length, t);
  const be = endpoints(syn).dst.split(':')[0];
  const sa = tcp({ src: be, dst: '198.18.1.2', sport: 80, dport: sport, flags: SYN | ACK, options: [capSynAck(1, key)] });
  p.process(sa, 0, sa.length, t + 1);
  return be;
}
const tokenOf = (key: bigint) => keyToken(1, 0, Number(key)).toString(16).padStart(8, '0');

describe('admin API', () => {
  let env: Env;
  before(async () => { env = await setup(); });
  after(async () => { await env.admin.close(); });

  test('GET /api/v1/vips lists VIPs and backends with health and counters', async () => {
    connect(env.p, 1000, 11n);
    await env.health.runRound();
    const r = await call(env, 'GET', '/api/v1/vips', { token: null });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'application/json; charset=utf-8');
    assert.equal(r.body.vips.length, 1);
    const v = r.body.vips[0];
    assert.equal(v.address, VIP);
    assert.equal(v.policy, 'maglev');
    assert.deepEqual(v.backends.map((b: any) => [b.id, b.weight, b.draining, b.healthy]), [[B1, 1, false, true], [B2, 3, false, true]]);
    assert.equal(v.backends[0].health, null, 'health checks are off by default');
    assert.ok(v.totals.packetsIn >= 1 && v.totals.bytesIn > 0, 'the SYN is counted');
    assert.equal(v.totals.packetsIn, v.backends[0].packetsIn + v.backends[1].packetsIn);
    assert.equal(typeof r.body.timeMs, 'number');
  });

  test('GET one VIP, its backends, one backend (addr:port or addr alone); unknown ones 404, malformed 400', async () => {
    assert.equal((await call(env, 'GET', `/api/v1/vips/${enc(VIP)}`)).body.address, VIP);
    const bs = await call(env, 'GET', `/api/v1/vips/${enc(VIP)}/backends`);
    assert.deepEqual(bs.body.backends.map((b: any) => b.id), [B1, B2]);
    assert.equal((await call(env, 'GET', bpath(B2))).body.weight, 3);
    assert.equal((await call(env, 'GET', bpath('198.18.11.2'))).body.id, B2);
    const nv = await call(env, 'GET', `/api/v1/vips/${enc('198.18.100.9:80')}`);
    assert.equal(nv.status, 404);
    assert.match(nv.body.error, /no VIP/);
    assert.equal((await call(env, 'GET', bpath('198.18.99.2:80'))).status, 404);
    const bad = await call(env, 'GET', `/api/v1/vips/not-a-vip`);
    assert.equal(bad.status, 400);
    assert.match(bad.body.error, /not a VIP/);
    assert.equal((await call(env, 'GET', bpath('nonsense'))).status, 400);
  });

  test('every change without the token, or with a wrong one, gets 401 and changes nothing', async () => {
    const before = JSON.stringify(env.ctl.config);
    const changes: Array<[string, string, unknown?]> = [
      ['POST', '/api/v1/vips', { address: '198.18.100.2:80', backends: [] }],
      ['DELETE', `/api/v1/vips/${enc(VIP)}`],
      ['POST', `/api/v1/vips/${enc(VIP)}/backends`, { address: '198.18.12.2' }],
      ['DELETE', bpath(B1)],
      ['POST', bpath(B1, '/drain')],
      ['POST', bpath(B1, '/undrain')],
      ['PUT', bpath(B1, '/weight'), { weight: 9 }],
      ['PUT', '/api/v1/timeouts', { establishedMs: 1000 }],
      ['POST', '/api/v1/reload'],
      ['GET', '/api/v1/auth'],
    ];
    for (const [m, path, body] of changes) {
      for (const token of [null, 'wrong-token-wrong-token', `${TOKEN}x`, '']) {
        const r = await call(env, m, path, { token, body });
        assert.equal(r.status, 401, `${m} ${path} with token ${JSON.stringify(token)}: ${r.text}`);
        assert.equal(r.headers.get('www-authenticate'), 'Bearer realm="mplb"');
        assert.match(r.body.error, /bearer token/);
      }
    }
    // A token in another scheme or in the query string does not count either.
    const basic = await fetch(`${env.admin.url}${bpath(B1, '/drain')}?token=${TOKEN}`, { method: 'POST', headers: { authorization: `Basic ${TOKEN}` } });
    assert.equal(basic.status, 401);
    assert.equal(JSON.stringify(env.ctl.config), before, 'nothing changed');
    assert.equal((await call(env, 'GET', '/api/v1/auth')).status, 200, 'the right token is accepted');
  });

  test('malformed JSON and bad fields get 400 with a clear message; conflicts 409; huge bodies 413', async () => {
    const before = JSON.stringify(env.ctl.config);
    const cases: Array<[string, string, { raw?: string; body?: unknown }, RegExp]> = [
      ['PUT', bpath(B1, '/weight'), { raw: '{"weight": 2' }, /malformed JSON/],
      ['PUT', bpath(B1, '/weight'), { raw: '' }, /expected a JSON object/],
      ['PUT', bpath(B1, '/weight'), { body: [1] }, /expected a JSON object/],
      ['PUT', bpath(B1, '/weight'), { body: { weight: -1 } }, /weight: must be an integer 0-65535/],
      ['PUT', bpath(B1, '/weight'), { body: { weight: 1.5 } }, /weight: must be an integer/],
      ['PUT', bpath(B1, '/weight'), { body: { weight: '2' } }, /weight: must be an integer/],
      ['PUT', bpath(B1, '/weight'), { body: { weight: 2, extra: 1 } }, /extra: unknown field/],
      ['POST', '/api/v1/vips', { body: { backends: [] } }, /address: required/],
      ['POST', '/api/v1/vips', { body: { address: '198.18.100.2', backends: [] } }, /not a VIP address/],
      ['POST', '/api/v1/vips', { body: { address: '198.18.100.2:80', backends: {} } }, /backends: must be a list/],
      ['POST', '/api/v1/vips', { body: { address: '198.18.100.2:80', backends: [], colour: 'red' } }, /colour: unknown field/],
      ['POST', `/api/v1/vips/${enc(VIP)}/backends`, { body: { address: 'backend-1' } }, /not an IP address/],
      ['POST', `/api/v1/vips/${enc(VIP)}/backends`, { body: { address: '2001:db8::1' } }, /IPv6 backend/],
      ['POST', `/api/v1/vips/${enc(VIP)}/backends`, { body: { address: '198.18.12.2', weight: 70000 } }, /weight/],
      ['POST', `/api/v1/vips/${enc(VIP)}/backends`, { raw: 'not json' }, /malformed JSON/],
      ['PUT', '/api/v1/timeouts', { body: { establishedMs: 0 } }, /establishedMs/],
      ['PUT', '/api/v1/timeouts', { body: { idleMs: 5 } }, /idleMs: unknown field/],
    ];
    for (const [m, path, o, re] of cases) {
      const r = await call(env, m, path, o);
      assert.equal(r.status, 400, `${m} ${path} ${o.raw ?? JSON.stringify(o.body)}: ${r.text}`);
      assert.match(r.body.error, re);
    }
    const dup = await call(env, 'POST', '/api/v1/vips', { body: { address: VIP, backends: [] } });
    assert.equal(dup.status, 409);
    const dupBe = await call(env, 'POST', `/api/v1/vips/${enc(VIP)}/backends`, { body: { address: '198.18.10.2', port: 80 } });
    assert.deepEqual([dupBe.status, dupBe.body.error], [409, `backend ${B1} exists in VIP ${VIP}`]);
    const big = await call(env, 'POST', '/api/v1/vips', { raw: `{"address":"${'x'.repeat(70_000)}"}` });
    assert.equal(big.status, 413);
    assert.equal(JSON.stringify(env.ctl.config), before, 'nothing changed');
    const q = await call(env, 'GET', '/api/v1/connections?limit=abc');
    assert.equal(q.status, 400);
    assert.match(q.body.error, /limit must be/);
    assert.equal((await call(env, 'GET', '/api/v1/connections?limit=0')).status, 400);
    assert.equal((await call(env, 'GET', '/api/v1/connections?limit=1001')).status, 400);
    assert.equal((await call(env, 'GET', '/api/v1/connections/xyz')).status, 400);
  });

  test('unknown routes get 404, wrong methods 405 with Allow', async () => {
    for (const path of ['/api/v1/nothing', '/api/v2/vips', '/favicon.ico', `/api/v1/vips/${enc(VIP)}/backends/${enc(B1)}/explode`]) {
      const r = await call(env, 'GET', path);
      assert.equal(r.status, 404, path);
      assert.match(r.body.error, /no route/);
    }
    const cases: Array<[string, string, string]> = [
      ['DELETE', '/api/v1/stats', 'GET'],
      ['GET', bpath(B1, '/drain'), 'POST'],
      ['POST', bpath(B1, '/weight'), 'PUT'],
      ['PATCH', `/api/v1/vips/${enc(VIP)}`, 'GET, DELETE'],
      ['POST', '/metrics', 'GET'],
      ['PUT', '/', 'GET'],
      ['DELETE', '/api/v1/connections', 'GET'],
    ];
    for (const [m, path, allow] of cases) {
      const r = await call(env, m, path, { token: null });
      assert.equal(r.status, 405, `${m} ${path}`);
      assert.equal(r.headers.get('allow'), allow);
    }
  });

  test('drain through the API: weight 0, new connections avoid it, joins of its connections still reach it; undrain restores', async () => {
    let key = 100n, be = '';
    for (; key < 200n; key++) { be = connect(env.p, 2000 + Number(key), key); if (`${be}:80` === B2) break; }
    assert.equal(`${be}:80`, B2);
    const d = await call(env, 'POST', bpath(B2, '/drain'));
    assert.equal(d.status, 200);
    assert.deepEqual([d.body.weight, d.body.draining, d.body.configuredWeight], [0, true, 3]);
    const v = await call(env, 'GET', bpath(B2));
    assert.deepEqual([v.body.weight, v.body.draining], [0, true]);
    for (let i = 0; i < 20; i++) assert.equal(`${connect(env.p, 4000 + i, 5000n + BigInt(i))}:80`, B1, 'no new connection on the drained backend');
    const join = tcp({ src: '198.18.2.2', dst: '198.18.100.1', sport: 999, dport: 80, flags: SYN, options: [joinSyn(keyToken(1, 0, Number(key)))] });
    env.p.process(join, 0, join.length, 10);
    assert.equal(endpoints(join).dst, B2, 'the join follows its connection to the draining backend');
    const c = await call(env, 'GET', `/api/v1/connections/${tokenOf(key)}`);
    assert.equal(c.body.backend, B2);
    assert.equal(c.body.subflows.length, 2, 'initial subflow + join');
    // Draining twice keeps the remembered weight.
    await call(env, 'POST', bpath(B2, '/drain'));
    const u = await call(env, 'POST', bpath(B2, '/undrain'));
    assert.deepEqual([u.status, u.body.weight, u.body.draining], [200, 3, false]);
  });

  test('PUT weight changes the share of new connections', async () => {
    const r = await call(env, 'PUT', bpath(B1, '/weight'), { body: { weight: 0 } });
    assert.deepEqual([r.status, r.body.weight], [200, 0]);
    for (let i = 0; i < 10; i++) assert.equal(`${connect(env.p, 6000 + i, 7000n + BigInt(i))}:80`, B2);
    assert.equal((await call(env, 'PUT', bpath(B1, '/weight'), { body: { weight: 2 } })).body.weight, 2);
    assert.equal(env.ctl.config.engine.vips[0].backends[0].weight, 2);
  });

  test('connections are paged; keys only with the token; one by token', async () => {
    const all = await call(env, 'GET', '/api/v1/connections?limit=1000');
    const total = all.body.total;
    assert.ok(total >= 5, `have ${total} connections`);
    const p1 = await call(env, 'GET', '/api/v1/connections?offset=0&limit=2', { token: null });
    assert.deepEqual([p1.body.connections.length, p1.body.offset, p1.body.limit, p1.body.nextOffset, p1.body.total], [2, 0, 2, 2, total]);
    const c0 = p1.body.connections[0];
    for (const k of ['token', 'version', 'backend', 'vip', 'subflows']) assert.ok(k in c0, `connection has ${k}`);
    assert.equal(c0.version, 1);
    assert.equal('serverKey' in c0, false, 'keys are not shown without the token');
    const last = await call(env, 'GET', `/api/v1/connections?offset=${total - 1}&limit=2`, { token: null });
    assert.deepEqual([last.body.connections.length, last.body.nextOffset], [1, null]);
    const withKeys = await call(env, 'GET', '/api/v1/connections?limit=1');
    assert.match(withKeys.body.connections[0].serverKey, /^[0-9a-f]{16}$/);
    const one = await call(env, 'GET', `/api/v1/connections/${tokenOf(11n)}`, { token: null });
    assert.equal(one.status, 200);
    assert.equal(one.body.token, tokenOf(11n));
    assert.equal('serverKey' in one.body, false);
    const none = await call(env, 'GET', '/api/v1/connections/abcdef12');
    assert.equal(none.status, 404);
    assert.match(none.body.error, /no connection/);
  });

  test('stats, health, config, auth, healthz and the dashboard page', async () => {
    const s = await call(env, 'GET', '/api/v1/stats', { token: null });
    assert.equal(s.status, 200);
    assert.ok(s.body.engine.counters.conns_created >= 5);
    assert.ok('no_service' in s.body.engine.drops);
    assert.equal(s.body.loop.maxLoopLagMs, 12.5);
    const h = await call(env, 'GET', '/api/v1/health', { token: null });
    assert.equal(h.body.config.enabled, false);
    const c = await call(env, 'GET', '/api/v1/config', { token: null });
    assert.equal(c.body.engine.vips[0].address, VIP);
    assert.equal(c.body.admin.port, 9740);
    assert.equal((await call(env, 'GET', '/healthz', { token: null })).body.ok, true);
    const page = await fetch(`${env.admin.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type')!, /text\/html/);
    assert.match(page.headers.get('content-security-policy')!, /script-src 'sha256-[A-Za-z0-9+/=]+'/);
    assert.match(await page.text(), /<title>mplb dashboard<\/title>/);
  });

  test('PUT timeouts changes them live', async () => {
    const r = await call(env, 'PUT', '/api/v1/timeouts', { body: { establishedMs: 120_000, tokenLingerMs: 30_000 } });
    assert.equal(r.status, 200);
    assert.deepEqual([r.body.timeouts.establishedMs, r.body.timeouts.tokenLingerMs, r.body.timeouts.synMs], [120_000, 30_000, 10_000]);
    assert.equal(env.ctl.config.engine.timeouts.establishedMs, 120_000);
  });

  test('/metrics: Prometheus text with per-backend counters, drops, joins, health and loop lag', async () => {
    const stray = tcp({ src: '198.18.1.2', dst: '198.18.100.77', sport: 1, dport: 80, flags: SYN });
    env.p.process(stray, 0, stray.length, 20);
    const r = await fetch(`${env.admin.url}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type')!, /^text\/plain; version=0\.0\.4/);
    const text = await r.text();
    const val = (re: RegExp) => { const m = re.exec(text); assert.ok(m, `no ${re} in\n${text}`); return Number(m[1]); };
    const vips = (await call(env, 'GET', '/api/v1/vips')).body.vips[0];
    assert.equal(val(/^mplb_backend_bytes_total\{vip="198\.18\.100\.1:80",backend="198\.18\.10\.2:80",direction="in"\} (\S+)$/m), vips.backends[0].bytesIn);
    assert.equal(val(/^mplb_vip_packets_total\{vip="198\.18\.100\.1:80",direction="in"\} (\S+)$/m), vips.totals.packetsIn);
    assert.ok(val(/^mplb_drops_total\{reason="no_service"\} (\S+)$/m) >= 1);
    assert.ok(val(/^mplb_joins_steered_by_token_total (\S+)$/m) >= 1);
    val(/^mplb_joins_unknown_token_total\{answer="hash"\} (\S+)$/m);
    val(/^mplb_token_collisions_total\{outcome="stripped"\} (\S+)$/m);
    val(/^mplb_flows_evicted_total\{kind="embryonic"\} (\S+)$/m);
    assert.ok(val(/^mplb_flows (\S+)$/m) >= 5);
    assert.ok(val(/^mplb_connections (\S+)$/m) >= 5);
    assert.equal(val(/^mplb_backend_healthy\{vip="198\.18\.100\.1:80",backend="198\.18\.11\.2:80"\} (\S+)$/m), 1);
    assert.equal(val(/^mplb_packet_loop_lag_max_seconds (\S+)$/m), 0.0125);
    assert.ok(val(/^mplb_engine_events_total\{event="mp_capable_syn"\} (\S+)$/m) >= 5);
    assert.match(text, /# TYPE mplb_backend_bytes_total counter/);
  });

  test('add and remove VIPs and backends live; flows keep their backend', async () => {
    const be = connect(env.p, 9000, 9999n);
    const a = await call(env, 'POST', `/api/v1/vips/${enc(VIP)}/backends`, { body: { address: '198.18.12.2', weight: 2 } });
    assert.deepEqual([a.status, a.body.backend], [201, '198.18.12.2:80']);
    const rm = await call(env, 'DELETE', bpath(`${be}:80`));
    assert.deepEqual([rm.status, rm.body.removed], [200, `${be}:80`]);
    const more = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 9000, dport: 80, flags: ACK });
    env.p.process(more, 0, more.length, 30);
    assert.equal(endpoints(more).dst, `${be}:80`, 'its established flow continues to the removed backend');
    const nv = await call(env, 'POST', '/api/v1/vips', { body: { address: '198.18.100.2:443', backends: [{ address: '198.18.12.2' }] } });
    assert.equal(nv.status, 201);
    assert.equal(nv.body.vip.backends[0].id, '198.18.12.2:443');
    assert.equal((await call(env, 'GET', '/api/v1/vips')).body.vips.length, 2);
    const dv = await call(env, 'DELETE', `/api/v1/vips/${enc('198.18.100.2:443')}`);
    assert.deepEqual([dv.status, dv.body.removed], [200, '198.18.100.2:443']);
    assert.equal((await call(env, 'DELETE', `/api/v1/vips/${enc('198.18.100.2:443')}`)).status, 404);
    assert.equal((await call(env, 'DELETE', bpath('198.18.99.9:80'))).status, 404);
  });
});

test('reload (POST /api/v1/reload, as SIGHUP) keeps flows, tokens, drain marks and health verdicts', async () => {
  const env = await setup({ cfg: validateRunConfig({ ...doc(), health: { enabled: true } }) });
  try {
    let key = 1n, be = '';
    for (; key < 100n; key++) { be = connect(env.p, 1000 + Number(key), key); if (`${be}:80` === B1) break; }
    await call(env, 'POST', bpath(B2, '/drain'));
    // Health takes B1 out (fall 3).
    env.probeOk.set(B1, false);
    for (let i = 0; i < 3; i++) await env.health.runRound();
    assert.equal((await call(env, 'GET', bpath(B1))).body.healthy, false);
    // The file now adds a backend and changes a timeout; B2 still has weight 3 in it.
    const d = doc();
    d.vips[0].backends.push({ address: '198.18.12.2', weight: 1 });
    env.next.cfg = validateRunConfig({ ...d, timeouts: { establishedMs: 200_000 }, health: { enabled: true } });
    const r = await call(env, 'POST', '/api/v1/reload');
    assert.equal(r.status, 200, r.text);
    assert.equal(env.ctl.config.engine.timeouts.establishedMs, 200_000);
    const bs = (await call(env, 'GET', `/api/v1/vips/${enc(VIP)}/backends`)).body.backends;
    assert.deepEqual(bs.map((b: any) => [b.id, b.weight, b.draining, b.healthy]), [[B1, 1, false, false], [B2, 0, true, true], ['198.18.12.2:80', 1, false, true]]);
    // The established flow and the token survive.
    const more = tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport: 1000 + Number(key), dport: 80, flags: ACK });
    env.p.process(more, 0, more.length, 50);
    assert.equal(endpoints(more).dst, B1, 'established flow kept its backend');
    const join = tcp({ src: '198.18.2.2', dst: '198.18.100.1', sport: 777, dport: 80, flags: SYN, options: [joinSyn(keyToken(1, 0, Number(key)))] });
    env.p.process(join, 0, join.length, 51);
    assert.equal(endpoints(join).dst, B1, 'a join still reaches the (unhealthy) backend of its connection');
    // New connections: neither the unhealthy nor the drained backend.
    for (let i = 0; i < 15; i++) assert.equal(connect(env.p, 20000 + i, 30000n + BigInt(i), 60), '198.18.12.2');
    // Settings only a restart can change keep their running values and are reported.
    const running = { device: env.ctl.config.device, tables: env.ctl.config.engine.tables, hashSeed: env.ctl.config.engine.hashSeed, port: env.ctl.config.admin.port };
    const changed = validateRunConfig({ ...d, device: { name: 'mplb9' }, tables: { maxFlows: 2048 }, hashSeed: 7, admin: { port: 9999 }, log: { level: 'debug' } });
    const rr = await reloadConfig(env.ctl, changed);
    assert.deepEqual(rr.restartNeeded, ['device', 'tables', 'hashSeed', 'admin.port']);
    assert.deepEqual({ device: env.ctl.config.device, tables: env.ctl.config.engine.tables, hashSeed: env.ctl.config.engine.hashSeed, port: env.ctl.config.admin.port }, running);
    assert.equal(env.ctl.config.log.level, 'debug', 'the rest applies');
    assert.deepEqual(rr.keptDrained, [`${VIP} ${B2}`]);
    // A reload that fails validation changes nothing.
    env.next.cfg = { ...env.ctl.config, engine: { ...env.ctl.config.engine, vips: [{ address: VIP, backends: [{ address: '2001:db8::1', port: 80 }] }] } };
    const before = JSON.stringify(env.ctl.config);
    assert.equal((await call(env, 'POST', '/api/v1/reload')).status, 400);
    assert.equal(JSON.stringify(env.ctl.config), before);
  } finally {
    await env.admin.close();
  }
});

test('without a configured token changes get 403; with authReads reads need the token', async () => {
  const open = await setup({ token: undefined });
  try {
    const r = await call(open, 'POST', bpath(B1, '/drain'));
    assert.equal(r.status, 403);
    assert.match(r.body.error, /no admin token is configured/);
    assert.equal((await call(open, 'GET', '/api/v1/vips', { token: null })).status, 200);
  } finally { await open.admin.close(); }
  const closed = await setup({ authReads: true });
  try {
    for (const path of ['/api/v1/vips', '/api/v1/connections', '/api/v1/stats', '/metrics']) {
      assert.equal((await call(closed, 'GET', path, { token: null })).status, 401, path);
      assert.equal((await call(closed, 'GET', path)).status, 200, path);
    }
    assert.equal((await call(closed, 'GET', '/', { token: null })).status, 200, 'the page itself loads (the token is pasted there)');
    assert.equal((await call(closed, 'GET', '/healthz', { token: null })).status, 200);
  } finally { await closed.admin.close(); }
});

test('admin config: defaults, validation, and where the token comes from', () => {
  const c = validateRunConfig(doc());
  assert.deepEqual(c.admin, { enabled: true, address: '127.0.0.1', port: 9740, authReads: false, allowedHosts: [] });
  assert.deepEqual(c.log, { level: 'info' });
  const refuses = (d: unknown, path: string, re: RegExp) => assert.throws(() => validateRunConfig(d), (e: unknown) => e instanceof ConfigError && e.path === path && re.test(e.reason));
  refuses({ ...doc(), admin: { port: 70000 } }, 'admin.port', /0-65535/);
  refuses({ ...doc(), admin: { address: 'localhost' } }, 'admin.address', /IP address/);
  refuses({ ...doc(), admin: { token: 'short' } }, 'admin.token', /at least 16/);
  refuses({ ...doc(), admin: { tokn: 'x' } }, 'admin.tokn', /unknown field/);
  refuses({ ...doc(), admin: { authReads: 'yes' } }, 'admin.authReads', /true or false/);
  refuses({ ...doc(), admin: { allowedHosts: 'lb1:9740' } }, 'admin.allowedHosts', /list of Host header values/);
  refuses({ ...doc(), admin: { allowedHosts: ['lb1.example.com:9740', 'http://lb1/'] } }, 'admin.allowedHosts[1]', /Host header value/);
  assert.deepEqual(validateRunConfig({ ...doc(), admin: { allowedHosts: ['lb1.example.com:9740', '[2001:db8::5]:9740'] } }).admin.allowedHosts, ['lb1.example.com:9740', '[2001:db8::5]:9740']);
  refuses({ ...doc(), log: { level: 'loud' } }, 'log.level', /one of fatal, error, warn, info, debug, trace, silent/);
  const dir = mkdtempSync(join(tmpdir(), 'mplb-admin-'));
  try {
    const f = join(dir, 'token');
    writeFileSync(f, 'from-a-file-0123456789\n');
    const withFile = validateRunConfig({ ...doc(), admin: { tokenFile: f } }).admin;
    assert.equal(resolveAdminToken(withFile, {}), 'from-a-file-0123456789');
    assert.equal(resolveAdminToken({ ...withFile, token: 'from-the-config-0123' }, {}), 'from-the-config-0123');
    assert.equal(resolveAdminToken({ ...withFile, token: 'from-the-config-0123' }, { MPLB_ADMIN_TOKEN: 'from-the-environment-01' }), 'from-the-environment-01');
    assert.equal(resolveAdminToken(c.admin, {}), undefined);
    assert.throws(() => resolveAdminToken(c.admin, { MPLB_ADMIN_TOKEN: 'short' }), /at least 16/);
    assert.throws(() => resolveAdminToken({ ...c.admin, tokenFile: join(dir, 'missing') }, {}), /cannot read/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('examples/mplb.yaml is a valid config; the README documents every config field; the unit file runs mplb', () => {
  const root = fileURLToPath(new URL('../../', import.meta.url));
  const ex = loadRunConfig(join(root, 'examples/mplb.yaml'));
  assert.equal(ex.health.enabled, true);
  assert.equal(ex.admin.tokenFile, '/run/credentials/mplb.service/admin-token');
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const paths = (o: object, prefix: string): string[] => Object.entries(o).flatMap(([k, v]) =>
    typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length > 0 ? paths(v, `${prefix}${k}.`) : [`${prefix}${k}`]);
  const fields = [
    ...paths(DEVICE_DEFAULTS, 'device.'), ...paths(ENGINE_DEFAULTS, ''), ...paths(ADMIN_DEFAULTS, 'admin.'), 'admin.token', 'admin.tokenFile',
    ...paths(HEALTH_DEFAULTS, 'health.'), 'health.port', ...paths(LOG_DEFAULTS, 'log.'),
    'vips[]', 'vips[].address', 'vips[].policy', 'vips[].backends[]', 'vips[].backends[].address', 'vips[].backends[].port', 'vips[].backends[].weight',
  ];
  const missing = fields.filter((f) => !readme.includes(`| \`${f}\` |`));
  assert.deepEqual(missing, [], 'README "Configuration" rows');
  const unit = readFileSync(join(root, 'examples/mplb.service'), 'utf8');
  assert.match(unit, /^ExecStart=\S*mplb run --config \/etc\/mplb\/mplb\.yaml$/m);
  assert.match(unit, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
  assert.match(unit, /^LoadCredential=admin-token:/m);
});

// ---- concurrent requests: applied one at a time in arrival order; a failed change changes nothing ----

const addr = (i: number) => `198.18.${20 + (i >> 8)}.${i & 255}`;
const many = (n: number) => validateRunConfig({ vips: [{ address: VIP, backends: Array.from({ length: n }, (_, i) => ({ address: addr(i + 1), weight: (i % 7) + 1 })) }], tables: { maxFlows: 1024, maxConnections: 1024, maglevSize: 1021 } });
const fewer = () => validateRunConfig({ ...doc(), tables: { maxFlows: 1024, maxConnections: 1024, maglevSize: 1021 } });

test('100 concurrent POST backends: all 201 with their own id, all present in the API and the engine', async () => {
  const env = await setup({ slow: true, cfg: fewer() });
  try {
    const rs = await Promise.all(Array.from({ length: 100 }, (_, i) => call(env, 'POST', `/api/v1/vips/${enc(VIP)}/backends`, { body: { address: addr(i + 1), weight: 2 } })));
    assert.deepEqual(rs.map((r) => r.status), Array(100).fill(201));
    assert.deepEqual(rs.map((r) => r.body.backend), Array.from({ length: 100 }, (_, i) => `${addr(i + 1)}:80`), 'each answer names the backend it added');
    const listed = (await call(env, 'GET', `/api/v1/vips/${enc(VIP)}/backends`)).body.backends;
    assert.equal(listed.length, 102, 'every added backend is listed');
    const eng = await engineBackends(env.port);
    assert.equal(eng.length, 102, 'every added backend is in the engine');
    for (let i = 1; i <= 100; i++) assert.equal(eng.find((b) => b.id === `${addr(i)}:80`)?.weight, 2, `${addr(i)} in the engine`);
  } finally { await env.admin.close(); }
});

test('100 concurrent drains, then 100 concurrent undrains, then 100 concurrent DELETEs', async () => {
  const env = await setup({ slow: true, cfg: many(100) });
  try {
    const ids = Array.from({ length: 100 }, (_, i) => `${addr(i + 1)}:80`);
    const drains = await Promise.all(ids.map((id) => call(env, 'POST', bpath(id, '/drain'))));
    assert.deepEqual(drains.map((r) => [r.status, r.body.draining]), Array(100).fill([200, true]));
    let eng = await engineBackends(env.port);
    assert.deepEqual(eng.filter((b) => b.weight !== 0).map((b) => b.id), [], 'every drained backend has weight 0 in the engine');
    const listed = (await call(env, 'GET', `/api/v1/vips/${enc(VIP)}/backends`)).body.backends;
    assert.deepEqual(listed.map((b: any) => [b.weight, b.draining, b.configuredWeight]), ids.map((_, i) => [0, true, (i % 7) + 1]));
    const undrains = await Promise.all(ids.map((id) => call(env, 'POST', bpath(id, '/undrain'))));
    assert.deepEqual(undrains.map((r) => r.status), Array(100).fill(200));
    eng = await engineBackends(env.port);
    assert.deepEqual(eng.map((b) => b.weight), ids.map((_, i) => (i % 7) + 1), 'each configured weight is back in the engine');
    const dels = await Promise.all(ids.map((id) => call(env, 'DELETE', bpath(id))));
    assert.deepEqual(dels.map((r) => r.status), Array(100).fill(200));
    assert.deepEqual((await call(env, 'GET', `/api/v1/vips/${enc(VIP)}/backends`)).body.backends, [], 'all gone from the API');
    assert.deepEqual(await engineBackends(env.port), [], 'all gone from the engine');
  } finally { await env.admin.close(); }
});

/** Records the Controller changes in the order they are called (= the order they are queued in), with outcomes. */
function recordChanges(ctl: Controller) {
  const log: Array<{ name: string; args: unknown[]; result?: Promise<unknown> }> = [];
  for (const name of ['addBackend', 'removeBackend', 'drain', 'undrain', 'setWeight', 'addVip', 'removeVip', 'setTimeouts', 'reload', 'setHealthy'] as const) {
    const self = ctl as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
    const orig = self[name];
    if (typeof orig !== 'function') continue;
    self[name] = (...args: unknown[]) => {
      const entry: (typeof log)[number] = { name, args };
      log.push(entry);
      entry.result = orig.apply(ctl, args);
      return entry.result;
    };
  }
  return log;
}

test('mixed concurrent requests end in the state the same requests give one by one in arrival order', async () => {
  for (const seed of [11, 12, 13]) {
    const env = await setup({ slow: true, cfg: many(4) });
    try {
      const log = recordChanges(env.ctl);
      const r = rng(seed);
      const pick = () => `${addr(1 + Math.floor(r() * 10))}${r() < 0.8 ? ':80' : ''}`;
      const reqs = Array.from({ length: 120 }, (): [string, string, unknown?] => {
        const x = r();
        if (x < 0.25) return ['POST', `/api/v1/vips/${enc(VIP)}/backends`, { address: addr(1 + Math.floor(r() * 10)), weight: Math.floor(r() * 5) }];
        if (x < 0.4) return ['DELETE', bpath(pick())];
        if (x < 0.6) return ['POST', bpath(pick(), '/drain')];
        if (x < 0.75) return ['POST', bpath(pick(), '/undrain')];
        if (x < 0.95) return ['PUT', bpath(pick(), '/weight'), { weight: Math.floor(r() * 5) }];
        return ['PUT', '/api/v1/timeouts', { synMs: 1000 + Math.floor(r() * 9000) }];
      });
      const answers = await Promise.all(reqs.map(([m, path, body]) => call(env, m, path, { body })));
      const odd = answers.filter((a) => ![200, 201, 400, 404, 409].includes(a.status));
      assert.deepEqual(odd.map((a) => a.text), [], 'only refusals a serial run gives too');
      const concurrent = await Promise.allSettled(log.map((e) => e.result!));
      // The same Controller calls, one by one, on a fresh Controller.
      const cfg = many(4);
      const port = slowPort(cfg);
      const serialCtl = new Controller(port, cfg);
      const serial: string[] = [];
      for (const e of log) serial.push(outcome((await Promise.allSettled([(serialCtl as any)[e.name](...e.args)]))[0]));
      assert.deepEqual(concurrent.map(outcome), serial, `seed ${seed}: each change answers as in a serial run`);
      assert.deepEqual(await controlState(env.ctl, env.port), await controlState(serialCtl, port), `seed ${seed}: same end state as a serial run`);
    } finally { await env.admin.close(); }
  }
});

test('a change whose reload fails answers the error and changes nothing; the next change works', async () => {
  const env = await setup({ slow: true, cfg: fewer() });
  try {
    const port = env.port as TestPort;
    await call(env, 'POST', bpath(B2, '/drain'));
    const before = await controlState(env.ctl, port);
    for (const [m, path, body] of [['POST', `/api/v1/vips/${enc(VIP)}/backends`, { address: '198.18.12.2' }], ['DELETE', bpath(B1)], ['POST', bpath(B1, '/drain')], ['POST', bpath(B2, '/undrain')], ['PUT', bpath(B1, '/weight'), { weight: 4 }], ['PUT', '/api/v1/timeouts', { synMs: 9000 }]] as Array<[string, string, unknown?]>) {
      port.failNextReload(new Error('routes: ip route replace failed'));
      const r = await call(env, m, path, { body });
      assert.deepEqual([r.status, r.body.error], [500, 'routes: ip route replace failed'], `${m} ${path}`);
      assert.deepEqual(await controlState(env.ctl, port), before, `${m} ${path}: nothing changed`);
    }
    const u = await call(env, 'POST', bpath(B2, '/undrain'));
    assert.deepEqual([u.status, u.body.weight, u.body.draining], [200, 3, false]);
  } finally { await env.admin.close(); }
});

test('PUT /api/v1/timeouts keeps a drained backend drained, and undrain restores its weight', async () => {
  const env = await setup({ slow: true, cfg: fewer() });
  try {
    assert.equal((await call(env, 'PUT', bpath(B2, '/weight'), { body: { weight: 7 } })).body.weight, 7);
    await call(env, 'POST', bpath(B2, '/drain'));
    const t = await call(env, 'PUT', '/api/v1/timeouts', { body: { synMs: 9000 } });
    assert.equal(t.status, 200);
    const b = (await call(env, 'GET', bpath(B2))).body;
    assert.deepEqual([b.weight, b.draining, b.configuredWeight], [0, true, 7], 'still drained after the timeouts change');
    const u = await call(env, 'POST', bpath(B2, '/undrain'));
    assert.deepEqual([u.status, u.body.weight, u.body.draining], [200, 7, false]);
    assert.equal((await engineBackends(env.port)).find((x) => x.id === B2)!.weight, 7);
  } finally { await env.admin.close(); }
});

test('IPv6 backends: any spelling finds one backend (drain, weight, delete); a second spelling of it is refused', async () => {
  const cfg = validateRunConfig({ vips: [{ address: '[2001:db8::1]:443', backends: [{ address: '2001:DB8:0:0::2' }, { address: '2001:db8::3' }] }], tables: { maxFlows: 1024, maxConnections: 1024 } });
  const env = await setup({ cfg });
  try {
    const v = enc('[2001:db8::1]:443');
    const b = (spelling: string, rest = '') => `/api/v1/vips/${v}/backends/${enc(spelling)}${rest}`;
    const d = await call(env, 'POST', b('[2001:db8::2]:443', '/drain'));
    assert.deepEqual([d.status, d.body.id, d.body.draining], [200, '[2001:db8::2]:443', true], d.text);
    assert.equal((await call(env, 'PUT', b('2001:0db8::0:2', '/weight'), { body: { weight: 4 } })).body.weight, 4);
    // Adding it again in another spelling, alone or twice in one new VIP.
    const dup = await call(env, 'POST', `/api/v1/vips/${v}/backends`, { body: { address: '2001:db8:0::2' } });
    assert.equal(dup.status, 409, dup.text);
    const twice = await call(env, 'POST', '/api/v1/vips', { body: { address: '[2001:db8::9]:443', backends: [{ address: '2001:db8::2' }, { address: '2001:DB8::2' }] } });
    assert.equal(twice.status, 400, twice.text);
    assert.match(twice.body.error, /duplicate backend \[2001:db8::2\]:443/);
    const rm = await call(env, 'DELETE', b('[2001:DB8::0002]:443'));
    assert.deepEqual([rm.status, rm.body.removed], [200, '[2001:db8::2]:443'], rm.text);
    assert.deepEqual(env.ctl.config.engine.vips.map((x) => x.backends.map((y) => y.address)), [['2001:db8::3']]);
  } finally { await env.admin.close(); }
});
