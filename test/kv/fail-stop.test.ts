// Fail-stop inside one KVServer: a Raft log write that fails with EIO stops the node once, loudly
// (onFatal gets one FatalError with advice), and from then on every command and GetStatus fail
// with `unavailable` — no zombie that still reports itself a healthy follower or leader.
import { describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { KVError, KVServer } from "../../src/kv/index.ts";
import { FatalError, toFatal } from "../../src/kv/fail-stop.ts";
import { LsmError } from "../../src/lsm/index.ts";
import type { Transport } from "../../src/raft/index.ts";
import { MemoryLogStore } from "../../src/sim/raft-node/index.ts";

const loneTransport = (): Transport => ({
  send() {},
  sendSnapshot: () => Promise.reject(new Error("no peers")),
  listen() {},
  close: async () => {},
});

function eio(): Error {
  return Object.assign(new Error("EIO: i/o error, write"), { code: "EIO" });
}

describe("fail-stop", () => {
  test("a failed Raft log write stops the node once; commands and status then fail unavailable", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "kv-failstop-"));
    const logStore = new MemoryLogStore();
    const fatals: FatalError[] = [];
    const server = await KVServer.open({
      id: 0,
      peers: [0],
      dir,
      transport: loneTransport(),
      logStore,
      raft: { tickMs: 5, electionTicks: 4 },
      onFatal: (error) => fatals.push(error),
    });
    try {
      for (let i = 0; i < 200 && (await server.getStatus()).state !== "Leader"; i++) await Bun.sleep(5);
      expect((await server.command({ key: "a", value: "1", op: "Put", clientId: 1n, commandId: 1n })).err).toBe("OK");
      logStore.failSyncs(eio());
      const reply = await server.command({ key: "b", value: "2", op: "Put", clientId: 1n, commandId: 2n }).catch((e) => e);
      expect(reply instanceof KVError ? reply.code : reply.err).toMatch(/unavailable|ErrWrongLeader|ErrTimeout/);
      for (let i = 0; i < 100 && fatals.length === 0; i++) await Bun.sleep(5);
      expect(fatals.length).toBe(1);
      expect(fatals[0]!.message).toContain("EIO");
      expect(fatals[0]!.message).toContain("the disk reports I/O errors");
      const status = await server.getStatus().catch((e) => e);
      expect(status).toBeInstanceOf(KVError);
      expect(status.code).toBe("unavailable");
      const later = await server.command({ key: "a", value: "", op: "Get", clientId: 1n, commandId: 3n }).catch((e) => e);
      expect(later).toBeInstanceOf(KVError);
      expect(later.message).toContain("stopped after a fatal error");
    } finally {
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the fatal line names the file and offset and says what to do", () => {
    const corrupt = new LsmError("CORRUPTION", "block checksum mismatch", "000012.sst", 4096);
    const fatal = toFatal("state machine read", corrupt);
    expect(fatal.message).toBe(
      "state machine read failed: block checksum mismatch [file 000012.sst offset 4096]; the named file is damaged: " +
        "empty this node's data directory and restart it; it catches up from the leader",
    );
    const invariant = toFatal("raft", new Error("invariant: commit index went backwards"));
    expect(invariant.message).toContain("an invariant broke");
    const full = toFatal("raft", Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" }));
    expect(full.message).toContain("the disk is full");
  });
});
