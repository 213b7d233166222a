// KVServer's contract with its callers: typed errors for bad input and overload, leader hints,
// timeouts, duplicate answers from the session table, status, and restart from real files.
import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KVService } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { InvalidArgumentError, KVServer, OverloadedError, type CommandArgs, type CommandReply, type KVLimits } from "../../src/kv/index.ts";
import { registerKVService } from "../../src/kv/service.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { KvSimCluster } from "../../src/sim/kv/cluster.ts";
import { SimClock, NodeSimNetwork } from "../../src/sim/raft-node/index.ts";
import { Rng } from "../../src/util/rng.ts";
import { TIMEOUT } from "./workload.ts";

async function leaderOf(cluster: KvSimCluster): Promise<number> {
  for (let attempt = 0; attempt < 500; attempt++) {
    for (const [i, server] of cluster.servers.entries()) {
      if (server !== null && (await server.getStatus()).state === "Leader") return i;
    }
    await cluster.run(10);
  }
  throw new Error(`no leader: ${await cluster.describe()}`);
}

const args = (over: Partial<CommandArgs>): CommandArgs => ({ key: "k", value: "", op: "Get", clientId: 1n, commandId: 1n, ...over });

// Tests that need a stable leader drive the simulation with untilReal (simulated time follows real
// time), so a slow real fsync on a loaded machine cannot outlast an election timeout mid-test.
async function withCluster(fn: (cluster: KvSimCluster) => Promise<void>, limits?: KVLimits): Promise<void> {
  const cluster = await KvSimCluster.start({ servers: 3, seed: 51, limits });
  try {
    await fn(cluster);
  } finally {
    await cluster.close();
  }
}

describe("KVServer", () => {
  test("bad input is refused with a typed invalid_argument error that says what to change", () =>
    withCluster(
      async (cluster) => {
        const server = cluster.servers[0]!;
        const refused = async (a: CommandArgs, pattern: RegExp) => {
          const error = await server.command(a).then(
            () => null,
            (e) => e,
          );
          expect(error).toBeInstanceOf(InvalidArgumentError);
          expect(error.message).toMatch(pattern);
        };
        await refused(args({ commandId: -1n }), /negative/);
        await refused(args({ clientId: 0n, registered: true }), /0 means no session/);
        await refused(args({ key: "k".repeat(65) }), /65 bytes; keys are limited to 64/);
        await refused(args({ key: "ü".repeat(33) }), /66 bytes/); // bytes, not characters
        await refused(args({ op: "Put", value: "v".repeat(101) }), /101 bytes; values are limited to 100/);
        await refused(args({ op: "Frobnicate" as never }), /unknown op "Frobnicate"/);
        await refused(args({ clientId: 1 as never }), /64-bit integers/);
      },
      { maxKeyBytes: 64, maxValueBytes: 100 },
    ),
  TIMEOUT);

  test("followers answer ErrWrongLeader with the leader's id; reads and deletes report ErrNoKey", () =>
    withCluster(async (cluster) => {
      const leader = await leaderOf(cluster);
      await cluster.run(100); // followers hear from the leader
      const follower = (leader + 1) % 3;
      const reply = await cluster.untilReal(cluster.servers[follower]!.command(args({ op: "Put", value: "v" })));
      expect(reply).toEqual({ err: "ErrWrongLeader", value: "", leaderId: leader });

      const server = cluster.servers[leader]!;
      const run = (a: Partial<CommandArgs>) => cluster.untilReal(server.command(args(a)));
      expect(await run({ op: "Get", key: "missing" })).toEqual({ err: "ErrNoKey", value: "" });
      expect(await run({ op: "Delete", key: "missing", commandId: 1n })).toEqual({ err: "ErrNoKey", value: "" });
      expect(await run({ op: "Put", key: "a", value: "1", commandId: 2n })).toEqual({ err: "OK", value: "" });
      expect(await run({ op: "Append", key: "a", value: "2", commandId: 3n })).toEqual({ err: "OK", value: "" });
      expect(await run({ op: "Get", key: "a" })).toEqual({ err: "OK", value: "12" });
      expect(await run({ op: "Delete", key: "a", commandId: 4n })).toEqual({ err: "OK", value: "" });
      expect(await run({ op: "Get", key: "a" })).toEqual({ err: "ErrNoKey", value: "" });
    }),
  TIMEOUT);

  test("a retried write is answered from the session table without a new log entry", () =>
    withCluster(async (cluster) => {
      const server = cluster.servers[await leaderOf(cluster)]!;
      const put = args({ op: "Append", key: "a", value: "x", clientId: 9n, commandId: 5n });
      expect(await cluster.untilReal(server.command(put))).toEqual({ err: "OK", value: "" });
      const before = (await server.getStatus()).lastApplied;
      expect(await cluster.untilReal(server.command(put))).toEqual({ err: "OK", value: "" });
      // An older commandId, or the same one for another command, is refused: never OK-but-not-applied.
      await expect(server.command({ ...put, commandId: 4n })).rejects.toThrow(/older than session 9's last command/);
      await expect(server.command({ ...put, value: "y" })).rejects.toThrow(/already used for a different command/);
      expect((await server.getStatus()).lastApplied).toBe(before);
      expect(await cluster.untilReal(server.command(args({ key: "a" })))).toEqual({ err: "OK", value: "x" });
    }),
  TIMEOUT);

  test("a leader cut off from its followers times out, and backpressure fails fast", () =>
    withCluster(
      async (cluster) => {
        const leader = await leaderOf(cluster);
        const server = cluster.servers[leader]!;
        cluster.partition([[leader], [0, 1, 2].filter((i) => i !== leader)]);
        const pending = [0, 1].map((i) => server.command(args({ op: "Put", key: `p${i}`, value: "v", clientId: BigInt(10 + i) })));
        await expect(server.command(args({ op: "Put", key: "over", value: "v", clientId: 20n }))).rejects.toBeInstanceOf(OverloadedError);
        const replies: CommandReply[] = await cluster.until(Promise.all(pending));
        for (const reply of replies) expect(["ErrTimeout", "ErrWrongLeader"]).toContain(reply.err);
        const read = await cluster.until(server.command(args({ op: "Get", key: "p0" })));
        expect(["ErrTimeout", "ErrWrongLeader"]).toContain(read.err);
      },
      { maxPendingCommands: 2, commandTimeoutMs: 500 },
    ),
  TIMEOUT);

  test("concurrent Gets share ReadIndex rounds and each sees every write acknowledged before it", () =>
    withCluster(async (cluster) => {
      const server = cluster.servers[await leaderOf(cluster)]!;
      // Simulated time follows real time here, so real fsyncs cannot outlast an election timeout.
      const run = (a: Partial<CommandArgs>) => cluster.untilReal(server.command(args(a)));
      for (let i = 0; i < 10; i++) expect((await run({ op: "Put", key: `r${i}`, value: `v${i}`, clientId: 30n, commandId: BigInt(i + 1) })).err).toBe("OK");
      const before = (await server.getStatus()).readIndexRounds;
      const gets = Array.from({ length: 60 }, (_, i) => server.command(args({ op: "Get", key: `r${i % 12}` })));
      const replies = await cluster.untilReal(Promise.all(gets));
      replies.forEach((reply, i) => {
        expect(reply).toEqual(i % 12 < 10 ? { err: "OK", value: `v${i % 12}` } : { err: "ErrNoKey", value: "" });
      });
      // 60 Gets issued in one turn share one round.
      expect((await server.getStatus()).readIndexRounds - before).toBe(1);
      // A Get that arrives after a write was acknowledged sees it, even with a round in flight.
      const inFlight = server.command(args({ op: "Get", key: "late" }));
      expect((await run({ op: "Put", key: "late", value: "seen", clientId: 31n, commandId: 1n })).err).toBe("OK");
      expect(await run({ op: "Get", key: "late" })).toEqual({ err: "OK", value: "seen" });
      expect(["OK", "ErrNoKey"]).toContain((await cluster.untilReal(inFlight)).err);
    }),
  TIMEOUT);

  test("status reports role, indexes, storage and membership", () =>
    withCluster(async (cluster) => {
      const leader = await leaderOf(cluster);
      const server = cluster.servers[leader]!;
      await cluster.untilReal(server.command(args({ op: "Put", key: "a", value: "v".repeat(1000) })));
      const status = await server.getStatus();
      expect(status).toMatchObject({ id: leader, state: "Leader", leaderId: leader, members: [0, 1, 2] });
      expect(status.term).toBeGreaterThan(0);
      expect(status.commitIndex).toBeGreaterThanOrEqual(2);
      expect(status.lastApplied).toBe(status.commitIndex);
      expect(status.storageSize).toBeGreaterThan(1000);
      expect(status.sessions).toBe(1);
    }),
  TIMEOUT);
});

test("a single node on real files (FileLogStore + LSM) restarts with its data", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-server-"));
  const clock = new SimClock();
  const network = new NodeSimNetwork(clock, new Rng(7));
  const open = () => KVServer.open({ id: 0, peers: [0], dir, transport: network.transport(0), clock, raft: { tickMs: 10, seed: 1 } });
  const drive = async <T>(promise: Promise<T>): Promise<T> => {
    let done = false;
    promise.finally(() => (done = true)).catch(() => {});
    // Real fsyncs here: let one real millisecond pass per simulated one, so disk time and
    // simulated time stay comparable (else timeouts fire while an fsync is still running).
    for (let i = 0; i < 10_000 && !done; i++) {
      clock.advance(1);
      await Bun.sleep(1);
    }
    return promise;
  };
  const electSelf = async (server: KVServer) => {
    for (let i = 0; i < 100 && (await server.getStatus()).state !== "Leader"; i++) await drive(Promise.resolve(clock.advance(10)));
    expect((await server.getStatus()).state).toBe("Leader");
  };
  try {
    let server = await open();
    await electSelf(server);
    expect(fs.existsSync(path.join(dir, "raft"))).toBe(true);
    expect(fs.existsSync(path.join(dir, "state"))).toBe(true);
    for (let i = 1; i <= 20; i++) {
      const reply = await drive(server.command({ op: "Append", key: "log", value: `${i},`, clientId: 1n, commandId: BigInt(i) }));
      expect(reply.err).toBe("OK");
    }
    await server.close();
    server = await open();
    await electSelf(server);
    expect((await server.getStatus()).keyCount).toBe(1);
    const reply = await drive(server.command({ op: "Get", key: "log", value: "", clientId: 1n, commandId: 21n }));
    expect(reply).toEqual({ err: "OK", value: Array.from({ length: 20 }, (_, i) => `${i + 1},`).join("") });
    // The session survived too: command 20 again is not applied twice.
    expect((await drive(server.command({ op: "Append", key: "log", value: "20,", clientId: 1n, commandId: 20n }))).err).toBe("OK");
    expect((await drive(server.command({ op: "Get", key: "log", value: "", clientId: 1n, commandId: 22n }))).value.endsWith("19,20,")).toBe(true);
    await server.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, TIMEOUT);

test("GetStatus.key_count is the real KVServer's count of keys, kept across writes, deletes and a restart", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-keycount-"));
  const clock = new SimClock();
  const network = new NodeSimNetwork(clock, new Rng(8));
  let server = await KVServer.open({ id: 0, peers: [0], dir, transport: network.transport(0), clock, raft: { tickMs: 10, seed: 2 } });
  const rpc = await RpcServer.start({ port: 0, routes: (router) => registerKVService(router, () => server) });
  const client = createClient(KVService, createConnectTransport({ baseUrl: rpc.url, httpVersion: "1.1" }));
  const drive = async <T>(promise: Promise<T>): Promise<T> => {
    let done = false;
    promise.finally(() => (done = true)).catch(() => {});
    for (let i = 0; i < 10_000 && !done; i++) {
      clock.advance(1);
      await Bun.sleep(1);
    }
    return promise;
  };
  const electSelf = async () => {
    for (let i = 0; i < 100 && (await server.getStatus()).state !== "Leader"; i++) await drive(Promise.resolve(clock.advance(10)));
  };
  let commandId = 0n;
  const write = async (op: "Put" | "Append" | "Delete", key: string) =>
    (await drive(server.command({ op, key, value: "v", clientId: 5n, commandId: ++commandId }))).err;
  try {
    await electSelf();
    expect((await client.getStatus({})).keyCount).toBe(0n);
    for (let i = 0; i < 30; i++) expect(await write("Put", `k${i}`)).toBe("OK");
    expect(await write("Put", "k3")).toBe("OK"); // an overwrite adds no key
    expect(await write("Append", "k4")).toBe("OK");
    expect(await write("Append", "fresh")).toBe("OK"); // an append to a missing key creates it
    expect(await write("Delete", "k0")).toBe("OK");
    expect(await write("Delete", "k0")).toBe("ErrNoKey"); // a missing key removes nothing
    expect((await client.getStatus({})).keyCount).toBe(30n);
    await server.close();
    server = await KVServer.open({ id: 0, peers: [0], dir, transport: network.transport(0), clock, raft: { tickMs: 10, seed: 3 } });
    expect((await client.getStatus({})).keyCount).toBe(30n);
    await electSelf();
    expect(await write("Delete", "k1")).toBe("OK");
    expect((await client.getStatus({})).keyCount).toBe(29n);
  } finally {
    await rpc.close();
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, TIMEOUT);
