// The memtable's point-read index: an open-addressing hash table from user key to the newest
// entry of that key (an entry id), so a read of the newest version needs no search of the leaves.

/** Where the index finds an entry's key and sequence number (the memtable's entry records). */
export interface IndexedEntries {
  /** Is entry `id`'s key equal to t[tStart, tEnd)? */
  keyEquals(id: number, t: Uint8Array, tStart: number, tEnd: number): boolean;
  seqOf(id: number): number;
}

/**
 * Open-addressing hash table from user key to its newest entry id (linear probing, load ≤ 1/2),
 * in two typed arrays: no object per entry. Entries are never removed: a memtable only grows
 * until it is frozen and dropped.
 */
export class KeyIndex {
  /** Entry id + 1; 0 marks an empty slot. */
  private slots = new Int32Array(1024);
  private hashes = new Int32Array(1024);
  private mask = 1023;
  private size = 0;

  constructor(private readonly entries: IndexedEntries) {}

  /** Bytes of the two tables. */
  get bytes(): number {
    return this.slots.byteLength + this.hashes.byteLength;
  }

  /** The newest entry id of `key`, or -1. */
  get(key: Uint8Array, hash: number): number {
    const h = hash | 0;
    const slots = this.slots;
    for (let i = h & this.mask; ; i = (i + 1) & this.mask) {
      const s = slots[i];
      if (s === 0) return -1;
      if (this.hashes[i] === h && this.entries.keyEquals(s - 1, key, 0, key.length)) return s - 1;
    }
  }

  /** Makes entry `id` (key t[tStart, tEnd)) the indexed entry of its key if it is newer. */
  put(id: number, hash: number, t: Uint8Array, tStart: number, tEnd: number): void {
    const h = hash | 0;
    const slots = this.slots;
    let i = h & this.mask;
    for (; ; i = (i + 1) & this.mask) {
      const s = slots[i];
      if (s === 0) break;
      if (this.hashes[i] === h && this.entries.keyEquals(s - 1, t, tStart, tEnd)) {
        if (this.entries.seqOf(id) > this.entries.seqOf(s - 1)) slots[i] = id + 1;
        return;
      }
    }
    slots[i] = id + 1;
    this.hashes[i] = h;
    if (++this.size * 2 > slots.length) this.grow();
  }

  private grow(): void {
    const oldSlots = this.slots;
    const oldHashes = this.hashes;
    const cap = oldSlots.length * 2;
    this.slots = new Int32Array(cap);
    this.hashes = new Int32Array(cap);
    this.mask = cap - 1;
    for (let j = 0; j < oldSlots.length; j++) {
      const s = oldSlots[j];
      if (s === 0) continue;
      let i = oldHashes[j] & this.mask;
      while (this.slots[i] !== 0) i = (i + 1) & this.mask;
      this.slots[i] = s;
      this.hashes[i] = oldHashes[j];
    }
  }
}
