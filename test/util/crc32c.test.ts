import { expect, test } from "bun:test";
import { crc32c, crc32cUpdate, maskCrc, unmaskCrc } from "../../src/util/crc32c.ts";

const ascii = (s: string) => new TextEncoder().encode(s);

test("CRC-32C check values (RFC 3720 and the standard check string)", () => {
  expect(crc32c(ascii("123456789"))).toBe(0xe3069283);
  expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
  expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
  const ascending = Uint8Array.from({ length: 32 }, (_, i) => i);
  expect(crc32c(ascending)).toBe(0x46dd794e);
  expect(crc32c(new Uint8Array(0))).toBe(0);
});

test("incremental update equals one pass, at every split point", () => {
  const data = Uint8Array.from({ length: 100 }, (_, i) => (i * 37 + 11) & 0xff);
  const whole = crc32c(data);
  for (let split = 0; split <= data.length; split++) {
    expect(crc32cUpdate(crc32c(data, 0, split), data, split)).toBe(whole);
  }
});

test("mask round-trips and changes the value", () => {
  for (const crc of [0, 1, 0xe3069283, 0xffffffff]) {
    expect(unmaskCrc(maskCrc(crc))).toBe(crc);
    expect(maskCrc(crc)).not.toBe(crc);
  }
});
