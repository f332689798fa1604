// MPTCP key -> token and IDSN: RFC 6824 §3.1 (v0, SHA-1) and RFC 8684 §3.1 (v1, SHA-256).
// Token = truncated (most significant 32 bits) hash of the key, IDSN = its least significant 64 bits, the key
// hashed as 8 bytes in network order. tokenFromKeyBytes is on the new-connection path.

import * as nodeCrypto from 'node:crypto';

type OneShotHash = (algorithm: string, data: Uint8Array, outputEncoding: 'binary') => string;
// crypto.hash (Node >= 20.12) with 'binary' (latin1) output measured ~300 ns per key against ~2000 ns for
// createHash().update().digest() and ~1400 ns for crypto.hash(..., 'buffer'): no Hash object, no Buffer.
const oneShot: OneShotHash | undefined =
  typeof (nodeCrypto as { hash?: unknown }).hash === 'function' ? ((nodeCrypto as unknown as { hash: OneShotHash }).hash) : undefined;

/** Digest of `data` as a latin1 string (one char per byte); version 0 -> SHA-1, 1 -> SHA-256. */
function digestLatin1(version: number, data: Uint8Array): string {
  let alg: string;
  if (version === 0) alg = 'sha1';
  else if (version === 1) alg = 'sha256';
  else throw new RangeError(`MPTCP version ${version} has no known key hash`);
  if (oneShot !== undefined) return oneShot(alg, data, 'binary');
  return nodeCrypto.createHash(alg).update(data).digest('binary');
}

function tokenFromDigest(d: string): number {
  return ((d.charCodeAt(0) << 24) | (d.charCodeAt(1) << 16) | (d.charCodeAt(2) << 8) | d.charCodeAt(3)) >>> 0;
}

const scratch = new Uint8Array(8);

function fillScratch(hi: number, lo: number): void {
  scratch[0] = hi >>> 24;
  scratch[1] = (hi >>> 16) & 0xff;
  scratch[2] = (hi >>> 8) & 0xff;
  scratch[3] = hi & 0xff;
  scratch[4] = lo >>> 24;
  scratch[5] = (lo >>> 16) & 0xff;
  scratch[6] = (lo >>> 8) & 0xff;
  scratch[7] = lo & 0xff;
}

/** Token of a 64-bit key given as u32 halves: top 32 bits of SHA-1 (v0) / SHA-256 (v1). Unsigned. */
export function keyToken(version: number, keyHi: number, keyLo: number): number {
  fillScratch(keyHi, keyLo);
  return tokenFromDigest(digestLatin1(version, scratch));
}

/** Same as keyToken, hashing buf[off .. off+8) in place (e.g. MptcpOption.senderKeyOff). */
export function tokenFromKeyBytes(version: number, buf: Uint8Array, off: number): number {
  if (!(off >= 0) || off + 8 > buf.length) throw new RangeError(`key bytes at ${off} are outside a ${buf.length}-byte buffer`);
  // Copying into the scratch array avoids allocating a subarray view per call.
  for (let i = 0; i < 8; i++) scratch[i] = buf[off + i];
  return tokenFromDigest(digestLatin1(version, scratch));
}

/** Initial data sequence number: the low 64 bits of the same hash. */
export function keyIdsn(version: number, keyHi: number, keyLo: number): bigint {
  fillScratch(keyHi, keyLo);
  const d = digestLatin1(version, scratch);
  let v = 0n;
  for (let i = d.length - 8; i < d.length; i++) v = (v << 8n) | BigInt(d.charCodeAt(i));
  return v;
}

/** A 64-bit key as u32 halves. */
export interface KeyHalves {
  hi: number;
  lo: number;
}

/** Parses 1..16 hex digits, with or without 0x, into key halves. Throws RangeError on anything else. */
export function keyFromHex(text: string): KeyHalves {
  const m = /^(?:0x)?([0-9a-fA-F]{1,16})$/.exec(text);
  if (m === null) throw new RangeError(`not a 64-bit hex key: ${JSON.stringify(text)}`);
  const digits = m[1].padStart(16, '0');
  return { hi: parseInt(digits.slice(0, 8), 16) >>> 0, lo: parseInt(digits.slice(8), 16) >>> 0 };
}

export function keyFromBigInt(key: bigint): KeyHalves {
  if (key < 0n || key >= 1n << 64n) throw new RangeError(`key ${key} is not a u64`);
  return { hi: Number(key >> 32n), lo: Number(key & 0xffffffffn) };
}

export function keyToBigInt(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** Lowercase, 16 digits, no prefix: the form keys take in logs and the admin API. */
export function keyToHex(hi: number, lo: number): string {
  return toHex8(hi) + toHex8(lo);
}

/** Lowercase, 8 digits, no prefix: the form tokens take in logs and the admin API. */
export function toHex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

/**
 * Finds two keys with the same token for collision tests (birthday search: about 80k hashes, tens of
 * milliseconds). Keys are `seed`, `seed+1`, ... (mod 2^64), so the result is deterministic. Returns null
 * if none within maxTries.
 */
export function findKeysWithSameToken(
  version: number,
  seed: bigint = 0n,
  maxTries: number = 1 << 21,
): { keyA: bigint; keyB: bigint; token: number } | null {
  const seen = new Map<number, number>();
  let { hi, lo } = keyFromBigInt(seed & ((1n << 64n) - 1n));
  const startHi = hi;
  const startLo = lo;
  for (let i = 0; i < maxTries; i++) {
    const t = keyToken(version, hi, lo);
    const j = seen.get(t);
    if (j !== undefined) {
      const base = keyToBigInt(startHi, startLo);
      const mask = (1n << 64n) - 1n;
      return { keyA: (base + BigInt(j)) & mask, keyB: (base + BigInt(i)) & mask, token: t };
    }
    seen.set(t, i);
    lo = (lo + 1) >>> 0;
    if (lo === 0) hi = (hi + 1) >>> 0;
  }
  return null;
}
