// A map keyed by byte strings without turning each key into a JS string: buckets by a 32-bit
// FNV-1a hash of the bytes, keys compared byte by byte. The apply path looks every written key up
// in one (ApplyBatch), where a latin1 string per lookup was a tenth of the apply's time.

interface Slot<V> {
  key: Uint8Array;
  value: V;
  /** The next key with the same hash (rare). */
  next: Slot<V> | null;
}

export class ByteKeyMap<V> {
  // One object per key, chained on a hash collision: no bucket array to allocate per key.
  private readonly slots = new Map<number, Slot<V>>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  get(key: Uint8Array): V | undefined {
    for (let slot = this.slots.get(hashBytes(key)) ?? null; slot !== null; slot = slot.next) {
      if (sameBytes(slot.key, key)) return slot.value;
    }
    return undefined;
  }

  set(key: Uint8Array, value: V): void {
    const hash = hashBytes(key);
    const first = this.slots.get(hash);
    for (let slot = first ?? null; slot !== null; slot = slot.next) {
      if (sameBytes(slot.key, key)) {
        slot.value = value;
        return;
      }
    }
    this.slots.set(hash, { key, value, next: first ?? null });
    this.count++;
  }

  /** Every entry, in no particular order. */
  *entries(): IterableIterator<[Uint8Array, V]> {
    for (const first of this.slots.values()) for (let slot: Slot<V> | null = first; slot !== null; slot = slot.next) yield [slot.key, slot.value];
  }
}

function hashBytes(bytes: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) hash = Math.imul(hash ^ bytes[i]!, 0x01000193);
  return hash;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
