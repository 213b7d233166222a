// The bytes a kvraft peer sends before its HTTP/2 preface (inside TLS on a TLS port): they send the
// connection to node:http2, where peer authentication binds to the session, instead of the
// engine that serves client connections. A client that sends them gets node:http2: safe, since the
// peer checks run there.

export const PEER_TAG = Buffer.from("KVRAFT-PEER/1\r\n", "latin1");

/** Whether `seen` starts like the tag (so far: more bytes may be needed to tell). */
export function tagPrefix(seen: Buffer): boolean {
  const n = Math.min(seen.length, PEER_TAG.length);
  return seen.subarray(0, n).equals(PEER_TAG.subarray(0, n));
}
