// Thin kvraftpb.ClusterService handlers (membership administration): list, add a learner,
// promote, remove, transfer leadership. Answered by the leader; Raft's typed refusals map to
// Connect codes here, and a follower's refusal carries the leader's id and address.

import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import {
  BackpressureError,
  ConfChangeLostError,
  ConfChangePendingError,
  InvalidConfChangeError,
  NodeStoppedError,
  NotLeaderError,
  NONE,
  type ConfChange,
  type Membership,
  type NodeId,
  type RaftNode,
} from "../raft/index.ts";
import {
  ClusterService,
  MemberAddResponseSchema,
  MemberListResponseSchema,
  MemberPromoteResponseSchema,
  MemberRemoveResponseSchema,
  MemberSchema,
  TransferLeaderResponseSchema,
  type Member,
} from "../gen/kvraftpb/kvraft_pb.ts";

/** What the handlers need: the node's Raft and the cluster id a joining node must present. */
export interface ClusterBackend {
  raft: RaftNode;
  clusterId: string;
}

export interface ClusterServiceOptions {
  /**
   * Serve the membership calls although no client authorization guards this port. Without it
   * (and without a client gate) every call is refused: anyone reaching the port could otherwise
   * remove the cluster's members.
   */
  allowUnauthenticated: boolean;
  /** Whether a client gate (token or certificate) guards the port's non-peer routes. */
  gated: boolean;
  /** How long TransferLeader waits for the new leader (default 3 s). */
  transferTimeoutMs?: number;
}

/** Members as the API shows them: voters then learners, each by id. */
export function memberList(m: { members: readonly NodeId[]; learners: readonly NodeId[]; addresses: Record<NodeId, string> }): Member[] {
  const row = (id: NodeId, role: string) => create(MemberSchema, { id: BigInt(id), address: m.addresses[id] ?? "", role });
  return [...[...m.members].sort((a, b) => a - b).map((id) => row(id, "voter")), ...[...m.learners].sort((a, b) => a - b).map((id) => row(id, "learner"))];
}

function membersOf(m: Membership): Member[] {
  return memberList({ members: m.voters, learners: m.learners, addresses: m.addresses });
}

export function registerClusterService(router: ConnectRouter, backend: () => ClusterBackend | undefined, options: ClusterServiceOptions): void {
  const current = (): ClusterBackend => {
    if (!options.gated && !options.allowUnauthenticated) {
      throw new ConnectError(
        "membership administration needs client authorization on this node (--client-token-file or --client-cert-auth), or --insecure-admin",
        Code.PermissionDenied,
      );
    }
    const b = backend();
    if (b === undefined) throw new ConnectError("this node is still starting; retry shortly or try another node", Code.Unavailable);
    const status = b.raft.status();
    if (status.role !== "Leader") throw notLeader(status.leaderId, status.addresses);
    return b;
  };
  const change = async (conf: ConfChange): Promise<Member[]> => {
    const b = current();
    try {
      return membersOf(await b.raft.proposeConfChange(conf));
    } catch (error) {
      throw toConnectError(error, b.raft);
    }
  };
  router.service(ClusterService, {
    async memberList() {
      const b = current();
      const s = b.raft.status();
      return create(MemberListResponseSchema, { members: memberList(s), leaderId: BigInt(s.leaderId), clusterId: b.clusterId });
    },
    async memberAdd(request) {
      const address = request.address.trim();
      if (!/^[^\s/]+:\d{1,5}$/.test(address)) {
        throw new ConnectError(`address ${JSON.stringify(request.address)} is not host:port`, Code.InvalidArgument);
      }
      return create(MemberAddResponseSchema, { members: await change({ type: "add-learner", id: nodeId(request.id), address }) });
    },
    async memberPromote(request) {
      return create(MemberPromoteResponseSchema, { members: await change({ type: "promote", id: nodeId(request.id) }) });
    },
    async memberRemove(request) {
      return create(MemberRemoveResponseSchema, { members: await change({ type: "remove", id: nodeId(request.id) }) });
    },
    async transferLeader(request) {
      const b = current();
      const to = nodeId(request.to);
      const raft = b.raft;
      if (!raft.status().members.includes(to)) throw new ConnectError(`node ${to} is not a voter`, Code.InvalidArgument);
      if (to === raft.id) return create(TransferLeaderResponseSchema, { leaderId: BigInt(to) });
      try {
        raft.transferLeadership(to);
      } catch (error) {
        throw toConnectError(error, raft);
      }
      const deadline = Date.now() + (options.transferTimeoutMs ?? 3_000);
      while (Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        const s = raft.status();
        if (s.role !== "Leader" && s.leaderId === to) return create(TransferLeaderResponseSchema, { leaderId: BigInt(to) });
      }
      throw new ConnectError(`leadership did not move to node ${to} within ${options.transferTimeoutMs ?? 3_000} ms (is it caught up and reachable?)`, Code.Unavailable);
    },
  });
}

function nodeId(value: bigint): NodeId {
  if (value < 0n || value > 0xffff_ffffn) throw new ConnectError(`node id ${value} is not in [0, 2^32)`, Code.InvalidArgument);
  return Number(value);
}

/** A follower's refusal: the leader's id and address in the message and in the error's metadata (headers). */
function notLeader(leaderId: NodeId, addresses: Record<NodeId, string>): ConnectError {
  if (leaderId === NONE) return new ConnectError("this node is not the leader and no leader is known yet; retry shortly", Code.Unavailable);
  const address = addresses[leaderId] ?? "";
  const error = new ConnectError(`this node is not the leader; node ${leaderId}${address ? ` at ${address}` : ""} is`, Code.FailedPrecondition);
  error.metadata.set("kvraft-leader-id", String(leaderId));
  if (address !== "") error.metadata.set("kvraft-leader-address", address);
  return error;
}

/** The one mapping from Raft's membership refusals to Connect codes. */
function toConnectError(error: unknown, raft: RaftNode): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof NotLeaderError) return notLeader(error.leaderId, raft.status().addresses);
  if (error instanceof ConfChangePendingError) return new ConnectError(error.message, Code.Aborted);
  if (error instanceof InvalidConfChangeError) return new ConnectError(error.message, Code.InvalidArgument);
  if (error instanceof BackpressureError || error instanceof ConfChangeLostError || error instanceof NodeStoppedError) {
    return new ConnectError(error.message, Code.Unavailable);
  }
  if (error instanceof RangeError) return new ConnectError(error.message, Code.InvalidArgument);
  return new ConnectError(`membership change failed: ${(error as Error).message ?? String(error)}`, Code.Internal);
}
