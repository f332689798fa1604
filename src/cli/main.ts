#!/usr/bin/env node
// The mplb command: a thin layer that parses arguments and calls into the replay, data plane and testbed modules.
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { POLICIES, UNKNOWN_TOKEN_ANSWERS, type Policy, type UnknownTokenAnswer } from '../engine/config.js';
import { formatReplay, replayCaptures } from '../replay/replay.js';
import { loadRunConfig } from '../control/run-config.js';
import { createInterface } from 'node:readline';

const USAGE = `mplb: a Multipath-TCP-aware layer-4 load balancer

usage:
  mplb replay FILE... [--backends N] [--policy maglev|hash-5tuple|hash-ip-pair] [--unaware]
                      [--unknown-token hash|drop|reset] [--vip ADDR:PORT]... [--json] [--pcap-out FILE]
  mplb run --config FILE [--control-stdin]
      run the balancer (root, Linux): a TUN device and routes in the current network namespace.
      SIGHUP reloads the config; SIGINT/SIGTERM remove the device and routes and exit.
      --control-stdin: answer 'stats', 'connections', 'quit' lines on stdin with JSON lines on stdout.
  mplb help
`;

/** A usage error: printed without a stack trace, exit code 2. */
export class UsageError extends Error {}

function cmdReplay(argv: string[]): number {
  const { values, positionals } = parseArgs({
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
    },
  });
  if (positionals.length === 0) throw new UsageError('replay needs at least one capture file');
  const backends = Number(values.backends);
  if (!Number.isInteger(backends) || backends < 1 || backends > 250) throw new UsageError(`--backends must be an integer 1-250, got ${values.backends}`);
  if (!(POLICIES as readonly string[]).includes(values.policy!)) throw new UsageError(`--policy must be one of ${POLICIES.join(', ')}`);
  if (!(UNKNOWN_TOKEN_ANSWERS as readonly string[]).includes(values['unknown-token']!)) throw new UsageError(`--unknown-token must be one of ${UNKNOWN_TOKEN_ANSWERS.join(', ')}`);
  const inputs = positionals.map((name) => {
    try { return { name, bytes: new Uint8Array(readFileSync(name)) }; } catch (e) { throw new UsageError(`cannot read ${name}: ${(e as Error).message}`); }
  });
  const result = replayCaptures(inputs, {
    backends,
    policy: values.policy as Policy,
    aware: !values.unaware,
    unknownTokenAnswer: values['unknown-token'] as UnknownTokenAnswer,
    vips: values.vip,
    pcapOut: values['pcap-out'] !== undefined,
  });
  if (values['pcap-out'] && result.pcapOut) writeFileSync(values['pcap-out'], result.pcapOut);
  const { pcapOut: _omit, ...doc } = result;
  process.stdout.write(values.json ? JSON.stringify(doc, null, 2) + '\n' : formatReplay(result) + '\n');
  return 0;
}

async function cmdRun(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string' }, 'control-stdin': { type: 'boolean', default: false } } });
  if (!values.config) throw new UsageError('run needs --config FILE');
  const cfg = loadRunConfig(values.config);
  const { startBalancer } = await import('../dataplane/balancer.js');
  const b = await startBalancer(cfg);
  const say = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
  const vipText = cfg.engine.vips.map((v) => `${v.address} -> ${v.backends.map((x) => `${x.address}:${x.port}`).join(', ')}`).join('; ');
  process.stderr.write(`mplb: running on ${b.tunName} (policy ${cfg.engine.policy}, MPTCP ${cfg.engine.mptcpAware ? 'aware' : 'unaware'}): ${vipText}\n`);
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    await b.stop();
    if (values['control-stdin']) say({ event: 'stopped' });
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));
  process.on('SIGHUP', () => {
    try {
      const next = loadRunConfig(values.config!);
      void b.reload(next).then(() => process.stderr.write('mplb: config reloaded\n'), (e: Error) => process.stderr.write(`mplb: reload failed, old config kept: ${e.message}\n`));
    } catch (e) {
      process.stderr.write(`mplb: reload refused, old config kept: ${(e as Error).message}\n`);
    }
  });
  if (values['control-stdin']) {
    say({ event: 'ready', pid: process.pid, tun: b.tunName });
    const rl = createInterface({ input: process.stdin });
    rl.on('line', (line) => {
      const [cmd, arg] = line.trim().split(/\s+/);
      const reply = (p: Promise<unknown>) => p.then((v) => say({ event: cmd, value: v }), (e: Error) => say({ event: 'error', command: cmd, message: e.message }));
      if (cmd === 'stats') reply(b.stats());
      else if (cmd === 'connections') reply(b.control({ op: 'connections', limit: 1000, offset: Number(arg ?? 0) }));
      else if (cmd === 'quit') void stop(0);
      else if (cmd) say({ event: 'error', command: cmd, message: 'unknown command (stats, connections [offset], quit)' });
    });
    rl.on('close', () => void stop(0));
  }
  await new Promise<never>(() => undefined);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'replay': return cmdReplay(rest);
    case 'run': return cmdRun(rest);
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
