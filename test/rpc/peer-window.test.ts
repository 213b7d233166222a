// An authenticated peer's HTTP/2 connection gets wide receive windows (so a busy leader can send
// its entries and heartbeats without first reading WINDOW_UPDATEs); any other connection keeps
// HTTP/2's default 64 KiB.
import { afterAll, beforeAll, expect, test } from "bun:test";
import * as http2 from "node:http2";
import { ConnectTransport } from "../../src/rpc/peers/connect-transport.ts";
import { PEER_STREAM_WINDOW_BYTES } from "../../src/rpc/peers/peer-auth.ts";
import { dialPeer } from "../../src/rpc/peers/peer-session.ts";
import { RpcServer } from "../../src/rpc/server/server.ts";

const SECURITY = { clusterId: "window-cluster", secret: new TextEncoder().encode("a test secret of some length"), peerCa: null };

let server: RpcServer;
let transport: ConnectTransport;

beforeAll(async () => {
  transport = new ConnectTransport({ security: SECURITY, id: 0, peers: new Map([[1, "http://127.0.0.1:1"]]) });
  transport.listen({ onMessages() {}, onSnapshot: () => Promise.reject(new Error("no snapshots here")) });
  server = await RpcServer.start({ port: 0, routes: (router) => transport.registerRoutes(router) });
});

afterAll(async () => {
  await transport.close();
  await server.close();
});

function windowAdvertised(session: http2.ClientHttp2Session, expected: number): Promise<number> {
  return new Promise((resolve) => {
    const check = () => {
      const size = session.remoteSettings?.initialWindowSize ?? 0;
      if (size === expected) resolve(size);
    };
    session.on("remoteSettings", check);
    check();
    setTimeout(() => resolve(session.remoteSettings?.initialWindowSize ?? 0), 2_000);
  });
}

test("after the handshake a peer's connection has a 4 MiB stream window; a client's keeps 64 KiB", async () => {
  const peer = await dialPeer({ url: server.url, self: 1, peer: 0, security: { ...SECURITY, dial: {} } as never, timeoutMs: 5_000 });
  const client = http2.connect(server.url);
  try {
    expect(await windowAdvertised(peer, PEER_STREAM_WINDOW_BYTES)).toBe(PEER_STREAM_WINDOW_BYTES);
    expect(await windowAdvertised(client, 65_535)).toBe(65_535);
  } finally {
    peer.destroy();
    client.destroy();
  }
});
