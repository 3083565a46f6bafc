/**
 * The shared contract vectors (test/vectors/contract.json) against
 * lib/domain/contract.ts. The PHP client's tests run the same file
 * (clients/php/tests/VectorsTest.php), so the two languages cannot drift.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { InputError } from '../lib/base/errors.ts';
import { encodeTuple, parseEvent, type LogEvent } from '../lib/domain/contract.ts';

interface Vectors {
  valid: { name: string; event: unknown; expect: Omit<LogEvent, 'at'> & { at: number | 'accepted' } }[];
  invalid: { name: string; event: unknown; field: string }[];
  tuples: { event: LogEvent; watched: boolean; tuple: string }[];
}
const vectors = JSON.parse(readFileSync(new URL('./vectors/contract.json', import.meta.url), 'utf8')) as Vectors;
const ACCEPTED = 1_700_000_000_123;

test('the vectors file has cases of every kind', () => {
  assert.ok(vectors.valid.length >= 20 && vectors.invalid.length >= 40 && vectors.tuples.length >= 5);
  for (const field of ['event', '"userid"', 'userId', 'actionId', 'value', 'at', 'payload']) {
    assert.ok(vectors.invalid.some((v) => v.field === field), `an invalid case for ${field}`);
  }
});

for (const v of vectors.valid) {
  test(`valid: ${v.name}`, () => {
    const expect = { ...v.expect, at: v.expect.at === 'accepted' ? ACCEPTED : v.expect.at };
    assert.deepEqual(parseEvent(v.event, ACCEPTED), expect);
  });
}

for (const v of vectors.invalid) {
  test(`invalid: ${v.name} names ${v.field}`, () => {
    assert.throws(() => parseEvent(v.event, ACCEPTED), (err: unknown) => {
      assert.ok(err instanceof InputError, String(err));
      assert.equal(err.field, v.field);
      return true;
    });
  });
}

for (const v of vectors.tuples) {
  test(`tuple: ${v.tuple.slice(0, 60)}`, () => {
    const e = v.event;
    assert.equal(encodeTuple(e.userId, e.actionId, e.value, e.at, e.payload, v.watched), v.tuple);
  });
}
