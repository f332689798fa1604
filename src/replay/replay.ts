// `mplb replay`: the engine on real captures, through the same forwarder as `mplb run`, over a capture device
// (capture-device.ts) that plays the network around the balancer. This file judges the result: its own oracle of
// keys and tokens says where each join should have gone.
import { formatEndpoint, parseEndpoint } from '../wire/addr.js';
import { ENGINE_DEFAULTS, validateEngineConfig, type Policy, type UnknownTokenAnswer } from '../engine/config.js';
import { isPrime } from '../engine/maglev.js';
import { Engine, Steer, Verdict, VERDICT_LABELS } from '../engine/engine.js';
import { decodeMptcpOption, JoinForm, MptcpOption, MptcpSubtype, OptionStatus, TCPOPT_MPTCP } from '../wire/mptcp-options.js';
import { nextTcpOption, PacketView, parsePacket, ParseStatus, TCP_ACK, TCP_SYN } from '../wire/parse.js';
import { keyToken, keyToHex, toHex8 } from '../wire/tokens.js';
import { CaptureFormatError, openCapture, openCaptureFile, PcapFileWriter, PcapWriter, type CaptureReader, type CaptureRecord } from '../io/pcap.js';
import type { PacketBatch } from '../dataplane/device.js';
import { Forwarder } from '../dataplane/forwarder.js';
import { CaptureDevice, EndpointSet, loadIp, type RecordSource } from './capture-device.js';
import { rmSync } from 'node:fs';

export interface ReplayOptions {
  backends: number;
  policy: Policy;
  aware: boolean;
  unknownTokenAnswer: UnknownTokenAnswer;
  /** VIPs as "addr:port"; default: every address:port that receives a SYN, at most `maxVips` of them. */
  vips?: string[];
  /** Most VIPs inferred from SYNs (default DEFAULT_MAX_VIPS): a port scan would otherwise make every port a service. */
  maxVips?: number;
  /**
   * Engine table sizes. Default: those of `mplb run` (ENGINE_DEFAULTS.tables: 1,048,576 flows, 524,288 connections),
   * or fewer when the capture has fewer SYNs (a power of two >= 1024), so joins are judged as mplb would steer them
   * without allocating its tables for a small capture. A table that overflows is reported in `warnings`.
   */
  tables?: { maxFlows?: number; maxConnections?: number };
  /** --pcap-out: true = in memory (ReplayResult.pcapOut), a path = streamed to that file as packets leave. */
  pcapOut?: boolean | string;
}

export interface ReplayConnection {
  version: number;
  client: string;
  vip: string;
  clientKey: string | null;
  serverKey: string;
  serverToken: string;
  clientToken: string | null;
  /** Index of the virtual server (0..N-1) the connection's first subflow went to. */
  backend: number | null;
}

export interface ReplayJoin {
  subflow: string;
  token: string;
  backend: number | null;
  connectionBackend: number | null;
  steeredBy: 'token' | 'fallback';
  verdict: string;
}

export interface ReplayResult {
  files: string[];
  vips: string[];
  backends: string[];
  policy: Policy;
  mptcpAware: boolean;
  packets: { total: number; fed: number; unparsed: number; notIp: number; truncated: number; repliesWithoutFlow: number; notForService: number; timestampsClamped: number };
  /** Problems with the input that did not stop the replay, one line each. */
  warnings: string[];
  verdicts: Record<string, number>;
  connections: ReplayConnection[];
  joins: ReplayJoin[];
  summary: { joins: number; onConnectionBackend: number; elsewhere: number; tokenUnknown: number };
  counters: Record<string, number>;
  drops: Record<string, number>;
  pcapOut?: Uint8Array;
}

/** Inferred VIPs allowed by default (`--max-vips`). */
export const DEFAULT_MAX_VIPS = 256;
/** The most `--max-vips` accepts: the engine's VIP set is rebuilt per VIP added, so its set-up grows with the square. */
export const MAX_VIPS_LIMIT = 16384;

/** A replay that cannot run as asked (too many inferred VIPs): one line, no stack trace, exit 1. */
export class ReplayError extends Error {
  readonly code = 'EREPLAY';
  constructor(message: string) {
    super(message);
    this.name = 'ReplayError';
  }
}

/**
 * Maglev table size for replay's VIPs: the smallest prime >= max(251, 64 x backends). Replay has only N virtual
 * servers per VIP, so 64 slots each keep shares within 1/64 of even, and a VIP costs 1-64 KB instead of the
 * 256 KB of the run default (65537 slots).
 */
export function replayMaglevSize(backends: number): number {
  let n = Math.max(251, 64 * backends);
  while (!isPrime(n)) n++;
  return n;
}


/** The virtual servers behind every VIP: the same N addresses, so "server k" is one host across VIPs. */
function backendAddresses(n: number, family: 4 | 6): string[] {
  return Array.from({ length: n }, (_, k) => (family === 4 ? `198.18.255.${k + 1}` : `2001:db8:ffff::${(k + 1).toString(16)}`));
}

/** A capture to replay: bytes in memory, or a file read from disk in chunks as the replay goes. */
export type ReplayInput = { name: string; bytes: Uint8Array } | { name: string; path: string };

/**
 * Every record of the inputs in order, one file at a time (state is carried across files), each file streamed: one
 * reader open at a time, one chunk of it in memory. A file that cannot be read stops the replay with a
 * CaptureFormatError naming it; the warnings of each file are kept, prefixed with its name.
 */
class RecordStream implements RecordSource {
  private next = 0;
  private reader: CaptureReader | null = null;
  private name = '';
  readonly warnings: string[] = [];

  constructor(private readonly inputs: readonly ReplayInput[]) {}

  read(): CaptureRecord | null {
    for (;;) {
      if (this.reader !== null) {
        const rec = this.named(() => this.reader!.read());
        if (rec !== null) return rec;
        for (const w of this.reader.warnings) this.warnings.push(`${this.name}: ${w}`);
        this.reader = null;
      }
      if (this.next >= this.inputs.length) return null;
      const input = this.inputs[this.next++];
      this.name = input.name;
      this.reader = this.named(() => ('bytes' in input ? openCapture(input.bytes) : openCaptureFile(input.path)));
    }
  }

  close(): void {
    this.reader?.close();
    this.reader = null;
    this.next = this.inputs.length;
  }

  private named<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      this.close();
      if (e instanceof CaptureFormatError) e.message = `${this.name}: ${e.message}`;
      throw e;
    }
  }
}

interface Survey {
  /** The inferred VIPs (null when they are named). */
  vips: string[] | null;
  /** SYNs (without ACK) to a port other than 0: no more flows or MPTCP connections than this can ever be live. */
  syns: number;
  synsToPort0: number;
}

/**
 * The first pass over the inputs: SYNs counted (for the table sizes) and, when none are named, the VIPs: every
 * address:port that receives a SYN, at most `max`: one more is a ReplayError, raised at once (the pass stops there,
 * so a scan of every port costs nothing more).
 */
function survey(inputs: readonly ReplayInput[], infer: boolean, max: number): Survey {
  const v = new PacketView(), scratch = new Uint8Array(65536);
  const seen = new Set<string>();
  const records = new RecordStream(inputs);
  let syns = 0, synsToPort0 = 0;
  for (let rec = records.read(); rec !== null; rec = records.read()) {
    const n = loadIp(rec, scratch);
    if (n < 0 || parsePacket(scratch, 0, n, v) !== ParseStatus.Ok) continue;
    if ((v.tcpFlags & (TCP_SYN | TCP_ACK)) !== TCP_SYN) continue;
    // Port 0 is no service (a scan, a corrupt header): such SYNs are counted, and go nowhere.
    if (v.dstPort === 0) { synsToPort0++; continue; }
    syns++;
    if (!infer) continue;
    const vip = formatEndpoint(scratch, v.dstAddrOff, v.addrLen, v.dstPort);
    if (seen.has(vip)) continue;
    if (seen.size >= max) {
      records.close();
      throw new ReplayError(`more than ${max} address:ports receive a SYN (the ${ordinal(max + 1)}: ${vip}); a port scan? `
        + 'Name the services with --vip ADDR:PORT (repeatable), or raise --max-vips');
    }
    seen.add(vip);
  }
  return { vips: infer ? [...seen] : null, syns, synsToPort0 };
}

/**
 * A table size that steers as `mplb run`'s does: its default, or less when the capture has fewer SYNs than that (only
 * a SYN makes a flow, so such a table can never fill); a power of two, at least 1024.
 */
function tableSize(syns: number, runDefault: number): number {
  let n = 1024;
  while (n < syns && n < runDefault) n *= 2;
  return Math.min(n, runDefault);
}

const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;

/** The engine's tables overflowed: what it cost, in the counters' words. */
function tableWarnings(snap: { counters: Record<string, number>; drops: Record<string, number> }, flows: number, conns: number): string[] {
  const out: string[] = [];
  const full = snap.drops.flow_table_full + snap.counters.stateless_forward;
  if (full > 0 || snap.counters.flows_evicted_embryonic > 0) {
    out.push(`the flow table (${flows} entries) was full: ${snap.counters.flows_evicted_embryonic} embryonic flows evicted, `
      + `${snap.counters.stateless_forward} SYNs forwarded without a flow, ${snap.drops.flow_table_full} joins dropped`);
  }
  if (snap.counters.conn_table_full > 0) {
    out.push(`the connection table (${conns} entries) was full for ${plural(snap.counters.conn_table_full, 'MPTCP connection')}: `
      + 'their tokens were not kept, so their joins could not be steered by token');
  }
  return out;
}

function openOut(path: string): PcapFileWriter {
  try {
    return new PcapFileWriter(path, 101);
  } catch (e) {
    throw new ReplayError(`cannot write ${path}: ${(e as Error).message}`);
  }
}

function ordinal(n: number): string {
  const t = n % 100, u = n % 10;
  return `${n}${t >= 11 && t <= 13 ? 'th' : u === 1 ? 'st' : u === 2 ? 'nd' : u === 3 ? 'rd' : 'th'}`;
}

export function replayCaptures(inputs: readonly ReplayInput[], opts: ReplayOptions): ReplayResult {
  const maxVips = opts.maxVips ?? DEFAULT_MAX_VIPS;
  if (!Number.isInteger(maxVips) || maxVips < 1 || maxVips > MAX_VIPS_LIMIT) throw new RangeError(`maxVips must be an integer 1-${MAX_VIPS_LIMIT}, got ${maxVips}`);
  const first = survey(inputs, !opts.vips, maxVips);
  const vips = opts.vips ?? first.vips!;
  const family = vips.length && parseEndpoint(vips[0])?.addr.family === 6 ? 6 : 4;
  const servers = { 4: backendAddresses(opts.backends, 4), 6: backendAddresses(opts.backends, 6) };
  const engine = new Engine(validateEngineConfig({
    vips: vips.map((address) => {
      const fam = parseEndpoint(address)?.addr.family ?? 4;
      return { address, backends: servers[fam].map((a) => ({ address: a })) };
    }),
    policy: opts.policy,
    mptcpAware: opts.aware,
    unknownTokenAnswer: opts.unknownTokenAnswer,
    tables: {
      maxFlows: opts.tables?.maxFlows ?? tableSize(first.syns, ENGINE_DEFAULTS.tables.maxFlows),
      maxConnections: opts.tables?.maxConnections ?? tableSize(first.syns, ENGINE_DEFAULTS.tables.maxConnections),
      maglevSize: replayMaglevSize(opts.backends),
    },
  }, 'replay'));
  const serverIndex = (b: number) => (b < 0 ? null : engine.services.vipBackends[engine.services.beVip[b]].indexOf(b));

  // The replay's own oracle: keys seen in the capture -> token -> the server the connection went to.
  // It is independent of the engine's token table, so it also works (and judges) in unaware mode.
  const byFlow = new Map<string, ReplayConnection>();
  const byToken = new Map<number, ReplayConnection>();
  const connections: ReplayConnection[] = [];
  const joins: ReplayJoin[] = [];
  // Replay has no token store, so nothing is ever held.
  const verdicts: Record<string, number> = Object.fromEntries(VERDICT_LABELS.filter((l) => l !== 'hold').map((l) => [l, 0]));
  const opt = new MptcpOption();
  const records = new RecordStream(inputs);
  const memOut = opts.pcapOut === true ? new PcapWriter(101) : null;
  const fileOut = typeof opts.pcapOut === 'string' ? openOut(opts.pcapOut) : null;
  const device = new CaptureDevice(records, engine, new EndpointSet(vips), memOut ?? fileOut);

  const learn = (flowKey: string, client: string, vip: string, version: number, serverKey: [number, number], clientKey: [number, number] | null, backend: number | null) => {
    let c = byFlow.get(flowKey);
    if (!c) {
      const token = keyToken(version, serverKey[0], serverKey[1]);
      c = {
        version, client, vip, clientKey: null, serverKey: keyToHex(serverKey[0], serverKey[1]), serverToken: toHex8(token), clientToken: null, backend,
      };
      byFlow.set(flowKey, c);
      if (!byToken.has(token)) byToken.set(token, c);
      connections.push(c);
    }
    if (clientKey && c.clientKey === null) {
      c.clientKey = keyToHex(clientKey[0], clientKey[1]);
      c.clientToken = toHex8(keyToken(version, clientKey[0], clientKey[1]));
    }
  };

  /** After the engine's verdict on the packet the device just handed over: record joins and keys. */
  const observe = (_b: PacketBatch, _slot: number, verdict: Verdict) => {
    verdicts[VERDICT_LABELS[verdict]]++;
    const p = device.current;
    if (!p || !p.parsed) return;
    const v = p.view, bytes = p.bytes;
    // MPTCP keys and join tokens in the packet as captured.
    let capKeys: { version: number; sender: [number, number]; receiver: [number, number] | null } | null = null;
    let joinToken = -1;
    for (let pos = v.optOff; ;) {
      const o = nextTcpOption(bytes, pos, v.optEnd);
      if (o < 0) break;
      pos = o + bytes[o + 1];
      if (bytes[o] !== TCPOPT_MPTCP || decodeMptcpOption(bytes, o, bytes[o + 1], opt) !== OptionStatus.Ok) continue;
      if (opt.subtype === MptcpSubtype.MpCapable && (opt.version === 0 || opt.version === 1) && opt.hasSenderKey) {
        capKeys = { version: opt.version, sender: [opt.senderKeyHi, opt.senderKeyLo], receiver: opt.hasReceiverKey ? [opt.receiverKeyHi, opt.receiverKeyLo] : null };
      } else if (opt.subtype === MptcpSubtype.MpJoin && opt.joinForm === JoinForm.Syn) joinToken = opt.token;
    }
    const isSyn = (v.tcpFlags & (TCP_SYN | TCP_ACK)) === TCP_SYN;
    const synAck = (v.tcpFlags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK);
    if (p.toVip) {
      if (isSyn && joinToken >= 0) {
        const owner = byToken.get(joinToken);
        joins.push({
          subflow: `${p.src}>${p.dst}`,
          token: toHex8(joinToken),
          backend: verdict === Verdict.ToBackend ? serverIndex(engine.lastBackend) : null,
          connectionBackend: owner ? owner.backend : null,
          steeredBy: engine.lastSteer === Steer.Token ? 'token' : 'fallback',
          verdict: VERDICT_LABELS[verdict],
        });
      }
      // Third ACK / v1 first data: sender = client key, receiver = server key.
      if (capKeys?.receiver && !isSyn) learn(`${p.src}>${p.dst}`, p.src, p.dst, capKeys.version, capKeys.receiver, capKeys.sender, serverIndex(engine.lastBackend));
    } else if (synAck && capKeys && !capKeys.receiver) {
      learn(`${p.dst}>${p.src}`, p.dst, p.src, capKeys.version, capKeys.sender, null, serverIndex(engine.lastBackend));
    }
  };

  const forwarder = new Forwarder(engine, device, { batchMax: 1, tickMs: 100, observe });
  try {
    while (forwarder.runOnce(0) > 0) { /* the device's clock drives the engine */ }
    fileOut?.close();
  } catch (e) {
    // No half-written --pcap-out file is left behind a refused replay.
    records.close();
    if (fileOut) { try { fileOut.close(); } finally { rmSync(fileOut.path, { force: true }); } }
    throw e;
  }

  const known = joins.filter((j) => j.connectionBackend !== null);
  const snap = engine.counters.snapshot();
  const c = device.counts;
  return {
    files: inputs.map((i) => i.name),
    vips,
    backends: servers[family],
    policy: opts.policy,
    mptcpAware: opts.aware,
    packets: { total: c.records, fed: c.fed, unparsed: c.unparsed, notIp: c.notIp, truncated: c.truncated, repliesWithoutFlow: c.repliesWithoutFlow, notForService: c.notForService, timestampsClamped: c.timestampsClamped },
    warnings: [
      ...records.warnings,
      ...(first.synsToPort0 ? [`${plural(first.synsToPort0, 'SYN')} to port 0 went to no VIP`] : []),
      ...(c.timestampsClamped > 0
        ? [`${plural(c.timestampsClamped, 'packet')} of the --pcap-out file had a time pcap cannot hold (before 1970 or after 2106-02-07) and were written with it clamped`]
        : []),
      ...tableWarnings(snap, engine.flows.capacity, engine.conns.capacity),
    ],
    verdicts,
    connections,
    joins,
    summary: {
      joins: joins.length,
      onConnectionBackend: known.filter((j) => j.backend === j.connectionBackend).length,
      elsewhere: known.filter((j) => j.backend !== j.connectionBackend).length,
      tokenUnknown: joins.length - known.length,
    },
    counters: snap.counters,
    drops: snap.drops,
    pcapOut: memOut?.toBytes(),
  };
}

/** A readable summary for the terminal. */
export function formatReplay(r: ReplayResult): string {
  const lines: string[] = [];
  lines.push(`replayed ${r.packets.total} packets from ${r.files.join(', ')}`);
  lines.push(`  VIPs: ${r.vips.join(', ') || '(none: no SYN seen)'}; backends: ${r.backends.length} (${r.backends.join(', ')}); policy ${r.policy}; MPTCP ${r.mptcpAware ? 'aware' : 'unaware'}`);
  lines.push(`  verdicts: ${Object.entries(r.verdicts).map(([k, n]) => `${k} ${n}`).join(', ')}; not IP ${r.packets.notIp}, truncated ${r.packets.truncated}, replies without flow ${r.packets.repliesWithoutFlow}`);
  lines.push(`  MPTCP connections: ${r.connections.length}`);
  for (const c of r.connections) {
    lines.push(`    v${c.version} ${c.client} -> ${c.vip}  server key ${c.serverKey} token ${c.serverToken}  client key ${c.clientKey ?? '-'}  -> server ${c.backend}`);
  }
  lines.push(`  joins: ${r.summary.joins} (on their connection's server ${r.summary.onConnectionBackend}, elsewhere ${r.summary.elsewhere}, token unknown ${r.summary.tokenUnknown})`);
  for (const j of r.joins) {
    lines.push(`    ${j.subflow} token ${j.token} -> server ${j.backend ?? '-'} (connection on ${j.connectionBackend ?? '?'}, by ${j.steeredBy})`);
  }
  const nz = Object.entries(r.counters).filter(([, n]) => n > 0).map(([k, n]) => `${k}=${n}`);
  lines.push(`  counters: ${nz.join(' ')}`);
  const dz = Object.entries(r.drops).filter(([, n]) => n > 0).map(([k, n]) => `${k}=${n}`);
  if (dz.length) lines.push(`  drops: ${dz.join(' ')}`);
  return lines.join('\n');
}

