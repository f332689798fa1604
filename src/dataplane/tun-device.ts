// A TUN queue as a PacketDevice. With IFF_VNET_HDR every packet is preceded by a virtio_net_hdr: it is validated
// here on read (a malformed one is a `bad_device_header` drop that the engine never sees; NEEDS_CSUM becomes the
// slot's partial-checksum flag) and passed back unchanged with a rewritten packet, or zeroed for a reply, whose
// checksums are full.
import { DropReason } from '../engine/counters.js';
import { parseVnetHdr, VnetHdr, VnetStatus, VNET_HDR_F_NEEDS_CSUM, writeZeroVnetHdr } from '../wire/vnet-hdr.js';
import { SlotIn, SlotOut, type PacketBatch, type PacketDevice } from './device.js';

/** What this device needs of a TUN queue (io/tun.ts TunDevice; tests pass a queue in memory). */
export interface TunQueue {
  readonly vnetHdrBytes: number;
  /** One packet into buf[offset..offset+length): its length, 0 when none is ready, or -errno. */
  read(buf: Uint8Array, offset: number, length: number): number;
  /** One packet from buf[offset..offset+length): bytes written or -errno. */
  write(buf: Uint8Array, length: number, offset: number): number;
  close(): void;
}

export class TunPacketDevice implements PacketDevice {
  readonly headerBytes: number;
  private readonly hdr = new VnetHdr();
  /** Why the last malformed header was refused (for diagnostics). */
  lastVnetStatus: VnetStatus = VnetStatus.Ok;

  constructor(readonly tun: TunQueue) {
    this.headerBytes = tun.vnetHdrBytes;
  }

  read(batch: PacketBatch, max: number): number {
    batch.reset();
    const H = this.headerBytes, span = batch.slotBytes - 64;
    while (batch.count < max && batch.count < batch.capacity) {
      const view = batch.views[batch.count];
      const got = this.tun.read(view, 0, span);
      if (got === 0) break;
      if (got < 0) return batch.count > 0 ? batch.count : got;
      const len = got - H;
      let flags = SlotIn.None, bad: DropReason | 0 = 0;
      if (H > 0) {
        const st = len <= 0 ? VnetStatus.Truncated : parseVnetHdr(view, 0, H, len, this.hdr);
        if (st !== VnetStatus.Ok) { bad = DropReason.BadDeviceHeader; this.lastVnetStatus = st; }
        else {
          if (this.hdr.flags & VNET_HDR_F_NEEDS_CSUM) flags |= SlotIn.PartialCsum;
          if (this.hdr.gsoType !== 0) flags |= SlotIn.Gso;
        }
      }
      batch.push(len > 0 ? len : 0, flags, bad);
    }
    return batch.count;
  }

  write(batch: PacketBatch): number {
    const H = this.headerBytes;
    let n = 0, err = 0;
    for (let i = 0; i < batch.count; i++) {
      const o = batch.out[i];
      if (o === SlotOut.Drop) continue;
      const view = batch.views[i];
      if (o === SlotOut.Reply && H > 0) writeZeroVnetHdr(view, 0, H);
      const w = this.tun.write(view, H + batch.outLen[i], 0);
      if (w < 0) { if (err === 0) err = w; } else n++;
    }
    // A failed write is reported (and counted by the forwarder) even when others of the batch went out.
    return err < 0 ? err : n;
  }

  close(): void { this.tun.close(); }
}
