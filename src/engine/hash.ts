// Every hash the engine computes, built on MurmurHash3 x86_32 (Appleby) primitives. Hot path: Math.imul and shifts.
//
// Two kinds, with different rules:
// - Selection hashes (hashFiveTuple, hashAddrPair, hashString) are a contract: balancers in parallel with the same
//   hashSeed must pick the same backend, and Maglev tables must be the same in every process. Each is the standard
//   murmur3_32 of a byte string, checkable against any reference implementation (test/hash.test.ts pins values):
//     hashFiveTuple = murmur3(srcAddr ‖ dstAddr ‖ srcPort(BE16) ‖ dstPort(BE16) ‖ proto(8))
//     hashAddrPair  = murmur3(srcAddr ‖ dstAddr)
//     hashString    = murmur3(UTF-8(s))
// - Index hashes (hashTuple, hashEndpoint, hashToken) only place entries in this process's open-addressing
//   indices: they may change, but stay seeded and return 30 bits, so that no call on the hot path passes or
//   returns a number outside V8's small-integer range (which would allocate a heap number).

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

/** Index hashes are reduced to 30 bits: V8 small integers on every platform. */
export const SMI_MASK = 0x3fffffff;

/** murmur3 block scramble of the 32-bit block `k` (the tail step uses it alone). */
function scramble(k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  return Math.imul(k, C2);
}

/** One murmur3 body round: mixes the 32-bit block `k` into state `h`. */
function mixWord(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  h ^= Math.imul(k, C2);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** murmur3 fmix32 (full avalanche), as a signed int32. */
function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** murmur3 fmix32: full avalanche of a 32-bit value. Returns an unsigned integer. */
export function mix32(h: number): number {
  return fmix(h) >>> 0;
}

// ---- selection hashes (a contract between balancers: outputs must never change) ----

/** Little-endian 32-bit word at `o` (murmur3 reads blocks little-endian). */
function word(buf: Uint8Array, o: number): number {
  return buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24);
}

/** Mixes one address (4 or 16 bytes) read from the packet into `h`. */
function mixAddr(h: number, buf: Uint8Array, off: number, addrLen: number): number {
  h = mixWord(h, word(buf, off));
  if (addrLen === 16) {
    h = mixWord(h, word(buf, off + 4));
    h = mixWord(h, word(buf, off + 8));
    h = mixWord(h, word(buf, off + 12));
  }
  return h;
}

/**
 * 32-bit hash of an IPv4/IPv6 5-tuple read directly from packet bytes. addrLen must be 4 or 16.
 * Ports and proto are host integers (masked to 16 and 8 bits). Hot path (new flows).
 */
export function hashFiveTuple(buf: Uint8Array, srcAddrOff: number, dstAddrOff: number, addrLen: number, srcPort: number, dstPort: number, proto: number, seed: number): number {
  const h = mixAddr(mixAddr(seed | 0, buf, srcAddrOff, addrLen), buf, dstAddrOff, addrLen);
  // Ports in network byte order, as they sit on the wire, packed little-endian like any block; proto is the tail.
  const ports = ((srcPort >>> 8) & 0xff) | ((srcPort & 0xff) << 8) | (((dstPort >>> 8) & 0xff) << 16) | ((dstPort & 0xff) << 24);
  return mix32((mixWord(h, ports) ^ scramble(proto & 0xff)) ^ (2 * addrLen + 5));
}

/** 32-bit hash of the source and destination addresses only (the MPTCP-unaware 'hash-ip-pair' baseline). */
export function hashAddrPair(buf: Uint8Array, srcAddrOff: number, dstAddrOff: number, addrLen: number, seed: number): number {
  return mix32(mixAddr(mixAddr(seed | 0, buf, srcAddrOff, addrLen), buf, dstAddrOff, addrLen) ^ (2 * addrLen));
}

/**
 * 32-bit string hash for ids: murmur3_32 over the UTF-8 bytes of `s`, encoded on the fly so no
 * buffer is allocated. Deterministic (no random seed), so every process builds the same tables.
 * Lone surrogates are encoded as U+FFFD, as TextEncoder does. Cold path (Maglev builds).
 */
export function hashString(s: string, seed: number): number {
  let h = seed | 0;
  let k = 0; // pending bytes, little-endian
  let n = 0; // number of pending bytes (0..3)
  let len = 0; // total UTF-8 bytes
  const strLen = s.length;
  for (let i = 0; i < strLen; i++) {
    let c = s.charCodeAt(i);
    let bytes: number; // up to 4 UTF-8 bytes packed little-endian, in emission order
    let count: number;
    if (c < 0x80) {
      bytes = c;
      count = 1;
    } else if (c < 0x800) {
      bytes = (0xc0 | (c >>> 6)) | ((0x80 | (c & 0x3f)) << 8);
      count = 2;
    } else {
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = i + 1 < strLen ? s.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
        } else {
          c = 0xfffd;
        }
      }
      if (c < 0x10000) {
        bytes = (0xe0 | (c >>> 12)) | ((0x80 | ((c >>> 6) & 0x3f)) << 8) | ((0x80 | (c & 0x3f)) << 16);
        count = 3;
      } else {
        bytes =
          (0xf0 | (c >>> 18)) |
          ((0x80 | ((c >>> 12) & 0x3f)) << 8) |
          ((0x80 | ((c >>> 6) & 0x3f)) << 16) |
          ((0x80 | (c & 0x3f)) << 24);
        count = 4;
      }
    }
    len += count;
    for (let j = 0; j < count; j++) {
      k |= ((bytes >>> (8 * j)) & 0xff) << (8 * n);
      if (++n === 4) {
        h = mixWord(h, k);
        k = 0;
        n = 0;
      }
    }
  }
  if (n > 0) h ^= scramble(k);
  return mix32(h ^ len);
}

// ---- index hashes (this process only: 30 bits, seeded) ----
// Leaves on purpose, with the round and the finalizer written out instead of calling mixWord and fmix: V8 inlines all
// of a leaf or none of it, and every argument and the result are small integers. With calls inside, V8's inlining
// budget in a big caller (the engine's process or inbound) could run out halfway, and a 32-bit word passed to a call
// that is not inlined is boxed as a heap number (seen as 15-30 collections in some runs of the no-alloc check).

/** murmur3 rounds over n word pairs (x[xo + i], y[yo + i]), then the two ports; fmix32; 30 bits. */
function hashKey(x: Uint32Array, xo: number, y: Uint32Array, yo: number, n: number, xPort: number, yPort: number, seed: number): number {
  let h = seed | 0, k = 0;
  for (let i = 0; i < n; i++) {
    k = Math.imul(x[xo + i], C1); h ^= Math.imul((k << 15) | (k >>> 17), C2); h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
    k = Math.imul(y[yo + i], C1); h ^= Math.imul((k << 15) | (k >>> 17), C2); h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
  }
  k = Math.imul((xPort << 16) | yPort, C1); h ^= Math.imul((k << 15) | (k >>> 17), C2); h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) & SMI_MASK;
}

/**
 * Flow-table key: endpoint A = words x[xo..xo+3] and port xPort, endpoint B = words y[yo..yo+3] and port yPort.
 * Clients choose these keys (and a SYN flood inserts them), so every word goes through a full round. Hot path.
 */
export function hashTuple(x: Uint32Array, xo: number, xPort: number, y: Uint32Array, yo: number, yPort: number, seed: number): number {
  // IPv4 keys have zero high words: one pair of words instead of four (still a function of the whole key).
  const n = (x[xo + 1] | x[xo + 2] | x[xo + 3] | y[yo + 1] | y[yo + 2] | y[yo + 3]) === 0 ? 1 : 4;
  return hashKey(x, xo, y, yo, n, xPort, yPort, seed);
}

/**
 * Service-index key: an address (words w[o..o+3]) and a port, folded into one word, then fmix32. Cheaper than
 * hashKey, and enough here: only configured VIPs and backends are ever inserted, so traffic cannot lengthen a probe
 * chain whatever keys it looks up. Hot path: the VIP lookup of every packet.
 */
export function hashEndpoint(w: Uint32Array, o: number, port: number, seed: number): number {
  let h = seed ^ w[o] ^ Math.imul(w[o + 1], 0x9e3779b1) ^ Math.imul(w[o + 2], 0x85ebca6b) ^ Math.imul(w[o + 3], 0xc2b2ae35) ^ port;
  h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) & SMI_MASK;
}

const tokenWords = new Uint32Array(4);

/**
 * Token-index key: the token folded with the seed and finalized like an endpoint. Tokens come from keys that
 * clients choose, so the slot must depend on a seed, or chosen keys could aim at one probe chain.
 */
export function hashToken(token: number, seed: number): number {
  tokenWords[0] = token;
  return hashEndpoint(tokenWords, 0, 0, seed);
}
