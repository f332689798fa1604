// Prometheus metrics (prom-client) for /metrics. Collected lazily on scrape from one snapshot of the engine's
// counters (engine stats and backends asked for together), never on the packet path. Engine counters are absolute
// totals kept by the engine, so each scrape resets and re-sets them; backends that left disappear from the output.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Controller, VipView } from './controller.js';
import type { HealthChecker } from './health.js';
import type { EngineStats } from '../dataplane/control-protocol.js';
import type { PacketLoopStats } from '../dataplane/packet-loop.js';

export interface MetricsOptions {
  controller: Controller;
  health?: HealthChecker;
  /** The packet loop's counters (absent for an in-process engine). */
  loopStats?: () => PacketLoopStats | undefined;
  /** Node process metrics (CPU, memory, the control thread's event-loop delay). Default true. */
  processMetrics?: boolean;
}

export interface Snapshot { vips: VipView[]; stats: EngineStats; loop?: PacketLoopStats; timeMs: number }

/** Engine state for one scrape or one dashboard poll: one round trip (backends); counters from shared memory. */
export async function snapshot(ctl: Controller, loopStats?: () => PacketLoopStats | undefined): Promise<Snapshot> {
  const vips = await ctl.vips();
  const stats = ctl.stats();
  return { vips, stats, loop: loopStats?.(), timeMs: Date.now() };
}

type Labels = Record<string, string>;
/** Sets a counter to an absolute total (the engine keeps the totals; prom-client counters only add). */
function setTotal(c: Counter<string>, labels: Labels, v: number): void {
  c.inc(labels, Number.isFinite(v) && v > 0 ? v : 0);
}

export class Metrics {
  readonly registry = new Registry();
  private readonly opts: MetricsOptions;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly c: Record<string, Counter<string>> = {};
  private readonly g: Record<string, Gauge<string>> = {};

  constructor(opts: MetricsOptions) {
    this.opts = opts;
    const reg = [this.registry];
    const counter = (name: string, help: string, labelNames: string[] = []) => { this.c[name] = new Counter({ name, help, labelNames, registers: reg }); };
    const gauge = (name: string, help: string, labelNames: string[] = []) => { this.g[name] = new Gauge({ name, help, labelNames, registers: reg }); };
    counter('mplb_vip_packets_total', 'Packets through a VIP (sum over its backends; in = client to backend, out = backend to client).', ['vip', 'direction']);
    counter('mplb_vip_bytes_total', 'Bytes through a VIP (sum over its backends).', ['vip', 'direction']);
    counter('mplb_backend_packets_total', 'Packets NATed to (in) and from (out) a backend.', ['vip', 'backend', 'direction']);
    counter('mplb_backend_bytes_total', 'Bytes NATed to (in) and from (out) a backend.', ['vip', 'backend', 'direction']);
    gauge('mplb_backend_weight', 'Current weight (0 while draining).', ['vip', 'backend']);
    gauge('mplb_backend_draining', '1 while the backend is drained.', ['vip', 'backend']);
    gauge('mplb_backend_healthy', '1 when the backend is in selection as far as health goes, 0 when health checks took it out.', ['vip', 'backend']);
    counter('mplb_health_checks_total', 'Health probes by result.', ['vip', 'backend', 'result']);
    counter('mplb_health_transitions_total', 'Health state changes (to = up | down).', ['vip', 'backend', 'to']);
    counter('mplb_packets_total', 'Packets the engine handled, by verdict.', ['verdict']);
    counter('mplb_bytes_in_total', 'Bytes the engine received.');
    counter('mplb_drops_total', 'Dropped packets by reason.', ['reason']);
    gauge('mplb_flows', 'Live subflow (TCP flow) entries.');
    gauge('mplb_flows_capacity', 'Flow table size (tables.maxFlows).');
    gauge('mplb_connections', 'Live MPTCP connection (token) entries.');
    gauge('mplb_connections_capacity', 'Connection table size (tables.maxConnections).');
    counter('mplb_joins_steered_by_token_total', 'MP_JOIN SYNs sent to the backend of their connection by token.');
    counter('mplb_joins_unknown_token_total', 'MP_JOIN SYNs with an unknown token, by the answer given (unknownTokenAnswer).', ['answer']);
    counter('mplb_joins_ambiguous_token_total', 'MP_JOIN SYNs whose token two backends share (answered like an unknown token).');
    counter('mplb_token_collisions_total', 'Server tokens that collided, by outcome (stripped: MP_CAPABLE removed, ambiguous: marked, replaced: same backend).', ['outcome']);
    counter('mplb_flows_evicted_total', 'Flow entries evicted to make room (kind = embryonic).', ['kind']);
    counter('mplb_flows_expired_total', 'Flow entries that timed out.');
    counter('mplb_icmp_total', 'ICMP/ICMPv6 handled by outcome (errors to_backend by flow or hashed by the VIP policy, to_client by flow or stateless, echo_answered); ICMP drops are mplb_drops_total{reason=~"icmp_.*"}.', ['outcome']);
    counter('mplb_icmp_pmtu_errors_total', 'Path-MTU errors (IPv4 fragmentation needed, IPv6 packet too big) forwarded or translated.');
    counter('mplb_engine_events_total', 'Every engine event counter, by its label.', ['event']);
    gauge('mplb_packet_loop_lag_max_seconds', 'Longest time one batch kept the packet worker from its event loop, since start (maxLoopLagMs).');
    counter('mplb_packet_loop_errors_total', 'TUN read/write errors (engine errors are drops: reason engine_error).', ['kind']);
    counter('mplb_packet_loop_batches_total', 'Batches the packet worker read (packets are counted by the engine: mplb_packets_total).');
    counter('mplb_packet_loop_gso_packets_total', 'Reads that were GSO super-packets (up to 64 KiB, one engine decision each).');
    counter('mplb_packet_loop_busy_seconds_total', 'Time the packet worker spent processing batches.');
    gauge('mplb_token_store_up', '1 while the shared token store answers; 0 while steering is local-only (absent without a tokenStore).', ['store']);
    counter('mplb_token_store_events_total', 'Shared token store: joins and subflows held, found, retried, timed out; reads, writes, errors, refused values, collisions.', ['event']);
    counter('mplb_token_store_hold_wait_bucket', 'Packets released after a hold by how long they waited (le = upper bound in ms, cumulative as in a histogram).', ['le']);
    gauge('mplb_fastpath_attached', '1 when the tc-bpf fast path is attached (datapath tc-bpf, or auto where it loaded), by interface.', ['interface']);
    counter('mplb_fastpath_packets_total', 'Packets the tc-bpf program NATed in the kernel (they never reach the engine: not in mplb_packets_total).');
    counter('mplb_fastpath_bytes_total', 'Bytes (skb length, with the Ethernet header) the tc-bpf program NATed.');
    counter('mplb_fastpath_passed_total', 'Packets the tc-bpf program passed on to the TUN and the engine, by reason.', ['reason']);
    counter('mplb_fastpath_program_events_total', 'Other tc-bpf program events (syn_stale: a SYN found a stale entry; errors: a rewrite helper failed; redirected: NATed packets the program forwarded itself, a part of mplb_fastpath_packets_total).', ['event']);
    counter('mplb_fastpath_map_updates_total', 'Flow map updates by the packet worker (inserted and removed flows, idle checks, flushes, refused inserts).', ['op']);
    gauge('mplb_control_round_trip_max_seconds', 'Longest control message round trip to the packet worker, since start.');
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'mplb_' });
  }

  get contentType(): string { return this.registry.contentType; }

  /** The text exposition; scrapes are serialised so two cannot interleave their resets. */
  render(snap?: Snapshot): Promise<string> {
    const run = this.queue.then(async () => {
      const s = snap ?? await snapshot(this.opts.controller, this.opts.loopStats);
      this.fill(s);
      return this.registry.metrics();
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private fill(s: Snapshot): void {
    for (const m of Object.values(this.c)) m.reset();
    for (const m of Object.values(this.g)) m.reset();
    const c = this.c, g = this.g;
    for (const v of s.vips) {
      const tot = { pi: 0, po: 0, bi: 0, bo: 0 };
      for (const b of v.backends) {
        const l = { vip: v.address, backend: b.id };
        setTotal(c.mplb_backend_packets_total, { ...l, direction: 'in' }, b.packetsIn);
        setTotal(c.mplb_backend_packets_total, { ...l, direction: 'out' }, b.packetsOut);
        setTotal(c.mplb_backend_bytes_total, { ...l, direction: 'in' }, b.bytesIn);
        setTotal(c.mplb_backend_bytes_total, { ...l, direction: 'out' }, b.bytesOut);
        g.mplb_backend_weight.set(l, b.weight);
        g.mplb_backend_draining.set(l, b.draining ? 1 : 0);
        g.mplb_backend_healthy.set(l, b.healthy ? 1 : 0);
        tot.pi += b.packetsIn; tot.po += b.packetsOut; tot.bi += b.bytesIn; tot.bo += b.bytesOut;
      }
      setTotal(c.mplb_vip_packets_total, { vip: v.address, direction: 'in' }, tot.pi);
      setTotal(c.mplb_vip_packets_total, { vip: v.address, direction: 'out' }, tot.po);
      setTotal(c.mplb_vip_bytes_total, { vip: v.address, direction: 'in' }, tot.bi);
      setTotal(c.mplb_vip_bytes_total, { vip: v.address, direction: 'out' }, tot.bo);
    }
    for (const h of this.opts.health?.snapshot() ?? []) {
      const l = { vip: h.vip, backend: h.backend };
      setTotal(c.mplb_health_checks_total, { ...l, result: 'ok' }, h.checks.ok);
      setTotal(c.mplb_health_checks_total, { ...l, result: 'fail' }, h.checks.fail);
      setTotal(c.mplb_health_transitions_total, { ...l, to: 'up' }, h.transitions.up);
      setTotal(c.mplb_health_transitions_total, { ...l, to: 'down' }, h.transitions.down);
    }
    const e = s.stats.counters, n = (k: string) => e[k] ?? 0;
    for (const verdict of ['to_backend', 'to_client', 'replied', 'dropped']) setTotal(c.mplb_packets_total, { verdict }, n(verdict));
    setTotal(c.mplb_bytes_in_total, {}, n('bytes_in'));
    for (const [reason, v] of Object.entries(s.stats.drops)) setTotal(c.mplb_drops_total, { reason }, v);
    g.mplb_flows.set(s.stats.flows);
    g.mplb_flows_capacity.set(s.stats.maxFlows);
    g.mplb_connections.set(s.stats.connections);
    g.mplb_connections_capacity.set(s.stats.maxConnections);
    setTotal(c.mplb_joins_steered_by_token_total, {}, n('joins_steered_by_token'));
    setTotal(c.mplb_joins_unknown_token_total, { answer: 'hash' }, n('joins_unknown_hashed'));
    setTotal(c.mplb_joins_unknown_token_total, { answer: 'drop' }, n('joins_unknown_dropped'));
    setTotal(c.mplb_joins_unknown_token_total, { answer: 'reset' }, n('joins_unknown_reset'));
    setTotal(c.mplb_joins_ambiguous_token_total, {}, n('joins_ambiguous_token'));
    setTotal(c.mplb_token_collisions_total, { outcome: 'stripped' }, n('token_collision_stripped'));
    setTotal(c.mplb_token_collisions_total, { outcome: 'ambiguous' }, n('token_collision_ambiguous'));
    setTotal(c.mplb_token_collisions_total, { outcome: 'replaced' }, n('token_replaced'));
    setTotal(c.mplb_flows_evicted_total, { kind: 'embryonic' }, n('flows_evicted_embryonic'));
    setTotal(c.mplb_flows_expired_total, {}, n('flows_expired'));
    for (const [outcome, k] of [['to_backend', 'icmp_errors_to_backend'], ['to_backend_hashed', 'icmp_errors_to_backend_hashed'], ['to_client', 'icmp_errors_to_client'],
      ['to_client_stateless', 'icmp_errors_to_client_stateless'], ['echo_answered', 'icmp_echo_answered']]) setTotal(c.mplb_icmp_total, { outcome }, n(k));
    setTotal(c.mplb_icmp_pmtu_errors_total, {}, n('icmp_pmtu_errors'));
    for (const [event, v] of Object.entries(e)) setTotal(c.mplb_engine_events_total, { event }, v);
    if (s.loop) {
      const l = s.loop;
      g.mplb_packet_loop_lag_max_seconds.set(l.maxLoopLagMs / 1000);
      setTotal(c.mplb_packet_loop_errors_total, { kind: 'read' }, l.readErrors);
      setTotal(c.mplb_packet_loop_errors_total, { kind: 'write' }, l.writeErrors);
      setTotal(c.mplb_packet_loop_batches_total, {}, l.batches);
      setTotal(c.mplb_packet_loop_gso_packets_total, {}, l.gsoPackets);
      setTotal(c.mplb_packet_loop_busy_seconds_total, {}, l.busyMs / 1000);
      g.mplb_control_round_trip_max_seconds.set(l.maxControlMs / 1000);
      if (l.fastpath) {
        const f = l.fastpath, p = f.program;
        for (const i of f.interfaces) g.mplb_fastpath_attached.set({ interface: i }, 1);
        setTotal(c.mplb_fastpath_packets_total, {}, p.packets ?? 0);
        setTotal(c.mplb_fastpath_bytes_total, {}, p.bytes ?? 0);
        for (const [k, v] of Object.entries(p)) {
          if (k.startsWith('pass_')) setTotal(c.mplb_fastpath_passed_total, { reason: k.slice(5) }, v);
          else if (k !== 'packets' && k !== 'bytes') setTotal(c.mplb_fastpath_program_events_total, { event: k }, v);
        }
        for (const op of ['inserted', 'removed', 'checks', 'flushes', 'insertErrors'] as const) setTotal(c.mplb_fastpath_map_updates_total, { op: op === 'insertErrors' ? 'insert_errors' : op }, f[op]);
      }
      if (l.store) {
        g.mplb_token_store_up.set({ store: 'redis' }, l.store.store_up ?? 0);
        let cum = 0;
        for (const [k, v] of Object.entries(l.store)) {
          const m = /^hold_wait_(le|gt)_(.+)ms$/.exec(k);
          if (!m) { if (k !== 'store_up') setTotal(c.mplb_token_store_events_total, { event: k }, v); continue; }
          cum += v;
          setTotal(c.mplb_token_store_hold_wait_bucket, { le: m[1] === 'gt' ? '+Inf' : m[2] }, cum);
        }
      }
    }
  }
}
