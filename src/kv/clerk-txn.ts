// The Clerk's Range, DeleteRange, Txn and compare-and-swap: one retry loop over the nodes that
// follows leader hints and backs off like Command's, and keeps one commandId across the retries of
// a write so its session answers a repeat. Keys and values are strings (UTF-8) at this surface.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  Compare_CompareResult,
  Compare_CompareTarget,
  type KVService,
  type KeyValue,
  type ResponseHeader,
  type TxnRequestSchema,
  type TxnResponse,
} from "../gen/kvraftpb/kvraft_pb.ts";
import { BACK_OFF_ON_SAME_NODE, ClerkError, RETRYABLE } from "./client.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What the retry loop needs of a Clerk. */
export interface ClerkParts {
  clients: Client<typeof KVService>[];
  addrs: string[];
  leader: number;
  callTimeoutMs: number;
  operationTimeoutMs: number;
  maxAttempts: number;
  backoffMs: number;
  maxBackoffMs: number;
}

/** One key as the Clerk returns it. */
export interface ClerkKV {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  version: number;
}

export interface RangeOptions {
  /** Keys at most (0: as many as one answer holds). */
  limit?: number;
  keysOnly?: boolean;
  countOnly?: boolean;
  /** Read any node's applied state without a ReadIndex round (possibly stale). */
  serializable?: boolean;
}

export interface RangeAnswer {
  kvs: ClerkKV[];
  more: boolean;
  count: number;
  /** With more: the key to continue from. */
  nextKey: string;
  /** The store's revision the answer was read at. */
  revision: number;
}

export interface CasAnswer {
  succeeded: boolean;
  /** The revision of the Txn (its entry's index). */
  revision: number;
  /** On failure: the key as it is (null when absent). On success: the key as it was before. */
  previous: ClerkKV | null;
}

export function toClerkKV(kv: KeyValue): ClerkKV {
  return {
    key: decoder.decode(kv.key),
    value: decoder.decode(kv.value),
    createRevision: Number(kv.createRevision),
    modRevision: Number(kv.modRevision),
    version: Number(kv.version),
  };
}

export const bytes = (text: string): Uint8Array => encoder.encode(text);

/** range_end "\0": every key >= key; the prefix's end: every key that starts with it. */
export function prefixRangeEnd(prefix: string): Uint8Array {
  const end = encoder.encode(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Uint8Array.of(0);
}

export async function clerkRange(parts: ClerkParts, key: string, end: string | Uint8Array, options: RangeOptions = {}): Promise<RangeAnswer> {
  const request = {
    key: bytes(key),
    rangeEnd: typeof end === "string" ? bytes(end) : end,
    limit: BigInt(options.limit ?? 0),
    keysOnly: options.keysOnly ?? false,
    countOnly: options.countOnly ?? false,
    serializable: options.serializable ?? false,
  };
  const response = await retrying(parts, `Range(${JSON.stringify(key)})`, false, options.serializable === true, (client, timeoutMs) => client.range(request, { timeoutMs }));
  return {
    kvs: response.kvs.map(toClerkKV),
    more: response.more,
    count: Number(response.count),
    nextKey: decoder.decode(response.nextKey),
    revision: Number(response.header?.revision ?? 0n),
  };
}

/** Every key starting with `prefix`, page by page (each page linearizable on its own). */
export async function clerkScan(parts: ClerkParts, prefix: string, options: RangeOptions & { maxKeys?: number } = {}): Promise<ClerkKV[]> {
  const end = prefixRangeEnd(prefix);
  const out: ClerkKV[] = [];
  const maxKeys = options.maxKeys ?? Infinity;
  let from = prefix;
  for (;;) {
    const page = await clerkRange(parts, from, end, { ...options, limit: options.limit ?? 1000 });
    out.push(...page.kvs);
    if (!page.more || out.length >= maxKeys) return out.slice(0, maxKeys);
    from = page.nextKey;
  }
}

export async function clerkDeleteRange(
  parts: ClerkParts,
  clientId: bigint,
  commandId: bigint,
  key: string,
  end: string | Uint8Array,
  prevKv = false,
): Promise<{ deleted: number; prevKvs: ClerkKV[]; revision: number }> {
  const request = { key: bytes(key), rangeEnd: typeof end === "string" ? bytes(end) : end, prevKv, clientId, commandId };
  const response = await retrying(parts, `DeleteRange(${JSON.stringify(key)})`, true, false, (client, timeoutMs) => client.deleteRange(request, { timeoutMs }));
  return { deleted: Number(response.deleted), prevKvs: response.prevKvs.map(toClerkKV), revision: Number(response.header?.revision ?? 0n) };
}

export type ClerkTxnRequest = Omit<MessageInitShape<typeof TxnRequestSchema>, "clientId" | "commandId" | "$typeName">;

export function clerkTxn(parts: ClerkParts, clientId: bigint, commandId: bigint, request: ClerkTxnRequest): Promise<TxnResponse> {
  return retrying(parts, "Txn", true, false, (client, timeoutMs) => client.txn({ ...request, clientId, commandId }, { timeoutMs }));
}

/** Sets `key` to `value` if its value is `expect` (null: if it does not exist). */
export async function clerkCas(parts: ClerkParts, clientId: bigint, commandId: bigint, key: string, expect: string | null, value: string): Promise<CasAnswer> {
  const k = bytes(key);
  const compare =
    expect === null
      ? { key: k, target: Compare_CompareTarget.CREATE, result: Compare_CompareResult.EQUAL, targetUnion: { case: "createRevision" as const, value: 0n } }
      : { key: k, target: Compare_CompareTarget.VALUE, result: Compare_CompareResult.EQUAL, targetUnion: { case: "value" as const, value: bytes(expect) } };
  const response = await clerkTxn(parts, clientId, commandId, {
    compare: [compare],
    success: [{ request: { case: "requestPut", value: { key: k, value: bytes(value), prevKv: true } } }],
    failure: [{ request: { case: "requestRange", value: { key: k } } }],
  });
  const first = response.responses[0]?.response;
  let previous: ClerkKV | null = null;
  if (first?.case === "responsePut" && first.value.prevKv !== undefined) previous = toClerkKV(first.value.prevKv);
  if (first?.case === "responseRange" && first.value.kvs.length > 0) previous = toClerkKV(first.value.kvs[0]!);
  return { succeeded: response.succeeded, revision: Number(response.header?.revision ?? 0n), previous };
}

/**
 * Calls `call` on the leader (or, for a serializable read, on any node) until a node answers OK;
 * follows hints, moves on after ErrWrongLeader / ErrTimeout / unreachable, backs off once per
 * round of failures, and gives up at the operation deadline.
 */
async function retrying<T extends { header?: ResponseHeader }>(
  parts: ClerkParts,
  name: string,
  write: boolean,
  anyNode: boolean,
  call: (client: Client<typeof KVService>, timeoutMs: number) => Promise<T>,
): Promise<T> {
  const started = Date.now();
  const deadline = started + parts.operationTimeoutMs;
  const n = parts.clients.length;
  let backoff = parts.backoffMs;
  let failedInRound = 0;
  let lastProblem = "no attempt made";
  for (let attempt = 1; attempt <= parts.maxAttempts; attempt++) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    const node = parts.leader;
    let retry: "hinted" | "next" | "stay";
    try {
      const response = await call(parts.clients[node]!, Math.max(1, Math.min(parts.callTimeoutMs, remaining)));
      const err = response.header?.err ?? "";
      if (err === "OK" || (anyNode && err === "")) return response;
      if (err === "ErrWrongLeader") {
        const hint = response.header?.leaderId === undefined ? -1 : Number(response.header.leaderId);
        lastProblem = `node ${node} is not the leader`;
        if (hint >= 0 && hint < n && hint !== node) {
          parts.leader = hint;
          retry = "hinted";
        } else retry = "next";
      } else if (err === "ErrTimeout") {
        lastProblem = `node ${node} timed out`;
        retry = "next";
      } else {
        throw new ClerkError(Code.Internal, `node ${node} answered ${name} with unknown err "${err}"`);
      }
    } catch (error) {
      if (error instanceof ClerkError) throw error;
      const connectError = ConnectError.from(error);
      lastProblem = `node ${node} (${parts.addrs[node]}): ${connectError.message}`;
      if (BACK_OFF_ON_SAME_NODE.has(connectError.code)) retry = "stay";
      else if (RETRYABLE.has(connectError.code)) retry = "next";
      else throw new ClerkError(connectError.code, `node ${node} (${parts.addrs[node]}) refused ${name}: ${connectError.rawMessage}`);
    }
    if (retry === "next") parts.leader = (node + 1) % n;
    if (retry === "stay" || ++failedInRound >= n) {
      failedInRound = 0;
      const pause = Math.min(backoff * (0.5 + Math.random()), Math.max(0, deadline - Date.now()));
      await new Promise((resolve) => setTimeout(resolve, pause));
      backoff = Math.min(backoff * 2, parts.maxBackoffMs);
    }
  }
  throw new ClerkError(
    Code.DeadlineExceeded,
    `${name} gave up after ${Date.now() - started} ms: no node completed it (last: ${lastProblem}).` + (write ? " The write may or may not have been applied." : ""),
    write,
  );
}
