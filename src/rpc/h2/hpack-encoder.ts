// HPACK header-block encoding for responses: static-table references and literals without
// indexing (no dynamic table, so nothing to keep in step with the client), raw or Huffman strings,
// with the encoding of frequent fields remembered (bounded).

import { huffmanEncode, huffmanLength } from "./huffman.ts";
import { STATIC_NAME_INDEX, STATIC_PAIR_INDEX } from "./hpack-static.ts";

/** Encoded fields by "name\0value": responses repeat a handful (content-type, status, ...). */
const fieldCache = new Map<string, Uint8Array>();
const FIELD_CACHE_LIMIT = 1024;
/** Values longer than this are not cached (they are per-call: lengths, messages). */
const CACHED_VALUE_MAX = 64;

/** Encodes one header list (names lower-case) as an HPACK block; `tail`: fields already encoded. */
export function encodeHeaders(fields: readonly (readonly [string, string])[], tail?: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  for (const [name, value] of fields) {
    const part = encodeField(name, value);
    parts.push(part);
    size += part.length;
  }
  if (tail !== undefined) {
    parts.push(tail);
    size += tail.length;
  }
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(size);
  let pos = 0;
  for (const part of parts) {
    out.set(part, pos);
    pos += part.length;
  }
  return out;
}

export function encodeField(name: string, value: string): Uint8Array {
  const cacheable = value.length <= CACHED_VALUE_MAX;
  const key = cacheable ? `${name}\0${value}` : "";
  if (cacheable) {
    const cached = fieldCache.get(key);
    if (cached !== undefined) return cached;
  }
  const encoded = encodeUncached(name, value, key);
  if (cacheable && fieldCache.size < FIELD_CACHE_LIMIT) fieldCache.set(key, encoded);
  return encoded;
}

let dateSecond = -1;
let dateEncoded: Uint8Array = new Uint8Array(0);

/** The `date` field of an answer now (RFC 9110 §6.6.1), encoded once per second and never cached. */
export function dateField(): Uint8Array {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateEncoded = encodeUncached("date", new Date(now).toUTCString(), "");
  }
  return dateEncoded;
}

function encodeUncached(name: string, value: string, key: string): Uint8Array {
  const pair = key === "" ? undefined : STATIC_PAIR_INDEX.get(key);
  if (pair !== undefined) {
    const out = new Uint8Array(integerLength(pair, 7));
    writeInteger(out, 0, pair, 7, 0x80);
    return out;
  }
  const nameIndex = STATIC_NAME_INDEX.get(name);
  // Sensitive values are never indexed by intermediaries either (RFC 7541 §7.1.3).
  const flags = name === "authorization" || name === "cookie" ? 0x10 : 0x00;
  const valueLength = stringLength(value);
  const size = (nameIndex !== undefined ? integerLength(nameIndex, 4) : 1 + stringLength(name)) + valueLength;
  const out = new Uint8Array(size);
  let pos: number;
  if (nameIndex !== undefined) pos = writeInteger(out, 0, nameIndex, 4, flags);
  else {
    out[0] = flags;
    pos = writeString(out, 1, name);
  }
  writeString(out, pos, value);
  return out;
}

function stringLength(value: string): number {
  const coded = Math.min(huffmanLength(value), value.length);
  return integerLength(coded, 7) + coded;
}

function writeString(out: Uint8Array, pos: number, value: string): number {
  const huffman = huffmanLength(value);
  if (huffman < value.length) {
    pos = writeInteger(out, pos, huffman, 7, 0x80);
    return huffmanEncode(value, out, pos);
  }
  pos = writeInteger(out, pos, value.length, 7, 0);
  for (let i = 0; i < value.length; i++) out[pos++] = value.charCodeAt(i) & 255;
  return pos;
}

export function integerLength(value: number, prefixBits: number): number {
  const max = (1 << prefixBits) - 1;
  if (value < max) return 1;
  let n = 2;
  for (value -= max; value >= 128; value = Math.floor(value / 128)) n++;
  return n;
}

/** Writes an HPACK integer with an N-bit prefix; `flags` fills the bits above the prefix. */
export function writeInteger(out: Uint8Array, pos: number, value: number, prefixBits: number, flags: number): number {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out[pos++] = flags | value;
    return pos;
  }
  out[pos++] = flags | max;
  value -= max;
  while (value >= 128) {
    out[pos++] = (value % 128) | 0x80;
    value = Math.floor(value / 128);
  }
  out[pos++] = value;
  return pos;
}
