// Thin kvraftpb.KVService handlers: translate wire messages to KVServer calls and KVServer's typed
// errors to Connect errors. Validation of keys, values and sessions belongs to KVServer.

import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import {
  CommandResponseSchema,
  GetStatusResponseSchema,
  KVService,
  Op,
  type CommandRequest,
  type CommandResponse,
  type GetStatusResponse,
} from "../gen/kvraftpb/kvraft_pb.ts";

export type KVOp = "Get" | "Put" | "Append" | "Delete";
export type KVErr = "OK" | "ErrNoKey" | "ErrWrongLeader" | "ErrTimeout";

/** What the handlers need from a KVServer (src/kv): its public command and status calls. */
export interface KVBackend {
  command(args: {
    key: string;
    value: string;
    op: KVOp;
    clientId: bigint;
    commandId: bigint;
  }): Promise<{ err: KVErr; value: string; leaderId?: number }>;
  getStatus(): Promise<{
    id: number;
    state: string;
    term: number;
    lastApplied: number;
    commitIndex: number;
    storageSize: number;
    leaderId: number;
    members: number[];
    snapshotIndex: number;
    keyCount?: number;
    storageHealth?: string;
  }>;
}

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

/** KVError codes (src/kv) → Connect codes. */
const ERROR_CODES: Record<string, Code> = {
  invalid_argument: Code.InvalidArgument,
  resource_exhausted: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
};

/**
 * Registers KVService. `backend` may be a getter that returns undefined while the node is still
 * opening its storage; calls then fail with `unavailable` and clients try another node.
 */
export function registerKVService(
  router: ConnectRouter,
  backend: KVBackend | (() => KVBackend | undefined),
): void {
  const current = (): KVBackend => {
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
          keyCount: BigInt(status.keyCount ?? 0),
          storageHealth: status.storageHealth ?? "",
        });
        if (status.leaderId >= 0) response.leaderId = BigInt(status.leaderId);
        return response;
      } catch (error) {
        throw toConnectError(error);
      }
    },
  });
}

/** KVError → ConnectError with the matching code and the same advice; anything else is internal. */
export function toConnectError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === "string" && code in ERROR_CODES) return new ConnectError(error.message, ERROR_CODES[code]);
    console.error(`kvraft rpc: internal error: ${error.stack ?? error.message}`);
    return new ConnectError(`internal error: ${error.message}`, Code.Internal);
  }
  return new ConnectError(`internal error: ${String(error)}`, Code.Internal);
}
