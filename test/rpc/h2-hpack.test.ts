// HPACK of the HTTP/2 engine against RFC 7541's own examples (Appendix C): integers, Huffman
// strings, request header blocks in sequence (the dynamic table carried from one to the next),
// and the encoder's blocks read back by the decoder; broken blocks are HpackErrors, not crashes.
import { describe, expect, test } from "bun:test";
import { HpackDecoder, HpackError, readInteger } from "../../src/rpc/h2/hpack-decoder.ts";
import { encodeHeaders, integerLength, writeInteger } from "../../src/rpc/h2/hpack-encoder.ts";
import { HUFFMAN_CODES, huffmanDecode, huffmanEncode, huffmanLength } from "../../src/rpc/h2/huffman.ts";

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");

describe("integers (C.1)", () => {
  test("10 and 1337 with a 5-bit prefix, 42 with an 8-bit prefix", () => {
    for (const [value, prefix, bytes] of [
      [10, 5, "0a"],
      [1337, 5, "1f9a0a"],
      [42, 8, "2a"],
    ] as const) {
      const out = new Uint8Array(integerLength(value, prefix));
      writeInteger(out, 0, value, prefix, 0);
      expect(Buffer.from(out).toString("hex")).toBe(bytes);
      expect(readInteger(hex(bytes), 0, prefix)).toEqual([value, bytes.length / 2]);
    }
  });
  test("an integer that never ends, or is absurdly long, is refused", () => {
    expect(() => readInteger(hex("1fff"), 0, 5)).toThrow(HpackError);
    expect(() => readInteger(hex("1fffffffffffff7f"), 0, 5)).toThrow(HpackError);
  });
});

describe("Huffman (Appendix B, C.4)", () => {
  test("the canonical codes are the RFC's", () => {
    expect(HUFFMAN_CODES[0]).toBe(0x1ff8);
    expect(HUFFMAN_CODES[48]).toBe(0x0); // '0'
    expect(HUFFMAN_CODES[97]).toBe(0x3); // 'a'
    expect(HUFFMAN_CODES[255]).toBe(0x3ffffee);
    expect(HUFFMAN_CODES[256]).toBe(0x3fffffff); // EOS
  });
  test("strings of C.4 and C.6 both ways", () => {
    for (const [bytes, text] of [
      ["f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"],
      ["a8eb 1064 9cbf", "no-cache"],
      ["25a8 49e9 5ba9 7d7f", "custom-key"],
      ["25a8 49e9 5bb8 e8b4 bf", "custom-value"],
      ["6402", "302"],
      ["aec3 771a 4b", "private"],
      ["d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", "Mon, 21 Oct 2013 20:13:21 GMT"],
      ["9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", "https://www.example.com"],
    ] as const) {
      const b = hex(bytes);
      expect(huffmanDecode(b, 0, b.length)).toBe(text);
      const out = new Uint8Array(64);
      expect(Buffer.from(out.subarray(0, huffmanEncode(text, out, 0))).equals(b)).toBe(true);
      expect(huffmanLength(text)).toBe(b.length);
    }
  });
  test("every octet survives a round trip", () => {
    let all = "";
    for (let i = 0; i < 256; i++) all += String.fromCharCode(i);
    const out = new Uint8Array(1024);
    const end = huffmanEncode(all, out, 0);
    expect(huffmanDecode(out, 0, end)).toBe(all);
  });
  test("padding that is not all ones, or longer than 7 bits, is refused", () => {
    // 'a' is 00011: a byte 00011000 pads with zeros; 00011111 0xff pads 11 bits.
    expect(() => huffmanDecode(hex("18"), 0, 1)).toThrow();
    expect(() => huffmanDecode(hex("1fff"), 0, 2)).toThrow();
    expect(huffmanDecode(hex("1f"), 0, 1)).toBe("a");
  });
});

describe("header blocks (C.3, C.4)", () => {
  const first = [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
  ];
  const second = [...first, ["cache-control", "no-cache"]];
  const third = [
    [":method", "GET"],
    [":scheme", "https"],
    [":path", "/index.html"],
    [":authority", "www.example.com"],
    ["custom-key", "custom-value"],
  ];
  test("three requests without Huffman share one dynamic table (C.3)", () => {
    const decoder = new HpackDecoder();
    expect(decoder.decode(hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"), 65536).headers).toEqual(first as [string, string][]);
    expect(decoder.decode(hex("8286 84be 5808 6e6f 2d63 6163 6865"), 65536).headers).toEqual(second as [string, string][]);
    expect(decoder.decode(hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"), 65536).headers).toEqual(third as [string, string][]);
  });
  test("the same three with Huffman (C.4)", () => {
    const decoder = new HpackDecoder();
    expect(decoder.decode(hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"), 65536).headers).toEqual(first as [string, string][]);
    expect(decoder.decode(hex("8286 84be 5886 a8eb 1064 9cbf"), 65536).headers).toEqual(second as [string, string][]);
    expect(decoder.decode(hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"), 65536).headers).toEqual(third as [string, string][]);
  });
  test("a small table evicts the oldest entries; a size update above the setting is refused", () => {
    const decoder = new HpackDecoder(4096);
    // Size update to 64 bytes, then two indexed literals: only the newest fits.
    decoder.decode(hex("3f21 4003 6161 6101 62 4003 6363 6301 64"), 65536);
    expect(decoder.decode(hex("be"), 65536).headers).toEqual([["ccc", "d"]]);
    expect(() => decoder.decode(hex("bf"), 65536)).toThrow(HpackError);
    expect(() => new HpackDecoder(4096).decode(hex("3fe21f"), 65536)).toThrow(HpackError);
  });
  test("the list size bound flags an oversize block and keeps decoding", () => {
    const decoder = new HpackDecoder();
    const result = decoder.decode(hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"), 100);
    expect(result.oversize).toBe(true);
    // The table entry from the oversize block is still there for the next block.
    expect(decoder.decode(hex("be"), 65536).headers).toEqual([[":authority", "www.example.com"]]);
  });
  test("broken blocks are HpackErrors", () => {
    for (const bad of ["80", "ff00", "c0", "4005 6161", "0085 ffff ffff ff00", "82 20"]) {
      expect(() => new HpackDecoder().decode(hex(bad), 65536)).toThrow(HpackError);
    }
  });
  test("the encoder's blocks decode to what was encoded", () => {
    const fields: [string, string][] = [
      [":status", "200"],
      [":status", "429"],
      ["content-type", "application/proto"],
      ["grpc-message", "a%20message%20of%20some%20length".repeat(5)],
      ["x-custom", "\u00ff\u0001 odd bytes"],
      ["authorization", "Bearer secret"],
    ];
    const block = encodeHeaders(fields);
    expect(new HpackDecoder().decode(block, 65536).headers).toEqual(fields);
    // Repeated encodings are the same bytes (cached) and still decode.
    expect(Buffer.from(encodeHeaders(fields)).equals(Buffer.from(block))).toBe(true);
  });
});
