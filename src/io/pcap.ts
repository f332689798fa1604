// Capture file I/O for `mplb replay`: reads pcap (draft-ietf-opsawg-pcap) and pcapng
// (draft-ietf-opsawg-pcapng) files record by record, from memory or streamed from disk in chunks, and writes pcap
// (in memory, or streamed to a file). Every length from the file is checked before use and bounded: a record is at
// most MAX_RECORD_BYTES, a block read into memory at most MAX_BLOCK_BYTES, whatever the file says.

import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';

export interface CaptureRecord {
  /** Microseconds since the Unix epoch (exact up to 2^53, i.e. until year 2255). */
  tsUs: number;
  linkType: number;
  /**
   * Captured bytes: a view into the input (readCapture) or into the reader's current chunk (a file), not a copy. A
   * chunk is never overwritten: a kept record stays valid (and keeps its chunk, at most CHUNK_BYTES, alive).
   */
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
/**
 * The largest block read into memory: a packet of MAX_RECORD_BYTES with room for its options. Larger blocks of a
 * kind that carries no packets are skipped without reading them; larger section, interface or packet blocks are errors.
 */
const MAX_BLOCK_BYTES = MAX_RECORD_BYTES + 65536;
/** Interface descriptions per section (each is a small object kept for the section). */
const MAX_INTERFACES = 65536;
const OPT_ENDOFOPT = 0;
const OPT_IF_TSRESOL = 9;
const OPT_IF_TSOFFSET = 14;
const US_PER_S = 1_000_000;
const US_PER_S_BIG = 1_000_000n;
const GZIP_MAGIC = 0x1f8b;

/** Bytes a file reader asks for at a time (and so the usual size of its buffer). */
export const CHUNK_BYTES = 1 << 20;

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

// --- byte sources ---------------------------------------------------------------------------------

/** Where a streaming reader gets its bytes: positional reads, like a file descriptor. */
export interface ByteSource {
  /** Total size in bytes (a file's size when it was opened). */
  readonly size: number;
  /** Reads up to `length` bytes at file offset `position` into `into[offset..]`; returns the count, 0 at the end. */
  readAt(into: Uint8Array, offset: number, length: number, position: number): number;
  close?(): void;
}

/** A file as a ByteSource (read with positional reads; closed by the reader's close()). */
export function fileSource(path: string): ByteSource {
  const fd = openSync(path, 'r');
  let size: number;
  try { size = fstatSync(fd).size; } catch (e) { closeSync(fd); throw e; }
  let open = true;
  return {
    size,
    readAt: (into, offset, length, position) => readSync(fd, into, offset, length, position),
    close: () => { if (open) { open = false; closeSync(fd); } },
  };
}

/**
 * The reader's view of its input: the bytes from the current position on, contiguous in `buf` up to `end`. Over a
 * Uint8Array it is the array itself; over a ByteSource a buffer of CHUNK_BYTES (or one block, if larger) that is
 * replaced, never overwritten, when the position reaches its end, so records already handed out stay valid.
 */
class Window {
  buf: Uint8Array;
  view: DataView;
  /** File offset of buf[0]. */
  base = 0;
  /** The current position, as an index into buf. */
  pos = 0;
  /** End of the valid bytes in buf. */
  end: number;
  readonly size: number;

  constructor(input: Uint8Array | ByteSource, private readonly chunk: number) {
    if (input instanceof Uint8Array) {
      this.src = null;
      this.buf = input;
      this.end = input.length;
      this.size = input.length;
    } else {
      this.src = input;
      this.buf = new Uint8Array(0);
      this.end = 0;
      this.size = input.size;
    }
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }
  private readonly src: ByteSource | null;

  /** File offset of the current position. */
  get offset(): number { return this.base + this.pos; }
  /** Bytes from the current position to the end of the input. */
  get left(): number { return Math.max(0, this.size - this.base - this.pos); }

  /** Makes up to `n` bytes from the current position contiguous in buf; returns how many there are (< n only at the end). */
  ensure(n: number): number {
    const have = this.end - this.pos;
    if (have >= n || this.src === null) return Math.min(have, n);
    const want = Math.min(Math.max(this.chunk, n), Math.max(n, this.left));
    const nb = new Uint8Array(want);
    nb.set(this.buf.subarray(this.pos, this.end), 0);
    this.base += this.pos;
    this.pos = 0;
    let got = have;
    while (got < want) {
      const r = this.src.readAt(nb, got, want - got, this.base + got);
      if (r <= 0) break;
      got += r;
    }
    this.buf = nb;
    this.end = got;
    this.view = new DataView(nb.buffer, nb.byteOffset, nb.byteLength);
    return Math.min(got, n);
  }

  /** Moves the position on by n bytes (which need not be in buf). */
  skip(n: number): void {
    if (n <= this.end - this.pos) { this.pos += n; return; }
    this.base += this.pos + n;
    this.pos = 0;
    this.end = 0;
    this.buf = this.buf.subarray(0, 0);
  }

  close(): void { this.src?.close?.(); }
}

// --- readers --------------------------------------------------------------------------------------

export interface CaptureReaderOptions {
  /** Bytes per read from a ByteSource (default CHUNK_BYTES); tests use small ones to cross every boundary. */
  chunkBytes?: number;
}

/**
 * Reads a capture one record at a time: pcap or pcapng, from a Uint8Array or a ByteSource (a file). Throws only
 * CaptureFormatError: from openCapture when the file header is not a capture, from read() at a record or block
 * that cannot be read (after which the reader is done). Memory: one chunk (or one block), whatever the file's size.
 */
export abstract class CaptureReader implements IterableIterator<CaptureRecord> {
  abstract readonly format: 'pcap' | 'pcapng';
  protected readonly log = new WarningLog();
  protected done = false;
  /** Records read so far. */
  count = 0;

  constructor(protected readonly w: Window) {}

  /** The next record, or null at the end of the capture. */
  read(): CaptureRecord | null {
    if (this.done) return null;
    let r: CaptureRecord | null;
    try {
      r = this.step();
    } catch (e) {
      this.finish();
      throw e;
    }
    if (r === null) this.finish();
    else this.count++;
    return r;
  }

  /** Problems that did not stop the reading, one line per kind. */
  get warnings(): string[] { return this.log.list(); }

  /** File offset of the next record or block. */
  get offset(): number { return this.w.offset; }

  next(): IteratorResult<CaptureRecord> {
    const r = this.read();
    return r === null ? { value: undefined, done: true } : { value: r, done: false };
  }

  [Symbol.iterator](): this { return this; }

  /** Closes the source (a file); read() then returns null. Idempotent. */
  close(): void { this.finish(); }

  private finish(): void {
    if (!this.done) { this.done = true; this.w.close(); }
  }

  protected abstract step(): CaptureRecord | null;
}

/** Opens a capture for reading record by record. Throws only CaptureFormatError (the source is closed then). */
export function openCapture(input: Uint8Array | ByteSource, opts: CaptureReaderOptions = {}): CaptureReader {
  const chunk = opts.chunkBytes ?? CHUNK_BYTES;
  if (!Number.isInteger(chunk) || chunk < 1) throw new RangeError(`chunkBytes must be a positive integer, got ${chunk}`);
  const w = new Window(input, chunk);
  try {
    const got = w.ensure(PCAP_FILE_HEADER_BYTES);
    if (got < 4) throw new CaptureFormatError(`not a pcap or pcapng file: only ${got} bytes`, 0);
    const magic = w.view.getUint32(w.pos, false);
    switch (magic) {
      case PCAP_MAGIC_US: return new PcapReader(w, false, false);
      case PCAP_MAGIC_US_SWAPPED: return new PcapReader(w, true, false);
      case PCAP_MAGIC_NS: return new PcapReader(w, false, true);
      case PCAP_MAGIC_NS_SWAPPED: return new PcapReader(w, true, true);
      case BT_SECTION_HEADER: return new PcapngReader(w);
    }
    let hint = '';
    if (magic === PCAP_MAGIC_KUZNETZOV || magic === swap32(PCAP_MAGIC_KUZNETZOV)) hint = '; modified (Kuznetzov) pcap is not supported';
    else if (magic >>> 16 === GZIP_MAGIC) hint = '; it looks gzip-compressed, decompress it first';
    throw new CaptureFormatError(`not a pcap or pcapng file: magic ${hex32(magic)}${hint}`, 0);
  } catch (e) {
    w.close();
    throw e;
  }
}

/** Opens a capture file for streaming (read in chunks of CHUNK_BYTES). Throws fs errors and CaptureFormatError. */
export function openCaptureFile(path: string, opts: CaptureReaderOptions = {}): CaptureReader {
  return openCapture(fileSource(path), opts);
}

/** Reads a whole pcap or pcapng file held in memory; records are views into `bytes`. Throws only CaptureFormatError. */
export function readCapture(bytes: Uint8Array): CaptureContents {
  const r = openCapture(bytes);
  const records: CaptureRecord[] = [];
  for (let rec = r.read(); rec !== null; rec = r.read()) records.push(rec);
  return { format: r.format, records, warnings: r.warnings };
}

function swap32(n: number): number {
  return (((n & 0xff) << 24) | ((n & 0xff00) << 8) | ((n >>> 8) & 0xff00) | (n >>> 24)) >>> 0;
}

class PcapReader extends CaptureReader {
  readonly format = 'pcap';
  private readonly snapLen: number;
  private readonly linkType: number;
  private readonly maxCaptured: number;
  private readonly fracLimit: number;

  constructor(w: Window, private readonly le: boolean, private readonly nanos: boolean) {
    super(w);
    const n = w.ensure(PCAP_FILE_HEADER_BYTES);
    if (n < PCAP_FILE_HEADER_BYTES) {
      throw new CaptureFormatError(`pcap file header truncated: ${n} of ${PCAP_FILE_HEADER_BYTES} bytes`, 0);
    }
    const v = w.view, o = w.pos;
    const major = v.getUint16(o + 4, le);
    const minor = v.getUint16(o + 6, le);
    if (major !== PCAP_VERSION_MAJOR) {
      throw new CaptureFormatError(`pcap version ${major}.${minor} is not supported (expected ${PCAP_VERSION_MAJOR}.x)`, 4);
    }
    if (minor !== PCAP_VERSION_MINOR) this.log.add('version', `pcap version ${major}.${minor}, read as 2.4`);
    this.snapLen = v.getUint32(o + 16, le);
    // The upper 16 bits of this field carry FCS information, not the link type.
    this.linkType = v.getUint32(o + 20, le) & 0xffff;
    this.maxCaptured = Math.max(MAX_SNAPLEN, Math.min(this.snapLen, MAX_RECORD_BYTES));
    this.fracLimit = nanos ? 1_000_000_000 : US_PER_S;
    w.skip(PCAP_FILE_HEADER_BYTES);
  }

  protected step(): CaptureRecord | null {
    const w = this.w, le = this.le;
    const head = w.ensure(PCAP_RECORD_HEADER_BYTES);
    if (head === 0) return null;
    const off = w.offset;
    if (head < PCAP_RECORD_HEADER_BYTES) {
      this.log.add('truncated', `pcap record header at byte offset ${off} truncated: ${head} of ${PCAP_RECORD_HEADER_BYTES} bytes; stopped there`);
      return null;
    }
    let v = w.view, o = w.pos;
    const sec = v.getUint32(o, le);
    const frac = v.getUint32(o + 4, le);
    const capLen = v.getUint32(o + 8, le);
    const origLen = v.getUint32(o + 12, le);
    if (capLen > this.maxCaptured) {
      throw new CaptureFormatError(`pcap record captured length ${capLen} exceeds the limit of ${this.maxCaptured} bytes`, off);
    }
    const got = w.ensure(PCAP_RECORD_HEADER_BYTES + capLen);
    if (got < PCAP_RECORD_HEADER_BYTES + capLen) {
      this.log.add('truncated', `pcap record at byte offset ${off} truncated: captured length ${capLen} but ${got - PCAP_RECORD_HEADER_BYTES} bytes left; stopped there`);
      return null;
    }
    v = w.view; o = w.pos;
    if (this.snapLen !== 0 && capLen > this.snapLen) {
      this.log.add('snaplen', `pcap record at byte offset ${off} has captured length ${capLen} above the snap length ${this.snapLen}`);
    }
    if (origLen < capLen) {
      this.log.add('origlen', `pcap record at byte offset ${off} has original length ${origLen} below its captured length ${capLen}`);
    }
    if (frac >= this.fracLimit) {
      this.log.add('frac', `pcap record at byte offset ${off} has ${this.nanos ? 'nanoseconds' : 'microseconds'} field ${frac} out of range`);
    }
    const dataOff = o + PCAP_RECORD_HEADER_BYTES;
    const rec: CaptureRecord = {
      tsUs: sec * US_PER_S + (this.nanos ? Math.floor(frac / 1000) : frac),
      linkType: this.linkType,
      data: w.buf.subarray(dataOff, dataOff + capLen),
      origLen,
    };
    w.skip(PCAP_RECORD_HEADER_BYTES + capLen);
    return rec;
  }
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

class PcapngReader extends CaptureReader {
  readonly format = 'pcapng';
  private le = true;
  private ifaces: Interface[] = [];
  private lastTsUs = 0;

  protected step(): CaptureRecord | null {
    const w = this.w;
    for (;;) {
      const head = w.ensure(BLOCK_MIN_BYTES);
      if (head === 0) return null;
      const off = w.offset;
      if (head < BLOCK_MIN_BYTES) {
        throw new CaptureFormatError(`pcapng block header truncated: ${head} of ${BLOCK_MIN_BYTES} bytes`, off);
      }
      let v = w.view, o = w.pos;
      // The section header's type reads the same in both byte orders; its byte-order magic sets the order.
      if (v.getUint32(o, true) === BT_SECTION_HEADER) {
        const bom = v.getUint32(o + 8, true);
        if (bom === BYTE_ORDER_MAGIC) this.le = true;
        else if (bom === swap32(BYTE_ORDER_MAGIC)) this.le = false;
        else throw new CaptureFormatError(`pcapng section header has bad byte-order magic ${hex32(bom)}`, off + 8);
      }
      const le = this.le;
      const type = v.getUint32(o, le);
      const total = v.getUint32(o + 4, le);
      // "Block Total Length: total size of this block, in octets ... MUST be a multiple of 4."
      if (total < BLOCK_MIN_BYTES) throw blockError(type, `has total length ${total}, below ${BLOCK_MIN_BYTES}`, off);
      if (total % 4 !== 0) throw blockError(type, `has total length ${total}, not a multiple of 4`, off);
      if (total > w.left) throw blockError(type, `has total length ${total} but only ${w.left} bytes remain`, off);
      const carriesNothing = type !== BT_SECTION_HEADER && type !== BT_INTERFACE_DESCRIPTION && type !== BT_ENHANCED_PACKET
        && type !== BT_OBSOLETE_PACKET && type !== BT_SIMPLE_PACKET;
      if (total > MAX_BLOCK_BYTES) {
        if (!carriesNothing) throw blockError(type, `has total length ${total}, above the limit of ${MAX_BLOCK_BYTES} bytes`, off);
        // Statistics, name resolution, custom and unknown blocks carry no packets: checked and skipped unread.
        w.skip(total - 4);
        if (w.ensure(4) < 4) throw blockError(type, `has total length ${total} but only ${w.left} bytes remain`, off);
        const trailing = w.view.getUint32(w.pos, le);
        if (trailing !== total) throw blockError(type, `has trailing length ${trailing} unequal to its leading length ${total}`, off);
        w.skip(4);
        continue;
      }
      const got = w.ensure(total);
      if (got < total) throw blockError(type, `has total length ${total} but only ${got} bytes remain`, off);
      v = w.view; o = w.pos;
      const trailing = v.getUint32(o + total - 4, le);
      if (trailing !== total) {
        throw blockError(type, `has trailing length ${trailing} unequal to its leading length ${total}`, off);
      }
      const rec = this.block(type, total, v, o, off, le);
      w.skip(total);
      if (rec !== null) return rec;
    }
  }

  /** One whole block at buf[o, o + total) (file offset `off`): a record, or null for a block without a packet. */
  private block(type: number, total: number, v: DataView, o: number, off: number, le: boolean): CaptureRecord | null {
    const at = (i: number) => off + (i - o);
    switch (type) {
      case BT_SECTION_HEADER: {
        need(total, SHB_MIN_BYTES, 'section header', off);
        const major = v.getUint16(o + 12, le);
        if (major !== PCAPNG_MAJOR) {
          throw new CaptureFormatError(`pcapng major version ${major} is not supported (expected ${PCAPNG_MAJOR})`, off + 12);
        }
        this.ifaces = []; // interface ids are per section
        return null;
      }
      case BT_INTERFACE_DESCRIPTION:
        need(total, IDB_MIN_BYTES, 'interface description', off);
        if (this.ifaces.length >= MAX_INTERFACES) {
          throw new CaptureFormatError(`pcapng section has more than ${MAX_INTERFACES} interface descriptions`, off);
        }
        this.ifaces.push(readInterface(v, o, total, le, at));
        return null;
      case BT_ENHANCED_PACKET:
      case BT_OBSOLETE_PACKET: {
        const what = type === BT_ENHANCED_PACKET ? 'enhanced packet' : 'obsolete packet';
        need(total, EPB_MIN_BYTES, what, off);
        // The obsolete packet block has a 16-bit interface id followed by a 16-bit drop count.
        const ifId = type === BT_ENHANCED_PACKET ? v.getUint32(o + 8, le) : v.getUint16(o + 8, le);
        const iface = this.ifaces[ifId];
        if (iface === undefined) {
          throw new CaptureFormatError(`pcapng ${what} block names interface ${ifId}, but the section has ${this.ifaces.length}`, off + 8);
        }
        const high = v.getUint32(o + 12, le);
        const low = v.getUint32(o + 16, le);
        const capLen = v.getUint32(o + 20, le);
        const origLen = v.getUint32(o + 24, le);
        if (capLen > total - EPB_MIN_BYTES) {
          throw new CaptureFormatError(`pcapng ${what} block has captured length ${capLen} but room for ${total - EPB_MIN_BYTES}`, off + 20);
        }
        if (iface.snapLen !== 0 && capLen > iface.snapLen) {
          this.log.add('snaplen', `pcapng ${what} block at byte offset ${off} has captured length ${capLen} above the snap length ${iface.snapLen}`);
        }
        this.lastTsUs = timestampUs(iface, high, low);
        const dataOff = o + 28;
        return { tsUs: this.lastTsUs, linkType: iface.linkType, data: this.w.buf.subarray(dataOff, dataOff + capLen), origLen };
      }
      case BT_SIMPLE_PACKET: {
        need(total, SPB_MIN_BYTES, 'simple packet', off);
        // "the Simple Packet Block ... refers to the first Interface Description Block" of the section.
        const iface = this.ifaces[0];
        if (iface === undefined) {
          throw new CaptureFormatError('pcapng simple packet block comes before any interface description', off);
        }
        const origLen = v.getUint32(o + 8, le);
        // Captured length is min(original length, snap length), bounded here by the block itself.
        let capLen = Math.min(origLen, total - SPB_MIN_BYTES);
        if (iface.snapLen !== 0) capLen = Math.min(capLen, iface.snapLen);
        this.log.add('spb', `pcapng simple packet block at byte offset ${off} has no timestamp; it gets the previous packet's`);
        const dataOff = o + 12;
        return { tsUs: this.lastTsUs, linkType: iface.linkType, data: this.w.buf.subarray(dataOff, dataOff + capLen), origLen };
      }
      default:
        return null; // statistics, name resolution, custom and unknown blocks carry no packets
    }
  }
}

function blockError(type: number, problem: string, off: number): CaptureFormatError {
  return new CaptureFormatError(`pcapng block of type ${hex32(type)} ${problem}`, off);
}

function need(total: number, min: number, what: string, off: number): void {
  if (total < min) throw new CaptureFormatError(`pcapng ${what} block has total length ${total}, below its minimum ${min}`, off);
}

/** The interface description block at buf[o, o + total); `at` maps a buf index to its file offset. */
function readInterface(view: DataView, o0: number, total: number, le: boolean, at: (i: number) => number): Interface {
  const linkType = view.getUint16(o0 + 8, le);
  const snapLen = view.getUint32(o0 + 12, le);
  let unitsPerSec = US_PER_S_BIG;
  let offsetSec = 0n;
  const end = o0 + total - 4;
  let o = o0 + 16;
  while (o + 4 <= end) {
    const code = view.getUint16(o, le);
    const len = view.getUint16(o + 2, le);
    if (code === OPT_ENDOFOPT) break;
    if (len > end - o - 4) {
      throw new CaptureFormatError(`pcapng interface option ${code} has length ${len} past the end of its block`, at(o));
    }
    if (code === OPT_IF_TSRESOL) {
      if (len !== 1) throw new CaptureFormatError(`pcapng if_tsresol option has length ${len}, expected 1`, at(o));
      // "If the Most Significant Bit is equal to zero, the remaining bits indicates the resolution
      // of the timestamp as a negative power of 10 ... If [it] is equal to one, ... power of 2".
      const r = view.getUint8(o + 4);
      unitsPerSec = r & 0x80 ? 2n ** BigInt(r & 0x7f) : 10n ** BigInt(r);
    } else if (code === OPT_IF_TSOFFSET) {
      if (len !== 8) throw new CaptureFormatError(`pcapng if_tsoffset option has length ${len}, expected 8`, at(o));
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

function checkWriterArgs(linkType: number, snapLen: number): void {
  if (!Number.isInteger(linkType) || linkType < 0 || linkType > 0xffff) throw new RangeError(`bad link type ${linkType}`);
  if (!Number.isInteger(snapLen) || snapLen < 1 || snapLen > MAX_RECORD_BYTES) throw new RangeError(`bad snap length ${snapLen}`);
}

function checkRecordArgs(tsUs: number, data: Uint8Array, len: number): void {
  if (!Number.isFinite(tsUs) || tsUs < 0 || tsUs > PCAP_MAX_TS_US) throw new RangeError(`timestamp ${tsUs} µs does not fit pcap (see pcapTimestampUs)`);
  if (!Number.isInteger(len) || len < data.length || len > 0xffffffff) {
    throw new RangeError(`original length ${len} must be an integer from ${data.length} (the bytes given) to 2^32-1`);
  }
}

function encodeFileHeader(out: Uint8Array, linkType: number, snapLen: number): void {
  const v = new DataView(out.buffer, out.byteOffset, PCAP_FILE_HEADER_BYTES);
  v.setUint32(0, PCAP_MAGIC_US, true);
  v.setUint16(4, PCAP_VERSION_MAJOR, true);
  v.setUint16(6, PCAP_VERSION_MINOR, true);
  // bytes 8..15: thiszone and sigfigs, always 0
  v.setUint32(8, 0, true);
  v.setUint32(12, 0, true);
  v.setUint32(16, snapLen, true);
  v.setUint32(20, linkType, true);
}

/** Writes one record (header and the first capLen bytes of data) at out[at..]. */
function encodeRecord(out: Uint8Array, at: number, tsUs: number, data: Uint8Array, capLen: number, len: number): void {
  const sec = Math.floor(tsUs / US_PER_S);
  const v = new DataView(out.buffer, out.byteOffset + at, PCAP_RECORD_HEADER_BYTES);
  v.setUint32(0, sec, true);
  v.setUint32(4, Math.floor(tsUs - sec * US_PER_S), true);
  v.setUint32(8, capLen, true);
  v.setUint32(12, len, true);
  out.set(data.subarray(0, capLen), at + PCAP_RECORD_HEADER_BYTES);
}

/** Builds a little-endian, microsecond pcap file in memory. */
export class PcapWriter {
  private readonly linkType: number;
  private readonly snapLen: number;
  private readonly chunks: Uint8Array[] = [];
  private size = PCAP_FILE_HEADER_BYTES;

  constructor(linkType: number, snapLen: number = MAX_SNAPLEN) {
    checkWriterArgs(linkType, snapLen);
    this.linkType = linkType;
    this.snapLen = snapLen;
  }

  /** Adds a packet, cut to the snap length; `len` is its length on the wire (default: data.length). Copies data. */
  add(tsUs: number, data: Uint8Array, len: number = data.length): void {
    checkRecordArgs(tsUs, data, len);
    const capLen = Math.min(data.length, this.snapLen);
    const chunk = new Uint8Array(PCAP_RECORD_HEADER_BYTES + capLen);
    encodeRecord(chunk, 0, tsUs, data, capLen, len);
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  toBytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    encodeFileHeader(out, this.linkType, this.snapLen);
    let off = PCAP_FILE_HEADER_BYTES;
    for (const c of this.chunks) {
      out.set(c, off);
      off += c.length;
    }
    return out;
  }
}

/** Writes a little-endian, microsecond pcap file to disk as packets come: memory is one buffer, whatever the count. */
export class PcapFileWriter {
  private readonly fd: number;
  private readonly buf: Uint8Array;
  private used = PCAP_FILE_HEADER_BYTES;
  private closed = false;
  /** Records added. */
  count = 0;

  /** Creates (or truncates) `path`; throws fs errors. */
  constructor(readonly path: string, linkType: number, private readonly snapLen: number = MAX_SNAPLEN, bufferBytes = CHUNK_BYTES) {
    checkWriterArgs(linkType, snapLen);
    this.buf = new Uint8Array(Math.max(bufferBytes, PCAP_FILE_HEADER_BYTES));
    encodeFileHeader(this.buf, linkType, snapLen);
    this.fd = openSync(path, 'w');
  }

  /** Adds a packet, cut to the snap length; `len` is its length on the wire (default: data.length). */
  add(tsUs: number, data: Uint8Array, len: number = data.length): void {
    if (this.closed) throw new Error(`pcap writer for ${this.path} is closed`);
    checkRecordArgs(tsUs, data, len);
    const capLen = Math.min(data.length, this.snapLen);
    const n = PCAP_RECORD_HEADER_BYTES + capLen;
    if (this.used + n > this.buf.length) this.flush();
    if (n > this.buf.length) {
      const one = new Uint8Array(n);
      encodeRecord(one, 0, tsUs, data, capLen, len);
      this.writeAll(one, n);
    } else {
      encodeRecord(this.buf, this.used, tsUs, data, capLen, len);
      this.used += n;
    }
    this.count++;
  }

  /** Writes what is buffered. */
  flush(): void {
    this.writeAll(this.buf, this.used);
    this.used = 0;
  }

  /** Flushes and closes the file. Idempotent. */
  close(): void {
    if (this.closed) return;
    try { this.flush(); } finally { this.closed = true; closeSync(this.fd); }
  }

  private writeAll(b: Uint8Array, n: number): void {
    for (let o = 0; o < n;) o += writeSync(this.fd, b, o, n - o);
  }
}
