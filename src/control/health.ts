// Active health checks: every intervalMs each backend gets a TCP (or MPTCP) connect probe; `fall` failures in a row
// take it out of selection (Controller.setHealthy -> Maglev moves only its slots), `rise` successes bring it back.
// Time and probes are injected so tests drive every transition without real timers or sockets.
import net from 'node:net';
import { connectMptcp, getMptcpInfo } from '../io/mptcp-socket.js';
import type { Controller } from './controller.js';
import type { HealthCheckKind } from './run-config.js';
import { silentLogger, type Logger } from './logger.js';

export interface ProbeTarget {
  vip: string;
  /** Backend id as the Controller names it ("addr:port"). */
  backend: string;
  address: string;
  /** Port probed (the backend's unless health.port or an override says otherwise). */
  port: number;
  check: HealthCheckKind;
  timeoutMs: number;
}
export interface ProbeResult { ok: boolean; error?: string }
export type Probe = (t: ProbeTarget) => Promise<ProbeResult>;

/** The clock and timers the checker uses (real ones in production, a manual one in tests). */
export interface Scheduler {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realScheduler: Scheduler = {
  now: () => Date.now(),
  // unref: pending checks alone must not keep a process alive.
  setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface BackendHealth {
  vip: string;
  backend: string;
  /** False when checks are off for this backend (then `state` is "up"). */
  checked: boolean;
  check: HealthCheckKind;
  port: number;
  state: 'up' | 'down';
  /** Consecutive successes / failures so far. */
  successes: number;
  failures: number;
  checks: { ok: number; fail: number };
  transitions: { up: number; down: number };
  lastError?: string;
  lastCheckMs?: number;
  lastChangeMs?: number;
}

/** Connects and closes at once. An "mptcp" check also fails when the connection fell back to plain TCP. */
export const connectProbe: Probe = (t) => new Promise((resolve) => {
  let s: net.Socket;
  try {
    s = t.check === 'mptcp' ? connectMptcp({ host: t.address, port: t.port }) : net.connect({ host: t.address, port: t.port });
  } catch (e) {
    resolve({ ok: false, error: (e as Error).message });
    return;
  }
  let done = false;
  const finish = (r: ProbeResult) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    s.destroy();
    resolve(r);
  };
  // Backstop only: the checker times probes out on its own scheduler.
  const timer = setTimeout(() => finish({ ok: false, error: `no connection within ${t.timeoutMs} ms` }), t.timeoutMs);
  s.once('connect', () => {
    if (t.check !== 'mptcp') return finish({ ok: true });
    const info = getMptcpInfo(s);
    finish(info && !info.fallback ? { ok: true } : { ok: false, error: 'connected, but the backend does not speak MPTCP (fell back to TCP)' });
  });
  s.once('error', (e: NodeJS.ErrnoException) => finish({ ok: false, error: e.code ?? e.message }));
});

export interface HealthCheckerOptions {
  controller: Controller;
  probe?: Probe;
  scheduler?: Scheduler;
  logger?: Logger;
}

export class HealthChecker {
  private readonly ctl: Controller;
  private readonly probe: Probe;
  private readonly sched: Scheduler;
  private readonly log: Logger;
  private readonly states = new Map<string, BackendHealth>();
  private timer: unknown;
  private running = false;
  private inflight: Promise<void> = Promise.resolve();
  /** Completed rounds (for tests and the API). */
  rounds = 0;

  constructor(opts: HealthCheckerOptions) {
    this.ctl = opts.controller;
    this.probe = opts.probe ?? connectProbe;
    this.sched = opts.scheduler ?? realScheduler;
    this.log = opts.logger ?? silentLogger;
  }

  /** Starts rounds: the first one now, then every health.intervalMs (read from the live config each time). */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule(0);
  }

  /** Stops scheduling and waits for a round in progress. */
  async stop(): Promise<void> {
    this.running = false;
    if (this.timer !== undefined) this.sched.clearTimeout(this.timer);
    this.timer = undefined;
    await this.inflight;
  }

  /** Resolves when the round in progress (if any) has finished. */
  settled(): Promise<void> { return this.inflight; }

  /** Current verdicts, one per configured backend. */
  snapshot(): BackendHealth[] {
    return [...this.states.values()].map((s) => ({ ...s, checks: { ...s.checks }, transitions: { ...s.transitions } }));
  }

  get(vip: string, backend: string): BackendHealth | undefined {
    const s = this.states.get(`${vip}|${backend}`);
    return s && { ...s, checks: { ...s.checks }, transitions: { ...s.transitions } };
  }

  private schedule(ms: number): void {
    this.timer = this.sched.setTimeout(() => {
      this.timer = undefined;
      const t0 = this.sched.now();
      this.inflight = this.runRound()
        .catch((e: Error) => this.log.error({ err: e.message }, 'health check round failed'))
        .finally(() => {
          if (this.running) this.schedule(Math.max(0, this.ctl.config.health.intervalMs - (this.sched.now() - t0)));
        });
    }, ms);
  }

  /** One round: probe every backend whose checks are on, then apply rise/fall. Public so tests can step rounds. */
  async runRound(): Promise<void> {
    const cfg = this.ctl.config.health;
    const anyOn = cfg.enabled || Object.values(cfg.vips).some((o) => o.enabled);
    const anyDown = [...this.states.values()].some((s) => s.state === 'down');
    if (!anyOn && !anyDown) {
      this.states.clear();
      this.rounds++;
      return;
    }
    const views = await this.ctl.vips();
    const seen = new Set<string>();
    const jobs: Array<Promise<void>> = [];
    for (const v of views) {
      const ov = cfg.vips[v.address] ?? {};
      const on = ov.enabled ?? cfg.enabled;
      for (const b of v.backends) {
        const key = `${v.address}|${b.id}`;
        seen.add(key);
        let st = this.states.get(key);
        if (!st) {
          // Start from the Controller's verdict: up at startup (no blackout before the first probes), down for a
          // backend that was taken out earlier (it must earn its way back with `rise` successes).
          st = {
            vip: v.address, backend: b.id, checked: false, check: cfg.check, port: b.port, state: b.healthy ? 'up' : 'down',
            successes: 0, failures: 0, checks: { ok: 0, fail: 0 }, transitions: { up: 0, down: 0 },
          };
          this.states.set(key, st);
        }
        // The Controller's verdict counts: it forgets one when a backend is removed (added again, it is healthy), and
        // keeps the old one when applying a verdict failed.
        st.state = b.healthy ? 'up' : 'down';
        st.check = ov.check ?? cfg.check;
        st.port = ov.port ?? cfg.port ?? b.port;
        st.checked = on;
        if (!on) {
          // Checks turned off: the checker's verdicts go with them.
          st.successes = st.failures = 0;
          st.lastError = undefined;
          if (st.state === 'down') jobs.push(this.transition(st, 'up', 'health checks turned off'));
          continue;
        }
        const s = st;
        const target: ProbeTarget = { vip: v.address, backend: b.id, address: b.address, port: s.port, check: s.check, timeoutMs: cfg.timeoutMs };
        jobs.push(this.probeOnce(target).then((r) => this.record(s, r, cfg.rise, cfg.fall)));
      }
    }
    for (const key of [...this.states.keys()]) if (!seen.has(key)) this.states.delete(key);
    await Promise.all(jobs);
    this.rounds++;
  }

  private probeOnce(t: ProbeTarget): Promise<ProbeResult> {
    return new Promise((resolve) => {
      let done = false;
      const h = this.sched.setTimeout(() => {
        if (done) return;
        done = true;
        resolve({ ok: false, error: `timeout after ${t.timeoutMs} ms` });
      }, t.timeoutMs);
      let p: Promise<ProbeResult>;
      try { p = this.probe(t); } catch (e) { p = Promise.resolve({ ok: false, error: (e as Error).message }); }
      void p.catch((e: Error) => ({ ok: false, error: e?.message ?? String(e) })).then((r) => {
        if (done) return;
        done = true;
        this.sched.clearTimeout(h);
        resolve(r);
      });
    });
  }

  private async record(st: BackendHealth, r: ProbeResult, rise: number, fall: number): Promise<void> {
    st.lastCheckMs = this.sched.now();
    if (r.ok) {
      st.checks.ok++;
      st.successes++;
      st.failures = 0;
      st.lastError = undefined;
      if (st.state === 'down' && st.successes >= rise) await this.transition(st, 'up', `${st.successes} checks passed`);
    } else {
      st.checks.fail++;
      st.failures++;
      st.successes = 0;
      st.lastError = r.error ?? 'failed';
      this.log.debug({ vip: st.vip, backend: st.backend, error: st.lastError, failures: st.failures }, 'health check failed');
      if (st.state === 'up' && st.failures >= fall) await this.transition(st, 'down', st.lastError);
    }
  }

  private async transition(st: BackendHealth, to: 'up' | 'down', why: string): Promise<void> {
    st.state = to;
    st.transitions[to]++;
    st.lastChangeMs = this.sched.now();
    const fields = { vip: st.vip, backend: st.backend, check: st.check, port: st.port, reason: why };
    if (to === 'down') this.log.warn(fields, 'backend down: out of selection (its existing flows and joins stay)');
    else this.log.info(fields, 'backend up: back in selection');
    try {
      await this.ctl.setHealthy(st.vip, st.backend, to === 'up');
    } catch (e) {
      // E.g. removed by an API call in the meantime (the next round forgets it), or shutting down.
      if (this.running) this.log.error({ ...fields, err: (e as Error).message }, 'could not apply health verdict');
    }
  }
}
