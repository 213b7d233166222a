// The reflection-free JSON codec agrees with @bufbuild/protobuf: whatever it parses, the library
// parses to the same message; whatever the library refuses, it leaves alone; it writes the same text.
import { describe, expect, test } from "bun:test";
import { create, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf";
import { CommandRequestSchema, CommandResponseSchema, GetStatusResponseSchema, Op, type CommandRequest } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { flatJson } from "../../src/rpc/server/flat-json.ts";
import { Rng } from "../../src/util/rng.ts";

const request = flatJson(CommandRequestSchema)!;
const response = flatJson(CommandResponseSchema)!;

describe("flat JSON", () => {
  test("only flat messages get a codec", () => {
    expect(request).not.toBeNull();
    expect(response).not.toBeNull();
    expect(flatJson(GetStatusResponseSchema)).toBeNull(); // repeated members
  });

  const inputs = [
    `{"key":"a","value":"1","op":"PUT","clientId":5,"commandId":1}`,
    `{"key":"a","op":"GET","clientId":"5","commandId":"18446744073709551615"}`,
    `{"key":"a","op":"GET","clientId":"-9223372036854775808","commandId":"9223372036854775807"}`,
    `{"key":"a","op":"GET","clientId":"9223372036854775808"}`,
    `{"key":"ü☃","op":2,"client_id":7}`,
    `{"key":"a","clientId":7,"client_id":8}`,
    `{"key":"a","op":"TRUNCATE"}`,
    `{"key":"a","op":7}`,
    `{"key":"a","op":null}`,
    `{"key":12}`,
    `{"key":"a","extra":1}`,
    `{"key":"a","clientId":1.5}`,
    `{"key":"a","clientId":1e3}`,
    `{"key":"a","clientId":"0x10"}`,
    `{"key":"a","clientId":"007"}`,
    `{"key":"a","clientId":9007199254740993}`,
    `[1,2]`,
    `null`,
    `"x"`,
    `{not json`,
    `{}`,
    `{"key":"a","key":"b"}`,
    `{"key":"a:\\\"b","value":"x\\"}`,
    `{"key":"a","value":"\\\"","key":"c"}`,
  ];
  for (const text of inputs) {
    test(`parse ${text}`, () => {
      let expected: Uint8Array | null = null;
      try {
        expected = toBinary(CommandRequestSchema, fromJsonString(CommandRequestSchema, text, { ignoreUnknownFields: false }));
      } catch {
        expected = null;
      }
      const ours = request.parse(text);
      if (ours === undefined) return; // left to the library, which answers as it always did
      expect(expected).not.toBeNull();
      expect(Buffer.from(toBinary(CommandRequestSchema, ours as unknown as CommandRequest)).equals(Buffer.from(expected!))).toBe(true);
    });
  }

  test("the plain requests of clients are taken (not left to the library)", () => {
    expect(request.parse(inputs[0]!)).toBeDefined();
    expect(request.parse(`{"key":"a","op":"GET","clientId":"5","commandId":"9"}`)).toBeDefined();
    expect(request.parse(`{"key":"a","value":"${"v".repeat(100)}","op":"PUT","clientId":"5","commandId":"1"}`)).toBeDefined();
  });

  test("writes what toJsonString writes, for random responses and requests", () => {
    const rng = new Rng(99);
    const pick = <T>(values: T[]): T => values[Math.floor(rng.next() * values.length)]!;
    for (let i = 0; i < 500; i++) {
      const r = create(CommandResponseSchema, { err: pick(["", "OK", "ErrNoKey", "ErrWrongLeader"]), value: pick(["", "x", "ü\"\\\n", "v".repeat(50)]) });
      if (rng.next() < 0.5) r.leader = { case: "leaderId", value: pick([0n, 2n, -1n, 9223372036854775807n]) };
      expect(response.write(r)).toBe(toJsonString(CommandResponseSchema, r));
      const q = create(CommandRequestSchema, {
        key: pick(["", "k", "ключ"]),
        value: pick(["", "v"]),
        op: pick([Op.PUT, Op.GET, Op.APPEND, Op.DELETE, 9 as Op]),
        clientId: pick([0n, 1n, -5n, 2n ** 62n]),
        commandId: pick([0n, 7n]),
      });
      expect(request.write(q)).toBe(toJsonString(CommandRequestSchema, q));
    }
  });
});
