// Hashes: the selection hashes agree with a byte-string murmur3_32 reference (golden values, sensitivity, spread);
// the index hashes are seeded 30-bit small integers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { hashAddrPair, hashEndpoint, hashFiveTuple, hashString, hashToken, hashTuple, mix32, SMI_MASK } from '../src/engine/hash.js';

/** Straightforward murmur3 x86_32 over a byte array, written from the reference algorithm. */
function murmur3Ref(bytes: Uint8Array, seed: number): number {
  let h = seed >>> 0;
  const blocks = bytes.length >> 2;
  const mixK = (k: number): number => {
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    return Math.imul(k, 0x1b873593);
  };
  for (let i = 0; i < blocks; i++) {
    const o = i * 4;
    const k = bytes[o] | (bytes[o + 1] << 8) | (bytes[o + 2] << 16) | (bytes[o + 3] << 24);
    h ^= mixK(k);
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = blocks * 4;
  const rest = bytes.length & 3;
  if (rest > 0) {
    let k = bytes[tail];
    if (rest > 1) k |= bytes[tail + 1] << 8;
    if (rest > 2) k |= bytes[tail + 2] << 16;
    h ^= mixK(k);
  }
  h ^= bytes.length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Deterministic PRNG for the statistical tests (xorshift32). */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

/** A packet-like buffer: 3 bytes of padding, then src, dst (so reads are unaligned). */
function tupleBuf(addrLen: number, next: () => number): Uint8Array {
  const buf = new Uint8Array(3 + 2 * addrLen + 5);
  for (let i = 0; i < buf.length; i++) buf[i] = next() & 0xff;
  return buf;
}

function tupleBytes(buf: Uint8Array, addrLen: number, sp: number, dp: number, proto: number): Uint8Array {
  const out = new Uint8Array(2 * addrLen + 5);
  out.set(buf.subarray(3, 3 + 2 * addrLen), 0);
  out.set([sp >>> 8, sp & 0xff, dp >>> 8, dp & 0xff, proto], 2 * addrLen);
  return out;
}

/** Chi-square statistic of `n` values over `buckets` equal buckets. */
function chiSquare(counts: Uint32Array, n: number): number {
  const expected = n / counts.length;
  let chi = 0;
  for (const c of counts) chi += ((c - expected) * (c - expected)) / expected;
  return chi;
}

// 63 degrees of freedom: the 99.99th percentile is about 113.
const CHI_LIMIT_63 = 113;

test('hashString matches published murmur3_32 vectors (UTF-8)', () => {
  const vectors: Array<[string, number, number]> = [
    ['', 0, 0],
    ['', 1, 0x514e28b7],
    ['', 0xffffffff, 0x81f16f39],
    ['\0\0\0\0', 0, 0x2362f9de],
    ['a', 0x9747b28c, 0x7fa09ea6],
    ['ab', 0x9747b28c, 0x74875592],
    ['abc', 0x9747b28c, 0xc84a62dd],
    ['abcd', 0x9747b28c, 0xf0478627],
    ['Hello, world!', 0x9747b28c, 0x24884cba],
    ['ππππππππ', 0x9747b28c, 0xd58063c1],
    ['The quick brown fox jumps over the lazy dog', 0x9747b28c, 0x2fa826cd],
  ];
  for (const [s, seed, want] of vectors) assert.equal(hashString(s, seed), want, JSON.stringify(s));
});

test('hashString equals murmur3 over TextEncoder bytes for any string, lone surrogates included', () => {
  const enc = new TextEncoder();
  fc.assert(
    fc.property(fc.string({ unit: 'binary', maxLength: 40 }), fc.integer({ min: 0, max: 0xffffffff }), (s, seed) => {
      assert.equal(hashString(s, seed), murmur3Ref(enc.encode(s), seed));
    }),
    { numRuns: 500 },
  );
  for (const s of ['\ud800', 'x\udc00y', '\ud83d\ude00', '\ud83d', 'é€😀']) {
    assert.equal(hashString(s, 7), murmur3Ref(enc.encode(s), 7), JSON.stringify(s));
  }
});

test('hashFiveTuple and hashAddrPair are murmur3 of the wire-order tuple bytes (IPv4 and IPv6)', () => {
  fc.assert(
    fc.property(
      fc.constantFrom(4, 16),
      fc.integer({ min: 1, max: 0x7fffffff }),
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0, max: 255 }),
      fc.integer({ min: 0, max: 0xffffffff }),
      (addrLen, bufSeed, sp, dp, proto, seed) => {
        const buf = tupleBuf(addrLen, rng(bufSeed));
        const bytes = tupleBytes(buf, addrLen, sp, dp, proto);
        assert.equal(hashFiveTuple(buf, 3, 3 + addrLen, addrLen, sp, dp, proto, seed), murmur3Ref(bytes, seed));
        assert.equal(hashAddrPair(buf, 3, 3 + addrLen, addrLen, seed), murmur3Ref(bytes.subarray(0, 2 * addrLen), seed));
      },
    ),
    { numRuns: 500 },
  );
});

test('golden values are pinned', () => {
  // 192.0.2.1:40000 -> 198.51.100.7:443 TCP, as it sits in an IPv4 header (src at 12, dst at 16).
  const v4 = new Uint8Array(20);
  v4.set([192, 0, 2, 1, 198, 51, 100, 7], 12);
  assert.equal(hashFiveTuple(v4, 12, 16, 4, 40000, 443, 6, 0), 0x47b80589);
  assert.equal(hashFiveTuple(v4, 12, 16, 4, 40000, 443, 6, 0x9747b28c), 0x2c91990f);
  assert.equal(hashAddrPair(v4, 12, 16, 4, 0), 0xd1090ee7);
  // 2001:db8::1 -> 2001:db8::2 in an IPv6 header (src at 8, dst at 24).
  const v6 = new Uint8Array(40);
  v6.set([0x20, 0x01, 0x0d, 0xb8], 8);
  v6[23] = 1;
  v6.set([0x20, 0x01, 0x0d, 0xb8], 24);
  v6[39] = 2;
  assert.equal(hashFiveTuple(v6, 8, 24, 16, 50000, 80, 6, 0), 0x9aa0eb5a);
  assert.equal(hashAddrPair(v6, 8, 24, 16, 0), 0x716b76d7);
  assert.equal(hashString('10.0.0.1:80', 0), 0xc77959ec);
  assert.equal(mix32(0), 0);
  assert.equal(mix32(1), 0x514e28b7);
});

test('changing any single address byte, port or protocol changes the 5-tuple hash (>99%)', () => {
  for (const addrLen of [4, 16]) {
    const next = rng(addrLen * 7919);
    let trials = 0;
    let changed = 0;
    for (let t = 0; t < 300; t++) {
      const buf = tupleBuf(addrLen, next);
      const sp = next() & 0xffff;
      const dp = next() & 0xffff;
      const proto = next() & 0xff;
      const seed = next();
      const h = hashFiveTuple(buf, 3, 3 + addrLen, addrLen, sp, dp, proto, seed);
      const check = (h2: number): void => {
        trials++;
        if (h2 !== h) changed++;
      };
      for (let i = 3; i < 3 + 2 * addrLen; i++) {
        const old = buf[i];
        buf[i] = old ^ (1 + (next() % 255)); // any other byte value
        check(hashFiveTuple(buf, 3, 3 + addrLen, addrLen, sp, dp, proto, seed));
        buf[i] = old;
      }
      check(hashFiveTuple(buf, 3, 3 + addrLen, addrLen, sp ^ (1 + (next() % 0xffff)), dp, proto, seed));
      check(hashFiveTuple(buf, 3, 3 + addrLen, addrLen, sp, dp ^ (1 + (next() % 0xffff)), proto, seed));
      check(hashFiveTuple(buf, 3, 3 + addrLen, addrLen, sp, dp, proto ^ (1 + (next() % 255)), seed));
    }
    assert.ok(changed / trials > 0.99, `addrLen ${addrLen}: ${changed}/${trials}`);
  }
});

test('5-tuple hashes spread evenly over 64 buckets (random tuples, IPv4 and IPv6)', () => {
  for (const addrLen of [4, 16]) {
    const next = rng(addrLen + 12345);
    const n = 100_000;
    const low = new Uint32Array(64);
    const high = new Uint32Array(64);
    const buf = new Uint8Array(3 + 2 * addrLen);
    for (let i = 0; i < n; i++) {
      for (let b = 0; b < buf.length; b++) buf[b] = next() & 0xff;
      const h = hashFiveTuple(buf, 3, 3 + addrLen, addrLen, next() & 0xffff, next() & 0xffff, 6, 0);
      low[h & 63]++;
      high[h >>> 26]++;
    }
    assert.ok(chiSquare(low, n) < CHI_LIMIT_63, `low bits, addrLen ${addrLen}: ${chiSquare(low, n)}`);
    assert.ok(chiSquare(high, n) < CHI_LIMIT_63, `high bits, addrLen ${addrLen}: ${chiSquare(high, n)}`);
  }
});

test('5-tuple hashes spread evenly for one client walking its source ports', () => {
  // The realistic worst case: a few clients, one VIP, sequential ephemeral ports.
  const buf = new Uint8Array([10, 1, 0, 0, 203, 0, 113, 10]);
  const counts = new Uint32Array(64);
  let n = 0;
  for (let client = 0; client < 4; client++) {
    buf[3] = client;
    for (let sp = 32768; sp < 60768; sp++) {
      counts[hashFiveTuple(buf, 0, 4, 4, sp, 443, 6, 0x1234) % 64]++;
      n++;
    }
  }
  assert.ok(chiSquare(counts, n) < CHI_LIMIT_63, `chi ${chiSquare(counts, n)}`);
});

test('hashAddrPair ignores ports and protocol but not addresses; spreads evenly', () => {
  const next = rng(99);
  for (const addrLen of [4, 16]) {
    const buf = tupleBuf(addrLen, next);
    const h = hashAddrPair(buf, 3, 3 + addrLen, addrLen, 5);
    // Same addresses with any ports give the same pair hash, different 5-tuple hashes.
    const t1 = hashFiveTuple(buf, 3, 3 + addrLen, addrLen, 1000, 80, 6, 5);
    const t2 = hashFiveTuple(buf, 3, 3 + addrLen, addrLen, 2000, 80, 6, 5);
    assert.notEqual(t1, t2);
    assert.equal(hashAddrPair(buf, 3, 3 + addrLen, addrLen, 5), h);
    buf[3 + addrLen - 1] ^= 1;
    assert.notEqual(hashAddrPair(buf, 3, 3 + addrLen, addrLen, 5), h);
  }
  const counts = new Uint32Array(64);
  const buf = new Uint8Array(8);
  for (let i = 0; i < 100_000; i++) {
    for (let b = 0; b < 8; b++) buf[b] = next() & 0xff;
    counts[hashAddrPair(buf, 0, 4, 4, 0) >>> 26]++;
  }
  assert.ok(chiSquare(counts, 100_000) < CHI_LIMIT_63);
});

test('IPv6 uses all 16 bytes of each address, and differs from IPv4 on the same prefix', () => {
  const buf = new Uint8Array(32);
  for (let i = 0; i < 32; i++) buf[i] = i * 37;
  const h = hashFiveTuple(buf, 0, 16, 16, 1, 2, 6, 0);
  for (let i = 0; i < 32; i++) {
    buf[i] ^= 0x80;
    assert.notEqual(hashFiveTuple(buf, 0, 16, 16, 1, 2, 6, 0), h, `byte ${i}`);
    buf[i] ^= 0x80;
  }
  // IPv4 view of the first 4 bytes of each address is a different tuple.
  assert.notEqual(hashFiveTuple(buf, 0, 16, 4, 1, 2, 6, 0), h);
});

test('seeds select independent hashes; results are unsigned 32-bit integers', () => {
  const buf = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  const seen = new Set<number>();
  for (let seed = 0; seed < 1000; seed++) {
    const h = hashFiveTuple(buf, 0, 4, 4, 1, 2, 6, seed);
    assert.ok(Number.isInteger(h) && h >= 0 && h <= 0xffffffff);
    seen.add(h);
  }
  assert.ok(seen.size >= 999);
  assert.notEqual(hashString('a', 1), hashString('a', 2));
});

test('mix32 is a bijection on a sample and returns unsigned values', () => {
  const seen = new Set<number>();
  for (let i = 0; i < 100_000; i++) {
    const h = mix32(i * 0x10001);
    assert.ok(h >= 0 && h <= 0xffffffff);
    seen.add(h);
  }
  assert.equal(seen.size, 100_000);
  assert.equal(mix32(-1), mix32(0xffffffff));
});

test('index hashes are seeded small integers that spread evenly', () => {
  const next = rng(777);
  const w = new Uint32Array(8);
  const tuple = new Uint32Array(64), endpoint = new Uint32Array(64), token = new Uint32Array(64);
  const n = 100_000;
  for (let i = 0; i < n; i++) {
    // IPv4 (high words zero) and IPv6 keys alike.
    const v6 = (i & 1) === 1;
    for (let j = 0; j < 8; j++) w[j] = j % 4 === 0 || v6 ? next() : 0;
    const sp = next() & 0xffff, dp = next() & 0xffff;
    const hs = [hashTuple(w, 0, sp, w, 4, dp, 5), hashEndpoint(w, 4, dp, 5), hashToken(w[0], 5)];
    for (const h of hs) assert.ok(h >= 0 && h <= SMI_MASK && Number.isInteger(h));
    tuple[hs[0] >>> 24]++; endpoint[hs[1] & 63]++; token[hs[2] >>> 24]++;
  }
  for (const c of [tuple, endpoint, token]) assert.ok(chiSquare(c, n) < CHI_LIMIT_63, `chi ${chiSquare(c, n)}`);
  // A different seed moves a key to an unrelated slot.
  w.fill(0); w[0] = 0x0a000001; w[4] = 0xc6126401;
  assert.notEqual(hashTuple(w, 0, 1, w, 4, 2, 1), hashTuple(w, 0, 1, w, 4, 2, 2));
  assert.notEqual(hashEndpoint(w, 4, 80, 1), hashEndpoint(w, 4, 80, 2));
  assert.notEqual(hashToken(12345, 1), hashToken(12345, 2));
  // The direction of a tuple matters (each direction has its own index entry).
  assert.notEqual(hashTuple(w, 0, 1, w, 4, 2, 1), hashTuple(w, 4, 2, w, 0, 1, 1));
});
