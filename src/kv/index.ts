// Public surface of the KV layer: the replica (KVServer), its state machine, typed errors, and the
// simulation harness used by tests and `bun run sim --kv`.
export {
  KVServer,
  type CommandArgs,
  type CommandReply,
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
export { runKvSim, KvSimCluster, KvSimClerk, checkClientAppends, type KvSimClusterOptions, type KvSimOptions } from "./sim.ts";
