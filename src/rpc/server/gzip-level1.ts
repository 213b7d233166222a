// The gzip the server answers with: deflate level 1 in one native call (Bun.gzipSync). The
// library's gzip (node:zlib streams at level 6) cost ~150 µs of CPU for a 4 KiB Batch answer and
// ~6% of a leader's CPU under batched load; level 1 takes under 10 µs for a slightly larger body.
import { compressionGzip } from "@connectrpc/connect-node";
import type { Compression } from "@connectrpc/connect/protocol";

/** Same name and decompression (with its size limit) as the library's; only compression differs. */
export const gzipLevel1: Compression = {
  name: compressionGzip.name,
  compress: (bytes) => Promise.resolve(Bun.gzipSync(bytes as Uint8Array<ArrayBuffer>, { level: 1 })),
  decompress: (bytes, readMaxBytes) => compressionGzip.decompress(bytes, readMaxBytes),
};
