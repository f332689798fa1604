// The typed control protocol between the control plane and the engine (in the packet worker, or in process):
// one map from operation to request and response types, one handler on the engine side, and the channel type
// callers hold. Counters are not in it: they live in shared memory and are read without a round trip.
import type { Counters } from '../engine/counters.js';
import { validateEngineConfig, type EngineConfig } from '../engine/config.js';
import type { Engine, ConnectionInfo } from '../engine/engine.js';
import type { BackendInfo } from '../engine/services.js';

/** A connection as the control plane sees it: backend and VIP by id instead of table index. */
export interface ConnectionView extends Omit<ConnectionInfo, 'backend' | 'vip'> { backend: string; vip: string }
export interface ConnectionsPage { total: number; offset: number; connections: ConnectionView[] }
export interface EngineBackend extends BackendInfo { vipId: string }

/** Engine counters by label and table fill. */
export interface EngineStats {
  counters: Record<string, number>;
  drops: Record<string, number>;
  flows: number;
  connections: number;
  maxFlows: number;
  maxConnections: number;
}

type Empty = Record<string, never>;

/** Every operation: its request and its response. */
export interface ControlOps {
  /** Applies a whole engine config live (flows and tokens kept); only VIPs whose inputs changed are rebuilt. */
  reconfigure: { req: { config: EngineConfig }; res: void };
  connections: { req: { offset: number; limit: number }; res: ConnectionsPage };
  connection: { req: { token: number }; res: ConnectionView | null };
  backends: { req: Empty; res: EngineBackend[] };
  /** Health verdicts: an unhealthy backend leaves the selection table; its flows and joins stay. */
  setUp: { req: { backend: string; vip: string; up: boolean }; res: void };
}
export type ControlOp = keyof ControlOps;
export type ControlReq<K extends ControlOp> = ControlOps[K]['req'];
export type ControlRes<K extends ControlOp> = ControlOps[K]['res'];

/** What the control plane holds: typed calls, and the counters without a round trip. */
export interface EngineChannel {
  call<K extends ControlOp>(op: K, req: ControlReq<K>): Promise<ControlRes<K>>;
  stats(): EngineStats;
}

/** A refused control request (bad argument, unknown backend): the message is for the operator. */
export class ControlRequestError extends Error {
  constructor(message: string) { super(message); this.name = 'ControlRequestError'; }
}

/** The engine side: answers one request. Throws ControlRequestError for a request it refuses. */
export function handleControl<K extends ControlOp>(engine: Engine, op: K, req: ControlReq<K>): ControlRes<K> {
  return handlers[op](engine, req as never) as ControlRes<K>;
}

const backendIndex = (engine: Engine, id: string, vip: string): number => {
  const v = engine.services.findVipById(vip);
  if (v < 0) throw new ControlRequestError(`no VIP ${vip}`);
  const b = engine.services.findBackend(id, v);
  if (b < 0) throw new ControlRequestError(`no backend ${id} in VIP ${vip}`);
  return b;
};

const connectionView = (engine: Engine, c: number): ConnectionView => {
  const info = engine.connectionInfo(c);
  return { ...info, backend: engine.services.backendId(info.backend), vip: engine.services.vipId(info.vip) };
};

const handlers: { [K in ControlOp]: (engine: Engine, req: ControlReq<K>) => ControlRes<K> } = {
  reconfigure(engine, req) {
    engine.reconfigure(validateEngineConfig(req.config, 'engine'));
  },
  connections(engine, req) {
    const offset = req.offset, limit = Math.min(req.limit, 1000);
    if (!Number.isInteger(offset) || offset < 0 || !Number.isInteger(limit) || limit < 1) throw new ControlRequestError('offset must be >= 0 and limit 1-1000');
    const out: ConnectionView[] = [];
    let i = 0;
    for (const c of engine.connectionIndices()) {
      if (i++ < offset) continue;
      if (out.length >= limit) break;
      out.push(connectionView(engine, c));
    }
    return { total: engine.conns.used, offset, connections: out };
  },
  connection(engine, req) {
    const c = engine.findConnection(req.token);
    return c < 0 ? null : connectionView(engine, c);
  },
  backends(engine) {
    const list: EngineBackend[] = [];
    for (let b = 0; b < engine.services.backendCount; b++) list.push({ ...engine.services.backendInfo(b), vipId: engine.services.vipId(engine.services.beVip[b]) });
    return list;
  },
  setUp(engine, req) {
    engine.services.setUp(backendIndex(engine, req.backend, req.vip), req.up);
  },
};

/** Engine counters by label (from shared memory or the engine's own), with table fill. */
export function engineStats(counters: Counters, fill: { flows: number; connections: number; maxFlows: number; maxConnections: number }): EngineStats {
  return { ...counters.snapshot(), ...fill };
}

/** A channel to an engine in this thread (tests, tools). */
export function inProcessChannel(engine: Engine): EngineChannel {
  return {
    call: async (op, req) => handleControl(engine, op, req),
    stats: () => engineStats(engine.counters, {
      flows: engine.flows.used, connections: engine.conns.used, maxFlows: engine.flows.capacity, maxConnections: engine.conns.capacity,
    }),
  };
}
