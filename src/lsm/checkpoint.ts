// A checkpoint: the database at one sequence number as the table files of the version live then
// (pinned, so compaction cannot delete them) plus the memtables' entries up to that number. What a
// snapshot transfer ships as raw files instead of re-encoding every entry (see table-import.ts).
import * as path from "node:path";
import { compareBytes } from "./coding.ts";
import { MergingIterator } from "./iterator.ts";
import { tableFileName } from "./manifest.ts";
import type { Memtable } from "./memtable.ts";
import type { Snapshot } from "./snapshot.ts";
import type { FileMeta } from "./version.ts";

/** One table file of the checkpoint: where it sits in the version and its bounds (internal keys). */
export interface CheckpointFile extends FileMeta {
  level: number;
  /** The file's path in the source database directory. */
  path: string;
}

/**
 * Called with each memtable entry (views valid during the call only); returns false to stop after
 * this entry.
 */
export type CheckpointEntryVisitor = (key: Uint8Array, seq: number, kind: number, value: Uint8Array) => boolean;

export class Checkpoint {
  readonly files: CheckpointFile[];
  private entries: MergingIterator | null = null;
  private lastKey = new Uint8Array(64);
  private lastKeyLength = -1;
  private released = false;

  /** @internal Made by DB.checkpoint(), which has pinned `levels` and taken `snapshot`. */
  constructor(
    dir: string,
    /** Reads through it see the database at the checkpoint (the files alone may be older). */
    readonly snapshot: Snapshot,
    levels: readonly FileMeta[][],
    private readonly memtables: Memtable[],
    private readonly onRelease: () => void,
  ) {
    this.files = [];
    levels.forEach((files, level) => {
      for (const f of files) {
        this.files.push({
          level,
          number: f.number,
          size: f.size,
          smallest: f.smallest,
          largest: f.largest,
          smallestUser: f.smallestUser,
          largestUser: f.largestUser,
          path: path.join(dir, tableFileName(f.number)),
        });
      }
    });
  }

  /** The sequence number the checkpoint stands at: every entry of its files and memtable part is at or below it. */
  get seq(): number {
    return this.snapshot.seq;
  }

  /**
   * The memtables' part, in internal key order: for each user key, its newest entry at or below
   * `seq` (a deletion included: it hides older values in the files). Hands at most `max` entries to
   * `visit`; returns how many, 0 once all were handed. Writes after the checkpoint are skipped.
   */
  nextEntries(max: number, visit: CheckpointEntryVisitor): number {
    if (this.released) throw new Error("checkpoint released");
    let it = this.entries;
    if (it === null) {
      it = this.entries = new MergingIterator(this.memtables.map((m) => m.iterator()));
      it.seekToFirst();
    }
    const seq = this.seq;
    let handed = 0;
    for (; it.valid() && handed < max; it.next()) {
      if (it.seq() > seq) continue;
      const key = it.key();
      // Older entries of a key already handed over are shadowed by it.
      if (this.lastKeyLength === key.length && compareBytes(key, this.lastKey.subarray(0, this.lastKeyLength)) === 0) continue;
      if (this.lastKey.length < key.length) this.lastKey = new Uint8Array(2 * key.length);
      this.lastKey.set(key);
      this.lastKeyLength = key.length;
      handed++;
      if (!visit(key, it.seq(), it.kind(), it.value())) {
        it.next();
        break;
      }
    }
    return handed;
  }

  /** Unpins the files and the snapshot; idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.entries?.close();
    this.entries = null;
    this.onRelease();
  }
}
