/**
 * The agent's framing: newline-delimited frames on a byte stream. Pure (no
 * I/O): the agent feeds it what a socket delivers and gets whole frames back.
 *
 * A frame longer than `maxBytes` is reported once and skipped up to its
 * newline, so one bad writer loses its own frame and nothing after it.
 */
const NL = 0x0a;

export interface FrameSink {
  frame(frame: Buffer): void;
  /** A frame passed `maxBytes`; `bytes` is how many of it were seen when it was given up. */
  overlong(bytes: number): void;
}

export class FrameSplitter {
  private parts: Buffer[] = [];
  private partBytes = 0;
  /** Inside an over-long frame: drop bytes up to the next newline. */
  private skipping = false;

  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer, sink: FrameSink): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(NL, start);
      if (nl < 0) break;
      if (this.skipping) {
        this.skipping = false;
      } else if (this.partBytes === 0) {
        if (nl - start > this.maxBytes) sink.overlong(nl - start);
        else sink.frame(chunk.subarray(start, nl));
      } else {
        const total = this.partBytes + nl - start;
        if (total > this.maxBytes) sink.overlong(total);
        else {
          this.parts.push(chunk.subarray(start, nl));
          sink.frame(Buffer.concat(this.parts, total));
        }
        this.parts = [];
        this.partBytes = 0;
      }
      start = nl + 1;
    }
    if (start >= chunk.length || this.skipping) return;
    const rest = chunk.length - start;
    if (this.partBytes + rest > this.maxBytes) {
      sink.overlong(this.partBytes + rest);
      this.parts = [];
      this.partBytes = 0;
      this.skipping = true;
      return;
    }
    // A copy: the stream may reuse its chunk's memory once this returns.
    this.parts.push(Buffer.from(chunk.subarray(start)));
    this.partBytes += rest;
  }

  /** Bytes of a frame begun and not finished (a writer that left mid-frame). */
  get pending(): number {
    return this.partBytes;
  }
}
