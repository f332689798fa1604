// Tests for MPTCP key -> token / IDSN derivation against the key/token pairs and data sequence numbers
// seen in the public captures (shared/pcaps), and against node:crypto used directly.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import {
  keyToken,
  keyIdsn,
  tokenFromKeyBytes,
  keyFromHex,
  keyFromBigInt,
  keyToBigInt,
  keyToHex,
  toHex8,
  findKeysWithSameToken,
} from '../src/wire/tokens.js';
import { MptcpOption, OptionStatus, JoinForm, decodeMptcpOption } from '../src/wire/mptcp-options.js';

function hexToBytes(hex: string): Uint8Array {
  const s = hex.replace(/\s+/g, '');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function tokenOf(version: number, hex: string): number {
  const k = keyFromHex(hex);
  return keyToken(version, k.hi, k.lo);
}
function idsnOf(version: number, hex: string): bigint {
  const k = keyFromHex(hex);
  return keyIdsn(version, k.hi, k.lo);
}

/** Independent oracle: the hash computed with createHash, read with Buffer helpers. */
function oracle(version: number, key: bigint): { token: number; idsn: bigint } {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(key);
  const d = createHash(version === 0 ? 'sha1' : 'sha256').update(b).digest();
  return { token: d.readUInt32BE(0), idsn: d.readBigUInt64BE(d.length - 8) };
}

describe('known key -> token pairs from the captures', () => {
  const pairs: [string, number, string, number][] = [
    ['mptcp-v0 server key', 0, '967d2770b6960552', 0xe47f0142],
    ['mptcp-v1 server key', 1, '29a6c86981ad933c', 0xa35d6d82],
    ['mptcp-v1 client key', 1, '1fdb5df328bc3def', 0x239fbdb0],
    ['mptcp-fclose server key (v0 capture)', 0, 'd005b1ab34bad344', 0x1f874e7a],
    ['linux-v1 connection 1 server key', 1, '546054e621704ae7', 0xd41b3875],
    ['linux-v1 connection 2 server key', 1, '7a3a71076535379e', 0x0c84b3eb],
    ['linux-v1 connection 3 server key', 1, '68b4f5bc085c3104', 0xfd012574],
  ];
  for (const [name, version, key, token] of pairs) {
    test(`${name} ${key} -> ${toHex8(token)}`, () => {
      assert.equal(tokenOf(version, key), token);
      const bytes = hexToBytes('ffff' + key + 'ffff');
      assert.equal(tokenFromKeyBytes(version, bytes, 2), token);
      // The same key under the other version's hash must not give the token (catches a swapped hash).
      assert.notEqual(tokenOf(1 - version, key), token);
    });
  }

  test('tokens are unsigned u32 (top bit set stays positive)', () => {
    const t = tokenOf(0, '967d2770b6960552');
    assert.ok(t > 0x7fffffff);
    assert.equal(t, 0xe47f0142);
    assert.ok(Number.isInteger(t) && t >= 0 && t <= 0xffffffff);
  });

  test('the fclose capture is v0: its MP_CAPABLE says version 0 and SHA-1 gives the expected token', () => {
    const synAck = hexToBytes('1e0c0081 d005b1ab34bad344');
    const o = new MptcpOption();
    assert.equal(decodeMptcpOption(synAck, 0, 12, o), OptionStatus.Ok);
    assert.equal(o.version, 0);
    assert.equal(tokenFromKeyBytes(o.version, synAck, o.senderKeyOff), 0x1f874e7a);
    // And the MP_FASTCLOSE of that capture carries the same key.
    const fclose = hexToBytes('1e0c7000 d005b1ab34bad344');
    assert.equal(decodeMptcpOption(fclose, 0, 12, o), OptionStatus.Ok);
    assert.equal(tokenFromKeyBytes(0, fclose, o.receiverKeyOff), 0x1f874e7a);
  });
});

describe('the join SYN carries the token of the server key from the same connection', () => {
  // [capture, SYN/ACK MP_CAPABLE bytes, MP_JOIN SYN bytes]
  const conns: [string, string, string][] = [
    ['mptcp-v0 #2 / #8', '1e0c0081 967d2770b6960552', '1e0c1000 e47f0142 1b665a18'],
    ['linux-v1 #2 / #6', '1e0c0101 546054e621704ae7', '1e0c1001 d41b3875 129e3b4f'],
    ['linux-v1 #32 / #36', '1e0c0101 7a3a71076535379e', '1e0c1001 0c84b3eb 8319c689'],
    ['linux-v1 #62 / #66', '1e0c0101 68b4f5bc085c3104', '1e0c1001 fd012574 2399c2e2'],
  ];
  for (const [name, synAckHex, joinHex] of conns) {
    test(name, () => {
      // Both options in one packet-like buffer, decoded in place as the engine does.
      const synAck = hexToBytes(synAckHex);
      const join = hexToBytes(joinHex);
      const buf = new Uint8Array(3 + synAck.length + join.length);
      buf.set(synAck, 3);
      buf.set(join, 3 + synAck.length);
      const cap = new MptcpOption();
      const j = new MptcpOption();
      assert.equal(decodeMptcpOption(buf, 3, synAck.length, cap), OptionStatus.Ok);
      assert.equal(decodeMptcpOption(buf, 3 + synAck.length, join.length, j), OptionStatus.Ok);
      assert.equal(j.joinForm, JoinForm.Syn);
      assert.equal(tokenFromKeyBytes(cap.version, buf, cap.senderKeyOff), j.token);
      assert.equal(keyToken(cap.version, cap.senderKeyHi, cap.senderKeyLo), j.token);
    });
  }
});

describe('IDSN: the first data sequence numbers in the captures are IDSN + 1', () => {
  test('mptcp-v0: server DSN 3518592144 (#4) and client DSN 3576348362 (#6), 32-bit on the wire', () => {
    assert.equal(idsnOf(0, '967d2770b6960552'), 0xe47ef57dd1b9748fn);
    assert.equal((idsnOf(0, '967d2770b6960552') + 1n) & 0xffffffffn, 3518592144n);
    assert.equal((idsnOf(0, '9c9eabd1e46a33b2') + 1n) & 0xffffffffn, 3576348362n);
  });

  test('mptcp-v1: server DSN 11713449205243392242 (#7); client data ACKed at 14413541604287230030 (#5)', () => {
    assert.equal(idsnOf(1, '29a6c86981ad933c') + 1n, 11713449205243392242n);
    // The client's first 8192 bytes rode in the MP_CAPABLE (#4); #5 ACKs the data-level start, IDSN + 1.
    assert.equal(idsnOf(1, '1fdb5df328bc3def') + 1n, 14413541604287230030n);
    // The client's next mapping (#9) starts after those 8192 bytes.
    assert.equal(idsnOf(1, '1fdb5df328bc3def') + 1n + 8192n, 14413541604287238222n);
  });

  test('linux-v1: server DATA_FIN at IDSN + 1 (#20); client mapping after the 2000-byte MP_CAPABLE data (#10)', () => {
    assert.equal(idsnOf(1, '546054e621704ae7') + 1n, 0xd631ed75cdff61a7n);
    assert.equal(idsnOf(1, '15eed87ecb7d8aea') + 1n + 2000n, 0xe927ac067b61e761n);
  });

  test('mptcp-fclose (v0): client DSN 2976985014, server DSN ACKed at 3386645601', () => {
    assert.equal((idsnOf(0, '9b59be3d695e66a7') + 1n) & 0xffffffffn, 2976985014n);
    assert.equal((idsnOf(0, 'd005b1ab34bad344') + 1n) & 0xffffffffn, 3386645601n);
  });
});

describe('agreement with node:crypto used directly', () => {
  test('keyToken, tokenFromKeyBytes and keyIdsn for random keys, both versions', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.constantFrom(0, 1), fc.nat(16), (key, version, off) => {
        const { hi, lo } = keyFromBigInt(key);
        const want = oracle(version, key);
        assert.equal(keyToken(version, hi, lo), want.token);
        assert.equal(keyIdsn(version, hi, lo), want.idsn);
        const buf = new Uint8Array(off + 8 + 3).fill(0xaa);
        Buffer.from(buf.buffer).writeBigUInt64BE(key, off);
        assert.equal(tokenFromKeyBytes(version, buf, off), want.token);
      }),
      { numRuns: 500 },
    );
  });

  test('interleaved calls do not disturb each other (shared scratch)', () => {
    const a = keyFromHex('546054e621704ae7');
    const buf = hexToBytes('7a3a71076535379e');
    assert.equal(tokenFromKeyBytes(1, buf, 0), 0x0c84b3eb);
    assert.equal(keyToken(1, a.hi, a.lo), 0xd41b3875);
    assert.equal(tokenFromKeyBytes(1, buf, 0), 0x0c84b3eb);
    assert.equal(keyIdsn(1, a.hi, a.lo), 0xd631ed75cdff61a6n);
  });
});

describe('argument errors', () => {
  test('unknown versions have no hash', () => {
    assert.throws(() => keyToken(2, 0, 1), RangeError);
    assert.throws(() => keyIdsn(-1, 0, 1), RangeError);
    assert.throws(() => tokenFromKeyBytes(15, new Uint8Array(8), 0), RangeError);
  });

  test('key bytes must lie inside the buffer', () => {
    assert.throws(() => tokenFromKeyBytes(1, new Uint8Array(8), 1), RangeError);
    assert.throws(() => tokenFromKeyBytes(1, new Uint8Array(8), -1), RangeError);
    assert.doesNotThrow(() => tokenFromKeyBytes(1, new Uint8Array(9), 1));
  });
});

describe('hex and bigint helpers', () => {
  test('keyFromHex accepts 0x, short and upper-case forms', () => {
    assert.deepEqual(keyFromHex('0x967d2770b6960552'), { hi: 0x967d2770, lo: 0xb6960552 });
    assert.deepEqual(keyFromHex('00AB'), { hi: 0, lo: 0xab });
    assert.deepEqual(keyFromHex('ffffffffffffffff'), { hi: 0xffffffff, lo: 0xffffffff });
  });

  test('keyFromHex rejects anything else', () => {
    for (const bad of ['', '0x', 'xyz', '1'.repeat(17), ' 12', '12 ', '-1', '0x-1']) {
      assert.throws(() => keyFromHex(bad), RangeError, bad);
    }
  });

  test('keyToHex and toHex8 are lowercase and zero-padded', () => {
    assert.equal(keyToHex(0x0c84b3eb, 0x1), '0c84b3eb00000001');
    assert.equal(keyToHex(0, 0), '0000000000000000');
    assert.equal(toHex8(0x0c84b3eb), '0c84b3eb');
    assert.equal(toHex8(0xe47f0142), 'e47f0142');
    assert.equal(toHex8(-1), 'ffffffff'); // a signed int32 view of a token prints as the same token
  });

  test('bigint <-> halves <-> hex round trip', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (k) => {
        const { hi, lo } = keyFromBigInt(k);
        assert.equal(keyToBigInt(hi, lo), k);
        assert.equal(keyToHex(hi, lo), k.toString(16).padStart(16, '0'));
        assert.deepEqual(keyFromHex(keyToHex(hi, lo)), { hi, lo });
      }),
      { numRuns: 300 },
    );
    assert.throws(() => keyFromBigInt(1n << 64n), RangeError);
    assert.throws(() => keyFromBigInt(-1n), RangeError);
  });
});

describe('crafted token collisions', () => {
  test('findKeysWithSameToken gives two different keys with one token, deterministically', () => {
    for (const version of [0, 1]) {
      const r = findKeysWithSameToken(version, 0n);
      assert.ok(r !== null);
      assert.notEqual(r.keyA, r.keyB);
      const a = keyFromBigInt(r.keyA);
      const b = keyFromBigInt(r.keyB);
      assert.equal(keyToken(version, a.hi, a.lo), r.token);
      assert.equal(keyToken(version, b.hi, b.lo), r.token);
      assert.deepEqual(findKeysWithSameToken(version, 0n), r);
    }
  });

  test('known colliding v1 pair stays a collision (fixture for balancer collision tests)', () => {
    // Found by findKeysWithSameToken(1, 0n); hard-coded so other tests can use it without searching.
    assert.equal(tokenOf(1, '000000000000c66f'), 1935119978);
    assert.equal(tokenOf(1, '000000000000e658'), 1935119978);
    assert.deepEqual(findKeysWithSameToken(1, 0n), { keyA: 0xc66fn, keyB: 0xe658n, token: 1935119978 });
  });

  test('gives up with null when maxTries is too small, and wraps at 2^64', () => {
    assert.equal(findKeysWithSameToken(1, 0n, 10), null);
    const r = findKeysWithSameToken(1, (1n << 64n) - 5n);
    assert.ok(r !== null);
    assert.ok(r.keyA < 1n << 64n && r.keyB < 1n << 64n);
    const a = keyFromBigInt(r.keyA);
    const b = keyFromBigInt(r.keyB);
    assert.equal(keyToken(1, a.hi, a.lo), keyToken(1, b.hi, b.lo));
  });
});
