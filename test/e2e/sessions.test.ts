// Issue 18 against three real kvserver processes: writes without ids, reused and stale command ids,
// registered sessions that expire or find the table full, the Clerk re-registering, APPEND past
// the value limit, eRaft-shaped gRPC requests answered so that eRaft's retrying Clerk stops, and
// malformed protobuf answered invalid_argument.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as http2 from "node:http2";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { ClerkError } from "../../src/kv/client.ts";
import { TestCluster } from "./harness.ts";

setDefaultTimeout(60_000);

// Long enough that the registrations of one test cannot expire between its steps on a loaded machine.
const SESSION_TTL_MS = 1500;
let cluster: TestCluster;

beforeAll(async () => {
  cluster = await TestCluster.start({ extraArgs: ["--session-ttl", String(SESSION_TTL_MS), "--max-sessions", "3"] });
  await cluster.waitForLeader();
});

afterAll(async () => {
  await cluster?.destroy();
});

/** A Connect client on the current leader (these raw requests do not follow leader hints). */
async function leaderClient(): Promise<Client<typeof KVService>> {
  const leader = await cluster.waitForLeader();
  return createClient(KVService, createConnectTransport({ baseUrl: `http://${cluster.addrs[leader]}`, httpVersion: "1.1" }));
}

async function refusal(promise: Promise<unknown>): Promise<ConnectError> {
  const error = await promise.then(() => null, (e: unknown) => e);
  expect(error).toBeInstanceOf(ConnectError);
  return error as ConnectError;
}

/** Lets every session idle past the TTL, then appends an entry whose timestamp expires them. */
async function expireIdleSessions(client: Client<typeof KVService>): Promise<void> {
  await Bun.sleep(SESSION_TTL_MS + 200);
  expect((await client.command({ key: "tick", value: "t", op: Op.PUT })).err).toBe("OK");
}

describe("sessions", () => {
  test("a write without clientId is applied every time (no session); stale or reused command ids are refused, never OK-but-not-applied", async () => {
    const client = await leaderClient();
    for (let i = 0; i < 2; i++) expect((await client.command({ key: "noid", value: "a", op: Op.APPEND })).err).toBe("OK");
    expect(await client.command({ key: "noid", op: Op.GET })).toMatchObject({ err: "OK", value: "aa" });

    const write = (value: string, commandId: bigint) => client.command({ key: "ids", value, op: Op.APPEND, clientId: 555n, commandId });
    expect((await write("x", 1n)).err).toBe("OK");
    expect((await write("x", 1n)).err).toBe("OK"); // a retry: answered, not applied again
    const reused = await refusal(write("y", 1n));
    expect(reused.code).toBe(Code.InvalidArgument);
    expect(reused.rawMessage).toMatch(/already used for a different command/);
    const max = (1n << 63n) - 1n;
    expect((await write("z", max)).err).toBe("OK");
    const stale = await refusal(write("w", 2n));
    expect(stale.code).toBe(Code.InvalidArgument);
    expect(stale.rawMessage).toMatch(/older than session 555's last command/);
    expect(await client.command({ key: "ids", op: Op.GET })).toMatchObject({ err: "OK", value: "xz" });
  });

  test("a registered session that expired is refused with failed_precondition and never applied twice; a full table refuses registrations", async () => {
    const client = await leaderClient();
    const session = await client.registerSession({});
    expect(session.err).toBe("OK");
    const write = () => client.command({ key: "reg", value: "1", op: Op.APPEND, clientId: session.clientId, commandId: 1n, registered: true });
    expect((await write()).err).toBe("OK");
    await expireIdleSessions(client);
    // The retry of a write that was applied: refused, not applied a second time.
    const expired = await refusal(write());
    expect(expired.code).toBe(Code.FailedPrecondition);
    expect(expired.rawMessage).toMatch(/has expired/);
    expect(await client.command({ key: "reg", op: Op.GET })).toMatchObject({ err: "OK", value: "1" });

    // Three slots: the fourth registration is refused while the three are live; no live session is evicted.
    for (let i = 0; i < 3; i++) expect((await client.registerSession({})).err).toBe("OK");
    const full = await refusal(client.registerSession({}));
    expect(full.code).toBe(Code.ResourceExhausted);
    expect(full.rawMessage).toMatch(/session table is full/);
    // Once they idle past the TTL, registration works again.
    await expireIdleSessions(client);
    expect((await client.registerSession({})).err).toBe("OK");
  });

  test("the Clerk registers, and after its session expired registers again and finishes the write", async () => {
    const client = await leaderClient();
    await expireIdleSessions(client);
    const clerk = cluster.clerk();
    await clerk.put("clerk", "a");
    const first = clerk.clientId;
    expect(first).toBeGreaterThan(0n);
    await expireIdleSessions(client);
    await clerk.append("clerk", "b");
    expect(clerk.clientId).not.toBe(first);
    expect(await clerk.get("clerk")).toBe("ab");
  });
});

describe("limits at apply", () => {
  test("APPEND past the value limit is refused with invalid_argument, the value stays as it was", async () => {
    const clerk = cluster.clerk({ callTimeoutMs: 10_000 });
    const chunk = "v".repeat(700_000); // two of them pass the 1 MiB value limit
    await clerk.append("grow", chunk);
    const error = await clerk.append("grow", chunk).then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(ClerkError);
    expect((error as ClerkError).code).toBe(Code.InvalidArgument);
    expect((error as ClerkError).message).toMatch(/larger than the value limit; it was not applied/);
    expect((await clerk.get("grow"))?.length).toBe(700_000);
    // A small append still fits, and a retry of the refused one is answered the same way, not applied.
    await clerk.append("grow", "!");
    expect((await clerk.get("grow"))?.length).toBe(700_001);
  });
});

describe("eRaft-shaped requests", () => {
  const definition = protoLoader.loadSync(path.join(import.meta.dir, "../../proto/kvraftpb/kvraft.proto"), { longs: String, enums: String, defaults: true });
  const loaded = grpc.loadPackageDefinition(definition) as any;

  /** eRaft's Clerk loop: an RPC error, ErrWrongLeader or ErrTimeout means "try the next server". */
  async function eRaftCommand(request: object): Promise<{ response: any; rpcs: number }> {
    const clients = cluster.addrs.map((addr) => new loaded.kvraftpb.KVService(addr, grpc.credentials.createInsecure()));
    try {
      let leader = 0;
      for (let rpcs = 1; rpcs <= 30; rpcs++) {
        const response = await new Promise<any>((resolve) => clients[leader].Command(request, (e: Error | null, r: any) => resolve(e ? null : r)));
        if (response === null || response.err === "ErrWrongLeader" || response.err === "ErrTimeout") {
          leader = (leader + 1) % clients.length;
          continue;
        }
        return { response, rpcs };
      }
      throw new Error("eRaft's Clerk would spin: 30 RPCs without an answer it returns");
    } finally {
      for (const c of clients) c.close();
    }
  }

  test("a refused request comes back as an err eRaft's Clerk returns; an empty key is accepted", async () => {
    const oversized = await eRaftCommand({ key: "k".repeat(5000), value: "v", op: "PUT", client_id: 901, command_id: 0 });
    expect(oversized.response.err).toMatch(/^ErrInvalidArgument: the key is 5000 bytes/);
    expect(oversized.rpcs).toBeLessThanOrEqual(4);
    const badOp = await eRaftCommand({ key: "k", op: 7, client_id: 901, command_id: 1 });
    expect(badOp.response.err).toMatch(/^ErrInvalidArgument: unknown op 7/);
    // eRaft's CLI sends an empty key when -key is left out; eRaft's server takes it, so do we.
    expect((await eRaftCommand({ key: "", value: "empty", op: "PUT", client_id: 901, command_id: 2 })).response.err).toBe("OK");
    expect((await eRaftCommand({ key: "", op: "GET", client_id: 901, command_id: 3 })).response).toMatchObject({ err: "OK", value: "empty" });
  });

  test("the same refusal to a Connect-native gRPC request (registered = true) is a gRPC error", async () => {
    const leader = await cluster.waitForLeader();
    const client = new loaded.kvraftpb.KVService(cluster.addrs[leader], grpc.credentials.createInsecure());
    try {
      const error = await new Promise<any>((resolve) =>
        client.Command({ key: "k".repeat(5000), op: "PUT", client_id: 7, command_id: 1, registered: true }, (e: any) => resolve(e)),
      );
      expect(error?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error?.details).toMatch(/the key is 5000 bytes/);
    } finally {
      client.close();
    }
  });
});

describe("wrong codes", () => {
  test("malformed protobuf and invalid UTF-8: invalid_argument over Connect (HTTP/1.1 and HTTP/2) and gRPC; the node stays up", async () => {
    const leader = await cluster.waitForLeader();
    const url = `http://${cluster.addrs[leader]}/kvraftpb.KVService/Command`;
    for (const body of [Uint8Array.of(0x0a, 0x05, 0x61), Uint8Array.of(0x0a, 0x02, 0xff, 0xfe)]) {
      const response = await fetch(url, { method: "POST", headers: { "content-type": "application/proto" }, body });
      expect(response.status).toBe(400);
      expect(((await response.json()) as { code: string }).code).toBe("invalid_argument");
      const enveloped = new Uint8Array(5 + body.length);
      new DataView(enveloped.buffer).setUint32(1, body.length, false);
      enveloped.set(body, 5);
      for (const contentType of ["application/proto", "application/grpc"]) {
        const status = await new Promise<string>((resolve, reject) => {
          const session = http2.connect(`http://${cluster.addrs[leader]}`);
          session.on("error", reject);
          const stream = session.request({ ":method": "POST", ":path": "/kvraftpb.KVService/Command", "content-type": contentType, te: "trailers" });
          let answer = "";
          stream.on("response", (h) => (answer = contentType === "application/proto" ? String(h[":status"]) : String(h["grpc-status"] ?? "")));
          stream.on("trailers", (t) => (answer = String(t["grpc-status"] ?? answer)));
          stream.on("data", () => {});
          stream.on("end", () => {
            session.close();
            resolve(answer);
          });
          stream.end(contentType === "application/proto" ? body : enveloped);
        });
        expect({ contentType, status }).toEqual({ contentType, status: contentType === "application/proto" ? "400" : "3" });
      }
    }
    const clerk = cluster.clerk();
    await clerk.put("after-malformed", "still up");
    expect(await clerk.get("after-malformed")).toBe("still up");
  });
});
