// Blocks and bloom filters: encode/decode round trips across restart points, seeks in both
// directions, and the filter's false-positive rate with no false negatives.
import { describe, expect, test } from "bun:test";
import { BlockBuilder, BlockIterator } from "../../src/lsm/block.ts";
import { bloomHash, bloomMayContain, buildBloom } from "../../src/lsm/bloom.ts";
import { ByteWriter, KIND_DEL, KIND_PUT } from "../../src/lsm/coding.ts";
import { LsmError } from "../../src/lsm/errors.ts";
import { bytes, key, text } from "./helpers.ts";

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
