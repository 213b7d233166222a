// Blocks and bloom filters: encode/decode round trips across restart points, seeks in both
// directions, and the filter's false-positive rate with no false negatives.
import { describe, expect, test } from "bun:test";
import { BlockBuilder, BlockIterator } from "../../src/lsm/block.ts";
import { bloomHash, bloomMayContain, buildBloom } from "../../src/lsm/bloom.ts";
import { ByteWriter, compareBytes, KIND_DEL, KIND_PUT } from "../../src/lsm/coding.ts";
import { LsmError } from "../../src/lsm/errors.ts";
import { bytes, key, rng, text } from "./helpers.ts";

function buildBlock(n: number, interval: number): Uint8Array {
  const b = new BlockBuilder(interval);
  // Each key twice (seq 2 put, seq 1 del) to exercise same-user-key ordering.
  for (let i = 0; i < n; i++) {
    b.add(key(i * 2), 2, KIND_PUT, bytes(`value-${i}`));
    b.add(key(i * 2), 1, KIND_DEL, new Uint8Array(0));
  }
  const w = new ByteWriter();
  b.finishInto(w);
  return w.finish();
}

describe("block", () => {
  test("seek skips entries by their shared prefix and lands where a compare of every entry does", () => {
    const r = rng(42);
    // Keys sharing prefixes of every length with their neighbours, some user keys at two sequences.
    const alphabet = "ab\u00ff";
    const keys = new Map<string, Uint8Array>();
    for (let i = 0; i < 600; i++) {
      const len = 1 + Math.floor(r() * 7);
      const k = Uint8Array.from({ length: len }, () => alphabet.charCodeAt(Math.floor(r() * 3)) & 0xff);
      keys.set(k.join(","), k);
    }
    const sorted = [...keys.values()].sort(compareBytes);
    const entries: [Uint8Array, number][] = sorted.flatMap((k, i): [Uint8Array, number][] => (i % 5 === 0 ? [[k, 8], [k, 3]] : [[k, 5]]));
    const order = (a: [Uint8Array, number], k: Uint8Array, seq: number) => compareBytes(a[0], k) || seq - a[1];
    for (const interval of [1, 4, 16]) {
      const b = new BlockBuilder(interval);
      for (const [k, seq] of entries) b.add(k, seq, KIND_PUT, bytes("v"));
      const w = new ByteWriter();
      b.finishInto(w);
      const it = new BlockIterator(w.finish());
      const targets = [...sorted, ...Array.from({ length: 300 }, () => Uint8Array.from({ length: Math.floor(r() * 8) }, () => Math.floor(r() * 256)))];
      for (const t of targets) {
        for (const seq of [Number.MAX_SAFE_INTEGER, 8, 5, 3, 1]) {
          const want = entries.findIndex((e) => order(e, t, seq) >= 0);
          it.seek(t, seq);
          const got = it.valid() ? `${[...it.key()].join(",")}@${it.seq()}` : "end";
          expect(got).toBe(want < 0 ? "end" : `${[...entries[want]![0]].join(",")}@${entries[want]![1]}`);
        }
      }
    }
  });

  test("round trip forward and backward across restart points", () => {
    const data = buildBlock(100, 16);
    const it = new BlockIterator(data);
    const seen: string[] = [];
    for (it.seekToFirst(); it.valid(); it.next()) seen.push(`${text(it.key())}@${it.seq()}/${it.kind()}`);
    expect(seen.length).toBe(200);
    expect(seen[0]).toBe("key00000000@2/1");
    expect(seen[1]).toBe("key00000000@1/0");
    expect(seen[199]).toBe("key00000198@1/0");
    const back: string[] = [];
    for (it.seekToLast(); it.valid(); it.prev()) back.push(`${text(it.key())}@${it.seq()}/${it.kind()}`);
    expect(back).toEqual(seen.slice().reverse());
  });

  test("seek finds the first entry at or after (key, seq)", () => {
    for (const interval of [1, 3, 16]) {
      const it = new BlockIterator(buildBlock(50, interval));
      it.seek(key(10), Number.MAX_SAFE_INTEGER);
      expect(text(it.key())).toBe("key00000010");
      expect(it.seq()).toBe(2);
      expect(text(it.value())).toBe("value-5");
      it.seek(key(10), 1); // skips the seq-2 version
      expect(it.seq()).toBe(1);
      expect(it.kind()).toBe(KIND_DEL);
      it.seek(key(11), 5); // absent: lands on the next key
      expect(text(it.key())).toBe("key00000012");
      it.seek(key(0), 0); // after every version of key 0
      expect(text(it.key())).toBe("key00000002");
      it.seek(key(1000), 5);
      expect(it.valid()).toBe(false);
      it.seek(bytes(""), 5);
      expect(text(it.key())).toBe("key00000000");
    }
  });

  test("a malformed block is reported as corruption with its location", () => {
    const data = buildBlock(10, 4);
    data[data.length - 4] = 200; // absurd restart count
    expect(() => new BlockIterator(data, "000007.sst", 4096)).toThrow(LsmError);
    try {
      new BlockIterator(data, "000007.sst", 4096);
    } catch (e) {
      expect((e as LsmError).code).toBe("CORRUPTION");
      expect((e as LsmError).message).toContain("000007.sst");
      expect((e as LsmError).offset).toBe(4096);
    }
  });
});

describe("bloom filter", () => {
  test("no false negatives; false positives under 2.5% at 10 bits/key", () => {
    const n = 10_000;
    const hashes = new Uint32Array(n);
    for (let i = 0; i < n; i++) hashes[i] = bloomHash(key(i));
    const filter = buildBloom(hashes, n, 10);
    for (let i = 0; i < n; i++) expect(bloomMayContain(filter, bloomHash(key(i)))).toBe(true);
    let fp = 0;
    const probes = 10_000;
    for (let i = 0; i < probes; i++) if (bloomMayContain(filter, bloomHash(key(n + 1_000_000 + i)))) fp++;
    expect(fp / probes).toBeLessThan(0.025);
    expect(fp).toBeGreaterThan(0); // a filter claiming zero false positives would be suspect at this size
  });

  test("an empty filter admits nothing, a malformed one admits everything", () => {
    const empty = buildBloom(new Uint32Array(0), 0, 10);
    expect(bloomMayContain(empty, bloomHash(key(1)))).toBe(false);
    expect(bloomMayContain(new Uint8Array([0xff, 0]), bloomHash(key(1)))).toBe(true);
  });
});
