/**
 * @module tar
 * Turns an (already decompressed) tar archive into an in-memory snapshot, refusing what would be
 * unsafe if extracted: absolute names, `..` components, links that leave the archive.
 */

import { unpackTar } from "modern-tar";
import { InputError } from "../errors.ts";
import { joinPath, MemorySnapshot } from "./snapshot.ts";

export interface TarLimits {
  /** Most entries accepted (default 2,000,000). */
  readonly maxEntries?: number;
}

export function isTar(bytes: Uint8Array): boolean {
  if (bytes.length < 512) return false;
  const magic = String.fromCharCode(...bytes.subarray(257, 262));
  return magic === "ustar";
}

function checkName(file: string, name: string, what: string): void {
  if (name.startsWith("/"))
    throw new InputError(
      { file, place: name },
      `${what} has an absolute path; refusing the archive`,
      "input-unsafe",
    );
  if (name.split("/").includes(".."))
    throw new InputError(
      { file, place: name },
      `${what} contains ".."; refusing the archive`,
      "input-unsafe",
    );
}

/** Resolves a link target against its directory; throws if it climbs out of the archive. */
function checkLinkTarget(file: string, name: string, target: string): void {
  const depth = name.split("/").filter((s) => s !== "" && s !== ".").length - 1;
  if (target.startsWith("/")) return; // taken relative to the capture root
  let level = depth;
  for (const seg of target.split("/")) {
    if (seg === "" || seg === ".") continue;
    level += seg === ".." ? -1 : 1;
    if (level < 0)
      throw new InputError(
        { file, place: name },
        `symbolic link points outside the archive (-> ${target}); refusing the archive`,
        "input-unsafe",
      );
  }
}

export async function snapshotFromTar(
  file: string,
  bytes: Uint8Array,
  limits: TarLimits = {},
): Promise<MemorySnapshot> {
  const max = limits.maxEntries ?? 2_000_000;
  let entries: Awaited<ReturnType<typeof unpackTar>>;
  try {
    entries = await unpackTar(bytes);
  } catch (e) {
    throw new InputError({ file }, `not a readable tar archive (${(e as Error).message})`);
  }
  if (entries.length > max)
    throw new InputError(
      { file },
      `archive holds ${entries.length} entries, more than the ${max} accepted`,
      "input-too-large",
    );
  const snap = new MemorySnapshot(file);
  for (const e of entries) {
    const h = e.header;
    const name = h.name;
    checkName(file, name, "entry");
    const path = joinPath(name);
    if (path === "") continue;
    switch (h.type) {
      case "directory":
        snap.addDir(path);
        break;
      case "symlink": {
        const target = h.linkname ?? "";
        checkLinkTarget(file, path, target);
        snap.addLink(path, target);
        break;
      }
      case "link": {
        const target = h.linkname ?? "";
        checkName(file, target, "hard link target");
        snap.addLink(path, `/${joinPath(target)}`);
        break;
      }
      case "file":
        snap.addFile(path, e.data ?? new Uint8Array());
        break;
      default:
        break; // devices, fifos: nothing a capture needs
    }
  }
  return snap;
}
