// The raft layer's public surface: other layers import Raft things from here only.

export * from "./types.ts";
export { Raft, type RaftConfig, type RaftInitialState, type RaftStatus, type ProposeResult, type ReadIndexResult } from "./core/raft.ts";
export {
  RaftNode,
  type RaftNodeOptions,
  type RaftNodeStatus,
  type RaftObserver,
} from "./node.ts";
export {
  BackpressureError,
  EntryTooLargeError,
  NodeStoppedError,
  NotLeaderError,
  ReadIndexTimeoutError,
} from "./errors.ts";
export {
  FileLogStore,
  LogStoreError,
  type FileLogStoreOptions,
  type LogStoreErrorCode,
  type LogStoreStats,
  type RecoveryReport,
} from "./log/log-store.ts";
export { type Clock, type TimerHandle, RealClock } from "./clock.ts";
