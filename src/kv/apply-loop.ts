// What the Raft driver applies committed entries to: the KV state machine, whose per-entry results
// then answer the writes waiting for them (and a snapshot install answers the ones it covers).
import type { Entry, SnapshotMeta, StateMachine } from "../raft/index.ts";
import type { PendingWrites } from "./pending-writes.ts";
import { watchCorruption } from "./repair.ts";
import { RESULT_STALE_COMMAND } from "./sessions.ts";
import type { KVStateMachine } from "./state-machine.ts";

export interface ApplyHooks {
  /** After every apply or install (watches wake, recovery may be over). */
  applied(): void;
  /** A corrupt block met while streaming a snapshot to a follower: this replica's problem. */
  corrupt(error: unknown): void;
}

export function applyLoop(machine: KVStateMachine, writes: PendingWrites, hooks: ApplyHooks): StateMachine {
  return {
    apply: async (entries: Entry[]) => {
      writes.applied(await machine.apply(entries));
      hooks.applied();
    },
    restore: async (meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>) => {
      await machine.restore(meta, chunks);
      writes.restored(machine.lastApplied(), (clientId, commandId) => {
        const session = clientId === 0n ? undefined : machine.session(clientId);
        if (session === undefined || commandId > session.commandId) return null;
        return commandId === session.commandId ? session.result : RESULT_STALE_COMMAND;
      });
      hooks.applied();
    },
    lastApplied: () => machine.lastApplied(),
    lastAppliedTerm: () => machine.lastAppliedTerm(),
    durableAppliedIndex: () => machine.durableAppliedIndex(),
    sync: () => machine.sync(),
    limitDurableApplied: (index) => machine.limitDurableApplied(index),
    snapshot: async () => {
      const image = await machine.snapshot();
      return { meta: image.meta, chunks: watchCorruption(image.chunks, hooks.corrupt) };
    },
  };
}
