// Caches that bound memory and file handles: an LRU block cache bounded in bytes (which recycles
// the buffers of decoded blocks it evicts), and an LRU table cache bounded in open files.

/** One cached block; `owner` is the per-table map it is indexed in. */
export interface BlockEntry {
  owner: Map<number, BlockEntry> | null;
  offset: number;
  /** The block is block[0, length): a buffer from allocBlock() is longer than the block. */
  block: Uint8Array;
  length: number;
  /**
   * `block` when it came from allocBlock(): once the entry is evicted and no iterator is on it,
   * the buffer goes back to the pool. Null for a buffer the pool did not make (zstd's).
   */
  buffer: Uint8Array | null;
  /** Iterators positioned in this block: its buffer is not reused while any is. */
  pins: number;
  evicted: boolean;
  prev: BlockEntry | null;
  next: BlockEntry | null;
}

const EMPTY = new Uint8Array(0);
/** Decoded-block buffers come in sizes rounded up to this (blocks of one table vary slightly). */
const POOL_GRAIN = 512;
/** Most buffers kept for reuse: a miss evicts about one block, so a few suffice. */
const POOL_MAX_BUFFERS = 64;

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
  /** Evicted decoded-block buffers by capacity, reused by allocBlock() (bounded). */
  private readonly pool = new Map<number, Uint8Array[]>();
  private pooled = 0;
  /** Bytes of the buffers in the pool, at most poolCapacity (memory beside `bytes`). */
  poolBytes = 0;
  readonly poolCapacity: number;
  /** Entry objects of retired blocks, reused by insert() (a miss allocates no entry). */
  private readonly freeEntries: BlockEntry[] = [];

  /**
   * Capacity of the buffer every block up to that size gets: one size class for nearly all
   * blocks, so an evicted block's buffer always fits the next miss (with classes by exact size,
   * the pool of one class ran dry while another overflowed: a fresh buffer per ~20 misses, and
   * dropped ones, garbage outside the JS heap that the collector is slow to see).
   */
  private readonly standardBuffer: number;

  constructor(readonly capacity: number, blockSize = 4096) {
    this.poolCapacity = Math.floor(capacity / 16);
    // A block closes at the first entry past blockSize: blockSize plus one entry and restarts.
    this.standardBuffer = Math.ceil((blockSize * 9) / 8 / POOL_GRAIN) * POOL_GRAIN;
  }

  /**
   * A buffer of at least n bytes (n rounded up to POOL_GRAIN) to decode a block into: a recycled
   * one when one fits, else a new one. No view is made: the block is its first n bytes. Pass it
   * to insert() with recyclable = true.
   */
  allocBlock(n: number): Uint8Array {
    const cap = n <= this.standardBuffer ? this.standardBuffer : Math.ceil(n / POOL_GRAIN) * POOL_GRAIN;
    const free = this.pool.get(cap);
    let buf = free !== undefined && free.length > 0 ? free.pop()! : null;
    if (buf === null) buf = new Uint8Array(cap);
    else {
      this.pooled--;
      this.poolBytes -= cap;
    }
    return buf;
  }

  private recycle(e: BlockEntry): void {
    const buf = e.buffer;
    if (buf === null || this.pooled >= POOL_MAX_BUFFERS || this.poolBytes + buf.length > this.poolCapacity) return;
    e.buffer = null;
    let free = this.pool.get(buf.length);
    if (free === undefined) this.pool.set(buf.length, (free = []));
    free.push(buf);
    this.pooled++;
    this.poolBytes += buf.length;
  }

  /** The cached block at `offset` (its entry: block[0, length)), or undefined. */
  get(owner: Map<number, BlockEntry>, offset: number): BlockEntry | undefined {
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
    return e;
  }

  /**
   * Marks the block at `offset` as in use by an iterator (null if it is not cached): its buffer
   * is not reused until unpin(), even if the entry is evicted meanwhile.
   */
  pin(owner: Map<number, BlockEntry>, offset: number): BlockEntry | null {
    const e = owner.get(offset);
    if (e === undefined) return null;
    e.pins++;
    return e;
  }

  /** The caller drops its reference to `e` (it may be reused for another block). */
  unpin(e: BlockEntry): void {
    if (--e.pins === 0 && e.evicted) this.free(e);
  }

  /**
   * Caches `block`. `recyclable`: it came from allocBlock(), so its buffer may be reused once
   * the entry is evicted and unpinned (callers keep views of a block only while pinned, or
   * within one synchronous read).
   */
  insert(owner: Map<number, BlockEntry>, offset: number, block: Uint8Array, length: number, recyclable = false): void {
    if (this.capacity <= 0 || block.length > this.capacity || owner.has(offset)) return;
    const buffer = recyclable ? block : null;
    let e = this.freeEntries.pop();
    if (e === undefined) e = { owner, offset, block, length, buffer, pins: 0, evicted: false, prev: null, next: null };
    else {
      e.owner = owner;
      e.offset = offset;
      e.block = block;
      e.length = length;
      e.buffer = buffer;
      e.evicted = false;
    }
    owner.set(offset, e);
    this.pushFront(e);
    // The block's length, not its buffer's capacity (≤ 9/8 of it for standard blocks): counting
    // capacity cached ~9% fewer blocks and cost ~8% of getSync speed at 300k keys.
    this.bytes += length;
    while (this.bytes > this.capacity && this.tail) this.remove(this.tail);
  }

  /** Drops every block of one table (its file is closed or deleted). */
  dropOwner(owner: Map<number, BlockEntry>): void {
    for (const e of owner.values()) {
      this.unlink(e);
      this.bytes -= e.length;
      this.retire(e);
    }
    owner.clear();
  }

  private remove(e: BlockEntry): void {
    this.unlink(e);
    e.owner!.delete(e.offset);
    this.bytes -= e.length;
    this.retire(e);
  }

  /** An entry leaves the cache: its buffer is reused now, or when its last iterator moves on. */
  private retire(e: BlockEntry): void {
    if (e.pins > 0) e.evicted = true;
    else this.free(e);
  }

  /** A retired entry nothing refers to: its buffer to the pool, the entry object to the free list. */
  private free(e: BlockEntry): void {
    this.recycle(e);
    e.owner = null;
    e.block = EMPTY;
    e.buffer = null;
    if (this.freeEntries.length < POOL_MAX_BUFFERS) this.freeEntries.push(e);
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
  /** Bytes it keeps in memory while open (a table: its index and filter). */
  readonly metadataBytes: number;
}

/**
 * LRU of open tables bounded in count and in the bytes they keep (index and filter blocks).
 * Eviction drops the cache's reference; a table still used by an iterator stays open until that
 * iterator releases it.
 */
export class TableCache<T extends Releasable> {
  /** Table and the tick of its last use: a get only stamps it (no Map churn on the read path). */
  private readonly map = new Map<number, { table: T; used: number }>();
  private tick = 0;
  /** Sum of metadataBytes of the tables held. */
  bytes = 0;
  constructor(readonly capacity: number, readonly byteCapacity = Infinity) {}

  get size(): number {
    return this.map.size;
  }

  get(fileNumber: number): T | undefined {
    const e = this.map.get(fileNumber);
    if (e === undefined) return undefined;
    e.used = ++this.tick;
    return e.table;
  }

  insert(fileNumber: number, table: T): void {
    this.evict(fileNumber);
    this.map.set(fileNumber, { table, used: ++this.tick });
    this.bytes += table.metadataBytes;
    // The newest table stays even if it alone is over the byte budget: it is about to be read.
    while (this.map.size > 1 && (this.map.size > this.capacity || this.bytes > this.byteCapacity)) {
      this.evict(this.leastRecentlyUsed());
    }
  }

  /** A scan, but only when a table is opened past the budget (opens are rare; gets are not). */
  private leastRecentlyUsed(): number {
    let oldest = -1;
    let used = Infinity;
    for (const [n, e] of this.map) {
      if (e.used < used) {
        used = e.used;
        oldest = n;
      }
    }
    return oldest;
  }

  evict(fileNumber: number): void {
    const e = this.map.get(fileNumber);
    if (e === undefined) return;
    this.map.delete(fileNumber);
    this.bytes -= e.table.metadataBytes;
    e.table.release();
  }

  clear(): void {
    for (const e of this.map.values()) e.table.release();
    this.map.clear();
    this.bytes = 0;
  }
}
