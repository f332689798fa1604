// Kernel routing that puts the TUN in the path (NAT mode): VIP host routes into the TUN, and a policy
// rule so the backends' replies (source = a backend address) are looked up in a table whose default
// route is the TUN, while packets mplb writes into the TUN (iif TUN) are routed normally.
//
// Changes are diffs: planRoutes(old set, new set) names exactly the routes and rules to add and to remove, so
// an address that stays keeps its routes untouched. Each phase runs as one `ip -batch` process per family,
// asynchronously (the control thread keeps serving). Additions come first and are taken back if any fails;
// removals run only when the caller commits (after the engine took the new config). undo() is synchronous for
// 'exit' handlers.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ConfigError, type EngineConfig } from '../engine/config.js';
import { formatIp, parseEndpoint, parseIp } from '../wire/addr.js';

export const DEFAULT_TABLE = 2710;
export const DEFAULT_RULE_PRIORITY = 10000;
/** Metric of the blackhole guards: above the TUN routes (metric 0, IPv6 1024), which win while the TUN exists. */
const GUARD_METRIC = '4096';

/** The addresses routes are installed for (canonical text: the diff compares strings). */
export interface RouteSet {
  /** Virtual addresses (IPv4 and/or IPv6): host routes into the TUN. */
  vips: readonly string[];
  /** Backend addresses whose packets must pass through the TUN on their way back. */
  backends: readonly string[];
}

export interface RoutesOptions {
  tunName: string;
  /** If set, only backend packets arriving on these interfaces are steered (one rule per pair). */
  backendInterfaces?: string[];
  /** Routing table holding "default dev TUN" (default 2710). One table per instance. */
  table?: number;
  /** Priority of the "iif TUN lookup main" rule; backend rules use priority + 1 (default 10000). One per instance. */
  rulePriority?: number;
  /** Set ip_forward=1 and rp_filter=0 (default true); old values come back on undo. */
  setSysctls?: boolean;
  /**
   * Where the sysctls' values from before mplb and the routes and rules it installed are kept, so that a restart
   * after a crash or SIGKILL can put the sysctls back and remove what the dead run left (default
   * `defaultStateFile(tunName)`; false: none). Written before anything changes, removed once nothing is left.
   */
  stateFile?: string | false;
}

/** This process's network namespace id (the nsfs inode), or "unknown". */
function netnsId(): string {
  try { return /\[(\d+)\]/.exec(fs.readlinkSync('/proc/self/ns/net'))?.[1] ?? 'unknown'; } catch { return 'unknown'; }
}

/**
 * `/run/mplb/<tun>.<netns inode>.json`: one file per device and network namespace (/run is shared by all namespaces,
 * and the testbed runs an mplb0 in each of several), gone at reboot with the tmpfs.
 */
export function defaultStateFile(tunName: string): string {
  return `/run/mplb/${tunName}.${netnsId()}.json`;
}

/** One route or rule: the `ip -batch` lines (family given to the process) that add and remove it. */
export interface RouteItem {
  family: 4 | 6;
  add: string;
  del: string;
  /**
   * Guards (blackholes, rules) survive undo({ keepGuard: true }); an identical one already present (left by a
   * previous run with --keep-guard, or a crash) is taken over instead of failing.
   */
  guard: boolean;
  /** Install order (0 first); removal goes the other way: the TUN routes leave first. */
  rank: number;
}

export interface RoutePlan {
  /** In install order. */
  add: RouteItem[];
  /** In removal order. */
  remove: RouteItem[];
}

export type RoutesErrorCode = 'ROUTES_IP_MISSING' | 'ROUTES_EPERM' | 'ROUTES_EXISTS' | 'ROUTES_IN_USE' | 'ROUTES_BAD_ADDRESS' | 'ROUTES_BUSY' | 'ROUTES_FAILED' | 'ROUTES_STATE';

export class RoutesError extends Error {
  readonly code: RoutesErrorCode;
  constructor(code: RoutesErrorCode, message: string) {
    super(message);
    this.name = 'RoutesError';
    this.code = code;
  }
}

const famOf = (a: string): 4 | 6 => (net.isIP(a) === 6 ? 6 : 4);
const host = (a: string) => `${a}/${famOf(a) === 6 ? 128 : 32}`;

function settings(opts: RoutesOptions): { table: string; prio: number; tun: string; ifaces: Array<string | undefined> } {
  const table = opts.table ?? DEFAULT_TABLE;
  const prio = opts.rulePriority ?? DEFAULT_RULE_PRIORITY;
  // Validated here too: these end up in `ip -batch` lines, where a space would split arguments.
  if (!Number.isInteger(table) || table < 1 || table > 0xffffffff || (table >= 253 && table <= 255)) throw new RoutesError('ROUTES_BAD_ADDRESS', `routing table ${table} is not usable: pick 1-252 or 256-4294967295 (253-255 are the kernel's default, main and local)`);
  if (!Number.isInteger(prio) || prio < 1 || prio > 32764) throw new RoutesError('ROUTES_BAD_ADDRESS', `rule priority ${prio} is not usable: pick 1-32764 (mplb also uses priority + 1, and main is looked up at 32766)`);
  const name = /^[A-Za-z0-9_.-]{1,15}$/;
  for (const d of [opts.tunName, ...(opts.backendInterfaces ?? [])]) if (!name.test(d)) throw new RoutesError('ROUTES_BAD_ADDRESS', `"${d}" is not an interface name`);
  const ifaces = opts.backendInterfaces && opts.backendInterfaces.length > 0 ? opts.backendInterfaces : [undefined];
  return { table: String(table), prio, tun: opts.tunName, ifaces };
}

/** Every route and rule that `set` needs, in install order (duplicates removed). */
export function routeItems(set: RouteSet, opts: RoutesOptions): RouteItem[] {
  const { table, prio, tun, ifaces } = settings(opts);
  for (const a of [...set.vips, ...set.backends]) {
    if (net.isIP(a) === 0) throw new RoutesError('ROUTES_BAD_ADDRESS', `"${a}" is not an IPv4 or IPv6 address`);
  }
  const families = ([4, 6] as const).filter((f) => [...set.vips, ...set.backends].some((a) => famOf(a) === f));
  const items: RouteItem[] = [];
  const push = (family: 4 | 6, rank: number, guard: boolean, args: string) => {
    const [obj, ...rest] = args.split(' ');
    items.push({ family, add: `${obj} add ${rest.join(' ')}`, del: `${obj} del ${rest.join(' ')}`, guard, rank });
  };
  // Guards first: blackhole routes with a high metric under the TUN routes. The kernel removes the TUN routes
  // with the device; the guards then drop traffic instead of routing it around the balancer.
  for (const f of families) push(f, 0, true, `route blackhole default table ${table} metric ${GUARD_METRIC}`);
  for (const f of families) push(f, 1, true, `rule priority ${prio} iif ${tun} lookup main`);
  for (const v of set.vips) push(famOf(v), 2, true, `route blackhole ${host(v)} metric ${GUARD_METRIC}`);
  for (const b of set.backends) {
    for (const dev of ifaces) push(famOf(b), 3, true, `rule priority ${prio + 1} from ${host(b)}${dev ? ` iif ${dev}` : ''} lookup ${table}`);
  }
  // The TUN routes last, so removal takes them first: the VIPs stop entering a TUN that is about to go away.
  for (const f of families) push(f, 4, false, `route default dev ${tun} table ${table}`);
  for (const v of set.vips) push(famOf(v), 5, false, `route ${host(v)} dev ${tun}`);
  const seen = new Set<string>();
  return items.filter((i) => { const k = `${i.family} ${i.add}`; if (seen.has(k)) return false; seen.add(k); return true; });
}

/** What turns the routes of `from` into those of `to`; unchanged addresses appear in neither list. Pure. */
export function planRoutes(from: RouteSet, to: RouteSet, opts: RoutesOptions): RoutePlan {
  const key = (i: RouteItem) => `${i.family} ${i.add}`;
  const a = routeItems(from, opts), b = routeItems(to, opts);
  const inA = new Set(a.map(key)), inB = new Set(b.map(key));
  return { add: b.filter((i) => !inA.has(key(i))), remove: byRemovalOrder(a.filter((i) => !inB.has(key(i)))) };
}

function byRemovalOrder(items: RouteItem[]): RouteItem[] {
  return items.map((item, i) => ({ item, i })).sort((x, y) => y.item.rank - x.item.rank || y.i - x.i).map((x) => x.item);
}

// ---- addresses the routes can carry ----

/** Why `a` cannot be a VIP or a backend behind the TUN (kernel routing), or undefined. */
function unroutable(a: Uint8Array): string | undefined {
  if (a.length === 4) {
    if (a.every((x) => x === 0)) return 'is the unspecified address';
    if (a[0] === 0) return 'is in 0.0.0.0/8 ("this network"), which is never routed';
    if (a.every((x) => x === 255)) return 'is the limited broadcast address';
    if (a[0] >= 224 && a[0] <= 239) return 'is a multicast address (224.0.0.0/4): TCP cannot connect to it';
    if (a[0] === 127) return 'is a loopback address (127.0.0.0/8): the kernel keeps it on the host and never routes it through the TUN';
    return undefined;
  }
  if (a.every((x) => x === 0)) return 'is the unspecified address';
  if (a.slice(0, 15).every((x) => x === 0) && a[15] === 1) return 'is the loopback address (::1): the kernel keeps it on the host and never routes it through the TUN';
  if (a[0] === 0xff) return 'is a multicast address (ff00::/8): TCP cannot connect to it';
  if (a.slice(0, 10).every((x) => x === 0) && a[10] === 0xff && a[11] === 0xff) return 'is an IPv4-mapped IPv6 address: use the IPv4 address and an IPv4 VIP';
  return undefined;
}

/**
 * Refuses addresses that cannot work behind mplb's TUN and routes: unspecified, broadcast, multicast and loopback
 * VIPs and backends, and a backend whose address is a VIP's (its packets would be routed back into the TUN).
 * Used by `mplb run`'s config validation and by every Balancer change (so the admin API too); replays and
 * in-process engines may use any address. `path` prefixes the field paths (e.g. "engine").
 */
export function checkRoutableAddresses(engine: EngineConfig, path = ''): void {
  const p = (k: string) => (path ? `${path}.${k}` : k);
  const vipAt = new Map<string, string>();
  engine.vips.forEach((v, i) => {
    const ep = parseEndpoint(v.address)!;
    const why = unroutable(ep.addr.bytes);
    if (why) throw new ConfigError(p(`vips[${i}].address`), `${formatIp(ep.addr.bytes, 0, ep.addr.bytes.length)} ${why}`);
    const ip = formatIp(ep.addr.bytes, 0, ep.addr.bytes.length);
    if (!vipAt.has(ip)) vipAt.set(ip, v.address);
  });
  engine.vips.forEach((v, i) => {
    const own = parseEndpoint(v.address)!.addr.bytes;
    v.backends.forEach((b, j) => {
      const a = parseIp(b.address)!.bytes;
      const ip = formatIp(a, 0, a.length);
      const bp = p(`vips[${i}].backends[${j}].address`);
      const why = unroutable(a);
      if (why) throw new ConfigError(bp, `${ip} ${why}`);
      if (ip === formatIp(own, 0, own.length)) throw new ConfigError(bp, `${ip} is the VIP's own address: packets to it would be routed back into the TUN`);
      const other = vipAt.get(ip);
      if (other !== undefined) throw new ConfigError(bp, `${ip} is the address of VIP ${other}: packets to it would be routed back into the TUN`);
    });
  });
}

// ---- running `ip -batch` ----

/** Failed lines of one batch (0-based line index -> ip's message). */
type BatchFailures = Map<number, string>;

/** `ip -force -batch` stderr -> failed lines: each "Command failed -:N" follows the message(s) for line N. */
export function parseBatchErrors(stderr: string): BatchFailures {
  const failed: BatchFailures = new Map();
  let pending: string[] = [];
  for (const line of stderr.split('\n')) {
    const m = /^Command failed -:(\d+)$/.exec(line.trim());
    if (m) { failed.set(Number(m[1]) - 1, pending.join('; ') || 'failed'); pending = []; }
    else if (line.trim()) pending.push(line.trim());
  }
  return failed;
}

function ipArgs(family: 4 | 6, extra: string[] = []): string[] {
  // -force: every line runs, and each failure is reported with its line number.
  return [family === 6 ? '-6' : '-4', ...extra, '-force', '-batch', '-'];
}

function ipMissing(): RoutesError {
  return new RoutesError('ROUTES_IP_MISSING', 'the "ip" command (iproute2) was not found: install iproute2');
}

/** Runs lines in one `ip -batch` process; resolves with the failed lines, rejects only if ip itself cannot run. */
function runBatch(family: 4 | 6, lines: string[], extra: string[] = []): Promise<{ failed: BatchFailures; stdout: string }> {
  if (lines.length === 0) return Promise.resolve({ failed: new Map(), stdout: '' });
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ipArgs(family, extra), { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.once('error', (e: NodeJS.ErrnoException) => reject(e.code === 'ENOENT' ? ipMissing() : new RoutesError('ROUTES_FAILED', `cannot run ip: ${e.message}`)));
    child.once('close', (code) => {
      const failed = parseBatchErrors(err);
      if (code !== 0 && failed.size === 0) reject(new RoutesError('ROUTES_FAILED', `ip ${ipArgs(family, extra).join(' ')} failed (exit ${code}): ${err.trim()}`));
      else resolve({ failed, stdout: out });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(lines.map((l) => `${l}\n`).join(''));
  });
}

/** Best effort, synchronous (undo in an 'exit' handler): failures are ignored. */
function runBatchSync(family: 4 | 6, lines: string[]): void {
  if (lines.length === 0) return;
  spawnSync('ip', ipArgs(family), { input: lines.map((l) => `${l}\n`).join(''), stdio: ['pipe', 'ignore', 'ignore'], timeout: 10000 });
}

const GONE = /No such process|No such file or directory|Cannot find device/;

function readSysctl(p: string): string | undefined {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function writeSysctl(p: string, v: string): void {
  try {
    fs.writeFileSync(p, v);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EACCES' || err.code === 'EPERM' || err.code === 'EROFS') throw new RoutesError('ROUTES_EPERM', `writing ${p} needs root (CAP_NET_ADMIN): run mplb as root`);
    throw new RoutesError('ROUTES_FAILED', `writing ${v} to ${p} failed: ${err.message}`);
  }
}

// ---- the state file ----

interface SysctlChange { path: string; old: string; value: string }

/** What a run of this instance changed, for the next start after a crash (`RoutesOptions.stateFile`). */
interface SavedState {
  version: 1;
  pid: number;
  /** /proc/<pid>/stat start time: a pid reused by another process is not the writer. */
  pidStart: string;
  bootId: string;
  netns: string;
  tun: string;
  /** Sysctls mplb changed: the value from before mplb (`old`) and the one it set. */
  sysctls: SysctlChange[];
  /** Routes and rules that are (or, while a change runs, may be) installed. */
  items: RouteItem[];
}

const bootId = () => readSysctl('/proc/sys/kernel/random/boot_id') ?? '';

function pidStart(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22 (start time), counted after the ")" that ends the command name.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch { return undefined; }
}

function isItem(x: unknown): x is RouteItem {
  const i = x as RouteItem;
  return !!i && (i.family === 4 || i.family === 6) && typeof i.add === 'string' && typeof i.del === 'string' && typeof i.guard === 'boolean' && typeof i.rank === 'number'
    // Lines go to `ip -batch`: only what routeItems() writes (no newlines, no other commands).
    && /^(route|rule) add [A-Za-z0-9 ./:_-]+$/.test(i.add) && /^(route|rule) del [A-Za-z0-9 ./:_-]+$/.test(i.del);
}

/**
 * A dead earlier run's state for this device in this namespace and boot, or undefined (no file, another
 * namespace's or boot's, unreadable). A file whose writer still runs belongs to another instance: refused.
 */
function readPrior(file: string, tun: string): SavedState | undefined {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new RoutesError('ROUTES_STATE', `cannot read the state file ${file}: ${(e as Error).message}`);
  }
  let st: SavedState;
  try { st = JSON.parse(text) as SavedState; } catch {
    process.stderr.write(`mplb: ignoring the unreadable state file ${file} (it is replaced)\n`);
    return undefined;
  }
  if (st?.pid !== process.pid && pidStart(st?.pid) !== undefined && pidStart(st.pid) === st.pidStart) {
    throw new RoutesError('ROUTES_IN_USE', `the state file ${file} belongs to a running mplb (pid ${st.pid}): give each instance its own device.stateFile`);
  }
  if (st?.version !== 1 || st.bootId !== bootId() || st.netns !== netnsId() || st.tun !== tun) return undefined;
  return {
    ...st,
    sysctls: (Array.isArray(st.sysctls) ? st.sysctls : []).filter((x) => x && typeof x.path === 'string' && x.path.startsWith('/proc/sys/net/') && !x.path.includes('..') && typeof x.old === 'string' && typeof x.value === 'string'),
    items: (Array.isArray(st.items) ? st.items : []).filter(isItem),
  };
}

function writeState(file: string, st: SavedState): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
    fs.writeFileSync(tmp, `${JSON.stringify(st, null, 1)}\n`, { mode: 0o644 });
    fs.renameSync(tmp, file);
  } catch (e) {
    try { fs.rmSync(tmp, { force: true }); } catch { /* nothing to remove */ }
    throw new RoutesError('ROUTES_STATE', `cannot write the state file ${file} (${(e as Error).message}): without it a restart after a crash could not restore the sysctls; set device.stateFile to a writable path`);
  }
}

// ---- the handle ----

/** A change whose additions are in place and whose removals wait for commit(). */
export interface RoutesChange {
  readonly plan: RoutePlan;
  /** Removes what only the old set needed; returns problems (a route that could not be removed), never throws. */
  commit(): Promise<string[]>;
  /** Takes this change's additions back (the old set stays as it was). */
  rollback(): Promise<void>;
}

export interface RoutesHandle {
  /** The commands that were run, in order (for logs). */
  readonly applied: readonly string[];
  /** The committed address set. */
  readonly current: RouteSet;
  /**
   * Adds what `next` needs beyond the current set (one `ip -batch` per family). If an addition fails, what this
   * call added is taken back and a RoutesError names the route and the reason. One change at a time.
   */
  change(next: RouteSet): Promise<RoutesChange>;
  /**
   * Removes everything this handle installed or took over (newest kind first) and restores the sysctls;
   * synchronous and idempotent (safe in 'exit' handlers). `keepGuard`: leave the blackhole guards, the rules and
   * the sysctls, so that while mplb is down packets to the VIPs and un-NATed replies from backends are dropped
   * (not leaked to clients, whose RSTs would kill the connections); the next start takes them over.
   */
  undo(opts?: { keepGuard?: boolean }): void;
  readonly undone: boolean;
}

const EMPTY: RouteSet = { vips: [], backends: [] };

/** A handle with nothing installed yet: the first change() installs the routes. */
export function createRoutes(opts: RoutesOptions): RoutesHandle {
  const { table, prio, tun } = settings(opts);
  const applied: string[] = [];
  /** Routes and rules that are ours now (added, or taken over), by family + add line. */
  const installed = new Map<string, RouteItem>();
  const sysctlUndo: SysctlChange[] = [];
  /** Sysctls set by the change in progress (undo() restores them too). */
  let sysctlPending: SysctlChange[] = [];
  let current: RouteSet = EMPTY;
  let pending = false;
  let undone = false;
  const key = (i: RouteItem) => `${i.family} ${i.add}`;

  const stateFile = opts.stateFile === false ? undefined : opts.stateFile ?? defaultStateFile(tun);
  /**
   * Sysctls a dead earlier run set and that still hold its value (read at the first change): the value from before
   * that run is what undo() restores, and what a change that sets them again keeps as the one to restore.
   */
  let priorSysctls: SysctlChange[] = [];
  const inherited = new Map<string, string>();
  /** Items the dead earlier run left (ours, from its state file); those the new set does not need go after the first commit. */
  const priorKeys = new Set<string>();
  let priorRead = false;
  const loadPrior = () => {
    if (priorRead || !stateFile) return;
    priorRead = true;
    const prior = readPrior(stateFile, tun);
    if (!prior) return;
    // Still holding the value the dead run set: the value from before it is the one to restore.
    priorSysctls = prior.sysctls.filter((s) => readSysctl(s.path) === s.value);
    for (const s of priorSysctls) inherited.set(s.path, s.old);
    for (const i of prior.items) { installed.set(key(i), i); priorKeys.add(key(i)); }
  };
  /** Every sysctl to restore, one entry per path (the oldest: a dead run's value from before it comes first). */
  const allSysctls = () => {
    const byPath = new Map<string, SysctlChange>();
    for (const s of [...priorSysctls, ...sysctlUndo, ...sysctlPending]) if (!byPath.has(s.path)) byPath.set(s.path, s);
    return [...byPath.values()];
  };
  /** Writes what is (or may be, with `intended`) installed and the sysctls to restore; removes the file when nothing is. */
  const saveState = (intended: RouteItem[] = []) => {
    if (!stateFile) return;
    const items = new Map(installed);
    for (const i of intended) items.set(key(i), i);
    const sysctls = allSysctls();
    if (items.size === 0 && sysctls.length === 0) { try { fs.rmSync(stateFile, { force: true }); } catch { /* nothing to remove */ } return; }
    writeState(stateFile, { version: 1, pid: process.pid, pidStart: pidStart(process.pid) ?? '', bootId: bootId(), netns: netnsId(), tun, sysctls, items: [...items.values()] });
  };

  /** Refuses, before anything changes, a table or rule priority that another live device routes through. */
  const checkOwnership = async (families: Array<4 | 6>) => {
    for (const f of families) {
      const { stdout } = await runBatch(f, [`route show table ${table}`, 'rule show'], ['-j']);
      let routes: Array<Record<string, unknown>>, rules: Array<Record<string, unknown>>;
      try {
        [routes, rules] = stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Array<Record<string, unknown>>);
      } catch {
        throw new RoutesError('ROUTES_FAILED', `could not read the IPv${f} routes of table ${table} and the rules ("ip -j"): ${stdout.slice(0, 200)}`);
      }
      const advice = `give each instance its own device.table and device.rulePriority (e.g. table ${Number(table) + 1} and rulePriority ${prio + 100}), or stop the other one`;
      // A route through a device is only there while the device is: a device other than ours means a live user.
      const other = (routes ?? []).find((r) => typeof r.dev === 'string' && r.dev !== tun && (r.type === undefined || r.type === 'unicast'));
      if (other) throw new RoutesError('ROUTES_IN_USE', `routing table ${table} (IPv${f}) already routes "${String(other.dst)}" to device ${String(other.dev)}, not to this instance's ${tun}: another mplb instance (or another program) uses it; ${advice}`);
      const rule = (rules ?? []).find((r) => (r.priority === prio || r.priority === prio + 1) && r.table === 'main' && typeof r.iif === 'string' && r.iif !== tun && !('iif_detached' in r));
      if (rule) throw new RoutesError('ROUTES_IN_USE', `rule priority ${String(rule.priority)} (IPv${f}) is already used by "iif ${String(rule.iif)} lookup main", not by this instance's ${tun}: another mplb instance uses it; ${advice}`);
    }
  };

  const sysctlsFor = (f: 4 | 6): Array<[string, string]> => (opts.setSysctls ?? true)
    ? (f === 4
      // Packets mplb writes carry the client's (or the VIP's) source, which is not routed via the TUN.
      ? [['/proc/sys/net/ipv4/ip_forward', '1'], ['/proc/sys/net/ipv4/conf/all/rp_filter', '0'], [`/proc/sys/net/ipv4/conf/${tun}/rp_filter`, '0']]
      : [['/proc/sys/net/ipv6/conf/all/forwarding', '1']])
    : [];

  const removeItems = async (items: RouteItem[]): Promise<string[]> => {
    const problems: string[] = [];
    for (const f of [4, 6] as const) {
      const lines = items.filter((i) => i.family === f);
      const { failed } = await runBatch(f, lines.map((i) => i.del));
      lines.forEach((i, n) => {
        const msg = failed.get(n);
        applied.push(`ip -${f} ${i.del}`);
        // Still there: keep it on the books so that undo() tries again.
        if (msg !== undefined && !GONE.test(msg)) problems.push(`could not remove "ip -${f} ${i.del}": ${msg}`);
        else installed.delete(key(i));
      });
    }
    return problems;
  };

  const handle: RoutesHandle = {
    applied,
    get current() { return current; },
    get undone() { return undone; },
    async change(next) {
      if (undone) throw new RoutesError('ROUTES_FAILED', 'the routes were already removed (mplb is stopping)');
      if (pending) throw new RoutesError('ROUTES_BUSY', 'another route change is still pending: changes must be applied one at a time');
      const plan = planRoutes(current, next, opts);
      pending = true;
      const added: RouteItem[] = [], adopted: RouteItem[] = [];
      const setSysctls: Array<{ path: string; old: string; value: string }> = [];
      sysctlPending = setSysctls;
      const rollback = async () => {
        // Only what this change added goes; guards it found in place stay, and are not ours after all (unless a
        // dead earlier run of this instance left them: those stay ours, for undo()).
        for (const i of adopted) if (!priorKeys.has(key(i))) installed.delete(key(i));
        await removeItems(byRemovalOrder(added));
        for (const s of [...setSysctls].reverse()) if (readSysctl(s.path) === s.value) { try { writeSysctl(s.path, s.old); } catch { /* best effort */ } }
        sysctlPending = [];
        pending = false;
        try { saveState(); } catch { /* the next save, or undo, writes it */ }
      };
      try {
        // A family's first addresses bring its table routes: check first that no other instance holds the table.
        const newFamilies = [...new Set(plan.add.filter((i) => i.rank === 0).map((i) => i.family))];
        await checkOwnership(newFamilies);
        loadPrior();
        const writes: Array<[string, string]> = [];
        for (const f of newFamilies) {
          for (const [p, v] of sysctlsFor(f)) {
            const now = readSysctl(p);
            if (now === undefined) throw new RoutesError('ROUTES_FAILED', `${p} does not exist (is the interface there, IPv6 enabled?)`);
            // After a crash the sysctl may still hold the dead run's value: restore the one from before that run.
            const old = inherited.get(p) ?? now;
            if (old === v) continue;
            setSysctls.push({ path: p, old, value: v });
            if (now !== v) writes.push([p, v]);
          }
        }
        // On disk before anything changes: a SIGKILL from here on leaves a file the next start can undo.
        saveState(plan.add);
        for (const [p, v] of writes) { writeSysctl(p, v); applied.push(`${p}=${v}`); }
        const problems: string[] = [];
        for (const f of [4, 6] as const) {
          const lines = plan.add.filter((i) => i.family === f);
          let failed: BatchFailures;
          try {
            ({ failed } = await runBatch(f, lines.map((i) => i.add)));
          } catch (e) {
            // ip did not finish (killed with us, e.g. by systemd's stop): any of its lines may be in. Count them as
            // added, so the rollback (or undo) removes whatever is there.
            for (const i of lines) { added.push(i); installed.set(key(i), i); }
            throw e;
          }
          lines.forEach((i, n) => {
            const msg = failed.get(n);
            if (msg === undefined) { added.push(i); installed.set(key(i), i); applied.push(`ip -${f} ${i.add}`); }
            // A guard identical to ours, left by an earlier run of this instance: take it over, it is not this change's.
            else if (i.guard && /File exists/.test(msg)) { adopted.push(i); installed.set(key(i), i); }
            else problems.push(`"ip -${f} ${i.add}": ${msg}`);
          });
          if (problems.length > 0) break;
        }
        if (problems.length > 0) {
          const exists = problems.some((p) => /File exists/.test(p));
          const perm = problems.some((p) => /Operation not permitted/.test(p));
          throw new RoutesError(exists ? 'ROUTES_EXISTS' : perm ? 'ROUTES_EPERM' : 'ROUTES_FAILED',
            `could not add ${problems.join('; ')}. ${exists ? 'Another route or rule is in the way (see "ip route show ADDRESS" and "ip rule"): remove it, or leave that address out of the config.' : perm ? 'mplb needs root (CAP_NET_ADMIN).' : ''} Nothing was changed: the routes, rules and engine config are as they were.`);
        }
      } catch (e) {
        await rollback();
        throw e;
      }
      let done = false;
      return {
        plan,
        async commit() {
          if (done) return [];
          done = true;
          sysctlUndo.push(...setSysctls);
          sysctlPending = [];
          // What the set no longer needs, and what a dead earlier run left that this one does not need.
          const wanted = new Set(routeItems(next, opts).map(key));
          const orphans = [...installed.values()].filter((i) => priorKeys.has(key(i)) && !wanted.has(key(i)));
          // From here on what the dead run left is either needed (and ours like the rest) or being removed.
          priorKeys.clear();
          const problems = await removeItems(byRemovalOrder([...plan.remove, ...orphans]));
          current = { vips: [...next.vips], backends: [...next.backends] };
          pending = false;
          try { saveState(); } catch (e) { problems.push((e as Error).message); }
          return problems;
        },
        async rollback() {
          if (done) return;
          done = true;
          await rollback();
        },
      };
    },
    undo(o = {}) {
      if (undone) return;
      undone = true;
      const items = byRemovalOrder([...installed.values()]).filter((i) => !(o.keepGuard && i.guard));
      for (const f of [4, 6] as const) {
        try { runBatchSync(f, items.filter((i) => i.family === f).map((i) => i.del)); } catch { /* keep going */ }
      }
      for (const i of items) { installed.delete(key(i)); applied.push(`ip -${i.family} ${i.del}`); }
      if (o.keepGuard) {
        // The guards, rules and sysctls stay: the file keeps the values from before mplb for the next start.
        try { saveState(); } catch { /* keep going */ }
        return;
      }
      for (const s of allSysctls().reverse()) {
        // Restore only if nobody changed it since.
        try { if (readSysctl(s.path) === s.value) writeSysctl(s.path, s.old); } catch { /* keep going */ }
      }
      sysctlUndo.length = 0;
      sysctlPending = [];
      priorSysctls = [];
      try { saveState(); } catch { /* keep going */ }
    },
  };
  return handle;
}

/** Installs the routes for one address set (createRoutes + one committed change); on failure nothing stays. */
export async function installRoutes(opts: RoutesOptions & RouteSet): Promise<RoutesHandle> {
  const h = createRoutes(opts);
  const c = await h.change({ vips: opts.vips, backends: opts.backends });
  for (const p of await c.commit()) process.stderr.write(`mplb: ${p}\n`);
  return h;
}
