// The route planner (no root needed): which `ip -batch` lines a change of the address set runs, byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseBatchErrors, planRoutes, routeItems, RoutesError, type RouteItem, type RouteSet } from '../src/dataplane/routes.js';

const OPTS = { tunName: 'mplb0' };
const EMPTY: RouteSet = { vips: [], backends: [] };
const adds = (items: RouteItem[]) => items.map((i) => `-${i.family} ${i.add}`);
const dels = (items: RouteItem[]) => items.map((i) => `-${i.family} ${i.del}`);

test('a first install: guards, rules, the table route, then the VIP routes', () => {
  const p = planRoutes(EMPTY, { vips: ['198.19.0.10'], backends: ['198.18.11.2', '198.18.12.2'] }, OPTS);
  assert.deepEqual(adds(p.add), [
    '-4 route add blackhole default table 2710 metric 4096',
    '-4 rule add priority 10000 iif mplb0 lookup main',
    '-4 route add blackhole 198.19.0.10/32 metric 4096',
    '-4 rule add priority 10001 from 198.18.11.2/32 lookup 2710',
    '-4 rule add priority 10001 from 198.18.12.2/32 lookup 2710',
    '-4 route add default dev mplb0 table 2710',
    '-4 route add 198.19.0.10/32 dev mplb0',
  ]);
  assert.deepEqual(p.remove, []);
  assert.deepEqual(p.add.map((i) => i.guard), [true, true, true, true, true, false, false]);
});

test('adding a VIP touches only its own routes and the rules of backends that are new', () => {
  const before = { vips: ['198.19.0.10'], backends: ['198.18.11.2', '198.18.12.2'] };
  const after = { vips: ['198.19.0.10', '198.19.0.30'], backends: ['198.18.11.2', '198.18.12.2', '198.18.60.1'] };
  const p = planRoutes(before, after, OPTS);
  assert.deepEqual(adds(p.add), [
    '-4 route add blackhole 198.19.0.30/32 metric 4096',
    '-4 rule add priority 10001 from 198.18.60.1/32 lookup 2710',
    '-4 route add 198.19.0.30/32 dev mplb0',
  ]);
  assert.deepEqual(p.remove, []);
  // And back: the TUN route goes first, the guard last; the shared backend's rule stays.
  const back = planRoutes(after, before, OPTS);
  assert.deepEqual(back.add, []);
  assert.deepEqual(dels(back.remove), [
    '-4 route del 198.19.0.30/32 dev mplb0',
    '-4 rule del priority 10001 from 198.18.60.1/32 lookup 2710',
    '-4 route del blackhole 198.19.0.30/32 metric 4096',
  ]);
});

test('the same address set (in another order, with duplicates) plans nothing', () => {
  const p = planRoutes({ vips: ['198.19.0.10', '198.19.0.11'], backends: ['198.18.11.2'] }, { vips: ['198.19.0.11', '198.19.0.10', '198.19.0.11'], backends: ['198.18.11.2', '198.18.11.2'] }, OPTS);
  assert.deepEqual(p, { add: [], remove: [] });
});

test('IPv6: the family\'s table route, guard and rule come with its first address and go with its last', () => {
  const v4 = { vips: ['198.19.0.10'], backends: ['198.18.11.2'] };
  const both = { vips: ['198.19.0.10', '2001:db8:100::30'], backends: ['198.18.11.2', '2001:db8:60::1'] };
  const p = planRoutes(v4, both, OPTS);
  assert.deepEqual(adds(p.add), [
    '-6 route add blackhole default table 2710 metric 4096',
    '-6 rule add priority 10000 iif mplb0 lookup main',
    '-6 route add blackhole 2001:db8:100::30/128 metric 4096',
    '-6 rule add priority 10001 from 2001:db8:60::1/128 lookup 2710',
    '-6 route add default dev mplb0 table 2710',
    '-6 route add 2001:db8:100::30/128 dev mplb0',
  ]);
  assert.deepEqual(dels(planRoutes(both, v4, OPTS).remove), [
    '-6 route del 2001:db8:100::30/128 dev mplb0',
    '-6 route del default dev mplb0 table 2710',
    '-6 rule del priority 10001 from 2001:db8:60::1/128 lookup 2710',
    '-6 route del blackhole 2001:db8:100::30/128 metric 4096',
    '-6 rule del priority 10000 iif mplb0 lookup main',
    '-6 route del blackhole default table 2710 metric 4096',
  ]);
});

test('table, rule priority and backend interfaces of the instance appear in every line', () => {
  const p = planRoutes(EMPTY, { vips: ['198.19.0.20'], backends: ['198.18.13.2'] }, { tunName: 'mplb1', table: 2711, rulePriority: 10100, backendInterfaces: ['lbs3', 'lbs4'] });
  assert.deepEqual(adds(p.add), [
    '-4 route add blackhole default table 2711 metric 4096',
    '-4 rule add priority 10100 iif mplb1 lookup main',
    '-4 route add blackhole 198.19.0.20/32 metric 4096',
    '-4 rule add priority 10101 from 198.18.13.2/32 iif lbs3 lookup 2711',
    '-4 rule add priority 10101 from 198.18.13.2/32 iif lbs4 lookup 2711',
    '-4 route add default dev mplb1 table 2711',
    '-4 route add 198.19.0.20/32 dev mplb1',
  ]);
});

test('bad addresses, tables, priorities and names are refused before any line is planned', () => {
  const code = (c: string) => (e: unknown) => e instanceof RoutesError && e.code === c;
  assert.throws(() => routeItems({ vips: ['198.19.0.300'], backends: [] }, OPTS), code('ROUTES_BAD_ADDRESS'));
  assert.throws(() => routeItems(EMPTY, { tunName: 'mplb0', table: 254 }), /253-255/);
  assert.throws(() => routeItems(EMPTY, { tunName: 'mplb0', rulePriority: 32765 }), /1-32764/);
  assert.throws(() => routeItems(EMPTY, { tunName: 'mplb0 lookup main' }), /not an interface name/);
});

test('applying plan(a, b) to the routes of a gives exactly the routes of b', () => {
  const addr = fc.oneof(fc.constantFrom('198.19.0.1', '198.19.0.2', '198.19.0.3', '198.18.11.2', '198.18.12.2'), fc.constantFrom('2001:db8::1', '2001:db8::2'));
  const set = fc.record({ vips: fc.array(addr, { maxLength: 4 }), backends: fc.array(addr, { maxLength: 4 }) });
  fc.assert(fc.property(set, set, (a, b) => {
    const key = (i: RouteItem) => `${i.family} ${i.add}`;
    const state = new Set(routeItems(a, OPTS).map(key));
    const p = planRoutes(a, b, OPTS);
    for (const i of p.add) { assert.ok(!state.has(key(i)), `adds what is there: ${key(i)}`); state.add(key(i)); }
    for (const i of p.remove) { assert.ok(state.delete(key(i)), `removes what is not there: ${key(i)}`); }
    assert.deepEqual([...state].sort(), routeItems(b, OPTS).map(key).sort());
    // Nothing that both sets need is touched.
    const common = routeItems(a, OPTS).map(key).filter((k) => routeItems(b, OPTS).some((i) => key(i) === k));
    for (const k of common) assert.ok(!p.add.some((i) => key(i) === k) && !p.remove.some((i) => key(i) === k));
  }), { numRuns: 300 });
});

test('ip -force -batch errors are matched to their lines', () => {
  const f = parseBatchErrors('RTNETLINK answers: File exists\nCommand failed -:2\nCannot find device "x"\nCommand failed -:5\n');
  assert.deepEqual([...f], [[1, 'RTNETLINK answers: File exists'], [4, 'Cannot find device "x"']]);
  assert.equal(parseBatchErrors('').size, 0);
});
