// A fuzz test of `mplb replay` with mutated real captures, in CI: a fixed seed, a fixed number of cases, a time bound.
// Bases: every capture in ../shared/pcaps and captures/, the tcpdump fixtures (pcapng among them), and pcapng copies of
// the MPTCP ones. Each case applies 1-3 seeded mutations that know the structure they hit (pcap record and pcapng
// block lengths and timestamps, IPv4/IPv6/TCP header fields, TCP and MPTCP option lengths, subtypes and payloads,
// bit flips, truncation, concatenation, records duplicated or swapped), replays the result in process with random
// options (and a few through the CLI with --pcap-out), and checks: no exception but a clean refusal
// (CaptureFormatError, ReplayError), no engine exception, and a well-formed result whose counts add up.
// Larger runs: MPLB_FUZZ_CASES=50000 MPLB_FUZZ_SEED=7 node --test dist/test/replay-fuzz.test.js
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { CaptureFormatError, PCAP_MAX_TS_US, PcapWriter, readCapture, type CaptureRecord } from '../src/io/pcap.js';
import { replayCaptures, ReplayError, type ReplayOptions, type ReplayResult } from '../src/replay/replay.js';
import { ipOffset } from '../src/wire/link-layer.js';
import { VERDICT_LABELS } from '../src/engine/engine.js';

const SEED = Number(process.env.MPLB_FUZZ_SEED ?? 0x6d706c62);
const CASES = Number(process.env.MPLB_FUZZ_CASES ?? 6000);
const CLI_CASES = Number(process.env.MPLB_FUZZ_CLI_CASES ?? 12);
/** The CI bound on this 2-core machine (the cases take about a third of it). */
const BUDGET_MS = Number(process.env.MPLB_FUZZ_BUDGET_MS ?? 60_000);

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SHARED = fileURLToPath(new URL('../../../shared/pcaps/', import.meta.url));
const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const CRASHES = `${ROOT}test/fixtures/replay-crashes/`;

// --- seeded randomness --------------------------------------------------------------------------------------------

/** mulberry32: small, fast, and the same sequence everywhere for a seed. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return { next, int, pick: <T>(xs: readonly T[]): T => xs[int(xs.length)], chance: (p: number) => next() < p };
}
type Rng = ReturnType<typeof rng>;

// --- the bases and their structure --------------------------------------------------------------------------------

interface RecordMap {
  /** File offset of the pcap record header or the pcapng block. */
  at: number;
  /** File offset and length of the captured bytes. */
  data: number;
  capLen: number;
  /** File offsets of the IP header, the TCP header and the TCP options (-1 when absent). */
  ip: number;
  ipVersion: number;
  tcp: number;
  optStart: number;
  optEnd: number;
  /** File offsets of MPTCP options (kind 30). */
  mptcp: number[];
}

interface Base { name: string; bytes: Uint8Array; format: 'pcap' | 'pcapng'; le: boolean; records: RecordMap[]; blocks: number[] }

function walkIp(bytes: Uint8Array, rec: RecordMap, linkType: number): void {
  const frame = bytes.subarray(rec.data, rec.data + rec.capLen);
  const off = ipOffset(linkType, frame);
  if (off < 0) return;
  rec.ip = rec.data + off;
  rec.ipVersion = bytes[rec.ip] >> 4;
  let tcp = -1;
  if (rec.ipVersion === 4 && bytes[rec.ip + 9] === 6) tcp = rec.ip + ((bytes[rec.ip] & 15) << 2);
  else if (rec.ipVersion === 6 && bytes[rec.ip + 6] === 6) tcp = rec.ip + 40;
  const end = rec.data + rec.capLen;
  if (tcp < 0 || tcp + 20 > end) return;
  rec.tcp = tcp;
  rec.optStart = tcp + 20;
  rec.optEnd = Math.min(end, tcp + ((bytes[tcp + 12] >> 4) << 2));
  for (let o = rec.optStart; o < rec.optEnd;) {
    const kind = bytes[o];
    if (kind === 0) break;
    if (kind === 1) { o++; continue; }
    const len = bytes[o + 1];
    if (len < 2 || o + len > rec.optEnd) break;
    if (kind === 30) rec.mptcp.push(o);
    o += len;
  }
}

function mapCapture(name: string, bytes: Uint8Array): Base {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const records: RecordMap[] = [], blocks: number[] = [];
  const fresh = (at: number, data: number, capLen: number): RecordMap => ({ at, data, capLen, ip: -1, ipVersion: 0, tcp: -1, optStart: -1, optEnd: -1, mptcp: [] });
  if (v.getUint32(0, true) === 0x0a0d0d0a) {
    const le = v.getUint32(8, true) === 0x1a2b3c4d;
    const links: number[] = [];
    for (let o = 0; o + 12 <= bytes.length;) {
      const type = v.getUint32(o, le), total = v.getUint32(o + 4, le);
      if (total < 12 || o + total > bytes.length) break;
      blocks.push(o);
      if (type === 0x0a0d0d0a) links.length = 0;
      if (type === 1) links.push(v.getUint16(o + 8, le));
      if (type === 6) {
        const rec = fresh(o, o + 28, v.getUint32(o + 20, le));
        walkIp(bytes, rec, links[v.getUint32(o + 8, le)] ?? 1);
        records.push(rec);
      }
      o += total;
    }
    return { name, bytes, format: 'pcapng', le, records, blocks };
  }
  const le = v.getUint32(0, true) === 0xa1b2c3d4 || v.getUint32(0, true) === 0xa1b23c4d;
  const linkType = v.getUint32(20, le) & 0xffff;
  for (let o = 24; o + 16 <= bytes.length;) {
    const capLen = v.getUint32(o + 8, le);
    if (o + 16 + capLen > bytes.length) break;
    const rec = fresh(o, o + 16, capLen);
    walkIp(bytes, rec, linkType);
    records.push(rec);
    o += 16 + capLen;
  }
  return { name, bytes, format: 'pcap', le, records, blocks };
}

/** A pcapng copy (little-endian, one interface with if_tsresol 10^-9) of a capture's records. */
function toPcapng(recs: CaptureRecord[]): Uint8Array {
  const parts: number[] = [];
  const u32 = (n: number) => parts.push(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  const block = (type: number, body: number[]) => { const total = 12 + ((body.length + 3) & ~3); u32(type); u32(total); parts.push(...body); while ((parts.length & 3) !== 0) parts.push(0); u32(total); };
  const shb: number[] = [0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
  block(0x0a0d0d0a, shb);
  const lt = recs[0]?.linkType ?? 1;
  block(1, [lt & 0xff, lt >> 8, 0, 0, 0, 0, 4, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
  for (const r of recs) {
    const ns = BigInt(r.tsUs) * 1000n;
    const body: number[] = [];
    const p32 = (n: number) => body.push(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
    p32(0); p32(Number(ns >> 32n)); p32(Number(ns & 0xffffffffn)); p32(r.data.length); p32(r.origLen);
    body.push(...r.data);
    block(6, body);
  }
  return Uint8Array.from(parts);
}

/** An IPv6 copy (raw IP) of a capture's IPv4 TCP records: 2001:db8::a.b.c.d for a.b.c.d, the TCP segment as it was. */
function toIpv6(recs: CaptureRecord[]): Uint8Array {
  const w = new PcapWriter(101, 65535);
  for (const r of recs) {
    const ip = ipOffset(r.linkType, r.data);
    if (ip < 0 || r.data[ip] >> 4 !== 4 || r.data[ip + 9] !== 6) continue;
    const ihl = (r.data[ip] & 15) << 2;
    const seg = r.data.subarray(ip + ihl);
    const p = new Uint8Array(40 + seg.length);
    p[0] = 0x60; p[4] = seg.length >> 8; p[5] = seg.length & 0xff; p[6] = 6; p[7] = 64;
    p.set([0x20, 0x01, 0x0d, 0xb8], 8); p.set(r.data.subarray(ip + 12, ip + 16), 20);
    p.set([0x20, 0x01, 0x0d, 0xb8], 24); p.set(r.data.subarray(ip + 16, ip + 20), 36);
    p.set(seg, 40);
    w.add(r.tsUs, p, p.length + Math.max(0, r.origLen - r.data.length));
  }
  return w.toBytes();
}

function loadBases(): Base[] {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory()) walk(`${dir}${e.name}/`);
      else if (/\.pcap(ng)?$/.test(e.name)) files.push(`${dir}${e.name}`);
    }
  };
  walk(SHARED);
  walk(`${ROOT}captures/`);
  walk(`${ROOT}test/fixtures/tcpdump-upstream/`);
  const bases = files.sort().map((f) => mapCapture(f.replace(ROOT, '').replace(SHARED, 'shared/'), new Uint8Array(readFileSync(f))));
  for (const b of bases.filter((x) => x.format === 'pcap' && x.records.some((r) => r.mptcp.length > 0)).slice(0, 3)) {
    bases.push(mapCapture(`${b.name} as pcapng`, toPcapng(readCapture(b.bytes).records)));
    bases.push(mapCapture(`${b.name} as IPv6`, toIpv6(readCapture(b.bytes).records)));
  }
  return bases;
}

// --- mutations ----------------------------------------------------------------------------------------------------

const INTERESTING_32 = [0, 1, 2, 3, 4, 15, 16, 19, 20, 39, 40, 64, 127, 128, 255, 256, 1500, 65535, 65536, 262143, 262144, 262145,
  0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 16 * 1024 * 1024, 16 * 1024 * 1024 + 1];
const INTERESTING_8 = [0, 1, 2, 3, 4, 5, 8, 12, 16, 20, 24, 30, 40, 0x7f, 0x80, 0xfe, 0xff];

type Mutation = (r: Rng, b: Uint8Array, base: Base) => Uint8Array;

function put32(b: Uint8Array, at: number, v: number, le: boolean): void {
  if (at < 0 || at + 4 > b.length) return;
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, v >>> 0, le);
}
function put16(b: Uint8Array, at: number, v: number): void {
  if (at < 0 || at + 2 > b.length) return;
  b[at] = (v >>> 8) & 0xff;
  b[at + 1] = v & 0xff;
}
const near = (r: Rng, v: number) => v + r.int(7) - 3;
const someRecord = (r: Rng, base: Base, want?: (x: RecordMap) => boolean): RecordMap | undefined => {
  const xs = want ? base.records.filter(want) : base.records;
  return xs.length ? r.pick(xs) : undefined;
};

const MUTATIONS: Record<string, Mutation> = {
  bitFlips(r, b) {
    for (let i = 1 + r.int(8); i > 0; i--) { const at = r.int(b.length); b[at] ^= 1 << r.int(8); }
    return b;
  },
  interestingBytes(r, b) {
    for (let i = 1 + r.int(4); i > 0; i--) b[r.int(b.length)] = r.pick(INTERESTING_8);
    return b;
  },
  truncate(r, b, base) {
    const rec = someRecord(r, base);
    const cut = rec && r.chance(0.6) ? Math.max(0, near(r, r.chance(0.5) ? rec.at : rec.data + rec.capLen)) : r.int(b.length + 1);
    return b.slice(0, Math.min(cut, b.length));
  },
  recordLengths(r, b, base) {
    const rec = someRecord(r, base);
    if (!rec) return b;
    const v = r.chance(0.5) ? r.pick(INTERESTING_32) : near(r, rec.capLen);
    if (base.format === 'pcap') put32(b, rec.at + r.pick([8, 12]), v, base.le); // captured or original length
    else put32(b, rec.at + r.pick([4, 20, 24]), v, base.le); // block total, captured or original length
    return b;
  },
  timestamps(r, b, base) {
    const rec = someRecord(r, base);
    if (!rec) return b;
    if (base.format === 'pcap') {
      // Among them the record that crashed --pcap-out: ts_sec 0xffffffff, ts_usec 1000000.
      put32(b, rec.at, r.pick([0, 1, 0x7fffffff, 0xfffffffe, 0xffffffff]), base.le);
      put32(b, rec.at + 4, r.pick([0, 999_999, 1_000_000, 999_999_999, 1_000_000_000, 0xffffffff]), base.le);
    } else {
      put32(b, rec.at + 12, r.pick([0, 1, 0x1fffff, 0x200000, 0x7fffffff, 0xffffffff]), base.le);
      put32(b, rec.at + 16, r.pick([0, 0xffffffff, r.int(2 ** 32)]), base.le);
    }
    return b;
  },
  pcapngBlocks(r, b, base) {
    if (base.format !== 'pcapng' || base.blocks.length === 0) return MUTATIONS.recordLengths(r, b, base);
    const at = r.pick(base.blocks);
    const which = r.int(5);
    if (which === 0) put32(b, at, r.pick([0, 1, 2, 3, 5, 6, 0x0a0d0d0a, 0x40000bad]), base.le); // block type
    else if (which === 1) put32(b, at + 4, r.pick(INTERESTING_32), base.le); // leading length
    else if (which === 2) put32(b, at + 8, r.pick([0, 1, 2, 0xffff, 0xffffffff]), base.le); // interface id / byte order
    else if (which === 3) { // an interface option: if_tsresol and if_tsoffset values, option lengths
      for (let o = at + 16; o + 4 <= Math.min(b.length, at + 64); o += 4) {
        if (b[o] === 9 || b[o] === 14) { b[o + 2] = r.pick([0, 1, 2, 8, 200, 255]); if (r.chance(0.5)) b[o + 4] = r.pick([0, 6, 9, 19, 0x7f, 0x80, 0x94, 0xff]); break; }
      }
    } else { // trailing length
      if (at + 8 > b.length) return b;
      const total = new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at + 4, base.le);
      put32(b, at + total - 4, r.pick(INTERESTING_32), base.le);
    }
    return b;
  },
  ipHeader(r, b, base) {
    const rec = someRecord(r, base, (x) => x.ip >= 0);
    if (!rec) return MUTATIONS.bitFlips(r, b, base);
    const ip = rec.ip;
    if (rec.ipVersion === 4) {
      const which = r.int(6);
      if (which === 0) b[ip] = (r.int(16) << 4) | (b[ip] & 15); // version
      else if (which === 1) b[ip] = (b[ip] & 0xf0) | r.int(16); // IHL
      else if (which === 2) put16(b, ip + 2, r.pick([0, 1, 19, 20, 39, 40, near(r, rec.capLen), 1500, 65535])); // total length
      else if (which === 3) b[ip + 9] = r.pick([0, 1, 6, 17, 41, 58, 255]); // protocol
      else if (which === 4) put16(b, ip + 6, r.pick([0x2000, 0x0001, 0x1fff, 0x4000, 0xffff])); // fragments
      else b[ip + r.int(20)] = r.int(256);
    } else if (rec.ipVersion === 6) {
      const which = r.int(4);
      if (which === 0) put16(b, ip + 4, r.pick([0, 1, 19, 20, near(r, rec.capLen - 40), 65535])); // payload length
      else if (which === 1) b[ip + 6] = r.pick([0, 6, 43, 44, 50, 51, 59, 60, 135, 255]); // next header (extensions)
      else if (which === 2) b[ip] = (r.int(16) << 4) | (b[ip] & 15);
      else b[ip + 40 + r.int(8)] = r.int(256); // where an extension header would be
    }
    return b;
  },
  tcpHeader(r, b, base) {
    const rec = someRecord(r, base, (x) => x.tcp >= 0);
    if (!rec) return MUTATIONS.ipHeader(r, b, base);
    const t = rec.tcp;
    const which = r.int(4);
    if (which === 0) b[t + 12] = (r.int(16) << 4) | (b[t + 12] & 15); // data offset
    else if (which === 1) b[t + 13] = r.pick([0x02, 0x12, 0x10, 0x04, 0x14, 0x01, 0x11, 0x03, 0x06, 0xff, 0x00]); // flags
    else if (which === 2) put16(b, t + r.pick([0, 2]), r.pick([0, 1, 80, 5201, 65535])); // ports
    else b[t + r.int(20)] = r.int(256);
    return b;
  },
  tcpOptionLengths(r, b, base) {
    const rec = someRecord(r, base, (x) => x.optEnd > x.optStart);
    if (!rec) return MUTATIONS.tcpHeader(r, b, base);
    const o = rec.optStart + r.int(rec.optEnd - rec.optStart);
    if (r.chance(0.5)) b[o] = r.pick([0, 1, 2, 3, 8, 30, 254, 255]);
    else if (o + 1 < b.length) b[o + 1] = r.pick(INTERESTING_8);
    return b;
  },
  mptcpOptions(r, b, base) {
    const rec = someRecord(r, base, (x) => x.mptcp.length > 0);
    if (!rec) return MUTATIONS.tcpOptionLengths(r, b, base);
    const o = r.pick(rec.mptcp), len = b[o + 1];
    const which = r.int(5);
    if (which === 0) b[o + 1] = r.pick([0, 1, 2, 3, 4, len - 1, len + 1, len + 4, 12, 20, 24, 40, 255]); // option length
    else if (which === 1) b[o + 2] = (r.int(16) << 4) | (b[o + 2] & 15); // subtype
    else if (which === 2) b[o + 2] = (b[o + 2] & 0xf0) | r.int(16); // version / flags nibble
    else if (which === 3) b[o + 3] = r.int(256); // flags (MP_CAPABLE A..H, DSS M/m/A/a, join B)
    else for (let i = 4; i < len && o + i < b.length; i++) if (r.chance(0.3)) b[o + i] = r.int(256); // keys, token, payload
    return b;
  },
  duplicateRecords(r, b, base) {
    // Records repeated (a retransmitted join, a second SYN) or swapped: state machine paths, not parse paths.
    if (base.format !== 'pcap' || base.records.length < 2) return MUTATIONS.bitFlips(r, b, base);
    const recs = base.records.filter((x) => x.at + 16 + x.capLen <= b.length);
    if (recs.length < 2) return b;
    const x = r.pick(recs), y = r.pick(recs);
    const rx = b.slice(x.at, x.at + 16 + x.capLen), ry = b.slice(y.at, y.at + 16 + y.capLen);
    const head = b.subarray(0, Math.min(x.at, y.at));
    if (r.chance(0.5)) return concat([b.subarray(0, x.at + rx.length), ...Array.from({ length: 1 + r.int(4) }, () => rx), b.subarray(x.at + rx.length)]);
    if (x.at === y.at) return b;
    const [first, second, r1, r2] = x.at < y.at ? [x, y, ry, rx] : [y, x, rx, ry];
    return concat([head, r1, b.subarray(first.at + 16 + first.capLen, second.at), r2, b.subarray(second.at + 16 + second.capLen)]);
  },
};

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

interface Case { inputs: { name: string; bytes: Uint8Array }[]; opts: ReplayOptions; what: string[] }

function makeCase(r: Rng, bases: Base[]): Case {
  const what: string[] = [];
  const mutate = (base: Base): Uint8Array => {
    let bytes: Uint8Array = base.bytes.slice();
    for (let i = 1 + r.int(3); i > 0; i--) {
      const name = r.pick(Object.keys(MUTATIONS));
      what.push(`${name}(${base.name})`);
      bytes = MUTATIONS[name](r, bytes, base);
    }
    return bytes;
  };
  const kind = r.int(10);
  let inputs: Case['inputs'];
  if (kind < 7) {
    const base = r.pick(bases);
    inputs = [{ name: base.name, bytes: mutate(base) }];
  } else if (kind < 9) {
    // Several files in one replay: state carried across them, one of them mutated.
    const picked = Array.from({ length: 2 + r.int(2) }, () => r.pick(bases));
    const m = r.int(picked.length);
    inputs = picked.map((b, i) => ({ name: b.name, bytes: i === m ? mutate(b) : b.bytes }));
    what.push(`files(${picked.map((b) => b.name).join(' + ')})`);
  } else {
    // Files concatenated into one: the second header is read as records (pcap) or a new section (pcapng).
    const picked = Array.from({ length: 2 + r.int(2) }, () => r.pick(bases));
    const joined = concat(picked.map((b) => b.bytes));
    inputs = [{ name: 'concatenated', bytes: r.chance(0.5) ? joined : MUTATIONS.bitFlips(r, joined, picked[0]) }];
    what.push(`concat(${picked.map((b) => b.name).join(' + ')})`);
  }
  const opts: ReplayOptions = {
    backends: r.pick([1, 2, 2, 3, 5, 250]),
    policy: r.pick(['maglev', 'hash-5tuple', 'hash-ip-pair'] as const),
    aware: r.chance(0.7),
    unknownTokenAnswer: r.pick(['hash', 'drop', 'reset'] as const),
    pcapOut: r.chance(0.3),
    maxVips: r.pick([256, 256, 256, 2, 1]),
    // Mostly the default (sized by the capture's SYNs); now and then tables of 16 that overflow.
    tables: r.pick([undefined, undefined, undefined, { maxFlows: 16, maxConnections: 16 }]),
  };
  return { inputs, opts, what };
}

// --- checks -------------------------------------------------------------------------------------------------------

const HEX8 = /^[0-9a-f]{8}$/, HEX16 = /^[0-9a-f]{16}$/;

/** A clean refusal: one of the two expected errors, with a one-line message. */
function isRefusal(e: unknown): boolean {
  return (e instanceof CaptureFormatError || e instanceof ReplayError) && !e.message.includes('\n');
}

function checkResult(res: ReplayResult, c: Case): void {
  const p = res.packets, k = res.counters, v = res.verdicts, d = res.drops;
  const n = c.opts.backends;
  assert.equal(p.total, p.fed + p.notIp + p.notForService + p.repliesWithoutFlow, 'every record is fed or set aside once');
  assert.ok(p.unparsed <= p.fed && p.truncated <= p.total);
  assert.equal(k.packets_in, p.fed, 'the engine saw every fed packet');
  assert.equal(k.packets_in, k.to_backend + k.to_client + k.replied + k.dropped, 'packets_in = to_backend + to_client + replied + dropped');
  assert.equal(Object.values(d).reduce((a, b) => a + b, 0), k.dropped, 'one drop reason per dropped packet');
  assert.equal(d.engine_error, 0, 'the engine threw (a bug): see drops.engine_error');
  assert.deepEqual(Object.keys(v), VERDICT_LABELS.filter((l) => l !== 'hold'), 'every verdict but hold (replay has no token store)');
  assert.equal(v.drop + v.to_backend + v.to_client + v.reply, p.fed, 'verdict counts add up to the fed packets');
  assert.deepEqual([v.drop, v.to_backend, v.to_client, v.reply], [k.dropped, k.to_backend, k.to_client, k.replied]);
  assert.ok(res.vips.length <= (c.opts.maxVips ?? 256));
  assert.equal(res.backends.length, n);
  for (const x of res.connections) {
    assert.ok(x.version === 0 || x.version === 1);
    assert.match(x.serverKey, HEX16);
    assert.match(x.serverToken, HEX8);
    assert.ok(x.clientKey === null || HEX16.test(x.clientKey));
    assert.ok(x.backend === null || (Number.isInteger(x.backend) && x.backend >= 0 && x.backend < n), `backend ${x.backend}`);
  }
  for (const j of res.joins) {
    assert.match(j.token, HEX8);
    assert.ok(j.backend === null || (j.backend >= 0 && j.backend < n));
    assert.ok(j.connectionBackend === null || (j.connectionBackend >= 0 && j.connectionBackend < n));
    assert.ok(j.steeredBy === 'token' || j.steeredBy === 'fallback');
    assert.ok((VERDICT_LABELS as readonly string[]).includes(j.verdict));
  }
  const s = res.summary;
  assert.equal(s.joins, res.joins.length);
  assert.equal(s.onConnectionBackend + s.elsewhere + s.tokenUnknown, s.joins);
  for (const w of res.warnings) assert.ok(typeof w === 'string' && !w.includes('\n'), w);
  if (c.opts.pcapOut) {
    assert.ok(res.pcapOut instanceof Uint8Array);
    const out = readCapture(res.pcapOut);
    assert.equal(out.records.length, v.to_backend + v.to_client + v.reply, 'the output holds every packet let through');
    for (const o of out.records) assert.ok(o.tsUs >= 0 && o.tsUs <= PCAP_MAX_TS_US);
  }
  const { pcapOut: _b, ...doc } = res;
  assert.doesNotThrow(() => JSON.stringify(doc));
}

/** Saves a failing input so that it can become a fixture; returns where. */
function keep(c: Case, i: number): string {
  const dir = mkdtempSync(`${tmpdir()}/mplb-fuzz-${SEED}-${i}-`);
  c.inputs.forEach((f, k) => writeFileSync(`${dir}/${k}.pcap`, f.bytes));
  writeFileSync(`${dir}/case.json`, JSON.stringify({ seed: SEED, case: i, opts: c.opts, what: c.what }, null, 2));
  return dir;
}

// --- the tests ----------------------------------------------------------------------------------------------------

test(`fuzz: ${CASES} mutated real captures through replay (seed ${SEED}), clean refusals and well-formed results only`, { timeout: 2 * BUDGET_MS }, () => {
  const bases = loadBases();
  assert.ok(bases.length >= 20, `${bases.length} bases`);
  assert.ok(bases.some((b) => b.format === 'pcapng' && b.records.some((x) => x.mptcp.length > 0)), 'MPTCP in pcapng too');
  assert.ok(bases.some((b) => b.records.some((x) => x.ipVersion === 6 && x.mptcp.length > 0)), 'MPTCP over IPv6 too');
  const r = rng(SEED);
  const t0 = performance.now();
  const tally = { ok: 0, capture: 0, vips: 0, withJoins: 0, withConnections: 0, clamped: 0 };
  for (let i = 0; i < CASES; i++) {
    const c = makeCase(r, bases);
    let res: ReplayResult;
    try {
      res = replayCaptures(c.inputs, c.opts);
    } catch (e) {
      if (isRefusal(e)) { tally[e instanceof ReplayError ? 'vips' : 'capture']++; continue; }
      assert.fail(`case ${i} (${c.what.join(', ')}; ${JSON.stringify(c.opts)}) threw ${(e as Error)?.stack ?? String(e)}; input kept in ${keep(c, i)}`);
    }
    try {
      checkResult(res, c);
    } catch (e) {
      assert.fail(`case ${i} (${c.what.join(', ')}): ${(e as Error).message}; input kept in ${keep(c, i)}`);
    }
    tally.ok++;
    if (res.joins.length) tally.withJoins++;
    if (res.connections.length) tally.withConnections++;
    if (res.packets.timestampsClamped) tally.clamped++;
  }
  const ms = performance.now() - t0;
  process.stderr.write(`fuzz: ${CASES} cases in ${(ms / 1000).toFixed(1)} s: ${JSON.stringify(tally)}\n`);
  // The mutations must leave most inputs replayable, or the engine and the oracle are barely exercised.
  assert.ok(tally.ok > CASES / 3, JSON.stringify(tally));
  assert.ok(tally.withJoins > CASES / 20, JSON.stringify(tally));
  assert.ok(tally.capture > CASES / 20, JSON.stringify(tally));
  assert.ok(ms < BUDGET_MS, `${Math.round(ms)} ms, over the ${BUDGET_MS} ms bound`);
});

/** `mplb replay FILES --pcap-out OUT`: exit 0 with a readable output, or exit 1 with one `mplb: ` line; never a stack. */
function checkCli(files: string[], out: string, extra: string[] = []): number {
  rmSync(out, { force: true });
  const p = spawnSync(process.execPath, [MAIN, 'replay', ...files, '--pcap-out', out, '--json', ...extra], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const where = `${files.join(' ')}: exit ${p.status}, stderr ${JSON.stringify(p.stderr.slice(0, 600))}`;
  assert.doesNotMatch(p.stderr, /^\s+at .*[(:]/m, where);
  assert.doesNotMatch(p.stderr, /internal error/, where);
  assert.ok(p.status === 0 || p.status === 1, where);
  const lines = p.stderr.split('\n').filter((l) => l.length > 0);
  if (p.status === 1) {
    assert.equal(lines.filter((l) => !l.startsWith('mplb: warning: ')).length, 1, where);
    assert.match(lines[lines.length - 1], /^mplb: \S/, where);
    assert.equal(existsSync(out), false, `${where}: a refused replay left ${out}`);
  } else {
    for (const l of lines) assert.match(l, /^mplb: warning: /, where);
    const doc = JSON.parse(p.stdout);
    const written = readCapture(new Uint8Array(readFileSync(out))).records;
    assert.equal(written.length, doc.verdicts.to_backend + doc.verdicts.to_client + doc.verdicts.reply, where);
  }
  return p.status;
}

test(`fuzz through the CLI with --pcap-out: ${CLI_CASES} mutated captures and every crash fixture`, { timeout: BUDGET_MS }, () => {
  const dir = mkdtempSync(`${tmpdir()}/mplb-fuzz-cli-`);
  try {
    const fixtures = readdirSync(CRASHES).filter((f) => /\.pcap(ng)?$/.test(f)).sort();
    assert.ok(fixtures.length >= 1);
    // Each fixture once crashed or was refused for no good reason: now each replays.
    for (const f of fixtures) assert.equal(checkCli([CRASHES + f], `${dir}/out.pcap`), 0, f);
    const bases = loadBases();
    const r = rng(SEED ^ 0x5eed);
    const codes: number[] = [];
    for (let i = 0; i < CLI_CASES; i++) {
      const c = makeCase(r, bases);
      const files = c.inputs.map((f, k) => { const p = `${dir}/in-${i}-${k}.pcap`; writeFileSync(p, f.bytes); return p; });
      codes.push(checkCli(files, `${dir}/out.pcap`, ['--backends', String(c.opts.backends), '--policy', c.opts.policy]));
    }
    assert.ok(codes.includes(0), `exit codes ${codes}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every crash fixture replays in process with a well-formed result', () => {
  for (const f of readdirSync(CRASHES).filter((x) => /\.pcap(ng)?$/.test(x))) {
    const c: Case = { inputs: [{ name: f, bytes: new Uint8Array(readFileSync(CRASHES + f)) }], opts: { backends: 2, policy: 'maglev', aware: true, unknownTokenAnswer: 'hash', pcapOut: true }, what: [f] };
    checkResult(replayCaptures(c.inputs, c.opts), c);
  }
});

test('the derived bases are meaningful: pcapng and IPv6 copies replay like their originals', () => {
  const bases = loadBases();
  const opts: ReplayOptions = { backends: 3, policy: 'maglev', aware: true, unknownTokenAnswer: 'hash' };
  let compared = 0;
  for (const d of bases.filter((b) => / as (pcapng|IPv6)$/.test(b.name))) {
    const orig = bases.find((b) => b.name === d.name.replace(/ as (pcapng|IPv6)$/, ''))!;
    const a = replayCaptures([{ name: orig.name, bytes: orig.bytes }], opts), b = replayCaptures([{ name: d.name, bytes: d.bytes }], opts);
    assert.deepEqual(b.connections.map((c) => [c.version, c.serverKey, c.serverToken]), a.connections.map((c) => [c.version, c.serverKey, c.serverToken]), d.name);
    assert.equal(b.summary.joins, a.summary.joins, d.name);
    assert.equal(b.summary.onConnectionBackend, a.summary.onConnectionBackend, d.name);
    if (d.name.endsWith('IPv6')) assert.ok(b.vips.every((v) => v.startsWith('[2001:db8::')), b.vips.join());
    compared++;
  }
  assert.equal(compared, 6);
});
