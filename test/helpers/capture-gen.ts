// Large synthetic captures for the streaming tests and the replay benchmark, written to a file as they are made
// (never whole in memory): MPTCP v1 connections to one VIP, one after another, each with a join from a second client
// address, data both ways on both subflows with DSS, and FINs. Raw IPv4 pcap (link type 101). Checksums are right for
// the handshakes and left as built for data packets (the engine does not check them).
import { closeSync, openSync, writeSync } from 'node:fs';
import { keyToken } from '../../src/wire/tokens.js';
import { ACK, FIN, PSH, SYN, capAck, capSyn, capSynAck, dss, joinSyn, tcp } from './packets.js';

export const GEN_VIP = '198.18.100.1:5201';

export interface GenOptions {
  /** Records to write (the last connection is cut short when they run out). */
  records: number;
  /** Records per connection: 12 for the handshakes and FINs, the rest data (default 100). */
  perConnection?: number;
  /** TCP payload bytes of a data packet (default 52: 100-byte IP packets with the DSS option). */
  payload?: number;
  /** First timestamp (µs) and the step between records (default 10 µs). */
  startUs?: number;
  stepUs?: number;
}

export interface GenResult { records: number; connections: number; bytes: number }

/** Writes the capture to `path`; returns what it wrote. */
export function writeMptcpCapture(path: string, opts: GenOptions): GenResult {
  const per = Math.max(13, opts.perConnection ?? 100);
  const payload = opts.payload ?? 52;
  const step = opts.stepUs ?? 10;
  let ts = opts.startUs ?? 1_700_000_000_000_000;
  const fd = openSync(path, 'w');
  const buf = Buffer.allocUnsafe(4 << 20);
  let used = 0, bytes = 0, written = 0, conns = 0;
  const flush = () => {
    for (let o = 0; o < used;) o += writeSync(fd, buf, o, used - o);
    bytes += used;
    used = 0;
  };
  buf.writeUInt32LE(0xa1b2c3d4, 0); buf.writeUInt16LE(2, 4); buf.writeUInt16LE(4, 6);
  buf.writeUInt32LE(0, 8); buf.writeUInt32LE(0, 12); buf.writeUInt32LE(65535, 16); buf.writeUInt32LE(101, 20);
  used = 24;
  const put = (p: Uint8Array) => {
    if (used + 16 + p.length > buf.length) flush();
    const sec = Math.floor(ts / 1e6);
    buf.writeUInt32LE(sec, used); buf.writeUInt32LE(ts - sec * 1e6, used + 4);
    buf.writeUInt32LE(p.length, used + 8); buf.writeUInt32LE(p.length, used + 12);
    buf.set(p, used + 16);
    used += 16 + p.length;
    ts += step;
    written++;
  };
  const [vip, vport] = [GEN_VIP.split(':')[0], Number(GEN_VIP.split(':')[1])];
  try {
    for (let i = 0; written < opts.records; i++) {
      conns++;
      const c1 = `198.19.${(i >> 8) & 255}.${i & 255}`, c2 = `198.20.${(i >> 8) & 255}.${i & 255}`;
      const p1 = 1024 + (i % 60000), p2 = 1024 + ((i + 30000) % 60000);
      const key = (0x1000_0000_0000_0000n + BigInt(i) * 0x9e37_79b9_7f4a_7c15n) & 0xffff_ffff_ffff_ffffn;
      const ckey = key ^ 0x5555_5555_5555_5555n;
      const token = keyToken(1, Number(key >> 32n), Number(key & 0xffff_ffffn));
      const up = (src: string, sport: number, flags: number, options: Parameters<typeof tcp>[0]['options'] = [], pl = 0) =>
        tcp({ src, dst: vip, sport, dport: vport, flags, options, payload: pl });
      const down = (dst: string, dport: number, flags: number, options: Parameters<typeof tcp>[0]['options'] = [], pl = 0) =>
        tcp({ src: vip, dst, sport: vport, dport, flags, options, payload: pl });
      const open = [
        up(c1, p1, SYN, [capSyn(1)]), down(c1, p1, SYN | ACK, [capSynAck(1, key)]), up(c1, p1, ACK, [capAck(1, ckey, key)]),
        up(c2, p2, SYN, [joinSyn(token)]), down(c2, p2, SYN | ACK), up(c2, p2, ACK),
      ];
      const data = [
        up(c1, p1, ACK | PSH, [dss(1n)], payload), down(c1, p1, ACK | PSH, [dss(2n)], payload),
        up(c2, p2, ACK | PSH, [dss(3n)], payload), down(c2, p2, ACK | PSH, [dss(4n)], payload),
      ];
      const close = [
        up(c1, p1, FIN | ACK), down(c1, p1, FIN | ACK), up(c1, p1, ACK),
        up(c2, p2, FIN | ACK), down(c2, p2, FIN | ACK), up(c2, p2, ACK),
      ];
      const seq = [...open, ...Array.from({ length: per - 12 }, (_, k) => data[k & 3]), ...close];
      for (const p of seq) {
        if (written >= opts.records) break;
        put(p);
      }
    }
    flush();
  } finally {
    closeSync(fd);
  }
  return { records: written, connections: conns, bytes };
}
