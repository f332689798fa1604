import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { replayCaptures, ReplayError, replayMaglevSize, type ReplayOptions } from '../src/replay/replay.js';
import { isPrime } from '../src/engine/maglev.js';
import { PcapWriter, readCapture } from '../src/io/pcap.js';
import { ipOffset } from '../src/wire/link-layer.js';
import { keyToken } from '../src/wire/tokens.js';
import { ACK, RST, SYN, capAck, capSyn, capSynAck, joinSyn, tcp } from './helpers/packets.js';
import { writeMptcpCapture } from './helpers/capture-gen.js';

const PCAPS = fileURLToPath(new URL('../../../shared/pcaps/', import.meta.url));
const load = (rel: string) => ({ name: rel, bytes: new Uint8Array(readFileSync(PCAPS + rel)) });
const AWARE: ReplayOptions = { backends: 2, policy: 'maglev', aware: true, unknownTokenAnswer: 'hash' };

test('linux v1 capture: three connections with their known tokens, every join on its connection\'s backend', () => {
  const r = replayCaptures([load('linux-v1/mptcp-v1-joins.pcap')], AWARE);
  assert.deepEqual(r.connections.map((c) => [c.version, c.serverKey, c.serverToken]), [
    [1, '546054e621704ae7', 'd41b3875'], [1, '7a3a71076535379e', '0c84b3eb'], [1, '68b4f5bc085c3104', 'fd012574'],
  ]);
  assert.equal(r.joins.length, 3);
  for (const j of r.joins) {
    assert.equal(j.steeredBy, 'token');
    assert.notEqual(j.connectionBackend, null);
    assert.equal(j.backend, j.connectionBackend);
  }
  assert.deepEqual(r.joins.map((j) => j.token).sort(), ['0c84b3eb', 'd41b3875', 'fd012574']);
  assert.equal(r.counters.joins_steered_by_token, 3);
  assert.equal(r.packets.truncated, 12, 'the snap length 200 cut the 12 data packets (each counted once); they are still balanced');
  assert.equal(r.verdicts.drop, 0);
});

test('tcpdump v0 capture: token e47f0142 from server key 967d2770b6960552, the join to another server address follows it', () => {
  const r = replayCaptures([load('tcpdump/mptcp-v0.pcap')], { ...AWARE, backends: 5 });
  assert.equal(r.connections.length, 1);
  assert.equal(r.connections[0].version, 0);
  assert.equal(r.connections[0].serverKey, '967d2770b6960552');
  assert.equal(r.connections[0].serverToken, 'e47f0142');
  assert.equal(r.joins.length, 1);
  assert.equal(r.joins[0].token, 'e47f0142');
  assert.equal(r.joins[0].backend, r.connections[0].backend);
  assert.equal(r.counters.joins_vip_mismatch, 1, 'the join targets 10.1.2.2, the connection 10.1.1.2');
});

test('tcpdump v1 and ptcpdump captures: keys and tokens as tcpdump decodes them', () => {
  const v1 = replayCaptures([load('tcpdump/mptcp-v1.pcap')], AWARE);
  assert.deepEqual(v1.connections.map((c) => [c.serverKey, c.serverToken, c.clientKey, c.clientToken]), [
    ['29a6c86981ad933c', 'a35d6d82', '1fdb5df328bc3def', '239fbdb0'],
  ]);
  const pt = replayCaptures([load('ptcpdump/mptcp.pcap')], AWARE);
  assert.equal(pt.connections.length, 1);
  assert.equal(pt.connections[0].version, 1);
  const text = readFileSync(PCAPS + 'ptcpdump/mptcp.pcap.out.txt', 'utf8');
  assert.ok(text.includes(pt.connections[0].serverKey.replace(/^0+/, '')), 'server key appears in tcpdump\'s decode');
});

test('MP_FASTCLOSE capture: the connection is closed and its token removed', () => {
  const r = replayCaptures([load('tcpdump/mptcp-fclose.pcap')], AWARE);
  assert.equal(r.connections[0].serverToken, '1f874e7a');
  assert.equal(r.counters.conns_fastclosed, 1);
});

test('CVE-2017-13040 capture (3-byte DSS): counted as malformed, the packet is still balanced', () => {
  const r = replayCaptures([load('tcpdump/mptcp-dss-oobr.pcap')], AWARE);
  assert.equal(r.counters.mptcp_option_malformed, 1);
  assert.equal(r.verdicts.to_backend, 1);
});

test('captures without a SYN (ADD_ADDR echo, MP_TCPRST) replay without error and balance nothing', () => {
  for (const f of ['tcpdump/mptcp-aa-echo.pcap', 'tcpdump/mptcp-tcprst.pcap']) {
    const r = replayCaptures([load(f)], AWARE);
    assert.equal(r.vips.length, 0);
    assert.ok(r.packets.total > 0);
    assert.equal(r.packets.fed, 0);
  }
  const aa = replayCaptures([load('tcpdump/mptcp-aa-v1.pcap')], AWARE);
  assert.equal(aa.connections.length, 1);
  assert.equal(aa.drops.not_tcp, 2);
});

test('state carries across files: handshakes in one capture, joins in the next', () => {
  const bytes = new Uint8Array(readFileSync(PCAPS + 'linux-v1/mptcp-v1-joins.pcap'));
  const recs = readCapture(bytes).records;
  const firstJoin = recs.findIndex((r) => {
    // IPv4 only in this capture: TCP flags and source port read straight from the (snap-length cut) frame.
    const t = ipOffset(r.linkType, r.data) + ((r.data[ipOffset(r.linkType, r.data)] & 15) << 2);
    const sport = (r.data[t] << 8) | r.data[t + 1];
    return (r.data[t + 13] & (SYN | ACK)) === SYN && ![60956, 60966, 38254].includes(sport);
  });
  assert.ok(firstJoin > 0);
  const part = (from: number, to: number) => {
    const w = new PcapWriter(recs[0].linkType, 65535);
    for (const r of recs.slice(from, to)) w.add(r.tsUs, r.data, r.origLen);
    return w.toBytes();
  };
  const r = replayCaptures([{ name: 'a', bytes: part(0, firstJoin) }, { name: 'b', bytes: part(firstJoin, recs.length) }], AWARE);
  assert.ok(r.joins.length >= 1);
  assert.ok(r.joins.every((j) => j.steeredBy === 'token' && j.backend === j.connectionBackend));
});

/** A synthetic capture: n MPTCP v1 connections from one address, each followed by a join from another. */
function syntheticCapture(n: number): Uint8Array {
  const w = new PcapWriter(101);
  let t = 1_700_000_000_000_000;
  for (let i = 0; i < n; i++) {
    const key = 0x7000_0000_0000n + BigInt(i) * 7919n;
    const sport = 30000 + i;
    w.add(t++, tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport, dport: 80, flags: SYN, options: [capSyn(1)] }));
    w.add(t++, tcp({ src: '198.18.100.1', dst: '198.18.1.2', sport: 80, dport: sport, flags: SYN | ACK, options: [capSynAck(1, key)] }));
    w.add(t++, tcp({ src: '198.18.1.2', dst: '198.18.100.1', sport, dport: 80, flags: ACK, options: [capAck(1, 5n, key)] }));
    w.add(t++, tcp({ src: '198.18.2.2', dst: '198.18.100.1', sport: 40000 + i, dport: 80, flags: SYN, options: [joinSyn(keyToken(1, Number(key >> 32n), Number(key & 0xffffffffn)))] }));
  }
  return w.toBytes();
}

test('aware vs unaware on the same traffic: aware keeps every join, unaware (hash-ip-pair too) misroutes a good share', () => {
  const cap = [{ name: 'synthetic', bytes: syntheticCapture(60) }];
  const aware = replayCaptures(cap, AWARE);
  assert.equal(aware.summary.joins, 60);
  assert.equal(aware.summary.onConnectionBackend, 60);
  const unaware = replayCaptures(cap, { ...AWARE, aware: false });
  assert.ok(unaware.summary.elsewhere >= 15, `unaware misrouted ${unaware.summary.elsewhere} of 60`);
  assert.ok(unaware.joins.every((j) => j.steeredBy === 'fallback'));
  // hash-ip-pair puts all of one address's subflows on one server: the joins' other address may hash elsewhere.
  const pair = replayCaptures(cap, { ...AWARE, aware: false, policy: 'hash-ip-pair', backends: 2 });
  const servers = new Set(pair.joins.map((j) => `${j.backend}/${j.connectionBackend}`));
  assert.equal(servers.size, 1, 'one client address pair -> one server for every connection');
});

test('mplb replay CLI: --json document shape and --pcap-out output', () => {
  const out = `${process.env.TMPDIR ?? '/tmp'}/mplb-replay-${process.pid}.pcap`;
  const main = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
  const json = execFileSync(process.execPath, [main, 'replay', PCAPS + 'linux-v1/mptcp-v1-joins.pcap', '--json', '--pcap-out', out, '--backends', '3'], { encoding: 'utf8' });
  after(() => rmSync(out, { force: true }));
  const doc = JSON.parse(json);
  for (const c of doc.connections) for (const k of ['version', 'clientKey', 'serverKey', 'serverToken', 'clientToken', 'backend']) assert.ok(k in c, k);
  for (const j of doc.joins) for (const k of ['subflow', 'token', 'backend', 'connectionBackend', 'steeredBy']) assert.ok(k in j, k);
  assert.match(doc.joins[0].subflow, /^10\.61\.2\.2:\d+>10\.61\.9\.9:5201$/);
  assert.equal(typeof doc.counters.packets_in, 'number');
  const written = readCapture(new Uint8Array(readFileSync(out))).records;
  assert.equal(written.length, doc.verdicts.to_backend + doc.verdicts.to_client + doc.verdicts.reply);
  assert.equal(written[0].linkType, 101);
  // The first packet (a SYN to the VIP) now goes to one of the virtual servers.
  assert.match(Array.from(written[0].data.subarray(16, 20)).join('.'), /^198\.18\.255\.[123]$/);
  // A bad flag is a usage error with exit code 2 and no stack trace.
  assert.throws(() => execFileSync(process.execPath, [main, 'replay', 'x.pcap', '--policy', 'nope'], { stdio: 'pipe' }), (e: { status: number; stderr: Buffer }) => e.status === 2 && /--policy must be one of/.test(String(e.stderr)) && !/at .*\.js/.test(String(e.stderr)));
});

// --- issue 9: replay and capture hardening ------------------------------------------------------------------------

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const CRASHES = fileURLToPath(new URL('../../test/fixtures/replay-crashes/', import.meta.url));
const TMP = process.env.TMPDIR ?? '/tmp';
const MAXRSS = new URL('./helpers/maxrss.js', import.meta.url).href;

/** Runs `mplb ARGS...` and returns its exit code and output, whatever the code. */
function mplb(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
const STACK = /^\s+at .*[(:]/m;

test('--pcap-out with a timestamp pcap cannot hold (ts_sec 0xffffffff, ts_usec 1000000): exit 0, no stack trace, clamped and counted', () => {
  const out = `${TMP}/mplb-replay-ts-${process.pid}.pcap`;
  const r = mplb(['replay', CRASHES + 'ts-sec-ffffffff-usec-1000000.pcap', '--pcap-out', out, '--json']);
  after(() => rmSync(out, { force: true }));
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr, STACK);
  assert.doesNotMatch(r.stderr, /internal error/);
  const doc = JSON.parse(r.stdout);
  assert.equal(doc.packets.timestampsClamped, 1);
  assert.match(r.stderr, /^mplb: warning: .*1 packet.*clamped/m);
  const written = readCapture(new Uint8Array(readFileSync(out))).records;
  assert.equal(written.length, 2, 'every packet the engine let through is in the output');
  assert.equal(written[0].tsUs, 1_700_000_000_000_000);
  assert.equal(written[1].tsUs, 2 ** 32 * 1e6 - 1, 'the latest time pcap holds: 0xffffffff s + 999999 µs');
});

test('mplb replay streams captures from disk: a 260 MB capture replays in well under its size of memory', () => {
  const file = `${TMP}/mplb-replay-big-${process.pid}.pcap`;
  try {
    // 1400-byte data packets: few records (fast), many bytes (a whole-file read would show in the peak RSS).
    const gen = writeMptcpCapture(file, { records: 180_000, payload: 1400, perConnection: 1000 });
    assert.ok(gen.bytes > 256e6, `${gen.bytes} bytes`);
    const r = spawnSync(process.execPath, ['--import', MAXRSS, MAIN, 'replay', file, '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.equal(r.status, 0, r.stderr);
    const doc = JSON.parse(r.stdout);
    assert.equal(doc.packets.total, gen.records);
    assert.equal(doc.summary.onConnectionBackend, gen.connections);
    const kb = Number(/maxrss_kb=(\d+)/.exec(r.stderr)?.[1]);
    assert.ok(kb > 0 && kb < 160_000, `peak RSS ${Math.round(kb / 1024)} MiB for a ${Math.round(gen.bytes / 2 ** 20)} MiB capture`);
  } finally {
    rmSync(file, { force: true });
  }
});

test('files stream from disk with the same result as bytes in memory; --pcap-out to a path equals the in-memory output', () => {
  const out = `${TMP}/mplb-replay-same-${process.pid}.pcap`;
  try {
    const path = PCAPS + 'linux-v1/mptcp-v1-joins.pcap';
    const mem = replayCaptures([load('linux-v1/mptcp-v1-joins.pcap'), load('tcpdump/mptcp-v1.pcap')], { ...AWARE, pcapOut: true });
    const disk = replayCaptures([{ name: 'linux-v1/mptcp-v1-joins.pcap', path }, { name: 'tcpdump/mptcp-v1.pcap', path: PCAPS + 'tcpdump/mptcp-v1.pcap' }], { ...AWARE, pcapOut: out });
    assert.equal(disk.pcapOut, undefined);
    const { pcapOut: memBytes, ...memDoc } = mem;
    const { pcapOut: _none, ...diskDoc } = disk;
    assert.deepEqual(diskDoc, memDoc);
    assert.deepEqual(new Uint8Array(readFileSync(out)), memBytes);
    assert.equal(mem.packets.total, mem.packets.fed + mem.packets.notIp + mem.packets.notForService + mem.packets.repliesWithoutFlow);
  } finally {
    rmSync(out, { force: true });
  }
});

test('a capture that turns out malformed mid-file: one line naming the file and offset, exit 1, no --pcap-out file left', () => {
  const bad = `${TMP}/mplb-replay-bad-${process.pid}.pcap`, out = `${TMP}/mplb-replay-bad-out-${process.pid}.pcap`;
  try {
    const good = new Uint8Array(readFileSync(PCAPS + 'linux-v1/mptcp-v1-joins.pcap'));
    const tail = new Uint8Array(16);
    new DataView(tail.buffer).setUint32(8, 0x7fffffff, true); // a captured length of 2 GiB
    writeFileSync(bad, Buffer.concat([good, tail]));
    for (const args of [['replay', bad, '--pcap-out', out], ['replay', bad, '--vip', '10.61.9.9:5201', '--pcap-out', out]]) {
      const r = mplb(args);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`^mplb: ${bad.replace(/[.]/g, '\\.')}: pcap record captured length 2147483647 exceeds the limit of 262144 bytes \\(at byte offset ${good.length}\\)\\n$`));
      assert.equal(existsSync(out), false);
    }
  } finally {
    rmSync(bad, { force: true });
    rmSync(out, { force: true });
  }
});

test('--pcap-out naming an input is refused before anything is written', () => {
  const copy = `${TMP}/mplb-replay-self-${process.pid}.pcap`;
  try {
    const bytes = readFileSync(PCAPS + 'linux-v1/mptcp-v1-joins.pcap');
    writeFileSync(copy, bytes);
    const r = mplb(['replay', copy, '--pcap-out', `${TMP}/./mplb-replay-self-${process.pid}.pcap`]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^mplb: --pcap-out .* is the input .*; write the output to another file$/m);
    assert.deepEqual(readFileSync(copy), bytes);
  } finally {
    rmSync(copy, { force: true });
  }
});

/** A SYN scan: `ports` SYNs from one address to ports 1..N of one host, each answered by a RST/ACK. */
function synScan(ports: number): Uint8Array {
  const w = new PcapWriter(101);
  let t = 1_700_000_000_000_000;
  for (let p = 1; p <= ports; p++) {
    w.add(t++, tcp({ src: '198.51.100.7', dst: '203.0.113.5', sport: 40000, dport: p, flags: SYN }));
    w.add(t++, tcp({ src: '203.0.113.5', dst: '198.51.100.7', sport: p, dport: 40000, flags: RST | ACK }));
  }
  return w.toBytes();
}

test('a 6000-port SYN scan: refused with a clear message by default; completes with --vip, and with --max-vips in bounded memory', () => {
  const scan = `${TMP}/mplb-replay-scan-${process.pid}.pcap`;
  try {
    writeFileSync(scan, synScan(6000));
    const refused = mplb(['replay', scan]);
    assert.equal(refused.status, 1, refused.stderr);
    assert.match(refused.stderr, /^mplb: more than 256 address:ports receive a SYN \(the 257th: 203\.0\.113\.5:257\); .*--vip ADDR:PORT.*--max-vips/);
    assert.equal(refused.stderr.trim().split('\n').length, 1, refused.stderr);
    assert.doesNotMatch(refused.stderr, STACK);

    const named = mplb(['replay', scan, '--vip', '203.0.113.5:80', '--json']);
    assert.equal(named.status, 0, named.stderr);
    const doc = JSON.parse(named.stdout);
    assert.deepEqual(doc.vips, ['203.0.113.5:80']);
    assert.equal(doc.packets.fed, 2);
    assert.equal(doc.packets.notForService, 11998);

    const r = spawnSync(process.execPath, ['--import', MAXRSS, MAIN, 'replay', scan, '--max-vips', '6000', '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.equal(r.status, 0, r.stderr);
    const all = JSON.parse(r.stdout);
    assert.equal(all.vips.length, 6000);
    assert.equal(all.counters.packets_in, 12000);
    assert.equal(all.verdicts.to_backend, 6000);
    const kb = Number(/maxrss_kb=(\d+)/.exec(r.stderr)?.[1]);
    assert.ok(kb > 0 && kb < 300_000, `peak RSS ${Math.round(kb / 1024)} MiB for 6000 inferred VIPs`);
  } finally {
    rmSync(scan, { force: true });
  }
});

test('in process: too many inferred VIPs is a ReplayError (EREPLAY) before the engine is built; Maglev tables sized for N servers', () => {
  const cap = [{ name: 'scan', bytes: synScan(300) }];
  assert.throws(() => replayCaptures(cap, AWARE), (e: unknown) => e instanceof ReplayError && e.code === 'EREPLAY' && /the 257th: 203\.0\.113\.5:257/.test(e.message));
  assert.throws(() => replayCaptures(cap, { ...AWARE, maxVips: 299 }), /more than 299 address:ports .*the 300th/);
  assert.equal(replayCaptures(cap, { ...AWARE, maxVips: 300 }).vips.length, 300);
  assert.throws(() => replayCaptures(cap, { ...AWARE, maxVips: 0 }), RangeError);
  // Named VIPs are not capped: the user chose them.
  assert.equal(replayCaptures(cap, { ...AWARE, vips: ['203.0.113.5:1', '203.0.113.5:2'] }).packets.fed, 4);
  assert.equal(replayMaglevSize(1), 251);
  assert.equal(replayMaglevSize(2), 251);
  for (const n of [5, 17, 100, 250]) {
    const m = replayMaglevSize(n);
    assert.ok(isPrime(m) && m >= 64 * n && m < 64 * n + 200, `${n} -> ${m}`);
  }
});

test('output into a pipe that closes early (| head): no stack trace', () => {
  const file = `${TMP}/mplb-replay-pipe-${process.pid}.pcap`;
  try {
    writeMptcpCapture(file, { records: 13_000, perConnection: 13 }); // 1000 connections: a report far above a pipe's 64 KiB
    for (const flag of ['', '--json']) {
      const r = spawnSync('sh', ['-c', `"${process.execPath}" "${MAIN}" replay "${file}" ${flag} | head -c 100 >/dev/null`], { encoding: 'utf8' });
      assert.equal(r.stderr, '', `replay ${flag} | head: ${r.stderr.slice(0, 500)}`);
    }
  } finally {
    rmSync(file, { force: true });
  }
});

test('every refusal is one `mplb: ` line (usage errors: then the usage) with exit 1 or 2, never a stack trace', () => {
  const dir = mkdtempSync(`${TMP}/mplb-replay-errors-`);
  try {
    const good = PCAPS + 'linux-v1/mptcp-v1-joins.pcap';
    writeFileSync(`${dir}/empty.pcap`, '');
    writeFileSync(`${dir}/text.pcap`, 'hello\n');
    writeFileSync(`${dir}/short.pcap`, readFileSync(good).subarray(0, 20));
    const ngHuge = Buffer.alloc(40);
    ngHuge.writeUInt32LE(0x0a0d0d0a, 0); ngHuge.writeUInt32LE(28, 4); ngHuge.writeUInt32LE(0x1a2b3c4d, 8); ngHuge.writeUInt16LE(1, 12); ngHuge.writeUInt32LE(28, 24);
    ngHuge.writeUInt32LE(6, 28); ngHuge.writeUInt32LE(0xfffffff0, 32); // an EPB of 4 GiB
    writeFileSync(`${dir}/huge-block.pcapng`, ngHuge);
    const cases: [string[], number, RegExp][] = [
      [[`${dir}/missing.pcap`], 2, /^mplb: cannot read .*missing\.pcap: ENOENT/],
      [[dir], 2, /^mplb: cannot read .*: not a regular file/],
      [[`${dir}/empty.pcap`], 1, /^mplb: .*empty\.pcap: not a pcap or pcapng file: only 0 bytes \(at byte offset 0\)$/],
      [[`${dir}/text.pcap`], 1, /^mplb: .*text\.pcap: not a pcap or pcapng file: magic 0x68656c6c/],
      [[`${dir}/short.pcap`], 1, /^mplb: .*short\.pcap: pcap file header truncated: 20 of 24 bytes/],
      [[`${dir}/huge-block.pcapng`], 1, /^mplb: .*huge-block\.pcapng: pcapng block of type 0x00000006 has total length 4294967280 but only 12 bytes remain \(at byte offset 28\)$/],
      [[good, '--pcap-out', `${dir}/no/such/dir/out.pcap`], 1, /^mplb: cannot write .*out\.pcap: ENOENT/],
      [[good, '--pcap-out', dir], 1, /^mplb: cannot write .*: EISDIR/],
      [[good, '--vip', 'nonsense'], 2, /^mplb: --vip must be ADDR:PORT/],
      [[good, '--max-vips', '0'], 2, /^mplb: --max-vips must be an integer 1-16384, got 0$/],
      [[good, '--max-vips', 'lots'], 2, /^mplb: --max-vips must be an integer/],
      [[good, '--bogus'], 2, /^mplb: Unknown option '--bogus'/],
    ];
    for (const [args, status, first] of cases) {
      const r = mplb(['replay', ...args]);
      const where = `replay ${args.join(' ')}: exit ${r.status}, ${JSON.stringify(r.stderr.slice(0, 300))}`;
      assert.equal(r.status, status, where);
      assert.match(r.stderr.split('\n')[0], first, where);
      assert.doesNotMatch(r.stderr, STACK, where);
      if (status === 1) assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, where);
      else assert.match(r.stderr, /\nusage:\n/, where);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('replay judges joins with the tables of mplb run: 33000 live connections fit; a smaller table that overflows says so', () => {
  const file = `${TMP}/mplb-replay-tables-${process.pid}.pcap`;
  try {
    // 33000 connections within 4.3 s of capture time: every token is still alive (60 s linger) when the last one opens.
    const gen = writeMptcpCapture(file, { records: 33_000 * 13, perConnection: 13 });
    const r = replayCaptures([{ name: 'many', path: file }], AWARE);
    assert.equal(r.summary.joins, gen.connections);
    assert.equal(r.summary.onConnectionBackend, gen.connections, `${r.counters.conn_table_full} connections found the table full`);
    assert.equal(r.counters.conn_table_full, 0);
    assert.deepEqual(r.warnings, []);
    // The tables replay had before (65536 flows, 32768 connections): each overflows, joins go elsewhere, and it says so.
    const conns = replayCaptures([{ name: 'many', path: file }], { ...AWARE, tables: { maxConnections: 1 << 15 } });
    assert.ok(conns.counters.conn_table_full > 0 && conns.summary.elsewhere > 0, JSON.stringify(conns.summary));
    assert.match(conns.warnings.join('\n'), /^the connection table \(32768 entries\) was full for \d+ MPTCP connections: their tokens were not kept/m);
    const flows = replayCaptures([{ name: 'many', path: file }], { ...AWARE, tables: { maxFlows: 1 << 16 } });
    assert.ok(flows.summary.elsewhere + flows.drops.flow_table_full > 0, JSON.stringify(flows.summary));
    assert.match(flows.warnings.join('\n'), /^the flow table \(65536 entries\) was full: \d+ embryonic flows evicted, \d+ SYNs forwarded without a flow, \d+ joins dropped$/m);
  } finally {
    rmSync(file, { force: true });
  }
});
