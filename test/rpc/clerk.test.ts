// Clerk against three in-process nodes with scripted behaviour: leader hints, timeouts, dead
// nodes, refusals, bounded give-up, and the same commandId on every retry of one operation.
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { Code } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Clerk, ClerkError, type ClerkOptions } from "../../src/kv/client.ts";
import { createClerkTransport } from "../../src/rpc/client/clerk-transport.ts";
import { InvalidArgumentError, OverloadedError, SessionExpiredError } from "../../src/kv/errors.ts";
import type { KVErr } from "../../src/kv/server.ts";
import { registerKVService, type KVServiceBackend } from "../../src/kv/service.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";
import { statusDouble } from "./kv-double.ts";

type Call = { node: number; op: string; key: string; clientId: bigint; commandId: bigint };
const calls: Call[] = [];
const data = new Map<string, string>();
/** Which node leads; others answer ErrWrongLeader with this hint (or none when hint is false). */
let leader = 2;
let hint = true;
/** The leader answers ErrTimeout this many times before it succeeds. */
let timeoutsLeft = 0;
/** Sessions the leader has handed out; a session in `expired` is refused as the server refuses it. */
let sessions = 100n;
const expired = new Set<bigint>();
/** The leader's ErrTimeout also expires the session (it was idle too long while the client retried). */
let expireOnTimeout = false;

function node(id: number): KVServiceBackend {
  return {
    async command(args) {
      calls.push({ node: id, op: args.op, key: args.key, clientId: args.clientId, commandId: args.commandId });
      if (args.key.startsWith("bad")) throw new InvalidArgumentError("key must not start with bad");
      if (id === leader && args.registered === true && expired.has(args.clientId)) {
        throw new SessionExpiredError(`session ${args.clientId} has expired`);
      }
      if (id !== leader) return hint ? { err: "ErrWrongLeader" as KVErr, value: "", leaderId: leader } : { err: "ErrWrongLeader" as KVErr, value: "" };
      if (timeoutsLeft > 0) {
        timeoutsLeft--;
        if (expireOnTimeout) expired.add(args.clientId);
        return { err: "ErrTimeout" as KVErr, value: "" };
      }
      if (args.op === "Get") return data.has(args.key) ? { err: "OK", value: data.get(args.key)! } : { err: "ErrNoKey", value: "" };
      if (args.op === "Delete") return data.delete(args.key) ? { err: "OK", value: "" } : { err: "ErrNoKey", value: "" };
      data.set(args.key, (args.op === "Append" ? (data.get(args.key) ?? "") : "") + args.value);
      return { err: "OK", value: "" };
    },
    async registerSession() {
      calls.push({ node: id, op: "Register", key: "", clientId: 0n, commandId: 0n });
      if (id !== leader) return hint ? { err: "ErrWrongLeader", value: "", leaderId: leader } : { err: "ErrWrongLeader", value: "" };
      return { err: "OK", clientId: ++sessions };
    },
    async getStatus() {
      return statusDouble({ id, state: id === leader ? "Leader" : "Follower", term: 3, lastApplied: 7, commitIndex: 7, storageSize: 100, leaderId: leader, members: [0, 1, 2] });
    },
  };
}

const servers: RpcServer[] = [];
let addrs: string[] = [];
/** Every scenario runs on connect-node's transport and on the Clerk's own lean one. */
const TRANSPORTS: Record<string, ClerkOptions["transport"]> = {
  "connect-node": (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2" }),
  lean: (baseUrl) => createClerkTransport({ baseUrl }),
};
let transport: ClerkOptions["transport"] = TRANSPORTS["connect-node"]!;

beforeAll(async () => {
  for (const id of [0, 1, 2]) servers.push(await RpcServer.start({ port: 0, routes: (r) => registerKVService(r, node(id)) }));
  addrs = servers.map((s) => `127.0.0.1:${s.port}`);
});
afterAll(async () => {
  for (const server of servers) await server.close();
});
// Each scenario starts from a healthy cluster led by node 2, whatever the previous one changed.
beforeEach(() => {
  leader = 2;
  hint = true;
  timeoutsLeft = 0;
  expired.clear();
  expireOnTimeout = false;
});

for (const [name, make] of Object.entries(TRANSPORTS))
describe(`Clerk (${name} transport)`, () => {
  beforeAll(() => {
    transport = make;
  });
  test("a session expired: on a write's first attempt it registers again and retries; after a retry it reports the uncertain write", async () => {
    calls.length = 0;
    const clerk = new Clerk({ addrs, transport, backoffMs: 5 });
    await clerk.put("s", "1");
    const first = clerk.clientId;
    expired.add(first);
    await clerk.put("s", "2"); // refused at once: certainly not applied, so run again under a new session
    expect(clerk.clientId).not.toBe(first);
    expect(data.get("s")).toBe("2");
    expect(calls.filter((c) => c.op === "Register").map((c) => c.node)).toEqual([0, 2, 2]);

    // Now the session expires while a write is being retried (its first attempt timed out).
    const second = clerk.clientId;
    timeoutsLeft = 1;
    expireOnTimeout = true;
    const error = await clerk.put("s", "3").then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(ClerkError);
    expect((error as ClerkError).code).toBe(Code.FailedPrecondition);
    expect((error as ClerkError).outcomeUnknown).toBe(true);
    expect((error as ClerkError).message).toMatch(/may or may not have been applied/);
    // The next operation registers a fresh session.
    await clerk.put("s", "4");
    expect(clerk.clientId).not.toBe(second);
    expect(data.get("s")).toBe("4");
  });

  test("a burst of first writes registers each session once at the leader: only the first looks for it", async () => {
    leader = 2;
    hint = true;
    calls.length = 0;
    const clerk = new Clerk({ addrs, transport, maxConcurrency: 8, batch: false });
    await Promise.all(Array.from({ length: 8 }, (_, i) => clerk.put(`burst${i}`, "v")));
    expect(calls.filter((c) => c.op === "Register").map((c) => c.node)).toEqual([0, 2, 2, 2, 2, 2, 2, 2, 2]);
  });

  test("put/append/get/delete, following the leader hint", async () => {
    leader = 2;
    hint = true;
    calls.length = 0;
    const clerk = new Clerk({ addrs, transport });
    await clerk.put("a", "1");
    // Registered its session first: asked 0, told "2 leads", went there, and stayed.
    expect(calls.map((c) => `${c.op}@${c.node}`)).toEqual(["Register@0", "Register@2", "Put@2"]);
    calls.splice(0, 2);
    await clerk.append("a", "2");
    expect(await clerk.get("a")).toBe("12");
    expect(await clerk.delete("a")).toBe(true);
    expect(await clerk.delete("a")).toBe(false);
    expect(await clerk.get("a")).toBeNull();
    expect(calls.every((c) => c.node === 2)).toBe(true); // remembered the leader
    const ids = calls.map((c) => c.commandId);
    expect(ids).toEqual([1n, 2n, 3n, 4n, 5n, 6n]);
    expect(new Set(calls.map((c) => c.clientId))).toEqual(new Set([sessions]));
    expect(clerk.clientId).toBe(sessions);
  });

  test("without hints, ErrTimeout and a dead node: tries the next node, same commandId throughout", async () => {
    leader = 1;
    hint = false;
    timeoutsLeft = 2;
    calls.length = 0;
    const deadAddrs = [addrs[0]!, addrs[1]!, "127.0.0.1:1"]; // node 2 unreachable
    const clerk = new Clerk({ addrs: deadAddrs, transport, backoffMs: 5 });
    await clerk.put("b", "x");
    calls.splice(0, calls.findIndex((c) => c.op !== "Register"));
    expect(calls.length).toBeGreaterThanOrEqual(3);
    expect(new Set(calls.map((c) => c.commandId))).toEqual(new Set([1n]));
    expect(calls.at(-1)).toMatchObject({ node: 1, op: "Put" });
    expect(data.get("b")).toBe("x");
  });

  test("a refused request fails at once with its reason", async () => {
    const clerk = new Clerk({ addrs, transport });
    const error = await clerk.put("bad-key", "v").then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(ClerkError);
    expect((error as ClerkError).code).toBe(Code.InvalidArgument);
    expect((error as ClerkError).message).toContain("must not start with bad");
  });

  test("no leader anywhere: gives up within the operation timeout with a clear error", async () => {
    leader = 99;
    hint = false;
    const clerk = new Clerk({ addrs, transport, operationTimeoutMs: 300, backoffMs: 5 });
    const started = Date.now();
    const error = await clerk.get("c").then(() => null, (e: unknown) => e);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect((error as ClerkError).code).toBe(Code.DeadlineExceeded);
    expect((error as ClerkError).message).toMatch(/GET\("c"\) gave up after \d+ ms: no node completed it/);
  });

  test("getStatus asks every node and marks the unreachable Offline", async () => {
    const clerk = new Clerk({ addrs: [addrs[0]!, "127.0.0.1:1", addrs[2]!], transport, statusTimeoutMs: 500 });
    const rows = await clerk.getStatus();
    expect(rows.map((r) => r.state)).toEqual(["Follower", "Offline", "Leader"]);
    expect(rows[0]).toMatchObject({ online: true, id: 0, term: 3n, lastApplied: 7n, storageSize: 100n });
    expect(rows[1]).toMatchObject({ online: false, address: "127.0.0.1:1" });
  });

  test("concurrent operations on one Clerk run one at a time, in order", async () => {
    leader = 2;
    hint = true;
    calls.length = 0;
    data.delete("seq"); // the scenario runs once per transport
    const clerk = new Clerk({ addrs, transport });
    await Promise.all(Array.from({ length: 10 }, (_, i) => clerk.append("seq", String(i))));
    expect(data.get("seq")).toBe("0123456789");
    const leaderCalls = calls.filter((c) => c.node === 2).map((c) => c.commandId);
    expect(leaderCalls).toEqual([...leaderCalls].sort((a, b) => (a < b ? -1 : 1)));
  });
});

describe("Clerk limits and backpressure", () => {
  test("a request over maxRequestBytes fails at once, without an RPC", async () => {
    calls.length = 0;
    const clerk = new Clerk({ addrs, transport, maxRequestBytes: 1000 });
    const error = await clerk.put("k", "é".repeat(600)).then(() => null, (e: unknown) => e);
    expect((error as ClerkError).code).toBe(Code.InvalidArgument);
    expect((error as ClerkError).message).toContain("1201 bytes");
    expect(calls).toHaveLength(0);
  });

  test("resource_exhausted (backpressure) is retried on the same node until it clears", async () => {
    const busy: KVServiceBackend = {
      ...node(0),
      async command(args) {
        calls.push({ node: 0, op: args.op, key: args.key, clientId: args.clientId, commandId: args.commandId });
        if (calls.length < 4) throw new OverloadedError("too many commands in flight");
        return { err: "OK", value: "" };
      },
    };
    const local = await RpcServer.start({ port: 0, routes: (r) => registerKVService(r, busy) });
    try {
      calls.length = 0;
      leader = 0;
      const clerk = new Clerk({ addrs: [`127.0.0.1:${local.port}`], transport, backoffMs: 5 });
      await clerk.put("k", "v");
      expect(calls.map((c) => c.op)).toEqual(["Register", "Put", "Put", "Put"]);
      expect(new Set(calls.slice(1).map((c) => c.commandId)).size).toBe(1);
    } finally {
      await local.close();
    }
  });
});

describe("Clerk against stale hints", () => {
  test("hints naming a dead node do not spin: rounds back off until the deadline", async () => {
    leader = 0; // the live nodes (1, 2) both name node 0, which is down
    hint = true;
    calls.length = 0;
    const clerk = new Clerk({ addrs: ["127.0.0.1:1", addrs[1]!, addrs[2]!], transport, operationTimeoutMs: 1_000, backoffMs: 20, maxBackoffMs: 200 });
    const started = Date.now();
    const error = await clerk.get("x").then(() => null, (e: unknown) => e);
    expect((error as ClerkError).code).toBe(Code.DeadlineExceeded);
    // It ran out of time (the deadline), not out of attempts (200).
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_000);
    expect(calls.length).toBeLessThan(100);
  });
});
