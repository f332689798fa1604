// Engine counters: every event and every drop has a named slot; labels double as metric label values.

/** Why a packet was dropped. Values 1..8 equal ParseStatus so a parse failure maps to its reason directly. */
export const enum DropReason {
  Truncated = 1,
  BadIpVersion = 2,
  BadIpHeader = 3,
  BadIpLength = 4,
  Fragment = 5,
  Ipv6ExtHeaderLimit = 6,
  NotTcp = 7,
  BadTcpHeader = 8,
  NoService = 9,
  NoBackend = 10,
  JoinUnknownToken = 11,
  FlowTableFull = 12,
  /** The device's per-packet header (virtio_net_hdr) was malformed: the packet never reached the parser. */
  BadDeviceHeader = 13,
  /** The engine threw on this packet (a bug, never wire input): counted, logged by the loop, dropped. */
  EngineError = 14,
  // ICMP / ICMPv6 (engine/icmp.ts).
  /** Shorter than the 8-byte ICMP header. */
  IcmpTruncated = 15,
  IcmpBadChecksum = 16,
  /** An error whose quoted packet is cut before IP + 8 bytes of TCP, has a bad header, or is a later fragment. */
  IcmpEmbeddedMalformed = 17,
  /** An error about a packet that was not TCP (mplb forwards only TCP). */
  IcmpEmbeddedNotTcp = 18,
  /** An error about a flow with no state, with `icmp.noFlowAnswer: drop` (or no backend to hash it to). */
  IcmpNoFlow = 19,
  /** An error whose quoted packet is neither from a VIP nor to a backend, or not about the packet's own addresses. */
  IcmpNoService = 20,
  IcmpEchoRateLimited = 21,
  IcmpEchoDisabled = 22,
  /** Echo replies, neighbour discovery, MLD, echo requests to a non-VIP, ...: not balanced. */
  IcmpUnhandledType = 23,
  Count = 24,
}
export const DROP_REASON_LABELS: readonly string[] = [
  'none', 'truncated', 'bad_ip_version', 'bad_ip_header', 'bad_ip_length', 'fragment', 'ipv6_ext_header_limit',
  'not_tcp', 'bad_tcp_header', 'no_service', 'no_backend', 'join_unknown_token', 'flow_table_full',
  'bad_device_header', 'engine_error',
  'icmp_truncated', 'icmp_bad_checksum', 'icmp_embedded_malformed', 'icmp_embedded_not_tcp', 'icmp_no_flow',
  'icmp_no_service', 'icmp_echo_rate_limited', 'icmp_echo_disabled', 'icmp_unhandled_type',
];

export const enum Counter {
  PacketsIn = 0,
  BytesIn,
  ToBackend,
  ToClient,
  Replied,
  Dropped,
  FlowsCreated,
  FlowsClosed,
  FlowsExpired,
  FlowsEvictedEmbryonic,
  FlowsReopened,
  StatelessForward,
  MidstreamNoFlow,
  StatelessReply,
  ConnsCreated,
  ConnsExpired,
  ConnsFastclosed,
  ConnTableFull,
  MpCapableSyn,
  MptcpFallback,
  KeysFromSynAck,
  KeysFromAck,
  KeysFromData,
  KeysForUnopenedFlow,
  JoinsSteeredByToken,
  JoinsUnknownToken,
  JoinsUnknownHashed,
  JoinsUnknownDropped,
  JoinsUnknownReset,
  JoinsAmbiguousToken,
  JoinsVipMismatch,
  /** Joins steered to their server's address in the other family (a dual-stack service's other VIP). */
  JoinsCrossFamily,
  /** Joins of a live connection on a VIP of the other family that pairs no address of its server: unknown-token answer. */
  JoinsFamilyUnpaired,
  JoinsUnaware,
  TokenCollisionStripped,
  TokenCollisionAmbiguous,
  TokenReplaced,
  MptcpOptionMalformed,
  MptcpOptionUnknownSubtype,
  TcpOptionsMalformed,
  FastcloseSeen,
  /** Packets held while the shared token store was asked (counted in packets_in once released). */
  PacketsHeld,
  /** Connections taken from the shared token store (a join whose first subflow passed another balancer). */
  ConnsAdopted,
  /** Subflows with no local flow given a flow entry: the store's backend, or the policy's when it had none. */
  FlowsAdopted,
  /** ICMP errors from the client side forwarded to the backend of the flow they quote. */
  IcmpErrorsToBackend,
  /** ... about a flow with no state, forwarded where the VIP's policy sends that flow (icmp.noFlowAnswer: hash). */
  IcmpErrorsToBackendHashed,
  /** ICMP errors from a backend translated back to the client of the flow they quote. */
  IcmpErrorsToClient,
  /** ... with no flow, translated statelessly like a reply (the backend's VIP). */
  IcmpErrorsToClientStateless,
  /** Of the forwarded/translated errors: path-MTU ones (IPv4 fragmentation needed, IPv6 packet too big). */
  IcmpPmtuErrors,
  /** Echo requests to a VIP answered by mplb. */
  IcmpEchoAnswered,
  /** Flows handed to the kernel fast path (offload.ts), and taken back (FIN, RST, removal, flush). */
  FlowsOffloaded,
  FlowsOffloadReleased,
  /** Idle offloaded flows whose kernel last-seen time was asked for, and those found alive there. */
  OffloadChecks,
  OffloadRefreshed,
  /** Offload events that did not fit the ring (a lost removal empties the kernel map: OffloadFlushes). */
  OffloadEventsLost,
  OffloadFlushes,
  /** The kernel map refused a flow's entries (full): it stayed on the TUN path. */
  OffloadInsertFailed,
  Count,
}
export const COUNTER_LABELS: readonly string[] = [
  'packets_in', 'bytes_in', 'to_backend', 'to_client', 'replied', 'dropped',
  'flows_created', 'flows_closed', 'flows_expired', 'flows_evicted_embryonic', 'flows_reopened', 'stateless_forward',
  'midstream_no_flow', 'stateless_reply', 'conns_created', 'conns_expired', 'conns_fastclosed', 'conn_table_full',
  'mp_capable_syn', 'mptcp_fallback', 'keys_from_synack', 'keys_from_ack', 'keys_from_data', 'keys_for_unopened_flow',
  'joins_steered_by_token', 'joins_unknown_token', 'joins_unknown_hashed', 'joins_unknown_dropped', 'joins_unknown_reset',
  'joins_ambiguous_token', 'joins_vip_mismatch', 'joins_cross_family', 'joins_family_unpaired', 'joins_unaware',
  'token_collision_stripped', 'token_collision_ambiguous', 'token_replaced',
  'mptcp_option_malformed', 'mptcp_option_unknown_subtype', 'tcp_options_malformed', 'fastclose_seen',
  'packets_held', 'conns_adopted', 'flows_adopted',
  'icmp_errors_to_backend', 'icmp_errors_to_backend_hashed', 'icmp_errors_to_client', 'icmp_errors_to_client_stateless',
  'icmp_pmtu_errors', 'icmp_echo_answered',
  'flows_offloaded', 'flows_offload_released', 'offload_checks', 'offload_refreshed', 'offload_events_lost', 'offload_flushes', 'offload_insert_failed',
];

/** Bytes of shared memory that back one Counters (events, then drops). */
export const COUNTERS_BYTES = (Counter.Count + DropReason.Count) * 8;

/**
 * Counters as float64 so they never wrap; one array for events, one for drops by reason. Backed by a
 * SharedArrayBuffer when one is given, so another thread reads them without a message round trip (single writer:
 * the engine; readers may see a packet's counters half-updated, never a torn float64).
 */
export class Counters {
  readonly events: Float64Array;
  readonly drops: Float64Array;

  constructor(shared?: SharedArrayBuffer) {
    const mem = shared ?? new ArrayBuffer(COUNTERS_BYTES);
    if (mem.byteLength < COUNTERS_BYTES) throw new RangeError(`counters need ${COUNTERS_BYTES} bytes, got ${mem.byteLength}`);
    this.events = new Float64Array(mem, 0, Counter.Count);
    this.drops = new Float64Array(mem, Counter.Count * 8, DropReason.Count);
  }

  /** Counts a packet dropped before the engine saw it (device header, engine error): one drop under one reason. */
  countDrop(reason: DropReason, bytes: number): void {
    this.events[Counter.PacketsIn]++;
    this.events[Counter.BytesIn] += bytes;
    this.events[Counter.Dropped]++;
    this.drops[reason]++;
  }

  /** The engine threw while handling a packet it had already counted in: it becomes a drop (`engine_error`). */
  countEngineError(): void {
    this.events[Counter.Dropped]++;
    this.drops[DropReason.EngineError]++;
  }

  snapshot(): { counters: Record<string, number>; drops: Record<string, number> } {
    const counters: Record<string, number> = {};
    for (let i = 0; i < Counter.Count; i++) counters[COUNTER_LABELS[i]] = this.events[i];
    const drops: Record<string, number> = {};
    for (let i = 1; i < DropReason.Count; i++) drops[DROP_REASON_LABELS[i]] = this.drops[i];
    return { counters, drops };
  }

  reset(): void { this.events.fill(0); this.drops.fill(0); }
}
