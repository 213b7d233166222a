// Public surface of the KV layer: the replica (KVServer), its state machine, the KVService
// handlers and typed errors. The KV simulator lives in src/sim/kv/.
export {
  KVServer,
  type CommandArgs,
  type CommandReply,
  type KVDiagnostics,
  type KVErr,
  type KVLimits,
  type KVOp,
  type KVRaftOptions,
  type KVServerOptions,
  type KVStateOptions,
  type KVStatus,
} from "./server.ts";
export { KVStateMachine, type ApplyListener, type AppliedCommand, type KVStateMachineOptions } from "./state-machine.ts";
export { KVCorruptionError, KVError, type KVErrorCode } from "./errors.ts";
export { encodeCommand, decodeCommand, type WriteCommand } from "./command.ts";
