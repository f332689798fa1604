// The service table: VIPs, their backends, precomputed NAT checksum deltas and each VIP's selection table.
// Owns backend selection for new flows (Maglev or the poster's MPTCP-unaware hash baselines). Indices are stable
// for the engine's life: a removed backend keeps its slot (marked removed) so flows that point at it stay valid.
import { parseEndpoint, parseIp, formatEndpoint } from '../wire/addr.js';
import { replaceDelta, fold } from '../wire/checksum.js';
import type { EngineConfig, Policy } from './config.js';
import { buildMaglevTable } from './maglev.js';
import { hashAddrPair, hashEndpoint, hashFiveTuple, SMI_MASK } from './hash.js';
import type { PacketView } from '../wire/parse.js';
import { OpenIndex } from './open-addressing.js';

export const enum PolicyCode { Maglev = 0, Hash5Tuple = 1, HashIpPair = 2 }
const POLICY_CODES: Record<Policy, PolicyCode> = { 'maglev': PolicyCode.Maglev, 'hash-5tuple': PolicyCode.Hash5Tuple, 'hash-ip-pair': PolicyCode.HashIpPair };

export interface BackendInfo {
  index: number; vip: number; id: string; address: string; port: number; weight: number; up: boolean; removed: boolean;
  packetsIn: number; bytesIn: number; packetsOut: number; bytesOut: number;
}
export interface VipInfo { index: number; id: string; policy: Policy; backends: number[]; removed: boolean }

/** Stores address i (4 or 16 bytes) as 4 big-endian words and as 16 bytes (zero-padded), the two forms the hot path reads. */
function storeAddress(bytes: Uint8Array, words: Uint32Array, padded: Uint8Array, i: number): void {
  words.fill(0, 4 * i, 4 * i + 4);
  for (let j = 0; j < bytes.length; j += 4) {
    words[4 * i + (j >> 2)] = ((bytes[j] << 24) | (bytes[j + 1] << 16) | (bytes[j + 2] << 8) | bytes[j + 3]) >>> 0;
  }
  padded.fill(0, 16 * i, 16 * i + 16);
  padded.set(bytes, 16 * i);
}

/** The table of a VIP that has none (no Maglev table for a hash policy, no active backends yet). */
const NO_TABLE = new Int32Array(0);

function grow<T extends Uint8Array | Uint16Array | Uint32Array | Int32Array | Float64Array>(a: T, n: number): T {
  if (a.length >= n) return a;
  const b = new (a.constructor as new (n: number) => T)(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}

export class Services {
  // VIPs (struct of arrays; index = VIP id).
  vipCount = 0;
  vipFamily = new Uint8Array(8);
  vipAddr = new Uint32Array(32); // 4 words per VIP
  vipAddrBytes = new Uint8Array(128); // 16 bytes per VIP, for in-place rewrites
  vipPort = new Uint16Array(8);
  vipPolicy = new Uint8Array(8);
  vipRemoved = new Uint8Array(8);
  /** Per VIP: Maglev slot -> position in vipBackends[v] (or -1); empty unless the VIP's policy is maglev. */
  vipMaglev: Int32Array[] = [];
  /** Per VIP: global indices of its backends, in config order. */
  vipBackends: number[][] = [];
  /** Per VIP: global indices of backends that take new connections (weight > 0, up). */
  vipActive: Int32Array[] = [];
  private vipIds: string[] = [];
  /** Per VIP: its dual-stack service name ('' when none). */
  private vipService: string[] = [];
  /** VIP id -> index (applyConfig looks every configured VIP up: a linear search is quadratic in 2,000 VIPs). */
  private vipById = new Map<string, number>();
  private vipPolicyNames: Policy[] = [];
  /** Per VIP: the inputs its tables were built from (see refreshVip). */
  private vipBuiltFrom: string[] = [];
  /**
   * Maglev tables by their inputs (backend ids and weights, in order): VIPs with the same backends share one table,
   * which is read-only once built. 2,000 VIPs over 200 backend pairs build 200 tables, not 2,000 (start time, memory).
   */
  private readonly tableCache = new Map<string, Int32Array>();
  private vipTableKey: string[] = [];
  /** Selection tables built so far (one per VIP refresh that changed something): lets tests see what was rebuilt. */
  tableBuilds = 0;
  // VIP lookup over (address, port); entries are VIP index + 1.
  private vipIndex = new OpenIndex(64);

  // Backends (index = global backend id).
  backendCount = 0;
  beVip = new Uint16Array(8);
  beAddr = new Uint32Array(32);
  beAddrBytes = new Uint8Array(128);
  bePort = new Uint16Array(8);
  beWeight = new Uint32Array(8);
  beUp = new Uint8Array(8);
  beRemoved = new Uint8Array(8);
  /** IPv4 header checksum delta VIP address -> backend address, and its reverse. */
  beDeltaIpIn = new Uint16Array(8);
  beDeltaIpOut = new Uint16Array(8);
  /** TCP checksum delta (pseudo-header address + port) VIP -> backend, and its reverse. */
  beDeltaTcpIn = new Uint16Array(8);
  beDeltaTcpOut = new Uint16Array(8);
  /** Per backend: packets to it, bytes to it, packets from it, bytes from it (float64: never wraps). */
  beStats = new Float64Array(32);
  private beIds: string[] = [];
  /** Per backend: the name of its server across a service's VIPs ('' when none). */
  private beServer: string[] = [];
  /**
   * Per backend: the same server's backend in its service's VIP of the other family, or -1 (no service, no such
   * server there, or that backend removed). A join of a connection on b that arrives on that VIP goes there.
   */
  bePeer = new Int32Array(8);
  // Backend lookup by (address, port) for replies without a flow: entry = backend + 1, or -(backend + 1) when the
  // same address:port serves several VIPs (the reply's VIP is then unknown).
  private beIndex = new OpenIndex(64);

  /** Seed of the VIP and backend indices, as a small integer (the full `seed` is the selection contract). */
  private readonly indexSeed: number;

  constructor(private readonly maglevSize: number, private readonly seed: number, private readonly defaultPolicy: Policy) {
    this.indexSeed = seed & SMI_MASK;
  }

  /**
   * Brings the table in line with `cfg.vips`, keeping the indices of VIPs and backends that stay. Only VIPs whose
   * selection inputs changed get new tables (refreshVip). Cold path.
   */
  applyConfig(cfg: EngineConfig): void {
    const wantVips = new Set<number>();
    const vips = this.vipCount, backends = this.backendCount;
    for (const vc of cfg.vips) {
      const ep = parseEndpoint(vc.address)!;
      const id = formatEndpoint(ep.addr.bytes, 0, ep.addr.bytes.length, ep.port!);
      let v = this.vipById.get(id) ?? -1;
      if (v < 0) v = this.addVip(id, ep.addr.bytes, ep.port!);
      this.vipRemoved[v] = 0;
      this.vipService[v] = vc.service ?? '';
      this.vipPolicyNames[v] = vc.policy ?? cfg.policy;
      this.vipPolicy[v] = POLICY_CODES[this.vipPolicyNames[v]];
      wantVips.add(v);
      const wantBe = new Set<number>();
      for (const bc of vc.backends) {
        const addr = parseIp(bc.address)!;
        const port = bc.port ?? ep.port!;
        const bid = formatEndpoint(addr.bytes, 0, addr.bytes.length, port);
        let b = this.vipBackends[v].find((x) => this.beIds[x] === bid);
        if (b === undefined) b = this.addBackend(v, bid, addr.bytes, port);
        this.beRemoved[b] = 0;
        this.beWeight[b] = bc.weight ?? 1;
        this.beServer[b] = bc.server ?? '';
        wantBe.add(b);
      }
      for (const b of this.vipBackends[v]) if (!wantBe.has(b)) { this.beRemoved[b] = 1; this.beWeight[b] = 0; }
      this.refreshVip(v);
    }
    for (let v = 0; v < this.vipCount; v++) if (!wantVips.has(v)) this.vipRemoved[v] = 1;
    // Removed VIPs and backends keep their index entries: only additions change the indices.
    if (this.vipCount !== vips) this.rebuildVipSlots();
    if (this.backendCount !== backends) this.rebuildBackendSlots();
    this.pruneTableCache();
    this.pairServers();
  }

  /** Fills bePeer from the service and server names (cold: on every configuration). */
  private pairServers(): void {
    this.bePeer = grow(this.bePeer, this.backendCount);
    this.bePeer.fill(-1);
    // "service/family" -> VIP, of the VIPs in the configuration.
    const byService = new Map<string, number>();
    for (let v = 0; v < this.vipCount; v++) {
      if (!this.vipRemoved[v] && this.vipService[v] !== '') byService.set(`${this.vipService[v]}/${this.vipFamily[v]}`, v);
    }
    for (let v = 0; v < this.vipCount; v++) {
      if (this.vipRemoved[v] || this.vipService[v] === '') continue;
      const other = byService.get(`${this.vipService[v]}/${this.vipFamily[v] === 4 ? 6 : 4}`);
      if (other === undefined) continue;
      for (const b of this.vipBackends[v]) {
        // b itself may be removed (its connections' joins still arrive); the peer must not be.
        const p = this.vipBackends[other].find((x) => !this.beRemoved[x] && this.beServer[x] !== '' && this.beServer[x] === this.beServer[b]);
        if (p !== undefined) this.bePeer[b] = p;
      }
    }
  }

  private rebuildBackendSlots(): void {
    const index = new OpenIndex(Math.max(64, this.backendCount * 4));
    for (let b = 0; b < this.backendCount; b++) {
      const h = hashEndpoint(this.beAddr, 4 * b, this.bePort[b], this.indexSeed);
      const s = index.findSlot(h, (e) => this.sameBackendEndpoint(Math.abs(e) - 1, b));
      if (s < 0) index.insert(h, b + 1);
      else index.slots[s] = -Math.abs(index.slots[s]);
    }
    this.beIndex = index;
  }

  private sameBackendEndpoint(x: number, y: number): boolean {
    const ox = 4 * x, oy = 4 * y;
    return this.bePort[x] === this.bePort[y] && this.beAddr[ox] === this.beAddr[oy] && this.beAddr[ox + 1] === this.beAddr[oy + 1]
      && this.beAddr[ox + 2] === this.beAddr[oy + 2] && this.beAddr[ox + 3] === this.beAddr[oy + 3];
  }

  /**
   * The backend whose address is words a[0..3] and port `port` (a reply's source), or -1 when none is, or -2 when
   * several VIPs share that backend endpoint. Used only for replies that have no flow.
   */
  findBackendByEndpoint(a: Uint32Array, port: number): number {
    const slots = this.beIndex.slots, mask = this.beIndex.mask;
    let s = hashEndpoint(a, 0, port, this.indexSeed) & mask;
    for (;;) {
      const e = slots[s];
      if (e === 0) return -1;
      const b = (e > 0 ? e : -e) - 1;
      const o = 4 * b;
      if (this.bePort[b] === port && this.beAddr[o] === a[0] && this.beAddr[o + 1] === a[1] && this.beAddr[o + 2] === a[2] && this.beAddr[o + 3] === a[3]) {
        return e > 0 ? b : -2;
      }
      s = (s + 1) & mask;
    }
  }

  private addVip(id: string, bytes: Uint8Array, port: number): number {
    const v = this.vipCount++;
    this.vipFamily = grow(this.vipFamily, v + 1);
    this.vipAddr = grow(this.vipAddr, 4 * (v + 1));
    this.vipAddrBytes = grow(this.vipAddrBytes, 16 * (v + 1));
    this.vipPort = grow(this.vipPort, v + 1);
    this.vipPolicy = grow(this.vipPolicy, v + 1);
    this.vipRemoved = grow(this.vipRemoved, v + 1);
    this.vipFamily[v] = bytes.length === 4 ? 4 : 6;
    storeAddress(bytes, this.vipAddr, this.vipAddrBytes, v);
    this.vipPort[v] = port;
    this.vipIds[v] = id;
    this.vipById.set(id, v);
    this.vipBackends[v] = [];
    this.vipMaglev[v] = NO_TABLE;
    this.vipActive[v] = NO_TABLE;
    return v;
  }

  private addBackend(v: number, id: string, bytes: Uint8Array, port: number): number {
    const b = this.backendCount++;
    this.beVip = grow(this.beVip, b + 1);
    this.beAddr = grow(this.beAddr, 4 * (b + 1));
    this.beAddrBytes = grow(this.beAddrBytes, 16 * (b + 1));
    this.bePort = grow(this.bePort, b + 1);
    this.beWeight = grow(this.beWeight, b + 1);
    this.beUp = grow(this.beUp, b + 1);
    this.beRemoved = grow(this.beRemoved, b + 1);
    this.beDeltaIpIn = grow(this.beDeltaIpIn, b + 1);
    this.beDeltaIpOut = grow(this.beDeltaIpOut, b + 1);
    this.beDeltaTcpIn = grow(this.beDeltaTcpIn, b + 1);
    this.beDeltaTcpOut = grow(this.beDeltaTcpOut, b + 1);
    this.beStats = grow(this.beStats, 4 * (b + 1));
    this.beVip[b] = v;
    storeAddress(bytes, this.beAddr, this.beAddrBytes, b);
    this.bePort[b] = port;
    this.beUp[b] = 1;
    this.beIds[b] = id;
    // NAT deltas are constant per (VIP, backend) pair: compute once, apply per packet (RFC 1624).
    const n = bytes.length;
    const va = this.vipAddrBytes.subarray(16 * v, 16 * v + n);
    const ip = replaceDelta(va, 0, bytes, 0, n);
    const ipBack = replaceDelta(bytes, 0, va, 0, n);
    const vp = this.vipPort[v];
    const portDelta = fold((~vp & 0xffff) + port);
    const portBack = fold((~port & 0xffff) + vp);
    this.beDeltaIpIn[b] = ip;
    this.beDeltaIpOut[b] = ipBack;
    this.beDeltaTcpIn[b] = fold(ip + portDelta);
    this.beDeltaTcpOut[b] = fold(ipBack + portBack);
    this.vipBackends[v].push(b);
    return b;
  }

  /**
   * Brings VIP v's selection tables in line with its inputs: whether its policy uses Maglev, and the effective
   * weight (0 when down or removed) of each of its backends. When none of them changed since the last build the
   * VIP keeps its table objects; otherwise it gets new ones (the Maglev table only for a maglev VIP). Returns
   * whether anything was built. Cold path.
   */
  refreshVip(v: number): boolean {
    const list = this.vipBackends[v];
    const maglev = this.vipPolicy[v] === PolicyCode.Maglev;
    const weights = list.map((b) => (this.beUp[b] && !this.beRemoved[b] ? this.beWeight[b] : 0));
    // The list only grows and keeps its order, so positions name the backends.
    const inputs = `${maglev ? 'maglev' : 'hash'} ${weights.join(',')}`;
    if (inputs === this.vipBuiltFrom[v]) return false;
    this.vipBuiltFrom[v] = inputs;
    this.vipTableKey[v] = maglev ? `${list.map((b) => this.beIds[b]).join(' ')}|${weights.join(',')}` : '';
    let table = maglev ? this.tableCache.get(this.vipTableKey[v]) : NO_TABLE;
    if (!table) {
      table = buildMaglevTable(list.map((b, i) => ({ id: this.beIds[b], weight: weights[i] })), this.maglevSize);
      this.tableCache.set(this.vipTableKey[v], table);
      this.tableBuilds++;
    }
    this.vipMaglev[v] = table;
    this.vipActive[v] = Int32Array.from(list.filter((_, i) => weights[i] > 0));
    return true;
  }

  /** Forgets cached tables no VIP uses any more. */
  private pruneTableCache(): void {
    const used = new Set(this.vipTableKey.slice(0, this.vipCount));
    for (const k of this.tableCache.keys()) if (!used.has(k)) this.tableCache.delete(k);
  }

  private rebuildVipSlots(): void {
    const index = new OpenIndex(Math.max(64, this.vipCount * 4));
    // Removed VIPs stay findable so their established flows continue; they take no new flows.
    for (let v = 0; v < this.vipCount; v++) index.insert(hashEndpoint(this.vipAddr, 4 * v, this.vipPort[v], this.indexSeed), v + 1);
    this.vipIndex = index;
  }

  /** VIP index for destination words a[4..7] and port, or -1. Hot path. */
  findVip(a: Uint32Array, family: number, port: number): number {
    const slots = this.vipIndex.slots, mask = this.vipIndex.mask;
    let s = hashEndpoint(a, 4, port, this.indexSeed) & mask;
    for (;;) {
      const e = slots[s];
      if (e === 0) return -1;
      const v = e - 1;
      const o = 4 * v;
      if (this.vipPort[v] === port && this.vipFamily[v] === family && this.vipAddr[o] === a[4]
        && this.vipAddr[o + 1] === a[5] && this.vipAddr[o + 2] === a[6] && this.vipAddr[o + 3] === a[7]) return v;
      s = (s + 1) & mask;
    }
  }

  /** Picks a backend for a new flow of VIP v by its policy; -1 when none takes new connections. Hot-ish path (SYNs). */
  select(v: number, buf: Uint8Array, p: PacketView): number {
    const policy = this.vipPolicy[v];
    if (policy === PolicyCode.Maglev) {
      const t = this.vipMaglev[v];
      const pos = t[hashFiveTuple(buf, p.srcAddrOff, p.dstAddrOff, p.addrLen, p.srcPort, p.dstPort, p.proto, this.seed) % t.length];
      return pos < 0 ? -1 : this.vipBackends[v][pos];
    }
    const active = this.vipActive[v];
    if (active.length === 0) return -1;
    const h = policy === PolicyCode.Hash5Tuple
      ? hashFiveTuple(buf, p.srcAddrOff, p.dstAddrOff, p.addrLen, p.srcPort, p.dstPort, p.proto, this.seed)
      : hashAddrPair(buf, p.srcAddrOff, p.dstAddrOff, p.addrLen, this.seed);
    return active[h % active.length];
  }

  setWeight(b: number, weight: number): void { this.beWeight[b] = weight; if (this.refreshVip(this.beVip[b])) this.pruneTableCache(); }
  setUp(b: number, up: boolean): void { this.beUp[b] = up ? 1 : 0; if (this.refreshVip(this.beVip[b])) this.pruneTableCache(); }

  findBackend(id: string, vip?: number): number {
    for (let b = 0; b < this.backendCount; b++) if (this.beIds[b] === id && (vip === undefined || this.beVip[b] === vip)) return b;
    return -1;
  }
  findVipById(id: string): number { return this.vipById.get(id) ?? -1; }
  backendId(b: number): string { return this.beIds[b]; }
  vipId(v: number): string { return this.vipIds[v]; }

  backendInfo(b: number): BackendInfo {
    const id = this.beIds[b];
    return {
      index: b, vip: this.beVip[b], id, address: id.slice(0, id.lastIndexOf(':')).replace(/^\[|\]$/g, ''), port: this.bePort[b],
      weight: this.beWeight[b], up: this.beUp[b] === 1, removed: this.beRemoved[b] === 1,
      packetsIn: this.beStats[4 * b], bytesIn: this.beStats[4 * b + 1], packetsOut: this.beStats[4 * b + 2], bytesOut: this.beStats[4 * b + 3],
    };
  }
  vipInfo(v: number): VipInfo {
    return { index: v, id: this.vipIds[v], policy: this.vipPolicyNames[v] ?? this.defaultPolicy, backends: [...this.vipBackends[v]], removed: this.vipRemoved[v] === 1 };
  }
}
