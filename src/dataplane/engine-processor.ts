// The packet worker's processor: the engine behind the TUN. Loaded by the worker with createProcessor(options);
// answers control messages from the main thread (stats, connections, weights, reconfiguration).
import { validateEngineConfig, type EngineConfig } from '../engine/config.js';
import { Engine, Verdict } from '../engine/engine.js';
import type { PacketProcessor } from './packet-loop.js';

export interface EngineProcessorOptions { config: EngineConfig }

export type ControlMessage =
  | { op: 'stats' }
  | { op: 'reconfigure'; config: EngineConfig }
  | { op: 'connections'; offset?: number; limit?: number }
  | { op: 'connection'; token: number }
  | { op: 'backends' }
  | { op: 'setWeight'; backend: string; vip?: string; weight: number }
  | { op: 'setUp'; backend: string; vip?: string; up: boolean };

export function createProcessor(options: unknown): PacketProcessor & { engine: Engine } {
  const engine = new Engine(validateEngineConfig((options as EngineProcessorOptions).config, 'engine'));
  const backendIndex = (id: string, vip?: string): number => {
    const v = vip === undefined ? undefined : engine.services.findVipById(vip);
    const b = engine.services.findBackend(id, v);
    if (b < 0) throw new Error(`no backend ${id}${vip ? ` in VIP ${vip}` : ''}`);
    return b;
  };
  return {
    engine,
    process(buf: Uint8Array, len: number, nowMs: number): number {
      // Every verdict but drop writes a packet back into the TUN; the kernel routes it on.
      return engine.process(buf, 0, len, nowMs) === Verdict.Drop ? 0 : engine.outLen;
    },
    processAt(buf: Uint8Array, off: number, len: number, nowMs: number, partialCsum: boolean): number {
      // NAT verdicts keep the length (the virtio header stays valid); a Reply is a new packet with full checksums.
      const v = engine.process(buf, off, len, nowMs, partialCsum);
      return v === Verdict.Drop ? 0 : v === Verdict.Reply ? -engine.outLen : engine.outLen;
    },
    tick(nowMs: number): void { engine.tick(nowMs); },
    control(raw: unknown): unknown {
      const msg = raw as ControlMessage;
      switch (msg.op) {
        case 'stats': {
          const s = engine.counters.snapshot();
          return { ...s, flows: engine.flows.used, connections: engine.conns.used, maxFlows: engine.flows.capacity, maxConnections: engine.conns.capacity };
        }
        case 'reconfigure':
          engine.reconfigure(validateEngineConfig(msg.config, 'engine'));
          return { ok: true };
        case 'connections': {
          const offset = msg.offset ?? 0, limit = Math.min(msg.limit ?? 100, 1000);
          const out = [];
          let i = 0;
          for (const c of engine.connectionIndices()) {
            if (i++ < offset) continue;
            if (out.length >= limit) break;
            out.push(engine.connectionInfo(c));
          }
          return { total: engine.conns.used, offset, connections: out.map((c) => ({ ...c, backend: engine.services.backendId(c.backend), vip: engine.services.vipId(c.vip) })) };
        }
        case 'connection': {
          const c = engine.findConnection(msg.token);
          if (c < 0) return null;
          const info = engine.connectionInfo(c);
          return { ...info, backend: engine.services.backendId(info.backend), vip: engine.services.vipId(info.vip) };
        }
        case 'backends': {
          const list = [];
          for (let b = 0; b < engine.services.backendCount; b++) list.push({ ...engine.services.backendInfo(b), vipId: engine.services.vipId(engine.services.beVip[b]) });
          return list;
        }
        case 'setWeight':
          engine.services.setWeight(backendIndex(msg.backend, msg.vip), msg.weight);
          return { ok: true };
        case 'setUp':
          engine.services.setUp(backendIndex(msg.backend, msg.vip), msg.up);
          return { ok: true };
        default:
          throw new Error(`unknown control op ${JSON.stringify((msg as { op?: unknown }).op)}`);
      }
    },
  };
}
