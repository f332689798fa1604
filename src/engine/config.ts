// Engine configuration: the one place where every field has its default and its doc line, and validation
// that refuses a bad config with the field path and the reason (cold path; exceptions are fine here).
import { formatEndpoint, parseEndpoint, parseIp } from '../wire/addr.js';
import { isPrime } from './maglev.js';

export type Policy = 'maglev' | 'hash-5tuple' | 'hash-ip-pair';
export const POLICIES: readonly Policy[] = ['maglev', 'hash-5tuple', 'hash-ip-pair'];
/** What happens to an MP_JOIN SYN whose token maps to no live connection. */
export type UnknownTokenAnswer = 'hash' | 'drop' | 'reset';
export const UNKNOWN_TOKEN_ANSWERS: readonly UnknownTokenAnswer[] = ['hash', 'drop', 'reset'];

/** An ICMP error about a flow with no state: `hash` = where the VIP's policy sends that flow, `drop` = dropped. */
export type IcmpNoFlowAnswer = 'hash' | 'drop';
export const ICMP_NO_FLOW_ANSWERS: readonly IcmpNoFlowAnswer[] = ['hash', 'drop'];

export interface IcmpConfig {
  /** Answer ICMP/ICMPv6 echo requests to a VIP's address. Default true. */
  echoReply: boolean;
  /** Echo replies per second at most (token bucket on the engine's clock, burst of one second). Default 1000. */
  echoRatePerSec: number;
  /** Errors (fragmentation needed, packet too big, unreachable, time exceeded) about an unknown flow. Default 'hash'. */
  noFlowAnswer: IcmpNoFlowAnswer;
}

export interface BackendConfig {
  /** Backend address (IPv4 or IPv6, same family as its VIP). */
  address: string;
  /** Backend port; default: the VIP's port. */
  port?: number;
  /** Relative weight, integer 0..65535; 0 drains (no new connections; joins of existing ones still arrive). Default 1. */
  weight?: number;
  /**
   * Name of the machine behind this address, required in a VIP with a `service`: the backends of a service's VIPs
   * that share a name are one server, so a join arriving on the service's other-family VIP reaches that server.
   */
  server?: string;
}

export interface VipConfig {
  /** "addr:port" ("[v6]:port" for IPv6) that clients connect to. */
  address: string;
  backends: BackendConfig[];
  /** Selection policy for this VIP; default: the engine's `policy`. */
  policy?: Policy;
  /**
   * Dual stack: VIPs with the same service name (one IPv4, one IPv6) front the same servers (paired by their
   * backends' `server` names), so a join on either reaches the server of its connection, in the join's family.
   */
  service?: string;
}

export interface EngineConfig {
  vips: VipConfig[];
  /** Backend selection for new connections. Default 'maglev'. */
  policy: Policy;
  /** Steer MP_JOINs by token. Off = an MPTCP-unaware balancer (for comparisons). Default true. */
  mptcpAware: boolean;
  /** Answer to a join whose token is unknown or ambiguous. Default 'hash'. */
  unknownTokenAnswer: UnknownTokenAnswer;
  tables: {
    /** Subflow (TCP flow) entries; each is reachable from both directions. Default 1,048,576. */
    maxFlows: number;
    /** MPTCP connection entries (token -> backend). Default 524,288. */
    maxConnections: number;
    /** Maglev lookup table size, a prime. Default 65537. */
    maglevSize: number;
  };
  timeouts: {
    /** A flow that has seen only its SYN (or SYN/ACK). Default 10 s. */
    synMs: number;
    /** An established flow with no packets. Default 300 s. */
    establishedMs: number;
    /** After FIN in both directions. Default 10 s. */
    finMs: number;
    /** After a RST. Default 2 s. */
    rstMs: number;
    /** A connection's token outlives its last subflow by this much (Linux net.mptcp.close_timeout). Default 60 s. */
    tokenLingerMs: number;
  };
  /** Seed of the flow hashes; balancers in parallel must share it. Default 0x6d706c62. */
  hashSeed: number;
  /** ICMP and ICMPv6 handling (engine/icmp.ts). */
  icmp: IcmpConfig;
}

export const ENGINE_DEFAULTS: Omit<EngineConfig, 'vips'> = {
  policy: 'maglev',
  mptcpAware: true,
  unknownTokenAnswer: 'hash',
  tables: { maxFlows: 1 << 20, maxConnections: 1 << 19, maglevSize: 65537 },
  timeouts: { synMs: 10_000, establishedMs: 300_000, finMs: 10_000, rstMs: 2_000, tokenLingerMs: 60_000 },
  hashSeed: 0x6d706c62,
  icmp: { echoReply: true, echoRatePerSec: 1000, noFlowAnswer: 'hash' },
};

export class ConfigError extends Error {
  readonly code = 'ECONFIG';
  constructor(readonly path: string, readonly reason: string) {
    super(`${path}: ${reason}`);
    this.name = 'ConfigError';
  }
}

/** Longest text of a value (or a field name) echoed in an error; longer ones are cut and end in "...". */
export const ECHO_MAX = 64;

/** `text` cut to `max` (ECHO_MAX) characters ("..." marks the cut): a 50 MB value must not come back in the message. */
export function cut(text: string, max = ECHO_MAX): string {
  return text.length <= max ? text : `${text.slice(0, max)}...`;
}

/** A value as JSON for an error message, cut to ECHO_MAX characters. */
export function show(v: unknown): string {
  let t: string | undefined;
  try { t = JSON.stringify(v); } catch { t = undefined; }
  return cut(t ?? String(v));
}

function isObj(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function checkKeys(obj: Record<string, unknown>, allowed: readonly string[], path: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw new ConfigError(path ? `${path}.${cut(k)}` : cut(k), `unknown field (allowed: ${allowed.join(', ')})`);
  }
}

function intIn(v: unknown, path: string, min: number, max: number, def: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new ConfigError(path, `must be an integer, got ${show(v)}`);
  if (v < min || v > max) throw new ConfigError(path, `must be between ${min} and ${max}, got ${v}`);
  return v;
}

/** Service and server names: short, printable, no spaces (they appear in errors and in the admin API). */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function nameIn(v: unknown, path: string): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !NAME_RE.test(v)) throw new ConfigError(path, `must be a name of 1-64 letters, digits, ".", "_" or "-" (starting with a letter or digit), got ${show(v)}`);
  return v;
}

function oneOf<T extends string>(v: unknown, path: string, allowed: readonly T[], def: T): T {
  if (v === undefined) return def;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new ConfigError(path, `must be one of ${allowed.join(', ')}, got ${show(v)}`);
  }
  return v as T;
}

/** Validates and fills defaults. `path` prefixes field names in errors (e.g. "engine"). */
export function validateEngineConfig(input: unknown, path = ''): EngineConfig {
  const p = (k: string) => (path ? `${path}.${k}` : k);
  if (!isObj(input)) throw new ConfigError(path || '(root)', 'must be a mapping');
  checkKeys(input, ['vips', 'policy', 'mptcpAware', 'unknownTokenAnswer', 'tables', 'timeouts', 'hashSeed', 'icmp'], path);
  const d = ENGINE_DEFAULTS;
  const policy = oneOf(input.policy, p('policy'), POLICIES, d.policy);
  const mptcpAware = input.mptcpAware === undefined ? d.mptcpAware : input.mptcpAware;
  if (typeof mptcpAware !== 'boolean') throw new ConfigError(p('mptcpAware'), 'must be true or false');
  const unknownTokenAnswer = oneOf(input.unknownTokenAnswer, p('unknownTokenAnswer'), UNKNOWN_TOKEN_ANSWERS, d.unknownTokenAnswer);

  const t = input.tables ?? {};
  if (!isObj(t)) throw new ConfigError(p('tables'), 'must be a mapping');
  checkKeys(t, ['maxFlows', 'maxConnections', 'maglevSize'], p('tables'));
  const tables = {
    maxFlows: intIn(t.maxFlows, p('tables.maxFlows'), 16, 1 << 25, d.tables.maxFlows),
    maxConnections: intIn(t.maxConnections, p('tables.maxConnections'), 16, 1 << 24, d.tables.maxConnections),
    maglevSize: intIn(t.maglevSize, p('tables.maglevSize'), 3, 1 << 24, d.tables.maglevSize),
  };
  if (!isPrime(tables.maglevSize)) throw new ConfigError(p('tables.maglevSize'), `must be a prime (e.g. 65537), got ${tables.maglevSize}`);

  const to = input.timeouts ?? {};
  if (!isObj(to)) throw new ConfigError(p('timeouts'), 'must be a mapping');
  checkKeys(to, ['synMs', 'establishedMs', 'finMs', 'rstMs', 'tokenLingerMs'], p('timeouts'));
  // Ages are compared modulo 2^30 ms (small integers on the hot path), so every timeout stays below 2^29 ms.
  const maxMs = 6 * 24 * 3600 * 1000;
  const timeouts = {
    synMs: intIn(to.synMs, p('timeouts.synMs'), 1, maxMs, d.timeouts.synMs),
    establishedMs: intIn(to.establishedMs, p('timeouts.establishedMs'), 1, maxMs, d.timeouts.establishedMs),
    finMs: intIn(to.finMs, p('timeouts.finMs'), 1, maxMs, d.timeouts.finMs),
    rstMs: intIn(to.rstMs, p('timeouts.rstMs'), 1, maxMs, d.timeouts.rstMs),
    tokenLingerMs: intIn(to.tokenLingerMs, p('timeouts.tokenLingerMs'), 0, maxMs, d.timeouts.tokenLingerMs),
  };
  const hashSeed = intIn(input.hashSeed, p('hashSeed'), 0, 0xffffffff, d.hashSeed);

  const ic = input.icmp ?? {};
  if (!isObj(ic)) throw new ConfigError(p('icmp'), 'must be a mapping');
  checkKeys(ic, ['echoReply', 'echoRatePerSec', 'noFlowAnswer'], p('icmp'));
  const echoReply = ic.echoReply === undefined ? d.icmp.echoReply : ic.echoReply;
  if (typeof echoReply !== 'boolean') throw new ConfigError(p('icmp.echoReply'), `must be true or false, got ${show(echoReply)}`);
  const icmp: IcmpConfig = {
    echoReply,
    echoRatePerSec: intIn(ic.echoRatePerSec, p('icmp.echoRatePerSec'), 1, 1_000_000, d.icmp.echoRatePerSec),
    noFlowAnswer: oneOf(ic.noFlowAnswer, p('icmp.noFlowAnswer'), ICMP_NO_FLOW_ANSWERS, d.icmp.noFlowAnswer),
  };

  if (!Array.isArray(input.vips)) throw new ConfigError(p('vips'), 'must be a list of VIPs');
  const seen = new Set<string>();
  /** "service/family" -> index of its VIP. */
  const services = new Map<string, number>();
  const vips: VipConfig[] = input.vips.map((raw, i) => {
    const vp = p(`vips[${i}]`);
    if (!isObj(raw)) throw new ConfigError(vp, 'must be a mapping with address and backends');
    checkKeys(raw, ['address', 'backends', 'policy', 'service'], vp);
    if (typeof raw.address !== 'string') throw new ConfigError(`${vp}.address`, 'must be "addr:port"');
    // The engine ignores a zone (fe80::1%eth0): two zones would be one VIP, and the routes cannot carry it.
    if (raw.address.includes('%')) throw new ConfigError(`${vp}.address`, `zone-scoped addresses are not supported (the engine and the routes ignore the zone), got ${show(raw.address)}`);
    const ep = parseEndpoint(raw.address);
    if (!ep || ep.port === undefined) throw new ConfigError(`${vp}.address`, `must be "addr:port" with a port 1-65535, got ${show(raw.address)}`);
    const key = `${ep.addr.bytes.join('.')}/${ep.port}`;
    if (seen.has(key)) throw new ConfigError(`${vp}.address`, `duplicate VIP ${raw.address}`);
    seen.add(key);
    const vipPolicy = raw.policy === undefined ? undefined : oneOf(raw.policy, `${vp}.policy`, POLICIES, policy);
    const service = nameIn(raw.service, `${vp}.service`);
    if (service !== undefined) {
      // One VIP per family: a join on the other family's VIP then has exactly one address to go to.
      const k = `${service}/${ep.addr.family}`;
      const other = services.get(k);
      if (other !== undefined) throw new ConfigError(`${vp}.service`, `service ${show(service)} already has an IPv${ep.addr.family} VIP (vips[${other}]); its VIPs must be one IPv4 and one IPv6`);
      services.set(k, i);
    }
    if (!Array.isArray(raw.backends)) throw new ConfigError(`${vp}.backends`, 'must be a list');
    const bseen = new Set<string>();
    const names = new Set<string>();
    const backends: BackendConfig[] = raw.backends.map((b, j) => {
      const bp = `${vp}.backends[${j}]`;
      if (!isObj(b)) throw new ConfigError(bp, 'must be a mapping with address (and optional port, weight)');
      checkKeys(b, ['address', 'port', 'weight', 'server'], bp);
      if (typeof b.address !== 'string') throw new ConfigError(`${bp}.address`, 'must be an IP address');
      if (b.address.includes('%')) throw new ConfigError(`${bp}.address`, `zone-scoped addresses are not supported (the engine and the routes ignore the zone), got ${show(b.address)}`);
      const a = parseIp(b.address);
      if (!a) throw new ConfigError(`${bp}.address`, `not an IP address: ${show(b.address)}`);
      if (a.family !== ep.addr.family) throw new ConfigError(`${bp}.address`, `IPv${a.family} backend for an IPv${ep.addr.family} VIP`);
      const port = intIn(b.port, `${bp}.port`, 1, 65535, ep.port!);
      const weight = intIn(b.weight, `${bp}.weight`, 0, 65535, 1);
      // Canonical: 2001:db8::2 and 2001:DB8:0:0::2 are one backend (the engine's id), whatever the spelling.
      const bkey = formatEndpoint(a.bytes, 0, a.bytes.length, port);
      if (bseen.has(bkey)) throw new ConfigError(`${bp}`, `duplicate backend ${bkey}`);
      bseen.add(bkey);
      const server = nameIn(b.server, `${bp}.server`);
      if (service === undefined && server !== undefined) throw new ConfigError(`${bp}.server`, `names a server across a service's VIPs, but ${vp} has no service`);
      if (service !== undefined) {
        if (server === undefined) throw new ConfigError(`${bp}.server`, `required in a VIP of service ${show(service)} (the name pairs this address with the same server's address in the service's other VIP)`);
        if (names.has(server)) throw new ConfigError(`${bp}.server`, `server ${show(server)} appears twice in ${vp}`);
        names.add(server);
      }
      return server === undefined ? { address: b.address, port, weight } : { address: b.address, port, weight, server };
    });
    return service === undefined ? { address: raw.address, backends, policy: vipPolicy } : { address: raw.address, backends, policy: vipPolicy, service };
  });
  return { vips, policy, mptcpAware, unknownTokenAnswer, tables, timeouts, hashSeed, icmp };
}
