// kvraftpb.KVService's Range, DeleteRange and Txn handlers: wire messages to the KV layer's Range
// and Txn types and back. Thin, as service.ts: validation lives in range.ts and txn.ts.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  Compare_CompareResult,
  Compare_CompareTarget,
  DeleteRangeResponseSchema,
  KeyValueSchema,
  PutResponseSchema,
  RangeResponseSchema,
  ResponseHeaderSchema,
  ResponseOpSchema,
  TxnResponseSchema,
  type Compare as WireCompare,
  type DeleteRangeRequest,
  type DeleteRangeResponse,
  type KeyValue,
  type RangeRequest,
  type RangeResponse,
  type RequestOp,
  type ResponseHeader,
  type ResponseOp,
  type TxnRequest as WireTxnRequest,
  type TxnResponse,
} from "../gen/kvraftpb/kvraft_pb.ts";
import type { KV, RangeResult, RangeSpec } from "./range.ts";
import type { ReplyHeader, TxnServer } from "./txn-server.ts";
import type { Compare, CompareResult, CompareTarget, TxnOp, TxnOpResult, TxnRequest } from "./txn-types.ts";

/** The part of a replica these handlers call. */
export interface TxnBackend {
  api: Pick<TxnServer, "range" | "txn">;
}

const TARGETS: Record<number, CompareTarget> = {
  [Compare_CompareTarget.VERSION]: "version",
  [Compare_CompareTarget.CREATE]: "create",
  [Compare_CompareTarget.MOD]: "mod",
  [Compare_CompareTarget.VALUE]: "value",
};
const RESULTS: Record<number, CompareResult> = {
  [Compare_CompareResult.EQUAL]: "equal",
  [Compare_CompareResult.NOT_EQUAL]: "not_equal",
  [Compare_CompareResult.GREATER]: "greater",
  [Compare_CompareResult.LESS]: "less",
};

/** Range, DeleteRange and Txn, for router.service(KVService, …); `current` throws while starting. */
export function txnHandlers(current: () => Partial<TxnBackend>, toConnectError: (error: unknown) => ConnectError) {
  const api = (): TxnBackend["api"] => {
    const backend = current().api;
    if (backend === undefined) throw new ConnectError("this node does not serve Range, DeleteRange or Txn", Code.Unimplemented);
    return backend;
  };
  return {
    async range(request: RangeRequest): Promise<RangeResponse> {
      try {
        const reply = await api().range(rangeSpec(request, "range"), request.serializable);
        return rangeResponse(reply.header, reply.result);
      } catch (error) {
        throw toConnectError(error);
      }
    },
    async deleteRange(request: DeleteRangeRequest): Promise<DeleteRangeResponse> {
      try {
        const txn: TxnRequest = { compare: [], success: [deleteOp(request)], failure: [] };
        const reply = await api().txn(txn, request.clientId, request.commandId, request.registered);
        const response = create(DeleteRangeResponseSchema, { header: wireHeader(reply.header) });
        const first = reply.result?.responses[0];
        if (first?.type === "delete") {
          response.deleted = BigInt(first.deleted);
          response.prevKvs = first.prevKvs.map(wireKV);
        }
        return response;
      } catch (error) {
        throw toConnectError(error);
      }
    },
    async txn(request: WireTxnRequest): Promise<TxnResponse> {
      try {
        const txn: TxnRequest = {
          compare: request.compare.map((c, i) => compare(c, i)),
          success: request.success.map((op, i) => requestOp(op, `success operation ${i}`)),
          failure: request.failure.map((op, i) => requestOp(op, `failure operation ${i}`)),
        };
        const reply = await api().txn(txn, request.clientId, request.commandId, request.registered);
        const response = create(TxnResponseSchema, { header: wireHeader(reply.header) });
        if (reply.result !== undefined) {
          response.succeeded = reply.result.succeeded;
          response.responses = reply.result.responses.map((r) => responseOp(r, reply.header));
        }
        return response;
      } catch (error) {
        throw toConnectError(error);
      }
    },
  };
}

export function wireHeader(header: ReplyHeader): ResponseHeader {
  const wire = create(ResponseHeaderSchema, {
    revision: BigInt(header.revision),
    memberId: BigInt(header.memberId),
    raftTerm: BigInt(header.raftTerm),
    err: header.err,
  });
  if (header.leaderId !== undefined && header.leaderId >= 0) wire.leaderId = BigInt(header.leaderId);
  return wire;
}

export function wireKV(kv: KV): KeyValue {
  return create(KeyValueSchema, {
    key: kv.key,
    value: kv.value,
    createRevision: BigInt(kv.createRevision),
    modRevision: BigInt(kv.modRevision),
    version: BigInt(kv.version),
  });
}

function rangeResponse(header: ReplyHeader, result: RangeResult | undefined): RangeResponse {
  const response = create(RangeResponseSchema, { header: wireHeader(header) });
  if (result !== undefined) {
    response.kvs = result.kvs.map(wireKV);
    response.more = result.more;
    response.count = BigInt(result.count);
    response.nextKey = result.nextKey;
  }
  return response;
}

function rangeSpec(request: RangeRequest, what: string): RangeSpec {
  return { key: request.key, rangeEnd: request.rangeEnd, limit: safeNumber(request.limit, `the ${what}'s limit`), keysOnly: request.keysOnly, countOnly: request.countOnly };
}

function deleteOp(request: DeleteRangeRequest): TxnOp {
  return { type: "delete", key: request.key, rangeEnd: request.rangeEnd, prevKv: request.prevKv };
}

function requestOp(op: RequestOp, what: string): TxnOp {
  switch (op.request.case) {
    case "requestRange":
      if (op.request.value.serializable) throw new ConnectError(`${what}: a range inside a Txn is always linearizable; leave serializable unset`, Code.InvalidArgument);
      return { type: "range", range: rangeSpec(op.request.value, what) };
    case "requestPut":
      return { type: "put", key: op.request.value.key, value: op.request.value.value, prevKv: op.request.value.prevKv };
    case "requestDeleteRange":
      return deleteOp(op.request.value);
    default:
      throw new ConnectError(`${what} is empty: set request_range, request_put or request_delete_range`, Code.InvalidArgument);
  }
}

function compare(c: WireCompare, i: number): Compare {
  const target = TARGETS[c.target];
  const result = RESULTS[c.result];
  if (target === undefined) throw new ConnectError(`compare ${i}: unknown target ${c.target}`, Code.InvalidArgument);
  if (result === undefined) throw new ConnectError(`compare ${i}: unknown result ${c.result}`, Code.InvalidArgument);
  const operand = c.targetUnion;
  const expected = { version: "version", create: "createRevision", mod: "modRevision", value: "value" }[target];
  // An unset operand is the zero of its kind (etcd's proto3 defaults): version 0 = "does not exist".
  if (operand.case !== undefined && operand.case !== expected) {
    throw new ConnectError(`compare ${i} targets ${target} but sets ${operand.case}: set ${expected}`, Code.InvalidArgument);
  }
  if (target === "value") return { key: c.key, target, result, value: operand.case === "value" ? operand.value : new Uint8Array(0), number: 0 };
  const number = operand.case === undefined || operand.case === "value" ? 0 : safeNumber(operand.value, `compare ${i}'s ${target}`);
  return { key: c.key, target, result, value: new Uint8Array(0), number };
}

function responseOp(r: TxnOpResult, header: ReplyHeader): ResponseOp {
  switch (r.type) {
    case "range":
      return create(ResponseOpSchema, { response: { case: "responseRange", value: rangeResponse(header, r.range) } });
    case "put": {
      const put = create(PutResponseSchema, { header: wireHeader(header) });
      if (r.prevKv !== null) put.prevKv = wireKV(r.prevKv);
      return create(ResponseOpSchema, { response: { case: "responsePut", value: put } });
    }
    case "delete":
      return create(ResponseOpSchema, {
        response: {
          case: "responseDeleteRange",
          value: create(DeleteRangeResponseSchema, { header: wireHeader(header), deleted: BigInt(r.deleted), prevKvs: r.prevKvs.map(wireKV) }),
        },
      });
  }
}

function safeNumber(value: bigint, what: string): number {
  if (value < BigInt(Number.MIN_SAFE_INTEGER) || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ConnectError(`${what} ${value} is out of range`, Code.InvalidArgument);
  }
  return Number(value);
}
