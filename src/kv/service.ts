// Thin kvraftpb.KVService handlers: translate wire messages to KVServer calls and KVServer's typed
// errors to Connect errors (or, for eRaft's own clients, to an `err` they stop on). Validation of
// keys, values and sessions belongs to KVServer.

import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { KVError, type KVErrorCode } from "./errors.ts";
import { refuseUnparsableBodies } from "./parse-refusal.ts";
import type { CommandArgs, CommandReply, KVOp } from "./replies.ts";
import type { BatchAnswer, KVServer } from "./server.ts";
import { txnHandlers, type TxnBackend } from "./service-txn.ts";
import { watchHandlers, type WatchBackend } from "./service-watch.ts";
import { memberList } from "./cluster-service.ts";
import {
  BatchResponseSchema,
  BatchResultSchema,
  CommandResponseSchema,
  GetStatusResponseSchema,
  KVService,
  Op,
  RegisterSessionResponseSchema,
  type BatchRequest,
  type BatchResponse,
  type BatchResult,
  type CommandRequest,
  type CommandResponse,
  type GetStatusResponse,
  type RegisterSessionResponse,
} from "../gen/kvraftpb/kvraft_pb.ts";
import { log } from "../obs/log.ts";

/** What the handlers use of a KVServer (tests may pass a stand-in of this exact shape). */
export type KVServiceBackend = Pick<KVServer, "command" | "getStatus" | "registerSession"> & Partial<Pick<KVServer, "batch">> & Partial<TxnBackend> & Partial<WatchBackend>;

/** Commands one Batch call may carry; more is refused (invalid_argument) before any runs. */
export const MAX_BATCH_COMMANDS = 4096;

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

/** A batch's result for each bare answer: frozen too, made once (most results of a write batch). */
const BARE_RESULTS = new Map<CommandResponse, BatchResult>([...BARE_RESPONSES.values()].map((response) => [response, Object.freeze(create(BatchResultSchema, { response }))]));

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
    ...txnHandlers(current, toConnectError),
    ...watchHandlers(current, toConnectError),
    async command(request: CommandRequest, context: HandlerContext): Promise<CommandResponse> {
      try {
        return await runCommand(current(), request);
      } catch (error) {
        const refusal = toConnectError(error);
        if (isERaftShaped(request, context)) return answerERaft(refusal);
        throw refusal;
      }
    },
    async batch(request: BatchRequest): Promise<BatchResponse> {
      const commands = request.commands;
      if (commands.length > MAX_BATCH_COMMANDS) {
        throw new ConnectError(`a batch carries ${commands.length} commands; the limit is ${MAX_BATCH_COMMANDS}: split it`, Code.InvalidArgument);
      }
      const kv = current();
      if (kv.batch === undefined) {
        // A backend without batches: every command on its own, concurrently.
        const results = await Promise.all(commands.map((command) => runCommand(kv, command).then(batchResult, batchRefusal)));
        return create(BatchResponseSchema, { results });
      }
      // The writes go into the log as a few batch entries; each command is answered on its own.
      const results = new Array<BatchResult>(commands.length);
      const args: CommandArgs[] = [];
      const at: number[] = [];
      commands.forEach((command, i) => {
        const op = OPS[command.op];
        if (op === undefined) results[i] = batchRefusal(unknownOp(command.op));
        else {
          args.push({ key: command.key, value: command.value, op, clientId: command.clientId, commandId: command.commandId, registered: command.registered });
          at.push(i);
        }
      });
      let answers: BatchAnswer[];
      try {
        answers = await kv.batch(args);
      } catch (error) {
        throw toConnectError(error);
      }
      for (let j = 0; j < answers.length; j++) {
        const answer = answers[j]!;
        results[at[j]!] = answer instanceof Error ? batchRefusal(answer) : batchResult(toResponse(answer));
      }
      return create(BatchResponseSchema, { results });
    },
    async registerSession(): Promise<RegisterSessionResponse> {
      try {
        const reply = await current().registerSession();
        const response = create(RegisterSessionResponseSchema, { err: reply.err });
        if (reply.err === "OK") response.clientId = reply.clientId;
        else if (reply.leaderId !== undefined && reply.leaderId >= 0) response.leader = { case: "leaderId", value: BigInt(reply.leaderId) };
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
          memberDetails: memberList(status),
        });
        if (status.leaderId >= 0) response.leader = { case: "leaderId", value: BigInt(status.leaderId) };
        return response;
      } catch (error) {
        throw toConnectError(error);
      }
    },
  });
  refuseUnparsableBodies(router, KVService.typeName);
}

function batchResult(response: CommandResponse): BatchResult {
  return BARE_RESULTS.get(response) ?? create(BatchResultSchema, { response });
}

function batchRefusal(error: unknown): BatchResult {
  const refusal = toConnectError(error);
  return create(BatchResultSchema, { code: refusal.code, message: refusal.rawMessage });
}

function unknownOp(op: number): ConnectError {
  return new ConnectError(`unknown op ${op}: expected PUT (0), APPEND (1), GET (2) or DELETE (3)`, Code.InvalidArgument);
}

/** One command, as Command runs it; refusals are thrown. */
async function runCommand(kv: KVServiceBackend, request: CommandRequest): Promise<CommandResponse> {
  const op = OPS[request.op];
  if (op === undefined) throw unknownOp(request.op);
  return toResponse(await kv.command({
    key: request.key,
    value: request.value,
    op,
    clientId: request.clientId,
    commandId: request.commandId,
    registered: request.registered,
  }));
}

/** A reply as the wire's CommandResponse: the frozen bare answers where they fit. */
function toResponse(result: CommandReply): CommandResponse {
  const hinted = result.err === "ErrWrongLeader" && result.leaderId !== undefined && result.leaderId >= 0;
  if (result.value === "" && !hinted) {
    const bare = BARE_RESPONSES.get(result.err);
    if (bare !== undefined) return bare;
  }
  const response = create(CommandResponseSchema, { err: result.err, value: result.value });
  if (hinted) response.leader = { case: "leaderId", value: BigInt(result.leaderId!) };
  return response;
}

/**
 * A request from eRaft's own Clerk: over gRPC (the protocol it speaks) and without kvraft's
 * registered-session field. Its Clerk retries every RPC error on the next server forever, so a
 * refusal must come back as a response (see the rule in proto/kvraftpb/kvraft.proto).
 */
function isERaftShaped(request: CommandRequest, context: HandlerContext): boolean {
  return context.protocolName === "grpc" && !request.registered;
}

/** Refusals to eRaft's Clerk held back at once at most (each a timer); beyond it, answered at once. */
const MAX_HELD_REFUSALS = 1000;
/** How long an overload refusal to eRaft's Clerk is held: its pause before it tries the next server. */
const OVERLOAD_PAUSE_MS = 50;
let heldRefusals = 0;

/**
 * A refusal in eRaft's vocabulary, derived from its Connect code: overload → ErrTimeout after a
 * pause (eRaft's Clerk has no backoff of its own), a node that cannot serve → ErrWrongLeader (try
 * the next), anything else → "Err<Code>: <why>", which eRaft's Clerk returns to its caller.
 */
async function answerERaft(refusal: ConnectError): Promise<CommandResponse> {
  if (BACK_OFF_CODES.has(refusal.code)) {
    if (heldRefusals < MAX_HELD_REFUSALS) {
      heldRefusals++;
      await new Promise((resolve) => setTimeout(resolve, OVERLOAD_PAUSE_MS)).finally(() => heldRefusals--);
    }
    return BARE_RESPONSES.get("ErrTimeout")!;
  }
  if (TRY_ANOTHER_NODE_CODES.has(refusal.code)) return BARE_RESPONSES.get("ErrWrongLeader")!;
  return create(CommandResponseSchema, { err: `Err${Code[refusal.code]}: ${refusal.rawMessage}` });
}

const BACK_OFF_CODES = new Set<Code>([Code.ResourceExhausted]);
const TRY_ANOTHER_NODE_CODES = new Set<Code>([Code.Unavailable]);

/** KVError → ConnectError with its code and the same advice; anything else is internal (and logged). */
export function toConnectError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof KVError) return new ConnectError(error.message, CONNECT_CODES[error.code]);
  if (error instanceof Error) {
    log.error(`kvraft rpc: internal error: ${error.message}`, { error });
    return new ConnectError(`internal error: ${error.message}`, Code.Internal);
  }
  return new ConnectError(`internal error: ${String(error)}`, Code.Internal);
}
