// Runs inside headless Chromium: a connect-web Clerk watches a prefix from a past revision (replayed
// from the node's history) and sees a live write too; a raw gRPC-Web Watch stream does the same.
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { Clerk } from "../../src/kv/client.ts";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";

const here = (globalThis as unknown as { location: { search: string } }).location;

async function run(): Promise<unknown> {
  const params = new URLSearchParams(here.search);
  const addrs = params.get("addrs")!.split(",");
  const prefix = params.get("prefix")!;
  const startRevision = Number(params.get("rev"));
  const expected = Number(params.get("count"));
  const clerk = new Clerk({ addrs, transport: (baseUrl) => createConnectTransport({ baseUrl }) });
  const abort = new AbortController();
  const seen: string[] = [];
  const watching = (async () => {
    for await (const batch of clerk.watch(prefix, { prefix: true, startRevision, signal: abort.signal })) {
      for (const e of batch.events) seen.push(`${e.type} ${e.kv.key}=${e.kv.value}@${e.kv.modRevision}`);
      if (seen.length >= expected + 1) abort.abort();
    }
  })();
  // A live write once the replayed events are in.
  for (let i = 0; i < 200 && seen.length < expected; i++) await new Promise((r) => setTimeout(r, 50));
  await clerk.put(`${prefix}live`, "now");
  await Promise.race([watching, new Promise((r) => setTimeout(r, 10_000))]);
  abort.abort();

  // gRPC-Web, server streaming: the first answer says created, then the replayed events.
  const grpcWeb = createClient(KVService, createGrpcWebTransport({ baseUrl: `http://${addrs[0]}` }));
  const raw = new AbortController();
  let created = false;
  let grpcWebEvents = 0;
  const encoder = new TextEncoder();
  const end = encoder.encode(prefix);
  end[end.length - 1]!++;
  try {
    for await (const response of grpcWeb.watch({ key: encoder.encode(prefix), rangeEnd: end, startRevision: BigInt(startRevision) }, { signal: raw.signal })) {
      if (response.created) created = true;
      grpcWebEvents += response.events.length;
      if (grpcWebEvents >= expected) break;
    }
  } finally {
    raw.abort();
  }
  return { seen, grpcWebCreated: created, grpcWebEvents };
}

run().then(
  (result) => fetch("/result", { method: "POST", body: JSON.stringify({ ok: true, result }) }),
  (error) => fetch("/result", { method: "POST", body: JSON.stringify({ ok: false, error: String(error?.stack ?? error) }) }),
);
