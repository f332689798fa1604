// Helper programs for the end-to-end bench (bench/e2e.bench.ts), each run inside one testbed namespace:
//   serve    --sink P --echo Q            MPTCP sink (mplb's traffic server, trailer protocol) + MPTCP echo server
//   pingpong --host H --port Q --seconds S [--size 32] [--max N]
//                                        one MPTCP connection, request/response of small messages; RTT percentiles
//   small    --host H --port P --seconds S [--connections C] [--size 64]
//                                        TCP_NODELAY small writes on C MPTCP connections for S seconds, then reset
//   genuine  --host H --port Q --count N [--concurrency C] [--hold-ms T]
//                                        MPTCP connections that must complete with 2 subflows (echo checked)
//   syns     --dst VIP --port Q --src24 A.B.C --rate R --count N
//                                        raw-socket MP_CAPABLE SYNs from random sources in A.B.C.0/24, paced, bounded
// Every program prints one JSON line on stdout and exits by itself (bounded in time and count).
import net from 'node:net';
import { parseArgs } from 'node:util';
import * as koffi from 'koffi';
import { connectMptcp, getMptcpInfo, listenMptcp } from '../src/io/mptcp-socket.js';
import { startTrafficServer } from '../src/traffic/server.js';

const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function serve(v: Record<string, string | undefined>): Promise<void> {
  const sink = await startTrafficServer({ port: Number(v.sink ?? 5201), mptcp: true, sampleMs: 500 });
  const echo = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('data', (d) => s.write(d));
    s.on('end', () => s.end());
    s.on('error', () => s.destroy());
  });
  await listenMptcp(echo, { port: Number(v.echo ?? 5202), backlog: 4096 });
  out({ event: 'listening', pid: process.pid, sink: sink.ports.mptcp, echo: (echo.address() as net.AddressInfo).port });
  const quit = () => {
    echo.close();
    void sink.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on('SIGTERM', quit);
  process.on('SIGINT', quit);
}

function connect(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = connectMptcp({ host, port });
    const t = setTimeout(() => { s.destroy(); reject(new Error(`connect timeout ${timeoutMs} ms`)); }, timeoutMs);
    s.once('connect', () => { clearTimeout(t); s.setNoDelay(true); resolve(s); });
    s.once('error', (e) => { clearTimeout(t); reject(e); });
  });
}

async function pingpong(v: Record<string, string | undefined>): Promise<void> {
  const size = Number(v.size ?? 32), seconds = Number(v.seconds ?? 3), max = Number(v.max ?? 200_000), warm = 200;
  const s = await connect(v.host!, Number(v.port), 5000);
  const msg = Buffer.alloc(size, 0x61);
  const rtts: number[] = [];
  let subflows = 0;
  await new Promise<void>((resolve, reject) => {
    let got = 0, t0 = 0n, i = 0;
    const deadline = performance.now() + seconds * 1000;
    const send = () => { got = 0; t0 = process.hrtime.bigint(); s.write(msg); };
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got < size) return;
      const us = Number(process.hrtime.bigint() - t0) / 1000;
      if (i++ >= warm) rtts.push(us);
      if ((i & 1023) === 0) subflows = Math.max(subflows, getMptcpInfo(s)?.subflowsTotal ?? 0);
      if (rtts.length >= max || performance.now() >= deadline) { s.end(); resolve(); return; }
      send();
    });
    s.on('error', reject);
    s.on('close', () => resolve());
    setTimeout(() => reject(new Error('pingpong: no progress')), (seconds + 10) * 1000).unref();
    send();
  });
  s.destroy();
  rtts.sort((a, b) => a - b);
  out({ n: rtts.length, p50Us: pct(rtts, 50), p90Us: pct(rtts, 90), p99Us: pct(rtts, 99), minUs: rtts[0] ?? NaN, subflows });
}

/**
 * Small writes: C connections each write `size`-byte chunks as fast as the socket takes them, for S seconds after
 * all are connected ({"event":"sending"} marks the start, the final line the end), then the connections are
 * reset: whatever is still queued is thrown away, so the run ends on time even behind a slow path.
 */
async function small(v: Record<string, string | undefined>): Promise<void> {
  const seconds = Number(v.seconds ?? 3), n = Math.min(Number(v.connections ?? 8), 64), size = Number(v.size ?? 64);
  const socks = await Promise.all(Array.from({ length: n }, () => connect(v.host!, Number(v.port), 5000)));
  const chunk = Buffer.alloc(size, 0x63);
  let written = 0, errors = 0, stop = false;
  for (const s of socks) {
    s.on('error', () => { errors++; });
    s.on('data', () => undefined);
    // A write the kernel takes at once completes synchronously, so write() keeps returning true on a fast path:
    // yield every 256 writes so the timer that ends the run can fire.
    const pump = () => {
      for (let k = 0; k < 256; k++) {
        if (stop || s.destroyed) return;
        written += size;
        if (!s.write(chunk)) { s.once('drain', pump); return; }
      }
      setImmediate(pump);
    };
    setImmediate(pump);
  }
  out({ event: 'sending' });
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  stop = true;
  const dt = (performance.now() - t0) / 1000;
  const subflows = socks.map((s) => getMptcpInfo(s)?.subflowsTotal ?? 0);
  for (const s of socks) { try { s.resetAndDestroy(); } catch { s.destroy(); } }
  out({ event: 'done', seconds: dt, bytesWritten: written, subflows, errors });
}

async function genuine(v: Record<string, string | undefined>): Promise<void> {
  const count = Math.min(Number(v.count ?? 20), 1000), conc = Math.max(1, Number(v.concurrency ?? 10)), hold = Number(v['hold-ms'] ?? 1500);
  const host = v.host!, port = Number(v.port);
  let next = 0, connected = 0, two = 0, echoed = 0;
  const errors: string[] = [];
  const one = async (): Promise<void> => {
    let s: net.Socket | undefined;
    try {
      s = await connect(host, port, 5000);
      connected++;
      let sub = getMptcpInfo(s)?.subflowsTotal ?? 0, got = 0, sent = 0;
      const sock = s;
      sock.on('data', (d: Buffer) => { got += d.length; });
      const t0 = performance.now();
      while (performance.now() - t0 < hold) {
        sock.write(Buffer.alloc(64, 0x62)); sent += 64;
        await new Promise((r) => setTimeout(r, 100));
        sub = Math.max(sub, getMptcpInfo(sock)?.subflowsTotal ?? 0);
      }
      // Wait (bounded) for every echoed byte.
      for (let k = 0; k < 50 && got < sent; k++) await new Promise((r) => setTimeout(r, 20));
      if (got >= sent) echoed++;
      if (sub >= 2 && got >= sent) two++;
    } catch (e) {
      if (errors.length < 10) errors.push((e as Error).message);
    } finally {
      s?.destroy();
    }
  };
  const workers = Array.from({ length: Math.min(conc, count) }, async () => {
    while (next < count) { next++; await one(); }
  });
  await Promise.all(workers);
  out({ attempted: count, connected, echoed, twoSubflows: two, errors });
}

function csum(buf: Uint8Array, off: number, len: number, init = 0): number {
  let s = init;
  for (let i = 0; i + 1 < len; i += 2) s += (buf[off + i] << 8) | buf[off + i + 1];
  if (len & 1) s += buf[off + len - 1] << 8;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

async function syns(v: Record<string, string | undefined>): Promise<void> {
  const rate = Math.min(Number(v.rate ?? 3000), 20_000), count = Math.min(Number(v.count ?? 10_000), 100_000);
  const dst = v.dst!.split('.').map(Number), port = Number(v.port ?? 5202);
  const src24 = v.src24!.split('.').map(Number);
  if (dst.length !== 4 || src24.length !== 3) throw new Error('--dst A.B.C.D and --src24 A.B.C required');
  // The testbed's benchmarking range only (198.18.0.0/15): nothing else may be addressed.
  if (!(dst[0] === 198 && (dst[1] === 18 || dst[1] === 19)) || !(src24[0] === 198 && (src24[1] === 18 || src24[1] === 19))) throw new Error('addresses must be in 198.18.0.0/15');
  const c = koffi.load('libc.so.6');
  const socket = c.func('int socket(int domain, int type, int protocol)');
  const sendto = c.func('long sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t alen)');
  const close = c.func('int close(int fd)');
  const fd = socket(2, 3, 255) as number; // AF_INET, SOCK_RAW, IPPROTO_RAW (implies IP_HDRINCL)
  if (fd < 0) throw new Error(`raw socket failed: errno ${koffi.errno()}`);
  const sa = Buffer.alloc(16);
  sa.writeUInt16LE(2, 0); sa.writeUInt16BE(port, 2); Buffer.from(dst).copy(sa, 4);
  // IPv4 (20) + TCP (20) + options: MSS(4) SACK-perm(2) NOP NOP(2) MP_CAPABLE v1 SYN (4) = 52 bytes
  const p = Buffer.alloc(52);
  p[0] = 0x45; p.writeUInt16BE(52, 2); p[6] = 0x40; p[8] = 64; p[9] = 6;
  Buffer.from(dst).copy(p, 16);
  p.writeUInt16BE(port, 22);
  p[32] = (32 / 4) << 4; p[33] = 0x02; p.writeUInt16BE(64240, 34);
  p.set([2, 4, 0x05, 0xb4, 4, 2, 1, 1, 30, 4, 0x01, 0x01], 40);
  let x = (Date.now() ^ (process.pid << 8)) >>> 0 || 1;
  const rnd = () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  let sent = 0, failed = 0;
  const t0 = performance.now();
  const deadline = t0 + (count / rate) * 1000 + 5000;
  while (sent + failed < count && performance.now() < deadline) {
    const due = Math.min(count, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
    while (sent + failed < due) {
      const r = rnd();
      const host = 3 + (r % 250); // .3 .. .252: never the client's own .2 nor the gateway .1/.254
      p[12] = src24[0]; p[13] = src24[1]; p[14] = src24[2]; p[15] = host;
      p.writeUInt16BE(1024 + ((r >>> 8) % 60000), 20);
      p.writeUInt32BE(rnd(), 24);
      p[10] = 0; p[11] = 0; p[36] = 0; p[37] = 0;
      p.writeUInt16BE(~csum(p, 0, 20) & 0xffff, 10);
      // TCP checksum over the pseudo-header (src, dst, proto, length) and the segment.
      const pseudo = csum(p, 12, 8, 6 + 32);
      p.writeUInt16BE(~csum(p, 20, 32, pseudo) & 0xffff, 36);
      if ((sendto(fd, p, 52, 0, sa, 16) as number) < 0) failed++; else sent++;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  close(fd);
  out({ sent, failed, seconds: (performance.now() - t0) / 1000 });
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  const opt = { type: 'string' } as const;
  const { values } = parseArgs({
    args: rest,
    options: { host: opt, port: opt, seconds: opt, size: opt, max: opt, connections: opt, count: opt, concurrency: opt, 'hold-ms': opt, dst: opt, src24: opt, rate: opt, sink: opt, echo: opt },
  });
  const v = values as Record<string, string | undefined>;
  if (cmd === 'serve') return serve(v);
  if (cmd === 'pingpong') return pingpong(v);
  if (cmd === 'small') return small(v);
  if (cmd === 'genuine') return genuine(v);
  if (cmd === 'syns') return syns(v);
  throw new Error(`unknown tool "${cmd}" (serve, pingpong, small, genuine, syns)`);
}

main().catch((e: unknown) => {
  process.stderr.write(`e2e-tools: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
