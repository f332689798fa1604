// The forwarder (device read -> engine -> verdict -> device write) without root: over the in-memory device, and
// over TunPacketDevice with a TUN queue in memory (virtio header: GSO super-packets, partial checksums, replies,
// malformed headers). One set of counters: every packet read is counted once by the engine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateEngineConfig } from '../src/engine/config.js';
import { Engine } from '../src/engine/engine.js';
import { MemoryDevice } from '../src/dataplane/device.js';
import { Forwarder, LoopCounter } from '../src/dataplane/forwarder.js';
import { TunPacketDevice, type TunQueue } from '../src/dataplane/tun-device.js';
import { inProcessChannel } from '../src/dataplane/control-protocol.js';
import { encodeVnetHdr, VNET_GSO_TCPV4, VNET_HDR_F_NEEDS_CSUM } from '../src/wire/vnet-hdr.js';
import { checksum, fold, sumWords } from '../src/wire/checksum.js';
import { ACK, SYN, capSyn, capSynAck, checksumsOk, joinSyn, tcp } from './helpers/packets.js';

const VIP = '198.19.0.10', BACKEND = '198.18.11.2', CLIENT = '198.18.1.2';
const engineFor = (extra: Record<string, unknown> = {}) => new Engine(validateEngineConfig({
  vips: [{ address: `${VIP}:5201`, backends: [{ address: BACKEND }] }], tables: { maxFlows: 64, maxConnections: 64 }, ...extra,
}));

/** A TUN queue in memory: reads hand out queued frames (virtio header + packet), writes are recorded. */
class FakeQueue implements TunQueue {
  readonly frames: Uint8Array[] = [];
  readonly writes: Uint8Array[] = [];
  failWrites = 0;
  readErrno = 0;
  closed = false;
  constructor(readonly vnetHdrBytes: number) {}
  read(buf: Uint8Array, offset: number, length: number): number {
    if (this.readErrno) return -this.readErrno;
    const f = this.frames.shift();
    if (!f) return 0;
    const n = Math.min(f.length, length);
    buf.set(f.subarray(0, n), offset);
    return n;
  }
  write(buf: Uint8Array, length: number, offset: number): number {
    if (this.failWrites > 0) { this.failWrites--; return -105; } // ENOBUFS
    this.writes.push(buf.slice(offset, offset + length));
    return length;
  }
  close(): void { this.closed = true; }
}
const frame = (hdr: Uint8Array, pkt: Uint8Array) => { const b = new Uint8Array(hdr.length + pkt.length); b.set(hdr); b.set(pkt, hdr.length); return b; };

/** What a GSO sender leaves in the TCP checksum field: the folded pseudo-header sum, uncomplemented. */
function toPartial(p: Uint8Array, off: number): void {
  const tl = ((p[off + 2] << 8) | p[off + 3]) - 20;
  const ps = fold(sumWords(p, off + 12, 8, 0) + 6 + tl);
  p[off + 36] = ps >> 8; p[off + 37] = ps & 0xff;
}
/** What the device does at segmentation time: sum from csum_start, store the complement. */
function completeAt(p: Uint8Array, off: number, len: number): void {
  const c = ~fold(sumWords(p, off + 20, len - 20, 0)) & 0xffff;
  p[off + 36] = c >> 8; p[off + 37] = c & 0xff;
}

test('memory device: a connection both ways, a drop, a reply; packets are counted once, by the engine', () => {
  const engine = engineFor({ unknownTokenAnswer: 'reset' });
  const dev = new MemoryDevice();
  const fwd = new Forwarder(engine, dev);
  const syn = tcp({ src: CLIENT, dst: VIP, sport: 5, dport: 5201, flags: SYN, options: [capSyn(1)] });
  const stray = tcp({ src: CLIENT, dst: '198.18.200.1', sport: 5, dport: 80, flags: ACK });
  const join = tcp({ src: CLIENT, dst: VIP, sport: 6, dport: 5201, flags: SYN, options: [joinSyn(0x01020304)] });
  dev.inject(syn, stray, join);
  assert.equal(fwd.runOnce(1000), 3);
  assert.equal(dev.written.length, 2, 'the drop writes nothing');
  assert.deepEqual([...dev.written[0].pkt.subarray(16, 20)], [198, 18, 11, 2], 'the SYN went to the backend');
  assert.equal(dev.written[0].reply, false);
  assert.equal(dev.written[1].reply, true, 'the unknown join is answered');
  assert.equal(dev.written[1].pkt[33] & 0x04, 0x04, 'with a RST');
  assert.ok(checksumsOk(dev.written[1].pkt));
  const synack = tcp({ src: BACKEND, dst: CLIENT, sport: 5201, dport: 5, flags: SYN | ACK, options: [capSynAck(1, 42n)] });
  dev.inject(synack);
  assert.equal(fwd.runOnce(1001), 1);
  assert.deepEqual([...dev.written[2].pkt.subarray(12, 16)], [198, 19, 0, 10], 'the SYN/ACK comes from the VIP');
  const s = inProcessChannel(engine).stats();
  assert.equal(s.counters.packets_in, 4);
  assert.equal(s.counters.packets_in, s.counters.to_backend + s.counters.to_client + s.counters.replied + s.counters.dropped);
  assert.equal(s.drops.no_service, 1);
  assert.equal(s.connections, 1);
  assert.equal(fwd.counters[LoopCounter.Batches], 2);
  assert.equal(fwd.runOnce(1002), 0, 'nothing to read');
  assert.equal(fwd.counters[LoopCounter.Batches], 2, 'an empty read is not a batch');
});

test('batches: at most batchMax packets per read, in order', () => {
  const engine = engineFor();
  const dev = new MemoryDevice();
  const fwd = new Forwarder(engine, dev, { batchMax: 4 });
  for (let i = 0; i < 10; i++) dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 100 + i, dport: 5201, flags: SYN }));
  assert.equal(fwd.runOnce(1), 4);
  assert.equal(fwd.runOnce(1), 4);
  assert.equal(fwd.runOnce(1), 2);
  assert.deepEqual(dev.written.map((w) => (w.pkt[20] << 8) | w.pkt[21]), Array.from({ length: 10 }, (_, i) => 100 + i));
  assert.equal(fwd.counters[LoopCounter.MaxBatch], 4);
});

test('an engine exception drops the packet as engine_error, is reported with its first bytes, and the batch goes on', () => {
  const engine = engineFor();
  const dev = new MemoryDevice();
  const seen: Array<{ err: unknown; head: Uint8Array }> = [];
  const fwd = new Forwarder(engine, dev, { onEngineError: (err, head) => seen.push({ err, head }) });
  const real = engine.process.bind(engine);
  let calls = 0;
  engine.process = (...args: Parameters<Engine['process']>) => {
    if (calls++ === 0) { engine.counters.events[0]++; throw new Error('boom'); } // counted in, as the engine does first
    return real(...args);
  };
  const a = tcp({ src: CLIENT, dst: VIP, sport: 7, dport: 5201, flags: SYN });
  const b = tcp({ src: CLIENT, dst: VIP, sport: 8, dport: 5201, flags: SYN });
  dev.inject(a, b);
  assert.equal(fwd.runOnce(1), 2);
  assert.equal(dev.written.length, 1, 'the second packet still went out');
  assert.equal(seen.length, 1);
  assert.match(String(seen[0].err), /boom/);
  assert.deepEqual([...seen[0].head], [...a.subarray(0, 60)].slice(0, Math.min(a.length, 64)));
  const s = inProcessChannel(engine).stats();
  assert.equal(s.drops.engine_error, 1);
  assert.equal(s.counters.packets_in, s.counters.to_backend + s.counters.to_client + s.counters.replied + s.counters.dropped);
});

test('ticks follow the batch clock: state expires on time, table fill is published', () => {
  const engine = engineFor({ timeouts: { synMs: 1000 } });
  const dev = new MemoryDevice();
  const fwd = new Forwarder(engine, dev, { tickMs: 100 });
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 9, dport: 5201, flags: SYN }));
  fwd.runOnce(10_000);
  assert.equal(engine.flows.used, 1);
  fwd.maybeTick(10_050);
  assert.equal(fwd.counters[LoopCounter.Ticks], 1, 'not due yet: the first tick was at the first batch');
  fwd.maybeTick(12_000);
  assert.equal(engine.flows.used, 0, 'the SYN-only flow expired');
  assert.equal(fwd.counters[LoopCounter.Flows], 0);
});

test('offload: a 64 KiB GSO super-packet with a partial checksum is NATed, its virtio header written back unchanged', () => {
  const q = new FakeQueue(12);
  const fwd = new Forwarder(engineFor(), new TunPacketDevice(q));
  const syn = tcp({ src: CLIENT, dst: VIP, sport: 40000, dport: 5201, flags: SYN, options: [capSyn(1)] });
  q.frames.push(frame(new Uint8Array(12), syn));
  const payload = 65535 - 40;
  const big = tcp({ src: CLIENT, dst: VIP, sport: 40000, dport: 5201, flags: ACK, payload });
  toPartial(big, 0);
  const hdr = encodeVnetHdr({ flags: VNET_HDR_F_NEEDS_CSUM, gsoType: VNET_GSO_TCPV4, hdrLen: 66, gsoSize: 1448, csumStart: 20, csumOffset: 16 });
  q.frames.push(frame(hdr, big));
  assert.equal(fwd.runOnce(1), 2);
  assert.equal(q.writes.length, 2);
  assert.equal(q.writes[0].length, 12 + syn.length);
  assert.ok(checksumsOk(q.writes[0].subarray(12)), 'a packet without NEEDS_CSUM keeps a full checksum');
  const w = q.writes[1];
  assert.equal(w.length, 12 + big.length, 'NAT changes no lengths');
  assert.deepEqual(w.subarray(0, 12), hdr, 'header passed through byte for byte');
  const out = w.slice(12);
  assert.deepEqual([...out.subarray(16, 20)], [198, 18, 11, 2], 'destination rewritten to the backend');
  assert.equal(checksum(out, 0, 20), 0, 'IPv4 header checksum full');
  // The field must now be the partial sum for the NEW pseudo-header; the device completes it into a valid checksum.
  const expect = out.slice();
  toPartial(expect, 0);
  assert.deepEqual([...out.subarray(36, 38)], [...expect.subarray(36, 38)]);
  completeAt(out, 0, out.length);
  assert.ok(checksumsOk(out));
  assert.equal(fwd.counters[LoopCounter.GsoPackets], 1);
});

test('offload: a reply goes out with a zeroed header; malformed headers never reach the engine and are counted as drops', () => {
  const q = new FakeQueue(12);
  const engine = engineFor({ unknownTokenAnswer: 'reset' });
  const fwd = new Forwarder(engine, new TunPacketDevice(q));
  const join = tcp({ src: CLIENT, dst: VIP, sport: 40001, dport: 5201, flags: SYN, options: [joinSyn(0x01020304)] });
  toPartial(join, 0);
  q.frames.push(frame(encodeVnetHdr({ flags: VNET_HDR_F_NEEDS_CSUM, hdrLen: join.length, csumStart: 20, csumOffset: 16 }), join));
  assert.equal(fwd.runOnce(1), 1);
  assert.deepEqual([...q.writes[0].subarray(0, 12)], new Array(12).fill(0));
  const rst = q.writes[0].subarray(12);
  assert.equal(rst[33] & 0x04, 0x04, 'RST');
  assert.ok(checksumsOk(rst), 'the reply carries full checksums');
  assert.deepEqual([...rst.subarray(16, 20)], [198, 18, 1, 2], 'back to the client');

  const before = { ...engine.counters.snapshot().counters };
  q.frames.push(frame(encodeVnetHdr({ flags: 0x40 }), join), new Uint8Array(12), new Uint8Array(5));
  assert.equal(fwd.runOnce(2), 3);
  assert.equal(q.writes.length, 1, 'none of them written');
  const after = engine.counters.snapshot();
  assert.equal(after.drops.bad_device_header, 3, 'bad flags, a header and no packet, a short read');
  assert.equal(after.counters.packets_in - before.packets_in, 3);
  assert.equal(after.counters.dropped - before.dropped, 3);
  assert.equal(after.counters.mp_capable_syn, before.mp_capable_syn);
  assert.equal(after.counters.joins_unknown_token, before.joins_unknown_token, 'the engine saw none of them');
});

test('offload: read and write errors are counted with their errno, and do not lose the rest of the batch', () => {
  const q = new FakeQueue(12);
  const fwd = new Forwarder(engineFor(), new TunPacketDevice(q));
  for (let i = 0; i < 3; i++) q.frames.push(frame(new Uint8Array(12), tcp({ src: CLIENT, dst: VIP, sport: 200 + i, dport: 5201, flags: SYN })));
  q.failWrites = 1;
  assert.equal(fwd.runOnce(1), 3);
  assert.equal(q.writes.length, 2, 'the other two went out');
  assert.equal(fwd.counters[LoopCounter.WriteErrors], 1);
  assert.equal(fwd.counters[LoopCounter.LastErrno], 105);
  q.readErrno = 5; // EIO: e.g. the device went away
  assert.equal(fwd.runOnce(2), -5);
  assert.equal(fwd.counters[LoopCounter.ReadErrors], 1);
});

test('ticks go on after the batch clock goes back (concatenated captures, a bad timestamp)', () => {
  const engine = engineFor({ timeouts: { synMs: 1000 } });
  const dev = new MemoryDevice();
  const fwd = new Forwarder(engine, dev, { tickMs: 100 });
  fwd.maybeTick(1_000_000);
  dev.inject(tcp({ src: CLIENT, dst: VIP, sport: 9, dport: 5201, flags: SYN }));
  fwd.runOnce(5_000); // the clock went back by 995 s
  const ticks = fwd.counters[LoopCounter.Ticks];
  fwd.maybeTick(5_200);
  assert.equal(fwd.counters[LoopCounter.Ticks], ticks + 1, 'ticking resumed on the new clock');
  fwd.maybeTick(7_000);
  assert.equal(engine.flows.used, 0, 'so state still expires');
});
