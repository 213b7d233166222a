// Public surface of the core-level Raft simulator (used by test/raft and `bun run sim`).

export { CoreSimCluster, type ClusterOptions, type ReadRecord } from "./cluster.ts";
export { CoreSimNetwork, RELIABLE, UNRELIABLE, messageBytes, type NetworkOptions, type Envelope } from "./network.ts";
export { SimNode, type CrashPoint, type SimDisk } from "./sim-node.ts";
export { InvariantViolation, EventRing, Oracle, describeMessage, hex } from "./checker.ts";
export { runRandomSchedule, replayCommand, type ScheduleOptions, type ScheduleResult } from "./schedule.ts";
export { runMembershipSchedule, membershipReplayCommand } from "./membership-schedule.ts";
