// `mplb demo`: argument parsing and output for the poster's experiment (src/demo/demo.ts does the work).
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { clusterDemoJson, formatClusterDemo, runClusterDemo, writeClusterDemoOutputs } from '../demo/cluster.js';
import { demoJson, formatDemo, parseSize, runDemo, writeDemoOutputs, type DemoOptions } from '../demo/demo.js';

export const DEMO_USAGE = `usage: mplb demo [--runs N] [--seconds S] [--rate MBIT] [--servers N] [--sizes 5M,10M,...]
                 [--balancers N [--connections C]] [--out DIR] [--json FILE] [--quick]
  Runs the MPTCP load-balancing experiment in network namespaces (root, Linux): one client with two
  rate-limited links; no balancer vs an MPTCP-unaware balancer vs mplb. Prints a table, writes
  results.json and two SVG plots to --out (default ./demo-results), and the summary to --json FILE.
  --balancers N (2-8; default 1): N mplb balancers behind an ECMP router instead: no balancer vs N
  balancers without a shared token store vs N balancers sharing tokens through redis (needs
  redis-server); the router's hash decides per connection whether its join reaches the other balancer,
  so each run adds a probe of 16 short connections and the timed transfer is C concurrent connections
  (--connections, default 4).
  --quick: 1 run of 3 s at 20 Mbit/s with small sizes (a smoke test); explicit options still win.`;

/** A bad option: one line plus the usage on stderr, exit code 2. */
function usage(msg: string): number {
  process.stderr.write(`mplb demo: ${msg}\n${DEMO_USAGE}\n`);
  return 2;
}

export async function cmdDemo(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        runs: { type: 'string' },
        seconds: { type: 'string' },
        rate: { type: 'string' },
        servers: { type: 'string' },
        sizes: { type: 'string' },
        balancers: { type: 'string' },
        connections: { type: 'string' },
        out: { type: 'string', default: 'demo-results' },
        json: { type: 'string' },
        quick: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (e) {
    return usage((e as Error).message);
  }
  if (values.help) {
    process.stdout.write(`${DEMO_USAGE}\n`);
    return 0;
  }
  const q = values.quick;
  const num = (name: string, v: string | undefined, def: number): number => {
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, got ${JSON.stringify(v)}`);
    return n;
  };
  let opts: DemoOptions;
  try {
    const sizeText = values.sizes ?? (q ? '1M,2M,4M' : '5M,10M,20M,40M');
    opts = {
      runs: num('runs', values.runs, q ? 1 : 3),
      seconds: num('seconds', values.seconds, q ? 3 : 8),
      rateMbit: num('rate', values.rate, q ? 20 : 50),
      servers: num('servers', values.servers, 2),
      sizes: sizeText.split(',').filter(Boolean).map((s) => ({ label: s.trim(), bytes: parseSize(s) })),
      balancers: num('balancers', values.balancers, 1),
      ...(values.connections !== undefined ? { connections: num('connections', values.connections, 8) } : {}),
      log: (line) => process.stderr.write(`mplb demo: ${line}\n`),
    };
  } catch (e) {
    return usage((e as Error).message);
  }
  const cluster = (opts.balancers ?? 1) > 1;
  let text: string, files: string[], json: unknown;
  try {
    if (cluster) {
      const r = await runClusterDemo(opts);
      text = formatClusterDemo(r);
      files = writeClusterDemoOutputs(r, values.out!);
      json = clusterDemoJson(r);
    } else {
      const r = await runDemo(opts);
      text = formatDemo(r);
      files = writeDemoOutputs(r, values.out!);
      json = demoJson(r);
    }
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code === 'EDEMO_OPTION') return usage(err.message);
    // Environment problems (preflight, testbed) are one clear line; anything else keeps its stack.
    process.stderr.write(`mplb demo: ${err.code ? err.message : (err.stack ?? String(e))}\n`);
    return 1;
  }
  process.stdout.write(`${text}\n`);
  if (values.json) {
    writeFileSync(values.json, `${JSON.stringify(json, null, 2)}\n`);
    files.push(values.json);
  }
  process.stderr.write(`mplb demo: wrote ${files.join(', ')}\n`);
  // The demo ran; missing the targets is reported in the table, not as a failure of the command.
  return 0;
}
