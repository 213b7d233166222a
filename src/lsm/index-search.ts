// A table's index block searched through numbers: six bytes of each index key past the prefix
// all of them share, so a point read's binary search compares integers, not keys (ten key
// compares per lookup in a 900-block table were a third of a cached getSync's time).
import type { BlockIterator } from "./block.ts";

export class IndexSearch {
  private constructor(
    /** The user-key prefix every index key has. */
    private readonly prefix: Uint8Array,
    /**
     * Per entry: user-key bytes [prefix, prefix + 6) as a 48-bit big-endian number, 0-padded.
     * Six, not four: with four, a word spanned ~3 blocks of the bench's decimal keys, and the
     * key compares among equal words cost as much as the search.
     */
    private readonly words: Float64Array,
  ) {}

  /** Bytes held beside the index block. */
  get bytes(): number {
    return this.words.byteLength + this.prefix.length;
  }

  /** Built from an index iterator (interval-1 restarts); null when the block is not that shape. */
  static build(it: BlockIterator): IndexSearch | null {
    const n = it.restarts;
    if (n === 0) return null;
    // Two passes over views of the iterator's key (no copy per entry): the shared prefix, then the numbers.
    it.seekToFirst();
    const first = it.key().slice();
    let common = first.length;
    let count = 0;
    for (; it.valid(); it.next(), count++) {
      const k = it.key();
      let i = 0;
      while (i < common && i < k.length && k[i] === first[i]) i++;
      common = i;
    }
    if (count !== n) return null;
    const words = new Float64Array(n);
    let i = 0;
    for (it.seekToFirst(); it.valid(); it.next()) words[i++] = wordAt(it.key(), common);
    return new IndexSearch(first.slice(0, common), words);
  }

  /** Positions `it` (over the same block) at the first entry at or after (key, seq). */
  seek(it: BlockIterator, key: Uint8Array, seq: number): void {
    const prefix = this.prefix;
    const c = prefix.length;
    let shared = key.length >= c;
    for (let i = 0; shared && i < c; i++) shared = key[i] === prefix[i];
    if (!shared) {
      it.seek(key, seq);
      return;
    }
    // Words are non-decreasing in key order: entries below the target's word are before it,
    // entries above are after it; only equal words need a key compare.
    const t = wordAt(key, c);
    const words = this.words;
    let lo = 0;
    let hi = words.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (words[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    let end = words.length;
    for (let a = lo; a < end; ) {
      const mid = (a + end) >>> 1;
      if (words[mid] === t) a = mid + 1;
      else end = mid;
    }
    while (lo < end) {
      const mid = (lo + end) >>> 1;
      if (it.compareRestart(mid, key, seq) < 0) lo = mid + 1;
      else end = mid;
    }
    it.seekToRestart(lo);
  }
}

function wordAt(k: Uint8Array, at: number): number {
  let w = 0;
  for (let i = at; i < at + 6; i++) w = w * 256 + (i < k.length ? k[i] : 0);
  return w;
}
