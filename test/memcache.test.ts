/** lib/wire/memcache.ts against a real memcached started by this file on a free port. */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import {
  Arith,
  MemcacheConnection,
  MemcacheError,
  MemcacheUnavailableError,
  NOT_A_NUMBER,
  type MemcacheOp,
} from '../lib/wire/memcache.ts';

const HOST = '127.0.0.1';

async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, HOST);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

/** Spawns memcached and waits until it accepts connections. */
async function startMemcached(port: number): Promise<ChildProcess> {
  const child = spawn('/usr/bin/memcached', ['-l', HOST, '-p', String(port), '-U', '0', '-m', '64', '-u', 'root'], {
    stdio: 'ignore',
  });
  const deadline = Date.now() + 5000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`memcached exited with ${child.exitCode}`);
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, HOST);
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (up) return child;
    if (Date.now() > deadline) throw new Error(`memcached did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function stopMemcached(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGKILL');
  await once(child, 'exit');
}

// Every assert.ok here carries a message: without one, Node re-reads the source
// at tsx's transpiled position to quote the expression, which quotes the wrong
// line and was once seen spinning forever.
const bytesOf = (n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => i % 256));

describe('MemcacheConnection', () => {
  let port: number;
  let server: ChildProcess;
  let mc: MemcacheConnection;

  before(async () => {
    port = await freePort();
    server = await startMemcached(port);
    mc = new MemcacheConnection({ host: HOST, port });
  });

  after(async () => {
    await mc.close();
    await stopMemcached(server);
  });

  test('incr NOT_FOUND, then add, then incr', async () => {
    await mc.flushAll();
    const [missing] = await mc.exec([{ kind: 'incr', key: 'c:1', amount: 5 }]);
    assert.equal(missing, null);
    const replies = await mc.exec([
      { kind: 'add', key: 'c:1', value: '0', ttl: 60 },
      { kind: 'incr', key: 'c:1', amount: 5 },
      { kind: 'incr', key: 'c:1', amount: 2n },
      { kind: 'get', key: 'c:1' },
    ]);
    assert.deepEqual(replies.slice(0, 3), [true, 5n, 7n]);
    assert.equal(String(replies[3]), '7');
  });

  test('64-bit counters are exact past 2^32 and 2^53, and wrap at 2^64 as memcached does', async () => {
    const r = await mc.exec([
      { kind: 'set', key: 'big', value: String(2 ** 32 - 1), ttl: 0 },
      { kind: 'incr', key: 'big', amount: 1 },
      { kind: 'incr', key: 'big', amount: 2n ** 53n },
      { kind: 'incr', key: 'big', amount: 1 },
      { kind: 'set', key: 'max', value: String(2n ** 64n - 2n), ttl: 0 },
      { kind: 'incr', key: 'max', amount: 1 },
      { kind: 'incr', key: 'max', amount: 1 },
    ]);
    assert.deepEqual(r, [true, 2n ** 32n, 2n ** 32n + 2n ** 53n, 2n ** 32n + 2n ** 53n + 1n, true, 2n ** 64n - 1n, 0n]);
    await assert.rejects(mc.exec([{ kind: 'incr', key: 'big', amount: 2n ** 64n }]), /not an unsigned 64-bit integer/);
    await assert.rejects(mc.exec([{ kind: 'incr', key: 'big', amount: -1 }]), MemcacheError);
    await assert.rejects(mc.exec([{ kind: 'incr', key: 'big', amount: 2 ** 53 }]), MemcacheError);
  });

  test('add is NOT_STORED on an existing key; set always stores; delete says whether it found one', async () => {
    const r = await mc.exec([
      { kind: 'delete', key: 'a' },
      { kind: 'add', key: 'a', value: 'one', ttl: 0 },
      { kind: 'add', key: 'a', value: 'two', ttl: 0 },
      { kind: 'get', key: 'a' },
      { kind: 'set', key: 'a', value: 'three', ttl: 0 },
      { kind: 'get', key: 'a' },
      { kind: 'delete', key: 'a' },
      { kind: 'delete', key: 'a' },
      { kind: 'get', key: 'a' },
    ]);
    assert.deepEqual(r, [false, true, false, Buffer.from('one'), true, Buffer.from('three'), true, false, null]);
  });

  test('append is false on a missing key and appends to an existing one', async () => {
    const r = await mc.exec([
      { kind: 'append', key: 'log:missing', value: 'x' },
      { kind: 'set', key: 'log', value: 'ab', ttl: 0 },
      { kind: 'append', key: 'log', value: Buffer.from('c\r\n') },
      { kind: 'append', key: 'log', value: 'é' },
      { kind: 'get', key: 'log' },
      { kind: 'get', key: 'log:missing' },
    ]);
    assert.deepEqual(r, [false, true, true, true, Buffer.from('abc\r\né'), null]);
  });

  test('binary values, including CRLF and "END" inside them, round-trip through get and getMulti', async () => {
    const tricky = Buffer.concat([Buffer.from('\r\nEND\r\nVALUE x 0 3\r\n'), bytesOf(256), Buffer.from('\r\n')]);
    const large = bytesOf(700_000); // many TCP chunks: the VALUE block splits at arbitrary places
    const empty = Buffer.alloc(0);
    const set = await mc.exec([
      { kind: 'set', key: 'bin:tricky', value: tricky, ttl: 0 },
      { kind: 'set', key: 'bin:large', value: large, ttl: 0 },
      { kind: 'set', key: 'bin:empty', value: empty, ttl: 0 },
      { kind: 'set', key: 'bin:utf8', value: 'żółw ✓', ttl: 0 },
    ]);
    assert.deepEqual(set, [true, true, true, true]);
    const got = await mc.exec([
      { kind: 'get', key: 'bin:tricky' },
      { kind: 'get', key: 'bin:large' },
      { kind: 'get', key: 'bin:empty' },
      { kind: 'get', key: 'bin:utf8' },
    ]);
    assert.deepEqual(got, [tricky, large, empty, Buffer.from('żółw ✓')]);
    const multi = await mc.getMulti(['bin:large', 'bin:tricky', 'bin:none', 'bin:empty']);
    assert.deepEqual([...multi.keys()].sort(), ['bin:empty', 'bin:large', 'bin:tricky']);
    assert.deepEqual(multi.get('bin:large'), large);
    assert.deepEqual(multi.get('bin:tricky'), tricky);
    assert.equal(multi.get('bin:empty')!.length, 0);
  });

  test('replies cut into 1-3 byte TCP pieces parse the same', async () => {
    // A relay that dribbles memcached's replies out a few bytes at a time, so
    // lines, VALUE headers, values and their CRLFs all split at every offset.
    const relay = net.createServer((client) => {
      client.setNoDelay(true);
      const upstream = net.connect(port, HOST);
      client.pipe(upstream);
      upstream.on('data', (data: Buffer) => {
        upstream.pause();
        void (async () => {
          for (let i = 0, n = 1; i < data.length; i += n, n = (n % 3) + 1) {
            client.write(data.subarray(i, i + n));
            await new Promise((r) => setImmediate(r));
          }
          upstream.resume();
        })();
      });
      upstream.on('end', () => client.end());
      client.on('close', () => upstream.destroy());
      client.on('error', () => {});
      upstream.on('error', () => {});
    });
    relay.listen(0, HOST);
    await once(relay, 'listening');
    const slow = new MemcacheConnection({ host: HOST, port: (relay.address() as net.AddressInfo).port });
    try {
      const value = Buffer.concat([Buffer.from('\r\nEND\r\n'), bytesOf(300), Buffer.from('\r')]);
      const keys = Array.from({ length: 30 }, (_, i) => `dribble:${i}`);
      await slow.exec(keys.map((key, i) => ({ kind: 'set', key, value: i === 7 ? value : key, ttl: 0 })));
      const [got, multi, incr, stats] = await Promise.all([
        slow.exec([{ kind: 'get', key: 'dribble:7' }, { kind: 'get', key: 'dribble:none' }, { kind: 'get', key: 'dribble:8' }]),
        slow.getMulti([...keys, 'dribble:none']),
        slow.exec([{ kind: 'set', key: 'dribble:n', value: String(2n ** 60n), ttl: 0 }, { kind: 'incr', key: 'dribble:n', amount: 2n ** 62n }]),
        slow.stats(),
      ]);
      const arith = await slow.arithMany(
        ['dribble:n', 'dribble:new', 'dribble:none', 'dribble:quiet', 'dribble:new'],
        [1, 2n ** 62n, 1, 3, 5],
        [Arith.UPSERT_READ, Arith.UPSERT_READ, Arith.INCR, Arith.UPSERT, Arith.INCR],
        60,
      );
      // A piece sends its incrs before its upserts (so that a refusal, which names no key, can be placed):
      // the incr of dribble:new runs before the upsert that creates it, finds nothing, and says so.
      assert.deepEqual([...arith], [1, 3, 0, 1, 0]);
      assert.equal(String((await slow.getMulti(['dribble:new'])).get('dribble:new')), String(2n ** 62n));
      assert.deepEqual(got, [value, null, Buffer.from('dribble:8')]);
      assert.equal(multi.size, 30);
      assert.deepEqual(multi.get('dribble:7'), value);
      assert.equal(multi.get('dribble:29')!.toString(), 'dribble:29');
      assert.deepEqual(incr, [true, 2n ** 60n + 2n ** 62n]);
      assert.match(stats.version ?? '', /^\d+\.\d+/);
    } finally {
      await slow.close();
      relay.close();
    }
  });

  test('getMulti of 1,000 keys, some missing, pipelined with other requests', async () => {
    await mc.flushAll();
    // Long keys so lines are split by bytes as well as by count.
    const keys = Array.from({ length: 1000 }, (_, i) => `multi:${'k'.repeat(i % 7 === 0 ? 200 : 10)}:${i}`);
    const present = keys.filter((_, i) => i % 3 !== 0);
    await mc.exec(present.map((key) => ({ kind: 'set', key, value: `v${key}`, ttl: 0 })));
    const [found, incrs, again, stats] = await Promise.all([
      mc.getMulti([...keys, keys[1]!]),
      mc.exec([{ kind: 'add', key: 'multi:n', value: '10', ttl: 0 }, { kind: 'incr', key: 'multi:n', amount: 1 }]),
      mc.getMulti(keys.slice(0, 10)),
      mc.stats(),
    ]);
    assert.equal(found.size, present.length);
    for (const key of present) assert.equal(found.get(key)?.toString(), `v${key}`);
    assert.deepEqual(incrs, [true, 11n]);
    assert.deepEqual([...again.keys()], present.filter((k) => keys.indexOf(k) < 10));
    assert.equal(stats.pid, String(server.pid));
    assert.deepEqual(await mc.getMulti([]), new Map());
  });

  test('getCounters: values in the order asked, missing keys undefined, padding dropped, pipelined with other requests', async () => {
    await mc.flushAll();
    const keys = Array.from({ length: 1000 }, (_, i) => `ctr:${'k'.repeat(i % 7 === 0 ? 200 : 10)}:${i}`);
    const present = keys.filter((_, i) => i % 3 !== 0);
    await mc.exec(present.map((key, i) => ({ kind: 'set', key, value: String(i * 1000), ttl: 0 })));
    // A counter that shrank in place: memcached keeps "9  " (padded) after 100 − 91.
    await mc.exec([{ kind: 'set', key: keys[1]!, value: '100', ttl: 0 }, { kind: 'decr', key: keys[1]!, amount: 91 }]);
    const [values, incr] = await Promise.all([mc.getCounters(keys, { keysValid: true }), mc.exec([{ kind: 'incr', key: keys[2]!, amount: 1 }])]);
    assert.equal(values.length, keys.length);
    keys.forEach((key, i) => {
      const expected = i % 3 === 0 ? undefined : i === 1 ? '9' : String(present.indexOf(key) * 1000);
      assert.equal(values[i], expected, key);
    });
    assert.deepEqual(incr, [BigInt(present.indexOf(keys[2]!) * 1000 + 1)]);
    assert.deepEqual(await mc.getCounters([]), []);
    await assert.rejects(mc.getCounters(['ctr:é']), /not ASCII/);
  });

  test('a batch of 10,000 incrs gives exact totals', async () => {
    const keys = Array.from({ length: 37 }, (_, i) => `total:${i}`);
    await mc.exec(keys.map((key) => ({ kind: 'set', key, value: '0', ttl: 0 })));
    const ops: MemcacheOp[] = Array.from({ length: 10_000 }, (_, i) => ({ kind: 'incr', key: keys[i % keys.length]!, amount: i }));
    const expected = new Map<string, bigint>();
    const replies = await mc.exec(ops);
    assert.equal(replies.length, 10_000);
    ops.forEach((op, i) => {
      if (op.kind !== 'incr') return;
      const sum = (expected.get(op.key) ?? 0n) + BigInt(op.amount);
      expected.set(op.key, sum);
      assert.equal(replies[i], sum); // each reply is its own op's, in order
    });
    const final = await mc.getMulti(keys);
    for (const key of keys) assert.equal(BigInt(final.get(key)!.toString().trim()), expected.get(key));
  });

  test('arithMany: incr and upserts mixed, one flag per key, in order, pipelined with other requests', async () => {
    await mc.flushAll();
    const keys = Array.from({ length: 9000 }, (_, i) => `many:${i}`);
    const modes = keys.map((_, i) => [Arith.INCR, Arith.UPSERT, Arith.UPSERT_READ][i % 3]!);
    // Every other key exists; amounts are never 0, some bigints.
    await mc.exec(keys.filter((_, i) => i % 2 === 0).map((key) => ({ kind: 'set', key, value: '10', ttl: 0 })));
    const amounts = keys.map((_, i) => (i % 5 === 0 ? BigInt(i + 1) : i + 1));
    const [flags, got] = await Promise.all([mc.arithMany(keys, amounts, modes, 60), mc.getMulti(['many:0', 'many:1'])]);
    assert.equal(String(got.get('many:0')), '11', 'the get sent after it, on the same connection, saw its increment');
    const final = await mc.getMulti(keys);
    for (let i = 0; i < keys.length; i++) {
      const exists = i % 2 === 0;
      const mode = modes[i]!;
      // INCR: 1 found / 0 not; UPSERT: always 1; UPSERT_READ: 1 incremented / 3 created.
      const flag = mode === Arith.INCR ? (exists ? 1 : 0) : mode === Arith.UPSERT ? 1 : exists ? 1 : 3;
      assert.equal(flags[i], flag, `flag of ${keys[i]} (mode ${mode})`);
      const value = exists ? String(10 + i + 1) : mode === Arith.INCR ? undefined : String(i + 1);
      assert.equal(final.get(keys[i]!)?.toString().trim(), value, `${keys[i]} after`);
    }
    assert.deepEqual([...(await mc.arithMany([], [], [], 60))], []);
  });

  test('arithMany: two connections upserting the same new keys at once make each once, and count every amount', async () => {
    await mc.flushAll();
    const other = new MemcacheConnection({ host: HOST, port });
    try {
      const keys = Array.from({ length: 20_000 }, (_, i) => `race:${i}`);
      const [a, b] = await Promise.all([
        mc.arithMany(keys, keys.map(() => 1), keys.map(() => Arith.UPSERT_READ), 60),
        other.arithMany(keys, keys.map(() => 2), keys.map(() => Arith.UPSERT_READ), 60),
      ]);
      const final = await mc.getMulti(keys);
      for (let i = 0; i < keys.length; i++) {
        assert.equal(final.get(keys[i]!)!.toString().trim(), '3', `${keys[i]}: both amounts`);
        assert.equal((a[i] === 3 ? 1 : 0) + (b[i] === 3 ? 1 : 0), 1, `${keys[i]} created exactly once (flags ${a[i]}, ${b[i]})`);
      }
    } finally {
      await other.close();
    }
  });

  test('arithMany flags a counter memcached wrapped past 2^64 − 1 (flag 2), by incr or upsert, whatever the sizes of the reply and the amount', async () => {
    const MAX = 2n ** 64n - 1n;
    // [start value, amount, flag, value after]
    const cases: [bigint, number | bigint, number, bigint][] = [
      [MAX - 1n, 1, 1, MAX], // reaches the maximum: not wrapped
      [MAX, 1, 2, 0n], // one past
      [MAX - 2n, 5, 2, 2n], // short reply, small amount
      [5n, MAX, 2, 4n], // short reply, amount 2^64 − 1
      [0n, MAX, 1, MAX],
      [2n ** 60n, 1, 1, 2n ** 60n + 1n], // long reply, small amount
      [MAX, 2n ** 62n, 2, 2n ** 62n - 1n], // long reply, bigint amount
      [1n, 2n ** 62n, 1, 2n ** 62n + 1n],
      [MAX, Number.MAX_SAFE_INTEGER, 2, 2n ** 53n - 2n], // long reply, amount a number ≥ 10^15
      [2n ** 63n, Number.MAX_SAFE_INTEGER, 1, 2n ** 63n + 2n ** 53n - 1n],
    ];
    for (const mode of [Arith.INCR, Arith.UPSERT_READ]) {
      const keys = cases.map((_, i) => `wrap:${mode}:${i}`);
      await mc.exec(cases.map(([start], i) => ({ kind: 'set', key: keys[i]!, value: String(start), ttl: 0 })));
      const flags = await mc.arithMany(keys, cases.map(([, amount]) => amount), cases.map(() => mode), 60);
      // [0, MAX]: an upsert finding 0 takes the value it reads, equal to its amount, for its own creation.
      assert.deepEqual([...flags], cases.map(([start, amount, flag]) => (mode === Arith.UPSERT_READ && start === 0n && BigInt(amount) === MAX ? 3 : flag)), `mode ${mode}`);
      const after = await mc.getMulti(keys);
      cases.forEach(([, , , value], i) => assert.equal(after.get(keys[i]!)!.toString().trim(), String(value), `${keys[i]} after`));
    }
  });

  test('arithMany checks keys, amounts and modes unless told the keys are valid; a counter that is not a number is skipped and counted, the rest stands', async () => {
    await assert.rejects(mc.arithMany(['has space'], [1], [Arith.INCR], 60), (e: Error) => e instanceof MemcacheError && e.message.includes('"has space"'));
    await assert.rejects(mc.arithMany(['nl\n'], [1], [Arith.UPSERT], 60), MemcacheError);
    await assert.rejects(mc.arithMany(['ok'], [-1], [Arith.INCR], 60), /not an unsigned 64-bit integer/);
    await assert.rejects(mc.arithMany(['a', 'b'], [1], [Arith.INCR, Arith.INCR], 60), /2 keys, 1 amounts and 2 modes/);
    await assert.rejects(mc.arithMany(['a'], [1], [7], 60), /unknown mode 7/);
    await assert.rejects(mc.arithMany(['a'], [1], [Arith.UPSERT], -1), /ttl -1/);
    await mc.exec([{ kind: 'set', key: 'text', value: 'abc', ttl: 0 }, { kind: 'set', key: 'n', value: '1', ttl: 0 }]);
    for (const mode of [Arith.INCR, Arith.UPSERT, Arith.UPSERT_READ]) {
      const notNumbers = { count: 0 };
      const [flags, good] = await Promise.all([
        mc.arithMany(['n', 'text', 'n'], [1, 1, 1], [Arith.UPSERT_READ, mode, Arith.INCR], 60, { keysValid: true, notNumbers }),
        mc.arithMany(['n'], [1], [Arith.INCR], 60),
      ]);
      assert.equal(notNumbers.count, 1, `mode ${mode}: the counter that is not a number is counted`);
      if (mode === Arith.INCR) assert.equal(flags[1], NOT_A_NUMBER, 'an incr refused is flagged');
      assert.deepEqual([...good], [1]);
    }
    assert.equal(String((await mc.getMulti(['n'])).get('n')).trim(), '10', 'every other increment of those batches, and the next ones, applied');
    assert.equal(String((await mc.getMulti(['text'])).get('text')), 'abc', 'the item that is not a number is left as it was');
  });

  test('invalid keys are refused with their name before anything is written', async () => {
    for (const key of ['has space', '', 'x'.repeat(251), 'ü'.repeat(126), 'tab\there', 'nl\n', 'del\x7f']) {
      await assert.rejects(
        mc.exec([{ kind: 'set', key: 'guard', value: 'written', ttl: 0 }, { kind: 'incr', key, amount: 1 }]),
        (e: Error) => e instanceof MemcacheError && !(e instanceof MemcacheUnavailableError) && e.message.includes(JSON.stringify(key)),
      );
      await assert.rejects(mc.getMulti(['guard', key]), MemcacheError);
    }
    assert.deepEqual(await mc.exec([{ kind: 'get', key: 'guard' }]), [null]);
    assert.deepEqual(await mc.exec([{ kind: 'set', key: 'x'.repeat(250), value: 'ok', ttl: 0 }]), [true]);
  });

  test('a server error fails only its own request, and later replies stay in step', async () => {
    await mc.exec([{ kind: 'set', key: 'text', value: 'abc', ttl: 0 }, { kind: 'set', key: 'n', value: '41', ttl: 0 }]);
    const tooBig = Buffer.alloc(2 * 1024 * 1024, 0x61); // over memcached's 1 MB item limit: SERVER_ERROR, data swallowed
    const [bad, big, good] = await Promise.allSettled([
      mc.exec([{ kind: 'incr', key: 'text', amount: 1 }, { kind: 'set', key: 'ok:1', value: 'fine', ttl: 0 }]),
      mc.exec([{ kind: 'set', key: 'huge', value: tooBig, ttl: 0 }]),
      mc.exec([{ kind: 'get', key: 'ok:1' }, { kind: 'incr', key: 'n', amount: 1 }]),
    ]);
    assert.equal(bad.status, 'rejected');
    assert.equal(bad.reason.constructor, MemcacheError);
    assert.match(bad.reason.message, /CLIENT_ERROR .*incr text/);
    assert.equal(big.status, 'rejected');
    assert.match((big.reason as Error).message, /SERVER_ERROR .*set huge/);
    assert.equal(good.status, 'fulfilled');
    assert.deepEqual(good.value[0], Buffer.from('fine'));
    assert.equal(good.value[1], 42n);
  });
});

describe('MemcacheConnection when the server is away', () => {
  test('a closed port rejects with MemcacheUnavailableError naming host:port', async () => {
    const port = await freePort();
    const mc = new MemcacheConnection({ host: HOST, port });
    await assert.rejects(
      mc.exec([{ kind: 'incr', key: 'k', amount: 1 }]),
      (e: Error) => e instanceof MemcacheUnavailableError && e.message.includes(`${HOST}:${port}`),
    );
    await mc.close();
  });

  test('a restarted server: the call during downtime rejects, the next one reconnects', async () => {
    const port = await freePort();
    let server = await startMemcached(port);
    const mc = new MemcacheConnection({ host: HOST, port }, { opTimeoutMs: 2000 });
    try {
      assert.deepEqual(await mc.exec([{ kind: 'add', key: 'r', value: '1', ttl: 0 }]), [true]);
      await stopMemcached(server);
      const t0 = Date.now();
      await assert.rejects(mc.exec([{ kind: 'incr', key: 'r', amount: 1 }]), MemcacheUnavailableError);
      await assert.rejects(mc.exec([{ kind: 'incr', key: 'r', amount: 1 }]), MemcacheUnavailableError);
      assert.ok(Date.now() - t0 < 1500, 'rejected promptly, not by timeout');
      server = await startMemcached(port);
      assert.deepEqual(await mc.exec([{ kind: 'incr', key: 'r', amount: 1 }, { kind: 'add', key: 'r', value: '5', ttl: 0 }]), [null, true]);
    } finally {
      await mc.close();
      await stopMemcached(server);
    }
  });

  test('a server that stops answering times out every pending request, then the connection recovers', async () => {
    const port = await freePort();
    const server = await startMemcached(port);
    const mc = new MemcacheConnection({ host: HOST, port }, { opTimeoutMs: 300 });
    try {
      await mc.flushAll();
      server.kill('SIGSTOP');
      // kill() returns before the stop takes hold; memcached could still answer until it has.
      while (!/^\d+ \(.*\) T/.test(readFileSync(`/proc/${server.pid}/stat`, 'utf8'))) await new Promise((r) => setTimeout(r, 5));
      const t0 = Date.now();
      const results = await Promise.allSettled([
        mc.exec([{ kind: 'incr', key: 'x', amount: 1 }]),
        mc.getMulti(['a', 'b']),
      ]);
      for (const r of results) {
        assert.equal(r.status, 'rejected');
        assert.equal(r.reason.constructor, MemcacheUnavailableError);
        assert.match(r.reason.message, new RegExp(`${HOST}:${port}.*no reply within 300 ms`));
      }
      assert.ok(Date.now() - t0 < 1000, 'rejected by the 300 ms timeout');
      server.kill('SIGCONT');
      assert.deepEqual(await mc.exec([{ kind: 'add', key: 'x', value: '1', ttl: 0 }]), [true]);
    } finally {
      server.kill('SIGCONT');
      await mc.close();
      await stopMemcached(server);
    }
  });
});

describe('close()', () => {
  let port: number;
  let server: ChildProcess;
  before(async () => {
    port = await freePort();
    server = await startMemcached(port);
  });
  after(() => stopMemcached(server));

  const handles = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length;

  test('lets requests already sent finish, then refuses new ones, leaving no handle behind', async () => {
    const before = handles();
    const mc = new MemcacheConnection({ host: HOST, port });
    const inFlight = mc.exec([{ kind: 'set', key: 'last', value: 'v', ttl: 0 }]);
    assert.ok(handles() > before, 'the connection holds a socket and a timer');
    await mc.close();
    // <=: a handle of an earlier test may have finished closing meanwhile.
    assert.ok(handles() <= before, 'close() left a socket or timer behind');
    assert.deepEqual(await inFlight, [true]);
    await assert.rejects(mc.exec([{ kind: 'get', key: 'last' }]), /closed/);
  });

  test('leaves nothing keeping the process alive', async () => {
    const lib = fileURLToPath(new URL('../lib/wire/memcache.ts', import.meta.url));
    // Long timeouts: if any timer or socket survived close(), the child would outlive the deadline below.
    const script = `
      import { MemcacheConnection } from ${JSON.stringify(lib)};
      const mc = new MemcacheConnection({ host: '${HOST}', port: ${port} }, { connectTimeoutMs: 60000, opTimeoutMs: 60000 });
      await mc.exec([{ kind: 'set', key: 'exit', value: 'v', ttl: 0 }]);
      await Promise.all([mc.getMulti(['exit']), mc.close()]);
      console.log('closed');`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const [code] = await once(child, 'exit');
    clearTimeout(timer);
    assert.equal(code, 0, 'the child exited by itself');
    assert.equal(out.trim(), 'closed');
  });
});
