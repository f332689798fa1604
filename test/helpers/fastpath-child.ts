// Runs the fast path program on frames inside the caller's network namespace (started with ip netns exec by
// test/fastpath-redirect.test.ts): loads build/fastpath.bpf.o, inserts the given map entries, runs each frame with
// BPF_PROG_TEST_RUN as if received on the given interface, and prints one JSON line of results. The job comes in
// MPLB_FP_CHILD_JOB: without it (the test runner runs every file under dist/test) the file does nothing.
import { loadFastpath } from '../../src/fastpath/loader.js';
import { libbpf, testRun } from '../../src/fastpath/libbpf.js';

interface Job { entries: Array<{ key: string; value: string }>; frames: Array<{ hex: string; ifindex: number }> }

const jobText = process.env.MPLB_FP_CHILD_JOB;
if (jobText !== undefined) run(JSON.parse(jobText) as Job);

function run(job: Job): void {
  const fp = loadFastpath({ maxEntries: 64, priority: 1 });
  try {
    const l = libbpf();
    for (const e of job.entries) {
      const rc = l.mapUpdate(fp.flowsFd, Buffer.from(e.key, 'hex'), Buffer.from(e.value, 'hex'), 0);
      if (rc !== 0) throw new Error(`map update failed: ${rc}`);
    }
    const results = job.frames.map((f) => {
      const { retval, out } = testRun(fp.progFd, Buffer.from(f.hex, 'hex'), { ingressIfindex: f.ifindex, ifindex: f.ifindex });
      return { retval, out: Buffer.from(out).toString('hex') };
    });
    process.stdout.write(`${JSON.stringify({ results, counters: fp.counters() })}\n`);
  } finally {
    fp.close();
  }
}
