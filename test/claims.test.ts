/**
 * The fold protocol against real memcached (claims.ts): a claim is won once,
 * a CAS takeover loses to a concurrent change, commit and abort race with
 * exactly one winner, a lease expires, and a held claim is settled as the
 * protocol says.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { Claims, type ClaimHolder } from '../lib/count/claims.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { Ring } from '../lib/count/ring.ts';
import { MemcacheConnection } from '../lib/wire/memcache.ts';
import { sleep } from '../lib/base/backoff.ts';
import { testConfig } from './support.ts';

const rings: Ring[] = [];
const conns: MemcacheConnection[] = [];
after(() => Promise.all([...rings.map((r) => r.close()), ...conns.map((c) => c.close())]));

/** A ring of its own prefix on the test memcached (one per simulated worker, sharing the prefix when asked). */
function ring(keyPrefix = testConfig().keyPrefix): Ring {
  const c = testConfig();
  const r = new Ring({ servers: c.memcachedServers, keyPrefix, sliceSeconds: 60, ringSlices: 10 });
  rings.push(r);
  return r;
}

function raw(): MemcacheConnection {
  const c = new MemcacheConnection(testConfig().memcachedServers[0]!);
  conns.push(c);
  return c;
}

test('mg returns the value and its CAS; ms with a stale CAS is refused', async () => {
  const c = raw();
  const key = `${testConfig().keyPrefix}casprobe`;
  assert.deepEqual(await c.exec([{ kind: 'mg', key }]), [null]);
  await c.exec([{ kind: 'set', key, value: 'one', ttl: 60 }]);
  const [first] = await c.exec([{ kind: 'mg', key }]);
  assert.ok(first !== null && typeof first === 'object' && 'cas' in first);
  assert.equal(first.value.toString(), 'one');
  assert.ok(first.cas > 0n);
  // A value split across reads and a binary value come back whole.
  const big = Buffer.alloc(300_000, 0x0d);
  await c.exec([{ kind: 'set', key, value: big, ttl: 60 }]);
  const [second] = await c.exec([{ kind: 'mg', key }, { kind: 'get', key }]);
  assert.ok(second !== null && typeof second === 'object' && 'cas' in second);
  assert.ok(second.value.equals(big));
  assert.notEqual(second.cas, first.cas);
  assert.deepEqual(await c.exec([{ kind: 'ms', key, value: 'stale', ttl: 60, cas: first.cas }]), [false]);
  assert.deepEqual(await c.exec([{ kind: 'ms', key, value: 'fresh', ttl: 60, cas: second.cas }]), [true]);
  assert.deepEqual(await c.exec([{ kind: 'ms', key: `${key}:none`, value: 'x', ttl: 60, cas: second.cas }]), [false]);
  const [after] = await c.exec([{ kind: 'get', key }]);
  assert.equal(String(after), 'fresh');
});

test('a claim is won once: two workers claiming the same jobs at once: every job held by exactly one fold', async () => {
  const prefix = testConfig().keyPrefix;
  const a = new Claims(ring(prefix));
  const b = new Claims(ring(prefix));
  const uniques = Array.from({ length: 200 }, (_, i) => `job-${i}`);
  const fa = a.newFold();
  const fb = b.newFold();
  // Opposite orders, at once: each job goes to whichever add memcached applied first.
  const [ra, rb] = await Promise.all([a.claim(uniques, fa), b.claim([...uniques].reverse(), fb)]);
  let wonA = 0;
  for (const u of uniques) {
    const ha = ra.get(u);
    const hb = rb.get(u);
    assert.ok(ha !== undefined && hb !== undefined, `job ${u} answered to both`);
    assert.ok((ha === null) !== (hb === null), `job ${u} won by exactly one fold`);
    if (ha === null) {
      wonA++;
      assert.equal(hb!.fold, fa);
      assert.equal(hb!.lease, a.lease);
    } else {
      assert.equal(ha.fold, fb);
      assert.equal(ha.lease, b.lease);
    }
  }
  // A repeated claim of one's own (a retry whose reply was lost) still holds; a third fold finds them held.
  const again = await a.claim(uniques, fa);
  assert.equal([...again.values()].filter((h) => h === null).length, wonA);
  const third = await a.claim(uniques, a.newFold());
  assert.equal([...third.values()].filter((h) => h === null).length, 0);
  // Empty uniques cannot be claimed; unsafe ones are hashed into a key.
  const odd = await a.claim(['', 'with space\r\n', 'with space\r\n'], a.newFold());
  assert.deepEqual([...odd.keys()], ['with space\r\n']);
});

test('takeover by CAS loses to a concurrent change', async () => {
  const prefix = testConfig().keyPrefix;
  const a = new Claims(ring(prefix));
  const b = new Claims(ring(prefix));
  const c = new Claims(ring(prefix));
  const dead = a.newFold();
  await a.claim(['u1'], dead);
  const holderB = (await b.claim(['u1'], b.newFold())).get('u1')!;
  const holderC = (await c.claim(['u1'], c.newFold())).get('u1')!;
  assert.equal(holderB.fold, dead);
  assert.equal(holderC.cas, holderB.cas);
  const fb = b.newFold();
  const fc = c.newFold();
  // Both saw the same holder; both try at once: exactly one wins.
  const [okB, okC] = await Promise.all([b.takeOver('u1', holderB, fb), c.takeOver('u1', holderC, fc)]);
  assert.ok(okB !== okC, `exactly one takeover wins (b ${okB}, c ${okC})`);
  const winner = okB ? fb : fc;
  const now = (await a.claim(['u1'], a.newFold())).get('u1')!;
  assert.equal(now.fold, winner);
  // A takeover with the winner's own CAS after another change loses too.
  const stale: ClaimHolder = now;
  assert.equal(await a.takeOver('u1', stale, a.newFold()), true);
  assert.equal(await b.takeOver('u1', stale, b.newFold()), false);
});

test('commit and abort race: exactly one wins, and both sides then read the same decision', async () => {
  const prefix = testConfig().keyPrefix;
  const worker = new Claims(ring(prefix));
  const flusher = new Claims(ring(prefix));
  let commits = 0;
  for (let i = 0; i < 50; i++) {
    const f = worker.newFold();
    const totals = new Map([[100 as SliceId, 5 + i], [101 as SliceId, 7]]);
    const [committed, stands] = await Promise.all([worker.commit(f, totals), flusher.abort(f)]);
    const read = await flusher.decision(f);
    if (committed) {
      commits++;
      assert.equal(stands.state, 'committed');
      assert.deepEqual(read, { state: 'committed', totals });
    } else {
      assert.equal(stands.state, 'aborted');
      assert.deepEqual(read, { state: 'aborted' });
    }
    // Retrying either side changes nothing.
    assert.equal(await worker.commit(f, totals), committed);
    assert.equal((await flusher.abort(f)).state, committed ? 'committed' : 'aborted');
  }
  assert.deepEqual(await worker.decision(worker.newFold()), { state: 'open' });
});

test('a lease lives leaseSeconds after its last renewal', async () => {
  const prefix = testConfig().keyPrefix;
  const w = new Claims(ring(prefix), { leaseSeconds: 1 });
  const other = new Claims(ring(prefix));
  assert.equal(await other.leaseAlive(w.lease), false);
  await w.renewLease();
  assert.equal(await other.leaseAlive(w.lease), true);
  // memcached's clock ticks in whole seconds: a 1 s TTL is gone within 2.1 s.
  await new Promise((r) => setTimeout(r, 2100));
  assert.equal(await other.leaseAlive(w.lease), false);
});

test('the fold list: appended by every fold, de-duplicated, read per slice', async () => {
  const prefix = testConfig().keyPrefix;
  const a = new Claims(ring(prefix));
  const b = new Claims(ring(prefix));
  const f1 = a.newFold();
  const f2 = b.newFold();
  assert.deepEqual(await a.foldsOf(7 as SliceId), []);
  await Promise.all([
    a.announce(f1, new Map([[7 as SliceId, 10], [8 as SliceId, 3]])),
    b.announce(f2, new Map([[7 as SliceId, 4]])),
  ]);
  await a.announce(f1, new Map([[7 as SliceId, 10]])); // a retry
  const list = await b.foldsOf(7 as SliceId);
  assert.deepEqual(new Map(list.map((e) => [e.fold, e.events])), new Map([[f1, 10], [f2, 4]]));
  assert.deepEqual(await b.foldsOf(8 as SliceId), [{ fold: f1, events: 3 }]);
});

test('claimFold: committed holder → duplicate; aborted → taken over; open with a dead lease → aborted and taken; live lease → waited for', async () => {
  const prefix = testConfig().keyPrefix;
  const live = new Claims(ring(prefix));
  const dead = new Claims(ring(prefix), { leaseSeconds: 1 });
  const me = new Claims(ring(prefix));
  const committed = live.newFold();
  const aborted = live.newFold();
  const orphan = dead.newFold();
  const slow = live.newFold();
  await live.claim(['c'], committed);
  await live.commit(committed, new Map());
  await live.claim(['a'], aborted);
  await live.abort(aborted);
  await dead.claim(['o'], orphan);
  await sleep(2100); // the dead worker's lease runs out
  await live.claim(['s'], slow);
  // An older version's mark.
  await raw().exec([{ kind: 'set', key: `${prefix}j:old`, value: '1', ttl: 60 }]);
  // The slow fold commits while `me` waits on it (or gives way to it, and tries again).
  setTimeout(() => void live.commit(slow, new Map()), 300);
  const started = Date.now();
  const got = await me.claimFold(['c', 'a', 'o', 'old', 'free', 's'], { waitMs: 5000 });
  assert.ok(Date.now() - started >= 250, 'waited for the live holder');
  assert.deepEqual(got.duplicates.sort(), ['c', 'old', 's']);
  assert.deepEqual(got.unresolved, []);
  assert.deepEqual(await me.decision(orphan), { state: 'aborted' });
  // The dead worker waking up finds its fold aborted: its commit is refused.
  assert.equal(await dead.commit(orphan, new Map()), false);
  // Every other claim is the fold's now.
  const check = await live.claim(['a', 'o', 'free'], live.newFold());
  for (const h of check.values()) assert.equal(h?.fold, got.fold);
  // A live holder that never decides is aborted after the wait.
  const stuck = live.newFold();
  await live.claim(['z'], stuck);
  const late = await me.claimFold(['z'], { waitMs: 300 });
  assert.deepEqual(late.duplicates, []);
  assert.equal(await live.commit(stuck, new Map()), false);
  assert.equal((await live.claim(['z'], live.newFold())).get('z')?.fold, late.fold);
  // A fold of this worker still being stored: the copy is a duplicate, nothing waited for.
  const mine = me.newFold();
  await me.claim(['m'], mine);
  assert.deepEqual((await me.claimFold(['m'], { inFlight: new Set([mine]) })).duplicates, ['m']);
  // Stopped while waiting: handed back, and the fold is aborted.
  const held = live.newFold();
  await live.claim(['h'], held);
  const stopped = await me.claimFold(['h', 'h2'], { stopped: () => true, waitMs: 5000 });
  assert.ok(stopped.unresolved.includes('h'), `handed back: ${stopped.unresolved}`);
  assert.deepEqual(await me.decision(stopped.fold), { state: 'aborted' });
});

test('wait-die: two folds that each won some of the other\'s jobs never wait for each other', async () => {
  const prefix = testConfig().keyPrefix;
  const a = new Claims(ring(prefix));
  const b = new Claims(ring(prefix));
  const uniques = Array.from({ length: 300 }, (_, i) => `wd-${i}`);
  const started = Date.now();
  const runs = [a.claimFold(uniques, { waitMs: 20_000 }), b.claimFold([...uniques].reverse(), { waitMs: 20_000 })];
  const [i, first] = await Promise.race(runs.map((p, k) => p.then((r) => [k, r] as const)));
  assert.deepEqual(first.duplicates, []);
  assert.ok(Date.now() - started < 5000, `the first fold got every claim in ${Date.now() - started} ms`);
  assert.equal(await [a, b][i]!.commit(first.fold, new Map()), true);
  const second = await runs[1 - i]!;
  assert.deepEqual(second.duplicates.sort(), [...uniques].sort(), 'the other finds every job stored');
  assert.ok(Date.now() - started < 10_000);
});
