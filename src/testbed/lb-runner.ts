#!/usr/bin/env node
// Runs a packet loop + routes in the current namespace (meant for `ip netns exec <lb-ns> node lb-runner.js`):
// a stand-in for `mplb run` without its control plane, for end-to-end tests and benchmarks of the loop itself.
// stdout: JSON lines ({"event":"ready"|"stats"|"stopped"}); stdin: "stats" or "quit" lines.
import { parseArgs } from 'node:util';
import readline from 'node:readline';
import { validateEngineConfig } from '../engine/config.js';
import { startPacketLoop, type PacketLoop } from '../dataplane/packet-loop.js';
import { installRoutes, type RoutesHandle } from '../dataplane/routes.js';

const { values } = parseArgs({
  options: {
    tun: { type: 'string', default: 'mplb0' },
    mtu: { type: 'string', default: '1500' },
    'txqueuelen': { type: 'string' },
    engine: { type: 'string' },
    vnet: { type: 'boolean', default: false },
    queues: { type: 'string', default: '1' },
    spin: { type: 'string', default: '0' },
    vips: { type: 'string', default: '' },
    backends: { type: 'string', default: '' },
    'probe-ms': { type: 'string', default: '0' },
  },
});

const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
let loop: PacketLoop | undefined;
let routes: RoutesHandle | undefined;
let probe: NodeJS.Timeout | undefined;
let stopping = false;

// Routes must not outlive the process, whatever ends it.
process.on('exit', () => routes?.undo());

async function stats(): Promise<unknown> {
  return { loop: loop?.stats(), engine: loop?.engine.stats() };
}

async function stop(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  if (probe) clearInterval(probe);
  const final = loop ? await stats() : undefined;
  await loop?.stop();
  routes?.undo();
  out({ event: 'stopped', ...(final as object) });
  process.exit(code);
}

async function main(): Promise<void> {
  if (!values.engine) throw new Error('--engine JSON (an engine config) is required');
  loop = await startPacketLoop({
    tunName: values.tun,
    mtu: Number(values.mtu),
    txQueueLen: values.txqueuelen !== undefined ? Number(values.txqueuelen) : undefined,
    engine: validateEngineConfig(JSON.parse(values.engine), 'engine'),
    vnetHdr: values.vnet,
    queues: Number(values.queues),
    spinUs: Number(values.spin),
  });
  const list = (s: string) => s.split(',').map((x) => x.trim()).filter(Boolean);
  routes = await installRoutes({ tunName: loop.tunName, vips: list(values.vips), backends: list(values.backends) });
  const probeMs = Number(values['probe-ms']);
  // Optional: keep asking the worker something, to measure control latency under load.
  if (probeMs > 0) probe = setInterval(() => void loop?.engine.call('backends', {}).catch(() => undefined), probeMs);
  out({ event: 'ready', pid: process.pid, tun: loop.tunName, routes: routes.applied });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const cmd = line.trim();
    if (cmd === 'stats') void stats().then((s) => out({ event: 'stats', ...(s as object) }));
    else if (cmd === 'reset') loop?.resetMax();
    else if (cmd === 'quit') void stop(0);
  });
  rl.on('close', () => void stop(0));
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void stop(0));
}

main().catch((e: unknown) => {
  const err = e as Error & { code?: string };
  out({ event: 'error', code: err.code, message: err.message });
  void loop?.stop().finally(() => process.exit(1));
  if (!loop) process.exit(1);
});
