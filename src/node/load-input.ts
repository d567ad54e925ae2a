/**
 * @module load-input
 * Turns what the user named with --input (or nothing: this machine) into a MachineDescription.
 * Reads bytes, decompresses with limits, sniffs the format, and hands strings/bytes to the core.
 */

import { closeSync, openSync, readSync, statSync } from "node:fs";
import { basename } from "node:path";
import { gunzipSync } from "node:zlib";
import Bunzip from "seek-bzip";
import { InputError } from "../core/errors.ts";
import { bunzipBounded, isBzip2 } from "../core/formats/bunzip.ts";
import { parseTextInput } from "../core/formats/detect.ts";
import { loadSysfs } from "../core/formats/sysfs.ts";
import { isTar, snapshotFromTar } from "../core/formats/tar.ts";
import type { MachineDescription } from "../core/hw/machine.ts";
import { FsSnapshot } from "./fs-snapshot.ts";

/** Largest input file read, compressed (1 GiB). */
export const MAX_INPUT_BYTES = 1024 * 1024 * 1024;
/** Largest decompressed archive accepted (decompression-bomb guard, 2 GiB). */
export const MAX_UNPACKED_BYTES = 2 * 1024 * 1024 * 1024;

/**
 * The decompression limit in force: MAX_UNPACKED_BYTES, or a lower one from the environment
 * variable PEERBUF_MAX_UNPACKED_BYTES (a byte count; lets tests and small machines refuse a bomb
 * without inflating 2 GiB first). It can only lower the limit; other values are ignored.
 */
export function unpackLimit(env: NodeJS.ProcessEnv = process.env): number {
  const v = env["PEERBUF_MAX_UNPACKED_BYTES"]?.trim();
  if (!v || !/^[0-9]+$/.test(v)) return MAX_UNPACKED_BYTES;
  const n = Number(v);
  return n > 0 && n < MAX_UNPACKED_BYTES ? n : MAX_UNPACKED_BYTES;
}

function readCapped(path: string): Uint8Array {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new InputError({ file: path }, "not a regular file or directory");
    size = st.size;
  } catch (e) {
    if (e instanceof InputError) throw e;
    throw new InputError(
      { file: path },
      `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  if (size > MAX_INPUT_BYTES)
    throw new InputError(
      { file: path },
      `file is ${size} bytes, more than the ${MAX_INPUT_BYTES} accepted`,
      "input-too-large",
    );
  const buf = new Uint8Array(size);
  const fd = openSync(path, "r");
  try {
    let off = 0;
    while (off < size) {
      const n = readSync(fd, buf, off, size - off, off);
      if (n === 0) break;
      off += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

export function decompress(file: string, bytes: Uint8Array, limit = unpackLimit()): Uint8Array {
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      return gunzipSync(bytes, { maxOutputLength: limit });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ERR_BUFFER_TOO_LARGE")
        throw new InputError(
          { file },
          `decompresses to more than ${limit} bytes; refusing it (decompression bomb?)`,
          "input-too-large",
        );
      throw new InputError({ file }, `corrupt gzip data (${(e as Error).message})`);
    }
  }
  if (isBzip2(bytes))
    return bunzipBounded(file, bytes, limit, (input, out, multi) =>
      Bunzip.decode(input, out, multi),
    );
  return bytes;
}

export interface LoadOptions {
  /** Treat text inputs as this format instead of sniffing. */
  readonly format?: string;
}

/** Loads one or more inputs (several lspci outputs of one machine combine). */
export async function loadInput(
  paths: readonly string[],
  opts: LoadOptions = {},
): Promise<MachineDescription> {
  if (paths.length === 0) {
    const live = new FsSnapshot("/", "this machine (/sys)");
    if (live.kind("sys/bus/pci") === null)
      throw new InputError(
        { file: "/sys/bus/pci" },
        "this machine exposes no PCI sysfs; give a capture with --input",
      );
    return loadSysfs(live, { format: "sysfs-live" });
  }
  const texts: { file: string; text: string }[] = [];
  for (const path of paths) {
    let isDir = false;
    try {
      isDir = statSync(path).isDirectory();
    } catch (e) {
      throw new InputError(
        { file: path },
        `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
    if (isDir) {
      if (paths.length > 1)
        throw new InputError({ file: path }, "a capture directory must be the only input");
      return loadSysfs(new FsSnapshot(path), { format: "sysfs-dir" });
    }
    const raw = readCapped(path);
    const bytes = decompress(path, raw);
    if (isTar(bytes)) {
      if (paths.length > 1)
        throw new InputError({ file: path }, "a capture archive must be the only input");
      const snap = await snapshotFromTar(basename(path), bytes);
      return loadSysfs(snap, { format: "sysfs-tar" });
    }
    if (bytes.includes(0))
      throw new InputError({ file: path }, "binary data that is not a tar, gzip or bzip2 archive");
    texts.push({ file: path, text: new TextDecoder("utf-8").decode(bytes) });
  }
  const { loadSystemPciIds } = await import("./pci-ids.ts");
  return parseTextInput(texts, opts.format, { ids: loadSystemPciIds() });
}
