/**
 * Ring mode `folds`, the flush's side: reads a sealed slice by deciding every
 * fold its list names and summing the blobs of the committed ones.
 *
 * Deciding: a fold still open is given until `decideWaitMs` to commit (its
 * worker may be between its blobs and its commit), then aborted (`add f:F a`),
 * which makes its commit fail for good; whichever `add` came first stands.
 * Only committed folds are read, so a fold counts once or not at all.
 *
 * A committed fold's record carries its events per slice: the blobs found
 * must hold exactly that many for this slice. Fewer (a chunk evicted or lost
 * with a restart) is reported: the slice is `incomplete`, with the chunks
 * missing counted. A chunk that is not a fold chunk is skipped and counted
 * as corrupt, and the rest of the slice is read.
 */
import type { CountRows } from '../domain/counts.ts';
import { FoldBlobError, readFoldHeader } from '../domain/foldblob.ts';
import { SliceSum } from '../domain/foldsum.ts';
import type { SliceId } from '../domain/slice.ts';
import type { FoldBlobs } from '../count/fold-blobs.ts';
import type { FoldId, FoldProtocol } from '../count/fold-writer.ts';
import type { SliceTotals } from '../count/slice-reader.ts';
import { ClaimsError } from '../count/claims.ts';

export interface FoldReaderDeps {
  claims: Pick<FoldProtocol, 'foldsOf' | 'decision' | 'abort'>;
  blobs: FoldBlobs;
  now: () => number;
  sleep: (ms: number) => Promise<void>;
  /** How long open folds are given to commit before they are aborted. */
  decideWaitMs: number;
}

/** What deciding a slice's folds came to (for the flush's log and the tests). */
export interface FoldCensus {
  listed: number;
  committed: number;
  /** Aborted, by this flush or before it. */
  aborted: number;
  /** Of those, aborted by this flush (open when it looked). */
  abortedHere: number;
}

export class FoldSliceReader {
  private batches: Generator<CountRows> | null = null;

  private constructor(
    private readonly sum: SliceSum,
    private readonly found: Omit<SliceTotals, 'rows' | 'counted' | 'saturated' | 'late'>,
    readonly census: FoldCensus,
    private readonly batchPairs: number,
  ) {}

  /** Decides the slice's folds and sums the committed ones' blobs (the whole slice is summed here, rows come out sorted). */
  static async open(deps: FoldReaderDeps, slice: SliceId, batchPairs: number): Promise<FoldSliceReader> {
    const { claims } = deps;
    let listed: { fold: FoldId; events: number }[] = [];
    let unreadable = '';
    try {
      listed = await claims.foldsOf(slice);
    } catch (err) {
      // A list holding what OffLog never writes: no fold of the slice can be found. Reported corrupt (nothing is
      // written for it), and the flush goes on with the next slice rather than failing on this one for ever.
      if (!(err instanceof ClaimsError)) throw err;
      unreadable = `the slice's fold list is unreadable, so none of its folds can be found (${err.message})`;
    }
    const census: FoldCensus = { listed: listed.length, committed: 0, aborted: 0, abortedHere: 0 };
    const committed: { fold: FoldId; events: number }[] = [];
    let open = listed.map((l) => l.fold);
    const deadline = deps.now() + deps.decideWaitMs;
    for (let delay = 10; open.length > 0; delay = Math.min(250, delay * 2)) {
      const late = deps.now() >= deadline;
      const still: FoldId[] = [];
      // All at once: the reads go out pipelined, one round trip for the lot rather than one per fold.
      const decided = await Promise.all(open.map(async (fold) => {
        let d = await claims.decision(fold);
        if (d.state === 'open' && late) {
          d = await claims.abort(fold);
          if (d.state === 'aborted') census.abortedHere++;
        }
        return d;
      }));
      open.forEach((fold, i) => {
        const d = decided[i]!;
        if (d.state === 'committed') committed.push({ fold, events: d.totals.get(slice) ?? 0 });
        else if (d.state === 'aborted') census.aborted++;
        else still.push(fold);
      });
      open = still;
      if (open.length > 0) await deps.sleep(delay);
    }
    census.committed = committed.length;

    const sum = new SliceSum();
    const found = { slice, chunks: [] as number[], events: 0n as bigint | null, late: 0n, valueSumsMade: null, eventsCountingSums: null, missingPairs: 0, missingChunks: 0, valueSumsFound: 0, duplicates: 0, corrupt: 0, corruptNote: '', wrapsHeld: 0 };
    const corrupt = (what: string): void => {
      found.corrupt++;
      found.corruptNote ||= what;
    };
    if (unreadable) corrupt(unreadable);
    // A fold announced on this slice whose events all moved elsewhere carries 0 here: nothing to read.
    const reading = committed.filter((c) => c.events > 0);
    for (const c of committed) found.events! += BigInt(c.events);
    const first = await deps.blobs.read(slice, reading.map((c) => ({ fold: c.fold, chunks: [0] })));
    const rest: { fold: FoldId; chunks: number[] }[] = [];
    for (const c of reading) {
      const chunk0 = first.get(c.fold)?.get(0);
      if (chunk0 === undefined) continue;
      try {
        const h = readFoldHeader(chunk0);
        if (h.chunks > 1) rest.push({ fold: c.fold, chunks: Array.from({ length: h.chunks - 1 }, (_, i) => i + 1) });
      } catch {
        // Judged below, with the rest of its chunks.
      }
    }
    const more = rest.length > 0 ? await deps.blobs.read(slice, rest) : new Map<string, Map<number, Buffer>>();
    for (const c of reading) {
      const chunks = new Map([...(first.get(c.fold) ?? []), ...(more.get(c.fold) ?? [])]);
      let events = 0;
      let expected = 1;
      for (const [n, buf] of [...chunks].sort((a, b) => a[0] - b[0])) {
        try {
          const r = sum.addChunk(buf);
          events += r.events;
          if (n === 0) expected = r.header.chunks;
        } catch (err) {
          if (!(err instanceof FoldBlobError)) throw err;
          corrupt(`fold ${c.fold} chunk ${n} of slice ${slice}: ${err.message}`);
        }
      }
      // A missing chunk 0 hides how many there were: it counts as one (the events fall short all the same).
      found.missingChunks += chunks.has(0) ? Math.max(0, expected - chunks.size) : 1;
      if (events > c.events) corrupt(`fold ${c.fold} holds ${events} events for slice ${slice}, its commit says ${c.events}`);
    }
    return new FoldSliceReader(sum, found, census, batchPairs);
  }

  async next(): Promise<CountRows | null> {
    this.batches ??= this.sum.rows(this.batchPairs);
    const r = this.batches.next();
    return r.done ? null : r.value;
  }

  /** What the slice came to (judged by flush.ts like a counters slice: counted < events is incomplete). */
  totals(): SliceTotals {
    return { ...this.found, rows: this.sum.size, counted: BigInt(this.sum.counted), saturated: this.sum.saturated, late: BigInt(this.sum.late) };
  }
}
