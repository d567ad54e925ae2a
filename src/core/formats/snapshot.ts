/**
 * @module snapshot
 * The one interface through which the core reads a file tree (live /sys, an unpacked capture,
 * a browser File): like hwloc reading /sys from any root. Paths are POSIX, relative to the root,
 * without a leading slash. Synchronous: every source is either local or already in memory.
 */

import { InputError } from "../errors.ts";

export type EntryKind = "file" | "dir" | "link";

export interface SnapshotSource {
  /** Shown in errors: the capture's file name or the live root. */
  readonly label: string;
  /** Kind of the entry itself (links not followed); null when absent. */
  kind(path: string): EntryKind | null;
  /** File contents with links followed; null when absent or not a file. */
  readFile(path: string): Uint8Array | null;
  /** Target of a link as stored; null when not a link. */
  readLink(path: string): string | null;
  /** Names in a directory with links followed; null when not a directory. */
  list(path: string): string[] | null;
}

/** Joins and normalises POSIX path pieces; `..` never climbs above the root. */
export function joinPath(...parts: string[]): string {
  const out: string[] = [];
  for (const part of parts) {
    for (const seg of part.split("/")) {
      if (seg === "" || seg === ".") continue;
      if (seg === "..") out.pop();
      else out.push(seg);
    }
  }
  return out.join("/");
}

export function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

export function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Linux's limit on links followed in one lookup (MAXSYMLINKS). */
const MAX_LINKS = 40;

/**
 * Resolves every link in `path` like realpath(3) inside the snapshot root. Returns null for a
 * broken link; throws InputError for a link loop. Absolute targets are taken relative to the root.
 */
export function realpath(src: SnapshotSource, path: string): string | null {
  let pending = joinPath(path).split("/").filter(Boolean);
  const done: string[] = [];
  let hops = 0;
  while (pending.length > 0) {
    const seg = pending.shift()!;
    if (seg === "..") {
      done.pop();
      continue;
    }
    const here = [...done, seg].join("/");
    const k = src.kind(here);
    if (k === null) return null;
    if (k !== "link") {
      done.push(seg);
      continue;
    }
    if (++hops > MAX_LINKS)
      throw new InputError(
        { file: src.label, place: path },
        "symbolic link loop (more than 40 links followed)",
      );
    const target = src.readLink(here) ?? "";
    const base = target.startsWith("/") ? [] : done;
    pending = [
      ...joinPath(...base, target)
        .split("/")
        .filter(Boolean),
      ...pending,
    ];
    done.length = 0;
    // joinPath already folded ".." of the target against its base
  }
  return done.join("/");
}

export const textDecoder = new TextDecoder("utf-8", { fatal: false });

export function readText(src: SnapshotSource, path: string): string | null {
  const b = src.readFile(path);
  return b ? textDecoder.decode(b) : null;
}

interface MemEntry {
  readonly kind: EntryKind;
  readonly data?: Uint8Array;
  readonly target?: string;
}

/** A snapshot held in memory (an unpacked tarball, a test fixture, a dropped file). */
export class MemorySnapshot implements SnapshotSource {
  readonly label: string;
  readonly #entries = new Map<string, MemEntry>();
  readonly #children = new Map<string, Set<string>>();

  constructor(label: string) {
    this.label = label;
    this.#entries.set("", { kind: "dir" });
  }

  #ensureDir(path: string): void {
    if (path === "" || this.#entries.has(path)) return;
    const parent = dirname(path);
    this.#ensureDir(parent);
    this.#entries.set(path, { kind: "dir" });
    this.#link(parent, basename(path));
  }

  #link(dir: string, name: string): void {
    let set = this.#children.get(dir);
    if (!set) {
      set = new Set();
      this.#children.set(dir, set);
    }
    set.add(name);
  }

  #add(path: string, e: MemEntry): void {
    const p = joinPath(path);
    if (p === "") return;
    const parent = dirname(p);
    this.#ensureDir(parent);
    const old = this.#entries.get(p);
    if (old?.kind === "dir" && e.kind === "dir") return;
    this.#entries.set(p, e);
    this.#link(parent, basename(p));
  }

  addFile(path: string, data: Uint8Array | string): this {
    this.#add(path, {
      kind: "file",
      data: typeof data === "string" ? new TextEncoder().encode(data) : data,
    });
    return this;
  }

  addDir(path: string): this {
    this.#add(path, { kind: "dir" });
    return this;
  }

  addLink(path: string, target: string): this {
    this.#add(path, { kind: "link", target });
    return this;
  }

  kind(path: string): EntryKind | null {
    return this.#entries.get(joinPath(path))?.kind ?? null;
  }

  #resolve(path: string): MemEntry | undefined {
    const rp = realpath(this, path);
    return rp === null ? undefined : this.#entries.get(rp);
  }

  readFile(path: string): Uint8Array | null {
    const e = this.#resolve(path);
    return e?.kind === "file" ? (e.data ?? new Uint8Array()) : null;
  }

  readLink(path: string): string | null {
    const e = this.#entries.get(joinPath(path));
    return e?.kind === "link" ? (e.target ?? "") : null;
  }

  list(path: string): string[] | null {
    const rp = realpath(this, path);
    if (rp === null || this.#entries.get(rp)?.kind !== "dir") return null;
    return [...(this.#children.get(rp) ?? [])].sort();
  }

  /** Every path, for tests and for `convert` of a capture. */
  paths(): string[] {
    return [...this.#entries.keys()].filter((p) => p !== "").sort();
  }
}
