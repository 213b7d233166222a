// The raft layer's public surface: other layers import Raft things from here only.

export * from "./types.ts";
export {
  Raft,
  type ConfChange,
  type ConfChangeResult,
  type RaftConfig,
  type RaftInitialState,
  type RaftStatus,
  type ProposeResult,
  type ReadIndexResult,
} from "./core/raft.ts";
export { describeConfChange } from "./core/config-change.ts";
export { decodeMembership, describeMembership, encodeMembership, membershipOfMeta, metaWith } from "./core/membership.ts";
export {
  RaftNode,
  type RaftNodeOptions,
  type RaftNodeStatus,
  type RaftObserver,
} from "./node.ts";
export {
  BackpressureError,
  ConfChangeLostError,
  ConfChangePendingError,
  EntryTooLargeError,
  InvalidConfChangeError,
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
