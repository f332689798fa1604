// `mplb replay`: the engine on real captures. Packets towards a VIP are fed as the balancer would receive them;
// server replies in the capture come from the VIP, so they are first re-addressed from the backend the engine
// chose (as that virtual server would send them) and then fed as backend -> client traffic.
import { formatEndpoint, parseEndpoint } from '../wire/addr.js';
import { validateEngineConfig, type Policy, type UnknownTokenAnswer } from '../engine/config.js';
import { Engine, Verdict, VERDICT_LABELS } from '../engine/engine.js';
import { decodeMptcpOption, JoinForm, MptcpOption, MptcpSubtype, OptionStatus, TCPOPT_MPTCP } from '../wire/mptcp-options.js';
import { nextTcpOption, PacketView, parsePacket, ParseStatus, TCP_ACK, TCP_SYN } from '../wire/parse.js';
import { natEndpoint } from '../engine/rewrite.js';
import { keyToken } from '../wire/tokens.js';
import { ipOffset } from '../wire/link-layer.js';
import { PcapWriter, readCapture, type CaptureRecord } from '../io/pcap.js';

export interface ReplayOptions {
  backends: number;
  policy: Policy;
  aware: boolean;
  unknownTokenAnswer: UnknownTokenAnswer;
  /** VIPs as "addr:port"; default: every address:port that receives a SYN. */
  vips?: string[];
  pcapOut?: boolean;
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
  packets: { total: number; fed: number; notIp: number; truncated: number; repliesWithoutFlow: number; notForService: number };
  verdicts: Record<string, number>;
  connections: ReplayConnection[];
  joins: ReplayJoin[];
  summary: { joins: number; onConnectionBackend: number; elsewhere: number; tokenUnknown: number };
  counters: Record<string, number>;
  drops: Record<string, number>;
  pcapOut?: Uint8Array;
}

const hex = (hi: number, lo: number) => (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
const hex8 = (n: number) => (n >>> 0).toString(16).padStart(8, '0');

/** The virtual servers behind every VIP: the same N addresses, so "server k" is one host across VIPs. */
function backendAddresses(n: number, family: 4 | 6): string[] {
  return Array.from({ length: n }, (_, k) => (family === 4 ? `198.18.255.${k + 1}` : `2001:db8:ffff::${(k + 1).toString(16)}`));
}

interface Input { name: string; bytes: Uint8Array }

export function replayCaptures(inputs: Input[], opts: ReplayOptions): ReplayResult {
  const records: CaptureRecord[] = [];
  for (const f of inputs) records.push(...readCapture(f.bytes).records);
  const v = new PacketView();
  const scratch = new Uint8Array(65536 + 64);

  // Copies the IP packet of a record into scratch; a record cut by the snap length gets its IP length fields
  // shrunk to what was captured (headers are intact; checksums are then meaningless, and no one checks them).
  let truncated = 0;
  const load = (rec: CaptureRecord): number => {
    const ip = ipOffset(rec.linkType, rec.data);
    if (ip < 0) return -1;
    const n = Math.min(rec.data.length - ip, 65535);
    scratch.set(rec.data.subarray(ip, ip + n), 0);
    if (rec.origLen > rec.data.length) {
      truncated++;
      if (scratch[0] >> 4 === 4 && n >= 20 && ((scratch[2] << 8) | scratch[3]) > n) { scratch[2] = n >> 8; scratch[3] = n & 0xff; }
      if (scratch[0] >> 4 === 6 && n >= 40 && ((scratch[4] << 8) | scratch[5]) > n - 40) { scratch[4] = (n - 40) >> 8; scratch[5] = (n - 40) & 0xff; }
    }
    return n;
  };
  const ep = (buf: Uint8Array, off: number, port: number) => formatEndpoint(buf, off, v.addrLen, port);

  // VIPs: every address:port that receives a SYN, unless named.
  let vips = opts.vips;
  if (!vips) {
    const seen = new Set<string>();
    for (const rec of records) {
      const n = load(rec);
      if (n < 0 || parsePacket(scratch, 0, n, v) !== ParseStatus.Ok) continue;
      if ((v.tcpFlags & (TCP_SYN | TCP_ACK)) === TCP_SYN) seen.add(ep(scratch, v.dstAddrOff, v.dstPort));
    }
    vips = [...seen];
  }
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
    tables: { maxFlows: 1 << 16, maxConnections: 1 << 15 },
  }, 'replay'));
  const vipSet = new Set(vips);
  const serverIndex = (b: number) => (b < 0 ? null : engine.services.vipBackends[engine.services.beVip[b]].indexOf(b));

  // The replay's own oracle: keys seen in the capture -> token -> the server the connection went to.
  // It is independent of the engine's token table, so it also works (and judges) in unaware mode.
  const byFlow = new Map<string, ReplayConnection>();
  const byToken = new Map<number, ReplayConnection>();
  const connections: ReplayConnection[] = [];
  const joins: ReplayJoin[] = [];
  const verdicts: Record<string, number> = Object.fromEntries(VERDICT_LABELS.map((l) => [l, 0]));
  const opt = new MptcpOption();
  const writer = opts.pcapOut ? new PcapWriter(101) : null;
  let fed = 0, notIp = 0, noFlow = 0, notForService = 0;
  let lastTick = -Infinity;

  const learn = (flowKey: string, client: string, vip: string, version: number, serverKey: [number, number], clientKey: [number, number] | null, backend: number | null) => {
    let c = byFlow.get(flowKey);
    if (!c) {
      const token = keyToken(version, serverKey[0], serverKey[1]);
      c = {
        version, client, vip, clientKey: null, serverKey: hex(serverKey[0], serverKey[1]), serverToken: hex8(token), clientToken: null, backend,
      };
      byFlow.set(flowKey, c);
      if (!byToken.has(token)) byToken.set(token, c);
      connections.push(c);
    }
    if (clientKey && c.clientKey === null) {
      c.clientKey = hex(clientKey[0], clientKey[1]);
      c.clientToken = hex8(keyToken(version, clientKey[0], clientKey[1]));
    }
  };

  for (const rec of records) {
    const n = load(rec);
    if (n < 0 || parsePacket(scratch, 0, n, v) !== ParseStatus.Ok) {
      if (n < 0) notIp++;
      else { engine.process(scratch, 0, n, rec.tsUs / 1000); verdicts.drop++; }
      continue;
    }
    const now = rec.tsUs / 1000;
    if (now - lastTick >= 100) { engine.tick(now); lastTick = now; }
    const src = ep(scratch, v.srcAddrOff, v.srcPort), dst = ep(scratch, v.dstAddrOff, v.dstPort);
    const toVip = vipSet.has(dst);
    const fromVip = !toVip && vipSet.has(src);
    if (!toVip && !fromVip) { notForService++; continue; }
    // MPTCP keys and join tokens in this packet, read before the engine rewrites it.
    let capKeys: { version: number; sender: [number, number] | null; receiver: [number, number] | null } | null = null;
    let joinToken = -1;
    for (let pos = v.optOff; ;) {
      const o = nextTcpOption(scratch, pos, v.optEnd);
      if (o < 0) break;
      pos = o + scratch[o + 1];
      if (scratch[o] !== TCPOPT_MPTCP || decodeMptcpOption(scratch, o, scratch[o + 1], opt) !== OptionStatus.Ok) continue;
      if (opt.subtype === MptcpSubtype.MpCapable && (opt.version === 0 || opt.version === 1) && opt.hasSenderKey) {
        capKeys = { version: opt.version, sender: [opt.senderKeyHi, opt.senderKeyLo], receiver: opt.hasReceiverKey ? [opt.receiverKeyHi, opt.receiverKeyLo] : null };
      } else if (opt.subtype === MptcpSubtype.MpJoin && opt.joinForm === JoinForm.Syn) joinToken = opt.token;
    }
    const isSyn = (v.tcpFlags & (TCP_SYN | TCP_ACK)) === TCP_SYN;
    const synAck = (v.tcpFlags & (TCP_SYN | TCP_ACK)) === (TCP_SYN | TCP_ACK);
    let verdict: Verdict;
    if (toVip) {
      verdict = engine.process(scratch, 0, n, now);
      if (isSyn && joinToken >= 0) {
        const owner = byToken.get(joinToken);
        joins.push({
          subflow: `${src}>${dst}`,
          token: hex8(joinToken),
          backend: verdict === Verdict.ToBackend ? serverIndex(engine.lastBackend) : null,
          connectionBackend: owner ? owner.backend : null,
          steeredBy: engine.lastSteer === 2 ? 'token' : 'fallback',
          verdict: VERDICT_LABELS[verdict],
        });
      }
      // Third ACK / v1 first data: sender = client key, receiver = server key.
      if (capKeys?.receiver && !isSyn) learn(`${src}>${dst}`, src, dst, capKeys.version, capKeys.receiver, capKeys.sender, serverIndex(engine.lastBackend));
    } else {
      const b = engine.backendOfReply(scratch, 0, n);
      if (b < 0) { noFlow++; continue; }
      // Re-address the reply as the chosen virtual server sends it.
      natEndpoint(scratch, v, v.srcAddrOff, v.l4Off, engine.services.beAddrBytes, b << 4, engine.services.bePort[b]);
      if (synAck && capKeys && !capKeys.receiver) learn(`${dst}>${src}`, dst, src, capKeys.version, capKeys.sender!, null, serverIndex(b));
      verdict = engine.process(scratch, 0, n, now);
    }
    fed++;
    verdicts[VERDICT_LABELS[verdict]]++;
    if (writer && verdict !== Verdict.Drop) writer.add(rec.tsUs, scratch.subarray(0, engine.outLen));
  }

  const known = joins.filter((j) => j.connectionBackend !== null);
  const snap = engine.counters.snapshot();
  return {
    files: inputs.map((i) => i.name),
    vips,
    backends: servers[family],
    policy: opts.policy,
    mptcpAware: opts.aware,
    packets: { total: records.length, fed, notIp, truncated, repliesWithoutFlow: noFlow, notForService },
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
    pcapOut: writer?.toBytes(),
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

