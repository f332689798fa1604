// Testbed: network namespaces with real Linux MPTCP hosts (a client with two rate-limited links, a
// balancer namespace, N servers), recorded in a JSON state file so any process can tear them down.
// With `balancers: N >= 2` (a cluster): a router namespace in front of N balancer namespaces spreads the
// client's traffic to the VIPs with an L4 ECMP hash, the servers sit on one LAN behind the balancers and send
// their replies back through any of them (ECMP too), and a namespace runs redis-server for the balancers.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { ipn, listNetns, netnsPids, run, sleepSync, sysctlIn, TestbedError, tryRun } from './netns.js';
import { findRedisServer, processGone, startRedis, stopRedis, type RedisInfo } from './redis.js';

export { TestbedError } from './netns.js';
export type { RedisInfo } from './redis.js';

export type TestbedMode = 'balancer' | 'noBalancer';

export interface TestbedOptions {
  /** 6 lowercase letters or digits; random (hex) when omitted. Namespace names are mplb-<runId>-<role>. */
  runId?: string;
  /** 'noBalancer': VIP lives on server 1 (lo) and the balancer namespace just routes to it (the ceiling).
   *  'balancer': VIP routing is left to `mplb run` (routes.ts) inside the balancer namespace. Default 'balancer'. */
  mode?: TestbedMode;
  /** Number of servers (default 2). */
  servers?: number;
  /** tbf rate per client link in Mbit/s, applied on both ends (both directions). 0 or null = no limit. Default 50. */
  rateMbit?: number | null;
  /** Client addresses on link 0 and link 1 (each gets a /24; the balancer side takes .1, or .254 if taken). */
  clientAddrs?: [string, string];
  /** Virtual addresses (IPv4). Default ['198.19.0.10']. */
  vips?: string[];
  /** Configure MPTCP limits and the client's subflow endpoint (default true). */
  mptcp?: boolean;
  /** Keep the testbed when this process exits (default false: removed on exit, SIGINT, SIGTERM). */
  persist?: boolean;
  /** Where state files go (default os.tmpdir()/mplb-testbeds). */
  stateDir?: string;
  /**
   * Balancer namespaces, 1-16 (default 1: today's topology, the balancer is the client's gateway). With 2 or more,
   * a router namespace takes the client's two links and routes each VIP over the balancers with a multipath route
   * (one next hop per balancer, net.ipv4.fib_multipath_hash_policy=1: L4 hash), so that the subflows of one MPTCP
   * connection can reach different balancers; the servers share a LAN with the balancers and their default route
   * is ECMP over the balancers too, so a reply may return through a balancer other than the one its SYN passed.
   */
  balancers?: number;
  /** Run redis-server in its own namespace on a control network every balancer reaches (default: with 2+ balancers). */
  redis?: boolean;
  /** redis port (default 6379). */
  redisPort?: number;
  /**
   * Dual stack: every link also gets an IPv6 address (ULA, `nodad`): the IPv4 address 198.(18|19).X.Y becomes
   * fd00:(18|19):X::Y in a /64 per /24, with IPv6 forwarding, routes, policy rules, MPTCP endpoints and (cluster)
   * multipath routes mirroring IPv4's. Default false: IPv4 only, as before.
   */
  ipv6?: boolean;
  /** IPv6 virtual addresses (with ipv6). Default: the IPv6 mirror of each of `vips`. */
  vips6?: string[];
}

export interface LinkInfo {
  /** Device name inside its namespace. */
  dev: string;
  addr: string;
  prefixLen: number;
  /** Device and address at the other end. */
  peerDev: string;
  peerAddr: string;
  /** With ipv6: this end's and the other end's IPv6 addresses (a /64). */
  addr6?: string;
  peerAddr6?: string;
}

/** One balancer namespace; index i = `balancers[i]` (namespace `lb` with 1 balancer, `lb1`...`lbN` otherwise). */
export interface BalancerInfo {
  index: number;
  ns: string;
  /** Links towards the client: the two client links (1 balancer), or the uplink to the router (cluster). */
  clientLinks: LinkInfo[];
  /** Links towards the servers: one per server (1 balancer), or the LAN port (cluster). */
  serverLinks: LinkInfo[];
  /** Cluster: its address on the router link, the router's ECMP next hop for the VIPs. */
  uplinkAddr?: string;
  /** Cluster: its address on the server LAN, a next hop of the servers' default route. */
  lanAddr?: string;
  /** Cluster with ipv6: the IPv6 mirrors of uplinkAddr and lanAddr. */
  uplinkAddr6?: string;
  lanAddr6?: string;
  /** With redis: its address on the control network. */
  ctlAddr?: string;
}

/** Cluster: the router in front of the balancers. */
export interface RouterInfo {
  ns: string;
  /** Router side of the client's two links (rate-limited like the client side). */
  clientLinks: [LinkInfo, LinkInfo];
  /** balancerLinks[i]: router side of the link to balancer i (its peerAddr is the ECMP next hop). */
  balancerLinks: LinkInfo[];
}

/** Cluster: which balancers (indices) are next hops now, towards the VIPs (router) and back (servers). */
export interface EcmpState {
  toVips: number[];
  fromServers: number[];
}

export interface WithdrawOptions {
  /** Also take the balancer out of the servers' return route (default true, as when it fails or is stopped). */
  returnPath?: boolean;
}

export interface TestbedHandle {
  runId: string;
  mode: TestbedMode;
  createdAt: string;
  /** PID of the process that made it. */
  creatorPid: number;
  persist: boolean;
  stateFile: string;
  rateMbit: number | null;
  vips: string[];
  /** With ipv6 (else empty): the IPv6 VIPs. */
  vips6: string[];
  ipv6: boolean;
  /**
   * `balancer` is balancer 0's namespace (the only one with 1 balancer); `balancers` lists all of them. Cluster
   * only: `router`, `switch` (the LAN and control bridges); with redis: `redis` (and `switch`).
   */
  namespaces: { client: string; balancer: string; servers: string[]; balancers: string[]; router?: string; switch?: string; redis?: string };
  client: { addrs: [string, string]; links: [LinkInfo, LinkInfo]; addrs6?: [string, string] };
  /** Balancer 0's view: links towards the client (two, or the router uplink) and towards the servers. */
  balancer: { clientLinks: LinkInfo[]; serverLinks: LinkInfo[] };
  /** Every balancer (one with 1 balancer). */
  balancers: BalancerInfo[];
  /** Cluster only. */
  router?: RouterInfo;
  /** With redis. */
  redis?: RedisInfo;
  /** Cluster only: the next hops in use (see withdrawBalancer). */
  ecmp?: EcmpState;
  /** `link`: the server's link (cluster: its LAN port; peerAddr is balancer 0). `gateways`: its default route's next hops. */
  servers: Array<{ ns: string; addr: string; link: LinkInfo; gateways: string[]; addr6?: string; gateways6?: string[] }>;
  /** Every command run, in order (for debugging). */
  log: string[];
  /**
   * Cluster: takes balancer i out of the router's VIP routes (`ip route replace` with the remaining next hops)
   * and, unless returnPath is false, out of the servers' default routes. Refuses to withdraw the last one.
   */
  withdrawBalancer(i: number, opts?: WithdrawOptions): void;
  /** Cluster: puts balancer i back as a next hop in both directions. */
  restoreBalancer(i: number): void;
}

export interface TestbedStatusEntry {
  runId: string;
  stateFile: string;
  mode?: TestbedMode;
  creatorPid?: number;
  creatorAlive?: boolean;
  persist?: boolean;
  balancers?: number;
  redis?: { pid: number; alive: boolean; host: string; port: number };
  namespaces: Array<{ name: string; exists: boolean }>;
}

export interface TestbedStatus {
  testbeds: TestbedStatusEntry[];
  /** mplb-xxxxxx-* namespaces that no state file mentions. */
  orphanNamespaces: string[];
}

// Run ids: 6 lowercase letters or digits (random ones are hex; a caller may pick its own, e.g. "ds" + 4 hex).
const RUN_ID_RE = /^[0-9a-z]{6}$/;
const NS_RE = /^mplb-([0-9a-z]{6})-/;

export function defaultStateDir(): string {
  return path.join(os.tmpdir(), 'mplb-testbeds');
}

function ipv4Parts(a: string): number[] {
  if (net.isIPv4(a) === false) throw new TestbedError('TESTBED_BAD_OPTION', `"${a}" is not an IPv4 address`);
  return a.split('.').map(Number);
}

/** The balancer-side address for a client address: .1 of the same /24 (.254 if the client has .1). */
function gatewayFor(a: string): string {
  const p = ipv4Parts(a);
  return `${p[0]}.${p[1]}.${p[2]}.${p[3] === 1 ? 254 : 1}`;
}

function subnet24(a: string): string {
  const p = ipv4Parts(a);
  return `${p[0]}.${p[1]}.${p[2]}.0/24`;
}

/**
 * The IPv6 mirror of a testbed IPv4 address: 198.B.C.D -> fd00:B:C::D (the decimal digits read as hex groups), in
 * the canonical text form (as ss and ip print it). ULA space (RFC 4193), so nothing leaves the namespaces.
 */
export function mirror6(a: string): string {
  const p = ipv4Parts(a);
  return p[2] === 0 ? `fd00:${p[1]}::${p[3]}` : `fd00:${p[1]}:${p[2]}::${p[3]}`;
}

/** The /64 of mirror6(a). */
function subnet64(a: string): string {
  const p = ipv4Parts(a);
  return p[2] === 0 ? `fd00:${p[1]}::/64` : `fd00:${p[1]}:${p[2]}::/64`;
}

function inBenchRange(a: string): boolean {
  const p = ipv4Parts(a);
  return p[0] === 198 && (p[1] === 18 || p[1] === 19);
}

// Cluster addressing (balancers >= 2), all in 198.18.0.0/15: router <-> balancer i on 198.18.(101+i).0/24
// (router .1 dev rb<i+1>, balancer .2 dev up0); the server LAN 198.18.10.0/24 (balancer i .(1+i) dev lan0,
// server i .(101+i) dev eth0); the control network 198.18.9.0/24 (balancer i .(1+i) dev ctl0, redis .254).
const LAN_NET = '198.18.10';
const CTL_NET = '198.18.9';
const REDIS_ADDR = `${CTL_NET}.254`;
const uplinkNet = (i: number) => `198.18.${101 + i}`;
const MAX_BALANCERS = 16;
const MAX_CLUSTER_SERVERS = 100;

// Live handles of this process that must go when it exits.
const owned = new Map<string, TestbedHandle>();
let hooksInstalled = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const h of [...owned.values()]) downOne(h.runId, h.stateFile, h);
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => {
      for (const h of [...owned.values()]) downOne(h.runId, h.stateFile, h);
      process.removeListener(sig, handler);
      // Die of the same signal unless someone else listens for it.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, handler);
  }
}

function writeState(h: TestbedHandle): void {
  fs.mkdirSync(path.dirname(h.stateFile), { recursive: true });
  const tmp = `${h.stateFile}.${process.pid}.tmp`;
  // The methods are not enumerable: the file holds data only (testbedLoad puts them back).
  fs.writeFileSync(tmp, JSON.stringify(h, null, 2));
  fs.renameSync(tmp, h.stateFile);
}

/** Every namespace a (possibly partial, e.g. older) handle names. */
function namespacesOf(ns: Partial<TestbedHandle['namespaces']> | undefined): string[] {
  if (!ns) return [];
  const names = [ns.client, ns.router, ns.balancer, ...(ns.balancers ?? []), ns.switch, ns.redis, ...(ns.servers ?? [])];
  return [...new Set(names.filter((n): n is string => typeof n === 'string' && n.length > 0))];
}

/** `nexthop via A dev D nexthop via B dev E ...` */
function nexthopArgs(hops: Array<[string, string]>): string[] {
  return hops.flatMap(([via, dev]) => ['nexthop', 'via', via, 'dev', dev]);
}

/** Writes the router's VIP routes and the servers' default routes for h.ecmp (replace: no gap in between). */
function applyEcmp(h: TestbedHandle): void {
  const r = h.router, e = h.ecmp;
  if (!r || !e) throw new TestbedError('TESTBED_BAD_OPTION', `testbed ${h.runId} has one balancer: there is no ECMP route to change`);
  const toVips = nexthopArgs(e.toVips.map((i) => [h.balancers[i].uplinkAddr!, r.balancerLinks[i].dev]));
  for (const v of h.vips) {
    const args = ['route', 'replace', `${v}/32`, ...toVips];
    h.log.push(`ip -n ${r.ns} ${args.join(' ')}`);
    ipn(r.ns, args);
  }
  const toVips6 = nexthopArgs(e.toVips.map((i) => [h.balancers[i].uplinkAddr6 ?? '', r.balancerLinks[i].dev]));
  for (const v of h.vips6 ?? []) {
    const args = ['-6', 'route', 'replace', `${v}/128`, ...toVips6];
    h.log.push(`ip -n ${r.ns} ${args.join(' ')}`);
    ipn(r.ns, args);
  }
  for (const s of h.servers) {
    s.gateways = e.fromServers.map((i) => h.balancers[i].lanAddr!);
    const args = ['route', 'replace', 'default', ...nexthopArgs(s.gateways.map((g) => [g, s.link.dev]))];
    h.log.push(`ip -n ${s.ns} ${args.join(' ')}`);
    ipn(s.ns, args);
    if (!h.ipv6) continue;
    s.gateways6 = e.fromServers.map((i) => h.balancers[i].lanAddr6!);
    const args6 = ['-6', 'route', 'replace', 'default', ...nexthopArgs(s.gateways6.map((g) => [g, s.link.dev]))];
    h.log.push(`ip -n ${s.ns} ${args6.join(' ')}`);
    ipn(s.ns, args6);
  }
}

function checkBalancerIndex(h: TestbedHandle, i: number): void {
  if (!h.router || !h.ecmp) throw new TestbedError('TESTBED_BAD_OPTION', `testbed ${h.runId} has one balancer: there is no ECMP route to change`);
  if (!Number.isInteger(i) || i < 0 || i >= h.balancers.length) throw new TestbedError('TESTBED_BAD_OPTION', `balancer index ${i} is not 0-${h.balancers.length - 1}`);
}

/** See TestbedHandle.withdrawBalancer. */
export function withdrawBalancer(h: TestbedHandle, i: number, opts: WithdrawOptions = {}): void {
  checkBalancerIndex(h, i);
  const e = h.ecmp!;
  const toVips = e.toVips.filter((x) => x !== i);
  const fromServers = opts.returnPath === false ? e.fromServers : e.fromServers.filter((x) => x !== i);
  if (toVips.length === 0 || fromServers.length === 0) throw new TestbedError('TESTBED_BAD_OPTION', `balancer ${i} is the last next hop left: withdrawing it would leave no route`);
  h.ecmp = { toVips, fromServers };
  applyEcmp(h);
  writeState(h);
}

/** See TestbedHandle.restoreBalancer. */
export function restoreBalancer(h: TestbedHandle, i: number): void {
  checkBalancerIndex(h, i);
  const add = (l: number[]) => [...new Set([...l, i])].sort((a, b) => a - b);
  h.ecmp = { toVips: add(h.ecmp!.toVips), fromServers: add(h.ecmp!.fromServers) };
  applyEcmp(h);
  writeState(h);
}

/**
 * With redis: kills the store outright (SIGKILL: no goodbye to its clients) when `kill`, then starts it again on
 * the same address, port and password; the state file follows, so teardown stops the new one.
 */
export function killRedis(h: TestbedHandle): void {
  const r = h.redis;
  if (!r) throw new TestbedError('TESTBED_BAD_OPTION', `testbed ${h.runId} has no redis`);
  try { process.kill(r.pid, 'SIGKILL'); } catch { /* gone already */ }
  for (const t0 = Date.now(); !processGone(r.pid) && Date.now() - t0 < 2000;) { /* wait for the kernel to reap it */ }
}

export function restartRedis(h: TestbedHandle): void {
  const r = h.redis;
  if (!r) throw new TestbedError('TESTBED_BAD_OPTION', `testbed ${h.runId} has no redis`);
  if (!processGone(r.pid)) stopRedis(r);
  h.redis = startRedis(r.ns, { host: r.host, port: r.port, password: r.password, dir: r.dir });
  writeState(h);
}

function attachMethods(h: TestbedHandle): TestbedHandle {
  Object.defineProperties(h, {
    withdrawBalancer: { value: (i: number, o?: WithdrawOptions) => withdrawBalancer(h, i, o), enumerable: false, configurable: true },
    restoreBalancer: { value: (i: number) => restoreBalancer(h, i), enumerable: false, configurable: true },
  });
  return h;
}

/** Builds the testbed. On any failure everything made so far is removed and the error rethrown. */
export function testbedUp(opts: TestbedOptions = {}): TestbedHandle {
  const runId = opts.runId ?? randomBytes(3).toString('hex');
  if (!RUN_ID_RE.test(runId)) throw new TestbedError('TESTBED_BAD_OPTION', `runId "${runId}" must be 6 lowercase letters or digits`);
  const mode = opts.mode ?? 'balancer';
  const nServers = opts.servers ?? 2;
  if (!Number.isInteger(nServers) || nServers < 1 || nServers > 200) throw new TestbedError('TESTBED_BAD_OPTION', `servers must be 1..200, got ${nServers}`);
  const nBalancers = opts.balancers ?? 1;
  if (!Number.isInteger(nBalancers) || nBalancers < 1 || nBalancers > MAX_BALANCERS) throw new TestbedError('TESTBED_BAD_OPTION', `balancers must be 1..${MAX_BALANCERS}, got ${nBalancers}`);
  const cluster = nBalancers > 1;
  if (cluster && mode !== 'balancer') throw new TestbedError('TESTBED_BAD_OPTION', `mode ${mode} has no balancer: it needs balancers = 1, got ${nBalancers}`);
  if (cluster && nServers > MAX_CLUSTER_SERVERS) throw new TestbedError('TESTBED_BAD_OPTION', `a cluster testbed has at most ${MAX_CLUSTER_SERVERS} servers, got ${nServers}`);
  const withRedis = opts.redis ?? cluster;
  const redisPort = opts.redisPort ?? 6379;
  if (!Number.isInteger(redisPort) || redisPort < 1 || redisPort > 65535) throw new TestbedError('TESTBED_BAD_OPTION', `redisPort must be 1..65535, got ${redisPort}`);
  if (withRedis && !findRedisServer()) throw new TestbedError('TESTBED_TOOL_MISSING', '"redis-server" was not found: install the Debian package redis-server (the cluster testbed runs its token store)');
  const rate = opts.rateMbit === undefined ? 50 : opts.rateMbit;
  const clientAddrs: [string, string] = opts.clientAddrs ?? ['198.18.1.2', '198.18.2.2'];
  const vips = opts.vips ?? ['198.19.0.10'];
  for (const a of [...clientAddrs, ...vips]) {
    if (!inBenchRange(a)) throw new TestbedError('TESTBED_BAD_OPTION', `address ${a} is outside 198.18.0.0/15 (the benchmarking range the testbed must use)`);
  }
  const v6 = opts.ipv6 ?? false;
  if (opts.vips6 !== undefined && !v6) throw new TestbedError('TESTBED_BAD_OPTION', 'vips6 needs ipv6: true');
  const vips6 = v6 ? (opts.vips6 ?? vips.map(mirror6)) : [];
  for (const a of vips6) {
    // Only the testbed's own ULA prefix: fd00:18::/32 and fd00:19::/32 mirror the IPv4 benchmarking range.
    if (!net.isIPv6(a) || !/^fd00:1[89]:/.test(a)) throw new TestbedError('TESTBED_BAD_OPTION', `IPv6 VIP ${a} is outside fd00:18::/32 and fd00:19::/32 (the testbed's mirror of 198.18.0.0/15)`);
  }
  // Subnets the testbed itself uses behind the client links.
  const serverSubnets = cluster
    ? [`${LAN_NET}.0/24`, ...Array.from({ length: nBalancers }, (_, i) => `${uplinkNet(i)}.0/24`)]
    : Array.from({ length: nServers }, (_, i) => `198.18.${10 + i + 1}.0/24`);
  if (withRedis) serverSubnets.push(`${CTL_NET}.0/24`);
  const clientSubnets = clientAddrs.map(subnet24);
  if (clientSubnets[0] === clientSubnets[1]) throw new TestbedError('TESTBED_BAD_OPTION', `the two client addresses must be in different /24s (${clientAddrs.join(', ')})`);
  for (const s of clientSubnets) {
    if (serverSubnets.includes(s)) {
      throw new TestbedError('TESTBED_BAD_OPTION', cluster || withRedis
        ? `client subnet ${s} overlaps a testbed network (${serverSubnets.join(', ')})`
        : `client subnet ${s} overlaps a server link (198.18.11.0/24 upwards are used for servers)`);
    }
  }
  for (const v of vips) {
    if (clientSubnets.includes(subnet24(v)) || serverSubnets.includes(subnet24(v))) throw new TestbedError('TESTBED_BAD_OPTION', `VIP ${v} falls inside a link subnet`);
  }
  const existing = new Set(listNetns());
  const prefix = `mplb-${runId}`;
  if ([...existing].some((n) => n.startsWith(`${prefix}-`))) throw new TestbedError('TESTBED_BAD_OPTION', `namespaces for run ${runId} already exist`);

  const nsC = `${prefix}-cli`;
  const nsBs = cluster ? Array.from({ length: nBalancers }, (_, i) => `${prefix}-lb${i + 1}`) : [`${prefix}-lb`];
  const nsB = nsBs[0];
  const nsS = Array.from({ length: nServers }, (_, i) => `${prefix}-srv${i + 1}`);
  const nsR = cluster ? `${prefix}-rtr` : undefined;
  const nsSw = cluster || withRedis ? `${prefix}-sw` : undefined;
  const nsRedis = withRedis ? `${prefix}-redis` : undefined;
  const stateDir = opts.stateDir ?? defaultStateDir();
  const stateFile = path.join(stateDir, `${runId}.json`);
  const link = (dev: string, addr: string, peerDev: string, peerAddr: string): LinkInfo => ({ dev, addr, prefixLen: 24, peerDev, peerAddr, ...(v6 ? { addr6: mirror6(addr), peerAddr6: mirror6(peerAddr) } : {}) });

  // The client's links end at the balancer (1) or at the router (cluster).
  const edgeDev = (i: number) => (cluster ? `rc${i}` : `lbc${i}`);
  const cLinks: [LinkInfo, LinkInfo] = [
    link('c0', clientAddrs[0], edgeDev(0), gatewayFor(clientAddrs[0])),
    link('c1', clientAddrs[1], edgeDev(1), gatewayFor(clientAddrs[1])),
  ];
  const edgeLinks: [LinkInfo, LinkInfo] = [link(edgeDev(0), cLinks[0].peerAddr, 'c0', clientAddrs[0]), link(edgeDev(1), cLinks[1].peerAddr, 'c1', clientAddrs[1])];
  let servers: TestbedHandle['servers'];
  let balancers: BalancerInfo[];
  let router: RouterInfo | undefined;
  if (!cluster) {
    servers = nsS.map((ns, i) => ({ ns, addr: `198.18.${10 + i + 1}.2`, link: link('eth0', `198.18.${10 + i + 1}.2`, `lbs${i + 1}`, `198.18.${10 + i + 1}.1`), gateways: [`198.18.${10 + i + 1}.1`],
      ...(v6 ? { addr6: mirror6(`198.18.${10 + i + 1}.2`), gateways6: [mirror6(`198.18.${10 + i + 1}.1`)] } : {}) }));
    balancers = [{ index: 0, ns: nsB, clientLinks: edgeLinks, serverLinks: servers.map((s) => link(s.link.peerDev, s.link.peerAddr, s.link.dev, s.addr)) }];
  } else {
    const lanAddr = (i: number) => `${LAN_NET}.${1 + i}`;
    servers = nsS.map((ns, i) => ({ ns, addr: `${LAN_NET}.${101 + i}`, link: link('eth0', `${LAN_NET}.${101 + i}`, `s${i + 1}`, lanAddr(0)), gateways: nsBs.map((_, j) => lanAddr(j)),
      ...(v6 ? { addr6: mirror6(`${LAN_NET}.${101 + i}`), gateways6: nsBs.map((_, j) => mirror6(lanAddr(j))) } : {}) }));
    balancers = nsBs.map((ns, i) => ({
      index: i,
      ns,
      clientLinks: [link('up0', `${uplinkNet(i)}.2`, `rb${i + 1}`, `${uplinkNet(i)}.1`)],
      // The LAN port's peer is a bridge port; peerAddr names the first server.
      serverLinks: [link('lan0', lanAddr(i), `l${i + 1}`, servers[0].addr)],
      uplinkAddr: `${uplinkNet(i)}.2`,
      lanAddr: lanAddr(i),
      ...(v6 ? { uplinkAddr6: mirror6(`${uplinkNet(i)}.2`), lanAddr6: mirror6(lanAddr(i)) } : {}),
    }));
    router = { ns: nsR!, clientLinks: edgeLinks, balancerLinks: balancers.map((b) => link(b.clientLinks[0].peerDev, b.clientLinks[0].peerAddr, b.clientLinks[0].dev, b.clientLinks[0].addr)) };
  }
  if (withRedis) balancers.forEach((b, i) => { b.ctlAddr = `${CTL_NET}.${1 + i}`; });

  const h = attachMethods({
    runId,
    mode,
    createdAt: new Date().toISOString(),
    creatorPid: process.pid,
    persist: opts.persist ?? false,
    stateFile,
    rateMbit: rate && rate > 0 ? rate : null,
    vips,
    vips6,
    ipv6: v6,
    namespaces: { client: nsC, balancer: nsB, servers: nsS, balancers: nsBs, ...(nsR ? { router: nsR } : {}), ...(nsSw ? { switch: nsSw } : {}), ...(nsRedis ? { redis: nsRedis } : {}) },
    client: { addrs: clientAddrs, links: cLinks, ...(v6 ? { addrs6: [mirror6(clientAddrs[0]), mirror6(clientAddrs[1])] as [string, string] } : {}) },
    balancer: { clientLinks: balancers[0].clientLinks, serverLinks: balancers[0].serverLinks },
    balancers,
    ...(router ? { router, ecmp: { toVips: nsBs.map((_, i) => i), fromServers: nsBs.map((_, i) => i) } } : {}),
    servers,
    log: [],
  } as unknown as TestbedHandle);
  // Record before creating anything so a crash half-way can still be cleaned up from the state file.
  writeState(h);
  if (!h.persist) {
    owned.set(runId, h);
    installExitHooks();
  }
  const ip = (ns: string, args: string[]) => {
    h.log.push(`ip -n ${ns} ${args.join(' ')}`);
    ipn(ns, args);
  };
  const sysctl = (ns: string, k: string, v: string) => {
    h.log.push(`[${ns}] sysctl ${k}=${v}`);
    sysctlIn(ns, k, v);
  };
  const tc = (ns: string, args: string[]) => {
    h.log.push(`tc -n ${ns} ${args.join(' ')}`);
    run('tc', ['-n', ns, ...args]);
  };
  /** A veth pair made directly inside its two namespaces: nothing appears in the caller's namespace. */
  const veth = (nsA: string, devA: string, nsZ: string, devZ: string) => {
    h.log.push(`ip link add ${devA} netns ${nsA} type veth peer name ${devZ} netns ${nsZ}`);
    run('ip', ['link', 'add', devA, 'netns', nsA, 'type', 'veth', 'peer', 'name', devZ, 'netns', nsZ]);
  };
  /**
   * With ipv6: no duplicate address detection on the devices made next, link-local addresses included: a link-local
   * still in DAD cannot answer neighbour solicitations, which held the first packets of every path for about 1 s.
   */
  const noDad = (ns: string) => {
    if (v6) for (const k of ['all', 'default']) sysctl(ns, `net.ipv6.conf.${k}.accept_dad`, '0');
  };
  /** With ipv6: the IPv6 mirror of a device's IPv4 address (nodad: usable at once, no duplicate can exist here). */
  const addr6 = (ns: string, dev: string, addr?: string) => {
    if (v6 && addr) ip(ns, ['-6', 'addr', 'add', `${mirror6(addr)}/64`, 'dev', dev, 'nodad']);
  };
  const up = (ns: string, dev: string, addr?: string) => {
    if (addr) ip(ns, ['addr', 'add', `${addr}/24`, 'dev', dev]);
    addr6(ns, dev, addr);
    ip(ns, ['link', 'set', dev, 'up']);
  };

  try {
    if (!cluster) {
      // One balancer: today's topology, unchanged (the client's gateway is the balancer; one link per server).
      for (const ns of [nsC, nsB, ...nsS]) {
        h.log.push(`ip netns add ${ns}`);
        run('ip', ['netns', 'add', ns]);
        ip(ns, ['link', 'set', 'lo', 'up']);
        noDad(ns);
      }
      // veth pairs are created directly inside their namespaces: nothing appears in the caller's namespace.
      for (const l of cLinks) {
        h.log.push(`ip link add ${l.dev} netns ${nsC} type veth peer name ${l.peerDev} netns ${nsB}`);
        run('ip', ['link', 'add', l.dev, 'netns', nsC, 'type', 'veth', 'peer', 'name', l.peerDev, 'netns', nsB]);
        ip(nsC, ['addr', 'add', `${l.addr}/24`, 'dev', l.dev]);
        ip(nsB, ['addr', 'add', `${l.peerAddr}/24`, 'dev', l.peerDev]);
        addr6(nsC, l.dev, l.addr);
        addr6(nsB, l.peerDev, l.peerAddr);
        ip(nsC, ['link', 'set', l.dev, 'up']);
        ip(nsB, ['link', 'set', l.peerDev, 'up']);
      }
      for (const s of servers) {
        h.log.push(`ip link add ${s.link.dev} netns ${s.ns} type veth peer name ${s.link.peerDev} netns ${nsB}`);
        run('ip', ['link', 'add', s.link.dev, 'netns', s.ns, 'type', 'veth', 'peer', 'name', s.link.peerDev, 'netns', nsB]);
        ip(s.ns, ['addr', 'add', `${s.addr}/24`, 'dev', s.link.dev]);
        ip(nsB, ['addr', 'add', `${s.link.peerAddr}/24`, 'dev', s.link.peerDev]);
        addr6(s.ns, s.link.dev, s.addr);
        addr6(nsB, s.link.peerDev, s.link.peerAddr);
        ip(s.ns, ['link', 'set', s.link.dev, 'up']);
        ip(nsB, ['link', 'set', s.link.peerDev, 'up']);
        ip(s.ns, ['route', 'add', 'default', 'via', s.link.peerAddr, 'dev', s.link.dev]);
        if (v6) ip(s.ns, ['-6', 'route', 'add', 'default', 'via', s.link.peerAddr6!, 'dev', s.link.dev]);
      }
    } else {
      for (const ns of [nsC, nsR!, ...nsBs, nsSw!, ...nsS]) {
        h.log.push(`ip netns add ${ns}`);
        run('ip', ['netns', 'add', ns]);
        ip(ns, ['link', 'set', 'lo', 'up']);
        noDad(ns);
      }
      // Asymmetric paths are the point (a reply may leave through another balancer than its SYN came in by):
      // no reverse-path filtering on the router and the balancers, set before their devices exist.
      for (const ns of [nsR!, ...nsBs]) for (const k of ['all', 'default']) sysctl(ns, `net.ipv4.conf.${k}.rp_filter`, '0');
      for (const [i, l] of cLinks.entries()) {
        veth(nsC, l.dev, nsR!, l.peerDev);
        up(nsC, l.dev, l.addr);
        up(nsR!, edgeLinks[i].dev, edgeLinks[i].addr);
      }
      for (const b of balancers) {
        const u = b.clientLinks[0];
        veth(nsR!, u.peerDev, b.ns, u.dev);
        up(nsR!, u.peerDev, u.peerAddr);
        up(b.ns, u.dev, u.addr);
        // Back to the client's networks through the router; no default route, so a VIP without mplb running
        // is unreachable here (as with one balancer) instead of looping back to the router.
        for (const s of clientSubnets) ip(b.ns, ['route', 'add', s, 'via', u.peerAddr, 'dev', u.dev]);
        if (v6) for (const a of clientAddrs) ip(b.ns, ['-6', 'route', 'add', subnet64(a), 'via', u.peerAddr6!, 'dev', u.dev]);
      }
      // The server LAN: one bridge in the switch namespace, a port per balancer and per server.
      ip(nsSw!, ['link', 'add', 'brlan', 'type', 'bridge']);
      ip(nsSw!, ['link', 'set', 'brlan', 'up']);
      for (const b of balancers) {
        const l = b.serverLinks[0];
        veth(b.ns, l.dev, nsSw!, l.peerDev);
        ip(nsSw!, ['link', 'set', l.peerDev, 'master', 'brlan']);
        up(nsSw!, l.peerDev);
        up(b.ns, l.dev, l.addr);
      }
      for (const s of servers) {
        veth(s.ns, s.link.dev, nsSw!, s.link.peerDev);
        ip(nsSw!, ['link', 'set', s.link.peerDev, 'master', 'brlan']);
        up(nsSw!, s.link.peerDev);
        up(s.ns, s.link.dev, s.addr);
        // Replies go back through any balancer: L4 hash over one next hop per balancer.
        sysctl(s.ns, 'net.ipv4.fib_multipath_hash_policy', '1');
        ip(s.ns, ['route', 'add', 'default', ...nexthopArgs(s.gateways.map((g) => [g, s.link.dev]))]);
        if (v6) {
          sysctl(s.ns, 'net.ipv6.fib_multipath_hash_policy', '1');
          ip(s.ns, ['-6', 'route', 'add', 'default', ...nexthopArgs(s.gateways6!.map((g) => [g, s.link.dev]))]);
        }
      }
      // The router: forwards, and spreads each VIP over the balancers by an L4 (5-tuple) hash.
      sysctl(nsR!, 'net.ipv4.ip_forward', '1');
      sysctl(nsR!, 'net.ipv4.fib_multipath_hash_policy', '1');
      for (const v of vips) ip(nsR!, ['route', 'add', `${v}/32`, ...nexthopArgs(balancers.map((b, i) => [b.uplinkAddr!, router!.balancerLinks[i].dev]))]);
      if (v6) {
        sysctl(nsR!, 'net.ipv6.conf.all.forwarding', '1');
        sysctl(nsR!, 'net.ipv6.fib_multipath_hash_policy', '1');
        for (const v of vips6) ip(nsR!, ['-6', 'route', 'add', `${v}/128`, ...nexthopArgs(balancers.map((b, i) => [b.uplinkAddr6!, router!.balancerLinks[i].dev]))]);
      }
    }
    if (withRedis) {
      // The control network: its own bridge in the switch namespace, a port per balancer, redis at .254.
      if (!cluster) {
        h.log.push(`ip netns add ${nsSw}`);
        run('ip', ['netns', 'add', nsSw!]);
        ip(nsSw!, ['link', 'set', 'lo', 'up']);
      }
      h.log.push(`ip netns add ${nsRedis}`);
      run('ip', ['netns', 'add', nsRedis!]);
      ip(nsRedis!, ['link', 'set', 'lo', 'up']);
      ip(nsSw!, ['link', 'add', 'brctl', 'type', 'bridge']);
      ip(nsSw!, ['link', 'set', 'brctl', 'up']);
      for (const b of balancers) {
        veth(b.ns, 'ctl0', nsSw!, `k${b.index + 1}`);
        ip(nsSw!, ['link', 'set', `k${b.index + 1}`, 'master', 'brctl']);
        up(nsSw!, `k${b.index + 1}`);
        up(b.ns, 'ctl0', b.ctlAddr);
      }
      veth(nsRedis!, 'eth0', nsSw!, 'kr');
      ip(nsSw!, ['link', 'set', 'kr', 'master', 'brctl']);
      up(nsSw!, 'kr');
      up(nsRedis!, 'eth0', REDIS_ADDR);
    }

    // Client: each source address leaves by its own link (tables 101, 102); main default via link 0.
    ip(nsC, ['route', 'add', 'default', 'via', cLinks[0].peerAddr, 'dev', cLinks[0].dev]);
    cLinks.forEach((l, i) => {
      const table = String(101 + i);
      ip(nsC, ['route', 'add', subnet24(l.addr), 'dev', l.dev, 'src', l.addr, 'table', table]);
      ip(nsC, ['route', 'add', 'default', 'via', l.peerAddr, 'dev', l.dev, 'table', table]);
      ip(nsC, ['rule', 'add', 'from', l.addr, 'table', table, 'priority', String(1000 + i)]);
      if (v6) {
        ip(nsC, ['-6', 'route', 'add', subnet64(l.addr), 'dev', l.dev, 'src', l.addr6!, 'table', table]);
        ip(nsC, ['-6', 'route', 'add', 'default', 'via', l.peerAddr6!, 'dev', l.dev, 'table', table]);
        ip(nsC, ['-6', 'rule', 'add', 'from', l.addr6!, 'table', table, 'priority', String(1000 + i)]);
      }
    });
    if (v6) ip(nsC, ['-6', 'route', 'add', 'default', 'via', cLinks[0].peerAddr6!, 'dev', cLinks[0].dev]);

    if (opts.mptcp ?? true) {
      for (const ns of [nsC, ...nsS]) {
        sysctl(ns, 'net.mptcp.enabled', '1');
        ip(ns, ['mptcp', 'limits', 'set', 'subflow', '2', 'add_addr_accepted', '2']);
      }
      // Servers start each connection with a 4 MiB receive buffer (Linux default 128 KiB). Linux 6.18's MPTCP receiver
      // can deadlock when its out-of-order queue alone fills the buffer: the data of the hole then waits in a
      // subflow's queue that the connection no longer drains, and the transfer stalls for good (seen in the
      // dual-stack e2e under CPU load: server connection rmem 218368 > rcvbuf 217661, the hole's bytes queued on the
      // IPv6 subflow; 2 stalls in 28 batches, none in 197 with this buffer). Not the balancer's doing: it happens
      // wherever the two paths' delays differ enough, so the testbed's servers are sized for it.
      for (const ns of nsS) sysctl(ns, 'net.ipv4.tcp_rmem', '4096 4194304 33554432');
      ip(nsC, ['mptcp', 'endpoint', 'add', cLinks[1].addr, 'dev', cLinks[1].dev, 'subflow']);
      // The in-kernel path manager pairs an endpoint only with remote addresses of its own family: this one makes
      // the join of an IPv6 connection, the IPv4 one that of an IPv4 connection.
      if (v6) ip(nsC, ['mptcp', 'endpoint', 'add', cLinks[1].addr6!, 'dev', cLinks[1].dev, 'subflow']);
    }

    for (const ns of nsBs) sysctl(ns, 'net.ipv4.ip_forward', '1');
    if (v6) for (const ns of nsBs) sysctl(ns, 'net.ipv6.conf.all.forwarding', '1');
    if (mode === 'noBalancer') {
      for (const v of vips) {
        ip(nsS[0], ['addr', 'add', `${v}/32`, 'dev', 'lo']);
        ip(nsB, ['route', 'add', `${v}/32`, 'via', servers[0].addr, 'dev', servers[0].link.peerDev]);
      }
      for (const v of vips6) {
        ip(nsS[0], ['-6', 'addr', 'add', `${v}/128`, 'dev', 'lo', 'nodad']);
        ip(nsB, ['-6', 'route', 'add', `${v}/128`, 'via', servers[0].addr6!, 'dev', servers[0].link.peerDev]);
      }
    }

    if (h.rateMbit) {
      // tbf on both veth ends = both directions limited. Burst ~4 ms of data (at least 32 KB).
      const burst = Math.max(32 * 1024, Math.round((h.rateMbit * 1e6 / 8) * 0.004));
      const edgeNs = cluster ? nsR! : nsB;
      for (const [ns, dev] of [[nsC, 'c0'], [nsC, 'c1'], [edgeNs, edgeDev(0)], [edgeNs, edgeDev(1)]] as const) {
        tc(ns, ['qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', `${h.rateMbit}mbit`, 'burst', String(burst), 'latency', '25ms']);
      }
    }

    if (withRedis) {
      const password = randomBytes(18).toString('base64url');
      h.log.push(`ip netns exec ${nsRedis} redis-server CONF --bind ${REDIS_ADDR} --port ${redisPort} --save '' --appendonly no`);
      h.redis = startRedis(nsRedis!, { host: REDIS_ADDR, port: redisPort, password, dir: path.join(stateDir, `${runId}-redis`) });
    }
  } catch (e) {
    downOne(runId, stateFile, h);
    owned.delete(runId);
    throw e;
  }
  writeState(h);
  return h;
}

function killNamespaceProcesses(namespaces: string[]): void {
  const pids = new Set<number>();
  for (const ns of namespaces) for (const p of netnsPids(ns)) if (p !== process.pid) pids.add(p);
  if (pids.size === 0) return;
  // These processes live in namespaces this project made for this run, so they are ours.
  for (const p of pids) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      pids.delete(p);
    }
  }
  const deadline = Date.now() + 1500;
  while (pids.size > 0 && Date.now() < deadline) {
    sleepSync(50);
    for (const p of [...pids]) if (processGone(p)) pids.delete(p);
  }
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

function downOne(runId: string, stateFile: string, s: Partial<TestbedHandle> | undefined): string[] {
  // redis first, by the PID the testbed recorded (it is checked to still be that redis-server).
  stopRedis(s?.redis);
  const present = new Set(listNetns());
  const names = new Set<string>(namespacesOf(s?.namespaces));
  // Also anything else carrying this run's prefix (e.g. made by a crashed older version).
  for (const n of present) if (n.startsWith(`mplb-${runId}-`)) names.add(n);
  const toDelete = [...names].filter((n) => present.has(n));
  killNamespaceProcesses(toDelete);
  for (const n of toDelete) tryRun('ip', ['netns', 'del', n]);
  try {
    fs.unlinkSync(stateFile);
  } catch {
    // already gone
  }
  owned.delete(runId);
  return toDelete;
}

function readState(file: string): Partial<TestbedHandle> | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<TestbedHandle>;
  } catch {
    return undefined;
  }
}

function stateFiles(dir: string): string[] {
  try {
    return fs
      .readdirSync(dir)
      .filter((f) => /^[0-9a-z]{6}\.json$/.test(f))
      .map((f) => path.join(dir, f));
  } catch {
    return [];
  }
}

/**
 * Removes a testbed (handle or runId), or with no argument every testbed recorded in state files.
 * redis (by its recorded PID) and any other process still running inside its namespaces are terminated.
 * Synchronous; returns deleted namespaces.
 */
export function testbedDown(target?: TestbedHandle | string, opts: { stateDir?: string } = {}): string[] {
  const dir = opts.stateDir ?? (typeof target === 'object' ? path.dirname(target.stateFile) : defaultStateDir());
  if (target === undefined) {
    const removed: string[] = [];
    for (const f of stateFiles(dir)) {
      const s = readState(f);
      const runId = path.basename(f, '.json');
      removed.push(...downOne(runId, f, s));
    }
    return removed;
  }
  const runId = typeof target === 'string' ? target : target.runId;
  const file = typeof target === 'string' ? path.join(dir, `${runId}.json`) : target.stateFile;
  const s = typeof target === 'string' ? readState(file) : target;
  return downOne(runId, file, s);
}

function alive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function testbedStatus(opts: { stateDir?: string } = {}): TestbedStatus {
  const present = new Set(listNetns());
  const known = new Set<string>();
  const testbeds: TestbedStatusEntry[] = [];
  for (const f of stateFiles(opts.stateDir ?? defaultStateDir())) {
    const s = readState(f);
    const runId = path.basename(f, '.json');
    const names = namespacesOf(s?.namespaces);
    for (const n of present) if (n.startsWith(`mplb-${runId}-`) && !names.includes(n)) names.push(n);
    names.forEach((n) => known.add(n));
    testbeds.push({
      runId,
      stateFile: f,
      mode: s?.mode,
      creatorPid: s?.creatorPid,
      creatorAlive: alive(s?.creatorPid),
      persist: s?.persist,
      balancers: s?.balancers?.length ?? (s?.namespaces ? 1 : undefined),
      ...(s?.redis ? { redis: { pid: s.redis.pid, alive: !processGone(s.redis.pid), host: s.redis.host, port: s.redis.port } } : {}),
      namespaces: names.map((name) => ({ name, exists: present.has(name) })),
    });
  }
  const orphanNamespaces = [...present].filter((n) => NS_RE.test(n) && !known.has(n));
  return { testbeds, orphanNamespaces };
}

/** Reads a recorded testbed back from its state file (e.g. in another process). */
export function testbedLoad(runId: string, opts: { stateDir?: string } = {}): TestbedHandle | undefined {
  const s = readState(path.join(opts.stateDir ?? defaultStateDir(), `${runId}.json`));
  return s && s.runId ? attachMethods(s as TestbedHandle) : undefined;
}

/** Cluster: the gateways of the router's route to `vip` (default the first VIP), as the kernel has it now. */
export function routerNexthops(h: TestbedHandle, vip = h.vips[0]): string[] {
  if (!h.router) throw new TestbedError('TESTBED_BAD_OPTION', `testbed ${h.runId} has no router (one balancer)`);
  return net.isIPv6(vip) ? routeGateways(h.router.ns, `${vip}/128`, 6) : routeGateways(h.router.ns, `${vip}/32`);
}

/** The gateways of server i's IPv6 default route (ipv6 testbeds), as the kernel has it now. */
export function serverGateways6(h: TestbedHandle, i: number): string[] {
  return routeGateways(h.servers[i].ns, 'default', 6);
}

/** The gateways of server i's default route, as the kernel has it now. */
export function serverGateways(h: TestbedHandle, i: number): string[] {
  return routeGateways(h.servers[i].ns, 'default');
}

function routeGateways(ns: string, dst: string, family: 4 | 6 = 4): string[] {
  const routes = JSON.parse(ipn(ns, [family === 6 ? '-6' : '-4', '-j', 'route', 'show', dst]) || '[]') as Array<{ gateway?: string; nexthops?: Array<{ gateway?: string }> }>;
  return routes.flatMap((r) => (r.nexthops ? r.nexthops.map((n) => n.gateway ?? '') : r.gateway ? [r.gateway] : []));
}
