#!/usr/bin/env node
// The mplb command: a thin layer that parses arguments and calls into the replay, data plane and testbed modules.
import { statSync } from 'node:fs';
import { parseEndpoint } from '../wire/addr.js';
import { parseArgs } from 'node:util';
import type { Policy, UnknownTokenAnswer } from '../engine/config.js';
import type { AdminServer } from '../control/admin-server.js';
import type { Logger } from '../control/logger.js';
import { createInterface } from 'node:readline';

const USAGE = `mplb: a Multipath-TCP-aware layer-4 load balancer

usage:
  mplb replay FILE... [--backends N] [--policy maglev|hash-5tuple|hash-ip-pair] [--unaware]
                      [--unknown-token hash|drop|reset] [--vip ADDR:PORT]... [--max-vips N] [--json] [--pcap-out FILE]
      replay pcap/pcapng captures through the engine (streamed from disk); without --vip every address:port that
      receives a SYN is a VIP, at most --max-vips of them (default 256; more is refused: name them with --vip)
  mplb run --config FILE [--control-stdin] [--keep-guard]
      run the balancer (root, Linux): a TUN device and routes in the current network namespace, the admin
      API, /metrics and dashboard on http://127.0.0.1:9740/ (admin.*), health checks (health.*), JSON logs on
      stderr (log.level or MPLB_LOG_LEVEL). Changes through the API need MPLB_ADMIN_TOKEN or admin.token.
      SIGHUP reloads the config; SIGINT/SIGTERM remove the device and routes and exit (during the start too).
      --control-stdin: answer 'stats', 'connections', 'backends', 'quit' lines on stdin with JSON lines on stdout.
      --keep-guard: on exit leave blackhole routes for the VIPs and backend replies, so that a restarted mplb
      finds its clients' connections alive (the next start takes them over; stop once without it to remove them).
  mplb demo [--runs N] [--seconds S] [--rate MBIT] [--servers N] [--sizes 5M,10M,...] [--out DIR] [--json FILE] [--quick]
            [--balancers N [--connections C]]
      the poster's experiment on a namespace testbed (root, Linux): no balancer, an MPTCP-unaware balancer and mplb;
      with --balancers N: no balancer, N mplb balancers behind an ECMP router without and with the shared token store
  mplb testbed up [--servers N] [--rate MBIT] [--mode balancer|noBalancer] [--balancers N] [--redis|--no-redis] [--ipv6] [--run-id ID]
               | down RUNID...|--all | status
      network namespaces with real Linux MPTCP hosts (root): a client with two rate-limited links, a balancer, servers;
      --balancers N (2-16): a router spreads the VIP over N balancers by an L4 ECMP hash, servers reply through any
      of them, and redis-server runs in its own namespace (--no-redis: without it; --redis: also with 1 balancer)
  mplb help
`;

/** A usage error: printed without a stack trace, exit code 2. */
export class UsageError extends Error {}

/** parseArgs' own errors (an unknown option, a missing value) are usage errors too. */
function usageErrors<T>(f: () => T): T {
  try { return f(); } catch (e) { throw (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? new UsageError((e as Error).message) : e; }
}

async function cmdReplay(argv: string[]): Promise<number> {
  // Loaded here, not at the top, so that `mplb run` starts (and handles its signals) without them.
  const [{ POLICIES, UNKNOWN_TOKEN_ANSWERS }, { DEFAULT_MAX_VIPS, formatReplay, MAX_VIPS_LIMIT, replayCaptures }] = await Promise.all([import('../engine/config.js'), import('../replay/replay.js')]);
  const { values, positionals } = usageErrors(() => parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      backends: { type: 'string', default: '2' },
      policy: { type: 'string', default: 'maglev' },
      unaware: { type: 'boolean', default: false },
      'unknown-token': { type: 'string', default: 'hash' },
      vip: { type: 'string', multiple: true },
      json: { type: 'boolean', default: false },
      'pcap-out': { type: 'string' },
      'max-vips': { type: 'string', default: String(DEFAULT_MAX_VIPS) },
    },
  }));
  if (positionals.length === 0) throw new UsageError('replay needs at least one capture file');
  const maxVips = Number(values['max-vips']);
  if (!Number.isInteger(maxVips) || maxVips < 1 || maxVips > MAX_VIPS_LIMIT) throw new UsageError(`--max-vips must be an integer 1-${MAX_VIPS_LIMIT}, got ${values['max-vips']}`);
  const backends = Number(values.backends);
  if (!Number.isInteger(backends) || backends < 1 || backends > 250) throw new UsageError(`--backends must be an integer 1-250, got ${values.backends}`);
  if (!(POLICIES as readonly string[]).includes(values.policy!)) throw new UsageError(`--policy must be one of ${POLICIES.join(', ')}`);
  if (!(UNKNOWN_TOKEN_ANSWERS as readonly string[]).includes(values['unknown-token']!)) throw new UsageError(`--unknown-token must be one of ${UNKNOWN_TOKEN_ANSWERS.join(', ')}`);
  for (const v of values.vip ?? []) {
    if (parseEndpoint(v)?.port === undefined) throw new UsageError(`--vip must be ADDR:PORT ([ADDR]:PORT for IPv6), got ${JSON.stringify(v)}`);
  }
  // Files are streamed from disk in chunks by the replay; checked here so that a missing one is a usage error.
  const inputs = positionals.map((name) => {
    let st;
    try { st = statSync(name); } catch (e) { throw new UsageError(`cannot read ${name}: ${(e as Error).message}`); }
    if (!st.isFile()) throw new UsageError(`cannot read ${name}: not a regular file`);
    return { name, path: name, dev: st.dev, ino: st.ino };
  });
  const out = values['pcap-out'];
  if (out !== undefined) {
    // The output is written while the inputs are read: writing over one of them would destroy it mid-replay.
    let st;
    try { st = statSync(out); } catch { st = undefined; }
    const same = st && inputs.find((i) => i.dev === st.dev && i.ino === st.ino);
    if (same) throw new UsageError(`--pcap-out ${out} is the input ${same.name}; write the output to another file`);
  }
  const result = replayCaptures(inputs.map(({ name, path }) => ({ name, path })), {
    backends,
    policy: values.policy as Policy,
    aware: !values.unaware,
    unknownTokenAnswer: values['unknown-token'] as UnknownTokenAnswer,
    vips: values.vip,
    maxVips,
    pcapOut: out,
  });
  for (const w of result.warnings) process.stderr.write(`mplb: warning: ${w}\n`);
  // A reader that goes away (`| head`) ends the output, quietly; another write error is one line.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') process.stderr.write(`mplb: cannot write the report: ${e.message}\n`);
    process.exit(e.code === 'EPIPE' ? 0 : 1);
  });
  const { pcapOut: _omit, ...doc } = result;
  process.stdout.write(values.json ? JSON.stringify(doc, null, 2) + '\n' : formatReplay(result) + '\n');
  return 0;
}

/**
 * SIGTERM, SIGINT and SIGHUP for `mplb run`, from its first step: without handlers the default action would end the
 * process mid-start and leave routes, guards and sysctls behind (an 'exit' handler does not run on a signal). Until
 * the start completes a stop request aborts it at its next step (what was set up is undone, exit 0) and a SIGHUP is
 * remembered and applied once running; after that `running()` gives them their usual meaning.
 */
class RunSignals {
  readonly abort = new AbortController();
  private onStop?: (code: number) => void;
  private onReload?: () => void;
  private reloadWanted = false;
  constructor() {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => this.stop(sig));
    process.on('SIGHUP', () => { if (this.onReload) this.onReload(); else this.reloadWanted = true; });
  }
  stop(reason: string): void {
    if (this.onStop) this.onStop(0);
    else if (!this.abort.signal.aborted) this.abort.abort(reason);
  }
  /**
   * Throws StartAborted when a stop was asked for: awaited between the steps of the start. A signal is handled on the
   * event loop, so one that came during a synchronous step (the YAML parse) is seen only after a turn of the loop.
   */
  async check(StartAborted: new (signal: string) => Error): Promise<void> {
    await new Promise<void>((resolve) => setImmediate(resolve));
    if (this.abort.signal.aborted) throw new StartAborted(String(this.abort.signal.reason));
  }
  running(stop: (code: number) => void, reload: () => void): void {
    this.onStop = stop;
    this.onReload = reload;
    if (this.reloadWanted) reload();
  }
}

async function cmdRun(argv: string[]): Promise<number> {
  const signals = new RunSignals();
  const t0 = performance.now();
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string' }, 'control-stdin': { type: 'boolean', default: false }, 'keep-guard': { type: 'boolean', default: false } } });
  if (!values.config) throw new UsageError('run needs --config FILE');
  // Loaded here, not at the top, so that `replay` and `help` do not pay for them (and the handlers above come first).
  const { StartAborted, startBalancer, prestartPacketWorker } = await import('../dataplane/balancer.js');
  // The packet worker's thread and modules load on the other core while this one reads the config.
  const prestarted = prestartPacketWorker();
  const { loadRunConfig, resolveAdminToken, resolveStorePassword } = await import('../control/run-config.js');
  const say = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
  /** Undo steps of the start so far, newest last. */
  const undo: Array<() => Promise<void>> = [];
  const abandon = async (e: unknown): Promise<never> => {
    for (const u of undo.reverse()) await u().catch(() => undefined);
    prestarted.discard();
    if (e instanceof StartAborted) {
      process.stderr.write(`mplb: ${e.message}\n`);
      if (values['control-stdin']) say({ event: 'stopped' });
      process.exit(0);
    }
    throw e;
  };
  let cfg: ReturnType<typeof loadRunConfig>, token: string | undefined;
  try {
    await signals.check(StartAborted);
    cfg = loadRunConfig(values.config);
    const configMs = performance.now() - t0;
    // Checked before anything is set up, so a bad token stops mplb with nothing to undo.
    token = cfg.admin.enabled ? resolveAdminToken(cfg.admin) : undefined;
    if (cfg.tokenStore) cfg.tokenStore.password = resolveStorePassword(cfg.tokenStore);
    await signals.check(StartAborted);
    // The data path comes up first (a restart's gap is what flows feel); the control plane's modules load meanwhile.
    const control = Promise.all([
      import('../control/controller.js'), import('../control/health.js'), import('../control/logger.js'), import('../control/admin-server.js'),
    ]);
    control.catch(() => undefined);
    // Engine exceptions are bugs: logged (rate-limited in the worker) once the logger exists, counted always.
    let onEngineError = (e: { error: string; head: string; suppressed: number }): void => { process.stderr.write(`mplb: engine error: ${e.error} (packet ${e.head})\n`); };
    const b = await startBalancer(cfg, { onEngineError: (e) => onEngineError(e), signal: signals.abort.signal, prestarted });
    undo.push(() => b.stop());
    const mods = await control;
    await signals.check(StartAborted);
    const [{ Controller }, { HealthChecker }, { createLogger, logLevel }, { reloadConfig, startAdminServer }] = mods;
    const log: Logger = createLogger({ level: logLevel(cfg.log) });
    onEngineError = (e) => log.error({ err: e.error, packetHead: e.head, suppressed: e.suppressed }, 'engine error: packet dropped (engine_error)');
    // Every change (admin API, health verdicts, SIGHUP) goes through one Controller so they compose.
    const ctl = new Controller(b, cfg);
    // pino children keep their own level: all three are set on reload.
    const healthLog = log.child({ component: 'health' }), adminLog = log.child({ component: 'admin' });
    const health = new HealthChecker({ controller: ctl, logger: healthLog });
    let admin: AdminServer | undefined;
    const reload = async () => {
      const next = loadRunConfig(values.config!);
      const newToken = resolveAdminToken(next.admin);
      const { keptDrained, restartNeeded } = await reloadConfig(ctl, next);
      const level = logLevel(next.log);
      for (const l of [log, healthLog, adminLog]) l.level = level;
      admin?.setToken(newToken);
      admin?.setAuthReads(next.admin.authReads);
      admin?.setAllowedHosts(next.admin.allowedHosts);
      if (restartNeeded.length > 0) log.warn({ fields: restartNeeded }, 'these settings changed in the file but take effect on restart only; their running values are kept');
      log.info({ vips: next.engine.vips.length, keptDrained }, 'config reloaded');
    };
    const adminStart = performance.now();
    if (cfg.admin.enabled) {
      admin = await startAdminServer({
        controller: ctl, address: cfg.admin.address, port: cfg.admin.port, token, authReads: cfg.admin.authReads, allowedHosts: cfg.admin.allowedHosts,
        health, loopStats: () => b.loop.stats(), reload, logger: adminLog,
      });
      const a = admin;
      undo.push(() => a.close());
    }
    await signals.check(StartAborted);
    health.start();
    const startMs = { total: Math.round(performance.now() - t0), config: Math.round(configMs), ...b.startTimings, admin: Math.round(performance.now() - adminStart) };
    const vipText = cfg.engine.vips.length > 20 ? `${cfg.engine.vips.length} VIPs` : cfg.engine.vips.map((v) => `${v.address} -> ${v.backends.map((x) => `${x.address}:${x.port}`).join(', ')}`).join('; ');
    log.info({ tun: b.tunName, datapath: b.datapath, ...(b.datapathNote ? { datapathFallback: b.datapathNote } : {}), policy: cfg.engine.policy, mptcpAware: cfg.engine.mptcpAware, vips: vipText, admin: admin?.url ?? 'off', health: cfg.health.enabled ? `${cfg.health.check} every ${cfg.health.intervalMs} ms` : 'off', startMs }, 'mplb running');
    let stopping = false;
    const stop = async (code: number) => {
      if (stopping) return;
      stopping = true;
      log.info('stopping');
      // Not waiting for a probe in flight: the data path (TUN, routes) goes first.
      void health.stop();
      await admin?.close();
      await b.stop({ keepGuard: values['keep-guard'] });
      if (values['control-stdin']) say({ event: 'stopped' });
      process.exit(code);
    };
    signals.running((code) => void stop(code), () => {
      reload().catch((e: Error) => log.error({ err: e.message }, 'reload refused, old config kept'));
    });
    if (values['control-stdin']) {
      say({ event: 'ready', pid: process.pid, tun: b.tunName, admin: admin?.url, startMs });
      const rl = createInterface({ input: process.stdin });
      rl.on('line', (line) => {
        const [cmd, arg] = line.trim().split(/\s+/);
        const reply = (p: Promise<unknown>) => p.then((v) => say({ event: cmd, value: v }), (e: Error) => say({ event: 'error', command: cmd, message: e.message }));
        if (cmd === 'stats') reply(Promise.resolve({ loop: b.loop.stats(), engine: b.engine.stats() }));
        else if (cmd === 'connections') reply(b.engine.call('connections', { limit: 1000, offset: Number(arg ?? 0) }));
        else if (cmd === 'backends') reply(b.engine.call('backends', {}));
        else if (cmd === 'quit') void stop(0);
        else if (cmd) say({ event: 'error', command: cmd, message: 'unknown command (stats, connections [offset], backends, quit)' });
      });
      rl.on('close', () => void stop(0));
    }
  } catch (e) {
    return abandon(e);
  }
  await new Promise<never>(() => undefined);
  return 0;
}

/** `mplb testbed up|down|status`: the namespace testbed by hand (the demo and the tests make their own). */
async function cmdTestbed(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const tb = await import('../testbed/testbed.js');
  const { values, positionals } = parseArgs({
    args: rest, allowPositionals: true,
    options: {
      servers: { type: 'string', default: '2' }, rate: { type: 'string', default: '50' }, mode: { type: 'string', default: 'balancer' }, all: { type: 'boolean', default: false },
      balancers: { type: 'string', default: '1' }, redis: { type: 'boolean' }, 'no-redis': { type: 'boolean' }, ipv6: { type: 'boolean', default: false },
      'run-id': { type: 'string' },
    },
  });
  if (sub === 'up') {
    const servers = Number(values.servers), rate = Number(values.rate), balancers = Number(values.balancers);
    if (!Number.isInteger(servers) || servers < 1 || servers > 16) throw new UsageError('--servers must be an integer 1-16');
    if (!Number.isFinite(rate) || rate < 0) throw new UsageError('--rate must be Mbit/s (0 = no limit)');
    if (values.mode !== 'balancer' && values.mode !== 'noBalancer') throw new UsageError('--mode must be balancer or noBalancer');
    if (!Number.isInteger(balancers) || balancers < 1 || balancers > 16) throw new UsageError('--balancers must be an integer 1-16');
    if (balancers > 1 && values.mode !== 'balancer') throw new UsageError('--mode noBalancer has no balancer: it needs --balancers 1');
    if (values.redis && values['no-redis']) throw new UsageError('give --redis or --no-redis, not both');
    const redis = values.redis ? true : values['no-redis'] ? false : undefined;
    const h = tb.testbedUp({ servers, rateMbit: rate, mode: values.mode, balancers, redis, ipv6: values.ipv6, runId: values['run-id'], persist: true });
    const out: Record<string, unknown> = { runId: h.runId, namespaces: h.namespaces, vips: h.vips, client: h.client.addrs, servers: h.servers.map((s) => s.addr) };
    if (h.ipv6) Object.assign(out, { vips6: h.vips6, client6: h.client.addrs6, servers6: h.servers.map((s) => s.addr6) });
    if (h.router) {
      out.balancers = h.balancers.map((b) => ({ ns: b.ns, uplink: b.uplinkAddr, lan: b.lanAddr, ...(b.ctlAddr ? { ctl: b.ctlAddr } : {}) }));
      out.router = { ns: h.router.ns, vipNexthops: h.balancers.map((b) => b.uplinkAddr) };
    }
    if (h.redis) out.redis = { ns: h.redis.ns, host: h.redis.host, port: h.redis.port, password: h.redis.password, pid: h.redis.pid };
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    const how = h.namespaces.balancers.length > 1
      ? `ip netns exec NS mplb run --config FILE, with one config, for each NS of ${h.namespaces.balancers.join(' ')}`
      : `ip netns exec ${h.namespaces.balancer} mplb run --config FILE`;
    process.stderr.write(`testbed ${h.runId} is up; run mplb in it with: ${how}\n` +
      `remove it with: mplb testbed down ${h.runId}\n`);
    return 0;
  }
  if (sub === 'down') {
    if (positionals.length === 0 && !values.all) throw new UsageError('testbed down needs a run id (see testbed status) or --all');
    const removed = values.all ? tb.testbedDown() : positionals.flatMap((id) => tb.testbedDown(id));
    process.stdout.write(`removed: ${removed.join(' ') || 'nothing'}\n`);
    return 0;
  }
  if (sub === 'status') {
    process.stdout.write(`${JSON.stringify(tb.testbedStatus(), null, 2)}\n`);
    return 0;
  }
  throw new UsageError('testbed needs up, down or status');
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'replay': return cmdReplay(rest);
    case 'run': return cmdRun(rest);
    case 'demo': return (await import('./demo-command.js')).cmdDemo(rest);
    case 'testbed': return cmdTestbed(rest);
    case undefined: case 'help': case '--help': case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(cmd)}`);
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  const e = err as Error & { code?: string };
  // Expected failures (usage, config, capture format, environment) get one clear line, not a stack trace.
  if (err instanceof UsageError || (e && typeof e.code === 'string' && typeof e.message === 'string')) {
    process.stderr.write(`mplb: ${e.message}\n`);
    if (err instanceof UsageError) process.stderr.write(USAGE);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  } else {
    process.stderr.write(`mplb: internal error: ${e?.stack ?? String(err)}\n`);
    process.exitCode = 70;
  }
});
