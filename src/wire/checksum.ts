// Internet checksums: full computation (RFC 1071) and incremental update (RFC 1624). Hot functions allocate nothing.

/** One's complement sum of 16-bit big-endian words over buf[off, off+len), added to `sum`; not folded. */
export function sumWords(buf: Uint8Array, off: number, len: number, sum: number): number {
  const end = off + (len & ~1);
  for (let i = off; i < end; i += 2) sum += (buf[i] << 8) | buf[i + 1];
  if (len & 1) sum += buf[off + len - 1] << 8;
  return sum;
}

/** Folds a 32-bit-or-wider sum to 16 bits (end-around carry). */
export function fold(sum: number): number {
  // Two folds suffice for sums below 2^32; the loop guards larger ones from long payloads.
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** Complemented checksum over a region (IPv4 header checksum: field must be zero first). */
export function checksum(buf: Uint8Array, off: number, len: number): number {
  return ~fold(sumWords(buf, off, len, 0)) & 0xffff;
}

/**
 * Delta to carry `oldBytes` -> `newBytes` (same even length) into a checksum:
 * RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'); this returns the folded sum of (~m + m') over the words.
 */
export function replaceDelta(oldBuf: Uint8Array, oldOff: number, newBuf: Uint8Array, newOff: number, len: number): number {
  let sum = 0;
  for (let i = 0; i < len; i += 2) {
    sum += (~((oldBuf[oldOff + i] << 8) | oldBuf[oldOff + i + 1]) & 0xffff) + ((newBuf[newOff + i] << 8) | newBuf[newOff + i + 1]);
  }
  return fold(sum);
}

/** Delta for replacing one 16-bit value. */
export function wordDelta(oldWord: number, newWord: number): number {
  return fold((~oldWord & 0xffff) + (newWord & 0xffff));
}

/** The delta that undoes `delta` (for the reverse direction of a NAT). */
export function invertDelta(delta: number): number {
  return ~delta & 0xffff;
}

/** Applies a delta to the checksum field at `off` (RFC 1624 eqn. 3). Hot path. */
export function applyDelta(buf: Uint8Array, off: number, delta: number): void {
  const hc = (buf[off] << 8) | buf[off + 1];
  let s = (~hc & 0xffff) + delta;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  const out = ~s & 0xffff;
  buf[off] = out >>> 8;
  buf[off + 1] = out & 0xff;
}

/**
 * Applies a delta to a checksum field that holds the uncomplemented partial pseudo-header sum
 * (virtio_net_hdr NEEDS_CSUM: the device finishes it), so the delta is added, not complemented.
 */
export function applyDeltaPartial(buf: Uint8Array, off: number, delta: number): void {
  let s = ((buf[off] << 8) | buf[off + 1]) + delta;
  s = (s & 0xffff) + (s >>> 16);
  s = (s & 0xffff) + (s >>> 16);
  buf[off] = s >>> 8;
  buf[off + 1] = s & 0xff;
}

/** Full TCP/UDP checksum with the pseudo-header; the checksum field must be zero. */
export function transportChecksum(
  buf: Uint8Array, srcOff: number, dstOff: number, addrLen: number, proto: number, l4Off: number, l4Len: number,
): number {
  let sum = sumWords(buf, srcOff, addrLen, 0);
  sum = sumWords(buf, dstOff, addrLen, sum);
  sum += proto + l4Len; // l4Len < 65536 for IPv4; IPv6 jumbograms are not accepted by the parser
  sum = sumWords(buf, l4Off, l4Len, sum);
  return ~fold(sum) & 0xffff;
}
