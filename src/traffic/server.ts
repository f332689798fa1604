// Traffic sink: accepts MPTCP (and/or plain TCP) connections, discards data, and records per connection
// the MPTCP token and subflow count. After the client's FIN it answers with a one-line JSON trailer.
import net from 'node:net';
import { getMptcpInfo, listenMptcp, type MptcpInfo } from '../io/mptcp-socket.js';

export interface TrafficServerOptions {
  /** Main port: MPTCP unless mptcp is false. 0 = any. */
  port: number;
  host?: string;
  /** Main port speaks MPTCP (default true). */
  mptcp?: boolean;
  /** Optional extra plain-TCP port. */
  tcpPort?: number;
  /** How often MPTCP_INFO is sampled on open connections (default 100 ms). */
  sampleMs?: number;
  /** Called when a connection has closed (e.g. to rewrite a report file). */
  onConnectionDone?: (c: ServedConnection) => void;
}

export interface ServedConnection {
  id: number;
  /** 'mptcp' when served on an MPTCP listener (see fallback), else 'tcp'. */
  listener: 'mptcp' | 'tcp';
  localPort: number;
  remoteAddress: string;
  remotePort: number;
  startMs: number;
  endMs?: number;
  bytes: number;
  /** Server-side MPTCP token (the one MP_JOINs carry), hex, when MPTCP. */
  tokenHex?: string;
  token?: number;
  /** Most subflows seen at once, initial one included. */
  subflowsTotalMax: number;
  /** The connection fell back to plain TCP. */
  fallback: boolean;
  closed: boolean;
  error?: string;
}

export interface ServerTrailer {
  bytes: number;
  durationMs: number;
  tokenHex?: string;
  subflowsTotalMax: number;
  fallback: boolean;
  listener: 'mptcp' | 'tcp';
}

export interface ServerReport {
  pid: number;
  ports: { mptcp?: number; tcp?: number };
  connections: ServedConnection[];
  generatedAt: string;
}

export interface TrafficServer {
  readonly ports: { mptcp?: number; tcp?: number };
  report(): ServerReport;
  close(): Promise<void>;
}

export async function startTrafficServer(opts: TrafficServerOptions): Promise<TrafficServer> {
  const conns: ServedConnection[] = [];
  const live = new Map<number, { c: ServedConnection; s: net.Socket }>();
  let nextId = 1;
  const ports: { mptcp?: number; tcp?: number } = {};

  const sample = (c: ServedConnection, s: net.Socket, info?: MptcpInfo) => {
    const i = info ?? getMptcpInfo(s);
    if (!i) return;
    if (c.token === undefined && i.token !== 0) {
      c.token = i.token;
      c.tokenHex = i.tokenHex;
    }
    c.fallback = i.fallback;
    if (i.subflowsTotal > c.subflowsTotalMax) c.subflowsTotalMax = i.subflowsTotal;
  };

  const onConn = (listener: 'mptcp' | 'tcp') => (s: net.Socket) => {
    const c: ServedConnection = {
      id: nextId++,
      listener,
      localPort: s.localPort ?? 0,
      remoteAddress: s.remoteAddress ?? '',
      remotePort: s.remotePort ?? 0,
      startMs: Date.now(),
      bytes: 0,
      subflowsTotalMax: listener === 'tcp' ? 1 : 0,
      fallback: false,
      closed: false,
    };
    conns.push(c);
    live.set(c.id, { c, s });
    if (listener === 'mptcp') sample(c, s);
    s.setNoDelay(true);
    s.on('data', (d: Buffer) => {
      c.bytes += d.length;
    });
    s.on('end', () => {
      if (listener === 'mptcp') sample(c, s);
      c.endMs = Date.now();
      const t: ServerTrailer = {
        bytes: c.bytes,
        durationMs: c.endMs - c.startMs,
        tokenHex: c.tokenHex,
        subflowsTotalMax: c.subflowsTotalMax,
        fallback: c.fallback,
        listener,
      };
      s.end(`${JSON.stringify(t)}\n`);
    });
    s.on('error', (e) => {
      c.error = e.message;
    });
    s.on('close', () => {
      c.closed = true;
      c.endMs ??= Date.now();
      live.delete(c.id);
      opts.onConnectionDone?.(c);
    });
  };

  const servers: net.Server[] = [];
  const main = net.createServer(onConn(opts.mptcp === false ? 'tcp' : 'mptcp'));
  servers.push(main);
  if (opts.mptcp === false) {
    await new Promise<void>((res, rej) => {
      main.once('error', rej);
      main.listen({ port: opts.port, host: opts.host ?? '0.0.0.0' }, () => res());
    });
    ports.tcp = (main.address() as net.AddressInfo).port;
  } else {
    await listenMptcp(main, { port: opts.port, host: opts.host });
    ports.mptcp = (main.address() as net.AddressInfo).port;
  }
  if (opts.tcpPort !== undefined) {
    const plain = net.createServer(onConn('tcp'));
    servers.push(plain);
    await new Promise<void>((res, rej) => {
      plain.once('error', rej);
      plain.listen({ port: opts.tcpPort, host: opts.host ?? '0.0.0.0' }, () => res());
    });
    ports.tcp = (plain.address() as net.AddressInfo).port;
  }

  // Subflows join after the connection is up and may leave before it ends: sample while open.
  const timer = setInterval(() => {
    for (const { c, s } of live.values()) if (c.listener === 'mptcp') sample(c, s);
  }, opts.sampleMs ?? 100);
  timer.unref();

  return {
    ports,
    report: () => ({ pid: process.pid, ports, connections: conns.map((c) => ({ ...c })), generatedAt: new Date().toISOString() }),
    close: async () => {
      clearInterval(timer);
      for (const { s } of live.values()) s.destroy();
      await Promise.all(servers.map((sv) => new Promise<void>((r) => sv.close(() => r()))));
    },
  };
}
