// The node lifecycle below the kvserver CLI: data-directory identity, port-in-use, start order
// (port bound before storage opens), and shutdown order. The KV server is a stand-in here.
import { afterEach, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { KVService, Op } from "../../src/gen/kvraftpb/kvraft_pb.ts";
import { unpack } from "msgpackr";
import { DataDirError, IDENTITY_FILE, LEGACY_IDENTITY_FILE, claimDataDir } from "../../src/cli/identity.ts";
import { serveNode, type KVNode } from "../../src/cli/serve-node.ts";
import { statusDouble } from "./kv-double.ts";
import { ListenError } from "../../src/rpc/server/server.ts";

const dirs: string[] = [];
function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kvraft-serve-"));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const port = (probe.address() as net.AddressInfo).port;
      probe.close(() => resolve(port));
    });
  });
}

const ADDRS = ["localhost:5001", "localhost:5002", "localhost:5003"];

describe("data directory identity", () => {
  test("first start writes the identity; the same node and cluster may reopen", () => {
    const dir = path.join(tempDir(), "node-0");
    claimDataDir(dir, 0, ADDRS);
    expect(unpack(fs.readFileSync(path.join(dir, IDENTITY_FILE)))).toEqual({ format: 1, nodeId: 0, addrs: ADDRS });
    fs.writeFileSync(path.join(dir, "some-data"), "x");
    expect(() => claimDataDir(dir, 0, ADDRS)).not.toThrow();
  });

  test("a directory from before the msgpack record (KVRAFT_NODE.json) is upgraded in place", () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, LEGACY_IDENTITY_FILE), JSON.stringify({ format: 1, nodeId: 1, addrs: ADDRS }, null, 2) + "\n");
    fs.writeFileSync(path.join(dir, "raft"), "x");
    expect(() => claimDataDir(dir, 0, ADDRS)).toThrow(/belongs to node 1/);
    expect(fs.existsSync(path.join(dir, LEGACY_IDENTITY_FILE))).toBe(false);
    expect(unpack(fs.readFileSync(path.join(dir, IDENTITY_FILE)))).toEqual({ format: 1, nodeId: 1, addrs: ADDRS });
    expect(() => claimDataDir(dir, 1, ADDRS)).not.toThrow();
    // The JSON form is also how an operator moves a cluster: it replaces the record at the next start.
    const moved = ["localhost:6001", "localhost:6002", "localhost:6003"];
    expect(() => claimDataDir(dir, 1, moved)).toThrow(/KVRAFT_NODE\.json/);
    fs.writeFileSync(path.join(dir, LEGACY_IDENTITY_FILE), JSON.stringify({ format: 1, nodeId: 1, addrs: moved }));
    expect(() => claimDataDir(dir, 1, moved)).not.toThrow();
  });

  test("another node's directory is refused with advice", () => {
    const dir = tempDir();
    claimDataDir(dir, 0, ADDRS);
    expect(() => claimDataDir(dir, 1, ADDRS)).toThrow(/belongs to node 0, not node 1.*own -db/);
  });

  test("another cluster's directory is refused", () => {
    const dir = tempDir();
    claimDataDir(dir, 0, ADDRS);
    expect(() => claimDataDir(dir, 0, ["localhost:6001", "localhost:6002", "localhost:6003"])).toThrow(/belongs to the cluster -addrs/);
  });

  test("a non-empty directory without identity, a damaged identity, a file in the way: refused", () => {
    const foreign = tempDir();
    fs.writeFileSync(path.join(foreign, "LOCK"), "");
    expect(() => claimDataDir(foreign, 0, ADDRS)).toThrow(/not empty but has no/);
    const damaged = tempDir();
    fs.writeFileSync(path.join(damaged, IDENTITY_FILE), "{");
    expect(() => claimDataDir(damaged, 0, ADDRS)).toThrow(/damaged/);
    const file = path.join(tempDir(), "file");
    fs.writeFileSync(file, "");
    expect(() => claimDataDir(file, 0, ADDRS)).toThrow(DataDirError);
  });

  test("a leftover temp file from a crashed first start is not foreign data", () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, `${IDENTITY_FILE}.tmp`), "{");
    expect(() => claimDataDir(dir, 2, ADDRS)).not.toThrow();
  });
});

describe("serveNode", () => {
  function fakeKV(events: string[]): KVNode {
    return {
      async command(args) {
        if (args.key === "slow") await Bun.sleep(200);
        return { err: "ErrNoKey", value: "" };
      },
      async registerSession() {
        return { err: "OK" as const, clientId: 1n };
      },
      async getStatus() {
        return statusDouble();
      },
      async close() {
        events.push("kv closed");
      },
    };
  }

  test("serves once open, answers unavailable while opening, and closes in order", async () => {
    const port = await freePort();
    const addrs = [`127.0.0.1:${port}`];
    const events: string[] = [];
    let release!: () => void;
    const opening = new Promise<void>((resolve) => (release = resolve));
    const starting = serveNode({
      id: 0,
      addrs,
      dir: tempDir(),
      open: async (args) => {
        expect(args.peers).toEqual([0]);
        await opening;
        return fakeKV(events);
      },
    });
    const client = createClient(KVService, createConnectTransport({ baseUrl: `http://${addrs[0]}`, httpVersion: "1.1" }));
    let error: ConnectError | null = null;
    for (let i = 0; i < 50 && error === null; i++) {
      error = await client.command({ key: "a", op: Op.GET }).then(() => null, (e: unknown) => ConnectError.from(e));
      if (error?.code !== Code.Unavailable) error = null;
      await Bun.sleep(10);
    }
    expect(error?.rawMessage).toContain("still starting");
    release();
    const node = await starting;
    const slow = client.command({ key: "slow", op: Op.GET });
    await Bun.sleep(50);
    await node.close();
    expect((await slow).err).toBe("ErrNoKey");
    expect(events).toEqual(["kv closed"]);
  });

  test("port in use: ListenError, and storage is never opened", async () => {
    const blocker = net.createServer().listen(0, "127.0.0.1");
    await new Promise((resolve) => blocker.once("listening", resolve));
    const port = (blocker.address() as net.AddressInfo).port;
    let opened = false;
    try {
      const error = await serveNode({
        id: 0,
        addrs: [`127.0.0.1:${port}`],
        dir: tempDir(),
        open: async () => {
          opened = true;
          return fakeKV([]);
        },
      }).then(() => null, (e: unknown) => e);
      expect(error).toBeInstanceOf(ListenError);
      expect((error as ListenError).message).toContain("already in use");
      expect(opened).toBe(false);
    } finally {
      blocker.close();
    }
  });

  test("a failing open releases the port", async () => {
    const port = await freePort();
    const addrs = [`127.0.0.1:${port}`];
    const dir = tempDir();
    const error = await serveNode({ id: 0, addrs, dir, open: async () => { throw new Error("LSM corrupt"); } }).then(() => null, (e: Error) => e);
    expect(error?.message).toBe("LSM corrupt");
    const node = await serveNode({ id: 0, addrs, dir, open: async () => fakeKV([]) });
    await node.close();
  });
});
