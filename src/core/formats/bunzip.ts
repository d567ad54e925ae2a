/**
 * @module bunzip
 * bzip2 with a size limit, around a decoder given by the caller (seek-bzip in Node and in the
 * browser, which needs a tiny Buffer stand-in there): the output grows in 1 MiB chunks and the
 * decode stops with an InputError as soon as it passes `limit` (a decompression bomb), or when
 * the data is corrupt.
 */

import { InputError } from "../errors.ts";

/** seek-bzip's `decode(input, outputStream, multistream)`. */
export type Bzip2Decode = (
  input: Uint8Array,
  out: { writeByte(byte: number): void },
  multistream: boolean,
) => unknown;

/** Whether `bytes` start with the bzip2 magic `BZh`. */
export function isBzip2(bytes: Uint8Array): boolean {
  return bytes[0] === 0x42 && bytes[1] === 0x5a && bytes[2] === 0x68;
}

export function bunzipBounded(
  file: string,
  bytes: Uint8Array,
  limit: number,
  decode: Bzip2Decode,
): Uint8Array {
  const chunks: Uint8Array[] = [];
  let cur = new Uint8Array(1 << 20);
  let pos = 0;
  let total = 0;
  const out = {
    writeByte(b: number) {
      if (pos === cur.length) {
        chunks.push(cur);
        cur = new Uint8Array(1 << 20);
        pos = 0;
      }
      cur[pos++] = b;
      if (++total > limit)
        throw new InputError(
          { file },
          `decompresses to more than ${limit} bytes; refusing it (decompression bomb?)`,
          "input-too-large",
        );
    },
  };
  try {
    decode(bytes, out, true);
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError({ file }, `corrupt bzip2 data (${String((e as Error).message ?? e)})`);
  }
  chunks.push(cur.subarray(0, pos));
  const all = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.length;
  }
  return all;
}
