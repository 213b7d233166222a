// Caches that bound memory and file handles: an LRU block cache bounded in bytes, and an LRU
// table cache bounded in open files.

/** One cached block; `owner` is the per-table map it is indexed in. */
interface BlockEntry {
  owner: Map<number, BlockEntry>;
  offset: number;
  block: Uint8Array;
  prev: BlockEntry | null;
  next: BlockEntry | null;
}

/**
 * LRU of decoded blocks, bounded by their byte size. Each table keeps its own offset → entry map
 * (no composite keys to build per lookup); the cache keeps one recency list across all tables.
 */
export class BlockCache {
  private head: BlockEntry | null = null; // most recent
  private tail: BlockEntry | null = null; // least recent
  bytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly capacity: number) {}

  get(owner: Map<number, BlockEntry>, offset: number): Uint8Array | undefined {
    const e = owner.get(offset);
    if (e === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    if (e !== this.head) {
      this.unlink(e);
      this.pushFront(e);
    }
    return e.block;
  }

  insert(owner: Map<number, BlockEntry>, offset: number, block: Uint8Array): void {
    if (this.capacity <= 0 || block.length > this.capacity || owner.has(offset)) return;
    const e: BlockEntry = { owner, offset, block, prev: null, next: null };
    owner.set(offset, e);
    this.pushFront(e);
    this.bytes += block.length;
    while (this.bytes > this.capacity && this.tail) this.remove(this.tail);
  }

  /** Drops every block of one table (its file is closed or deleted). */
  dropOwner(owner: Map<number, BlockEntry>): void {
    for (const e of owner.values()) {
      this.unlink(e);
      this.bytes -= e.block.length;
    }
    owner.clear();
  }

  private remove(e: BlockEntry): void {
    this.unlink(e);
    e.owner.delete(e.offset);
    this.bytes -= e.block.length;
  }
  private unlink(e: BlockEntry): void {
    if (e.prev) e.prev.next = e.next;
    else this.head = e.next;
    if (e.next) e.next.prev = e.prev;
    else this.tail = e.prev;
    e.prev = e.next = null;
  }
  private pushFront(e: BlockEntry): void {
    e.next = this.head;
    e.prev = null;
    if (this.head) this.head.prev = e;
    this.head = e;
    if (!this.tail) this.tail = e;
  }
}

export type BlockMap = Map<number, BlockEntry>;

/** Something the table cache can hold: released when evicted, closed when unused. */
export interface Releasable {
  release(): void;
}

/**
 * LRU of open tables bounded in count. Eviction drops the cache's reference; a table still used
 * by an iterator stays open until that iterator releases it.
 */
export class TableCache<T extends Releasable> {
  private readonly map = new Map<number, T>();
  constructor(readonly capacity: number) {}

  get size(): number {
    return this.map.size;
  }

  get(fileNumber: number): T | undefined {
    const t = this.map.get(fileNumber);
    if (t !== undefined) {
      // Re-inserting moves it to the most-recent end of the Map's insertion order.
      this.map.delete(fileNumber);
      this.map.set(fileNumber, t);
    }
    return t;
  }

  insert(fileNumber: number, table: T): void {
    this.map.set(fileNumber, table);
    while (this.map.size > this.capacity) {
      const oldest = this.map.keys().next().value as number;
      const t = this.map.get(oldest)!;
      this.map.delete(oldest);
      t.release();
    }
  }

  evict(fileNumber: number): void {
    const t = this.map.get(fileNumber);
    if (t === undefined) return;
    this.map.delete(fileNumber);
    t.release();
  }

  clear(): void {
    for (const t of this.map.values()) t.release();
    this.map.clear();
  }
}
