// libbpf.so.1 through koffi: object loading, tc attach/detach, map operations and BPF_PROG_TEST_RUN.
// Bound lazily, once per thread (koffi bindings are per thread). libbpf 1.x returns -errno from int functions
// and NULL (errno set) from pointer functions. Struct layouts: /usr/include/bpf/libbpf.h and bpf.h (x86-64/arm64).
import * as koffi from 'koffi';

export interface Libbpf {
  openFile: (path: string, opts: null) => unknown;
  load: (obj: unknown) => number;
  close: (obj: unknown) => void;
  findMap: (obj: unknown, name: string) => unknown;
  findProgram: (obj: unknown, name: string) => unknown;
  programFd: (prog: unknown) => number;
  mapFd: (map: unknown) => number;
  setMaxEntries: (map: unknown, n: number) => number;
  mapUpdate: (fd: number, key: Uint8Array, value: Uint8Array, flags: number) => number;
  mapLookup: (fd: number, key: Uint8Array, value: Uint8Array) => number;
  mapDelete: (fd: number, key: Uint8Array) => number;
  mapNextKey: (fd: number, key: Uint8Array | null, next: Uint8Array) => number;
  /** count: a u32 in/out (elements given / elements done). */
  mapUpdateBatch: (fd: number, keys: Uint8Array, values: Uint8Array, count: Uint32Array, opts: null) => number;
  mapDeleteBatch: (fd: number, keys: Uint8Array, count: Uint32Array, opts: null) => number;
  /** in_batch null: from the start; out_batch: where the next call goes on (a u32 for arrays). */
  mapLookupBatch: (fd: number, inBatch: Uint8Array | null, outBatch: Uint8Array, keys: Uint8Array, values: Uint8Array, count: Uint32Array, opts: null) => number;
  hookCreate: (hook: Uint8Array) => number;
  hookDestroy: (hook: Uint8Array) => number;
  tcAttach: (hook: Uint8Array, opts: Uint8Array) => number;
  tcDetach: (hook: Uint8Array, opts: Uint8Array) => number;
  tcQuery: (hook: Uint8Array, opts: Uint8Array) => number;
  testRun: (progFd: number, opts: Uint8Array) => number;
  possibleCpus: () => number;
  errno: () => number;
}

let cache: Libbpf | undefined;
let loadError: string | undefined;

/** The bindings, or throws with what to install. */
export function libbpf(): Libbpf {
  if (cache) return cache;
  if (loadError) throw new Error(loadError);
  let lib: koffi.LibraryHandle;
  try {
    lib = koffi.load('libbpf.so.1');
  } catch (e) {
    loadError = `libbpf.so.1 cannot be loaded (${(e as Error).message}): apt-get install libbpf1 (Debian) for the tc-bpf data path`;
    throw new Error(loadError);
  }
  cache = {
    openFile: lib.func('void *bpf_object__open_file(const char *path, void *opts)'),
    load: lib.func('int bpf_object__load(void *obj)'),
    close: lib.func('void bpf_object__close(void *obj)'),
    findMap: lib.func('void *bpf_object__find_map_by_name(void *obj, const char *name)'),
    findProgram: lib.func('void *bpf_object__find_program_by_name(void *obj, const char *name)'),
    programFd: lib.func('int bpf_program__fd(void *prog)'),
    mapFd: lib.func('int bpf_map__fd(void *map)'),
    setMaxEntries: lib.func('int bpf_map__set_max_entries(void *map, uint32_t n)'),
    mapUpdate: lib.func('int bpf_map_update_elem(int fd, void *key, void *value, uint64_t flags)'),
    mapLookup: lib.func('int bpf_map_lookup_elem(int fd, void *key, void *value)'),
    mapDelete: lib.func('int bpf_map_delete_elem(int fd, void *key)'),
    mapNextKey: lib.func('int bpf_map_get_next_key(int fd, void *key, void *next)'),
    mapUpdateBatch: lib.func('int bpf_map_update_batch(int fd, void *keys, void *values, void *count, void *opts)'),
    mapDeleteBatch: lib.func('int bpf_map_delete_batch(int fd, void *keys, void *count, void *opts)'),
    mapLookupBatch: lib.func('int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, void *count, void *opts)'),
    hookCreate: lib.func('int bpf_tc_hook_create(void *hook)'),
    hookDestroy: lib.func('int bpf_tc_hook_destroy(void *hook)'),
    tcAttach: lib.func('int bpf_tc_attach(void *hook, void *opts)'),
    tcDetach: lib.func('int bpf_tc_detach(void *hook, void *opts)'),
    tcQuery: lib.func('int bpf_tc_query(void *hook, void *opts)'),
    testRun: lib.func('int bpf_prog_test_run_opts(int fd, void *opts)'),
    possibleCpus: lib.func('int libbpf_num_possible_cpus(void)'),
    errno: () => koffi.errno(),
  };
  return cache;
}

// enum bpf_tc_attach_point
export const BPF_TC_INGRESS = 1, BPF_TC_EGRESS = 2;
export const BPF_TC_F_REPLACE = 1;
export const BPF_ANY = 0, BPF_NOEXIST = 1;
export const ENOENT = 2, EEXIST = 17, EPERM = 1, E2BIG = 7, ENOMEM = 12;

/** struct bpf_tc_hook (24 bytes): sz, ifindex, attach_point, parent. */
export function tcHook(ifindex: number, attachPoint: number): Uint8Array {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(24n, 0);
  b.writeInt32LE(ifindex, 8);
  b.writeUInt32LE(attachPoint, 12);
  return b;
}

/** struct bpf_tc_opts (32 bytes): sz, prog_fd, flags, prog_id, handle, priority. */
export function tcOpts(progFd: number, flags: number, handle: number, priority: number): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(32n, 0);
  b.writeInt32LE(progFd, 8);
  b.writeUInt32LE(flags, 12);
  b.writeUInt32LE(0, 16);
  b.writeUInt32LE(handle, 20);
  b.writeUInt32LE(priority, 24);
  return b;
}

/**
 * BPF_PROG_TEST_RUN of a tc program on one frame (tests and the start-time probe): returns the program's verdict
 * and the frame as it left. struct bpf_test_run_opts is 80 bytes; its data pointers point at koffi-allocated memory.
 * `ctx`: the __sk_buff's ingress_ifindex and ifindex (the kernel then runs it as if received on that device of the
 * caller's network namespace, so a FIB lookup sees that namespace's routes). `repeat` > 1 (benchmarks): runs on the
 * same skb, so each run sees the previous one's rewrites; durationNs is the kernel's mean per run.
 */
export function testRun(progFd: number, frame: Uint8Array, ctx?: { ingressIfindex: number; ifindex: number }, repeat = 1): { retval: number; out: Uint8Array; durationNs: number } {
  const l = libbpf();
  const cap = frame.length + 256;
  const inMem = koffi.alloc('uint8_t', frame.length);
  const outMem = koffi.alloc('uint8_t', cap);
  // struct __sk_buff up to ifindex (offset 40, 4 bytes): the fields before it must be zero.
  const CTX_BYTES = 44;
  const ctxMem = ctx ? koffi.alloc('uint8_t', CTX_BYTES) : undefined;
  try {
    koffi.encode(inMem, 'uint8_t', Array.from(frame), frame.length);
    const o = Buffer.alloc(80);
    o.writeBigUInt64LE(80n, 0);
    o.writeBigUInt64LE(koffi.address(inMem), 8);
    o.writeBigUInt64LE(koffi.address(outMem), 16);
    o.writeUInt32LE(frame.length, 24);
    o.writeUInt32LE(cap, 28);
    if (ctx && ctxMem) {
      const c = Buffer.alloc(CTX_BYTES);
      c.writeUInt32LE(ctx.ingressIfindex, 36);
      c.writeUInt32LE(ctx.ifindex, 40);
      koffi.encode(ctxMem, 'uint8_t', Array.from(c), CTX_BYTES);
      o.writeBigUInt64LE(koffi.address(ctxMem), 32);
      o.writeUInt32LE(CTX_BYTES, 48);
    }
    // repeat: the program runs that many times on one skb (changes accumulate); duration: the mean ns per run.
    o.writeInt32LE(repeat, 60);
    const r = l.testRun(progFd, o);
    if (r < 0) throw new Error(`bpf_prog_test_run_opts failed: errno ${-r}`);
    const outLen = o.readUInt32LE(28);
    const out = Uint8Array.from(koffi.decode(outMem, 'uint8_t', outLen) as number[]);
    return { retval: o.readUInt32LE(56) | 0, out, durationNs: o.readUInt32LE(64) };
  } finally {
    koffi.free(inMem);
    koffi.free(outMem);
    if (ctxMem) koffi.free(ctxMem);
  }
}
