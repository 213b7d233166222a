// The Clerk's Range, DeleteRange, Txn and compare-and-swap at the string surface: request builders
// and answer conversions (UTF-8 keys and values, revisions as numbers). The Clerk's own retry loop
// and session carry them (client.ts).
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  Compare_CompareResult,
  Compare_CompareTarget,
  type DeleteRangeResponse,
  type KVService,
  type KeyValue,
  type RangeResponse,
  type TxnRequestSchema,
  type TxnResponse,
} from "../gen/kvraftpb/kvraft_pb.ts";
import type { Client } from "@connectrpc/connect";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What a watch needs of a Clerk (its own copy of the node to ask). */
export interface ClerkParts {
  /** The node id of each slot below (the known members, ascending). */
  ids: readonly number[];
  clients: Client<typeof KVService>[];
  addrs: string[];
  /** A slot of the arrays, not a node id. */
  leader: number;
  operationTimeoutMs: number;
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

export interface DeleteAnswer {
  deleted: number;
  prevKvs: ClerkKV[];
  revision: number;
}

export interface CasAnswer {
  succeeded: boolean;
  /** The revision of the Txn (its entry's index). */
  revision: number;
  /** On failure: the key as it is (null when absent). On success: the key as it was before. */
  previous: ClerkKV | null;
}

export type ClerkTxnRequest = Omit<MessageInitShape<typeof TxnRequestSchema>, "clientId" | "commandId" | "registered" | "$typeName">;

export const bytes = (text: string): Uint8Array => encoder.encode(text);

export function toClerkKV(kv: KeyValue): ClerkKV {
  return {
    key: decoder.decode(kv.key),
    value: decoder.decode(kv.value),
    createRevision: Number(kv.createRevision),
    modRevision: Number(kv.modRevision),
    version: Number(kv.version),
  };
}

/** The range_end covering every key that starts with `prefix` ("\0", every key, for ""). */
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

export function rangeRequest(key: string, end: string | Uint8Array, options: RangeOptions = {}) {
  return {
    key: bytes(key),
    rangeEnd: typeof end === "string" ? bytes(end) : end,
    limit: BigInt(options.limit ?? 0),
    keysOnly: options.keysOnly ?? false,
    countOnly: options.countOnly ?? false,
    serializable: options.serializable ?? false,
  };
}

export function rangeAnswer(response: RangeResponse): RangeAnswer {
  return {
    kvs: response.kvs.map(toClerkKV),
    more: response.more,
    count: Number(response.count),
    nextKey: decoder.decode(response.nextKey),
    revision: Number(response.header?.revision ?? 0n),
  };
}

/** Every key starting with `prefix`, page by page through `range` (each page linearizable on its own). */
export async function scanPages(
  range: (key: string, end: Uint8Array, options: RangeOptions) => Promise<RangeAnswer>,
  prefix: string,
  options: RangeOptions & { maxKeys?: number } = {},
): Promise<ClerkKV[]> {
  const end = prefixRangeEnd(prefix);
  const out: ClerkKV[] = [];
  const maxKeys = options.maxKeys ?? Infinity;
  let from = prefix;
  for (;;) {
    const page = await range(from, end, { ...options, limit: options.limit ?? 1000 });
    out.push(...page.kvs);
    if (!page.more || out.length >= maxKeys) return out.slice(0, maxKeys);
    from = page.nextKey;
  }
}

export function deleteRequest(key: string, end: string | Uint8Array, prevKv: boolean) {
  return { key: bytes(key), rangeEnd: typeof end === "string" ? bytes(end) : end, prevKv };
}

export function deleteAnswer(response: DeleteRangeResponse): DeleteAnswer {
  return { deleted: Number(response.deleted), prevKvs: response.prevKvs.map(toClerkKV), revision: Number(response.header?.revision ?? 0n) };
}

/** Sets `key` to `value` if its value is `expect` (null: if it does not exist); else reads it. */
export function casRequest(key: string, expect: string | null, value: string): ClerkTxnRequest {
  const k = bytes(key);
  const compare =
    expect === null
      ? { key: k, target: Compare_CompareTarget.CREATE, result: Compare_CompareResult.EQUAL, targetUnion: { case: "createRevision" as const, value: 0n } }
      : { key: k, target: Compare_CompareTarget.VALUE, result: Compare_CompareResult.EQUAL, targetUnion: { case: "value" as const, value: bytes(expect) } };
  return {
    compare: [compare],
    success: [{ request: { case: "requestPut", value: { key: k, value: bytes(value), prevKv: true } } }],
    failure: [{ request: { case: "requestRange", value: { key: k } } }],
  };
}

export function casAnswer(response: TxnResponse): CasAnswer {
  const first = response.responses[0]?.response;
  let previous: ClerkKV | null = null;
  if (first?.case === "responsePut" && first.value.prevKv !== undefined) previous = toClerkKV(first.value.prevKv);
  if (first?.case === "responseRange" && first.value.kvs.length > 0) previous = toClerkKV(first.value.kvs[0]!);
  return { succeeded: response.succeeded, revision: Number(response.header?.revision ?? 0n), previous };
}
