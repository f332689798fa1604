// Captures as a PacketDevice for `mplb replay`: it plays the network around the balancer. Packets towards a VIP
// are handed over as captured; server replies in the capture come from the VIP, so they are first re-addressed
// from the backend the engine chose for their flow (as that virtual server would send them). One packet per batch:
// how a reply is re-addressed depends on the engine's decision for the packet before it.
import type { Engine } from '../engine/engine.js';
import { pcapTimestampUs, type CaptureRecord } from '../io/pcap.js';
import { formatEndpoint, parseEndpoint } from '../wire/addr.js';
import { ipOffset } from '../wire/link-layer.js';
import { PacketView, parsePacket, ParseStatus } from '../wire/parse.js';
import { natEndpoint } from '../engine/rewrite.js';
import { SlotOut, type PacketBatch, type PacketDevice } from '../dataplane/device.js';

/**
 * What the device knows of the packet it just handed over (read before the engine rewrites it). One object, reused
 * for every packet: valid until the next read.
 */
export class CapturedPacket {
  record: CaptureRecord | null = null;
  /** False when the packet did not parse (it still goes to the engine, which counts the drop). */
  parsed = false;
  toVip = false;
  /** The packet as captured (before re-addressing and NAT), `len` bytes at 0: offsets in `view`. */
  readonly bytes = new Uint8Array(65536);
  len = 0;
  readonly view = new PacketView();
  /** "addr:port" of the source and destination ('' when the packet did not parse); made when asked for. */
  get src(): string { const v = this.view; return this.parsed ? formatEndpoint(this.bytes, v.srcAddrOff, v.addrLen, v.srcPort) : ''; }
  get dst(): string { const v = this.view; return this.parsed ? formatEndpoint(this.bytes, v.dstAddrOff, v.addrLen, v.dstPort) : ''; }
}

/** Records one at a time (a CaptureReader, or several files one after another); null at the end. */
export interface RecordSource { read(): CaptureRecord | null }

/** Where the packets the engine let through go (--pcap-out): a PcapWriter or a PcapFileWriter. */
export interface PacketSink { add(tsUs: number, data: Uint8Array): void }

export interface CaptureDeviceCounts {
  /** Records read from the captures. */
  records: number;
  notIp: number; truncated: number; repliesWithoutFlow: number; notForService: number;
  /** Packets handed to the engine (= its packets_in): the ones for a service, and the ones that did not parse. */
  fed: number;
  /** Fed packets that did not parse as IPv4/IPv6 TCP (the engine counts them as drops with their reason). */
  unparsed: number;
  /** Packets written to --pcap-out with a timestamp pcap cannot hold, clamped to 1970 or 2106 (pcapTimestampUs). */
  timestampsClamped: number;
}

/** A set of "addr:port" endpoints, looked up by the bytes of a packet without making a string (IPv4). */
export class EndpointSet {
  private readonly v4 = new Set<number>();
  private readonly v6 = new Set<string>();
  constructor(endpoints: Iterable<string>) {
    for (const e of endpoints) {
      const p = parseEndpoint(e);
      if (!p || p.port === undefined) throw new RangeError(`not an addr:port endpoint: ${JSON.stringify(e)}`);
      if (p.addr.family === 4) this.v4.add(EndpointSet.key4(p.addr.bytes, 0, p.port));
      else this.v6.add(formatEndpoint(p.addr.bytes, 0, 16, p.port));
    }
  }
  has(buf: Uint8Array, off: number, addrLen: number, port: number): boolean {
    return addrLen === 4 ? this.v4.has(EndpointSet.key4(buf, off, port)) : this.v6.size > 0 && this.v6.has(formatEndpoint(buf, off, 16, port));
  }
  /** The address's 32 bits and the port as one exact 48-bit number. */
  private static key4(b: Uint8Array, o: number, port: number): number {
    return (((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0) * 65536 + port;
  }
}

export class CaptureDevice implements PacketDevice {
  readonly headerBytes = 0;
  readonly counts: CaptureDeviceCounts = { records: 0, notIp: 0, truncated: 0, repliesWithoutFlow: 0, notForService: 0, fed: 0, unparsed: 0, timestampsClamped: 0 };
  /** The packet of the last read; undefined after the last. */
  current: CapturedPacket | undefined;
  private readonly packet = new CapturedPacket();

  /** `out` gets every packet the engine let through, as it left (raw IP, link type 101). */
  constructor(private readonly records: RecordSource, private readonly engine: Engine, private readonly vips: EndpointSet,
    private readonly writer: PacketSink | null = null) {}

  read(batch: PacketBatch): number {
    const p = this.packet, v = p.view, engine = this.engine, c = this.counts;
    for (;;) {
      batch.reset();
      const rec = this.records.read();
      if (rec === null) { this.current = undefined; return 0; }
      c.records++;
      const slot = batch.views[0];
      const n = loadIp(rec, slot, c);
      if (n < 0) { c.notIp++; continue; }
      p.record = rec;
      p.len = n;
      p.bytes.set(slot.subarray(0, n));
      if (parsePacket(slot, 0, n, v) !== ParseStatus.Ok) {
        p.parsed = false;
        p.toVip = false;
      } else {
        const toVip = this.vips.has(slot, v.dstAddrOff, v.addrLen, v.dstPort);
        if (!toVip && !this.vips.has(slot, v.srcAddrOff, v.addrLen, v.srcPort)) { c.notForService++; continue; }
        if (!toVip) {
          const b = engine.backendOfReply(slot, 0, n);
          if (b < 0) { c.repliesWithoutFlow++; continue; }
          // Re-address the reply as the chosen server sends it. `view` describes `bytes` too: no offset changes.
          natEndpoint(slot, v, v.srcAddrOff, v.l4Off, engine.services.beAddrBytes, b << 4, engine.services.bePort[b]);
        }
        p.parsed = true;
        p.toVip = toVip;
      }
      if (!p.parsed) c.unparsed++;
      c.fed++;
      batch.timeMs = rec.tsUs / 1000;
      this.current = p;
      batch.push(n, 0, 0);
      return 1;
    }
  }

  write(batch: PacketBatch): number {
    if (!this.writer || batch.count === 0 || batch.out[0] === SlotOut.Drop || !this.current?.record) return 0;
    const ts = this.current.record.tsUs, pts = pcapTimestampUs(ts);
    // Clamped, not refused: the packet is part of the output (its count matches the verdicts), only its time moves.
    if (pts !== ts) this.counts.timestampsClamped++;
    this.writer.add(pts, batch.views[0].subarray(0, batch.outLen[0]));
    return 1;
  }

  close(): void {}
}

/**
 * Copies the IP packet of a record into `out`; a record cut by the snap length gets its IP length fields shrunk to
 * what was captured (headers are intact; checksums are then meaningless, and no one checks them). -1: not IP.
 */
export function loadIp(rec: CaptureRecord, out: Uint8Array, counts?: { truncated: number }): number {
  const ip = ipOffset(rec.linkType, rec.data);
  if (ip < 0) return -1;
  const n = Math.min(rec.data.length - ip, 65535);
  out.set(rec.data.subarray(ip, ip + n), 0);
  if (rec.origLen > rec.data.length) {
    if (counts) counts.truncated++;
    if (out[0] >> 4 === 4 && n >= 20 && ((out[2] << 8) | out[3]) > n) { out[2] = n >> 8; out[3] = n & 0xff; }
    if (out[0] >> 4 === 6 && n >= 40 && ((out[4] << 8) | out[5]) > n - 40) { out[4] = (n - 40) >> 8; out[5] = (n - 40) & 0xff; }
  }
  return n;
}
