// Public surface of the KV layer: the replica (KVServer), its state machine, the KVService
// handlers' types and typed errors. The KV simulator lives in src/sim/kv/.
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
export { KVStateMachine, type KVStateMachineOptions } from "./state-machine.ts";
export type { AppliedCommand } from "./pending-writes.ts";
export { InvalidArgumentError, KVCorruptionError, KVError, OverloadedError, UnavailableError, type KVErrorCode } from "./errors.ts";
export { FatalError } from "./fail-stop.ts";
export { RECOVERING_FILE, markNewDataDir } from "./repair.ts";
