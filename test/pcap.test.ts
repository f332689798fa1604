// Tests for capture file I/O (src/io/pcap.ts) and link-layer stripping (src/io/link-layer.ts),
// checked against tcpdump's own decodes of real captures and against an independent encoder below.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import fc from 'fast-check';
import {
  CaptureFormatError, CHUNK_BYTES, openCapture, openCaptureFile, PCAP_MAX_TS_US, PcapFileWriter, PcapWriter, pcapTimestampUs, readCapture,
  type ByteSource, type CaptureRecord,
} from '../src/io/pcap.js';
import { LinkType, ipOffset, linkTypeName } from '../src/wire/link-layer.js';

// From dist/test/ (where this runs): ../../ is the repo root, ../../../shared is beside the clone.
const SHARED = new URL('../../../shared/pcaps/', import.meta.url);
const FIXTURES = new URL('../../test/fixtures/tcpdump-upstream/', import.meta.url);

/** As a plain Uint8Array (not a Buffer), so records compare equal to ones read from encoder output. */
function load(base: URL, name: string): Uint8Array {
  const b = readFileSync(new URL(name, base));
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const plain = (rs: CaptureRecord[]) => rs.map((r) => ({ tsUs: r.tsUs, linkType: r.linkType, origLen: r.origLen, data: hex(r.data) }));

function cat(...parts: (Uint8Array | number[])[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

// --- tcpdump output oracle -------------------------------------------------------------------------

interface OutPacket {
  /** Full timestamp in µs when the line has a date; otherwise only the time of day is known. */
  tsUs: number | null;
  todUs: number;
  /** IP version tcpdump decoded the packet as, or 0 for non-IP (e.g. ARP). */
  ip: 0 | 4 | 6;
}

const US_PER_DAY = 86_400_000_000;
// "    1  2020-10-01 11:02:20.402400 IP ..." (tcpdump -# -tttt) or "02:55:35.698856 IP ..." (no -#, no date).
const PACKET_LINE = /^\s*(?:\d+\s+)?(?:(\d{4})-(\d\d)-(\d\d) )?(\d\d):(\d\d):(\d\d)\.(\d{6})\d* (.*)$/;

function parseOut(text: string): OutPacket[] {
  const packets: OutPacket[] = [];
  for (const line of text.split('\n')) {
    const m = PACKET_LINE.exec(line);
    if (!m) continue; // continuation lines of -v output
    const [, y, mo, d, h, mi, s, us, rest] = m;
    const todUs = ((Number(h) * 60 + Number(mi)) * 60 + Number(s)) * 1e6 + Number(us);
    const tsUs = y === undefined ? null : Date.UTC(Number(y), Number(mo) - 1, Number(d)) * 1000 + todUs;
    const ip = rest.startsWith('IP6 ') ? 6 : rest.startsWith('IP ') ? 4 : 0;
    packets.push({ tsUs, todUs, ip });
  }
  return packets;
}

/** Checks records against tcpdump's decode: count, timestamps (GMT), and IP found where tcpdump found IP. */
function assertMatchesOut(records: CaptureRecord[], out: OutPacket[]): void {
  assert.equal(records.length, out.length, 'record count vs tcpdump output');
  records.forEach((r, i) => {
    const o = out[i];
    if (o.tsUs !== null) assert.equal(r.tsUs, o.tsUs, `timestamp of packet ${i + 1}`);
    else assert.equal(r.tsUs % US_PER_DAY, o.todUs, `time of day of packet ${i + 1}`);
    const off = ipOffset(r.linkType, r.data);
    if (o.ip === 0) {
      assert.equal(off, -1, `packet ${i + 1} is not IP for tcpdump`);
    } else {
      assert.ok(off >= 0, `packet ${i + 1}: no IP header found`);
      assert.equal(r.data[off] >> 4, o.ip, `IP version of packet ${i + 1}`);
    }
  });
}

/** IP total length per the header (IPv6: fixed header + payload length). */
function ipTotalLength(data: Uint8Array, off: number): number {
  return data[off] >> 4 === 4 ? (data[off + 2] << 8) | data[off + 3] : 40 + ((data[off + 4] << 8) | data[off + 5]);
}

/** Tokens carried by MP_JOIN SYNs (RFC 8684 §3.2: kind 30, subtype 1, length 12, token at +4). */
function joinSynTokens(records: CaptureRecord[]): string[] {
  const tokens: string[] = [];
  for (const r of records) {
    const b = r.data;
    const ip = ipOffset(r.linkType, b);
    if (ip < 0 || b[ip] >> 4 !== 4 || b[ip + 9] !== 6) continue;
    const tcp = ip + (b[ip] & 15) * 4;
    const synOnly = (b[tcp + 13] & 0x12) === 0x02;
    const end = Math.min(tcp + (b[tcp + 12] >> 4) * 4, b.length);
    for (let i = tcp + 20; i + 1 < end; ) {
      if (b[i] === 0) break;
      if (b[i] === 1) {
        i++;
        continue;
      }
      const len = b[i + 1];
      if (len < 2) break;
      if (synOnly && b[i] === 30 && len === 12 && b[i + 2] >> 4 === 1) tokens.push(hex(b.subarray(i + 4, i + 8)));
      i += len;
    }
  }
  return tokens;
}

// --- independent encoders (written from the specs, not from the reader) ----------------------------

function u16(v: number, le: boolean): number[] {
  return le ? [v & 0xff, v >>> 8] : [v >>> 8, v & 0xff];
}
function u32(v: number, le: boolean): number[] {
  const b = [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
  return le ? b.reverse() : b;
}
function u64(v: bigint, le: boolean): number[] {
  const x = BigInt.asUintN(64, v);
  const hi = Number(x >> 32n);
  const lo = Number(x & 0xffffffffn);
  return le ? [...u32(lo, le), ...u32(hi, le)] : [...u32(hi, le), ...u32(lo, le)];
}
const padTo4 = (n: number): number[] => new Array((4 - (n % 4)) % 4).fill(0);

interface PcapOptions { le: boolean; nanos: boolean; linkType: number; snapLen: number }

/** pcap encoder; `fracNs` adds sub-µs nanoseconds that a reader must floor away. */
function encodePcap(records: CaptureRecord[], o: PcapOptions, fracNs = 0): Uint8Array {
  const magic = o.nanos ? 0xa1b23c4d : 0xa1b2c3d4;
  const parts: (number[] | Uint8Array)[] = [[...u32(magic, o.le), ...u16(2, o.le), ...u16(4, o.le), ...u32(0, o.le), ...u32(0, o.le), ...u32(o.snapLen, o.le), ...u32(o.linkType, o.le)]];
  for (const r of records) {
    const sec = Math.floor(r.tsUs / 1e6);
    const us = r.tsUs - sec * 1e6;
    parts.push([...u32(sec, o.le), ...u32(o.nanos ? us * 1000 + fracNs : us, o.le), ...u32(r.data.length, o.le), ...u32(r.origLen, o.le)], r.data);
  }
  return cat(...parts);
}

type NgBlock =
  | { kind: 'shb'; le: boolean }
  | { kind: 'idb'; linkType: number; snapLen?: number; tsresol?: number; tsoffset?: bigint }
  | { kind: 'epb' | 'opb'; iface: number; ts: bigint; data: Uint8Array; origLen?: number }
  | { kind: 'spb'; data: Uint8Array; origLen?: number }
  | { kind: 'other'; type: number; body: Uint8Array };

function ngBlock(type: number, body: number[], le: boolean): number[] {
  const total = 12 + body.length + padTo4(body.length).length;
  return [...u32(type, le), ...u32(total, le), ...body, ...padTo4(body.length), ...u32(total, le)];
}
function ngOption(code: number, value: number[], le: boolean): number[] {
  return [...u16(code, le), ...u16(value.length, le), ...value, ...padTo4(value.length)];
}

/** pcapng encoder (draft-ietf-opsawg-pcapng). The first block must be an 'shb'. */
function encodePcapng(blocks: NgBlock[]): Uint8Array {
  let le = true;
  const out: number[] = [];
  for (const b of blocks) {
    switch (b.kind) {
      case 'shb':
        le = b.le;
        // byte-order magic, version 1.0, section length -1 (unknown), shb_userappl, opt_endofopt
        out.push(...ngBlock(0x0a0d0d0a, [...u32(0x1a2b3c4d, le), ...u16(1, le), ...u16(0, le), ...u64(-1n, le), ...ngOption(4, [...Buffer.from('mplb-test')], le), ...ngOption(0, [], le)], le));
        break;
      case 'idb': {
        // if_name first, so options before if_tsresol (with padding) must be walked correctly
        const opts = [...ngOption(2, [...Buffer.from('eth0.7')], le)];
        if (b.tsresol !== undefined) opts.push(...ngOption(9, [b.tsresol], le));
        if (b.tsoffset !== undefined) opts.push(...ngOption(14, u64(b.tsoffset, le), le));
        opts.push(...ngOption(0, [], le));
        out.push(...ngBlock(1, [...u16(b.linkType, le), ...u16(0, le), ...u32(b.snapLen ?? 0, le), ...opts], le));
        break;
      }
      case 'epb':
      case 'opb': {
        // obsolete packet block: 16-bit interface id, then a 16-bit drop count (non-zero, so a reader must not merge them)
        const ifField = b.kind === 'epb' ? u32(b.iface, le) : [...u16(b.iface, le), ...u16(3, le)];
        const ts = u64(b.ts, le);
        // pcapng stores the timestamp as high word then low word, each in section byte order
        const tsWords = le ? [...ts.slice(4), ...ts.slice(0, 4)] : ts;
        const flags = ngOption(2, u32(1, le), le); // epb_flags: an option after the data
        out.push(...ngBlock(b.kind === 'epb' ? 6 : 2, [...ifField, ...tsWords, ...u32(b.data.length, le), ...u32(b.origLen ?? b.data.length, le), ...b.data, ...padTo4(b.data.length), ...flags, ...ngOption(0, [], le)], le));
        break;
      }
      case 'spb':
        out.push(...ngBlock(3, [...u32(b.origLen ?? b.data.length, le), ...b.data], le));
        break;
      case 'other':
        out.push(...ngBlock(b.type, [...b.body], le));
        break;
    }
  }
  return Uint8Array.from(out);
}

/** Timestamp units for tsUs at resolution `tsresol`, rounded up so that flooring back gives tsUs when exact enough. */
function unitsFor(tsUs: number, tsresol: number): bigint {
  const perSec = tsresol & 0x80 ? 2n ** BigInt(tsresol & 0x7f) : 10n ** BigInt(tsresol);
  const num = BigInt(tsUs) * perSec;
  return (num + 999_999n) / 1_000_000n;
}

function toPcapng(records: CaptureRecord[], le: boolean, tsresol?: number, snapLen = 65535): Uint8Array {
  const blocks: NgBlock[] = [{ kind: 'shb', le }, { kind: 'idb', linkType: records[0].linkType, snapLen, tsresol }];
  for (const r of records) blocks.push({ kind: 'epb', iface: 0, ts: unitsFor(r.tsUs, tsresol ?? 6), data: r.data, origLen: r.origLen });
  return encodePcapng(blocks);
}

// --- shared captures ---------------------------------------------------------------------------------

interface SharedCapture { file: string; out: string | null; linkType: number; warnings?: RegExp[] }

const SHARED_CAPTURES: SharedCapture[] = [
  { file: 'tcpdump/mptcp-aa-echo.pcap', out: 'tcpdump/mptcp-aa-echo.out', linkType: LinkType.LinuxSll },
  { file: 'tcpdump/mptcp-aa-v1.pcap', out: 'tcpdump/mptcp-aa-v1.out', linkType: LinkType.Ethernet },
  // A crafted CVE file: its one record holds 74 bytes under a 73-byte snap length.
  { file: 'tcpdump/mptcp-dss-oobr.pcap', out: 'tcpdump/mptcp-dss-oobr.out', linkType: LinkType.Ethernet, warnings: [/captured length 74 above the snap length 73/] },
  { file: 'tcpdump/mptcp-fclose.pcap', out: 'tcpdump/mptcp-fclose.out', linkType: LinkType.Ethernet },
  { file: 'tcpdump/mptcp-tcprst.pcap', out: 'tcpdump/mptcp-tcprst.out', linkType: LinkType.Raw },
  { file: 'tcpdump/mptcp-v0.pcap', out: 'tcpdump/mptcp-v0.out', linkType: LinkType.Ethernet },
  { file: 'tcpdump/mptcp-v1.pcap', out: 'tcpdump/mptcp-v1.out', linkType: LinkType.LinuxSll },
  { file: 'ptcpdump/mptcp.pcap', out: 'ptcpdump/mptcp.pcap.out.txt', linkType: LinkType.Ethernet },
  { file: 'linux-v1/mptcp-v1-joins.pcap', out: null, linkType: LinkType.LinuxSll2 },
];

describe('shared MPTCP captures', () => {
  for (const c of SHARED_CAPTURES) {
    test(`${c.file}: records, link type, timestamps and IP offsets`, () => {
      const bytes = load(SHARED, c.file);
      const { format, records, warnings } = readCapture(bytes);
      assert.equal(format, 'pcap');
      assert.ok(records.length > 0);
      assert.deepEqual(new Set(records.map((r) => r.linkType)), new Set([c.linkType]));
      assert.equal(warnings.length, (c.warnings ?? []).length, warnings.join('; '));
      (c.warnings ?? []).forEach((re, i) => assert.match(warnings[i], re));
      // Records are views into the input and tile the file exactly after the 24-byte header.
      const tiled = 24 + records.reduce((n, r) => n + 16 + r.data.length, 0);
      assert.equal(tiled, bytes.length);
      for (const r of records) assert.equal(r.data.buffer, bytes.buffer);
      if (c.out !== null) assertMatchesOut(records, parseOut(readFileSync(new URL(c.out, SHARED), 'utf8')));
      // None of these frames carry link-layer padding, so the IP length ends exactly at the frame end.
      for (const [i, r] of records.entries()) {
        const off = ipOffset(r.linkType, r.data);
        if (off >= 0) assert.equal(off + ipTotalLength(r.data, off), r.origLen, `IP length of record ${i + 1}`);
      }
    });
  }

  test('linux-v1/mptcp-v1-joins.pcap: SLL2 framing, snap length 200, the README tokens in the join SYNs', () => {
    const bytes = load(SHARED, 'linux-v1/mptcp-v1-joins.pcap');
    const { records } = readCapture(bytes);
    assert.equal(records.length, 90);
    assert.equal(records[0].tsUs, Date.UTC(2026, 10, 26, 10, 37, 32) * 1000 + 144455);
    for (const r of records) {
      assert.ok(r.data.length <= 200 && r.data.length <= r.origLen);
      assert.equal(ipOffset(r.linkType, r.data), 20);
      // every packet is to or from 10.61.9.9
      const d = r.data;
      assert.ok(hex(d.subarray(32, 36)) === '0a3d0909' || hex(d.subarray(36, 40)) === '0a3d0909');
    }
    assert.deepEqual(joinSynTokens(records), ['d41b3875', '0c84b3eb', 'fd012574']);
  });

  test('tcpdump/mptcp-v0.pcap: the MP_JOIN SYN carries token 0xe47f0142 (README)', () => {
    assert.deepEqual(joinSynTokens(readCapture(load(SHARED, 'tcpdump/mptcp-v0.pcap')).records), ['e47f0142']);
  });

  test('PcapWriter reproduces the little-endian µs captures byte for byte', () => {
    for (const c of SHARED_CAPTURES) {
      if (c.warnings) continue; // a record above its snap length cannot be written back unchanged
      const bytes = load(SHARED, c.file);
      const view = new DataView(bytes.buffer, bytes.byteOffset);
      const w = new PcapWriter(view.getUint32(20, true), view.getUint32(16, true));
      for (const r of readCapture(bytes).records) w.add(r.tsUs, r.data, r.origLen);
      assert.equal(hex(w.toBytes()), hex(bytes), c.file);
    }
  });
});

// --- real captures from tcpdump's test suite (other writers, other link types) -----------------------

interface UpstreamCapture { file: string; out: string; format: 'pcap' | 'pcapng'; linkType: number; count: number; why: string }

const UPSTREAM: UpstreamCapture[] = [
  { file: 'icmp-length-zero.pcapng', out: 'icmp-length-zero.out', format: 'pcapng', linkType: 1, count: 1, why: 'if_tsresol 10^-9' },
  { file: 'time_2107.pcapng', out: 'time_2107.out', format: 'pcapng', linkType: 1, count: 1, why: 'seconds beyond 2^32' },
  { file: 'dhcp-option-108.pcapng', out: 'dhcp-option-108.out', format: 'pcapng', linkType: 1, count: 2, why: 'interface statistics block to skip' },
  { file: 'icmp-cksum-oobr-4.pcapng', out: 'icmp-cksum-oobr-4.out', format: 'pcapng', linkType: 9, count: 1, why: 'PPP in pcapng' },
  { file: 'tcp_rst_diag_payload.pcap', out: 'tcp_rst_diag_payload.out', format: 'pcap', linkType: 0, count: 1, why: 'null, AF_INET' },
  { file: 'icmpv6-RFC2894-RR.pcap', out: 'icmpv6-RFC2894-RR.out', format: 'pcap', linkType: 0, count: 6, why: 'null, FreeBSD AF_INET6 28' },
  { file: 'isup.pcap', out: 'isup.out', format: 'pcap', linkType: 1, count: 6, why: 'big-endian pcap' },
  { file: 'tcp-handshake-nano.pcap', out: 'tcp-handshake-nano-tttt.out', format: 'pcap', linkType: 113, count: 3, why: 'nanosecond pcap' },
  { file: 'LINKTYPE_IPV4.pcap', out: 'LINKTYPE_IPV4.out', format: 'pcap', linkType: 228, count: 1, why: 'raw IPv4 link type' },
  { file: 'LINKTYPE_IPV6.pcap', out: 'LINKTYPE_IPV6.out', format: 'pcap', linkType: 229, count: 1, why: 'raw IPv6 link type' },
  { file: 'icmp-rfc5837.pcap', out: 'icmp-rfc5837.out', format: 'pcap', linkType: 9, count: 1, why: 'PPP with address/control' },
];

describe('tcpdump test-suite captures', () => {
  for (const c of UPSTREAM) {
    test(`${c.file} (${c.why})`, () => {
      const { format, records, warnings } = readCapture(load(FIXTURES, c.file));
      assert.equal(format, c.format);
      assert.deepEqual(warnings, []);
      assert.equal(records.length, c.count);
      for (const r of records) assert.equal(r.linkType, c.linkType);
      assertMatchesOut(records, parseOut(readFileSync(new URL(c.out, FIXTURES), 'utf8')));
    });
  }

  test('time_2107.pcapng: a timestamp past 2^32 seconds is exact', () => {
    const [r] = readCapture(load(FIXTURES, 'time_2107.pcapng')).records;
    assert.equal(r.tsUs, Date.UTC(2107, 0, 1) * 1000);
    assert.ok(r.tsUs / 1e6 > 2 ** 32);
  });

  test('timestamp_invalid_nano.pcap: out-of-range nanoseconds are read with a warning', () => {
    const { records, warnings } = readCapture(load(FIXTURES, 'timestamp_invalid_nano.pcap'));
    assert.equal(records.length, 3);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /nanoseconds field 1000000000 out of range \(and 1 more/);
    // 17:16:09.999999999 floors to ...999999 µs
    assert.equal(records[0].tsUs % 1_000_000, 999_999);
  });
});

// --- format variants of the same records -------------------------------------------------------------

const V1 = (): CaptureRecord[] => readCapture(load(SHARED, 'tcpdump/mptcp-v1.pcap')).records;

describe('format variants', () => {
  test('pcap big-endian and nanosecond variants read back identical', () => {
    for (const name of ['tcpdump/mptcp-v1.pcap', 'tcpdump/mptcp-fclose.pcap', 'linux-v1/mptcp-v1-joins.pcap']) {
      const recs = readCapture(load(SHARED, name)).records;
      const linkType = recs[0].linkType;
      for (const le of [true, false]) {
        for (const nanos of [false, true]) {
          // 999 extra ns must be floored, not rounded up into the next µs
          const got = readCapture(encodePcap(recs, { le, nanos, linkType, snapLen: 65535 }, nanos ? 999 : 0));
          assert.deepEqual(plain(got.records), plain(recs), `${name} le=${le} nanos=${nanos}`);
          assert.deepEqual(got.warnings, []);
        }
      }
    }
  });

  test('pcapng little- and big-endian with default resolution read back identical', () => {
    for (const c of SHARED_CAPTURES) {
      const recs = readCapture(load(SHARED, c.file)).records;
      for (const le of [true, false]) {
        const got = readCapture(toPcapng(recs, le, undefined, 0));
        assert.equal(got.format, 'pcapng');
        assert.deepEqual(plain(got.records), plain(recs), `${c.file} le=${le}`);
        assert.deepEqual(got.warnings, []);
      }
    }
  });

  test('pcapng if_tsresol: 10^-9, 2^-20 and 2^-30 floor back to the µs; 10^-3 counts milliseconds', () => {
    const recs = V1();
    for (const tsresol of [9, 0x80 | 20, 0x80 | 30, 6]) {
      const got = readCapture(toPcapng(recs, false, tsresol)).records;
      assert.deepEqual(plain(got), plain(recs), `tsresol ${tsresol}`);
    }
    const ms = readCapture(toPcapng(recs, true, 3)).records;
    // unitsFor rounds up to whole milliseconds
    assert.deepEqual(ms.map((r) => r.tsUs), recs.map((r) => Math.ceil(r.tsUs / 1000) * 1000));
    assert.notDeepEqual(ms.map((r) => r.tsUs), recs.map((r) => r.tsUs));
  });

  test('pcapng if_tsoffset adds seconds', () => {
    const data = V1()[0].data;
    const bytes = encodePcapng([
      { kind: 'shb', le: true },
      { kind: 'idb', linkType: 113, tsresol: 9, tsoffset: 1_600_000_000n },
      { kind: 'epb', iface: 0, ts: 1_500_000_123n, data },
    ]);
    assert.equal(readCapture(bytes).records[0].tsUs, 1_600_000_001_500_000);
  });

  test('pcapng: several sections in both byte orders; interface ids restart per section; other blocks skipped', () => {
    const recs = V1();
    const d = (i: number) => recs[i].data;
    const bytes = encodePcapng([
      { kind: 'shb', le: true },
      { kind: 'other', type: 4, body: Uint8Array.from([0, 0, 0, 0]) }, // name resolution, empty
      { kind: 'idb', linkType: 1 },
      { kind: 'idb', linkType: 113, tsresol: 9 },
      { kind: 'epb', iface: 1, ts: 5_000_000_001n, data: d(0) },
      { kind: 'other', type: 5, body: new Uint8Array(20) }, // interface statistics
      { kind: 'epb', iface: 0, ts: 6_000_000n, data: d(1), origLen: 1500 },
      { kind: 'shb', le: false },
      { kind: 'other', type: 0x40000bad, body: Uint8Array.from([1, 2, 3, 4, 5]) }, // custom, odd body length
      { kind: 'idb', linkType: 276 },
      { kind: 'epb', iface: 0, ts: 7_000_000n, data: d(2) },
      { kind: 'shb', le: true },
      { kind: 'idb', linkType: 101, tsresol: 3 },
      { kind: 'opb', iface: 0, ts: 8_000n, data: d(3) },
    ]);
    const got = readCapture(bytes);
    assert.deepEqual(got.warnings, []);
    assert.deepEqual(plain(got.records), plain([
      { tsUs: 5_000_000, linkType: 113, origLen: d(0).length, data: d(0) },
      { tsUs: 6_000_000, linkType: 1, origLen: 1500, data: d(1) },
      { tsUs: 7_000_000, linkType: 276, origLen: d(2).length, data: d(2) },
      { tsUs: 8_000_000, linkType: 101, origLen: d(3).length, data: d(3) },
    ]));
  });

  test('pcapng simple packet block: first interface, min(original length, snap length, block), previous timestamp', () => {
    const data = Uint8Array.from({ length: 30 }, (_, i) => i);
    const bytes = encodePcapng([
      { kind: 'shb', le: false },
      { kind: 'idb', linkType: 101, snapLen: 24 },
      { kind: 'idb', linkType: 1 },
      { kind: 'epb', iface: 1, ts: 42n, data: data.subarray(0, 14) },
      { kind: 'spb', data }, // more bytes than the snap length
      { kind: 'spb', data: data.subarray(0, 20), origLen: 1000 }, // fewer bytes than the original length
      { kind: 'spb', data: data.subarray(0, 7) }, // 7 bytes: the block pads, the length does not
    ]);
    const got = readCapture(bytes);
    assert.deepEqual(plain(got.records.slice(1)), plain([
      { tsUs: 42, linkType: 101, origLen: 30, data: data.subarray(0, 24) },
      { tsUs: 42, linkType: 101, origLen: 1000, data: data.subarray(0, 20) },
      { tsUs: 42, linkType: 101, origLen: 7, data: data.subarray(0, 7) },
    ]));
    assert.equal(got.warnings.length, 1);
    assert.match(got.warnings[0], /no timestamp/);
  });
});

// --- link layers -------------------------------------------------------------------------------------

/** IPv4 header (20 bytes) + TCP header (20 bytes). */
const IPV4 = cat([0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2], new Uint8Array(20));
/** IPv6 header (40 bytes) + TCP header (20 bytes). */
const IPV6 = cat([0x60, 0, 0, 0, 0, 20, 6, 64], new Uint8Array(32).fill(0xfe), new Uint8Array(20));

const MAC = new Array(12).fill(0x02);
const vlan = (tpid: number) => [tpid >> 8, tpid & 0xff, 0x00, 0x07];
const sll = (proto: number) => [0, 0, 0, 1, 0, 6, ...MAC.slice(0, 8), proto >> 8, proto & 0xff];
const sll2 = (proto: number) => [proto >> 8, proto & 0xff, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, ...MAC.slice(0, 8)];

interface LinkCase { name: string; linkType: number; frame: Uint8Array; want: number; version?: 4 | 6 }

function linkCases(): LinkCase[] {
  const cases: LinkCase[] = [];
  for (const [ip, version, et, af] of [[IPV4, 4, 0x0800, [2]], [IPV6, 6, 0x86dd, [10, 24, 28, 30]]] as const) {
    const e = [et >> 8, et & 0xff];
    const ok = (name: string, linkType: number, head: number[]) =>
      cases.push({ name: `${name} IPv${version}`, linkType, frame: cat(head, ip), want: head.length, version });
    ok('Ethernet', 1, [...MAC, ...e]);
    ok('Ethernet 802.1Q', 1, [...MAC, ...vlan(0x8100), ...e]);
    ok('Ethernet 802.1ad+802.1Q', 1, [...MAC, ...vlan(0x88a8), ...vlan(0x8100), ...e]);
    ok('Ethernet 4 tags', 1, [...MAC, ...vlan(0x88a8), ...vlan(0x9100), ...vlan(0x8100), ...vlan(0x8100), ...e]);
    ok('SLL', 113, sll(et));
    ok('SLL 802.1Q', 113, [...sll(0x8100), 0, 7, ...e]);
    ok('SLL2', 276, sll2(et));
    for (const f of af) {
      ok(`null AF ${f} little-endian`, 0, [f, 0, 0, 0]);
      ok(`null AF ${f} big-endian`, 0, [0, 0, 0, f]);
      ok(`LOOP AF ${f}`, 108, [0, 0, 0, f]);
    }
    const ppp = version === 4 ? [0x00, 0x21] : [0x00, 0x57];
    ok('PPP', 9, [0xff, 0x03, ...ppp]);
    ok('PPP without address/control', 9, ppp);
    ok('PPP compressed protocol', 9, [ppp[1]]);
    ok('PPP_HDLC', 50, [0xff, 0x03, ...ppp]);
    ok('PPP_HDLC Cisco', 50, [0x0f, 0x00, ...e]);
    ok('PPP_HDLC Cisco broadcast', 50, [0x8f, 0x00, ...e]);
    ok('RAW', 101, []);
    ok('BSD RAW 12', 12, []);
    ok(version === 4 ? 'IPV4' : 'IPV6', version === 4 ? 228 : 229, []);
  }
  const bad = (name: string, linkType: number, frame: Uint8Array | number[]) =>
    cases.push({ name, linkType, frame: frame instanceof Uint8Array ? frame : Uint8Array.from(frame), want: -1 });
  bad('ARP over Ethernet', 1, cat([...MAC, 0x08, 0x06], new Uint8Array(28)));
  bad('Ethernet says IPv4, holds IPv6', 1, cat([...MAC, 0x08, 0x00], IPV6));
  bad('Ethernet 5 VLAN tags', 1, cat([...MAC, ...vlan(0x8100), ...vlan(0x8100), ...vlan(0x8100), ...vlan(0x8100), ...vlan(0x8100), 0x08, 0x00], IPV4));
  bad('Ethernet VLAN tag cut short', 1, [...MAC, 0x81, 0x00, 0x00]);
  bad('Ethernet 13 bytes', 1, MAC.concat([0x08]));
  bad('Ethernet, IPv4 header cut at 19 bytes', 1, cat([...MAC, 0x08, 0x00], IPV4.subarray(0, 19)));
  bad('Ethernet, IPv6 header cut at 39 bytes', 1, cat([...MAC, 0x86, 0xdd], IPV6.subarray(0, 39)));
  bad('SLL 15 bytes', 113, sll(0x0800).slice(0, 15));
  bad('SLL2 ARP', 276, cat(sll2(0x0806), new Uint8Array(28)));
  bad('RAW version 5', 101, cat([0x55], IPV4.subarray(1)));
  bad('RAW empty', 101, []);
  bad('IPV4 link type holding IPv6', 228, IPV6);
  bad('IPV6 link type holding IPv4', 229, IPV4);
  bad('null AF 7', 0, cat([7, 0, 0, 0], IPV4));
  bad('null AF_INET with IPv6 inside', 0, cat([2, 0, 0, 0], IPV6));
  bad('null garbage family', 0, cat([2, 0, 0, 2], IPV4));
  bad('LOOP in little-endian order', 108, cat([2, 0, 0, 0], IPV4));
  bad('PPP LCP', 9, cat([0xff, 0x03, 0xc0, 0x21], IPV4));
  bad('PPP_HDLC bad control', 50, cat([0xff, 0x05, 0x00, 0x21], IPV4));
  bad('unknown link type 147', 147, IPV4);
  return cases;
}

describe('ipOffset', () => {
  for (const c of linkCases()) {
    test(`${linkTypeName(c.linkType)}: ${c.name} -> ${c.want}`, () => {
      const off = ipOffset(c.linkType, c.frame);
      assert.equal(off, c.want);
      if (c.version !== undefined) assert.equal(c.frame[off] >> 4, c.version);
    });
  }

  test('linkTypeName', () => {
    assert.equal(linkTypeName(LinkType.LinuxSll2), 'LINUX_SLL2');
    assert.equal(linkTypeName(LinkType.Ethernet), 'ETHERNET');
    assert.equal(linkTypeName(LinkType.Null), 'NULL');
    assert.equal(linkTypeName(147), 'LINKTYPE 147');
  });

  test('property: never throws; -1 or a whole IP header of a valid version inside the frame', () => {
    const linkTypes = [0, 1, 9, 12, 50, 101, 108, 113, 228, 229, 276];
    // Frames start with plausible link headers so the deeper paths get exercised.
    const prefix = fc.constantFrom<number[]>([], [0x02, 0, 0, 0], [0, 0, 0, 0x1e], [0xff, 0x03, 0x00, 0x21], [0x0f, 0, 0x86, 0xdd], [...MAC, 0x81, 0x00], [...MAC, 0x08, 0x00], [0x45], [0x60]);
    fc.assert(
      fc.property(fc.oneof(fc.constantFrom(...linkTypes), fc.integer({ min: -1, max: 70000 })), prefix, fc.uint8Array({ maxLength: 80 }), (lt, head, tail) => {
        const frame = cat(head, tail);
        const off = ipOffset(lt, frame);
        if (off === -1) return;
        assert.ok(Number.isInteger(off) && off >= 0);
        const v = frame[off] >> 4;
        assert.ok(v === 4 || v === 6);
        assert.ok(off + (v === 4 ? 20 : 40) <= frame.length);
      }),
      { numRuns: 3000 },
    );
  });
});

// --- malformed input ---------------------------------------------------------------------------------

function assertCaptureError(bytes: Uint8Array, offset: number, message: RegExp): void {
  // The same error, whole or streamed in small chunks (records before it may come out first).
  for (const read of [() => readCapture(bytes), () => [...openCapture(sourceOf(bytes), { chunkBytes: 5 })]]) assertThrowsAt(read, offset, message);
}

function assertThrowsAt(read: () => unknown, offset: number, message: RegExp): void {
  assert.throws(
    read,
    (e: unknown) => {
      assert.ok(e instanceof CaptureFormatError, `not a CaptureFormatError: ${String(e)}`);
      assert.equal(e.code, 'EBADCAPTURE');
      assert.equal(e.offset, offset, e.message);
      assert.match(e.message, message);
      assert.ok(e.message.includes(`byte offset ${offset}`), e.message);
      return true;
    },
  );
}

/** A copy of `bytes` with a 32-bit value written at `off`. */
function patched(bytes: Uint8Array, off: number, value: number, le = true): Uint8Array {
  const copy = bytes.slice();
  new DataView(copy.buffer).setUint32(off, value, le);
  return copy;
}

describe('malformed captures', () => {
  const pcap = load(SHARED, 'tcpdump/mptcp-aa-echo.pcap'); // 2 records: at 24 (len 106) and 146
  const recs = readCapture(pcap).records;
  const secondAt = 24 + 16 + recs[0].data.length;
  const ng = toPcapng(recs, true); // SHB, IDB, EPB, EPB
  const shbLen = new DataView(ng.buffer).getUint32(4, true);
  const idbAt = shbLen;
  const epbAt = idbAt + new DataView(ng.buffer).getUint32(idbAt + 4, true);
  const epbLen = new DataView(ng.buffer).getUint32(epbAt + 4, true);

  test('empty, tiny and foreign files', () => {
    assertCaptureError(new Uint8Array(0), 0, /not a pcap or pcapng file: only 0 bytes/);
    assertCaptureError(Uint8Array.from([0xd4, 0xc3, 0xb2]), 0, /not a pcap or pcapng file/);
    assertCaptureError(new TextEncoder().encode('GET / HTTP/1.1\r\n\r\n'), 0, /not a pcap or pcapng file: magic 0x47455420/);
    assertCaptureError(Uint8Array.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]), 0, /gzip/);
    assertCaptureError(Uint8Array.from([0x34, 0xcd, 0xb2, 0xa1, 2, 0, 4, 0]), 0, /Kuznetzov/);
  });

  test('pcap: truncated file header and unsupported version', () => {
    assertCaptureError(pcap.subarray(0, 23), 0, /pcap file header truncated: 23 of 24 bytes/);
    assertCaptureError(patched(pcap, 4, 0x00040003), 4, /pcap version 3\.4 is not supported/);
  });

  test('pcap: the FCS bits above the low 16 of the link-type field are not part of the link type', () => {
    const got = readCapture(patched(pcap, 20, 0x14000000 | 113));
    assert.deepEqual(plain(got.records), plain(recs));
  });

  test('pcap: a header with no records is an empty capture', () => {
    assert.deepEqual(readCapture(pcap.subarray(0, 24)), { format: 'pcap', records: [], warnings: [] });
  });

  test('pcap: truncated final record or record header is a warning; earlier records are kept', () => {
    const cutData = readCapture(pcap.subarray(0, pcap.length - 1));
    assert.equal(cutData.records.length, 1);
    assert.deepEqual(plain(cutData.records), plain(recs.slice(0, 1)));
    assert.match(cutData.warnings.join(), new RegExp(`record at byte offset ${secondAt} truncated`));
    const cutHeader = readCapture(pcap.subarray(0, secondAt + 10));
    assert.equal(cutHeader.records.length, 1);
    assert.match(cutHeader.warnings.join(), new RegExp(`record header at byte offset ${secondAt} truncated: 10 of 16`));
  });

  test('pcap: an absurd captured length is an error at its record', () => {
    assertCaptureError(patched(pcap, secondAt + 8, 300_000), secondAt, /captured length 300000 exceeds the limit of 262144/);
    assertCaptureError(patched(pcap, 24 + 8, 0xffffffff), 24, /captured length 4294967295/);
  });

  test('pcap: snap length above 256 KiB raises the limit (GRO captures) but not past 16 MiB', () => {
    const w = new PcapWriter(101, 1 << 20);
    w.add(1, cat(IPV4, new Uint8Array(300_000)));
    assert.equal(readCapture(w.toBytes()).records[0].data.length, 300_040);
    const huge = patched(w.toBytes(), 16, 0xffffffff);
    assert.deepEqual(readCapture(huge).records.length, 1);
    assertCaptureError(patched(huge, 24 + 8, 16 * 1024 * 1024 + 1), 24, /limit of 16777216/);
  });

  test('pcapng: the fixture is valid to begin with', () => {
    assert.deepEqual(plain(readCapture(ng).records), plain(recs));
  });

  test('pcapng: block length not a multiple of 4, below 12, past the end', () => {
    assertCaptureError(patched(ng, epbAt + 4, epbLen + 2), epbAt, /total length \d+, not a multiple of 4/);
    assertCaptureError(patched(ng, epbAt + 4, 8), epbAt, /total length 8, below 12/);
    assertCaptureError(patched(ng, epbAt + 4, 0), epbAt, /total length 0, below 12/);
    assertCaptureError(patched(ng, epbAt + 4, 0xfffffffc), epbAt, /only \d+ bytes remain/);
    assertCaptureError(ng.subarray(0, ng.length - 4), epbAt + epbLen, /only \d+ bytes remain/);
  });

  test('pcapng: trailing length unequal to leading length', () => {
    assertCaptureError(patched(ng, idbAt + new DataView(ng.buffer).getUint32(idbAt + 4, true) - 4, 999), idbAt, /trailing length 999 unequal to its leading length/);
    // A trailing length that would itself be a valid block length still has to match.
    assertCaptureError(patched(ng, epbAt + epbLen - 4, epbLen - 4), epbAt, /trailing length/);
  });

  test('pcapng: truncated block header, bad byte-order magic, unsupported version', () => {
    assertCaptureError(cat(ng, [1, 0, 0, 0, 12, 0, 0, 0]), ng.length, /block header truncated: 8 of 12/);
    assertCaptureError(patched(ng, 8, 0x12345678), 8, /bad byte-order magic 0x12345678/);
    assertCaptureError(patched(ng, 12, 0x00000002), 12, /major version 2 is not supported/);
    assertCaptureError(ng.subarray(0, 11), 0, /block header truncated: 11 of 12/);
  });

  test('pcapng: block too short for its type, bad captured length, unknown interface', () => {
    const shortShb = cat(ngBlock(0x0a0d0d0a, [...u32(0x1a2b3c4d, true), 1, 0, 0, 0], true));
    assertCaptureError(shortShb, 0, /section header block has total length 20, below its minimum 28/);
    const shortEpb = encodePcapng([{ kind: 'shb', le: true }, { kind: 'idb', linkType: 1 }, { kind: 'other', type: 6, body: new Uint8Array(16) }]);
    assertCaptureError(shortEpb, epbAt, /enhanced packet block has total length 28, below its minimum 32/);
    assertCaptureError(patched(ng, epbAt + 20, epbLen - 31), epbAt + 20, /captured length \d+ but room for \d+/);
    assertCaptureError(patched(ng, epbAt + 8, 1), epbAt + 8, /names interface 1, but the section has 1/);
    const spbFirst = encodePcapng([{ kind: 'shb', le: true }, { kind: 'spb', data: IPV4 }]);
    assertCaptureError(spbFirst, shbLen, /simple packet block comes before any interface/);
  });

  test('pcapng: interface options that overrun or have the wrong size', () => {
    // IDB: header(8) linktype/reserved/snaplen(8), then if_tsresol claiming 200 bytes
    const overrun = cat(ng.subarray(0, shbLen), ngBlock(1, [1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 200, 0, 6, 0, 0, 0], true));
    assertCaptureError(overrun, shbLen + 16, /interface option 9 has length 200 past the end/);
    const wrongSize = cat(ng.subarray(0, shbLen), ngBlock(1, [1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 0, 6, 6, 0, 0], true));
    assertCaptureError(wrongSize, shbLen + 16, /if_tsresol option has length 2, expected 1/);
  });

  test('property: random bytes only ever yield a capture or a CaptureFormatError', () => {
    const magics = [[0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d], [0x0a, 0x0d, 0x0d, 0x0a], []];
    fc.assert(
      fc.property(fc.constantFrom(...magics), fc.uint8Array({ maxLength: 400 }), (magic, rest) => {
        checkTotal(cat(magic, rest));
      }),
      { numRuns: 2000 },
    );
  });

  test('property: corrupted and truncated valid files only ever yield a capture or a CaptureFormatError', () => {
    const multi = encodePcapng([
      { kind: 'shb', le: false },
      { kind: 'idb', linkType: 113, snapLen: 64, tsresol: 0x80 | 20, tsoffset: -5n },
      { kind: 'epb', iface: 0, ts: 123456789n, data: recs[0].data.subarray(0, 64), origLen: 200 },
      { kind: 'spb', data: recs[1].data.subarray(0, 40) },
      { kind: 'shb', le: true },
      { kind: 'idb', linkType: 1, tsresol: 0xff },
      { kind: 'opb', iface: 0, ts: 2n ** 64n - 1n, data: recs[1].data },
    ]);
    const valid = [pcap, ng, multi, encodePcap(recs, { le: false, nanos: true, linkType: 113, snapLen: 100 })];
    for (const v of valid) checkTotal(v);
    fc.assert(
      fc.property(
        fc.constantFrom(...valid),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.option(fc.nat()),
        (base, edits, cut) => {
          const bytes = base.slice();
          for (const [pos, val] of edits) bytes[pos % bytes.length] = val;
          checkTotal(cut === null ? bytes : bytes.subarray(0, cut % (bytes.length + 1)));
        },
      ),
      { numRuns: 3000 },
    );
  });
});

/**
 * readCapture is total: a result whose records are sane, or a CaptureFormatError with an offset inside the input.
 * A streamed read in small chunks gives the same records, warnings and error.
 */
function checkTotal(bytes: Uint8Array, chunkBytes = 1 + (bytes.length % 13)): void {
  const streamed: CaptureRecord[] = [];
  let streamError: unknown = null, streamWarnings: string[] = [];
  try {
    const r = openCapture(sourceOf(bytes), { chunkBytes });
    for (let rec = r.read(); rec !== null; rec = r.read()) streamed.push(rec);
    streamWarnings = r.warnings;
  } catch (e) {
    streamError = e;
  }
  let result;
  try {
    result = readCapture(bytes);
  } catch (e) {
    if (!(e instanceof CaptureFormatError)) throw new Error(`threw ${String(e)}`);
    assert.ok(Number.isInteger(e.offset) && e.offset >= 0 && e.offset <= bytes.length, `offset ${e.offset}`);
    assert.ok(streamError instanceof CaptureFormatError, `streamed: ${String(streamError)}`);
    assert.equal(streamError.message, e.message);
    return;
  }
  assert.equal(streamError, null);
  assert.deepEqual(plain(streamed), plain(result.records));
  assert.deepEqual(streamWarnings, result.warnings);
  for (const r of result.records) {
    assert.ok(Number.isFinite(r.tsUs));
    assert.ok(r.data.byteOffset >= bytes.byteOffset && r.data.byteOffset + r.data.length <= bytes.byteOffset + bytes.length);
    // With the link layer stripped, whatever is found must lie in the frame.
    const off = ipOffset(r.linkType, r.data);
    assert.ok(off === -1 || (off >= 0 && off < r.data.length));
  }
}

// --- streaming -----------------------------------------------------------------------------------------

/** A ByteSource over bytes in memory (as a file would give them), counting what is read. */
function sourceOf(bytes: Uint8Array, stats = { reads: 0, bytes: 0 }): ByteSource & { stats: typeof stats } {
  return {
    size: bytes.length,
    stats,
    readAt(into, offset, length, position) {
      const n = Math.max(0, Math.min(length, bytes.length - position));
      into.set(bytes.subarray(position, position + n), offset);
      stats.reads++;
      stats.bytes += n;
      return n;
    },
  };
}

describe('streaming reader', () => {
  const files = [
    ...SHARED_CAPTURES.map((c) => load(SHARED, c.file)),
    ...readdirSync(FIXTURES).filter((f) => /\.pcap(ng)?$/.test(f)).map((f) => load(FIXTURES, f)),
  ];

  test('every capture and fixture reads the same streamed in chunks of 1, 3, 16, 100 and 4096 bytes as whole', () => {
    for (const bytes of files) {
      const whole = readCapture(bytes);
      for (const chunkBytes of [1, 3, 16, 100, 4096]) {
        const r = openCapture(sourceOf(bytes), { chunkBytes });
        assert.equal(r.format, whole.format);
        // Collected first, compared after: a record stays valid while later ones are read.
        const recs = [...r];
        assert.deepEqual(plain(recs), plain(whole.records));
        assert.deepEqual(r.warnings, whole.warnings);
        assert.equal(r.count, whole.records.length);
      }
    }
  });

  test('reads lazily: one chunk per record batch, not the whole file', () => {
    const w = new PcapWriter(101);
    for (let i = 0; i < 1000; i++) w.add(i, IPV4);
    const bytes = w.toBytes(); // 56 bytes a record
    const src = sourceOf(bytes);
    const r = openCapture(src, { chunkBytes: 1024 });
    assert.ok(r.read() !== null);
    assert.ok(src.stats.bytes <= 1024, `${src.stats.bytes} bytes read for the first record`);
    for (let i = 1; i < 500; i++) r.read();
    assert.ok(src.stats.bytes <= 24 + 500 * 56 + 1024, `${src.stats.bytes} bytes read for 500 records`);
    assert.equal([...r].length, 500);
    assert.equal(src.stats.bytes, bytes.length, 'each byte read once');
    assert.equal(r.read(), null);
  });

  test('openCaptureFile reads a file in chunks; close() closes it; errors name the offset as in memory', () => {
    const dir = mkdtempSync(`${tmpdir()}/mplb-pcap-`);
    try {
      const bytes = load(SHARED, 'linux-v1/mptcp-v1-joins.pcap');
      writeFileSync(`${dir}/a.pcap`, bytes);
      const r = openCaptureFile(`${dir}/a.pcap`, { chunkBytes: 64 });
      assert.deepEqual(plain([...r]), plain(readCapture(bytes).records));
      const again = openCaptureFile(`${dir}/a.pcap`);
      assert.ok(again.read() !== null);
      again.close();
      assert.equal(again.read(), null);
      again.close();
      writeFileSync(`${dir}/bad.pcap`, cat(bytes.subarray(0, 24), [0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
      assertThrowsAt(() => [...openCaptureFile(`${dir}/bad.pcap`)], 24, /captured length 4294967295 exceeds the limit/);
      writeFileSync(`${dir}/text.pcap`, 'hello, world');
      assertThrowsAt(() => openCaptureFile(`${dir}/text.pcap`), 0, /not a pcap or pcapng file: magic/);
      assert.throws(() => openCaptureFile(`${dir}/missing.pcap`), /ENOENT/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('pcapng: at most 65536 interface descriptions per section (each is kept for the section)', () => {
    const idbs = (n: number) => encodePcapng([{ kind: 'shb', le: true }, ...Array.from({ length: n }, () => ({ kind: 'idb', linkType: 101 }) as const)]);
    assert.deepEqual(readCapture(idbs(65536)).records, []);
    const over = idbs(65537);
    const shb = new DataView(over.buffer).getUint32(4, true), idb = new DataView(over.buffer).getUint32(shb + 4, true);
    assertCaptureError(over, shb + 65536 * idb, /more than 65536 interface descriptions/);
  });

  test('pcapng: a huge block without packets is skipped unread; a huge packet block is refused, not buffered', () => {
    // SHB, IDB, a 40 MiB custom block, an EPB: made on the fly by a source that never holds the big block.
    const head = encodePcapng([{ kind: 'shb', le: true }, { kind: 'idb', linkType: 101 }]);
    const epb = encodePcapng([{ kind: 'shb', le: true }, { kind: 'idb', linkType: 101 }, { kind: 'epb', iface: 0, ts: 7n, data: IPV4 }]).subarray(head.length);
    const big = 40 << 20;
    const bigBlock = (type: number): ByteSource & { stats: { reads: number; bytes: number } } => {
      const stats = { reads: 0, bytes: 0 };
      const size = head.length + big + epb.length;
      const byteAt = (p: number): number => {
        if (p < head.length) return head[p];
        const q = p - head.length;
        if (q < big) {
          const lenAt = q < 8 ? q - 4 : q - (big - 4);
          if (q < 4) return (type >>> (8 * q)) & 0xff;
          if (lenAt >= 0 && lenAt < 4) return (big >>> (8 * lenAt)) & 0xff;
          return 0;
        }
        return epb[q - big];
      };
      return {
        size, stats,
        readAt(into, offset, length, position) {
          const n = Math.max(0, Math.min(length, size - position));
          for (let i = 0; i < n; i++) into[offset + i] = byteAt(position + i);
          stats.reads++;
          stats.bytes += n;
          return n;
        },
      };
    };
    const custom = bigBlock(0x00000bad);
    const recs = [...openCapture(custom)];
    assert.equal(recs.length, 1);
    assert.equal(recs[0].tsUs, 7);
    assert.ok(custom.stats.bytes < 3 * CHUNK_BYTES, `${custom.stats.bytes} bytes read`);
    assertThrowsAt(() => [...openCapture(bigBlock(6))], head.length, /enhanced packet|above the limit/);
    assertThrowsAt(() => [...openCapture(bigBlock(6))], head.length, /total length 41943040, above the limit of \d+ bytes/);
  });
});

// --- writer ------------------------------------------------------------------------------------------

describe('PcapWriter', () => {
  test('round trip through readCapture, with snap-length truncation and original lengths', () => {
    const w = new PcapWriter(LinkType.Raw, 48);
    w.add(0, IPV4);
    w.add(1_700_000_000_123_456, IPV6, 1500); // 60 bytes, cut to 48
    w.add(2 ** 32 * 1e6 - 1, IPV4.subarray(0, 20), 20); // last representable µs
    const got = readCapture(w.toBytes());
    assert.equal(got.format, 'pcap');
    assert.deepEqual(got.warnings, []);
    assert.deepEqual(plain(got.records), plain([
      { tsUs: 0, linkType: 101, origLen: 40, data: IPV4 },
      { tsUs: 1_700_000_000_123_456, linkType: 101, origLen: 1500, data: IPV6.subarray(0, 48) },
      { tsUs: 2 ** 32 * 1e6 - 1, linkType: 101, origLen: 20, data: IPV4.subarray(0, 20) },
    ]));
  });

  test('copies the data it is given', () => {
    const buf = IPV4.slice();
    const w = new PcapWriter(LinkType.Raw);
    w.add(5, buf);
    buf.fill(0);
    assert.equal(hex(readCapture(w.toBytes()).records[0].data), hex(IPV4));
  });

  test('an empty writer is a valid empty capture', () => {
    const bytes = new PcapWriter(LinkType.Ethernet).toBytes();
    assert.equal(bytes.length, 24);
    assert.deepEqual(readCapture(bytes), { format: 'pcap', records: [], warnings: [] });
  });

  test('PcapFileWriter writes the same bytes as PcapWriter, through a buffer smaller than some records', () => {
    const dir = mkdtempSync(`${tmpdir()}/mplb-pcapw-`);
    try {
      const mem = new PcapWriter(LinkType.Raw, 300);
      const file = new PcapFileWriter(`${dir}/out.pcap`, LinkType.Raw, 300, 100);
      const big = cat(IPV4, new Uint8Array(400));
      for (const [t, d] of [[1, IPV4], [2, big], [3, IPV6], [PCAP_MAX_TS_US, IPV4]] as [number, Uint8Array][]) {
        mem.add(t, d);
        file.add(t, d);
      }
      assert.equal(file.count, 4);
      file.close();
      file.close();
      assert.equal(hex(new Uint8Array(readFileSync(`${dir}/out.pcap`))), hex(mem.toBytes()));
      assert.throws(() => file.add(5, IPV4), /closed/);
      assert.throws(() => new PcapFileWriter(`${dir}/out2.pcap`, 1).add(2 ** 32 * 1e6, IPV4), RangeError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('rejects arguments pcap cannot represent', () => {
    assert.throws(() => new PcapWriter(-1), RangeError);
    assert.throws(() => new PcapWriter(1, 0), RangeError);
    const w = new PcapWriter(1);
    assert.throws(() => w.add(-1, IPV4), RangeError);
    assert.throws(() => w.add(2 ** 32 * 1e6, IPV4), RangeError);
    assert.throws(() => w.add(Number.NaN, IPV4), RangeError);
    assert.throws(() => w.add(0, IPV4, 39), RangeError); // shorter on the wire than captured
  });

  test('pcapTimestampUs: the nearest time pcap holds, and every result is accepted by add', () => {
    assert.equal(pcapTimestampUs(1_700_000_000_123_456), 1_700_000_000_123_456);
    assert.equal(pcapTimestampUs(PCAP_MAX_TS_US), 2 ** 32 * 1e6 - 1);
    assert.equal(pcapTimestampUs(0xffffffff * 1e6 + 1e6), PCAP_MAX_TS_US); // ts_sec 0xffffffff, ts_usec 1000000
    assert.equal(pcapTimestampUs(1e25), PCAP_MAX_TS_US); // a pcapng time far past 2106
    assert.equal(pcapTimestampUs(-5), 0); // a negative if_tsoffset
    assert.equal(pcapTimestampUs(Number.NaN), 0);
    assert.equal(pcapTimestampUs(12.7), 12);
    const w = new PcapWriter(1);
    for (const t of [-1e20, -1, 0, 1.5, PCAP_MAX_TS_US, PCAP_MAX_TS_US + 1, 1e30, Infinity, -Infinity, NaN]) w.add(pcapTimestampUs(t), IPV4);
    assert.equal(readCapture(w.toBytes()).records.length, 10);
  });
});
