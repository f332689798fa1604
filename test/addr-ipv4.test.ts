// parseIp's IPv4 reader (no regular expression) accepts exactly what net.isIPv4 accepts, with the same bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isIPv4 } from 'node:net';
import fc from 'fast-check';
import { parseIp } from '../src/wire/addr.js';

function check(s: string): void {
  const r = parseIp(s);
  assert.equal(r?.family === 4, isIPv4(s), JSON.stringify(s));
  if (r?.family === 4) assert.deepEqual([...r.bytes], s.split('.').map(Number), s);
}

test('IPv4 text: accepted exactly as net.isIPv4 accepts it, with its bytes', () => {
  for (const s of ['0.0.0.0', '255.255.255.255', '198.19.7.208', '1.2.3.4', '01.2.3.4', '1.2.3.04', '1.2.3.256', '1.2.3', '1.2.3.4.5',
    '1..3.4', '.1.2.3', '1.2.3.', '1.2.3.4 ', ' 1.2.3.4', '1.2.3.4:80', '１.2.3.4', '999.1.1.1', '10.0.0.00', '1.2.3.-4', '+1.2.3.4', '']) check(s);
  fc.assert(fc.property(fc.stringMatching(/^[0-9.]{0,17}$/), check), { numRuns: 20000, seed: 0x1f4 });
  fc.assert(fc.property(fc.tuple(fc.nat(300), fc.nat(300), fc.nat(300), fc.nat(300)), fc.constantFrom('', '0', '00'), ([a, b, c, d], pad) => check(`${pad}${a}.${b}.${c}.${d}`)), { numRuns: 5000, seed: 0x2f4 });
});
