// The memtable's internal key order (user key ascending, newest seq first) and the merging
// iterator that combines several sorted sources, in both directions.
import { describe, expect, test } from "bun:test";
import { compareBytes, KIND_DEL, KIND_PUT } from "../../src/lsm/coding.ts";
import { MergingIterator, type InternalIterator } from "../../src/lsm/iterator.ts";
import { Memtable } from "../../src/lsm/memtable.ts";
import { bytes, key, rng, text } from "./helpers.ts";

function dump(it: InternalIterator): string[] {
  const out: string[] = [];
  for (it.seekToFirst(); it.valid(); it.next()) out.push(`${text(it.key())}@${it.seq()}`);
  return out;
}

describe("memtable", () => {
  test("orders by user key, then newest sequence first", () => {
    const m = new Memtable(1);
    m.add(bytes("b"), 1, KIND_PUT, bytes("b1"));
    m.add(bytes("a"), 2, KIND_PUT, bytes("a2"));
    m.add(bytes("b"), 3, KIND_DEL, new Uint8Array(0));
    m.add(bytes("ab"), 4, KIND_PUT, bytes("ab4"));
    m.add(bytes("a"), 5, KIND_PUT, bytes("a5"));
    expect(dump(m.iterator())).toEqual(["a@5", "a@2", "ab@4", "b@3", "b@1"]);
    expect(text(m.get(bytes("a"), 10)!.value)).toBe("a5");
    expect(text(m.get(bytes("a"), 4)!.value)).toBe("a2");
    expect(m.get(bytes("a"), 1)).toBeUndefined();
    expect(m.get(bytes("b"), 3)!.kind).toBe(KIND_DEL);
    expect(text(m.get(bytes("b"), 2)!.value)).toBe("b1");
    expect(m.get(bytes("c"), 10)).toBeUndefined();
  });

  test("keys that differ late, only in length, or in zero and 0xff bytes sort as unsigned bytes", () => {
    const m = new Memtable(1);
    const r = rng(5);
    const keys: Uint8Array[] = [new Uint8Array(0)];
    for (let i = 0; i < 400; i++) {
      // Lengths around the 18 bytes held as numbers in each node; bytes drawn from {0, 1, 0xfe, 0xff}.
      const k = new Uint8Array((r() * 26) | 0);
      for (let j = 0; j < k.length; j++) k[j] = [0, 1, 0xfe, 0xff][(r() * 4) | 0];
      if (r() < 0.3 && keys.length > 1) k.set(keys[keys.length - 1].subarray(0, Math.min(k.length, keys[keys.length - 1].length)));
      keys.push(k);
    }
    keys.forEach((k, i) => m.add(k, i + 1, KIND_PUT, bytes(String(i))));
    const expected = keys
      .map((k, i) => ({ k, seq: i + 1 }))
      .sort((a, b) => compareBytes(a.k, b.k) || b.seq - a.seq)
      .map((e) => `${[...e.k].join(".")}@${e.seq}`);
    const it = m.iterator();
    const got: string[] = [];
    for (it.seekToFirst(); it.valid(); it.next()) got.push(`${[...it.key()].join(".")}@${it.seq()}`);
    expect(got).toEqual(expected);
    // Seeks land on the first entry at or after the target, also for absent targets.
    for (let i = 0; i < 200; i++) {
      const target = keys[(r() * keys.length) | 0].slice();
      if (r() < 0.5 && target.length > 0) target[target.length - 1] ^= 1;
      it.seek(target, Number.MAX_SAFE_INTEGER);
      const first = expected.find((e) => compareBytes(new Uint8Array(e.split("@")[0] === "" ? [] : e.split("@")[0].split(".").map(Number)), target) >= 0);
      expect(it.valid() ? `${[...it.key()].join(".")}@${it.seq()}` : undefined).toBe(first);
    }
  });

  test("an iterator keeps its place while inserts split leaves around it", () => {
    const m = new Memtable(1);
    const r = rng(9);
    const all: { k: number; seq: number }[] = [];
    let seq = 0;
    const insert = (): void => {
      const k = (r() * 5000) | 0;
      m.add(key(k), ++seq, KIND_PUT, bytes(`${seq}`));
      all.push({ k, seq });
    };
    // Keys are ASCII, so string order is byte order.
    const order = (): string[] =>
      all
        .map((e) => ({ name: text(key(e.k))!, seq: e.seq }))
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : b.seq - a.seq))
        .map((e) => `${e.name}@${e.seq}`);
    for (let i = 0; i < 300; i++) insert();
    const it = m.iterator();
    it.seek(key(2500), Number.MAX_SAFE_INTEGER);
    let forward = true;
    for (let step = 0; step < 300 && it.valid(); step++) {
      const here = `${text(it.key())}@${it.seq()}`;
      for (let i = 0; i < 4; i++) insert(); // enough inserts to split leaves near the cursor
      if (step % 60 === 59) forward = !forward;
      const now = order();
      const at = now.indexOf(here);
      if (forward) it.next();
      else it.prev();
      const expected = forward ? now[at + 1] : now[at - 1];
      expect(it.valid() ? `${text(it.key())}@${it.seq()}` : undefined).toBe(expected);
    }
  });

  test("point reads through the hash index agree with a search at every snapshot", () => {
    const m = new Memtable(1);
    const r = rng(11);
    // Every (key, seq) written, to answer "newest version at or below seq" by brute force.
    const versions = new Map<number, { seq: number; kind: number; value: string }[]>();
    for (let seq = 1; seq <= 3000; seq++) {
      // A few hot keys get dozens of versions (more than a point read walks before searching).
      const k = r() < 0.3 ? (r() * 3) | 0 : (r() * 800) | 0;
      const kind = r() < 0.1 ? KIND_DEL : KIND_PUT;
      const value = kind === KIND_PUT ? `v${seq}` : "";
      m.add(key(k), seq, kind, bytes(value));
      const list = versions.get(k) ?? [];
      list.push({ seq, kind, value });
      versions.set(k, list);
    }
    for (let probe = 0; probe < 3000; probe++) {
      const k = (r() * 900) | 0; // some keys were never written
      const at = 1 + ((r() * 3000) | 0);
      const newest = (versions.get(k) ?? []).filter((v) => v.seq <= at).pop();
      const got = m.get(key(k), at);
      if (newest === undefined) {
        expect(got).toBeUndefined();
      } else {
        expect(got?.kind).toBe(newest.kind);
        expect(text(got!.value)).toBe(newest.value);
      }
    }
  });

  test("point reads between inserts see every insert before them (the index catches up lazily)", () => {
    const m = new Memtable(1);
    const r = rng(12);
    const newest = new Map<number, string>();
    for (let seq = 1; seq <= 2000; seq++) {
      const k = (r() * 50) | 0;
      m.add(key(k), seq, KIND_PUT, bytes(`v${seq}`));
      newest.set(k, `v${seq}`);
      // Reads after runs of 0..4 inserts: some find the index current, most make it catch up.
      if (r() < 0.3) {
        const probe = (r() * 60) | 0;
        const got = m.get(key(probe), seq);
        if (newest.has(probe)) expect(text(got!.value)).toBe(newest.get(probe)!);
        else expect(got).toBeUndefined();
        expect(text(m.get(key(k), seq)!.value)).toBe(`v${seq}`);
      }
    }
  });

  test("random inserts come out sorted; prev walks the same order backwards", () => {
    const m = new Memtable(1);
    const r = rng(7);
    const expected: string[] = [];
    for (let seq = 1; seq <= 2000; seq++) {
      const k = (r() * 500) | 0;
      m.add(key(k), seq, KIND_PUT, bytes(String(seq)));
      expected.push(`${text(key(k))}@${seq}`);
    }
    expected.sort((a, b) => {
      const [ka, sa] = a.split("@");
      const [kb, sb] = b.split("@");
      return ka < kb ? -1 : ka > kb ? 1 : Number(sb) - Number(sa);
    });
    const it = m.iterator();
    expect(dump(it)).toEqual(expected);
    const back: string[] = [];
    for (it.seekToLast(); it.valid(); it.prev()) back.push(`${text(it.key())}@${it.seq()}`);
    expect(back).toEqual(expected.slice().reverse());
    expect(m.count).toBe(2000);
    expect(m.bytes).toBeGreaterThan(2000 * 11);
  });
});

describe("merging iterator", () => {
  test("merges sources in internal order and switches direction in the middle", () => {
    const a = new Memtable(1);
    const b = new Memtable(2);
    const c = new Memtable(3);
    for (let i = 0; i < 30; i++) {
      const target = [a, b, c][i % 3];
      target.add(key(i), 100 + i, KIND_PUT, bytes(`v${i}`));
    }
    b.add(key(3), 500, KIND_PUT, bytes("newer")); // same key in two sources
    const it = new MergingIterator([a.iterator(), b.iterator(), c.iterator()]);
    const all = dump(it);
    expect(all.length).toBe(31);
    expect(all.slice(3, 5)).toEqual(["key00000003@500", "key00000003@103"]);
    it.seek(key(10), Number.MAX_SAFE_INTEGER);
    expect(text(it.key())).toBe("key00000010");
    it.next();
    expect(text(it.key())).toBe("key00000011");
    it.prev();
    expect(text(it.key())).toBe("key00000010");
    it.prev();
    expect(text(it.key())).toBe("key00000009");
    it.next();
    it.next();
    expect(text(it.key())).toBe("key00000011");
    it.seekToLast();
    expect(text(it.key())).toBe("key00000029");
    it.prev();
    expect(text(it.key())).toBe("key00000028");
  });
});
