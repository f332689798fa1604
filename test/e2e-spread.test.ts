// The e2e batches' spread check (test/e2e/balancer-harness.ts): sound for hashed connections, never a coin toss.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spreadProblem } from './e2e/balancer-harness.js';

test('12 connections over 3 servers: one server left empty is chance (2.3%), all on one server is not', () => {
  // CI saw [3,0,9] on a run whose every connection was steered right.
  assert.equal(spreadProblem([3, 0, 9]), undefined);
  assert.match(spreadProblem([12, 0, 0]) ?? '', /1 of 3 servers got any, expected at least 2 for 12/);
});

test('50 connections over 3 servers: every server must get some (an empty one by chance: 5e-9)', () => {
  assert.equal(spreadProblem([17, 17, 16]), undefined);
  assert.match(spreadProblem([25, 0, 25]) ?? '', /2 of 3 servers got any, expected at least 3 for 50/);
});

test('the threshold: the most servers m with C(k, m - 1) * ((m - 1) / k)^n below 1e-5', () => {
  // 2 servers: both from 18 connections (2 * 2^-17 = 1.5e-5 at 17).
  assert.equal(spreadProblem([17, 0]), undefined);
  assert.ok(spreadProblem([18, 0]) !== undefined);
  // 3 servers: all three from 32 (3 * (2/3)^31 = 1.05e-5), two of them from 12 (3 * 3^-11 = 1.7e-5 at 11).
  assert.equal(spreadProblem([0, 15, 16]), undefined);
  assert.ok(spreadProblem([0, 16, 16]) !== undefined);
  assert.equal(spreadProblem([11, 0, 0]), undefined);
  assert.ok(spreadProblem([0, 12, 0]) !== undefined);
});
