/**
 * @module fs-snapshot
 * A SnapshotSource over a real directory: live `/` (for /sys and /proc) or an unpacked capture.
 * Reads never leave the root: links are resolved inside it by the core's realpath.
 */

import { lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { type EntryKind, realpath, type SnapshotSource } from "../core/formats/snapshot.ts";

/** Largest file read from a tree (a sysfs file is at most a page, config 4 KiB). */
const MAX_FILE = 16 * 1024 * 1024;

export class FsSnapshot implements SnapshotSource {
  readonly label: string;
  readonly #root: string;
  readonly #kinds = new Map<string, EntryKind | null>();

  constructor(root: string, label = root) {
    this.#root = root;
    this.label = label;
  }

  kind(path: string): EntryKind | null {
    const cached = this.#kinds.get(path);
    if (cached !== undefined) return cached;
    let k: EntryKind | null = null;
    try {
      const st = lstatSync(join(this.#root, path));
      k = st.isSymbolicLink() ? "link" : st.isDirectory() ? "dir" : "file";
    } catch {
      k = null;
    }
    this.#kinds.set(path, k);
    return k;
  }

  readFile(path: string): Uint8Array | null {
    const rp = realpath(this, path);
    if (rp === null || this.kind(rp) !== "file") return null;
    try {
      const b = readFileSync(join(this.#root, rp));
      return b.length > MAX_FILE ? b.subarray(0, MAX_FILE) : b;
    } catch {
      return null; // unreadable sysfs attribute (permission, EIO): same as absent
    }
  }

  readLink(path: string): string | null {
    try {
      return readlinkSync(join(this.#root, path));
    } catch {
      return null;
    }
  }

  list(path: string): string[] | null {
    const rp = realpath(this, path);
    if (rp === null) return null;
    try {
      return readdirSync(join(this.#root, rp)).sort();
    } catch {
      return null;
    }
  }
}
