// `mplb replay` of a real Linux capture with ICMP (test/fixtures/icmp-pmtu-linux.pcap, made by icmp-capture.mjs on the
// balancer's router-side port: iperf3 downloads across a 1400-byte hop on IPv4 and IPv6, then ping to each VIP).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readCapture } from '../src/io/pcap.js';

const MAIN = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const FIXTURE = fileURLToPath(new URL('../../test/fixtures/icmp-pmtu-linux.pcap', import.meta.url));

function sum16(b: ArrayLike<number>, from: number, to: number, acc = 0): number {
  for (let i = from; i < to; i += 2) acc += b[i] * 256 + (i + 1 < to ? b[i + 1] : 0);
  while (acc > 0xffff) acc = (acc % 0x10000) + Math.floor(acc / 0x10000);
  return acc;
}
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

test('mplb replay: the router\'s fragmentation needed / packet too big go to the flow\'s server, pings are answered', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mpicmp-replay-'));
  try {
    const out = join(dir, 'out.pcap');
    const r = spawnSync(process.execPath, [MAIN, 'replay', FIXTURE, '--json', '--backends', '3', '--pcap-out', out], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(j.vips, ['10.77.100.1:5201', '[fd77:100::1]:5201']);
    const icmp = Object.fromEntries(Object.entries(j.counters as Record<string, number>).filter(([k]) => k.startsWith('icmp')));
    // Two errors per family, both about the iperf3 data connection (which has a flow); two pings per family.
    assert.deepEqual(icmp, {
      icmp_errors_to_backend: 4, icmp_errors_to_backend_hashed: 0, icmp_errors_to_client: 0, icmp_errors_to_client_stateless: 0,
      icmp_pmtu_errors: 4, icmp_echo_answered: 4,
    });
    // The echo replies mplb sent while capturing are in the file too: they are no one's to balance.
    const drops = Object.fromEntries(Object.entries(j.drops as Record<string, number>).filter(([, v]) => v > 0));
    assert.deepEqual(drops, { icmp_unhandled_type: 4 });

    // What left: each error addressed to a server and quoting that server's own segment, checksums right.
    const recs = readCapture(new Uint8Array(readFileSync(out))).records.map((x) => x.data);
    const servers4 = new Set(['198.18.255.1', '198.18.255.2', '198.18.255.3'].map((a) => hex(Uint8Array.from(a.split('.').map(Number)))));
    let errors = 0, replies = 0;
    for (const p of recs) {
      if (p[0] >> 4 === 4 && p[9] === 1) {
        assert.equal(sum16(p, 0, 20), 0xffff, 'IPv4 header checksum');
        assert.equal(sum16(p, 20, p.length), 0xffff, 'ICMP checksum');
        if (p[20] === 3) {
          errors++;
          assert.ok(servers4.has(hex(p.subarray(16, 20))), 'outer destination is a server');
          assert.equal(hex(p.subarray(28 + 12, 28 + 16)), hex(p.subarray(16, 20)), 'quoted source = that server');
          assert.equal(sum16(p, 28, 48), 0xffff, 'quoted IPv4 header checksum');
          assert.equal((p[48] << 8) | p[49], 5201);
        } else if (p[20] === 0) {
          replies++;
          assert.equal(hex(p.subarray(12, 16)), '0a4d6401', 'reply from the VIP');
        }
      } else if (p[0] >> 4 === 6 && p[6] === 58) {
        const len = p.length - 40;
        const ph = [...p.subarray(8, 40), 0, 0, len >> 8, len & 0xff, 0, 0, 0, 58];
        assert.equal(sum16(p, 40, p.length, sum16(ph, 0, ph.length)), 0xffff, 'ICMPv6 checksum');
        if (p[40] === 2) {
          errors++;
          assert.match(hex(p.subarray(24, 40)), /^20010db8ffff0{18}0[123]$/, 'outer destination is a server (2001:db8:ffff::N)');
          assert.equal(hex(p.subarray(48 + 8, 48 + 24)), hex(p.subarray(24, 40)), 'quoted source = that server');
          assert.equal((p[88] << 8) | p[89], 5201);
        } else if (p[40] === 129) {
          replies++;
        }
      }
    }
    assert.equal(errors, 4);
    assert.equal(replies, 4);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
