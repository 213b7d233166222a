// The numeric index search lands where a plain block seek does, for every shape of key set:
// long shared prefixes, keys shorter than the six compared bytes, runs of equal numbers (many
// keys alike past the prefix), several sequence numbers of one user key, targets outside.
import { describe, expect, test } from "bun:test";
import { BlockBuilder, BlockIterator } from "../../src/lsm/block.ts";
import { ByteWriter, compareBytes, KIND_PUT } from "../../src/lsm/coding.ts";
import { IndexSearch } from "../../src/lsm/index-search.ts";
import { bytes, rng } from "./helpers.ts";

/** An index-shaped block (restart interval 1) over sorted (user key, seq) entries. */
function indexBlock(entries: [Uint8Array, number][]): Uint8Array {
  const b = new BlockBuilder(1);
  for (const [k, seq] of entries) b.add(k, seq, KIND_PUT, bytes("handle"));
  const w = new ByteWriter();
  b.finishInto(w);
  return w.finish();
}

function position(it: BlockIterator): string {
  return it.valid() ? `${[...it.key()].join(".")}@${it.seq()}` : "end";
}

function sorted(keys: Uint8Array[]): [Uint8Array, number][] {
  const uniq = [...new Map(keys.map((k) => [k.join(","), k])).values()].sort(compareBytes);
  // Some user keys twice (newer sequence first), as an index holds when a key spans two blocks.
  return uniq.flatMap((k, i): [Uint8Array, number][] => (i % 7 === 0 ? [[k, 9], [k, 4]] : [[k, 5]]));
}

const shapes: Record<string, (r: () => number) => Uint8Array[]> = {
  "decimal keys with a long shared prefix": (r) => Array.from({ length: 400 }, () => bytes(`0000000000${String(Math.floor(r() * 1e6)).padStart(6, "0")}`)),
  "keys alike for many bytes past the prefix": (r) => Array.from({ length: 300 }, () => bytes(`user:aaaaaaaaaa${Math.floor(r() * 1000)}`)),
  "short keys, some shorter than six bytes past the prefix": (r) => Array.from({ length: 200 }, () => bytes(`k${Math.floor(r() * 5000).toString(36)}`)),
  "binary keys with every byte value": (r) => Array.from({ length: 300 }, () => Uint8Array.from({ length: 1 + Math.floor(r() * 9) }, () => Math.floor(r() * 256))),
  "one key": () => [bytes("only")],
};

describe("index search", () => {
  for (const [shape, make] of Object.entries(shapes)) {
    test(shape, () => {
      const r = rng(shape.length);
      const entries = sorted(make(r));
      const block = indexBlock(entries);
      const search = IndexSearch.build(new BlockIterator(block));
      expect(search).not.toBeNull();
      const plain = new BlockIterator(block);
      const fast = new BlockIterator(block);
      const targets = [...make(r), ...entries.map(([k]) => k), bytes(""), bytes("zzzzzzzzzzzzzzzzzzzz"), Uint8Array.of(0), Uint8Array.of(255, 255)];
      for (const t of targets) {
        for (const seq of [Number.MAX_SAFE_INTEGER, 9, 5, 4, 1]) {
          plain.seek(t, seq);
          search!.seek(fast, t, seq);
          expect(position(fast)).toBe(position(plain));
        }
      }
    });
  }
});
