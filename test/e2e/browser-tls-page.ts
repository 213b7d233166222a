// Runs inside headless Chromium: connect-web (Connect and gRPC-Web) over https against kvraft nodes
// that require a bearer token, from another origin through CORS; reports back to its own server.
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { Clerk } from "../../src/kv/client.ts";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";

const here = (globalThis as unknown as { location: { search: string; origin: string } }).location;

async function run(): Promise<unknown> {
  const params = new URLSearchParams(here.search);
  const urls = params.get("urls")!.split(",");
  const key = params.get("key")!;
  const bearer: Interceptor = (next) => (request) => {
    request.header.set("Authorization", `Bearer ${params.get("token")}`);
    return next(request);
  };
  if (params.get("mode") === "probe") {
    // One plain call without the token: what the browser did with the answer (or the handshake).
    const client = createClient(KVService, createConnectTransport({ baseUrl: urls[0]! }));
    try {
      return { status: (await client.getStatus({})).state };
    } catch (error) {
      const e = ConnectError.from(error);
      return { code: Code[e.code], message: e.rawMessage };
    }
  }
  const clerk = new Clerk({ addrs: urls, transport: (baseUrl) => createConnectTransport({ baseUrl, interceptors: [bearer] }), operationTimeoutMs: 15_000 });
  await clerk.put(key, "over");
  await clerk.append(key, "-https");
  const value = await clerk.get(key);
  const grpcWeb = createClient(KVService, createGrpcWebTransport({ baseUrl: urls[0]!, interceptors: [bearer] }));
  const grpcWebAnswer = await grpcWeb.command({ key, op: Op.GET });
  return { value, grpcWebErr: grpcWebAnswer.err, origin: here.origin };
}

run().then(
  (result) => fetch("/result", { method: "POST", body: JSON.stringify({ ok: true, result }) }),
  (error) => fetch("/result", { method: "POST", body: JSON.stringify({ ok: false, error: String(error?.stack ?? error) }) }),
);
