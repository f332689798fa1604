// The start's YAML reader (src/control/yaml-subset.ts) against the yaml library: on any text it either declines
// (undefined: the library parses it) or gives exactly the library's value, and it never accepts what the library refuses.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { parse, stringify } from 'yaml';
import { parseYamlSubset } from '../src/control/yaml-subset.js';

/** The library's verdict: its value, or 'error'. */
function library(text: string): unknown {
  try { return parse(text, { maxAliasCount: 100 }); } catch { return 'error'; }
}

/** The property: declined, or the library's value (and never a value where the library refuses). */
function agrees(text: string): boolean {
  const fast = parseYamlSubset(text);
  if (fast === undefined) return false;
  const lib = library(text);
  assert.notEqual(lib, 'error', `accepted what the library refuses:\n${text}`);
  assert.deepEqual(fast, lib, text);
  return true;
}

const vipOf = (i: number) => `198.19.${i >> 8}.${i & 255}`;

test('the 2,000-VIP config of the start bench and the lifecycle test, and examples/mplb.yaml (but for its flow mapping), are read here, as the library reads them', () => {
  const big = stringify({
    device: { name: 'mplb0', stateFile: '/run/mplb/x.json' },
    vips: Array.from({ length: 2000 }, (_, i) => ({ address: `${vipOf(i)}:80`, backends: [{ address: `198.18.${i % 200}.2` }, { address: `198.18.${i % 200}.3`, weight: 2 }] })),
    tables: { maxFlows: 4096, maxConnections: 2048 },
    admin: { address: '127.0.0.1', port: 0, token: 'e2e-lifecycle-token-5c1e9a' },
    log: { level: 'warn' },
  });
  assert.ok(agrees(big), 'the 2,000-VIP file was declined');
  // Its flow mapping ({ check: tcp }) is outside the subset: declined as a whole, read by the library.
  const example = readFileSync(fileURLToPath(new URL('../../examples/mplb.yaml', import.meta.url)), 'utf8');
  assert.equal(parseYamlSubset(example), undefined);
  assert.ok(agrees(example.replace('{ check: tcp }', '\n      check: tcp')), 'examples/mplb.yaml without its flow mapping was declined');
});

test('hand-written documents in the subset: comments, nulls, booleans, integers, quoted strings, sequences at the key\'s indentation', () => {
  const docs = [
    'a: 1\nb: -2\nc: +3\nd: 007\ne: -0\n',
    'a: true\nb: False\nc: TRUE\nd: null\ne: ~\nf:\ng: yes\nh: off\n',
    '# head\na: 1 # trailing\n   # indented comment\nb:   # nothing\nc: "x # not a comment"\nd: \'y: z\'\ne: ""\n',
    'vips:\n- address: 198.19.0.1:80\n  backends:\n  - address: 198.18.0.2\n    port: 8080\n- address: "[2001:db8::1]:80"\n  backends: []\n',
    'a:\n  - x\n  -\n  - - \n  - 12\nb: redis://127.0.0.1:6379/0\n',
    'list:\n  -\n    k: v\n  - # c\n    k: w\n',
    'a:\n  b:\n    c:\n      d: deep\n  e: f\n',
    '- 1\n- 2\n',
    'allowedHosts: [] # none\nvips: {}\n"198.19.0.1:80":\n  check: tcp\n\'x\': 1\n',
  ];
  const accepted = docs.filter((d) => agrees(d));
  // "- - " (a nested sequence on one line) is declined; the others are read here.
  assert.deepEqual(accepted.map((d) => docs.indexOf(d)), [0, 1, 2, 3, 5, 6, 7, 8]);
});

test('outside the subset, declined (the library reads it, or refuses it with its error)', () => {
  const outside = [
    'a: &x 1\nb: *x\n', 'a: [1, 2]\n', '{a: 1}\n', 'a: {b: 1}\n', 'a: 1.5\n', 'a: 1e3\n', 'a: .inf\n', 'a: 0x1f\n', 'a: 0o17\n',
    'a: 1\na: 2\n', 'a:\t1\n', 'a: |\n  text\n', 'a: >\n  text\n', 'a: "x\\ty"\n', "a: 'it''s'\n", '---\na: 1\n', 'a: 1\n...\n', 'a: [1]\n', 'a: { }\n', '- [x]\n', '"a\\tb": 1\n', '"a" : 1\n', '"a":1\n',
    'a: !!str 1\n', '? a\n: 1\n', 'a: b: c\n', 'a:\n    b: 1\n  c: 2\n', 'a: two words\n', 'a: "open\n', 'true: 1\n', '__proto__: 1\n',
    '  a: 1\n', 'a:b\n', 'a: -\n', 'a: 1\r\nb: 2\r\n', '\ufeffa: 1\n', 'a: x#y\n', 'just a scalar\n', '',
    'a:\n  - 1\n   - 2\n', '- a: 1\n   b: 2\n', 'a: @x\n', 'a: `x`\n', 'a: %x\n', 'a: ,\n',
  ];
  for (const t of outside) assert.equal(parseYamlSubset(t), undefined, JSON.stringify(t));
});

/** Config-shaped values: nested mappings and sequences of scalars that YAML spells in several ways. */
const scalarArb = fc.oneof(
  fc.integer({ min: -1e9, max: 1e9 }), fc.boolean(), fc.constant(null), fc.stringMatching(/^[a-z][a-z0-9.:/_-]{0,10}$/),
  fc.stringMatching(/^[0-9]{1,3}(\.[0-9]{1,3}){3}(:[0-9]{1,5})?$/),
  fc.stringMatching(/^[a-z0-9.:/#' "_-]{0,12}$/), fc.constantFrom('198.19.0.1:80', '[2001:db8::2]:80', 'yes', 'No', 'null', '1.5', '0x10', '-', '#', 'a: b', ' x', ''),
);
const keyArb = fc.stringMatching(/^[a-zA-Z_][a-zA-Z0-9_]{0,8}$/);
const valueArb: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  v: fc.oneof({ depthSize: 'small', withCrossShrink: true }, scalarArb, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(keyArb, tie('v'), { maxKeys: 4 })),
})).v;

test('property: generated documents, as the library writes them in several styles, are declined or read as the library reads them', () => {
  let accepted = 0, total = 0;
  fc.assert(fc.property(fc.dictionary(keyArb, valueArb, { minKeys: 1, maxKeys: 6 }), fc.boolean(), fc.integer({ min: 2, max: 4 }), (doc, indentSeq, indent) => {
    const text = stringify(doc, { indentSeq, indent });
    total++;
    if (agrees(text)) accepted++;
  }), { numRuns: 400, seed: 0x5ea7 });
  // Not a test that passes by declining everything.
  assert.ok(accepted > total / 5, `accepted ${accepted} of ${total}`);
});

test('property: mutated config text (characters dropped, doubled or replaced, lines moved) is never read differently from the library', () => {
  const base = stringify({
    vips: [{ address: '198.19.0.1:80', backends: [{ address: '198.18.0.2', weight: 3 }, { address: '198.18.0.3' }] }, { address: '198.19.0.2:443', policy: 'maglev', backends: [] }],
    tables: { maxFlows: 4096 }, admin: { enabled: true, port: 9740, token: 'tok-en' }, health: { vips: { x: { enabled: false } } },
  }, { indentSeq: false });
  let accepted = 0;
  fc.assert(fc.property(fc.array(fc.tuple(fc.nat(), fc.constantFrom('drop', 'double', 'space', 'dash', 'colon', 'hash', 'quote', 'swap')), { minLength: 1, maxLength: 2 }), (edits) => {
    let t = base;
    for (const [n, op] of edits) {
      const i = n % t.length;
      if (op === 'drop') t = t.slice(0, i) + t.slice(i + 1);
      else if (op === 'double') t = t.slice(0, i) + t[i] + t.slice(i);
      else if (op === 'swap') { const ls = t.split('\n'); const a = n % ls.length, b = (n >> 3) % ls.length; [ls[a], ls[b]] = [ls[b], ls[a]]; t = ls.join('\n'); }
      else t = t.slice(0, i) + { space: ' ', dash: '- ', colon: ':', hash: ' #', quote: '"' }[op] + t.slice(i);
    }
    if (agrees(t)) accepted++;
  }), { numRuns: 1500, seed: 0xc0f1 });
  assert.ok(accepted > 100, `accepted ${accepted} mutated texts`);
});
