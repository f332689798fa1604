#!/usr/bin/env node
// mplb's traffic programs: `server` (sink + per-connection MPTCP report) and `client` (timed/sized sender).
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { startTrafficServer, type TrafficServer } from './server.js';
import { runTrafficClient, type ClientReport } from './client.js';

const USAGE = `usage:
  cli.js server --port P [--host H] [--tcp] [--tcp-port Q] [--report FILE]
      MPTCP sink on P (plain TCP with --tcp; --tcp-port adds a plain TCP port). Prints one JSON line
      {"event":"listening",...} when ready. The report (every connection: token, subflows, bytes) is
      written to FILE after each connection closes, on SIGUSR1, and on SIGTERM/SIGINT before exiting.
  cli.js client --host H --port P (--bytes N[K|M|G] | --seconds S) [--connections C] [--bind ADDR]
                [--tcp] [--interval-ms 100] [--timeout-ms T] [--min-subflows N [--subflow-wait-ms 10000]] [--json]
      Sends N bytes (or for S seconds) on each of C connections; prints a report (JSON with --json).
      --min-subflows: a connection is not ended before it has had N subflows (or the wait is over).
      Exit code 0 when every connection delivered all its bytes.`;

function parseBytes(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)$/.exec(s);
  if (!m) throw new Error(`bad byte count "${s}" (e.g. 1000000, 64K, 10M)`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Math.round(Number(m[1]) * mult);
}

function writeReportAtomic(file: string, data: unknown): void {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(data, null, 2));
  fs.renameSync(tmp, file);
}

async function server(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      tcp: { type: 'boolean', default: false },
      'tcp-port': { type: 'string' },
      report: { type: 'string' },
    },
  });
  if (values.port === undefined) throw new Error('--port is required');
  let srv: TrafficServer | undefined;
  const report = () => {
    if (values.report && srv) writeReportAtomic(values.report, srv.report());
  };
  srv = await startTrafficServer({
    port: Number(values.port),
    host: values.host,
    mptcp: !values.tcp,
    tcpPort: values['tcp-port'] !== undefined ? Number(values['tcp-port']) : undefined,
    onConnectionDone: report,
  });
  report();
  process.on('SIGUSR1', report);
  const quit = () => {
    report();
    void srv!.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on('SIGTERM', quit);
  process.on('SIGINT', quit);
  process.stdout.write(`${JSON.stringify({ event: 'listening', pid: process.pid, ports: srv.ports })}\n`);
}

function summary(r: ClientReport): string {
  const lines = [`${r.mode} to ${r.host}:${r.port}: ${r.totalBytes} bytes in ${r.durationMs.toFixed(0)} ms = ${r.goodputMbps.toFixed(1)} Mbit/s ${r.ok ? 'OK' : 'FAILED'}`];
  for (const c of r.connections) {
    lines.push(
      `  #${c.index} ${c.localAddress ?? '?'}:${c.localPort ?? '?'} sent ${c.bytesSent} in ${c.completionMs?.toFixed(0) ?? '?'} ms ` +
        `(${c.goodputMbps?.toFixed(1) ?? '?'} Mbit/s) subflows ${c.subflowsTotalMax}/${c.server?.subflowsTotalMax ?? '?'} (client/server)` +
        `${c.server?.tokenHex ? ` server token ${c.server.tokenHex}` : ''}${c.error ? ` ERROR ${c.error}` : ''}`,
    );
  }
  return lines.join('\n');
}

async function client(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      bytes: { type: 'string' },
      seconds: { type: 'string' },
      connections: { type: 'string', default: '1' },
      bind: { type: 'string' },
      tcp: { type: 'boolean', default: false },
      'interval-ms': { type: 'string', default: '100' },
      'timeout-ms': { type: 'string' },
      'min-subflows': { type: 'string' },
      'subflow-wait-ms': { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (!values.host || !values.port) throw new Error('--host and --port are required');
  for (const k of ['min-subflows', 'subflow-wait-ms'] as const) {
    const v = values[k];
    if (v !== undefined && !/^\d+$/.test(v)) throw new Error(`--${k} must be a whole number (got "${v}")`);
  }
  const r = await runTrafficClient({
    host: values.host,
    port: Number(values.port),
    bytes: values.bytes !== undefined ? parseBytes(values.bytes) : undefined,
    seconds: values.seconds !== undefined ? Number(values.seconds) : undefined,
    connections: Number(values.connections),
    mptcp: !values.tcp,
    localAddress: values.bind,
    intervalMs: Number(values['interval-ms']),
    timeoutMs: values['timeout-ms'] !== undefined ? Number(values['timeout-ms']) : undefined,
    minSubflows: values['min-subflows'] !== undefined ? Number(values['min-subflows']) : undefined,
    subflowWaitMs: values['subflow-wait-ms'] !== undefined ? Number(values['subflow-wait-ms']) : undefined,
  });
  process.stdout.write(values.json ? `${JSON.stringify(r)}\n` : `${summary(r)}\n`);
  process.exitCode = r.ok ? 0 : 1;
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  if (cmd === 'server') return server(rest);
  if (cmd === 'client') return client(rest);
  process.stderr.write(`${USAGE}\n`);
  process.exitCode = 2;
}

main().catch((e: unknown) => {
  const err = e as Error & { code?: string };
  process.stderr.write(`error${err.code ? ` [${err.code}]` : ''}: ${err.message}\n`);
  process.exitCode = 1;
});
