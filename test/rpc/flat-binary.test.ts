// The reflection-free binary decoder gives exactly protobuf-es's fromBinary message for every plain
// encoding of kvraftpb's CommandRequest and BatchRequest, and declines (undefined, so the library
// answers) whatever it does not take: unknown fields, other wire types, truncation, invalid UTF-8.
import { describe, expect, test } from "bun:test";
import { create, fromBinary, toBinary, type DescMessage } from "@bufbuild/protobuf";
import { BatchRequestSchema, CommandRequestSchema, CommandResponseSchema, GetStatusResponseSchema, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { flatBinary } from "../../src/rpc/server/flat-binary.ts";
import { Rng } from "../../src/util/rng.ts";

/** A whole number in [low, high]. */
const between = (rng: Rng, low: number, high: number) => low + rng.int(high - low + 1);

const command = flatBinary(CommandRequestSchema)!;
const batch = flatBinary(BatchRequestSchema)!;

function randomString(rng: Rng): string {
  const pool = ["a", "z", "0", " ", "é", "日", "😀", "\u0000", "\uFEFF", "\"", "\\"];
  let s = "";
  const n = between(rng, 0, 12);
  for (let i = 0; i < n; i++) s += pool[between(rng, 0, pool.length - 1)];
  return s;
}

function randomId(rng: Rng): bigint {
  const choices = [0n, 1n, 2n ** 31n, 2n ** 53n + 1n, 2n ** 63n - 1n, -1n, -(2n ** 63n), BigInt(between(rng, 0, 1_000_000))];
  return choices[between(rng, 0, choices.length - 1)]!;
}

function randomCommand(rng: Rng) {
  return create(CommandRequestSchema, {
    key: randomString(rng),
    value: between(rng, 0, 3) === 0 ? "v".repeat(between(rng, 0, 3000)) : randomString(rng),
    op: [Op.PUT, Op.APPEND, Op.GET, Op.DELETE, 7 as Op, -3 as Op][between(rng, 0, 5)]!,
    clientId: randomId(rng),
    commandId: randomId(rng),
    registered: between(rng, 0, 1) === 1,
  });
}

function same(schema: DescMessage, decoder: { decode(b: Uint8Array): unknown }, bytes: Uint8Array): "decoded" | "declined" {
  const ours = decoder.decode(bytes);
  let theirs: unknown;
  try {
    theirs = fromBinary(schema, bytes);
  } catch {
    expect(ours).toBeUndefined();
    return "declined";
  }
  if (ours === undefined) return "declined";
  expect(ours).toEqual(theirs as object);
  return "decoded";
}

describe("flat binary decoding", () => {
  test("every plain CommandRequest and BatchRequest decodes as fromBinary does", () => {
    const rng = new Rng(7);
    for (let i = 0; i < 500; i++) {
      const message = randomCommand(rng);
      expect(same(CommandRequestSchema, command, toBinary(CommandRequestSchema, message))).toBe("decoded");
    }
    for (let i = 0; i < 50; i++) {
      const message = create(BatchRequestSchema, { commands: Array.from({ length: between(rng, 0, 40) }, () => randomCommand(rng)) });
      expect(same(BatchRequestSchema, batch, toBinary(BatchRequestSchema, message))).toBe("decoded");
    }
  });

  test("repeated scalar fields: the last one wins, as in the library", () => {
    const a = toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: "first", clientId: 5n }));
    const b = toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: "second", clientId: 9n }));
    expect(same(CommandRequestSchema, command, new Uint8Array([...a, ...b]))).toBe("decoded");
  });

  test("declines unknown fields, other wire types, truncation and invalid UTF-8", () => {
    const plain = toBinary(CommandRequestSchema, create(CommandRequestSchema, { key: "k", value: "v", clientId: 3n }));
    const cases = [
      new Uint8Array([...plain, 0x48, 0x01]), // field 9 (unknown): the library keeps it, we decline
      new Uint8Array([0x0d, 1, 2, 3, 4]), // key with wire type 5
      plain.subarray(0, plain.length - 1), // truncated
      new Uint8Array([0x0a, 0x02, 0xc3, 0x28]), // key "\xc3\x28": invalid UTF-8
      new Uint8Array([0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), // 11-byte varint
    ];
    for (const bytes of cases) {
      expect(command.decode(bytes)).toBeUndefined();
      same(CommandRequestSchema, command, bytes);
    }
    // A random walk of byte flips: never a different answer from the library's.
    const rng = new Rng(11);
    for (let i = 0; i < 2000; i++) {
      const bytes = toBinary(BatchRequestSchema, create(BatchRequestSchema, { commands: [randomCommand(rng), randomCommand(rng)] }));
      bytes[between(rng, 0, bytes.length - 1)] = between(rng, 0, 255);
      same(BatchRequestSchema, batch, bytes);
    }
  });

  test("messages outside the flat shape get no decoder", () => {
    expect(flatBinary(CommandResponseSchema)).toBeNull(); // a oneof (the leader hint)
    expect(flatBinary(GetStatusResponseSchema)).toBeNull();
  });
});
