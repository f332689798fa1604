// Loads build/fastpath.bpf.o through libbpf, attaches it at tc ingress (clsact, direct action) of the balancer's
// interfaces, reads its per-CPU counters, and takes everything down again. Cold: start, stop, /metrics.
// Map fds are process-wide, so the packet worker thread updates the flow map through the same fd (flow-map.ts).
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BPF_TC_EGRESS, BPF_TC_F_REPLACE, BPF_TC_INGRESS, EEXIST, libbpf, tcHook, tcOpts } from './libbpf.js';
import { FP_COUNTER_LABELS, type FpCounterLabel } from './layout.js';

/** The tc filter handle of every mplb program ("mp"); the priority tells instances apart (device.rulePriority). */
export const TC_HANDLE = 0x6d70;

export class FastpathError extends Error {
  constructor(readonly code: 'FP_NO_OBJECT' | 'FP_LOAD' | 'FP_ATTACH' | 'FP_NO_LIBBPF', message: string) {
    super(message);
    this.name = 'FastpathError';
  }
}

/** build/fastpath.bpf.o beside dist/ (npm run build makes it). */
export function defaultObjectPath(): string {
  return fileURLToPath(new URL('../../../build/fastpath.bpf.o', import.meta.url));
}

export interface AttachedInterface { name: string; ifindex: number; createdQdisc: boolean }

export interface FastpathHandle {
  readonly progFd: number;
  readonly flowsFd: number;
  readonly countersFd: number;
  /** mplb_backend_stats: what the program NATed per backend and direction (FlowMap.foldBackendStats reads it). */
  readonly statsFd: number;
  readonly maxEntries: number;
  readonly attached: readonly AttachedInterface[];
  /** Attaches at tc ingress of each interface (replacing a filter a dead run left at the same handle and priority). */
  attach(ifaces: Array<{ name: string; ifindex: number }>): void;
  /** Detaches from every interface (and removes the clsact qdiscs it created); the maps stay open. */
  detach(): void;
  /** The program's counters summed over CPUs. */
  counters(): Record<FpCounterLabel, number>;
  /** Detaches, removes the clsact qdiscs it created, closes the object (maps go with their last reference). Idempotent, synchronous. */
  close(): void;
}

/** The interfaces of this network namespace the balancer's traffic can arrive on: all but loopback and mplb's TUN. */
export function balancerInterfaces(tunName: string): Array<{ name: string; ifindex: number }> {
  const out: Array<{ name: string; ifindex: number }> = [];
  for (const name of fs.readdirSync('/sys/class/net')) {
    if (name === 'lo' || name === tunName) continue;
    const ifindex = Number(fs.readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim());
    if (Number.isInteger(ifindex) && ifindex > 0) out.push({ name, ifindex });
  }
  return out.sort((a, b) => a.ifindex - b.ifindex);
}

/**
 * Removes mplb filters at this priority that a run killed with SIGKILL left behind (their program would keep
 * NATing from a map nobody updates). Returns the interfaces they were on.
 */
export function detachStale(priority: number, ifaces: Array<{ name: string; ifindex: number }>): string[] {
  const l = libbpf();
  const found: string[] = [];
  for (const i of ifaces) {
    const hook = tcHook(i.ifindex, BPF_TC_INGRESS);
    if (l.tcDetach(hook, tcOpts(0, 0, TC_HANDLE, priority)) === 0) found.push(i.name);
  }
  return found;
}

export function loadFastpath(opts: { objectPath?: string; maxEntries: number; priority: number }): FastpathHandle {
  const path = opts.objectPath ?? defaultObjectPath();
  if (!fs.existsSync(path)) throw new FastpathError('FP_NO_OBJECT', `${path} is missing: run npm run build (it needs clang and libbpf-dev)`);
  let l: ReturnType<typeof libbpf>;
  try { l = libbpf(); } catch (e) { throw new FastpathError('FP_NO_LIBBPF', (e as Error).message); }
  const obj = l.openFile(path, null);
  if (!obj) throw new FastpathError('FP_LOAD', `bpf_object__open_file(${path}) failed: errno ${l.errno()}`);
  let closed = false;
  const attached: AttachedInterface[] = [];
  const fail = (msg: string): never => { l.close(obj); closed = true; throw new FastpathError('FP_LOAD', msg); };
  const flowsMap = l.findMap(obj, 'mplb_flows');
  const countersMap = l.findMap(obj, 'mplb_counters');
  const statsMap = l.findMap(obj, 'mplb_backend_stats');
  if (!flowsMap || !countersMap || !statsMap) fail(`${path} has no mplb_flows/mplb_counters/mplb_backend_stats map: rebuild it`);
  // Two entries per flow (one per direction), preallocated at load (bpf/fastpath.bpf.c says why).
  const maxEntries = Math.max(64, Math.min(opts.maxEntries, 1 << 26));
  let r = l.setMaxEntries(flowsMap, maxEntries);
  if (r < 0) fail(`bpf_map__set_max_entries failed: errno ${-r}`);
  r = l.load(obj);
  if (r < 0) fail(`loading ${path} into the kernel failed: errno ${-r}${-r === 1 ? ' (EPERM: needs root/CAP_BPF+CAP_NET_ADMIN)' : ''}; libbpf printed the verifier's log above`);
  const prog = l.findProgram(obj, 'mplb_fastpath');
  if (!prog) fail(`${path} has no mplb_fastpath program`);
  const progFd = l.programFd(prog), flowsFd = l.mapFd(flowsMap), countersFd = l.mapFd(countersMap), statsFd = l.mapFd(statsMap);
  const ncpu = l.possibleCpus();
  if (ncpu <= 0) fail(`libbpf_num_possible_cpus failed: ${ncpu}`);
  const keyBuf = Buffer.alloc(4), valBuf = Buffer.alloc(8 * ncpu);

  const detachOne = (a: AttachedInterface) => {
    l.tcDetach(tcHook(a.ifindex, BPF_TC_INGRESS), tcOpts(0, 0, TC_HANDLE, opts.priority));
    // Only a qdisc this run made goes (INGRESS|EGRESS destroys the clsact qdisc itself).
    if (a.createdQdisc) l.hookDestroy(tcHook(a.ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS));
  };
  const h: FastpathHandle = {
    progFd, flowsFd, countersFd, statsFd, maxEntries, attached,
    attach(ifaces) {
      for (const i of ifaces) {
        const hook = tcHook(i.ifindex, BPF_TC_INGRESS);
        const c = l.hookCreate(hook);
        if (c < 0 && c !== -EEXIST) throw new FastpathError('FP_ATTACH', `creating the clsact qdisc on ${i.name} failed: errno ${-c}`);
        const a = l.tcAttach(hook, tcOpts(progFd, BPF_TC_F_REPLACE, TC_HANDLE, opts.priority));
        if (a < 0) {
          if (c === 0) l.hookDestroy(tcHook(i.ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS));
          throw new FastpathError('FP_ATTACH', `attaching the fast path at tc ingress of ${i.name} failed: errno ${-a}`);
        }
        attached.push({ name: i.name, ifindex: i.ifindex, createdQdisc: c === 0 });
      }
    },
    detach() {
      for (const a of attached.splice(0)) {
        try { detachOne(a); } catch { /* interface gone: its filters went with it */ }
      }
    },
    counters() {
      const out = {} as Record<FpCounterLabel, number>;
      for (let k = 0; k < FP_COUNTER_LABELS.length; k++) {
        keyBuf.writeUInt32LE(k, 0);
        let sum = 0;
        if (!closed && l.mapLookup(countersFd, keyBuf, valBuf) === 0) {
          for (let c = 0; c < ncpu; c++) sum += Number(valBuf.readBigUInt64LE(8 * c));
        }
        out[FP_COUNTER_LABELS[k]] = sum;
      }
      return out;
    },
    close() {
      if (closed) return;
      h.detach();
      closed = true;
      l.close(obj);
    },
  };
  return h;
}

