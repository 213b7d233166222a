// Liveness and readiness of one node, decided from its live state; shared by GET /livez, /readyz
// and grpc.health.v1.Health. Ready = a leader is known, this node has applied within a bound of
// the commit index it knows, and its storage reports no error.

import type { KVDiagnostics } from "../kv/index.ts";
import { NONE } from "../raft/index.ts";

/** Applied entries a ready node may trail its known commit index by. */
export const DEFAULT_MAX_APPLY_LAG = 1_000;

export interface HealthVerdict {
  ok: boolean;
  /** One short line per check, "name ok" or "name failed: why" (the Kubernetes ?verbose style). */
  checks: string[];
}

/** Live: the process answers and Raft has not stopped (a stopped node exits, see DESIGN §8). */
export function liveness(state: KVDiagnostics | undefined): HealthVerdict {
  if (state === undefined) return { ok: true, checks: ["process ok", "raft starting"] };
  if (state.raft.stopped) return { ok: false, checks: [`raft failed: stopped${state.raft.fatal ? ` (${state.raft.fatal})` : ""}`] };
  return { ok: true, checks: ["process ok", "raft ok"] };
}

export function readiness(state: KVDiagnostics | undefined, maxApplyLag = DEFAULT_MAX_APPLY_LAG): HealthVerdict {
  if (state === undefined) return { ok: false, checks: ["storage failed: still opening"] };
  const checks: string[] = [];
  let ok = true;
  const check = (name: string, failure: string | null) => {
    if (failure === null) checks.push(`${name} ok`);
    else {
      ok = false;
      checks.push(`${name} failed: ${failure}`);
    }
  };
  const { raft } = state;
  check("raft", raft.stopped ? `stopped${raft.fatal ? ` (${raft.fatal})` : ""}` : null);
  check("leader", raft.leaderId === NONE ? `no leader known (this node is ${raft.role} in term ${raft.term})` : null);
  const lag = raft.commitIndex - raft.lastApplied;
  check("applied", lag > maxApplyLag ? `applied index ${raft.lastApplied} is ${lag} entries behind commit ${raft.commitIndex} (bound ${maxApplyLag})` : null);
  const storageError = state.lsm === null ? "closed" : (state.lsm.backgroundError ?? null);
  check("storage", storageError);
  return { ok, checks };
}
