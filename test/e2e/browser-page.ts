// Runs inside headless Chromium (bundled by Bun.build): a connect-web Clerk and a gRPC-Web client
// talk to kvraft nodes on another origin through CORS, then report back to the page's own server.
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { Clerk } from "../../src/kv/client.ts";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";

// The project's tsconfig has no DOM lib; this is the one browser global the page needs.
const here = (globalThis as unknown as { location: { search: string; origin: string } }).location;

async function run(): Promise<unknown> {
  const params = new URLSearchParams(here.search);
  const addrs = params.get("addrs")!.split(",");
  const key = params.get("key")!;
  if (params.get("mode") === "probe") {
    // One plain call, no retries: its error is exactly what the browser did with the response.
    const client = createClient(KVService, createConnectTransport({ baseUrl: `http://${addrs[0]}` }));
    return { status: (await client.getStatus({})).state };
  }
  const operationTimeoutMs = Number(params.get("timeoutMs") ?? "15000");
  const clerk = new Clerk({ addrs, transport: (baseUrl) => createConnectTransport({ baseUrl }), operationTimeoutMs });
  await clerk.put(key, "from");
  await clerk.append(key, "-browser");
  const afterAppend = await clerk.get(key);
  const grpcWeb = createClient(KVService, createGrpcWebTransport({ baseUrl: `http://${addrs[0]}` }));
  // Any node answers; a follower says ErrWrongLeader, which still proves the protocol works.
  const grpcWebAnswer = await grpcWeb.command({ key, op: Op.GET });
  const deleted = await clerk.delete(key);
  const afterDelete = await clerk.get(key);
  const status = await clerk.getStatus();
  return {
    afterAppend,
    grpcWebErr: grpcWebAnswer.err,
    deleted,
    afterDelete,
    roles: status.map((s) => s.state),
    origin: here.origin,
  };
}

run().then(
  (result) => fetch("/result", { method: "POST", body: JSON.stringify({ ok: true, result }) }),
  (error) => fetch("/result", { method: "POST", body: JSON.stringify({ ok: false, error: String(error?.stack ?? error) }) }),
);
