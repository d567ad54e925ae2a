/**
 * Loading dropped or picked files in the browser, like the CLI's node/load-input.ts: gzip is
 * inflated with the browser's DecompressionStream and bzip2 with seek-bzip (both with a size
 * limit; hwloc-gather-topology writes .tar.bz2), tarballs become a sysfs
 * snapshot, text goes to the core's sniffer and parsers. Several lspci files of one machine
 * combine, as on the command line.
 */

/// <reference path="../../src/node/seek-bzip.d.ts" />
import { InputError } from "../../src/core/errors.ts";
import { bunzipBounded, isBzip2 } from "../../src/core/formats/bunzip.ts";
import { parseTextInput } from "../../src/core/formats/detect.ts";
import { loadSysfs } from "../../src/core/formats/sysfs.ts";
import { isTar, snapshotFromTar } from "../../src/core/formats/tar.ts";
import type { MachineDescription } from "../../src/core/hw/machine.ts";

/** Largest file read (256 MiB) and largest decompressed archive (1 GiB): a browser tab's budget. */
export const MAX_FILE_BYTES = 256 * 1024 * 1024;
export const MAX_UNPACKED_BYTES = 1024 * 1024 * 1024;

/**
 * seek-bzip allocates its small work arrays with `new Buffer(n)` and reads a block magic with
 * `toString("hex")`; a Uint8Array that can do that is all it needs in a browser.
 */
class ByteBuffer extends Uint8Array {
  override toString(encoding?: string): string {
    if (encoding !== "hex") return super.toString();
    let s = "";
    for (const b of this) s += b.toString(16).padStart(2, "0");
    return s;
  }
}

async function bunzip(file: string, bytes: Uint8Array, limit: number): Promise<Uint8Array> {
  const g = globalThis as { Buffer?: unknown };
  g.Buffer ??= ByteBuffer;
  const { default: Bunzip } = await import("seek-bzip");
  return bunzipBounded(file, bytes, limit, (input, out, multi) => Bunzip.decode(input, out, multi));
}

async function gunzip(file: string, bytes: Uint8Array, limit: number): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart])
    .stream()
    .pipeThrough(new DecompressionStream("gzip"));
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > limit) {
        await reader.cancel();
        throw new InputError(
          { file },
          `decompresses to more than ${limit} bytes; refusing it (decompression bomb?)`,
          "input-too-large",
        );
      }
      chunks.push(value);
    }
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError({ file }, `corrupt gzip data (${(e as Error).message})`);
  }
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

export interface PickedFile {
  readonly name: string;
  readonly bytes: Uint8Array;
}

export async function readPicked(files: readonly File[]): Promise<PickedFile[]> {
  const out: PickedFile[] = [];
  for (const f of files) {
    if (f.size > MAX_FILE_BYTES)
      throw new InputError(
        { file: f.name },
        `file is ${f.size} bytes, more than the ${MAX_FILE_BYTES} the page accepts; use peerbuf serve --input`,
        "input-too-large",
      );
    out.push({ name: f.name, bytes: new Uint8Array(await f.arrayBuffer()) });
  }
  return out;
}

/** Any input the CLI reads: text formats, tar, tar.gz, tar.bz2. */
export async function loadFiles(files: readonly PickedFile[]): Promise<MachineDescription> {
  if (files.length === 0) throw new InputError({ file: "(none)" }, "no file given");
  const texts: { file: string; text: string }[] = [];
  for (const f of files) {
    let bytes = f.bytes;
    if (bytes[0] === 0x1f && bytes[1] === 0x8b)
      bytes = await gunzip(f.name, bytes, MAX_UNPACKED_BYTES);
    else if (isBzip2(bytes)) bytes = await bunzip(f.name, bytes, MAX_UNPACKED_BYTES);
    if (isTar(bytes)) {
      if (files.length > 1)
        throw new InputError({ file: f.name }, "a capture archive must be the only input");
      return loadSysfs(await snapshotFromTar(f.name, bytes), { format: "sysfs-tar" });
    }
    if (bytes.includes(0))
      throw new InputError(
        { file: f.name },
        "binary data that is not a tar, gzip or bzip2 archive",
      );
    texts.push({ file: f.name, text: new TextDecoder("utf-8").decode(bytes) });
  }
  return parseTextInput(texts);
}
