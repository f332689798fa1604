// Traffic source: C concurrent MPTCP (or plain TCP) connections, each sending a fixed byte count or for a
// fixed time; samples acknowledged bytes every interval and reads the server's JSON trailer at the end.
import net from 'node:net';
import { connectMptcp, establishedSubflows, getMptcpInfo, getTcpBytesAcked } from '../io/mptcp-socket.js';
import type { ServerTrailer } from './server.js';

export interface TrafficClientOptions {
  host: string;
  port: number;
  /** Bytes per connection (this or seconds). */
  bytes?: number;
  /** Seconds of sending per connection (this or bytes). */
  seconds?: number;
  /** Concurrent connections (default 1). */
  connections?: number;
  /** MPTCP (default) or plain TCP. */
  mptcp?: boolean;
  /** Source address of the initial subflow. */
  localAddress?: string;
  /** Sampling interval of the bytes-over-time series (default 100 ms). */
  intervalMs?: number;
  /** Write size (default 128 KiB). */
  chunkBytes?: number;
  /** Gives up after this long (default: seconds*1000 or 60000, plus 15000). */
  timeoutMs?: number;
  /**
   * MPTCP: do not end a connection before it has had this many subflows, waiting at most subflowWaitMs (default
   * 10000) past the end of sending. Linux refuses a join that completes after the connection began to close, so
   * a test of joins must not let a slow start (a congested first subflow) make the client close first.
   */
  minSubflows?: number;
  subflowWaitMs?: number;
}

export interface ConnectionResult {
  index: number;
  localAddress?: string;
  localPort?: number;
  bytesSent: number;
  /** Time to establish (ms). */
  connectMs?: number;
  /** From connection established to the server's trailer (all bytes received), ms. */
  completionMs?: number;
  goodputMbps?: number;
  mptcp: boolean;
  /** Client-side MPTCP token (hex). */
  tokenHex?: string;
  subflowsTotalMax: number;
  fallback: boolean;
  server?: ServerTrailer;
  error?: string;
}

export interface ClientReport {
  host: string;
  port: number;
  mode: 'mptcp' | 'tcp';
  ok: boolean;
  connections: ConnectionResult[];
  totalBytes: number;
  /** From the first start to the last trailer (ms). */
  durationMs: number;
  goodputMbps: number;
  /** Bytes acknowledged by the peer, summed over connections, since start. */
  series: Array<{ tMs: number; bytesAcked: number }>;
}

interface Conn {
  r: ConnectionResult;
  s: net.Socket;
  acked: number;
  done: Promise<void>;
}

function ackedBytes(c: Conn, mptcp: boolean): number {
  const v = mptcp ? getMptcpInfo(c.s)?.bytesAcked : getTcpBytesAcked(c.s);
  // Fallback when the kernel gives nothing (closed socket, old kernel): bytes handed to the kernel.
  return v ?? Math.max(0, c.s.bytesWritten - c.s.writableLength);
}

export async function runTrafficClient(opts: TrafficClientOptions): Promise<ClientReport> {
  if ((opts.bytes === undefined) === (opts.seconds === undefined)) throw new Error('give exactly one of bytes or seconds');
  const mptcp = opts.mptcp ?? true;
  const n = opts.connections ?? 1;
  const chunk = Buffer.alloc(opts.chunkBytes ?? 128 * 1024, 0x6d);
  const intervalMs = opts.intervalMs ?? 100;
  const timeoutMs = opts.timeoutMs ?? (opts.seconds !== undefined ? opts.seconds * 1000 : 60000) + 15000;
  const t0 = performance.now();
  const series: ClientReport['series'] = [];
  const conns: Conn[] = [];

  for (let i = 0; i < n; i++) {
    const r: ConnectionResult = { index: i, bytesSent: 0, mptcp, subflowsTotalMax: mptcp ? 0 : 1, fallback: false };
    const s = mptcp
      ? connectMptcp({ host: opts.host, port: opts.port, localAddress: opts.localAddress })
      : net.connect({ host: opts.host, port: opts.port, localAddress: opts.localAddress });
    const c: Conn = { r, s, acked: 0, done: Promise.resolve() };
    c.done = new Promise<void>((resolve) => {
      const tStart = performance.now();
      let tConnected = 0;
      let trailer = '';
      let deadline = Infinity;
      let remaining = opts.bytes ?? Infinity;
      let ending = false;
      const finish = () => {
        if (ending) return;
        ending = true;
        const want = mptcp ? opts.minSubflows ?? 0 : 0;
        const until = performance.now() + (opts.subflowWaitMs ?? 10000);
        const check = () => {
          if (s.destroyed) return;
          // Established ones: MPTCP_INFO already counts a join whose SYN is out, and closing then would reset it.
          const up = want > 0 ? establishedSubflows(s) : undefined;
          if (up !== undefined && up > r.subflowsTotalMax) r.subflowsTotalMax = up;
          if (want === 0 || up === undefined || up >= want || performance.now() >= until) s.end();
          else setTimeout(check, 20);
        };
        check();
      };
      const pump = () => {
        while (!s.destroyed) {
          if (remaining <= 0 || performance.now() >= deadline) {
            finish();
            return;
          }
          const len = Math.min(chunk.length, remaining);
          const ok = s.write(len === chunk.length ? chunk : chunk.subarray(0, len));
          remaining -= len;
          r.bytesSent += len;
          if (!ok) {
            s.once('drain', pump);
            return;
          }
        }
      };
      s.setNoDelay(true);
      s.on('connect', () => {
        tConnected = performance.now();
        r.connectMs = tConnected - tStart;
        r.localAddress = s.localAddress;
        r.localPort = s.localPort;
        if (opts.seconds !== undefined) {
          deadline = tConnected + opts.seconds * 1000;
          // Ends the stream on time even while waiting for 'drain'.
          setTimeout(() => {
            if (s.writableNeedDrain) {
              s.removeListener('drain', pump);
              finish();
            }
          }, opts.seconds * 1000).unref();
        }
        const info = mptcp ? getMptcpInfo(s) : undefined;
        if (info) r.tokenHex = info.tokenHex;
        pump();
      });
      s.on('data', (d: Buffer) => {
        trailer += d.toString('utf8');
        // The trailer comes while the connection is still up: one more subflow sample, so that a transfer shorter
        // than the sampling interval still reports its subflows.
        const info = mptcp ? getMptcpInfo(s) : undefined;
        if (info && info.subflowsTotal > r.subflowsTotalMax) r.subflowsTotalMax = info.subflowsTotal;
      });
      s.on('end', () => {
        const line = trailer.split('\n')[0];
        try {
          r.server = JSON.parse(line) as ServerTrailer;
          r.completionMs = performance.now() - tConnected;
          r.goodputMbps = (r.bytesSent * 8) / (r.completionMs * 1000);
          if (r.server.bytes !== r.bytesSent) r.error = `server received ${r.server.bytes} of ${r.bytesSent} bytes`;
        } catch {
          r.error = `no trailer from server (got ${JSON.stringify(line.slice(0, 80))})`;
        }
      });
      s.on('error', (e) => {
        r.error ??= e.message;
      });
      s.on('close', () => resolve());
    });
    conns.push(c);
  }

  const sampleOnce = () => {
    let total = 0;
    for (const c of conns) {
      if (!c.s.destroyed) {
        c.acked = Math.max(c.acked, ackedBytes(c, mptcp));
        if (mptcp) {
          const info = getMptcpInfo(c.s);
          if (info) {
            if (info.subflowsTotal > c.r.subflowsTotalMax) c.r.subflowsTotalMax = info.subflowsTotal;
            c.r.fallback = info.fallback;
          }
        }
      }
      total += c.acked;
    }
    series.push({ tMs: Math.round(performance.now() - t0), bytesAcked: total });
  };
  const timer = setInterval(sampleOnce, intervalMs);
  const killer = setTimeout(() => {
    for (const c of conns) {
      // Connections that already got the server's trailer finished: only the others timed out.
      if (!c.r.server) c.r.error ??= `timed out after ${timeoutMs} ms`;
      c.s.destroy();
    }
  }, timeoutMs);
  await Promise.all(conns.map((c) => c.done));
  clearInterval(timer);
  clearTimeout(killer);
  for (const c of conns) {
    if (c.r.server) c.acked = Math.max(c.acked, c.r.server.bytes);
  }
  series.push({ tMs: Math.round(performance.now() - t0), bytesAcked: conns.reduce((a, c) => a + c.acked, 0) });

  const durationMs = performance.now() - t0;
  const totalBytes = conns.reduce((a, c) => a + (c.r.server?.bytes ?? 0), 0);
  return {
    host: opts.host,
    port: opts.port,
    mode: mptcp ? 'mptcp' : 'tcp',
    ok: conns.every((c) => !c.r.error && c.r.server !== undefined),
    connections: conns.map((c) => c.r),
    totalBytes,
    durationMs,
    goodputMbps: (totalBytes * 8) / (durationMs * 1000),
    series,
  };
}
