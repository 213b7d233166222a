// The driver lets what it just sent leave before it works on: Bun's HTTP/2 writes a frame only when
// the current macrotask ends, so a follower that applied in the same turn as its acknowledgement
// would hold that acknowledgement back by the whole apply (measured: ~0.3 ms more per Put hop).

import { afterEach, describe, expect, test } from "bun:test";
import type { Entry, Message, NodeId } from "../../src/raft/index.ts";
import { NodeSimCluster } from "../../src/sim/raft-node/index.ts";
import { ListMachine } from "./list-machine.ts";

/** Per node: false from a send until the macrotask it happened in has ended. */
const turnEnded = new Map<NodeId, boolean>();
/** Applies that ran in the same macrotask as one of the node's own sends. */
const appliesBehindSend: string[] = [];

class WatchingMachine extends ListMachine {
  constructor(private readonly id: NodeId) {
    super();
  }

  override async apply(entries: Entry[]): Promise<void> {
    if (turnEnded.get(this.id) === false) appliesBehindSend.push(`node ${this.id} applied ${entries.at(-1)?.index} before its send left`);
    return super.apply(entries);
  }
}

const clusters: NodeSimCluster<WatchingMachine>[] = [];
afterEach(async () => {
  for (const c of clusters.splice(0)) await c.stop();
  turnEnded.clear();
  appliesBehindSend.length = 0;
});

describe("RaftNode flush turn", () => {
  test("no node applies in the macrotask in which it sent messages (its acks and appends leave first)", async () => {
    const c = new NodeSimCluster<WatchingMachine>({
      ids: [0, 1, 2],
      seed: 7,
      stateMachine: (id) => new WatchingMachine(id),
      node: {
        observer: {
          proposed() {},
          saved() {},
          softState() {},
          sent(messages: readonly Message[]) {
            const from = messages[0]?.from;
            if (from === undefined) return;
            turnEnded.set(from, false);
            setImmediate(() => turnEnded.set(from, true));
          },
        },
      },
    });
    clusters.push(c);
    await c.start();
    const enc = new TextEncoder();
    for (let i = 0; i < 30; i++) {
      const leader = await c.waitForLeader();
      await leader.propose(enc.encode(`c-${i}`));
    }
    await c.runUntil(() => [...c.machines.values()].every((m) => m.commands.length >= 30), 10_000, "every node applying 30 commands");
    let applies = 0;
    for (const m of c.machines.values()) applies += m.commands.length;
    expect(applies).toBe(90);
    expect(appliesBehindSend).toEqual([]);
  });
});
