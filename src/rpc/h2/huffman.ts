// HPACK's Huffman code (RFC 7541 Appendix B): the code length of every symbol, from which the
// canonical codes follow, and a decoder that walks 4 bits at a time through a state table.

/** Code length in bits of symbols 0..255 and EOS (256), as listed in RFC 7541 Appendix B. */
const LENGTHS: readonly number[] = [
  // 0..31: control characters
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  // 32..63: ' ' .. '?'
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
  // 64..95: '@' .. '_'
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  // 96..127: '`' .. DEL
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
  // 128..159
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
  // 160..191
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
  // 192..223
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
  // 224..255
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
  // EOS
  30,
];

export const EOS = 256;

/** The canonical code of each symbol: ordered by length, then by symbol (how the RFC's table is built). */
export const HUFFMAN_CODES: Uint32Array = (() => {
  const order = LENGTHS.map((length, symbol) => [length, symbol] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const codes = new Uint32Array(LENGTHS.length);
  let code = 0;
  let length = order[0]![0];
  for (const [len, symbol] of order) {
    code <<= len - length;
    length = len;
    codes[symbol] = code;
    code++;
  }
  return codes;
})();

export const HUFFMAN_LENGTHS: Uint8Array = Uint8Array.from(LENGTHS);

/** Thrown for a Huffman string that is not valid (EOS inside, bad padding): a COMPRESSION_ERROR. */
export class HuffmanError extends Error {}

/**
 * The decoder: a binary tree of the codes flattened into nodes, and from each node a 16-entry
 * table for the next 4 bits (next node, symbol emitted or -1, whether the node is at a boundary
 * made only of 1 bits, which is the only padding RFC 7541 §5.2 allows).
 */
const NIBBLE_NEXT: Uint16Array[] = [];
const NIBBLE_SYMBOL: Int16Array[] = [];
const NIBBLE_FAIL: Uint8Array[] = [];
/** Nodes whose path from the root is all 1s and at most 7 bits long: valid end-of-string states. */
const ACCEPTING: boolean[] = [];

(() => {
  // Tree: children[node*2 + bit]; leaf symbols in `leaf`.
  const children: number[] = [0, 0];
  const leaf: number[] = [-1];
  for (let symbol = 0; symbol < LENGTHS.length; symbol++) {
    const length = LENGTHS[symbol]!;
    const code = HUFFMAN_CODES[symbol]!;
    let node = 0;
    for (let i = length - 1; i >= 0; i--) {
      const bit = (code >>> i) & 1;
      let child = children[node * 2 + bit]!;
      if (child === 0) {
        child = leaf.length;
        leaf.push(-1);
        children.push(0, 0);
        children[node * 2 + bit] = child;
      }
      node = child;
    }
    leaf[node] = symbol;
  }
  // Internal nodes only (leaves return to the root); depth of 1s for the padding rule.
  const internal: number[] = [];
  const index = new Map<number, number>();
  const onesDepth = new Map<number, number>([[0, 0]]);
  const walk = (node: number) => {
    index.set(node, internal.length);
    internal.push(node);
    for (const bit of [0, 1]) {
      const child = children[node * 2 + bit]!;
      if (leaf[child] === -1) {
        const d = onesDepth.get(node);
        if (bit === 1 && d !== undefined) onesDepth.set(child, d + 1);
        walk(child);
      }
    }
  };
  walk(0);
  for (const node of internal) {
    const next = new Uint16Array(16);
    const symbol = new Int16Array(16).fill(-1);
    const fail = new Uint8Array(16);
    for (let nibble = 0; nibble < 16; nibble++) {
      let at = node;
      let emitted = -1;
      for (let i = 3; i >= 0; i--) {
        at = children[at * 2 + ((nibble >>> i) & 1)]!;
        const s = leaf[at]!;
        if (s !== -1) {
          // At most one symbol per nibble: every code is at least 5 bits long.
          if (s === EOS) fail[nibble] = 1;
          emitted = s;
          at = 0;
        }
      }
      next[nibble] = index.get(at)!;
      symbol[nibble] = emitted;
    }
    NIBBLE_NEXT.push(next);
    NIBBLE_SYMBOL.push(symbol);
    NIBBLE_FAIL.push(fail);
    const d = onesDepth.get(node);
    ACCEPTING.push(d !== undefined && d <= 7);
  }
})();

/** Decodes a Huffman-coded string of `bytes[start..end)` as latin1 (header bytes are octets). */
export function huffmanDecode(bytes: Uint8Array, start: number, end: number): string {
  let state = 0;
  let out = "";
  const codes: number[] = [];
  for (let i = start; i < end; i++) {
    const byte = bytes[i]!;
    let nibble = byte >>> 4;
    let symbol = NIBBLE_SYMBOL[state]![nibble]!;
    if (NIBBLE_FAIL[state]![nibble]) throw new HuffmanError("EOS inside a Huffman-coded string");
    state = NIBBLE_NEXT[state]![nibble]!;
    if (symbol >= 0) codes.push(symbol);
    nibble = byte & 15;
    symbol = NIBBLE_SYMBOL[state]![nibble]!;
    if (NIBBLE_FAIL[state]![nibble]) throw new HuffmanError("EOS inside a Huffman-coded string");
    state = NIBBLE_NEXT[state]![nibble]!;
    if (symbol >= 0) codes.push(symbol);
    if (codes.length >= 4096) {
      out += String.fromCharCode(...codes);
      codes.length = 0;
    }
  }
  if (!ACCEPTING[state]) throw new HuffmanError("a Huffman-coded string ends in invalid padding");
  return out + String.fromCharCode(...codes);
}

/** The Huffman-coded length in bytes of a latin1 string. */
export function huffmanLength(value: string): number {
  let bits = 0;
  for (let i = 0; i < value.length; i++) bits += HUFFMAN_LENGTHS[value.charCodeAt(i) & 255]!;
  return (bits + 7) >>> 3;
}

/** Writes the Huffman coding of `value` at `out[pos..]`; returns the end position. */
export function huffmanEncode(value: string, out: Uint8Array, pos: number): number {
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < value.length; i++) {
    const symbol = value.charCodeAt(i) & 255;
    const length = HUFFMAN_LENGTHS[symbol]!;
    let code = HUFFMAN_CODES[symbol]!;
    // Codes are up to 30 bits: feed them in two halves so the accumulator stays below 32 bits.
    if (length > 16) {
      const high = length - 16;
      acc = (acc << high) | (code >>> 16);
      bits += high;
      while (bits >= 8) {
        bits -= 8;
        out[pos++] = (acc >>> bits) & 255;
      }
      code &= 0xffff;
      acc = (acc << 16) | code;
      bits += 16;
    } else {
      acc = (acc << length) | code;
      bits += length;
    }
    while (bits >= 8) {
      bits -= 8;
      out[pos++] = (acc >>> bits) & 255;
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out[pos++] = ((acc << (8 - bits)) | (0xff >>> bits)) & 255;
  return pos;
}
