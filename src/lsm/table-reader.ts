// Reads one SSTable: footer, index and filter are loaded at open and kept while the table is in
// the table cache; data blocks are read with pread, checksum-verified, and cached by offset.
import * as fs from "node:fs";
import { crc32cUpdate, unmaskCrc } from "../util/crc32c.ts";
import { BlockIterator } from "./block.ts";
import { bloomHash, bloomMayContain } from "./bloom.ts";
import type { BlockCache, BlockMap, Releasable } from "./cache.ts";
import { ByteReader, compareBytes, readU32 } from "./coding.ts";
import { corruption, ioError } from "./errors.ts";
import type { InternalIterator } from "./iterator.ts";
import { BLOCK_TRAILER, FOOTER_SIZE, TABLE_MAGIC_HI, TABLE_MAGIC_LO } from "./table-builder.ts";

export interface TableGetResult {
  kind: number;
  value: Uint8Array;
}

/** How a table file is read: mapped, or with pread (optionally in large sequential chunks). */
export interface TableReadMode {
  /** Map the file read-only (Bun.mmap): no copy per block, but touched pages count in RSS. */
  mmap: boolean;
  /**
   * pread granularity for a one-pass sequential reader (compaction input): blocks are served
   * from chunks of this many bytes, one system call per chunk instead of one per block. 0: off.
   */
  readaheadBytes?: number;
  /** Called once when a mapped table is released (the DB's mapped-bytes budget). */
  onUnmap?: (fileSize: number) => void;
}

export class TableReader implements Releasable {
  private refs = 1; // the opener's reference (normally the table cache)
  private fd: number;
  private readonly blocks: BlockMap = new Map();
  /** The file mapped read-only (tables are immutable), or null to read with pread. */
  private map: Uint8Array | null;
  private readonly readahead: number;
  private chunk: Uint8Array | null = null;
  private chunkOffset = 0;
  private readonly onUnmap: ((fileSize: number) => void) | undefined;
  private readonly index: Uint8Array;
  private readonly filter: Uint8Array;
  private readonly indexIter: BlockIterator;
  private readonly dataIter = new BlockIterator();
  bloomSkips = 0;

  private constructor(
    readonly name: string,
    readonly fileNumber: number,
    readonly fileSize: number,
    fd: number,
    private readonly cache: BlockCache,
    path: string,
    mode: TableReadMode,
  ) {
    this.fd = fd;
    this.map = mode.mmap ? mapFile(path, fileSize) : null;
    this.readahead = mode.readaheadBytes ?? 0;
    this.onUnmap = this.map !== null ? mode.onUnmap : undefined;
    if (fileSize < FOOTER_SIZE) throw corruption(name, 0, `file too short for a table (${fileSize} bytes)`);
    const footerOffset = fileSize - FOOTER_SIZE;
    const footer = this.pread(footerOffset, FOOTER_SIZE);
    if (readU32(footer, 32) !== TABLE_MAGIC_LO || readU32(footer, 36) !== TABLE_MAGIC_HI) {
      throw corruption(name, footerOffset + 32, "bad table magic number (not a table, or truncated)");
    }
    if (unmaskCrc(readU32(footer, 28)) !== crc32cUpdate(0, footer, 0, 28)) {
      throw corruption(name, footerOffset, "footer checksum mismatch");
    }
    const r = new ByteReader(footer);
    const indexOffset = r.u64();
    const indexSize = r.u32();
    const filterOffset = r.u64();
    const filterSize = r.u32();
    this.index = this.readBlock(indexOffset, indexSize, false);
    this.filter = this.readBlock(filterOffset, filterSize, false);
    this.indexIter = new BlockIterator(this.index, name, indexOffset);
  }

  /** Opens a table file (synchronously: open is rare and the table cache keeps it). */
  static open(path: string, name: string, fileNumber: number, fileSize: number, cache: BlockCache, mode: TableReadMode = { mmap: true }): TableReader {
    let fd: number;
    try {
      fd = fs.openSync(path, "r");
    } catch (e) {
      throw ioError(name, "open", e);
    }
    try {
      return new TableReader(name, fileNumber, fileSize, fd, cache, path, mode);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** Whether the file is read through a memory map (false if mapping was not asked or failed). */
  get mapped(): boolean {
    return this.map !== null;
  }

  ref(): void {
    this.refs++;
  }

  release(): void {
    if (--this.refs > 0) return;
    this.cache.dropOwner(this.blocks);
    if (this.map !== null) this.onUnmap?.(this.fileSize);
    this.map = null; // the mapping goes with its last view
    this.chunk = null;
    try {
      fs.closeSync(this.fd);
    } catch {}
    this.fd = -1;
  }

  private pread(offset: number, size: number): Uint8Array {
    if (offset + size > this.fileSize) throw corruption(this.name, offset, `block of ${size} bytes runs past end of file`);
    // A mapped table is read without a system call or copy; the CRC check below still runs.
    if (this.map !== null) return this.map.subarray(offset, offset + size);
    if (this.readahead > 0) return this.readAhead(offset, size);
    return this.readExact(offset, size);
  }

  /** Serves [offset, offset+size) from the current chunk, reading a new chunk when it is not there. */
  private readAhead(offset: number, size: number): Uint8Array {
    const c = this.chunk;
    if (c !== null && offset >= this.chunkOffset && offset + size <= this.chunkOffset + c.length) {
      return c.subarray(offset - this.chunkOffset, offset - this.chunkOffset + size);
    }
    // A fresh chunk each time: blocks handed out earlier stay valid views of the old one.
    const len = Math.min(this.fileSize - offset, Math.max(size, this.readahead));
    this.chunk = this.readExact(offset, len);
    this.chunkOffset = offset;
    return this.chunk.subarray(0, size);
  }

  private readExact(offset: number, size: number): Uint8Array {
    const buf = new Uint8Array(size);
    let done = 0;
    try {
      while (done < size) {
        const n = fs.readSync(this.fd, buf, done, size - done, offset + done);
        if (n === 0) throw corruption(this.name, offset, "unexpected end of file");
        done += n;
      }
    } catch (e) {
      if (e instanceof Error && e.name === "LsmError") throw e;
      throw ioError(this.name, "read", e);
    }
    return buf;
  }

  /** Reads and verifies the block at `offset` (contents `size` bytes plus trailer). */
  readBlock(offset: number, size: number, fillCache: boolean): Uint8Array {
    const cached = this.cache.get(this.blocks, offset);
    if (cached !== undefined) return cached;
    const buf = this.pread(offset, size + BLOCK_TRAILER);
    const expected = unmaskCrc(readU32(buf, size + 1));
    if (crc32cUpdate(0, buf, 0, size + 1) !== expected) {
      throw corruption(this.name, offset, "block checksum mismatch");
    }
    if (buf[size] !== 0) throw corruption(this.name, offset, `unknown block type ${buf[size]}`);
    const block = buf.subarray(0, size);
    if (fillCache) this.cache.insert(this.blocks, offset, block);
    return block;
  }

  /** The newest entry for `key` visible at `seq`, or undefined if the table has none. */
  get(key: Uint8Array, seq: number, hash = bloomHash(key)): TableGetResult | undefined {
    if (!bloomMayContain(this.filter, hash)) {
      this.bloomSkips++;
      return undefined;
    }
    const idx = this.indexIter;
    idx.seek(key, seq);
    if (!idx.valid()) return undefined;
    idx.decodeHandle();
    const offset = idx.handleOffset;
    const data = this.dataIter;
    data.reset(this.readBlock(offset, idx.handleSize, true), this.name, offset);
    data.seek(key, seq);
    if (!data.valid() || compareBytes(data.key(), key) !== 0) return undefined;
    return { kind: data.kind(), value: data.value() };
  }

  /** File offset where `key` would be: the start of its data block (for approximateSize). */
  approximateOffsetOf(key: Uint8Array): number {
    const idx = new BlockIterator(this.index, this.name, 0);
    idx.seek(key, Number.MAX_SAFE_INTEGER);
    if (!idx.valid()) return this.fileSize;
    idx.decodeHandle();
    return idx.handleOffset;
  }

  /** An iterator that holds a reference to this table until closed. */
  iterator(fillCache = true): TableIterator {
    this.ref();
    return new TableIterator(this, new BlockIterator(this.index, this.name, 0), fillCache);
  }
}

/** Whether this process can map files (Bun.mmap). */
export function canMapTables(): boolean {
  return typeof (globalThis as { Bun?: { mmap?: unknown } }).Bun?.mmap === "function";
}

/** Maps a table file read-only with Bun.mmap; null when unavailable or the size disagrees. */
function mapFile(path: string, fileSize: number): Uint8Array | null {
  const bun = (globalThis as { Bun?: { mmap?: (p: string, o: { shared: boolean }) => Uint8Array } }).Bun;
  if (bun?.mmap === undefined || fileSize === 0) return null;
  try {
    const m = bun.mmap(path, { shared: false });
    return m.length === fileSize ? m : null;
  } catch {
    return null;
  }
}

/** Two-level iteration: the index block picks a data block, the data block iterator walks it. */
export class TableIterator implements InternalIterator {
  private data: BlockIterator | null = null;
  private dataOffset = -1;
  private readonly blockIter = new BlockIterator();
  private closed = false;

  constructor(
    private readonly table: TableReader,
    private readonly index: BlockIterator,
    private readonly fillCache: boolean,
  ) {}

  private loadBlock(): boolean {
    if (!this.index.valid()) {
      this.data = null;
      return false;
    }
    const index = this.index;
    index.decodeHandle();
    const offset = index.handleOffset;
    if (offset !== this.dataOffset || this.data === null) {
      this.blockIter.reset(this.table.readBlock(offset, index.handleSize, this.fillCache), this.table.name, offset);
      this.dataOffset = offset;
    }
    this.data = this.blockIter;
    return true;
  }
  private skipForward(): void {
    while (this.data !== null && !this.data.valid()) {
      this.index.next();
      if (!this.loadBlock()) return;
      this.data!.seekToFirst();
    }
  }
  private skipBackward(): void {
    while (this.data !== null && !this.data.valid()) {
      this.index.prev();
      if (!this.loadBlock()) return;
      this.data!.seekToLast();
    }
  }
  valid(): boolean {
    return this.data !== null && this.data.valid();
  }
  seekToFirst(): void {
    this.index.seekToFirst();
    if (this.loadBlock()) this.data!.seekToFirst();
    this.skipForward();
  }
  seekToLast(): void {
    this.index.seekToLast();
    if (this.loadBlock()) this.data!.seekToLast();
    this.skipBackward();
  }
  seek(key: Uint8Array, seq: number): void {
    this.index.seek(key, seq);
    if (this.loadBlock()) this.data!.seek(key, seq);
    this.skipForward();
  }
  next(): void {
    this.data!.next();
    this.skipForward();
  }
  prev(): void {
    this.data!.prev();
    this.skipBackward();
  }
  key(): Uint8Array {
    return this.data!.key();
  }
  seq(): number {
    return this.data!.seq();
  }
  kind(): number {
    return this.data!.kind();
  }
  value(): Uint8Array {
    return this.data!.value();
  }
  valueCopy(): Uint8Array {
    return this.data!.valueCopy();
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.data = null;
    this.table.release();
  }
}
