/** The agent's framing (lib/send/agent-frames.ts), pure: frames split anywhere, over-long frames skipped whole. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FrameSplitter } from '../lib/send/agent-frames.ts';

function feed(max: number, chunks: string[]): { frames: string[]; overlong: number[]; pending: number } {
  const s = new FrameSplitter(max);
  const frames: string[] = [];
  const overlong: number[] = [];
  for (const c of chunks) s.push(Buffer.from(c), { frame: (f) => frames.push(f.toString()), overlong: (n) => overlong.push(n) });
  return { frames, overlong, pending: s.pending };
}

test('frames come out whole however the stream is cut', () => {
  const text = 'alpha\nbeta\n\ngamma-delta\nlast\n';
  for (let step = 1; step <= text.length; step++) {
    const chunks: string[] = [];
    for (let i = 0; i < text.length; i += step) chunks.push(text.slice(i, i + step));
    assert.deepEqual(feed(100, chunks), { frames: ['alpha', 'beta', '', 'gamma-delta', 'last'], overlong: [], pending: 0 }, `cut every ${step}`);
  }
});

test('an over-long frame is reported once and skipped to its newline; the next frame is intact', () => {
  assert.deepEqual(feed(5, ['ok\ntoolongframe\nfine\n']), { frames: ['ok', 'fine'], overlong: [12], pending: 0 });
  // Across chunks: noticed as soon as it passes the limit, then skipped without buffering.
  const r = feed(5, ['ok\ntoo', 'longfr', 'ame', 'xx\nfine\n']);
  assert.deepEqual(r.frames, ['ok', 'fine']);
  assert.equal(r.overlong.length, 1);
  assert.equal(r.pending, 0);
});

test('a frame at exactly the limit passes; one byte more does not', () => {
  assert.deepEqual(feed(5, ['12345\n123456\n']).frames, ['12345']);
  assert.deepEqual(feed(5, ['123', '45\n1234', '56\n']).frames, ['12345']);
});

test('bytes after the last newline are pending: a writer that leaves mid-frame', () => {
  assert.deepEqual(feed(100, ['whole\nhalf a fr', 'ame']), { frames: ['whole'], overlong: [], pending: 12 });
});
