// Self-repair of a replica's storage: opening it with corruption repaired (the state machine, or the
// Raft log, discarded and rebuilt from the leader), the RECOVERING marker that keeps a node that
// lost durable state from voting across restarts, and the transport relay a rebuilt node reuses.
import * as fs from "node:fs";
import * as path from "node:path";
import {
  FileLogStore,
  LogStoreError,
  NONE,
  type Clock,
  type HardState,
  type LogStore,
  type NodeId,
  type RaftNode,
  type Transport,
  type TransportHandler,
} from "../raft/index.ts";
import { isStateMachineCorruption } from "./fail-stop.ts";
import { KVStateMachine, type KVStateMachineOptions } from "./state-machine.ts";

/**
 * `<dir>/RECOVERING`: this replica lost (or discarded) durable state it may have acknowledged and
 * has not caught up with a leader since. While it exists the node starts recovering (no votes).
 */
export const RECOVERING_FILE = "RECOVERING";

export interface RecoveryMarker {
  format: 1;
  /** Why: what was lost or discarded, for the operator. */
  reason: string;
  since: string;
  /** The term and vote the discarded log held: a repaired log starts from them (one vote per term). */
  term: number;
  votedFor: NodeId;
}

export function readMarker(dir: string): RecoveryMarker | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, RECOVERING_FILE), "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw error;
  }
  try {
    const marker = JSON.parse(text) as RecoveryMarker;
    if (marker.format === 1 && Number.isInteger(marker.term) && Number.isInteger(marker.votedFor)) return marker;
  } catch {}
  // A torn marker still says "recovering"; it only lost the term and vote (a recovering node votes for no one).
  return { format: 1, reason: "unreadable RECOVERING file", since: "", term: 0, votedFor: NONE };
}

/** Writes the marker durably (temp file, fsync, rename, directory fsync) before anything is discarded. */
export function writeMarker(dir: string, marker: RecoveryMarker): void {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, RECOVERING_FILE);
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, "w");
  try {
    fs.writeSync(fd, JSON.stringify(marker) + "\n");
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  syncDir(dir);
}

/** Marks a data directory just created: its node cannot tell a new cluster from a wiped disk. */
export function markNewDataDir(dir: string): void {
  if (readMarker(dir) !== null) return;
  writeMarker(dir, {
    format: 1,
    reason: "the data directory had no identity (a new node, or one whose data was lost)",
    since: new Date().toISOString(),
    term: 0,
    votedFor: NONE,
  });
}

export function removeMarker(dir: string): void {
  fs.rmSync(path.join(dir, RECOVERING_FILE), { force: true });
  syncDir(dir);
}

function syncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Discards the replica's state machine and Raft log, keeping its term and vote in the marker
 * (written first: a crash midway restarts into the same repair, never into a silent loss).
 */
export function discardReplica(dir: string, reason: string, hard: Pick<HardState, "term" | "votedFor">): void {
  const previous = readMarker(dir);
  // A repair of a repair keeps the highest term it ever promised in.
  const keep = previous !== null && previous.term > hard.term ? previous : hard;
  writeMarker(dir, { format: 1, reason, since: new Date().toISOString(), term: keep.term, votedFor: keep.votedFor });
  fs.rmSync(path.join(dir, "state"), { recursive: true, force: true });
  fs.rmSync(path.join(dir, "raft"), { recursive: true, force: true });
  syncDir(dir);
}

export interface OpenedStorage {
  machine: KVStateMachine;
  logStore: LogStore;
  /** The log store was opened here (close it with the server). */
  owned: boolean;
  /** Start Raft recovering: the RECOVERING marker is present. */
  recovering: boolean;
}

/**
 * Opens `<dir>/state` and `<dir>/raft` (or the given log store). A corrupt state machine, or a
 * corrupt Raft log, is discarded and the node comes up empty and recovering, to be rebuilt from
 * the leader, instead of failing every restart. A state machine behind the log's compaction point,
 * or ahead of the log's end (a truncated log), also means lost state: recovering.
 */
export async function openStorage(
  dir: string,
  machineOptions: Omit<KVStateMachineOptions, "dir">,
  givenLog: LogStore | undefined,
  log: (line: string) => void,
): Promise<OpenedStorage> {
  const machineDir = path.join(dir, "state");
  const logDir = path.join(dir, "raft");
  const openMachine = () => KVStateMachine.open({ ...machineOptions, dir: machineDir });
  const repairable = givenLog === undefined;

  let machine: KVStateMachine;
  try {
    machine = await openMachine();
  } catch (error) {
    if (!repairable || !isStateMachineCorruption(error)) throw error;
    const hard = await readHardState(logDir);
    const reason = `the state machine is corrupt (${(error as Error).message})`;
    discardReplica(dir, reason, hard);
    log(`${reason}; discarded it and the Raft log (kept term ${hard.term} and vote), rebuilding from the leader`);
    machine = await openMachine();
  }

  let logStore: LogStore;
  try {
    logStore = givenLog ?? (await openLog(logDir, dir, machine, log));
  } catch (error) {
    await machine.close();
    throw error;
  }

  try {
    let marker = readMarker(dir);
    if (repairable && machine.lastApplied() < logStore.snapshotMeta().index) {
      // The entries between the state machine and the log's compaction point exist nowhere here.
      const hard = logStore.hardState();
      const reason = `the state machine (applied ${machine.lastApplied()}) is behind the Raft log's compaction point (${logStore.snapshotMeta().index})`;
      await logStore.close();
      await machine.close();
      discardReplica(dir, reason, hard);
      log(`${reason}; discarded both, rebuilding from the leader`);
      machine = await openMachine();
      logStore = await FileLogStore.open(logDir);
      marker = readMarker(dir);
    } else if (marker === null && machine.lastApplied() > logStore.lastIndex()) {
      // Either a snapshot install that crashed before the log was reset, or a log that lost its
      // newest entries: the two look alike, and only the second matters. Be safe: recover.
      const hard = logStore.hardState();
      marker = { format: 1, reason: `the Raft log ends at ${logStore.lastIndex()}, behind the state machine (applied ${machine.lastApplied()})`, since: new Date().toISOString(), term: hard.term, votedFor: hard.votedFor };
      writeMarker(dir, marker);
      log(`${marker.reason}: it may have lost acknowledged entries; not voting until caught up with the leader`);
    }
    if (marker !== null && repairable) {
      const hard = logStore.hardState();
      // The log was discarded: it starts again from the term and vote it had promised.
      if (hard.term < marker.term) await logStore.save({ term: marker.term, votedFor: marker.votedFor, commitIndex: 0 }, []);
    }
    if (marker !== null && repairable) log(`recovering (${marker.reason}): not voting until caught up with a leader`);
    return { machine, logStore, owned: givenLog === undefined, recovering: marker !== null && repairable };
  } catch (error) {
    await machine.close().catch(() => {});
    if (givenLog === undefined) await logStore.close().catch(() => {});
    throw error;
  }
}

/** Opens the Raft log; a corrupt one is discarded (its term and vote unknown) and rebuilt from the leader. */
async function openLog(logDir: string, dir: string, machine: KVStateMachine, log: (line: string) => void): Promise<LogStore> {
  try {
    return await FileLogStore.open(logDir);
  } catch (error) {
    if (!(error instanceof LogStoreError && error.code === "CORRUPTION")) throw error;
    const reason = `the Raft log is corrupt (${error.message})`;
    await machine.close();
    // Term and vote are lost with it: a recovering node grants no vote, and once caught up it
    // knows the leader of the current term, so it does not vote again in that term.
    discardReplica(dir, reason, { term: 0, votedFor: NONE });
    log(`${reason}; discarded it and the state machine, rebuilding from the leader`);
    throw new RetryOpen();
  }
}

/** The log was discarded with the machine already open: the caller opens both again. */
class RetryOpen extends Error {}

/** Wraps openStorage: a discarded Raft log means opening everything again, once. */
export async function openStorageRepaired(
  dir: string,
  machineOptions: Omit<KVStateMachineOptions, "dir">,
  givenLog: LogStore | undefined,
  log: (line: string) => void,
): Promise<OpenedStorage> {
  try {
    return await openStorage(dir, machineOptions, givenLog, log);
  } catch (error) {
    if (!(error instanceof RetryOpen)) throw error;
    return openStorage(dir, machineOptions, givenLog, log);
  }
}

/** The term and vote of a (possibly unopenable) Raft log; nothing when it cannot be read. */
async function readHardState(logDir: string): Promise<Pick<HardState, "term" | "votedFor">> {
  try {
    const store = await FileLogStore.open(logDir);
    const hard = store.hardState();
    await store.close();
    return hard;
  } catch {
    return { term: 0, votedFor: NONE };
  }
}

/**
 * A Transport whose receiving side can be handed to a new RaftNode: a repaired replica starts a
 * fresh node on the same peer links (a Transport accepts one listener for its lifetime).
 */
export class RelayTransport implements Transport {
  private handler: TransportHandler | null = null;

  constructor(private readonly inner: Transport) {}

  /** Connects to the inner transport; call once, before the first node listens. */
  attach(): void {
    this.inner.listen({
      onMessages: (messages) => this.handler?.onMessages(messages),
      onSnapshot: (message, chunks) =>
        this.handler !== null ? this.handler.onSnapshot(message, chunks) : Promise.reject(new Error("this node is restarting; retry")),
    });
  }

  listen(handler: TransportHandler): void {
    this.handler = handler;
  }

  /** The old node stops receiving (its replacement listens next). */
  detach(): void {
    this.handler = null;
  }

  send(...args: Parameters<Transport["send"]>): void {
    this.inner.send(...args);
  }

  sendSnapshot(...args: Parameters<Transport["sendSnapshot"]>): ReturnType<Transport["sendSnapshot"]> {
    return this.inner.sendSnapshot(...args);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Passes a stream through; a corruption error in it is reported (and still thrown to the reader). */
export function watchCorruption(inner: AsyncIterable<Uint8Array>, report: (error: unknown) => void): AsyncIterableIterator<Uint8Array> {
  const it = inner[Symbol.asyncIterator]();
  return {
    [Symbol.asyncIterator]() {
      return this;
    },
    async next() {
      try {
        return await it.next();
      } catch (error) {
        if (isStateMachineCorruption(error)) report(error);
        throw error;
      }
    },
    // Abandoning the stream must reach the inner one: it holds an LSM snapshot until returned.
    async return() {
      await it.return?.();
      return { done: true, value: undefined };
    },
  };
}

/** A leader about to stop hands leadership to a peer first (bounded wait), so clients need not wait for an election. */
export async function handOverLeadership(node: RaftNode, clock: Clock, tickMs: number, electionTicks: number): Promise<void> {
  const status = node.status();
  if (status.role !== "Leader") return;
  const peer = status.members.find((m) => m !== status.id);
  if (peer === undefined) return;
  try {
    node.transferLeadership(peer);
  } catch {
    return;
  }
  for (let waited = 0; waited < tickMs * electionTicks && node.status().role === "Leader"; waited += tickMs) {
    await new Promise<void>((resolve) => clock.setTimeout(resolve, tickMs));
  }
}
