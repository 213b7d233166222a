// A request's decoded header list checked as RFC 9113 §8.2-8.3 asks (lower-case names, pseudo-headers
// first and known, no connection-specific fields, a valid content-length) and shaped as node:http2
// hands headers to handlers; and the budget that bounds how fast a client may cancel requests.

import type { IncomingHttpHeaders } from "node:http2";
import type { HeaderList } from "./hpack-decoder.ts";

const PSEUDO = new Set([":method", ":scheme", ":authority", ":path", ":protocol"]);
const CONNECTION_SPECIFIC = new Set(["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"]);

/** The request headers, or null when the list is malformed (a stream PROTOCOL_ERROR). */
export function requestHeaders(list: HeaderList): IncomingHttpHeaders | null {
  const headers: Record<string, string | string[]> = {};
  let regular = false;
  for (let i = 0; i < list.length; i++) {
    const [name, value] = list[i]!;
    if (!validName(name)) return null;
    if (name.charCodeAt(0) === 58 /* ':' */) {
      if (regular || !PSEUDO.has(name) || headers[name] !== undefined) return null;
      headers[name] = value;
      continue;
    }
    regular = true;
    if (CONNECTION_SPECIFIC.has(name) || (name === "te" && value !== "trailers")) return null;
    const prior = headers[name];
    if (prior === undefined) headers[name] = value;
    else if (name === "cookie") headers[name] = `${prior}; ${value}`;
    else if (Array.isArray(prior)) prior.push(value);
    else headers[name] = [prior, value];
  }
  const method = headers[":method"];
  if (method === undefined) return null;
  if (method !== "CONNECT" && (headers[":scheme"] === undefined || !headers[":path"])) return null;
  return headers as IncomingHttpHeaders;
}

/** The declared content-length: -1 when none, null when it is not a valid length. */
export function declaredLength(headers: IncomingHttpHeaders): number | null {
  const length = headers["content-length"];
  if (length === undefined) return -1;
  if (typeof length !== "string" || !/^\d{1,15}$/.test(length)) return null;
  return Number(length);
}

/** At most `limit` events per `windowMs` (a fixed window): take() is false past it. */
export class RateBudget {
  private start = 0;
  private count = 0;

  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
  ) {}

  take(now: number): boolean {
    if (now - this.start > this.windowMs) {
      this.start = now;
      this.count = 0;
    }
    return ++this.count <= this.limit;
  }
}

/** Trailers: regular fields only; null when malformed. */
export function trailerFields(list: HeaderList): HeaderList | null {
  for (const [name] of list) if (!validName(name) || name.charCodeAt(0) === 58) return null;
  return list;
}

/** A field name of lower-case token characters (a leading ':' for pseudo-headers). */
function validName(name: string): boolean {
  if (name.length === 0) return false;
  for (let i = name.charCodeAt(0) === 58 ? 1 : 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    // Upper case, controls, space, DEL and non-ASCII are not allowed (RFC 9113 §8.2.1).
    if ((c >= 65 && c <= 90) || c <= 32 || c >= 127 || c === 58) return false;
  }
  return name.length > 1 || name.charCodeAt(0) !== 58;
}
