/**
 * @module fs-snapshot
 * A SnapshotSource over a real directory: live `/` (for /sys and /proc) or an unpacked capture.
 * Reads never leave the root: links are resolved inside it by the core's realpath.
 */

import { closeSync, lstatSync, openSync, readdirSync, readlinkSync, readSync } from "node:fs";
import { join } from "node:path";
import { type EntryKind, realpath, type SnapshotSource } from "../core/formats/snapshot.ts";

/** Largest file read from a tree (a sysfs file is at most a page, config 4 KiB). */
const MAX_FILE = 16 * 1024 * 1024;
const scratch = new Uint8Array(65536);

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
      const st = lstatSync(join(this.#root, path), { throwIfNoEntry: false });
      if (st) k = st.isSymbolicLink() ? "link" : st.isDirectory() ? "dir" : "file";
    } catch {
      k = null; // EACCES and the like: as absent
    }
    this.#kinds.set(path, k);
    return k;
  }

  readonly #realDirs = new Map<string, string | null>();

  /** realpath with the directory part memoised: sysfs reads many files per directory. */
  #real(path: string): string | null {
    const i = path.lastIndexOf("/");
    if (i < 0) return realpath(this, path);
    const dir = path.slice(0, i);
    let rd = this.#realDirs.get(dir);
    if (rd === undefined) {
      rd = realpath(this, dir);
      this.#realDirs.set(dir, rd);
    }
    if (rd === null) return null;
    const full = rd === "" ? path.slice(i + 1) : `${rd}/${path.slice(i + 1)}`;
    const k = this.kind(full);
    if (k === null) return null;
    return k === "link" ? realpath(this, full) : full;
  }

  readFile(path: string): Uint8Array | null {
    const rp = this.#real(path);
    if (rp === null || this.kind(rp) !== "file") return null;
    let fd: number;
    try {
      fd = openSync(join(this.#root, rp), "r");
    } catch {
      return null; // unreadable sysfs attribute (permission, EIO): same as absent
    }
    try {
      // sysfs reports sizes it does not have (4096 for every attribute): read until EOF
      let buf = scratch;
      let total = 0;
      for (;;) {
        if (total === buf.length) {
          if (buf.length >= MAX_FILE) break;
          const bigger = new Uint8Array(buf.length * 4);
          bigger.set(buf);
          buf = bigger;
        }
        const n = readSync(fd, buf, total, buf.length - total, null);
        if (n === 0) break;
        total += n;
      }
      return buf.slice(0, total);
    } catch {
      return null;
    } finally {
      closeSync(fd);
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
    const rp = this.#real(path);
    if (rp === null) return null;
    try {
      const ents = readdirSync(join(this.#root, rp), { withFileTypes: true });
      const names: string[] = [];
      for (const e of ents) {
        names.push(e.name);
        const child = rp === "" ? e.name : `${rp}/${e.name}`;
        if (!this.#kinds.has(child))
          this.#kinds.set(
            child,
            e.isSymbolicLink() ? "link" : e.isDirectory() ? "dir" : e.isFile() ? "file" : "file",
          );
      }
      return names.sort();
    } catch {
      return null;
    }
  }
}
