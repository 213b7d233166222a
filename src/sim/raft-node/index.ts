// The node-level simulator: real RaftNodes (the driver, not only the core) on simulated time, a
// simulated network of Transports and in-memory log stores. Used by tests and `bun run sim --kv`.
export { SimClock } from "./clock.ts";
export { MemoryLogStore, type MemoryLogStoreStats } from "./memory-log-store.ts";
export {
  NodeSimNetwork,
  NodeSimNetworkError,
  type NetworkFaults,
  type NodeSimNetworkStats,
} from "./network.ts";
export { NodeSimCluster, type NodeSimClusterOptions, settle, runFor, runUntil, type SettleOptions } from "./cluster.ts";
