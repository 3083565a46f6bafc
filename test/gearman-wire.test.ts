/**
 * The Gearman packet codec on its own: requests encode as gearmand expects
 * them, and responses are cut out of a byte stream however TCP splits it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodePacket, PacketReader } from '../lib/wire/gearman.ts';

const res = (type: number, body: Buffer): Buffer => {
  const head = Buffer.alloc(12);
  head.write('\0RES', 0, 'latin1');
  head.writeUInt32BE(type, 4);
  head.writeUInt32BE(body.length, 8);
  return Buffer.concat([head, body]);
};

test('a request packet: \\0REQ, type, size, NUL-joined arguments, the last one raw', () => {
  const data = Buffer.from([1, 0, 2]);
  const p = encodePacket(18, ['fn', 'u-1', data]);
  assert.equal(p.subarray(0, 4).toString('latin1'), '\0REQ');
  assert.equal(p.readUInt32BE(4), 18);
  assert.equal(p.readUInt32BE(8), 2 + 1 + 3 + 1 + 3);
  assert.deepEqual([...p.subarray(12)], [...Buffer.from('fn\0u-1\0'), 1, 0, 2]);
  assert.equal(encodePacket(30, []).readUInt32BE(8), 0, 'GRAB_JOB_UNIQ has no body');
});

test('responses split at every byte, or several in one chunk, come out whole and in order', () => {
  const big = Buffer.alloc(200_000, 7);
  const stream = Buffer.concat([res(8, Buffer.from('H:1')), res(10, Buffer.alloc(0)), res(31, Buffer.concat([Buffer.from('H:2\0offlog.batch\0u\0'), big]))]);
  for (const step of [1, 5, 12, 13, 4096, stream.length]) {
    const reader = new PacketReader();
    const got: { type: number; body: Buffer }[] = [];
    for (let at = 0; at < stream.length; at += step) got.push(...reader.push(stream.subarray(at, at + step)));
    assert.deepEqual(got.map((p) => p.type), [8, 10, 31], `step ${step}`);
    assert.equal(got[0]!.body.toString(), 'H:1');
    assert.equal(got[2]!.body.length, 'H:2\0offlog.batch\0u\0'.length + big.length);
  }
});

test('a stream that is not Gearman is refused, not guessed at', () => {
  assert.throws(() => new PacketReader().push(Buffer.from('HTTP/1.1 400 Bad Request\r\n')), /not a Gearman response/);
});
