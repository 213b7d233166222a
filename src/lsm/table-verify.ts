// Checking a table file's integrity as its bytes stream past: every block's CRC (CRC-32, or
// CRC-32C in older tables: the block's type byte says which) and the footer's, and that the blocks tile the file. What a snapshot sender runs over the tables it
// ships, so a table gone bad on its disk is found there (and repaired) instead of copied.
import { BlockCache } from "./cache.ts";
import { corruption } from "./errors.ts";
import { readU32 } from "./coding.ts";
import { BLOCK_TRAILER, FOOTER_SIZE, TableReader } from "./sstable.ts";
import { blockChecksumMatches } from "./block-checksum.ts";
import { crc32cUpdate, unmaskCrc } from "../util/crc32c.ts";

export class TableStreamVerifier {
  /** Where the next streamed byte lies in the file. */
  private position = 0;
  /** The block being checked (an index into `blocks`). */
  private block = 0;
  /**
   * The current block's bytes with its trailer, gathered whole: which checksum covers them is
   * in the type byte, which comes after the bytes it covers. As large as the largest block.
   */
  private readonly staged: Uint8Array;
  private readonly footer = new Uint8Array(FOOTER_SIZE);

  private constructor(
    private readonly name: string,
    private readonly size: number,
    /** [offset, stored size] in file order, tiling the file up to the footer. */
    private readonly blocks: [number, number][],
  ) {
    let largest = 0;
    for (const [, stored] of blocks) largest = Math.max(largest, stored);
    this.staged = new Uint8Array(largest + BLOCK_TRAILER);
  }

  /** Reads the table's footer and index (verified) from `path` to learn where its blocks lie. */
  static open(path: string, name: string, size: number): TableStreamVerifier {
    const reader = TableReader.open(path, name, 0, size, new BlockCache(0), { mmap: false });
    let blocks: [number, number][];
    try {
      blocks = reader.blockHandles().sort((a, b) => a[0] - b[0]);
    } finally {
      reader.release();
    }
    let end = 0;
    for (const [offset, stored] of blocks) {
      if (offset !== end) throw corruption(name, offset, `block does not start where the one before ends (${end})`);
      end = offset + stored + BLOCK_TRAILER;
    }
    if (end !== size - FOOTER_SIZE) throw corruption(name, end, `blocks end ${size - FOOTER_SIZE - end} bytes before the footer`);
    return new TableStreamVerifier(name, size, blocks);
  }

  /** The file's next bytes, in order from offset 0. */
  update(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.length) {
      if (this.position + (bytes.length - at) > this.size) throw corruption(this.name, this.size, "more bytes than the file holds");
      if (this.block === this.blocks.length) {
        // The footer: kept whole, checked at the end.
        const n = Math.min(bytes.length - at, this.size - this.position);
        this.footer.set(bytes.subarray(at, at + n), this.position - (this.size - FOOTER_SIZE));
        this.position += n;
        at += n;
        continue;
      }
      const [offset, stored] = this.blocks[this.block]!;
      const blockEnd = offset + stored + BLOCK_TRAILER;
      const n = Math.min(bytes.length - at, blockEnd - this.position);
      this.staged.set(bytes.subarray(at, at + n), this.position - offset);
      this.position += n;
      at += n;
      if (this.position === blockEnd) {
        if (!blockChecksumMatches(this.staged, 0, stored)) throw corruption(this.name, offset, "block checksum mismatch");
        this.block++;
      }
    }
  }

  /** Every byte seen: the footer must match its checksum. */
  finish(): void {
    if (this.position !== this.size) throw corruption(this.name, this.position, `the file ended at ${this.position} of ${this.size} bytes`);
    if (crc32cUpdate(0, this.footer, 0, 28) !== unmaskCrc(readU32(this.footer, 28))) throw corruption(this.name, this.size - FOOTER_SIZE, "footer checksum mismatch");
  }
}
