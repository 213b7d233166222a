// grpc.health.v1.Health for a kvraft node (Check, List, Watch): "", KVService and ClusterService serve
// when the node is ready (see health.ts), raftpb.RaftService while Raft is alive (a follower
// without a leader must still take votes), the health and reflection services always.

import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../gen/grpc/health/v1/health_pb.ts";
import type { KVDiagnostics } from "../kv/index.ts";
import { liveness, readiness } from "./health.ts";

/** How often a Watch re-reads the node's state; a change reaches the watcher within this. */
const WATCH_POLL_MS = 250;
/** Concurrent Watch streams per node. */
const MAX_WATCHES = 256;

export interface HealthServiceOptions {
  state: () => KVDiagnostics | undefined;
  maxApplyLag?: number;
}

export function registerHealthService(router: ConnectRouter, options: HealthServiceOptions): void {
  const statusOf = (service: string): Status | undefined => {
    switch (service) {
      case "":
      case "kvraftpb.KVService":
      case "kvraftpb.ClusterService":
        return readiness(options.state(), options.maxApplyLag).ok ? Status.SERVING : Status.NOT_SERVING;
      case "raftpb.RaftService":
        return liveness(options.state()).ok ? Status.SERVING : Status.NOT_SERVING;
      case "grpc.health.v1.Health":
      case "grpc.reflection.v1.ServerReflection":
      case "grpc.reflection.v1alpha.ServerReflection":
        return Status.SERVING;
      default:
        return undefined;
    }
  };
  const known = ["", "kvraftpb.KVService", "kvraftpb.ClusterService", "raftpb.RaftService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
  let watches = 0;

  router.service(Health, {
    check(request) {
      const status = statusOf(request.service);
      if (status === undefined) throw new ConnectError(`unknown service "${request.service.slice(0, 200)}"; known: ${known.slice(1).join(", ")}`, Code.NotFound);
      return { status };
    },
    list() {
      return { statuses: Object.fromEntries(known.map((name) => [name, { status: statusOf(name)! }])) };
    },
    async *watch(request, context: HandlerContext) {
      if (watches >= MAX_WATCHES) throw new ConnectError(`this node already serves ${MAX_WATCHES} health watches; retry later`, Code.ResourceExhausted);
      watches++;
      try {
        let last: Status | null = null;
        while (!context.signal.aborted) {
          const status = statusOf(request.service) ?? Status.SERVICE_UNKNOWN;
          if (status !== last) {
            last = status;
            yield { status };
          }
          await sleep(WATCH_POLL_MS, context.signal);
        }
      } finally {
        watches--;
      }
    },
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
