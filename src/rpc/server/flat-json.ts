// Protobuf JSON for flat messages (every field a singular string, bool, integer or enum — as in
// kvraftpb's CommandRequest/CommandResponse) without the reflection walk of fromJson/toJson.
// It takes only the plain, well-formed case and says "not mine" (undefined) for anything else,
// which the caller then hands to @bufbuild/protobuf: errors and odd input get the library's answer.

import { ScalarType, create, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;
const DECIMAL = /^-?(0|[1-9]\d{0,19})$/;

type Reader = (value: unknown) => unknown;

interface FlatField {
  field: DescField;
  read: Reader;
  /** 1 << the field's position: a bit of the parse's seen-mask. */
  bit: number;
}

/** Fields a flat codec takes: their seen-set is one 31-bit integer, not a Set per parse. */
const MAX_FLAT_FIELDS = 31;

export interface FlatJson {
  /** The message, or undefined when the text is not the plain case (malformed, unknown keys, ...). */
  parse(text: string): Message | undefined;
  /** The JSON text toJsonString would give with default write options. */
  write(message: Message): string;
}

/**
 * A codec for `schema`, or null when some field is not flat (messages, lists, maps, bytes, floats,
 * oneofs of more than one field). A one-field oneof is the pre-protoc-3.15 spelling of a proto3
 * `optional` scalar (kvraft.proto's leader_id) and is taken: a scalar with presence.
 */
export function flatJson(schema: DescMessage): FlatJson | null {
  if (schema.fields.length > MAX_FLAT_FIELDS) return null;
  const byName = new Map<string, FlatField>();
  for (const [position, field] of schema.fields.entries()) {
    if (field.oneof !== undefined && field.oneof.fields.length !== 1) return null;
    const read = reader(field);
    if (read === null) return null;
    const flat = { field, read, bit: 1 << position };
    byName.set(field.jsonName, flat);
    byName.set(field.name, flat);
  }
  return {
    parse(text: string): Message | undefined {
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        return undefined;
      }
      if (typeof json !== "object" || json === null || Array.isArray(json)) return undefined;
      const message = create(schema) as unknown as Record<string, unknown>;
      let seen = 0;
      let members = 0;
      for (const key in json) {
        const flat = byName.get(key);
        if (flat === undefined || (seen & flat.bit) !== 0) return undefined;
        seen |= flat.bit;
        members++;
        const value = flat.read((json as Record<string, unknown>)[key]);
        if (value === undefined) return undefined;
        if (flat.field.oneof === undefined) message[flat.field.localName] = value;
        else message[flat.field.oneof.localName] = { case: flat.field.localName, value };
      }
      // JSON.parse keeps the last of duplicate names; protobuf JSON refuses them. Every value here
      // is a scalar, so each member of the raw text has exactly one ':' outside strings.
      if (memberCount(text) !== members) return undefined;
      return message as unknown as Message;
    },
    write(message: Message): string {
      const out: Record<string, unknown> = {};
      const fields = message as unknown as Record<string, unknown>;
      for (const field of schema.fields) {
        let value: unknown;
        if (field.oneof === undefined) value = fields[field.localName];
        else {
          const chosen = fields[field.oneof.localName] as { case: string | undefined; value?: unknown };
          value = chosen.case === field.localName ? chosen.value : undefined;
        }
        if (value === undefined) continue;
        // Implicit presence: the zero value is not written (proto3 JSON's default).
        if (field.presence === IMPLICIT && (value === "" || value === 0 || value === 0n || value === false)) continue;
        out[field.jsonName] = writeValue(field, value);
      }
      return JSON.stringify(out);
    },
  };
}

/** Colons outside strings in a JSON text: its member count when every value is a scalar. */
function memberCount(text: string): number {
  let count = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x3a) count++;
  }
  return count;
}

/** FeatureSet_FieldPresence.IMPLICIT. */
const IMPLICIT = 2;

function writeValue(field: DescField, value: unknown): unknown {
  if (field.fieldKind === "enum") return field.enum.value[value as number]?.name ?? value;
  if (typeof value === "bigint") return value.toString();
  return value;
}

function reader(field: DescField): Reader | null {
  if (field.fieldKind === "enum") {
    const byName = new Map(field.enum.values.map((v) => [v.name, v.number]));
    const known = new Set(field.enum.values.map((v) => v.number));
    return (value) => {
      if (typeof value === "string") return byName.get(value);
      if (typeof value === "number" && known.has(value)) return value;
      return undefined;
    };
  }
  if (field.fieldKind !== "scalar") return null;
  switch (field.scalar) {
    case ScalarType.STRING:
      return (value) => (typeof value === "string" ? value : undefined);
    case ScalarType.BOOL:
      return (value) => (typeof value === "boolean" ? value : undefined);
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return (value) => (typeof value === "number" && Number.isInteger(value) && value >= -(2 ** 31) && value < 2 ** 31 ? value : undefined);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return (value) => (typeof value === "number" && Number.isInteger(value) && value >= 0 && value < 2 ** 32 ? value : undefined);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return (value) => int64(value, INT64_MIN, INT64_MAX);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return (value) => int64(value, 0n, UINT64_MAX);
    default:
      return null; // floats (NaN, exponents) and bytes (base64 variants): the library's job
  }
}

function int64(value: unknown, min: bigint, max: bigint): bigint | undefined {
  let n: bigint;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) return undefined;
    n = BigInt(value);
  } else if (typeof value === "string" && DECIMAL.test(value)) {
    n = BigInt(value);
  } else {
    return undefined;
  }
  return n >= min && n <= max ? n : undefined;
}
