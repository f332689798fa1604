// The control-plane facade: one object that the CLI, the admin HTTP API, the health checker and the tests drive.
// It talks to the engine only through an EnginePort (the packet worker's channel in production, an in-process
// engine in tests).
//
// State: the *desired* config (weights as the file and the API set them) plus two overlays, the drained and the
// unhealthy backends; what the engine runs is derived from the three. A drain never writes weight 0 into the desired
// config, so no other change (timeouts, policy, other VIPs, a reload) can make 0 the weight that undrain restores.
// Changes run one at a time, in arrival order, through one queue: each computes its next state from the state the
// previous one left, and the state is replaced only after the port applied it, so a failed change changes nothing.
import { formatEndpoint, parseEndpoint } from '../wire/addr.js';
import { ConfigError, validateEngineConfig, type BackendConfig, type EngineConfig, type VipConfig } from '../engine/config.js';
import { canonicalEndpoint, endpointId, type RunConfig } from './run-config.js';
import { inProcessChannel, type ConnectionsPage, type ConnectionView, type EngineBackend, type EngineChannel, type EngineStats } from '../dataplane/control-protocol.js';
import { Engine } from '../engine/engine.js';

export interface EnginePort {
  readonly engine: EngineChannel;
  /**
   * Applies a whole new config (engine live, plus routes where there are any); called only when its engine part or
   * device changed. Must be atomic: when it throws, the engine and routes are as they were.
   */
  reload(cfg: RunConfig): Promise<void>;
}

/** A refused control request: `status` is the HTTP status the admin API answers with. */
export class ControlError extends Error {
  constructor(readonly status: number, message: string) { super(message); this.name = 'ControlError'; }
}

export interface BackendView {
  id: string; address: string; port: number; weight: number; configuredWeight: number;
  draining: boolean; healthy: boolean; removed: boolean;
  packetsIn: number; bytesIn: number; packetsOut: number; bytesOut: number;
}
export interface VipView { address: string; policy: string; backends: BackendView[] }
/** A backend and its VIP as the config spells it. */
export interface BackendRef { vip: string; backend: string }

interface State {
  /** As configured: a drained backend keeps its weight here. */
  readonly cfg: RunConfig;
  /** Overlays by key "vip|backend" (canonical), only for backends in `cfg`. */
  readonly drained: ReadonlySet<string>;
  readonly unhealthy: ReadonlySet<string>;
}

/** A backend found by name in a config. */
interface Found { vi: number; v: VipConfig; bi: number; b: BackendConfig; id: string; key: string }

const keyOf = (vipAddress: string, b: BackendConfig) => `${canonicalEndpoint(vipAddress)}|${endpointId(b.address, b.port!)}`;
/** Key-order-independent JSON, to tell whether a change changes anything. */
const canon = (x: unknown): string => JSON.stringify(x, (_k, v: unknown) =>
  v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v);
const sameSet = (a: ReadonlySet<string>, b: ReadonlySet<string>) => a.size === b.size && [...a].every((k) => b.has(k));

function findVip(cfg: RunConfig, vip: string): { vi: number; v: VipConfig } {
  const want = canonicalEndpoint(vip);
  if (!want) throw new ControlError(400, `not a VIP address "addr:port": ${JSON.stringify(vip)}`);
  const vi = cfg.engine.vips.findIndex((x) => canonicalEndpoint(x.address) === want);
  if (vi < 0) throw new ControlError(404, `no VIP ${vip}`);
  return { vi, v: cfg.engine.vips[vi] };
}

/** "addr:port", or "addr" alone when only one backend of the VIP has that address. */
function findBackend(cfg: RunConfig, vip: string, backend: string): Found {
  const { vi, v } = findVip(cfg, vip);
  const ep = parseEndpoint(backend);
  if (!ep) throw new ControlError(400, `not a backend "addr:port": ${JSON.stringify(backend)}`);
  const hits = v.backends.flatMap((b, bi) => {
    const id = endpointId(b.address, b.port!);
    return id === formatEndpoint(ep.addr.bytes, 0, ep.addr.bytes.length, ep.port ?? b.port!) ? [{ vi, v, bi, b, id, key: keyOf(v.address, b) }] : [];
  });
  if (hits.length === 1) return hits[0];
  if (hits.length > 1) throw new ControlError(400, `backend ${backend} is ambiguous in VIP ${v.address}: give addr:port (${hits.map((h) => h.id).join(', ')})`);
  throw new ControlError(404, `no backend ${backend} in VIP ${v.address}`);
}

function withVips(cfg: RunConfig, vips: VipConfig[]): RunConfig { return { ...cfg, engine: { ...cfg.engine, vips } }; }
function withBackends(cfg: RunConfig, vi: number, backends: BackendConfig[]): RunConfig {
  return withVips(cfg, cfg.engine.vips.map((v, i) => (i === vi ? { ...v, backends } : v)));
}
function withWeight(cfg: RunConfig, f: Found, weight: number): RunConfig {
  return withBackends(cfg, f.vi, f.v.backends.map((b, i) => (i === f.bi ? { ...b, weight } : b)));
}

/** What the engine runs: the desired config with drained backends at weight 0. */
function running(s: State): RunConfig {
  if (s.drained.size === 0) return s.cfg;
  return withVips(s.cfg, s.cfg.engine.vips.map((v) => ({ ...v, backends: v.backends.map((b) => (s.drained.has(keyOf(v.address, b)) ? { ...b, weight: 0 } : b)) })));
}

export class Controller {
  private state: State;
  /** What the port last applied. */
  private applied: RunConfig;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly port: EnginePort, cfg: RunConfig) {
    this.state = { cfg, drained: new Set(), unhealthy: new Set() };
    this.applied = cfg;
  }

  /** The desired config: weights as configured (drains and health verdicts are overlays, see vips()). */
  get config(): RunConfig { return this.state.cfg; }

  /** Engine counters and table fill (shared memory: no round trip). */
  stats(): EngineStats { return this.port.engine.stats(); }

  async vips(): Promise<VipView[]> {
    const s = this.state;
    const eb = await this.port.engine.call('backends', {});
    return s.cfg.engine.vips.map((v) => this.vipView(s, v, eb));
  }

  /** One VIP, named in any spelling. */
  async vip(vip: string): Promise<VipView> {
    const s = this.state;
    const { v } = findVip(s.cfg, vip);
    return this.vipView(s, v, await this.port.engine.call('backends', {}));
  }

  /** One backend ("addr:port", or "addr" when unique in its VIP). */
  async backend(vip: string, backend: string): Promise<{ vip: string; backend: BackendView }> {
    const s = this.state;
    const f = findBackend(s.cfg, vip, backend);
    return { vip: f.v.address, backend: this.backendView(s, f.v, f.b, await this.port.engine.call('backends', {})) };
  }

  connections(offset = 0, limit = 100): Promise<ConnectionsPage> {
    if (!Number.isInteger(offset) || offset < 0) throw new ControlError(400, 'offset must be a non-negative integer');
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new ControlError(400, 'limit must be an integer 1-1000');
    return this.port.engine.call('connections', { offset, limit });
  }

  async connection(tokenHex: string): Promise<ConnectionView> {
    if (!/^[0-9a-fA-F]{1,8}$/.test(tokenHex)) throw new ControlError(400, 'token must be 1-8 hex digits');
    const c = await this.port.engine.call('connection', { token: parseInt(tokenHex, 16) });
    if (c === null) throw new ControlError(404, `no connection with token ${tokenHex.toLowerCase()}`);
    return c;
  }

  // ---- changes (queued; each answers with the state it left) ----

  /** An explicit weight also ends a drain. */
  setWeight(vip: string, backend: string, weight: number): Promise<{ vip: string; backend: BackendView }> {
    return this.changeBackend(vip, backend, (s, f) => {
      if (!Number.isInteger(weight) || weight < 0 || weight > 65535) throw new ControlError(400, 'weight must be an integer 0-65535');
      return this.next(s, withWeight(s.cfg, f, weight), { drained: without(s.drained, f.key) });
    });
  }

  /** Weight 0 in the engine: no new connections; existing ones keep every subflow and their joins still arrive. */
  drain(vip: string, backend: string): Promise<{ vip: string; backend: BackendView }> {
    return this.changeBackend(vip, backend, (s, f) => ({ ...s, drained: new Set(s.drained).add(f.key) }));
  }

  /** Back to the configured weight; a backend configured with weight 0 (and not drained) gets weight 1. */
  undrain(vip: string, backend: string): Promise<{ vip: string; backend: BackendView }> {
    return this.changeBackend(vip, backend, (s, f) => {
      if (s.drained.has(f.key)) return { ...s, drained: without(s.drained, f.key) };
      return f.b.weight === 0 ? this.next(s, withWeight(s.cfg, f, 1)) : s;
    });
  }

  addVip(v: VipConfig): Promise<VipView> {
    return this.change((s) => {
      const want = canonicalEndpoint(v.address);
      if (!want) throw new ControlError(400, `not a VIP address "addr:port": ${JSON.stringify(v.address)}`);
      if (s.cfg.engine.vips.some((x) => canonicalEndpoint(x.address) === want)) throw new ControlError(409, `VIP ${v.address} exists`);
      const next = this.next(s, withVips(s.cfg, [...s.cfg.engine.vips, v]));
      return [next, next.cfg.engine.vips.at(-1)!.address];
    }, (address) => this.vip(address));
  }

  /** Answers the VIP's address as the config spelled it. */
  removeVip(vip: string): Promise<string> {
    return this.change((s) => {
      const { vi, v } = findVip(s.cfg, vip);
      return [this.next(s, withVips(s.cfg, s.cfg.engine.vips.filter((_, i) => i !== vi))), v.address];
    });
  }

  addBackend(vip: string, b: BackendConfig): Promise<BackendRef> {
    return this.change((s) => {
      const { vi, v } = findVip(s.cfg, vip);
      const id = endpointId(b.address, b.port ?? parseEndpoint(v.address)!.port!);
      // Before validation, which would call it a malformed config (400).
      if (v.backends.some((x) => endpointId(x.address, x.port!) === id)) throw new ControlError(409, `backend ${id} exists in VIP ${v.address}`);
      return [this.next(s, withBackends(s.cfg, vi, [...v.backends, b])), { vip: v.address, backend: id }];
    });
  }

  removeBackend(vip: string, backend: string): Promise<BackendRef> {
    return this.change((s) => {
      const f = findBackend(s.cfg, vip, backend);
      return [this.next(s, withBackends(s.cfg, f.vi, f.v.backends.filter((_, i) => i !== f.bi))), { vip: f.v.address, backend: f.id }];
    });
  }

  /** Merges `timeouts` into the running ones; answers them all. */
  setTimeouts(timeouts: Partial<EngineConfig['timeouts']>): Promise<EngineConfig['timeouts']> {
    return this.change((s) => {
      const next = this.next(s, { ...s.cfg, engine: { ...s.cfg.engine, timeouts: { ...s.cfg.engine.timeouts, ...timeouts } } });
      return [next, next.cfg.engine.timeouts];
    });
  }

  /**
   * A reloaded config replaces the desired config; drain marks and health verdicts stay on the backends still in it,
   * so undrain restores the weight the new file gives. `next` may be computed from the config it replaces.
   * Answers the drain marks kept.
   */
  reload(next: RunConfig | ((cur: RunConfig) => RunConfig)): Promise<{ keptDrained: string[] }> {
    return this.change((s) => {
      const n = this.next(s, typeof next === 'function' ? next(s.cfg) : next);
      return [n, { keptDrained: [...n.drained] }];
    });
  }

  /** Backends drained through the control plane ("vip|backend" in canonical spelling). */
  drainedBackends(): string[] { return [...this.state.drained]; }

  /** Health checker verdicts: an unhealthy backend leaves the selection table; its flows and joins stay. */
  setHealthy(vip: string, backend: string, healthy: boolean): Promise<void> {
    return this.change((s) => {
      const f = findBackend(s.cfg, vip, backend);
      return [{ ...s, unhealthy: healthy ? without(s.unhealthy, f.key) : new Set(s.unhealthy).add(f.key) }, undefined];
    });
  }

  // ---- the queue ----

  /** Queues a change: `edit` computes the next state and an answer from the current state; `then` runs after it, still in turn. */
  private change<T, R = T>(edit: (s: State) => [State, T], then?: (t: T) => Promise<R>): Promise<R> {
    const run = async (): Promise<R> => {
      const [next, answer] = edit(this.state);
      await this.commit(next);
      return then ? then(answer) : (answer as unknown as R);
    };
    const p = this.tail.then(run);
    this.tail = p.catch(() => undefined);
    return p;
  }

  private changeBackend(vip: string, backend: string, edit: (s: State, f: Found) => State): Promise<{ vip: string; backend: BackendView }> {
    return this.change((s) => {
      const f = findBackend(s.cfg, vip, backend);
      return [edit(s, f), { vip: f.v.address, backend: f.id }];
    }, (ref) => this.backend(ref.vip, ref.backend));
  }

  /** The state with a new validated desired config; overlays of backends no longer in it are dropped. */
  private next(s: State, cfg: RunConfig, o: { drained?: ReadonlySet<string> } = {}): State {
    let engine: EngineConfig;
    try { engine = validateEngineConfig(cfg.engine, 'engine'); } catch (e) {
      if (e instanceof ConfigError) throw new ControlError(400, e.message);
      throw e;
    }
    const keys = new Set(engine.vips.flatMap((v) => v.backends.map((b) => keyOf(v.address, b))));
    const keep = (set: ReadonlySet<string>) => new Set([...set].filter((k) => keys.has(k)));
    return { cfg: { ...cfg, engine }, drained: keep(o.drained ?? s.drained), unhealthy: keep(s.unhealthy) };
  }

  /** Applies `next` (reload only when the engine's part changed), then makes it the state. */
  private async commit(next: State): Promise<void> {
    const cur = this.state;
    if (canon(next.cfg) === canon(cur.cfg) && sameSet(next.drained, cur.drained) && sameSet(next.unhealthy, cur.unhealthy)) return;
    const target = running(next);
    if (canon([target.engine, target.device]) !== canon([this.applied.engine, this.applied.device])) {
      await this.port.reload(target);
      this.state = next;
      this.applied = target;
      // The engine runs `next` now; a failure here is mended by the next change's sync.
      await this.syncHealth(next.unhealthy).catch(() => undefined);
      return;
    }
    if (!sameSet(next.unhealthy, cur.unhealthy)) await this.syncHealth(next.unhealthy);
    this.state = next;
  }

  /** Brings the engine's up/down marks in line with the verdicts (a re-added backend may still be marked down there). */
  private async syncHealth(unhealthy: ReadonlySet<string>): Promise<void> {
    for (const b of await this.port.engine.call('backends', {})) {
      const up = !unhealthy.has(`${b.vipId}|${b.id}`);
      if (!b.removed && b.up !== up) await this.port.engine.call('setUp', { backend: b.id, vip: b.vipId, up });
    }
  }

  // ---- views ----

  private vipView(s: State, v: VipConfig, eb: EngineBackend[]): VipView {
    return { address: v.address, policy: v.policy ?? s.cfg.engine.policy, backends: v.backends.map((b) => this.backendView(s, v, b, eb)) };
  }

  private backendView(s: State, v: VipConfig, b: BackendConfig, eb: EngineBackend[]): BackendView {
    const id = endpointId(b.address, b.port!), key = keyOf(v.address, b), vipId = canonicalEndpoint(v.address);
    const e = eb.find((x) => x.id === id && x.vipId === vipId);
    const drained = s.drained.has(key), weight = b.weight ?? 1;
    return {
      id, address: b.address, port: b.port!, weight: drained ? 0 : weight, configuredWeight: weight,
      draining: drained || weight === 0, healthy: !s.unhealthy.has(key), removed: false,
      packetsIn: e?.packetsIn ?? 0, bytesIn: e?.bytesIn ?? 0, packetsOut: e?.packetsOut ?? 0, bytesOut: e?.bytesOut ?? 0,
    };
  }
}

function without(set: ReadonlySet<string>, key: string): Set<string> {
  const out = new Set(set);
  out.delete(key);
  return out;
}

/** An EnginePort over an in-process engine (tests, replay-like tools): no TUN, no routes. `local` is the engine itself, in this thread (tests feed it packets). */
export function inProcessPort(cfg: RunConfig): EnginePort & { local: Engine } {
  const engine = new Engine(validateEngineConfig(cfg.engine, 'engine'));
  const channel = inProcessChannel(engine);
  return {
    local: engine,
    engine: channel,
    reload: (next) => channel.call('reconfigure', { config: next.engine }),
  };
}
