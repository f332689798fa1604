// OpenIndex: linear probing with backward-shift deletion keeps every chain findable (random churn, wrap-around).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OpenIndex } from '../src/engine/open-addressing.js';

test('random inserts and removes in a small, crowded index: every live entry stays findable, removed ones are gone', () => {
  // Entry e's hash: a few homes only, so chains are long, overlap and wrap around the end of the slots.
  const hashOf = (e: number) => (e * 7) % 13 + 56;
  const index = new OpenIndex(64, hashOf);
  const live = new Set<number>();
  let x = 12345;
  const next = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return x >>> 0; };
  for (let step = 0; step < 20_000; step++) {
    const e = 1 + (next() % 100);
    if (live.has(e)) {
      assert.ok(index.remove(hashOf(e), e));
      live.delete(e);
    } else if (live.size < 48) {
      index.insert(hashOf(e), e);
      live.add(e);
    }
    if (step % 97 === 0) {
      for (let k = 1; k <= 100; k++) {
        const s = index.findSlot(hashOf(k), (f) => f === k);
        assert.equal(s >= 0, live.has(k), `entry ${k} at step ${step}`);
      }
      assert.equal(index.slots.reduce((n, v) => n + (v !== 0 ? 1 : 0), 0), live.size);
    }
  }
  assert.equal(index.remove(hashOf(1000), 1000), false, 'an absent entry');
});
