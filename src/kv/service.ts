// Thin kvraftpb.KVService handlers: translate wire messages to KVServer calls and KVServer's typed
// errors to Connect errors. Validation of keys, values and sessions belongs to KVServer.

import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { KVError, type KVErrorCode } from "./errors.ts";
import type { KVOp } from "./replies.ts";
import type { KVServer } from "./server.ts";
import {
  CommandResponseSchema,
  GetStatusResponseSchema,
  KVService,
  Op,
  type CommandRequest,
  type CommandResponse,
  type GetStatusResponse,
} from "../gen/kvraftpb/kvraft_pb.ts";

/** What the handlers use of a KVServer (tests may pass a stand-in of this exact shape). */
export type KVServiceBackend = Pick<KVServer, "command" | "getStatus">;

const OPS: Record<number, KVOp> = {
  [Op.PUT]: "Put",
  [Op.APPEND]: "Append",
  [Op.GET]: "Get",
  [Op.DELETE]: "Delete",
};

/**
 * Answers with no value and no leader hint (every write's, and every miss's): one frozen message
 * each, so the fast lane encodes each once (it caches the bytes of frozen messages).
 */
const BARE_RESPONSES = new Map<string, CommandResponse>(
  (["OK", "ErrNoKey", "ErrWrongLeader", "ErrTimeout"] as const).map((err) => [err, Object.freeze(create(CommandResponseSchema, { err }))]),
);

/** The one mapping from the KV layer's refusals to Connect codes. */
const CONNECT_CODES: Record<KVErrorCode, Code> = {
  invalid_argument: Code.InvalidArgument,
  resource_exhausted: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
  failed_precondition: Code.FailedPrecondition,
};

/**
 * Registers KVService. `backend` may be a getter that returns undefined while the node is still
 * opening its storage; calls then fail with `unavailable` and clients try another node.
 */
export function registerKVService(
  router: ConnectRouter,
  backend: KVServiceBackend | (() => KVServiceBackend | undefined),
): void {
  const current = (): KVServiceBackend => {
    const kv = typeof backend === "function" ? backend() : backend;
    if (kv === undefined) throw new ConnectError("this node is still starting; retry shortly or try another node", Code.Unavailable);
    return kv;
  };
  router.service(KVService, {
    async command(request: CommandRequest): Promise<CommandResponse> {
      const op = OPS[request.op];
      if (op === undefined) {
        throw new ConnectError(
          `unknown op ${request.op}: expected PUT (0), APPEND (1), GET (2) or DELETE (3)`,
          Code.InvalidArgument,
        );
      }
      try {
        const result = await current().command({
          key: request.key,
          value: request.value,
          op,
          clientId: request.clientId,
          commandId: request.commandId,
        });
        const hinted = result.err === "ErrWrongLeader" && result.leaderId !== undefined && result.leaderId >= 0;
        if (result.value === "" && !hinted) {
          const bare = BARE_RESPONSES.get(result.err);
          if (bare !== undefined) return bare;
        }
        const response = create(CommandResponseSchema, { err: result.err, value: result.value });
        if (hinted) response.leaderId = BigInt(result.leaderId!);
        return response;
      } catch (error) {
        throw toConnectError(error);
      }
    },
    async getStatus(): Promise<GetStatusResponse> {
      try {
        const status = await current().getStatus();
        const response = create(GetStatusResponseSchema, {
          id: BigInt(status.id),
          state: status.state,
          term: BigInt(status.term),
          lastApplied: BigInt(status.lastApplied),
          commitIndex: BigInt(status.commitIndex),
          storageSize: BigInt(status.storageSize),
          members: status.members.map((m) => BigInt(m)),
          snapshotIndex: BigInt(status.snapshotIndex),
          keyCount: BigInt(status.keyCount),
          storageHealth: status.storageHealth,
        });
        if (status.leaderId >= 0) response.leaderId = BigInt(status.leaderId);
        return response;
      } catch (error) {
        throw toConnectError(error);
      }
    },
  });
}

/** KVError → ConnectError with its code and the same advice; anything else is internal (and logged). */
export function toConnectError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof KVError) return new ConnectError(error.message, CONNECT_CODES[error.code]);
  if (error instanceof Error) {
    console.error(`kvraft rpc: internal error: ${error.stack ?? error.message}`);
    return new ConnectError(`internal error: ${error.message}`, Code.Internal);
  }
  return new ConnectError(`internal error: ${String(error)}`, Code.Internal);
}
