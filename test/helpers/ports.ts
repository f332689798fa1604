// An in-process EnginePort that behaves like the balancer's where it matters to the Controller: reload takes a few
// milliseconds (a worker round trip and route changes), so concurrent changes really overlap, and reloads and
// health calls can be told to fail (atomically: the engine is left as it was). It counts what reaches the engine.
import { setTimeout as sleep } from 'node:timers/promises';
import { Controller, inProcessPort, type EnginePort } from '../../src/control/controller.js';
import type { RunConfig } from '../../src/control/run-config.js';
import type { EngineChannel } from '../../src/dataplane/control-protocol.js';

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32), so a failing interleaving can be rerun. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface TestPort extends EnginePort {
  local: ReturnType<typeof inProcessPort>['local'];
  /** Reloads that reached the engine, and setUp calls. */
  counts: { reloads: number; setUps: number };
  /** The next reload throws `e` without touching the engine. */
  failNextReload(e?: Error): void;
  /** The next setUp throws `e` without touching the engine. */
  failNextSetUp(e?: Error): void;
}

export function slowPort(cfg: RunConfig, opts: { minMs?: number; maxMs?: number; seed?: number } = {}): TestPort {
  const inner = inProcessPort(cfg);
  const min = opts.minMs ?? 1, max = opts.maxMs ?? 5;
  const rand = rng(opts.seed ?? 1);
  const pause = () => sleep(min + Math.floor(rand() * (max - min + 1)));
  const counts = { reloads: 0, setUps: 0 };
  const reloadFailures: Error[] = [], setUpFailures: Error[] = [];
  const engine: EngineChannel = {
    async call(op, req) {
      if (op === 'setUp') {
        const f = setUpFailures.shift();
        if (f) throw f;
        counts.setUps++;
      }
      return inner.engine.call(op, req);
    },
    stats: () => inner.engine.stats(),
  };
  return {
    local: inner.local,
    engine,
    counts,
    failNextReload(e = new Error('simulated reload failure')) { reloadFailures.push(e); },
    failNextSetUp(e = new Error('simulated setUp failure')) { setUpFailures.push(e); },
    async reload(next) {
      await pause();
      const f = reloadFailures.shift();
      if (f) throw f;
      counts.reloads++;
      await inner.reload(next);
      await pause();
    },
  };
}

/** The engine's live backends (removed ones left out), as the engine itself reports them. */
export async function engineBackends(port: EnginePort): Promise<Array<{ vip: string; id: string; weight: number; up: boolean }>> {
  const list = await port.engine.call('backends', {});
  return list.filter((b) => !b.removed).map((b) => ({ vip: b.vipId, id: b.id, weight: b.weight, up: b.up }));
}

/** Everything a change can touch: the Controller's config, drain marks and views, and the engine's backends. */
export async function controlState(ctl: Controller, port: EnginePort) {
  const views = (await ctl.vips()).map((v) => ({
    address: v.address, policy: v.policy,
    backends: v.backends.map((b) => ({ id: b.id, weight: b.weight, configuredWeight: b.configuredWeight, draining: b.draining, healthy: b.healthy })),
  }));
  return { config: ctl.config, drained: ctl.drainedBackends().sort(), views, engine: await engineBackends(port) };
}

/** "ok" or the refusal's HTTP status (500 for anything that is not a ControlError), for comparing outcomes. */
export function outcome(r: PromiseSettledResult<unknown>): string {
  if (r.status === 'fulfilled') return 'ok';
  const e = r.reason as { status?: number; name?: string };
  return e?.name === 'ControlError' ? String(e.status) : `500 ${String((r.reason as Error)?.message ?? r.reason)}`;
}
