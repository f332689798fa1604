// The control-plane facade: one object that the CLI, the admin HTTP API, the health checker and the tests drive.
// Every change goes through a new validated config applied live (flows and tokens survive), so an API call and a
// config reload take the same path. It talks to the engine only through an EnginePort (the packet worker's
// channel in production, an in-process engine in tests).
import { formatEndpoint, parseEndpoint } from '../wire/addr.js';
import { validateEngineConfig, type BackendConfig, type VipConfig } from '../engine/config.js';
import { endpointId, type RunConfig } from './run-config.js';
import { inProcessChannel, type ConnectionsPage, type ConnectionView, type EngineChannel, type EngineStats } from '../dataplane/control-protocol.js';
import { Engine } from '../engine/engine.js';

export interface EnginePort {
  readonly engine: EngineChannel;
  /** Applies a whole new config (engine live, plus routes where there are any). */
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

export class Controller {
  /** Weights to restore on undrain, by "vip|backend". */
  private readonly drained = new Map<string, number>();
  /** Health verdicts by "vip|backend" (absent = healthy). */
  private readonly unhealthy = new Set<string>();

  constructor(private readonly port: EnginePort, private cfg: RunConfig) {}

  get config(): RunConfig { return this.cfg; }

  /** Engine counters and table fill (shared memory: no round trip). */
  stats(): EngineStats { return this.port.engine.stats(); }

  async vips(): Promise<VipView[]> {
    const engineBackends = await this.port.engine.call('backends', {});
    return this.cfg.engine.vips.map((v) => ({
      address: v.address,
      policy: v.policy ?? this.cfg.engine.policy,
      backends: v.backends.map((b) => {
        const id = endpointId(b.address, b.port!);
        const e = engineBackends.find((x) => x.id === id && x.vipId === this.vipId(v.address));
        const key = this.key(v.address, id);
        return {
          id, address: b.address, port: b.port!, weight: b.weight ?? 1,
          configuredWeight: this.drained.get(key) ?? b.weight ?? 1,
          draining: this.drained.has(key) || b.weight === 0,
          healthy: !this.unhealthy.has(key), removed: false,
          packetsIn: e?.packetsIn ?? 0, bytesIn: e?.bytesIn ?? 0, packetsOut: e?.packetsOut ?? 0, bytesOut: e?.bytesOut ?? 0,
        };
      }),
    }));
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

  // ---- changes ----

  async setWeight(vip: string, backend: string, weight: number): Promise<void> {
    if (!Number.isInteger(weight) || weight < 0 || weight > 65535) throw new ControlError(400, 'weight must be an integer 0-65535');
    this.drained.delete(this.key(vip, backend));
    await this.editBackend(vip, backend, (b) => { b.weight = weight; });
  }

  /** Weight 0: no new connections; existing ones keep every subflow and their joins still arrive. */
  async drain(vip: string, backend: string): Promise<void> {
    const key = this.key(vip, backend);
    await this.editBackend(vip, backend, (b) => {
      if (!this.drained.has(key)) this.drained.set(key, b.weight ?? 1);
      b.weight = 0;
    });
  }

  async undrain(vip: string, backend: string): Promise<void> {
    const key = this.key(vip, backend);
    const w = this.drained.get(key);
    await this.editBackend(vip, backend, (b) => { b.weight = w ?? (b.weight || 1); });
    this.drained.delete(key);
  }

  async addVip(v: VipConfig): Promise<void> {
    if (this.cfg.engine.vips.some((x) => this.vipId(x.address) === this.vipId(v.address))) throw new ControlError(409, `VIP ${v.address} exists`);
    await this.apply({ ...this.cfg, engine: { ...this.cfg.engine, vips: [...this.cfg.engine.vips, v] } });
  }

  async removeVip(vip: string): Promise<void> {
    const v = this.findVip(vip);
    await this.apply({ ...this.cfg, engine: { ...this.cfg.engine, vips: this.cfg.engine.vips.filter((x) => x !== v) } });
  }

  async addBackend(vip: string, b: BackendConfig): Promise<void> {
    const v = this.findVip(vip);
    await this.apply(this.withVip(v.address, { ...v, backends: [...v.backends, b] }));
  }

  async removeBackend(vip: string, backend: string): Promise<void> {
    const v = this.findVip(vip);
    const want = this.backendId(backend);
    const backends = v.backends.filter((b) => endpointId(b.address, b.port!) !== want);
    if (backends.length === v.backends.length) throw new ControlError(404, `no backend ${backend} in VIP ${vip}`);
    await this.apply(this.withVip(v.address, { ...v, backends }));
  }

  /**
   * A reloaded config file replaces everything, except that backends drained through the control plane stay
   * drained: the file's weight becomes the one undrain restores.
   */
  async reload(next: RunConfig): Promise<void> {
    const kept = new Map<string, number>();
    const vips = next.engine.vips.map((v) => ({
      ...v,
      backends: v.backends.map((b) => {
        const port = b.port ?? parseEndpoint(v.address)?.port ?? 0;
        const key = this.key(v.address, endpointId(b.address, port));
        if (!this.drained.has(key)) return b;
        kept.set(key, b.weight ?? 1);
        return { ...b, weight: 0 };
      }),
    }));
    await this.apply({ ...next, engine: { ...next.engine, vips } });
    this.drained.clear();
    for (const [k, w] of kept) this.drained.set(k, w);
  }

  /** Backends drained through the control plane ("vip|backend" in canonical spelling). */
  drainedBackends(): string[] { return [...this.drained.keys()]; }

  /** Health checker verdicts: an unhealthy backend leaves the selection table; its flows and joins stay. */
  async setHealthy(vip: string, backend: string, healthy: boolean): Promise<void> {
    const key = this.key(vip, backend);
    if (healthy === !this.unhealthy.has(key)) return;
    if (healthy) this.unhealthy.delete(key); else this.unhealthy.add(key);
    await this.port.engine.call('setUp', { backend: this.backendId(backend), vip: this.vipId(vip), up: healthy });
  }

  // ---- helpers ----

  private vipId(address: string): string {
    // Engine VIP ids are canonical "addr:port" text; the config may spell them differently.
    const ep = parseEndpoint(address);
    if (!ep || ep.port === undefined) throw new ControlError(400, `not a VIP address: ${JSON.stringify(address)}`);
    return formatEndpoint(ep.addr.bytes, 0, ep.addr.bytes.length, ep.port);
  }

  private backendId(backend: string): string {
    const ep = parseEndpoint(backend);
    if (!ep || ep.port === undefined) throw new ControlError(400, `not a backend address:port: ${JSON.stringify(backend)}`);
    return formatEndpoint(ep.addr.bytes, 0, ep.addr.bytes.length, ep.port);
  }

  /** Key of a (VIP, backend) pair in canonical spelling, whatever spelling the caller used. */
  private key(vip: string, backend: string): string { return `${this.vipId(vip)}|${this.backendId(backend)}`; }

  private findVip(vip: string): VipConfig {
    const v = this.cfg.engine.vips.find((x) => x.address === vip || this.vipId(x.address) === this.vipId(vip));
    if (!v) throw new ControlError(404, `no VIP ${vip}`);
    return v;
  }

  private withVip(address: string, v: VipConfig): RunConfig {
    return { ...this.cfg, engine: { ...this.cfg.engine, vips: this.cfg.engine.vips.map((x) => (x.address === address ? v : x)) } };
  }

  private async editBackend(vip: string, backend: string, edit: (b: BackendConfig) => void): Promise<void> {
    const v = this.findVip(vip);
    const want = this.backendId(backend);
    const i = v.backends.findIndex((b) => this.backendId(endpointId(b.address, b.port!)) === want);
    if (i < 0) throw new ControlError(404, `no backend ${backend} in VIP ${vip}`);
    const b = { ...v.backends[i] };
    edit(b);
    const backends = v.backends.slice();
    backends[i] = b;
    await this.apply(this.withVip(v.address, { ...v, backends }));
  }

  private async apply(next: RunConfig): Promise<void> {
    let engine;
    try { engine = validateEngineConfig(next.engine, 'engine'); } catch (e) { throw new ControlError(400, (e as Error).message); }
    const cfg = { ...next, engine };
    await this.port.reload(cfg);
    this.cfg = cfg;
    // Health verdicts survive a reload: re-apply them to the (possibly rebuilt) tables.
    for (const key of this.unhealthy) {
      const [vip, backend] = key.split('|');
      await this.port.engine.call('setUp', { backend, vip, up: false }).catch(() => undefined);
    }
  }
}

/** An EnginePort over an in-process engine (tests, replay-like tools): no TUN, no routes. */
/** `local` is the engine itself, in this thread (tests feed it packets). */
export function inProcessPort(cfg: RunConfig): EnginePort & { local: Engine } {
  const engine = new Engine(validateEngineConfig(cfg.engine, 'engine'));
  const channel = inProcessChannel(engine);
  return {
    local: engine,
    engine: channel,
    reload: (next) => channel.call('reconfigure', { config: next.engine }),
  };
}
