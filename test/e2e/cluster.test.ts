// Three real kvserver processes started through the CLI: kvclient's output and exit codes, plain
// curl with JSON, @grpc/grpc-js, bad input while the node stays up, a connect-web client in
// headless Chromium through CORS, refusal of a foreign data dir and a taken port, clean SIGTERM.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as fs from "node:fs";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { CHROMIUM, runBrowserPage } from "./browser.ts";
import { TestCluster, freePorts, kvclient } from "./harness.ts";

// Real processes on a shared 2-core machine: generous per-test bounds (every loop is bounded too).
setDefaultTimeout(60_000);

let cluster: TestCluster;
let pagePort: number;
let addrsFlag: string;

beforeAll(async () => {
  [pagePort] = (await freePorts(1)) as [number];
  cluster = await TestCluster.start({ extraArgs: ["--cors-origin", `http://127.0.0.1:${pagePort}`] });
  addrsFlag = cluster.addrs.join(",");
  await cluster.waitForLeader();
});

afterAll(async () => {
  await cluster?.destroy();
});

/** POST a Connect JSON request to node `id` the way curl does. */
async function curlJson(id: number, body: string): Promise<{ status: number; json: any }> {
  const proc = Bun.spawn(
    ["curl", "-s", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "--data-binary", "@-", `http://${cluster.addrs[id]}/kvraftpb.KVService/Command`],
    { stdin: new TextEncoder().encode(body), stdout: "pipe", stderr: "pipe" },
  );
  const text = await new Response(proc.stdout).text();
  await proc.exited;
  const newline = text.lastIndexOf("\n");
  return { status: Number(text.slice(newline + 1)), json: JSON.parse(text.slice(0, newline)) };
}

/** Which node leads, then a request to it (curl and grpc-js do not follow leader hints). */
async function leaderId(): Promise<number> {
  return cluster.waitForLeader();
}

describe("kvclient", () => {
  test("put, get, append, delete with eRaft's output", async () => {
    const a = ["-addrs", addrsFlag];
    expect(await kvclient([...a, "-op", "put", "-key", "hello", "-value", "world"])).toMatchObject({ code: 0, stdout: "Put(hello, world) success\n" });
    expect(await kvclient([...a, "-op", "append", "-key", "hello", "-value", "!"])).toMatchObject({ code: 0, stdout: "Append(hello, !) success\n" });
    expect(await kvclient([...a, "--op", "get", "--key=hello"])).toMatchObject({ code: 0, stdout: "Get(hello) -> world!\n" });
    expect(await kvclient([...a, "-op", "delete", "-key", "hello"])).toMatchObject({ code: 0, stdout: "Delete(hello) success\n" });
    const missing = await kvclient([...a, "-op", "get", "-key", "hello"]);
    expect(missing).toMatchObject({ code: 0, stdout: "Get(hello) -> \n" });
    expect(missing.stderr).toContain("does not exist");
  });

  test("status table lists every node with its role", async () => {
    const { code, stdout } = await kvclient(["-addrs", addrsFlag, "-op", "status"]);
    expect(code).toBe(0);
    const lines = stdout.trim().split("\n");
    expect(lines[0]).toMatch(/^ID\s+\| Address\s+\| Role\s+\| Term\s+\| Applied\s+\| Commit\s+\| Storage\(B\)\s+\| Keys\s+\| Snapshot\s+\| Leader$/);
    expect(lines).toHaveLength(5);
    const roles = lines.slice(2).map((l) => l.split("|")[2]!.trim());
    expect(roles.filter((r) => r === "Leader")).toHaveLength(1);
    expect(roles.filter((r) => r === "Follower")).toHaveLength(2);
  });

  test("bad usage exits 2 with the usage; an unreachable cluster exits 1", async () => {
    const bad = await kvclient(["-op", "frobnicate"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("usage: bun run kvclient");
    expect((await kvclient(["-op", "put"])).code).toBe(2);
    const [dead] = await freePorts(1);
    const down = await kvclient(["-addrs", `127.0.0.1:${dead}`, "-op", "put", "-key", "k", "-value", "v", "-timeout", "500"]);
    expect(down.code).toBe(1);
    expect(down.stderr).toContain("gave up");
    const offline = await kvclient(["-addrs", `127.0.0.1:${dead}`, "-op", "status"]);
    expect(offline.code).toBe(1);
    expect(offline.stdout).toContain("Offline");
  });
});

describe("other clients on the same port", () => {
  test("plain curl with JSON: put then get", async () => {
    const leader = await leaderId();
    const put = await curlJson(leader, JSON.stringify({ key: "curl", value: "json", op: "PUT", clientId: "77", commandId: "1" }));
    expect(put).toEqual({ status: 200, json: { err: "OK" } });
    const get = await curlJson(leader, JSON.stringify({ key: "curl", op: "GET" }));
    expect(get).toEqual({ status: 200, json: { err: "OK", value: "json" } });
    const follower = (leader + 1) % 3;
    const redirected = await curlJson(follower, JSON.stringify({ key: "curl", op: "GET" }));
    expect(redirected.json).toEqual({ err: "ErrWrongLeader", leaderId: String(leader) });
  });

  test("@grpc/grpc-js with proto-loader: put then get", async () => {
    const leader = await leaderId();
    const definition = protoLoader.loadSync(path.join(import.meta.dir, "../../proto/kvraftpb/kvraft.proto"), { longs: String, enums: String, defaults: true });
    const loaded = grpc.loadPackageDefinition(definition) as any;
    const client = new loaded.kvraftpb.KVService(cluster.addrs[leader], grpc.credentials.createInsecure());
    const call = (request: object) =>
      new Promise<any>((resolve, reject) => client.Command(request, (e: Error | null, r: any) => (e ? reject(e) : resolve(r))));
    try {
      expect((await call({ key: "grpc", value: "js", op: "PUT", client_id: 78, command_id: 1 })).err).toBe("OK");
      expect(await call({ key: "grpc", op: "GET" })).toMatchObject({ err: "OK", value: "js" });
    } finally {
      client.close();
    }
  });
});

describe("bad input", () => {
  test("malformed JSON, unknown op, wrong types, oversized values: Connect errors, node stays up", async () => {
    const leader = await leaderId();
    const cases: [string, string, RegExp][] = [
      ["{oops", "invalid_argument", /./],
      [JSON.stringify({ key: "k", op: 9 }), "invalid_argument", /unknown op 9/],
      [JSON.stringify({ key: "k", op: "TRUNCATE" }), "invalid_argument", /TRUNCATE/],
      [JSON.stringify({ key: ["k"], op: "GET" }), "invalid_argument", /key/],
      [JSON.stringify({ key: "k", value: "v", op: "PUT", clientId: "not-a-number" }), "invalid_argument", /client_id/],
      // Over the KV value limit (1 MiB) but under the request limit (4 MiB): the KV layer says so.
      [JSON.stringify({ key: "big", value: "x".repeat(1_100_000), op: "PUT", clientId: "5", commandId: "1" }), "invalid_argument", /value/i],
      // Over the 4 MiB request limit: refused before it is parsed.
      [JSON.stringify({ key: "huge", value: "x".repeat(5_000_000), op: "PUT" }), "resource_exhausted", /./],
    ];
    for (const [body, code, message] of cases) {
      const { status, json } = await curlJson(leader, body);
      expect({ body: body.slice(0, 40), code: json.code }).toEqual({ body: body.slice(0, 40), code });
      expect(json.message).toMatch(message);
      expect(status).toBeGreaterThanOrEqual(400);
    }
    expect(cluster.running(leader)).toBe(true);
    const { json } = await curlJson(leader, JSON.stringify({ key: "curl", op: "GET" }));
    expect(json).toEqual({ err: "OK", value: "json" });
  });
});

describe("browser", () => {
  const haveChromium = fs.existsSync(CHROMIUM);
  if (!haveChromium) console.log(`SKIP browser tests: ${CHROMIUM} is absent (apt-get install -y chromium)`);

  test.skipIf(!haveChromium)("connect-web Clerk and gRPC-Web from another origin, through CORS", async () => {
    const { report } = await runBrowserPage({ addrs: addrsFlag, key: "browser" }, 30_000, pagePort);
    expect(report.error).toBeUndefined();
    expect(report.result).toEqual({
      afterAppend: "from-browser",
      grpcWebErr: expect.stringMatching(/^(OK|ErrWrongLeader)$/),
      deleted: true,
      afterDelete: null,
      roles: expect.arrayContaining(["Leader", "Follower"]),
      origin: `http://127.0.0.1:${pagePort}`,
    });
  });

  test.skipIf(!haveChromium)("a page on an origin not allowed by --cors-origin is blocked by the browser", async () => {
    const { report } = await runBrowserPage({ addrs: addrsFlag, key: "blocked", mode: "probe" }, 30_000);
    expect(report.ok).toBe(false);
    expect(report.error).toContain("Failed to fetch"); // Chromium's word for a CORS refusal
  });
});

describe("kvserver refusals and shutdown", () => {
  test("another node's data dir: exit 2; a taken port: exit 1", async () => {
    const run = async (args: string[]) => {
      const proc = Bun.spawn(["bun", path.join(import.meta.dir, "../../src/cli/kvserver.ts"), ...cluster.extraArgs, ...args], { stdout: "pipe", stderr: "pipe" });
      const timer = setTimeout(() => proc.kill("SIGKILL"), 20_000);
      const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
      clearTimeout(timer);
      return { code, stderr };
    };
    const wrongDir = await run(["-id", "1", "-addrs", addrsFlag, "-db", cluster.dataDir(0)]);
    expect(wrongDir.code).toBe(2);
    expect(wrongDir.stderr).toContain("belongs to node 0, not node 1");
    const fresh = path.join(cluster.root, "fresh");
    const taken = await run(["-id", "0", "-addrs", addrsFlag, "-db", fresh]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toContain("already in use");
    const badFlag = await run(["-id", "7", "-addrs", addrsFlag]);
    expect(badFlag.code).toBe(2);
    expect(badFlag.stderr).toContain("usage: bun run kvserver");
  });

  test("SIGTERM stops a node cleanly (exit 0); it restarts on its data and rejoins", async () => {
    const leader = await leaderId();
    const follower = (leader + 1) % 3;
    expect(await cluster.kill(follower, "SIGTERM")).toBe(0);
    expect(cluster.output(follower)).toContain("stopped");
    await cluster.restart(follower);
    const clerk = cluster.clerk();
    await clerk.put("after-restart", "yes");
    expect(await clerk.get("after-restart")).toBe("yes");
  });
});
