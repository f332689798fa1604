// The `mplb run` config file (YAML): the engine's settings plus the device, the admin server, health checks and
// logging. Refused with the field path and reason.
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseYamlSubset } from './yaml-subset.js';
import { ConfigError, cut, show, validateEngineConfig, type EngineConfig } from '../engine/config.js';
import { formatEndpoint, parseEndpoint, parseIp } from '../wire/addr.js';
import { TOKEN_STORE_DEFAULTS, type TokenStoreConfig } from '../cluster/token-store.js';
import { checkRoutableAddresses } from '../dataplane/routes.js';
import { defaultFastpathFlows } from '../fastpath/layout.js';

export interface DeviceConfig {
  /** TUN interface name (max 15 characters). Default "mplb0". */
  name: string;
  /** TUN MTU. Default 1500. */
  mtu: number;
  /** Routing table for the backends' replies. Default 2710. Two instances in one namespace need different ones. */
  table: number;
  /** Priority of the "iif TUN" rule; backend rules use priority + 1. Default 10000. One per instance, too. */
  rulePriority: number;
  /**
   * What a restart after a crash needs: the sysctls' values from before mplb and the routes and rules it installed.
   * Default /run/mplb/<name>.<network namespace inode>.json. One per instance.
   */
  stateFile?: string;
}

export interface AdminConfig {
  /** Serve the admin API, /metrics and the dashboard. Default true. */
  enabled: boolean;
  /** Listen address. Default "127.0.0.1" (loopback only). */
  address: string;
  /** Listen port; 0 picks a free one. Default 9740. */
  port: number;
  /** Bearer token that changes need (16+ characters). MPLB_ADMIN_TOKEN overrides it. Default: none (changes refused). */
  token?: string;
  /** File whose first line is the token (e.g. a systemd credential); used when `token` and the environment are unset. */
  tokenFile?: string;
  /** Reads (GET, /metrics, the dashboard's data) need the token too. Default false. */
  authReads: boolean;
  /**
   * Host header values served besides the listen address (and localhost, 127.0.0.1, [::1] on loopback), e.g.
   * "lb1.example.com:9740". Any other Host gets 421 (DNS rebinding). Default none.
   */
  allowedHosts: string[];
}

export const HEALTH_CHECKS = ['tcp', 'mptcp'] as const;
export type HealthCheckKind = (typeof HEALTH_CHECKS)[number];

export interface HealthOverride {
  /** Check this VIP's backends at all. Default: `health.enabled`. */
  enabled?: boolean;
  /** Default: `health.check`. */
  check?: HealthCheckKind;
  /** Default: `health.port`, else the backend's port. */
  port?: number;
}

export interface HealthConfig {
  /** Active health checks. Default false (probes are connections the backends see; opt in). */
  enabled: boolean;
  /** Time between the starts of two check rounds. Default 2000 ms. */
  intervalMs: number;
  /** A probe not connected within this is a failure. Default 1000 ms; at most intervalMs. */
  timeoutMs: number;
  /** Consecutive successes that bring a down backend back. Default 2. */
  rise: number;
  /** Consecutive failures that take an up backend out. Default 3. */
  fall: number;
  /** "tcp" (connect) or "mptcp" (MPTCP connect that must not fall back to TCP). Default "tcp". */
  check: HealthCheckKind;
  /** Probe port for every backend. Default: the backend's own port. */
  port?: number;
  /** Per-VIP overrides, keyed by the VIP's "addr:port". Default none. */
  vips: Record<string, HealthOverride>;
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface LogConfig {
  /** pino level; MPLB_LOG_LEVEL overrides it. Default "info" (nothing is logged per packet at any level). */
  level: LogLevel;
}

/** How packets of decided flows move: all through the TUN, established ones NATed by the tc-bpf fast path, or that where the kernel allows. */
export type DatapathMode = 'tun' | 'tc-bpf' | 'auto';
export const DATAPATH_MODES: readonly DatapathMode[] = ['tun', 'tc-bpf', 'auto'];

/** `fastpath`: the tc-bpf data path's kernel map. */
export interface FastpathConfig {
  /** Flows the kernel map holds (two entries each, preallocated at start, about 250 bytes per flow); more stay on the TUN. */
  maxFlows: number;
}

export interface RunConfig { device: DeviceConfig; engine: EngineConfig; admin: AdminConfig; health: HealthConfig; log: LogConfig; tokenStore?: TokenStoreConfig; datapath?: DatapathMode; fastpath?: FastpathConfig }

export const DEVICE_DEFAULTS: DeviceConfig = { name: 'mplb0', mtu: 1500, table: 2710, rulePriority: 10000 };
export const ADMIN_DEFAULTS: AdminConfig = { enabled: true, address: '127.0.0.1', port: 9740, authReads: false, allowedHosts: [] };
export const HEALTH_DEFAULTS: HealthConfig = { enabled: false, intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3, check: 'tcp', vips: {} };
export const LOG_DEFAULTS: LogConfig = { level: 'info' };
/** Largest config file read (bytes): 2,000 VIPs with two backends each take about 200 KB. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
/**
 * The yaml library's alias budget (its default): an anchor may be used about 99 times. More (a "billion laughs" file,
 * where aliases nest to expand exponentially) is refused with a ReferenceError, which becomes a ConfigError here.
 */
const MAX_YAML_ALIASES = 100;
/** Shortest admin token accepted: long enough that guessing over HTTP is hopeless. */
export const MIN_TOKEN_LENGTH = 16;

const ENGINE_KEYS = ['vips', 'policy', 'mptcpAware', 'unknownTokenAnswer', 'tables', 'timeouts', 'hashSeed', 'icmp'];
const OWN_KEYS = ['device', 'admin', 'health', 'log', 'tokenStore', 'datapath', 'fastpath'];

function mapping(v: unknown, path: string, allowed: readonly string[]): Record<string, unknown> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new ConfigError(path, 'must be a mapping');
  const m = v as Record<string, unknown>;
  for (const k of Object.keys(m)) if (!allowed.includes(k)) throw new ConfigError(`${path}.${cut(k)}`, `unknown field (allowed: ${allowed.join(', ')})`);
  return m;
}

function int(v: unknown, path: string, min: number, max: number, def: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(path, `must be an integer ${min}-${max}, got ${show(v)}`);
  return v;
}

function bool(v: unknown, path: string, def: boolean): boolean {
  if (v === undefined) return def;
  if (typeof v !== 'boolean') throw new ConfigError(path, `must be true or false, got ${show(v)}`);
  return v;
}

function pick<T extends string>(v: unknown, path: string, allowed: readonly T[], def: T): T {
  if (v === undefined) return def;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw new ConfigError(path, `must be one of ${allowed.join(', ')}, got ${show(v)}`);
  return v as T;
}

/** Canonical "addr:port" text of a VIP (config spellings of one address may differ), or undefined. */
export function canonicalEndpoint(text: string): string | undefined {
  const ep = parseEndpoint(text);
  if (!ep || ep.port === undefined) return undefined;
  return formatEndpoint(ep.addr.bytes, 0, ep.addr.bytes.length, ep.port);
}

/** Canonical "addr:port" of a backend: the engine's id for it, whatever spelling the config uses. */
export function endpointId(address: string, port: number): string {
  const ip = parseIp(address);
  return ip ? formatEndpoint(ip.bytes, 0, ip.bytes.length, port) : `${address}:${port}`;
}

export function validateAdminConfig(v: unknown, path = 'admin'): AdminConfig {
  const m = mapping(v, path, ['enabled', 'address', 'port', 'token', 'tokenFile', 'authReads', 'allowedHosts']);
  const d = ADMIN_DEFAULTS;
  const address = m.address ?? d.address;
  if (typeof address !== 'string' || !parseIp(address)) throw new ConfigError(`${path}.address`, `must be an IP address (e.g. 127.0.0.1), got ${show(address)}`);
  const out: AdminConfig = { enabled: bool(m.enabled, `${path}.enabled`, d.enabled), address, port: int(m.port, `${path}.port`, 0, 65535, d.port), authReads: bool(m.authReads, `${path}.authReads`, d.authReads), allowedHosts: [] };
  if (m.allowedHosts !== undefined) {
    if (!Array.isArray(m.allowedHosts)) throw new ConfigError(`${path}.allowedHosts`, `must be a list of Host header values ("name:port"), got ${show(m.allowedHosts)}`);
    out.allowedHosts = m.allowedHosts.map((h, i) => {
      if (typeof h !== 'string' || !/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/.test(h) || h.length > 270) throw new ConfigError(`${path}.allowedHosts[${i}]`, `must be a Host header value "name:port" (or "[v6]:port"; no port means 80), got ${show(h)}`);
      return h;
    });
  }
  if (m.token !== undefined) {
    if (typeof m.token !== 'string' || m.token.length < MIN_TOKEN_LENGTH || /\s/.test(m.token)) throw new ConfigError(`${path}.token`, `must be a string of at least ${MIN_TOKEN_LENGTH} characters without spaces`);
    out.token = m.token;
  }
  if (m.tokenFile !== undefined) {
    if (typeof m.tokenFile !== 'string' || m.tokenFile === '') throw new ConfigError(`${path}.tokenFile`, 'must be a file path');
    out.tokenFile = m.tokenFile;
  }
  return out;
}

export function validateHealthConfig(v: unknown, engine: EngineConfig, path = 'health'): HealthConfig {
  const m = mapping(v, path, ['enabled', 'intervalMs', 'timeoutMs', 'rise', 'fall', 'check', 'port', 'vips']);
  const d = HEALTH_DEFAULTS;
  const intervalMs = int(m.intervalMs, `${path}.intervalMs`, 100, 3_600_000, d.intervalMs);
  const timeoutMs = int(m.timeoutMs, `${path}.timeoutMs`, 10, 3_600_000, Math.min(d.timeoutMs, intervalMs));
  // A probe still open when the next round starts would overlap it.
  if (timeoutMs > intervalMs) throw new ConfigError(`${path}.timeoutMs`, `must not exceed intervalMs (${intervalMs}), got ${timeoutMs}`);
  const out: HealthConfig = {
    enabled: bool(m.enabled, `${path}.enabled`, d.enabled), intervalMs, timeoutMs,
    rise: int(m.rise, `${path}.rise`, 1, 100, d.rise), fall: int(m.fall, `${path}.fall`, 1, 100, d.fall),
    check: pick(m.check, `${path}.check`, HEALTH_CHECKS, d.check), vips: {},
  };
  if (m.port !== undefined) out.port = int(m.port, `${path}.port`, 1, 65535, 0);
  const known = new Map(engine.vips.map((x) => [canonicalEndpoint(x.address), x.address]));
  if (m.vips !== undefined && (typeof m.vips !== 'object' || m.vips === null || Array.isArray(m.vips))) throw new ConfigError(`${path}.vips`, 'must be a mapping of "addr:port" to overrides');
  for (const [key, raw] of Object.entries((m.vips ?? {}) as Record<string, unknown>)) {
    const p = `${path}.vips["${cut(key)}"]`;
    const vip = known.get(canonicalEndpoint(key));
    // A typo here would silently check the wrong thing: the key must name a configured VIP.
    if (vip === undefined) throw new ConfigError(p, `names no VIP in vips (have: ${[...known.values()].join(', ') || 'none'})`);
    const o = mapping(raw, p, ['enabled', 'check', 'port']);
    const ov: HealthOverride = {};
    if (o.enabled !== undefined) ov.enabled = bool(o.enabled, `${p}.enabled`, true);
    if (o.check !== undefined) ov.check = pick(o.check, `${p}.check`, HEALTH_CHECKS, out.check);
    if (o.port !== undefined) ov.port = int(o.port, `${p}.port`, 1, 65535, 0);
    out.vips[vip] = ov;
  }
  return out;
}

export function validateLogConfig(v: unknown, path = 'log'): LogConfig {
  const m = mapping(v, path, ['level']);
  return { level: pick(m.level, `${path}.level`, LOG_LEVELS, LOG_DEFAULTS.level) };
}

/** `tokenStore`: the shared token store of a tier of balancers (absent: each balancer steers on its own). */
export function validateTokenStoreConfig(v: unknown, path = 'tokenStore'): TokenStoreConfig | undefined {
  if (v === undefined || v === null) return undefined;
  const m = mapping(v, path, ['url', 'keyPrefix', 'passwordFile', 'connectTimeoutMs', 'commandTimeoutMs', 'holdMs', 'holdTries', 'holdMaxPackets', 'holdMaxBytes', 'ttlMs']);
  const d = TOKEN_STORE_DEFAULTS;
  if (typeof m.url !== 'string' || !/^rediss?:\/\/[^\s/]+(:\d{1,5})?(\/\d{1,2})?$/.test(m.url)) {
    throw new ConfigError(`${path}.url`, `must be redis://HOST:PORT (optionally /DB), got ${JSON.stringify(m.url)?.slice(0, 100)}`);
  }
  const keyPrefix = m.keyPrefix ?? d.keyPrefix;
  if (typeof keyPrefix !== 'string' || !/^[A-Za-z0-9:_.-]{1,64}$/.test(keyPrefix)) throw new ConfigError(`${path}.keyPrefix`, 'must be 1-64 letters, digits or ":_.-" (balancers of one tier share it)');
  const out: TokenStoreConfig = {
    url: m.url, keyPrefix,
    connectTimeoutMs: int(m.connectTimeoutMs, `${path}.connectTimeoutMs`, 10, 60_000, d.connectTimeoutMs),
    commandTimeoutMs: int(m.commandTimeoutMs, `${path}.commandTimeoutMs`, 1, 10_000, d.commandTimeoutMs),
    holdMs: int(m.holdMs, `${path}.holdMs`, 1, 2000, d.holdMs),
    holdTries: int(m.holdTries, `${path}.holdTries`, 1, 10, d.holdTries),
    holdMaxPackets: int(m.holdMaxPackets, `${path}.holdMaxPackets`, 1, 65536, d.holdMaxPackets),
    holdMaxBytes: int(m.holdMaxBytes, `${path}.holdMaxBytes`, 65536 + 64, 64 << 20, d.holdMaxBytes),
    ttlMs: int(m.ttlMs, `${path}.ttlMs`, 1000, 86_400_000, d.ttlMs),
  };
  if (m.passwordFile !== undefined) {
    if (typeof m.passwordFile !== 'string' || m.passwordFile === '') throw new ConfigError(`${path}.passwordFile`, 'must be a file path');
    out.passwordFile = m.passwordFile;
  }
  return out;
}

/** The store's password: MPLB_TOKEN_STORE_PASSWORD, else the first line of tokenStore.passwordFile, else none. */
export function resolveStorePassword(ts: TokenStoreConfig, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.MPLB_TOKEN_STORE_PASSWORD) return env.MPLB_TOKEN_STORE_PASSWORD;
  if (!ts.passwordFile) return undefined;
  let text: string;
  try { text = readFileSync(ts.passwordFile, 'utf8'); } catch (e) { throw new ConfigError('tokenStore.passwordFile', `cannot read ${ts.passwordFile}: ${(e as Error).message}`); }
  const pw = text.split('\n')[0].trim();
  if (pw === '') throw new ConfigError('tokenStore.passwordFile', `${ts.passwordFile} is empty`);
  return pw;
}

export function validateRunConfig(doc: unknown): RunConfig {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ConfigError('(root)', 'must be a mapping with at least "vips"');
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d)) {
    if (!OWN_KEYS.includes(k) && !ENGINE_KEYS.includes(k)) throw new ConfigError(cut(k), `unknown field (allowed: ${[...OWN_KEYS, ...ENGINE_KEYS].join(', ')})`);
  }
  const dev = (d.device ?? {}) as Record<string, unknown>;
  if (typeof dev !== 'object' || Array.isArray(dev)) throw new ConfigError('device', 'must be a mapping');
  const DEVICE_KEYS = ['name', 'mtu', 'table', 'rulePriority', 'stateFile'];
  for (const k of Object.keys(dev)) if (!DEVICE_KEYS.includes(k)) throw new ConfigError(`device.${cut(k)}`, `unknown field (allowed: ${DEVICE_KEYS.join(', ')})`);
  const name = dev.name ?? DEVICE_DEFAULTS.name;
  if (typeof name !== 'string' || !/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new ConfigError('device.name', `must be an interface name of 1-15 letters, digits, '_', '.', '-', got ${show(name)}`);
  const mtu = dev.mtu ?? DEVICE_DEFAULTS.mtu;
  if (typeof mtu !== 'number' || !Number.isInteger(mtu) || mtu < 576 || mtu > 65535) throw new ConfigError('device.mtu', `must be an integer 576-65535, got ${show(mtu)}`);
  const table = int(dev.table, 'device.table', 1, 0xffffffff, DEVICE_DEFAULTS.table);
  // 253-255 are the kernel's default, main and local tables.
  if (table >= 253 && table <= 255) throw new ConfigError('device.table', `must not be 253-255 (the kernel's default, main and local tables), got ${table}`);
  // priority + 1 is used too, and both must come before the main table's rule (32766).
  const rulePriority = int(dev.rulePriority, 'device.rulePriority', 1, 32764, DEVICE_DEFAULTS.rulePriority);
  const stateFile = dev.stateFile;
  if (stateFile !== undefined && (typeof stateFile !== 'string' || !stateFile.startsWith('/') || stateFile.length > 4096 || stateFile.endsWith('/'))) {
    throw new ConfigError('device.stateFile', `must be an absolute file path, got ${show(stateFile)}`);
  }
  const engineDoc = Object.fromEntries(Object.entries(d).filter(([k]) => !OWN_KEYS.includes(k)));
  const engine = validateEngineConfig(engineDoc);
  checkRoutableAddresses(engine);
  const out: RunConfig = { device: { name, mtu, table, rulePriority, ...(stateFile === undefined ? {} : { stateFile }) }, engine, admin: validateAdminConfig(d.admin), health: validateHealthConfig(d.health, engine), log: validateLogConfig(d.log) };
  const tokenStore = validateTokenStoreConfig(d.tokenStore);
  if (tokenStore) out.tokenStore = tokenStore;
  // Set only when the file names it, so configs without it compare equal to what they were.
  if (d.datapath !== undefined) out.datapath = pick(d.datapath, 'datapath', DATAPATH_MODES, 'tun');
  if (d.fastpath !== undefined && d.fastpath !== null) {
    const m = mapping(d.fastpath, 'fastpath', ['maxFlows']);
    out.fastpath = { maxFlows: int(m.maxFlows, 'fastpath.maxFlows', 16, 1 << 24, defaultFastpathFlows(engine.tables.maxFlows)) };
  }
  return out;
}

/** The file's text; refused (before reading it) when it is larger than MAX_CONFIG_BYTES. */
function readConfigText(file: string): string {
  let fd: number;
  try { fd = openSync(file, 'r'); } catch (e) { throw new ConfigError(file, `cannot read: ${(e as Error).message}`); }
  try {
    const tooBig = (size: number) => new ConfigError(file, `the file is ${size} bytes, more than the ${MAX_CONFIG_BYTES}-byte limit of a config file`);
    let st;
    try { st = fstatSync(fd); } catch (e) { throw new ConfigError(file, `cannot read: ${(e as Error).message}`); }
    if (st.isFile() && st.size > MAX_CONFIG_BYTES) throw tooBig(st.size);
    // Read at most one byte past the cap, so a file that grows (or a pipe) cannot make this read without end.
    const buf = Buffer.alloc(MAX_CONFIG_BYTES + 1);
    let n = 0;
    try {
      for (let r; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0;) n += r;
    } catch (e) { throw new ConfigError(file, `cannot read: ${(e as Error).message}`); }
    if (n > MAX_CONFIG_BYTES) throw new ConfigError(file, `the file is more than the ${MAX_CONFIG_BYTES}-byte limit of a config file`);
    return buf.toString('utf8', 0, n);
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads and validates a YAML config file (at most MAX_CONFIG_BYTES). YAML syntax errors name the line and column;
 * an alias bomb and any other YAML failure are config errors too, never a stack trace.
 */
/** The yaml library, loaded when a file is outside the subset that yaml-subset.ts reads (its load takes 100-200 ms). */
const requireLazily = createRequire(import.meta.url);
const yamlLibrary = (): typeof import('yaml') => requireLazily('yaml') as typeof import('yaml');

export function loadRunConfig(file: string): RunConfig {
  const text = readConfigText(file);
  let doc: unknown = parseYamlSubset(text);
  if (doc === undefined) doc = parseWithLibrary(file, text);
  return validateRunConfig(doc);
}

function parseWithLibrary(file: string, text: string): unknown {
  const { parse: parseYaml, YAMLParseError } = yamlLibrary();
  try { return parseYaml(text, { maxAliasCount: MAX_YAML_ALIASES }); } catch (e) {
    if (e instanceof YAMLParseError) throw new ConfigError(file, `YAML syntax: ${cut(e.message.split('\n')[0], 200)}`);
    // yaml throws a ReferenceError when aliases would expand past maxAliasCount ("billion laughs").
    if (e instanceof ReferenceError && /alias/i.test(e.message)) throw new ConfigError(file, `YAML aliases expand past the limit of ${MAX_YAML_ALIASES} alias uses (weighted by the anchored nodes), which stops "billion laughs" alias bombs; write the repeated values out`);
    throw new ConfigError(file, `YAML: ${cut(String((e as Error)?.message ?? e).split('\n')[0], 200)}`);
  }
}

/** The admin token: MPLB_ADMIN_TOKEN, else admin.token, else the first line of admin.tokenFile, else none. */
export function resolveAdminToken(admin: AdminConfig, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const check = (t: string, from: string): string => {
    if (t.length < MIN_TOKEN_LENGTH || /\s/.test(t)) throw new ConfigError(from, `the admin token must be at least ${MIN_TOKEN_LENGTH} characters without spaces`);
    return t;
  };
  if (env.MPLB_ADMIN_TOKEN) return check(env.MPLB_ADMIN_TOKEN, 'MPLB_ADMIN_TOKEN');
  if (admin.token) return admin.token;
  if (admin.tokenFile) {
    let text: string;
    try { text = readFileSync(admin.tokenFile, 'utf8'); } catch (e) { throw new ConfigError('admin.tokenFile', `cannot read ${admin.tokenFile}: ${(e as Error).message}`); }
    return check(text.split('\n')[0].trim(), 'admin.tokenFile');
  }
  return undefined;
}
