// flock(2) through bun:ffi on the C library: the one system call Node's fs does not offer. A lock
// taken by flock belongs to the open file description and dies with the process.
import { dlopen, FFIType, read } from "bun:ffi";

const LOCK_EX = 2;
const LOCK_NB = 4;
const EINTR = 4;
/** EWOULDBLOCK: 11 on Linux, 35 on macOS. */
const EWOULDBLOCK = process.platform === "darwin" ? 35 : 11;

interface Libc {
  flock(fd: number, operation: number): number;
  errno(): number;
}

let libc: Libc | null = null;

function load(): Libc {
  if (libc !== null) return libc;
  const name = process.platform === "darwin" ? "libSystem.B.dylib" : "libc.so.6";
  const errnoSymbol = process.platform === "darwin" ? "__error" : "__errno_location";
  const lib = dlopen(name, {
    flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    [errnoSymbol]: { args: [], returns: FFIType.ptr },
  });
  const errnoLocation = lib.symbols[errnoSymbol] as () => number | null;
  libc = {
    flock: lib.symbols.flock as (fd: number, op: number) => number,
    errno: () => {
      const ptr = errnoLocation();
      return ptr === null ? 0 : read.i32(ptr as never, 0);
    },
  };
  return libc;
}

/** Takes an exclusive, non-blocking flock on `fd`: "busy" when another descriptor holds it. */
export function flockExclusive(fd: number): "locked" | "busy" {
  const c = load();
  for (;;) {
    if (c.flock(fd, LOCK_EX | LOCK_NB) === 0) return "locked";
    const errno = c.errno();
    if (errno === EINTR) continue;
    if (errno === EWOULDBLOCK) return "busy";
    throw new Error(`flock returned errno ${errno}`);
  }
}
