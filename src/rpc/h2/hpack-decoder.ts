// HPACK header-block decoding (RFC 7541): integers, string literals (raw or Huffman), the static
// table and the connection's dynamic table, bounded by the size this side advertised.

import { HuffmanError, huffmanDecode } from "./huffman.ts";
import { STATIC_TABLE } from "./hpack-static.ts";

/** A header block that cannot be decoded: the connection's COMPRESSION_ERROR (RFC 9113 §4.3). */
export class HpackError extends Error {}

/** Decoded header fields, in order, names lower-case as received. */
export type HeaderList = [string, string][];

export class HpackDecoder {
  /** Dynamic table as a ring: newest at `head - 1`. */
  private names: string[] = [];
  private values: string[] = [];
  private head = 0;
  private count = 0;
  private size = 0;
  private capacity: number;

  /** `maxTableSize`: SETTINGS_HEADER_TABLE_SIZE as advertised (4096 by default). */
  constructor(private readonly maxTableSize = 4096) {
    this.capacity = maxTableSize;
    this.names = new Array(64);
    this.values = new Array(64);
  }

  /**
   * Decodes one complete header block. `maxListSize` bounds the decoded list (RFC 9113 §6.5.2
   * counting); past it decoding goes on (the dynamic table must stay in step) and `oversize` is set.
   */
  decode(block: Uint8Array, maxListSize: number): { headers: HeaderList; oversize: boolean } {
    const headers: HeaderList = [];
    let listSize = 0;
    let oversize = false;
    let pos = 0;
    let sawField = false;
    const end = block.length;
    while (pos < end) {
      const byte = block[pos]!;
      let name: string;
      let value: string;
      if (byte & 0x80) {
        // Indexed field.
        const [index, next] = readInteger(block, pos, 7);
        pos = next;
        if (index === 0) throw new HpackError("header index 0");
        [name, value] = this.entry(index);
      } else if ((byte & 0xe0) === 0x20) {
        // Dynamic table size update: only before the first field of a block.
        if (sawField) throw new HpackError("a table size update after a header field");
        const [size, next] = readInteger(block, pos, 5);
        pos = next;
        if (size > this.maxTableSize) throw new HpackError(`table size update to ${size} above the advertised ${this.maxTableSize}`);
        this.capacity = size;
        this.evict(0);
        continue;
      } else {
        // Literal: with incremental indexing (01), without (0000), never indexed (0001).
        const indexing = (byte & 0xc0) === 0x40;
        const [index, next] = readInteger(block, pos, indexing ? 6 : 4);
        pos = next;
        if (index === 0) {
          const [n, afterName] = readString(block, pos);
          name = n;
          pos = afterName;
        } else name = this.entry(index)[0];
        const [v, afterValue] = readString(block, pos);
        value = v;
        pos = afterValue;
        if (indexing) this.insert(name, value);
      }
      sawField = true;
      listSize += name.length + value.length + 32;
      if (listSize > maxListSize) oversize = true;
      else headers.push([name, value]);
    }
    return { headers, oversize };
  }

  private entry(index: number): [string, string] {
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1]!;
    const i = index - STATIC_TABLE.length - 1;
    if (i >= this.count) throw new HpackError(`header index ${index} beyond the tables`);
    const slot = (this.head - 1 - i + this.names.length) % this.names.length;
    return [this.names[slot]!, this.values[slot]!];
  }

  private insert(name: string, value: string): void {
    const entrySize = name.length + value.length + 32;
    if (entrySize > this.capacity) {
      // An entry larger than the table empties it (RFC 7541 §4.4).
      this.count = 0;
      this.size = 0;
      return;
    }
    this.evict(entrySize);
    if (this.count === this.names.length) this.grow();
    this.names[this.head] = name;
    this.values[this.head] = value;
    this.head = (this.head + 1) % this.names.length;
    this.count++;
    this.size += entrySize;
  }

  /** Drops the oldest entries until `room` more bytes fit. */
  private evict(room: number): void {
    const length = this.names.length;
    while (this.count > 0 && this.size + room > this.capacity) {
      const slot = (this.head - this.count + length) % length;
      this.size -= this.names[slot]!.length + this.values[slot]!.length + 32;
      this.names[slot] = "";
      this.values[slot] = "";
      this.count--;
    }
  }

  private grow(): void {
    const length = this.names.length;
    const names = new Array<string>(length * 2);
    const values = new Array<string>(length * 2);
    for (let i = 0; i < this.count; i++) {
      const slot = (this.head - this.count + i + length) % length;
      names[i] = this.names[slot]!;
      values[i] = this.values[slot]!;
    }
    this.names = names;
    this.values = values;
    this.head = this.count;
  }
}

/** An HPACK integer with an N-bit prefix at block[pos]: [value, next position]. */
export function readInteger(block: Uint8Array, pos: number, prefixBits: number): [number, number] {
  const max = (1 << prefixBits) - 1;
  let value = block[pos++]! & max;
  if (value < max) return [value, pos];
  let shift = 0;
  for (;;) {
    if (pos >= block.length) throw new HpackError("a header block ends inside an integer");
    const byte = block[pos++]!;
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if ((byte & 0x80) === 0) break;
    // Nothing in a header block needs more than 2^28: longer encodings are an attack or garbage.
    if (shift > 28) throw new HpackError("an HPACK integer too large");
  }
  return [value, pos];
}

function readString(block: Uint8Array, pos: number): [string, number] {
  if (pos >= block.length) throw new HpackError("a header block ends before a string");
  const huffman = (block[pos]! & 0x80) !== 0;
  const [length, start] = readInteger(block, pos, 7);
  const end = start + length;
  if (end > block.length) throw new HpackError("a header string runs past the block");
  if (!huffman) return [latin1(block, start, end), end];
  try {
    return [huffmanDecode(block, start, end), end];
  } catch (error) {
    if (error instanceof HuffmanError) throw new HpackError(error.message);
    throw error;
  }
}

function latin1(block: Uint8Array, start: number, end: number): string {
  if (end - start < 64) {
    let s = "";
    for (let i = start; i < end; i++) s += String.fromCharCode(block[i]!);
    return s;
  }
  return Buffer.from(block.buffer, block.byteOffset + start, end - start).toString("latin1");
}
