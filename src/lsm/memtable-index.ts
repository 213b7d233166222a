// The memtable's point-read index: an open-addressing hash table from user key to the newest
// entry of that key, so a read of the newest version needs no search of the sorted leaves.

/** An entry as the index sees it: its key's bytes and its sequence number. */
export interface IndexedEntry {
  readonly buf: Uint8Array;
  readonly keyStart: number;
  readonly keyEnd: number;
  readonly seq: number;
  /** Is this entry's key equal to t[tStart, tEnd)? */
  keyEquals(t: Uint8Array, tStart?: number, tEnd?: number): boolean;
}

/**
 * Open-addressing hash table from user key to its newest node (linear probing, load ≤ 1/2).
 * Entries are never removed: a memtable only grows until it is frozen and dropped.
 */
export class KeyIndex<T extends IndexedEntry> {
  private slots: (T | undefined)[] = new Array<T | undefined>(1024);
  private hashes = new Int32Array(1024);
  private mask = 1023;
  private size = 0;

  /** The newest node of `key`, or undefined. */
  get(key: Uint8Array, hash: number): T | undefined {
    const h = hash | 0;
    const slots = this.slots;
    for (let i = h & this.mask; ; i = (i + 1) & this.mask) {
      const n = slots[i];
      if (n === undefined) return undefined;
      if (this.hashes[i] === h && n.keyEquals(key)) return n;
    }
  }

  /** Makes `node` the indexed node of its key if it is newer than the one there. */
  put(node: T, hash: number): void {
    const h = hash | 0;
    const slots = this.slots;
    let i = h & this.mask;
    for (; ; i = (i + 1) & this.mask) {
      const n = slots[i];
      if (n === undefined) break;
      if (this.hashes[i] === h && n.keyEquals(node.buf, node.keyStart, node.keyEnd)) {
        if (node.seq > n.seq) slots[i] = node;
        return;
      }
    }
    slots[i] = node;
    this.hashes[i] = h;
    if (++this.size * 2 > slots.length) this.grow();
  }

  private grow(): void {
    const oldSlots = this.slots;
    const oldHashes = this.hashes;
    const cap = oldSlots.length * 2;
    this.slots = new Array<T | undefined>(cap);
    this.hashes = new Int32Array(cap);
    this.mask = cap - 1;
    for (let j = 0; j < oldSlots.length; j++) {
      const n = oldSlots[j];
      if (n === undefined) continue;
      let i = oldHashes[j] & this.mask;
      while (this.slots[i] !== undefined) i = (i + 1) & this.mask;
      this.slots[i] = n;
      this.hashes[i] = oldHashes[j];
    }
  }
}
