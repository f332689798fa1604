// The fast path program's own cost per packet, root only: BPF_PROG_TEST_RUN (the kernel times the runs) on frames of
// the kinds the program sees, inside a network namespace made here (two veth links, forwarding on, permanent
// neighbours, so bpf_fib_lookup succeeds as on the testbed). No traffic: the figure is the program alone, without the
// noise of iperf3 and the other tenants of a shared machine, so program changes can be compared run to run.
// Each mapped frame has an entry that rewrites it to its own address (the NAT work is done, and the rewritten packet
// still matches its entry), and TTL 255, so that each of `repeat` runs on one skb takes the same path.
// Run: node dist/bench/fastpath-cost.bench.js [--object build/fastpath.bpf.o,other.o] [--calls 2000] [--json]
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { defaultObjectPath, loadFastpath } from '../src/fastpath/loader.js';
import { FpDir, FpFlag, KEY_BYTES, VALUE_BYTES, writeKey, writeValue } from '../src/fastpath/layout.js';
import { libbpf, testRun } from '../src/fastpath/libbpf.js';
import { parseIp } from '../src/wire/addr.js';
import { checksum } from '../src/wire/checksum.js';
import { buildTcpPacket } from '../src/wire/build.js';
import { TCP_ACK, TCP_PSH } from '../src/wire/parse.js';

const SELF = fileURLToPath(import.meta.url);
const CLIENT = '198.18.1.2', BE = '198.18.10.2', OTHER = '198.18.10.9';
const CLIENT_MAC = '02:00:00:00:01:02', BE_MAC = '02:00:00:00:0a:02';
/** Runs per skb: below the TTL of 255, so no run meets the TTL <= 1 path. */
const REPEAT = 200;
const TC_ACT_UNSPEC = -1, TC_ACT_OK = 0, TC_ACT_REDIRECT = 7;

export interface CostResult { object: string; nsPerPacket: Record<string, number>; verdicts: Record<string, number> }

interface Job { object: string; calls: number; links: Record<string, { ifindex: number; mac: string }> }

const macBytes = (m: string) => m.split(':').map((x) => parseInt(x, 16));
const ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
/** NOP NOP timestamps, then DSS with a 4-byte data ACK and a mapping (no checksum), NOP-padded: a data segment. */
const DATA_OPTS = Uint8Array.from([...ts, 30, 18, 0x20, 0x05, 0, 0, 0, 9, 0, 0, 0, 7, 0, 0, 0, 1, 0x05, 0x78, 1, 1]);
/** NOP NOP timestamps, then DSS with a data ACK only: what a receiver sends back. */
const ACK_OPTS = Uint8Array.from([...ts, 30, 8, 0x20, 0x01, 0, 0, 0, 9]);

function frame(pkt: Uint8Array, dstMac: string): Buffer {
  const p = pkt.slice();
  p[8] = 255; p[10] = 0; p[11] = 0;
  const c = checksum(p, 0, 20); p[10] = c >> 8; p[11] = c & 0xff;
  const f = Buffer.alloc(14 + p.length);
  f.set(macBytes(dstMac), 0);
  f.set(macBytes('02:00:00:00:ff:01'), 6);
  f[12] = 0x08; f[13] = 0x00;
  f.set(p, 14);
  return f;
}

function entry(src: string, sport: number, dst: string, dport: number, to: string, dir: FpDir, flags: number): { key: Buffer; value: Buffer } {
  const key = Buffer.alloc(KEY_BYTES), value = Buffer.alloc(VALUE_BYTES);
  writeKey(key, 4, parseIp(src)!.bytes, 0, sport, parseIp(dst)!.bytes, 0, dport);
  writeValue(value, 4, parseIp(to)!.bytes, 0, dir === FpDir.Dst ? dport : sport, dir, flags, 0, dir);
  return { key, value };
}

/** In the namespace (ip netns exec): load, map, time each kind of frame. */
function child(job: Job): CostResult {
  const fp = loadFastpath({ maxEntries: 64, priority: 1, objectPath: job.object });
  try {
    const l = libbpf();
    const kinds: Array<{ name: string; pkt: Uint8Array; on: string; map?: { src: string; sport: number; dst: string; dport: number; dir: FpDir; flags: number } }> = [
      { name: 'mptcp_data_1400B', on: 'fa', pkt: buildTcpPacket({ src: CLIENT, dst: BE, sport: 40001, dport: 5201, flags: TCP_ACK | TCP_PSH, options: DATA_OPTS, payload: 1400 }),
        map: { src: CLIENT, sport: 40001, dst: BE, dport: 5201, dir: FpDir.Dst, flags: FpFlag.Mptcp } },
      { name: 'mptcp_ack', on: 'fb', pkt: buildTcpPacket({ src: BE, dst: CLIENT, sport: 5201, dport: 40001, flags: TCP_ACK, options: ACK_OPTS }),
        map: { src: BE, sport: 5201, dst: CLIENT, dport: 40001, dir: FpDir.Src, flags: FpFlag.Mptcp } },
      { name: 'tcp_ack', on: 'fb', pkt: buildTcpPacket({ src: BE, dst: CLIENT, sport: 5202, dport: 40002, flags: TCP_ACK, options: Uint8Array.from(ts) }),
        map: { src: BE, sport: 5202, dst: CLIENT, dport: 40002, dir: FpDir.Src, flags: 0 } },
      { name: 'no_entry', on: 'fa', pkt: buildTcpPacket({ src: CLIENT, dst: OTHER, sport: 40009, dport: 5201, flags: TCP_ACK, options: Uint8Array.from(ts), payload: 100 }) },
    ];
    const nsPerPacket: Record<string, number> = {}, verdicts: Record<string, number> = {}, off: Record<string, number> = {};
    for (const k of kinds) {
      if (k.map) {
        const e = entry(k.map.src, k.map.sport, k.map.dst, k.map.dport, k.map.dir === FpDir.Dst ? k.map.dst : k.map.src, k.map.dir, k.map.flags);
        if (l.mapUpdate(fp.flowsFd, e.key, e.value, 0) !== 0) throw new Error(`map update for ${k.name} failed`);
      }
      const link = job.links[k.on];
      const f = frame(k.pkt, link.mac);
      const ctx = { ingressIfindex: link.ifindex, ifindex: link.ifindex };
      for (let i = 0; i < 50; i++) testRun(fp.progFd, f, ctx, REPEAT); // warm-up
      const ds: number[] = [];
      let verdict = 0;
      for (let i = 0; i < job.calls; i++) {
        const r = testRun(fp.progFd, f, ctx, REPEAT);
        ds.push(r.durationNs);
        if (i > 0 && r.retval !== verdict) off[k.name] = (off[k.name] ?? 0) + 1;
        verdict = r.retval;
      }
      ds.sort((a, b) => a - b);
      nsPerPacket[k.name] = ds[ds.length >> 1];
      verdicts[k.name] = verdict;
    }
    // Mapped frames: redirected, or NATed and left to the kernel (TC_ACT_OK) by a build that does not forward.
    const c = fp.counters();
    for (const [k, v] of Object.entries(verdicts)) {
      const ok = k === 'no_entry' ? v === TC_ACT_UNSPEC : v === TC_ACT_REDIRECT || v === TC_ACT_OK;
      if (!ok) throw new Error(`${k}: verdict ${v} (the frame did not take the path it times)`);
    }
    if (c.errors > 0 || c.pass_ttl > 0 || c.pass_malformed > 0) throw new Error(`unexpected program counters ${JSON.stringify(c)}`);
    if (Object.keys(off).length > 0) process.stderr.write(`fastpath-cost: verdict changes between calls: ${JSON.stringify(off)}\n`);
    return { object: job.object, nsPerPacket, verdicts };
  } finally {
    fp.close();
  }
}

/** Makes the namespace, runs the child once per object, removes the namespace (also on failure). */
export function fastpathCost(objects: string[] = [defaultObjectPath()], calls = 2000): CostResult[] {
  const ns = `mplbFC-${process.pid}`;
  const ip = (args: string[]) => execFileSync('ip', args, { encoding: 'utf8' });
  const n = (args: string[]) => ip(['-n', ns, ...args]);
  ip(['netns', 'add', ns]);
  try {
    n(['link', 'set', 'lo', 'up']);
    for (const [a, b] of [['fa', 'fap'], ['fb', 'fbp']]) { n(['link', 'add', a, 'type', 'veth', 'peer', 'name', b]); n(['link', 'set', a, 'up']); n(['link', 'set', b, 'up']); }
    n(['addr', 'add', '198.18.1.1/24', 'dev', 'fa']);
    n(['addr', 'add', '198.18.10.1/24', 'dev', 'fb']);
    execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    n(['neigh', 'replace', CLIENT, 'lladdr', CLIENT_MAC, 'dev', 'fa', 'nud', 'permanent']);
    n(['neigh', 'replace', BE, 'lladdr', BE_MAC, 'dev', 'fb', 'nud', 'permanent']);
    const links: Job['links'] = {};
    for (const l of JSON.parse(n(['-j', 'link', 'show'])) as Array<{ ifname: string; ifindex: number; address: string }>) links[l.ifname] = { ifindex: l.ifindex, mac: l.address };
    return objects.map((object) => {
      const out = execFileSync('ip', ['netns', 'exec', ns, process.execPath, SELF], { encoding: 'utf8', env: { ...process.env, MPLB_FP_COST_JOB: JSON.stringify({ object, calls, links }) }, timeout: 300_000 });
      return JSON.parse(out.trim().split('\n').pop()!) as CostResult;
    });
  } finally {
    try { ip(['netns', 'del', ns]); } catch { /* gone */ }
  }
}

const jobText = process.env.MPLB_FP_COST_JOB;
if (jobText !== undefined) {
  process.stdout.write(`${JSON.stringify(child(JSON.parse(jobText) as Job))}\n`);
} else if (process.argv[1] === SELF) {
  const { values } = parseArgs({ options: { object: { type: 'string' }, calls: { type: 'string', default: '2000' }, json: { type: 'boolean', default: false } } });
  const rs = fastpathCost(values.object ? values.object.split(',') : undefined, Number(values.calls));
  if (values.json) process.stdout.write(`${JSON.stringify(rs, null, 2)}\n`);
  else for (const r of rs) process.stdout.write(`${r.object}: ${Object.entries(r.nsPerPacket).map(([k, v]) => `${k} ${v} ns`).join(', ')}\n`);
}
