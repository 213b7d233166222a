// The Clerk's bulk writer (putMany, appendMany): pairs go straight into Batch RPCs of up to
// `batchCommands` writes, a few RPCs in flight, each write on a session of its own, with none of
// the per-operation machinery of put(): one object per write, one promise per RPC. A write keeps
// its (session, commandId) through every resend, so it is applied exactly once; what a node
// refuses is resent, followed to the leader, or fails the load, by the same rules as put().
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { Op, type BatchResponse, type KVService } from "../gen/kvraftpb/kvraft_pb.ts";
import { BACK_OFF_ON_SAME_NODE, ClerkError, RETRYABLE, SESSION_GONE } from "./clerk-outcomes.ts";

/** One server session as the Clerk keeps it. */
export interface BulkSession {
  id: bigint;
  nextCommandId: bigint;
}

/** What the bulk writer uses of its Clerk. */
export interface BulkHost {
  /** The node id of each slot of clients and addrs. */
  readonly ids: readonly number[];
  readonly clients: readonly Client<typeof KVService>[];
  readonly addrs: readonly string[];
  /** The slot of the node believed to lead (shared with the Clerk's other operations). */
  leader: number;
  /** A registered session no other operation uses; resolves once registered. */
  acquire(deadline: number): Promise<BulkSession>;
  /** Hands a session back to the Clerk's pool. */
  release(session: BulkSession): void;
  /** Registers `session` again (its server session expired). */
  reregister(session: BulkSession, deadline: number): Promise<void>;
  readonly registered: boolean;
  readonly callTimeoutMs: number;
  readonly operationTimeoutMs: number;
  readonly backoffMs: number;
  readonly maxBackoffMs: number;
  readonly maxRequestBytes: number;
}

export interface BulkRun {
  op: Op.PUT | Op.APPEND;
  concurrency: number;
  /** Writes per Batch RPC at most (the server takes 4096). */
  batchCommands: number;
  /** Batch RPCs in flight at most. */
  maxRpcs: number;
  onWritten?: (key: string, value: string) => void;
}

interface Item {
  key: string;
  value: string;
  session: BulkSession;
  commandId: bigint;
  /** Set at the first send: the write fails (outcome unknown) if not done by then. */
  deadline: number;
  sends: number;
}

/** Batch RPCs a bulk load keeps in flight at least by default: a small load still overlaps a few. */
export const MIN_BULK_BATCHES = 4;
/**
 * Batch RPCs one bulk load keeps in flight at most, whatever it asks for: with 1,024 writes each,
 * 64 RPCs are 65,536 writes, beyond what one leader holds pending (10,000 commands by default).
 */
export const MAX_BULK_BATCHES = 64;

/**
 * Batch RPCs in flight for a load of `concurrency` writes at up to `batchCommands` per RPC: as
 * asked (`requested`), or by default as many as carry every write in flight (so `concurrency` is
 * what reaches the leader, not what waits in the Clerk), at least MIN_BULK_BATCHES; never more
 * than MAX_BULK_BATCHES.
 */
export function bulkBatches(concurrency: number, batchCommands: number, requested?: number): number {
  const wanted = requested !== undefined && Number.isFinite(requested) ? Math.floor(requested) : Math.max(MIN_BULK_BATCHES, Math.ceil(concurrency / Math.max(1, batchCommands)));
  return Math.max(1, Math.min(MAX_BULK_BATCHES, wanted));
}

/** Sessions the writer starts with; it doubles them while the load needs more, up to its concurrency. */
const REGISTER_CHUNK = 32;

/** Runs a bulk load; resolves with the writes acknowledged, or rejects with the first failure and that count. */
export async function runBulk(host: BulkHost, run: BulkRun, source: Iterator<readonly [string, string]>): Promise<{ written: number; failure: unknown }> {
  const free: BulkSession[] = [];
  const owned: BulkSession[] = [];
  const queue: Item[] = [];
  let active = 0;
  let rpcs = 0;
  let acquiring = 0;
  let exhausted = false;
  let failure: unknown = null;
  let written = 0;
  let pausedUntil = 0;
  let backoff = host.backoffMs;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const fail = (error: unknown) => {
    failure ??= error;
  };
  // Roughly the bytes of one RPC at most (strings count up to 3 bytes per unit in UTF-8).
  const maxRpcUnits = Math.max(1, Math.floor(host.maxRequestBytes / 4));

  const take = (session: BulkSession): boolean => {
    const next = source.next();
    if (next.done === true) {
      exhausted = true;
      free.push(session);
      return false;
    }
    const [key, value] = next.value;
    if ((key.length + value.length) * 3 > host.maxRequestBytes && Buffer.byteLength(key) + Buffer.byteLength(value) > host.maxRequestBytes) {
      fail(new ClerkError(Code.InvalidArgument, `key ${JSON.stringify(key.slice(0, 64))} and its value pass the request limit of ${host.maxRequestBytes} bytes`));
      free.push(session);
      return false;
    }
    queue.push({ key, value, session, commandId: session.nextCommandId++, deadline: 0, sends: 0 });
    active++;
    return true;
  };

  // Sessions are acquired as the load needs them, doubling (a short load registers few), each
  // usable as soon as it is registered.
  const grow = () => {
    const want = Math.min(Math.max(REGISTER_CHUNK, owned.length), run.concurrency - owned.length - acquiring);
    if (want <= 0 || acquiring > 0) return;
    const deadline = Date.now() + host.operationTimeoutMs;
    for (let i = 0; i < want; i++) {
      acquiring++;
      host.acquire(deadline).then(
        (session) => {
          acquiring--;
          owned.push(session);
          free.push(session);
          poke();
        },
        (error: unknown) => {
          acquiring--;
          fail(error);
          poke();
        },
      );
    }
  };

  const requeue = (item: Item, problem: string) => {
    if (Date.now() >= item.deadline) {
      fail(new ClerkError(Code.DeadlineExceeded, `bulk write of ${JSON.stringify(item.key.slice(0, 64))} gave up: no node completed it (last: ${problem}). It may or may not have been applied.`, true));
      active--;
      return;
    }
    queue.push(item);
  };

  const settle = (item: Item) => {
    active--;
    written++;
    free.push(item.session);
    run.onWritten?.(item.key, item.value);
  };

  const answered = (batch: Item[], node: number, response: BatchResponse) => {
    let stay = false;
    let moved = false;
    for (let i = 0; i < batch.length; i++) {
      const item = batch[i]!;
      const result = response.results[i];
      if (result === undefined) {
        requeue(item, `node ${host.ids[node]} answered ${response.results.length} results for ${batch.length} writes`);
        continue;
      }
      if (result.code === 0) {
        const err = result.response?.err;
        if (err === "OK" || err === "ErrNoKey") settle(item);
        else {
          // ErrWrongLeader (maybe with a hint) or ErrTimeout: resend, to the leader it names.
          // The hint is a node id: its slot, if the Clerk knows the node.
          const hint = result.response?.leader.case === "leaderId" ? host.ids.indexOf(Number(result.response.leader.value)) : -1;
          const useful = hint >= 0 && hint !== node;
          if (!moved && err === "ErrWrongLeader") {
            host.leader = useful ? hint : (node + 1) % host.clients.length;
            moved = true;
          }
          // Without a leader to follow (an election, a timeout), resend after a pause, not at once.
          if (!useful) stay = true;
          requeue(item, `node ${host.ids[node]}: ${err}`);
        }
        continue;
      }
      const code = result.code as Code;
      if (SESSION_GONE.has(code)) {
        if (item.sends > 1) {
          fail(new ClerkError(Code.FailedPrecondition, `bulk write of ${JSON.stringify(item.key.slice(0, 64))}: the session expired while the write was being retried; it may or may not have been applied (${result.message})`, true));
          active--;
          continue;
        }
        // Refused on its first send: certainly not applied. A new session, a new commandId.
        item.session.id = 0n;
        void host.reregister(item.session, item.deadline).then(
          () => {
            item.commandId = item.session.nextCommandId++;
            item.sends = 0;
            queue.push(item);
            poke();
          },
          (error: unknown) => {
            fail(error);
            active--;
            poke();
          },
        );
      } else if (BACK_OFF_ON_SAME_NODE.has(code) || RETRYABLE.has(code)) {
        stay = true;
        requeue(item, `node ${host.ids[node]}: ${result.message}`);
      } else {
        fail(new ClerkError(code, `node ${host.ids[node]} (${host.addrs[node]}) refused the write of ${JSON.stringify(item.key.slice(0, 64))}: ${result.message}`));
        active--;
      }
    }
    if (stay) pause();
    else backoff = host.backoffMs;
  };

  const pause = () => {
    const delay = backoff * (0.5 + Math.random());
    backoff = Math.min(backoff * 2, host.maxBackoffMs);
    pausedUntil = Date.now() + delay;
  };

  const send = (batch: Item[]) => {
    const node = host.leader;
    const now = Date.now();
    let timeoutMs = host.callTimeoutMs;
    const commands = batch.map((item) => {
      if (item.sends++ === 0) item.deadline = now + host.operationTimeoutMs;
      timeoutMs = Math.min(timeoutMs, Math.max(1, item.deadline - now));
      return { key: item.key, value: item.value, op: run.op, clientId: item.session.id, commandId: item.commandId, registered: host.registered };
    });
    rpcs++;
    host.clients[node]!.batch({ commands }, { timeoutMs }).then(
      (response) => answered(batch, node, response),
      (error: unknown) => {
        const connectError = ConnectError.from(error);
        if (connectError.code === Code.Unimplemented) {
          fail(new ClerkError(Code.Unimplemented, `node ${host.ids[node]} (${host.addrs[node]}) has no Batch RPC: putMany and appendMany need a kvraft server with Batch`));
          active -= batch.length;
          return;
        }
        if (!RETRYABLE.has(connectError.code) && !BACK_OFF_ON_SAME_NODE.has(connectError.code)) {
          // A refusal of the whole call (e.g. a request over the server's size limit): nothing applied.
          fail(new ClerkError(connectError.code, `node ${host.ids[node]} (${host.addrs[node]}) refused a batch of ${batch.length} writes: ${connectError.rawMessage}`));
          active -= batch.length;
          return;
        }
        if (!BACK_OFF_ON_SAME_NODE.has(connectError.code) && host.leader === node) host.leader = (node + 1) % host.clients.length;
        for (const item of batch) requeue(item, `node ${host.ids[node]} (${host.addrs[node]}): ${connectError.message}`);
        pause();
      },
    ).finally(() => {
      rpcs--;
      poke();
    });
  };

  for (;;) {
    if (failure === null) {
      while (!exhausted && active < run.concurrency) {
        const session = free.pop();
        if (session === undefined) {
          grow();
          break;
        }
        if (!take(session)) break;
      }
      // Full batches go at once; a partial one only when nothing is in flight or nothing more is
      // coming, so the RPCs stay large instead of keeping the sizes of the first few.
      const target = Math.max(1, Math.min(run.batchCommands, Math.ceil(run.concurrency / run.maxRpcs)));
      while (queue.length > 0 && rpcs < run.maxRpcs && Date.now() >= pausedUntil && (queue.length >= target || rpcs === 0 || (exhausted && acquiring === 0))) {
        let units = 0;
        let count = 0;
        while (count < queue.length && count < target) {
          const item = queue[count]!;
          units += item.key.length + item.value.length;
          if (count > 0 && units > maxRpcUnits) break;
          count++;
        }
        send(queue.splice(0, count));
      }
    }
    const idle = rpcs === 0 && acquiring === 0;
    if ((failure !== null || (exhausted && active === 0)) && idle) break;
    // Paused with writes to send: wake at the pause's end (a timer may fire a little before
    // Date.now() reaches it, so the loop sets its own rather than trust the pause's).
    const pauseLeft = pausedUntil - Date.now();
    if (failure === null && queue.length > 0 && rpcs < run.maxRpcs && pauseLeft > 0) setTimeout(poke, pauseLeft + 1);
    // Writes waiting on a re-registration are counted in `active` and wake the loop when requeued.
    await new Promise<void>((resolve) => (wake = resolve));
  }
  for (const session of owned) host.release(session);
  return { written, failure };
}

/** The plain way: each pair through `write` (the Clerk's own operation path), `concurrency` at a time. */
export async function runEach(
  source: Iterator<readonly [string, string]>,
  concurrency: number,
  write: (key: string, value: string) => Promise<unknown>,
  onWritten?: (key: string, value: string) => void,
): Promise<{ written: number; failure: unknown }> {
  let written = 0;
  let failure: unknown = null;
  const worker = async () => {
    while (failure === null) {
      const next = source.next();
      if (next.done === true) return;
      const [key, value] = next.value;
      try {
        await write(key, value);
        written++;
        onWritten?.(key, value);
      } catch (error) {
        failure ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { written, failure };
}
