// Writes one SSTable: data blocks, a bloom filter block, an index block and a fixed footer
// (layout in FORMAT.md). Output is buffered and written with write(2); finish() fsyncs.
import * as fs from "node:fs";
import { crc32cUpdate, maskCrc } from "../util/crc32c.ts";
import { BlockBuilder } from "./block.ts";
import { bloomHash, buildBloom } from "./bloom.ts";
import { ByteWriter, compareBytes, writeU32 } from "./coding.ts";
import { ioError } from "./errors.ts";

export const TABLE_MAGIC_LO = 0x4c534d54; // "TMSL" little-endian: kvraft LSM table
export const TABLE_MAGIC_HI = 0x76726b31; // "1krv"
export const FOOTER_SIZE = 40;
export const BLOCK_TRAILER = 5; // type byte + masked CRC32C
const WRITE_CHUNK = 256 * 1024;

export interface TableOptions {
  blockSize: number;
  restartInterval: number;
  bloomBitsPerKey: number;
}

export interface BuiltTable {
  fileSize: number;
  entries: number;
}

export class TableBuilder {
  private readonly fd: number;
  private readonly out = new ByteWriter(WRITE_CHUNK + 64 * 1024);
  private offset = 0; // file offset of out.buf[0]
  private readonly data: BlockBuilder;
  private readonly index = new BlockBuilder(1);
  private hashes = new Uint32Array(1024);
  private hashCount = 0;
  /** The user key of the last entry (the bloom filter hashes each distinct user key once). */
  private lastUserKey = new Uint8Array(64);
  private lastUserKeyLen = 0;
  private pendingIndex = false;
  private pendingKey = new Uint8Array(64);
  private pendingKeyLen = 0;
  private pendingHandle = new ByteWriter(16);
  entries = 0;
  smallest: Uint8Array | null = null; // encoded internal keys
  largest: Uint8Array | null = null;

  constructor(readonly path: string, readonly name: string, private readonly opts: TableOptions) {
    try {
      this.fd = fs.openSync(path, "w");
    } catch (e) {
      throw ioError(name, "create", e);
    }
    this.data = new BlockBuilder(opts.restartInterval);
  }

  /** Bytes the table would occupy if finished now (close enough for splitting outputs). */
  get estimatedSize(): number {
    return this.offset + this.out.pos + this.data.estimatedSize;
  }

  /** Adds an entry; entries must arrive in internal key order. */
  add(userKey: Uint8Array, seq: number, kind: number, value: Uint8Array): void {
    this.addFrom(userKey, 0, userKey.length, seq, kind, value, 0, value.length);
  }

  /** add() for a user key at keySrc[kStart, kEnd) and a value at valSrc[vStart, vEnd): no views. */
  addFrom(
    keySrc: Uint8Array, kStart: number, kEnd: number, seq: number, kind: number,
    valSrc: Uint8Array, vStart: number, vEnd: number,
  ): void {
    if (this.pendingIndex) this.emitIndexEntry();
    this.data.addFrom(keySrc, kStart, kEnd, seq, kind, valSrc, vStart, vEnd);
    if (this.smallest === null) this.smallest = this.data.lastKey().slice();
    if (!this.sameAsLastUserKey(keySrc, kStart, kEnd)) {
      if (this.hashCount === this.hashes.length) {
        const next = new Uint32Array(this.hashes.length * 2);
        next.set(this.hashes);
        this.hashes = next;
      }
      this.hashes[this.hashCount++] = bloomHash(keySrc, kStart, kEnd);
      const n = kEnd - kStart;
      if (this.lastUserKey.length < n) this.lastUserKey = new Uint8Array(n * 2);
      const last = this.lastUserKey;
      for (let i = 0; i < n; i++) last[i] = keySrc[kStart + i];
      this.lastUserKeyLen = n;
    }
    this.entries++;
    if (this.data.estimatedSize >= this.opts.blockSize) this.finishDataBlock();
  }

  private sameAsLastUserKey(src: Uint8Array, start: number, end: number): boolean {
    const n = end - start;
    if (this.entries === 0 || n !== this.lastUserKeyLen) return false;
    const last = this.lastUserKey;
    for (let i = 0; i < n; i++) if (last[i] !== src[start + i]) return false;
    return true;
  }

  private finishDataBlock(): void {
    if (this.data.empty) return;
    const last = this.data.lastKey();
    if (this.pendingKey.length < last.length) this.pendingKey = new Uint8Array(last.length * 2);
    this.pendingKey.set(last);
    this.pendingKeyLen = last.length;
    const offset = this.offset + this.out.pos;
    this.data.finishInto(this.out);
    const size = this.offset + this.out.pos - offset;
    this.writeTrailer(offset);
    this.pendingHandle.reset();
    this.pendingHandle.varint(offset);
    this.pendingHandle.varint(size);
    this.pendingIndex = true;
    if (this.out.pos >= WRITE_CHUNK) this.writeOut();
  }

  /** The index entry of a block is written lazily, keyed by that block's last key. */
  private emitIndexEntry(): void {
    this.index.addEncoded(this.pendingKey, this.pendingKeyLen, this.pendingHandle.buf.subarray(0, this.pendingHandle.pos));
    this.pendingIndex = false;
  }

  /** Appends the type byte and masked CRC over the block that starts at file offset `offset`. */
  private writeTrailer(offset: number): void {
    const start = offset - this.offset;
    this.out.u8(0); // block type: uncompressed
    const crc = crc32cUpdate(0, this.out.buf, start, this.out.pos);
    this.out.u32(maskCrc(crc));
  }

  private writeOut(): void {
    try {
      let off = 0;
      while (off < this.out.pos) off += fs.writeSync(this.fd, this.out.buf, off, this.out.pos - off);
    } catch (e) {
      throw ioError(this.name, "write", e);
    }
    this.offset += this.out.pos;
    this.out.reset();
  }

  private writeRawBlock(contents: Uint8Array): { offset: number; size: number } {
    const offset = this.offset + this.out.pos;
    this.out.bytes(contents);
    this.writeTrailer(offset);
    return { offset, size: contents.length };
  }

  /** Writes filter, index and footer, fsyncs and closes. */
  async finish(): Promise<BuiltTable> {
    this.finishDataBlock();
    if (this.pendingIndex) this.emitIndexEntry();
    this.largest = this.pendingKey.slice(0, this.pendingKeyLen);
    const filter = this.writeRawBlock(buildBloom(this.hashes, this.hashCount, this.opts.bloomBitsPerKey));
    const indexContents = new ByteWriter(4096);
    this.index.finishInto(indexContents);
    const index = this.writeRawBlock(indexContents.buf.subarray(0, indexContents.pos));
    const footer = new Uint8Array(FOOTER_SIZE);
    writeU32(footer, 0, index.offset >>> 0);
    writeU32(footer, 4, Math.floor(index.offset / 0x100000000));
    writeU32(footer, 8, index.size);
    writeU32(footer, 12, filter.offset >>> 0);
    writeU32(footer, 16, Math.floor(filter.offset / 0x100000000));
    writeU32(footer, 20, filter.size);
    writeU32(footer, 24, Math.min(this.entries, 0xffffffff));
    writeU32(footer, 28, maskCrc(crc32cUpdate(0, footer, 0, 28)));
    writeU32(footer, 32, TABLE_MAGIC_LO);
    writeU32(footer, 36, TABLE_MAGIC_HI);
    this.out.bytes(footer);
    this.writeOut();
    await new Promise<void>((resolve, reject) =>
      fs.fdatasync(this.fd, (err) => (err ? reject(ioError(this.name, "fdatasync", err)) : resolve())),
    );
    fs.closeSync(this.fd);
    return { fileSize: this.offset, entries: this.entries };
  }

  /** Closes and deletes a half-written table (compaction aborted or failed). */
  abandon(): void {
    try {
      fs.closeSync(this.fd);
    } catch {}
    try {
      fs.unlinkSync(this.path);
    } catch {}
  }
}
