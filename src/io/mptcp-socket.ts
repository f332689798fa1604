// MPTCP sockets for Node through koffi: socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP) handed to net.Socket /
// net.Server, and MPTCP_INFO (include/uapi/linux/mptcp.h, struct mptcp_info) for subflow counts and tokens.
import * as koffi from 'koffi';
import fs from 'node:fs';
import net from 'node:net';
import { toHex8 } from '../wire/tokens.js';

export const IPPROTO_MPTCP = 262;
export const SOL_MPTCP = 284;
export const MPTCP_INFO = 1;
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const IPPROTO_TCP = 6;
const TCP_INFO = 11;
const MPTCP_INFO_FLAG_FALLBACK = 1;
const MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED = 2;

export type MptcpErrorCode = 'MPTCP_UNSUPPORTED' | 'MPTCP_DISABLED' | 'MPTCP_SOCKET_FAILED' | 'MPTCP_BIND_FAILED';

export class MptcpError extends Error {
  readonly code: MptcpErrorCode;
  readonly errno: number;
  constructor(code: MptcpErrorCode, message: string, errno = 0) {
    super(message);
    this.name = 'MptcpError';
    this.code = code;
    this.errno = errno;
  }
}

interface SockLib {
  socket: (d: number, t: number, p: number) => number;
  bind: (fd: number, addr: Uint8Array, len: number) => number;
  close: (fd: number) => number;
  getsockopt: (fd: number, level: number, name: number, val: Uint8Array, len: Uint32Array) => number;
  setsockopt: (fd: number, level: number, name: number, val: Uint8Array, len: number) => number;
}
let lib: SockLib | undefined;
function sock(): SockLib {
  if (lib) return lib;
  const c = koffi.load('libc.so.6');
  lib = {
    socket: c.func('int socket(int domain, int type, int protocol)'),
    bind: c.func('int bind(int fd, const void *addr, uint32_t len)'),
    close: c.func('int close(int fd)'),
    getsockopt: c.func('int getsockopt(int fd, int level, int name, void *val, void *len)'),
    setsockopt: c.func('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)'),
  };
  return lib;
}

function sysctlMptcpEnabled(): string | undefined {
  try {
    return fs.readFileSync('/proc/sys/net/mptcp/enabled', 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** Creates a non-blocking, close-on-exec MPTCP socket; throws MptcpError with advice when impossible. */
export function createMptcpFd(family: 4 | 6 = 4): number {
  const fd = sock().socket(family === 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_MPTCP);
  if (fd >= 0) return fd;
  const e = koffi.errno();
  // EPROTONOSUPPORT (93) / EINVAL: kernel built without CONFIG_MPTCP; ENOPROTOOPT (92): net.mptcp.enabled=0.
  if (e === 92 || sysctlMptcpEnabled() === '0') {
    throw new MptcpError('MPTCP_DISABLED', 'MPTCP is disabled in this network namespace: run "sysctl -w net.mptcp.enabled=1"', e);
  }
  if (e === 93 || e === 22 || e === 97) {
    throw new MptcpError('MPTCP_UNSUPPORTED', 'this kernel has no MPTCP support (needs Linux >= 5.6 with CONFIG_MPTCP=y); use plain TCP mode instead', e);
  }
  throw new MptcpError('MPTCP_SOCKET_FAILED', `socket(IPPROTO_MPTCP) failed with errno ${e}`, e);
}

/** True when an MPTCP socket can be created here. */
export function mptcpAvailable(): { ok: boolean; reason?: string } {
  try {
    sock().close(createMptcpFd(4));
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

function sockaddr(host: string, port: number): { buf: Buffer; family: 4 | 6 } {
  const fam = net.isIP(host);
  if (fam === 4) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    host.split('.').forEach((p, i) => b.writeUInt8(Number(p), 4 + i));
    return { buf: b, family: 4 };
  }
  if (fam === 6) {
    const b = Buffer.alloc(28);
    b.writeUInt16LE(AF_INET6, 0);
    b.writeUInt16BE(port, 2);
    ipv6Bytes(host).copy(b, 8);
    return { buf: b, family: 6 };
  }
  throw new MptcpError('MPTCP_BIND_FAILED', `"${host}" is not a numeric IP address`);
}

function ipv6Bytes(addr: string): Buffer {
  let a = addr.split('%')[0];
  const b = Buffer.alloc(16);
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(a);
  if (v4) a = `${a.slice(0, -v4[1].length)}0:0`;
  const dbl = a.indexOf('::');
  const head = (dbl >= 0 ? a.slice(0, dbl) : a).split(':').filter((g) => g !== '');
  const tail = dbl >= 0 ? a.slice(dbl + 2).split(':').filter((g) => g !== '') : [];
  const groups = dbl >= 0 ? [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail] : head;
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  if (v4) v4[1].split('.').forEach((p, i) => (b[12 + i] = Number(p)));
  return b;
}

/** File descriptor behind a connected or listening net.Socket / net.Server (Linux, libuv TCP handle). */
export function socketFd(s: net.Socket | net.Server): number {
  const h = (s as unknown as { _handle?: { fd?: number } })._handle;
  return h && typeof h.fd === 'number' ? h.fd : -1;
}

/** Starts an MPTCP connection; use like net.connect (events: connect, data, error, close). */
export function connectMptcp(opts: { host: string; port: number; localAddress?: string; localPort?: number }): net.Socket {
  const fd = createMptcpFd(net.isIPv6(opts.host) ? 6 : 4);
  // pauseOnCreate keeps Node from starting a read on the still unconnected fd.
  const s = new net.Socket({ fd, readable: true, writable: true, pauseOnCreate: true } as net.SocketConstructorOpts);
  s.connect({ port: opts.port, host: opts.host, localAddress: opts.localAddress, localPort: opts.localPort });
  s.once('connect', () => s.resume());
  return s;
}

/** Makes `server` listen on an MPTCP socket bound to host:port (default 0.0.0.0). */
export function listenMptcp(server: net.Server, opts: { port: number; host?: string; backlog?: number }): Promise<void> {
  const host = opts.host ?? '0.0.0.0';
  const { buf, family } = sockaddr(host, opts.port);
  const fd = createMptcpFd(family);
  const one = Buffer.alloc(4);
  one.writeInt32LE(1, 0);
  sock().setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4);
  if (sock().bind(fd, buf, buf.length) < 0) {
    const e = koffi.errno();
    sock().close(fd);
    const why = e === 98 ? 'address in use' : e === 99 ? 'address not available here' : `errno ${e}`;
    return Promise.reject(new MptcpError('MPTCP_BIND_FAILED', `binding an MPTCP socket to ${host}:${opts.port} failed: ${why}`, e));
  }
  return new Promise((resolve, reject) => {
    const onErr = (err: Error) => {
      sock().close(fd);
      reject(err);
    };
    server.once('error', onErr);
    server.listen({ fd, backlog: opts.backlog ?? 511 }, () => {
      server.removeListener('error', onErr);
      resolve();
    });
  });
}

export interface MptcpInfo {
  /** Extra subflows (joins), as the kernel counts them (mptcpi_subflows). */
  subflows: number;
  /** All subflows including the initial one (mptcpi_subflows_total, Linux >= 6.8; else subflows + 1). */
  subflowsTotal: number;
  /** This side's connection token; on a server it is the token that the client's MP_JOINs carry. */
  token: number;
  tokenHex: string;
  flags: number;
  fallback: boolean;
  remoteKeyReceived: boolean;
  subflowsMax: number;
  addAddrAccepted: number;
  bytesSent?: number;
  bytesReceived?: number;
  bytesAcked?: number;
  bytesRetrans?: number;
  /** How many bytes of struct mptcp_info the kernel filled. */
  infoBytes: number;
}

const infoBuf = Buffer.alloc(256);
const lenBuf = new Uint32Array(1);

/** Reads MPTCP_INFO; undefined when the socket is not MPTCP (EOPNOTSUPP) or is closed. */
export function getMptcpInfo(s: net.Socket | number): MptcpInfo | undefined {
  const fd = typeof s === 'number' ? s : socketFd(s);
  if (fd < 0) return undefined;
  infoBuf.fill(0);
  lenBuf[0] = infoBuf.length;
  if (sock().getsockopt(fd, SOL_MPTCP, MPTCP_INFO, infoBuf, lenBuf) < 0) return undefined;
  const n = lenBuf[0];
  // Offsets of struct mptcp_info (x86-64 and arm64 layout).
  const subflows = infoBuf.readUInt8(0);
  const flags = infoBuf.readUInt32LE(8);
  const token = infoBuf.readUInt32LE(12);
  const info: MptcpInfo = {
    subflows,
    subflowsTotal: n >= 81 ? infoBuf.readUInt8(80) : subflows + 1,
    token,
    tokenHex: toHex8(token),
    flags,
    fallback: (flags & MPTCP_INFO_FLAG_FALLBACK) !== 0,
    remoteKeyReceived: (flags & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED) !== 0,
    subflowsMax: infoBuf.readUInt8(3),
    addAddrAccepted: infoBuf.readUInt8(2),
    infoBytes: n,
  };
  if (n >= 80) {
    info.bytesRetrans = Number(infoBuf.readBigUInt64LE(48));
    info.bytesSent = Number(infoBuf.readBigUInt64LE(56));
    info.bytesReceived = Number(infoBuf.readBigUInt64LE(64));
    info.bytesAcked = Number(infoBuf.readBigUInt64LE(72));
  }
  return info;
}

const tcpInfoBuf = Buffer.alloc(256);
/** tcpi_bytes_acked from TCP_INFO (plain TCP sockets), or undefined. */
export function getTcpBytesAcked(s: net.Socket | number): number | undefined {
  const fd = typeof s === 'number' ? s : socketFd(s);
  if (fd < 0) return undefined;
  lenBuf[0] = tcpInfoBuf.length;
  if (sock().getsockopt(fd, IPPROTO_TCP, TCP_INFO, tcpInfoBuf, lenBuf) < 0 || lenBuf[0] < 128) return undefined;
  return Number(tcpInfoBuf.readBigUInt64LE(120));
}

const MPTCP_TCPINFO = 2;
const SUBFLOW_HDR = 16, SUBFLOW_ELEM = 8, MAX_SUBFLOWS = 16;
const subflowBuf = Buffer.alloc(SUBFLOW_HDR + MAX_SUBFLOWS * SUBFLOW_ELEM);
/**
 * Subflows in TCP state ESTABLISHED, from MPTCP_TCPINFO (struct mptcp_subflow_data + one tcp_info per subflow,
 * of which only tcpi_state, the first byte, is asked for); undefined when it cannot be read. Unlike MPTCP_INFO's
 * counts, a join whose handshake is still under way is not counted.
 */
export function establishedSubflows(s: net.Socket | number): number | undefined {
  const fd = typeof s === 'number' ? s : socketFd(s);
  if (fd < 0) return undefined;
  subflowBuf.fill(0);
  subflowBuf.writeUInt32LE(SUBFLOW_HDR, 0); // size_subflow_data
  subflowBuf.writeUInt32LE(SUBFLOW_ELEM, 12); // size_user
  lenBuf[0] = subflowBuf.length;
  if (sock().getsockopt(fd, SOL_MPTCP, MPTCP_TCPINFO, subflowBuf, lenBuf) < 0) return undefined;
  const n = Math.min(subflowBuf.readUInt32LE(4), MAX_SUBFLOWS, Math.floor((lenBuf[0] - SUBFLOW_HDR) / SUBFLOW_ELEM));
  let up = 0;
  for (let i = 0; i < n; i++) if (subflowBuf[SUBFLOW_HDR + i * SUBFLOW_ELEM] === 1 /* TCP_ESTABLISHED */) up++;
  return up;
}
