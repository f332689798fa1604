// The balancer suites (balancer.test.ts, IPv4, and balancer-v6.test.ts) again, on the tc-bpf data path: the same
// decisions on both paths (issue 11), and the kernel's IPv6 rewrite under real traffic.
// mplb reads MPLB_FASTPATH for a config that sets no datapath; the suite's balancer processes inherit it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { defaultObjectPath } from '../../src/fastpath/loader.js';

const CI = process.env.CI === 'true';
if (!fs.existsSync(defaultObjectPath())) {
  test('balancer suite on tc-bpf: prerequisites', (t) => {
    const why = `${defaultObjectPath()} is missing (npm run build needs clang and libbpf-dev)`;
    if (CI) assert.fail(`the tc-bpf balancer suite cannot run here: ${why}`);
    t.skip(why);
  });
} else {
  process.env.MPLB_FASTPATH = 'tc-bpf';
  await import('./balancer.test.js');
  await import('./balancer-v6.test.js');
}
