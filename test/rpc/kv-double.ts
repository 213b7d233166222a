// What the RPC tests stand in for a KVServer with: its exact call shapes (KVServiceBackend is
// Pick<KVServer, ...>) and its real error classes, so no test re-declares the server's API.
import type { KVStatus } from "../../src/kv/server.ts";

/** A KVStatus with every field set; `fields` override. */
export function statusDouble(fields: Partial<KVStatus> = {}): KVStatus {
  return {
    id: 0,
    state: "Leader",
    term: 1,
    lastApplied: 0,
    commitIndex: 0,
    storageSize: 0,
    leaderId: 0,
    members: [0],
    learners: [],
    addresses: {},
    snapshotIndex: 0,
    keyCount: 0,
    sessions: 0,
    snapshotsInstalled: 0,
    readIndexRounds: 0,
    storageHealth: "",
    ...fields,
  };
}
