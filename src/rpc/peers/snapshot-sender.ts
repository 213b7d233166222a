// The sending side of InstallSnapshot on a raw HTTP/2 stream of the peer's authenticated snapshot
// connection: Connect envelopes written straight from the snapshot's chunks (SnapshotChunk's bytes
// field encoded by hand: tag, length, then the chunk as it is), the stream's flow control as
// backpressure, and the answer read as Connect's streaming response. Wire-identical to the
// connect-es client it replaces, without its per-message protobuf writer and envelope copies
// (about half the sender's transport CPU, src/kv/DESIGN.md "Catch-up by snapshot").
import type * as http2 from "node:http2";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { MessageSchema, type Message as WireMessage } from "../../gen/raftpb/raft_pb.ts";

/** Largest answer read back: one Message and the end-of-stream JSON. */
const MAX_ANSWER_BYTES = 1 << 20;
const FLAG_END_STREAM = 2;
/** SnapshotChunk field tags (length-delimited): 1 header, 2 data. */
const TAG_HEADER = 0x0a;
const TAG_DATA = 0x12;

export interface SnapshotStreamOpener {
  request(method: string, path: string, headers: http2.OutgoingHttpHeaders, options: http2.ClientSessionRequestOptions): Promise<http2.ClientHttp2Stream>;
}

/**
 * Streams `header` (an encoded raft Message) and then `chunks` in pieces of at most `chunkBytes`
 * as SnapshotChunk messages to `path`; resolves with the receiver's answer (a raft Message),
 * rejects with a ConnectError carrying the receiver's code and message.
 */
export async function sendSnapshotStream(
  opener: SnapshotStreamOpener,
  path: string,
  header: Uint8Array,
  chunks: AsyncIterable<Uint8Array>,
  chunkBytes: number,
  signal: AbortSignal,
): Promise<WireMessage> {
  signal.throwIfAborted();
  const stream = await opener.request(
    "POST",
    path,
    { "content-type": "application/connect+proto", "connect-protocol-version": "1", "connect-accept-encoding": "identity" },
    { endStream: false },
  );
  let failure: Error | null = null;
  let wake: (() => void) | null = null;
  const fail = (error: Error) => {
    failure ??= error;
    wake?.();
  };
  const onAbort = () => {
    fail(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
    stream.close();
  };
  signal.addEventListener("abort", onAbort, { once: true });
  stream.on("error", (error: Error) => fail(new ConnectError(`snapshot stream: ${error.message}`, Code.Unavailable)));
  stream.on("drain", () => wake?.());
  const answer = readAnswer(stream);
  // The answer may come early (a refusal): stop sending then.
  answer.then(
    () => fail(new ConnectError("the receiver answered before the snapshot ended", Code.Unavailable)),
    (error: Error) => fail(error),
  );
  const write = async (parts: Uint8Array[]) => {
    let flushed = true;
    for (const part of parts) flushed = stream.write(part);
    // Over the stream's buffer: wait for it to drain (or for a failure) before the next piece.
    if (!flushed && failure === null && !stream.destroyed) {
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
    if (failure !== null) throw failure;
  };
  try {
    await write([envelopeHead(TAG_HEADER, header.length), header]);
    for await (const data of chunks) {
      for (let offset = 0; offset < data.length; offset += chunkBytes) {
        const piece = data.subarray(offset, offset + chunkBytes);
        await write([envelopeHead(TAG_DATA, piece.length), piece]);
      }
    }
    stream.end();
  } catch (error) {
    if (!stream.destroyed) stream.close(0x8); // CANCEL
    // The receiver's own refusal says more than our write failing.
    throw await answer.then(
      () => error,
      (refusal: unknown) => refusal,
    );
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
  return answer;
}

/** An envelope prefix plus a message holding one length-delimited field of `length` bytes. */
function envelopeHead(tag: number, length: number): Uint8Array {
  let varintBytes = 1;
  for (let v = length; v >= 0x80; v = Math.floor(v / 128)) varintBytes++;
  const messageLength = 1 + varintBytes + length;
  const out = new Uint8Array(5 + 1 + varintBytes);
  new DataView(out.buffer).setUint32(1, messageLength);
  out[5] = tag;
  let at = 6;
  let v = length;
  while (v >= 0x80) {
    out[at++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  out[at] = v;
  return out;
}

/** The Connect streaming answer: one Message envelope, then end-of-stream (its error, if any). */
function readAnswer(stream: http2.ClientHttp2Stream): Promise<WireMessage> {
  return new Promise((resolve, reject) => {
    let status = 0;
    const parts: Uint8Array[] = [];
    let size = 0;
    stream.on("response", (headers) => {
      status = Number(headers[":status"] ?? 0);
    });
    stream.on("data", (chunk: Uint8Array) => {
      size += chunk.length;
      if (size <= MAX_ANSWER_BYTES) parts.push(chunk);
    });
    stream.on("close", () => {
      if (status === 0) return reject(new ConnectError("the snapshot stream closed without an answer", Code.Unavailable));
      if (status === 404) return reject(new ConnectError("the peer does not serve RaftService/InstallSnapshot", Code.Unimplemented));
      if (status !== 200) return reject(new ConnectError(`the peer answered the snapshot with HTTP ${status}`, Code.Unavailable));
      const body = Buffer.concat(parts);
      const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
      let message: Uint8Array | null = null;
      for (let at = 0; at + 5 <= body.length; ) {
        const flags = body[at]!;
        const length = view.getUint32(at + 1);
        const payload = new Uint8Array(body.subarray(at + 5, at + 5 + length));
        at += 5 + length;
        if ((flags & FLAG_END_STREAM) === 0) {
          message = payload;
          continue;
        }
        let end: { error?: { code?: string; message?: string } };
        try {
          end = JSON.parse(new TextDecoder().decode(payload)) as typeof end;
        } catch {
          return reject(new ConnectError("the peer's end of stream is not JSON", Code.Internal));
        }
        if (end.error) return reject(new ConnectError(end.error.message ?? "", codeOf(end.error.code ?? "unknown")));
      }
      if (message === null) return reject(new ConnectError("the peer answered the snapshot without a message", Code.Internal));
      try {
        resolve(fromBinary(MessageSchema, message));
      } catch {
        reject(new ConnectError("the peer's answer is not a raft Message", Code.Internal));
      }
    });
  });
}

function codeOf(name: string): Code {
  const camel = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  const key = (camel.charAt(0).toUpperCase() + camel.slice(1)) as keyof typeof Code;
  const code = Code[key];
  return typeof code === "number" ? code : Code.Unknown;
}
