// The fast path's map layouts, mirrored from bpf/fastpath.bpf.c (struct fp_key, struct fp_value, enum fp_counter).
// Pure: encoders into caller buffers, no allocation per call.

/** struct fp_key: family u8, pad[3], sport be16, dport be16, saddr be32[4], daddr be32[4]. */
export const KEY_BYTES = 40;
/** struct fp_value: addr be32[4], port be16, dir u8, flags u8, pad u32, last_seen_ns u64. */
export const VALUE_BYTES = 32;
export const VALUE_LAST_SEEN_OFF = 24;

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

/** Writes a value at v[0..32): the new address and port, the direction and flags; last_seen 0. */
export function writeValue(v: Uint8Array, family: 4 | 6, addr: Uint8Array, aOff: number, port: number, dir: FpDir, flags: number, at = 0): void {
  v.fill(0, at, at + VALUE_BYTES);
  const n = family === 4 ? 4 : 16;
  for (let i = 0; i < n; i++) v[at + i] = addr[aOff + i];
  v[at + 16] = port >>> 8; v[at + 17] = port & 0xff;
  v[at + 18] = dir;
  v[at + 19] = flags;
}

/** last_seen_ns of a value read back (host-endian u64, CLOCK_MONOTONIC ns), as a Number (exact below 2^53 ns, 104 days). */
export function readLastSeenNs(v: Uint8Array): number {
  const o = VALUE_LAST_SEEN_OFF;
  const lo = (v[o] | (v[o + 1] << 8) | (v[o + 2] << 16) | (v[o + 3] << 24)) >>> 0;
  const hi = (v[o + 4] | (v[o + 5] << 8) | (v[o + 6] << 16) | (v[o + 7] << 24)) >>> 0;
  return lo + hi * 2 ** 32;
}
