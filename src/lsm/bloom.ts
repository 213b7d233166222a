// Bloom filter over the user keys of one table: ~1% false positives at 10 bits per key, no false
// negatives. Double hashing (one 32-bit hash, rotated delta) as in LevelDB's filter policy.

/** 32-bit hash of key[start, end) (Murmur-style mixing, 4 bytes at a time). */
export function bloomHash(key: Uint8Array, start = 0, end = key.length): number {
  const m = 0xc6a4a793;
  const n = end - start;
  let h = (0xbc9f1d34 ^ Math.imul(n, m)) >>> 0;
  let i = start;
  for (; i + 4 <= end; i += 4) {
    const w = key[i] | (key[i + 1] << 8) | (key[i + 2] << 16) | (key[i + 3] << 24);
    h = (h + w) >>> 0;
    h = Math.imul(h, m) >>> 0;
    h ^= h >>> 16;
  }
  const rest = end - i;
  if (rest === 3) h = (h + (key[i + 2] << 16)) >>> 0;
  if (rest >= 2) h = (h + (key[i + 1] << 8)) >>> 0;
  if (rest >= 1) {
    h = (h + key[i]) >>> 0;
    h = Math.imul(h, m) >>> 0;
    h ^= h >>> 24;
  }
  return h >>> 0;
}

/** Filter bytes: bit array followed by one byte holding the probe count k. */
export function buildBloom(hashes: Uint32Array, count: number, bitsPerKey: number): Uint8Array {
  const k = Math.max(1, Math.min(30, Math.round(bitsPerKey * 0.69)));
  const bits = Math.max(64, count * bitsPerKey);
  const bytes = Math.ceil(bits / 8);
  const nbits = bytes * 8;
  const out = new Uint8Array(bytes + 1);
  for (let i = 0; i < count; i++) {
    let h = hashes[i];
    const delta = ((h >>> 17) | (h << 15)) >>> 0;
    for (let j = 0; j < k; j++) {
      const pos = h % nbits;
      out[pos >>> 3] |= 1 << (pos & 7);
      h = (h + delta) >>> 0;
    }
  }
  out[bytes] = k;
  return out;
}

/** False means the key is certainly absent; true means it may be present. */
export function bloomMayContain(filter: Uint8Array, hash: number): boolean {
  if (filter.length < 2) return true;
  const bytes = filter.length - 1;
  const k = filter[bytes];
  if (k < 1 || k > 30) return true; // unknown encoding: never claim absence
  const nbits = bytes * 8;
  let h = hash;
  const delta = ((h >>> 17) | (h << 15)) >>> 0;
  for (let j = 0; j < k; j++) {
    const pos = h % nbits;
    if ((filter[pos >>> 3] & (1 << (pos & 7))) === 0) return false;
    h = (h + delta) >>> 0;
  }
  return true;
}
