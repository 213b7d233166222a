// The raft layer's public surface: other layers import Raft things from here only.

export * from "./types.ts";
export { Raft, type RaftConfig, type RaftInitialState, type RaftStatus, type ProposeResult, type ReadIndexResult } from "./raft.ts";
export {
  RaftNode,
  type RaftNodeOptions,
  type RaftNodeStatus,
  BackpressureError,
  EntryTooLargeError,
  ReadIndexTimeoutError,
  NodeStoppedError,
} from "./node.ts";
export {
  FileLogStore,
  LogStoreError,
  type FileLogStoreOptions,
  type LogStoreErrorCode,
  type LogStoreStats,
  type RecoveryReport,
} from "./log-store.ts";
export { MemoryLogStore, type MemoryLogStoreStats } from "./memory-log-store.ts";
export { type Clock, type TimerHandle, RealClock, SimClock } from "./clock.ts";
export { SimNetwork, SimNetworkError, type NetworkFaults, type SimNetworkStats } from "./sim-network.ts";
export { SimCluster, type SimClusterOptions, settle, runFor, runUntil, type SettleOptions } from "./testing.ts";
