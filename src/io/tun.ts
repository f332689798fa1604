// Linux TUN device through koffi (libc open/ioctl/read/write/poll): the packet device mplb reads and writes.
// Kernel interface: Documentation/networking/tuntap.rst (TUNSETIFF with IFF_TUN|IFF_NO_PI).
import * as koffi from 'koffi';

/** Stable error codes; the message always says what to do. */
export type TunErrorCode =
  | 'TUN_EPERM' // no CAP_NET_ADMIN
  | 'TUN_NO_DEVICE' // /dev/net/tun missing
  | 'TUN_NAME_TAKEN' // another interface has the name
  | 'TUN_BAD_NAME'
  | 'TUN_IOCTL_FAILED'
  | 'TUN_CLOSED';

export class TunError extends Error {
  readonly code: TunErrorCode;
  readonly errno: number;
  constructor(code: TunErrorCode, message: string, errno = 0) {
    super(message);
    this.name = 'TunError';
    this.code = code;
    this.errno = errno;
  }
}

// Linux x86-64/arm64 constants (include/uapi/linux/if_tun.h, asm-generic/ioctls, fcntl).
const O_RDWR = 0o2;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCSIFMTU = 0x8922;
const SIOCSIFTXQLEN = 0x8943;
const IFF_UP = 0x1;
export const IFF_TUN = 0x0001;
export const IFF_NO_PI = 0x1000;
export const IFF_MULTI_QUEUE = 0x0100;
export const IFF_VNET_HDR = 0x4000;
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_USO4 = 0x20;
export const TUN_F_USO6 = 0x40;
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
export const EAGAIN = 11;
export const EINTR = 4;
const POLLIN = 0x1;

interface Libc {
  open: (path: string, flags: number, mode: number) => number;
  close: (fd: number) => number;
  ioctl: (fd: number, req: number, arg: Uint8Array | null) => number;
  ioctlInt: (fd: number, req: number, arg: number) => number;
  fcntl: (fd: number, cmd: number, arg: number) => number;
  read: (fd: number, buf: Uint8Array, n: number) => number;
  write: (fd: number, buf: Uint8Array, n: number) => number;
  poll: (fds: Uint8Array, nfds: number, timeoutMs: number) => number;
  socket: (domain: number, type: number, proto: number) => number;
  ifNameToIndex: (name: string) => number;
  eventfd: (initval: number, flags: number) => number;
}

let libcCache: Libc | undefined;
/** Lazily bound libc (koffi loads per thread; each worker gets its own binding). */
function libc(): Libc {
  if (libcCache) return libcCache;
  const lib = koffi.load('libc.so.6');
  // ioctl is variadic in C; on x86-64/arm64 a fixed third argument has the same ABI.
  libcCache = {
    open: lib.func('int open(const char *path, int flags, int mode)'),
    close: lib.func('int close(int fd)'),
    ioctl: lib.func('int ioctl(int fd, unsigned long req, void *arg)'),
    ioctlInt: lib.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']),
    fcntl: lib.func('int fcntl(int fd, int cmd, long arg)'),
    read: lib.func('long read(int fd, void *buf, unsigned long n)'),
    write: lib.func('long write(int fd, const void *buf, unsigned long n)'),
    poll: lib.func('int poll(void *fds, unsigned long nfds, int timeout)'),
    socket: lib.func('int socket(int domain, int type, int proto)'),
    ifNameToIndex: lib.func('unsigned int if_nametoindex(const char *name)'),
    eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
  };
  return libcCache;
}

function errno(): number {
  return koffi.errno();
}

function strerror(e: number): string {
  const names: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 9: 'EBADF', 13: 'EACCES', 16: 'EBUSY', 19: 'ENODEV', 22: 'EINVAL', 11: 'EAGAIN' };
  return names[e] ?? `errno ${e}`;
}

export interface TunOptions {
  /** Interface name (max 15 chars); kernel picks tunN if omitted. */
  name?: string;
  /** IFF_MULTI_QUEUE: more fds on the same device through `openQueue()`. */
  multiQueue?: boolean;
  /** IFF_VNET_HDR: every packet is preceded by a virtio_net_hdr (size set by vnetHdrBytes, default 12). */
  vnetHdr?: boolean;
  vnetHdrBytes?: number;
  /** TUN_F_* offload bits (only meaningful with vnetHdr). */
  offloads?: number;
  /** Link MTU set after creation (default: leave the kernel's 1500). */
  mtu?: number;
  /** Kernel queue (packets) in front of the reader; default 500. Longer absorbs GSO bursts, adds latency. */
  txQueueLen?: number;
  /** Bring the link up (default true). */
  up?: boolean;
  /** O_NONBLOCK on the fd: read() returns 0 instead of blocking (default false). */
  nonBlocking?: boolean;
}

function makeIfreq(name: string, flags: number): Buffer {
  const ifr = Buffer.alloc(IFREQ_SIZE);
  ifr.write(name, 0, IFNAMSIZ - 1, 'ascii');
  ifr.writeUInt16LE(flags & 0xffff, IFNAMSIZ);
  return ifr;
}

function checkName(name: string): void {
  if (name.length === 0 || name.length >= IFNAMSIZ || !/^[A-Za-z0-9_.-]+$/.test(name)) {
    throw new TunError('TUN_BAD_NAME', `TUN name "${name}" is invalid: use 1-15 characters from [A-Za-z0-9_.-]`);
  }
}

function openCloneDevice(nonBlocking: boolean): number {
  const c = libc();
  const fd = c.open('/dev/net/tun', O_RDWR | O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0), 0);
  if (fd < 0) {
    const e = errno();
    if (e === 2 || e === 19 || e === 6) {
      throw new TunError('TUN_NO_DEVICE', '/dev/net/tun is missing: load the tun module (modprobe tun) or create the node (mkdir -p /dev/net && mknod /dev/net/tun c 10 200)', e);
    }
    if (e === 1 || e === 13) {
      throw new TunError('TUN_EPERM', 'cannot open /dev/net/tun: run as root (or with CAP_NET_ADMIN)', e);
    }
    throw new TunError('TUN_IOCTL_FAILED', `open(/dev/net/tun) failed: ${strerror(e)}`, e);
  }
  return fd;
}

/** A TUN device (one queue = one fd). Hot methods return numbers and never throw. */
export class TunDevice {
  readonly name: string;
  readonly flags: number;
  readonly vnetHdrBytes: number;
  private fdValue: number;
  private readonly pollBuf = Buffer.alloc(8);

  constructor(fd: number, name: string, flags: number, vnetHdrBytes = 0) {
    this.fdValue = fd;
    this.name = name;
    this.flags = flags;
    this.vnetHdrBytes = vnetHdrBytes;
    this.pollBuf.writeInt32LE(fd, 0);
    this.pollBuf.writeInt16LE(POLLIN, 4);
  }

  /** Wraps an fd opened elsewhere (e.g. passed from the main thread to a worker). */
  static fromFd(fd: number, name: string, flags = IFF_TUN | IFF_NO_PI, vnetHdrBytes = 0): TunDevice {
    return new TunDevice(fd, name, flags, vnetHdrBytes);
  }

  get fd(): number {
    return this.fdValue;
  }

  get closed(): boolean {
    return this.fdValue < 0;
  }

  /**
   * Hot path. Reads one packet into buf[offset..]. Returns its length, 0 when none is ready
   * (non-blocking fd, or EINTR), or -errno on failure.
   */
  read(buf: Uint8Array, offset = 0, length = buf.length - offset): number {
    const view = offset === 0 ? buf : buf.subarray(offset);
    const n = libc().read(this.fdValue, view, length <= view.length ? length : view.length);
    if (n >= 0) return n;
    const e = errno();
    return e === EAGAIN || e === EINTR ? 0 : -e;
  }

  /** Hot path. Writes one packet from buf[offset..offset+length). Returns bytes written or -errno. */
  write(buf: Uint8Array, length: number, offset = 0): number {
    const view = offset === 0 ? buf : buf.subarray(offset);
    const n = libc().write(this.fdValue, view, length <= view.length ? length : view.length);
    return n >= 0 ? n : -errno();
  }

  /** Waits up to timeoutMs (-1 = forever) for a packet. True when one is ready to read. */
  poll(timeoutMs: number): boolean {
    this.pollBuf.writeInt16LE(0, 6);
    const r = libc().poll(this.pollBuf, 1, timeoutMs);
    return r > 0 && (this.pollBuf.readInt16LE(6) & POLLIN) !== 0;
  }

  /** Switches O_NONBLOCK on or off (a poll-driven loop needs it on). */
  setNonBlocking(on: boolean): void {
    const c = libc();
    const fl = c.fcntl(this.fdValue, 3 /* F_GETFL */, 0);
    if (fl < 0 || c.fcntl(this.fdValue, 4 /* F_SETFL */, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK) < 0) {
      const e = errno();
      throw new TunError('TUN_IOCTL_FAILED', `fcntl(O_NONBLOCK) on ${this.name} failed: ${strerror(e)}`, e);
    }
  }

  /** Sets TUN_F_* offloads (needs vnetHdr). */
  setOffload(flags: number): void {
    if (libc().ioctlInt(this.fdValue, TUNSETOFFLOAD, flags) < 0) {
      const e = errno();
      throw new TunError('TUN_IOCTL_FAILED', `TUNSETOFFLOAD(${flags}) on ${this.name} failed: ${strerror(e)}`, e);
    }
  }

  /** Opens one more queue of a multi-queue device (IFF_MULTI_QUEUE). */
  openQueue(nonBlocking = false): TunDevice {
    if ((this.flags & IFF_MULTI_QUEUE) === 0) {
      throw new TunError('TUN_IOCTL_FAILED', `${this.name} was not opened with multiQueue: true`);
    }
    const fd = openCloneDevice(nonBlocking);
    attach(fd, this.name, this.flags);
    return new TunDevice(fd, this.name, this.flags, this.vnetHdrBytes);
  }

  /** Closes the fd; the kernel removes a non-persistent device when its last queue closes. Idempotent. */
  close(): void {
    if (this.fdValue < 0) return;
    libc().close(this.fdValue);
    this.fdValue = -1;
  }
}

function attach(fd: number, name: string, flags: number): string {
  const ifr = makeIfreq(name, flags);
  if (libc().ioctl(fd, TUNSETIFF, ifr) < 0) {
    const e = errno();
    libc().close(fd);
    if (e === 1) throw new TunError('TUN_EPERM', 'creating a TUN device needs CAP_NET_ADMIN: run mplb as root', e);
    if (e === 16 || e === 22) {
      throw new TunError('TUN_NAME_TAKEN', `interface name "${name}" is already in use (by a device of another kind or another process): choose another name or delete it with "ip link del ${name}"`, e);
    }
    throw new TunError('TUN_IOCTL_FAILED', `TUNSETIFF("${name}") failed: ${strerror(e)}`, e);
  }
  const end = ifr.indexOf(0);
  return ifr.toString('ascii', 0, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end);
}

/** Creates (or, for a name already taken, refuses) a TUN device in the calling thread's network namespace. */
export function openTun(opts: TunOptions = {}): TunDevice {
  const name = opts.name ?? '';
  if (name !== '') {
    checkName(name);
    if (libc().ifNameToIndex(name) !== 0) {
      throw new TunError('TUN_NAME_TAKEN', `interface "${name}" already exists in this network namespace: choose another name or remove it with "ip link del ${name}"`);
    }
  }
  let flags = IFF_TUN | IFF_NO_PI;
  if (opts.multiQueue) flags |= IFF_MULTI_QUEUE;
  if (opts.vnetHdr) flags |= IFF_VNET_HDR;
  const fd = openCloneDevice(opts.nonBlocking ?? false);
  const actual = attach(fd, name, flags);
  let hdr = 0;
  const dev = () => new TunDevice(fd, actual, flags, hdr);
  try {
    if (opts.vnetHdr) {
      hdr = opts.vnetHdrBytes ?? 12;
      const sz = Buffer.alloc(4);
      sz.writeInt32LE(hdr, 0);
      if (libc().ioctl(fd, TUNSETVNETHDRSZ, sz) < 0) {
        const e = errno();
        throw new TunError('TUN_IOCTL_FAILED', `TUNSETVNETHDRSZ(${hdr}) failed: ${strerror(e)}`, e);
      }
      if (opts.offloads !== undefined) dev().setOffload(opts.offloads);
    }
    if (opts.mtu !== undefined) setLinkMtu(actual, opts.mtu);
    if (opts.txQueueLen !== undefined) setLinkTxQueueLen(actual, opts.txQueueLen);
    if (opts.up ?? true) setLinkUp(actual, true);
  } catch (err) {
    libc().close(fd);
    throw err;
  }
  return dev();
}

function withInetSocket<T>(fn: (s: number) => T): T {
  const c = libc();
  const s = c.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) throw new TunError('TUN_IOCTL_FAILED', `socket(AF_INET) failed: ${strerror(errno())}`, errno());
  try {
    return fn(s);
  } finally {
    c.close(s);
  }
}

/** Sets an interface's MTU through SIOCSIFMTU (no `ip` binary needed). */
export function setLinkMtu(name: string, mtu: number): void {
  checkName(name);
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) {
    throw new TunError('TUN_IOCTL_FAILED', `MTU ${mtu} is out of range: use 68..65535`);
  }
  withInetSocket((s) => {
    const ifr = makeIfreq(name, 0);
    ifr.writeInt32LE(mtu, IFNAMSIZ);
    if (libc().ioctl(s, SIOCSIFMTU, ifr) < 0) {
      const e = errno();
      const hint = e === 1 ? ': run as root' : '';
      throw new TunError(e === 1 ? 'TUN_EPERM' : 'TUN_IOCTL_FAILED', `setting MTU ${mtu} on ${name} failed: ${strerror(e)}${hint}`, e);
    }
  });
}

/** Sets an interface's transmit queue length (packets) through SIOCSIFTXQLEN. */
export function setLinkTxQueueLen(name: string, qlen: number): void {
  checkName(name);
  withInetSocket((s) => {
    const ifr = makeIfreq(name, 0);
    ifr.writeInt32LE(qlen, IFNAMSIZ);
    if (libc().ioctl(s, SIOCSIFTXQLEN, ifr) < 0) {
      const e = errno();
      throw new TunError(e === 1 ? 'TUN_EPERM' : 'TUN_IOCTL_FAILED', `setting txqueuelen ${qlen} on ${name} failed: ${strerror(e)}`, e);
    }
  });
}

/** Brings an interface up or down through SIOCGIFFLAGS/SIOCSIFFLAGS. */
export function setLinkUp(name: string, up: boolean): void {
  checkName(name);
  withInetSocket((s) => {
    const ifr = makeIfreq(name, 0);
    if (libc().ioctl(s, SIOCGIFFLAGS, ifr) < 0) {
      const e = errno();
      throw new TunError('TUN_IOCTL_FAILED', `reading flags of ${name} failed: ${strerror(e)}`, e);
    }
    const cur = ifr.readUInt16LE(IFNAMSIZ);
    ifr.writeUInt16LE(up ? cur | IFF_UP : cur & ~IFF_UP, IFNAMSIZ);
    if (libc().ioctl(s, SIOCSIFFLAGS, ifr) < 0) {
      const e = errno();
      throw new TunError(e === 1 ? 'TUN_EPERM' : 'TUN_IOCTL_FAILED', `setting ${name} ${up ? 'up' : 'down'} failed: ${strerror(e)}`, e);
    }
  });
}

/**
 * Waits until one of fds is readable or timeoutMs passes. `scratch` must hold 8 bytes per fd
 * (reuse it: no allocation). Returns a bit mask: bit i set when fds[i] is readable; 0 on timeout.
 */
export function pollReadable(fds: readonly number[], timeoutMs: number, scratch: Buffer): number {
  for (let i = 0; i < fds.length; i++) {
    scratch.writeInt32LE(fds[i], i * 8);
    scratch.writeInt16LE(POLLIN, i * 8 + 4);
    scratch.writeInt16LE(0, i * 8 + 6);
  }
  const r = libc().poll(scratch, fds.length, timeoutMs);
  if (r <= 0) return 0;
  let mask = 0;
  for (let i = 0; i < fds.length; i++) if (scratch.readInt16LE(i * 8 + 6) !== 0) mask |= 1 << i; // POLLIN, POLLERR or POLLHUP
  return mask;
}

/** eventfd(2), non-blocking: a cheap cross-thread wake-up that poll() can wait on. */
export function createEventFd(): number {
  const fd = libc().eventfd(0, O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw new TunError('TUN_IOCTL_FAILED', `eventfd failed: ${strerror(errno())}`, errno());
  return fd;
}

const one = new BigUint64Array([1n]);
const oneBytes = new Uint8Array(one.buffer);
/** Adds 1 to an eventfd counter (wakes a poller). */
export function signalEventFd(fd: number): void {
  libc().write(fd, oneBytes, 8);
}

const drainBuf = new Uint8Array(8);
/** Resets an eventfd counter to 0. */
export function drainEventFd(fd: number): void {
  libc().read(fd, drainBuf, 8);
}

/** Closes a raw fd opened through this module. */
export function closeFd(fd: number): void {
  if (fd >= 0) libc().close(fd);
}
