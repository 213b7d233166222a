// The skeleton's own checks: the client API keeps eRaft's wire contract.
import { describe, expect, test } from "bun:test";
import { create, toBinary, fromBinary, toJson } from "@bufbuild/protobuf";
import {
  CommandRequestSchema,
  CommandResponseSchema,
  GetStatusResponseSchema,
  KVService,
  Op,
} from "../src/gen/kvraftpb/kvraft_pb.ts";

describe("kvraftpb wire compatibility with eRaft", () => {
  test("service and method names are eRaft's", () => {
    expect(KVService.typeName).toBe("kvraftpb.KVService");
    // eRaft's two methods keep their names; later RPCs are additions beside them.
    expect(Object.keys(KVService.method)).toEqual(expect.arrayContaining(["command", "getStatus"]));
    expect(KVService.method.command.name).toBe("Command");
    expect(KVService.method.getStatus.name).toBe("GetStatus");
  });

  test("CommandRequest field numbers are eRaft's", () => {
    const request = create(CommandRequestSchema, {
      key: "k",
      value: "v",
      op: Op.APPEND,
      clientId: 7n,
      commandId: 9n,
    });
    // key=1 (0x0a), value=2 (0x12), op=3 (0x18), client_id=4 (0x20), command_id=5 (0x28)
    expect([...toBinary(CommandRequestSchema, request)]).toEqual([
      0x0a, 1, 0x6b, 0x12, 1, 0x76, 0x18, 1, 0x20, 7, 0x28, 9,
    ]);
    expect(fromBinary(CommandRequestSchema, toBinary(CommandRequestSchema, request)).key).toBe("k");
  });

  test("Op values and JSON names are eRaft's", () => {
    expect([Op.PUT, Op.APPEND, Op.GET]).toEqual([0, 1, 2]);
    const json = toJson(CommandRequestSchema, create(CommandRequestSchema, { key: "a", op: Op.GET, clientId: 1n }));
    expect(json).toEqual({ key: "a", op: "GET", clientId: "1" });
  });

  test("responses decode as eRaft sends them", () => {
    const eRaftBytes = new Uint8Array([0x0a, 2, 0x4f, 0x4b, 0x12, 1, 0x78]); // err="OK", value="x"
    const response = fromBinary(CommandResponseSchema, eRaftBytes);
    expect(response.err).toBe("OK");
    expect(response.value).toBe("x");
    const status = fromBinary(
      GetStatusResponseSchema,
      new Uint8Array([0x08, 2, 0x12, 6, ...new TextEncoder().encode("Leader"), 0x18, 3]),
    );
    expect(status.id).toBe(2n);
    expect(status.state).toBe("Leader");
    expect(status.term).toBe(3n);
  });
});
