// The packet-device interface the forwarder reads from and writes to, the batch they share, and an in-memory
// device for tests. A device owns its per-packet header (a TUN's virtio_net_hdr, none for captures): it validates
// it on read and rewrites it on write; the forwarder and the engine only see IP packets.
import type { DropReason } from '../engine/counters.js';

/** Largest IP packet a device hands over: a 64 KiB GSO super-packet. */
export const MAX_PACKET = 65535;

/** Per-slot input flags (set by the device on read). */
export const enum SlotIn {
  None = 0,
  /** The TCP checksum field holds the uncomplemented pseudo-header sum (virtio NEEDS_CSUM). */
  PartialCsum = 1,
  /** A GSO super-packet (counted, passed through). */
  Gso = 2,
}

/** What the forwarder decided for a slot (set before the device's write). */
export const enum SlotOut {
  /** Not written. */
  Drop = 0,
  /** Rewritten in place (same length): write it with its own device header. */
  Forward = 1,
  /** Replaced by an answer with full checksums (`outLen` bytes): write it with a fresh device header. */
  Reply = 2,
}

/**
 * A batch of packets. Slot i is `views[i]` (at `off[i]` of the arena `buf`): `headerBytes` of device header, then the
 * IP packet of `len[i]` bytes. Slots have a fixed size and their views are made once, so a device reads and writes
 * a slot without creating a view per packet; devices and the forwarder reuse one batch for every read.
 */
export class PacketBatch {
  readonly buf: Uint8Array;
  readonly views: Uint8Array[];
  /** Start of each slot's device header in `buf` (the IP packet follows at off + headerBytes). */
  readonly off: Int32Array;
  /** IP packet length of each slot as read. */
  readonly len: Int32Array;
  readonly flags: Uint8Array;
  /** A device-side drop reason for the slot (e.g. a malformed device header), 0 when the packet is good. */
  readonly bad: Uint8Array;
  /** Forwarder's decision per slot, and the IP length to write. */
  readonly out: Uint8Array;
  readonly outLen: Int32Array;
  /** Bytes of a slot: header + the largest packet + slack (a reply is never longer than what it answers). */
  readonly slotBytes: number;
  count = 0;
  /** Capture time of the batch when the device has its own clock (replay), else NaN (the caller's clock). */
  timeMs = NaN;

  constructor(readonly capacity: number, readonly headerBytes: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 4096) throw new RangeError(`batch capacity must be an integer 1-4096, got ${capacity}`);
    this.slotBytes = (headerBytes + MAX_PACKET + 64 + 63) & ~63;
    this.buf = new Uint8Array(capacity * this.slotBytes);
    this.views = [];
    this.off = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) {
      this.off[i] = i * this.slotBytes;
      this.views.push(this.buf.subarray(this.off[i], this.off[i] + this.slotBytes));
    }
    this.len = new Int32Array(capacity);
    this.flags = new Uint8Array(capacity);
    this.bad = new Uint8Array(capacity);
    this.out = new Uint8Array(capacity);
    this.outLen = new Int32Array(capacity);
  }

  /** Empties the batch (device side, before a read). */
  reset(timeMs = NaN): void {
    this.count = 0;
    this.timeMs = timeMs;
  }

  /** Appends the slot that was just filled (device side). Returns its index. */
  push(len: number, flags: number, bad: DropReason | 0): number {
    const i = this.count++;
    this.len[i] = len;
    this.flags[i] = flags;
    this.bad[i] = bad;
    this.out[i] = SlotOut.Drop;
    this.outLen[i] = 0;
    return i;
  }
}

/** Something packets come from and go to: a TUN queue, a capture, memory. Hot methods never throw. */
export interface PacketDevice {
  /** Bytes of device header before each IP packet in a batch slot (12 for a TUN with a virtio header, else 0). */
  readonly headerBytes: number;
  /** Reads up to `max` packets into `batch` (reset to empty first). Returns the count, or -errno when reading failed. */
  read(batch: PacketBatch, max: number): number;
  /** Writes every slot the forwarder did not drop. Returns packets written, or -errno of the first failure. */
  write(batch: PacketBatch): number;
  close(): void;
}

/** An in-memory device for tests: queue IP packets with `inject`, read what the forwarder wrote in `written`. */
export class MemoryDevice implements PacketDevice {
  readonly headerBytes = 0;
  private readonly queue: Uint8Array[] = [];
  /** Every written packet (copies), and whether it was a reply. */
  readonly written: Array<{ pkt: Uint8Array; reply: boolean }> = [];
  closed = false;

  inject(...pkts: Uint8Array[]): void {
    for (const p of pkts) {
      if (p.length > MAX_PACKET) throw new RangeError(`packet of ${p.length} bytes is larger than ${MAX_PACKET}`);
      this.queue.push(p);
    }
  }

  get pending(): number { return this.queue.length; }

  read(batch: PacketBatch, max: number): number {
    batch.reset();
    while (batch.count < max && batch.count < batch.capacity && this.queue.length > 0) {
      const pkt = this.queue.shift()!;
      batch.views[batch.count].set(pkt, 0);
      batch.push(pkt.length, 0, 0);
    }
    return batch.count;
  }

  write(batch: PacketBatch): number {
    let n = 0;
    for (let i = 0; i < batch.count; i++) {
      if (batch.out[i] === SlotOut.Drop) continue;
      this.written.push({ pkt: batch.views[i].slice(0, batch.outLen[i]), reply: batch.out[i] === SlotOut.Reply });
      n++;
    }
    return n;
  }

  close(): void { this.closed = true; }
}
