// Flow hashes for backend selection: MurmurHash3 x86_32 over the tuple's wire bytes. Hot path.
//
// Every function here is the standard murmur3_32 of a byte string, so the values can be checked
// against any reference implementation:
//   hashFiveTuple = murmur3(srcAddr ‖ dstAddr ‖ srcPort(BE16) ‖ dstPort(BE16) ‖ proto(8))
//   hashAddrPair  = murmur3(srcAddr ‖ dstAddr)
//   hashString    = murmur3(UTF-8(s))
// Bytes are read straight from the packet (no views, no allocation); only Math.imul and shifts.

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

/** One murmur3 body round: mixes the 32-bit block `k` into state `h`. */
function round(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, C2);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

/** murmur3 tail step for the final 1..3 bytes (already packed little-endian in `k`). */
function tail(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, C2);
  return h ^ k;
}

/** murmur3 fmix32: full avalanche of a 32-bit value. Returns an unsigned integer. */
export function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Little-endian 32-bit word at `o` (murmur3 reads blocks little-endian). */
function word(buf: Uint8Array, o: number): number {
  return buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24);
}

/** Mixes one address (4 or 16 bytes) into `h`. */
function mixAddr(h: number, buf: Uint8Array, off: number, addrLen: number): number {
  h = round(h, word(buf, off));
  if (addrLen === 16) {
    h = round(h, word(buf, off + 4));
    h = round(h, word(buf, off + 8));
    h = round(h, word(buf, off + 12));
  }
  return h;
}

/**
 * 32-bit hash of an IPv4/IPv6 5-tuple read directly from packet bytes. addrLen must be 4 or 16.
 * Ports and proto are host integers (masked to 16 and 8 bits). Hot path.
 */
export function hashFiveTuple(
  buf: Uint8Array,
  srcAddrOff: number,
  dstAddrOff: number,
  addrLen: number,
  srcPort: number,
  dstPort: number,
  proto: number,
  seed: number,
): number {
  let h = seed | 0;
  h = mixAddr(h, buf, srcAddrOff, addrLen);
  h = mixAddr(h, buf, dstAddrOff, addrLen);
  // Ports in network byte order, as they sit on the wire, packed little-endian like any block.
  h = round(
    h,
    ((srcPort >>> 8) & 0xff) | ((srcPort & 0xff) << 8) | (((dstPort >>> 8) & 0xff) << 16) | ((dstPort & 0xff) << 24),
  );
  h = tail(h, proto & 0xff);
  return mix32(h ^ (2 * addrLen + 5));
}

/** 32-bit hash of the source and destination addresses only (the MPTCP-unaware 'hash-ip-pair' baseline). */
export function hashAddrPair(
  buf: Uint8Array,
  srcAddrOff: number,
  dstAddrOff: number,
  addrLen: number,
  seed: number,
): number {
  let h = seed | 0;
  h = mixAddr(h, buf, srcAddrOff, addrLen);
  h = mixAddr(h, buf, dstAddrOff, addrLen);
  return mix32(h ^ (2 * addrLen));
}

/**
 * 32-bit string hash for ids: murmur3_32 over the UTF-8 bytes of `s`, encoded on the fly so no
 * buffer is allocated. Deterministic (no random seed), so every process builds the same tables.
 * Lone surrogates are encoded as U+FFFD, as TextEncoder does.
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
        h = round(h, k);
        k = 0;
        n = 0;
      }
    }
  }
  if (n > 0) h = tail(h, k);
  return mix32(h ^ len);
}
