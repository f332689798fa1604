// Capture file I/O for `mplb replay`: reads pcap (draft-ietf-opsawg-pcap) and pcapng
// (draft-ietf-opsawg-pcapng) files, writes pcap. Every length from the file is checked before use.

export interface CaptureRecord {
  /** Microseconds since the Unix epoch (exact up to 2^53, i.e. until year 2255). */
  tsUs: number;
  linkType: number;
  /** Captured bytes: a view into the input, not a copy. */
  data: Uint8Array;
  /** Length of the packet on the wire; larger than data.length when the capture was truncated. */
  origLen: number;
}

/** A capture file that cannot be read; `offset` is the byte offset of the offending structure. */
export class CaptureFormatError extends Error {
  readonly code = 'EBADCAPTURE';
  readonly offset: number;
  constructor(problem: string, offset: number) {
    super(`${problem} (at byte offset ${offset})`);
    this.name = 'CaptureFormatError';
    this.offset = offset;
  }
}

export interface CaptureContents {
  format: 'pcap' | 'pcapng';
  records: CaptureRecord[];
  warnings: string[];
}

// --- pcap -----------------------------------------------------------------------------------------

const PCAP_MAGIC_US = 0xa1b2c3d4;
const PCAP_MAGIC_NS = 0xa1b23c4d;
const PCAP_MAGIC_US_SWAPPED = 0xd4c3b2a1;
const PCAP_MAGIC_NS_SWAPPED = 0x4d3cb2a1;
const PCAP_MAGIC_KUZNETZOV = 0xa1b2cd34;
const PCAP_VERSION_MAJOR = 2;
const PCAP_VERSION_MINOR = 4;
const PCAP_FILE_HEADER_BYTES = 24;
const PCAP_RECORD_HEADER_BYTES = 16;
/** The largest snap length tcpdump uses; a captured length above it is corruption, not a packet. */
const MAX_SNAPLEN = 262144;
/** Above MAX_SNAPLEN only when the header's snap length asks for it (GRO / BIG TCP captures), up to this. */
const MAX_RECORD_BYTES = 16 * 1024 * 1024;

// --- pcapng ---------------------------------------------------------------------------------------

const BT_SECTION_HEADER = 0x0a0d0d0a;
const BT_INTERFACE_DESCRIPTION = 0x00000001;
const BT_OBSOLETE_PACKET = 0x00000002;
const BT_SIMPLE_PACKET = 0x00000003;
const BT_ENHANCED_PACKET = 0x00000006;
const BYTE_ORDER_MAGIC = 0x1a2b3c4d;
const PCAPNG_MAJOR = 1;
/** Type + total length + trailing total length. */
const BLOCK_MIN_BYTES = 12;
const SHB_MIN_BYTES = 28;
const IDB_MIN_BYTES = 20;
const EPB_MIN_BYTES = 32;
const SPB_MIN_BYTES = 16;
const OPT_ENDOFOPT = 0;
const OPT_IF_TSRESOL = 9;
const OPT_IF_TSOFFSET = 14;
const US_PER_S = 1_000_000;
const US_PER_S_BIG = 1_000_000n;
const GZIP_MAGIC = 0x1f8b;

const pad4 = (n: number): number => (n + 3) & ~3;
const hex32 = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;

/** Collapses repeated warnings of one kind into one line with a count. */
class WarningLog {
  private readonly byKind = new Map<string, { text: string; count: number }>();
  add(kind: string, text: string): void {
    const seen = this.byKind.get(kind);
    if (seen) seen.count++;
    else this.byKind.set(kind, { text, count: 1 });
  }
  list(): string[] {
    return [...this.byKind.values()].map((w) => (w.count === 1 ? w.text : `${w.text} (and ${w.count - 1} more like it)`));
  }
}

/** Reads a whole pcap or pcapng file. Throws only CaptureFormatError. */
export function readCapture(bytes: Uint8Array): CaptureContents {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4) {
    throw new CaptureFormatError(`not a pcap or pcapng file: only ${bytes.length} bytes`, 0);
  }
  const magic = view.getUint32(0, false);
  switch (magic) {
    case PCAP_MAGIC_US:
      return readPcap(bytes, view, false, false);
    case PCAP_MAGIC_US_SWAPPED:
      return readPcap(bytes, view, true, false);
    case PCAP_MAGIC_NS:
      return readPcap(bytes, view, false, true);
    case PCAP_MAGIC_NS_SWAPPED:
      return readPcap(bytes, view, true, true);
    case BT_SECTION_HEADER:
      return readPcapng(bytes, view);
  }
  let hint = '';
  if (magic === PCAP_MAGIC_KUZNETZOV || magic === swap32(PCAP_MAGIC_KUZNETZOV)) hint = '; modified (Kuznetzov) pcap is not supported';
  else if (magic >>> 16 === GZIP_MAGIC) hint = '; it looks gzip-compressed, decompress it first';
  throw new CaptureFormatError(`not a pcap or pcapng file: magic ${hex32(magic)}${hint}`, 0);
}

function swap32(n: number): number {
  return (((n & 0xff) << 24) | ((n & 0xff00) << 8) | ((n >>> 8) & 0xff00) | (n >>> 24)) >>> 0;
}

function readPcap(bytes: Uint8Array, view: DataView, le: boolean, nanos: boolean): CaptureContents {
  const n = bytes.length;
  if (n < PCAP_FILE_HEADER_BYTES) {
    throw new CaptureFormatError(`pcap file header truncated: ${n} of ${PCAP_FILE_HEADER_BYTES} bytes`, 0);
  }
  const warnings = new WarningLog();
  const major = view.getUint16(4, le);
  const minor = view.getUint16(6, le);
  if (major !== PCAP_VERSION_MAJOR) {
    throw new CaptureFormatError(`pcap version ${major}.${minor} is not supported (expected ${PCAP_VERSION_MAJOR}.x)`, 4);
  }
  if (minor !== PCAP_VERSION_MINOR) warnings.add('version', `pcap version ${major}.${minor}, read as 2.4`);
  const snapLen = view.getUint32(16, le);
  // The upper 16 bits of this field carry FCS information, not the link type.
  const linkType = view.getUint32(20, le) & 0xffff;
  const maxCaptured = Math.max(MAX_SNAPLEN, Math.min(snapLen, MAX_RECORD_BYTES));
  const fracLimit = nanos ? 1_000_000_000 : US_PER_S;
  const records: CaptureRecord[] = [];

  let off = PCAP_FILE_HEADER_BYTES;
  while (off < n) {
    if (n - off < PCAP_RECORD_HEADER_BYTES) {
      warnings.add('truncated', `pcap record header at byte offset ${off} truncated: ${n - off} of ${PCAP_RECORD_HEADER_BYTES} bytes; stopped there`);
      break;
    }
    const sec = view.getUint32(off, le);
    const frac = view.getUint32(off + 4, le);
    const capLen = view.getUint32(off + 8, le);
    const origLen = view.getUint32(off + 12, le);
    if (capLen > maxCaptured) {
      throw new CaptureFormatError(`pcap record captured length ${capLen} exceeds the limit of ${maxCaptured} bytes`, off);
    }
    const dataOff = off + PCAP_RECORD_HEADER_BYTES;
    if (capLen > n - dataOff) {
      warnings.add('truncated', `pcap record at byte offset ${off} truncated: captured length ${capLen} but ${n - dataOff} bytes left; stopped there`);
      break;
    }
    if (snapLen !== 0 && capLen > snapLen) {
      warnings.add('snaplen', `pcap record at byte offset ${off} has captured length ${capLen} above the snap length ${snapLen}`);
    }
    if (origLen < capLen) {
      warnings.add('origlen', `pcap record at byte offset ${off} has original length ${origLen} below its captured length ${capLen}`);
    }
    if (frac >= fracLimit) {
      warnings.add('frac', `pcap record at byte offset ${off} has ${nanos ? 'nanoseconds' : 'microseconds'} field ${frac} out of range`);
    }
    records.push({
      tsUs: sec * US_PER_S + (nanos ? Math.floor(frac / 1000) : frac),
      linkType,
      data: bytes.subarray(dataOff, dataOff + capLen),
      origLen,
    });
    off = dataOff + capLen;
  }
  return { format: 'pcap', records, warnings: warnings.list() };
}

interface Interface {
  linkType: number;
  snapLen: number;
  /** Timestamp units per second, from if_tsresol (default 10^6). */
  unitsPerSec: bigint;
  /** if_tsoffset: seconds added to every timestamp. */
  offsetSec: bigint;
  /** Units are microseconds and there is no offset, so the common case needs no BigInt. */
  plainUs: boolean;
}

function readPcapng(bytes: Uint8Array, view: DataView): CaptureContents {
  const n = bytes.length;
  const warnings = new WarningLog();
  const records: CaptureRecord[] = [];
  let le = true;
  let ifaces: Interface[] = [];
  let lastTsUs = 0;

  let off = 0;
  while (off < n) {
    if (n - off < BLOCK_MIN_BYTES) {
      throw new CaptureFormatError(`pcapng block header truncated: ${n - off} of ${BLOCK_MIN_BYTES} bytes`, off);
    }
    // The section header's type reads the same in both byte orders; its byte-order magic sets the order.
    if (view.getUint32(off, true) === BT_SECTION_HEADER) {
      const bom = view.getUint32(off + 8, true);
      if (bom === BYTE_ORDER_MAGIC) le = true;
      else if (bom === swap32(BYTE_ORDER_MAGIC)) le = false;
      else throw new CaptureFormatError(`pcapng section header has bad byte-order magic ${hex32(bom)}`, off + 8);
    }
    const type = view.getUint32(off, le);
    const total = view.getUint32(off + 4, le);
    // "Block Total Length: total size of this block, in octets ... MUST be a multiple of 4."
    if (total < BLOCK_MIN_BYTES) throw blockError(type, `has total length ${total}, below ${BLOCK_MIN_BYTES}`, off);
    if (total % 4 !== 0) throw blockError(type, `has total length ${total}, not a multiple of 4`, off);
    if (total > n - off) throw blockError(type, `has total length ${total} but only ${n - off} bytes remain`, off);
    const trailing = view.getUint32(off + total - 4, le);
    if (trailing !== total) {
      throw blockError(type, `has trailing length ${trailing} unequal to its leading length ${total}`, off);
    }

    switch (type) {
      case BT_SECTION_HEADER: {
        need(total, SHB_MIN_BYTES, 'section header', off);
        const major = view.getUint16(off + 12, le);
        if (major !== PCAPNG_MAJOR) {
          throw new CaptureFormatError(`pcapng major version ${major} is not supported (expected ${PCAPNG_MAJOR})`, off + 12);
        }
        ifaces = []; // interface ids are per section
        break;
      }
      case BT_INTERFACE_DESCRIPTION:
        need(total, IDB_MIN_BYTES, 'interface description', off);
        ifaces.push(readInterface(view, off, total, le));
        break;
      case BT_ENHANCED_PACKET:
      case BT_OBSOLETE_PACKET: {
        const what = type === BT_ENHANCED_PACKET ? 'enhanced packet' : 'obsolete packet';
        need(total, EPB_MIN_BYTES, what, off);
        // The obsolete packet block has a 16-bit interface id followed by a 16-bit drop count.
        const ifId = type === BT_ENHANCED_PACKET ? view.getUint32(off + 8, le) : view.getUint16(off + 8, le);
        const iface = ifaces[ifId];
        if (iface === undefined) {
          throw new CaptureFormatError(`pcapng ${what} block names interface ${ifId}, but the section has ${ifaces.length}`, off + 8);
        }
        const high = view.getUint32(off + 12, le);
        const low = view.getUint32(off + 16, le);
        const capLen = view.getUint32(off + 20, le);
        const origLen = view.getUint32(off + 24, le);
        if (capLen > total - EPB_MIN_BYTES) {
          throw new CaptureFormatError(`pcapng ${what} block has captured length ${capLen} but room for ${total - EPB_MIN_BYTES}`, off + 20);
        }
        if (iface.snapLen !== 0 && capLen > iface.snapLen) {
          warnings.add('snaplen', `pcapng ${what} block at byte offset ${off} has captured length ${capLen} above the snap length ${iface.snapLen}`);
        }
        lastTsUs = timestampUs(iface, high, low);
        const dataOff = off + 28;
        records.push({ tsUs: lastTsUs, linkType: iface.linkType, data: bytes.subarray(dataOff, dataOff + capLen), origLen });
        break;
      }
      case BT_SIMPLE_PACKET: {
        need(total, SPB_MIN_BYTES, 'simple packet', off);
        // "the Simple Packet Block ... refers to the first Interface Description Block" of the section.
        const iface = ifaces[0];
        if (iface === undefined) {
          throw new CaptureFormatError('pcapng simple packet block comes before any interface description', off);
        }
        const origLen = view.getUint32(off + 8, le);
        // Captured length is min(original length, snap length), bounded here by the block itself.
        let capLen = Math.min(origLen, total - SPB_MIN_BYTES);
        if (iface.snapLen !== 0) capLen = Math.min(capLen, iface.snapLen);
        warnings.add('spb', `pcapng simple packet block at byte offset ${off} has no timestamp; it gets the previous packet's`);
        const dataOff = off + 12;
        records.push({ tsUs: lastTsUs, linkType: iface.linkType, data: bytes.subarray(dataOff, dataOff + capLen), origLen });
        break;
      }
      default:
        break; // statistics, name resolution, custom and unknown blocks carry no packets
    }
    off += total;
  }
  return { format: 'pcapng', records, warnings: warnings.list() };
}

function blockError(type: number, problem: string, off: number): CaptureFormatError {
  return new CaptureFormatError(`pcapng block of type ${hex32(type)} ${problem}`, off);
}

function need(total: number, min: number, what: string, off: number): void {
  if (total < min) throw new CaptureFormatError(`pcapng ${what} block has total length ${total}, below its minimum ${min}`, off);
}

function readInterface(view: DataView, off: number, total: number, le: boolean): Interface {
  const linkType = view.getUint16(off + 8, le);
  const snapLen = view.getUint32(off + 12, le);
  let unitsPerSec = US_PER_S_BIG;
  let offsetSec = 0n;
  const end = off + total - 4;
  let o = off + 16;
  while (o + 4 <= end) {
    const code = view.getUint16(o, le);
    const len = view.getUint16(o + 2, le);
    if (code === OPT_ENDOFOPT) break;
    if (len > end - o - 4) {
      throw new CaptureFormatError(`pcapng interface option ${code} has length ${len} past the end of its block`, o);
    }
    if (code === OPT_IF_TSRESOL) {
      if (len !== 1) throw new CaptureFormatError(`pcapng if_tsresol option has length ${len}, expected 1`, o);
      // "If the Most Significant Bit is equal to zero, the remaining bits indicates the resolution
      // of the timestamp as a negative power of 10 ... If [it] is equal to one, ... power of 2".
      const r = view.getUint8(o + 4);
      unitsPerSec = r & 0x80 ? 2n ** BigInt(r & 0x7f) : 10n ** BigInt(r);
    } else if (code === OPT_IF_TSOFFSET) {
      if (len !== 8) throw new CaptureFormatError(`pcapng if_tsoffset option has length ${len}, expected 8`, o);
      offsetSec = view.getBigInt64(o + 4, le);
    }
    o += 4 + pad4(len);
  }
  return { linkType, snapLen, unitsPerSec, offsetSec, plainUs: unitsPerSec === US_PER_S_BIG && offsetSec === 0n };
}

/** 2^53 / 2^32: below this high word, high * 2^32 + low is an exact Number. */
const EXACT_HIGH_LIMIT = 0x200000;

function timestampUs(iface: Interface, high: number, low: number): number {
  if (iface.plainUs && high < EXACT_HIGH_LIMIT) return high * 0x1_0000_0000 + low;
  const units = (BigInt(high) << 32n) | BigInt(low);
  return Number(((units + iface.offsetSec * iface.unitsPerSec) * US_PER_S_BIG) / iface.unitsPerSec);
}

// --- writer ---------------------------------------------------------------------------------------

/** The latest time a pcap record holds: 0xffffffff seconds and 999999 µs (2106-02-07T06:28:15.999999Z). */
export const PCAP_MAX_TS_US = 2 ** 32 * US_PER_S - 1;

/**
 * The pcap timestamp nearest to `tsUs`: 0 (1970) for earlier times, PCAP_MAX_TS_US for later ones, else whole µs.
 * Captures can hold times pcap cannot (pcapng's 64-bit timestamps and offsets, a pcap record whose µs field is out of
 * range); a writer of derived captures clamps them with this (order is kept) and counts the change.
 */
export function pcapTimestampUs(tsUs: number): number {
  if (!(tsUs > 0)) return 0;
  return tsUs >= PCAP_MAX_TS_US ? PCAP_MAX_TS_US : Math.floor(tsUs);
}

/** Builds a little-endian, microsecond pcap file in memory. */
export class PcapWriter {
  private readonly linkType: number;
  private readonly snapLen: number;
  private readonly chunks: Uint8Array[] = [];
  private size = PCAP_FILE_HEADER_BYTES;

  constructor(linkType: number, snapLen: number = MAX_SNAPLEN) {
    if (!Number.isInteger(linkType) || linkType < 0 || linkType > 0xffff) throw new RangeError(`bad link type ${linkType}`);
    if (!Number.isInteger(snapLen) || snapLen < 1 || snapLen > MAX_RECORD_BYTES) throw new RangeError(`bad snap length ${snapLen}`);
    this.linkType = linkType;
    this.snapLen = snapLen;
  }

  /** Adds a packet, cut to the snap length; `len` is its length on the wire (default: data.length). Copies data. */
  add(tsUs: number, data: Uint8Array, len: number = data.length): void {
    if (!Number.isFinite(tsUs) || tsUs < 0 || tsUs > PCAP_MAX_TS_US) throw new RangeError(`timestamp ${tsUs} µs does not fit pcap (see pcapTimestampUs)`);
    if (!Number.isInteger(len) || len < data.length || len > 0xffffffff) {
      throw new RangeError(`original length ${len} must be an integer from ${data.length} (the bytes given) to 2^32-1`);
    }
    const capLen = Math.min(data.length, this.snapLen);
    const sec = Math.floor(tsUs / US_PER_S);
    const chunk = new Uint8Array(PCAP_RECORD_HEADER_BYTES + capLen);
    const v = new DataView(chunk.buffer);
    v.setUint32(0, sec, true);
    v.setUint32(4, Math.floor(tsUs - sec * US_PER_S), true);
    v.setUint32(8, capLen, true);
    v.setUint32(12, len, true);
    chunk.set(data.subarray(0, capLen), PCAP_RECORD_HEADER_BYTES);
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  toBytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    const v = new DataView(out.buffer);
    v.setUint32(0, PCAP_MAGIC_US, true);
    v.setUint16(4, PCAP_VERSION_MAJOR, true);
    v.setUint16(6, PCAP_VERSION_MINOR, true);
    // bytes 8..15: thiszone and sigfigs, always 0
    v.setUint32(16, this.snapLen, true);
    v.setUint32(20, this.linkType, true);
    let off = PCAP_FILE_HEADER_BYTES;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}
