/**
 * Ring mode `folds`: where a fold's blobs go in memcached and how they are
 * read back. A blob is written once (`set`, with the ring's TTL) and never
 * changed; whether it counts is decided by its fold's decision record
 * (claims.ts), never by the blob.
 *
 * Works over any connection with `exec` and `getMulti` (KvConn): the real
 * MemcacheConnection, or the model test's in-memory memcached.
 */
import type { SliceId } from '../domain/slice.ts';
import type { MemcacheOp, MemcacheReply } from '../wire/memcache.ts';
import { shardOfFold, type RingKeys } from './keys.ts';
import type { Placement } from './placement.ts';

/** What fold-mode code needs of a memcached connection. */
export interface KvConn {
  exec(ops: readonly MemcacheOp[]): Promise<MemcacheReply[]>;
  getMulti(keys: readonly string[]): Promise<Map<string, Buffer>>;
}

export interface FoldBlobsDeps {
  keys: RingKeys;
  placement: Pick<Placement, 'writer' | 'readers'>;
  conns: readonly KvConn[];
  /** The ring's TTL in seconds: a blob lives as long as any other key of its slice. */
  ttl: number;
  /** Counts memcached operations (bench, status). */
  countOps?: (n: number) => void;
}

/** Folds whose chunk 0 is fetched per round trip while reading a slice. */
const FOLDS_PER_GET = 64;

export class FoldBlobs {
  constructor(private readonly deps: FoldBlobsDeps) {}

  /** Stores every chunk of a fold (all its slices) on the fold's server; throws if memcached did not store one. */
  async write(fold: string, blobs: ReadonlyMap<SliceId, readonly Buffer[]>): Promise<void> {
    const { keys, placement, conns, ttl } = this.deps;
    const ops: MemcacheOp[] = [];
    for (const [slice, chunks] of blobs) chunks.forEach((value, n) => ops.push({ kind: 'set', key: keys.foldChunk(slice, fold, n), value, ttl }));
    if (ops.length === 0) return;
    this.deps.countOps?.(ops.length);
    const replies = await conns[placement.writer(shardOfFold(fold))]!.exec(ops);
    const failed = replies.findIndex((r) => r !== true);
    // memcached refuses an item larger than its limit (-I): a chunk is 512 KB at most, so this means a misconfigured server.
    if (failed >= 0) throw new Error(`memcached did not store ${ops[failed]!.key} (${(ops[failed] as { value: Buffer }).value.length} bytes): is its item size limit (-I) below 1 MB?`);
  }

  /**
   * Reads chunks of the given folds' blobs for `slice`: `chunk` says which
   * chunk numbers of which fold; every server a fold may be on (while the
   * pool changes) is asked. Returns what was found, by fold, then chunk number.
   */
  async read(slice: SliceId, wanted: readonly { fold: string; chunks: readonly number[] }[]): Promise<Map<string, Map<number, Buffer>>> {
    const { keys, placement, conns } = this.deps;
    const out = new Map<string, Map<number, Buffer>>();
    for (let from = 0; from < wanted.length; from += FOLDS_PER_GET) {
      const byServer = new Map<number, string[]>();
      const names = new Map<string, { fold: string; n: number }>();
      for (const { fold, chunks } of wanted.slice(from, from + FOLDS_PER_GET)) {
        for (const n of chunks) {
          const key = keys.foldChunk(slice, fold, n);
          names.set(key, { fold, n });
          for (const s of placement.readers(shardOfFold(fold))) {
            let list = byServer.get(s);
            if (!list) byServer.set(s, (list = []));
            list.push(key);
          }
        }
      }
      const found = await Promise.all([...byServer].map(([s, list]) => {
        this.deps.countOps?.(list.length);
        return conns[s]!.getMulti(list);
      }));
      for (const map of found) {
        for (const [key, buf] of map) {
          const { fold, n } = names.get(key)!;
          let chunks = out.get(fold);
          if (!chunks) out.set(fold, (chunks = new Map()));
          chunks.set(n, buf);
        }
      }
    }
    return out;
  }
}
