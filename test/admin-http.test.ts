// The admin server's HTTP hardening (issue 9): only Host values that name the server itself are served (DNS
// rebinding), and slow clients are cut off at the configured header and request timeouts.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Controller, inProcessPort } from '../src/control/controller.js';
import { validateRunConfig } from '../src/control/run-config.js';
import { hostAllowed, startAdminServer, type AdminServer } from '../src/control/admin-server.js';

const TOKEN = 'test-admin-token-0123456789';
const VIP = '198.18.100.1:80';
const cfg = () => validateRunConfig({ vips: [{ address: VIP, backends: [{ address: '198.18.10.2' }] }], tables: { maxFlows: 1024, maxConnections: 1024, maglevSize: 1021 } });

async function server(opts: { address?: string } = {}): Promise<{ admin: AdminServer; ctl: Controller }> {
  const c = cfg();
  const ctl = new Controller(inProcessPort(c), c);
  const admin = await startAdminServer({ controller: ctl, address: opts.address ?? '127.0.0.1', port: 0, token: TOKEN, processMetrics: false, reload: async () => undefined });
  return { admin, ctl };
}

/** One request with exactly this Host header (or none), over a raw socket (fetch does not let a page choose Host). */
function withHost(admin: AdminServer, method: string, path: string, host: string | undefined, opts: { token?: boolean; body?: string; http10?: boolean } = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const s = net.connect(admin.port, admin.address);
    let out = '';
    s.on('data', (d) => { out += d.toString(); });
    s.on('error', reject);
    s.on('close', () => {
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(out);
      if (!m) { reject(new Error(`no HTTP answer: ${JSON.stringify(out.slice(0, 200))}`)); return; }
      resolve({ status: Number(m[1]), body: out.slice(out.indexOf('\r\n\r\n') + 4) });
    });
    const body = opts.body ?? '';
    const lines = [`${method} ${path} HTTP/1.${opts.http10 ? 0 : 1}`, ...(host === undefined ? [] : [`Host: ${host}`]), 'Connection: close',
      ...(opts.token ? [`Authorization: Bearer ${TOKEN}`] : []), ...(body ? ['Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`] : [])];
    s.end(`${lines.join('\r\n')}\r\n\r\n${body}`);
  });
}

describe('Host header (DNS rebinding)', () => {
  let env: Awaited<ReturnType<typeof server>>;
  before(async () => { env = await server(); });
  after(async () => { await env.admin.close(); });

  test('the listen address, localhost, 127.0.0.1 and [::1] with the port are served', async () => {
    const p = env.admin.port;
    for (const host of [`127.0.0.1:${p}`, `localhost:${p}`, `LocalHost:${p}`, `[::1]:${p}`]) {
      const r = await withHost(env.admin, 'GET', '/api/v1/vips', host);
      assert.equal(r.status, 200, `Host: ${host}: ${r.body}`);
    }
  });

  test('any other Host gets 421 on every path, reads and changes alike, and changes nothing', async () => {
    const p = env.admin.port;
    const before = JSON.stringify(env.ctl.config);
    const hosts: Array<string | undefined> = [`rebind.example:${p}`, 'rebind.example', `127.0.0.1.rebind.example:${p}`, `localhost.rebind.example:${p}`,
      `127.0.0.1:${p + 1}`, `localhost:${p === 80 ? 81 : 80}`, '127.0.0.1', 'localhost', `10.1.2.3:${p}`, '', `127.0.0.1:${p}@rebind.example`];
    for (const host of hosts) {
      for (const [m, path, token, body] of [['GET', '/api/v1/vips'], ['GET', '/metrics'], ['GET', '/'], ['GET', '/healthz'], ['GET', '/api/v1/config'],
        ['POST', `/api/v1/vips/${encodeURIComponent(VIP)}/backends`, true, '{"address":"198.18.12.2"}']] as Array<[string, string, boolean?, string?]>) {
        const r = await withHost(env.admin, m, path, host, { token, body });
        assert.equal(r.status, 421, `${m} ${path} with Host ${JSON.stringify(host)}: ${r.status} ${r.body.slice(0, 100)}`);
        assert.match(r.body, /Host .* is not this admin server/);
      }
    }
    // HTTP/1.0 without any Host.
    assert.equal((await withHost(env.admin, 'GET', '/api/v1/vips', undefined, { http10: true })).status, 421);
    assert.equal(JSON.stringify(env.ctl.config), before, 'nothing changed');
  });
});

test('an IPv6 loopback listen address: its own address in any spelling and localhost', async (t) => {
  let env: Awaited<ReturnType<typeof server>>;
  try { env = await server({ address: '::1' }); } catch (e) {
    if (/EADDRNOTAVAIL|EAFNOSUPPORT/.test(String((e as Error).message))) {
      // CI machines have IPv6 loopback: there a missing one is a failure, not a skip.
      if (process.env.CI === 'true') assert.fail(`no IPv6 loopback on this CI machine: ${(e as Error).message}`);
      t.skip('no IPv6 loopback here');
      return;
    }
    throw e;
  }
  try {
    const p = env.admin.port;
    assert.equal((await withHost(env.admin, 'GET', '/healthz', `[::1]:${p}`)).status, 200);
    assert.equal((await withHost(env.admin, 'GET', '/healthz', `localhost:${p}`)).status, 200);
    assert.equal((await withHost(env.admin, 'GET', '/healthz', `[0:0::1]:${p}`)).status, 200, 'any spelling of the address');
    assert.equal((await withHost(env.admin, 'GET', '/healthz', `rebind.example:${p}`)).status, 421);
  } finally { await env.admin.close(); }
});

test('the Host rule: non-loopback and wildcard listen addresses, the default port, admin.allowedHosts', () => {
  const lan = { address: '10.0.0.5', port: 9740 };
  assert.equal(hostAllowed('10.0.0.5:9740', lan), true);
  assert.equal(hostAllowed('10.0.0.5', lan), false, 'no port means 80');
  for (const h of ['localhost:9740', '127.0.0.1:9740', '[::1]:9740', '10.0.0.6:9740', 'lb1.example.com:9740', '10.0.0.5:9741', '[10.0.0.5]:9740', undefined, ''])
    assert.equal(hostAllowed(h, lan), false, `${h} on ${lan.address}`);
  assert.equal(hostAllowed('LB1.example.com:9740', lan, ['lb1.example.com:9740']), true, 'listed names, case-insensitive');
  assert.equal(hostAllowed('lb1.example.com', lan, ['lb1.example.com:9740']), false, 'exactly as listed');
  assert.equal(hostAllowed('localhost:19740', { address: '127.0.0.1', port: 9740 }, ['localhost:19740']), true, 'an SSH tunnel on another local port');
  const on80 = { address: '127.0.0.1', port: 80 };
  assert.equal(hostAllowed('localhost', on80), true);
  assert.equal(hostAllowed('127.0.0.1:80', on80), true);
  const any = { address: '0.0.0.0', port: 9740 };
  for (const h of ['10.0.0.5:9740', '192.0.2.1:9740', '[2001:db8::1]:9740', 'localhost:9740']) assert.equal(hostAllowed(h, any), true, `${h} on 0.0.0.0`);
  for (const h of ['lb1.example.com:9740', '10.0.0.5:80', '[fe80::1%25eth0]:9740']) assert.equal(hostAllowed(h, any), false, `${h} on 0.0.0.0`);
  assert.equal(hostAllowed('[2001:db8::5]:9740', { address: '2001:DB8:0::5', port: 9740 }), true);
});

/** Opens a connection and trickles `head` then `trickle` a byte at a time; resolves with the ms until the server closed it. */
function slowClient(admin: AdminServer, head: string, trickle: string, everyMs: number, giveUpMs: number): Promise<{ closedAfterMs: number | null; answer: string }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = net.connect(admin.port, admin.address);
    let answer = '', i = 0;
    const timer = setInterval(() => { if (i < trickle.length) s.write(trickle[i++]); }, everyMs);
    const giveUp = setTimeout(() => { clearInterval(timer); s.destroy(); resolve({ closedAfterMs: null, answer }); }, giveUpMs);
    s.on('connect', () => s.write(head));
    s.on('data', (d) => { answer += d.toString(); });
    s.on('error', () => undefined);
    s.on('close', () => { clearInterval(timer); clearTimeout(giveUp); resolve({ closedAfterMs: performance.now() - t0, answer }); });
  });
}

test('slowloris: a client sending headers (or a body) slowly is cut off at the configured timeouts (5 s, 10 s), not ~30 s later', { timeout: 40000 }, async (t) => {
  const env = await server();
  try {
    const host = `127.0.0.1:${env.admin.port}`;
    const [headers, body] = await Promise.all([
      // A header line every 500 ms, never the blank line that ends them.
      slowClient(env.admin, `GET /api/v1/vips HTTP/1.1\r\nHost: ${host}\r\n`, 'X-Slow: 1\r\n'.repeat(100), 50, 20000),
      // Headers at once, then the body a byte every 500 ms.
      slowClient(env.admin, `POST /api/v1/vips HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n`, ' '.repeat(1000), 500, 20000),
    ]);
    t.diagnostic(`slow headers cut after ${headers.closedAfterMs?.toFixed(0)} ms (${headers.answer.split('\r\n')[0]}); slow body after ${body.closedAfterMs?.toFixed(0)} ms (${body.answer.split('\r\n')[0]})`);
    assert.ok(headers.closedAfterMs !== null && headers.closedAfterMs >= 4500 && headers.closedAfterMs < 6500, `slow headers cut after ${headers.closedAfterMs} ms; want 5 s (headersTimeout)`);
    assert.ok(body.closedAfterMs !== null && body.closedAfterMs >= 9500 && body.closedAfterMs < 11500, `slow body cut after ${body.closedAfterMs} ms; want 10 s (requestTimeout)`);
    assert.match(headers.answer, /^HTTP\/1\.1 408/);
  } finally { await env.admin.close(); }
});
