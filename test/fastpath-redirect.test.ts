// The fast path forwards NATed packets itself when the FIB has a complete answer: BPF_PROG_TEST_RUN inside a network
// namespace made here (two veth links, forwarding on, permanent neighbours), through a child process started with
// ip netns exec (the FIB lookup uses the caller's namespace). Checks the verdict (redirect), the MACs from the FIB,
// the TTL / hop limit decrement with a valid IPv4 header checksum, the NAT, and the cases left to the kernel: TTL 1
// (untouched, so the kernel answers time exceeded) and a next hop with no neighbour entry (NATed, routed by the
// kernel). Needs root: skipped outside CI without it, failed in CI.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { defaultObjectPath } from '../src/fastpath/loader.js';
import { FpDir, KEY_BYTES, VALUE_BYTES, statSlot, writeKey, writeValue } from '../src/fastpath/layout.js';
import { parseIp } from '../src/wire/addr.js';
import { checksum } from '../src/wire/checksum.js';
import { ACK, checksumsOk, endpoints, tcp } from './helpers/packets.js';

const CI = process.env.CI === 'true';
const NS = `mplbFR-${process.pid}`;
const CHILD = fileURLToPath(new URL('./helpers/fastpath-child.js', import.meta.url));
const TC_ACT_UNSPEC = -1, TC_ACT_OK = 0, TC_ACT_REDIRECT = 7;
const CLIENT = '198.18.1.2', VIP = '198.18.100.1', BE = '198.18.10.2', BE_NO_NEIGH = '198.18.10.3';
const CLIENT6 = '2001:db8:1::2', VIP6 = '2001:db8:100::1', BE6 = '2001:db8:10::2';
const CLIENT_MAC = '02:00:00:00:01:02', BE_MAC = '02:00:00:00:0a:02';

function why(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'network namespaces and BPF need root';
  if (!fs.existsSync(defaultObjectPath())) return `${defaultObjectPath()} is missing (npm run build needs clang)`;
  return undefined;
}

const ip = (args: string[]) => execFileSync('ip', args, { encoding: 'utf8' });
const macBytes = (m: string) => m.split(':').map((x) => parseInt(x, 16));

/** Ethernet frame to `dstMac` around an IP packet. */
function frame(pkt: Uint8Array, dstMac: string): Uint8Array {
  const f = new Uint8Array(14 + pkt.length);
  f.set(macBytes(dstMac), 0);
  f.set(macBytes('02:00:00:00:ff:01'), 6);
  f[12] = (pkt[0] >> 4) === 6 ? 0x86 : 0x08; f[13] = (pkt[0] >> 4) === 6 ? 0xdd : 0x00;
  f.set(pkt, 14);
  return f;
}

/** The packet with TTL (IPv4, header checksum redone) or hop limit (IPv6) set. */
function withTtl(pkt: Uint8Array, ttl: number): Uint8Array {
  const p = pkt.slice();
  if ((p[0] >> 4) === 6) { p[7] = ttl; return p; }
  p[8] = ttl; p[10] = 0; p[11] = 0;
  const c = checksum(p, 0, (p[0] & 15) * 4);
  p[10] = c >> 8; p[11] = c & 0xff;
  return p;
}

function entry(family: 4 | 6, src: string, sport: number, dst: string, dport: number, to: string, toPort: number, dir: FpDir, backend: number) {
  const k = Buffer.alloc(KEY_BYTES), v = Buffer.alloc(VALUE_BYTES);
  writeKey(k, family, parseIp(src)!.bytes, 0, sport, parseIp(dst)!.bytes, 0, dport);
  writeValue(v, family, parseIp(to)!.bytes, 0, toPort, dir, 0, 0, statSlot(backend, dir));
  return { key: k.toString('hex'), value: v.toString('hex') };
}

const reason = why();
if (reason) {
  test('fast path redirect prerequisites', (t) => {
    if (CI) assert.fail(`the fast path redirect test cannot run here: ${reason}. CI runs it as root with clang and libbpf.`);
    t.skip(reason);
  });
} else {
  describe('fast path: forwarding by the program (bpf_fib_lookup + bpf_redirect) in a namespace', () => {
    const links: Record<string, { ifindex: number; mac: string }> = {};
    before(() => {
      try { ip(['netns', 'del', NS]); } catch { /* not there */ }
      ip(['netns', 'add', NS]);
      const n = (args: string[]) => ip(['-n', NS, ...args]);
      n(['link', 'set', 'lo', 'up']);
      for (const [a, b] of [['fa', 'fap'], ['fb', 'fbp']]) { n(['link', 'add', a, 'type', 'veth', 'peer', 'name', b]); n(['link', 'set', a, 'up']); n(['link', 'set', b, 'up']); }
      n(['addr', 'add', '198.18.1.1/24', 'dev', 'fa']); n(['addr', 'add', '2001:db8:1::1/64', 'dev', 'fa', 'nodad']);
      n(['addr', 'add', '198.18.10.1/24', 'dev', 'fb']); n(['addr', 'add', '2001:db8:10::1/64', 'dev', 'fb', 'nodad']);
      execFileSync('ip', ['netns', 'exec', NS, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
      for (const [addr, mac, dev] of [[CLIENT, CLIENT_MAC, 'fa'], [CLIENT6, CLIENT_MAC, 'fa'], [BE, BE_MAC, 'fb'], [BE6, BE_MAC, 'fb']]) n(['neigh', 'replace', addr, 'lladdr', mac, 'dev', dev, 'nud', 'permanent']);
      for (const l of JSON.parse(n(['-j', 'link', 'show'])) as Array<{ ifname: string; ifindex: number; address: string }>) links[l.ifname] = { ifindex: l.ifindex, mac: l.address };
    });
    after(() => { try { ip(['netns', 'del', NS]); } catch { /* gone */ } });

    test('NATed packets leave by the FIB\'s device with its MACs and TTL - 1; TTL 1 and an unresolved next hop go to the kernel', () => {
      const data = tcp({ src: CLIENT, dst: VIP, sport: 40001, dport: 5201, flags: ACK, payload: 700 });
      const reply = tcp({ src: BE, dst: CLIENT, sport: 8080, dport: 40001, flags: ACK, payload: 300 });
      const data6 = tcp({ src: CLIENT6, dst: VIP6, sport: 40003, dport: 5201, flags: ACK, payload: 500 });
      const noNeigh = tcp({ src: CLIENT, dst: VIP, sport: 40002, dport: 5201, flags: ACK, payload: 100 });
      const job = {
        entries: [
          entry(4, CLIENT, 40001, VIP, 5201, BE, 8080, FpDir.Dst, 3),
          entry(4, BE, 8080, CLIENT, 40001, VIP, 5201, FpDir.Src, 3),
          entry(6, CLIENT6, 40003, VIP6, 5201, BE6, 8080, FpDir.Dst, 4),
          entry(4, CLIENT, 40002, VIP, 5201, BE_NO_NEIGH, 8080, FpDir.Dst, 5),
        ],
        frames: [
          { hex: Buffer.from(frame(withTtl(data, 64), links.fa.mac)).toString('hex'), ifindex: links.fa.ifindex },
          { hex: Buffer.from(frame(withTtl(reply, 64), links.fb.mac)).toString('hex'), ifindex: links.fb.ifindex },
          { hex: Buffer.from(frame(withTtl(data6, 64), links.fa.mac)).toString('hex'), ifindex: links.fa.ifindex },
          { hex: Buffer.from(frame(withTtl(data, 1), links.fa.mac)).toString('hex'), ifindex: links.fa.ifindex },
          { hex: Buffer.from(frame(withTtl(noNeigh, 64), links.fa.mac)).toString('hex'), ifindex: links.fa.ifindex },
        ],
      };
      const out = JSON.parse(execFileSync('ip', ['netns', 'exec', NS, process.execPath, CHILD], { encoding: 'utf8', env: { ...process.env, MPLB_FP_CHILD_JOB: JSON.stringify(job) } })) as {
        results: Array<{ retval: number; out: string }>; counters: Record<string, number>;
      };
      const r = out.results.map((x) => ({ retval: x.retval, f: Uint8Array.from(Buffer.from(x.out, 'hex')) }));
      const mac = (f: Uint8Array, at: number) => Array.from(f.subarray(at, at + 6), (b) => b.toString(16).padStart(2, '0')).join(':');

      // Client -> VIP: out of fb to the backend's MAC, from fb's MAC; TTL 63; destination rewritten; checksums valid.
      assert.equal(r[0].retval, TC_ACT_REDIRECT, 'forwarded by the program');
      assert.equal(mac(r[0].f, 0), BE_MAC);
      assert.equal(mac(r[0].f, 6), links.fb.mac);
      const p0 = r[0].f.subarray(14);
      assert.equal(p0[8], 63, 'TTL decremented');
      assert.equal(endpoints(p0).dst, `${BE}:8080`);
      assert.ok(checksumsOk(p0), 'IPv4 header and TCP checksums valid after NAT and TTL');
      assert.deepEqual(p0.subarray(20 + 20), data.subarray(20 + 20), 'payload untouched');
      // Backend -> client: out of fa to the client's MAC, source = the VIP.
      assert.equal(r[1].retval, TC_ACT_REDIRECT);
      assert.equal(mac(r[1].f, 0), CLIENT_MAC);
      assert.equal(mac(r[1].f, 6), links.fa.mac);
      assert.equal(endpoints(r[1].f.subarray(14)).src, `${VIP}:5201`);
      assert.equal(r[1].f[14 + 8], 63);
      assert.ok(checksumsOk(r[1].f.subarray(14)));
      // IPv6: hop limit 63, backend's MAC.
      assert.equal(r[2].retval, TC_ACT_REDIRECT);
      assert.equal(mac(r[2].f, 0), BE_MAC);
      assert.equal(r[2].f[14 + 7], 63, 'hop limit decremented');
      assert.equal(endpoints(r[2].f.subarray(14)).dst, `${Buffer.from(parseIp(BE6)!.bytes).toString('hex')}:8080`); // the helper spells IPv6 in hex
      assert.ok(checksumsOk(r[2].f.subarray(14)));
      // TTL 1: untouched, passed on (the kernel sends time exceeded quoting what the client sent).
      assert.equal(r[3].retval, TC_ACT_UNSPEC);
      assert.deepEqual(r[3].f.subarray(14), withTtl(data, 1));
      // No neighbour for the next hop: NATed, TTL left for the kernel, which resolves it and routes.
      assert.equal(r[4].retval, TC_ACT_OK);
      assert.equal(endpoints(r[4].f.subarray(14)).dst, `${BE_NO_NEIGH}:8080`);
      assert.equal(r[4].f[14 + 8], 64);
      assert.ok(checksumsOk(r[4].f.subarray(14)));
      assert.equal(out.counters.redirected, 3);
      assert.equal(out.counters.packets, 4);
      assert.equal(out.counters.pass_ttl, 1);
    });
  });
}
