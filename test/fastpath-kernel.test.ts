// The real fast-path object in the kernel: BPF_PROG_TEST_RUN on crafted frames (no interface, no traffic).
// The engine decides a flow and queues its offload; the worker's FlowMap writes the real map; then the same packet
// goes through the engine's rewrite and through the program, and the two outputs must be byte for byte equal,
// with checksums verified independently. Needs root (loading BPF): skipped outside CI without it, failed in CI.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fc from 'fast-check';
import { Engine, Verdict } from '../src/engine/engine.js';
import { validateEngineConfig } from '../src/engine/config.js';
import { Counter } from '../src/engine/counters.js';
import { FlowState } from '../src/engine/flow-table.js';
import { defaultObjectPath, loadFastpath, type FastpathHandle } from '../src/fastpath/loader.js';
import { FlowMap } from '../src/fastpath/flow-map.js';
import { libbpf, testRun } from '../src/fastpath/libbpf.js';
import { KEY_BYTES, VALUE_BYTES, readLastSeenNs, writeKey } from '../src/fastpath/layout.js';
import { parseIp } from '../src/wire/addr.js';
import { ACK, FIN, RST, SYN, capAck, capSyn, capSynAck, checksumsOk, dss, endpoints, fastclose, tcp, mptcpOptions } from './helpers/packets.js';

const CI = process.env.CI === 'true';
const TC_ACT_OK = 0, TC_ACT_UNSPEC = -1;
const VIP4 = '198.18.100.1', VIP6 = '2001:db8:100::1';
const BE4 = ['198.18.10.2', '198.18.11.2'], BE6 = ['2001:db8:10::2', '2001:db8:11::2'];

function why(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'loading BPF programs needs root';
  if (!fs.existsSync(defaultObjectPath())) return `${defaultObjectPath()} is missing (npm run build needs clang)`;
  try { libbpf(); } catch (e) { return (e as Error).message; }
  return undefined;
}

/** An Ethernet frame around an IP packet (what tc ingress sees). */
function frame(ip: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + ip.length);
  f.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2], 0);
  f[12] = (ip[0] >> 4) === 6 ? 0x86 : 0x08; f[13] = (ip[0] >> 4) === 6 ? 0xdd : 0x00;
  f.set(ip, 14);
  return f;
}

function engine(): Engine {
  const e = new Engine(validateEngineConfig({
    vips: [
      { address: `${VIP4}:5201`, backends: BE4.map((address) => ({ address, port: 8080 })) },
      { address: `${VIP4}:80`, backends: BE4.map((address) => ({ address })) },
      { address: `[${VIP6}]:5201`, backends: BE6.map((address) => ({ address, port: 8080 })) },
    ],
    tables: { maxFlows: 1024, maxConnections: 1024 },
  }));
  e.offload.enabled = true;
  return e;
}

const T0 = 5_000_000;
const opts = (...o: Uint8Array[]) => { const n = o.reduce((s, x) => s + x.length, 0); const r = new Uint8Array(n); let i = 0; for (const x of o) { r.set(x, i); i += x.length; } return r; };
/** NOP NOP timestamps (kind 8), as Linux sends on every segment. */
const TS = Uint8Array.from([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);

const reason = why();
if (reason) {
  test('fast path kernel prerequisites', (t) => {
    if (CI) assert.fail(`the fast path kernel tests cannot run here: ${reason}. CI runs them as root with clang and libbpf.`);
    t.skip(reason);
  });
} else {
  describe('fast path program in the kernel (BPF_PROG_TEST_RUN)', () => {
    let fp: FastpathHandle;
    before(() => { fp = loadFastpath({ maxEntries: 4096, priority: 1 }); });
    after(() => fp?.close());

    /** Handshake of an MPTCP v1 (or plain, version -1) flow through the engine; its offload applied to the real map. */
    function establish(e: Engine, map: FlowMap, client: string, vip: string, cport: number, vport: number, version: number): string {
      const synOpts = version >= 0 ? [capSyn(version, version === 0 ? 0x1111n : undefined)] : [];
      const syn = tcp({ src: client, dst: vip, sport: cport, dport: vport, flags: SYN, options: synOpts });
      assert.equal(e.process(syn, 0, syn.length, T0), Verdict.ToBackend);
      const be = endpoints(syn).dst;
      const [bAddr, bPort] = [be.slice(0, be.lastIndexOf(':')), Number(be.slice(be.lastIndexOf(':') + 1))];
      const beText = bAddr.includes('.') ? bAddr : formatV6(bAddr);
      const sa = tcp({ src: beText, dst: client, sport: bPort, dport: cport, flags: SYN | ACK, options: version >= 0 ? [capSynAck(version, 0xabcdefn)] : [] });
      assert.equal(e.process(sa, 0, sa.length, T0), Verdict.ToClient);
      assert.equal(map.apply(T0), 0, 'nothing offloaded before the handshake completes');
      const ack = tcp({ src: client, dst: vip, sport: cport, dport: vport, flags: ACK, options: version >= 0 ? [capAck(version, 0x1111n, 0xabcdefn)] : [] });
      assert.equal(e.process(ack, 0, ack.length, T0), Verdict.ToBackend);
      assert.equal(map.apply(T0), 1, 'the third ACK offloads the flow');
      return beText;
    }

    /** The same packet through the engine and through the program: equal bytes, valid checksums. */
    function sameRewrite(e: Engine, pkt: Uint8Array, expect: Verdict): Uint8Array {
      const mine = pkt.slice();
      assert.equal(e.process(mine, 0, mine.length, T0 + 1), expect);
      const { retval, out } = testRun(fp.progFd, frame(pkt));
      assert.equal(retval, TC_ACT_OK, 'the program NATed it');
      const k = out.subarray(14);
      assert.deepEqual(Buffer.from(k).toString('hex'), Buffer.from(mine).toString('hex'), 'kernel rewrite = engine rewrite');
      assert.ok(checksumsOk(k), 'IP and TCP checksums verify after the kernel rewrite');
      return k;
    }

    function passes(pkt: Uint8Array, what: string): void {
      const { retval, out } = testRun(fp.progFd, frame(pkt));
      assert.equal(retval, TC_ACT_UNSPEC, `${what}: passed up`);
      assert.deepEqual(out.subarray(14), pkt, `${what}: untouched`);
    }

    test('IPv4 MPTCP v1 flow: both directions NATed exactly as the engine does (ports too), last-seen written, per-backend counters folded into the engine\'s', () => {
      const e = engine(), map = new FlowMap(fp.flowsFd, e, fp.statsFd);
      map.foldBackendStats(); // what earlier runs left in the per-CPU slots is not this engine's
      const c0 = fp.counters();
      const be = establish(e, map, '198.18.1.2', VIP4, 40001, 5201, 1);
      const data = tcp({ src: '198.18.1.2', dst: VIP4, sport: 40001, dport: 5201, flags: ACK, options: opts(TS, mptcpOptions([dss(7n)])), payload: 1000 });
      const k = sameRewrite(e, data, Verdict.ToBackend);
      assert.equal(endpoints(k).dst, `${be}:8080`);
      const reply = tcp({ src: be, dst: '198.18.1.2', sport: 8080, dport: 40001, flags: ACK, options: opts(TS, mptcpOptions([dss(9n)])), payload: 33 });
      const k2 = sameRewrite(e, reply, Verdict.ToClient);
      assert.equal(endpoints(k2).src, `${VIP4}:5201`);
      const c1 = fp.counters();
      assert.equal(c1.packets - c0.packets, 2);
      assert.equal(c1.bytes - c0.bytes, 2 * 14 + data.length + reply.length);
      // The engine counted its own copies (sameRewrite runs both); the kernel's come on top at the fold, per direction.
      const b = e.services.findBackend(`${be}:8080`);
      const mine = e.services.backendInfo(b);
      map.foldBackendStats();
      const after = e.services.backendInfo(b);
      assert.deepEqual([after.packetsIn - mine.packetsIn, after.bytesIn - mine.bytesIn, after.packetsOut - mine.packetsOut, after.bytesOut - mine.bytesOut],
        [1, data.length, 1, reply.length], 'kernel-NATed packets and IP bytes added to the backend, in and out');
      map.foldBackendStats();
      assert.equal(e.services.backendInfo(b).packetsIn, after.packetsIn, 'a second fold adds nothing new');
      // One backend more (its slots past those folded so far): the next fold reads them from zero.
      e.reconfigure(validateEngineConfig({
        vips: [
          { address: `${VIP4}:5201`, backends: [...BE4, '198.18.12.2'].map((address) => ({ address, port: 8080 })) },
          { address: `${VIP4}:80`, backends: BE4.map((address) => ({ address })) },
          { address: `[${VIP6}]:5201`, backends: BE6.map((address) => ({ address, port: 8080 })) },
        ],
        tables: { maxFlows: 1024, maxConnections: 1024 },
      }));
      map.foldBackendStats();
      for (let i = 0; i < e.services.backendCount; i++) {
        const x = e.services.backendInfo(i);
        assert.ok([x.packetsIn, x.bytesIn, x.packetsOut, x.bytesOut].every(Number.isFinite), `backend ${x.id}: ${JSON.stringify(x)}`);
      }
      assert.equal(e.services.backendInfo(b).packetsIn, after.packetsIn, 'the grown fold leaves the old counters as they were');
      // last_seen_ns is CLOCK_MONOTONIC (process.hrtime) of the NATed packet.
      const key = Buffer.alloc(KEY_BYTES), val = Buffer.alloc(VALUE_BYTES);
      writeKey(key, 4, parseIp('198.18.1.2')!.bytes, 0, 40001, parseIp(VIP4)!.bytes, 0, 5201);
      assert.equal(libbpf().mapLookup(fp.flowsFd, key, val), 0);
      const ageMs = (Number(process.hrtime.bigint()) - readLastSeenNs(val)) / 1e6;
      assert.ok(ageMs >= 0 && ageMs < 5000, `last seen ${ageMs} ms ago`);
    });

    test('mapped flow: SYN (entry deleted), FIN, RST and non-DSS MPTCP options go to the engine untouched', () => {
      const e = engine(), map = new FlowMap(fp.flowsFd, e);
      establish(e, map, '198.18.1.3', VIP4, 40002, 5201, 1);
      const pkt = (flags: number, o: Uint8Array = TS) => tcp({ src: '198.18.1.3', dst: VIP4, sport: 40002, dport: 5201, flags, options: o, payload: 10 });
      const c0 = fp.counters();
      passes(pkt(ACK | FIN), 'FIN');
      passes(pkt(ACK | RST), 'RST');
      passes(pkt(ACK, opts(TS, mptcpOptions([fastclose(0xabcdefn)]))), 'MP_FASTCLOSE on an ACK');
      passes(pkt(ACK, opts(Uint8Array.from([30, 3, 0x50, 1]))), 'MP_PRIO');
      passes(pkt(ACK, Uint8Array.from([30, 1, 0, 0])), 'MPTCP option with a bad length');
      // Timestamps and a DSS, then 3 bytes that are not padding but an MP_PRIO: the inline check of Linux's layout
      // must hand it to the walk, which finds the MP_PRIO.
      passes(pkt(ACK, opts(TS, Uint8Array.from([30, 9, 0x20, 0x01, 0, 0, 0, 1, 0, 30, 3, 0x50]))), 'MP_PRIO in the 3 bytes after a DSS');
      const c1 = fp.counters();
      assert.equal(c1.pass_control - c0.pass_control, 2);
      assert.equal(c1.pass_mptcp - c0.pass_mptcp, 3);
      assert.equal(c1.pass_malformed - c0.pass_malformed, 1);
      assert.equal(c1.packets, c0.packets, 'nothing NATed');
      // Still mapped: a DSS-only segment is NATed.
      sameRewrite(e, pkt(ACK, opts(TS, mptcpOptions([dss(1n)]))), Verdict.ToBackend);
      // Linux's data segment: timestamps, a DSS with a mapping (18 bytes), then NOP or end-of-list padding.
      const mapping = [30, 18, 0x20, 0x05, 0, 0, 0, 9, 0, 0, 0, 7, 0, 0, 0, 1, 0, 10];
      sameRewrite(e, pkt(ACK, opts(TS, Uint8Array.from([...mapping, 1, 1]))), Verdict.ToBackend);
      sameRewrite(e, pkt(ACK, opts(TS, Uint8Array.from([...mapping, 0, 0]))), Verdict.ToBackend);
      // A SYN reusing the 4-tuple: passed up, and the stale entry is gone (the next ACK is passed up too).
      passes(pkt(SYN, new Uint8Array(0)), 'SYN on a mapped 4-tuple');
      assert.equal(fp.counters().syn_stale - c0.syn_stale, 1);
      passes(pkt(ACK), 'ACK after the stale entry was deleted');
    });

    test('engine sees the FIN: the flow comes back, its entries leave the map', () => {
      const e = engine(), map = new FlowMap(fp.flowsFd, e);
      establish(e, map, '198.18.1.4', VIP4, 40003, 80, -1);
      const ack = () => tcp({ src: '198.18.1.4', dst: VIP4, sport: 40003, dport: 80, flags: ACK, options: TS, payload: 5 });
      sameRewrite(e, ack(), Verdict.ToBackend);
      const fin = tcp({ src: '198.18.1.4', dst: VIP4, sport: 40003, dport: 80, flags: ACK | FIN, options: TS });
      assert.equal(e.process(fin, 0, fin.length, T0 + 2), Verdict.ToBackend);
      assert.equal(map.apply(T0 + 2), 1);
      assert.equal(map.counters.removed, 1);
      passes(ack(), 'data after the FIN');
      assert.equal(e.counters.events[Counter.FlowsOffloadReleased], 1);
    });

    test('IPv6 flow: NAT with the pseudo-header diff, byte-exact both ways', () => {
      const e = engine(), map = new FlowMap(fp.flowsFd, e);
      const be = establish(e, map, '2001:db8:1::2', VIP6, 40004, 5201, 1);
      const k = sameRewrite(e, tcp({ src: '2001:db8:1::2', dst: VIP6, sport: 40004, dport: 5201, flags: ACK, options: opts(TS, mptcpOptions([dss(3n)])), payload: 1200 }), Verdict.ToBackend);
      assert.equal(endpoints(k).dst.endsWith(':8080'), true);
      sameRewrite(e, tcp({ src: be, dst: '2001:db8:1::2', sport: 8080, dport: 40004, flags: ACK, options: TS, payload: 7 }), Verdict.ToClient);
    });

    test('idle expiry asks the kernel: a flow busy on the fast path is kept, an idle one expires and leaves the map', () => {
      const e = engine(), map = new FlowMap(fp.flowsFd, e);
      establish(e, map, '198.18.1.5', VIP4, 40005, 80, -1);
      establish(e, map, '198.18.1.6', VIP4, 40006, 80, -1);
      const idleMs = e.config.timeouts.establishedMs;
      // Flow 1 carries traffic on the fast path only (the engine never sees it); flow 2 is silent.
      assert.equal(testRun(fp.progFd, frame(tcp({ src: '198.18.1.5', dst: VIP4, sport: 40005, dport: 80, flags: ACK, payload: 1 }))).retval, TC_ACT_OK);
      // The engine's clock jumps past the idle timeout; the kernel's last-seen of flow 1 is "now".
      const later = T0 + idleMs + 1000;
      e.tick(later);
      assert.equal(e.counters.events[Counter.OffloadChecks], 2, 'both looked idle: the kernel is asked');
      assert.equal(e.flows.used, 2, 'nothing expired before the answer');
      // The kernel's answer, as the worker gives it: flow 1 was seen 0 ms ago, flow 2 last at its insert (long ago).
      // Shift the real ages by the fake clock: offloadSeen receives ages, which the worker measures.
      map.apply(later);
      assert.equal(e.counters.events[Counter.OffloadRefreshed] >= 1, true, 'the busy flow was refreshed');
      e.tick(later + 1);
      let live = 0;
      for (let r = 0; r < e.flows.capacity; r++) if (e.flows.isLive(r)) { live++; assert.equal(e.flows.clientPort(r), 40005, 'the busy flow stays'); assert.ok(e.flows.state(r) & FlowState.Offloaded); }
      assert.equal(live, 1, 'the idle flow expired');
      map.apply(later + 1);
      assert.equal(map.counters.removed, 1, 'its entries were deleted');
      passes(tcp({ src: '198.18.1.6', dst: VIP4, sport: 40006, dport: 80, flags: ACK, payload: 1 }), 'the expired flow');
    });

    test('batched map writes: a full map refuses the rest (those flows stay with the engine); a missing key does not stop a removal batch', () => {
      const small = loadFastpath({ maxEntries: 64, priority: 1 }); // 32 flows
      try {
        const e = engine(), map = new FlowMap(small.flowsFd, e);
        const n = 40;
        // 40 handshakes in one "batch" of the worker: one bpf_map_update_batch call for 80 entries.
        for (let i = 0; i < n; i++) {
          const cp = 41000 + i;
          const syn = tcp({ src: '198.18.3.2', dst: VIP4, sport: cp, dport: 80, flags: SYN });
          e.process(syn, 0, syn.length, T0);
          const be = endpoints(syn).dst.split(':')[0];
          const sa = tcp({ src: be, dst: '198.18.3.2', sport: 80, dport: cp, flags: SYN | ACK });
          e.process(sa, 0, sa.length, T0);
          const ack = tcp({ src: '198.18.3.2', dst: VIP4, sport: cp, dport: 80, flags: ACK });
          e.process(ack, 0, ack.length, T0);
        }
        assert.equal(map.apply(T0), n);
        assert.equal(map.counters.inserted, 32);
        assert.equal(map.counters.insertErrors, 8);
        assert.equal(map.lastErrno, 7, 'E2BIG');
        let offloaded = 0;
        for (let r = 0; r < e.flows.capacity; r++) if (e.flows.isLive(r) && (e.flows.state(r) & FlowState.Offloaded)) offloaded++;
        assert.equal(offloaded, 32, 'the refused flows are not marked offloaded');
        const data = (cp: number) => tcp({ src: '198.18.3.2', dst: VIP4, sport: cp, dport: 80, flags: ACK, payload: 5 });
        assert.equal(testRun(small.progFd, frame(data(41000))).retval, TC_ACT_OK, 'an inserted flow is NATed');
        assert.equal(testRun(small.progFd, frame(data(41039))).retval, TC_ACT_UNSPEC, 'a refused one goes to the engine');
        // The program deletes flow 41000's client entry on a SYN; then FINs of 41000..41002 are removed in one batch.
        assert.equal(testRun(small.progFd, frame(tcp({ src: '198.18.3.2', dst: VIP4, sport: 41000, dport: 80, flags: SYN }))).retval, TC_ACT_UNSPEC);
        for (const cp of [41000, 41001, 41002]) { const f = tcp({ src: '198.18.3.2', dst: VIP4, sport: cp, dport: 80, flags: ACK | FIN }); e.process(f, 0, f.length, T0 + 1); }
        assert.equal(map.apply(T0 + 1), 3);
        for (const cp of [41001, 41002]) assert.equal(testRun(small.progFd, frame(data(cp))).retval, TC_ACT_UNSPEC, `${cp} removed despite the missing key before it`);
        // Their reply entries went too.
        const be = (() => { const s = tcp({ src: '198.18.3.2', dst: VIP4, sport: 41002, dport: 80, flags: ACK }); e.process(s, 0, s.length, T0 + 2); return endpoints(s).dst.split(':')[0]; })();
        assert.equal(testRun(small.progFd, frame(tcp({ src: be, dst: '198.18.3.2', sport: 80, dport: 41002, flags: ACK, payload: 3 }))).retval, TC_ACT_UNSPEC);
        assert.equal(testRun(small.progFd, frame(data(41003))).retval, TC_ACT_OK, 'the others stay');
      } finally {
        small.close();
      }
    });

    test('property: random IPv4/IPv6 flows, ports, payloads and DSS/timestamp options: kernel rewrite = engine rewrite', () => {
      const e = engine(), map = new FlowMap(fp.flowsFd, e);
      let port = 20000;
      fc.assert(fc.property(
        fc.boolean(), fc.integer({ min: 1, max: 254 }), fc.integer({ min: 0, max: 1400 }), fc.boolean(), fc.boolean(), fc.integer({ min: 0, max: 0xffffffff }),
        (v6, host, payload, withTs, reply, seq) => {
          const cport = port++;
          const client = v6 ? `2001:db8:2::${host.toString(16)}` : `198.18.2.${host}`;
          const vip = v6 ? VIP6 : VIP4;
          const be = establish(e, map, client, vip, cport, 5201, 1);
          const o = opts(withTs ? TS : new Uint8Array(0), mptcpOptions([dss(BigInt(seq))]));
          const pkt = reply
            ? tcp({ src: be, dst: client, sport: 8080, dport: cport, flags: ACK, seq, options: o, payload })
            : tcp({ src: client, dst: vip, sport: cport, dport: 5201, flags: ACK, seq, options: o, payload });
          sameRewrite(e, pkt, reply ? Verdict.ToClient : Verdict.ToBackend);
        }), { numRuns: 150 });
    });
  });
}

/** The canonical text of an IPv6 address as the builder takes it (endpoints() prints hex). */
function formatV6(hex: string): string {
  const words: string[] = [];
  for (let i = 0; i < 32; i += 4) words.push(parseInt(hex.slice(i, i + 4), 16).toString(16));
  return words.join(':');
}
