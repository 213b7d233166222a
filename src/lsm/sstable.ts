// The SSTable format (layout in FORMAT.md): TableBuilder writes data blocks, a bloom filter
// block, an index block and a fixed footer; TableReader opens one, verifies and decodes blocks
// and serves gets. Iteration is in table-iterator.ts, blocks in block.ts, the filter in bloom.ts.
import * as fs from "node:fs";
import { crc32cUpdate, maskCrc, unmaskCrc } from "../util/crc32c.ts";
import { BLOCK_CODEC_MASK, BLOCK_CRC32, blockChecksumMatches, blockTrailerCrc, type BlockChecksum } from "./block-checksum.ts";
import { BlockBuilder, BlockIterator } from "./block.ts";
import { IndexSearch } from "./index-search.ts";
import { bloomHash, bloomMayContain, buildBloom } from "./bloom.ts";
import type { BlockCache, BlockEntry, BlockMap, Releasable } from "./cache.ts";
import { ByteReader, ByteWriter, compareBytes, KIND_PUT, readU32, writeU32 } from "./coding.ts";
import {
  BadCompressedBlock, BLOCK_LZ4, BLOCK_RAW, BLOCK_ZSTD, blockTypeOf, decompressBlock, lz4Compress, maxCompressedLength,
  type Compression,
} from "./compression.ts";
import { corruption, ioError } from "./errors.ts";
import { TableIterator } from "./table-iterator.ts";

// ---- writing ---------------------------------------------------------------------------------

export const TABLE_MAGIC_LO = 0x4c534d54; // "TMSL" little-endian: kvraft LSM table
export const TABLE_MAGIC_HI = 0x76726b31; // "1krv"
export const FOOTER_SIZE = 40;
export const BLOCK_TRAILER = 5; // type byte + masked CRC (CRC-32, or CRC-32C in older tables)
const WRITE_CHUNK = 256 * 1024;

export interface TableOptions {
  blockSize: number;
  restartInterval: number;
  bloomBitsPerKey: number;
  /** Codec of data blocks (index and filter blocks are stored raw). */
  compression: Compression;
  /** Block trailer checksum; default "crc32". "crc32c" writes the older format (tests only). */
  checksum?: BlockChecksum;
}

export interface BuiltTable {
  fileSize: number;
  entries: number;
  /** Data block bytes before and after compression (equal when nothing was compressed). */
  rawDataBytes: number;
  storedDataBytes: number;
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
  /** Type byte the data blocks are compressed with (BLOCK_RAW: not at all). */
  private readonly blockType: number;
  /** BLOCK_CRC32, or 0 for CRC-32C trailers (the older format). */
  private readonly checksumFlag: number;
  /** A finished data block before compression. */
  private readonly raw = new ByteWriter(8192);
  private rawDataBytes = 0;
  private storedDataBytes = 0;
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
    this.blockType = blockTypeOf(opts.compression);
    this.checksumFlag = opts.checksum === "crc32c" ? 0 : BLOCK_CRC32;
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
    let type = BLOCK_RAW;
    if (this.blockType === BLOCK_RAW) {
      const start = this.out.pos;
      this.data.finishInto(this.out);
      this.rawDataBytes += this.out.pos - start;
    } else {
      this.raw.reset();
      this.data.finishInto(this.raw);
      type = this.compressInto(this.raw.buf, this.raw.pos);
    }
    const size = this.offset + this.out.pos - offset;
    this.storedDataBytes += size;
    this.writeTrailer(offset, type);
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

  /**
   * Appends block[0, n) to the output compressed, or raw when compression saves less than 1/8
   * (LevelDB's rule: reading a barely smaller block is not worth the decoding); returns the type.
   */
  private compressInto(block: Uint8Array, n: number): number {
    this.rawDataBytes += n;
    const limit = n - (n >>> 3);
    const out = this.out;
    if (this.blockType === BLOCK_LZ4) {
      out.ensure(maxCompressedLength(n));
      const end = lz4Compress(block, 0, n, out.buf, out.pos);
      if (end - out.pos < limit) {
        out.pos = end;
        return BLOCK_LZ4;
      }
    } else if (this.blockType === BLOCK_ZSTD) {
      const c = Bun.zstdCompressSync(block.subarray(0, n), { level: 1 });
      if (c.length < limit) {
        out.bytes(c);
        return BLOCK_ZSTD;
      }
    }
    out.bytes(block, 0, n);
    return BLOCK_RAW;
  }

  /** Appends the type byte and masked CRC over the block that starts at file offset `offset`. */
  private writeTrailer(offset: number, codec = BLOCK_RAW): void {
    const start = offset - this.offset;
    const type = codec | this.checksumFlag;
    this.out.u8(type);
    this.out.u32(blockTrailerCrc(type, this.out.buf, start, this.out.pos));
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
    return { fileSize: this.offset, entries: this.entries, rawDataBytes: this.rawDataBytes, storedDataBytes: this.storedDataBytes };
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

// ---- reading ---------------------------------------------------------------------------------

const EMPTY = new Uint8Array(0);
/** Buffer's native copy, called on plain Uint8Arrays: copies a range without a subarray view. */
const copyBytes = Buffer.prototype.copy as (this: Uint8Array, target: Uint8Array, targetStart: number, sourceStart: number, sourceEnd: number) => number;

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
  private readahead = 0;
  /** The readahead buffer, reused for every chunk (see readAhead), and the bytes it holds now. */
  private chunkBuf: Uint8Array | null = null;
  private chunk: Uint8Array | null = null;
  private chunkOffset = 0;
  private readonly onUnmap: ((fileSize: number) => void) | undefined;
  private readonly index: Uint8Array;
  private readonly filter: Uint8Array;
  private readonly indexIter: BlockIterator;
  /** Point reads' search of the index (null: a block shape it does not know; plain seek). */
  private readonly indexSearch: IndexSearch | null;
  /** Offset and stored size of the filter and index blocks. */
  private readonly metaHandles: [number, number][];
  private readonly dataIter = new BlockIterator();
  private readonly allocBlock = (n: number): Uint8Array => this.cache.allocBlock(n);
  /**
   * Length of the block the last readBlock() returned: the buffer is longer when it is pooled
   * (a view per block read would be garbage per cache miss).
   */
  blockLength = 0;
  /** Where the decoder of the current readBlock() writes (see decodeInto). */
  private decodeTarget: ((n: number) => Uint8Array) | undefined = undefined;
  private readonly decodeInto = (n: number): Uint8Array => {
    this.blockLength = n;
    const target = this.decodeTarget;
    return target === undefined ? new Uint8Array(n) : target(n);
  };
  /** Where a stored block is staged to be verified and decoded (see readBlock). */
  private scratch = new Uint8Array(0);
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
    this.metaHandles = [
      [filterOffset, filterSize],
      [indexOffset, indexSize],
    ];
    this.indexIter = new BlockIterator(this.index, name, indexOffset);
    this.indexSearch = IndexSearch.build(this.indexIter);
    // Only now: index and filter live as long as the table, so they are not views of a chunk.
    this.readahead = mode.readaheadBytes ?? 0;
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

  /** Bytes kept while the table is open: its index and filter blocks. */
  get metadataBytes(): number {
    return this.index.length + this.filter.length + (this.indexSearch?.bytes ?? 0);
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
    // The footer only (blocks are staged by readBlock); its CRC is checked by the caller.
    if (this.map !== null) return this.map.subarray(offset, offset + size);
    return this.readExact(offset, size);
  }

  /**
   * The chunk holding [offset, offset+size) (at offset - chunkOffset), reading a new chunk when
   * the current one does not hold it.
   */
  private readAhead(offset: number, size: number): Uint8Array {
    const c = this.chunk;
    if (c !== null && offset >= this.chunkOffset && offset + size <= this.chunkOffset + c.length) return c;
    // One buffer for every chunk: a sequential reader (a merge input, the only user of readahead
    // and of its table) is done with a block before it reads the next, and copies what it keeps.
    const len = Math.min(this.fileSize - offset, Math.max(size, this.readahead));
    if (this.chunkBuf === null || this.chunkBuf.length < len) this.chunkBuf = new Uint8Array(Math.max(len, this.readahead));
    this.chunk = this.readExact(offset, len, this.chunkBuf.subarray(0, len));
    this.chunkOffset = offset;
    return this.chunk;
  }

  private readExact(offset: number, size: number, buf: Uint8Array = new Uint8Array(size)): Uint8Array {
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

  /**
   * Reads and verifies the block at `offset` (contents `size` bytes plus trailer); the decoded
   * block is the returned buffer's first `blockLength` bytes. A cached block is valid for this
   * synchronous call only, unless pinned (pinBlock): an evicted block's buffer is reused for
   * the next block read. `scratch` (when not filling the cache) returns a buffer of at least n bytes.
   */
  readBlock(offset: number, size: number, fillCache: boolean, scratch?: (n: number) => Uint8Array): Uint8Array {
    const cached = this.cache.get(this.blocks, offset);
    if (cached !== undefined) {
      this.blockLength = cached.length;
      return cached.block;
    }
    const stored = size + BLOCK_TRAILER;
    if (offset + stored > this.fileSize) throw corruption(this.name, offset, `block of ${size} bytes runs past end of file`);
    // The stored block is staged in this table's scratch buffer (no allocation per read; see
    // DESIGN-memory.md). A mapped block is copied before its CRC is checked: a view of the
    // mapping would change with the file (bit rot paged back in, a stray write) after being
    // verified once, and then be read from the cache unverified forever — a corrupt value served.
    let src: Uint8Array;
    let at = 0;
    if (this.map !== null) {
      src = this.stage(stored);
      copyBytes.call(this.map, src, 0, offset, offset + stored);
    } else if (this.readahead > 0) {
      src = this.readAhead(offset, stored);
      at = offset - this.chunkOffset;
    } else {
      src = this.readExact(offset, stored, this.stage(stored));
    }
    if (!blockChecksumMatches(src, at, size)) throw corruption(this.name, offset, "block checksum mismatch");
    const type = src[at + size] & BLOCK_CODEC_MASK;
    // A block the cache keeps lives in a buffer the cache recycles once it is evicted and no
    // iterator is on it; a one-pass reader's block lives in that reader's scratch buffer.
    const alloc = fillCache ? this.allocBlock : scratch;
    let block: Uint8Array;
    if (type === BLOCK_RAW) {
      block = alloc !== undefined ? alloc(size) : new Uint8Array(size);
      copyBytes.call(src, block, 0, at, at + size);
      this.blockLength = size;
    } else {
      this.blockLength = -1;
      this.decodeTarget = alloc;
      try {
        block = decompressBlock(type, src, at, at + size, this.decodeInto);
      } catch (e) {
        if (e instanceof BadCompressedBlock) throw corruption(this.name, offset, `block does not decompress (type ${type}): ${e.message}`);
        throw e;
      } finally {
        this.decodeTarget = undefined;
      }
      // zstd decodes into a buffer of its own (exactly the block), not one from `alloc`.
      if (this.blockLength < 0) this.blockLength = block.length;
    }
    if (fillCache) this.cache.insert(this.blocks, offset, block, this.blockLength, type !== BLOCK_ZSTD);
    return block;
  }

  /** This table's staging buffer with room for n bytes (valid until the next block read). */
  private stage(n: number): Uint8Array {
    if (this.scratch.length < n) this.scratch = new Uint8Array(Math.ceil(n * 1.25));
    return this.scratch;
  }

  /** Pins the cached block at `offset` for an iterator (null if it is not cached). */
  pinBlock(offset: number): BlockEntry | null {
    return this.cache.pin(this.blocks, offset);
  }

  unpinBlock(e: BlockEntry): void {
    this.cache.unpin(e);
  }

  /**
   * Finds the newest entry for `key` visible at `seq`: false if the table has none, else true with
   * its kind and (for a put) a copy of its value in `out`.
   */
  get(key: Uint8Array, seq: number, hash: number, out: TableGetResult): boolean {
    if (!bloomMayContain(this.filter, hash)) {
      this.bloomSkips++;
      return false;
    }
    const idx = this.indexIter;
    if (this.indexSearch !== null) this.indexSearch.seek(idx, key, seq);
    else idx.seek(key, seq);
    if (!idx.valid()) return false;
    idx.decodeHandle();
    const offset = idx.handleOffset;
    const data = this.dataIter;
    // Not pinned: the value is copied here, before anything else reads a block.
    data.reset(this.readBlock(offset, idx.handleSize, true), this.name, offset, this.blockLength);
    data.seek(key, seq);
    if (!data.valid() || compareBytes(data.key(), key) !== 0) return false;
    out.kind = data.kind();
    out.value = out.kind === KIND_PUT ? data.valueCopy() : EMPTY;
    return true;
  }

  /** Offset and stored size (trailer excluded) of every block: data blocks in order, then filter and index. */
  blockHandles(): [number, number][] {
    const handles: [number, number][] = [];
    const idx = new BlockIterator(this.index, this.name, 0);
    for (idx.seekToFirst(); idx.valid(); idx.next()) {
      idx.decodeHandle();
      handles.push([idx.handleOffset, idx.handleSize]);
    }
    return [...handles, ...this.metaHandles];
  }

  /** File offset where `key` would be: the start of its data block (for approximateSize). */
  approximateOffsetOf(key: Uint8Array): number {
    const idx = new BlockIterator(this.index, this.name, 0);
    idx.seek(key, Number.MAX_SAFE_INTEGER);
    if (!idx.valid()) return this.fileSize;
    idx.decodeHandle();
    return idx.handleOffset;
  }

  /** An iterator that holds a reference to this table until closed (`reuse`: a closed one to rebind). */
  iterator(fillCache = true, reuse: TableIterator | null = null): TableIterator {
    this.ref();
    if (reuse !== null && reuse.rebind(this, this.index, fillCache)) return reuse;
    return new TableIterator(this, this.index, fillCache);
  }
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
