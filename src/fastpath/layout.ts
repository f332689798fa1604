// The fast path's map layouts, mirrored from bpf/fastpath.bpf.c (struct fp_key, struct fp_value, enum fp_counter).
// Pure: encoders into caller buffers, no allocation per call.

/** struct fp_key: family u8, pad[3], sport be16, dport be16, saddr be32[4], daddr be32[4]. */
export const KEY_BYTES = 40;
/** struct fp_value: addr be32[4], port be16, dir u8, flags u8, stat u32 (host order), last_seen_ns u64. */
export const VALUE_BYTES = 32;
export const VALUE_LAST_SEEN_OFF = 24;
const VALUE_STAT_OFF = 20;

/** mplb_backend_stats: FP_STAT_SLOTS per-CPU { packets u64, bytes u64 }, slot = backend index * 2 + FpDir. */
export const FP_STAT_SLOTS = 16384;
export const FP_NO_STAT = 0xffffffff;
export const STAT_BYTES = 16;
/** The slot of backend b's packets in direction dir, or FP_NO_STAT past the map (those are counted in the totals only). */
export const statSlot = (b: number, dir: FpDir): number => (2 * b + 1 < FP_STAT_SLOTS ? 2 * b + dir : FP_NO_STAT);

/** Default fastpath.maxFlows: at most this many flows in the preallocated map (about 32 MB), never more than tables.maxFlows. */
export const FASTPATH_DEFAULT_MAX_FLOWS = 131072;
export const defaultFastpathFlows = (tablesMaxFlows: number): number => Math.min(FASTPATH_DEFAULT_MAX_FLOWS, tablesMaxFlows);

/** Which endpoint a map entry rewrites. */
export const enum FpDir { Dst = 0, Src = 1 }
/** Entry flags. */
export const enum FpFlag { Mptcp = 1 }

/** enum fp_counter, in order; the labels are the metric labels. */
export const FP_COUNTER_LABELS = [
  'packets', 'bytes', 'pass_not_tcp', 'pass_no_entry', 'pass_control', 'pass_mptcp', 'pass_malformed', 'syn_stale', 'errors', 'redirected', 'pass_ttl',
] as const;
export type FpCounterLabel = typeof FP_COUNTER_LABELS[number];

/**
 * Writes a key at k[0..40): the packet's 4-tuple as it arrives. `src`/`dst` hold the address bytes at sOff/dOff
 * (4 bytes for IPv4, 16 for IPv6); ports are host numbers.
 */
export function writeKey(k: Uint8Array, family: 4 | 6, src: Uint8Array, sOff: number, sport: number, dst: Uint8Array, dOff: number, dport: number, at = 0): void {
  k.fill(0, at, at + KEY_BYTES);
  const n = family === 4 ? 4 : 16;
  k[at] = family;
  k[at + 4] = sport >>> 8; k[at + 5] = sport & 0xff;
  k[at + 6] = dport >>> 8; k[at + 7] = dport & 0xff;
  for (let i = 0; i < n; i++) { k[at + 8 + i] = src[sOff + i]; k[at + 24 + i] = dst[dOff + i]; }
}

/** Writes a value at v[0..32): the new address and port, the direction, flags and stat slot; last_seen 0. */
export function writeValue(v: Uint8Array, family: 4 | 6, addr: Uint8Array, aOff: number, port: number, dir: FpDir, flags: number, at = 0, stat = FP_NO_STAT): void {
  v.fill(0, at, at + VALUE_BYTES);
  const n = family === 4 ? 4 : 16;
  for (let i = 0; i < n; i++) v[at + i] = addr[aOff + i];
  v[at + 16] = port >>> 8; v[at + 17] = port & 0xff;
  v[at + 18] = dir;
  v[at + 19] = flags;
  // Host order (the program reads it as a u32): little-endian on the x86-64 and arm64 this runs on.
  const o = at + VALUE_STAT_OFF;
  v[o] = stat & 0xff; v[o + 1] = (stat >>> 8) & 0xff; v[o + 2] = (stat >>> 16) & 0xff; v[o + 3] = stat >>> 24;
}

/** last_seen_ns of a value read back (host-endian u64, CLOCK_MONOTONIC ns), as a Number (exact below 2^53 ns, 104 days). */
export function readLastSeenNs(v: Uint8Array): number {
  const o = VALUE_LAST_SEEN_OFF;
  const lo = (v[o] | (v[o + 1] << 8) | (v[o + 2] << 16) | (v[o + 3] << 24)) >>> 0;
  const hi = (v[o + 4] | (v[o + 5] << 8) | (v[o + 6] << 16) | (v[o + 7] << 24)) >>> 0;
  return lo + hi * 2 ** 32;
}
