// Captures as a PacketDevice for `mplb replay`: it plays the network around the balancer. Packets towards a VIP
// are handed over as captured; server replies in the capture come from the VIP, so they are first re-addressed
// from the backend the engine chose for their flow (as that virtual server would send them). One packet per batch:
// how a reply is re-addressed depends on the engine's decision for the packet before it.
import type { Engine } from '../engine/engine.js';
import { PcapWriter, pcapTimestampUs, type CaptureRecord } from '../io/pcap.js';
import { formatEndpoint } from '../wire/addr.js';
import { ipOffset } from '../wire/link-layer.js';
import { PacketView, parsePacket, ParseStatus } from '../wire/parse.js';
import { natEndpoint } from '../engine/rewrite.js';
import { SlotOut, type PacketBatch, type PacketDevice } from '../dataplane/device.js';

/** What the device knows of the packet it just handed over (read before the engine rewrites it). */
export interface CapturedPacket {
  record: CaptureRecord;
  /** False when the packet did not parse (it still goes to the engine, which counts the drop). */
  parsed: boolean;
  toVip: boolean;
  src: string;
  dst: string;
  /** The packet as captured (before re-addressing and NAT): offsets in `view`. */
  bytes: Uint8Array;
  view: PacketView;
}

export interface CaptureDeviceCounts {
  notIp: number; truncated: number; repliesWithoutFlow: number; notForService: number; fed: number;
  /** Packets written to --pcap-out with a timestamp pcap cannot hold, clamped to 1970 or 2106 (pcapTimestampUs). */
  timestampsClamped: number;
}

export class CaptureDevice implements PacketDevice {
  readonly headerBytes = 0;
  readonly counts: CaptureDeviceCounts = { notIp: 0, truncated: 0, repliesWithoutFlow: 0, notForService: 0, fed: 0, timestampsClamped: 0 };
  /** The packet of the last read. */
  current: CapturedPacket | undefined;
  private readonly view = new PacketView();
  private readonly copy = new Uint8Array(65536);
  private readonly writer: PcapWriter | null;

  constructor(private readonly records: Iterator<CaptureRecord>, private readonly engine: Engine, private readonly vips: ReadonlySet<string>, pcapOut: boolean) {
    this.writer = pcapOut ? new PcapWriter(101) : null;
  }

  read(batch: PacketBatch): number {
    const v = this.view, engine = this.engine;
    for (;;) {
      batch.reset();
      const it = this.records.next();
      if (it.done) { this.current = undefined; return 0; }
      const rec = it.value;
      const slot = batch.views[0];
      const n = loadIp(rec, slot, this.counts);
      if (n < 0) { this.counts.notIp++; continue; }
      batch.timeMs = rec.tsUs / 1000;
      this.copy.set(slot.subarray(0, n));
      if (parsePacket(slot, 0, n, v) !== ParseStatus.Ok) {
        this.current = { record: rec, parsed: false, toVip: false, src: '', dst: '', bytes: this.copy.subarray(0, n), view: v };
        batch.push(n, 0, 0);
        return 1;
      }
      const src = formatEndpoint(slot, v.srcAddrOff, v.addrLen, v.srcPort), dst = formatEndpoint(slot, v.dstAddrOff, v.addrLen, v.dstPort);
      const toVip = this.vips.has(dst);
      if (!toVip && !this.vips.has(src)) { this.counts.notForService++; continue; }
      if (!toVip) {
        const b = engine.backendOfReply(slot, 0, n);
        if (b < 0) { this.counts.repliesWithoutFlow++; continue; }
        // Re-address the reply as the chosen server sends it.
        natEndpoint(slot, v, v.srcAddrOff, v.l4Off, engine.services.beAddrBytes, b << 4, engine.services.bePort[b]);
      }
      this.counts.fed++;
      // `view` describes `bytes` too: re-addressing and NAT change no offsets.
      this.current = { record: rec, parsed: true, toVip, src, dst, bytes: this.copy.subarray(0, n), view: v };
      batch.push(n, 0, 0);
      return 1;
    }
  }

  write(batch: PacketBatch): number {
    if (!this.writer || batch.count === 0 || batch.out[0] === SlotOut.Drop || !this.current) return 0;
    const ts = this.current.record.tsUs, pts = pcapTimestampUs(ts);
    // Clamped, not refused: the packet is part of the output (its count matches the verdicts), only its time moves.
    if (pts !== ts) this.counts.timestampsClamped++;
    this.writer.add(pts, batch.views[0].subarray(0, batch.outLen[0]));
    return 1;
  }

  /** The --pcap-out file: every packet the engine let through, as it left. */
  pcapBytes(): Uint8Array | undefined { return this.writer?.toBytes(); }

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
