// Two-level iteration over one table (LevelDB's two_level_iterator): the index block picks a
// data block, a block iterator walks it; the cached block it is on stays pinned.
import { BlockIterator } from "./block.ts";
import type { BlockEntry } from "./cache.ts";
import type { InternalIterator } from "./iterator.ts";
import type { TableReader } from "./sstable.ts";

/** Two-level iteration: the index block picks a data block, the data block iterator walks it. */
export class TableIterator implements InternalIterator {
  private data: BlockIterator | null = null;
  private dataOffset = -1;
  private readonly blockIter = new BlockIterator();
  private readonly index = new BlockIterator();
  private closed = false;
  private pinned: BlockEntry | null = null;
  /** Where blocks read without the cache are decoded: this iterator is done with one before the next. */
  private scratch: Uint8Array | null = null;
  private readonly decodeInto = (n: number): Uint8Array => {
    if (this.scratch === null || this.scratch.length < n) this.scratch = new Uint8Array(Math.ceil(n * 1.25));
    return this.scratch;
  };

  /** Made by TableReader.iterator(), which holds a table reference for it until close(). */
  constructor(
    private table: TableReader,
    indexBlock: Uint8Array,
    private readonly fillCache: boolean,
  ) {
    this.index.reset(indexBlock, table.name, 0);
  }

  /**
   * Reuses this closed iterator for another table (a level iterator moving between files, so a
   * seek that changes tables allocates no iterator). The caller has taken a reference on `table`.
   */
  rebind(table: TableReader, indexBlock: Uint8Array, fillCache: boolean): boolean {
    if (!this.closed || fillCache !== this.fillCache) return false;
    this.table = table;
    this.index.reset(indexBlock, table.name, 0);
    this.data = null;
    this.dataOffset = -1;
    this.closed = false;
    return true;
  }

  private loadBlock(): boolean {
    if (!this.index.valid()) {
      this.data = null;
      return false;
    }
    const index = this.index;
    index.decodeHandle();
    const offset = index.handleOffset;
    if (offset !== this.dataOffset || this.data === null) {
      const block = this.table.readBlock(offset, index.handleSize, this.fillCache, this.decodeInto);
      this.blockIter.reset(block, this.table.name, offset, this.table.blockLength);
      // The cached block stays this iterator's until it moves to another (see BlockCache.pin).
      if (this.pinned !== null) this.table.unpinBlock(this.pinned);
      this.pinned = this.table.pinBlock(offset); // null when the block is not cached (a scratch decode or a view)
      this.dataOffset = offset;
    }
    this.data = this.blockIter;
    return true;
  }
  private skipForward(): void {
    while (this.data !== null && !this.data.valid()) {
      this.index.next();
      if (!this.loadBlock()) return;
      this.data!.seekToFirst();
    }
  }
  private skipBackward(): void {
    while (this.data !== null && !this.data.valid()) {
      this.index.prev();
      if (!this.loadBlock()) return;
      this.data!.seekToLast();
    }
  }
  valid(): boolean {
    return this.data !== null && this.data.valid();
  }
  seekToFirst(): void {
    this.index.seekToFirst();
    if (this.loadBlock()) this.data!.seekToFirst();
    this.skipForward();
  }
  seekToLast(): void {
    this.index.seekToLast();
    if (this.loadBlock()) this.data!.seekToLast();
    this.skipBackward();
  }
  seek(key: Uint8Array, seq: number): void {
    this.index.seek(key, seq);
    if (this.loadBlock()) this.data!.seek(key, seq);
    this.skipForward();
  }
  next(): void {
    this.data!.next();
    this.skipForward();
  }
  prev(): void {
    this.data!.prev();
    this.skipBackward();
  }
  key(): Uint8Array {
    return this.data!.key();
  }
  seq(): number {
    return this.data!.seq();
  }
  kind(): number {
    return this.data!.kind();
  }
  value(): Uint8Array {
    return this.data!.value();
  }
  valueCopy(): Uint8Array {
    return this.data!.valueCopy();
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.data = null;
    if (this.pinned !== null) this.table.unpinBlock(this.pinned);
    this.pinned = null;
    this.table.release();
  }
}
