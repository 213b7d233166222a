// Child of clerk-transport.test.ts: one call through the lean transport, then nothing: the process
// must exit on its own (an idle session is unref'd). Usage: bun clerk-transport-child.ts BASE_URL
import { createClient } from "@connectrpc/connect";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { createClerkTransport } from "../../src/rpc/client/clerk-transport.ts";

const client = createClient(KVService, createClerkTransport({ baseUrl: process.argv[2]! }));
console.log((await client.command({ key: "k", value: "child", op: Op.PUT }, { timeoutMs: 5_000 })).value);
