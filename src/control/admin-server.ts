// The admin HTTP server (node:http): JSON API over the Controller, Prometheus /metrics and the dashboard page.
// Reads are open unless admin.authReads; every change needs `Authorization: Bearer <token>` (401 otherwise,
// 403 when no token is configured at all). Bound to 127.0.0.1 by default. Endpoints: docs/operations.md.
import http from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { ControlError, type BackendView, type Controller, type VipView } from './controller.js';
import { ConfigError, cut, ENGINE_DEFAULTS, type BackendConfig, type EngineConfig, type VipConfig } from '../engine/config.js';
import type { RunConfig } from './run-config.js';
import type { HealthChecker } from './health.js';
import { Metrics, snapshot } from './metrics.js';
import type { PacketLoopStats } from '../dataplane/packet-loop.js';
import { RoutesError } from '../dataplane/routes.js';
import { silentLogger, type Logger } from './logger.js';
import { formatIp, parseIp } from '../wire/addr.js';

export { resolveAdminToken } from './run-config.js';

export interface AdminServerOptions {
  controller: Controller;
  /** Default "127.0.0.1". */
  address?: string;
  /** Default 9740; 0 = any free port. */
  port?: number;
  /** Bearer token for changes; undefined = changes refused (403). */
  token?: string;
  /** Reads need the token too. Default false. */
  authReads?: boolean;
  health?: HealthChecker;
  loopStats?: () => PacketLoopStats | undefined;
  /** Re-reads the config file (POST /api/v1/reload); without it that route does not exist. */
  reload?: () => Promise<void>;
  logger?: Logger;
  /** Node process metrics in /metrics. Default true. */
  processMetrics?: boolean;
  /** Host header values served besides the listen address (and localhost names on loopback), e.g. "lb1.example.com:9740". */
  allowedHosts?: readonly string[];
  /** A request's headers must arrive within this (ms). Default 5000. */
  headersTimeoutMs?: number;
  /** A whole request (headers and body) must arrive within this (ms). Default 10000. */
  requestTimeoutMs?: number;
}

export interface AdminServer {
  readonly url: string;
  readonly address: string;
  readonly port: number;
  readonly metrics: Metrics;
  setToken(token: string | undefined): void;
  setAuthReads(on: boolean): void;
  setAllowedHosts(hosts: readonly string[]): void;
  close(): Promise<void>;
}

/**
 * Applies a reloaded config file through the Controller. Health verdicts and drain marks survive (a drained backend's
 * weight in the file is the one undrain restores). Fields that only a restart can change keep their running values
 * (so the running config stays true) and are named in the answer.
 */
export async function reloadConfig(ctl: Controller, next: RunConfig): Promise<{ keptDrained: string[]; restartNeeded: string[] }> {
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  let restartNeeded: string[] = [];
  // Computed in the Controller's turn, from the config it replaces (not from one a queued change is about to replace).
  const { keptDrained } = await ctl.reload((cur) => {
    restartNeeded = [
      ...(same(next.device, cur.device) ? [] : ['device']),
      ...(same(next.engine.tables, cur.engine.tables) ? [] : ['tables']),
      ...(next.engine.hashSeed === cur.engine.hashSeed ? [] : ['hashSeed']),
      ...(['enabled', 'address', 'port'] as const).filter((k) => next.admin[k] !== cur.admin[k]).map((k) => `admin.${k}`),
      ...(same({ ...next.tokenStore, password: undefined }, { ...cur.tokenStore, password: undefined }) ? [] : ['tokenStore']),
      ...((next.datapath ?? 'tun') === (cur.datapath ?? 'tun') ? [] : ['datapath']),
    ];
    return {
      ...next,
      device: cur.device,
      datapath: cur.datapath,
      tokenStore: cur.tokenStore,
      admin: { ...next.admin, enabled: cur.admin.enabled, address: cur.admin.address, port: cur.admin.port },
      engine: { ...next.engine, tables: cur.engine.tables, hashSeed: cur.engine.hashSeed },
    };
  });
  return { keptDrained: keptDrained.map((k) => k.replace('|', ' ')), restartNeeded };
}

// ---- HTTP plumbing ----

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly headers: Record<string, string> = {}) { super(message); }
}

const MAX_BODY_BYTES = 64 * 1024;

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) { reject(new HttpError(413, `body larger than ${MAX_BODY_BYTES} bytes`)); req.resume(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function jsonBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  const text = await readBody(req);
  if (text.trim() === '') throw new HttpError(400, 'body: expected a JSON object');
  let v: unknown;
  try { v = JSON.parse(text); } catch (e) { throw new HttpError(400, `malformed JSON: ${(e as Error).message}`); }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HttpError(400, 'body: expected a JSON object');
  return v as Record<string, unknown>;
}

function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = status === 204 ? '' : `${JSON.stringify(body, null, 1)}\n`;
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...headers });
  res.end(text);
}

const digest = (s: string) => createHash('sha256').update(s).digest();

const isLoopback = (a: Uint8Array) => (a.length === 4 ? a[0] === 127 : a.slice(0, 15).every((x) => x === 0) && a[15] === 1);
const isWildcard = (a: Uint8Array) => a.every((x) => x === 0);

/**
 * Whether a request's Host header names this server (the defence against DNS rebinding: a page on an attacker's name
 * that resolves to 127.0.0.1 sends Host: <that name>). Served: the listen address in any spelling, with the listen
 * port (no port only when it is 80); on loopback also localhost, 127.0.0.1 and [::1]; on a wildcard address (0.0.0.0,
 * ::) any IP literal and localhost (a rebinding page cannot make a browser send an IP literal that is not its own
 * origin); and the `extra` values exactly (case-insensitive). Nothing else.
 */
export function hostAllowed(host: string | undefined, listen: { address: string; port: number }, extra: readonly string[] = []): boolean {
  if (host === undefined || host === '') return false;
  const h = host.toLowerCase();
  if (extra.some((x) => x.toLowerCase() === h)) return true;
  const m = /^(?:\[([0-9a-f:.]+)\]|([a-z0-9.-]+))(?::(\d{1,5}))?$/.exec(h);
  if (!m) return false;
  const port = m[3] === undefined ? 80 : Number(m[3]);
  if (port !== listen.port) return false;
  const own = parseIp(listen.address);
  if (!own) return false;
  const name = m[1] ?? m[2];
  if (name === 'localhost') return isLoopback(own.bytes) || isWildcard(own.bytes);
  // Bracketed: IPv6 only; bare: IPv4 only (a bare IPv6 address cannot carry a port).
  const ip = parseIp(name);
  if (!ip || (m[1] !== undefined) !== (ip.family === 6) || name.includes('%')) return false;
  if (isWildcard(own.bytes)) return true;
  const text = formatIp(ip.bytes, 0, ip.bytes.length);
  if (text === formatIp(own.bytes, 0, own.bytes.length)) return true;
  return isLoopback(own.bytes) && (text === '127.0.0.1' || text === '::1');
}

interface Ctx {
  req: http.IncomingMessage;
  url: URL;
  params: string[];
  /** The request carried the right token. */
  authed: boolean;
}
interface Route { method: string; re: RegExp; change: boolean; handle: (c: Ctx) => Promise<[number, unknown]> | [number, unknown] | Promise<void> }

/** Where the dashboard page lives: beside this module, or in the source tree next to dist/. */
function loadDashboard(): { html?: string; csp: string; error?: string } {
  const candidates = [new URL('./dashboard/index.html', import.meta.url), new URL('../../../src/control/dashboard/index.html', import.meta.url)];
  for (const u of candidates) {
    let html: string;
    try { html = readFileSync(u, 'utf8'); } catch { continue; }
    // Inline script and style are allowed by hash only, so nothing injected into the page could run.
    const hashes = (tag: string) => [...html.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, 'g'))].map((m) => `'sha256-${createHash('sha256').update(m[1]).digest('base64')}'`).join(' ');
    const csp = `default-src 'none'; script-src ${hashes('script')}; style-src ${hashes('style')}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
    return { html, csp };
  }
  return { csp: "default-src 'none'", error: `dashboard page not found (looked in ${candidates.map((u) => fileURLToPath(u)).join(', ')})` };
}

export async function startAdminServer(opts: AdminServerOptions): Promise<AdminServer> {
  const ctl = opts.controller;
  const log = opts.logger ?? silentLogger;
  let tokenDigest = opts.token ? digest(opts.token) : undefined;
  let authReads = opts.authReads ?? false;
  let allowedHosts = [...(opts.allowedHosts ?? [])];
  /** The bound port (known once listening; port 0 picks one). */
  let listenPort = -1;
  const metrics = new Metrics({ controller: ctl, health: opts.health, loopStats: opts.loopStats, processMetrics: opts.processMetrics });
  const dashboard = loadDashboard();
  if (dashboard.error) log.warn(dashboard.error);

  const tokenOk = (req: http.IncomingMessage): boolean => {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    // Compare digests: equal length, constant time, whatever the caller sent.
    return !!(m && tokenDigest && timingSafeEqual(digest(m[1]), tokenDigest));
  };

  // Names in paths are resolved by the Controller (in its turn, for changes): any spelling, "addr" alone when unique.
  const withBackendHealth = (vip: string, b: BackendView) => {
    const h = opts.health?.get(vip, b.id);
    return { ...b, health: h ? { checked: h.checked, state: h.state, check: h.check, port: h.port, successes: h.successes, failures: h.failures, checks: h.checks, transitions: h.transitions, lastError: h.lastError ?? null, lastCheckMs: h.lastCheckMs ?? null, lastChangeMs: h.lastChangeMs ?? null } : null };
  };
  const withHealth = (v: VipView) => {
    const sum = (k: 'packetsIn' | 'bytesIn' | 'packetsOut' | 'bytesOut') => v.backends.reduce((a, b) => a + b[k], 0);
    return { ...v, totals: { packetsIn: sum('packetsIn'), bytesIn: sum('bytesIn'), packetsOut: sum('packetsOut'), bytesOut: sum('bytesOut') }, backends: v.backends.map((b) => withBackendHealth(v.address, b)) };
  };
  const backendAnswer = (r: { vip: string; backend: BackendView }) => withBackendHealth(r.vip, r.backend);

  // MPTCP keys let whoever holds them add subflows to a connection: only token holders see them.
  const redact = (c: unknown, authed: boolean) => {
    if (authed || typeof c !== 'object' || c === null) return c;
    const { serverKey: _s, clientKey: _c, ...rest } = c as Record<string, unknown>;
    return rest;
  };

  const intParam = (u: URL, name: string, def: number): number => {
    const raw = u.searchParams.get(name);
    if (raw === null) return def;
    if (!/^\d+$/.test(raw)) throw new HttpError(400, `${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
    return Number(raw);
  };

  const V = '([^/]+)';
  const routes: Route[] = [
    { method: 'GET', re: /^\/api\/v1\/vips$/, change: false, handle: async () => [200, { vips: (await ctl.vips()).map(withHealth), timeMs: Date.now() }] },
    {
      method: 'POST', re: /^\/api\/v1\/vips$/, change: true, handle: async ({ req }) => {
        const b = await jsonBody(req);
        if (typeof b.address !== 'string') throw new HttpError(400, 'address: required, "addr:port"');
        if (b.backends !== undefined && !Array.isArray(b.backends)) throw new HttpError(400, 'backends: must be a list');
        return [201, { vip: withHealth(await ctl.addVip({ ...b, backends: (b.backends ?? []) as BackendConfig[] } as VipConfig)) }];
      },
    },
    { method: 'GET', re: new RegExp(`^/api/v1/vips/${V}$`), change: false, handle: async ({ params }) => [200, withHealth(await ctl.vip(params[0]))] },
    { method: 'DELETE', re: new RegExp(`^/api/v1/vips/${V}$`), change: true, handle: async ({ params }) => [200, { removed: await ctl.removeVip(params[0]) }] },
    {
      method: 'GET', re: new RegExp(`^/api/v1/vips/${V}/backends$`), change: false, handle: async ({ params }) => {
        const v = withHealth(await ctl.vip(params[0]));
        return [200, { vip: v.address, backends: v.backends }];
      },
    },
    {
      method: 'POST', re: new RegExp(`^/api/v1/vips/${V}/backends$`), change: true, handle: async ({ req, params }) => {
        const b = await jsonBody(req);
        if (typeof b.address !== 'string') throw new HttpError(400, 'address: required, an IP address');
        return [201, await ctl.addBackend(params[0], b as unknown as BackendConfig)];
      },
    },
    { method: 'GET', re: new RegExp(`^/api/v1/vips/${V}/backends/${V}$`), change: false, handle: async ({ params }) => [200, backendAnswer(await ctl.backend(params[0], params[1]))] },
    {
      method: 'DELETE', re: new RegExp(`^/api/v1/vips/${V}/backends/${V}$`), change: true, handle: async ({ params }) => {
        const r = await ctl.removeBackend(params[0], params[1]);
        return [200, { vip: r.vip, removed: r.backend }];
      },
    },
    ...(['drain', 'undrain'] as const).map((op): Route => ({
      method: 'POST', re: new RegExp(`^/api/v1/vips/${V}/backends/${V}/${op}$`), change: true,
      handle: async ({ params }) => [200, backendAnswer(await ctl[op](params[0], params[1]))],
    })),
    {
      method: 'PUT', re: new RegExp(`^/api/v1/vips/${V}/backends/${V}/weight$`), change: true, handle: async ({ req, params }) => {
        const b = await jsonBody(req);
        for (const k of Object.keys(b)) if (k !== 'weight') throw new HttpError(400, `${k}: unknown field (allowed: weight)`);
        if (typeof b.weight !== 'number' || !Number.isInteger(b.weight) || b.weight < 0 || b.weight > 65535) throw new HttpError(400, `weight: must be an integer 0-65535, got ${JSON.stringify(b.weight)}`);
        return [200, backendAnswer(await ctl.setWeight(params[0], params[1], b.weight))];
      },
    },
    {
      method: 'GET', re: /^\/api\/v1\/connections$/, change: false, handle: async ({ url, authed }) => {
        const offset = intParam(url, 'offset', 0), limit = intParam(url, 'limit', 100);
        const r = await ctl.connections(offset, limit) as { total: number; offset: number; connections: unknown[] };
        const next = offset + r.connections.length;
        return [200, { total: r.total, offset, limit, nextOffset: r.connections.length === limit && next < r.total ? next : null, connections: r.connections.map((c) => redact(c, authed)) }];
      },
    },
    { method: 'GET', re: /^\/api\/v1\/connections\/([^/]+)$/, change: false, handle: async ({ params, authed }) => [200, redact(await ctl.connection(params[0]), authed)] },
    {
      method: 'GET', re: /^\/api\/v1\/stats$/, change: false, handle: async () => {
        const s = await snapshot(ctl, opts.loopStats);
        return [200, { engine: s.stats, loop: s.loop ?? null, health: opts.health ? { rounds: opts.health.rounds } : null, timeMs: s.timeMs }];
      },
    },
    {
      method: 'GET', re: /^\/api\/v1\/health$/, change: false, handle: () => {
        const h = ctl.config.health;
        return [200, { config: h, backends: opts.health?.snapshot() ?? [], rounds: opts.health?.rounds ?? 0 }];
      },
    },
    {
      method: 'GET', re: /^\/api\/v1\/config$/, change: false, handle: () => {
        const c = ctl.config;
        return [200, { ...c, admin: { ...c.admin, token: c.admin.token ? '(set)' : undefined } }];
      },
    },
    {
      method: 'PUT', re: /^\/api\/v1\/timeouts$/, change: true, handle: async ({ req }) => {
        const b = await jsonBody(req);
        const cur = ENGINE_DEFAULTS.timeouts;
        for (const k of Object.keys(b)) if (!(k in cur)) throw new HttpError(400, `${k}: unknown field (allowed: ${Object.keys(cur).join(', ')})`);
        return [200, { timeouts: await ctl.setTimeouts(b as Partial<EngineConfig['timeouts']>) }];
      },
    },
    ...(opts.reload ? [{ method: 'POST', re: /^\/api\/v1\/reload$/, change: true, handle: async () => { await opts.reload!(); return [200, { reloaded: true }]; } } as Route] : []),
    { method: 'GET', re: /^\/api\/v1\/auth$/, change: true, handle: () => [200, { ok: true }] },
    {
      method: 'GET', re: /^\/healthz$/, change: false, handle: async () => {
        // Alive = the packet worker answers a control message.
        await ctl.stats();
        return [200, { ok: true }];
      },
    },
  ];

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    // First of all, on every path: a page on another name (DNS rebinding) gets nothing, not even the dashboard.
    // 421 Misdirected Request: "this server does not serve that authority"; not an authorisation matter (403), and
    // no token makes it right.
    if (!hostAllowed(req.headers.host, { address, port: listenPort }, allowedHosts)) {
      throw new HttpError(421, `Host ${JSON.stringify(cut(req.headers.host ?? '(none)'))} is not this admin server: use http://${hostPart}:${listenPort}/ (or list the name in admin.allowedHosts)`, { connection: 'close' });
    }
    const url = new URL(req.url ?? '/', 'http://admin');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    if (path === '/' || path === '/index.html') {
      if (method !== 'GET') throw new HttpError(405, `${method} not allowed on ${path}`, { allow: 'GET' });
      if (!dashboard.html) throw new HttpError(503, dashboard.error!);
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'content-security-policy': dashboard.csp, 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' });
      res.end(dashboard.html);
      return;
    }
    const authed = tokenOk(req);
    if (path === '/metrics') {
      if (method !== 'GET') throw new HttpError(405, `${method} not allowed on /metrics`, { allow: 'GET' });
      if (authReads && !authed) throw unauthorized();
      const body = await metrics.render();
      res.writeHead(200, { 'content-type': metrics.contentType, 'cache-control': 'no-store' });
      res.end(body);
      return;
    }
    let params: string[] | undefined;
    const allowed: string[] = [];
    let route: Route | undefined;
    for (const r of routes) {
      const m = r.re.exec(path);
      if (!m) continue;
      allowed.push(r.method);
      if (r.method === method && !route) { route = r; params = m.slice(1).map((s) => { try { return decodeURIComponent(s); } catch { throw new HttpError(400, `bad percent-encoding in ${JSON.stringify(s)}`); } }); }
    }
    if (allowed.length === 0) throw new HttpError(404, `no route ${path} (see docs/operations.md)`);
    if (!route) throw new HttpError(405, `${method} not allowed on ${path} (allowed: ${allowed.join(', ')})`, { allow: allowed.join(', ') });
    // Authorisation before the body is read: a refused change touches nothing.
    if (route.change || (authReads && path !== '/healthz')) {
      if (!tokenDigest) throw new HttpError(403, 'changes are disabled: no admin token is configured (set admin.token, admin.tokenFile or MPLB_ADMIN_TOKEN)');
      if (!authed) throw unauthorized();
    }
    const out = await route.handle({ req, url, params: params!, authed });
    if (Array.isArray(out)) send(res, out[0], out[1]);
    if (route.change && method !== 'GET') log.info({ method, path, status: res.statusCode }, 'admin change');
  };
  const unauthorized = () => new HttpError(401, 'missing or wrong bearer token (Authorization: Bearer <admin token>)', { 'www-authenticate': 'Bearer realm="mplb"' });

  const headersTimeout = opts.headersTimeoutMs ?? 5_000, requestTimeout = opts.requestTimeoutMs ?? 10_000;
  const server = http.createServer({
    headersTimeout, requestTimeout,
    // Node enforces both timeouts only when it sweeps its connections, every 30 s by default (a slow client then
    // held a connection ~23 s past a 5 s headersTimeout): sweep often enough that the configured times hold.
    connectionsCheckingInterval: Math.max(50, Math.min(500, Math.floor(Math.min(headersTimeout, requestTimeout) / 10))),
  }, (req, res) => {
    const t0 = performance.now();
    handle(req, res).catch((e: unknown) => {
      let status = 500, message = (e as Error)?.message ?? String(e), headers: Record<string, string> = {};
      let code: string | undefined;
      if (e instanceof HttpError) { status = e.status; headers = e.headers; }
      else if (e instanceof ControlError) status = e.status;
      else if (e instanceof ConfigError) status = 400;
      else if (e instanceof RoutesError) {
        // A route in the way is the operator's to resolve (409); nothing was changed either way.
        code = e.code;
        status = e.code === 'ROUTES_EXISTS' || e.code === 'ROUTES_IN_USE' ? 409 : e.code === 'ROUTES_BAD_ADDRESS' ? 400 : 500;
        log.warn({ method: req.method, url: req.url, code, err: message }, 'change refused: routes');
      } else log.error({ method: req.method, url: req.url, err: message }, 'admin request failed');
      if (!res.headersSent) send(res, status, code ? { error: message, status, code } : { error: message, status }, headers);
      else res.destroy();
      if (status === 401 || status === 403 || status === 421) log.warn({ method: req.method, url: cut(req.url ?? '', 200), status, host: cut(req.headers.host ?? '', 200), from: req.socket.remoteAddress }, 'admin request refused');
    }).finally(() => {
      log.debug({ method: req.method, url: req.url, status: res.statusCode, ms: Math.round(performance.now() - t0) }, 'admin request');
    });
  });
  const address = opts.address ?? '127.0.0.1';
  const hostPart = address.includes(':') ? `[${address}]` : address;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 9740, address, () => { server.off('error', reject); resolve(); });
  }).catch((e: NodeJS.ErrnoException) => {
    throw Object.assign(new Error(`admin server cannot listen on ${address}:${opts.port ?? 9740}: ${e.code === 'EADDRINUSE' ? 'address in use (set admin.port)' : e.message}`), { code: 'EADMIN' });
  });
  const port = (server.address() as AddressInfo).port;
  listenPort = port;
  const host = hostPart;
  log.info({ url: `http://${host}:${port}/`, changes: tokenDigest ? 'need the bearer token' : 'disabled (no token)', reads: authReads ? 'need the token' : 'open' }, 'admin server listening');
  return {
    url: `http://${host}:${port}`,
    address,
    port,
    metrics,
    setToken(t) { tokenDigest = t ? digest(t) : undefined; },
    setAuthReads(on) { authReads = on; },
    setAllowedHosts(hosts) { allowedHosts = [...hosts]; },
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

